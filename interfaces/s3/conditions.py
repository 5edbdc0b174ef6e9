"""Conditional requests: ``If-Match``, ``If-None-Match``, ``If-(Un)Modified-Since``.

Reads (GetObject/HeadObject) follow RFC 9110 §13.2.2's order, which is also what S3
documents for its header pairs:

1. ``If-Match`` present and false -> 412 ``PreconditionFailed``;
2. else ``If-Unmodified-Since`` present (and no ``If-Match``) and false -> 412;
3. ``If-None-Match`` present and false -> 304 ``NotModified``;
4. else ``If-Modified-Since`` present (and no ``If-None-Match``) and false -> 304.

So ``If-Match`` true + ``If-Unmodified-Since`` false serves the object, and ``If-None-Match``
false + ``If-Modified-Since`` true answers 304 — the two cases S3's GetObject page spells out.
``If-Match`` compares strongly, ``If-None-Match`` weakly; ``*`` matches any existing object;
unquoted entity tags are tolerated (many clients send them). Dates compare at one-second
resolution (HTTP dates have no fractions); an unparseable date is ignored.

Writes (PutObject, CompleteMultipartUpload, CopyObject destination) follow S3 conditional
writes: ``If-None-Match: *`` fails with 412 if the key exists (no other value is supported:
501 ``NotImplemented``); ``If-Match: ETAG`` fails with 404 ``NoSuchKey`` if the key is absent
and 412 if its ETag differs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from .errors import S3Error


def parse_http_date(value: str | None) -> datetime | None:
    """Parse an HTTP date (IMF-fixdate, RFC 850 or asctime); ``None`` if absent or invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def format_http_date(when: datetime) -> str:
    """Format ``when`` as an IMF-fixdate (``Last-Modified``), e.g. ``Wed, 12 Oct 2009 ...``."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return format_datetime(when, usegmt=True)


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _opaque(tag: str) -> tuple[bool, str]:
    weak = tag.startswith("W/")
    if weak:
        tag = tag[2:]
    if len(tag) >= 2 and tag.startswith('"') and tag.endswith('"'):
        tag = tag[1:-1]
    return weak, tag


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` list matches ``etag``.

    Args:
        header: the header value (``*`` or a comma-separated list of entity tags).
        etag: the object's ETag, quoted or not.
        weak: weak comparison (``If-None-Match``) or strong (``If-Match``).
    """
    _, current = _opaque(etag.strip())
    for tag in _tags(header):
        if tag == "*":
            return True
        is_weak, opaque = _opaque(tag)
        if is_weak and not weak:
            continue
        if opaque == current:
            return True
    return False


def _seconds(when: datetime) -> datetime:
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.replace(microsecond=0)


def check_read_preconditions(
    *,
    etag: str,
    last_modified: datetime,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
) -> None:
    """Evaluate GET/HEAD preconditions against an existing object.

    Raises:
        S3Error: ``PreconditionFailed`` (412) or ``NotModified`` (304).
    """
    modified = _seconds(last_modified)
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})
    else:
        since = parse_http_date(if_unmodified_since)
        if since is not None and modified > since:
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Unmodified-Since"})
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            raise S3Error("NotModified")
    else:
        since = parse_http_date(if_modified_since)
        if since is not None and modified <= since:
            raise S3Error("NotModified")


def check_write_preconditions(
    *,
    current_etag: str | None,
    if_match: str | None = None,
    if_none_match: str | None = None,
) -> None:
    """Evaluate S3 conditional-write headers against the key's current state.

    Args:
        current_etag: the ETag of the object now at the key, or ``None`` if there is none.
        if_match: the ``If-Match`` header.
        if_none_match: the ``If-None-Match`` header (only ``*`` is supported).

    Raises:
        S3Error: ``PreconditionFailed`` (412), ``NoSuchKey`` (404), ``NotImplemented`` (501).
    """
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise S3Error(
                "NotImplemented",
                extra={
                    "Header": "If-None-Match",
                    "additionalMessage": "We don't accept the "
                    "provided value of If-None-Match header for this API",
                },
            )
        if current_etag is not None:
            raise S3Error("PreconditionFailed", extra={"Condition": "If-None-Match"})
    if if_match is not None:
        if current_etag is None:
            raise S3Error("NoSuchKey")
        if not etag_matches(if_match, current_etag, weak=False):
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})
