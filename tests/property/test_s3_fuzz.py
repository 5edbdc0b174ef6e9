"""Garbage in, S3Error out: the S3 protocol pieces never raise anything else (h11's rule)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interfaces.s3 import xml
from interfaces.s3.chunked import NEED_DATA, ChunkedDecoder, EndOfMessage
from interfaces.s3.conditions import check_read_preconditions, check_write_preconditions
from interfaces.s3.errors import S3Error
from interfaces.s3.etag import checksum_from_headers, parse_content_md5
from interfaces.s3.headers import Headers
from interfaces.s3.names import validate_bucket_name, validate_object_key
from interfaces.s3.ranges import parse_copy_source_range, parse_range
from interfaces.s3.router import parse_copy_source, route
from interfaces.s3.sigv4 import SigningContext, derive_signing_key, verify_request

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2013, 5, 24, tzinfo=UTC)
CTX = SigningContext(
    derive_signing_key("s", "20130524", "us-east-1"),
    "20130524T000000Z",
    "20130524/us-east-1/s3/aws4_request",
    "0" * 64,
)

TEXT = st.text(max_size=200)
HEADER_TEXT = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=300)
AUTH_PIECES = st.sampled_from(
    [
        "AWS4-HMAC-SHA256 ",
        "Credential=",
        "AK/20130524/us-east-1/s3/aws4_request",
        ",",
        "SignedHeaders=",
        "host;x-amz-date",
        "Signature=",
        "0" * 64,
        "=",
        ";",
        "/",
        " ",
        "AWS ",
    ]
)
AUTH = st.one_of(HEADER_TEXT, st.lists(AUTH_PIECES, max_size=12).map("".join))
QUERY_PIECES = st.sampled_from(
    [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=AK%2F20130524%2Fus-east-1%2Fs3%2Faws4_request",
        "X-Amz-Date=20130524T000000Z",
        "X-Amz-Expires=",
        "86400",
        "X-Amz-SignedHeaders=host",
        "X-Amz-Signature=" + "0" * 64,
        "&",
        "=",
        "%",
        "%ZZ",
        "%FF",
        "uploads",
        "AWSAccessKeyId=AK",
        "Signature=",
        "Expires=",
        "99999999999",
        "é",
        "+",
    ]
)
QUERY = st.one_of(TEXT, st.lists(QUERY_PIECES, max_size=10).map("".join))
PATH = st.one_of(TEXT, st.text(max_size=50).map(lambda s: "/" + s), st.just("/%FF%FE"))
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "host",
                "x-amz-date",
                "date",
                "x-amz-content-sha256",
                "x-amz-copy-source",
                "x-amz-meta-a",
                "range",
                "authorization",
            ]
        ),
        HEADER_TEXT,
    ),
    max_size=6,
)


def lookup(access_key: str) -> str | None:
    return "secret" if access_key == "AK" else None


@FAST
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "X"]),
    path=PATH,
    query=QUERY,
    headers=HEADERS,
    auth=st.none() | AUTH,
)
def test_verify_request_garbage(
    method: str, path: str, query: str, headers: list[tuple[str, str]], auth: str | None
) -> None:
    pairs = list(headers)
    if auth is not None:
        pairs += [
            ("authorization", auth),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ]
    with contextlib.suppress(S3Error):
        verify_request(method, path, query, Headers(pairs), lookup, NOW)


@FAST
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"]),
    path=PATH,
    query=QUERY,
    headers=HEADERS,
    bases=st.lists(st.sampled_from(["localhost", "s3.amazonaws.com", "", "."]), max_size=2),
)
def test_route_garbage(
    method: str, path: str, query: str, headers: list[tuple[str, str]], bases: list[str]
) -> None:
    with contextlib.suppress(S3Error):
        route(method, path, query, Headers(headers), base_domains=bases)


@FAST
@given(value=HEADER_TEXT)
def test_copy_source_garbage(value: str) -> None:
    with contextlib.suppress(S3Error):
        parse_copy_source(value)


XML_PIECES = st.sampled_from(
    [
        "<Delete>",
        "</Delete>",
        "<Object>",
        "</Object>",
        "<Key>",
        "</Key>",
        "<Quiet>",
        "true",
        "</Quiet>",
        "<CompleteMultipartUpload>",
        "</CompleteMultipartUpload>",
        "<Part>",
        "</Part>",
        "<PartNumber>",
        "</PartNumber>",
        "1",
        "99999999999",
        "<ETag>",
        "</ETag>",
        "&amp;",
        "&x;",
        "<!DOCTYPE x [<!ENTITY a 'b'>]>",
        "<?xml version='1.0'?>",
        "<![CDATA[x]]>",
        "<!-- c -->",
        "\x00",
        "\xff",
        "<",
        ">",
        "<a:Key xmlns:a='u'>",
        "</a:Key>",
    ]
)
XML_BODY = st.one_of(
    st.binary(max_size=300),
    st.lists(XML_PIECES, max_size=20).map(lambda xs: "".join(xs).encode("utf-8", "replace")),
)


@FAST
@given(body=XML_BODY)
def test_xml_parsers_garbage(body: bytes) -> None:
    for parser in (
        xml.parse_complete_multipart_upload,
        xml.parse_delete_objects,
        xml.parse_create_bucket,
    ):
        with contextlib.suppress(S3Error):
            parser(body)


@FAST
@given(
    value=st.one_of(HEADER_TEXT, st.from_regex(r"bytes=[0-9 ]*-?[0-9 ,-]*", fullmatch=True)),
    size=st.integers(min_value=0, max_value=2**63),
)
def test_ranges_garbage(value: str, size: int) -> None:
    code = None
    try:
        r = parse_range(value, size)
    except S3Error as err:
        code = err.code
    else:
        assert r is None or 0 <= r.start <= r.end < size
    assert code in (None, "InvalidRange")
    with contextlib.suppress(S3Error):
        c = parse_copy_source_range(value, size)
        assert 0 <= c.start <= c.end < size


CHUNK_PIECES = st.sampled_from(
    [
        b"0",
        b"1",
        b"a",
        b"10",
        b"ffffffffffffffffffff",
        b";chunk-signature=",
        b"0" * 64,
        b"\r\n",
        b"\r",
        b"\n",
        b"x-amz-checksum-crc32:AAAAAA==",
        b"x-amz-trailer-signature:",
        b":",
        b"zz",
        b"abc",
        b"\xe9" * 64,
    ]
)
CHUNKED_BODY = st.one_of(st.binary(max_size=300), st.lists(CHUNK_PIECES, max_size=25).map(b"".join))


@FAST
@given(
    body=CHUNKED_BODY,
    signed=st.booleans(),
    trailer=st.booleans(),
    step=st.integers(min_value=1, max_value=64),
    decoded_length=st.none() | st.integers(min_value=0, max_value=100),
)
def test_chunked_garbage(
    body: bytes, signed: bool, trailer: bool, step: int, decoded_length: int | None
) -> None:
    decoder = ChunkedDecoder(
        signing=CTX if signed else None,
        trailer=trailer,
        decoded_length=decoded_length,
        max_chunk_size=4096,
    )
    with contextlib.suppress(S3Error):
        for i in [*range(0, len(body), step), None]:
            decoder.receive_data(b"" if i is None else body[i : i + step])
            while True:
                event = decoder.next_event()
                if event is NEED_DATA or isinstance(event, EndOfMessage):
                    break
            if isinstance(event, EndOfMessage):
                break


@FAST
@given(
    name=TEXT,
    key=TEXT,
    md5=HEADER_TEXT,
    checksum=HEADER_TEXT,
    alg=st.sampled_from(["crc32", "crc32c", "crc64nvme", "sha1", "sha256", "md5", "x"]),
)
def test_small_validators_garbage(name: str, key: str, md5: str, checksum: str, alg: str) -> None:
    for call in (
        lambda: validate_bucket_name(name),
        lambda: validate_object_key(key),
        lambda: parse_content_md5(md5),
        lambda: checksum_from_headers([(f"x-amz-checksum-{alg}", checksum)]),
    ):
        with contextlib.suppress(S3Error):
            call()


@FAST
@given(a=HEADER_TEXT, b=HEADER_TEXT, c=HEADER_TEXT, d=HEADER_TEXT, etag=HEADER_TEXT)
def test_conditions_garbage(a: str, b: str, c: str, d: str, etag: str) -> None:
    code = None
    try:
        check_read_preconditions(
            etag=etag,
            last_modified=NOW,
            if_match=a,
            if_none_match=b,
            if_modified_since=c,
            if_unmodified_since=d,
        )
    except S3Error as err:
        code = err.code
    assert code in (None, "PreconditionFailed", "NotModified")
    with contextlib.suppress(S3Error):
        check_write_preconditions(
            current_etag=etag or None, if_match=a or None, if_none_match=b or None
        )


DOC_HEADERS = [
    ("host", "examplebucket.s3.amazonaws.com"),
    ("range", "bytes=0-9"),
    ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("x-amz-date", "20130524T000000Z"),
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=" + "0" * 64,
    ),
]


@FAST
@given(
    index=st.integers(min_value=0, max_value=len(DOC_HEADERS) - 1),
    value=HEADER_TEXT,
    cut=st.integers(min_value=0, max_value=200),
)
def test_verify_request_mutated_header(index: int, value: str, cut: int) -> None:
    """A nearly valid request with one header value replaced or truncated."""
    pairs = list(DOC_HEADERS)
    name, original = pairs[index]
    pairs[index] = (name, value if cut % 2 else original[:cut])
    with contextlib.suppress(S3Error):
        verify_request("GET", "/test.txt", "", Headers(pairs), lookup, NOW)
