"""The S3 front end's sans-IO protocol pieces: routing, SigV4, aws-chunked, XML, errors.

Nothing here does I/O or touches storage; the ASGI server (a thin loop) calls, per request:

1. :func:`route` — which operation, bucket, key, upload id, part number;
2. :func:`verify_request` — who is asking and what the payload claim is;
3. :func:`decoder_for_request` — a :class:`ChunkedDecoder` for ``STREAMING-*`` bodies;
   otherwise it hashes the body and calls :func:`check_payload_sha256`;
4. the helpers in :mod:`.ranges`, :mod:`.conditions`, :mod:`.etag`, :mod:`.names`,
   :mod:`.cors` (a bucket's CORS rules, stored as :class:`storage.object_records.CorsRule`
   records, applied to a request), and the builders/parsers in :mod:`.xml`;

and renders any :class:`S3Error` with :func:`interfaces.s3.xml.error` and ``err.status``.
"""

from __future__ import annotations

from .chunked import (
    NEED_DATA,
    ChunkedDecoder,
    Data,
    EndOfMessage,
    Trailers,
    decoder_for_request,
    stored_content_encoding,
)
from .conditions import check_read_preconditions, check_write_preconditions
from .errors import ERROR_TABLE, STORAGE_ERRORS, S3Error, from_storage_error
from .headers import Headers
from .names import validate_bucket_name, validate_object_key
from .ranges import ByteRange, parse_copy_source_range, parse_range
from .router import CopySource, Endpoint, Op, parse_copy_source, route
from .sigv4 import (
    AuthMethod,
    AuthResult,
    PayloadKind,
    SigningContext,
    check_payload_sha256,
    verify_request,
)

__all__ = [
    "ERROR_TABLE",
    "NEED_DATA",
    "STORAGE_ERRORS",
    "AuthMethod",
    "AuthResult",
    "ByteRange",
    "ChunkedDecoder",
    "CopySource",
    "Data",
    "EndOfMessage",
    "Endpoint",
    "Headers",
    "Op",
    "PayloadKind",
    "S3Error",
    "SigningContext",
    "Trailers",
    "check_payload_sha256",
    "check_read_preconditions",
    "check_write_preconditions",
    "decoder_for_request",
    "from_storage_error",
    "parse_copy_source",
    "parse_copy_source_range",
    "parse_range",
    "route",
    "stored_content_encoding",
    "validate_bucket_name",
    "validate_object_key",
    "verify_request",
]
