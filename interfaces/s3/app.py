"""The S3 HTTP front end: a plain ASGI app around the sans-IO pieces of ``interfaces.s3``.

Theory of operation
-------------------
One request, one pass through five stages, each with one owner:

1. **Route** (:func:`~interfaces.s3.router.route`): method, raw path, raw query and Host
   decide the :class:`~interfaces.s3.router.Endpoint` — operation, bucket, key, upload id.
   Path-style and virtual-host-style addressing are resolved here (``base_domains``).
2. **Authenticate** (:func:`~interfaces.s3.sigv4.verify_request`): the access key the request
   names is looked up in the :class:`~interfaces.s3.credentials.CredentialStore` (a register
   in the cluster, cached), then the SigV4 header / presigned query / SigV2 signature and the
   clock skew or expiry are checked. **Authorize**: a signed request may do everything (all
   keys belong to one account); an anonymous one may only read (GET/HEAD objects, list,
   HEAD bucket) in a ``public-read`` bucket or a ``public-read`` object. A CORS preflight
   (``OPTIONS``) is neither: browsers send it without credentials, to the URL (presigned
   query included) of the request they mean to make, so it is answered from the bucket's CORS
   rules alone. A form upload (PostObject) is not checked here either: its credentials
   and policy are fields of the body, verified by the handler
   (:mod:`interfaces.s3.post_policy`) before the file is stored.
3. **Body** (:class:`RequestBody`): the ASGI ``http.request`` messages are read one at a
   time, only when the storage layer asks for more (back-pressure: hypercorn stops reading
   the socket while its small queue is full). aws-chunked bodies go through the
   :class:`~interfaces.s3.chunked.ChunkedDecoder` (chunk signatures verified before a byte is
   released); ``x-amz-content-sha256`` digests and ``x-amz-checksum-*`` (header or trailer)
   are computed as the bytes flow and compared **when the body ends** — the iterator raises
   instead of finishing, so :class:`~storage.objects.ObjectStore` never commits the index
   entry and releases the chunks it stored. ``Content-MD5`` is checked by the store the same
   way. A client that disconnects mid-body raises ``IncompleteBody`` likewise.
4. **Storage** (:mod:`interfaces.s3.handlers`): one function per operation calls the
   :class:`~storage.objects.ObjectStore` and builds a :class:`Response` — XML bytes, or a
   streamed body for GetObject, sent chunk by chunk with ``more_body=True`` while the next
   chunks are being fetched (:meth:`storage.objects.ObjectReader.send_to`).
5. **Respond**: errors are translated **here and only here**: an
   :class:`~interfaces.s3.errors.S3Error` keeps its code; a
   :class:`~storage.errors.StorageError` is mapped by the one table,
   :data:`~interfaces.s3.errors.STORAGE_ERRORS` (an unreachable quorum, ``Unavailable``,
   becomes 503 ``ServiceUnavailable``); anything else is a bug, logged with its traceback and
   answered 500 ``InternalError``. HTTP statuses come only from
   :data:`~interfaces.s3.errors.ERROR_TABLE`. Every response carries ``x-amz-request-id``;
   every error body is S3 ``<Error>`` XML with that id (HEAD and 304 answers carry no body,
   as HTTP requires). A GetObject whose first chunk fails is still answered with a proper
   error, because the response head is sent only with the first chunk; a failure after that
   can only abort the connection (the client sees a short body, as with S3). A request with
   an ``Origin`` header to a bucket with CORS rules gets, answer or error, the
   ``Access-Control-*`` headers of the first rule allowing its origin and method
   (:mod:`interfaces.s3.cors`), from the bucket configuration object operations cache
   (:meth:`~storage.objects.ObjectStore.cors_rules`); a request without ``Origin`` costs
   nothing more.

Before an error answer, a small unread request body (``DRAIN_LIMIT``) is read and dropped so
the client can read the answer instead of meeting a connection reset. Every request is logged
at debug level, every 5xx at warning, both with the request id. Cancellation
(``trio.Cancelled``) is never caught: a cancelled request stops where it is, and the object
store guarantees a cancelled write leaves nothing visible.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import trio

from storage import errors as storage_errors
from storage.hash_lane import HashLane
from storage.objects import ObjectStore, ReleaseLater

from . import cors, xml
from .activity import RequestActivity
from .chunked import NEED_DATA, ChunkedDecoder, Data, EndOfMessage, Trailers, decoder_for_request
from .credentials import CredentialStore
from .errors import ERROR_TABLE, S3Error, from_storage_error
from .etag import ChecksumClaim, Hasher, checksum_from_headers, new_checksum
from .headers import Headers
from .router import Endpoint, Op, route
from .sigv4 import AuthMethod, AuthResult, PayloadKind, check_payload_sha256, verify_request

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Sink = Callable[[bytes], Awaitable[None]]

#: Largest object (and part) a single request may upload, as S3.
MAX_UPLOAD_SIZE = 5 * 1024**3
#: Largest request header section accepted (S3 allows 8 KiB; keys and copy sources in
#: headers can be 3 KiB percent-encoded, so leave room).
MAX_HEADER_BYTES = 16 * 1024
#: Before an error answer, at most this much unread body is read and dropped, so that a
#: client still sending (hypercorn answers ``Expect: 100-continue`` at once) reads the error
#: instead of a reset; larger bodies are cut off by closing the connection, as S3 does.
DRAIN_LIMIT = 16 * 1024 * 1024
_DRAIN_SECONDS = 5.0

#: S3 codes whose message carries the storage layer's explanation (which part, why).
_DETAILED_CODES = frozenset(
    {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "ConditionalRequestConflict"}
)

#: What an anonymous caller may do, given a public bucket or object.
ANONYMOUS_READS = frozenset(
    {
        Op.GET_OBJECT,
        Op.HEAD_OBJECT,
        Op.GET_OBJECT_ATTRIBUTES,
        Op.HEAD_BUCKET,
        Op.LIST_OBJECTS,
        Op.LIST_OBJECTS_V2,
    }
)
#: Anonymous reads of one object: in a private bucket, the object's own ACL decides.
_OBJECT_READS = frozenset({Op.GET_OBJECT, Op.HEAD_OBJECT, Op.GET_OBJECT_ATTRIBUTES})
PUBLIC_READ_ACLS = frozenset({"public-read", "public-read-write"})
#: The ``NotImplemented`` message of unsupported sub-resources that need more than a name.
UNSUPPORTED_MESSAGES = {
    "versioning": "Bucket versioning is not implemented by Ballast: it keeps one version per key",
}

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")
#: Query parameters never written to logs (a logged presigned URL could be replayed).
_SECRET_PARAMS_RE = re.compile(
    r"((?:^|&)(?:X-Amz-Signature|Signature|X-Amz-Security-Token)=)[^&]*", re.IGNORECASE
)
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: What a CORS preflight is authenticated as: nothing is checked.
_UNSIGNED = AuthResult(None, AuthMethod.ANONYMOUS, PayloadKind.UNSIGNED)


def s3_error_for(exc: storage_errors.StorageError, *, resource: str | None = None) -> S3Error:
    """Translate a storage-layer error into the S3 error the client sees.

    The code comes from the one table, :data:`interfaces.s3.errors.STORAGE_ERRORS`; this adds
    what the answer needs besides: the object size of ``InvalidRange`` (for
    ``Content-Range: bytes */SIZE``) and the explanation of multipart refusals.
    """
    err = from_storage_error(exc, resource=resource)
    if isinstance(exc, storage_errors.InvalidRange):
        return S3Error(err.code, resource=resource, extra={"ActualObjectSize": str(exc.size)})
    if err.code in _DETAILED_CODES and str(exc):
        return S3Error(err.code, str(exc), resource=resource)
    return err


# -- responses ------------------------------------------------------------------------------


@dataclass
class Response:
    """What a handler answers.

    Attributes:
        status: the HTTP status.
        headers: response headers (``Content-Length`` is added by the app).
        body: the body, for fixed-size answers.
        stream: for streamed bodies: called with a sink, sends the bytes through it and
            returns how many it sent; ``length`` is then the ``Content-Length``.
        length: the streamed body's length.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: Callable[[Sink], Awaitable[int]] | None = None
    length: int = 0


def xml_response(body: bytes, status: int = 200) -> Response:
    """A response with an XML body."""
    return Response(status, [("content-type", "application/xml")], body)


# -- request bodies -------------------------------------------------------------------------


class RequestBody:
    """The request body as an async iterator of verified bytes, read with back-pressure.

    Each ``__anext__`` reads at most one ASGI message. The digests the request claims
    (``x-amz-content-sha256``, ``x-amz-checksum-*`` in a header or an aws-chunked trailer)
    are checked when the body ends: on a mismatch the last ``__anext__`` raises
    :class:`S3Error` instead of ``StopAsyncIteration``, so a consumer that commits only
    after a complete body commits nothing.

    Args:
        receive: the ASGI receive callable.
        auth: the request's authentication (payload claim).
        headers: the request headers (``Content-Length``, checksums, trailers).
        decoder: the aws-chunked decoder, for streaming payloads.
    """

    def __init__(
        self,
        receive: Receive,
        auth: AuthResult,
        headers: Headers,
        decoder: ChunkedDecoder | None,
    ) -> None:
        self._receive = receive
        self._auth = auth
        self._decoder = decoder
        length = (headers.get("content-length") or "").strip()
        self.content_length = int(length) if length.isascii() and length.isdigit() else None
        self._sha = hashlib.sha256() if auth.content_sha256 is not None else None
        self.checksum: ChecksumClaim | None = checksum_from_headers(headers)
        self._trailer_algorithm: str | None = None
        if decoder is not None and auth.payload.has_trailer:
            for name in (headers.get("x-amz-trailer") or "").split(","):
                name = name.strip().lower()
                if name.startswith("x-amz-checksum-"):
                    self._trailer_algorithm = name.removeprefix("x-amz-checksum-")
        algorithm = self.checksum.algorithm if self.checksum else self._trailer_algorithm
        self._hasher: Hasher | None = new_checksum(algorithm) if algorithm else None
        # The digests are computed off the event loop (an upload's SHA-256 and CRC cost
        # ~1 ms of CPU per MiB), in order, while the body streams on.
        hashers = [h for h in (self._sha, self._hasher) if h is not None]
        self._lane = HashLane(hashers) if hashers else None
        self._pending: deque[bytes] = deque()
        self._raw_total = 0
        self.raw_done = False  # the last ASGI body message (or a disconnect) was received
        self.disconnected = False
        self._finished = False  # every byte released and verified
        self.size = 0  # decoded bytes released so far
        self.trailers: Trailers | None = None

    @property
    def finished(self) -> bool:
        """Whether the whole body was read and verified."""
        return self._finished

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._finished:
                raise StopAsyncIteration
            await self._fill()
        data = self._pending.popleft()
        return data

    async def _raw_message(self) -> tuple[bytes, bool]:
        message = await self._receive()
        kind = message.get("type")
        if kind == "http.request":
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not more:
                self.raw_done = True
            return bytes(body), more
        if kind == "http.disconnect":
            self.raw_done = True
            self.disconnected = True
            raise S3Error("IncompleteBody", "The client disconnected before sending the body")
        raise S3Error("IncompleteBody", f"Unexpected ASGI message {kind!r}")

    async def _fill(self) -> None:
        if self.raw_done:
            await self._finish()
            return
        if self._lane is not None:
            await self._lane.wait_for_room()
        data, _more = await self._raw_message()
        self._raw_total += len(data)
        if self.content_length is not None and self._raw_total > self.content_length:
            raise S3Error("IncompleteBody", "More data than Content-Length")
        if self._decoder is None:
            if data:
                self._release(data)
            if self.raw_done:
                await self._finish()
            return
        if data:
            self._decoder.receive_data(data)
        if self.raw_done:
            self._decoder.receive_data(b"")
        self._pump()
        if self.raw_done:
            await self._finish()

    def _pump(self) -> None:
        assert self._decoder is not None
        while True:
            event = self._decoder.next_event()
            if event is NEED_DATA or isinstance(event, EndOfMessage):
                return
            if isinstance(event, Data):
                if event.data:
                    self._release(event.data)
            elif isinstance(event, Trailers):
                self.trailers = event

    def _release(self, data: bytes) -> None:
        if self._lane is not None:
            self._lane.feed(data)
        self.size += len(data)
        self._pending.append(data)

    async def _finish(self) -> None:
        if self._finished:
            return
        if (
            self._decoder is None
            and self.content_length is not None
            and self._raw_total != self.content_length
        ):
            raise S3Error("IncompleteBody")
        if self._lane is not None:
            await self._lane.finish()
        if self._sha is not None:
            check_payload_sha256(self._auth, self._sha.digest())
        if self._hasher is not None:
            claim = self.checksum
            if claim is None and self.trailers is not None:
                claim = checksum_from_headers(self.trailers.headers)
                self.checksum = claim
            if claim is not None:
                claim.verify(self._hasher.digest())
        self._finished = True

    async def read_all(self, limit: int) -> bytes:
        """The whole (verified) body, refusing more than ``limit`` bytes.

        Raises:
            S3Error: ``InvalidRequest`` above ``limit``; any verification error.
        """
        if (
            self.content_length is not None
            and self._decoder is None
            and (self.content_length > limit)
        ):
            raise S3Error("InvalidRequest", f"The request body is larger than {limit} bytes")
        out = bytearray()
        async for piece in self:
            out += piece
            if len(out) > limit:
                raise S3Error("InvalidRequest", f"The request body is larger than {limit} bytes")
        return bytes(out)

    async def drain(self, limit: int) -> bool:
        """Read and drop the rest of the raw body if it is small; return whether it ended."""
        if self.raw_done:
            return True
        if self.content_length is not None and self.content_length - self._raw_total > limit:
            return False  # a body without a declared size is read up to ``limit``
        dropped = 0
        with trio.move_on_after(_DRAIN_SECONDS):
            while not self.raw_done and dropped <= limit:
                try:
                    data, _ = await self._raw_message()
                except S3Error:
                    return False
                dropped += len(data)
        return self.raw_done


# -- the request ----------------------------------------------------------------------------


@dataclass
class Request:
    """Everything a handler needs about one authenticated request.

    Attributes:
        id: the request id (``x-amz-request-id``).
        method: the HTTP method.
        path: the raw path as sent.
        query: the raw query string.
        headers: the request headers.
        endpoint: the routed operation.
        auth: who is asking.
        body: the request body.
        release_later: chunks of objects this request replaces or deletes, released once
            the response is sent.
        owner_name: the display name of the caller's key.
        public_bucket: for anonymous reads: the bucket is public (else the object must be).
    """

    id: str
    method: str
    path: str
    query: str
    headers: Headers
    endpoint: Endpoint
    auth: AuthResult
    body: RequestBody
    release_later: ReleaseLater
    owner_name: str = ""
    public_bucket: bool = False

    @property
    def bucket(self) -> str:
        """The bucket (handlers of bucket- and object-level operations only)."""
        assert self.endpoint.bucket is not None
        return self.endpoint.bucket

    @property
    def key(self) -> str:
        """The object key (handlers of object-level operations only)."""
        assert self.endpoint.key is not None
        return self.endpoint.key

    @property
    def anonymous(self) -> bool:
        """Whether the request carried no credentials."""
        return self.auth.access_key is None

    @property
    def owner(self) -> str:
        """The caller's identity as stored with buckets and objects (its access key)."""
        return self.auth.access_key or ""

    @property
    def resource(self) -> str:
        """``/bucket/key`` as S3 echoes it in errors."""
        ep = self.endpoint
        if ep.bucket is None:
            return "/"
        return f"/{ep.bucket}/{ep.key}" if ep.key else f"/{ep.bucket}"


def _ascii_path(raw: bytes) -> str:
    """Raw request-target bytes as ASCII text (non-ASCII octets percent-encoded)."""
    if raw.isascii():
        return raw.decode("ascii")
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def claimed_access_key(headers: Headers, raw_query: str) -> str | None:
    """The access key id a request names (SigV4/SigV2, header or query), unverified."""
    authorization = headers.get("authorization")
    if authorization is not None:
        if authorization.startswith("AWS "):
            return authorization[4:].strip().rpartition(":")[0] or None
        match = _CREDENTIAL_RE.search(authorization)
        return match.group(1) if match else None
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        if name == "X-Amz-Credential":
            return unquote(value).partition("/")[0] or None
        if name == "AWSAccessKeyId":
            return unquote(value) or None
    return None


def _header_value(value: str) -> bytes:
    return _HEADER_VALUE_BAD.sub("", value).encode("latin-1", "replace")


# -- the app --------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Statistics:
    """A snapshot of the S3 front end's counters (exported by ``interfaces.metrics``)."""

    requests: int
    in_flight: int
    responses_2xx: int
    responses_3xx: int
    responses_4xx: int
    responses_5xx: int
    aborted: int
    bytes_received: int
    bytes_sent: int


class S3App:
    """The S3-compatible ASGI application.

    Mount it as any ASGI app, e.g. ``await serve_app(S3App(objects, credentials),
    Address("127.0.0.1", 9000))`` (:func:`interfaces.http.serve_app`).

    Args:
        objects: the buckets and objects.
        credentials: the access keys (stored in the cluster).
        region: the region this endpoint answers for (checked in signatures, reported by
            GetBucketLocation).
        base_domains: domains under which ``BUCKET.DOMAIN`` selects virtual-host addressing.
        clock: seconds since the epoch (signature time and expiry checks).
    """

    def __init__(
        self,
        objects: ObjectStore,
        credentials: CredentialStore,
        *,
        region: str = "us-east-1",
        base_domains: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.objects = objects
        self.credentials = credentials
        self.region = region
        self.base_domains = tuple(base_domains)
        self.clock = clock
        self.max_upload_size = MAX_UPLOAD_SIZE
        self._requests = 0
        self.activity = RequestActivity()
        self._by_class = [0, 0, 0, 0, 0, 0]  # index: status // 100
        self._by_operation: dict[tuple[str, str], int] = {}
        self._aborted = 0
        self._bytes_received = 0
        self._bytes_sent = 0

    def statistics(self) -> S3Statistics:
        """The counters since this app was created."""
        return S3Statistics(
            requests=self._requests,
            in_flight=self.activity.in_flight,
            responses_2xx=self._by_class[2],
            responses_3xx=self._by_class[3],
            responses_4xx=self._by_class[4],
            responses_5xx=self._by_class[5],
            aborted=self._aborted,
            bytes_received=self._bytes_received,
            bytes_sent=self._bytes_sent,
        )

    def operation_counts(self) -> dict[tuple[str, str], int]:
        """Requests answered so far by ``(operation, status class)``, e.g.
        ``("PutObject", "2xx")``; a request that did not route counts as operation ``"?"``."""
        return dict(self._by_operation)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http``; ``lifespan`` is acknowledged)."""
        kind = scope.get("type")
        if kind == "lifespan":
            from interfaces.http import lifespan

            await lifespan(receive, send)
            return
        if kind != "http":
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = secrets.token_hex(8).upper()
        begin = time.monotonic()
        method = str(scope.get("method", "GET")).upper()
        raw_path = scope.get("raw_path") or str(scope.get("path", "/")).encode("utf-8")
        path = _ascii_path(bytes(raw_path))
        query = _ascii_path(bytes(scope.get("query_string", b"")))
        headers = Headers(scope.get("headers", ()))
        state = _State(method, path, None, None)

        async def counting_send(message: Message) -> None:
            self._bytes_sent += len(message.get("body", b""))
            await send(message)

        self._requests += 1
        self.activity.started()
        try:
            try:
                response = await self._process(
                    request_id, method, path, query, headers, receive, state
                )
                status = await self._send(counting_send, response, request_id, method, state)
            except _Aborted as aborted:
                status = aborted.status
                self._aborted += 1
            except _Failure as failure:
                status = await self._send_error(
                    counting_send, failure.error, request_id, method, state
                )
        finally:
            self.activity.ended()
            if state.body is not None:
                self._bytes_received += state.body.size
            if state.release_later:
                # The client has its answer: give the space back once the requests that
                # follow have been served (bounded; see interfaces.s3.activity).
                with trio.CancelScope(shield=True):
                    await self.activity.wait_until_quiet(trio.current_time())
                await self.objects.release(state.release_later)
        self._by_class[min(max(status // 100, 0), 5)] += 1
        op_name = state.endpoint.name if state.endpoint else "?"
        status_class = f"{min(max(status // 100, 0), 5)}xx"
        counted = (op_name, status_class)
        self._by_operation[counted] = self._by_operation.get(counted, 0) + 1
        if logger.isEnabledFor(logging.DEBUG):  # the redaction is not free: only when logged
            logger.debug(
                "%s %s %s%s -> %d %s (%.1f ms)",
                request_id,
                method,
                path,
                "?" + _SECRET_PARAMS_RE.sub(r"\1REDACTED", query) if query else "",
                status,
                op_name,
                (time.monotonic() - begin) * 1000,
            )

    async def _process(
        self,
        request_id: str,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        receive: Receive,
        state: _State,
    ) -> Response:
        """Stages 1-4 (the CORS headers of the answer, ``state.cors``, are worked out just
        before the handler runs: the bucket's rules as the request found them); every error
        leaves as :class:`_Failure` carrying an S3Error."""
        try:
            return await self._process_inner(
                request_id, method, path, query, headers, receive, state
            )
        except Exception as exc:
            error = _error_of(exc, request_id, method, path)
        if not state.cors_matched:
            await self._match_cors(method, headers, state)
        raise _Failure(error)

    async def _process_inner(
        self,
        request_id: str,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        receive: Receive,
        state: _State,
    ) -> Response:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers)
        if header_bytes > MAX_HEADER_BYTES:
            raise S3Error(
                "RequestHeaderSectionTooLarge",
                extra={"MaxSizeAllowed": str(MAX_HEADER_BYTES)},
            )
        endpoint = route(method, path, query, headers, base_domains=self.base_domains)
        state.endpoint = endpoint
        preflight = endpoint.op is Op.CORS_PREFLIGHT
        # A form upload is authenticated by its fields (``post_object`` checks them before
        # it stores a byte): like a preflight, never by the request line or headers.
        form = endpoint.op is Op.POST_OBJECT
        if preflight or form:
            auth = _UNSIGNED
        else:
            auth = await self._authenticate(method, path, query, headers, endpoint)
        decoder = decoder_for_request(auth, headers)
        body = RequestBody(receive, auth, headers, decoder)
        state.body = body
        request = Request(
            request_id, method, path, query, headers, endpoint, auth, body, state.release_later
        )
        if auth.access_key is not None:
            request.owner_name = await self.credentials.name_of(auth.access_key) or ""
        elif not (preflight or form):
            await self._authorize_anonymous(request)
        if endpoint.op is Op.UNSUPPORTED:
            subresource = endpoint.subresource or "This operation"
            raise S3Error(
                "NotImplemented",
                UNSUPPORTED_MESSAGES.get(
                    subresource, f"{subresource} is not implemented by Ballast"
                ),
                resource=request.resource,
            )
        from .handlers import HANDLERS

        handler = HANDLERS[endpoint.op]
        await self._match_cors(method, headers, state)
        return await handler(self, request)

    async def _authenticate(
        self, method: str, path: str, query: str, headers: Headers, endpoint: Endpoint
    ) -> AuthResult:
        claimed = claimed_access_key(headers, query)
        secret = await self.credentials.lookup(claimed) if claimed else None

        def lookup(access_key: str) -> str | None:
            return secret if access_key == claimed else None

        return verify_request(
            method,
            path,
            query,
            headers,
            lookup,
            datetime.fromtimestamp(self.clock(), UTC),
            region=self.region,
            virtual_host_bucket=endpoint.bucket if endpoint.virtual_host else None,
        )

    async def _authorize_anonymous(self, request: Request) -> None:
        endpoint = request.endpoint
        if endpoint.op not in ANONYMOUS_READS or endpoint.bucket is None:
            raise S3Error("AccessDenied", resource=request.resource)
        # A missing bucket is NoSuchBucket for anyone, as in S3 (reads only: an anonymous
        # write was refused above without looking).
        info = await self.objects.head_bucket(endpoint.bucket)
        request.public_bucket = info.acl in PUBLIC_READ_ACLS
        if not request.public_bucket and endpoint.op not in _OBJECT_READS:
            raise S3Error("AccessDenied", resource=request.resource)
        # Reading an object in a private bucket: the handler checks the object's ACL.

    async def _match_cors(self, method: str, headers: Headers, state: _State) -> None:
        """Set ``state.cors`` for a cross-origin request (one with ``Origin``, not a
        preflight) to a bucket whose CORS rules allow its origin and method (the method of
        ``Access-Control-Request-Method`` if it names one, as S3)."""
        state.cors_matched = True
        origin = headers.get("origin")
        endpoint = state.endpoint
        if (
            origin is None
            or endpoint is None
            or endpoint.bucket is None
            or endpoint.op is Op.CORS_PREFLIGHT
        ):
            return
        try:
            rules = await self.objects.cors_rules(endpoint.bucket)
        except storage_errors.StorageError:
            return  # no bucket, or none readable now: no CORS headers
        if rules is not None:
            wanted = headers.get("access-control-request-method") or method
            found = cors.match(rules, origin, wanted)
            if found is not None:
                state.cors = cors.response_headers(found)

    # -- sending ---------------------------------------------------------------------------

    def _base_headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-amz-request-id", request_id.encode()),
            (b"x-amz-id-2", request_id.encode()),
        ]

    async def _start(
        self,
        send: Send,
        status: int,
        headers: Sequence[tuple[str, str]],
        request_id: str,
        length: int,
        state: _State,
    ) -> None:
        raw = self._base_headers(request_id)
        raw.extend((k.encode("latin-1"), _header_value(v)) for k, v in (*headers, *state.cors))
        raw.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})

    async def _send(
        self, send: Send, response: Response, request_id: str, method: str, state: _State
    ) -> int:
        """Send a handler's response; return the status. Raises _Failure before the head."""
        if response.stream is None:
            body = b"" if method == "HEAD" else response.body
            await self._drain(state)
            length = len(response.body)
            await self._start(send, response.status, response.headers, request_id, length, state)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return response.status
        started = False

        async def sink(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                await self._start(
                    send, response.status, response.headers, request_id, response.length, state
                )
            await send({"type": "http.response.body", "body": data, "more_body": True})

        try:
            sent = await response.stream(sink)
        except Exception as exc:  # translated below, or the connection is dropped
            if not started:
                known = _known_error(exc)
                if known is not None:
                    raise _Failure(known) from None
                logger.exception("%s: internal error while streaming", request_id)
                raise _Failure(S3Error("InternalError")) from None
            logger.warning("%s: response aborted after the head was sent: %r", request_id, exc)
            raise _Aborted(response.status) from None
        if started and sent != response.length:
            # The object changed under the reader: never end a body shorter than announced.
            logger.warning(
                "%s: sent %d bytes of %d; dropping the connection",
                request_id,
                sent,
                response.length,
            )
            raise _Aborted(response.status)
        if not started:
            await self._start(
                send, response.status, response.headers, request_id, response.length, state
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return response.status

    async def _drain(self, state: _State) -> None:
        if state.body is not None and not state.body.raw_done:
            await state.body.drain(DRAIN_LIMIT)

    async def _send_error(
        self, send: Send, err: S3Error, request_id: str, method: str, state: _State
    ) -> int:
        status = ERROR_TABLE.get(err.code, (500, ""))[0]
        resource = err.resource
        if resource is None:
            ep = state.endpoint
            if ep is not None and ep.bucket is not None:
                resource = f"/{ep.bucket}/{ep.key}" if ep.key else f"/{ep.bucket}"
            else:
                resource = state.path.partition("?")[0]
        headers: list[tuple[str, str]] = []
        if err.code == "InvalidRange" and "ActualObjectSize" in err.extra:
            headers.append(("content-range", f"bytes */{err.extra['ActualObjectSize']}"))
        if status >= 500:
            logger.warning(
                "%s: %s %s -> %d %s: %s",
                request_id,
                method,
                state.path,
                status,
                err.code,
                err.message,
            )
        if status == 304:
            body = b""
        else:
            headers.append(("content-type", "application/xml"))
            body = xml.error(err, resource=resource, request_id=request_id, host_id=request_id)
        await self._drain(state)
        await self._start(send, status, headers, request_id, len(body), state)
        await send(
            {
                "type": "http.response.body",
                "body": b"" if method == "HEAD" else body,
                "more_body": False,
            }
        )
        return status


def _error_of(exc: Exception, request_id: str, method: str, path: str) -> S3Error:
    """The S3 error answering ``exc`` (called while it is being handled: a bug is logged)."""
    known = _known_error(exc)
    if known is None:
        logger.exception("%s: internal error in %s %s", request_id, method, path)
        return S3Error("InternalError")
    return known


def _known_error(exc: BaseException) -> S3Error | None:
    """``exc`` as an S3 error if it is one or a storage error; in a group (a nursery inside
    the store may wrap its error) the first such one."""
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, storage_errors.StorageError):
        return s3_error_for(exc)
    if isinstance(exc, BaseExceptionGroup):
        for leaf in exc.exceptions:
            found = _known_error(leaf)
            if found is not None:
                return found
    return None


@dataclass
class _State:
    """What the sending stage needs to know about how far a request got."""

    method: str
    path: str
    endpoint: Endpoint | None
    body: RequestBody | None
    release_later: ReleaseLater = field(default_factory=ReleaseLater)
    #: The CORS headers every answer to this request carries (see ``S3App._match_cors``).
    cors: list[tuple[str, str]] = field(default_factory=list)
    #: Whether ``cors`` was worked out (before the handler ran, or when the request failed).
    cors_matched: bool = False


class _Failure(Exception):
    """A request failed before its response started: answer ``error``."""

    def __init__(self, error: S3Error) -> None:
        super().__init__(error.code)
        self.error = error


class _Aborted(Exception):
    """A streamed response failed after its head was sent: the connection is dropped."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


__all__ = [
    "ANONYMOUS_READS",
    "Request",
    "RequestBody",
    "Response",
    "S3App",
    "S3Statistics",
    "claimed_access_key",
    "s3_error_for",
    "xml_response",
]
