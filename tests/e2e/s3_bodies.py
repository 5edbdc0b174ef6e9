"""Small helpers the boto3 end-to-end tests share: reading a body, the MD5 an ETag quotes."""

from __future__ import annotations

import hashlib
from typing import Any


def read_body(response: dict[str, Any]) -> bytes:
    """The whole body of a boto3 ``get_object`` response (the stream is closed after)."""
    body = response["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data


def md5_hex(data: bytes) -> str:
    """The hex MD5 of ``data`` (a single-PUT object's ETag, unquoted)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
