"""Bucket-name and object-key rules (S3 general purpose bucket naming rules)."""

from __future__ import annotations

import pytest

from interfaces.s3.errors import S3Error
from interfaces.s3.names import is_valid_bucket_name, validate_bucket_name, validate_object_key


@pytest.mark.parametrize(
    "name",
    [
        # valid examples from the S3 user guide
        "docexamplebucket1",
        "log-delivery-march-2020",
        "my-hosted-content",
        "docexamplewebsite.com",
        "www.docexamplewebsite.com",
        "my.example.s3.bucket",
        "abc",
        "a" * 63,
        "1-2.3",
        "192.168.5",
    ],
)
def test_valid(name: str) -> None:
    assert is_valid_bucket_name(name)
    validate_bucket_name(name)


@pytest.mark.parametrize(
    "name",
    [
        # invalid examples from the S3 user guide
        "doc_example_bucket",
        "DocExampleBucket",
        "doc-example-bucket-",
        # other rules
        "ab",
        "a" * 64,
        "-abc",
        ".abc",
        "abc.",
        "a..b",
        "192.168.5.4",
        "xn--abc",
        "sthree-abc",
        "amzn-s3-demo-bucket",
        "bucket-s3alias",
        "bucket--ol-s3",
        "bucket.mrap",
        "bucket--x-s3",
        "bucket--table-s3",
        "bück",
        "a b",
        "",
    ],
)
def test_invalid(name: str) -> None:
    assert not is_valid_bucket_name(name)
    with pytest.raises(S3Error) as info:
        validate_bucket_name(name)
    assert (info.value.code, info.value.status) == ("InvalidBucketName", 400)


@pytest.mark.parametrize("key", ["a", "a/b/c", " x ", "é" * 512, "k" * 1024, "\x00\x01", "../.."])
def test_valid_keys(key: str) -> None:
    validate_object_key(key)


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("k" * 1025, "KeyTooLongError"),
        ("é" * 513, "KeyTooLongError"),
        ("", "InvalidArgument"),
        ("\ud800", "InvalidArgument"),
    ],
)
def test_invalid_keys(key: str, code: str) -> None:
    with pytest.raises(S3Error) as info:
        validate_object_key(key)
    assert info.value.code == code
