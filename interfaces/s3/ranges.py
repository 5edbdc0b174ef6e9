"""``Range`` header evaluation for GetObject/HeadObject, as S3 does it (RFC 9110 §14).

* ``bytes=A-B`` (B clamped to the last byte), ``bytes=A-`` (to the end), ``bytes=-N`` (the
  last N bytes, the whole object if N >= size) are served as 206 with ``Content-Range``.
* A syntactically valid single range that cannot be satisfied (``A >= size``, ``bytes=-0``,
  ``A-B`` on an empty object) is ``InvalidRange`` (416, with ``Content-Range: bytes */SIZE``).
* A header S3 does not understand — another unit, bad syntax, ``B < A``, or **several**
  ranges (S3 does not serve ``multipart/byteranges``; it answers 200 with the whole
  object) — is ignored: :func:`parse_range` returns ``None`` and the server sends 200.
* On an empty object a suffix range ``bytes=-N`` (N > 0) is ignored too (200, empty body).

``x-amz-copy-source-range`` (UploadPartCopy) is stricter: only ``bytes=A-B`` within the
source, else ``InvalidArgument`` / ``InvalidRange``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import S3Error

_SPEC = re.compile(r"bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*", re.ASCII)
_COPY_SPEC = re.compile(r"bytes=(\d+)-(\d+)", re.ASCII)
_MAX_DIGITS = 19  # anything longer exceeds every object size we can hold


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range ``start..end`` of an object of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        """How many bytes the range covers."""
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` header value, e.g. ``bytes 0-9/100``."""
        return f"bytes {self.start}-{self.end}/{self.size}"


def unsatisfiable(size: int, requested: str | None = None) -> S3Error:
    """The ``InvalidRange`` error for an object of ``size`` bytes."""
    extra = {"ActualObjectSize": str(size)}
    if requested is not None:
        extra["RangeRequested"] = requested[:256]
    return S3Error("InvalidRange", extra=extra)


def parse_range(value: str | None, size: int) -> ByteRange | None:
    """Evaluate a ``Range`` header against an object of ``size`` bytes.

    Returns:
        The range to serve with 206, or ``None`` to serve the whole object with 200.

    Raises:
        S3Error: ``InvalidRange`` (416) if the single range is unsatisfiable.
    """
    if value is None:
        return None
    match = _SPEC.fullmatch(value.strip())
    if match is None:
        return None  # unknown unit, bad syntax or several ranges: ignored, as S3 does
    first, last = match.group(1), match.group(2)
    if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS or (not first and not last):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise unsatisfiable(size, value)
        if size == 0:
            return None
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None  # invalid byte-range-spec: the header is ignored
    if start >= size:
        raise unsatisfiable(size, value)
    return ByteRange(start, size - 1 if end is None else min(end, size - 1), size)


def parse_copy_source_range(value: str, size: int) -> ByteRange:
    """Evaluate ``x-amz-copy-source-range`` (``bytes=A-B``) against the source's size.

    Raises:
        S3Error: ``InvalidArgument`` for bad syntax, ``InvalidRange`` if outside the source.
    """
    match = _COPY_SPEC.fullmatch(value.strip())
    if match is None or len(match.group(1)) > _MAX_DIGITS or len(match.group(2)) > _MAX_DIGITS:
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            extra={"ArgumentName": "x-amz-copy-source-range", "ArgumentValue": value[:256]},
        )
    start, end = int(match.group(1)), int(match.group(2))
    if end < start or end >= size:
        raise unsatisfiable(size, value)
    return ByteRange(start, end, size)
