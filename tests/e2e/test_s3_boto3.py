"""boto3 and botocore against the real S3 endpoint on loopback: every supported operation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import json
import os
import random
import shutil
import subprocess
import time
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from xml.etree import ElementTree

import botocore.auth  # type: ignore[import-untyped, unused-ignore]
import botocore.awsrequest  # type: ignore[import-untyped, unused-ignore]
import botocore.credentials  # type: ignore[import-untyped, unused-ignore]
import botocore.exceptions  # type: ignore[import-untyped, unused-ignore]
import pytest
from botocore import UNSIGNED  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

from interfaces.s3 import etag, handlers
from storage import bucket_index, objects
from storage.bucket_index import BucketIndex
from storage.errors import Contention
from storage.object_records import ObjectRecord
from tests.e2e.conftest import S3Server, url_path
from tests.e2e.s3_bodies import read_body
from tests.fake_blockstore import FakeBlockStore

MiB = 1024 * 1024


def _code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def _status(info: pytest.ExceptionInfo[ClientError]) -> int:
    return int(info.value.response["ResponseMetadata"]["HTTPStatusCode"])


def _md5(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _add_header(client: Any, event: str, name: str, value: str) -> None:
    def add(request: Any, **_: Any) -> None:
        request.headers[name] = value

    client.meta.events.register_first(f"before-sign.s3.{event}", add)


# -- buckets -----------------------------------------------------------------------------------


def test_bucket_lifecycle(s3_server: S3Server, s3: Any) -> None:
    name = "e2e-lifecycle"
    s3.create_bucket(Bucket=name)
    try:
        assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") is None
        with pytest.raises(ClientError) as info:
            s3.create_bucket(Bucket=name)
        assert _code(info) == "BucketAlreadyOwnedByYou"
        s3.put_object(Bucket=name, Key="k", Body=b"x")
        with pytest.raises(ClientError) as info:
            s3.delete_bucket(Bucket=name)
        assert _code(info) == "BucketNotEmpty"
        s3.delete_object(Bucket=name, Key="k")
    finally:
        s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket=name)
    assert _status(info) == 404
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=name)
    assert _code(info) == "NoSuchBucket"


def test_bucket_names_and_location(s3: Any) -> None:
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="Upper_Case")
    assert _code(info) == "InvalidBucketName"
    with pytest.raises(ClientError) as info:
        s3.create_bucket(
            Bucket="e2e-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    assert (_code(info), _status(info)) == ("IllegalLocationConstraintException", 400)
    assert info.value.response["Error"]["Message"] == (
        "The eu-west-1 location constraint is incompatible for the region specific endpoint "
        "this request was sent to."
    )


def test_bucket_redundancy_header(s3_server: S3Server) -> None:
    client = s3_server.client(s3={"addressing_style": "path"})
    _add_header(client, "CreateBucket", "x-ballast-redundancy", "4+2")
    client.create_bucket(Bucket="e2e-erasure")
    try:
        head = client.head_bucket(Bucket="e2e-erasure")
        assert head["ResponseMetadata"]["HTTPHeaders"]["x-ballast-redundancy"] == "4+2"
        stored = s3_server.run(s3_server.objects.head_bucket, "e2e-erasure")
        assert str(stored.redundancy) == "4+2"
    finally:
        client.delete_bucket(Bucket="e2e-erasure")
    bad = s3_server.client(s3={"addressing_style": "path"})
    _add_header(bad, "CreateBucket", "x-ballast-redundancy", "lots")
    with pytest.raises(ClientError) as info:
        bad.create_bucket(Bucket="e2e-bad-redundancy")
    assert _code(info) == "InvalidArgument"


# -- objects -----------------------------------------------------------------------------------


def test_put_get_head_with_metadata(s3: Any, bucket: str) -> None:
    data = random.Random(1).randbytes(300_000)
    put = s3.put_object(
        Bucket=bucket,
        Key="dir/obj",
        Body=data,
        Metadata={"colour": "blue", "n": "1"},
        ContentType="image/png",
        ContentEncoding="identity",
        ContentDisposition='attachment; filename="x.png"',
        ContentLanguage="en",
        CacheControl="max-age=60",
        Expires=datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert put["ETag"] == _md5(data)
    got = s3.get_object(Bucket=bucket, Key="dir/obj")
    assert read_body(got) == data
    for response in (got, s3.head_object(Bucket=bucket, Key="dir/obj")):
        assert response["ETag"] == _md5(data)
        assert response["ContentLength"] == len(data)
        assert response["Metadata"] == {"colour": "blue", "n": "1"}
        assert response["ContentType"] == "image/png"
        assert response["ContentEncoding"] == "identity"
        assert response["ContentDisposition"] == 'attachment; filename="x.png"'
        assert response["ContentLanguage"] == "en"
        assert response["CacheControl"] == "max-age=60"
        assert response["Expires"].year == 2030
    overridden = s3.get_object(
        Bucket=bucket, Key="dir/obj", ResponseContentType="text/plain", ResponseCacheControl="no"
    )
    read_body(overridden)
    assert overridden["ContentType"] == "text/plain"
    assert overridden["CacheControl"] == "no"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="missing")
    assert _code(info) == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="missing")
    assert _status(info) == 404
    empty = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert empty["ETag"] == _md5(b"")
    assert read_body(s3.get_object(Bucket=bucket, Key="empty")) == b""


def test_errors_before_the_body_is_read(s3: Any, bucket: str) -> None:
    """An answer sent before the body was read still reaches boto3 (the body is drained)."""
    body = b"u" * (6 * MiB)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="e2e-no-such-bucket", Key="k", Body=body)
    assert _code(info) == "NoSuchBucket"
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=bucket, Key="k", UploadId="nope", PartNumber=1, Body=body)
    assert _code(info) == "NoSuchUpload"
    s3.put_object(Bucket=bucket, Key="k", Body=b"still fine")


def test_ranges(s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    cases = {
        "bytes=0-9": (data[:10], "bytes 0-9/10240"),
        "bytes=10000-": (data[10000:], "bytes 10000-10239/10240"),
        "bytes=-5": (data[-5:], "bytes 10235-10239/10240"),
        "bytes=100-99999": (data[100:], "bytes 100-10239/10240"),
    }
    for spec, (expected, content_range) in cases.items():
        got = s3.get_object(Bucket=bucket, Key="r", Range=spec)
        assert read_body(got) == expected, spec
        assert got["ContentRange"] == content_range
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    ignored = s3.get_object(Bucket=bucket, Key="r", Range="bytes=5-2")
    assert read_body(ignored) == data
    assert ignored["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=20000-")
    assert _code(info) == "InvalidRange"
    assert _status(info) == 416
    head = s3.head_object(Bucket=bucket, Key="r", Range="bytes=0-0")
    assert head["ContentLength"] == 1


def test_conditional_get_and_head(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"cond")["ETag"]
    assert read_body(s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)) == b"cond"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert _status(info) == 304
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert _code(info) == "PreconditionFailed"
    future = datetime.now(UTC) + timedelta(days=1)
    past = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert _status(info) == 304
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert _status(info) == 412
    assert read_body(s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)) == b"cond"


def test_conditional_put(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="w", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="w", Body=b"two", IfNoneMatch="*")
    assert _code(info) == "PreconditionFailed"
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="w", Body=b"two", IfMatch='"ffff"')
    assert _code(info) == "PreconditionFailed"
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"two", IfMatch=etag)
    assert _code(info) == "NoSuchKey"
    s3.put_object(Bucket=bucket, Key="w", Body=b"two", IfMatch=etag)
    assert read_body(s3.get_object(Bucket=bucket, Key="w")) == b"two"


def test_content_md5_and_checksums(s3: Any, bucket: str) -> None:
    data = b"checked body" * 1000
    good = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=data, ContentMD5=good)
    wrong = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="bad-md5", Body=data, ContentMD5=wrong)
    assert _code(info) == "BadDigest"
    put = s3.put_object(Bucket=bucket, Key="sha", Body=data, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    crc = base64.b64encode(zlib.crc32(b"nope").to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="bad-crc", Body=data, ChecksumCRC32=crc)
    assert _code(info) == "BadDigest"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["md5", "sha"]


def test_checksums_are_kept_and_returned_when_asked(s3: Any, bucket: str) -> None:
    """The checksum a PUT carried (and that was verified) is stored with the object and
    returned by GET and HEAD with ``x-amz-checksum-mode: ENABLED`` (botocore then checks
    the body against it); a copy keeps it, a ranged read does not carry it."""
    data = random.Random(3).randbytes(300_000)
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="sha", Body=data, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=bucket, Key="crc", Body=data, ChecksumCRC32=crc)
    got = s3.get_object(Bucket=bucket, Key="sha", ChecksumMode="ENABLED")
    assert read_body(got) == data
    assert (got["ChecksumSHA256"], got["ChecksumType"]) == (sha, "FULL_OBJECT")
    head = s3.head_object(Bucket=bucket, Key="crc", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == crc
    ranged = s3.get_object(Bucket=bucket, Key="crc", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert read_body(ranged) == data[:10]
    assert "ChecksumCRC32" not in ranged
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "crc"})
    copied = s3.head_object(Bucket=bucket, Key="copy", ChecksumMode="ENABLED")
    assert copied["ChecksumCRC32"] == crc


def test_large_bodies_with_every_crc_claim(s3: Any, bucket: str) -> None:
    """6 MiB bodies (hashed off the event loop, in several batches) with CRC32, CRC32C and
    CRC64NVME claims: right ones are stored and echoed, a wrong one is BadDigest and nothing
    is stored. The expected values come from the pure-Python references (and zlib)."""
    data = random.Random(7).randbytes(6 * 1024 * 1024 + 123)
    head = data[: 256 * 1024]
    # The pure-Python references are slow: check them on a prefix, extend with zlib/native.
    assert etag.crc32c_update(head, 0) == etag.crc32c_update_pure(head, 0)
    assert etag.crc64nvme_update(head, 0) == etag.crc64nvme_update_pure(head, 0)
    claims = {
        "CRC32": zlib.crc32(data).to_bytes(4, "big"),
        "CRC32C": etag.crc32c_update(data, 0).to_bytes(4, "big"),
        "CRC64NVME": etag.crc64nvme_update(data, 0).to_bytes(8, "big"),
    }
    for algorithm, digest in claims.items():
        value = base64.b64encode(digest).decode()
        put = s3.put_object(
            Bucket=bucket, Key=f"crc-{algorithm}", Body=data, **{f"Checksum{algorithm}": value}
        )
        assert put[f"Checksum{algorithm}"] == value
        assert read_body(s3.get_object(Bucket=bucket, Key=f"crc-{algorithm}")) == data
        wrong = base64.b64encode(bytes(len(digest))).decode()
        with pytest.raises(ClientError) as info:
            s3.put_object(
                Bucket=bucket, Key=f"bad-{algorithm}", Body=data, **{f"Checksum{algorithm}": wrong}
            )
        assert _code(info) == "BadDigest"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["crc-CRC32", "crc-CRC32C", "crc-CRC64NVME"]


def test_special_keys(s3: Any, bucket: str) -> None:
    keys = [
        "with space",
        "plus+sign",
        "percent%20literal",
        "100%",
        "ünïcødé/日本語/🎉",
        "a?b&c=d#e",
        "tilde~and'quote\"",
        "x" * 1024,
        "é" * 512,
    ]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in keys:
        assert read_body(s3.get_object(Bucket=bucket, Key=key)) == key.encode()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed, key=lambda k: k.encode()) == sorted(keys, key=lambda k: k.encode())
    encoded = s3.list_objects(Bucket=bucket, EncodingType="url")
    # boto3 decodes only when it chose the encoding itself (it does for list_objects).
    assert {unquote(o["Key"]) for o in encoded["Contents"]} == set(keys)
    assert {o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]} == set(keys)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="y" * 1025, Body=b"")
    assert _code(info) == "KeyTooLongError"
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


# -- listing -----------------------------------------------------------------------------------


def test_list_objects_v1_and_v2(s3: Any, bucket: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "b/1", "c", "d"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    v2 = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in v2["Contents"]] == ["c", "d"]
    assert [p["Prefix"] for p in v2["CommonPrefixes"]] == ["a/", "b/"]
    assert v2["KeyCount"] == 4
    sub = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in sub["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["a/b/"]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="b/1")
    assert [o["Key"] for o in after["Contents"]] == ["c", "d"]
    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}
    ):
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == keys
    seen = []
    for page in s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}
    ):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == keys
    v1 = s3.list_objects(Bucket=bucket, Marker="a/b/3", MaxKeys=2)
    assert [o["Key"] for o in v1["Contents"]] == ["b/1", "c"]
    assert v1["IsTruncated"] is True
    v1 = s3.list_objects(Bucket=bucket, Delimiter="/", MaxKeys=1)
    assert v1["NextMarker"] == "a/"
    assert "Contents" not in v1
    assert s3.list_objects(Bucket=bucket, MaxKeys=1)["Contents"][0]["Owner"]["ID"]
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!not-a-token!!")
    assert _code(info) == "InvalidArgument"


def test_list_object_versions(s3: Any, bucket: str) -> None:
    for key in ("v1", "v2", "v3"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions] == [
        ("v1", "null", True),
        ("v2", "null", True),
        ("v3", "null", True),
    ]
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=2)
    assert page["IsTruncated"] is True
    assert page["NextKeyMarker"] == "v2"
    rest = s3.list_object_versions(Bucket=bucket, KeyMarker="v2", VersionIdMarker="null")
    assert [v["Key"] for v in rest["Versions"]] == ["v3"]
    with pytest.raises(ClientError) as info:
        s3.list_object_versions(Bucket=bucket, KeyMarker="v2", VersionIdMarker="3HL4kqtJlcpX")
    assert (_code(info), _status(info)) == ("InvalidArgument", 400)
    assert info.value.response["Error"]["ArgumentName"] == "version-id-marker"
    assert read_body(s3.get_object(Bucket=bucket, Key="v1", VersionId="null")) == b"v1"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="v1", VersionId="3HL4kqtJlcpXroDTDmJ")
    assert _code(info) == "NoSuchVersion"


def test_list_object_versions_ending_on_a_common_prefix(s3: Any, bucket: str) -> None:
    for key in ("a/1", "a/2", "b"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    page = s3.list_object_versions(Bucket=bucket, Delimiter="/", MaxKeys=1)
    assert page["IsTruncated"] is True
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/"]
    assert page["NextKeyMarker"] == "a/"
    assert "NextVersionIdMarker" not in page  # the last entry was no version
    page = s3.list_object_versions(Bucket=bucket, Delimiter="/", MaxKeys=1, KeyMarker="a/")
    assert [v["Key"] for v in page["Versions"]] == ["b"]
    assert page["IsTruncated"] is False
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=1)
    assert (page["NextKeyMarker"], page["NextVersionIdMarker"]) == ("a/1", "null")


# -- deletion and copies -----------------------------------------------------------------------


def test_delete_objects(s3: Any, bucket: str) -> None:
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d{i}", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="never-existed")
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "d0"}, {"Key": "d1"}, {"Key": "nope"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["d0", "d1", "nope"]
    quiet = s3.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": "d2"}, {"Key": "d3", "VersionId": "bogus"}], "Quiet": True},
    )
    assert "Deleted" not in quiet
    assert [(e["Key"], e["Code"]) for e in quiet["Errors"]] == [("d3", "NoSuchVersion")]
    many = [{"Key": f"m{i}"} for i in range(1000)]
    assert len(s3.delete_objects(Bucket=bucket, Delete={"Objects": many})["Deleted"]) == 1000
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert left == ["d3", "d4"]


def test_copy_object(s3: Any, bucket: str) -> None:
    etag = s3.put_object(
        Bucket=bucket, Key="src", Body=b"copy me", Metadata={"a": "1"}, ContentType="text/x"
    )["ETag"]
    out = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert out["CopyObjectResult"]["ETag"] == etag
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert (head["Metadata"], head["ContentType"]) == ({"a": "1"}, "text/x")
    s3.copy_object(
        Bucket=bucket,
        Key="dst2",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
        ContentType="text/y",
    )
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert (head["Metadata"], head["ContentType"]) == ({"b": "2"}, "text/y")
    assert read_body(s3.get_object(Bucket=bucket, Key="dst2")) == b"copy me"
    with pytest.raises(ClientError) as info:
        s3.copy_object(
            Bucket=bucket,
            Key="dst3",
            CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceIfMatch='"0000"',
        )
    assert _code(info) == "PreconditionFailed"
    s3.copy_object(
        Bucket=bucket,
        Key="dst3",
        CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceIfNoneMatch='"0000"',
    )
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert _code(info) == "InvalidRequest"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert _code(info) == "NoSuchKey"


def test_copy_source_size_limit(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert handlers.MAX_COPY_SOURCE_SIZE == 5 * 1024**3  # S3's limit, lowered below
    monkeypatch.setattr(handlers, "MAX_COPY_SOURCE_SIZE", 10)
    s3.put_object(Bucket=bucket, Key="ten", Body=b"0123456789")
    s3.put_object(Bucket=bucket, Key="eleven", Body=b"0123456789a")
    s3.copy_object(Bucket=bucket, Key="ten-copy", CopySource={"Bucket": bucket, "Key": "ten"})
    too_large = (
        "The specified copy source is larger than the maximum allowable size for a copy source: 10"
    )
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "eleven"})
    assert (_code(info), _status(info)) == ("InvalidRequest", 400)
    assert info.value.response["Error"]["Message"] == too_large
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    source = {"Bucket": bucket, "Key": "eleven"}
    part = {"Bucket": bucket, "Key": "mp", "UploadId": upload_id, "PartNumber": 1}
    s3.upload_part_copy(**part, CopySource=source, CopySourceRange="bytes=1-10")
    for extra in ({}, {"CopySourceRange": "bytes=0-10"}):
        with pytest.raises(ClientError) as info:
            s3.upload_part_copy(**part, CopySource=source, **extra)
        assert (_code(info), _status(info)) == ("InvalidRequest", 400), extra
        assert info.value.response["Error"]["Message"] == too_large
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [p["Size"] for p in parts] == [10]
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id)


def _error(info: pytest.ExceptionInfo[ClientError]) -> dict[str, str]:
    error: dict[str, str] = info.value.response["Error"]
    return error


def test_errors_name_their_bucket_key_or_upload(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """S3's code-specific elements (BucketName, Key, UploadId) reach ``response["Error"]``."""
    missing = "e2e-never-created"
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=missing)
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("NoSuchBucket", missing)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=missing, Key="k", Body=b"x")
    assert _error(info)["BucketName"] == missing
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket=bucket)
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("BucketAlreadyOwnedByYou", bucket)
    access_key, secret = s3_server.run(s3_server.credentials.create_key, "naming")
    try:
        other = s3_server.client(
            access_key=access_key, secret=secret, s3={"addressing_style": "path"}
        )
        with pytest.raises(ClientError) as info:
            other.create_bucket(Bucket=bucket)
        assert (_error(info)["Code"], _error(info)["BucketName"]) == ("BucketAlreadyExists", bucket)
    finally:
        s3_server.run(s3_server.credentials.delete_key, access_key)
    s3.put_object(Bucket=bucket, Key="here", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket=bucket)
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("BucketNotEmpty", bucket)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="dir/gone ü")
    assert (_error(info)["Code"], _error(info)["Key"]) == ("NoSuchKey", "dir/gone ü")
    for call in (s3.list_parts, s3.abort_multipart_upload):
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="k", UploadId="no-such-upload")
        assert (_error(info)["Code"], _error(info)["UploadId"]) == (
            "NoSuchUpload",
            "no-such-upload",
        )
    # Copies name the source when it is the source that is missing.
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "src-gone"})
    assert (_error(info)["Code"], _error(info)["Key"]) == ("NoSuchKey", "src-gone")
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": missing, "Key": "here"})
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("NoSuchBucket", missing)
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=missing, Key="c", CopySource={"Bucket": bucket, "Key": "here"})
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("NoSuchBucket", missing)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    part = {"Bucket": bucket, "Key": "mp", "UploadId": upload_id, "PartNumber": 1}
    for extra in ({}, {"CopySourceRange": "bytes=0-0"}):
        with pytest.raises(ClientError) as info:
            s3.upload_part_copy(**part, CopySource={"Bucket": bucket, "Key": "src-gone"}, **extra)
        assert (_error(info)["Code"], _error(info)["Key"]) == ("NoSuchKey", "src-gone"), extra
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(**part, CopySource={"Bucket": missing, "Key": "here"})
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("NoSuchBucket", missing)
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(
            **{**part, "Bucket": missing}, CopySource={"Bucket": bucket, "Key": "here"}
        )
    assert (_error(info)["Code"], _error(info)["BucketName"]) == ("NoSuchBucket", missing)
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id)


# -- multipart ---------------------------------------------------------------------------------


def test_multipart_operations(s3: Any, bucket: str) -> None:
    part1 = random.Random(2).randbytes(5 * MiB)
    part2 = b"tail" * (5 * MiB // 4)
    s3.put_object(Bucket=bucket, Key="copy-src", Body=b"0123456789" * 100)
    created = s3.create_multipart_upload(
        Bucket=bucket, Key="mp", ContentType="video/mp4", Metadata={"m": "p"}
    )
    upload_id = created["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=part1)
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=2, Body=part2)
    e3 = s3.upload_part_copy(
        Bucket=bucket,
        Key="mp",
        UploadId=upload_id,
        PartNumber=3,
        CopySource={"Bucket": bucket, "Key": "copy-src"},
        CopySourceRange="bytes=10-29",
    )["CopyPartResult"]
    assert e1["ETag"] == _md5(part1)
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("mp", upload_id)]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 5 * MiB), (3, 20)]
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id, MaxParts=1)
    assert page["IsTruncated"] is True
    assert page["NextPartNumberMarker"] == 1
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]
            },
        )
    assert _code(info) == "InvalidPart"
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 3, "ETag": e3["ETag"]},
                    {"PartNumber": 2, "ETag": e2["ETag"]},
                ]
            },
        )
    assert _code(info) == "InvalidPartOrder"
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 1, "ETag": e1["ETag"]},
                    {"PartNumber": 4, "ETag": e3["ETag"]},
                ]
            },
        )
    assert _code(info) == "InvalidPart"
    small = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    s1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=1, Body=b"a")
    s2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=2, Body=b"b")
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="small",
            UploadId=small,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 1, "ETag": s1["ETag"]},
                    {"PartNumber": 2, "ETag": s2["ETag"]},
                ]
            },
        )
    assert _code(info) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": e1["ETag"]},
                {"PartNumber": 2, "ETag": e2["ETag"]},
                {"PartNumber": 3, "ETag": e3["ETag"]},
            ]
        },
    )
    assert done["ETag"].endswith('-3"')
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert read_body(got) == part1 + part2 + b"0123456789" * 2
    assert (got["ContentType"], got["Metadata"]) == ("video/mp4", {"m": "p"})
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as info:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    assert _code(info) == "NoSuchUpload"

    aborted = s3.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="gone", UploadId=aborted, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=aborted)
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=bucket, Key="gone", UploadId=aborted, PartNumber=2, Body=b"y")
    assert _code(info) == "NoSuchUpload"
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="mp2",
            UploadId="whatever",
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "copy-src"},
            CopySourceRange="bytes=0-5000",
        )
    assert _code(info) in ("InvalidRange", "NoSuchUpload")


def test_managed_transfers(s3: Any, bucket: str) -> None:
    """s3transfer (upload_fileobj/download_fileobj): parallel parts and ranged GETs."""
    data = random.Random(5).randbytes(20 * MiB + 123)
    s3.upload_fileobj(io.BytesIO(data), bucket, "managed")
    head = s3.head_object(Bucket=bucket, Key="managed")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')  # 8 MiB parts
    out = io.BytesIO()
    s3.download_fileobj(bucket, "managed", out)
    assert out.getvalue() == data


def _multipart_object(s3: Any, bucket: str, key: str, parts: list[bytes]) -> str:
    """Upload ``parts`` as a multipart object; return its quoted ETag."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        out = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        done.append({"PartNumber": number, "ETag": out["ETag"]})
    completed = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    return str(completed["ETag"])


def test_get_and_head_by_part_number(s3: Any, bucket: str) -> None:
    parts = [random.Random(7).randbytes(5 * MiB + 1), b"p" * (5 * MiB), b"last part: 20 bytes"]
    etag = _multipart_object(s3, bucket, "mp", parts)
    total = sum(len(p) for p in parts)
    start = 0
    for number, data in enumerate(parts, start=1):
        end = start + len(data) - 1
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert read_body(got) == data, number
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentLength"] == len(data)
        assert got["ContentRange"] == f"bytes {start}-{end}/{total}"
        assert (got["PartsCount"], got["ETag"]) == (3, etag)
        start = end + 1
    head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert (head["ContentLength"], head["PartsCount"], head["ETag"]) == (5 * MiB, 3, etag)
    assert head["ContentRange"] == f"bytes {5 * MiB + 1}-{10 * MiB}/{total}"
    whole = s3.head_object(Bucket=bucket, Key="mp")
    assert (whole["ContentLength"], whole["PartsCount"]) == (total, 3)
    for call in (s3.get_object, s3.head_object):
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="mp", PartNumber=4)
        assert _status(info) == 416
        if call is s3.get_object:
            assert _code(info) == "InvalidPartNumber"
            assert _error(info)["Message"] == "The requested partnumber is not satisfiable"
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="mp", PartNumber=2, Range="bytes=0-9")
        assert _status(info) == 400
        if call is s3.get_object:
            assert _code(info) == "InvalidRequest"
            assert _error(info)["Message"] == (
                "Cannot specify both Range header and partNumber query parameter"
            )
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="mp", PartNumber=3, IfNoneMatch=etag)
        assert _status(info) == 304
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="mp", PartNumber=4, IfMatch='"0000"')
        assert _status(info) == 412
    matched = s3.get_object(
        Bucket=bucket, Key="mp", PartNumber=3, IfMatch=etag, ResponseContentType="text/plain"
    )
    assert read_body(matched) == parts[2]
    assert (matched["ContentType"], matched["PartsCount"]) == ("text/plain", 3)


def test_part_number_of_objects_of_one_part(s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * 4
    s3.put_object(Bucket=bucket, Key="plain", Body=data)
    got = s3.get_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert read_body(got) == data
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == "bytes 0-1023/1024"
    assert "PartsCount" not in got
    head = s3.head_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert (head["ContentLength"], head["ContentRange"]) == (1024, "bytes 0-1023/1024")
    assert "PartsCount" not in head
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="plain", PartNumber=2)
    assert (_code(info), _status(info)) == ("InvalidPartNumber", 416)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="plain", PartNumber=1, Range="bytes=0-0")
    assert _code(info) == "InvalidRequest"
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    for key in ("empty", "empty-mp"):
        if key == "empty-mp":
            _multipart_object(s3, bucket, key, [b""])
        got = s3.get_object(Bucket=bucket, Key=key, PartNumber=1)
        assert read_body(got) == b""
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert "ContentRange" not in got
        assert s3.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"] == 0
    single = b"s" * 1000
    _multipart_object(s3, bucket, "single", [single])
    got = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert read_body(got) == single
    assert (got["ContentRange"], got["PartsCount"]) == ("bytes 0-999/1000", 1)


def test_part_number_of_an_empty_last_part(s3: Any, bucket: str) -> None:
    first = b"f" * (5 * MiB)
    _multipart_object(s3, bucket, "mp", [first, b""])
    assert read_body(s3.get_object(Bucket=bucket, Key="mp", PartNumber=1)) == first
    got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert read_body(got) == b""
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (got["ContentLength"], got["PartsCount"]) == (0, 2)
    assert "ContentRange" not in got


def test_part_number_without_recorded_part_sizes(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """Multipart objects completed before part sizes were recorded."""
    index = s3_server.run(s3_server.objects.bucket_index, bucket)

    def forget_part_sizes(current: bytes | None) -> bytes:
        assert current is not None
        return replace(ObjectRecord.unpack(current), part_sizes=None).pack()

    parts = [b"a" * (5 * MiB), b"b" * 10]
    _multipart_object(s3, bucket, "mp", parts)
    _multipart_object(s3, bucket, "single", [b"one part"])
    for key in (b"mp", b"single"):
        s3_server.run(index.update, key, forget_part_sizes)
    for number in (1, 2):
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert (_code(info), _status(info)) == ("NotImplemented", 501)
        assert "part boundaries" in _error(info)["Message"]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=3)
    assert (_code(info), _status(info)) == ("InvalidPartNumber", 416)
    assert read_body(s3.get_object(Bucket=bucket, Key="mp")) == b"".join(parts)
    got = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert read_body(got) == b"one part"
    assert (got["ContentRange"], got["PartsCount"]) == ("bytes 0-7/8", 1)


ALL_ATTRIBUTES = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]


def _attributes(s3: Any, bucket: str, key: str, names: list[str], **kwargs: Any) -> Any:
    got = s3.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=names, **kwargs)
    got.pop("ResponseMetadata")
    return got


def test_get_object_attributes_of_a_single_part_object(s3: Any, bucket: str) -> None:
    data = random.Random(5).randbytes(100_000)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="dir/one part", Body=data, ChecksumAlgorithm="CRC32")
    head = s3.head_object(Bucket=bucket, Key="dir/one part")
    got = _attributes(s3, bucket, "dir/one part", ALL_ATTRIBUTES)
    assert got == {
        "LastModified": head["LastModified"],
        "ETag": _md5(data).strip('"'),  # unquoted, as S3 returns it here
        "Checksum": {"ChecksumCRC32": crc, "ChecksumType": "FULL_OBJECT"},
        "StorageClass": "STANDARD",
        "ObjectSize": len(data),
    }
    assert "VersionId" not in got
    # only what was asked for
    only = _attributes(s3, bucket, "dir/one part", ["ObjectSize", "ETag"], VersionId="null")
    assert only == {
        "LastModified": head["LastModified"],
        "ETag": got["ETag"],
        "ObjectSize": 100_000,
    }
    with pytest.raises(ClientError) as info:
        _attributes(s3, bucket, "dir/one part", ["ETag"], VersionId="3HL4kqtJlcpXroDTDmJ")
    assert (_code(info), _status(info)) == ("NoSuchVersion", 404)


def test_get_object_attributes_pages_through_parts(s3: Any, bucket: str) -> None:
    parts = [b"a" * (5 * MiB + 1), b"b" * (5 * MiB), b"c" * (5 * MiB), b"last"]
    etag = _multipart_object(s3, bucket, "mp", parts)
    sizes = [{"PartNumber": n, "Size": len(p)} for n, p in enumerate(parts, start=1)]
    got = _attributes(s3, bucket, "mp", ["ObjectParts", "ETag", "ObjectSize"])
    assert (got["ETag"], got["ObjectSize"]) == (etag.strip('"'), sum(map(len, parts)))
    assert got["ObjectParts"] == {
        "TotalPartsCount": 4,
        "PartNumberMarker": 0,
        "MaxParts": 1000,
        "IsTruncated": False,
        "Parts": sizes,
    }
    seen, marker = [], 0
    while True:
        page = _attributes(s3, bucket, "mp", ["ObjectParts"], MaxParts=3, PartNumberMarker=marker)[
            "ObjectParts"
        ]
        assert (page["TotalPartsCount"], page["MaxParts"]) == (4, 3)
        assert page["PartNumberMarker"] == marker
        seen += page["Parts"]
        if not page["IsTruncated"]:
            assert "NextPartNumberMarker" not in page
            break
        assert page["NextPartNumberMarker"] == page["Parts"][-1]["PartNumber"]
        marker = page["NextPartNumberMarker"]
    assert (seen, marker) == (sizes, 3)
    beyond = _attributes(s3, bucket, "mp", ["ObjectParts"], PartNumberMarker=4)["ObjectParts"]
    assert (beyond["IsTruncated"], "Parts" in beyond) == (False, False)
    # MaxParts above 1000 is clamped, as in ListParts
    assert (
        _attributes(s3, bucket, "mp", ["ObjectParts"], MaxParts=5000)["ObjectParts"]["MaxParts"]
        == 1000
    )
    # no whole-object checksum is stored for a multipart object: none is returned
    assert _attributes(s3, bucket, "mp", ["Checksum"]).keys() == {"LastModified"}
    # an object not written by a multipart upload has no parts
    s3.put_object(Bucket=bucket, Key="plain", Body=b"plain")
    assert _attributes(s3, bucket, "plain", ["ObjectParts"]).keys() == {"LastModified"}


def test_get_object_attributes_without_recorded_part_sizes(
    s3_server: S3Server, s3: Any, bucket: str
) -> None:
    """Multipart objects completed before part sizes were recorded: the part count only."""
    index = s3_server.run(s3_server.objects.bucket_index, bucket)

    def forget_part_sizes(current: bytes | None) -> bytes:
        assert current is not None
        return replace(ObjectRecord.unpack(current), part_sizes=None).pack()

    _multipart_object(s3, bucket, "mp", [b"a" * (5 * MiB), b"b" * 10])
    s3_server.run(index.update, b"mp", forget_part_sizes)
    got = _attributes(s3, bucket, "mp", ["ObjectParts", "ObjectSize"], MaxParts=1)
    assert got["ObjectParts"] == {"TotalPartsCount": 2}
    assert got["ObjectSize"] == 5 * MiB + 10


def test_get_object_attributes_errors(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        _attributes(s3, bucket, "missing", ["ETag"])
    assert (_code(info), _status(info)) == ("NoSuchKey", 404)
    assert _error(info)["Key"] == "missing"
    with pytest.raises(ClientError) as info:
        _attributes(s3, "e2e-no-such-bucket", "k", ["ETag"])
    assert (_code(info), _status(info)) == ("NoSuchBucket", 404)
    for names in (["ETag", "Size"], ["etag"], [], [" "]):
        with pytest.raises(ClientError) as info:
            _attributes(s3, bucket, "k", names)
        assert (_code(info), _status(info)) == ("InvalidArgument", 400), names
        assert _error(info)["Message"] == "Invalid attribute name specified."
        assert _error(info)["ArgumentName"] == "x-amz-object-attributes"
    for header, value in (("x-amz-max-parts", "-1"), ("x-amz-part-number-marker", "two")):
        client = s3_server.client(s3={"addressing_style": "path"})
        _add_header(client, "GetObjectAttributes", header, value)
        with pytest.raises(ClientError) as info:
            _attributes(client, bucket, "k", ["ObjectParts"])
        assert (_code(info), _error(info)["ArgumentName"]) == ("InvalidArgument", header)


def test_get_object_attributes_anonymously(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """Anyone may ask exactly when anyone may GetObject: public objects, not private ones."""
    s3.put_object(Bucket=bucket, Key="closed", Body=b"closed")
    s3.put_object(Bucket=bucket, Key="open", Body=b"open", ACL="public-read")
    anonymous = s3_server.client(signature_version=UNSIGNED, s3={"addressing_style": "path"})
    for key in ("closed", "missing"):
        with pytest.raises(ClientError) as info:
            _attributes(anonymous, bucket, key, ["ETag"])
        assert (_code(info), _status(info)) == ("AccessDenied", 403), key
    got = _attributes(anonymous, bucket, "open", ["ETag", "ObjectSize"])
    assert (got["ETag"], got["ObjectSize"]) == (_md5(b"open").strip('"'), 4)


def _part(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


@pytest.mark.slow
def test_multipart_200_mib_bit_exact(s3: Any, bucket: str) -> None:
    total = 200 * MiB
    part_size = 16 * MiB
    sizes = [min(part_size, total - off) for off in range(0, total, part_size)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    etags = []
    md5s = []
    for i, size in enumerate(sizes, start=1):
        data = _part(i, size)
        md5s.append(hashlib.md5(data, usedforsecurity=False).digest())
        out = s3.upload_part(Bucket=bucket, Key="big", UploadId=upload_id, PartNumber=i, Body=data)
        etags.append(out["ETag"])
        del data
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]},
    )
    expected_etag = hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
    got = s3.get_object(Bucket=bucket, Key="big")
    assert got["ContentLength"] == total
    assert got["ETag"] == f'"{expected_etag}-{len(sizes)}"'
    body = got["Body"]
    try:
        for i, size in enumerate(sizes, start=1):
            expected = _part(i, size)
            received = bytearray()
            while len(received) < size:
                piece = body.read(min(4 * MiB, size - len(received)))
                assert piece, "body ended early"
                received += piece
            assert received == expected, f"part {i} differs"
        assert body.read() == b""
    finally:
        body.close()
    ranged = s3.get_object(
        Bucket=bucket, Key="big", Range=f"bytes={part_size - 10}-{part_size + 9}"
    )
    assert read_body(ranged) == _part(1, part_size)[-10:] + _part(2, part_size)[:10]
    s3.delete_object(Bucket=bucket, Key="big")


# -- authentication ----------------------------------------------------------------------------


def test_presigned_urls(s3_server: S3Server, bucket: str) -> None:
    v4 = s3_server.client(signature_version="s3v4", s3={"addressing_style": "path"})
    v4.put_object(Bucket=bucket, Key="pre signed+", Body=b"secret data")
    for client in (v4, s3_server.client(s3={"addressing_style": "path"})):
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "pre signed+"}, ExpiresIn=60
        )
        status, _, body = s3_server.request("GET", url_path(url), sign=False)
        assert (status, body) == (200, b"secret data")
    put_url = v4.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=60
    )
    status, _, _ = s3_server.request("PUT", url_path(put_url), body=b"via url", sign=False)
    assert status == 200
    assert read_body(v4.get_object(Bucket=bucket, Key="uploaded")) == b"via url"
    short = v4.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=1
    )
    time.sleep(2.1)
    status, _, body = s3_server.request("GET", url_path(short), sign=False)
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert b"Request has expired" in body
    tampered = put_url.replace("uploaded", "uploaded2")
    status, _, body = s3_server.request("PUT", url_path(tampered), body=b"x", sign=False)
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in body


def test_wrong_credentials(s3_server: S3Server, bucket: str) -> None:
    wrong_secret = s3_server.client(secret="x" * 40, s3={"addressing_style": "path"})
    with pytest.raises(ClientError) as info:
        wrong_secret.list_objects_v2(Bucket=bucket)
    assert (_code(info), _status(info)) == ("SignatureDoesNotMatch", 403)
    unknown = s3_server.client(access_key="BKUNKNOWNKEY00000000", s3={"addressing_style": "path"})
    with pytest.raises(ClientError) as info:
        unknown.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert (_code(info), _status(info)) == ("InvalidAccessKeyId", 403)
    anonymous = s3_server.client(signature_version=UNSIGNED, s3={"addressing_style": "path"})
    with pytest.raises(ClientError) as info:
        anonymous.list_objects_v2(Bucket=bucket)
    assert (_code(info), _status(info)) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as info:
        anonymous.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert _code(info) == "AccessDenied"
    status, _, body = s3_server.request("GET", f"/{bucket}/k", sign=False)
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert b"<RequestId>" in body


def test_clock_skew(s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: real() - timedelta(minutes=20)
    )
    skewed = s3_server.client(s3={"addressing_style": "path"})
    with pytest.raises(ClientError) as info:
        skewed.list_objects_v2(Bucket=bucket)
    assert (_code(info), _status(info)) == ("RequestTimeTooSkewed", 403)


def test_key_management(s3_server: S3Server, bucket: str) -> None:
    access_key, secret = s3_server.run(s3_server.credentials.create_key, "second")
    assert access_key.startswith("BK")
    assert (len(access_key), len(secret)) == (20, 40)
    listed = s3_server.run(s3_server.credentials.list_keys)
    assert {"e2e", "second"} <= {k.name for k in listed}
    other = s3_server.client(access_key=access_key, secret=secret, s3={"addressing_style": "path"})
    other.put_object(Bucket=bucket, Key="by-second", Body=b"2")
    assert s3_server.run(s3_server.credentials.delete_key, access_key) is True
    with pytest.raises(ClientError) as info:
        other.put_object(Bucket=bucket, Key="by-second", Body=b"3")
    assert _code(info) == "InvalidAccessKeyId"


def test_public_read_bucket_and_object(s3_server: S3Server, s3: Any) -> None:
    s3.create_bucket(Bucket="e2e-public", ACL="public-read")
    s3.create_bucket(Bucket="e2e-private")
    try:
        s3.put_object(Bucket="e2e-public", Key="p", Body=b"public")
        s3.put_object(Bucket="e2e-private", Key="open", Body=b"open", ACL="public-read")
        s3.put_object(Bucket="e2e-private", Key="closed", Body=b"closed")
        anonymous = s3_server.client(signature_version=UNSIGNED, s3={"addressing_style": "path"})
        assert read_body(anonymous.get_object(Bucket="e2e-public", Key="p")) == b"public"
        assert anonymous.head_object(Bucket="e2e-public", Key="p")["ContentLength"] == 6
        assert [o["Key"] for o in anonymous.list_objects_v2(Bucket="e2e-public")["Contents"]] == [
            "p"
        ]
        with pytest.raises(ClientError) as info:
            anonymous.get_object(Bucket="e2e-public", Key="missing")
        assert _code(info) == "NoSuchKey"
        assert read_body(anonymous.get_object(Bucket="e2e-private", Key="open")) == b"open"
        for key in ("closed", "missing"):
            with pytest.raises(ClientError) as info:
                anonymous.get_object(Bucket="e2e-private", Key=key)
            assert _code(info) == "AccessDenied"
        with pytest.raises(ClientError) as info:
            anonymous.put_object(Bucket="e2e-public", Key="w", Body=b"x")
        assert _code(info) == "AccessDenied"
        with pytest.raises(ClientError) as info:
            anonymous.delete_object(Bucket="e2e-public", Key="p")
        assert _code(info) == "AccessDenied"
        with pytest.raises(ClientError) as info:
            anonymous.list_objects_v2(Bucket="e2e-private")
        assert _code(info) == "AccessDenied"
    finally:
        for name, keys in (("e2e-public", ["p"]), ("e2e-private", ["open", "closed"])):
            for key in keys:
                s3.delete_object(Bucket=name, Key=key)
            s3.delete_bucket(Bucket=name)


# -- streaming uploads -------------------------------------------------------------------------


def _streaming_put(
    s3_server: S3Server,
    path: str,
    chunks: list[bytes],
    *,
    tamper: bool = False,
) -> tuple[int, bytes]:
    """PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD: botocore signs the head, we the chunks."""
    decoded = sum(len(c) for c in chunks)
    encoded_len = 0
    for chunk in [*chunks, b""]:
        encoded_len += len(f"{len(chunk):x};chunk-signature=") + 64 + 2 + len(chunk) + 2
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(decoded),
        "Content-Length": str(encoded_len),
    }
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=f"{s3_server.endpoint}{path}", headers=headers
    )
    credentials = botocore.credentials.Credentials(s3_server.access_key, s3_server.secret)
    botocore.auth.SigV4Auth(credentials, "s3", s3_server.region).add_auth(request)
    signed = dict(request.headers.items())
    amz_date = signed["X-Amz-Date"]
    seed = signed["Authorization"].rpartition("Signature=")[2]
    scope = f"{amz_date[:8]}/{s3_server.region}/s3/aws4_request"
    key = ("AWS4" + s3_server.secret).encode()
    for part in (amz_date[:8], s3_server.region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    empty = hashlib.sha256(b"").hexdigest()
    previous = seed
    body = bytearray()
    for i, chunk in enumerate([*chunks, b""]):
        string = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{empty}\n"
            f"{hashlib.sha256(chunk).hexdigest()}"
        )
        signature = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
        previous = signature
        sent = chunk
        if tamper and i == len(chunks) - 1:
            sent = bytes([chunk[0] ^ 1]) + chunk[1:]
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + sent + b"\r\n"
    assert len(body) == encoded_len
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", path, body=bytes(body), headers=signed)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_streaming_signed_upload(s3_server: S3Server, s3: Any, bucket: str) -> None:
    chunks = [random.Random(7).randbytes(64 * 1024) for _ in range(5)] + [b"last bit"]
    status, body = _streaming_put(s3_server, f"/{bucket}/streamed", chunks)
    assert status == 200, body
    assert read_body(s3.get_object(Bucket=bucket, Key="streamed")) == b"".join(chunks)
    status, body = _streaming_put(s3_server, f"/{bucket}/tampered", chunks, tamper=True)
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in body
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="tampered")
    assert _status(info) == 404


def _signed_trailer_put(
    s3_server: S3Server, path: str, chunks: list[bytes], crc: bytes
) -> tuple[int, bytes]:
    """PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: signed chunks, signed trailer."""
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(sum(len(c) for c in chunks)),
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=f"{s3_server.endpoint}{path}", headers=headers
    )
    credentials = botocore.credentials.Credentials(s3_server.access_key, s3_server.secret)
    botocore.auth.SigV4Auth(credentials, "s3", s3_server.region).add_auth(request)
    signed = dict(request.headers.items())
    amz_date = signed["X-Amz-Date"]
    previous = signed["Authorization"].rpartition("Signature=")[2]
    scope = f"{amz_date[:8]}/{s3_server.region}/s3/aws4_request"
    key = ("AWS4" + s3_server.secret).encode()
    for part in (amz_date[:8], s3_server.region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")

    def chain(kind: str, digest: str) -> str:
        nonlocal previous
        extra = f"{hashlib.sha256(b'').hexdigest()}\n" if kind == "PAYLOAD" else ""
        string = f"AWS4-HMAC-SHA256-{kind}\n{amz_date}\n{scope}\n{previous}\n{extra}{digest}"
        previous = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
        return previous

    body = bytearray()
    for chunk in [*chunks, b""]:
        signature = chain("PAYLOAD", hashlib.sha256(chunk).hexdigest())
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk
        body += b"\r\n" if chunk else b""
    trailer = f"x-amz-checksum-crc32:{base64.b64encode(crc).decode()}"
    signature = chain("TRAILER", hashlib.sha256((trailer + "\n").encode()).hexdigest())
    body += f"{trailer}\r\nx-amz-trailer-signature:{signature}\r\n\r\n".encode()
    signed["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", path, body=bytes(body), headers=signed)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_streaming_signed_trailer(s3_server: S3Server, s3: Any, bucket: str) -> None:
    chunks = [b"a" * 70_000, b"b" * 10]
    data = b"".join(chunks)
    status, body = _signed_trailer_put(
        s3_server, f"/{bucket}/st", chunks, zlib.crc32(data).to_bytes(4, "big")
    )
    assert status == 200, body
    assert read_body(s3.get_object(Bucket=bucket, Key="st")) == data
    status, body = _signed_trailer_put(s3_server, f"/{bucket}/st2", chunks, b"\0\0\0\0")
    assert status == 400
    assert b"<Code>BadDigest</Code>" in body
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="st2")
    assert _status(info) == 404


def _unsigned_trailer_put(
    s3_server: S3Server, path: str, data: bytes, crc: bytes
) -> tuple[int, bytes]:
    body = (
        f"{len(data):x}\r\n".encode()
        + data
        + b"\r\n0\r\nx-amz-checksum-crc32:"
        + base64.b64encode(crc)
        + b"\r\n\r\n"
    )
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=f"{s3_server.endpoint}{path}", headers=headers
    )
    credentials = botocore.credentials.Credentials(s3_server.access_key, s3_server.secret)
    botocore.auth.SigV4Auth(credentials, "s3", s3_server.region).add_auth(request)
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=dict(request.headers.items()))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_streaming_unsigned_trailer(s3_server: S3Server, s3: Any, bucket: str) -> None:
    data = b"trailing checksum " * 5000
    good = zlib.crc32(data).to_bytes(4, "big")
    status, body = _unsigned_trailer_put(s3_server, f"/{bucket}/t", data, good)
    assert status == 200, body
    assert read_body(s3.get_object(Bucket=bucket, Key="t")) == data
    status, body = _unsigned_trailer_put(s3_server, f"/{bucket}/t2", data, b"\0\0\0\0")
    assert status == 400
    assert b"<Code>BadDigest</Code>" in body
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["t"]


def test_payload_signing_enabled(s3_server: S3Server, bucket: str) -> None:
    """boto3 over http with payload signing: the body's SHA-256 is signed and checked."""
    client = s3_server.client(
        s3={"addressing_style": "path", "payload_signing_enabled": True},
        request_checksum_calculation="when_required",
    )
    client.put_object(Bucket=bucket, Key="signed", Body=b"payload" * 10000)
    assert read_body(client.get_object(Bucket=bucket, Key="signed")) == b"payload" * 10000


# -- addressing, errors, availability ----------------------------------------------------------


@pytest.mark.usefixtures("localhost_resolver")
def test_virtual_host_addressing(s3_server: S3Server, bucket: str) -> None:
    client = s3_server.client(
        endpoint=f"http://{s3_server.base_domain}:{s3_server.port}",
        s3={"addressing_style": "virtual"},
    )
    client.put_object(Bucket=bucket, Key="vhost/key with space", Body=b"virtual")
    assert read_body(client.get_object(Bucket=bucket, Key="vhost/key with space")) == b"virtual"
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "vhost/key with space"
    ]
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "vhost/key with space"}]})
    url = client.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket}, ExpiresIn=60)
    assert url.startswith(f"http://{bucket}.{s3_server.base_domain}:")
    # Host header by hand over a plain loopback connection, signed by botocore.
    path = "/hand-made"
    host = f"{bucket}.{s3_server.base_domain}:{s3_server.port}"
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=f"http://{host}{path}", data=b"by hand"
    )
    credentials = botocore.credentials.Credentials(s3_server.access_key, s3_server.secret)
    botocore.auth.S3SigV4Auth(credentials, "s3", s3_server.region).add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", s3_server.port, timeout=30)
    try:
        conn.putrequest("PUT", path, skip_host=True)
        conn.putheader("Host", host)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", "7")
        conn.endheaders(b"by hand")
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()
    assert read_body(client.get_object(Bucket=bucket, Key="hand-made")) == b"by hand"


def _chunked_put(
    s3_server: S3Server, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A signed PUT whose body is sent with ``Transfer-Encoding: chunked``, no Content-Length."""
    headers = headers or {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=f"{s3_server.endpoint}{path}", headers=headers
    )
    credentials = botocore.credentials.Credentials(s3_server.access_key, s3_server.secret)
    botocore.auth.SigV4Auth(credentials, "s3", s3_server.region).add_auth(request)
    signed = dict(request.headers.items())
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", path, body=iter([body]), headers=signed, encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _aws_chunked(data: bytes) -> tuple[bytes, dict[str, str]]:
    """An unsigned aws-chunked body of ``data`` (one chunk, CRC32 trailer) and its headers."""
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\nx-amz-checksum-crc32:" + crc
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    return body + b"\r\n\r\n", headers


def test_upload_without_content_length(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """S3 needs the size up front: a plain chunked body is 411, an aws-chunked one is fine."""
    status, body = _chunked_put(s3_server, f"/{bucket}/plain", b"no declared size")
    assert (status, b"<Code>MissingContentLength</Code>" in body) == (411, True), body
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    status, body = _chunked_put(
        s3_server, f"/{bucket}/mp?partNumber=1&uploadId={upload_id}", b"part"
    )
    assert (status, b"<Code>MissingContentLength</Code>" in body) == (411, True), body
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id)
    data = b"decoded length declared"
    status, body = _chunked_put(s3_server, f"/{bucket}/aws-chunked", *_aws_chunked(data))
    assert status == 200, body
    assert read_body(s3.get_object(Bucket=bucket, Key="aws-chunked")) == data
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["aws-chunked"]


def test_declared_size_over_the_maximum(
    s3_server: S3Server, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = s3_server.app.max_upload_size
    assert limit == 5 * 1024**3
    # Only the head is sent: the answer comes before any of the body would be read.
    headers = s3_server.sign(
        "PUT", f"/{bucket}/huge", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    headers["Content-Length"] = str(limit + 1)
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", f"/{bucket}/huge", headers=headers)
        response = conn.getresponse()
        status, body = response.status, response.read()
    finally:
        conn.close()
    assert (status, b"<Code>EntityTooLarge</Code>" in body) == (400, True), body
    assert f"<ProposedSize>{limit + 1}</ProposedSize>".encode() in body
    assert f"<MaxSizeAllowed>{limit}</MaxSizeAllowed>".encode() in body
    monkeypatch.setattr(s3_server.app, "max_upload_size", 10)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="big", Body=b"x" * 11)
    assert (_code(info), _status(info)) == ("EntityTooLarge", 400)
    assert _error(info)["MaxSizeAllowed"] == "10"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=b"y" * 11)
    assert (_code(info), _status(info)) == ("EntityTooLarge", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id)
    status, body = _chunked_put(s3_server, f"/{bucket}/aws-chunked", *_aws_chunked(b"z" * 11))
    assert (status, b"<Code>EntityTooLarge</Code>" in body) == (400, True), body
    s3.put_object(Bucket=bucket, Key="small", Body=b"x" * 10)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["small"]


def test_index_contention_is_a_retryable_slowdown(
    s3_server: S3Server, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contention is 503 SlowDown, which SDKs retry (409 ConditionalRequestConflict they don't)."""
    monkeypatch.setattr(bucket_index, "_MAX_ATTEMPTS", 0)  # every index change gives up
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert (_code(info), _status(info)) == ("SlowDown", 503)
    assert _error(info)["Message"] == "Please reduce your request rate."
    monkeypatch.undo()
    real_update = BucketIndex.update
    contended: list[bytes] = []

    async def update_once_contended(self: BucketIndex, key: bytes, fn: Any) -> Any:
        if not contended:
            contended.append(key)
            raise Contention("bucket index kept moving; giving up")
        return await real_update(self, key, fn)

    monkeypatch.setattr(BucketIndex, "update", update_once_contended)
    retrying = s3_server.client(
        s3={"addressing_style": "path"}, retries={"total_max_attempts": 2, "mode": "standard"}
    )
    retrying.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert contended == [b"k"]
    assert read_body(s3.get_object(Bucket=bucket, Key="k")) == b"data"


def test_write_during_bucket_deletion_is_slowdown(
    s3_server: S3Server, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = s3_server.run(s3_server.objects.bucket_index, bucket)
    monkeypatch.setattr(objects, "SEALED_WAIT_SECONDS", 0.0)
    s3_server.run(index.seal)  # as a deletion in progress leaves it
    try:
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=bucket, Key="k", Body=b"data")
        assert (_code(info), _status(info)) == ("SlowDown", 503)
    finally:
        s3_server.run(index.unseal)  # the deletion failed and was rolled back
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")


def _settled(s3_server: S3Server) -> Any:
    """The app's statistics once the last request's bookkeeping ran (it ends after the
    client has its answer)."""
    deadline = time.monotonic() + 5
    while (stats := s3_server.app.statistics()).in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return stats


def test_statistics(s3_server: S3Server, s3: Any, bucket: str) -> None:
    before = _settled(s3_server)
    s3.put_object(Bucket=bucket, Key="stats", Body=b"s" * 1000)
    read_body(s3.get_object(Bucket=bucket, Key="stats"))
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="nothing")
    after = _settled(s3_server)
    assert after.requests - before.requests == 3
    assert after.responses_2xx - before.responses_2xx == 2
    assert after.responses_4xx - before.responses_4xx == 1
    assert after.bytes_received - before.bytes_received == 1000
    assert after.bytes_sent - before.bytes_sent > 1000


def test_awscli(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    """The AWS CLI (a second real client): multipart cp up and down, ls, rm."""
    assert shutil.which("aws"), "the AWS CLI is missing (make test installs Debian's awscli)"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_DEFAULT_REGION": s3_server.region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }

    def aws(*args: str) -> str:
        done = subprocess.run(
            ["aws", "--endpoint-url", s3_server.endpoint, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    source = tmp_path / "up.bin"
    source.write_bytes(random.Random(11).randbytes(12 * MiB + 7))
    aws("s3", "cp", "--only-show-errors", str(source), f"s3://{bucket}/cli/up.bin")
    assert "up.bin" in aws("s3", "ls", f"s3://{bucket}/cli/")
    attributes = json.loads(
        aws(
            "s3api",
            "get-object-attributes",
            "--bucket",
            bucket,
            "--key",
            "cli/up.bin",
            "--object-attributes",
            "ETag",
            "ObjectParts",
            "ObjectSize",
        )
    )
    assert attributes["ObjectSize"] == 12 * MiB + 7
    parts = attributes["ObjectParts"]
    assert sum(p["Size"] for p in parts["Parts"]) == 12 * MiB + 7
    assert attributes["ETag"].endswith(f"-{parts['TotalPartsCount']}")
    aws("s3", "cp", "--only-show-errors", f"s3://{bucket}/cli/up.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == source.read_bytes()
    aws("s3", "rm", "--recursive", f"s3://{bucket}/cli/")
    assert aws("s3", "ls", f"s3://{bucket}/") == ""


def test_unsupported_operations(s3: Any, bucket: str) -> None:
    for call, kwargs in (
        (s3.put_bucket_policy, {"Bucket": bucket, "Policy": "{}"}),
        (
            s3.put_bucket_encryption,
            {
                "Bucket": bucket,
                "ServerSideEncryptionConfiguration": {
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            },
        ),
        (s3.get_object_retention, {"Bucket": bucket, "Key": "k"}),
    ):
        with pytest.raises(ClientError) as info:
            call(**kwargs)
        assert (_code(info), _status(info)) == ("NotImplemented", 501)


def test_unavailable_cluster_is_503(s3_server: S3Server, s3: Any, bucket: str) -> None:
    store = s3_server.store
    if not isinstance(store, FakeBlockStore):
        pytest.skip("fault injection needs the in-memory block store")

    async def fail(op: str, name: bytes | None = None, skip: int = 0) -> None:
        store.fail(op, match=None if name is None else (lambda n: n == name), skip=skip)

    s3_server.run(fail, "put_chunk")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert (_code(info), _status(info)) == ("ServiceUnavailable", 503)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")

    async def fail_index_read() -> None:
        store.fail("read", match=lambda name: name.startswith(b"s3/idx/"))

    s3_server.run(fail_index_read)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="k")
    assert _status(info) == 503
    assert read_body(s3.get_object(Bucket=bucket, Key="k")) == b"data"
    # The first chunk fails: nothing was sent yet, so the client gets a proper 503.
    s3_server.run(fail, "get_chunk")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="k")
    assert (_code(info), _status(info)) == ("ServiceUnavailable", 503)
    # A later chunk fails: the head is out, so the body is cut short (as S3 does).
    big = random.Random(3).randbytes(9 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3_server.run(fail, "get_chunk", None, 1)
    response = s3.get_object(Bucket=bucket, Key="big")
    with pytest.raises(botocore.exceptions.BotoCoreError):
        read_body(response)
    assert read_body(s3.get_object(Bucket=bucket, Key="big")) == big


# -- access control lists and versioning -------------------------------------------------------

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
ALL_USERS_READ = {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"}


def _owner_grant(owner: dict[str, str]) -> dict[str, Any]:
    return {"Grantee": {"Type": "CanonicalUser", **owner}, "Permission": "FULL_CONTROL"}


def test_bucket_acl(s3_server: S3Server, s3: Any, bucket: str) -> None:
    acl = s3.get_bucket_acl(Bucket=bucket)
    owner = acl["Owner"]
    assert owner["ID"] == s3_server.access_key
    assert acl["Grants"] == [_owner_grant(owner)]
    s3.put_object(Bucket=bucket, Key="k", Body=b"bucket-wide")
    anonymous = s3_server.client(signature_version=UNSIGNED, s3={"addressing_style": "path"})
    with pytest.raises(ClientError) as info:
        anonymous.get_object(Bucket=bucket, Key="k")
    assert _code(info) == "AccessDenied"
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert acl["Grants"] == [_owner_grant(owner), ALL_USERS_READ]
    assert s3_server.run(s3_server.objects.head_bucket, bucket).acl == "public-read"
    assert read_body(anonymous.get_object(Bucket=bucket, Key="k")) == b"bucket-wide"
    # The same, as an access control policy; then back to private.
    s3.put_bucket_acl(
        Bucket=bucket, AccessControlPolicy={"Owner": owner, "Grants": [_owner_grant(owner)]}
    )
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"] == [_owner_grant(owner)]
    with pytest.raises(ClientError) as info:
        anonymous.get_object(Bucket=bucket, Key="k")
    assert _code(info) == "AccessDenied"
    for call in (anonymous.get_bucket_acl, anonymous.get_bucket_versioning):
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket)
        assert _code(info) == "AccessDenied"
    with pytest.raises(ClientError) as info:
        anonymous.put_bucket_acl(Bucket=bucket, ACL="public-read")
    assert _code(info) == "AccessDenied"
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"] == [_owner_grant(owner)]


def test_object_acl(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="dir/obj", Body=b"object")
    acl = s3.get_object_acl(Bucket=bucket, Key="dir/obj")
    owner = acl["Owner"]
    assert owner["ID"] == s3_server.access_key
    assert acl["Grants"] == [_owner_grant(owner)]
    assert s3.get_object_acl(Bucket=bucket, Key="dir/obj", VersionId="null")["Owner"] == owner
    s3.put_object_acl(
        Bucket=bucket,
        Key="dir/obj",
        AccessControlPolicy={"Owner": owner, "Grants": [_owner_grant(owner), ALL_USERS_READ]},
    )
    acl = s3.get_object_acl(Bucket=bucket, Key="dir/obj")
    assert acl["Grants"] == [_owner_grant(owner), ALL_USERS_READ]
    anonymous = s3_server.client(signature_version=UNSIGNED, s3={"addressing_style": "path"})
    assert read_body(anonymous.get_object(Bucket=bucket, Key="dir/obj")) == b"object"
    s3.put_object_acl(Bucket=bucket, Key="dir/obj", ACL="private")
    assert s3.get_object_acl(Bucket=bucket, Key="dir/obj")["Grants"] == [_owner_grant(owner)]
    with pytest.raises(ClientError) as info:
        anonymous.get_object(Bucket=bucket, Key="dir/obj")
    assert _code(info) == "AccessDenied"
    with pytest.raises(ClientError) as info:
        anonymous.get_object_acl(Bucket=bucket, Key="dir/obj")
    assert _code(info) == "AccessDenied"
    assert read_body(s3.get_object(Bucket=bucket, Key="dir/obj")) == b"object"


def test_acl_refusals(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]
    someone = {"Grantee": {"Type": "CanonicalUser", "ID": "someone-else"}, "Permission": "READ"}
    email = {"Grantee": {"Type": "AmazonCustomerByEmail", "EmailAddress": "a@example.com"}}
    for grants in ([_owner_grant(owner), someone], [{**email, "Permission": "READ"}]):
        policy = {"Owner": owner, "Grants": grants}
        with pytest.raises(ClientError) as info:
            s3.put_bucket_acl(Bucket=bucket, AccessControlPolicy=policy)
        assert (_code(info), _status(info)) == ("NotImplemented", 501)
        assert "canned ACL" in info.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as info:
            s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=policy)
        assert (_code(info), _status(info)) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as info:
        s3.put_object_acl(Bucket=bucket, Key="k", GrantRead=f'uri="{ALL_USERS}"')
    assert (_code(info), _status(info)) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as info:
        s3.put_bucket_acl(Bucket=bucket, ACL="public-read", GrantRead=f'uri="{ALL_USERS}"')
    assert (_code(info), _status(info)) == ("InvalidRequest", 400)
    with pytest.raises(ClientError) as info:
        s3.put_bucket_acl(Bucket=bucket, ACL="world-writable")
    assert _code(info) == "InvalidArgument"
    with pytest.raises(ClientError) as info:
        s3.get_object_acl(Bucket=bucket, Key="k", VersionId="v1")
    assert _code(info) == "NoSuchVersion"
    with pytest.raises(ClientError) as info:
        s3.get_object_acl(Bucket=bucket, Key="missing")
    assert _code(info) == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        s3.put_object_acl(Bucket=bucket, Key="missing", ACL="public-read")
    assert _code(info) == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        s3.put_object_acl(
            Bucket=bucket, Key="missing", AccessControlPolicy={"Owner": owner, "Grants": []}
        )
    assert _code(info) == "NoSuchKey"
    # Neither header nor body; both; DELETE of the sub-resource (never of the bucket).
    status, _, body = s3_server.request("PUT", f"/{bucket}?acl")
    assert (status, b"<Code>MissingSecurityHeader</Code>" in body) == (400, True)
    owner_only = b"<AccessControlPolicy><AccessControlList/></AccessControlPolicy>"
    status, _, body = s3_server.request(
        "PUT", f"/{bucket}?acl", headers={"x-amz-acl": "private"}, body=owner_only
    )
    assert (status, b"<Code>InvalidRequest</Code>" in body) == (400, True)
    status, _, body = s3_server.request("PUT", f"/{bucket}/k?acl", body=owner_only)
    assert status == 200
    status, _, body = s3_server.request("DELETE", f"/{bucket}?acl")
    assert (status, b"<Code>MethodNotAllowed</Code>" in body) == (405, True)
    status, _, body = s3_server.request("DELETE", f"/{bucket}/k?acl")
    assert status == 405
    assert read_body(s3.get_object(Bucket=bucket, Key="k")) == b"x"


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<AccessControlPolicy>",
        b"<AccessControlPolicy/>",
        b"<Policy><AccessControlList/></Policy>",
        b"<AccessControlPolicy><AccessControlList><Grant><Grantee><URI>"
        + ALL_USERS.encode()
        + b"</URI></Grantee><Permission>EVERYTHING</Permission></Grant>"
        b"</AccessControlList></AccessControlPolicy>",
        b"<AccessControlPolicy><AccessControlList><Grant><Grantee><Who>me</Who></Grantee>"
        b"<Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>",
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><AccessControlPolicy>'
        b"<AccessControlList/><Owner><ID>&e;</ID></Owner></AccessControlPolicy>",
        b"\xff\xfe<\x00A\x00",
        bytes(range(256)),
    ],
)
def test_garbage_acl_bodies_are_malformed(s3_server: S3Server, bucket: str, body: bytes) -> None:
    for path in (f"/{bucket}?acl", f"/{bucket}/k?acl"):
        status, _, answer = s3_server.request("PUT", path, body=body)
        assert (status, b"<Code>MalformedACLError</Code>" in answer) == (400, True), answer


def test_bucket_versioning(s3_server: S3Server, s3: Any, bucket: str) -> None:
    versioning = s3.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in versioning
    assert "MFADelete" not in versioning
    status, headers, body = s3_server.request("GET", f"/{bucket}?versioning")
    assert status == 200
    assert headers["content-type"] == "application/xml"
    assert body.endswith(
        b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
    )
    with pytest.raises(ClientError) as info:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert (_code(info), _status(info)) == ("NotImplemented", 501)
    assert "one version per key" in info.value.response["Error"]["Message"]
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)


#: Bucket configurations Ballast does not keep: boto3 call -> (error code, or the keys of a
#: 200 answer besides ResponseMetadata).
_UNSET_CONFIGURATIONS: dict[str, str | set[str]] = {
    "get_bucket_policy": "NoSuchBucketPolicy",
    "get_bucket_policy_status": "NoSuchBucketPolicy",
    "get_bucket_website": "NoSuchWebsiteConfiguration",
    "get_bucket_encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "get_bucket_replication": "ReplicationConfigurationNotFoundError",
    "get_bucket_ownership_controls": "OwnershipControlsNotFoundError",
    "get_public_access_block": "NoSuchPublicAccessBlockConfiguration",
    "get_object_lock_configuration": "ObjectLockConfigurationNotFoundError",
    "get_bucket_logging": set(),
    "get_bucket_request_payment": {"Payer"},
    "get_bucket_accelerate_configuration": set(),
    "get_bucket_notification_configuration": set(),
}


def test_configurations_never_set(s3: Any, bucket: str) -> None:
    """What Terraform and SDKs read of every bucket answers as on a bucket never configured."""
    for call, expected in _UNSET_CONFIGURATIONS.items():
        if isinstance(expected, str):
            with pytest.raises(ClientError) as info:
                getattr(s3, call)(Bucket=bucket)
            assert (call, _code(info), _status(info)) == (call, expected, 404)
            assert info.value.response["Error"]["BucketName"] == bucket
        else:
            answer = getattr(s3, call)(Bucket=bucket)
            assert (call, set(answer) - {"ResponseMetadata"}) == (call, expected)
    assert s3.get_bucket_request_payment(Bucket=bucket)["Payer"] == "BucketOwner"
    for call in (
        "delete_bucket_policy",
        "delete_bucket_website",
        "delete_bucket_encryption",
        "delete_bucket_replication",
        "delete_bucket_ownership_controls",
        "delete_public_access_block",
    ):
        status = getattr(s3, call)(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"]
        assert (call, status) == (call, 204)
    s3.head_bucket(Bucket=bucket)  # a DELETE of a configuration never deletes the bucket
    with pytest.raises(ClientError) as info:
        s3.put_bucket_policy(Bucket=bucket, Policy='{"Version": "2012-10-17", "Statement": []}')
    assert (_code(info), _status(info)) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as info:
        s3.get_bucket_policy(Bucket="e2e-no-such-bucket-config")
    assert _code(info) == "NoSuchBucket"
    with pytest.raises(ClientError) as info:
        s3.delete_bucket_encryption(Bucket="e2e-no-such-bucket-config")
    assert _code(info) == "NoSuchBucket"


def test_acl_and_versioning_of_a_missing_bucket(s3: Any) -> None:
    missing = "e2e-no-such-bucket-acl"
    for call, kwargs in (
        (s3.get_bucket_acl, {}),
        (s3.put_bucket_acl, {"ACL": "public-read"}),
        (s3.put_bucket_acl, {"AccessControlPolicy": {"Owner": {"ID": "x"}, "Grants": []}}),
        (s3.get_object_acl, {"Key": "k"}),
        (s3.put_object_acl, {"Key": "k", "ACL": "private"}),
        (s3.get_bucket_versioning, {}),
    ):
        with pytest.raises(ClientError) as info:
            call(Bucket=missing, **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchBucket", 404)
        assert info.value.response["Error"]["BucketName"] == missing


# -- cross-origin resource sharing -------------------------------------------------------------

APP = "https://app.example.com"
#: Uploads from the app (and its subdomains of example.org), reads from anywhere.
CORS_RULES: list[dict[str, Any]] = [
    {
        "ID": "app uploads",
        "AllowedHeaders": ["content-type", "x-amz-*"],
        "AllowedMethods": ["GET", "PUT", "POST"],
        "AllowedOrigins": [APP, "https://*.example.org"],
        "ExposeHeaders": ["ETag", "x-amz-request-id"],
        "MaxAgeSeconds": 600,
    },
    {"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"]},
]
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


def _cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-") or k == "vary"}


def _error_fields(body: bytes) -> dict[str, str]:
    root = ElementTree.fromstring(body)
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


def _preflight(
    s3_server: S3Server, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    return s3_server.request("OPTIONS", path, headers=headers, sign=False)


def test_bucket_cors_round_trip(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.get_bucket_cors(Bucket=bucket)
    assert (_code(info), _status(info)) == ("NoSuchCORSConfiguration", 404)
    assert info.value.response["Error"]["Message"] == "The CORS configuration does not exist"
    assert info.value.response["Error"]["BucketName"] == bucket
    put = s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == CORS_RULES
    replacement = [{"AllowedMethods": ["DELETE"], "AllowedOrigins": ["http://x"]}]
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": replacement})
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == replacement
    deleted = s3.delete_bucket_cors(Bucket=bucket)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        s3.get_bucket_cors(Bucket=bucket)
    assert _code(info) == "NoSuchCORSConfiguration"
    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_bucket_cors_of_a_missing_bucket(s3: Any) -> None:
    missing = "e2e-no-such-bucket-cors"
    for call, kwargs in (
        (s3.get_bucket_cors, {}),
        (s3.put_bucket_cors, {"CORSConfiguration": {"CORSRules": CORS_RULES}}),
        (s3.delete_bucket_cors, {}),
    ):
        with pytest.raises(ClientError) as info:
            call(Bucket=missing, **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchBucket", 404)
        assert info.value.response["Error"]["BucketName"] == missing


def test_put_bucket_cors_refusals(s3_server: S3Server, s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(
            Bucket=bucket,
            CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GOT"]}]},
        )
    assert (_code(info), _status(info)) == ("InvalidRequest", 400)
    assert info.value.response["Error"]["Message"] == (
        "Found unsupported HTTP method in CORS config. Unsupported method is GOT"
    )
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": []})
    assert (_code(info), _status(info)) == ("MalformedXML", 400)
    too_many = [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}] * 101
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": too_many})
    assert (_code(info), _status(info)) == ("InvalidRequest", 400)
    good = (
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>"
    )
    md5 = base64.b64encode(hashlib.md5(good, usedforsecurity=False).digest()).decode()
    wrong = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    for headers, body, expected in (
        ({"content-md5": wrong}, good, (400, "BadDigest")),
        ({"content-md5": "nope"}, good, (400, "InvalidDigest")),
        ({}, b"", (400, "MalformedXML")),
        ({}, b"<CORSConfiguration>", (400, "MalformedXML")),
        ({}, good.replace(b"GET", b"get"), (400, "InvalidRequest")),
        ({}, good.replace(b"*", b"**"), (400, "InvalidRequest")),
        ({}, good[:-20] + b" " * 70_000 + good[-20:], (400, "InvalidRequest")),
    ):
        status, _, answer = s3_server.request("PUT", f"/{bucket}?cors", headers=headers, body=body)
        assert (status, _error_fields(answer)["Code"]) == expected, answer
        with pytest.raises(ClientError) as info:
            s3.get_bucket_cors(Bucket=bucket)
        assert _code(info) == "NoSuchCORSConfiguration"  # nothing was stored
    status, _, _ = s3_server.request(
        "PUT", f"/{bucket}?cors", headers={"content-md5": md5}, body=good
    )
    assert status == 200
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == [
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}
    ]


def test_delete_cors_never_deletes_the_bucket(s3_server: S3Server, s3: Any, bucket: str) -> None:
    for query in ("cors", "cors=", "cors&x-id=DeleteBucket"):
        status, _, body = s3_server.request("DELETE", f"/{bucket}?{query}")
        assert (status, body) == (204, b"")
        assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    for method in ("HEAD", "POST"):
        status, _, _ = s3_server.request(method, f"/{bucket}?cors")
        assert status == 405
    anonymous = {"host": f"127.0.0.1:{s3_server.port}"}
    for method in ("GET", "PUT", "DELETE"):
        status, _, body = s3_server.request(
            method, f"/{bucket}?cors", headers=anonymous, sign=False
        )
        assert (status, _error_fields(body)["Code"]) == (403, "AccessDenied")
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_cors_preflight(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})
    ask = {
        "Origin": APP,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "Content-Type, X-Amz-Date,x-amz-content-sha256",
    }
    status, headers, body = _preflight(s3_server, f"/{bucket}/uploads/photo.jpg", ask)
    assert (status, body) == (200, b"")
    assert _cors_headers(headers) == {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "GET, PUT, POST",
        "access-control-allow-headers": "content-type, x-amz-date, x-amz-content-sha256",
        "access-control-expose-headers": "ETag, x-amz-request-id",
        "access-control-allow-credentials": "true",
        "access-control-max-age": "600",
        "vary": VARY,
    }
    assert headers["x-amz-request-id"]
    # The wildcard origin pattern; a bucket-level URL; virtual-host addressing.
    sub = {**ask, "Origin": "https://uploads.eu.example.org"}
    status, headers, _ = _preflight(s3_server, f"/{bucket}", sub)
    assert (status, headers["access-control-allow-origin"]) == (200, sub["Origin"])
    host = {"Host": f"{bucket}.{s3_server.base_domain}:{s3_server.port}"}
    status, headers, _ = _preflight(s3_server, "/k", {**ask, **host})
    assert (status, headers["access-control-allow-origin"]) == (200, APP)
    # The second rule: any origin may read, answered with "*" and no credentials.
    read = {"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "HEAD"}
    status, headers, _ = _preflight(s3_server, f"/{bucket}/k", read)
    assert status == 200
    assert _cors_headers(headers) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "GET, HEAD",
        "vary": VARY,
    }
    # Refusals: the origin, the method, a header; 403 AccessForbidden and no CORS headers.
    for refused, resource_type, path in (
        ({**ask, "Origin": "https://evil.example.com"}, "OBJECT", f"/{bucket}/k"),
        ({**ask, "Origin": APP + ":443"}, "OBJECT", f"/{bucket}/k"),
        ({**ask, "Origin": APP + "/"}, "BUCKET", f"/{bucket}"),
        ({**ask, "Access-Control-Request-Method": "DELETE"}, "OBJECT", f"/{bucket}/k"),
        ({**ask, "Access-Control-Request-Method": "put"}, "OBJECT", f"/{bucket}/k"),
        ({**ask, "Access-Control-Request-Headers": "authorization"}, "OBJECT", f"/{bucket}/k"),
        ({**read, "Access-Control-Request-Headers": "x-amz-date"}, "BUCKET", f"/{bucket}"),
    ):
        status, headers, body = _preflight(s3_server, path, refused)
        assert status == 403, refused
        assert _cors_headers(headers) == {}
        error = _error_fields(body)
        assert error["Code"] == "AccessForbidden"
        assert error["Message"].startswith("CORSResponse: This CORS request is not allowed.")
        assert (error["Method"], error["ResourceType"]) == (
            refused["Access-Control-Request-Method"],
            resource_type,
        )
    # An Origin and no method: nothing allows OPTIONS itself.
    status, headers, body = _preflight(s3_server, f"/{bucket}/k", {"Origin": APP})
    assert (status, _error_fields(body)["Method"], _cors_headers(headers)) == (403, "OPTIONS", {})
    # No Origin: not a CORS request at all.
    for incomplete in ({}, {"Access-Control-Request-Method": "GET"}):
        status, headers, body = _preflight(s3_server, f"/{bucket}/k", incomplete)
        error = _error_fields(body)
        assert (status, error["Code"]) == (400, "BadRequest")
        assert error["Message"] == "Insufficient information. Origin request header needed."


def test_preflight_needs_no_signature(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """Browsers send preflights without credentials, to the (presigned) URL they will use;
    whatever credentials or signature it carries are not checked."""
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})
    ask = {"Origin": APP, "Access-Control-Request-Method": "PUT"}
    url = s3_server.client(s3={"addressing_style": "path"}).generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up.bin"}, ExpiresIn=60
    )
    status, headers, _ = _preflight(s3_server, url_path(url), ask)
    assert (status, headers["access-control-allow-origin"]) == (200, APP)
    forged = {**ask, "Authorization": "AWS4-HMAC-SHA256 Credential=NOPE/x, Signature=00"}
    status, headers, _ = _preflight(s3_server, f"/{bucket}/k?X-Amz-Signature=00", forged)
    assert (status, headers["access-control-allow-origin"]) == (200, APP)
    status, _, _ = s3_server.request(
        "OPTIONS", f"/{bucket}/k", headers={**ask, "Authorization": "garbage"}, sign=False
    )
    assert status == 200
    # The presigned PUT itself, from the browser, then carries the CORS headers.
    conn = http.client.HTTPConnection(s3_server.host, s3_server.port, timeout=30)
    try:
        conn.request("PUT", url_path(url), body=b"from the browser", headers={"Origin": APP})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("access-control-allow-origin") == APP
        assert response.getheader("access-control-expose-headers") == "ETag, x-amz-request-id"
    finally:
        conn.close()
    assert read_body(s3.get_object(Bucket=bucket, Key="up.bin")) == b"from the browser"


def test_preflight_without_rules_or_bucket(s3_server: S3Server, bucket: str) -> None:
    ask = {"Origin": APP, "Access-Control-Request-Method": "PUT"}
    status, headers, body = _preflight(s3_server, f"/{bucket}/k", ask)
    error = _error_fields(body)
    assert (status, error["Code"], _cors_headers(headers)) == (403, "AccessForbidden", {})
    assert error["Message"] == "CORSResponse: CORS is not enabled for this bucket."
    assert (error["Method"], error["ResourceType"]) == ("PUT", "BUCKET")
    status, headers, body = _preflight(s3_server, "/e2e-no-such-bucket-cors/k", ask)
    error = _error_fields(body)
    assert (status, error["Code"], _cors_headers(headers)) == (403, "AccessForbidden", {})
    assert error["Message"] == "CORSResponse: Bucket not found"
    status, _, body = _preflight(s3_server, "/e2e-no-such-bucket-cors/k", {})
    assert (status, _error_fields(body)["Code"]) == (400, "BadRequest")


def test_cors_headers_on_actual_requests(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    app_headers = {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "GET, PUT, POST",
        "access-control-expose-headers": "ETag, x-amz-request-id",
        "access-control-allow-credentials": "true",
        "access-control-max-age": "600",
        "vary": VARY,
    }
    status, headers, body = s3_server.request("GET", f"/{bucket}/k", headers={"Origin": APP})
    assert (status, body, _cors_headers(headers)) == (200, b"x", app_headers)
    # Without Origin: not a cross-origin request, no CORS headers.
    status, headers, _ = s3_server.request("GET", f"/{bucket}/k")
    assert (status, _cors_headers(headers)) == (200, {})
    # Any origin may GET (the second rule), but not DELETE; an error answer carries them too.
    other = {"Origin": "http://elsewhere.test"}
    status, headers, _ = s3_server.request("HEAD", f"/{bucket}/k", headers=other)
    assert (status, headers["access-control-allow-origin"]) == (200, "*")
    assert "access-control-allow-credentials" not in headers
    status, headers, body = s3_server.request("GET", f"/{bucket}/missing", headers={"Origin": APP})
    assert (status, _error_fields(body)["Code"], _cors_headers(headers)) == (
        404,
        "NoSuchKey",
        app_headers,
    )
    status, headers, _ = s3_server.request("DELETE", f"/{bucket}/k", headers=other)
    assert (status, _cors_headers(headers)) == (204, {})
    status, headers, _ = s3_server.request(
        "PUT", f"/{bucket}/k", headers={"Origin": APP}, body=b"y"
    )
    assert (status, _cors_headers(headers)) == (200, app_headers)
    # As S3: Access-Control-Request-Method, when sent, is the method an actual request is
    # matched with; a refused signature is answered with the CORS headers too.
    status, headers, _ = s3_server.request(
        "GET", f"/{bucket}/k", headers={**other, "Access-Control-Request-Method": "PUT"}
    )
    assert (status, _cors_headers(headers)) == (200, {})
    unsigned = {"Origin": APP, "Authorization": "AWS4-HMAC-SHA256 garbage"}
    status, headers, _ = s3_server.request("GET", f"/{bucket}/k", headers=unsigned, sign=False)
    assert status in (400, 403)
    assert _cors_headers(headers) == app_headers
    s3.delete_bucket_cors(Bucket=bucket)
    status, headers, _ = s3_server.request("GET", f"/{bucket}/k", headers={"Origin": APP})
    assert (status, _cors_headers(headers)) == (200, {})


def test_cors_headers_on_anonymous_reads(s3_server: S3Server, s3: Any) -> None:
    s3.create_bucket(Bucket="e2e-public-cors", ACL="public-read")
    try:
        s3.put_bucket_cors(Bucket="e2e-public-cors", CORSConfiguration={"CORSRules": CORS_RULES})
        s3.put_object(Bucket="e2e-public-cors", Key="p", Body=b"public")
        origin = {"Origin": "http://elsewhere.test"}
        status, headers, body = s3_server.request(
            "GET", "/e2e-public-cors/p", headers=origin, sign=False
        )
        assert (status, body, headers["access-control-allow-origin"]) == (200, b"public", "*")
        status, headers, _ = s3_server.request(
            "PUT", "/e2e-public-cors/w", headers={"Origin": APP}, body=b"no", sign=False
        )
        assert (status, headers["access-control-allow-origin"]) == (403, APP)
    finally:
        s3.delete_object(Bucket="e2e-public-cors", Key="p")
        s3.delete_bucket(Bucket="e2e-public-cors")


# -- tagging -------------------------------------------------------------------------------------

TAG_SET = [{"Key": "project", "Value": "ballast & co"}, {"Key": "é", "Value": ""}]
TWICE = [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}]


def test_object_tagging_round_trip(s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []
    assert "TagCount" not in s3.head_object(Bucket=bucket, Key="k")
    answer = s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": TAG_SET})
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == TAG_SET
    assert s3.get_object_tagging(Bucket=bucket, Key="k", VersionId="null")["TagSet"] == TAG_SET
    head = s3.head_object(Bucket=bucket, Key="k")
    assert (head["ETag"], head["ContentLength"]) == (put["ETag"], 4)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    got = s3.get_object(Bucket=bucket, Key="k")
    assert (got["TagCount"], got["Body"].read(), got["ETag"]) == (2, b"data", put["ETag"])
    answer = s3.delete_object_tagging(Bucket=bucket, Key="k")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="k")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"


def test_delete_object_tagging_never_deletes_the_object(
    s3_server: S3Server, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"data", Tagging="a=1")
    for query in ("tagging", "tagging=", "x-id=DeleteObject&tagging"):
        status, _, _ = s3_server.request("DELETE", f"/{bucket}/k?{query}")
        assert status == 204
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
    for method in ("POST", "HEAD"):
        status, _, _ = s3_server.request(method, f"/{bucket}/k?tagging")
        assert status == 405


def test_tagging_header_on_put_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", Tagging="a=1&b%20c=d%26e&empty=")
    tags = s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]
    assert tags == [
        {"Key": "a", "Value": "1"},
        {"Key": "b c", "Value": "d&e"},
        {"Key": "empty", "Value": ""},
    ]
    assert (
        s3.head_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPHeaders"][
            "x-amz-tagging-count"
        ]
        == "3"
    )
    s3.put_object(Bucket=bucket, Key="k", Body=b"y")  # a new object: no tags
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_tagging_header_on_create_multipart_upload(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="team=storage")
    part = s3.upload_part(
        Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 10
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"] == [
        {"Key": "team", "Value": "storage"}
    ]
    assert s3.get_object(Bucket=bucket, Key="mp")["TagCount"] == 1


def test_copy_object_tagging_directive(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"data", Tagging="a=1&b=2")
    source = {"Bucket": bucket, "Key": "src"}
    s3.copy_object(Bucket=bucket, Key="copy", CopySource=source, Tagging="ignored=1")
    assert s3.get_object_tagging(Bucket=bucket, Key="copy")["TagSet"] == [
        {"Key": "a", "Value": "1"},
        {"Key": "b", "Value": "2"},
    ]
    s3.copy_object(
        Bucket=bucket, Key="new", CopySource=source, TaggingDirective="REPLACE", Tagging="c=3"
    )
    assert s3.get_object_tagging(Bucket=bucket, Key="new")["TagSet"] == [{"Key": "c", "Value": "3"}]
    s3.copy_object(Bucket=bucket, Key="none", CopySource=source, TaggingDirective="REPLACE")
    assert s3.get_object_tagging(Bucket=bucket, Key="none")["TagSet"] == []
    s3.copy_object(
        Bucket=bucket,
        Key="meta",
        CopySource=source,
        MetadataDirective="REPLACE",
        Metadata={"m": "1"},
    )
    meta = s3.head_object(Bucket=bucket, Key="meta")
    assert meta["Metadata"] == {"m": "1"}
    assert meta["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="bad", CopySource=source, TaggingDirective="MERGE")
    assert (_code(info), _status(info)) == ("InvalidArgument", 400)


def test_object_tagging_refusals(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", Tagging="keep=1")
    too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(11)]
    for tag_set, message in (
        (too_many, "Object tags cannot be greater than 10"),
        ([{"Key": "k" * 129, "Value": ""}], "The TagKey you have provided is too long, max 128"),
        ([{"Key": "k", "Value": "v" * 257}], "The TagValue you have provided is too long, max 256"),
        (TWICE, "Cannot provide multiple Tags with the same key"),
        ([{"Key": "aws:x", "Value": "1"}], "Your TagKey cannot be prefixed with aws:"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as info:
            s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": tag_set})
        assert (_code(info), _status(info)) == ("InvalidTag", 400)
        assert info.value.response["Error"]["Message"] == message
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="h", Body=b"x", Tagging="aws:x=1")
    assert (_code(info), _status(info)) == ("InvalidTag", 400)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="h", Body=b"x", Tagging="a=1&a=2")
    assert (_code(info), _status(info)) == ("InvalidArgument", 400)
    with pytest.raises(ClientError) as info:
        s3.create_multipart_upload(Bucket=bucket, Key="h", Tagging="%FF=1")
    assert (_code(info), _status(info)) == ("InvalidArgument", 400)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="h")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == [
        {"Key": "keep", "Value": "1"}
    ]


def test_object_tagging_errors(s3_server: S3Server, s3: Any, bucket: str) -> None:
    tagging = {"TagSet": [{"Key": "a", "Value": "1"}]}
    for call, kwargs in (
        (s3.get_object_tagging, {}),
        (s3.put_object_tagging, {"Tagging": tagging}),
        (s3.delete_object_tagging, {}),
    ):
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="missing", **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchKey", 404)
        assert info.value.response["Error"]["Key"] == "missing"
        with pytest.raises(ClientError) as info:
            call(Bucket="e2e-no-such-bucket-tags", Key="k", **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchBucket", 404)
        with pytest.raises(ClientError) as info:
            call(Bucket=bucket, Key="missing", VersionId="v1", **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchVersion", 404)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for body in (b"", b"<Tagging>", b"<Tagging/>", b"<Tagging><TagSet><Tag/></TagSet></Tagging>"):
        status, _, answer = s3_server.request("PUT", f"/{bucket}/k?tagging", body=body)
        assert (status, b"<Code>MalformedXML</Code>" in answer) == (400, True), answer
    good = b"<Tagging><TagSet><Tag><Key>a</Key><Value>1</Value></Tag></TagSet></Tagging>"
    wrong = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    status, _, answer = s3_server.request(
        "PUT", f"/{bucket}/k?tagging", body=good, headers={"Content-MD5": wrong}
    )
    assert (status, b"<Code>BadDigest</Code>" in answer) == (400, True), answer
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_bucket_tagging(s3_server: S3Server, s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.get_bucket_tagging(Bucket=bucket)
    assert (_code(info), _status(info)) == ("NoSuchTagSet", 404)
    assert info.value.response["Error"]["Message"] == "The TagSet does not exist"
    assert info.value.response["Error"]["BucketName"] == bucket
    answer = s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": TAG_SET})
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == TAG_SET
    fifty = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": fifty})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == fifty
    answer = s3.delete_bucket_tagging(Bucket=bucket)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        s3.get_bucket_tagging(Bucket=bucket)
    assert _code(info) == "NoSuchTagSet"
    s3.delete_bucket_tagging(Bucket=bucket)  # no tags: fine
    for query in ("tagging", "tagging=", "x-id=DeleteBucket&tagging"):
        status, _, _ = s3_server.request("DELETE", f"/{bucket}?{query}")
        assert status == 204
    s3.head_bucket(Bucket=bucket)  # still there
    for method in ("POST", "HEAD"):
        status, _, _ = s3_server.request(method, f"/{bucket}?tagging")
        assert status == 405


def test_bucket_tagging_refusals(s3_server: S3Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "keep", "Value": "1"}]})
    too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    for tag_set, message in (
        (too_many, "Bucket tag count cannot be greater than 50"),
        ([{"Key": "k" * 129, "Value": ""}], "The TagKey you have provided is too long, max 128"),
        (TWICE, "Cannot provide multiple Tags with the same key"),
        ([{"Key": "aws:x", "Value": "1"}], "System tags cannot be added/updated by requester"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as info:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set})
        assert (_code(info), _status(info)) == ("InvalidTag", 400)
        assert info.value.response["Error"]["Message"] == message
    status, _, answer = s3_server.request("PUT", f"/{bucket}?tagging", body=b"<Tagging/>")
    assert (status, b"<Code>MalformedXML</Code>" in answer) == (400, True), answer
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "keep", "Value": "1"}]
    missing = "e2e-no-such-bucket-tags"
    calls: list[tuple[Any, dict[str, Any]]] = [
        (s3.get_bucket_tagging, {}),
        (s3.put_bucket_tagging, {"Tagging": {"TagSet": TAG_SET}}),
        (s3.delete_bucket_tagging, {}),
    ]
    for call, kwargs in calls:
        with pytest.raises(ClientError) as info:
            call(Bucket=missing, **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchBucket", 404)


def test_an_answer_carries_the_cors_rules_the_request_found(
    s3_server: S3Server, s3: Any, bucket: str
) -> None:
    """DeleteBucketCors answers with the CORS headers of the rules it removed, as S3 applies
    the configuration in force when the request arrived."""
    rules = {
        "CORSRules": [
            {"AllowedOrigins": ["https://app.example"], "AllowedMethods": ["DELETE", "GET"]}
        ]
    }
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=rules)
    origin = {"Origin": "https://app.example"}
    status, headers, _ = s3_server.request("DELETE", f"/{bucket}?cors", headers=origin)
    assert (status, headers.get("access-control-allow-origin")) == (204, "https://app.example")
    status, headers, _ = s3_server.request("GET", f"/{bucket}/missing", headers=origin)
    assert status == 404
    assert "access-control-allow-origin" not in headers  # the rules are gone


def test_bucket_sub_resources_never_touch_an_object(
    s3_server: S3Server, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    body = (
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>"
    )
    for method, query, payload in (
        ("PUT", "cors", body),
        ("DELETE", "cors", b""),
        ("DELETE", "policy", b""),
    ):
        status, _, answer = s3_server.request(method, f"/{bucket}/k?{query}", body=payload)
        assert (status, b"<Code>InvalidRequest</Code>" in answer) == (400, True), answer
    assert read_body(s3.get_object(Bucket=bucket, Key="k")) == b"data"


# -- lifecycle -----------------------------------------------------------------------------------

LIFECYCLE_RULES: list[dict[str, Any]] = [
    {
        "ID": "old logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    },
    {
        "ID": "tagged tmp",
        "Filter": {"And": {"Prefix": "tmp/", "Tags": [{"Key": "class", "Value": "tmp"}]}},
        "Status": "Enabled",
        "Expiration": {"Date": datetime(2040, 1, 1, tzinfo=UTC)},
    },
    {"ID": "off", "Filter": {}, "Status": "Disabled", "Expiration": {"Days": 1}},
]


def _lifecycle(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Rules": rules}


def test_bucket_lifecycle_round_trip(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert (_code(info), _status(info)) == ("NoSuchLifecycleConfiguration", 404)
    assert info.value.response["Error"]["Message"] == "The lifecycle configuration does not exist"
    assert info.value.response["Error"]["BucketName"] == bucket
    put = s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration=_lifecycle(LIFECYCLE_RULES)
    )
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == LIFECYCLE_RULES
    # A rule without an ID gets one; the legacy top-level Prefix reads back as sent.
    legacy = [{"Prefix": "old/", "Status": "Enabled", "Expiration": {"Days": 2}}]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=_lifecycle(legacy))
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert 0 < len(rule.pop("ID")) <= 255
    assert rule == legacy[0]
    deleted = s3.delete_bucket_lifecycle(Bucket=bucket)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as info:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert _code(info) == "NoSuchLifecycleConfiguration"
    assert s3.delete_bucket_lifecycle(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_bucket_lifecycle_of_a_missing_bucket(s3: Any) -> None:
    missing = "e2e-no-such-bucket-lifecycle"
    for call, kwargs in (
        (s3.get_bucket_lifecycle_configuration, {}),
        (
            s3.put_bucket_lifecycle_configuration,
            {"LifecycleConfiguration": _lifecycle(LIFECYCLE_RULES)},
        ),
        (s3.delete_bucket_lifecycle, {}),
    ):
        with pytest.raises(ClientError) as info:
            call(Bucket=missing, **kwargs)
        assert (_code(info), _status(info)) == ("NoSuchBucket", 404)
        assert info.value.response["Error"]["BucketName"] == missing


def test_put_bucket_lifecycle_refusals(s3_server: S3Server, s3: Any, bucket: str) -> None:
    expire = {"Days": 1}
    for rules, expected in (
        ([{"ID": "a", "Filter": {}, "Status": "Enabled"}], ("InvalidRequest", 400)),
        ([{"ID": "a", "Filter": {}, "Status": "Enabled", "Expiration": {"Days": 0}}],
         ("InvalidArgument", 400)),
        ([{"ID": "a", "Filter": {}, "Status": "Enabled",
           "Expiration": {"Date": datetime(2040, 1, 1, 12, tzinfo=UTC)}}],
         ("InvalidArgument", 400)),
        ([{"ID": "a", "Filter": {}, "Status": "Enabled", "Expiration": expire}] * 2,
         ("InvalidArgument", 400)),
        ([{"ID": "i" * 256, "Filter": {}, "Status": "Enabled", "Expiration": expire}],
         ("InvalidArgument", 400)),
        ([{"ID": "a", "Filter": {"Tag": {"Key": "k", "Value": "v"}}, "Status": "Enabled",
           "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}],
         ("InvalidRequest", 400)),
        ([{"ID": "a", "Filter": {"ObjectSizeGreaterThan": 10}, "Status": "Enabled",
           "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}],
         ("InvalidRequest", 400)),
        ([{"ID": "a", "Status": "Enabled", "Expiration": expire}], ("MalformedXML", 400)),
        ([{"ID": "a", "Filter": {}, "Status": "Enabled",
           "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}],
         ("NotImplemented", 501)),
        ([], ("MalformedXML", 400)),
    ):  # fmt: skip
        with pytest.raises(ClientError) as info:
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration=_lifecycle(rules)
            )
        assert (_code(info), _status(info)) == expected, rules
    good = (
        b"<LifecycleConfiguration><Rule><Filter/><Status>Enabled</Status>"
        b"<Expiration><Days>3</Days></Expiration></Rule></LifecycleConfiguration>"
    )
    md5 = base64.b64encode(hashlib.md5(good, usedforsecurity=False).digest()).decode()
    wrong = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    for headers, body, expected_raw in (
        ({"content-md5": wrong}, good, (400, "BadDigest")),
        ({"content-md5": "nope"}, good, (400, "InvalidDigest")),
        ({}, b"", (400, "MalformedXML")),
        ({}, b"<LifecycleConfiguration>", (400, "MalformedXML")),
        ({}, b"<!DOCTYPE x [<!ENTITY e 'x'>]><LifecycleConfiguration/>", (400, "MalformedXML")),
        ({}, good.replace(b"Enabled", b"On"), (400, "MalformedXML")),
        ({}, good[:-30] + b" " * 70_000 + good[-30:], (400, "InvalidRequest")),
    ):
        status, _, answer = s3_server.request(
            "PUT", f"/{bucket}?lifecycle", headers=headers, body=body
        )
        assert (status, _error_fields(answer)["Code"]) == expected_raw, answer
        with pytest.raises(ClientError) as info:
            s3.get_bucket_lifecycle_configuration(Bucket=bucket)
        assert _code(info) == "NoSuchLifecycleConfiguration"  # nothing was stored
    status, _, _ = s3_server.request(
        "PUT", f"/{bucket}?lifecycle", headers={"content-md5": md5}, body=good
    )
    assert status == 200
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert (rule["Filter"], rule["Expiration"]) == ({}, {"Days": 3})


def test_delete_lifecycle_never_deletes_the_bucket(
    s3_server: S3Server, s3: Any, bucket: str
) -> None:
    for query in ("lifecycle", "lifecycle=", "lifecycle&x-id=DeleteBucket"):
        status, _, body = s3_server.request("DELETE", f"/{bucket}?{query}")
        assert (status, body) == (204, b"")
        assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    for method in ("HEAD", "POST"):
        status, _, _ = s3_server.request(method, f"/{bucket}?lifecycle")
        assert status == 405
    status, _, body = s3_server.request("DELETE", f"/{bucket}/k?lifecycle")
    assert (status, _error_fields(body)["Code"]) == (400, "InvalidRequest")


def _expiration(last_modified: datetime, days: int, rule_id: str) -> str:
    midnight = datetime.combine(last_modified.astimezone(UTC).date(), datetime.min.time(), UTC)
    expiry = midnight + timedelta(days=days + 1)
    return f'expiry-date="{expiry.strftime("%a, %d %b %Y %H:%M:%S GMT")}", rule-id="{rule_id}"'


def test_objects_a_rule_expires_carry_x_amz_expiration(s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration=_lifecycle(LIFECYCLE_RULES)
    )
    put = s3.put_object(Bucket=bucket, Key="logs/a.log", Body=b"log")
    head = s3.head_object(Bucket=bucket, Key="logs/a.log")
    expected = _expiration(head["LastModified"], 30, "old logs")
    assert put["Expiration"] == expected
    assert head["Expiration"] == expected
    got = s3.get_object(Bucket=bucket, Key="logs/a.log")
    assert got["Expiration"] == expected
    got["Body"].read()
    copied = s3.copy_object(
        Bucket=bucket, Key="logs/b.log", CopySource={"Bucket": bucket, "Key": "logs/a.log"}
    )
    b_modified = s3.head_object(Bucket=bucket, Key="logs/b.log")["LastModified"]
    assert copied["Expiration"] == _expiration(b_modified, 30, "old logs")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="logs/c.log")["UploadId"]
    part = s3.upload_part(
        Bucket=bucket, Key="logs/c.log", UploadId=upload, PartNumber=1, Body=b"part"
    )
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="logs/c.log",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    c_modified = s3.head_object(Bucket=bucket, Key="logs/c.log")["LastModified"]
    assert done["Expiration"] == _expiration(c_modified, 30, "old logs")
    # A date rule that needs a tag: only the tagged object has it.
    s3.put_object(Bucket=bucket, Key="tmp/t", Body=b"x", Tagging="class=tmp")
    s3.put_object(Bucket=bucket, Key="tmp/u", Body=b"x")
    assert s3.head_object(Bucket=bucket, Key="tmp/t")["Expiration"] == (
        'expiry-date="Sun, 01 Jan 2040 00:00:00 GMT", rule-id="tagged tmp"'
    )
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="tmp/u")
    # No enabled rule matches (the disabled one would match anything).
    s3.put_object(Bucket=bucket, Key="other", Body=b"x")
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="other")
    s3.delete_bucket_lifecycle(Bucket=bucket)
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="logs/a.log")
