"""The S3 request router: a pure function from (method, path, query, headers) to an endpoint.

Theory of operation
-------------------
Modelled on Garage's ``Endpoint::from_request``: no I/O, no storage, one table, tested
against the S3 API reference's request syntax for every supported operation.

1. **Addressing.** The ``Host`` header (port stripped, lower-cased) is compared with the
   configured base domains: ``BUCKET.BASE`` is virtual-hosted style (the whole path is the
   key); ``BASE`` itself, or any host that is not under a base domain (an IP address,
   ``localhost``), is path style (``/BUCKET/KEY``). The path is percent-decoded **once** and
   must be UTF-8; a literal ``+`` means a space, as in S3; the path is never normalised
   (``a//b/../c`` is a literal key, as in S3).
2. **Level.** No bucket: service level. A bucket and an empty key: bucket level. Otherwise
   object level. ``/bucket/`` is bucket level.
3. **Sub-resources.** Query parameters that select an operation (``uploads``, ``uploadId``,
   ``location``, ``versions``, ``list-type``, ``delete``, ``acl``, ``cors``, ``tagging``,
   ``lifecycle``, ``versioning`` and ``attributes`` for GET, ``partNumber`` for PUT) decide
   the endpoint together with the method: ``acl`` is GET or PUT only (``DELETE /bucket?acl``
   is ``MethodNotAllowed``, never a deletion), ``cors`` and ``lifecycle`` GET, PUT or DELETE
   (``DELETE /bucket?cors`` is DeleteBucketCors, never DeleteBucket), ``tagging`` GET, PUT or
   DELETE on a bucket or an object (``DELETE /bucket?tagging`` is DeleteBucketTagging,
   ``DELETE /bucket/key?tagging`` DeleteObjectTagging: never a deletion), and ``attributes``
   GET on an object (GetObjectAttributes). Configurations Ballast does not keep
   (``policy``, ``encryption``, ``website``, …) route for GET (answered as S3 answers a
   bucket where they were never set) and, where S3 has one, DELETE (nothing to remove).
   Sub-resources we know but do not implement for the method (PUT ``policy``, PUT
   ``versioning``, …: the sets :data:`BUCKET_UNSUPPORTED` and :data:`OBJECT_UNSUPPORTED`,
   less what the configuration tables route) yield :attr:`Op.UNSUPPORTED`, answered
   ``NotImplemented`` by the server. A bucket's
   sub-resource on an object's path (:data:`BUCKET_ONLY`: ``DELETE /b/k?cors``) is
   ``InvalidRequest``, never an argument of an object operation. Every other query
   parameter (``prefix``, ``max-keys``, ``x-id``, ``response-*``, ``X-Amz-*``, …) is an
   argument, kept in :attr:`Endpoint.query`.
   ``OPTIONS`` on a bucket or an object is a CORS preflight whatever the query: a browser
   sends it to the URL of the request it is about to make, presigned query included.
   ``POST`` on a bucket without a sub-resource is PostObject (a browser form upload,
   authenticated by the form, not by the request line or headers); ``POST /bucket?delete``
   is DeleteObjects, and a bucket sub-resource that has no POST (``uploads``, ``location``,
   ``versions``, ``list-type``) is ``MethodNotAllowed``.
4. **Headers** matter only for ``x-amz-copy-source``, which turns PutObject into CopyObject
   and UploadPart into UploadPartCopy.

A method that no row accepts is ``MethodNotAllowed``. The router raises only
:class:`~interfaces.s3.errors.S3Error`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_to_bytes

from .errors import S3Error
from .headers import Headers
from .names import validate_object_key


class Op(enum.Enum):
    """Every S3 operation the router recognises."""

    LIST_BUCKETS = "ListBuckets"
    CREATE_BUCKET = "CreateBucket"
    HEAD_BUCKET = "HeadBucket"
    DELETE_BUCKET = "DeleteBucket"
    GET_BUCKET_LOCATION = "GetBucketLocation"
    GET_BUCKET_ACL = "GetBucketAcl"
    PUT_BUCKET_ACL = "PutBucketAcl"
    GET_BUCKET_VERSIONING = "GetBucketVersioning"
    GET_BUCKET_CORS = "GetBucketCors"
    PUT_BUCKET_CORS = "PutBucketCors"
    DELETE_BUCKET_CORS = "DeleteBucketCors"
    GET_BUCKET_LIFECYCLE = "GetBucketLifecycleConfiguration"
    PUT_BUCKET_LIFECYCLE = "PutBucketLifecycleConfiguration"
    DELETE_BUCKET_LIFECYCLE = "DeleteBucketLifecycle"
    GET_BUCKET_TAGGING = "GetBucketTagging"
    PUT_BUCKET_TAGGING = "PutBucketTagging"
    DELETE_BUCKET_TAGGING = "DeleteBucketTagging"
    GET_BUCKET_POLICY = "GetBucketPolicy"
    DELETE_BUCKET_POLICY = "DeleteBucketPolicy"
    GET_BUCKET_POLICY_STATUS = "GetBucketPolicyStatus"
    GET_BUCKET_WEBSITE = "GetBucketWebsite"
    DELETE_BUCKET_WEBSITE = "DeleteBucketWebsite"
    GET_BUCKET_ENCRYPTION = "GetBucketEncryption"
    DELETE_BUCKET_ENCRYPTION = "DeleteBucketEncryption"
    GET_BUCKET_REPLICATION = "GetBucketReplication"
    DELETE_BUCKET_REPLICATION = "DeleteBucketReplication"
    GET_BUCKET_OWNERSHIP_CONTROLS = "GetBucketOwnershipControls"
    DELETE_BUCKET_OWNERSHIP_CONTROLS = "DeleteBucketOwnershipControls"
    GET_PUBLIC_ACCESS_BLOCK = "GetPublicAccessBlock"
    DELETE_PUBLIC_ACCESS_BLOCK = "DeletePublicAccessBlock"
    GET_OBJECT_LOCK_CONFIGURATION = "GetObjectLockConfiguration"
    GET_BUCKET_LOGGING = "GetBucketLogging"
    GET_BUCKET_REQUEST_PAYMENT = "GetBucketRequestPayment"
    GET_BUCKET_ACCELERATE_CONFIGURATION = "GetBucketAccelerateConfiguration"
    GET_BUCKET_NOTIFICATION_CONFIGURATION = "GetBucketNotificationConfiguration"
    CORS_PREFLIGHT = "PreflightRequest"
    LIST_OBJECTS = "ListObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    LIST_OBJECT_VERSIONS = "ListObjectVersions"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    DELETE_OBJECTS = "DeleteObjects"
    POST_OBJECT = "PostObject"
    PUT_OBJECT = "PutObject"
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    DELETE_OBJECT = "DeleteObject"
    COPY_OBJECT = "CopyObject"
    GET_OBJECT_ACL = "GetObjectAcl"
    PUT_OBJECT_ACL = "PutObjectAcl"
    GET_OBJECT_TAGGING = "GetObjectTagging"
    PUT_OBJECT_TAGGING = "PutObjectTagging"
    DELETE_OBJECT_TAGGING = "DeleteObjectTagging"
    GET_OBJECT_ATTRIBUTES = "GetObjectAttributes"
    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    UPLOAD_PART_COPY = "UploadPartCopy"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_PARTS = "ListParts"
    UNSUPPORTED = "Unsupported"


@dataclass(frozen=True)
class CopySource:
    """The decoded ``x-amz-copy-source`` header: source bucket, key and optional version."""

    bucket: str
    key: str
    version_id: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """A routed request.

    Attributes:
        op: the operation.
        bucket: the bucket name, ``None`` at service level.
        key: the object key (decoded), ``None`` unless object level.
        upload_id: ``uploadId`` for multipart operations.
        part_number: ``partNumber`` (1..10000) for UploadPart(Copy), or GetObject/HeadObject.
        version_id: ``versionId`` if given.
        copy_source: for CopyObject and UploadPartCopy.
        subresource: for :attr:`Op.UNSUPPORTED`, what was asked for (e.g. ``"acl"``).
        query: every query parameter, decoded, in order (first value wins in :meth:`param`).
        virtual_host: whether the bucket came from the Host header.
    """

    op: Op
    bucket: str | None = None
    key: str | None = None
    upload_id: str | None = None
    part_number: int | None = None
    version_id: str | None = None
    copy_source: CopySource | None = None
    subresource: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    virtual_host: bool = False

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``, or ``default``."""
        return next((v for k, v in self.query if k == name), default)

    def int_param(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        """Query parameter ``name`` as an integer, clamped to ``maximum`` (as S3 clamps
        ``max-keys`` to 1000), or ``default`` when absent.

        Raises:
            S3Error: ``InvalidArgument`` if it is not an integer >= ``minimum``.
        """
        return int_argument(name, self.param(name), default, minimum=minimum, maximum=maximum)

    @property
    def name(self) -> str:
        """The S3 operation name, e.g. ``"PutObject"``."""
        return self.op.value


#: Bucket sub-resources S3 defines that we do not implement.
BUCKET_UNSUPPORTED = frozenset(
    {
        "accelerate",
        "analytics",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "logging",
        "metadataConfiguration",
        "metadataTable",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "session",
        "versioning",
        "website",
    }
)
#: Sub-resources of buckets only: on an object's path they are refused, never taken for an
#: argument of an object operation.
BUCKET_ONLY = BUCKET_UNSUPPORTED | {
    "cors",
    "delete",
    "lifecycle",
    "list-type",
    "location",
    "versions",
}
#: Bucket sub-resources that select a GET operation (no POST operation has them).
_BUCKET_GET_ONLY = frozenset({"list-type", "location", "uploads", "versions"})
#: Object sub-resources S3 defines that we do not implement (for the methods
#: ``_OBJECT_CONFIG_OPS`` does not route).
OBJECT_UNSUPPORTED = frozenset(
    {
        "attributes",
        "legal-hold",
        "renameObject",
        "restore",
        "retention",
        "select",
        "torrent",
    }
)


def int_argument(
    name: str, text: str | None, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    """Argument ``name`` (a query parameter or header) as an integer, clamped to ``maximum``,
    or ``default`` when ``text`` is ``None``.

    Raises:
        S3Error: ``InvalidArgument`` if it is not an integer >= ``minimum``.
    """
    if text is None:
        return default
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise S3Error(
            "InvalidArgument",
            f"Provided {name} not an integer or within integer range",
            extra={"ArgumentName": name, "ArgumentValue": text[:64]},
        )
    value = int(stripped)
    if value < minimum:
        raise S3Error(
            "InvalidArgument",
            f"Argument {name} must be an integer >= {minimum}",
            extra={"ArgumentName": name, "ArgumentValue": text[:64]},
        )
    return value if maximum is None else min(value, maximum)


def route(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    *,
    base_domains: Sequence[str] = (),
) -> Endpoint:
    """Map a request to its S3 endpoint.

    Args:
        method: the HTTP method.
        raw_path: the path as sent, still percent-encoded.
        raw_query: the query string as sent, without ``?``.
        headers: the request headers (``Host``, ``x-amz-copy-source``).
        base_domains: domains under which ``BUCKET.DOMAIN`` is virtual-hosted addressing.

    Raises:
        S3Error: ``MethodNotAllowed``, ``InvalidURI``, ``InvalidArgument``,
            ``KeyTooLongError``, ``InvalidRequest``.
    """
    method = method.upper()
    # S3 reads a literal '+' in the path as a space (its console's object URLs rely on it);
    # SDKs always send '%2B' for a plus.
    path = _decode(raw_path.replace("+", " "))
    if not path.startswith("/"):
        raise S3Error("InvalidURI")
    query = _parse_query(raw_query)
    params: dict[str, str] = {}
    for name, value in query:
        params.setdefault(name, value)
    host_bucket = _host_bucket(headers.get("host"), base_domains)
    if host_bucket is not None:
        bucket: str | None = host_bucket
        key = path[1:]
    else:
        bucket, _, key = path[1:].partition("/")
    base = Endpoint(
        Op.UNSUPPORTED,
        bucket=bucket or None,
        query=query,
        virtual_host=host_bucket is not None,
        version_id=params.get("versionId"),
    )
    if not bucket:
        if method == "GET":
            return replace(base, op=Op.LIST_BUCKETS)
        raise S3Error("MethodNotAllowed", resource="/")
    if not key:
        return _bucket_endpoint(method, params, base)
    return _object_endpoint(method, key, params, headers, base)


def _bucket_endpoint(method: str, params: dict[str, str], base: Endpoint) -> Endpoint:
    def make(op: Op, **more: Any) -> Endpoint:
        return replace(base, op=op, **more)

    if method == "OPTIONS":
        return make(Op.CORS_PREFLIGHT)
    unsupported = sorted(
        name
        for name in BUCKET_UNSUPPORTED & params.keys()
        if method not in _BUCKET_CONFIG_OPS.get(name, {})
    )
    if unsupported and method in ("GET", "PUT", "DELETE", "POST", "HEAD"):
        return make(Op.UNSUPPORTED, subresource=unsupported[0])
    config = _config_op(_BUCKET_CONFIG_OPS, method, params)
    if config is not None:
        return make(config)
    if method == "GET":
        if "location" in params:
            return make(Op.GET_BUCKET_LOCATION)
        if "uploads" in params:
            return make(Op.LIST_MULTIPART_UPLOADS)
        if "versions" in params:
            return make(Op.LIST_OBJECT_VERSIONS)
        if "list-type" in params:
            if params["list-type"] != "2":
                raise S3Error(
                    "InvalidArgument",
                    "Invalid List Type specified",
                    extra={"ArgumentName": "list-type"},
                )
            return make(Op.LIST_OBJECTS_V2)
        return make(Op.LIST_OBJECTS)
    if method == "HEAD":
        return make(Op.HEAD_BUCKET)
    if method == "PUT":
        return make(Op.CREATE_BUCKET)
    if method == "DELETE":
        return make(Op.DELETE_BUCKET)
    if method == "POST":
        if "delete" in params:
            return make(Op.DELETE_OBJECTS)
        if _BUCKET_GET_ONLY & params.keys():  # ``POST /bucket?uploads``: never a form upload
            raise S3Error("MethodNotAllowed")
        return make(Op.POST_OBJECT)
    raise S3Error("MethodNotAllowed")


def _object_endpoint(
    method: str,
    key: str,
    params: dict[str, str],
    headers: Headers,
    base: Endpoint,
) -> Endpoint:
    def make(op: Op, **more: Any) -> Endpoint:
        return replace(base, op=op, key=key, **more)

    if method == "OPTIONS":
        return make(Op.CORS_PREFLIGHT)
    bucket_only = sorted(BUCKET_ONLY & params.keys())
    if bucket_only:  # never an argument of an object operation (``DELETE /b/k?cors``)
        raise S3Error(
            "InvalidRequest",
            f"{bucket_only[0]!r} is a sub-resource of buckets, not of objects",
        )
    unsupported = sorted(
        name
        for name in OBJECT_UNSUPPORTED & params.keys()
        if method not in _OBJECT_CONFIG_OPS.get(name, {})
    )
    if unsupported and method in ("GET", "PUT", "DELETE", "POST", "HEAD"):
        return make(Op.UNSUPPORTED, subresource=unsupported[0])
    config = _config_op(_OBJECT_CONFIG_OPS, method, params)
    if config is not None:
        return make(config)
    upload_id = params.get("uploadId")
    if upload_id is not None and not upload_id:
        raise S3Error(
            "InvalidArgument", "uploadId must not be empty", extra={"ArgumentName": "uploadId"}
        )
    part = _part_number(params.get("partNumber"))
    if method in ("GET", "HEAD"):
        if method == "GET" and upload_id is not None:
            return make(Op.LIST_PARTS, upload_id=upload_id)
        op = Op.GET_OBJECT if method == "GET" else Op.HEAD_OBJECT
        return make(op, part_number=part)
    if method == "PUT":
        validate_object_key(key)
        source = headers.get("x-amz-copy-source")
        copy = parse_copy_source(source) if source is not None else None
        if upload_id is not None or part is not None:
            if upload_id is None or part is None:
                raise S3Error("InvalidRequest", "UploadPart requires both partNumber and uploadId")
            op = Op.UPLOAD_PART if copy is None else Op.UPLOAD_PART_COPY
            return make(op, upload_id=upload_id, part_number=part, copy_source=copy)
        return make(Op.PUT_OBJECT if copy is None else Op.COPY_OBJECT, copy_source=copy)
    if method == "DELETE":
        if upload_id is not None:
            return make(Op.ABORT_MULTIPART_UPLOAD, upload_id=upload_id)
        return make(Op.DELETE_OBJECT)
    if method == "POST":
        if "uploads" in params:
            validate_object_key(key)
            return make(Op.CREATE_MULTIPART_UPLOAD)
        if upload_id is not None:
            return make(Op.COMPLETE_MULTIPART_UPLOAD, upload_id=upload_id)
        raise S3Error("MethodNotAllowed")
    raise S3Error("MethodNotAllowed")


#: Configuration sub-resources, the first present deciding: the operation of each method
#: (any other method is ``MethodNotAllowed``, never the bucket's or object's own operation).
_BUCKET_CONFIG_OPS: dict[str, dict[str, Op]] = {
    "acl": {"GET": Op.GET_BUCKET_ACL, "PUT": Op.PUT_BUCKET_ACL},
    "cors": {
        "GET": Op.GET_BUCKET_CORS,
        "PUT": Op.PUT_BUCKET_CORS,
        "DELETE": Op.DELETE_BUCKET_CORS,
    },
    "lifecycle": {
        "GET": Op.GET_BUCKET_LIFECYCLE,
        "PUT": Op.PUT_BUCKET_LIFECYCLE,
        "DELETE": Op.DELETE_BUCKET_LIFECYCLE,
    },
    "tagging": {
        "GET": Op.GET_BUCKET_TAGGING,
        "PUT": Op.PUT_BUCKET_TAGGING,
        "DELETE": Op.DELETE_BUCKET_TAGGING,
    },
    # Never enabled, never configurable: what S3 answers for a bucket where it was never set.
    "versioning": {"GET": Op.GET_BUCKET_VERSIONING},
    # Configurations Ballast does not keep: GET answers as S3 does for a bucket where they
    # were never set, DELETE has nothing to remove; PUT stays unsupported.
    "policy": {"GET": Op.GET_BUCKET_POLICY, "DELETE": Op.DELETE_BUCKET_POLICY},
    "policyStatus": {"GET": Op.GET_BUCKET_POLICY_STATUS},
    "website": {"GET": Op.GET_BUCKET_WEBSITE, "DELETE": Op.DELETE_BUCKET_WEBSITE},
    "encryption": {"GET": Op.GET_BUCKET_ENCRYPTION, "DELETE": Op.DELETE_BUCKET_ENCRYPTION},
    "replication": {"GET": Op.GET_BUCKET_REPLICATION, "DELETE": Op.DELETE_BUCKET_REPLICATION},
    "ownershipControls": {
        "GET": Op.GET_BUCKET_OWNERSHIP_CONTROLS,
        "DELETE": Op.DELETE_BUCKET_OWNERSHIP_CONTROLS,
    },
    "publicAccessBlock": {
        "GET": Op.GET_PUBLIC_ACCESS_BLOCK,
        "DELETE": Op.DELETE_PUBLIC_ACCESS_BLOCK,
    },
    "object-lock": {"GET": Op.GET_OBJECT_LOCK_CONFIGURATION},
    "logging": {"GET": Op.GET_BUCKET_LOGGING},
    "requestPayment": {"GET": Op.GET_BUCKET_REQUEST_PAYMENT},
    "accelerate": {"GET": Op.GET_BUCKET_ACCELERATE_CONFIGURATION},
    "notification": {"GET": Op.GET_BUCKET_NOTIFICATION_CONFIGURATION},
}
_OBJECT_CONFIG_OPS: dict[str, dict[str, Op]] = {
    "acl": {"GET": Op.GET_OBJECT_ACL, "PUT": Op.PUT_OBJECT_ACL},
    "tagging": {
        "GET": Op.GET_OBJECT_TAGGING,
        "PUT": Op.PUT_OBJECT_TAGGING,
        "DELETE": Op.DELETE_OBJECT_TAGGING,
    },
    # GET only: ``PUT /b/k?attributes`` and the like are ``OBJECT_UNSUPPORTED``.
    "attributes": {"GET": Op.GET_OBJECT_ATTRIBUTES},
}


def _config_op(table: dict[str, dict[str, Op]], method: str, params: dict[str, str]) -> Op | None:
    """The configuration operation ``params`` select in ``table`` (``None``: none does).

    Raises:
        S3Error: ``MethodNotAllowed`` for a method the sub-resource does not have.
    """
    for name, ops in table.items():
        if name in params:
            op = ops.get(method)
            if op is None:
                raise S3Error("MethodNotAllowed")
            return op
    return None


def parse_copy_source(value: str) -> CopySource:
    """Decode ``x-amz-copy-source`` (``[/]bucket/key[?versionId=ID]``, URL-encoded).

    Raises:
        S3Error: ``InvalidArgument`` if it does not name a bucket and a key.
    """
    path, _, qs = value.strip().partition("?")
    decoded = _decode(path).removeprefix("/")
    bucket, _, key = decoded.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            extra={"ArgumentName": "x-amz-copy-source"},
        )
    version_id = None
    for name, val in _parse_query(qs):
        if name == "versionId":
            version_id = val
        else:
            raise S3Error(
                "InvalidArgument",
                "Unsupported copy source parameter",
                extra={"ArgumentName": "x-amz-copy-source"},
            )
    return CopySource(bucket, key, version_id or None)


def _part_number(value: str | None) -> int | None:
    if value is None:
        return None
    if (
        not (value.isascii() and value.isdigit() and len(value) <= 5)
        or not 1 <= int(value) <= 10000
    ):
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            extra={"ArgumentName": "partNumber", "ArgumentValue": value[:64]},
        )
    return int(value)


def _decode(raw: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI") from None


def _parse_query(raw_query: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.append((_decode(name), _decode(value)))
    return tuple(out)


def _host_bucket(host: str | None, base_domains: Sequence[str]) -> str | None:
    if not host or not base_domains:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never virtual-hosted
        return None
    host = host.rpartition(":")[0] if ":" in host else host
    host = host.rstrip(".")
    # The longest domain first: with ``example.com`` and ``s3.example.com`` both configured,
    # ``bkt.s3.example.com`` is bucket ``bkt`` and ``s3.example.com`` itself no bucket.
    for base in sorted((b.lower().rstrip(".") for b in base_domains), key=len, reverse=True):
        if host == base:
            return None
        if host.endswith("." + base):
            return host[: -len(base) - 1]
    return None
