"""Bucket-name and object-key validation, following S3's published naming rules.

Bucket names (S3 "general purpose bucket naming rules"): 3–63 characters of lower-case
letters, digits, ``.`` and ``-``; beginning and ending with a letter or digit; no two adjacent
periods; not formatted as an IPv4 address; not starting with ``xn--``, ``sthree-`` or
``amzn-s3-demo-``; not ending with ``-s3alias``, ``--ol-s3``, ``.mrap``, ``--x-s3`` or
``--table-s3``.

Object keys: any Unicode string whose UTF-8 encoding is 1..1024 bytes.
"""

from __future__ import annotations

import re

from .errors import S3Error

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid bucket name, or ``None`` if it is."""
    if not 3 <= len(name) <= 63:
        return "Bucket name must be between 3 (min) and 63 (max) characters long"
    if not name.isascii() or not _BUCKET_RE.fullmatch(name):
        return (
            "Bucket name can consist only of lowercase letters, numbers, periods (.), and "
            "hyphens (-), and must begin and end with a letter or number"
        )
    if ".." in name:
        return "Bucket name must not contain two adjacent periods"
    if _IPV4_RE.fullmatch(name):
        return "Bucket name must not be formatted as an IP address"
    if name.startswith(_RESERVED_PREFIXES):
        return "Bucket name must not start with a reserved prefix"
    if name.endswith(_RESERVED_SUFFIXES):
        return "Bucket name must not end with a reserved suffix"
    return None


def is_valid_bucket_name(name: str) -> bool:
    """Whether ``name`` satisfies S3's bucket naming rules."""
    return bucket_name_problem(name) is None


def validate_bucket_name(name: str) -> None:
    """Raise ``InvalidBucketName`` unless ``name`` satisfies S3's bucket naming rules."""
    problem = bucket_name_problem(name)
    if problem is not None:
        raise S3Error("InvalidBucketName", problem, extra={"BucketName": name[:255]})


def validate_object_key(key: str) -> None:
    """Raise unless ``key`` is a valid object key (non-empty, UTF-8, <= 1024 bytes).

    Raises:
        S3Error: ``KeyTooLongError`` above 1024 bytes; ``InvalidArgument`` if empty or not
            encodable as UTF-8 (lone surrogates).
    """
    if not key:
        raise S3Error("InvalidArgument", "Object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise S3Error(
            "KeyTooLongError",
            extra={"MaxSizeAllowed": str(MAX_KEY_BYTES), "Size": str(size)},
        )
