"""The S3 error vocabulary: storage errors mapped at the edge, code-specific elements.

Error bodies are checked by parsing them with botocore's own S3 error parser, which is what
hands ``response["Error"]`` to boto3 users.
"""

from __future__ import annotations

from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.parsers import create_parser  # type: ignore[import-untyped]

from interfaces.s3 import xml
from interfaces.s3.errors import S3Error, from_storage_error
from storage.bucket_index import IndexSealed
from storage.errors import Conflict, Contention, StorageError


def _boto_error(err: S3Error) -> dict[str, Any]:
    shape = botocore.session.get_session().get_service_model("s3").operation_model("GetObject")
    parsed: dict[str, Any] = create_parser("rest-xml").parse(
        {"body": xml.error(err, request_id="R"), "headers": {}, "status_code": err.status},
        shape.output_shape,
    )
    error: dict[str, Any] = parsed["Error"]
    return error


@pytest.mark.parametrize(
    "exc",
    [Contention("bucket index kept moving; giving up"), IndexSealed("bucket 'b' is being deleted")],
)
def test_contention_is_retryable_slowdown(exc: StorageError) -> None:
    err = from_storage_error(exc)
    assert (err.code, err.status, err.message) == (
        "SlowDown",
        503,
        "Please reduce your request rate.",
    )


def test_contention_is_still_a_conflict_for_storage_callers() -> None:
    assert isinstance(Contention(), Conflict)
    assert isinstance(IndexSealed(), Contention)


def test_conditional_write_race_stays_409() -> None:
    err = from_storage_error(Conflict(None, "another completion of this upload is under way"))
    assert (err.code, err.status) == ("ConditionalRequestConflict", 409)


@pytest.mark.parametrize(
    ("code", "element", "value"),
    [
        ("NoSuchBucket", "BucketName", "b"),
        ("BucketNotEmpty", "BucketName", "b"),
        ("BucketAlreadyExists", "BucketName", "b"),
        ("BucketAlreadyOwnedByYou", "BucketName", "b"),
        ("NoSuchKey", "Key", "dir/k ü"),
        ("NoSuchUpload", "UploadId", "VXBsb2FkSWQ"),
    ],
)
def test_naming_adds_the_element_boto3_reads(code: str, element: str, value: str) -> None:
    err = S3Error(code).naming(bucket="b", key="dir/k ü", upload_id="VXBsb2FkSWQ")
    assert dict(err.extra) == {element: value}
    parsed = _boto_error(err)
    assert (parsed["Code"], parsed[element]) == (code, value)


def test_naming_leaves_other_errors_alone() -> None:
    denied = S3Error("AccessDenied")
    assert denied.naming(bucket="b", key="k") is denied
    unknown = S3Error("NoSuchKey")
    assert unknown.naming(bucket="b") is unknown  # no key known: nothing to add
    named = S3Error("NoSuchKey", extra={"Key": "source"})
    assert named.naming(key="destination") is named
