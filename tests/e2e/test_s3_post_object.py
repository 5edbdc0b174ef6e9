"""Browser form uploads (PostObject): boto3's ``generate_presigned_post``, posted by requests."""

from __future__ import annotations

import base64
import json
import random
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
import requests
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

from tests.e2e.conftest import S3Server

MiB = 1024 * 1024
APP = "https://app.example.com"


@pytest.fixture(scope="module")
def v4(s3_server: S3Server) -> Any:
    """A path-style client whose presigned POSTs are SigV4 (boto3's default here is V2)."""
    return s3_server.client(s3={"addressing_style": "path"}, signature_version="s3v4")


def _post(
    presigned: dict[str, Any],
    data: bytes,
    *,
    filename: str = "upload.bin",
    content_type: str | None = None,
    extra: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    fields = {**presigned["fields"], **(extra or {})}
    file: tuple[str, bytes] | tuple[str, bytes, str] = (
        (filename, data) if content_type is None else (filename, data, content_type)
    )
    return requests.post(
        presigned["url"],
        data=fields,
        files={"file": file},
        headers=headers,
        allow_redirects=False,
        timeout=60,
    )


def _error(response: requests.Response) -> tuple[int, str, str]:
    root = ElementTree.fromstring(response.content)
    assert root.tag == "Error"
    return response.status_code, root.findtext("Code") or "", root.findtext("Message") or ""


def _absent(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]) == 404
    return False


def test_small_upload_round_trips(s3_server: S3Server, s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(bucket, "docs/hello.txt")
    assert presigned["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    data = b"hello, form\r\n--not-a-boundary\r\n"
    response = _post(presigned, data, content_type="text/plain")
    assert (response.status_code, response.content) == (204, b"")
    head = s3.head_object(Bucket=bucket, Key="docs/hello.txt")
    assert response.headers["ETag"] == head["ETag"]
    assert response.headers["Location"].endswith(f"/{bucket}/docs/hello.txt")
    got = s3.get_object(Bucket=bucket, Key="docs/hello.txt")
    assert got["Body"].read() == data
    # The file part's own type is no field the policy covers: not the object's.
    assert got["ContentType"] == "binary/octet-stream"
    # The owner is the key that signed the policy, as for a signed PutObject.
    owner = s3.get_object_acl(Bucket=bucket, Key="docs/hello.txt")["Owner"]
    assert owner["ID"] == s3_server.access_key


def test_default_boto3_post_uses_sigv2_and_works(s3: Any, bucket: str) -> None:
    presigned = s3.generate_presigned_post(bucket, "v2.bin")
    assert "AWSAccessKeyId" in presigned["fields"]
    response = _post(presigned, b"legacy signature")
    assert response.status_code == 204
    assert s3.get_object(Bucket=bucket, Key="v2.bin")["Body"].read() == b"legacy signature"
    tampered = {**presigned, "fields": {**presigned["fields"], "signature": "AAAA" + "=" * 24}}
    assert _error(_post(tampered, b"x"))[:2] == (403, "SignatureDoesNotMatch")


def test_large_upload_is_bit_exact(s3: Any, v4: Any, bucket: str) -> None:
    data = random.Random(7).randbytes(20 * MiB)
    presigned = v4.generate_presigned_post(
        bucket, "big.bin", Conditions=[["content-length-range", 1, 32 * MiB]]
    )
    response = _post(presigned, data)
    assert response.status_code == 204
    got = s3.get_object(Bucket=bucket, Key="big.bin")
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data


def test_filename_in_key_and_content_type_field(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(
        bucket,
        "uploads/${filename}",
        Fields={"Content-Type": "image/png"},
        Conditions=[{"Content-Type": "image/png"}],
    )
    response = _post(presigned, b"\x89PNG...", filename="photo 1.png", content_type="text/html")
    assert response.status_code == 204
    got = s3.get_object(Bucket=bucket, Key="uploads/photo 1.png")
    assert (got["Body"].read(), got["ContentType"]) == (b"\x89PNG...", "image/png")
    # Without a content type anywhere, the object is served as binary/octet-stream.
    presigned = v4.generate_presigned_post(bucket, "plain")
    assert _post(presigned, b"x").status_code == 204
    assert s3.head_object(Bucket=bucket, Key="plain")["ContentType"] == "binary/octet-stream"


def test_starts_with_conditions(s3: Any, v4: Any, bucket: str) -> None:
    fields = {
        "Content-Type": "image/jpeg",
        "x-amz-meta-album": "holidays",
        "acl": "public-read",
        "Cache-Control": "max-age=60",
    }
    conditions = [
        ["starts-with", "$Content-Type", "image/"],
        ["starts-with", "$x-amz-meta-album", ""],
        {"acl": "public-read"},
        ["eq", "$Cache-Control", "max-age=60"],
    ]
    presigned = v4.generate_presigned_post(
        bucket, "photos/a.jpg", Fields=fields, Conditions=conditions
    )
    assert _post(presigned, b"jpeg").status_code == 204
    head = s3.head_object(Bucket=bucket, Key="photos/a.jpg")
    assert (head["ContentType"], head["Metadata"], head["CacheControl"]) == (
        "image/jpeg",
        {"album": "holidays"},
        "max-age=60",
    )
    grants = s3.get_object_acl(Bucket=bucket, Key="photos/a.jpg")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants)
    # A value the policy does not allow: refused, nothing stored.
    refused = _post(presigned, b"x", extra={"Content-Type": "text/html"})
    status, code, message = _error(refused)
    assert (status, code) == (403, "AccessDenied")
    assert message == (
        'Invalid according to Policy: Policy Condition failed: ["starts-with", '
        '"$Content-Type", "image/"]'
    )
    # A comma-separated Content-Type: every item must start with the prefix.
    refused = _post(presigned, b"x", extra={"Content-Type": "image/png, text/html"})
    assert _error(refused)[:2] == (403, "AccessDenied")
    # The key must start with what boto3 put in the policy for "${filename}" keys.
    prefixed = v4.generate_presigned_post(bucket, "user/eric/${filename}")
    wrong = _post(prefixed, b"x", extra={"key": "user/other/${filename}"})
    assert _error(wrong)[:2] == (403, "AccessDenied")
    assert _absent(s3, bucket, "user/other/upload.bin")


def test_success_action_status_201_and_redirect(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(
        bucket,
        "made.txt",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
    )
    response = _post(presigned, b"created")
    assert response.status_code == 201
    root = ElementTree.fromstring(response.content)
    assert root.tag == "PostResponse"
    etag = s3.head_object(Bucket=bucket, Key="made.txt")["ETag"]
    assert root.findtext("Bucket") == bucket
    assert root.findtext("Key") == "made.txt"
    assert root.findtext("ETag") == etag
    assert (root.findtext("Location") or "").endswith(f"/{bucket}/made.txt")

    done = "https://app.example.com/done?x=1"
    presigned = v4.generate_presigned_post(
        bucket,
        "went.txt",
        Fields={"success_action_redirect": done},
        Conditions=[{"success_action_redirect": done}],
    )
    response = _post(presigned, b"redirected")
    assert response.status_code == 303
    target = urlsplit(response.headers["Location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "app.example.com", "/done")
    query = parse_qs(target.query)
    etag = s3.head_object(Bucket=bucket, Key="went.txt")["ETag"]
    assert query == {"x": ["1"], "bucket": [bucket], "key": ["went.txt"], "etag": [etag]}

    presigned = v4.generate_presigned_post(
        bucket,
        "ok.txt",
        Fields={"success_action_status": "200"},
        Conditions=[{"success_action_status": "200"}],
    )
    assert (
        _post(presigned, b"ok").status_code,
        s3.get_object(Bucket=bucket, Key="ok.txt")["ContentLength"],
    ) == (200, 2)


def test_content_length_range_refusals_store_nothing(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(
        bucket, "sized", Conditions=[["content-length-range", 10, 1000]]
    )
    status, code, _ = _error(_post(presigned, b"x" * 1001))
    assert (status, code) == (400, "EntityTooLarge")
    assert _absent(s3, bucket, "sized")
    status, code, _ = _error(_post(presigned, b"x" * 9))
    assert (status, code) == (400, "EntityTooSmall")
    assert _absent(s3, bucket, "sized")
    # A file far above the limit is refused while it streams, never stored.
    status, code, _ = _error(_post(presigned, b"y" * (3 * MiB)))
    assert (status, code) == (400, "EntityTooLarge")
    assert _absent(s3, bucket, "sized")
    assert _post(presigned, b"z" * 1000).status_code == 204


def test_expired_policy(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(bucket, "late", ExpiresIn=-10)
    status, code, message = _error(_post(presigned, b"x"))
    assert (status, code, message) == (
        403,
        "AccessDenied",
        "Invalid according to Policy: Policy expired.",
    )
    assert _absent(s3, bucket, "late")


def test_tampered_policy_or_signature(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(bucket, "safe/${filename}")
    fields = presigned["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    policy["conditions"] = [c for c in policy["conditions"] if not isinstance(c, list)]
    forged = base64.b64encode(json.dumps(policy).encode()).decode()
    for change in (
        {"policy": forged, "key": "anywhere"},
        {"x-amz-signature": "0" * 64},
        {"x-amz-signature": fields["x-amz-signature"].upper()},
    ):
        assert _error(_post(presigned, b"x", extra=change))[:2] == (403, "SignatureDoesNotMatch")
    assert _absent(s3, bucket, "anywhere")
    garbage = {"policy": "not base64 at all!", "x-amz-signature": "0" * 64}
    assert _error(_post(presigned, b"x", extra=garbage))[:2] == (403, "SignatureDoesNotMatch")


def test_unknown_access_key(s3_server: S3Server, s3: Any, bucket: str) -> None:
    stranger = s3_server.client(
        access_key="BKUNKNOWNUNKNOWN0000",
        secret="x" * 40,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    presigned = stranger.generate_presigned_post(bucket, "k")
    assert _error(_post(presigned, b"x"))[:2] == (403, "InvalidAccessKeyId")
    assert _absent(s3, bucket, "k")


def test_field_not_covered_by_the_policy(s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(bucket, "k")
    status, code, message = _error(_post(presigned, b"x", extra={"x-amz-meta-sneaky": "1"}))
    assert (status, code) == (403, "AccessDenied")
    assert message == "Invalid according to Policy: Extra input fields: x-amz-meta-sneaky"
    assert _absent(s3, bucket, "k")
    # x-ignore-* fields need no condition.
    response = _post(presigned, b"x", extra={"x-ignore-tracking": "1"})
    assert response.status_code == 204
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def test_malformed_forms_store_nothing(s3_server: S3Server, s3: Any, v4: Any, bucket: str) -> None:
    presigned = v4.generate_presigned_post(bucket, "k")
    url = presigned["url"]
    no_file = requests.post(url, files={"key": (None, "k")}, timeout=30)
    assert _error(no_file)[:2] == (400, "IncorrectNumberOfFilesInPostRequest")
    not_a_form = requests.post(url, data="key=k", timeout=30)
    assert _error(not_a_form)[:2] == (412, "PreconditionFailed")
    prepared = requests.Request(
        "POST", url, data=presigned["fields"], files={"file": ("f", b"truncated body")}
    ).prepare()
    body = prepared.body
    assert isinstance(body, bytes)
    cut = body[: body.index(b"truncated") + 5]
    truncated = requests.post(
        url, data=cut, headers={"Content-Type": prepared.headers["Content-Type"]}, timeout=30
    )
    assert _error(truncated)[:2] == (400, "MalformedPOSTRequest")
    no_boundary = requests.post(
        url, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}, timeout=30
    )
    assert _error(no_boundary)[:2] == (400, "MalformedPOSTRequest")
    parts: dict[str, tuple[str | None, bytes]] = {"key": (None, b"k"), "file": ("f", b"x")}
    anonymous = requests.post(url, files=parts, timeout=30)
    assert _error(anonymous)[:2] == (403, "AccessDenied")
    assert _absent(s3, bucket, "k")
    assert s3_server.healthy()


def test_cors_headers_on_a_form_upload(s3: Any, v4: Any, bucket: str) -> None:
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {"AllowedMethods": ["POST"], "AllowedOrigins": [APP], "ExposeHeaders": ["ETag"]}
            ]
        },
    )
    presigned = v4.generate_presigned_post(bucket, "cors.txt")
    response = _post(presigned, b"from the browser", headers={"Origin": APP})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Expose-Headers"] == "ETag"
    # An error answer carries them too, so the page can read it.
    refused = _post(presigned, b"x", extra={"x-amz-meta-no": "1"}, headers={"Origin": APP})
    assert refused.status_code == 403
    assert refused.headers["Access-Control-Allow-Origin"] == APP
    other = _post(presigned, b"x", headers={"Origin": "https://evil.example"})
    assert other.status_code == 204
    assert "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.usefixtures("localhost_resolver")
def test_virtual_host_addressing(s3_server: S3Server, s3: Any, bucket: str) -> None:
    client = s3_server.client(
        endpoint=f"http://{s3_server.base_domain}:{s3_server.port}",
        s3={"addressing_style": "virtual"},
        signature_version="s3v4",
    )
    presigned = client.generate_presigned_post(bucket, "vhost.txt")
    assert urlsplit(presigned["url"]).netloc.startswith(f"{bucket}.")
    response = _post(presigned, b"virtual")
    assert response.status_code == 204
    assert response.headers["Location"].endswith(
        f"{bucket}.{s3_server.base_domain}:{s3_server.port}/vhost.txt"
    )
    assert s3.get_object(Bucket=bucket, Key="vhost.txt")["Body"].read() == b"virtual"
