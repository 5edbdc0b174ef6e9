"""S3 error vocabulary: one exception class, one table of codes, one edge mapping.

Every protocol module in ``interfaces.s3`` raises :class:`S3Error` and nothing else for a
bad request, so the server has a single ``except S3Error`` that renders the XML error body
(see :func:`interfaces.s3.xml.error`). HTTP statuses appear only in :data:`ERROR_TABLE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from storage import errors as storage_errors

#: code -> (HTTP status, default message); messages follow what AWS S3 answers.
ERROR_TABLE: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "AccessDenied": (403, "Access Denied"),
        "AccessForbidden": (  # S3's words, its typo included
            403,
            "CORSResponse: This CORS request is not allowed. This is usually because the "
            "evalution of Origin, request method / Access-Control-Request-Method or "
            "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
        ),
        "AuthorizationHeaderMalformed": (
            400,
            "The authorization header you provided is invalid.",
        ),
        "AuthorizationQueryParametersError": (
            400,
            "Error parsing the X-Amz-Credential parameter.",
        ),
        "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
        "BadRequest": (400, "Bad Request"),
        "BucketAlreadyExists": (
            409,
            "The requested bucket name is not available. The bucket namespace is shared by "
            "all users of the system. Please select a different name and try again.",
        ),
        "BucketAlreadyOwnedByYou": (
            409,
            "Your previous request to create the named bucket succeeded and you already own it.",
        ),
        "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
        "ConditionalRequestConflict": (
            409,
            "A conflicting operation occurred. If using PutObject you can retry the request. "
            "If using multipart upload you should initiate another CreateMultipartUpload "
            "request and re-upload each part.",
        ),
        "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
        "EntityTooSmall": (
            400,
            "Your proposed upload is smaller than the minimum allowed object size.",
        ),
        "ExpiredToken": (400, "The provided token has expired."),
        "IncompleteBody": (
            400,
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        ),
        "IllegalLocationConstraintException": (
            400,
            "The specified location constraint is incompatible for the region specific "
            "endpoint this request was sent to.",
        ),
        "InternalError": (500, "We encountered an internal error. Please try again."),
        "InvalidAccessKeyId": (
            403,
            "The AWS access key ID you provided does not exist in our records.",
        ),
        "InvalidArgument": (400, "Invalid Argument"),
        "InvalidBucketName": (400, "The specified bucket is not valid."),
        "InvalidChunkSizeError": (
            403,
            "Only the last chunk is allowed to have a size less than 8192 bytes",
        ),
        "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
        "IncorrectNumberOfFilesInPostRequest": (
            400,
            "POST requires exactly one file upload per request.",
        ),
        "InvalidPart": (
            400,
            "One or more of the specified parts could not be found. The part may not have "
            "been uploaded, or the specified entity tag may not match the part's entity tag.",
        ),
        "InvalidPartNumber": (416, "The requested partnumber is not satisfiable"),
        "InvalidPartOrder": (
            400,
            "The list of parts was not in ascending order. Parts must be ordered by part number.",
        ),
        "InvalidPolicyDocument": (
            400,
            "The content of the form does not meet the conditions specified in the policy "
            "document.",
        ),
        "InvalidRange": (416, "The requested range is not satisfiable"),
        "InvalidRequest": (400, "Invalid Request"),
        "InvalidURI": (400, "Couldn't parse the specified URI."),
        "InvalidStorageClass": (400, "The storage class you specified is not valid"),
        "InvalidTag": (
            400,
            "The tag provided was not a valid tag. This error can occur if the tag did not "
            "pass input validation.",
        ),
        "KeyTooLongError": (400, "Your key is too long"),
        "MalformedACLError": (
            400,
            "The XML you provided was not well-formed or did not validate against our "
            "published schema",
        ),
        "MalformedPOSTRequest": (
            400,
            "The body of your POST request is not well-formed multipart/form-data.",
        ),
        "MalformedXML": (
            400,
            "The XML you provided was not well-formed or did not validate against our "
            "published schema",
        ),
        "MaxPostPreDataLengthExceededError": (
            400,
            "Your POST request fields preceding the upload file were too large.",
        ),
        "MetadataTooLarge": (
            400,
            "Your metadata headers exceed the maximum allowed metadata size",
        ),
        "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
        "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
        "MissingSecurityHeader": (400, "Your request is missing a required header."),
        "NoSuchBucket": (404, "The specified bucket does not exist"),
        "NoSuchBucketPolicy": (404, "The bucket policy does not exist"),
        "NoSuchCORSConfiguration": (404, "The CORS configuration does not exist"),
        "NoSuchKey": (404, "The specified key does not exist."),
        "NoSuchLifecycleConfiguration": (404, "The lifecycle configuration does not exist"),
        "NoSuchPublicAccessBlockConfiguration": (
            404,
            "The public access block configuration was not found",
        ),
        "NoSuchTagSet": (404, "The TagSet does not exist"),
        "NoSuchUpload": (
            404,
            "The specified multipart upload does not exist. The upload ID might not be "
            "valid, or the multipart upload might have been aborted or completed.",
        ),
        "NoSuchVersion": (
            404,
            "The version ID specified in the request does not match an existing version.",
        ),
        "NoSuchWebsiteConfiguration": (
            404,
            "The specified bucket does not have a website configuration",
        ),
        "NotImplemented": (
            501,
            "A header you provided implies functionality that is not implemented",
        ),
        "NotModified": (304, "Not Modified"),
        "ObjectLockConfigurationNotFoundError": (
            404,
            "Object Lock configuration does not exist for this bucket",
        ),
        "OwnershipControlsNotFoundError": (
            404,
            "The bucket ownership controls were not found",
        ),
        "PreconditionFailed": (
            412,
            "At least one of the pre-conditions you specified did not hold",
        ),
        "RequestHeaderSectionTooLarge": (
            400,
            "Your request header section exceeds the maximum allowed size.",
        ),
        "RequestTimeTooSkewed": (
            403,
            "The difference between the request time and the current time is too large.",
        ),
        "RequestTimeout": (
            400,
            "Your socket connection to the server was not read from or written to within "
            "the timeout period.",
        ),
        "ReplicationConfigurationNotFoundError": (
            404,
            "The replication configuration was not found",
        ),
        "ServerSideEncryptionConfigurationNotFoundError": (
            404,
            "The server side encryption configuration was not found",
        ),
        "ServiceUnavailable": (503, "Please reduce your request rate."),
        "SignatureDoesNotMatch": (
            403,
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        ),
        "SlowDown": (503, "Please reduce your request rate."),
        "XAmzContentSHA256Mismatch": (
            400,
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ),
    }
)


class S3Error(Exception):
    """An S3 protocol error, rendered as the standard ``<Error>`` XML body.

    Args:
        code: an S3 error code; its HTTP status comes from :data:`ERROR_TABLE` (500 if absent).
        message: human-readable text; defaults to the table's message for ``code``.
        resource: the bucket/key the error is about, echoed as ``<Resource>``.
        extra: additional child elements of ``<Error>`` (e.g. ``ArgumentName``), in order.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        resource: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        status, default = ERROR_TABLE.get(code, (500, code))
        self.code = code
        self.status = status
        self.message = default if message is None else message
        self.resource = resource
        self.extra: Mapping[str, str] = MappingProxyType(dict(extra or {}))
        super().__init__(f"{code}: {self.message}")

    def __repr__(self) -> str:
        return f"S3Error({self.code!r}, {self.message!r})"

    def naming(
        self,
        *,
        bucket: str | None = None,
        key: str | None = None,
        upload_id: str | None = None,
    ) -> S3Error:
        """This error plus the element its code names its subject with (:data:`NAMED_BY`).

        Returns ``self`` when the code has no such element, it is already present, or the
        matching argument is ``None``.
        """
        element = NAMED_BY.get(self.code)
        if element is None or element in self.extra:
            return self
        value = {"BucketName": bucket, "Key": key, "UploadId": upload_id}[element]
        if value is None:
            return self
        return S3Error(
            self.code,
            self.message,
            resource=self.resource,
            extra={**self.extra, element: value},
        )


#: The element S3 adds to the ``<Error>`` body of a code, naming the bucket, key or upload the
#: error is about (boto3 returns it in ``response["Error"]``).
NAMED_BY: Mapping[str, str] = MappingProxyType(
    {
        "BucketAlreadyExists": "BucketName",
        "BucketAlreadyOwnedByYou": "BucketName",
        "BucketNotEmpty": "BucketName",
        "NoSuchBucket": "BucketName",
        "NoSuchCORSConfiguration": "BucketName",
        "NoSuchKey": "Key",
        "NoSuchLifecycleConfiguration": "BucketName",
        "NoSuchTagSet": "BucketName",
        "NoSuchUpload": "UploadId",
    }
)


#: Storage-layer error class -> S3 error code, used by :func:`from_storage_error`. The code
#: for ``NotFound`` depends on what was looked up, so the server passes ``not_found``.
STORAGE_ERRORS: Mapping[type[storage_errors.StorageError], str] = MappingProxyType(
    {
        storage_errors.NotFound: "NoSuchKey",
        storage_errors.NoSuchBucket: "NoSuchBucket",
        storage_errors.NoSuchKey: "NoSuchKey",
        storage_errors.NoSuchUpload: "NoSuchUpload",
        storage_errors.BucketAlreadyExists: "BucketAlreadyExists",
        storage_errors.BucketAlreadyOwnedByYou: "BucketAlreadyOwnedByYou",
        storage_errors.BucketNotEmpty: "BucketNotEmpty",
        storage_errors.PreconditionFailed: "PreconditionFailed",
        storage_errors.InvalidRange: "InvalidRange",
        storage_errors.InvalidPart: "InvalidPart",
        storage_errors.InvalidPartOrder: "InvalidPartOrder",
        storage_errors.EntityTooSmall: "EntityTooSmall",
        storage_errors.BadDigest: "BadDigest",
        storage_errors.KeyTooLong: "KeyTooLongError",
        storage_errors.Contention: "SlowDown",
        storage_errors.Conflict: "ConditionalRequestConflict",
        storage_errors.Unavailable: "ServiceUnavailable",
        storage_errors.PermissionDenied: "AccessDenied",
        storage_errors.Corrupt: "InternalError",
        storage_errors.NoSpace: "ServiceUnavailable",
        storage_errors.InvalidArgument: "InvalidArgument",
    }
)


def from_storage_error(
    exc: storage_errors.StorageError,
    *,
    not_found: str = "NoSuchKey",
    resource: str | None = None,
) -> S3Error:
    """Translate a storage-layer error into the S3 error the client sees.

    Args:
        exc: the error raised by ``storage``.
        not_found: the code for :class:`storage.errors.NotFound` (``NoSuchBucket``,
            ``NoSuchUpload``, ...), which depends on the operation.
        resource: echoed as ``<Resource>``.
    """
    for cls in type(exc).__mro__:
        code = STORAGE_ERRORS.get(cls)
        if code is not None:
            if cls is storage_errors.NotFound:
                code = not_found
            message = str(exc) if cls is storage_errors.InvalidArgument else None
            return S3Error(code, message, resource=resource)
    return S3Error("InternalError", resource=resource)
