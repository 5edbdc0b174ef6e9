"""S3 XML bodies: response builders and guarded request parsers (sans-IO).

Builders return UTF-8 ``bytes`` with the XML declaration and, except for ``<Error>``, the S3
namespace ``http://s3.amazonaws.com/doc/2006-03-01/``. Text is escaped by hand: ``& < >``
and ``\\r`` as usual, and characters XML 1.0 cannot carry as ``&#xN;`` (what S3 sends; clients
that list such keys ask for ``encoding-type=url``, which percent-encodes keys, prefixes,
delimiters and markers). Times are ISO 8601 with milliseconds, as S3 writes them.

Parsers accept only what S3 accepts and refuse what could hurt us, in the spirit of
defusedxml: any DTD (so no entity declarations, no billion laughs, no external entities
or fetches), bodies above a size limit, nesting deeper than a few levels, and too many
elements. They run expat directly (``xml.parsers.expat``) and raise only
:class:`~interfaces.s3.errors.S3Error` (``MalformedXML`` for anything unparseable).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import quote
from xml.parsers import expat

from storage.lifecycle import (
    MAX_RULE_ID,
    MAX_RULES,
    Expiration,
    FilterForm,
    LifecycleFilter,
    LifecycleRule,
    NoncurrentVersionExpiration,
    new_rule_id,
)
from storage.object_records import CorsRule

from .errors import S3Error

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ESCAPE_RE = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}

#: Largest request body each parser reads.
MAX_XML_BYTES = 2 * 1024 * 1024
MAX_DELETE_XML_BYTES = 8 * 1024 * 1024
MAX_DELETE_OBJECTS = 1000
MAX_PARTS = 10000
MAX_ACL_XML_BYTES = 64 * 1024
#: S3 limits a CORS configuration to 64 KB and 100 rules.
MAX_CORS_XML_BYTES = 64 * 1024
MAX_CORS_RULES = 100
#: The methods a CORS rule may allow, as S3.
CORS_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD"})
MAX_CORS_RULE_ID = 255
#: S3's tag limits: tags per object and per bucket, characters per key and per value.
MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
#: Largest Tagging body: 50 tags of 128 + 256 characters, each escaped as a reference.
MAX_TAGGING_XML_BYTES = 256 * 1024
#: Largest PutBucketLifecycleConfiguration body (as for CORS).
MAX_LIFECYCLE_XML_BYTES = 64 * 1024
_MAX_DEPTH = 8
_MAX_ELEMENTS = 100_000


# -- serialisation helpers -------------------------------------------------------------------


def escape(text: str) -> str:
    """Escape ``text`` for an XML element's content."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(), f"&#x{ord(m.group()):X};"), text)


def iso8601(when: datetime) -> str:
    """Format ``when`` as S3 does in XML, e.g. ``2009-10-12T17:50:30.000Z``."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _url(text: str, encoding_type: str | None) -> str:
    return quote(text, safe="/") if encoding_type == "url" else text


def _tag(name: str, value: str | int | bool | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def _doc(root: str, body: Iterable[str], *, namespace: bool = True) -> bytes:
    attrs = f' xmlns="{S3_NAMESPACE}"' if namespace else ""
    return (_DECLARATION + f"<{root}{attrs}>" + "".join(body) + f"</{root}>").encode(
        "utf-8", "surrogatepass"
    )


# -- response records ------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """A bucket or object owner."""

    id: str
    display_name: str = ""

    def xml(self, tag: str = "Owner") -> str:
        """The ``<Owner>`` (or ``<Initiator>``) element."""
        return f"<{tag}>{_tag('ID', self.id)}{_tag('DisplayName', self.display_name)}</{tag}>"


@dataclass(frozen=True)
class BucketInfo:
    """One bucket in ListBuckets."""

    name: str
    created: datetime
    region: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """One object in a listing."""

    key: str
    last_modified: datetime
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: Owner | None = None


@dataclass(frozen=True)
class VersionInfo:
    """One version or delete marker in ListObjectVersions."""

    key: str
    version_id: str
    is_latest: bool
    last_modified: datetime
    etag: str = ""
    size: int = 0
    delete_marker: bool = False
    storage_class: str = "STANDARD"
    owner: Owner | None = None


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part in ListParts."""

    part_number: int
    last_modified: datetime
    etag: str
    size: int


@dataclass(frozen=True)
class ObjectParts:
    """The ``ObjectParts`` of GetObjectAttributes for a multipart object.

    ``parts`` is one page of ``(part number, size)``, or ``None`` when the part sizes are
    unknown: then only the part count is given.
    """

    total: int
    parts: Sequence[tuple[int, int]] | None = None
    part_number_marker: int = 0
    max_parts: int = 1000
    is_truncated: bool = False
    next_part_number_marker: int | None = None


@dataclass(frozen=True)
class UploadInfo:
    """One in-progress multipart upload in ListMultipartUploads."""

    key: str
    upload_id: str
    initiated: datetime
    storage_class: str = "STANDARD"
    owner: Owner | None = None


@dataclass(frozen=True)
class Deleted:
    """One successfully deleted entry in a DeleteObjects result."""

    key: str
    version_id: str | None = None
    delete_marker: bool = False
    delete_marker_version_id: str | None = None


@dataclass(frozen=True)
class DeleteError:
    """One failed entry in a DeleteObjects result."""

    key: str
    code: str
    message: str
    version_id: str | None = None


# -- builders --------------------------------------------------------------------------------


def list_buckets(owner: Owner, buckets: Iterable[BucketInfo]) -> bytes:
    """The ListAllMyBucketsResult body."""
    items = "".join(
        f"<Bucket>{_tag('Name', b.name)}{_tag('CreationDate', iso8601(b.created))}"
        f"{_tag('BucketRegion', b.region)}</Bucket>"
        for b in buckets
    )
    return _doc("ListAllMyBucketsResult", [owner.xml(), f"<Buckets>{items}</Buckets>"])


def _contents(objects: Iterable[ObjectInfo], encoding_type: str | None) -> str:
    return "".join(
        f"<Contents>{_tag('Key', _url(o.key, encoding_type))}"
        f"{_tag('LastModified', iso8601(o.last_modified))}{_tag('ETag', o.etag)}"
        f"{_tag('Size', o.size)}{o.owner.xml() if o.owner else ''}"
        f"{_tag('StorageClass', o.storage_class)}</Contents>"
        for o in objects
    )


def _prefixes(prefixes: Iterable[str], encoding_type: str | None) -> str:
    return "".join(
        f"<CommonPrefixes>{_tag('Prefix', _url(p, encoding_type))}</CommonPrefixes>"
        for p in prefixes
    )


def list_objects(
    *,
    bucket: str,
    prefix: str,
    marker: str,
    max_keys: int,
    is_truncated: bool,
    contents: Sequence[ObjectInfo],
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    next_marker: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """The ListBucketResult body of ListObjects (v1)."""
    return _doc(
        "ListBucketResult",
        [
            _tag("Name", bucket),
            _tag("Prefix", _url(prefix, encoding_type)),
            _tag("Marker", _url(marker, encoding_type)),
            _tag("NextMarker", None if next_marker is None else _url(next_marker, encoding_type)),
            _tag("MaxKeys", max_keys),
            _tag("Delimiter", None if delimiter is None else _url(delimiter, encoding_type)),
            _tag("EncodingType", encoding_type),
            _tag("IsTruncated", is_truncated),
            _contents(contents, encoding_type),
            _prefixes(common_prefixes, encoding_type),
        ],
    )


def list_objects_v2(
    *,
    bucket: str,
    prefix: str,
    max_keys: int,
    is_truncated: bool,
    contents: Sequence[ObjectInfo],
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    continuation_token: str | None = None,
    next_continuation_token: str | None = None,
    start_after: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """The ListBucketResult body of ListObjectsV2 (``KeyCount`` counts keys and prefixes)."""
    return _doc(
        "ListBucketResult",
        [
            _tag("Name", bucket),
            _tag("Prefix", _url(prefix, encoding_type)),
            _tag("StartAfter", None if start_after is None else _url(start_after, encoding_type)),
            _tag("ContinuationToken", continuation_token),
            _tag("NextContinuationToken", next_continuation_token),
            _tag("KeyCount", len(contents) + len(common_prefixes)),
            _tag("MaxKeys", max_keys),
            _tag("Delimiter", None if delimiter is None else _url(delimiter, encoding_type)),
            _tag("EncodingType", encoding_type),
            _tag("IsTruncated", is_truncated),
            _contents(contents, encoding_type),
            _prefixes(common_prefixes, encoding_type),
        ],
    )


def list_object_versions(
    *,
    bucket: str,
    prefix: str,
    key_marker: str,
    version_id_marker: str,
    max_keys: int,
    is_truncated: bool,
    versions: Sequence[VersionInfo],
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    next_key_marker: str | None = None,
    next_version_id_marker: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """The ListVersionsResult body (versions and delete markers in the given order)."""
    items = []
    for v in versions:
        owner = v.owner.xml() if v.owner else ""
        common = (
            f"{_tag('Key', _url(v.key, encoding_type))}{_tag('VersionId', v.version_id)}"
            f"{_tag('IsLatest', v.is_latest)}{_tag('LastModified', iso8601(v.last_modified))}"
        )
        if v.delete_marker:
            items.append(f"<DeleteMarker>{common}{owner}</DeleteMarker>")
        else:
            items.append(
                f"<Version>{common}{_tag('ETag', v.etag)}{_tag('Size', v.size)}{owner}"
                f"{_tag('StorageClass', v.storage_class)}</Version>"
            )
    return _doc(
        "ListVersionsResult",
        [
            _tag("Name", bucket),
            _tag("Prefix", _url(prefix, encoding_type)),
            _tag("KeyMarker", _url(key_marker, encoding_type)),
            _tag("VersionIdMarker", version_id_marker),
            _tag(
                "NextKeyMarker",
                None if next_key_marker is None else _url(next_key_marker, encoding_type),
            ),
            _tag("NextVersionIdMarker", next_version_id_marker),
            _tag("MaxKeys", max_keys),
            _tag("Delimiter", None if delimiter is None else _url(delimiter, encoding_type)),
            _tag("EncodingType", encoding_type),
            _tag("IsTruncated", is_truncated),
            "".join(items),
            _prefixes(common_prefixes, encoding_type),
        ],
    )


def initiate_multipart_upload(bucket: str, key: str, upload_id: str) -> bytes:
    """The InitiateMultipartUploadResult body."""
    return _doc(
        "InitiateMultipartUploadResult",
        [_tag("Bucket", bucket), _tag("Key", key), _tag("UploadId", upload_id)],
    )


def complete_multipart_upload(location: str, bucket: str, key: str, etag: str) -> bytes:
    """The CompleteMultipartUploadResult body."""
    return _doc(
        "CompleteMultipartUploadResult",
        [_tag("Location", location), _tag("Bucket", bucket), _tag("Key", key), _tag("ETag", etag)],
    )


def post_response(location: str, bucket: str, key: str, etag: str) -> bytes:
    """The PostResponse body (PostObject with ``success_action_status`` 201)."""
    return _doc(
        "PostResponse",
        [_tag("Location", location), _tag("Bucket", bucket), _tag("Key", key), _tag("ETag", etag)],
        namespace=False,  # as S3 answers it
    )


def list_parts(
    *,
    bucket: str,
    key: str,
    upload_id: str,
    part_number_marker: int,
    max_parts: int,
    is_truncated: bool,
    parts: Sequence[PartInfo],
    next_part_number_marker: int | None = None,
    owner: Owner | None = None,
    storage_class: str = "STANDARD",
) -> bytes:
    """The ListPartsResult body."""
    items = "".join(
        f"<Part>{_tag('PartNumber', p.part_number)}"
        f"{_tag('LastModified', iso8601(p.last_modified))}{_tag('ETag', p.etag)}"
        f"{_tag('Size', p.size)}</Part>"
        for p in parts
    )
    return _doc(
        "ListPartsResult",
        [
            _tag("Bucket", bucket),
            _tag("Key", key),
            _tag("UploadId", upload_id),
            owner.xml("Initiator") if owner else "",
            owner.xml() if owner else "",
            _tag("StorageClass", storage_class),
            _tag("PartNumberMarker", part_number_marker),
            _tag("NextPartNumberMarker", next_part_number_marker),
            _tag("MaxParts", max_parts),
            _tag("IsTruncated", is_truncated),
            items,
        ],
    )


def get_object_attributes(
    *,
    etag: str | None = None,
    checksum: tuple[str, str] | None = None,
    object_parts: ObjectParts | None = None,
    storage_class: str | None = None,
    object_size: int | None = None,
) -> bytes:
    """The GetObjectAttributesResponse body: only the attributes given (not ``None``).

    Args:
        etag: the ETag, unquoted (as S3 returns it here).
        checksum: ``(algorithm, base64 digest)`` of the whole object, e.g. ``("CRC32", ...)``.
        object_parts: the parts of a multipart object.
        storage_class: the storage class.
        object_size: the object's size in bytes.
    """
    body = [_tag("ETag", etag)]
    if checksum is not None:
        algorithm, digest = checksum
        # Ballast stores one checksum of the whole object, never one composed of the parts'.
        body.append(
            f"<Checksum>{_tag('Checksum' + algorithm, digest)}"
            f"{_tag('ChecksumType', 'FULL_OBJECT')}</Checksum>"
        )
    if object_parts is not None:
        p = object_parts
        body.append("<ObjectParts>" + _tag("PartsCount", p.total))
        if p.parts is not None:
            body += [
                _tag("PartNumberMarker", p.part_number_marker),
                _tag("NextPartNumberMarker", p.next_part_number_marker),
                _tag("MaxParts", p.max_parts),
                _tag("IsTruncated", p.is_truncated),
                *(
                    f"<Part>{_tag('PartNumber', number)}{_tag('Size', size)}</Part>"
                    for number, size in p.parts
                ),
            ]
        body.append("</ObjectParts>")
    body += [_tag("StorageClass", storage_class), _tag("ObjectSize", object_size)]
    return _doc("GetObjectAttributesResponse", body)


def list_multipart_uploads(
    *,
    bucket: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
    is_truncated: bool,
    uploads: Sequence[UploadInfo],
    prefix: str = "",
    delimiter: str | None = None,
    common_prefixes: Sequence[str] = (),
    next_key_marker: str | None = None,
    next_upload_id_marker: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """The ListMultipartUploadsResult body."""
    items = "".join(
        f"<Upload>{_tag('Key', _url(u.key, encoding_type))}{_tag('UploadId', u.upload_id)}"
        f"{u.owner.xml('Initiator') if u.owner else ''}{u.owner.xml() if u.owner else ''}"
        f"{_tag('StorageClass', u.storage_class)}{_tag('Initiated', iso8601(u.initiated))}"
        "</Upload>"
        for u in uploads
    )
    return _doc(
        "ListMultipartUploadsResult",
        [
            _tag("Bucket", bucket),
            _tag("KeyMarker", _url(key_marker, encoding_type)),
            _tag("UploadIdMarker", upload_id_marker),
            _tag(
                "NextKeyMarker",
                None if next_key_marker is None else _url(next_key_marker, encoding_type),
            ),
            _tag("NextUploadIdMarker", next_upload_id_marker),
            _tag("Prefix", _url(prefix, encoding_type)),
            _tag("Delimiter", None if delimiter is None else _url(delimiter, encoding_type)),
            _tag("MaxUploads", max_uploads),
            _tag("EncodingType", encoding_type),
            _tag("IsTruncated", is_truncated),
            items,
            _prefixes(common_prefixes, encoding_type),
        ],
    )


def copy_object_result(etag: str, last_modified: datetime) -> bytes:
    """The CopyObjectResult body."""
    return _doc(
        "CopyObjectResult",
        [_tag("LastModified", iso8601(last_modified)), _tag("ETag", etag)],
    )


def copy_part_result(etag: str, last_modified: datetime) -> bytes:
    """The CopyPartResult body (UploadPartCopy)."""
    return _doc(
        "CopyPartResult",
        [_tag("LastModified", iso8601(last_modified)), _tag("ETag", etag)],
    )


def delete_result(
    deleted: Iterable[Deleted], errors: Iterable[DeleteError], *, quiet: bool = False
) -> bytes:
    """The DeleteResult body; in quiet mode only errors are listed."""
    body = []
    if not quiet:
        for d in deleted:
            body.append(
                f"<Deleted>{_tag('Key', d.key)}{_tag('VersionId', d.version_id)}"
                f"{_tag('DeleteMarker', True if d.delete_marker else None)}"
                f"{_tag('DeleteMarkerVersionId', d.delete_marker_version_id)}</Deleted>"
            )
    for e in errors:
        body.append(
            f"<Error>{_tag('Key', e.key)}{_tag('VersionId', e.version_id)}"
            f"{_tag('Code', e.code)}{_tag('Message', e.message)}</Error>"
        )
    return _doc("DeleteResult", body)


def location_constraint(region: str | None) -> bytes:
    """The LocationConstraint body; ``us-east-1`` (or ``None``) is sent empty, as S3 does."""
    value = "" if region in (None, "us-east-1") else escape(region or "")
    return (
        _DECLARATION + f'<LocationConstraint xmlns="{S3_NAMESPACE}">{value}</LocationConstraint>'
    ).encode("utf-8")


def empty_configuration(root: str) -> bytes:
    """A configuration document with nothing set: what S3 answers for a bucket never
    configured (``VersioningConfiguration``: never versioned, no Status)."""
    return (_DECLARATION + f'<{root} xmlns="{S3_NAMESPACE}"/>').encode("utf-8")


def request_payment_configuration() -> bytes:
    """The RequestPaymentConfiguration body: the bucket owner pays, as on every bucket."""
    return (
        _DECLARATION
        + f'<RequestPaymentConfiguration xmlns="{S3_NAMESPACE}">'
        + "<Payer>BucketOwner</Payer></RequestPaymentConfiguration>"
    ).encode("utf-8")


def cors_configuration(rules: Iterable[CorsRule]) -> bytes:
    """The CORSConfiguration body of GetBucketCors (elements in the order of S3's model)."""
    items = []
    for rule in rules:
        items.append(
            "<CORSRule>"
            + _tag("ID", rule.id)
            + "".join(_tag("AllowedHeader", h) for h in rule.allowed_headers)
            + "".join(_tag("AllowedMethod", m) for m in rule.allowed_methods)
            + "".join(_tag("AllowedOrigin", o) for o in rule.allowed_origins)
            + "".join(_tag("ExposeHeader", h) for h in rule.expose_headers)
            + _tag("MaxAgeSeconds", rule.max_age_seconds)
            + "</CORSRule>"
        )
    return _doc("CORSConfiguration", items)


def _lifecycle_filter(f: LifecycleFilter) -> str:
    if f.form is FilterForm.LEGACY_PREFIX:
        return f"<Prefix>{escape(f.prefix or '')}</Prefix>"
    tags = "".join(
        "<Tag>" + _tag("Key", k) + f"<Value>{escape(v)}</Value></Tag>" for k, v in f.tags
    )
    predicates = (
        ("" if f.prefix is None else f"<Prefix>{escape(f.prefix)}</Prefix>")
        + tags
        + _tag("ObjectSizeGreaterThan", f.size_greater_than)
        + _tag("ObjectSizeLessThan", f.size_less_than)
    )
    if f.form is FilterForm.AND:
        predicates = f"<And>{predicates}</And>"
    return f"<Filter>{predicates}</Filter>"


def lifecycle_configuration(rules: Iterable[LifecycleRule]) -> bytes:
    """The LifecycleConfiguration body of GetBucketLifecycleConfiguration (elements in the
    order of S3's model; dates as ISO 8601)."""
    items = []
    for rule in rules:
        parts = ["<Rule>"]
        e = rule.expiration
        if e is not None:
            parts.append(
                "<Expiration>"
                + ("" if e.date is None else _tag("Date", iso8601(e.date)))
                + _tag("Days", e.days)
                + _tag("ExpiredObjectDeleteMarker", e.expired_object_delete_marker)
                + "</Expiration>"
            )
        parts.append(_tag("ID", rule.id))
        parts.append(_lifecycle_filter(rule.filter))
        parts.append(_tag("Status", "Enabled" if rule.enabled else "Disabled"))
        nc = rule.noncurrent_expiration
        if nc is not None:
            parts.append(
                "<NoncurrentVersionExpiration>"
                + _tag("NoncurrentDays", nc.noncurrent_days)
                + _tag("NewerNoncurrentVersions", nc.newer_noncurrent_versions)
                + "</NoncurrentVersionExpiration>"
            )
        if rule.abort_upload_days is not None:
            parts.append(
                "<AbortIncompleteMultipartUpload>"
                + _tag("DaysAfterInitiation", rule.abort_upload_days)
                + "</AbortIncompleteMultipartUpload>"
            )
        parts.append("</Rule>")
        items.append("".join(parts))
    return _doc("LifecycleConfiguration", items)


def tagging(tags: Mapping[str, str]) -> bytes:
    """The Tagging body of GetObjectTagging and GetBucketTagging (an empty TagSet if none)."""
    items = (
        "<Tag>" + _tag("Key", key) + f"<Value>{escape(value)}</Value></Tag>"
        for key, value in tags.items()
    )
    return _doc("Tagging", ["<TagSet>", *items, "</TagSet>"])


# -- access control lists --------------------------------------------------------------------

XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
PERMISSIONS = frozenset({"FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP"})
#: Grantee ``xsi:type`` -> the element that identifies such a grantee.
GRANTEE_TYPES: Mapping[str, str] = MappingProxyType(
    {"CanonicalUser": "ID", "Group": "URI", "AmazonCustomerByEmail": "EmailAddress"}
)


@dataclass(frozen=True)
class Grant:
    """One grant of an access control list.

    Attributes:
        grantee_type: the grantee's ``xsi:type``: ``CanonicalUser``, ``Group`` or
            ``AmazonCustomerByEmail``.
        grantee: its ``ID``, ``URI`` or ``EmailAddress``.
        permission: ``FULL_CONTROL``, ``WRITE``, ``WRITE_ACP``, ``READ`` or ``READ_ACP``.
    """

    grantee_type: str
    grantee: str
    permission: str


#: Canned ACL -> the grants it adds to the owner's ``FULL_CONTROL``, in S3's order. The
#: bucket owner of ``bucket-owner-*`` is the object owner (one account owns everything).
CANNED_GRANTS: Mapping[str, tuple[Grant, ...]] = MappingProxyType(
    {
        "private": (),
        "public-read": (Grant("Group", ALL_USERS, "READ"),),
        "public-read-write": (
            Grant("Group", ALL_USERS, "READ"),
            Grant("Group", ALL_USERS, "WRITE"),
        ),
        "authenticated-read": (Grant("Group", AUTHENTICATED_USERS, "READ"),),
        "aws-exec-read": (),
        "bucket-owner-read": (),
        "bucket-owner-full-control": (),
        "log-delivery-write": (
            Grant("Group", LOG_DELIVERY, "WRITE"),
            Grant("Group", LOG_DELIVERY, "READ_ACP"),
        ),
    }
)


def _grant(grant: Grant, display_name: str | None = None) -> str:
    identifier = GRANTEE_TYPES[grant.grantee_type]
    return (
        f'<Grant><Grantee xmlns:xsi="{XSI_NAMESPACE}" xsi:type="{grant.grantee_type}">'
        f"{_tag(identifier, grant.grantee)}{_tag('DisplayName', display_name)}</Grantee>"
        f"{_tag('Permission', grant.permission)}</Grant>"
    )


def access_control_policy(owner: Owner, acl: str) -> bytes:
    """The AccessControlPolicy body (GetBucketAcl, GetObjectAcl) of canned ACL ``acl``: the
    owner's ``FULL_CONTROL`` then the grants the canned ACL adds."""
    grants = [_grant(Grant("CanonicalUser", owner.id, "FULL_CONTROL"), owner.display_name)]
    grants.extend(_grant(g) for g in CANNED_GRANTS[acl])
    return _doc(
        "AccessControlPolicy",
        [owner.xml(), f"<AccessControlList>{''.join(grants)}</AccessControlList>"],
    )


def canned_acl(grants: Iterable[Grant], owners: Collection[str]) -> str | None:
    """The canned ACL whose grants are exactly ``grants``, or ``None`` if there is none.

    A ``FULL_CONTROL`` grant to a canonical user in ``owners`` is the owner's own and does
    not count; no other grant is the owner's (``private`` when none is left).
    """
    rest = frozenset(
        g
        for g in grants
        if not (
            g.grantee_type == "CanonicalUser"
            and g.grantee in owners
            and g.permission == "FULL_CONTROL"
        )
    )
    return next((name for name, canned in CANNED_GRANTS.items() if frozenset(canned) == rest), None)


def error(
    err: S3Error,
    *,
    resource: str | None = None,
    request_id: str = "",
    host_id: str = "",
) -> bytes:
    """The ``<Error>`` body for ``err`` (no namespace, as S3 sends it)."""
    extra = "".join(_tag(k, v) for k, v in err.extra.items())
    return _doc(
        "Error",
        [
            _tag("Code", err.code),
            _tag("Message", err.message),
            _tag("Resource", resource if resource is not None else err.resource),
            extra,
            _tag("RequestId", request_id),
            _tag("HostId", host_id),
        ],
        namespace=False,
    )


# -- guarded parsing ------------------------------------------------------------------------


@dataclass
class XmlNode:
    """A parsed element: local tag name (prefix dropped), text pieces, children and
    attributes (by local name: ``xsi:type`` is ``type``)."""

    tag: str
    text: list[str] = field(default_factory=list)
    children: list[XmlNode] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def value(self) -> str:
        """The element's text."""
        return "".join(self.text)

    def find_all(self, tag: str) -> list[XmlNode]:
        """Every direct child named ``tag``."""
        return [c for c in self.children if c.tag == tag]

    def find(self, tag: str) -> XmlNode | None:
        """The direct child named ``tag``, if any (``MalformedXML`` if repeated)."""
        found = self.find_all(tag)
        if len(found) > 1:
            raise S3Error("MalformedXML")
        return found[0] if found else None


class _Refused(Exception):
    """Raised inside expat handlers to abort parsing."""


def _refuse(*_: object) -> None:
    raise _Refused


def parse_xml(body: bytes, *, max_bytes: int = MAX_XML_BYTES) -> XmlNode:
    """Parse ``body`` with expat, refusing DTDs, entities and oversized or deep documents.

    Raises:
        S3Error: ``MalformedXML`` (or ``InvalidRequest`` if larger than ``max_bytes``).
    """
    if len(body) > max_bytes:
        raise S3Error(
            "InvalidRequest",
            f"The XML you provided was larger than the maximum {max_bytes} bytes allowed.",
        )
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[XmlNode] = []
    roots: list[XmlNode] = []
    count = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > _MAX_ELEMENTS or len(stack) >= _MAX_DEPTH:
            raise _Refused
        node = XmlNode(
            name.rpartition(":")[2],
            attributes={k.rpartition(":")[2]: v for k, v in attrs.items()},
        )
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def data(text: str) -> None:
        if stack:
            stack[-1].text.append(text)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse  # type: ignore[assignment]
    parser.NotationDeclHandler = _refuse
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, _Refused, ValueError, RecursionError):
        raise S3Error("MalformedXML") from None
    if len(roots) != 1:
        raise S3Error("MalformedXML")
    return roots[0]


@dataclass(frozen=True)
class CompletedPart:
    """One ``<Part>`` of a CompleteMultipartUpload request."""

    part_number: int
    etag: str
    checksums: tuple[tuple[str, str], ...] = ()


def parse_complete_multipart_upload(body: bytes) -> list[CompletedPart]:
    """Parse a CompleteMultipartUpload body into its parts, checked to be ascending.

    Raises:
        S3Error: ``MalformedXML``, ``InvalidPartOrder``, ``InvalidArgument`` (part number
            outside 1..10000).
    """
    root = parse_xml(body)
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    parts: list[CompletedPart] = []
    for node in root.children:
        if node.tag != "Part":
            raise S3Error("MalformedXML")
        number_node, etag_node = node.find("PartNumber"), node.find("ETag")
        if number_node is None or etag_node is None:
            raise S3Error("MalformedXML")
        text = number_node.value().strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise S3Error("MalformedXML")
        number = int(text)
        if not 1 <= number <= MAX_PARTS:
            raise S3Error(
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                extra={"ArgumentName": "partNumber"},
            )
        if parts and number <= parts[-1].part_number:
            raise S3Error("InvalidPartOrder")
        checksums = tuple(
            (c.tag.removeprefix("Checksum").upper(), c.value().strip())
            for c in node.children
            if c.tag.startswith("Checksum")
        )
        parts.append(CompletedPart(number, etag_node.value().strip(), checksums))
    if not parts:
        raise S3Error("MalformedXML")
    return parts


@dataclass(frozen=True)
class ObjectIdentifier:
    """One ``<Object>`` of a DeleteObjects request."""

    key: str
    version_id: str | None = None


@dataclass(frozen=True)
class DeleteRequest:
    """A parsed DeleteObjects body."""

    objects: tuple[ObjectIdentifier, ...]
    quiet: bool = False


def parse_delete_objects(body: bytes) -> DeleteRequest:
    """Parse a DeleteObjects body (1..1000 objects).

    Raises:
        S3Error: ``MalformedXML``.
    """
    root = parse_xml(body, max_bytes=MAX_DELETE_XML_BYTES)
    if root.tag != "Delete":
        raise S3Error("MalformedXML")
    quiet_node = root.find("Quiet")
    quiet = False
    if quiet_node is not None:
        text = quiet_node.value().strip().lower()
        if text not in ("true", "false"):
            raise S3Error("MalformedXML")
        quiet = text == "true"
    objects = []
    for node in root.children:
        if node.tag == "Quiet":
            continue
        if node.tag != "Object":
            raise S3Error("MalformedXML")
        key_node = node.find("Key")
        if key_node is None:
            raise S3Error("MalformedXML")
        version = node.find("VersionId")
        objects.append(
            ObjectIdentifier(key_node.value(), version.value() if version is not None else None)
        )
    if not objects or len(objects) > MAX_DELETE_OBJECTS:
        raise S3Error("MalformedXML")
    return DeleteRequest(tuple(objects), quiet)


def parse_create_bucket(body: bytes) -> str | None:
    """The ``LocationConstraint`` of a CreateBucket body (empty body: ``None``).

    Raises:
        S3Error: ``MalformedXML``.
    """
    if not body.strip():
        return None
    root = parse_xml(body)
    if root.tag != "CreateBucketConfiguration":
        raise S3Error("MalformedXML")
    node = root.find("LocationConstraint")
    return node.value().strip() or None if node is not None else None


def _malformed_acl() -> S3Error:
    return S3Error("MalformedACLError")


def _only_child(node: XmlNode, tag: str) -> XmlNode | None:
    found = node.find_all(tag)
    if len(found) > 1:
        raise _malformed_acl()
    return found[0] if found else None


def _parse_grant(node: XmlNode) -> Grant:
    if node.tag != "Grant" or {c.tag for c in node.children} - {"Grantee", "Permission"}:
        raise _malformed_acl()
    grantee, permission = _only_child(node, "Grantee"), _only_child(node, "Permission")
    if grantee is None or permission is None:
        raise _malformed_acl()
    names = {c.tag for c in grantee.children}
    if len(names) != len(grantee.children) or names - {"DisplayName", *GRANTEE_TYPES.values()}:
        raise _malformed_acl()
    identifiers = [t for t, element in GRANTEE_TYPES.items() if element in names]
    kind = grantee.attributes.get("type", identifiers[0] if len(identifiers) == 1 else "")
    if identifiers != [kind] or ("DisplayName" in names and kind != "CanonicalUser"):
        raise _malformed_acl()
    identifier = _only_child(grantee, GRANTEE_TYPES[kind])
    assert identifier is not None
    value, right = identifier.value().strip(), permission.value().strip()
    if not value or right not in PERMISSIONS:
        raise _malformed_acl()
    return Grant(kind, value, right)


def parse_access_control_policy(body: bytes) -> list[Grant]:
    """The grants of an AccessControlPolicy body (PutBucketAcl, PutObjectAcl).

    The ``Owner`` element is checked for form only. A grantee's type is its ``xsi:type``, or
    else the one its identifying element (``ID``, ``URI``, ``EmailAddress``) implies.

    Raises:
        S3Error: ``MalformedACLError`` unless it is a well-formed policy;
            ``InvalidRequest`` above :data:`MAX_ACL_XML_BYTES`.
    """
    try:
        root = parse_xml(body, max_bytes=MAX_ACL_XML_BYTES)
    except S3Error as err:
        if err.code == "MalformedXML":
            raise _malformed_acl() from None
        raise
    if root.tag != "AccessControlPolicy" or {c.tag for c in root.children} - {
        "Owner",
        "AccessControlList",
    }:
        raise _malformed_acl()
    owner = _only_child(root, "Owner")
    if owner is not None and (
        {c.tag for c in owner.children} - {"ID", "DisplayName"}
        or len(owner.children) > 2
        or _only_child(owner, "ID") is None
    ):
        raise _malformed_acl()
    acl = _only_child(root, "AccessControlList")
    if acl is None:
        raise _malformed_acl()
    return [_parse_grant(node) for node in acl.children]


_CORS_RULE_ELEMENTS = frozenset(
    {"ID", "AllowedHeader", "AllowedMethod", "AllowedOrigin", "ExposeHeader", "MaxAgeSeconds"}
)


def _cors_invalid(message: str) -> S3Error:
    return S3Error("InvalidRequest", message)


def _parse_cors_rule(node: XmlNode) -> CorsRule:
    if node.tag != "CORSRule" or {c.tag for c in node.children} - _CORS_RULE_ELEMENTS:
        raise S3Error("MalformedXML")
    if any(c.children for c in node.children):
        raise S3Error("MalformedXML")

    def values(tag: str) -> tuple[str, ...]:
        return tuple(c.value() for c in node.find_all(tag))

    origins, methods = values("AllowedOrigin"), values("AllowedMethod")
    headers, expose = values("AllowedHeader"), values("ExposeHeader")
    if not origins or not methods:
        raise S3Error("MalformedXML")
    for method in methods:
        if method not in CORS_METHODS:
            raise _cors_invalid(
                f"Found unsupported HTTP method in CORS config. Unsupported method is {method}"
            )
    for origin in origins:
        if origin.count("*") > 1:
            raise _cors_invalid(f'AllowedOrigin "{origin}" can not have more than one wildcard.')
    for header in headers:
        if header.count("*") > 1:
            raise _cors_invalid(f'AllowedHeader "{header}" can not have more than one wildcard.')
    for header in expose:
        if "*" in header:
            raise _cors_invalid(
                f'ExposeHeader "{header}" contains wildcard. We currently do not support '
                "wildcard for ExposeHeader."
            )
    id_node, age_node = node.find("ID"), node.find("MaxAgeSeconds")
    rule_id = None if id_node is None else id_node.value()
    if rule_id is not None and len(rule_id) > MAX_CORS_RULE_ID:
        raise _cors_invalid(
            f"The ID value can be up to {MAX_CORS_RULE_ID} characters long. "
            f'Invalid ID is "{rule_id[:64]}"'
        )
    max_age = None
    if age_node is not None:
        text = age_node.value().strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) >= 2**31:
            raise S3Error("MalformedXML")
        max_age = int(text)
    return CorsRule(origins, methods, headers, expose, rule_id, max_age)


def parse_cors_configuration(body: bytes) -> tuple[CorsRule, ...]:
    """The rules of a PutBucketCors body, in order.

    Raises:
        S3Error: ``MalformedXML`` (not a CORSConfiguration of rules each with an origin and a
            method; a bad ``MaxAgeSeconds``); ``InvalidRequest`` (more than
            :data:`MAX_CORS_RULES` rules, a method S3 does not allow, two wildcards in an
            origin or allowed header, a wildcard in an exposed header, a long ``ID``, a body
            above :data:`MAX_CORS_XML_BYTES`).
    """
    root = parse_xml(body, max_bytes=MAX_CORS_XML_BYTES)
    if root.tag != "CORSConfiguration" or not root.children:
        raise S3Error("MalformedXML")
    if len(root.children) > MAX_CORS_RULES:
        raise _cors_invalid(
            f"The number of CORS rules should not exceed allowed limit of {MAX_CORS_RULES} rules."
        )
    return tuple(_parse_cors_rule(node) for node in root.children)


def _invalid_tag(message: str) -> S3Error:
    return S3Error("InvalidTag", message)


def check_tags(pairs: Iterable[tuple[str, str]], *, bucket: bool = False) -> dict[str, str]:
    """``pairs`` as a tag set, if S3 would accept it for an object (or a ``bucket``).

    Raises:
        S3Error: ``InvalidTag`` for too many tags (:data:`MAX_OBJECT_TAGS`,
            :data:`MAX_BUCKET_TAGS`), an empty or long key, a long value, a control
            character, a repeated key or a key starting with ``aws:``.
    """
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not key or not _tag_text(key):
            raise _invalid_tag("The TagKey you have provided is invalid")
        if not _tag_text(value):
            raise _invalid_tag("The TagValue you have provided is invalid")
        if len(key) > MAX_TAG_KEY:
            raise _invalid_tag(f"The TagKey you have provided is too long, max {MAX_TAG_KEY}")
        if len(value) > MAX_TAG_VALUE:
            raise _invalid_tag(f"The TagValue you have provided is too long, max {MAX_TAG_VALUE}")
        if key.startswith("aws:"):
            raise _invalid_tag(
                "System tags cannot be added/updated by requester"
                if bucket
                else "Your TagKey cannot be prefixed with aws:"
            )
        if key in tags:
            raise _invalid_tag("Cannot provide multiple Tags with the same key")
        tags[key] = value
    if bucket and len(tags) > MAX_BUCKET_TAGS:
        raise _invalid_tag(f"Bucket tag count cannot be greater than {MAX_BUCKET_TAGS}")
    if not bucket and len(tags) > MAX_OBJECT_TAGS:
        raise _invalid_tag(f"Object tags cannot be greater than {MAX_OBJECT_TAGS}")
    return tags


def _tag_text(text: str) -> bool:
    """Whether ``text`` can be a tag key or value: no control characters, surrogates or
    non-characters (they cannot be sent back in XML)."""
    return all(
        unicodedata.category(ch) not in ("Cc", "Cs") and ch not in "\ufffe\uffff" for ch in text
    )


def _parse_tag(node: XmlNode) -> tuple[str, str]:
    if (
        node.tag != "Tag"
        or len(node.children) != 2
        or {c.tag for c in node.children} != {"Key", "Value"}
    ):
        raise S3Error("MalformedXML")
    key, value = node.find("Key"), node.find("Value")
    if key is None or value is None or key.children or value.children:
        raise S3Error("MalformedXML")
    return key.value(), value.value()


def parse_tagging(body: bytes, *, bucket: bool = False) -> dict[str, str]:
    """The tag set of a PutObjectTagging (or PutBucketTagging, ``bucket``) body, in order.

    Raises:
        S3Error: ``MalformedXML`` unless it is a ``Tagging`` of one ``TagSet`` of ``Tag``
            elements, each with one ``Key`` and one ``Value``; ``InvalidTag`` (see
            :func:`check_tags`); ``InvalidRequest`` above :data:`MAX_TAGGING_XML_BYTES`.
    """
    root = parse_xml(body, max_bytes=MAX_TAGGING_XML_BYTES)
    if root.tag != "Tagging" or [c.tag for c in root.children] != ["TagSet"]:
        raise S3Error("MalformedXML")
    return check_tags([_parse_tag(node) for node in root.children[0].children], bucket=bucket)


# -- lifecycle ------------------------------------------------------------------------------

_RULE_ELEMENTS = frozenset(
    {
        "ID",
        "Status",
        "Filter",
        "Prefix",
        "Expiration",
        "Transition",
        "NoncurrentVersionTransition",
        "NoncurrentVersionExpiration",
        "AbortIncompleteMultipartUpload",
    }
)
_FILTER_ELEMENTS = frozenset(
    {"Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan", "And"}
)
_AND_ELEMENTS = frozenset({"Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan"})
#: Largest values of S3's ``Integer`` and ``Long`` fields.
_MAX_INTEGER = 2**31 - 1
_MAX_LONG = 2**63 - 1


def _malformed() -> S3Error:
    return S3Error("MalformedXML")


def _children(node: XmlNode, allowed: frozenset[str]) -> None:
    """Refuse (``MalformedXML``) a child of ``node`` not in ``allowed``."""
    if {c.tag for c in node.children} - allowed:
        raise _malformed()


def _text(node: XmlNode) -> str:
    """The text of an element that must hold only text (``MalformedXML`` otherwise)."""
    if node.children:
        raise _malformed()
    return node.value()


def _integer(node: XmlNode, maximum: int) -> int:
    """An integer element (``MalformedXML`` if it is none, or beyond ``maximum``)."""
    text = _text(node).strip()
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise _malformed()
    value = int(text)
    if abs(value) > maximum:
        raise _malformed()
    return value


def _positive(node: XmlNode, message: str) -> int:
    value = _integer(node, _MAX_INTEGER)
    if value <= 0:
        raise S3Error("InvalidArgument", message)
    return value


def _lifecycle_date(node: XmlNode) -> datetime:
    """An ``Expiration`` ``Date``: ISO 8601, at midnight UTC."""
    text = _text(node).strip()
    if not text or not text[0].isdigit():
        raise _malformed()
    try:
        when = datetime.fromisoformat(text)
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _malformed() from None
    if (when.hour, when.minute, when.second, when.microsecond) != (0, 0, 0, 0):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
    return when


def _filter_tags(nodes: Sequence[XmlNode]) -> tuple[tuple[str, str], ...]:
    pairs = [_parse_tag(node) for node in nodes]
    if len({k for k, _ in pairs}) != len(pairs):
        raise S3Error("InvalidRequest", "Duplicate Tag Keys are not allowed.")
    check_tags(pairs, bucket=True)
    return tuple(pairs)


def _predicates(node: XmlNode, form: FilterForm) -> LifecycleFilter:
    """The predicates directly under ``node`` (a ``Filter`` or an ``And``)."""
    prefix, greater, less = node.find("Prefix"), None, None
    found = node.find("ObjectSizeGreaterThan")
    if found is not None:
        greater = _integer(found, _MAX_LONG)
    found = node.find("ObjectSizeLessThan")
    if found is not None:
        less = _integer(found, _MAX_LONG)
    if greater is not None and greater < 0:
        raise S3Error("InvalidRequest", "'ObjectSizeGreaterThan' should not be negative")
    if less is not None and less <= 0:
        raise S3Error("InvalidRequest", "'ObjectSizeLessThan' must be a positive integer")
    if greater is not None and less is not None and greater >= less:
        raise S3Error(
            "InvalidRequest",
            f"Invalid filter: ObjectSizeLessThan ({less}) must be greater than "
            f"ObjectSizeGreaterThan ({greater})",
        )
    return LifecycleFilter(
        prefix=None if prefix is None else _text(prefix),
        tags=_filter_tags(node.find_all("Tag")),
        size_greater_than=greater,
        size_less_than=less,
        form=form,
    )


def _lifecycle_filter_of(rule: XmlNode) -> LifecycleFilter:
    legacy, node = rule.find("Prefix"), rule.find("Filter")
    if (legacy is None) == (node is None):  # S3 wants exactly one of the two
        raise _malformed()
    if legacy is not None:
        return LifecycleFilter(prefix=_text(legacy), form=FilterForm.LEGACY_PREFIX)
    assert node is not None
    _children(node, _FILTER_ELEMENTS)
    if len(node.children) > 1:  # several predicates go in an And
        raise _malformed()
    conjunction = node.find("And")
    if conjunction is None:
        return _predicates(node, FilterForm.FILTER)
    _children(conjunction, _AND_ELEMENTS)
    return _predicates(conjunction, FilterForm.AND)


def _expiration(node: XmlNode) -> Expiration:
    _children(node, frozenset({"Days", "Date", "ExpiredObjectDeleteMarker"}))
    days, date = node.find("Days"), node.find("Date")
    marker = node.find("ExpiredObjectDeleteMarker")
    if days is not None and date is not None:
        raise _malformed()
    if marker is not None and (days is not None or date is not None):
        raise S3Error(
            "InvalidRequest",
            "ExpiredObjectDeleteMarker cannot be specified with Days or Date in a Lifecycle "
            "Expiration Policy.",
        )
    if days is not None:
        return Expiration(
            days=_positive(days, "'Days' for Expiration action must be a positive integer")
        )
    if date is not None:
        return Expiration(date=_lifecycle_date(date))
    if marker is None:
        raise _malformed()
    text = _text(marker).strip()
    if text not in ("true", "false"):
        raise _malformed()
    return Expiration(expired_object_delete_marker=text == "true")


def _noncurrent_expiration(node: XmlNode) -> NoncurrentVersionExpiration:
    _children(node, frozenset({"NoncurrentDays", "NewerNoncurrentVersions"}))
    days, newer = node.find("NoncurrentDays"), node.find("NewerNoncurrentVersions")
    if days is None:
        raise _malformed()
    return NoncurrentVersionExpiration(
        _positive(
            days,
            "'NoncurrentDays' for NoncurrentVersionExpiration action must be a positive integer",
        ),
        None
        if newer is None
        else _positive(newer, "'NewerNoncurrentVersions' must be a positive integer"),
    )


def _abort_days(node: XmlNode) -> int:
    _children(node, frozenset({"DaysAfterInitiation"}))
    days = node.find("DaysAfterInitiation")
    if days is None:
        raise _malformed()
    return _positive(
        days,
        "'DaysAfterInitiation' for AbortIncompleteMultipartUpload action must be a "
        "positive integer",
    )


def _parse_lifecycle_rule(node: XmlNode) -> LifecycleRule:
    if node.tag != "Rule":
        raise _malformed()
    _children(node, _RULE_ELEMENTS)
    for name in ("Transition", "NoncurrentVersionTransition"):
        if node.find_all(name):
            raise S3Error(
                "NotImplemented",
                f"{name} is not implemented: there are no storage classes to move objects to",
            )
    id_node, status = node.find("ID"), node.find("Status")
    rule_id = None if id_node is None else _text(id_node)
    if rule_id is not None and len(rule_id) > MAX_RULE_ID:
        raise S3Error(
            "InvalidArgument", f"ID length should not exceed allowed limit of {MAX_RULE_ID}"
        )
    if status is None or _text(status) not in ("Enabled", "Disabled"):
        raise _malformed()
    rule_filter = _lifecycle_filter_of(node)
    expiration_node = node.find("Expiration")
    noncurrent_node = node.find("NoncurrentVersionExpiration")
    abort_node = node.find("AbortIncompleteMultipartUpload")
    if expiration_node is None and noncurrent_node is None and abort_node is None:
        raise S3Error("InvalidRequest", "At least one action needs to be specified in a rule")
    expiration = None if expiration_node is None else _expiration(expiration_node)
    abort_days = None if abort_node is None else _abort_days(abort_node)
    if abort_days is not None and (rule_filter.tags or rule_filter.has_size):
        raise S3Error(
            "InvalidRequest",
            "AbortIncompleteMultipartUpload cannot be specified with Tags or object size filters.",
        )
    if (
        expiration is not None
        and expiration.expired_object_delete_marker is not None
        and rule_filter.tags
    ):
        raise S3Error("InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with Tags.")
    return LifecycleRule(
        id=rule_id or new_rule_id(),
        enabled=_text(status) == "Enabled",
        filter=rule_filter,
        expiration=expiration,
        abort_upload_days=abort_days,
        noncurrent_expiration=None
        if noncurrent_node is None
        else _noncurrent_expiration(noncurrent_node),
    )


def parse_lifecycle_configuration(body: bytes) -> tuple[LifecycleRule, ...]:
    """The rules of a PutBucketLifecycleConfiguration body, in order (a rule without an
    ``ID`` gets a random one).

    Raises:
        S3Error: ``MalformedXML`` (not a LifecycleConfiguration of rules, each with a
            ``Status`` and exactly one of ``Filter`` and ``Prefix``; an ``Expiration`` with
            none or both of ``Days`` and ``Date``; a filter of several predicates outside an
            ``And``; a number or date that is none); ``InvalidArgument`` (a ``Days`` or
            ``DaysAfterInitiation`` not positive, a ``Date`` not at midnight UTC, an ``ID``
            longer than 255 characters, two rules with one ``ID``); ``InvalidRequest`` (more
            than :data:`~storage.lifecycle.MAX_RULES` rules, a rule without action,
            ``AbortIncompleteMultipartUpload`` with a tag or size filter, bad size bounds,
            repeated tag keys, a body above :data:`MAX_LIFECYCLE_XML_BYTES`); ``InvalidTag``;
            ``NotImplemented`` (``Transition``, ``NoncurrentVersionTransition``).
    """
    root = parse_xml(body, max_bytes=MAX_LIFECYCLE_XML_BYTES)
    if root.tag != "LifecycleConfiguration" or not root.children:
        raise _malformed()
    if len(root.children) > MAX_RULES:
        raise S3Error(
            "InvalidRequest",
            f"The number of lifecycle rules should not exceed allowed limit of {MAX_RULES} rules",
        )
    rules = tuple(_parse_lifecycle_rule(node) for node in root.children)
    if len({rule.id for rule in rules}) != len(rules):
        raise S3Error(
            "InvalidArgument", "Rule ID must be unique. Found same ID for more than one rule"
        )
    return rules
