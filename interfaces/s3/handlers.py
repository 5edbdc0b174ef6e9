"""One function per S3 operation: read the request, call the object store, build the answer.

Handlers receive an authenticated, authorized :class:`~interfaces.s3.app.Request` and return
a :class:`~interfaces.s3.app.Response`. They raise :class:`~interfaces.s3.errors.S3Error` or
let :class:`~storage.errors.StorageError` propagate: translation into HTTP happens once, in
:mod:`interfaces.s3.app`. Handlers never touch the socket; a streamed body (GetObject) is a
callable the app drives.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict
from urllib.parse import quote, unquote_plus, urlencode, urlsplit, urlunsplit

from storage import errors as storage_errors
from storage.lifecycle import object_expiry
from storage.object_records import CANNED_ACLS
from storage.objects import NULL_VERSION, ObjectInfo, ObjectReader
from storage.policy import Redundancy

from . import cors, forms, post_policy, xml
from .app import PUBLIC_READ_ACLS, Request, Response, S3App, Sink, s3_error_for, xml_response
from .chunked import stored_content_encoding
from .conditions import check_read_preconditions, format_http_date
from .errors import S3Error
from .etag import ChecksumClaim, check_content_md5, parse_content_md5, quote_etag
from .headers import Headers
from .names import validate_bucket_name, validate_object_key
from .ranges import ByteRange, parse_copy_source_range, parse_range
from .router import CopySource, Op, int_argument
from .sigv4 import AuthMethod, AuthResult, PayloadKind

logger = logging.getLogger(__name__)

Handler = Callable[[S3App, Request], Awaitable[Response]]

#: Largest total size of user metadata (``x-amz-meta-*`` names and values), as S3.
MAX_METADATA_BYTES = 2048
#: The Ballast header choosing a new bucket's redundancy: ``3`` or ``4+2``.
REDUNDANCY_HEADER = "x-ballast-redundancy"
#: Largest source (or source range) CopyObject and UploadPartCopy copy in one request, as S3.
MAX_COPY_SOURCE_SIZE = 5 * 1024**3
#: Storage errors whose S3 error names its bucket, key or upload (``errors.NAMED_BY``).
_NAMED_ERRORS = (
    storage_errors.NoSuchBucket,
    storage_errors.NoSuchKey,
    storage_errors.NoSuchUpload,
    storage_errors.BucketNotEmpty,
    storage_errors.AlreadyExists,
)
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "GLACIER_IR",
        "OUTPOSTS",
        "EXPRESS_ONEZONE",
    }
)
_TAGGING_HEADER_MESSAGE = (
    "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
    "parameters without tag name duplicates."
)
_RESPONSE_OVERRIDES = (
    ("response-content-type", "content-type"),
    ("response-content-language", "content-language"),
    ("response-expires", "expires"),
    ("response-cache-control", "cache-control"),
    ("response-content-disposition", "content-disposition"),
    ("response-content-encoding", "content-encoding"),
)


# -- helpers --------------------------------------------------------------------------------


def _owner(req: Request, owner_id: str | None = None) -> xml.Owner:
    if owner_id is None or owner_id == req.owner:
        return xml.Owner(req.owner, req.owner_name or req.owner)
    return xml.Owner(owner_id, owner_id)


def _encoding_type(req: Request) -> str | None:
    value = req.endpoint.param("encoding-type")
    if value is None:
        return None
    if value != "url":
        raise S3Error(
            "InvalidArgument",
            "Invalid Encoding Method specified in Request",
            extra={"ArgumentName": "encoding-type", "ArgumentValue": value[:64]},
        )
    return value


def _delimiter(req: Request) -> str | None:
    return req.endpoint.param("delimiter") or None


def _acl(headers: Headers) -> str:
    acl = (headers.get("x-amz-acl") or "private").strip()
    if acl not in CANNED_ACLS:
        raise S3Error(
            "InvalidArgument", extra={"ArgumentName": "x-amz-acl", "ArgumentValue": acl[:64]}
        )
    return acl


def _metadata(headers: Headers) -> dict[str, str]:
    meta: dict[str, str] = {}
    total = 0
    for name, value in headers:
        if name.startswith("x-amz-meta-"):
            short = name.removeprefix("x-amz-meta-")
            total += len(short) + len(value)
            meta[short] = value if short not in meta else meta[short] + "," + value
    if total > MAX_METADATA_BYTES:
        raise S3Error(
            "MetadataTooLarge",
            extra={"MaxMetadataSize": str(MAX_METADATA_BYTES), "Size": str(total)},
        )
    return meta


def _header_tags(req: Request) -> dict[str, str]:
    """The tag set of the ``x-amz-tagging`` header (URL query form ``k1=v1&k2=v2``).

    Raises:
        S3Error: ``InvalidArgument`` if it is not UTF-8 query parameters without a repeated
            key; ``InvalidTag`` for a tag set S3 refuses.
    """
    value = req.headers.get("x-amz-tagging")
    if value is None:
        return {}
    pairs: list[tuple[str, str]] = []
    for part in value.strip().split("&"):
        if part:
            name, _, text = part.partition("=")
            try:
                pairs.append(
                    (unquote_plus(name, errors="strict"), unquote_plus(text, errors="strict"))
                )
            except UnicodeDecodeError:
                raise _tagging_header_error(value) from None
    if len({name for name, _ in pairs}) != len(pairs):
        raise _tagging_header_error(value)
    return xml.check_tags(pairs)


def _tagging_header_error(value: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        _TAGGING_HEADER_MESSAGE,
        extra={"ArgumentName": "x-amz-tagging", "ArgumentValue": value[:64]},
    )


class _ContentHeaders(TypedDict):
    """The stored content headers, as keyword arguments of the object store."""

    content_type: str | None
    content_encoding: str | None
    content_disposition: str | None
    content_language: str | None
    cache_control: str | None
    expires: str | None


def _content_headers(h: Headers) -> _ContentHeaders:
    storage_class = h.get("x-amz-storage-class")
    if storage_class is not None and storage_class.strip() not in STORAGE_CLASSES:
        raise S3Error("InvalidStorageClass", extra={"StorageClassRequested": storage_class[:64]})
    if h.get("x-amz-server-side-encryption-customer-algorithm") is not None:
        raise S3Error("NotImplemented", "Server-side encryption with customer keys")
    if (
        h.get("x-amz-object-lock-mode") or h.get("x-amz-object-lock-retain-until-date")
    ) is not None:
        raise S3Error("NotImplemented", "Object lock is not implemented")
    return {
        "content_type": h.get("content-type"),
        "content_encoding": stored_content_encoding(h.get("content-encoding")),
        "content_disposition": h.get("content-disposition"),
        "content_language": h.get("content-language"),
        "cache_control": h.get("cache-control"),
        "expires": h.get("expires"),
    }


def _write_conditions(req: Request) -> tuple[str | None, str | None]:
    if_match = req.headers.get("if-match")
    if_none_match = req.headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error(
            "NotImplemented",
            extra={
                "Header": "If-None-Match",
                "additionalMessage": "We don't accept the provided value of If-None-Match "
                "header for this API",
            },
        )
    return if_match, if_none_match


def _content_md5(req: Request) -> bytes | None:
    value = req.headers.get("content-md5")
    return None if value is None else parse_content_md5(value)


def _check_upload_length(app: S3App, req: Request) -> None:
    # The declared size is what bounds the body (the aws-chunked decoder enforces the decoded
    # length, RequestBody the Content-Length), so S3 requires one: a plain body sent with
    # ``Transfer-Encoding: chunked`` and no Content-Length is refused, as S3 does.
    name = "x-amz-decoded-content-length" if req.auth.payload.streaming else "content-length"
    declared = req.headers.get(name)
    if declared is None:
        raise S3Error("MissingContentLength")
    declared = declared.strip()
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:
        raise S3Error("InvalidArgument", extra={"ArgumentName": "Content-Length"})
    if int(declared) > app.max_upload_size:
        raise S3Error(
            "EntityTooLarge",
            extra={"ProposedSize": declared, "MaxSizeAllowed": str(app.max_upload_size)},
        )


def _check_version(version_id: str | None) -> None:
    if version_id is not None and version_id != NULL_VERSION:
        raise S3Error("NoSuchVersion", extra={"VersionId": version_id[:128]})


def _checksum_headers(req: Request) -> list[tuple[str, str]]:
    claim = req.body.checksum
    return [] if claim is None else [(claim.header, claim.b64)]


def _verified_checksum(req: Request) -> tuple[str, bytes] | None:
    """The checksum the client sent with the body (verified once the body was read)."""
    claim = req.body.checksum
    return None if claim is None else (claim.algorithm, claim.digest)


def _stored_checksum_headers(req: Request, info: ObjectInfo) -> list[tuple[str, str]]:
    """The whole object's stored checksum, when the client asks (``x-amz-checksum-mode``)."""
    mode = (req.headers.get("x-amz-checksum-mode") or "").strip().upper()
    if mode != "ENABLED" or info.checksum is None:
        return []
    claim = ChecksumClaim(*info.checksum)
    return [(claim.header, claim.b64), ("x-amz-checksum-type", "FULL_OBJECT")]


def _object_headers(info: ObjectInfo) -> list[tuple[str, str]]:
    headers = [
        ("etag", quote_etag(info.etag)),
        ("last-modified", format_http_date(info.last_modified)),
        ("accept-ranges", "bytes"),
        ("content-type", info.content_type or "binary/octet-stream"),
    ]
    for name, value in (
        ("content-encoding", info.content_encoding),
        ("content-disposition", info.content_disposition),
        ("content-language", info.content_language),
        ("cache-control", info.cache_control),
        ("expires", info.expires),
    ):
        if value is not None:
            headers.append((name, value))
    headers.extend((f"x-amz-meta-{k}", v) for k, v in sorted(info.metadata.items()))
    if info.parts_count is not None:
        headers.append(("x-amz-mp-parts-count", str(info.parts_count)))
    if info.tags:
        headers.append(("x-amz-tagging-count", str(len(info.tags))))
    return headers


async def _expiration_headers(app: S3App, bucket: str, info: ObjectInfo) -> list[tuple[str, str]]:
    """``x-amz-expiration`` when a lifecycle rule of the bucket expires the object; none if
    the bucket's rules cannot be read now (gone, no quorum): the operation itself succeeded
    and must not fail for want of an informative header."""
    try:
        rules = await app.objects.lifecycle_rules(bucket)
    except storage_errors.StorageError as exc:
        logger.info(
            "%s/%s: no x-amz-expiration (bucket rules unreadable: %s)", bucket, info.key, exc
        )
        return []
    found = None
    if rules:
        found = object_expiry(
            rules, key=info.key, size=info.size, tags=info.tags, last_modified=info.last_modified
        )
    if found is None:
        return []
    value = f'expiry-date="{format_http_date(found.date)}", rule-id="{found.rule_id}"'
    return [("x-amz-expiration", value)]


async def _answer_with_expiration(
    app: S3App, req: Request, info: ObjectInfo, body: bytes
) -> Response:
    """A 200 XML answer about the object ``info`` just written, with its
    ``x-amz-expiration`` when a lifecycle rule expires it."""
    expiration = await _expiration_headers(app, req.bucket, info)
    return Response(200, [("content-type", "application/xml"), *expiration], body)


def _check_copy_size(size: int) -> None:
    if size > MAX_COPY_SOURCE_SIZE:
        raise S3Error(
            "InvalidRequest",
            "The specified copy source is larger than the maximum allowable size for a copy "
            f"source: {MAX_COPY_SOURCE_SIZE}",
        )


class _SourceCheck:
    """What a copy checks once the store has opened its source (the ``source_check``).

    The size limit (unless ``whole_source`` is false: a range was checked instead) and the
    ``x-amz-copy-source-if-*`` conditions. ``opened`` tells afterwards whether the source was
    found, i.e. whether a missing bucket or key reported before was the source's.
    """

    def __init__(self, req: Request, *, whole_source: bool = True) -> None:
        h = req.headers
        self.conditions = {
            "if_match": h.get("x-amz-copy-source-if-match"),
            "if_none_match": h.get("x-amz-copy-source-if-none-match"),
            "if_modified_since": h.get("x-amz-copy-source-if-modified-since"),
            "if_unmodified_since": h.get("x-amz-copy-source-if-unmodified-since"),
        }
        self.whole_source = whole_source
        self.opened = False

    def __call__(self, info: ObjectInfo) -> None:
        """Check the opened source ``info``; raise the S3 error that refuses the copy."""
        self.opened = True
        if self.whole_source:
            _check_copy_size(info.size)
        try:
            check_read_preconditions(
                etag=info.etag, last_modified=info.last_modified, **self.conditions
            )
        except S3Error as err:
            if err.code == "NotModified":  # copy-source conditions all fail with 412
                raise S3Error("PreconditionFailed") from None
            raise


def _source_error(exc: storage_errors.StorageError, source: CopySource) -> S3Error:
    """The S3 error for a copy source the store could not find, naming it."""
    return s3_error_for(exc).naming(bucket=source.bucket, key=source.key)


def _copy_source(req: Request) -> CopySource:
    source = req.endpoint.copy_source
    assert source is not None
    _check_version(source.version_id)
    return source


def _location(req: Request, key: str | None = None) -> str:
    host = req.headers.get("host") or "localhost"
    path = f"/{quote(req.key if key is None else key, safe='/')}"
    if not req.endpoint.virtual_host:
        path = f"/{req.bucket}{path}"
    return f"http://{host}{path}"


# -- service and buckets --------------------------------------------------------------------


async def list_buckets(app: S3App, req: Request) -> Response:
    """ListBuckets: every bucket (all keys belong to one account)."""
    buckets = await app.objects.list_buckets()
    body = xml.list_buckets(
        _owner(req),
        [xml.BucketInfo(b.name, b.created, b.region or app.region) for b in buckets],
    )
    return xml_response(body)


async def create_bucket(app: S3App, req: Request) -> Response:
    """CreateBucket, with a canned ACL and the ``x-ballast-redundancy`` policy header."""
    validate_bucket_name(req.bucket)
    location = xml.parse_create_bucket(await req.body.read_all(xml.MAX_XML_BYTES))
    if location is not None and location != app.region:
        raise S3Error(
            "IllegalLocationConstraintException",
            f"The {location[:64]} location constraint is incompatible for the region specific "
            "endpoint this request was sent to.",
        )
    if (req.headers.get("x-amz-bucket-object-lock-enabled") or "").lower() == "true":
        raise S3Error("NotImplemented", "Object lock is not implemented")
    redundancy = None
    policy = req.headers.get(REDUNDANCY_HEADER)
    if policy is not None:
        try:
            redundancy = Redundancy.parse(policy)
        except storage_errors.InvalidArgument as exc:
            raise S3Error(
                "InvalidArgument",
                str(exc),
                extra={"ArgumentName": REDUNDANCY_HEADER, "ArgumentValue": policy[:64]},
            ) from None
    await app.objects.create_bucket(
        req.bucket, owner=req.owner, acl=_acl(req.headers), redundancy=redundancy, region=app.region
    )
    return Response(200, [("location", f"/{req.bucket}")])


async def head_bucket(app: S3App, req: Request) -> Response:
    """HeadBucket."""
    info = await app.objects.head_bucket(req.bucket)
    return Response(
        200,
        [
            ("x-amz-bucket-region", info.region or app.region),
            ("x-ballast-redundancy", str(info.redundancy)),
        ],
    )


async def delete_bucket(app: S3App, req: Request) -> Response:
    """DeleteBucket (empty buckets only)."""
    await app.objects.delete_bucket(req.bucket)
    return Response(204)


async def get_bucket_location(app: S3App, req: Request) -> Response:
    """GetBucketLocation."""
    info = await app.objects.head_bucket(req.bucket)
    return xml_response(xml.location_constraint(info.region or app.region))


def _listing_info(req: Request, o: ObjectInfo, *, owner: bool) -> xml.ObjectInfo:
    return xml.ObjectInfo(
        o.key,
        o.last_modified,
        quote_etag(o.etag),
        o.size,
        owner=_owner(req, o.owner or "") if owner else None,
    )


async def list_objects(app: S3App, req: Request) -> Response:
    """ListObjects (v1)."""
    ep = req.endpoint
    encoding = _encoding_type(req)
    max_keys = ep.int_param("max-keys", 1000, maximum=1000)
    prefix = ep.param("prefix") or ""
    marker = ep.param("marker") or ""
    delimiter = _delimiter(req)
    page = await app.objects.list_objects(
        req.bucket, prefix=prefix, delimiter=delimiter, start_after=marker, max_keys=max_keys
    )
    body = xml.list_objects(
        bucket=req.bucket,
        prefix=prefix,
        marker=marker,
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        contents=[_listing_info(req, o, owner=True) for o in page.objects],
        common_prefixes=page.common_prefixes,
        delimiter=delimiter,
        next_marker=page.next_marker if page.is_truncated else None,
        encoding_type=encoding,
    )
    return xml_response(body)


async def list_objects_v2(app: S3App, req: Request) -> Response:
    """ListObjectsV2."""
    ep = req.endpoint
    encoding = _encoding_type(req)
    max_keys = ep.int_param("max-keys", 1000, maximum=1000)
    prefix = ep.param("prefix") or ""
    delimiter = _delimiter(req)
    token = ep.param("continuation-token")
    start_after = ep.param("start-after")
    if token is not None and not token:
        raise S3Error(
            "InvalidArgument",
            "The continuation token provided is incorrect",
            extra={"ArgumentName": "continuation-token"},
        )
    fetch_owner = (ep.param("fetch-owner") or "").lower() == "true"
    page = await app.objects.list_objects(
        req.bucket,
        prefix=prefix,
        delimiter=delimiter,
        start_after=start_after,
        continuation_token=token,
        max_keys=max_keys,
    )
    body = xml.list_objects_v2(
        bucket=req.bucket,
        prefix=prefix,
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        contents=[_listing_info(req, o, owner=fetch_owner) for o in page.objects],
        common_prefixes=page.common_prefixes,
        delimiter=delimiter,
        continuation_token=token,
        next_continuation_token=page.next_continuation_token,
        start_after=start_after,
        encoding_type=encoding,
    )
    return xml_response(body)


async def list_object_versions(app: S3App, req: Request) -> Response:
    """ListObjectVersions on unversioned buckets: each object is version ``null``."""
    ep = req.endpoint
    encoding = _encoding_type(req)
    max_keys = ep.int_param("max-keys", 1000, maximum=1000)
    prefix = ep.param("prefix") or ""
    delimiter = _delimiter(req)
    key_marker = ep.param("key-marker") or ""
    version_marker = ep.param("version-id-marker") or ""
    if version_marker and not key_marker:
        raise S3Error(
            "InvalidArgument",
            "A version-id marker cannot be specified without a key marker.",
            extra={"ArgumentName": "version-id-marker"},
        )
    if version_marker and version_marker != NULL_VERSION:
        # Every object is version "null": any other id names no version.
        raise S3Error(
            "InvalidArgument",
            "Invalid version id specified",
            extra={"ArgumentName": "version-id-marker", "ArgumentValue": version_marker[:128]},
        )
    page = await app.objects.list_object_versions(
        req.bucket,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker or None,
        max_keys=max_keys,
    )
    versions = [
        xml.VersionInfo(
            key=o.key,
            version_id=NULL_VERSION,
            is_latest=True,
            last_modified=o.last_modified,
            etag=quote_etag(o.etag),
            size=o.size,
            owner=_owner(req, o.owner or ""),
        )
        for o in page.objects
    ]
    # The page may end on a common prefix, which has no version id to resume after.
    ends_on_version = bool(page.objects) and page.objects[-1].key == page.next_marker
    body = xml.list_object_versions(
        bucket=req.bucket,
        prefix=prefix,
        key_marker=key_marker,
        version_id_marker=version_marker,
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        versions=versions,
        common_prefixes=page.common_prefixes,
        delimiter=delimiter,
        next_key_marker=page.next_marker if page.is_truncated else None,
        next_version_id_marker=NULL_VERSION if page.is_truncated and ends_on_version else None,
        encoding_type=encoding,
    )
    return xml_response(body)


# -- objects --------------------------------------------------------------------------------


async def put_object(app: S3App, req: Request) -> Response:
    """PutObject: the body streams into the store; digests are verified before the commit."""
    _check_upload_length(app, req)
    if_match, if_none_match = _write_conditions(req)
    content = _content_headers(req.headers)
    info = await app.objects.put_object(
        req.bucket,
        req.key,
        req.body,
        metadata=_metadata(req.headers),
        acl=_acl(req.headers),
        tags=_header_tags(req),
        owner=req.owner,
        if_match=if_match,
        if_none_match=if_none_match,
        content_md5=_content_md5(req),
        release_later=req.release_later,
        checksum=functools.partial(_verified_checksum, req),
        **content,
    )
    expiration = await _expiration_headers(app, req.bucket, info)
    return Response(200, [("etag", quote_etag(info.etag)), *_checksum_headers(req), *expiration])


async def _open_readable(app: S3App, req: Request) -> ObjectReader:
    _check_version(req.endpoint.version_id)
    try:
        reader = await app.objects.open_object(req.bucket, req.key)
    except storage_errors.NoSuchKey:
        if req.anonymous and not req.public_bucket:
            raise S3Error("AccessDenied", resource=req.resource) from None
        raise
    if req.anonymous and not req.public_bucket and reader.info.acl not in PUBLIC_READ_ACLS:
        raise S3Error("AccessDenied", resource=req.resource)
    return reader


@dataclass(frozen=True)
class _ReadPlan:
    """What GetObject and HeadObject answer: status, headers and which bytes.

    ``start..end`` (inclusive; ``end`` ``None``: to the end of the object) is what GetObject
    streams and ``length`` how many bytes that is (0: an empty body).
    """

    status: int
    headers: list[tuple[str, str]]
    start: int
    end: int | None
    length: int


def _part_span(reader: ObjectReader, part: int) -> tuple[int, int]:
    """The inclusive byte offsets of part ``part`` of the object (``end == start - 1``: empty).

    An object not written by a multipart upload is one part.

    Raises:
        S3Error: ``InvalidPartNumber`` beyond the last part; ``NotImplemented`` for a
            multipart object of several parts whose sizes were not recorded.
        Corrupt: the recorded part sizes do not add up to the object.
    """
    info = reader.info
    count = 1 if info.parts_count is None else info.parts_count
    if part > count:
        raise S3Error("InvalidPartNumber")
    if _recorded_part_sizes(reader) is None:
        if count == 1:
            return 0, info.size - 1
        raise S3Error(
            "NotImplemented",
            "The part boundaries of this object were not recorded when it was written: "
            "read it whole or by byte range",
        )
    span = reader.record.part_range(part)
    if span is None:
        raise storage_errors.Corrupt(f"the part sizes of {info.key!r} do not match the object")
    return span


def _recorded_part_sizes(reader: ObjectReader) -> tuple[int, ...] | None:
    """The part sizes of a multipart object; ``None`` for other objects, and for multipart
    objects completed before part sizes were recorded.

    Raises:
        Corrupt: the recorded part sizes do not add up to the object.
    """
    info, sizes = reader.info, reader.record.part_sizes
    if info.parts_count is None or sizes is None:
        return None
    if len(sizes) != info.parts_count or sum(sizes) != info.size:
        raise storage_errors.Corrupt(f"the part sizes of {info.key!r} do not match the object")
    return sizes


def _read_plan(req: Request, reader: ObjectReader) -> _ReadPlan:
    info = reader.info
    h = req.headers
    part = req.endpoint.part_number
    if part is not None and h.get("range") is not None:
        raise S3Error(
            "InvalidRequest", "Cannot specify both Range header and partNumber query parameter"
        )
    try:
        check_read_preconditions(
            etag=info.etag,
            last_modified=info.last_modified,
            if_match=h.get("if-match"),
            if_none_match=h.get("if-none-match"),
            if_modified_since=h.get("if-modified-since"),
            if_unmodified_since=h.get("if-unmodified-since"),
        )
    except S3Error as err:
        if err.code == "NotModified":
            raise _NotModified(info) from None
        raise
    headers = _object_headers(info)
    if part is None:
        byte_range = parse_range(h.get("range"), info.size)
    else:
        start, end = _part_span(reader, part)
        byte_range = ByteRange(start, end, info.size) if end >= start else None
    overrides = [(header, req.endpoint.param(param)) for param, header in _RESPONSE_OVERRIDES]
    if any(v is not None for _, v in overrides):
        if req.anonymous:
            raise S3Error(
                "InvalidRequest",
                "Request specific response headers cannot be used for anonymous GET requests.",
            )
        names = {header for header, v in overrides if v is not None}
        headers = [(k, v) for k, v in headers if k not in names]
        headers.extend((k, v) for k, v in overrides if v is not None)
    if byte_range is None:
        if part is not None:  # an empty part: no Content-Range can describe it
            return _ReadPlan(200, headers, 0, None, 0)
        headers.extend(_stored_checksum_headers(req, info))
        return _ReadPlan(200, headers, 0, None, info.size)
    headers.append(("content-range", byte_range.content_range))
    return _ReadPlan(206, headers, byte_range.start, byte_range.end, byte_range.length)


class _NotModified(Exception):
    def __init__(self, info: ObjectInfo) -> None:
        super().__init__("not modified")
        self.info = info


def _not_modified(info: ObjectInfo) -> Response:
    return Response(
        304,
        [
            ("etag", quote_etag(info.etag)),
            ("last-modified", format_http_date(info.last_modified)),
        ],
    )


async def get_object(app: S3App, req: Request) -> Response:
    """GetObject: ranges, parts, conditions, response-* overrides; the body streams."""
    reader = await _open_readable(app, req)
    try:
        plan = _read_plan(req, reader)
    except _NotModified as nm:
        return _not_modified(nm.info)

    async def stream(sink: Sink) -> int:
        if plan.length == 0:
            return 0
        return await reader.send_to(sink, plan.start, plan.end)

    headers = plan.headers + await _expiration_headers(app, req.bucket, reader.info)
    return Response(plan.status, headers, stream=stream, length=plan.length)


async def head_object(app: S3App, req: Request) -> Response:
    """HeadObject: the headers GetObject would answer, without the body."""
    reader = await _open_readable(app, req)
    try:
        plan = _read_plan(req, reader)
    except _NotModified as nm:
        return _not_modified(nm.info)

    async def nothing(_sink: Sink) -> int:
        return 0

    headers = plan.headers + await _expiration_headers(app, req.bucket, reader.info)
    return Response(plan.status, headers, stream=nothing, length=plan.length)


async def delete_object(app: S3App, req: Request) -> Response:
    """DeleteObject (an absent key is fine)."""
    _check_version(req.endpoint.version_id)
    await app.objects.delete_object(req.bucket, req.key, release_later=req.release_later)
    return Response(204)


async def _checked_body(req: Request, limit: int) -> bytes:
    """A small request body (at most ``limit`` bytes), its ``Content-MD5`` checked when sent."""
    md5 = _content_md5(req)
    body = await req.body.read_all(limit)
    if md5 is not None:
        check_content_md5(md5, hashlib.md5(body, usedforsecurity=False).digest())
    return body


async def delete_objects(app: S3App, req: Request) -> Response:
    """DeleteObjects: up to 1000 keys, per-key errors, quiet mode."""
    raw = await _checked_body(req, xml.MAX_DELETE_XML_BYTES)
    request = xml.parse_delete_objects(raw)
    deleted: list[xml.Deleted] = []
    errors: list[xml.DeleteError] = []
    keys: list[str] = []
    for obj in request.objects:
        if obj.version_id is not None and obj.version_id != NULL_VERSION:
            errors.append(
                xml.DeleteError(
                    obj.key,
                    "NoSuchVersion",
                    "The specified version does not exist.",
                    obj.version_id,
                )
            )
        else:
            keys.append(obj.key)
    versions = {o.key: o.version_id for o in request.objects}
    outcomes = (
        await app.objects.delete_objects(req.bucket, keys, release_later=req.release_later)
        if keys
        else []
    )
    for outcome in outcomes:
        if outcome.error is None:
            deleted.append(xml.Deleted(outcome.key, versions.get(outcome.key)))
        else:
            err = s3_error_for(outcome.error)
            errors.append(xml.DeleteError(outcome.key, err.code, err.message))
    return xml_response(xml.delete_result(deleted, errors, quiet=request.quiet))


def _directive(req: Request, header: str, what: str) -> str:
    """The ``COPY``/``REPLACE`` directive of ``header`` (``COPY`` when absent)."""
    directive = (req.headers.get(header) or "COPY").strip().upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error(
            "InvalidArgument",
            f"Unknown {what} directive.",
            extra={"ArgumentName": header, "ArgumentValue": directive[:64]},
        )
    return directive


async def copy_object(app: S3App, req: Request) -> Response:
    """CopyObject with the COPY/REPLACE metadata and tagging directives and copy-source
    conditions."""
    source = _copy_source(req)
    directive = _directive(req, "x-amz-metadata-directive", "metadata")
    tagging_directive = _directive(req, "x-amz-tagging-directive", "tagging")
    if directive == "COPY" and (source.bucket, source.key) == (req.bucket, req.key):
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect "
            "location or encryption attributes.",
        )
    if_match, if_none_match = _write_conditions(req)
    content = _content_headers(req.headers)
    metadata = _metadata(req.headers)
    tags = _header_tags(req) if tagging_directive == "REPLACE" else None
    check = _SourceCheck(req)
    try:
        info = await app.objects.copy_object(
            source.bucket,
            source.key,
            req.bucket,
            req.key,
            metadata_directive=directive,
            tagging_directive=tagging_directive,
            metadata=metadata,
            acl=_acl(req.headers),
            tags=tags,
            owner=req.owner,
            if_match=if_match,
            if_none_match=if_none_match,
            source_check=check,
            release_later=req.release_later,
            **content,
        )
    except _NAMED_ERRORS as exc:
        if check.opened:
            raise  # about the destination
        raise _source_error(exc, source) from exc  # the source is opened first
    body = xml.copy_object_result(quote_etag(info.etag), info.last_modified)
    return await _answer_with_expiration(app, req, info, body)


# -- access control lists and versioning ----------------------------------------------------


async def _put_acl_request(req: Request) -> str | list[xml.Grant]:
    """What a PutBucketAcl or PutObjectAcl asks for: a canned ACL (``x-amz-acl``) or the
    grants of its AccessControlPolicy body.

    Raises:
        S3Error: ``InvalidRequest`` (header and grants, or header and body),
            ``NotImplemented`` (``x-amz-grant-*``), ``MissingSecurityHeader`` (neither),
            ``MalformedACLError``, ``InvalidArgument`` (unknown canned ACL).
    """
    canned = req.headers.get("x-amz-acl")
    if any(name.startswith("x-amz-grant-") for name, _ in req.headers):
        if canned is not None:
            raise S3Error(
                "InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed"
            )
        raise S3Error("NotImplemented", "Only grants equal to a canned ACL are supported")
    body = await _checked_body(req, xml.MAX_ACL_XML_BYTES)
    if canned is not None:
        if body.strip():
            raise S3Error(
                "InvalidRequest",
                "This request does not support content with the x-amz-acl header: specify "
                "a canned ACL or an AccessControlPolicy, not both",
            )
        return _acl(req.headers)
    if not body.strip():
        raise S3Error("MissingSecurityHeader", extra={"MissingHeaderName": "x-amz-acl"})
    return xml.parse_access_control_policy(body)


def _canned_from_grants(req: Request, grants: list[xml.Grant], owner_id: str | None) -> str:
    acl = xml.canned_acl(grants, {req.owner, _owner(req, owner_id).id})
    if acl is None:
        raise S3Error("NotImplemented", "Only grants equal to a canned ACL are supported")
    return acl


async def get_bucket_acl(app: S3App, req: Request) -> Response:
    """GetBucketAcl: the bucket's canned ACL as an access control policy."""
    info = await app.objects.head_bucket(req.bucket)
    return xml_response(xml.access_control_policy(_owner(req, info.owner), info.acl))


async def put_bucket_acl(app: S3App, req: Request) -> Response:
    """PutBucketAcl: a canned ACL, or a policy whose grants equal one."""
    request = await _put_acl_request(req)
    if not isinstance(request, str):
        info = await app.objects.head_bucket(req.bucket)
        request = _canned_from_grants(req, request, info.owner)
    await app.objects.set_bucket_acl(req.bucket, request)
    return Response(200)


async def get_object_acl(app: S3App, req: Request) -> Response:
    """GetObjectAcl: the object's canned ACL as an access control policy."""
    _check_version(req.endpoint.version_id)
    info = await app.objects.head_object(req.bucket, req.key)
    return xml_response(xml.access_control_policy(_owner(req, info.owner), info.acl))


async def put_object_acl(app: S3App, req: Request) -> Response:
    """PutObjectAcl: a canned ACL, or a policy whose grants equal one."""
    _check_version(req.endpoint.version_id)
    request = await _put_acl_request(req)
    if not isinstance(request, str):
        info = await app.objects.head_object(req.bucket, req.key)
        request = _canned_from_grants(req, request, info.owner)
    await app.objects.set_object_acl(req.bucket, req.key, request)
    return Response(200)


async def get_bucket_versioning(app: S3App, req: Request) -> Response:
    """GetBucketVersioning: never enabled (Ballast keeps one version per key)."""
    await app.objects.head_bucket(req.bucket)
    return xml_response(xml.empty_configuration("VersioningConfiguration"))


# -- object attributes ------------------------------------------------------------------------

#: The attributes GetObjectAttributes can return (``x-amz-object-attributes``).
OBJECT_ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"})


def _requested_attributes(headers: Headers) -> frozenset[str]:
    """The attributes ``x-amz-object-attributes`` names (comma-separated, possibly repeated).

    Raises:
        S3Error: ``InvalidArgument`` if it names none, or one S3 does not know.
    """
    names = [
        name.strip()
        for value in headers.get_all("x-amz-object-attributes")
        for name in value.split(",")
    ]
    wanted = frozenset(name for name in names if name)
    unknown = sorted(wanted - OBJECT_ATTRIBUTES)
    if not wanted or unknown:
        extra = {"ArgumentName": "x-amz-object-attributes"}
        if unknown:
            extra["ArgumentValue"] = unknown[0][:64]
        raise S3Error("InvalidArgument", "Invalid attribute name specified.", extra=extra)
    return wanted


def _object_parts(reader: ObjectReader, marker: int, max_parts: int) -> xml.ObjectParts | None:
    """The ``ObjectParts`` of a multipart object: the page of parts after ``marker`` (only
    the count when the part sizes were not recorded); ``None`` for other objects.

    Raises:
        Corrupt: the recorded part sizes do not add up to the object.
    """
    info = reader.info
    if info.parts_count is None:
        return None
    sizes = _recorded_part_sizes(reader)
    if sizes is None:
        return xml.ObjectParts(info.parts_count)
    after = list(enumerate(sizes, start=1))[marker:]
    page = after[:max_parts]
    truncated = len(after) > len(page)
    return xml.ObjectParts(
        info.parts_count,
        page,
        part_number_marker=marker,
        max_parts=max_parts,
        is_truncated=truncated,
        next_part_number_marker=page[-1][0] if truncated and page else None,
    )


async def get_object_attributes(app: S3App, req: Request) -> Response:
    """GetObjectAttributes: the attributes ``x-amz-object-attributes`` asks for, without the
    body; readable by whoever may GetObject."""
    wanted = _requested_attributes(req.headers)
    marker = int_argument(
        "x-amz-part-number-marker", req.headers.get("x-amz-part-number-marker"), 0
    )
    max_parts = int_argument(
        "x-amz-max-parts", req.headers.get("x-amz-max-parts"), 1000, maximum=1000
    )
    reader = await _open_readable(app, req)
    info = reader.info
    checksum = None
    if "Checksum" in wanted and info.checksum is not None:
        claim = ChecksumClaim(*info.checksum)
        checksum = (claim.algorithm, claim.b64)
    body = xml.get_object_attributes(
        etag=info.etag if "ETag" in wanted else None,
        checksum=checksum,
        object_parts=_object_parts(reader, marker, max_parts) if "ObjectParts" in wanted else None,
        storage_class=info.storage_class if "StorageClass" in wanted else None,
        object_size=info.size if "ObjectSize" in wanted else None,
    )
    headers = [
        ("content-type", "application/xml"),
        ("last-modified", format_http_date(info.last_modified)),
    ]
    return Response(200, headers, body)


# -- configurations Ballast does not keep ----------------------------------------------------

#: What S3 answers for a configuration never set on a bucket: a 404 error code, or the
#: document of the default.
_UNSET_CONFIGURATIONS: dict[Op, str | bytes] = {
    Op.GET_BUCKET_POLICY: "NoSuchBucketPolicy",
    Op.GET_BUCKET_POLICY_STATUS: "NoSuchBucketPolicy",
    Op.GET_BUCKET_WEBSITE: "NoSuchWebsiteConfiguration",
    Op.GET_BUCKET_ENCRYPTION: "ServerSideEncryptionConfigurationNotFoundError",
    Op.GET_BUCKET_REPLICATION: "ReplicationConfigurationNotFoundError",
    Op.GET_BUCKET_OWNERSHIP_CONTROLS: "OwnershipControlsNotFoundError",
    Op.GET_PUBLIC_ACCESS_BLOCK: "NoSuchPublicAccessBlockConfiguration",
    Op.GET_OBJECT_LOCK_CONFIGURATION: "ObjectLockConfigurationNotFoundError",
    Op.GET_BUCKET_LOGGING: xml.empty_configuration("BucketLoggingStatus"),
    Op.GET_BUCKET_REQUEST_PAYMENT: xml.request_payment_configuration(),
    Op.GET_BUCKET_ACCELERATE_CONFIGURATION: xml.empty_configuration("AccelerateConfiguration"),
    Op.GET_BUCKET_NOTIFICATION_CONFIGURATION: xml.empty_configuration("NotificationConfiguration"),
}


async def get_unset_configuration(app: S3App, req: Request) -> Response:
    """GetBucketPolicy, GetBucketEncryption, …: what S3 answers for a bucket where the
    configuration was never set (Ballast keeps none of them)."""
    await app.objects.head_bucket(req.bucket)
    answer = _UNSET_CONFIGURATIONS[req.endpoint.op]
    if isinstance(answer, str):
        raise S3Error(answer, extra={"BucketName": req.bucket})
    return xml_response(answer)


async def delete_unset_configuration(app: S3App, req: Request) -> Response:
    """DeleteBucketPolicy, DeleteBucketEncryption, …: nothing is set, nothing to remove."""
    await app.objects.head_bucket(req.bucket)
    return Response(204)


# -- tagging --------------------------------------------------------------------------------


async def _tagging_body(req: Request, *, bucket: bool = False) -> dict[str, str]:
    """The tag set of a PutObjectTagging (or PutBucketTagging) body, its Content-MD5
    checked when sent."""
    body = await _checked_body(req, xml.MAX_TAGGING_XML_BYTES)
    return xml.parse_tagging(body, bucket=bucket)


async def get_object_tagging(app: S3App, req: Request) -> Response:
    """GetObjectTagging: the object's tag set (an empty TagSet when it has none)."""
    _check_version(req.endpoint.version_id)
    info = await app.objects.head_object(req.bucket, req.key)
    return xml_response(xml.tagging(info.tags))


async def put_object_tagging(app: S3App, req: Request) -> Response:
    """PutObjectTagging: replace the object's tag set (its data and ETag are unchanged)."""
    _check_version(req.endpoint.version_id)
    tags = await _tagging_body(req)
    await app.objects.set_object_tags(req.bucket, req.key, tags)
    return Response(200)


async def delete_object_tagging(app: S3App, req: Request) -> Response:
    """DeleteObjectTagging: remove the object's tags (never the object)."""
    _check_version(req.endpoint.version_id)
    await app.objects.set_object_tags(req.bucket, req.key, {})
    return Response(204)


async def get_bucket_tagging(app: S3App, req: Request) -> Response:
    """GetBucketTagging (``NoSuchTagSet`` if the bucket has no tags)."""
    info = await app.objects.head_bucket(req.bucket)
    if not info.tags:
        raise S3Error("NoSuchTagSet", extra={"BucketName": req.bucket})
    return xml_response(xml.tagging(info.tags))


async def put_bucket_tagging(app: S3App, req: Request) -> Response:
    """PutBucketTagging: replace the bucket's tag set (up to 50 tags; none removes it)."""
    tags = await _tagging_body(req, bucket=True)
    await app.objects.set_bucket_tags(req.bucket, tags or None)
    return Response(204)


async def delete_bucket_tagging(app: S3App, req: Request) -> Response:
    """DeleteBucketTagging (a bucket without tags is fine; never deletes the bucket)."""
    await app.objects.set_bucket_tags(req.bucket, None)
    return Response(204)


# -- cross-origin resource sharing ----------------------------------------------------------


async def put_bucket_cors(app: S3App, req: Request) -> Response:
    """PutBucketCors: replace the bucket's CORS rules (up to 100, a body of up to 64 KiB)."""
    body = await _checked_body(req, xml.MAX_CORS_XML_BYTES)
    rules = xml.parse_cors_configuration(body)
    await app.objects.set_bucket_cors(req.bucket, rules)
    return Response(200)


async def get_bucket_cors(app: S3App, req: Request) -> Response:
    """GetBucketCors: the rules as stored (``NoSuchCORSConfiguration`` if there are none)."""
    info = await app.objects.head_bucket(req.bucket)
    if info.cors is None:
        raise S3Error("NoSuchCORSConfiguration", extra={"BucketName": req.bucket})
    return xml_response(xml.cors_configuration(info.cors))


async def delete_bucket_cors(app: S3App, req: Request) -> Response:
    """DeleteBucketCors (a bucket without rules is fine)."""
    await app.objects.set_bucket_cors(req.bucket, None)
    return Response(204)


# -- lifecycle ------------------------------------------------------------------------------


async def put_bucket_lifecycle(app: S3App, req: Request) -> Response:
    """PutBucketLifecycleConfiguration: replace the bucket's lifecycle rules (up to 1000, a
    body of up to 64 KiB)."""
    body = await _checked_body(req, xml.MAX_LIFECYCLE_XML_BYTES)
    rules = xml.parse_lifecycle_configuration(body)
    await app.objects.set_bucket_lifecycle(req.bucket, rules)
    return Response(200)


async def get_bucket_lifecycle(app: S3App, req: Request) -> Response:
    """GetBucketLifecycleConfiguration: the rules as stored (``NoSuchLifecycleConfiguration``
    if there are none)."""
    info = await app.objects.head_bucket(req.bucket)
    if info.lifecycle is None:
        raise S3Error("NoSuchLifecycleConfiguration", extra={"BucketName": req.bucket})
    return xml_response(xml.lifecycle_configuration(info.lifecycle))


async def delete_bucket_lifecycle(app: S3App, req: Request) -> Response:
    """DeleteBucketLifecycle (a bucket without rules is fine)."""
    await app.objects.set_bucket_lifecycle(req.bucket, None)
    return Response(204)


async def cors_preflight(app: S3App, req: Request) -> Response:
    """A CORS preflight (OPTIONS on a bucket or an object), unsigned: 200 with the
    ``Access-Control-*`` headers of the first rule that allows the request, else 403
    ``AccessForbidden`` naming the method and whether rules were evaluated for an object.

    Raises:
        S3Error: ``BadRequest`` without ``Origin``; ``AccessForbidden`` when the bucket does
            not exist, has no CORS rules, or none allows the origin, the method of
            ``Access-Control-Request-Method`` (none: ``OPTIONS``, never allowed) and every
            header of ``Access-Control-Request-Headers``.
    """
    origin = req.headers.get("origin")
    if origin is None:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    method = req.headers.get("access-control-request-method") or "OPTIONS"

    def forbidden(message: str | None, resource_type: str) -> S3Error:
        extra = {"Method": method, "ResourceType": resource_type}
        return S3Error("AccessForbidden", message, extra=extra)

    try:
        rules = await app.objects.cors_rules(req.bucket)
    except storage_errors.NoSuchBucket:
        raise forbidden("CORSResponse: Bucket not found", "BUCKET") from None
    if rules is None:
        raise forbidden("CORSResponse: CORS is not enabled for this bucket.", "BUCKET")
    requested = cors.requested_headers(req.headers.get("access-control-request-headers"))
    found = cors.match(rules, origin, method, requested)
    if found is None:
        raise forbidden(None, "OBJECT" if req.endpoint.key is not None else "BUCKET")
    return Response(200, cors.response_headers(found, requested))


# -- multipart ------------------------------------------------------------------------------


async def create_multipart_upload(app: S3App, req: Request) -> Response:
    """CreateMultipartUpload."""
    content = _content_headers(req.headers)
    upload_id = await app.objects.create_multipart_upload(
        req.bucket,
        req.key,
        metadata=_metadata(req.headers),
        acl=_acl(req.headers),
        tags=_header_tags(req),
        owner=req.owner,
        **content,
    )
    return xml_response(xml.initiate_multipart_upload(req.bucket, req.key, upload_id))


def _upload_id(req: Request) -> str:
    upload_id = req.endpoint.upload_id
    assert upload_id is not None
    return upload_id


def _part_number(req: Request) -> int:
    part = req.endpoint.part_number
    assert part is not None
    return part


async def upload_part(app: S3App, req: Request) -> Response:
    """UploadPart: streamed like PutObject."""
    _check_upload_length(app, req)
    info = await app.objects.upload_part(
        req.bucket,
        req.key,
        _upload_id(req),
        _part_number(req),
        req.body,
        content_md5=_content_md5(req),
    )
    return Response(200, [("etag", quote_etag(info.etag)), *_checksum_headers(req)])


async def upload_part_copy(app: S3App, req: Request) -> Response:
    """UploadPartCopy, optionally of a byte range of the source."""
    source = _copy_source(req)
    range_header = req.headers.get("x-amz-copy-source-range")
    byte_range: tuple[int, int] | None = None
    if range_header is not None:
        try:
            size = (await app.objects.head_object(source.bucket, source.key)).size
        except _NAMED_ERRORS as exc:
            raise _source_error(exc, source) from exc
        parsed = parse_copy_source_range(range_header, size)
        _check_copy_size(parsed.length)
        byte_range = (parsed.start, parsed.end)
    check = _SourceCheck(req, whole_source=byte_range is None)
    try:
        info = await app.objects.upload_part_copy(
            req.bucket,
            req.key,
            _upload_id(req),
            _part_number(req),
            source.bucket,
            source.key,
            range=byte_range,
            source_check=check,
        )
    except storage_errors.NoSuchKey as exc:
        raise _source_error(exc, source) from exc  # no key of the destination is read
    except storage_errors.NoSuchBucket as exc:
        if check.opened or source.bucket == req.bucket:
            raise
        # Either bucket may be missing (the destination's is looked up first): if this
        # raises NoSuchBucket, it was the destination's; else the source's.
        await app.objects.head_bucket(req.bucket)
        raise _source_error(exc, source) from exc
    return xml_response(xml.copy_part_result(quote_etag(info.etag), info.last_modified))


async def complete_multipart_upload(app: S3App, req: Request) -> Response:
    """CompleteMultipartUpload."""
    if_match, if_none_match = _write_conditions(req)
    parts = xml.parse_complete_multipart_upload(await req.body.read_all(xml.MAX_XML_BYTES))
    info = await app.objects.complete_multipart_upload(
        req.bucket,
        req.key,
        _upload_id(req),
        [(p.part_number, p.etag) for p in parts],
        if_match=if_match,
        if_none_match=if_none_match,
        release_later=req.release_later,
    )
    body = xml.complete_multipart_upload(_location(req), req.bucket, req.key, quote_etag(info.etag))
    return await _answer_with_expiration(app, req, info, body)


async def abort_multipart_upload(app: S3App, req: Request) -> Response:
    """AbortMultipartUpload."""
    await app.objects.abort_multipart_upload(
        req.bucket, req.key, _upload_id(req), release_later=req.release_later
    )
    return Response(204)


async def list_parts(app: S3App, req: Request) -> Response:
    """ListParts."""
    ep = req.endpoint
    marker = ep.int_param("part-number-marker", 0)
    max_parts = ep.int_param("max-parts", 1000, maximum=1000)
    page = await app.objects.list_parts(
        req.bucket, req.key, _upload_id(req), part_number_marker=marker, max_parts=max_parts
    )
    body = xml.list_parts(
        bucket=req.bucket,
        key=req.key,
        upload_id=page.upload_id,
        part_number_marker=marker,
        max_parts=max_parts,
        is_truncated=page.is_truncated,
        parts=[
            xml.PartInfo(p.part_number, p.last_modified, quote_etag(p.etag), p.size)
            for p in page.parts
        ],
        next_part_number_marker=page.next_part_number_marker,
        owner=_owner(req, page.owner or ""),
    )
    return xml_response(body)


async def list_multipart_uploads(app: S3App, req: Request) -> Response:
    """ListMultipartUploads."""
    ep = req.endpoint
    encoding = _encoding_type(req)
    max_uploads = ep.int_param("max-uploads", 1000, maximum=1000)
    prefix = ep.param("prefix") or ""
    delimiter = _delimiter(req)
    key_marker = ep.param("key-marker") or ""
    upload_marker = ep.param("upload-id-marker") or ""
    page = await app.objects.list_multipart_uploads(
        req.bucket,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker or None,
        upload_id_marker=upload_marker or None,
        max_uploads=max_uploads,
    )
    body = xml.list_multipart_uploads(
        bucket=req.bucket,
        key_marker=key_marker,
        upload_id_marker=upload_marker,
        max_uploads=max_uploads,
        is_truncated=page.is_truncated,
        uploads=[
            xml.UploadInfo(u.key, u.upload_id, u.initiated, owner=_owner(req, u.owner or ""))
            for u in page.uploads
        ],
        prefix=prefix,
        delimiter=delimiter,
        common_prefixes=page.common_prefixes,
        next_key_marker=page.next_key_marker,
        next_upload_id_marker=page.next_upload_id_marker,
        encoding_type=encoding,
    )
    return xml_response(body)


# -- browser form uploads (PostObject) ------------------------------------------------------

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Largest size of the form before the file's bytes (fields, part headers, boundaries), as S3.
MAX_POST_PRE_DATA = 20 * 1024
#: Largest size of the fields after the file (read and ignored, as S3 does), so that a form
#: cannot keep the server reading forever once its file is in.
MAX_POST_AFTER_FILE = 1024 * 1024
#: Form fields stored as the object's headers, under the header name they stand for.
_FORM_HEADERS = {
    "acl": "x-amz-acl",
    "cache-control": "cache-control",
    "content-disposition": "content-disposition",
    "content-encoding": "content-encoding",
    "content-language": "content-language",
    "content-type": "content-type",
    "expires": "expires",
    "x-amz-storage-class": "x-amz-storage-class",
    "x-amz-server-side-encryption-customer-algorithm": (
        "x-amz-server-side-encryption-customer-algorithm"
    ),
    "x-amz-object-lock-mode": "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date": "x-amz-object-lock-retain-until-date",
}


class _Form:
    """A ``multipart/form-data`` request body as parser events, read one ASGI message at a
    time (back-pressure: nothing is read before the parser needs it).

    Until the file starts (``before_file``), at most :data:`MAX_POST_PRE_DATA` bytes are
    parsed, a long preamble included.
    """

    def __init__(self, req: Request, boundary: bytes) -> None:
        self._body = req.body
        self._parser = forms.FormParser(boundary)
        self.before_file = True

    async def next_event(self) -> forms.Event:
        """The next parser event, reading the body as needed.

        Raises:
            S3Error: ``MalformedPOSTRequest``, ``IncompleteBody``,
                ``MaxPostPreDataLengthExceededError``.
        """
        while True:
            event = self._parser.next_event()
            if self.before_file and self._parser.consumed > MAX_POST_PRE_DATA:
                raise S3Error("MaxPostPreDataLengthExceededError")
            if isinstance(event, forms.PartStart | forms.PartData | forms.PartEnd | forms.FormEnd):
                return event
            try:
                data = await self._body.__anext__()
            except StopAsyncIteration:
                data = b""
            self._parser.receive_data(data)

    async def finish(self) -> None:
        """Read (and drop) the epilogue, so the body's length is verified."""
        async for _ in self._body:
            pass


async def _form_fields(form: _Form) -> tuple[dict[str, str], forms.PartStart]:
    """The fields before the file (names lower-cased) and the file part's start.

    Raises:
        S3Error: ``MaxPostPreDataLengthExceededError``, ``IncorrectNumberOfFilesInPostRequest``,
            ``InvalidArgument`` (a repeated field), ``MalformedPOSTRequest``.
    """
    fields: dict[str, str] = {}
    name = ""
    value = bytearray()
    while True:
        event = await form.next_event()
        if isinstance(event, forms.PartStart):
            name = event.name.lower()
            if name == "file":
                form.before_file = False
                return fields, event
            value.clear()
        elif isinstance(event, forms.PartData):
            value += event.data
        elif isinstance(event, forms.PartEnd):
            if name in fields:  # two values, one checked and another used: refuse both
                raise S3Error(
                    "InvalidArgument",
                    f"The form field '{name}' is given more than once",
                    extra={"ArgumentName": name[:64]},
                )
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise forms.malformed(f"The form field '{name[:64]}' is not UTF-8.") from None
        else:
            raise S3Error("IncorrectNumberOfFilesInPostRequest")


class _FormFile:
    """The ``file`` part's bytes, as an async iterator for the object store.

    The file's size is checked against the policy's ``content-length-range`` and the upload
    limit as bytes arrive; fields after the file are read and ignored, as by S3 (at most
    :data:`MAX_POST_AFTER_FILE` bytes of them). The
    iteration ends only after the closing boundary and the whole body were read: a
    truncated or malformed body raises instead, so the store commits nothing.
    """

    def __init__(self, form: _Form, policy: post_policy.PostPolicy, max_size: int) -> None:
        self._form = form
        self._policy = policy
        self._max_size = max_size
        self._in_file = True
        self._done = False
        self.size = 0
        self._after = 0  # bytes of the fields after the file

    def __aiter__(self) -> _FormFile:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            event = await self._form.next_event()
            if isinstance(event, forms.PartData) and self._in_file:
                self.size += len(event.data)
                self._policy.check_size(self.size, final=False)
                if self.size > self._max_size:
                    raise S3Error(
                        "EntityTooLarge",
                        extra={
                            "ProposedSize": str(self.size),
                            "MaxSizeAllowed": str(self._max_size),
                        },
                    )
                return event.data
            if isinstance(event, forms.PartData):
                self._after += len(event.data)
                if self._after > MAX_POST_AFTER_FILE:
                    raise forms.malformed("Too much data follows the file.")
            if isinstance(event, forms.PartEnd) and self._in_file:
                self._in_file = False
                self._policy.check_size(self.size, final=True)
            elif isinstance(event, forms.FormEnd):
                if self._in_file:  # unreachable: a part always ends before the form does
                    raise forms.malformed()
                await self._form.finish()
                self._done = True
        raise StopAsyncIteration


def _form_headers(fields: Mapping[str, str]) -> Headers:
    """The form fields that stand for PutObject headers, as headers (``acl`` is
    ``x-amz-acl``).

    Only fields count, which the policy covers: the file part's own ``Content-Type`` is not
    one (as in S3, the object is ``binary/octet-stream`` unless the form has a
    ``Content-Type`` field), or a policy meant for images would let a page through. A
    metadata name must be an HTTP header name, as a PutObject header's is: it becomes one
    on every GET.
    """
    pairs = [(_FORM_HEADERS[n], v) for n, v in fields.items() if n in _FORM_HEADERS]
    for name, value in fields.items():
        if name.startswith("x-amz-meta-"):
            if not _HEADER_NAME.fullmatch(name):
                raise S3Error(
                    "InvalidArgument",
                    "User-defined metadata names must be valid HTTP header names.",
                    extra={"ArgumentName": name[:64], "ArgumentValue": value[:64]},
                )
            pairs.append((name, value))
    return Headers(pairs)


def _redirect_url(target: str, bucket: str, key: str, etag: str) -> str | None:
    """``target`` with ``bucket``, ``key`` and ``etag`` added to its query, or ``None`` if it
    is not an absolute http(s) URL (S3 then answers as if no redirect was asked for)."""
    try:
        parts = urlsplit(target.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    added = urlencode({"bucket": bucket, "key": key, "etag": etag})
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


async def post_object(app: S3App, req: Request) -> Response:
    """PostObject: a browser form upload, authenticated by its signed policy.

    The fields before the file are read (at most :data:`MAX_POST_PRE_DATA` bytes), the
    signature and policy verified (:mod:`interfaces.s3.post_policy`), then the file streams
    into the store like a PutObject body. The answer follows ``success_action_redirect``
    (303) or ``success_action_status`` (200, 201 with a ``PostResponse`` document, or 204).
    """
    form = _Form(req, forms.boundary_of(req.headers.get("content-type")))
    fields, file = await _form_fields(form)
    claimed = post_policy.claimed_access_key(fields)
    secret = await app.credentials.lookup(claimed) if claimed else None
    grant = post_policy.authenticate_form(
        fields,
        lambda access_key: secret if access_key == claimed else None,
        datetime.fromtimestamp(app.clock(), UTC),
        region=app.region,
    )
    post_policy.check_conditions(
        grant.policy, fields, bucket=req.bucket, signature_version=grant.signature_version
    )
    req.auth = AuthResult(
        grant.access_key,
        AuthMethod.POST_POLICY,
        PayloadKind.UNSIGNED,
        signature_version=grant.signature_version,
    )
    req.owner_name = await app.credentials.name_of(grant.access_key) or ""
    template = fields.get("key")
    if template is None:
        raise S3Error(
            "InvalidArgument",
            "Bucket POST must contain a field named 'key'. If it is specified, please check "
            "the order of the fields.",
            extra={"ArgumentName": "key", "ArgumentValue": ""},
        )
    key = template.replace("${filename}", file.filename or "")
    validate_object_key(key)
    headers = _form_headers(fields)
    tagging = fields.get("tagging")
    info = await app.objects.put_object(
        req.bucket,
        key,
        _FormFile(form, grant.policy, app.max_upload_size),
        metadata=_metadata(headers),
        acl=_acl(headers),
        tags=xml.parse_tagging(tagging.encode("utf-8")) if tagging is not None else None,
        owner=req.owner,
        release_later=req.release_later,
        **_content_headers(headers),
    )
    etag = quote_etag(info.etag)
    location = _location(req, key)
    answer = [("etag", etag), ("location", location)]
    target = fields.get("success_action_redirect") or fields.get("redirect")
    redirect = _redirect_url(target, req.bucket, key, etag) if target else None
    if redirect is not None:
        return Response(303, [("etag", etag), ("location", redirect)])
    status = (fields.get("success_action_status") or "").strip()
    if status == "201":
        body = xml.post_response(location, req.bucket, key, etag)
        return Response(201, [*answer, ("content-type", "application/xml")], body)
    return Response(200 if status == "200" else 204, answer)


def _naming_errors(handler: Handler) -> Handler:
    """``handler``, its missing or clashing bucket, key or upload named in the error body.

    Handlers that read other buckets or keys (the copies) name those themselves first.
    """

    @functools.wraps(handler)
    async def run(app: S3App, req: Request) -> Response:
        try:
            return await handler(app, req)
        except _NAMED_ERRORS as exc:
            ep = req.endpoint
            err = s3_error_for(exc)
            raise err.naming(bucket=ep.bucket, key=ep.key, upload_id=ep.upload_id) from exc

    return run


_OPERATIONS: Mapping[Op, Handler] = {
    Op.LIST_BUCKETS: list_buckets,
    Op.CREATE_BUCKET: create_bucket,
    Op.HEAD_BUCKET: head_bucket,
    Op.DELETE_BUCKET: delete_bucket,
    Op.GET_BUCKET_LOCATION: get_bucket_location,
    Op.GET_BUCKET_ACL: get_bucket_acl,
    Op.PUT_BUCKET_ACL: put_bucket_acl,
    Op.GET_BUCKET_VERSIONING: get_bucket_versioning,
    Op.GET_BUCKET_CORS: get_bucket_cors,
    Op.PUT_BUCKET_CORS: put_bucket_cors,
    Op.DELETE_BUCKET_CORS: delete_bucket_cors,
    Op.GET_BUCKET_LIFECYCLE: get_bucket_lifecycle,
    Op.PUT_BUCKET_LIFECYCLE: put_bucket_lifecycle,
    Op.DELETE_BUCKET_LIFECYCLE: delete_bucket_lifecycle,
    Op.GET_BUCKET_TAGGING: get_bucket_tagging,
    Op.PUT_BUCKET_TAGGING: put_bucket_tagging,
    Op.DELETE_BUCKET_TAGGING: delete_bucket_tagging,
    Op.CORS_PREFLIGHT: cors_preflight,
    Op.LIST_OBJECTS: list_objects,
    Op.LIST_OBJECTS_V2: list_objects_v2,
    Op.LIST_OBJECT_VERSIONS: list_object_versions,
    Op.LIST_MULTIPART_UPLOADS: list_multipart_uploads,
    Op.DELETE_OBJECTS: delete_objects,
    Op.POST_OBJECT: post_object,
    Op.PUT_OBJECT: put_object,
    Op.GET_OBJECT: get_object,
    Op.HEAD_OBJECT: head_object,
    Op.DELETE_OBJECT: delete_object,
    Op.COPY_OBJECT: copy_object,
    Op.GET_OBJECT_ACL: get_object_acl,
    Op.PUT_OBJECT_ACL: put_object_acl,
    Op.GET_OBJECT_TAGGING: get_object_tagging,
    Op.PUT_OBJECT_TAGGING: put_object_tagging,
    Op.DELETE_OBJECT_TAGGING: delete_object_tagging,
    Op.GET_OBJECT_ATTRIBUTES: get_object_attributes,
    Op.CREATE_MULTIPART_UPLOAD: create_multipart_upload,
    Op.UPLOAD_PART: upload_part,
    Op.UPLOAD_PART_COPY: upload_part_copy,
    Op.COMPLETE_MULTIPART_UPLOAD: complete_multipart_upload,
    Op.ABORT_MULTIPART_UPLOAD: abort_multipart_upload,
    Op.LIST_PARTS: list_parts,
    **{op: get_unset_configuration for op in _UNSET_CONFIGURATIONS},
    Op.DELETE_BUCKET_POLICY: delete_unset_configuration,
    Op.DELETE_BUCKET_WEBSITE: delete_unset_configuration,
    Op.DELETE_BUCKET_ENCRYPTION: delete_unset_configuration,
    Op.DELETE_BUCKET_REPLICATION: delete_unset_configuration,
    Op.DELETE_BUCKET_OWNERSHIP_CONTROLS: delete_unset_configuration,
    Op.DELETE_PUBLIC_ACCESS_BLOCK: delete_unset_configuration,
}
#: The handler of every implemented operation.
HANDLERS: Mapping[Op, Handler] = {op: _naming_errors(h) for op, h in _OPERATIONS.items()}

__all__ = ["HANDLERS", "MAX_METADATA_BYTES", "MAX_POST_PRE_DATA", "REDUNDANCY_HEADER", "Handler"]
