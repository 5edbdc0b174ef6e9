"""ETags, Content-MD5 and x-amz-checksum-* (standard check values from the CRC catalogue)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum  # type: ignore[import-untyped]

from interfaces.s3.errors import S3Error
from interfaces.s3.etag import (
    check_content_md5,
    checksum_b64,
    checksum_from_headers,
    composite_checksum,
    crc32c_update,
    crc32c_update_pure,
    crc64nvme_update,
    md5_etag,
    multipart_etag,
    new_checksum,
    parse_checksum,
    parse_content_md5,
    unquote_etag,
)
from interfaces.s3.headers import Headers

CHECK = b"123456789"


def test_md5_etag() -> None:
    assert md5_etag(b"") == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert unquote_etag(md5_etag(b"")) == "d41d8cd98f00b204e9800998ecf8427e"


def test_multipart_etag() -> None:
    parts = [b"a" * 5 * 1024 * 1024, b"b" * 1024]
    md5s = [hashlib.md5(p).digest() for p in parts]
    expected = hashlib.md5(b"".join(md5s)).hexdigest() + "-2"
    assert multipart_etag(md5s) == f'"{expected}"'
    assert multipart_etag([md5_etag(p) for p in parts]) == f'"{expected}"'
    with pytest.raises(S3Error, match="InvalidPart"):
        multipart_etag(['"nothex"'])


def test_content_md5() -> None:
    digest = hashlib.md5(b"hello").digest()
    assert parse_content_md5(base64.b64encode(digest).decode()) == digest
    for bad in ("", "!!!", base64.b64encode(b"short").decode()):
        with pytest.raises(S3Error) as info:
            parse_content_md5(bad)
        assert info.value.code == "InvalidDigest"
    check_content_md5(digest, digest)
    with pytest.raises(S3Error) as info:
        check_content_md5(digest, hashlib.md5(b"other").digest())
    assert (info.value.code, info.value.status) == ("BadDigest", 400)


@pytest.mark.parametrize(
    ("algorithm", "value"),
    [
        ("CRC32", 0xCBF43926),
        ("CRC32C", 0xE3069283),
        ("CRC64NVME", 0xAE8B14860A799888),
    ],
)
def test_crc_check_values(algorithm: str, value: int) -> None:
    hasher = new_checksum(algorithm)
    hasher.update(CHECK[:4])
    hasher.update(CHECK[4:])
    assert int.from_bytes(hasher.digest(), "big") == value


def test_crc32c_known_vectors() -> None:
    # RFC 3720 (iSCSI) appendix B.4 test vectors
    assert crc32c_update(bytes(32), 0) == 0x8A9136AA
    assert crc32c_update(b"\xff" * 32, 0) == 0x62A8AB43
    assert crc32c_update(bytes(range(32)), 0) == 0x46DD794E
    data = bytes(range(256)) * 40
    assert crc32c_update(data, 0) == crc32c_update_pure(data, 0)
    assert crc64nvme_update(b"", 0) == 0


@pytest.mark.parametrize(
    ("algorithm", "botocore_cls"),
    [("CRC32", Crc32Checksum), ("SHA1", Sha1Checksum), ("SHA256", Sha256Checksum)],
)
def test_matches_botocore(algorithm: str, botocore_cls: type) -> None:
    data = b"The quick brown fox" * 100
    theirs = botocore_cls()
    theirs.update(data)
    assert checksum_b64(algorithm, data) == theirs.b64digest()


def test_checksum_claims() -> None:
    crc = checksum_b64("CRC32", b"abc")
    claim = checksum_from_headers(Headers([("X-Amz-Checksum-CRC32", crc), ("host", "h")]))
    assert claim is not None
    assert (claim.algorithm, claim.b64, claim.header) == ("CRC32", crc, "x-amz-checksum-crc32")
    hasher = new_checksum("crc32")
    hasher.update(b"abc")
    claim.verify(hasher.digest())
    with pytest.raises(S3Error, match="BadDigest"):
        claim.verify(b"\0\0\0\0")
    assert checksum_from_headers(Headers([("x-amz-checksum-algorithm", "CRC32")])) is None
    with pytest.raises(S3Error, match="InvalidRequest"):
        checksum_from_headers([("x-amz-checksum-crc32", crc), ("x-amz-checksum-sha1", crc)])
    with pytest.raises(S3Error, match="InvalidRequest"):
        parse_checksum("crc32", "AAAA")  # 3 bytes, not 4
    with pytest.raises(S3Error, match="InvalidRequest"):
        parse_checksum("md5", "AAAAAA==")
    with pytest.raises(S3Error, match="InvalidRequest"):
        new_checksum("xxhash")


def test_composite_checksum() -> None:
    parts = [b"part one", b"part two"]
    digests = []
    for part in parts:
        hasher = new_checksum("SHA256")
        hasher.update(part)
        digests.append(hasher.digest())
    expected = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert composite_checksum("SHA256", digests) == f"{expected}-2"
