"""Hostile input: each bad request gets its S3 error, nothing is stored, the server lives on.

The first half talks raw HTTP (http.client and sockets) to the real server on loopback; the
second fires random method/path/query/header/body combinations at the ASGI app in-process
(hypothesis) and checks the h11-style invariant: whatever arrives, the answer is never a 500
and every error is S3 XML with a request id.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interfaces.s3.app import S3App
from interfaces.s3.credentials import CredentialStore
from interfaces.s3.headers import Headers
from interfaces.s3.sigv4 import (
    canonical_headers,
    canonical_query,
    canonical_request,
    canonical_uri,
    derive_signing_key,
    sign,
    string_to_sign,
)
from storage.errors import Unavailable
from storage.object_records import CorsRule
from storage.objects import GET_PREFETCH, PUT_PIPELINE, REGISTRY, ObjectReader, ObjectStore
from tests.e2e.conftest import S3Server
from tests.fake_blockstore import FakeBlockStore


def _error_code(body: bytes) -> str:
    root = ElementTree.fromstring(body)
    assert root.tag == "Error"
    assert root.findtext("RequestId")
    return root.findtext("Code") or ""


def _absent(s3: Any, bucket: str, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    return not any(o["Key"] == key for o in listed)


@pytest.fixture
def healthy_after(s3_server: S3Server) -> Iterator[None]:
    """Check the server still answers after the test's abuse."""
    yield
    assert s3_server.healthy()


pytestmark = pytest.mark.usefixtures("healthy_after")


def test_malformed_xml_bodies(s3_server: S3Server, bucket: str) -> None:
    upload = s3_server.request("POST", f"/{bucket}/mp?uploads")
    upload_id = ElementTree.fromstring(upload[2]).findtext(
        "{http://s3.amazonaws.com/doc/2006-03-01/}UploadId"
    )
    assert upload_id
    bodies = [
        b"",
        b"not xml at all",
        b"<Delete><Object><Key>a</Key></Object>",
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "y">]><Delete>&x;</Delete>',
        b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
        b"<Wrong/>",
        b"<a>" * 50 + b"</a>" * 50,
    ]
    for body in bodies:
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        status, _, answer = s3_server.request(
            "POST", f"/{bucket}?delete", body=body, headers={"Content-MD5": md5}
        )
        assert (status, _error_code(answer)) == (400, "MalformedXML"), body[:40]
        status, _, answer = s3_server.request(
            "POST", f"/{bucket}/mp?uploadId={upload_id}", body=body
        )
        assert status == 400
        assert _error_code(answer) in ("MalformedXML", "InvalidPartOrder"), body[:40]
        status, _, answer = s3_server.request("PUT", "/e2e-xml-bucket", body=body or b"<x")
        assert (status, _error_code(answer)) == (400, "MalformedXML")
    status, _, answer = s3_server.request(
        "POST",
        f"/{bucket}/mp?uploadId={upload_id}",
        body=b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
    )
    assert (status, _error_code(answer)) == (400, "InvalidArgument")
    status, _, _ = s3_server.request("HEAD", "/e2e-xml-bucket")
    assert status == 404


def test_anonymous_requests_to_a_missing_bucket(s3_server: S3Server) -> None:
    """As in S3: an unsigned read of a bucket that does not exist is NoSuchBucket (404); an
    unsigned write is AccessDenied whether or not the bucket exists."""
    for method, path in (("GET", "/e2e-no-such-bucket/k"), ("GET", "/e2e-no-such-bucket")):
        status, _, answer = s3_server.request(method, path, sign=False)
        assert (status, _error_code(answer)) == (404, "NoSuchBucket")
    status, _, _ = s3_server.request("HEAD", "/e2e-no-such-bucket/k", sign=False)
    assert status == 404
    status, _, answer = s3_server.request("PUT", "/e2e-no-such-bucket/k", body=b"x", sign=False)
    assert (status, _error_code(answer)) == (403, "AccessDenied")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<CORSConfiguration>",
        b"<CORSConfiguration/>",
        b"<CORSConfiguration><CORSRule/></CORSConfiguration>",
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>GET</AllowedMethod><MaxAgeSeconds>soon</MaxAgeSeconds></CORSRule>"
        b"</CORSConfiguration>",
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CORSConfiguration><CORSRule>'
        b"<AllowedOrigin>&e;</AllowedOrigin><AllowedMethod>GET</AllowedMethod></CORSRule>"
        b"</CORSConfiguration>",
        b"<a>" * 50 + b"</a>" * 50,
        b"\xff\xfe<\x00C\x00",
        bytes(range(256)),
    ],
)
def test_garbage_cors_bodies_are_malformed(s3_server: S3Server, bucket: str, body: bytes) -> None:
    status, _, answer = s3_server.request("PUT", f"/{bucket}?cors", body=body)
    assert (status, _error_code(answer)) == (400, "MalformedXML"), answer
    status, _, answer = s3_server.request("GET", f"/{bucket}?cors")
    assert (status, _error_code(answer)) == (404, "NoSuchCORSConfiguration")


async def _call_without_body(
    app: S3App, method: str, path: str, headers: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Call the ASGI app in-process with an empty body; return the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }
    await app(scope, receive, send)
    return sent


async def test_cors_costs_no_registry_read() -> None:
    """Cross-origin requests are matched against the bucket configuration object operations
    cache; a request without Origin does not look at the CORS rules at all."""
    store = FakeBlockStore()
    objects = ObjectStore(store, bucket_cache_seconds=3600.0)
    credentials = CredentialStore(store)
    await credentials.add_key(ACCESS_KEY, SECRET, "fuzz")
    await objects.create_bucket("bkt", owner=ACCESS_KEY)
    await objects.set_bucket_cors("bkt", FUZZ_CORS)
    app = S3App(objects, credentials, clock=lambda: NOW)
    empty = hashlib.sha256(b"").hexdigest()

    async def call(
        method: str, path: str, extra: list[tuple[str, str]], status: int = 200
    ) -> dict[str, str]:
        headers = _sign(method, path, "", [("host", "localhost"), *extra], empty)
        sent = await _call_without_body(app, method, path, headers)
        assert sent[0]["status"] == status
        return {k.decode(): v.decode() for k, v in sent[0]["headers"]}

    origin = [("origin", "https://app.example")]
    await call("PUT", "/bkt/obj", [("content-length", "0")])  # caches the bucket
    store.reads.clear()
    for _ in range(3):
        assert "access-control-allow-origin" not in await call("GET", "/bkt/obj", [])
        got = await call("GET", "/bkt/obj", origin)
        assert got["access-control-allow-origin"] == "https://app.example"
        options = [*origin, ("access-control-request-method", "PUT")]
        preflight = await call("OPTIONS", "/bkt/obj", options)
        assert preflight["access-control-allow-methods"] == "PUT, GET"
        refused = [("origin", "https://evil.example"), ("access-control-request-method", "GET")]
        await call("OPTIONS", "/bkt", refused, status=403)
    assert store.reads[REGISTRY] == 0


def test_oversized_headers(s3_server: S3Server, bucket: str) -> None:
    status, _, answer = s3_server.request(
        "GET", f"/{bucket}/k", headers={"X-Padding": "p" * 20_000}
    )
    assert (status, _error_code(answer)) == (400, "RequestHeaderSectionTooLarge")
    status, _, answer = s3_server.request(
        "PUT", f"/{bucket}/meta", headers={"x-amz-meta-big": "m" * 3000}, body=b"x"
    )
    assert (status, _error_code(answer)) == (400, "MetadataTooLarge")
    # Beyond the HTTP server's own limit (64 KiB) the request is refused before the app.
    with socket.create_connection((s3_server.host, s3_server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"h" * 200_000 + b"\r\n\r\n")
        answer = _read_all(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")


def _read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        out += data
    return bytes(out)


def test_bad_ranges(s3_server: S3Server, bucket: str) -> None:
    assert s3_server.request("PUT", f"/{bucket}/r", body=b"0123456789")[0] == 200
    cases = {
        "bytes=abc": (200, b"0123456789"),
        "bytes=5-2": (200, b"0123456789"),
        "bytes=0-1,3-4": (200, b"0123456789"),
        "items=0-1": (200, b"0123456789"),
        "bytes=99999999999999999999999-": (200, b"0123456789"),
        "bytes=8-": (206, b"89"),
        "bytes=-3": (206, b"789"),
    }
    for spec, (expected_status, expected_body) in cases.items():
        status, _, body = s3_server.request("GET", f"/{bucket}/r", headers={"Range": spec})
        assert (status, body) == (expected_status, expected_body), spec
    for spec in ("bytes=10-", "bytes=-0", "bytes=100-200"):
        status, headers, body = s3_server.request("GET", f"/{bucket}/r", headers={"Range": spec})
        assert (status, _error_code(body)) == (416, "InvalidRange"), spec
        assert headers["content-range"] == "bytes */10"


def test_wrong_content_md5(s3_server: S3Server, s3: Any, bucket: str) -> None:
    other = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    status, _, body = s3_server.request(
        "PUT", f"/{bucket}/md5", body=b"payload", headers={"Content-MD5": other}
    )
    assert (status, _error_code(body)) == (400, "BadDigest")
    status, _, body = s3_server.request(
        "PUT", f"/{bucket}/md5", body=b"payload", headers={"Content-MD5": "not base64!"}
    )
    assert (status, _error_code(body)) == (400, "InvalidDigest")
    assert _absent(s3, bucket, "md5")


def test_content_sha256_mismatch(s3_server: S3Server, s3: Any, bucket: str) -> None:
    signed = s3_server.sign("PUT", f"/{bucket}/sha", body=b"what was signed")
    status, _, body = _raw(s3_server, "PUT", f"/{bucket}/sha", signed, b"what was sent!!")
    assert (status, _error_code(body)) == (400, "XAmzContentSHA256Mismatch")
    assert _absent(s3, bucket, "sha")
    big = b"z" * (9 * 1024 * 1024)
    signed = s3_server.sign("PUT", f"/{bucket}/sha-big", body=big)
    status, _, body = _raw(s3_server, "PUT", f"/{bucket}/sha-big", signed, big[:-1] + b"y")
    assert (status, _error_code(body)) == (400, "XAmzContentSHA256Mismatch")
    assert _absent(s3, bucket, "sha-big")


def test_truncated_bodies(s3_server: S3Server, s3: Any, bucket: str) -> None:
    for declared, sent in ((100_000, 1000), (10 * 1024 * 1024, 5 * 1024 * 1024)):
        body = b"t" * declared
        headers = s3_server.sign("PUT", f"/{bucket}/trunc", body=body)
        headers["Content-Length"] = str(declared)
        headers["Host"] = f"{s3_server.host}:{s3_server.port}"
        head = f"PUT /{bucket}/trunc HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        with socket.create_connection((s3_server.host, s3_server.port), timeout=10) as sock:
            sock.sendall(head.encode() + b"\r\n" + body[:sent])
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
        # The end of input mid-body: hypercorn answers 400 itself (no body) and tells the
        # app, whose body iterator raises IncompleteBody, so the store commits nothing.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:300]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _absent(s3, bucket, "trunc"):
            time.sleep(0.05)  # pragma: no cover - the server notices the close at once
        assert _absent(s3, bucket, "trunc")


def test_garbage_authorization(s3_server: S3Server, bucket: str) -> None:
    date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cases = [
        ("garbage", {"InvalidArgument"}),  # an unsupported authorization type
        ("AWS4-HMAC-SHA256", {"AuthorizationHeaderMalformed"}),
        ("AWS4-HMAC-SHA256 Credential=", {"AuthorizationHeaderMalformed"}),
        (
            "AWS4-HMAC-SHA256 Credential=BKX/20200101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=zz",
            {"AuthorizationHeaderMalformed"},
        ),
        (
            f"AWS4-HMAC-SHA256 Credential=BKNOPE/{date[:8]}/us-east-1/s3/aws4_request, "
            f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={'0' * 64}",
            {"InvalidAccessKeyId"},
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={s3_server.access_key}/{date[:8]}/us-east-1/s3/"
            f"aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
            f"Signature={'0' * 64}",
            {"SignatureDoesNotMatch"},
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={s3_server.access_key}/{date[:8]}/mars-1/s3/"
            f"aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
            f"Signature={'0' * 64}",
            {"AuthorizationHeaderMalformed"},
        ),
        ("AWS BKX:c2lnbmF0dXJl", {"InvalidAccessKeyId"}),
        ("AWS :", {"AuthorizationHeaderMalformed"}),
        ("\u00ff\u00fe" * 10, {"InvalidArgument"}),
    ]
    for value, codes in cases:
        headers = {
            "Authorization": value,
            "x-amz-date": date,
            "x-amz-content-sha256": hashlib.sha256(b"x").hexdigest(),
        }
        status, _, body = s3_server.request(
            "PUT", f"/{bucket}/auth", headers=headers, body=b"x", sign=False
        )
        assert status in (400, 403), value
        assert _error_code(body) in codes, value
    status, _, body = s3_server.request(
        "GET", f"/{bucket}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x", sign=False
    )
    assert (status, _error_code(body)) == (400, "AuthorizationQueryParametersError")
    status, _, _ = s3_server.request("HEAD", f"/{bucket}/auth")
    assert status == 404


def test_bad_aws_chunked_framing(s3_server: S3Server, s3: Any, bucket: str) -> None:
    body = b"zz;chunk-signature=" + b"0" * 64 + b"\r\nabc\r\n"
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "3",
    }
    signed = s3_server.sign("PUT", f"/{bucket}/chunky", headers=headers, body=body)
    signed["X-Amz-Content-SHA256"] = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    status, _, answer = _raw(s3_server, "PUT", f"/{bucket}/chunky", signed, body)
    assert status in (400, 403)
    assert _error_code(answer) in ("IncompleteBody", "SignatureDoesNotMatch")
    assert _absent(s3, bucket, "chunky")


def _raw(
    s3_server: S3Server, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_garbage_http(s3_server: S3Server) -> None:
    for junk in (b"\x00\x01\x02garbage\r\n\r\n", b"GET\r\n\r\n", b"BREW /pot HTTP/1.1\r\n\r\n"):
        with socket.create_connection((s3_server.host, s3_server.port), timeout=10) as sock:
            sock.sendall(junk)
            answer = _read_all(sock)
        assert not answer.startswith(b"HTTP/1.1 5"), junk
    status, _, body = s3_server.request("PATCH", "/some-bucket/key")
    assert (status, _error_code(body)) == (405, "MethodNotAllowed")


async def test_credential_register_unavailable() -> None:
    """Lookups survive a cluster outage on the cached keys; without a cache they fail 503."""
    store = FakeBlockStore()
    credentials = CredentialStore(store, ttl=0.0)
    await credentials.add_key(ACCESS_KEY, SECRET, "fuzz")
    store.fail("read", times=1)
    assert await credentials.lookup(ACCESS_KEY) == SECRET  # stale copy, logged
    assert await credentials.lookup("BKNOSUCHKEY000000000") is None
    cold = CredentialStore(store)
    store.fail("read", times=5)
    objects = ObjectStore(store)
    app = S3App(objects, cold, clock=lambda: NOW)
    headers = _sign("GET", "/", "", [("host", "localhost")], hashlib.sha256(b"").hexdigest())
    sent = await _call_without_body(app, "GET", "/", headers)
    assert sent[0]["status"] == 503
    assert _error_code(sent[1]["body"]) == "ServiceUnavailable"
    store.clear_faults()


async def test_store_error_in_a_group_before_the_head_keeps_its_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GET whose stream fails before the head with a storage error wrapped in a group (a
    nursery inside the store) answers that error's S3 code, not InternalError."""
    store = FakeBlockStore()
    objects = ObjectStore(store)
    credentials = CredentialStore(store)
    await credentials.add_key(ACCESS_KEY, SECRET)
    await objects.create_bucket("bkt", owner=ACCESS_KEY)

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100

    await objects.put_object("bkt", "k", body(), owner=ACCESS_KEY)
    app = S3App(objects, credentials, clock=lambda: NOW)

    async def fail(*_args: Any, **_kwargs: Any) -> int:
        raise ExceptionGroup("fetch", [Unavailable(2, 1)])

    monkeypatch.setattr(ObjectReader, "send_to", fail)
    headers = _sign("GET", "/bkt/k", "", [("host", "localhost")], hashlib.sha256(b"").hexdigest())
    sent = await _call_without_body(app, "GET", "/bkt/k", headers)
    assert sent[0]["status"] == 503
    assert _error_code(sent[1]["body"]) == "ServiceUnavailable"


async def test_unavailable_credential_register_is_retried_once_per_ttl() -> None:
    """In an outage the stale keys serve for another ``ttl`` before the register is read
    again: one failed read (one RPC timeout) per ``ttl``, not one or two per request."""
    store = FakeBlockStore()
    now = [0.0]
    credentials = CredentialStore(store, ttl=5.0, clock=lambda: now[0])
    await credentials.add_key(ACCESS_KEY, SECRET, "fuzz")
    assert await credentials.lookup(ACCESS_KEY) == SECRET
    now[0] = 6.0  # expired
    store.fail("read", times=100)
    reads = store.ops["read"]
    for _ in range(3):
        assert await credentials.lookup(ACCESS_KEY) == SECRET
        assert await credentials.name_of(ACCESS_KEY) == "fuzz"
    assert store.ops["read"] - reads == 1
    now[0] = 12.0  # another ttl later: one more attempt
    assert await credentials.lookup(ACCESS_KEY) == SECRET
    assert store.ops["read"] - reads == 2
    store.clear_faults()


class _CountingStore(FakeBlockStore):
    """Counts body messages pulled, chunk writes done, and chunks fetched but not yet sent."""

    pulled = 0
    durable = 0
    ahead: list[int]
    sent = 0
    fetched_before_send: list[int]
    fetched = 0

    async def put_chunk(self, plaintext: Any, *, redundancy: Any = None) -> Any:
        await trio.sleep(0.001)
        ref = await super().put_chunk(plaintext, redundancy=redundancy)
        self.durable += 1
        return ref

    async def get_chunk(self, ref: Any) -> bytes:
        self.fetched += 1
        self.fetched_before_send.append(self.fetched - self.sent)
        return await super().get_chunk(ref)


async def test_bodies_stream_with_back_pressure() -> None:
    """PUT pulls the body only a few chunks ahead of the stored ones; GET fetches only a few
    chunks ahead of the one being sent."""
    store = _CountingStore()
    store.ahead = []
    store.fetched_before_send = []
    objects = ObjectStore(store, chunk_size=1024 * 1024)
    credentials = CredentialStore(store)
    await credentials.add_key(ACCESS_KEY, SECRET)
    await objects.create_bucket("bkt", owner=ACCESS_KEY)
    app = S3App(objects, credentials, clock=lambda: NOW)
    piece = b"b" * (256 * 1024)
    count = 64  # 16 MiB in 16 chunks
    headers = _sign(
        "PUT",
        "/bkt/big",
        "",
        [("host", "localhost"), ("content-length", str(len(piece) * count))],
        "UNSIGNED-PAYLOAD",
    )

    async def receive() -> dict[str, Any]:
        store.pulled += 1
        store.ahead.append(store.pulled - 4 * store.durable)
        return {"type": "http.request", "body": piece, "more_body": store.pulled < count}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))
        if message.get("body"):
            store.sent += 1

    def scope(method: str, raw_headers: list[tuple[str, str]]) -> dict[str, Any]:
        return {
            "type": "http",
            "method": method,
            "path": "/bkt/big",
            "raw_path": b"/bkt/big",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in raw_headers],
        }

    await app(scope("PUT", headers), receive, send)
    assert sent[0]["status"] == 200
    # Four 256 KiB messages make a 1 MiB chunk: at most PUT_PIPELINE chunks are being stored
    # while one more fills.
    assert store.durable == 16
    assert max(store.ahead) <= 4 * (PUT_PIPELINE + 1)
    sent.clear()
    get_headers = _sign("GET", "/bkt/big", "", [("host", "localhost")], "UNSIGNED-PAYLOAD")
    await app(scope("GET", get_headers), receive, send)
    assert sent[0]["status"] == 200
    assert sum(len(m.get("body", b"")) for m in sent[1:]) == len(piece) * count
    assert max(store.fetched_before_send) <= GET_PREFETCH


async def test_replaced_and_deleted_objects_are_released_after_the_answer() -> None:
    """An overwrite or a DELETE answers first; the dropped object's chunks are released by
    the same request right after its response is sent, and none that the new one uses."""
    store = FakeBlockStore()
    objects = ObjectStore(store, chunk_size=1024)
    credentials = CredentialStore(store)
    await credentials.add_key(ACCESS_KEY, SECRET)
    await objects.create_bucket("bkt", owner=ACCESS_KEY)
    app = S3App(objects, credentials, clock=lambda: NOW)
    at_answer: list[set[bytes]] = []
    on_answer: list[Callable[[], None]] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            at_answer.append({bytes(a) for a in store.chunks})
            for hang_up in on_answer:
                hang_up()

    async def call(method: str, body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        headers = _sign(
            method,
            "/bkt/k",
            "",
            [("host", "localhost"), ("content-length", str(len(body)))],
            hashlib.sha256(body).hexdigest(),
        )
        scope = {
            "type": "http",
            "method": method,
            "path": "/bkt/k",
            "raw_path": b"/bkt/k",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers],
        }
        await app(scope, receive, send)

    await call("PUT", b"a" * 5000)  # five chunks
    first = {bytes(a) for a in store.chunks}
    await call("PUT", b"b" * 3000)  # replaces them
    assert first <= at_answer[-1]  # still there when the client got its answer
    second = {bytes(a) for a in store.chunks}
    assert not first & second  # released afterwards...
    assert len(second) == 3  # ...and the new object's chunks kept
    await call("DELETE", b"")
    assert second <= at_answer[-1]
    assert not store.chunks
    assert objects.statistics().chunks_released == 8
    await call("PUT", b"c" * 2000)
    with trio.CancelScope() as scope:  # cancelled (client gone, shutdown) once answered
        on_answer.append(scope.cancel)
        await call("PUT", b"d" * 1000)
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert len(store.chunks) == 1  # the replaced object's two chunks were released anyway


# -- in-process fuzzing -------------------------------------------------------------------------

ACCESS_KEY = "BKFUZZFUZZFUZZFUZZ00"
SECRET = "fuzz-secret-fuzz-secret-fuzz-secret-0000"
NOW = time.time()

METHODS = st.sampled_from(
    ["GET", "GET", "PUT", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "get"]
)
PATH_PIECES = st.sampled_from(
    ["/", "bkt", "obj", "/", "%20", "+", "%ff", "%2F", "..", "a b", "é", "%", "x" * 300, "", "?"]
)
GOOD_PATHS = st.sampled_from(
    ["/", "/bkt", "/bkt/", "/bkt/obj", "/bkt/obj", "/bkt/new", "/nobkt/obj", "/newbkt", "/BKT"]
)
PATHS = st.one_of(
    GOOD_PATHS,
    GOOD_PATHS,
    GOOD_PATHS,
    st.lists(PATH_PIECES, max_size=6).map(lambda p: "/" + "".join(p)),
)
QUERY_PIECES = st.sampled_from(
    [
        "uploads",
        "uploadId=UPLOAD",
        "uploadId=",
        "uploadId=nope",
        "partNumber=1",
        "partNumber=0",
        "partNumber=99999",
        "versionId=null",
        "versionId=v1",
        "list-type=2",
        "list-type=3",
        "delete",
        "location",
        "versions",
        "acl",
        "cors",
        "tagging",
        "max-keys=-1",
        "max-keys=abc",
        "max-keys=2",
        "max-parts=1",
        "max-uploads=0",
        "part-number-marker=x",
        "encoding-type=url",
        "encoding-type=zip",
        "prefix=o",
        "delimiter=%2F",
        "marker=a",
        "start-after=z",
        "continuation-token=%21%21",
        "continuation-token=b2Jq",
        "key-marker=o",
        "version-id-marker=null",
        "fetch-owner=true",
        "response-content-type=text%2Fplain",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Expires=0",
        "AWSAccessKeyId=x",
        "x-id=GetObject",
        "%ff=%fe",
        "=",
        "&",
    ]
)
QUERIES = st.lists(QUERY_PIECES, max_size=4).map("&".join)
HEADER_PIECES = st.sampled_from(
    [
        ("range", "bytes=0-1"),
        ("range", "bytes=-0"),
        ("range", "bytes=99-"),
        ("range", "garbage"),
        ("if-match", '"nope"'),
        ("if-match", "*"),
        ("if-none-match", "*"),
        ("if-none-match", '"x"'),
        ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("if-unmodified-since", "garbage"),
        ("content-md5", "bad"),
        ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ("x-amz-copy-source", "/bkt/obj"),
        ("x-amz-copy-source", "bkt"),
        ("x-amz-copy-source", "/nobkt/x?versionId=1"),
        ("x-amz-copy-source-range", "bytes=0-1"),
        ("x-amz-copy-source-range", "bytes=5-1"),
        ("x-amz-copy-source-if-match", '"x"'),
        ("x-amz-metadata-directive", "REPLACE"),
        ("x-amz-metadata-directive", "MOVE"),
        ("x-amz-acl", "public-read"),
        ("x-amz-acl", "everyone"),
        ("x-ballast-redundancy", "4+2"),
        ("x-ballast-redundancy", "0"),
        ("x-amz-meta-k", "v"),
        ("x-amz-meta-big", "m" * 2100),
        ("x-amz-checksum-crc32", "AAAAAA=="),
        ("x-amz-checksum-sha1", "bad"),
        ("x-amz-checksum-crc32c", "AAAAAA=="),
        ("x-amz-storage-class", "GLACIER"),
        ("x-amz-storage-class", "DIAMOND"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "3"),
        ("x-amz-decoded-content-length", "x"),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
        ("content-type", "text/plain"),
        ("expect", "100-continue"),
        ("authorization", "AWS4-HMAC-SHA256 garbage"),
        ("x-amz-date", "20200101T000000Z"),
        ("host", "bkt.s3.localhost"),
        ("host", "s3.localhost"),
        ("origin", "https://app.example"),
        ("origin", "http://elsewhere"),
        ("origin", ""),
        ("access-control-request-method", "PUT"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "Content-Type, x-amz-date"),
        ("access-control-request-headers", ",,"),
    ]
)
PAYLOADS = st.sampled_from(
    [
        "hash",
        "hash",
        "hash",
        "UNSIGNED-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "0" * 64,
        "STREAMING-NONSENSE",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"<Delete><Object><Key>obj</Key></Object><Quiet>true</Quiet></Delete>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part>"
            b"</CompleteMultipartUpload>",
            b"<CreateBucketConfiguration><LocationConstraint>us-east-1</LocationConstraint>"
            b"</CreateBucketConfiguration>",
            b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
            b"<AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>",
            b"<CORSConfiguration><CORSRule><AllowedOrigin>**</AllowedOrigin>"
            b"<AllowedMethod>GETS</AllowedMethod></CORSRule></CORSConfiguration>",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n\r\n",
        ]
    ),
)


FUZZ_CORS = (
    CorsRule(("https://app.example",), ("PUT", "GET"), ("content-type", "x-amz-*"), ("ETag",)),
    CorsRule(("http://*",), ("GET",), (), (), "reads", 60),
)


def _sign(
    method: str, path: str, query: str, headers: list[tuple[str, str]], payload: str
) -> list[tuple[str, str]]:
    date = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = [(k, v) for k, v in headers if k not in ("authorization", "x-amz-date")]
    headers += [("x-amz-date", date), ("x-amz-content-sha256", payload)]
    names = sorted({k for k, _ in headers} | {"host"})
    if "host" not in {k for k, _ in headers}:
        headers.append(("host", "localhost"))
    view = Headers(headers)
    scope = f"{date[:8]}/us-east-1/s3/aws4_request"
    canonical = canonical_request(
        method.upper(),
        canonical_uri(path),
        canonical_query(query),
        canonical_headers(view, names),
        ";".join(names),
        payload,
    )
    key = derive_signing_key(SECRET, date[:8], "us-east-1")
    signature = sign(key, string_to_sign(date, scope, canonical))
    auth = f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={';'.join(names)}, "
    return [*headers, ("authorization", auth + f"Signature={signature}")]


async def _exercise(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    splits: list[int],
) -> tuple[int, dict[str, str], bytes]:
    store = FakeBlockStore()
    objects = ObjectStore(store, min_part_size=1)
    credentials = CredentialStore(store)
    await credentials.add_key(ACCESS_KEY, SECRET, "fuzz")
    await objects.create_bucket("bkt", owner=ACCESS_KEY)

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    await objects.put_object("bkt", "obj", one(b"hello object"), owner=ACCESS_KEY)
    await objects.set_bucket_cors("bkt", FUZZ_CORS)
    app = S3App(objects, credentials, base_domains=("s3.localhost",), clock=lambda: NOW)
    pieces = []
    rest = body
    for cut in splits:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query.encode("utf-8", "surrogateescape"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }
    with trio.fail_after(10):
        await app(scope, receive, send)
    assert sent, "no response"
    assert sent[0]["type"] == "http.response.start"
    status = int(sent[0]["status"])
    response_headers = {k.decode(): v.decode("latin-1") for k, v in sent[0]["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[-1].get("more_body", False) is False
    return status, response_headers, payload


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=METHODS,
    path=PATHS,
    query=QUERIES,
    headers=st.lists(HEADER_PIECES, max_size=5),
    body=BODIES,
    splits=st.lists(st.integers(min_value=0, max_value=50), max_size=3),
    signed=st.sampled_from([True, True, True, False]),
    payload=PAYLOADS,
)
def test_fuzz_app_never_500(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    splits: list[int],
    signed: bool,
    payload: str,
) -> None:
    if "content-length" not in {k for k, _ in headers}:
        headers = [*headers, ("content-length", str(len(body)))]
    if signed:
        claim = hashlib.sha256(body).hexdigest() if payload == "hash" else payload
        headers = _sign(method, path, query, headers, claim)
    status, response_headers, answer = trio.run(
        _exercise, method, path, query, headers, body, splits
    )
    assert status != 500, answer
    assert 200 <= status < 600
    assert response_headers.get("x-amz-request-id")
    if method.upper() != "HEAD" and status != 304:
        assert len(answer) == int(response_headers["content-length"])
    if status >= 400 and method.upper() != "HEAD":
        _error_code(answer)


def test_a_refused_chunked_body_is_read_before_the_answer(s3_server: S3Server, bucket: str) -> None:
    """A body without a declared size (``Transfer-Encoding: chunked``) that is refused before
    it is read is still read (up to a limit) before the answer: the client, still sending,
    gets the error instead of a reset, and the connection stays usable."""
    head = (
        f"PUT /{bucket}/k HTTP/1.1\r\nHost: {s3_server.host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection((s3_server.host, s3_server.port), timeout=10) as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        time.sleep(0.3)  # the refusal is decided by now; the body is not over yet
        sock.sendall(b"0\r\n\r\n")
        sock.sendall(f"HEAD /{bucket} HTTP/1.1\r\nHost: {s3_server.host}\r\n\r\n".encode())
        sock.settimeout(5)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2:
            data = sock.recv(65536)
            if not data:
                break
            answers += data
    assert answers.startswith(b"HTTP/1.1 403"), answers[:200]
    assert b"<Code>AccessDenied</Code>" in answers
    assert answers.count(b"HTTP/1.1 ") == 2, answers  # the next request was answered too
