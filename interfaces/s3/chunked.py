"""Decoder for ``Content-Encoding: aws-chunked`` request bodies (sans-IO).

Theory of operation
-------------------
Streaming uploads (``x-amz-content-sha256: STREAMING-*``) wrap the object bytes in
aws-chunked framing (sources: S3 API reference, "Transferring Payload in Multiple Chunks"
and "Including Trailing Headers")::

    signed:    HEXSIZE;chunk-signature=SIG\\r\\n DATA \\r\\n   ... 0;chunk-signature=SIG\\r\\n
    unsigned:  HEXSIZE\\r\\n DATA \\r\\n                       ... 0\\r\\n
    then, without trailer:  \\r\\n
    with trailer:           name:value\\r\\n ... [x-amz-trailer-signature:SIG\\r\\n] \\r\\n

Each chunk signature chains from the previous one, starting at the request's seed signature::

    HMAC(key, "AWS4-HMAC-SHA256-PAYLOAD\\n" DATE \\n SCOPE \\n PREV \\n sha256("") \\n sha256(DATA))

and the trailer signature chains from the final (empty) chunk's::

    HMAC(key, "AWS4-HMAC-SHA256-TRAILER\\n" DATE \\n SCOPE \\n PREV \\n sha256(TRAILERS))

where TRAILERS is each trailing header as ``name:value\\n``.

Invariants: for signed bodies no byte of a chunk is released before its signature verified
(a signed chunk is buffered whole, up to ``max_chunk_size``); unsigned chunks are released as
they arrive. Header lines are bounded (``max_line``) so garbage cannot make us buffer without
limit. After the body, the total decoded length must equal ``x-amz-decoded-content-length``
when one was given. Whatever bytes arrive, the decoder either produces events or raises
:class:`~interfaces.s3.errors.S3Error` — never another exception (property-tested).

Usage, h11 style: ``receive_data(bytes)`` (``b""`` at end of input), then call
``next_event()`` until it returns :data:`NEED_DATA` or :class:`EndOfMessage`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from .errors import S3Error
from .headers import Headers
from .sigv4 import EMPTY_SHA256, AuthResult, SigningContext, sign


@dataclass(frozen=True)
class Data:
    """A piece of the decoded object body (already verified if the body is signed)."""

    data: bytes


@dataclass(frozen=True)
class Trailers:
    """The trailing headers (lower-case names, in order), verified if the body is signed."""

    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The value of trailing header ``name``, or ``None``."""
        lname = name.lower()
        return next((v for k, v in self.headers if k == lname), None)


@dataclass(frozen=True)
class EndOfMessage:
    """The body ended cleanly; no more events follow."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`ChunkedDecoder.next_event` when more input is needed.
NEED_DATA: Final = _NeedData()

Event = Data | Trailers | EndOfMessage

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class ChunkedDecoder:
    """Sans-IO aws-chunked decoder with chunk and trailer signature verification.

    Args:
        signing: the request's :class:`SigningContext` for signed streaming bodies, or
            ``None`` for ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``.
        trailer: whether trailing headers follow the final chunk.
        expected_trailers: the names announced in ``x-amz-trailer``; any other trailer is
            refused (empty: accept any).
        decoded_length: ``x-amz-decoded-content-length``, checked at the end if given.
        max_chunk_size: the largest chunk accepted (signed chunks are buffered whole).
        max_line: the longest chunk-header or trailer line accepted.
    """

    def __init__(
        self,
        *,
        signing: SigningContext | None,
        trailer: bool = False,
        expected_trailers: Collection[str] = (),
        decoded_length: int | None = None,
        max_chunk_size: int = 16 * 1024 * 1024,
        max_line: int = 4096,
    ) -> None:
        self._signing = signing
        self._previous = signing.seed_signature if signing is not None else ""
        self._trailer = trailer
        self._expected = frozenset(n.lower() for n in expected_trailers)
        self._decoded_length = decoded_length
        self._max_chunk = max_chunk_size
        self._max_line = max_line
        self._buf = bytearray()
        self._eof = False
        self._state = _SIZE
        self._remaining = 0
        self._chunk_sig = ""
        self._trailers: list[tuple[str, str]] = []
        self._trailer_sig: str | None = None
        self._total = 0
        self._pending: Event | None = None
        self._error: S3Error | None = None

    @property
    def decoded_bytes(self) -> int:
        """How many body bytes have been released so far."""
        return self._total

    def receive_data(self, data: bytes) -> None:
        """Feed raw body bytes; ``b""`` means the input ended."""
        if (self._eof or self._state == _DONE) and data:
            raise S3Error("IncompleteBody", "Unexpected data after the end of the body")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next decoded event, or :data:`NEED_DATA`.

        Raises:
            S3Error: ``IncompleteBody`` (truncated or malformed framing),
                ``SignatureDoesNotMatch`` (a chunk or trailer signature is wrong),
                ``InvalidRequest`` (unexpected trailer), ``EntityTooLarge`` (oversized chunk).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except S3Error as err:
            # Like h11's ERROR state: once the framing is broken it stays broken.
            self._error = err
            raise

    def _next_event(self) -> Event | _NeedData:
        while True:
            if self._pending is not None:
                event, self._pending = self._pending, None
                return event
            if self._state == _DONE:
                return EndOfMessage()
            progressed = self._step()
            if self._pending is not None:
                continue
            if not progressed:
                if self._eof:
                    if self._state == _TRAILER and self._trailer and self._buf == b"":
                        # Some SDKs omit the blank line after the trailers.
                        self._finish_trailers()
                        continue
                    raise S3Error("IncompleteBody")
                return NEED_DATA

    # -- state machine ---------------------------------------------------------------------

    def _step(self) -> bool:
        if self._state == _SIZE:
            return self._read_size_line()
        if self._state == _DATA:
            return self._read_data()
        if self._state == _DATA_CRLF:
            if len(self._buf) < 2:
                return False
            if self._buf[:2] != b"\r\n":
                raise S3Error("IncompleteBody", "Malformed chunk: missing CRLF after data")
            del self._buf[:2]
            self._state = _SIZE
            return True
        if self._state == _TRAILER:
            return self._read_trailer_line()
        return False

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\n", 0, self._max_line + 1)
        if end < 0:
            if len(self._buf) > self._max_line:
                raise S3Error("IncompleteBody", "Chunk header or trailer line too long")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if not line.endswith(b"\r"):
            raise S3Error("IncompleteBody", "Malformed chunk: line not terminated by CRLF")
        return line[:-1]

    def _read_size_line(self) -> bool:
        line = self._line()
        if line is None:
            return False
        size_text, _, ext = line.partition(b";")
        if not size_text or len(size_text) > 16 or not all(c in _HEXDIGITS for c in size_text):
            raise S3Error("IncompleteBody", "Malformed chunk size")
        size = int(size_text, 16)
        if self._signing is not None:
            name, eq, sig = ext.partition(b"=")
            if name != b"chunk-signature" or not eq or len(sig) != 64:
                raise S3Error("IncompleteBody", "Malformed chunk signature")
            self._chunk_sig = sig.decode("latin-1")
        elif ext:
            raise S3Error("IncompleteBody", "Unexpected chunk extension in an unsigned body")
        if size > self._max_chunk:
            raise S3Error("EntityTooLarge", "Chunk too large")
        self._remaining = size
        if size == 0:
            self._verify_chunk(b"")
            if self._trailer:
                self._state = _TRAILER
            else:
                self._expect_final_crlf()
            return True
        self._state = _DATA
        return True

    def _expect_final_crlf(self) -> None:
        # Without trailers the final chunk is followed by one empty line.
        self._state = _TRAILER
        self._trailer = False

    def _read_data(self) -> bool:
        if self._signing is not None:
            # A signed chunk is released only whole and verified: wait until all of it is
            # buffered, then copy it out once.
            if len(self._buf) < self._remaining:
                return False
            data = bytes(self._buf[: self._remaining])
            del self._buf[: self._remaining]
            self._remaining = 0
            self._verify_chunk(data)
            self._emit(data)
        else:
            if not self._buf:
                return False
            take = min(self._remaining, len(self._buf))
            piece = bytes(self._buf[:take])
            del self._buf[:take]
            self._remaining -= take
            self._emit(piece)
        if self._remaining == 0:
            self._state = _DATA_CRLF
        return True

    def _emit(self, data: bytes) -> None:
        self._total += len(data)
        if self._decoded_length is not None and self._total > self._decoded_length:
            raise S3Error("IncompleteBody", "Body longer than x-amz-decoded-content-length")
        self._pending = Data(data)

    def _verify_chunk(self, data: bytes) -> None:
        ctx = self._signing
        if ctx is None:
            return
        string = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n{ctx.amz_date}\n{ctx.scope}\n{self._previous}\n"
            f"{EMPTY_SHA256}\n{hashlib.sha256(data).hexdigest()}"
        )
        expected = sign(ctx.signing_key, string)
        if not hmac.compare_digest(expected.encode(), self._chunk_sig.encode("latin-1")):
            raise S3Error("SignatureDoesNotMatch", "Chunk signature does not match")
        self._previous = expected

    def _read_trailer_line(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if line == b"":
            self._finish_trailers()
            return True
        if not self._trailer:
            raise S3Error("IncompleteBody", "Unexpected data after the final chunk")
        name_b, colon, value_b = line.partition(b":")
        name = name_b.decode("latin-1").strip().lower()
        value = value_b.decode("latin-1").strip()
        if not colon or not name:
            raise S3Error("IncompleteBody", "Malformed trailing header")
        if name == "x-amz-trailer-signature":
            if self._signing is None or self._trailer_sig is not None:
                raise S3Error("InvalidRequest", "Unexpected x-amz-trailer-signature")
            self._trailer_sig = value
            return True
        if self._trailer_sig is not None:
            raise S3Error("IncompleteBody", "Trailing header after x-amz-trailer-signature")
        if self._expected and name not in self._expected:
            raise S3Error(
                "InvalidRequest", f"Trailing header '{name}' was not announced in x-amz-trailer"
            )
        if len(self._trailers) >= 16:
            raise S3Error("InvalidRequest", "Too many trailing headers")
        self._trailers.append((name, value))
        return True

    def _finish_trailers(self) -> None:
        if self._trailer:
            ctx = self._signing
            if ctx is not None:
                if self._trailer_sig is None:
                    raise S3Error("SignatureDoesNotMatch", "Missing x-amz-trailer-signature")
                canonical = "".join(f"{k}:{v}\n" for k, v in self._trailers)
                digest = hashlib.sha256(canonical.encode("latin-1")).hexdigest()
                string = (
                    f"AWS4-HMAC-SHA256-TRAILER\n{ctx.amz_date}\n{ctx.scope}\n{self._previous}\n"
                    f"{digest}"
                )
                expected = sign(ctx.signing_key, string).encode()
                if not hmac.compare_digest(expected, self._trailer_sig.encode("latin-1")):
                    raise S3Error("SignatureDoesNotMatch", "Trailer signature does not match")
            missing = self._expected - {k for k, _ in self._trailers}
            if missing:
                raise S3Error("IncompleteBody", f"Missing trailing header {sorted(missing)[0]}")
            self._pending = Trailers(tuple(self._trailers))
        if self._buf:
            raise S3Error("IncompleteBody", "Unexpected data after the end of the body")
        if self._decoded_length is not None and self._total != self._decoded_length:
            raise S3Error("IncompleteBody")
        self._state = _DONE


def decoder_for_request(
    auth: AuthResult,
    headers: Headers,
    *,
    max_chunk_size: int = 16 * 1024 * 1024,
) -> ChunkedDecoder | None:
    """The decoder a request's body needs, or ``None`` if its body is not aws-chunked.

    Reads ``x-amz-decoded-content-length`` (required) and ``x-amz-trailer`` (the announced
    trailing headers) from ``headers``.

    Raises:
        S3Error: ``MissingContentLength`` (411) without a valid decoded length;
            ``InvalidRequest`` if a trailer is announced for a payload that has none.
    """
    if not auth.payload.streaming:
        return None
    length = (headers.get("x-amz-decoded-content-length") or "").strip()
    if not (length.isascii() and length.isdigit()) or len(length) > 19:
        raise S3Error(
            "MissingContentLength", "You must provide the x-amz-decoded-content-length header"
        )
    announced = [
        n.strip().lower() for n in (headers.get("x-amz-trailer") or "").split(",") if n.strip()
    ]
    if announced and not auth.payload.has_trailer:
        raise S3Error("InvalidRequest", "x-amz-trailer requires a STREAMING-*-TRAILER payload")
    return ChunkedDecoder(
        signing=auth.signing,
        trailer=auth.payload.has_trailer,
        expected_trailers=announced,
        decoded_length=int(length),
        max_chunk_size=max_chunk_size,
    )


def stored_content_encoding(value: str | None) -> str | None:
    """``Content-Encoding`` as stored with the object: ``aws-chunked`` removed (as S3 does)."""
    if value is None:
        return None
    kept = [c.strip() for c in value.split(",") if c.strip() and c.strip().lower() != "aws-chunked"]
    return ", ".join(kept) or None
