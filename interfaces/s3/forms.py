"""A streaming parser of ``multipart/form-data`` request bodies (sans-IO).

Theory of operation
-------------------
Browser uploads to S3 (PostObject) send an HTML form as ``multipart/form-data`` (sources:
RFC 2046 section 5.1.1, RFC 7578, and the S3 API reference, "POST Object")::

    preamble CRLF --BOUNDARY [LWSP] CRLF
    Header: value CRLF ... CRLF
    part body
    CRLF --BOUNDARY [LWSP] CRLF
    ...
    CRLF --BOUNDARY-- epilogue

The delimiter is ``CRLF--BOUNDARY``: the CRLF before it belongs to the delimiter, never to
the part's body. Parsing starts as if a CRLF preceded the first byte, so that a body opening
with ``--BOUNDARY`` and a body with a preamble are the same case. Inside a part's body
everything up to the next delimiter is data, including text that merely starts like a
delimiter (``CRLF--BOUND`` followed by anything else): while the delimiter cannot be ruled
out, at most ``len(delimiter) - 1`` bytes are held back, and released as data as soon as the
following bytes show they were not a delimiter. A part's body is therefore never buffered:
each :meth:`FormParser.receive_data` releases what it can as one :class:`PartData`.

Bounds: the part headers (``max_header_bytes``) and the line after a delimiter are the only
things buffered whole; the preamble, part bodies and the epilogue stream through. Every part
must carry ``Content-Disposition: form-data; name="..."`` (an optional ``filename`` or
RFC 5987 ``filename*``). Header names are case-insensitive; header text is UTF-8, as
browsers send it.

After the closing delimiter, :class:`FormEnd` is returned (every time :meth:`next_event` is
called) and any epilogue is ignored. Input ending anywhere else is ``MalformedPOSTRequest``.
Whatever bytes arrive, in whatever pieces, the parser either returns events or raises
:class:`~interfaces.s3.errors.S3Error` with that code, never another exception
(property-tested with random bodies and random splits).

Usage, h11 style: ``receive_data(bytes)`` (``b""`` at the end of the body), then call
``next_event()`` until it returns :data:`NEED_DATA` or :class:`FormEnd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from .errors import S3Error

#: Longest part header section accepted (names, filenames and content types of a form).
MAX_HEADER_BYTES = 8 * 1024
#: Longest boundary RFC 2046 allows.
MAX_BOUNDARY = 70
_MALFORMED = "MalformedPOSTRequest"
#: Longest line after a delimiter (``--`` or transport padding, then CRLF).
_MAX_PADDING = 1024


@dataclass(frozen=True)
class PartStart:
    """A part begins.

    Attributes:
        name: the form field's name (``Content-Disposition`` ``name``), as sent.
        filename: the ``filename`` parameter, if any (file inputs).
        headers: the part's headers, names lower-cased, in order.
    """

    name: str
    filename: str | None
    headers: tuple[tuple[str, str], ...]

    @property
    def content_type(self) -> str | None:
        """The part's ``Content-Type``, if sent."""
        return next((v for k, v in self.headers if k == "content-type"), None)


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's body."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part ended (a delimiter followed its body)."""


@dataclass(frozen=True)
class FormEnd:
    """The closing delimiter was read; the rest of the body is an epilogue, ignored."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`FormParser.next_event` when more input is needed.
NEED_DATA: Final = _NeedData()

Event = PartStart | PartData | PartEnd | FormEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


def malformed(detail: str | None = None) -> S3Error:
    """The ``MalformedPOSTRequest`` error (S3's message, then ``detail`` if given)."""
    message = "The body of your POST request is not well-formed multipart/form-data."
    return S3Error(_MALFORMED, f"{message} {detail}" if detail else message)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` ``Content-Type`` header.

    Raises:
        S3Error: ``PreconditionFailed`` if the body is not ``multipart/form-data`` (as S3
            answers a form posted with another enclosure type); ``MalformedPOSTRequest``
            without a valid boundary.
    """
    kind, _, params = (content_type or "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise S3Error(
            "PreconditionFailed",
            extra={"Condition": "Bucket POST must be of the enclosure-type multipart/form-data"},
        )
    boundary = _parameters(params).get("boundary")
    if (
        not boundary
        or len(boundary) > MAX_BOUNDARY
        or not boundary.isascii()
        or not boundary.isprintable()
    ):
        raise malformed("The multipart boundary is missing or invalid.")
    return boundary.encode("ascii")


class FormParser:
    """Parse one ``multipart/form-data`` body into events (see the module docstring).

    Args:
        boundary: the boundary from the ``Content-Type`` header (:func:`boundary_of`).
        max_header_bytes: the largest header section of one part.
    """

    def __init__(self, boundary: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        if not 1 <= len(boundary) <= MAX_BOUNDARY or b"\r" in boundary or b"\n" in boundary:
            raise malformed("The multipart boundary is missing or invalid.")
        self._delimiter = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._buffer = bytearray(b"\r\n")  # the first delimiter needs no CRLF before it
        self._state = _PREAMBLE
        self._eof = False
        self._pending_end = False  # a PartEnd is due before the next event
        self._consumed = -2  # the virtual CRLF is not input
        self._received = 0

    @property
    def consumed(self) -> int:
        """How many input bytes have been parsed into events (or skipped) so far."""
        return max(self._consumed, 0)

    @property
    def received(self) -> int:
        """How many input bytes :meth:`receive_data` was given."""
        return self._received

    def receive_data(self, data: bytes) -> None:
        """Feed the next piece of the body; ``b""`` means the body ended.

        Raises:
            S3Error: ``MalformedPOSTRequest`` for data after the end of input.
        """
        if self._eof:
            if data:
                raise malformed("Data after the end of the body.")
            return
        if not data:
            self._eof = True
            return
        self._received += len(data)
        if self._state != _DONE:  # the epilogue is dropped as it comes
            self._buffer += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`.

        Raises:
            S3Error: ``MalformedPOSTRequest`` on any framing error, or when the input ends
                before the closing delimiter.
        """
        if self._pending_end:
            self._pending_end = False
            return PartEnd()
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state == _HEADERS:
            return self._headers()
        if self._state == _BODY:
            return self._body()
        return FormEnd()

    # -- states ----------------------------------------------------------------------------

    def _take(self, count: int) -> bytes:
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._consumed += count
        return out

    def _need(self, detail: str) -> _NeedData:
        if self._eof:
            raise malformed(detail)
        return NEED_DATA

    def _preamble(self) -> Event | _NeedData:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            # Keep what could be the start of the delimiter; the rest is preamble.
            self._take(max(len(self._buffer) - len(self._delimiter) + 1, 0))
            return self._need("The body has no multipart boundary.")
        self._take(index + len(self._delimiter))
        self._state = _AFTER_DELIMITER
        return self.next_event()

    def _after_delimiter(self) -> Event | _NeedData:
        if self._buffer[:2] == b"--":
            self._take(2)
            self._state = _DONE
            self._buffer.clear()
            return FormEnd()
        end = self._buffer.find(b"\r\n")
        if end < 0:
            # Padding so far, maybe the CR of its CRLF, or the first '-' of "--".
            pending = self._buffer[:-1] if self._buffer.endswith(b"\r") else self._buffer
            if len(self._buffer) > _MAX_PADDING or (pending.strip(b" \t") and pending != b"-"):
                raise malformed("Garbage after a multipart boundary.")
            return self._need("The body ends inside a multipart boundary.")
        if self._buffer[:end].strip(b" \t"):
            raise malformed("Garbage after a multipart boundary.")
        self._take(end + 2)
        self._state = _HEADERS
        return self.next_event()

    def _headers(self) -> Event | _NeedData:
        if self._buffer[:2] == b"\r\n":
            end, raw = 0, b""
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._max_header_bytes:
                    raise malformed("The headers of a part are too large.")
                return self._need("The body ends inside the headers of a part.")
            raw = bytes(self._buffer[:end])
        if end > self._max_header_bytes:
            raise malformed("The headers of a part are too large.")
        event = _part_start(raw)
        self._take(end + (2 if end == 0 else 4))
        self._state = _BODY
        return event

    def _body(self) -> Event | _NeedData:
        index = self._buffer.find(self._delimiter)
        if index >= 0:
            self._state = _AFTER_DELIMITER
            data = self._take(index)
            self._take(len(self._delimiter))
            if data:
                self._pending_end = True
                return PartData(data)
            return PartEnd()
        # No delimiter yet: release all but a tail that could be its beginning.
        safe = len(self._buffer) - len(self._delimiter) + 1
        tail = self._buffer.find(b"\r", max(safe, 0))
        release = len(self._buffer) if tail < 0 else tail
        if release > 0:
            return PartData(self._take(release))
        return self._need("The body ends inside a part.")


def _part_start(raw: bytes) -> PartStart:
    """The event of one part's header section (``raw``: the lines, without the blank one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("A part header is not UTF-8.") from None
    headers: list[tuple[str, str]] = []
    for line in text.split("\r\n") if text else ():
        header, colon, value = line.partition(":")
        if not colon or not header or any(c in header for c in " \t\r\n"):
            raise malformed("A part header is not 'Name: value'.")
        if "\r" in value or "\n" in value:
            raise malformed("A part header is not 'Name: value'.")
        headers.append((header.lower(), value.strip(" \t")))
    disposition = next((v for k, v in headers if k == "content-disposition"), None)
    if disposition is None:
        raise malformed("A part has no Content-Disposition header.")
    kind, _, params = disposition.partition(";")
    fields = _parameters(params)
    name = fields.get("name")
    if kind.strip().lower() != "form-data" or name is None:
        raise malformed("A part's Content-Disposition is not form-data with a name.")
    filename = fields.get("filename")
    extended = fields.get("filename*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _language, _, encoded = rest.partition("'")
        if charset.strip().lower() in ("utf-8", "us-ascii"):
            try:
                filename = unquote(encoded, errors="strict")
            except UnicodeDecodeError:
                raise malformed("A part's filename* is not UTF-8.") from None
    return PartStart(name, filename, tuple(headers))


def _parameters(text: str) -> dict[str, str]:
    """``; name=value; name="quoted"`` parameters (names lower-cased, the first one wins).

    A quoted value ends at the first ``"`` not escaped by a backslash; ``\\"`` and ``\\\\``
    are unescaped (other backslashes are kept: browsers send Windows paths unescaped).

    Raises:
        S3Error: ``MalformedPOSTRequest`` for an unterminated quoted value.
    """
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        value = ""
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                i += 1
                chars: list[str] = []
                while True:
                    if i >= n:
                        raise malformed("An unterminated quoted header parameter.")
                    c = text[i]
                    if c == "\\" and i + 1 < n and text[i + 1] in '"\\':
                        chars.append(text[i + 1])
                        i += 2
                    elif c == '"':
                        i += 1
                        break
                    else:
                        chars.append(c)
                        i += 1
                value = "".join(chars)
                while i < n and text[i] != ";":
                    i += 1
            else:
                start = i
                while i < n and text[i] != ";":
                    i += 1
                value = text[start:i].strip()
        if name:
            out.setdefault(name, value)
    return out


__all__ = [
    "MAX_HEADER_BYTES",
    "NEED_DATA",
    "Event",
    "FormEnd",
    "FormParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_of",
    "malformed",
]
