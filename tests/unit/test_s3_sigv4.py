"""SigV4 verification: AWS's documented worked examples, then botocore's own signer.

Golden vectors are from the S3 API reference ("Examples of signature calculations"):
the GET Object example, the presigned-URL example and the chunked-upload example, all with
the example credentials and the timestamp 20130524T000000Z.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import (  # type: ignore[import-untyped]
    HmacV1Auth,
    HmacV1QueryAuth,
    S3SigV4Auth,
    S3SigV4QueryAuth,
)
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interfaces.s3 import sigv4
from interfaces.s3.errors import S3Error
from interfaces.s3.headers import Headers
from interfaces.s3.sigv4 import (
    EMPTY_SHA256,
    AuthMethod,
    PayloadKind,
    canonical_query,
    canonical_uri,
    check_payload_sha256,
    derive_signing_key,
    uri_encode,
    verify_request,
)

AK = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
T0 = datetime(2013, 5, 24, tzinfo=UTC)
SCOPE = f"{AK}/20130524/us-east-1/s3/aws4_request"


def lookup(access_key: str) -> str | None:
    return SECRET if access_key == AK else None


def get_object_headers(
    signature: str = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
) -> Headers:
    return Headers(
        [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential={SCOPE},"
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                f"Signature={signature}",
            ),
        ]
    )


PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def chunked_headers() -> Headers:
    return Headers(
        [
            ("Host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential={SCOPE},"
                "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
                "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            ),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("Content-Encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("Content-Length", "66824"),
        ]
    )


# -- golden vectors --------------------------------------------------------------------------


def test_doc_get_object_example() -> None:
    result = verify_request("GET", "/test.txt", "", get_object_headers(), lookup, T0)
    assert result.access_key == AK
    assert result.method is AuthMethod.HEADER
    assert result.payload is PayloadKind.SHA256
    assert result.content_sha256 == EMPTY_SHA256
    assert result.region == "us-east-1"
    assert result.signing is None


def test_doc_get_object_example_tampered() -> None:
    bad = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb42"
    with pytest.raises(S3Error) as info:
        verify_request("GET", "/test.txt", "", get_object_headers(bad), lookup, T0)
    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.status == 403
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        verify_request("GET", "/test.txt2", "", get_object_headers(), lookup, T0)


def test_doc_presigned_example() -> None:
    headers = Headers([("Host", "examplebucket.s3.amazonaws.com")])
    result = verify_request("GET", "/test.txt", PRESIGNED_QUERY, headers, lookup, T0)
    assert result.access_key == AK
    assert result.method is AuthMethod.QUERY
    assert result.payload is PayloadKind.UNSIGNED
    # still valid one second before expiry, expired one second after
    verify_request(
        "GET", "/test.txt", PRESIGNED_QUERY, headers, lookup, T0 + timedelta(seconds=86400)
    )
    with pytest.raises(S3Error) as info:
        verify_request(
            "GET", "/test.txt", PRESIGNED_QUERY, headers, lookup, T0 + timedelta(seconds=86401)
        )
    assert (info.value.code, info.value.message, info.value.status) == (
        "AccessDenied",
        "Request has expired",
        403,
    )
    with pytest.raises(S3Error, match="not valid yet"):
        verify_request(
            "GET", "/test.txt", PRESIGNED_QUERY, headers, lookup, T0 - timedelta(hours=1)
        )


def test_doc_chunked_seed_signature() -> None:
    result = verify_request(
        "PUT", "/examplebucket/chunkObject.txt", "", chunked_headers(), lookup, T0
    )
    assert result.payload is PayloadKind.STREAMING_SIGNED
    assert result.signing is not None
    assert result.signing.seed_signature == (
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    )
    assert result.signing.scope == "20130524/us-east-1/s3/aws4_request"
    assert result.signing.signing_key == derive_signing_key(SECRET, "20130524", "us-east-1")
    assert "signing_key" not in repr(result.signing)


def test_signing_key_derivation_doc_example() -> None:
    # AWS General Reference, "Deriving the signing key" (iam service, 20120215, us-east-1).
    key = derive_signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"
    )
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


# -- canonicalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/test.txt", "/test.txt"),
        ("/b/a%20b", "/b/a%20b"),
        ("/b/a b", "/b/a%20b"),
        ("/b/a+b", "/b/a%20b"),  # S3 reads a literal + in the path as a space
        ("/b/a%2Bb", "/b/a%2Bb"),
        ("/b/%7Etilde~", "/b/~tilde~"),
        ("/b/a%2fb", "/b/a/b"),
        ("/b//x/../y/./", "/b//x/../y/./"),
        ("/b/%e2%82%ac", "/b/%E2%82%AC"),
        ("/b/(x)!*'", "/b/%28x%29%21%2A%27"),
    ],
)
def test_canonical_uri(raw: str, canonical: str) -> None:
    assert canonical_uri(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("acl", "acl="),
        ("b=2&a=1&a=0", "a=0&a=1&b=2"),
        ("prefix=a%20b&delimiter=/", "delimiter=%2F&prefix=a%20b"),
        ("prefix=a+b", "prefix=a%2Bb"),
        ("x=%7e", "x=~"),
        ("uploads&x-id=CreateMultipartUpload", "uploads=&x-id=CreateMultipartUpload"),
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert canonical_query(raw) == canonical


def test_uri_encode() -> None:
    assert uri_encode("a/b c", keep_slash=True) == "a/b%20c"
    assert uri_encode("a/b c") == "a%2Fb%20c"
    assert uri_encode(b"\xff") == "%FF"


# -- failure modes ----------------------------------------------------------------------------


def _code(method: str, path: str, query: str, headers: Headers, now: datetime = T0) -> str:
    with pytest.raises(S3Error) as info:
        verify_request(method, path, query, headers, lookup, now)
    return info.value.code


def test_clock_skew() -> None:
    headers = get_object_headers()
    verify_request("GET", "/test.txt", "", headers, lookup, T0 + timedelta(minutes=15))
    assert (
        _code("GET", "/test.txt", "", headers, T0 + timedelta(minutes=16)) == "RequestTimeTooSkewed"
    )
    assert (
        _code("GET", "/test.txt", "", headers, T0 - timedelta(minutes=16)) == "RequestTimeTooSkewed"
    )


def test_unknown_access_key() -> None:
    headers = Headers([(k, v.replace(AK, "AKIDUNKNOWN")) for k, v in get_object_headers()])
    assert _code("GET", "/test.txt", "", headers) == "InvalidAccessKeyId"


def test_both_mechanisms() -> None:
    assert _code("GET", "/test.txt", PRESIGNED_QUERY, get_object_headers()) == "InvalidArgument"


def test_unsigned_amz_header_refused() -> None:
    headers = Headers([*get_object_headers(), ("x-amz-meta-sneaky", "1")])
    assert _code("GET", "/test.txt", "", headers) == "AccessDenied"


def test_region_mismatch() -> None:
    with pytest.raises(S3Error) as info:
        verify_request("GET", "/test.txt", "", get_object_headers(), lookup, T0, region="eu-west-1")
    assert info.value.code == "AuthorizationHeaderMalformed"
    assert info.value.extra["Region"] == "eu-west-1"


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", "SignatureDoesNotMatch"),
        ("AWS AKIAIOSFODNN7EXAMPLE", "AuthorizationHeaderMalformed"),
        ("AWS4-ECDSA-P256-SHA256 Credential=x", "InvalidRequest"),
        ("AWS4-HMAC-SHA256", "AuthorizationHeaderMalformed"),
        ("AWS4-HMAC-SHA256 Credential=x", "AuthorizationHeaderMalformed"),
        ("Bearer token", "InvalidArgument"),
        (
            f"AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws5_request,"
            f"SignedHeaders=host,Signature={'0' * 64}",
            "AuthorizationHeaderMalformed",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={AK}/20130525/us-east-1/s3/aws4_request,"
            f"SignedHeaders=host,Signature={'0' * 64}",
            "AuthorizationHeaderMalformed",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders=range,Signature={'0' * 64}",
            "AuthorizationHeaderMalformed",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders=host,Signature=xyz",
            "AuthorizationHeaderMalformed",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders=host;x-missing,"
            f"Signature={'0' * 64}",
            "AccessDenied",
        ),
    ],
)
def test_malformed_authorization(authorization: str, code: str) -> None:
    headers = Headers(
        [
            ("host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", authorization),
        ]
    )
    assert _code("GET", "/", "", headers) == code


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNzd29yZA==", "Bearer " + "t" * 300])
def test_unsupported_authorization_type(authorization: str) -> None:
    """Other schemes are S3's InvalidArgument naming the header, not a malformed SigV4."""
    headers = Headers(
        [
            ("host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", authorization),
        ]
    )
    with pytest.raises(S3Error) as info:
        verify_request("GET", "/", "", headers, lookup, T0)
    err = info.value
    assert (err.code, err.status, err.message) == (
        "InvalidArgument",
        400,
        "Unsupported Authorization Type",
    )
    assert dict(err.extra) == {
        "ArgumentName": "Authorization",
        "ArgumentValue": authorization[:200],
    }


def test_missing_content_sha256_and_bad_value() -> None:
    base = [(k, v) for k, v in get_object_headers() if k != "x-amz-content-sha256"]
    assert _code("GET", "/test.txt", "", Headers(base)) == "InvalidRequest"
    bad = Headers([*base, ("x-amz-content-sha256", "nope")])
    assert _code("GET", "/test.txt", "", bad) == "InvalidArgument"
    ecdsa = Headers([*base, ("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")])
    assert _code("GET", "/test.txt", "", ecdsa) == "NotImplemented"


@pytest.mark.parametrize(
    ("replace", "code"),
    [
        ("X-Amz-Expires=86400", "AuthorizationQueryParametersError"),  # removed
        ("X-Amz-Expires=604801", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=-1", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=abc", "AuthorizationQueryParametersError"),
        ("X-Amz-Date=2013-05-24", "AuthorizationQueryParametersError"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA1", "AuthorizationQueryParametersError"),
    ],
)
def test_malformed_presigned(replace: str, code: str) -> None:
    name = replace.split("=")[0]
    parts = [p for p in PRESIGNED_QUERY.split("&") if not p.startswith(name + "=")]
    if replace != "X-Amz-Expires=86400":
        parts.append(replace)
    headers = Headers([("Host", "examplebucket.s3.amazonaws.com")])
    assert _code("GET", "/test.txt", "&".join(parts), headers) == code


def test_anonymous() -> None:
    result = verify_request("GET", "/b/k", "", Headers([("host", "h")]), lookup, T0)
    assert result.anonymous
    assert result.method is AuthMethod.ANONYMOUS
    assert result.payload is PayloadKind.UNSIGNED
    sha = hashlib.sha256(b"x").hexdigest()
    result = verify_request("PUT", "/b/k", "", Headers([("x-amz-content-sha256", sha)]), lookup, T0)
    assert result.payload is PayloadKind.SHA256
    assert result.content_sha256 == sha


def test_literal_path_signature_also_accepted() -> None:
    """A client that signed its literal (differently escaped) path is accepted too."""
    from interfaces.s3.sigv4 import canonical_headers, canonical_request, sign, string_to_sign

    raw = "/b/(x)"
    headers = Headers(
        [("host", "h"), ("x-amz-date", "20130524T000000Z"), ("x-amz-content-sha256", EMPTY_SHA256)]
    )
    signed = "host;x-amz-content-sha256;x-amz-date"
    creq = canonical_request(
        "GET", raw, "", canonical_headers(headers, signed.split(";")), signed, EMPTY_SHA256
    )
    key = derive_signing_key(SECRET, "20130524", "us-east-1")
    sig = sign(key, string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", creq))
    auth = f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders={signed},Signature={sig}"
    result = verify_request(
        "GET", raw, "", Headers([*headers, ("authorization", auth)]), lookup, T0
    )
    assert result.access_key == AK


# -- cross-check with botocore's signer ---------------------------------------------------------

KEY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
    min_size=1,
    max_size=60,
)
SPECIAL_KEYS = st.sampled_from(
    ["a b", "a+b", "100%", "%2F", "x/../y", "dir//f", "é" * 512, "k" * 1024, "~!*'()", "?#[]"]
)
QUERY = st.dictionaries(
    st.sampled_from(["prefix", "marker", "delimiter", "max-keys", "versionId", "x"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
    max_size=3,
)


def _url(key: str, query: dict[str, str]) -> str:
    url = "http://localhost:9000/bucket/" + quote(key, safe="/~")
    if query:
        url += "?" + "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
    return url


def _as_server_sees(request: AWSRequest) -> tuple[str, str, Headers]:
    parts = urlsplit(request.url)
    headers = Headers([("host", parts.netloc), *request.headers.items()])
    return parts.path, parts.query, headers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(KEY_TEXT, SPECIAL_KEYS),
    query=QUERY,
    body=st.binary(max_size=64),
    secret=st.text(min_size=1, max_size=40, alphabet=st.characters(codec="ascii")),
)
def test_botocore_header_auth_verifies(
    key: str, query: dict[str, str], body: bytes, secret: str
) -> None:
    creds = Credentials("AKIDTEST", secret)
    request = AWSRequest(
        method="PUT",
        url=_url(key, query),
        data=body,
        headers={"x-amz-meta-note": "a  b ", "Content-Type": "text/plain"},
    )
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    path, raw_query, headers = _as_server_sees(request)
    result = verify_request(
        "PUT", path, raw_query, headers, {"AKIDTEST": secret}.get, datetime.now(UTC)
    )
    assert result.access_key == "AKIDTEST"
    assert result.payload is PayloadKind.SHA256
    assert result.content_sha256 == hashlib.sha256(body).hexdigest()
    # a different secret must not verify
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        verify_request(
            "PUT", path, raw_query, headers, {"AKIDTEST": secret + "x"}.get, datetime.now(UTC)
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(KEY_TEXT, SPECIAL_KEYS),
    query=QUERY,
    expires=st.integers(min_value=1, max_value=604800),
)
def test_botocore_presigned_verifies(key: str, query: dict[str, str], expires: int) -> None:
    creds = Credentials("AKIDTEST", "s3cr3t/+=")
    request = AWSRequest(method="GET", url=_url(key, query))
    S3SigV4QueryAuth(creds, "s3", "eu-west-3", expires=expires).add_auth(request)
    path, raw_query, headers = _as_server_sees(request)
    now = datetime.now(UTC)
    result = verify_request(
        "GET", path, raw_query, headers, {"AKIDTEST": "s3cr3t/+="}.get, now, region="eu-west-3"
    )
    assert result.method is AuthMethod.QUERY
    assert result.region == "eu-west-3"
    later = now + timedelta(seconds=expires + 2)
    with pytest.raises(S3Error, match="Request has expired"):
        verify_request("GET", path, raw_query, headers, {"AKIDTEST": "s3cr3t/+="}.get, later)
    # tampering with the path breaks the signature
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        verify_request("GET", path + "x", raw_query, headers, {"AKIDTEST": "s3cr3t/+="}.get, now)


def test_botocore_unsigned_payload_header_auth() -> None:
    creds = Credentials("AKIDTEST", "secret")
    request = AWSRequest(method="PUT", url="https://localhost/b/k", data=b"data")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    path, raw_query, headers = _as_server_sees(request)
    result = verify_request(
        "PUT", path, raw_query, headers, {"AKIDTEST": "secret"}.get, datetime.now(UTC)
    )
    assert result.payload is PayloadKind.UNSIGNED
    assert result.content_sha256 is None


def test_check_payload_sha256() -> None:
    body = b"hello"
    result = verify_request(
        "PUT",
        "/b/k",
        "",
        Headers([("x-amz-content-sha256", hashlib.sha256(body).hexdigest())]),
        lookup,
        T0,
    )
    check_payload_sha256(result, hashlib.sha256(body).digest())
    with pytest.raises(S3Error) as info:
        check_payload_sha256(result, hashlib.sha256(b"other").digest())
    assert (info.value.code, info.value.status) == ("XAmzContentSHA256Mismatch", 400)
    unsigned = verify_request("PUT", "/b/k", "", Headers(), lookup, T0)
    check_payload_sha256(unsigned, b"anything")


# -- legacy SigV2 -------------------------------------------------------------------------------


def test_sigv2_doc_example() -> None:
    """S3 developer guide, "Signing and authenticating REST requests", object GET example."""
    headers = Headers(
        [
            ("Host", "awsexamplebucket1.us-west-1.s3.amazonaws.com"),
            ("Date", "Tue, 27 Mar 2007 19:36:42 +0000"),
            ("Authorization", f"AWS {AK}:qgk2+6Sv9/oM7G3qLEjTH1a1l1g="),
        ]
    )
    now = datetime(2007, 3, 27, 19, 40, tzinfo=UTC)
    result = verify_request(
        "GET",
        "/photos/puppy.jpg",
        "",
        headers,
        lookup,
        now,
        virtual_host_bucket="awsexamplebucket1",
    )
    assert (result.access_key, result.signature_version) == (AK, 2)
    assert result.payload is PayloadKind.UNSIGNED
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        verify_request("GET", "/photos/puppy.jpg", "", headers, lookup, now)  # path style
    with pytest.raises(S3Error, match="RequestTimeTooSkewed"):
        verify_request(
            "GET",
            "/photos/puppy.jpg",
            "",
            headers,
            lookup,
            now + timedelta(hours=1),
            virtual_host_bucket="awsexamplebucket1",
        )
    with pytest.raises(S3Error, match="InvalidRequest"):
        verify_request(
            "GET",
            "/photos/puppy.jpg",
            "",
            headers,
            lookup,
            now,
            virtual_host_bucket="awsexamplebucket1",
            allow_sigv2=False,
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(KEY_TEXT, SPECIAL_KEYS),
    query=QUERY,
    virtual=st.booleans(),
    subresource=st.sampled_from(
        ["", "acl", "uploads", "versionId=v%2B1", "uploadId=u&partNumber=2"]
    ),
)
def test_botocore_sigv2_header_and_query(
    key: str, query: dict[str, str], virtual: bool, subresource: str
) -> None:
    creds = Credentials("AKIDTEST", "s3cr3t")
    url = _url(key, query)
    if subresource:
        url += ("&" if "?" in url else "?") + subresource
    now = datetime.now(UTC)
    for signer in (HmacV1Auth(creds), HmacV1QueryAuth(creds, expires=300)):
        request = AWSRequest(
            method="PUT", url=url, headers={"x-amz-meta-a": " b ", "Content-Type": "text/plain"}
        )
        if virtual:
            # what botocore's switch_to_virtual_host_style does
            request.auth_path = urlsplit(url).path
            request.url = url.replace("localhost:9000/bucket/", "bucket.localhost:9000/", 1)
        signer.add_auth(request)
        path, raw_query, headers = _as_server_sees(request)
        if isinstance(signer, HmacV1QueryAuth):  # a browser sends only the URL
            headers = Headers([("host", urlsplit(request.url).netloc)])
        result = verify_request(
            "PUT",
            path,
            raw_query,
            headers,
            {"AKIDTEST": "s3cr3t"}.get,
            now,
            virtual_host_bucket="bucket" if virtual else None,
        )
        assert (result.access_key, result.signature_version) == ("AKIDTEST", 2)
        with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
            verify_request(
                "PUT",
                path + "x",
                raw_query,
                headers,
                {"AKIDTEST": "s3cr3t"}.get,
                now,
                virtual_host_bucket="bucket" if virtual else None,
            )
    later = now + timedelta(seconds=400)
    with pytest.raises(S3Error, match="Request has expired"):
        verify_request(
            "PUT",
            path,
            raw_query,
            headers,
            {"AKIDTEST": "s3cr3t"}.get,
            later,
            virtual_host_bucket="bucket" if virtual else None,
        )


@given(
    st.one_of(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
            lambda d: d.strftime("%Y%m%dT%H%M%SZ").rjust(16, "0")
        ),
        st.text(alphabet="0123456789TZ: -", min_size=14, max_size=18),
    )
)
def test_amz_dates_parse_as_strptime_parses_them(value: str) -> None:
    try:
        expected: datetime | None = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        expected = None
    if len(value) != 16:
        expected = None
    try:
        got: datetime | None = sigv4.parse_amz_date(value)
    except ValueError:
        got = None
    assert got == expected
