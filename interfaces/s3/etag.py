"""ETags, ``Content-MD5`` and the ``x-amz-checksum-*`` family.

* A single-part object's ETag is the quoted hex MD5 of its bytes.
* A multipart object's ETag is ``"hex(MD5(md5(part1) || ... || md5(partN)))-N"``.
* ``Content-MD5`` is the base64 of the 16-byte MD5: malformed -> ``InvalidDigest``,
  mismatch -> ``BadDigest``.
* ``x-amz-checksum-ALG`` (header or aws-chunked trailer) is the base64 of the big-endian
  digest, for ALG in CRC32, CRC32C, CRC64NVME, SHA1, SHA256; mismatch -> ``BadDigest``.
  Multipart "composite" checksums are the checksum of the concatenated part digests,
  suffixed ``-N``.

The SHAs come from the stdlib (C speed). The CRCs come from :mod:`native` (PCLMULQDQ /
SSE4.2 kernels, or portable slicing-by-8 tables). CRC32 gives the values of ``zlib.crc32``;
CRC32C and CRC64NVME have no stdlib implementation. The table-driven pure-Python loops kept
here run at only a few MB/s; they are the reference implementations the native kernels are
cross-checked against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import native

from .errors import S3Error
from .headers import Headers

#: Supported checksum algorithms, as named in ``x-amz-checksum-algorithm``.
ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
_DIGEST_SIZE = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}


# -- ETags ---------------------------------------------------------------------------------------


def quote_etag(hexdigest: str) -> str:
    """Wrap an ETag value in double quotes, as S3 sends it."""
    return f'"{hexdigest}"'


def unquote_etag(etag: str) -> str:
    """Strip surrounding whitespace and double quotes from an ETag."""
    etag = etag.strip()
    if len(etag) >= 2 and etag[0] == '"' and etag[-1] == '"':
        return etag[1:-1]
    return etag


def md5_etag(data: bytes) -> str:
    """The quoted ETag of a single-part object with body ``data``."""
    return quote_etag(hashlib.md5(data, usedforsecurity=False).hexdigest())


def multipart_etag(part_md5s: Sequence[bytes | str]) -> str:
    """The quoted ETag of a multipart object, from its parts' MD5s (bytes or hex/ETags).

    Raises:
        S3Error: ``InvalidPart`` if a part ETag is not a hex MD5.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for part in part_md5s:
        if isinstance(part, str):
            try:
                raw = bytes.fromhex(unquote_etag(part))
            except ValueError:
                raise S3Error("InvalidPart") from None
        else:
            raw = part
        if len(raw) != 16:
            raise S3Error("InvalidPart")
        digest.update(raw)
    return quote_etag(f"{digest.hexdigest()}-{len(part_md5s)}")


def parse_content_md5(value: str) -> bytes:
    """Decode a ``Content-MD5`` header to its 16 raw bytes.

    Raises:
        S3Error: ``InvalidDigest`` if it is not base64 of 16 bytes.
    """
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", extra={"Content-MD5": value[:64]}) from None
    if len(raw) != 16:
        raise S3Error("InvalidDigest", extra={"Content-MD5": value[:64]})
    return raw


def check_content_md5(expected: bytes, actual: bytes) -> None:
    """Raise ``BadDigest`` unless the received body's MD5 equals ``Content-MD5``."""
    if expected != actual:
        raise S3Error(
            "BadDigest",
            extra={
                "ExpectedDigest": base64.b64encode(expected).decode(),
                "CalculatedDigest": base64.b64encode(actual).decode(),
            },
        )


# -- checksums ------------------------------------------------------------------------------------


class Hasher(Protocol):
    """An incremental checksum (the subset of hashlib's interface we use)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Feed more bytes."""

    def digest(self) -> bytes:
        """The big-endian digest of everything fed so far."""


def _reflected_table(poly: int, width: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    del width
    return tuple(table)


_CRC32C_TABLE = _reflected_table(0x82F63B78, 32)
_CRC64NVME_TABLE = _reflected_table(0x9A6C9329AC4BC9B5, 64)


def _crc_pure(table: tuple[int, ...], mask: int) -> Callable[[bytes, int], int]:
    def update(data: bytes, crc: int) -> int:
        crc ^= mask
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ mask

    return update


crc32c_update_pure = _crc_pure(_CRC32C_TABLE, 0xFFFFFFFF)
"""The pure-Python CRC32C: the reference the native kernel is cross-checked against."""

crc64nvme_update_pure = _crc_pure(_CRC64NVME_TABLE, 0xFFFFFFFFFFFFFFFF)
"""The pure-Python CRC-64/NVME: the reference the native kernel is cross-checked against."""


def crc32c_update(data: bytes | bytearray | memoryview, crc: int) -> int:
    """CRC32C of ``data`` continuing from ``crc`` (0 to start), by the native kernel."""
    return native.crc32c(data, crc)


def crc64nvme_update(data: bytes | bytearray | memoryview, crc: int) -> int:
    """CRC-64/NVME of ``data`` continuing from ``crc`` (0 to start), by the native kernel."""
    return native.crc64nvme(data, crc)


class _Crc:
    def __init__(self, fn: Callable[[bytes | bytearray | memoryview, int], int], size: int) -> None:
        self._fn = fn
        self._size = size
        self._crc = 0

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._crc = self._fn(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(self._size, "big")


def new_checksum(algorithm: str) -> Hasher:
    """A fresh incremental hasher for ``algorithm`` (case-insensitive, see :data:`ALGORITHMS`).

    Raises:
        S3Error: ``InvalidRequest`` for an unknown algorithm.
    """
    alg = algorithm.upper()
    if alg == "CRC32":
        return _Crc(native.crc32, 4)
    if alg == "CRC32C":
        return _Crc(crc32c_update, 4)
    if alg == "CRC64NVME":
        return _Crc(crc64nvme_update, 8)
    if alg == "SHA1":
        return hashlib.sha1(usedforsecurity=False)
    if alg == "SHA256":
        return hashlib.sha256()
    raise S3Error("InvalidRequest", "Value for x-amz-checksum-algorithm header is invalid.")


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The ``x-amz-checksum-ALG`` value of ``data``."""
    hasher = new_checksum(algorithm)
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode("ascii")


def composite_checksum(algorithm: str, part_digests: Iterable[bytes]) -> str:
    """The multipart composite checksum, ``base64(ALG(d1 || ... || dN))-N``."""
    hasher = new_checksum(algorithm)
    count = 0
    for digest in part_digests:
        hasher.update(digest)
        count += 1
    return f"{base64.b64encode(hasher.digest()).decode('ascii')}-{count}"


@dataclass(frozen=True)
class ChecksumClaim:
    """A checksum the client asserts: algorithm (upper-case) and raw digest."""

    algorithm: str
    digest: bytes

    @property
    def header(self) -> str:
        """The header name, e.g. ``x-amz-checksum-crc32c``."""
        return f"x-amz-checksum-{self.algorithm.lower()}"

    @property
    def b64(self) -> str:
        """The base64 value as sent."""
        return base64.b64encode(self.digest).decode("ascii")

    def verify(self, computed: bytes) -> None:
        """Raise ``BadDigest`` unless ``computed`` equals the claimed digest."""
        if computed != self.digest:
            raise S3Error(
                "BadDigest",
                f"The {self.algorithm} you specified did not match the calculated checksum.",
            )


def parse_checksum(algorithm: str, value: str) -> ChecksumClaim:
    """Decode one ``x-amz-checksum-ALG`` value.

    Raises:
        S3Error: ``InvalidRequest`` if the algorithm is unknown or the value malformed.
    """
    alg = algorithm.upper()
    if alg not in _DIGEST_SIZE:
        raise S3Error("InvalidRequest", f"Unsupported checksum algorithm {algorithm[:32]!r}")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_SIZE[alg]:
        raise S3Error(
            "InvalidRequest", f"Value for x-amz-checksum-{alg.lower()} header is invalid."
        )
    return ChecksumClaim(alg, raw)


def checksum_from_headers(headers: Headers | Iterable[tuple[str, str]]) -> ChecksumClaim | None:
    """The ``x-amz-checksum-*`` claim among ``headers`` (or trailers), if any.

    Raises:
        S3Error: ``InvalidRequest`` if more than one is present or one is malformed.
    """
    found = []
    for name, value in headers:
        lname = name.lower()
        if lname.startswith("x-amz-checksum-") and lname not in (
            "x-amz-checksum-algorithm",
            "x-amz-checksum-type",
            "x-amz-checksum-mode",
        ):
            found.append(parse_checksum(lname.removeprefix("x-amz-checksum-"), value))
    if len(found) > 1:
        raise S3Error(
            "InvalidRequest",
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        )
    return found[0] if found else None
