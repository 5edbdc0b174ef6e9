"""AWS Signature Version 4 verification for S3 requests (sans-IO).

Theory of operation
-------------------
A request is authenticated in exactly one of three ways, decided by what it carries:

* **header auth** — ``Authorization: AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/s3/aws4_request,
  SignedHeaders=a;b, Signature=HEX``; the time comes from ``x-amz-date`` (or ``Date``) and must
  be within :data:`MAX_SKEW` of ``now``; ``x-amz-content-sha256`` is mandatory and is the
  payload hash of the canonical request;
* **query auth** (presigned URL) — ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires`` (1 s .. 7 days), ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` in the query;
  the payload hash is ``UNSIGNED-PAYLOAD`` unless an ``x-amz-content-sha256`` header is sent;
* **anonymous** — none of the above: the identity is anonymous and the server decides by ACL;
* **legacy SigV2** (``Authorization: AWS AK:SIG`` or ``?AWSAccessKeyId&Expires&Signature``,
  HMAC-SHA1, see the section at the end) — accepted unless ``allow_sigv2=False``, because
  boto3's ``generate_presigned_url`` still emits it by default for us-east-1.

Carrying more than one mechanism (header plus query parameters) is ``InvalidArgument``, and so
is an ``Authorization`` header of any other scheme (``Basic``, ``Bearer``...: "Unsupported
Authorization Type", as S3 answers); a malformed ``AWS4-HMAC-SHA256`` header is
``AuthorizationHeaderMalformed``.

The signature is recomputed as the SigV4 specification says (sources: the S3 API reference,
"Authenticating Requests (AWS Signature Version 4)" and its pages on header auth, query auth,
chunked uploads and trailing headers):

  canonical request = METHOD \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n
                      SignedHeaders \\n PayloadHash
  string to sign    = "AWS4-HMAC-SHA256" \\n AMZDATE \\n SCOPE \\n hex(sha256(canonical request))
  signing key       = HMAC chain "AWS4"+secret -> date -> region -> service -> "aws4_request"

S3-specific rules: the canonical URI is the path URI-encoded **once** (no double encoding, no
``.``/``..`` or ``//`` normalisation). We decode the raw path the client sent and re-encode it
with the AWS rules (unreserved ``A-Za-z0-9-._~`` kept, ``/`` kept, everything else ``%XX``
upper-case; a literal ``+`` in the path is a space, as S3 reads it). A client that signed
its literal path with a different but valid escaping is also accepted (second candidate),
since either way the signature covers the bytes sent.
The canonical query sorts the parameters by encoded name then value, each decoded (``+`` is a
literal plus, not a space) and re-encoded with the same rules, ``=`` always present.
Header values are trimmed and runs of spaces folded; repeated headers are joined with ``,``.
Every ``x-amz-*`` header present must be signed (header auth), and ``host`` always.

Signatures are compared with :func:`hmac.compare_digest`. The result, :class:`AuthResult`,
says who the caller is and what the payload claim is; for ``STREAMING-*`` payloads it carries
a :class:`SigningContext` (signing key, scope, date, seed signature) with which
:mod:`interfaces.s3.chunked` verifies each chunk's signature. A hex SHA-256 claim must be
checked by the server while the body streams (``XAmzContentSHA256Mismatch`` on mismatch).
Nothing here performs I/O; the secret lookup is a plain callback.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_to_bytes

from .errors import S3Error
from .headers import Headers

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: Largest allowed difference between the request time and ``now`` (S3: 15 minutes).
MAX_SKEW = timedelta(minutes=15)
#: Longest presigned URL lifetime S3 accepts (7 days).
MAX_EXPIRES = 7 * 24 * 3600

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_ENCODE_TABLE = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SIG_RE = re.compile(r"[0-9a-f]{64}")
_SPACES = re.compile(r" +")
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_RE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
#: A path made of unreserved characters and slashes is its own canonical URI.
_PLAIN_PATH_RE = re.compile(r"/[A-Za-z0-9\-._~/]*")
_QUERY_AUTH_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


class PayloadKind(enum.Enum):
    """What the request claims about its body."""

    #: ``x-amz-content-sha256`` is a hex digest; the server must check it as the body streams.
    SHA256 = "sha256"
    #: ``UNSIGNED-PAYLOAD``: the body is not covered by the signature.
    UNSIGNED = "unsigned"
    #: ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: aws-chunked, every chunk signed.
    STREAMING_SIGNED = "streaming-signed"
    #: ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``: signed chunks, then signed trailers.
    STREAMING_SIGNED_TRAILER = "streaming-signed-trailer"
    #: ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: aws-chunked without signatures, then trailers.
    STREAMING_UNSIGNED_TRAILER = "streaming-unsigned-trailer"

    @property
    def streaming(self) -> bool:
        """Whether the body is aws-chunked encoded."""
        return self in (
            PayloadKind.STREAMING_SIGNED,
            PayloadKind.STREAMING_SIGNED_TRAILER,
            PayloadKind.STREAMING_UNSIGNED_TRAILER,
        )

    @property
    def has_trailer(self) -> bool:
        """Whether trailing headers follow the final chunk."""
        return self in (
            PayloadKind.STREAMING_SIGNED_TRAILER,
            PayloadKind.STREAMING_UNSIGNED_TRAILER,
        )


class AuthMethod(enum.Enum):
    """How the request was authenticated."""

    HEADER = "header"
    QUERY = "query"
    ANONYMOUS = "anonymous"
    #: A browser form (PostObject): the policy's signature, checked by :mod:`.post_policy`.
    POST_POLICY = "post-policy"


@dataclass(frozen=True)
class SigningContext:
    """What chunk and trailer signatures are chained from (see :mod:`.chunked`).

    Attributes:
        signing_key: the derived SigV4 key for ``scope``.
        amz_date: the request timestamp, ``YYYYMMDDTHHMMSSZ``.
        scope: ``DATE/REGION/SERVICE/aws4_request``.
        seed_signature: the request's own signature, the first link of the chain.
    """

    signing_key: bytes
    amz_date: str
    scope: str
    seed_signature: str

    def __repr__(self) -> str:  # never print the key
        return f"SigningContext(scope={self.scope!r}, seed_signature={self.seed_signature!r})"


@dataclass(frozen=True)
class AuthResult:
    """The outcome of :func:`verify_request`.

    Attributes:
        access_key: the authenticated access key id, or ``None`` for an anonymous request.
        method: header, query (presigned) or anonymous.
        payload: the body claim.
        content_sha256: for :attr:`PayloadKind.SHA256`, the lower-case hex digest the body
            must hash to; otherwise ``None``.
        signing: for signed streaming payloads, what chunk signatures chain from.
        region: the region named in the credential scope (``None`` when anonymous or V2).
        signature_version: 4, or 2 for a legacy SigV2 request (see :func:`verify_request`).
    """

    access_key: str | None
    method: AuthMethod
    payload: PayloadKind
    content_sha256: str | None = None
    signing: SigningContext | None = None
    region: str | None = None
    signature_version: int = 4

    @property
    def anonymous(self) -> bool:
        """True when the request carried no credentials."""
        return self.access_key is None


SecretLookup = Callable[[str], str | None]


# -- building blocks (also used by tests and by anything that signs) -------------------------


def uri_encode(data: bytes | str, *, keep_slash: bool = False) -> str:
    """URI-encode bytes the way SigV4 requires (unreserved kept, ``%XX`` upper-case)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    out = "".join(_ENCODE_TABLE[b] for b in raw)
    return out.replace("%2F", "/") if keep_slash else out


def canonical_uri(raw_path: str) -> str:
    """The S3 canonical URI of a raw path: decoded once (``+`` is a space), re-encoded once.

    Raises:
        S3Error: ``InvalidURI`` if the path does not start with ``/``.
    """
    if _PLAIN_PATH_RE.fullmatch(raw_path):
        return raw_path  # nothing to decode, nothing to encode
    if not raw_path.startswith("/"):
        raise S3Error("InvalidURI")
    # A literal '+' in an S3 path is a space (S3 canonicalises it as %20).
    return uri_encode(unquote_to_bytes(raw_path.replace("+", " ")), keep_slash=True)


def canonical_query(raw_query: str, *, exclude: Iterable[str] = ()) -> str:
    """The canonical query string of a raw query: each pair decoded, re-encoded and sorted."""
    excluded = set(exclude)
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        dname = unquote_to_bytes(name)
        if dname.decode("latin-1") in excluded:
            continue
        pairs.append((uri_encode(dname), uri_encode(unquote_to_bytes(value))))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_headers(headers: Headers, signed: Iterable[str]) -> str:
    """The canonical headers block (each ``name:value\\n``) for the signed header names.

    Raises:
        S3Error: ``AccessDenied`` if a signed header is absent from the request.
    """
    lines = []
    for name in signed:
        values = headers.get_all(name)
        if not values:
            raise S3Error("AccessDenied", f"Signed header '{name}' is missing from the request")
        joined = ",".join(
            _SPACES.sub(" ", v.strip(" \t")) if "  " in v else v.strip(" \t") for v in values
        )
        lines.append(f"{name}:{joined}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers_block: str,
    signed_headers: str,
    payload_hash: str,
) -> str:
    """Assemble the canonical request from its already-canonical parts."""
    return f"{method}\n{uri}\n{query}\n{headers_block}\n{signed_headers}\n{payload_hash}"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The SigV4 string to sign for a canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@functools.lru_cache(maxsize=256)
def derive_signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """Derive the SigV4 signing key for ``date`` (``YYYYMMDD``), region and service.

    Cached: a key is valid for a whole day, region and service (AWS's SDKs cache it the
    same way), so each request pays one HMAC for its signature instead of five.
    """
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("utf-8"), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode("utf-8"), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def sign(signing_key: bytes, string: str) -> str:
    """Hex HMAC-SHA256 of ``string`` under ``signing_key``."""
    return hmac.digest(signing_key, string.encode("utf-8"), "sha256").hex()


def check_payload_sha256(auth: AuthResult, digest: bytes) -> None:
    """After the body streamed, check it against an ``x-amz-content-sha256`` hex claim.

    Args:
        auth: the result of :func:`verify_request`.
        digest: the raw SHA-256 of the received body (ignored unless the claim is a digest).

    Raises:
        S3Error: ``XAmzContentSHA256Mismatch``.
    """
    if auth.content_sha256 is None:
        return
    if not hmac.compare_digest(auth.content_sha256, digest.hex()):
        raise S3Error(
            "XAmzContentSHA256Mismatch",
            extra={
                "ClientComputedContentSHA256": auth.content_sha256,
                "S3ComputedContentSHA256": digest.hex(),
            },
        )


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    lookup_secret: SecretLookup,
    now: datetime,
    *,
    region: str | None = None,
    service: str = "s3",
    virtual_host_bucket: str | None = None,
    allow_sigv2: bool = True,
) -> AuthResult:
    """Authenticate an S3 request signed with SigV4 (header or presigned) or anonymous.

    Args:
        method: the HTTP method, e.g. ``"GET"``.
        raw_path: the request path exactly as sent (still percent-encoded; ASGI ``raw_path``).
        raw_query: the query string exactly as sent, without ``?``.
        headers: the request headers.
        lookup_secret: maps an access key id to its secret, or ``None`` if unknown.
        now: the current time (timezone-aware, or naive UTC).
        region: the region this endpoint answers for; ``None`` accepts any region.
        service: the service name expected in the credential scope.
        virtual_host_bucket: the bucket taken from the Host header, if virtual-hosted
            (SigV2 signs ``/bucket/key`` whatever the addressing style).
        allow_sigv2: accept legacy Signature Version 2 (``Authorization: AWS AK:SIG`` and
            ``?AWSAccessKeyId=&Expires=&Signature=``), which boto3 still uses by default for
            presigned URLs in us-east-1. When false such requests get ``InvalidRequest``.

    Returns:
        Who the caller is and what the payload claim is.

    Raises:
        S3Error: ``AccessDenied``, ``SignatureDoesNotMatch``, ``InvalidAccessKeyId``,
            ``RequestTimeTooSkewed``, ``AuthorizationHeaderMalformed``,
            ``AuthorizationQueryParametersError``, ``InvalidRequest``, ``InvalidArgument``,
            ``NotImplemented``; never anything else.
    """
    try:
        return _verify(
            method,
            raw_path,
            raw_query,
            headers,
            lookup_secret,
            now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC),
            region,
            service,
            virtual_host_bucket,
            allow_sigv2,
        )
    except S3Error:
        raise
    except (ValueError, UnicodeError, OverflowError) as exc:  # defensive: garbage in
        raise S3Error("AccessDenied", f"Malformed request: {exc}") from None


def _verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    lookup_secret: SecretLookup,
    now: datetime,
    region: str | None,
    service: str,
    virtual_host_bucket: str | None,
    allow_sigv2: bool,
) -> AuthResult:
    authorization = headers.get("authorization")
    query = _parse_query(raw_query)
    v4_query = any(p in query for p in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"))
    v2_query = "AWSAccessKeyId" in query or "Signature" in query
    if (authorization is not None and (v4_query or v2_query)) or (v4_query and v2_query):
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            extra={"ArgumentName": "Authorization"},
        )
    if (authorization or "").startswith("AWS ") or v2_query:
        if not allow_sigv2:
            raise S3Error(
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. Please use "
                "AWS4-HMAC-SHA256.",
            )
        resources = _v2_resources(raw_path, raw_query, virtual_host_bucket)
        if authorization is not None:
            return _verify_v2_header(method, resources, headers, authorization, lookup_secret, now)
        return _verify_v2_query(method, resources, query, headers, lookup_secret, now)
    if authorization is not None:
        return _verify_header(
            method,
            raw_path,
            raw_query,
            headers,
            authorization,
            lookup_secret,
            now,
            region,
            service,
        )
    if v4_query:
        return _verify_query(
            method, raw_path, raw_query, query, headers, lookup_secret, now, region, service
        )
    claim = headers.get("x-amz-content-sha256")
    if claim is not None and _HEX64.fullmatch(claim):
        return AuthResult(None, AuthMethod.ANONYMOUS, PayloadKind.SHA256, claim.lower())
    return AuthResult(None, AuthMethod.ANONYMOUS, PayloadKind.UNSIGNED)


def _parse_query(raw_query: str) -> dict[str, str]:
    """First value of each query parameter, decoded (``+`` stays a plus)."""
    out: dict[str, str] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_to_bytes(name).decode("utf-8", "replace")
        out.setdefault(key, unquote_to_bytes(value).decode("utf-8", "replace"))
    return out


def parse_credential(value: str, error: str) -> _Credential:
    """Split a credential (``AKID/YYYYMMDD/region/service/aws4_request``); a malformed one
    raises the S3 error ``error``."""
    parts = value.split("/")
    if len(parts) != 5 or not all(parts):
        raise S3Error(
            error,
            'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/'
            'REGION/SERVICE/aws4_request".',
        )
    access_key, date, cred_region, cred_service, terminal = parts
    if terminal != "aws4_request":
        raise S3Error(
            error,
            f"the Credential is mal-formed; incorrect terminal '{terminal}'. "
            "This endpoint uses 'aws4_request'.",
        )
    if len(date) != 8 or not date.isascii() or not date.isdigit():
        raise S3Error(
            error,
            f"the Credential is mal-formed; incorrect date format '{date}'. "
            "This date in the credential must be in the format 'yyyyMMdd'.",
        )
    return _Credential(access_key, date, cred_region, cred_service)


def check_scope(
    cred: _Credential, amz_date: str, region: str | None, service: str, error: str
) -> None:
    """Check the credential's scope against the request's date, region and service; a
    mismatch raises the S3 error ``error``."""
    if cred.date != amz_date[:8]:
        raise S3Error(
            error,
            f'Invalid credential date "{cred.date}". This date is not the '
            'same as X-Amz-Date: "' + amz_date[:8] + '".',
        )
    if region is not None and cred.region != region:
        raise S3Error(
            error,
            f"the region '{cred.region}' is wrong; expecting '{region}'",
            extra={"Region": region},
        )
    if cred.service != service:
        raise S3Error(
            error,
            f"the Credential is mal-formed; incorrect service "
            f"'{cred.service}'. This endpoint belongs to '{service}'.",
        )


def parse_amz_date(value: str) -> datetime:
    """Parse an ``X-Amz-Date`` value (``YYYYMMDDTHHMMSSZ``, UTC); raises ``ValueError`` if
    it is malformed (the caller picks the S3 error)."""
    # ``YYYYMMDDTHHMMSSZ``, parsed by hand: ``strptime`` costs more than the whole HMAC.
    match = _AMZ_DATE_RE.fullmatch(value)
    if match is None:
        raise ValueError("bad x-amz-date")
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)  # ValueError if bad


def _parse_signed_headers(value: str, error: str) -> list[str]:
    names = value.split(";")
    if not value or any(not n or n != n.lower() or n != n.strip() for n in names):
        raise S3Error(error, "SignedHeaders is malformed")
    if "host" not in names:
        raise S3Error(error, "SignedHeaders must include 'host'")
    return names


def secret_for(access_key: str, lookup_secret: SecretLookup) -> str:
    """The secret of ``access_key``; an unknown key raises ``InvalidAccessKeyId``."""
    secret = lookup_secret(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": access_key})
    return secret


def _uri_candidates(raw_path: str) -> list[str]:
    uri = canonical_uri(raw_path)
    return [uri] if uri == raw_path else [uri, raw_path]


def _match_signature(
    candidates: list[str],
    signing_key: bytes,
    amz_date: str,
    scope: str,
    make_canonical: Callable[[str], str],
    claimed: str,
) -> None:
    ok = False
    first_canonical = ""
    for uri in candidates:
        canonical = make_canonical(uri)
        first_canonical = first_canonical or canonical
        expected = sign(signing_key, string_to_sign(amz_date, scope, canonical))
        ok |= hmac.compare_digest(expected, claimed)
    if not ok:
        raise S3Error(
            "SignatureDoesNotMatch",
            extra={
                "StringToSign": string_to_sign(amz_date, scope, first_canonical),
                "CanonicalRequest": first_canonical,
            },
        )


def _payload_kind(claim: str) -> PayloadKind:
    if claim == UNSIGNED_PAYLOAD:
        return PayloadKind.UNSIGNED
    if claim == STREAMING_SIGNED:
        return PayloadKind.STREAMING_SIGNED
    if claim == STREAMING_SIGNED_TRAILER:
        return PayloadKind.STREAMING_SIGNED_TRAILER
    if claim == STREAMING_UNSIGNED_TRAILER:
        return PayloadKind.STREAMING_UNSIGNED_TRAILER
    if _HEX64.fullmatch(claim):
        return PayloadKind.SHA256
    if claim.startswith("STREAMING-"):
        raise S3Error(
            "NotImplemented",
            f"x-amz-content-sha256 '{claim}' is not supported",
            extra={"Header": "x-amz-content-sha256"},
        )
    raise S3Error(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER or a "
        "valid sha256 value.",
        extra={"ArgumentName": "x-amz-content-sha256", "ArgumentValue": claim[:200]},
    )


def _parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS" or algorithm.startswith("AWS4-"):
            raise S3Error(
                "InvalidRequest",
                "The authorization mechanism you have provided is "
                "not supported. Please use AWS4-HMAC-SHA256.",
            )
        raise S3Error(
            "InvalidArgument",
            "Unsupported Authorization Type",
            extra={"ArgumentName": "Authorization", "ArgumentValue": value[:200]},
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, val = item.strip().partition("=")
        if not eq or name in fields:
            raise S3Error(
                "AuthorizationHeaderMalformed",
                f"The authorization header is malformed; '{item.strip()[:100]}'",
            )
        fields[name] = val
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise S3Error(
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; the authorization header "
            "requires three components: Credential, SignedHeaders, and Signature.",
        )
    return algorithm, fields


def _verify_header(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    authorization: str,
    lookup_secret: SecretLookup,
    now: datetime,
    region: str | None,
    service: str,
) -> AuthResult:
    error = "AuthorizationHeaderMalformed"
    _, fields = _parse_authorization(authorization)
    cred = parse_credential(fields["Credential"], error)
    signed = _parse_signed_headers(fields["SignedHeaders"], error)
    signature = fields["Signature"]
    if not _SIG_RE.fullmatch(signature):
        raise S3Error(error, "The authorization header is malformed; invalid Signature")
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        try:
            when = parse_amz_date(amz_date)
        except ValueError:
            raise S3Error(
                "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
            ) from None
    else:
        http_date = headers.get("date")
        if http_date is None:
            raise S3Error(
                "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
            )
        when = _parse_http_date(http_date)
        amz_date = when.strftime(_AMZ_DATE_FORMAT)
    check_scope(cred, amz_date, region, service, error)
    if abs(now - when) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            extra={
                "RequestTime": amz_date,
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "MaxAllowedSkewMilliseconds": "900000",
            },
        )
    claim = headers.get("x-amz-content-sha256")
    if claim is None:
        raise S3Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    kind = _payload_kind(claim)
    signed_set = set(signed)
    unsigned_amz = sorted(
        {name for name, _ in headers if name.startswith("x-amz-") and name not in signed_set}
    )
    if unsigned_amz:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            extra={"HeadersNotSigned": ", ".join(unsigned_amz)},
        )
    secret = secret_for(cred.access_key, lookup_secret)
    key = derive_signing_key(secret, cred.date, cred.region, cred.service)
    block = canonical_headers(headers, signed)
    query = canonical_query(raw_query)
    signed_str = fields["SignedHeaders"]
    _match_signature(
        _uri_candidates(raw_path),
        key,
        amz_date,
        cred.scope,
        lambda uri: canonical_request(method, uri, query, block, signed_str, claim),
        signature,
    )
    signing = None
    if kind in (PayloadKind.STREAMING_SIGNED, PayloadKind.STREAMING_SIGNED_TRAILER):
        signing = SigningContext(key, amz_date, cred.scope, signature)
    sha = claim.lower() if kind is PayloadKind.SHA256 else None
    return AuthResult(cred.access_key, AuthMethod.HEADER, kind, sha, signing, cred.region)


def _verify_query(
    method: str,
    raw_path: str,
    raw_query: str,
    query: dict[str, str],
    headers: Headers,
    lookup_secret: SecretLookup,
    now: datetime,
    region: str | None,
    service: str,
) -> AuthResult:
    error = "AuthorizationQueryParametersError"
    missing = [p for p in _QUERY_AUTH_PARAMS if p not in query]
    if missing:
        raise S3Error(
            error,
            "Query-string authentication version 4 requires the "
            "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, "
            "X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
        )
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(error, 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    cred = parse_credential(query["X-Amz-Credential"], error)
    signed = _parse_signed_headers(query["X-Amz-SignedHeaders"], error)
    signature = query["X-Amz-Signature"]
    if not _SIG_RE.fullmatch(signature):
        raise S3Error(error, "X-Amz-Signature is malformed")
    amz_date = query["X-Amz-Date"]
    try:
        when = parse_amz_date(amz_date)
    except ValueError:
        raise S3Error(
            error, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        ) from None
    expires_text = query["X-Amz-Expires"]
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:
        raise S3Error(error, "X-Amz-Expires should be a number")
    expires = int(expires_text)
    if expires < 1:
        raise S3Error(error, "X-Amz-Expires must be non-negative")
    if expires > MAX_EXPIRES:
        raise S3Error(error, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    check_scope(cred, amz_date, region, service, error)
    if now < when - MAX_SKEW:
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > when + timedelta(seconds=expires):
        raise S3Error(
            "AccessDenied",
            "Request has expired",
            extra={
                "X-Amz-Expires": expires_text,
                "Expires": (when + timedelta(seconds=expires)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    claim = headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD
    kind = _payload_kind(claim)
    if kind.streaming:
        raise S3Error("InvalidRequest", "Streaming payloads require header authentication")
    secret = secret_for(cred.access_key, lookup_secret)
    key = derive_signing_key(secret, cred.date, cred.region, cred.service)
    block = canonical_headers(headers, signed)
    cquery = canonical_query(raw_query, exclude=("X-Amz-Signature",))
    signed_str = query["X-Amz-SignedHeaders"]
    _match_signature(
        _uri_candidates(raw_path),
        key,
        amz_date,
        cred.scope,
        lambda uri: canonical_request(method, uri, cquery, block, signed_str, claim),
        signature,
    )
    sha = claim.lower() if kind is PayloadKind.SHA256 else None
    return AuthResult(cred.access_key, AuthMethod.QUERY, kind, sha, None, cred.region)


def _parse_http_date(value: str) -> datetime:
    from email.utils import parsedate_to_datetime

    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise S3Error(
            "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# -- legacy Signature Version 2 ------------------------------------------------------------------
#
# Source: the S3 developer guide, "Signing and authenticating REST requests" (SigV2):
#   StringToSign = METHOD \n Content-MD5 \n Content-Type \n Date|Expires \n
#                  CanonicalizedAmzHeaders CanonicalizedResource
#   Signature    = base64(HMAC-SHA1(secret, StringToSign))
# The resource is the path as sent, always including the bucket (so ``/bucket`` is prefixed
# for virtual-hosted requests), plus the sub-resources below with their decoded values.

_V2_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "defaultObjectAcl",
        "delete",
        "inventory",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "select",
        "select-type",
        "storageClass",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)


def _v2_resources(raw_path: str, raw_query: str, bucket: str | None) -> list[str]:
    subresources = []
    for part in raw_query.split("&"):
        name, eq, value = part.partition("=")
        if name in _V2_SUBRESOURCES:
            decoded = unquote_to_bytes(value).decode("utf-8", "replace")
            subresources.append((name, f"{name}{eq}{decoded}"))
    subresources.sort(key=lambda item: item[0])
    suffix = "?" + "&".join(text for _, text in subresources) if subresources else ""
    if bucket is None:
        return [raw_path + suffix]
    # "/bucket/" is what the spec says for the bucket itself; botocore signs "/bucket".
    paths = ["/" + bucket + raw_path]
    if raw_path == "/":
        paths.append("/" + bucket)
    return [p + suffix for p in paths]


def _v2_amz_headers(pairs: Iterable[tuple[str, str]]) -> str:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        lname = name.lower()
        if lname.startswith("x-amz-"):
            grouped.setdefault(lname, []).append(value.strip())
    return "".join(f"{name}:{','.join(grouped[name])}\n" for name in sorted(grouped))


def sign_v2(secret: str, string_to_sign: str) -> bytes:
    """The SigV2 signature of ``string_to_sign``: base64 of its HMAC-SHA1 under ``secret``."""
    return base64.b64encode(
        hmac.digest(secret.encode("utf-8"), string_to_sign.encode("utf-8"), "sha1")
    )


def _v2_check(
    method: str,
    resources: list[str],
    head: str,
    amz: str,
    secret: str,
    claimed: str,
) -> None:
    ok = False
    for resource in resources:
        expected = sign_v2(secret, f"{method}\n{head}\n{amz}{resource}")
        ok |= hmac.compare_digest(expected, claimed.encode("utf-8", "replace"))
    if not ok:
        raise S3Error("SignatureDoesNotMatch")


def _v2_payload(headers: Headers) -> tuple[PayloadKind, str | None]:
    claim = headers.get("x-amz-content-sha256")
    if claim is not None and _HEX64.fullmatch(claim):
        return PayloadKind.SHA256, claim.lower()
    return PayloadKind.UNSIGNED, None


def _verify_v2_header(
    method: str,
    resources: list[str],
    headers: Headers,
    authorization: str,
    lookup_secret: SecretLookup,
    now: datetime,
) -> AuthResult:
    access_key, colon, signature = authorization[4:].strip().rpartition(":")
    if not colon or not access_key or not signature:
        raise S3Error("AuthorizationHeaderMalformed", "The authorization header is malformed")
    amz_date = headers.get("x-amz-date")
    date_text = amz_date if amz_date is not None else headers.get("date")
    if date_text is None:
        raise S3Error(
            "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
        )
    try:
        when = parse_amz_date(date_text.strip())
    except ValueError:
        when = _parse_http_date(date_text)
    if abs(now - when) > MAX_SKEW:
        raise S3Error("RequestTimeTooSkewed")
    secret = secret_for(access_key, lookup_secret)
    head = "\n".join(
        (
            (headers.get("content-md5") or "").strip(),
            (headers.get("content-type") or "").strip(),
            "" if amz_date is not None else (headers.get("date") or "").strip(),
        )
    )
    _v2_check(method, resources, head, _v2_amz_headers(headers), secret, signature)
    kind, sha = _v2_payload(headers)
    return AuthResult(access_key, AuthMethod.HEADER, kind, sha, signature_version=2)


def _verify_v2_query(
    method: str,
    resources: list[str],
    query: dict[str, str],
    headers: Headers,
    lookup_secret: SecretLookup,
    now: datetime,
) -> AuthResult:
    access_key = query.get("AWSAccessKeyId", "")
    signature = query.get("Signature", "")
    expires = query.get("Expires", "")
    if not access_key or not signature or not (expires.isascii() and expires.isdigit()):
        raise S3Error(
            "AccessDenied",
            "Query-string authentication requires the Signature, "
            "Expires and AWSAccessKeyId parameters",
        )
    if len(expires) > 12 or now.timestamp() > int(expires):
        raise S3Error("AccessDenied", "Request has expired", extra={"Expires": expires[:32]})
    secret = secret_for(access_key, lookup_secret)
    head = "\n".join(
        (
            (headers.get("content-md5") or query.get("content-md5") or "").strip(),
            (headers.get("content-type") or query.get("content-type") or "").strip(),
            expires,
        )
    )
    # Headers signed into a SigV2 URL travel as query parameters (what botocore does).
    in_query = [(k.lower(), v) for k, v in query.items() if k.lower().startswith("x-amz-")]
    named = {k for k, _ in in_query}
    amz = _v2_amz_headers([*in_query, *((k, v) for k, v in headers if k not in named)])
    _v2_check(method, resources, head, amz, secret, signature)
    kind, sha = _v2_payload(headers)
    return AuthResult(access_key, AuthMethod.QUERY, kind, sha, signature_version=2)
