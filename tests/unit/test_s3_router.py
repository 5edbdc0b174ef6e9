# ruff: noqa: E501  (the routing table reads best one request per line)
"""Table tests for the S3 router: request line + headers -> endpoint.

Rows follow the request syntax of each operation in the S3 API reference (path style on
``s3.amazonaws.com`` unless noted, virtual-hosted style on ``BUCKET.s3.amazonaws.com``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from interfaces.s3.errors import S3Error
from interfaces.s3.headers import Headers
from interfaces.s3.router import CopySource, Endpoint, Op, parse_copy_source, route

BASES = ("s3.amazonaws.com", "localhost")
COPY = {"x-amz-copy-source": "/src-bucket/src%20key.txt?versionId=v1"}
COPY_SRC = CopySource("src-bucket", "src key.txt", "v1")


@dataclass(frozen=True)
class Row:
    """A request and the endpoint it must route to."""

    request: str
    op: Op
    bucket: str | None
    key: str | None
    headers: dict[str, str]
    fields: dict[str, object]


def R(  # a short name: the table below reads better
    request: str,
    op: Op,
    bucket: str | None,
    key: str | None,
    *,
    headers: dict[str, str] | None = None,
    **fields: object,
) -> Row:
    return Row(request, op, bucket, key, headers or {}, fields)


# One row per request: "METHOD HOST/PATH?QUERY", then the expected endpoint.
# fmt: off
ROWS: list[Row] = [
    # service
    R("GET s3.amazonaws.com/", Op.LIST_BUCKETS, None, None),
    R("GET 127.0.0.1:9000/?x-id=ListBuckets", Op.LIST_BUCKETS, None, None),
    # bucket level, path style
    R("PUT s3.amazonaws.com/examplebucket", Op.CREATE_BUCKET, "examplebucket", None),
    R("PUT s3.amazonaws.com/examplebucket/", Op.CREATE_BUCKET, "examplebucket", None),
    R("HEAD s3.amazonaws.com/examplebucket", Op.HEAD_BUCKET, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket", Op.DELETE_BUCKET, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?location", Op.GET_BUCKET_LOCATION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?location=", Op.GET_BUCKET_LOCATION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket", Op.LIST_OBJECTS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?prefix=N&marker=Ned&max-keys=40", Op.LIST_OBJECTS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?list-type=2", Op.LIST_OBJECTS_V2, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?list-type=2&delimiter=%2F&prefix=photos%2F2006%2F&encoding-type=url", Op.LIST_OBJECTS_V2, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?versions", Op.LIST_OBJECT_VERSIONS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?versions&key-marker=key2", Op.LIST_OBJECT_VERSIONS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?uploads", Op.LIST_MULTIPART_UPLOADS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?uploads&max-uploads=3", Op.LIST_MULTIPART_UPLOADS, "examplebucket", None),
    R("POST s3.amazonaws.com/examplebucket?delete", Op.DELETE_OBJECTS, "examplebucket", None),
    R("POST s3.amazonaws.com/examplebucket?delete=&x-id=DeleteObjects", Op.DELETE_OBJECTS, "examplebucket", None),
    # bucket level, virtual-hosted style
    R("GET examplebucket.s3.amazonaws.com/", Op.LIST_OBJECTS, "examplebucket", None, virtual_host=True),
    R("GET examplebucket.s3.amazonaws.com/?list-type=2", Op.LIST_OBJECTS_V2, "examplebucket", None, virtual_host=True),
    R("PUT examplebucket.s3.amazonaws.com/", Op.CREATE_BUCKET, "examplebucket", None, virtual_host=True),
    R("HEAD my.dotted.bucket.localhost:9000/", Op.HEAD_BUCKET, "my.dotted.bucket", None, virtual_host=True),
    R("GET examplebucket.s3.amazonaws.com/?location", Op.GET_BUCKET_LOCATION, "examplebucket", None, virtual_host=True),
    R("POST examplebucket.s3.amazonaws.com/?delete", Op.DELETE_OBJECTS, "examplebucket", None, virtual_host=True),
    # objects
    R("PUT s3.amazonaws.com/examplebucket/my-image.jpg", Op.PUT_OBJECT, "examplebucket", "my-image.jpg"),
    R("PUT examplebucket.s3.amazonaws.com/my-image.jpg", Op.PUT_OBJECT, "examplebucket", "my-image.jpg", virtual_host=True),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg", Op.GET_OBJECT, "examplebucket", "my-image.jpg"),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg?versionId=3HL4kqtJlcpXroDTDmJ%2BrmSpXd3dIbrHY", Op.GET_OBJECT, "examplebucket", "my-image.jpg", version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg?response-content-type=text%2Fplain&x-id=GetObject", Op.GET_OBJECT, "examplebucket", "my-image.jpg"),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg?partNumber=3", Op.GET_OBJECT, "examplebucket", "my-image.jpg", part_number=3),
    R("HEAD s3.amazonaws.com/examplebucket/my-image.jpg", Op.HEAD_OBJECT, "examplebucket", "my-image.jpg"),
    R("DELETE s3.amazonaws.com/examplebucket/my-image.jpg", Op.DELETE_OBJECT, "examplebucket", "my-image.jpg"),
    R("DELETE s3.amazonaws.com/examplebucket/my-image.jpg?versionId=UIORUnfnd89493jJFJ", Op.DELETE_OBJECT, "examplebucket", "my-image.jpg", version_id="UIORUnfnd89493jJFJ"),
    R("PUT s3.amazonaws.com/examplebucket/my-second-image.jpg", Op.COPY_OBJECT, "examplebucket", "my-second-image.jpg", headers=COPY, copy_source=COPY_SRC),
    R("POST s3.amazonaws.com/examplebucket/example-object?uploads", Op.CREATE_MULTIPART_UPLOAD, "examplebucket", "example-object"),
    R("POST s3.amazonaws.com/examplebucket/example-object?uploads=&x-id=CreateMultipartUpload", Op.CREATE_MULTIPART_UPLOAD, "examplebucket", "example-object"),
    R("PUT s3.amazonaws.com/examplebucket/my-movie.m2ts?partNumber=1&uploadId=VCVsb2FkIElEIGZvciBlbZZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZR", Op.UPLOAD_PART, "examplebucket", "my-movie.m2ts", part_number=1, upload_id="VCVsb2FkIElEIGZvciBlbZZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZR"),
    R("PUT s3.amazonaws.com/examplebucket/my-movie.m2ts?uploadId=abc&partNumber=10000", Op.UPLOAD_PART, "examplebucket", "my-movie.m2ts", part_number=10000, upload_id="abc"),
    R("PUT s3.amazonaws.com/examplebucket/my-movie.m2ts?partNumber=2&uploadId=abc", Op.UPLOAD_PART_COPY, "examplebucket", "my-movie.m2ts", part_number=2, upload_id="abc", headers=COPY, copy_source=COPY_SRC),
    R("POST s3.amazonaws.com/examplebucket/example-object?uploadId=AAAsb2FkIElEIGZvciBlbHZpbmcncyWeeS1tb3ZpZS5tMnRzIRRwbG9hZA", Op.COMPLETE_MULTIPART_UPLOAD, "examplebucket", "example-object", upload_id="AAAsb2FkIElEIGZvciBlbHZpbmcncyWeeS1tb3ZpZS5tMnRzIRRwbG9hZA"),
    R("DELETE s3.amazonaws.com/examplebucket/example-object?uploadId=VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZ", Op.ABORT_MULTIPART_UPLOAD, "examplebucket", "example-object", upload_id="VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZ"),
    R("GET s3.amazonaws.com/examplebucket/example-object?uploadId=XXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA&max-parts=2&part-number-marker=1", Op.LIST_PARTS, "examplebucket", "example-object", upload_id="XXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"),
    # keys: decoded once, never normalised
    R("GET s3.amazonaws.com/b/a%20b%2Bc+d", Op.GET_OBJECT, "b", "a b+c d"),
    R("GET s3.amazonaws.com/b/dir//x/../y/", Op.GET_OBJECT, "b", "dir//x/../y/"),
    R("GET s3.amazonaws.com/b/%E2%82%AC%2F%25", Op.GET_OBJECT, "b", "€/%"),
    R("GET b.s3.amazonaws.com//leading-slash", Op.GET_OBJECT, "b", "/leading-slash", virtual_host=True),
    R("GET B.S3.AMAZONAWS.COM:443/k", Op.GET_OBJECT, "b", "k", virtual_host=True),
    R("GET [::1]:9000/b/k", Op.GET_OBJECT, "b", "k"),
    # access control lists and versioning
    R("GET s3.amazonaws.com/examplebucket?acl", Op.GET_BUCKET_ACL, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?acl=", Op.GET_BUCKET_ACL, "examplebucket", None, virtual_host=True),
    R("PUT s3.amazonaws.com/examplebucket?acl", Op.PUT_BUCKET_ACL, "examplebucket", None),
    R("PUT examplebucket.s3.amazonaws.com/?acl", Op.PUT_BUCKET_ACL, "examplebucket", None, headers={"x-amz-acl": "public-read"}, virtual_host=True),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg?acl", Op.GET_OBJECT_ACL, "examplebucket", "my-image.jpg"),
    R("GET s3.amazonaws.com/examplebucket/my-image.jpg?acl&versionId=null", Op.GET_OBJECT_ACL, "examplebucket", "my-image.jpg", version_id="null"),
    R("PUT s3.amazonaws.com/examplebucket/my-image.jpg?acl", Op.PUT_OBJECT_ACL, "examplebucket", "my-image.jpg"),
    R("PUT s3.amazonaws.com/examplebucket/my-image.jpg?acl", Op.PUT_OBJECT_ACL, "examplebucket", "my-image.jpg", headers=COPY, copy_source=None),
    R("GET s3.amazonaws.com/examplebucket?versioning", Op.GET_BUCKET_VERSIONING, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?versioning", Op.GET_BUCKET_VERSIONING, "examplebucket", None, virtual_host=True),
    # configurations Ballast does not keep: GET answers "never set", DELETE removes nothing
    R("GET s3.amazonaws.com/examplebucket?policy", Op.GET_BUCKET_POLICY, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket?policy", Op.DELETE_BUCKET_POLICY, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?policyStatus", Op.GET_BUCKET_POLICY_STATUS, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?website", Op.GET_BUCKET_WEBSITE, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?website", Op.DELETE_BUCKET_WEBSITE, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?encryption", Op.GET_BUCKET_ENCRYPTION, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket?encryption", Op.DELETE_BUCKET_ENCRYPTION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?replication", Op.GET_BUCKET_REPLICATION, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket?replication", Op.DELETE_BUCKET_REPLICATION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?ownershipControls", Op.GET_BUCKET_OWNERSHIP_CONTROLS, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket?ownershipControls", Op.DELETE_BUCKET_OWNERSHIP_CONTROLS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?publicAccessBlock", Op.GET_PUBLIC_ACCESS_BLOCK, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket?publicAccessBlock", Op.DELETE_PUBLIC_ACCESS_BLOCK, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?object-lock", Op.GET_OBJECT_LOCK_CONFIGURATION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?logging", Op.GET_BUCKET_LOGGING, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?requestPayment", Op.GET_BUCKET_REQUEST_PAYMENT, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?accelerate", Op.GET_BUCKET_ACCELERATE_CONFIGURATION, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket?notification", Op.GET_BUCKET_NOTIFICATION_CONFIGURATION, "examplebucket", None),
    # unsupported sub-resources -> NotImplemented at the server
    R("PUT s3.amazonaws.com/examplebucket?versioning", Op.UNSUPPORTED, "examplebucket", None, subresource="versioning"),
    R("DELETE s3.amazonaws.com/examplebucket?versioning", Op.UNSUPPORTED, "examplebucket", None, subresource="versioning"),
    R("PUT s3.amazonaws.com/examplebucket?versioning&policy", Op.UNSUPPORTED, "examplebucket", None, subresource="policy"),
    R("PUT s3.amazonaws.com/examplebucket?policy", Op.UNSUPPORTED, "examplebucket", None, subresource="policy"),
    R("POST s3.amazonaws.com/examplebucket?policy", Op.UNSUPPORTED, "examplebucket", None, subresource="policy"),
    R("PUT s3.amazonaws.com/examplebucket?encryption", Op.UNSUPPORTED, "examplebucket", None, subresource="encryption"),
    R("DELETE s3.amazonaws.com/examplebucket?logging", Op.UNSUPPORTED, "examplebucket", None, subresource="logging"),
    R("DELETE s3.amazonaws.com/examplebucket?tagging&versioning", Op.UNSUPPORTED, "examplebucket", None, subresource="versioning"),
    R("GET s3.amazonaws.com/examplebucket?inventory&id=x", Op.UNSUPPORTED, "examplebucket", None, subresource="inventory"),
    R("PUT s3.amazonaws.com/examplebucket?lifecycle&policy", Op.UNSUPPORTED, "examplebucket", None, subresource="policy"),
    R("GET s3.amazonaws.com/examplebucket/k?tagging&torrent", Op.UNSUPPORTED, "examplebucket", "k", subresource="torrent"),
    R("POST s3.amazonaws.com/examplebucket/k?restore", Op.UNSUPPORTED, "examplebucket", "k", subresource="restore"),
    R("POST s3.amazonaws.com/examplebucket/k?select&select-type=2", Op.UNSUPPORTED, "examplebucket", "k", subresource="select"),
    R("PUT s3.amazonaws.com/examplebucket/k?attributes", Op.UNSUPPORTED, "examplebucket", "k", subresource="attributes"),
    R("DELETE s3.amazonaws.com/examplebucket/k?attributes", Op.UNSUPPORTED, "examplebucket", "k", subresource="attributes"),
    R("POST s3.amazonaws.com/examplebucket/k?attributes", Op.UNSUPPORTED, "examplebucket", "k", subresource="attributes"),
    R("HEAD s3.amazonaws.com/examplebucket/k?attributes", Op.UNSUPPORTED, "examplebucket", "k", subresource="attributes"),
    R("GET s3.amazonaws.com/examplebucket/k?attributes&torrent", Op.UNSUPPORTED, "examplebucket", "k", subresource="torrent"),
    # object attributes (GET only)
    R("GET s3.amazonaws.com/examplebucket/k?attributes", Op.GET_OBJECT_ATTRIBUTES, "examplebucket", "k"),
    R("GET s3.amazonaws.com/examplebucket/dir/my%20image.jpg?attributes=", Op.GET_OBJECT_ATTRIBUTES, "examplebucket", "dir/my image.jpg", headers={"x-amz-object-attributes": "ETag,ObjectSize"}),
    R("GET s3.amazonaws.com/examplebucket/k?attributes&versionId=null", Op.GET_OBJECT_ATTRIBUTES, "examplebucket", "k", version_id="null"),
    R("GET examplebucket.s3.amazonaws.com/k?attributes", Op.GET_OBJECT_ATTRIBUTES, "examplebucket", "k", virtual_host=True),
    R("GET s3.amazonaws.com/examplebucket/k?attributes&partNumber=2", Op.GET_OBJECT_ATTRIBUTES, "examplebucket", "k", part_number=None),
    R("OPTIONS s3.amazonaws.com/examplebucket/k?attributes", Op.CORS_PREFLIGHT, "examplebucket", "k"),
    # browser form uploads (POST Object)
    R("POST s3.amazonaws.com/examplebucket", Op.POST_OBJECT, "examplebucket", None),
    R("POST s3.amazonaws.com/examplebucket/", Op.POST_OBJECT, "examplebucket", None),
    R("POST examplebucket.s3.amazonaws.com/", Op.POST_OBJECT, "examplebucket", None, virtual_host=True),
    R("POST examplebucket.s3.amazonaws.com/?x-id=PostObject", Op.POST_OBJECT, "examplebucket", None, virtual_host=True),
    R("POST 127.0.0.1:9000/examplebucket", Op.POST_OBJECT, "examplebucket", None),
    # tagging
    R("GET s3.amazonaws.com/examplebucket?tagging", Op.GET_BUCKET_TAGGING, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?tagging=", Op.GET_BUCKET_TAGGING, "examplebucket", None, virtual_host=True),
    R("PUT s3.amazonaws.com/examplebucket?tagging", Op.PUT_BUCKET_TAGGING, "examplebucket", None),
    R("PUT examplebucket.s3.amazonaws.com/?tagging", Op.PUT_BUCKET_TAGGING, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?tagging", Op.DELETE_BUCKET_TAGGING, "examplebucket", None),
    R("DELETE examplebucket.s3.amazonaws.com/?tagging", Op.DELETE_BUCKET_TAGGING, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?cors&tagging", Op.DELETE_BUCKET_CORS, "examplebucket", None),
    R("GET s3.amazonaws.com/examplebucket/k?tagging", Op.GET_OBJECT_TAGGING, "examplebucket", "k"),
    R("GET s3.amazonaws.com/examplebucket/k?tagging&versionId=null", Op.GET_OBJECT_TAGGING, "examplebucket", "k", version_id="null"),
    R("GET examplebucket.s3.amazonaws.com/dir/k?tagging", Op.GET_OBJECT_TAGGING, "examplebucket", "dir/k", virtual_host=True),
    R("PUT s3.amazonaws.com/examplebucket/k?tagging", Op.PUT_OBJECT_TAGGING, "examplebucket", "k"),
    R("PUT s3.amazonaws.com/examplebucket/k?tagging", Op.PUT_OBJECT_TAGGING, "examplebucket", "k", headers=COPY, copy_source=None),
    R("PUT s3.amazonaws.com/examplebucket/k?tagging&partNumber=1&uploadId=u", Op.PUT_OBJECT_TAGGING, "examplebucket", "k"),
    R("DELETE s3.amazonaws.com/examplebucket/k?tagging", Op.DELETE_OBJECT_TAGGING, "examplebucket", "k"),
    R("DELETE s3.amazonaws.com/examplebucket/k?tagging&uploadId=u", Op.DELETE_OBJECT_TAGGING, "examplebucket", "k"),
    R("GET s3.amazonaws.com/examplebucket/k?acl&tagging", Op.GET_OBJECT_ACL, "examplebucket", "k"),
    # cross-origin resource sharing
    R("GET s3.amazonaws.com/examplebucket?cors", Op.GET_BUCKET_CORS, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?cors=", Op.GET_BUCKET_CORS, "examplebucket", None, virtual_host=True),
    R("PUT s3.amazonaws.com/examplebucket?cors", Op.PUT_BUCKET_CORS, "examplebucket", None),
    R("PUT examplebucket.s3.amazonaws.com/?cors", Op.PUT_BUCKET_CORS, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?cors", Op.DELETE_BUCKET_CORS, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket/?cors=&x-id=DeleteBucketCors", Op.DELETE_BUCKET_CORS, "examplebucket", None),
    R("DELETE examplebucket.s3.amazonaws.com/?cors", Op.DELETE_BUCKET_CORS, "examplebucket", None, virtual_host=True),
    R("OPTIONS s3.amazonaws.com/examplebucket", Op.CORS_PREFLIGHT, "examplebucket", None),
    R("OPTIONS s3.amazonaws.com/examplebucket/?list-type=2&prefix=a", Op.CORS_PREFLIGHT, "examplebucket", None),
    R("OPTIONS examplebucket.s3.amazonaws.com/", Op.CORS_PREFLIGHT, "examplebucket", None, virtual_host=True),
    R("OPTIONS s3.amazonaws.com/examplebucket/k", Op.CORS_PREFLIGHT, "examplebucket", "k"),
    R("OPTIONS examplebucket.s3.amazonaws.com/dir/k", Op.CORS_PREFLIGHT, "examplebucket", "dir/k", virtual_host=True),
    R("OPTIONS s3.amazonaws.com/examplebucket/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00", Op.CORS_PREFLIGHT, "examplebucket", "k"),
    R("OPTIONS s3.amazonaws.com/examplebucket/k?partNumber=0&uploadId=", Op.CORS_PREFLIGHT, "examplebucket", "k"),
    R("OPTIONS s3.amazonaws.com/examplebucket/k?tagging", Op.CORS_PREFLIGHT, "examplebucket", "k"),
    R("OPTIONS s3.amazonaws.com/examplebucket?cors", Op.CORS_PREFLIGHT, "examplebucket", None),
    # lifecycle
    R("GET s3.amazonaws.com/examplebucket?lifecycle", Op.GET_BUCKET_LIFECYCLE, "examplebucket", None),
    R("GET examplebucket.s3.amazonaws.com/?lifecycle=", Op.GET_BUCKET_LIFECYCLE, "examplebucket", None, virtual_host=True),
    R("PUT s3.amazonaws.com/examplebucket?lifecycle", Op.PUT_BUCKET_LIFECYCLE, "examplebucket", None),
    R("PUT examplebucket.s3.amazonaws.com/?lifecycle", Op.PUT_BUCKET_LIFECYCLE, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?lifecycle", Op.DELETE_BUCKET_LIFECYCLE, "examplebucket", None),
    R("DELETE s3.amazonaws.com/examplebucket/?lifecycle=&x-id=DeleteBucketLifecycle", Op.DELETE_BUCKET_LIFECYCLE, "examplebucket", None),
    R("DELETE examplebucket.s3.amazonaws.com/?lifecycle", Op.DELETE_BUCKET_LIFECYCLE, "examplebucket", None, virtual_host=True),
    R("DELETE s3.amazonaws.com/examplebucket?lifecycle&tagging", Op.DELETE_BUCKET_LIFECYCLE, "examplebucket", None),
    R("OPTIONS s3.amazonaws.com/examplebucket?lifecycle", Op.CORS_PREFLIGHT, "examplebucket", None),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS, ids=[row.request for row in ROWS])
def test_route_table(row: Row) -> None:
    method, _, target = row.request.partition(" ")
    host, slash, rest = target.partition("/")
    path, _, query = (slash + rest).partition("?")
    headers = Headers([("Host", host), *row.headers.items()])
    endpoint = route(method, path, query, headers, base_domains=BASES)
    assert endpoint.op is row.op
    assert endpoint.bucket == row.bucket
    assert endpoint.key == row.key
    for name, value in row.fields.items():
        assert getattr(endpoint, name) == value, name


def test_every_operation_has_a_row() -> None:
    assert {row.op for row in ROWS} == set(Op)


def test_query_parameters_are_kept_decoded() -> None:
    e = route(
        "GET",
        "/b",
        "list-type=2&prefix=photos%2F2006%2F&delimiter=%2F&max-keys=2&fetch-owner",
        Headers([("host", "localhost:9000")]),
        base_domains=BASES,
    )
    assert e.param("prefix") == "photos/2006/"
    assert e.param("delimiter") == "/"
    assert e.param("max-keys") == "2"
    assert e.param("fetch-owner") == ""
    assert e.param("continuation-token") is None
    assert e.name == "ListObjectsV2"


def test_the_longest_matching_domain_wins() -> None:
    bases = ("example.com", "S3.Example.com.")  # one under the other, in any order
    e = route("GET", "/k", "", Headers([("host", "bkt.s3.example.com")]), base_domains=bases)
    assert (e.bucket, e.key, e.virtual_host) == ("bkt", "k", True)
    e = route("GET", "/bkt/k", "", Headers([("host", "s3.example.com")]), base_domains=bases)
    assert (e.bucket, e.key, e.virtual_host) == ("bkt", "k", False)
    e = route("GET", "/k", "", Headers([("host", "other.example.com")]), base_domains=bases)
    assert (e.bucket, e.key, e.virtual_host) == ("other", "k", True)


def test_without_base_domains_everything_is_path_style() -> None:
    e = route("GET", "/b/k", "", Headers([("host", "b.s3.amazonaws.com")]))
    assert (e.bucket, e.key, e.virtual_host) == ("b", "k", False)


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "code"),
    [
        ("DELETE", "/", "", {}, "MethodNotAllowed"),
        ("PUT", "/", "", {}, "MethodNotAllowed"),
        ("PATCH", "/b", "", {}, "MethodNotAllowed"),
        ("PATCH", "/b/k", "", {}, "MethodNotAllowed"),
        ("POST", "/b/k", "", {}, "MethodNotAllowed"),
        ("DELETE", "/b", "acl", {}, "MethodNotAllowed"),
        ("HEAD", "/b", "acl", {}, "MethodNotAllowed"),
        ("POST", "/b", "acl", {}, "MethodNotAllowed"),
        ("DELETE", "/b/k", "acl", {}, "MethodNotAllowed"),
        ("HEAD", "/b/k", "acl", {}, "MethodNotAllowed"),
        ("PATCH", "/b/k", "attributes", {}, "MethodNotAllowed"),
        ("POST", "/b/k", "acl&uploads", {}, "MethodNotAllowed"),
        ("HEAD", "/b", "cors", {}, "MethodNotAllowed"),
        ("POST", "/b", "cors", {}, "MethodNotAllowed"),
        ("DELETE", "/b", "acl&cors", {}, "MethodNotAllowed"),
        ("HEAD", "/b", "lifecycle", {}, "MethodNotAllowed"),
        ("POST", "/b", "lifecycle", {}, "MethodNotAllowed"),
        ("PATCH", "/b", "lifecycle", {}, "MethodNotAllowed"),
        ("DELETE", "/b", "acl&lifecycle", {}, "MethodNotAllowed"),
        ("HEAD", "/b", "tagging", {}, "MethodNotAllowed"),
        ("POST", "/b", "tagging", {}, "MethodNotAllowed"),
        ("PATCH", "/b", "tagging", {}, "MethodNotAllowed"),
        ("DELETE", "/b", "acl&tagging", {}, "MethodNotAllowed"),
        ("HEAD", "/b/k", "tagging", {}, "MethodNotAllowed"),
        ("POST", "/b/k", "tagging", {}, "MethodNotAllowed"),
        ("POST", "/b/k", "tagging&uploads", {}, "MethodNotAllowed"),
        ("POST", "/b", "uploads", {}, "MethodNotAllowed"),
        ("POST", "/b/", "location", {}, "MethodNotAllowed"),
        ("POST", "/b", "list-type=2", {}, "MethodNotAllowed"),
        ("POST", "/b", "versions", {}, "MethodNotAllowed"),
        ("PATCH", "/b/k", "tagging", {}, "MethodNotAllowed"),
        ("OPTIONS", "/", "", {}, "MethodNotAllowed"),
        ("GET", "/b", "list-type=3", {}, "InvalidArgument"),
        ("PUT", "/b/k", "partNumber=0&uploadId=u", {}, "InvalidArgument"),
        ("PUT", "/b/k", "partNumber=10001&uploadId=u", {}, "InvalidArgument"),
        ("PUT", "/b/k", "partNumber=x&uploadId=u", {}, "InvalidArgument"),
        ("PUT", "/b/k", "partNumber=1", {}, "InvalidRequest"),
        ("PUT", "/b/k", "uploadId=u", {}, "InvalidRequest"),
        ("PUT", "/b/k", "uploadId=&partNumber=1", {}, "InvalidArgument"),
        ("PUT", "/b/k", "", {"x-amz-copy-source": "nokey"}, "InvalidArgument"),
        ("PUT", "/b/" + "k" * 1025, "", {}, "KeyTooLongError"),
        ("POST", "/b/" + "é" * 513, "uploads", {}, "KeyTooLongError"),
        ("GET", "/b/%FF", "", {}, "InvalidURI"),
        ("GET", "b/k", "", {}, "InvalidURI"),
    ],
)
def test_route_errors(
    method: str, path: str, query: str, headers: dict[str, str], code: str
) -> None:
    with pytest.raises(S3Error) as info:
        route(method, path, query, Headers(headers))
    assert info.value.code == code


@pytest.mark.parametrize(
    ("path", "query", "host"),
    [
        ("/b", "cors", "localhost"),
        ("/b/", "cors=", "localhost"),
        ("/b", "cors=anything", "localhost"),
        ("/b", "x-id=DeleteBucket&cors", "localhost"),
        ("/b", "prefix=x&cors&max-keys=1", "localhost"),
        ("/", "cors", "b.localhost"),
        ("/", "cors", "b.s3.amazonaws.com"),
    ],
)
def test_delete_cors_never_deletes_the_bucket(path: str, query: str, host: str) -> None:
    e = route("DELETE", path, query, Headers([("host", host)]), base_domains=BASES)
    assert (e.op, e.bucket, e.key) == (Op.DELETE_BUCKET_CORS, "b", None)


@pytest.mark.parametrize(
    ("path", "query", "host"),
    [
        ("/b", "lifecycle", "localhost"),
        ("/b/", "lifecycle=", "localhost"),
        ("/b", "lifecycle=anything", "localhost"),
        ("/b", "x-id=DeleteBucket&lifecycle", "localhost"),
        ("/", "lifecycle", "b.s3.amazonaws.com"),
    ],
)
def test_delete_lifecycle_never_deletes_the_bucket(path: str, query: str, host: str) -> None:
    e = route("DELETE", path, query, Headers([("host", host)]), base_domains=BASES)
    assert (e.op, e.bucket, e.key) == (Op.DELETE_BUCKET_LIFECYCLE, "b", None)


@pytest.mark.parametrize(
    ("path", "query", "host"),
    [
        ("/b", "tagging", "localhost"),
        ("/b/", "tagging=", "localhost"),
        ("/b", "tagging=anything", "localhost"),
        ("/b", "x-id=DeleteBucket&tagging", "localhost"),
        ("/b", "prefix=x&tagging&max-keys=1", "localhost"),
        ("/", "tagging", "b.localhost"),
        ("/", "tagging", "b.s3.amazonaws.com"),
    ],
)
def test_delete_tagging_never_deletes_the_bucket(path: str, query: str, host: str) -> None:
    e = route("DELETE", path, query, Headers([("host", host)]), base_domains=BASES)
    assert (e.op, e.bucket, e.key) == (Op.DELETE_BUCKET_TAGGING, "b", None)


@pytest.mark.parametrize(
    ("path", "query", "host"),
    [
        ("/b/k", "tagging", "localhost"),
        ("/b/k", "tagging=", "localhost"),
        ("/b/k", "x-id=DeleteObject&tagging", "localhost"),
        ("/b/k", "versionId=null&tagging", "localhost"),
        ("/b/k", "uploadId=u&tagging", "localhost"),
        ("/k", "tagging", "b.localhost"),
    ],
)
def test_delete_tagging_never_deletes_the_object(path: str, query: str, host: str) -> None:
    e = route("DELETE", path, query, Headers([("host", host)]), base_domains=BASES)
    assert (e.op, e.bucket, e.key) == (Op.DELETE_OBJECT_TAGGING, "b", "k")


def test_1024_byte_key_is_accepted() -> None:
    key = "é" * 512
    assert route("PUT", "/b/" + key, "", Headers()).key == key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/src/key", CopySource("src", "key")),
        ("src/key", CopySource("src", "key")),
        ("src/dir/a%2Bb%20c", CopySource("src", "dir/a+b c")),
        ("/src/k%3Fq?versionId=abc", CopySource("src", "k?q", "abc")),
        ("src/%E2%82%AC", CopySource("src", "€")),
    ],
)
def test_parse_copy_source(value: str, expected: CopySource) -> None:
    assert parse_copy_source(value) == expected


def test_endpoint_is_frozen() -> None:
    e = Endpoint(Op.LIST_BUCKETS)
    with pytest.raises(AttributeError):
        e.bucket = "x"  # type: ignore[misc]


def test_int_param() -> None:
    e = route("GET", "/b", "max-keys=5000&bad=x&neg=-1&part-number-marker=3", Headers())
    assert e.int_param("max-keys", 1000, maximum=1000) == 1000
    assert e.int_param("part-number-marker", 0) == 3
    assert e.int_param("absent", 7) == 7
    for name in ("bad", "neg"):
        with pytest.raises(S3Error) as info:
            e.int_param(name, 0)
        assert info.value.code == "InvalidArgument"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST", "HEAD"])
@pytest.mark.parametrize(
    "query", ["cors", "cors&uploadId=x", "policy", "versioning", "lifecycle", "location", "delete"]
)
def test_bucket_sub_resources_on_an_object_are_refused(method: str, query: str) -> None:
    """``DELETE /b/k?cors`` must not delete ``k`` (nor ``PUT`` overwrite it)."""
    with pytest.raises(S3Error) as info:
        route(method, "/b/k", query, Headers([("host", "s3.amazonaws.com")]))
    assert info.value.code == "InvalidRequest"
