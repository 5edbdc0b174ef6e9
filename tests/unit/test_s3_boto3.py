"""Real boto3 requests, captured before they leave the client, routed and verified.

boto3 is the reference client: every operation the issue lists must route to the right
endpoint and authenticate, in path and virtual-hosted style, over http (body hash signed)
and https (boto3 then streams aws-chunked bodies with a trailing CRC32 checksum).
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from interfaces.s3.chunked import NEED_DATA, Data, EndOfMessage, Trailers, decoder_for_request
from interfaces.s3.etag import checksum_from_headers, new_checksum
from interfaces.s3.headers import Headers
from interfaces.s3.router import Op, route
from interfaces.s3.sigv4 import AuthMethod, check_payload_sha256, verify_request

BASE = "s3.example.test"
SECRETS = {"AKIDBALLAST": "secret/with+special=chars"}
COMPLETE = {"Parts": [{"PartNumber": 1, "ETag": '"a54357aff0632cce46d942af68356b38"'}]}
COPY_SOURCE = {"Bucket": "src", "Key": "dir/src key+1"}

OPERATIONS: list[tuple[str, dict[str, Any], Op]] = [
    ("list_buckets", {}, Op.LIST_BUCKETS),
    ("create_bucket", {"Bucket": "bucket"}, Op.CREATE_BUCKET),
    (
        "create_bucket",
        {"Bucket": "bucket", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}},
        Op.CREATE_BUCKET,
    ),
    ("head_bucket", {"Bucket": "bucket"}, Op.HEAD_BUCKET),
    ("delete_bucket", {"Bucket": "bucket"}, Op.DELETE_BUCKET),
    ("get_bucket_location", {"Bucket": "bucket"}, Op.GET_BUCKET_LOCATION),
    ("list_objects", {"Bucket": "bucket", "Prefix": "a b/", "Delimiter": "/"}, Op.LIST_OBJECTS),
    (
        "list_objects_v2",
        {"Bucket": "bucket", "Prefix": "ü+", "StartAfter": "x"},
        Op.LIST_OBJECTS_V2,
    ),
    ("list_object_versions", {"Bucket": "bucket"}, Op.LIST_OBJECT_VERSIONS),
    (
        "put_object",
        {
            "Bucket": "bucket",
            "Key": "dir/a b+c%d€",
            "Body": b"x" * 3000,
            "Metadata": {"note": "hello"},
        },
        Op.PUT_OBJECT,
    ),
    ("put_object", {"Bucket": "bucket", "Key": "empty", "Body": b""}, Op.PUT_OBJECT),
    ("get_object", {"Bucket": "bucket", "Key": "k", "Range": "bytes=0-9"}, Op.GET_OBJECT),
    (
        "get_object",
        {"Bucket": "bucket", "Key": "k", "VersionId": "v+1", "ResponseContentType": "text/plain"},
        Op.GET_OBJECT,
    ),
    ("head_object", {"Bucket": "bucket", "Key": "k", "IfNoneMatch": '"e"'}, Op.HEAD_OBJECT),
    ("delete_object", {"Bucket": "bucket", "Key": "k"}, Op.DELETE_OBJECT),
    (
        "delete_objects",
        {"Bucket": "bucket", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}]}},
        Op.DELETE_OBJECTS,
    ),
    ("copy_object", {"Bucket": "bucket", "Key": "dst", "CopySource": COPY_SOURCE}, Op.COPY_OBJECT),
    ("create_multipart_upload", {"Bucket": "bucket", "Key": "big"}, Op.CREATE_MULTIPART_UPLOAD),
    (
        "upload_part",
        {
            "Bucket": "bucket",
            "Key": "big",
            "UploadId": "up/1+",
            "PartNumber": 1,
            "Body": io.BytesIO(b"p" * 70000),
        },
        Op.UPLOAD_PART,
    ),
    (
        "upload_part_copy",
        {
            "Bucket": "bucket",
            "Key": "big",
            "UploadId": "u",
            "PartNumber": 2,
            "CopySource": COPY_SOURCE,
            "CopySourceRange": "bytes=0-9",
        },
        Op.UPLOAD_PART_COPY,
    ),
    (
        "complete_multipart_upload",
        {"Bucket": "bucket", "Key": "big", "UploadId": "u", "MultipartUpload": COMPLETE},
        Op.COMPLETE_MULTIPART_UPLOAD,
    ),
    (
        "abort_multipart_upload",
        {"Bucket": "bucket", "Key": "big", "UploadId": "u"},
        Op.ABORT_MULTIPART_UPLOAD,
    ),
    ("list_parts", {"Bucket": "bucket", "Key": "big", "UploadId": "u"}, Op.LIST_PARTS),
    ("list_multipart_uploads", {"Bucket": "bucket"}, Op.LIST_MULTIPART_UPLOADS),
    ("get_bucket_acl", {"Bucket": "bucket"}, Op.GET_BUCKET_ACL),
    ("put_bucket_acl", {"Bucket": "bucket", "ACL": "public-read"}, Op.PUT_BUCKET_ACL),
    ("get_object_acl", {"Bucket": "bucket", "Key": "k"}, Op.GET_OBJECT_ACL),
    (
        "put_object_acl",
        {
            "Bucket": "bucket",
            "Key": "k",
            "AccessControlPolicy": {
                "Owner": {"ID": "o"},
                "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": "o"}, "Permission": "READ"}],
            },
        },
        Op.PUT_OBJECT_ACL,
    ),
    ("get_bucket_versioning", {"Bucket": "bucket"}, Op.GET_BUCKET_VERSIONING),
    (
        "put_bucket_cors",
        {
            "Bucket": "bucket",
            "CORSConfiguration": {
                "CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "PUT"]}]
            },
        },
        Op.PUT_BUCKET_CORS,
    ),
    ("get_bucket_cors", {"Bucket": "bucket"}, Op.GET_BUCKET_CORS),
    ("delete_bucket_cors", {"Bucket": "bucket"}, Op.DELETE_BUCKET_CORS),
    (
        "put_bucket_versioning",
        {"Bucket": "bucket", "VersioningConfiguration": {"Status": "Enabled"}},
        Op.UNSUPPORTED,
    ),
    (
        "put_object_tagging",
        {"Bucket": "bucket", "Key": "k", "Tagging": {"TagSet": [{"Key": "a", "Value": "b"}]}},
        Op.PUT_OBJECT_TAGGING,
    ),
    ("get_object_tagging", {"Bucket": "bucket", "Key": "k"}, Op.GET_OBJECT_TAGGING),
    ("delete_object_tagging", {"Bucket": "bucket", "Key": "k"}, Op.DELETE_OBJECT_TAGGING),
    (
        "get_object_attributes",
        {
            "Bucket": "bucket",
            "Key": "dir/a b",
            "ObjectAttributes": ["ETag", "ObjectParts"],
            "MaxParts": 2,
            "PartNumberMarker": 1,
        },
        Op.GET_OBJECT_ATTRIBUTES,
    ),
    (
        "put_bucket_tagging",
        {"Bucket": "bucket", "Tagging": {"TagSet": [{"Key": "a", "Value": "b"}]}},
        Op.PUT_BUCKET_TAGGING,
    ),
    ("get_bucket_tagging", {"Bucket": "bucket"}, Op.GET_BUCKET_TAGGING),
    ("delete_bucket_tagging", {"Bucket": "bucket"}, Op.DELETE_BUCKET_TAGGING),
    ("put_object", {"Bucket": "bucket", "Key": "k", "Tagging": "a=b&c=d"}, Op.PUT_OBJECT),
]

CLIENTS = [
    ("http", "path"),
    ("http", "virtual"),
    ("https", "path"),
    ("https", "virtual"),
]


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


@cache
def _client(scheme: str, style: str, signature_version: str | None = None) -> Any:
    """A boto3 client whose requests are captured instead of sent (cached: creation is slow)."""
    client = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://{BASE}:9000",
        aws_access_key_id="AKIDBALLAST",
        aws_secret_access_key=SECRETS["AKIDBALLAST"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": style},
            retries={"max_attempts": 1},
            signature_version=signature_version,
        ),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", capture)
    return client


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    data: bytes = body.read()
    return data


def _decode_streaming(decoder: Any, raw: bytes) -> tuple[bytes, Trailers | None]:
    out = bytearray()
    trailers = None
    for piece in (raw, b""):
        decoder.receive_data(piece)
        while (event := decoder.next_event()) is not NEED_DATA:
            if isinstance(event, Data):
                out += event.data
            elif isinstance(event, Trailers):
                trailers = event
            elif isinstance(event, EndOfMessage):
                return bytes(out), trailers
    raise AssertionError("body did not end")


@pytest.mark.parametrize(("scheme", "style"), CLIENTS, ids=[f"{s}-{a}" for s, a in CLIENTS])
@pytest.mark.parametrize(
    ("operation", "params", "op"), OPERATIONS, ids=[f"{o[0]}-{i}" for i, o in enumerate(OPERATIONS)]
)
def test_boto3_request(
    scheme: str, style: str, operation: str, params: dict[str, Any], op: Op
) -> None:
    if "Body" in params and isinstance(params["Body"], io.BytesIO):
        params = {**params, "Body": io.BytesIO(params["Body"].getvalue())}
    client = _client(scheme, style)
    with pytest.raises(_Captured) as info:
        getattr(client, operation)(**params)
    request = info.value.request
    url = urlsplit(request.url)
    headers = Headers([("host", url.netloc), *request.headers.items()])

    endpoint = route(request.method, url.path, url.query, headers, base_domains=[BASE])
    assert endpoint.op is op
    if "Bucket" in params:
        assert endpoint.bucket == params["Bucket"]
        # botocore always sends GetBucketLocation path-style
        virtual = style == "virtual" and operation != "get_bucket_location"
        assert endpoint.virtual_host == virtual
    if "Key" in params and op is not Op.UNSUPPORTED:
        assert endpoint.key == params["Key"]
    if "CopySource" in params:
        assert endpoint.copy_source is not None
        assert (endpoint.copy_source.bucket, endpoint.copy_source.key) == ("src", "dir/src key+1")
    if "UploadId" in params:
        assert endpoint.upload_id == params["UploadId"]

    auth = verify_request(
        request.method,
        url.path,
        url.query,
        headers,
        SECRETS.get,
        datetime.now(UTC),
        region="us-east-1",
        virtual_host_bucket=endpoint.bucket if endpoint.virtual_host else None,
    )
    assert auth.access_key == "AKIDBALLAST"
    assert auth.method is AuthMethod.HEADER

    raw = _body_bytes(request.body)
    decoder = decoder_for_request(auth, headers)
    if decoder is None:
        check_payload_sha256(auth, hashlib.sha256(raw).digest())
        body = raw
        claim = checksum_from_headers(headers)
    else:
        body, trailers = _decode_streaming(decoder, raw)
        claim = checksum_from_headers(trailers.headers if trailers else ())
    if isinstance(params.get("Body"), bytes):
        assert body == params["Body"]
    elif isinstance(params.get("Body"), io.BytesIO):
        assert body == params["Body"].getvalue()
    if claim is not None:
        hasher = new_checksum(claim.algorithm)
        hasher.update(body)
        claim.verify(hasher.digest())


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize("version", [None, "s3v4"])
def test_boto3_presigned_url(style: str, version: str | None) -> None:
    """boto3's default presigned URLs in us-east-1 are SigV2; with ``s3v4`` they are SigV4."""
    client = _client("https", style, signature_version=version)
    url = urlsplit(
        client.generate_presigned_url(
            "get_object",
            Params={"Bucket": "bucket", "Key": "a b/ü+%", "ResponseContentType": "text/plain"},
            ExpiresIn=600,
        )
    )
    headers = Headers([("host", url.netloc)])
    endpoint = route("GET", url.path, url.query, headers, base_domains=[BASE])
    assert (endpoint.op, endpoint.bucket, endpoint.key) == (Op.GET_OBJECT, "bucket", "a b/ü+%")
    auth = verify_request(
        "GET",
        url.path,
        url.query,
        headers,
        SECRETS.get,
        datetime.now(UTC),
        virtual_host_bucket=endpoint.bucket if endpoint.virtual_host else None,
    )
    assert auth.method is AuthMethod.QUERY
    assert auth.access_key == "AKIDBALLAST"
    assert auth.signature_version == (4 if version else 2)
