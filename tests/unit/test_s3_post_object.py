"""PostObject: the form parser, the policy checks, and the handler driven by ASGI messages."""

from __future__ import annotations

import base64
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from interfaces.s3 import forms
from interfaces.s3.errors import S3Error
from interfaces.s3.forms import FormEnd, FormParser, PartData, PartEnd, PartStart, boundary_of
from interfaces.s3.post_policy import authenticate_form, check_conditions, decode_policy
from tests.s3_forms import BOUNDARY, BUCKET, encode_form, form_server, policy_text, signed_fields

NOW = datetime.now(UTC)


def parse(body: bytes, boundary: str = BOUNDARY, step: int = 0) -> list[Any]:
    """Every event of ``body``, fed whole or ``step`` bytes at a time; data joined per part."""
    parser = FormParser(boundary.encode())
    pieces = [body] if step == 0 else [body[i : i + step] for i in range(0, len(body), step)]
    events: list[Any] = []
    for piece in [*pieces, b""]:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is forms.NEED_DATA:
                break
            if isinstance(event, PartData) and events and isinstance(events[-1], PartData):
                events[-1] = PartData(events[-1].data + event.data)
            else:
                events.append(event)
            if isinstance(event, FormEnd):
                return events
    raise AssertionError("no FormEnd")


def code_of(body: bytes, boundary: str = BOUNDARY) -> str:
    with pytest.raises(S3Error) as info:
        parse(body, boundary)
    return info.value.code


# -- the parser -------------------------------------------------------------------------------


def test_parse_fields_and_file() -> None:
    body = encode_form(
        [("key", "a/${filename}"), ("acl", "")], b"\r\n--xYz\r\nbody", file_type="a/b"
    )
    for step in (0, 1, 3, 17):
        events = parse(body, step=step)
        assert [type(e) for e in events] == [
            PartStart, PartData, PartEnd, PartStart, PartEnd, PartStart, PartData, PartEnd, FormEnd
        ]  # fmt: skip
        assert (events[0].name, events[0].filename, events[1].data) == (
            "key",
            None,
            b"a/${filename}",
        )
        file = events[5]
        assert (file.name, file.filename, file.content_type) == ("file", "f.bin", "a/b")
        assert events[6].data == b"\r\n--xYz\r\nbody"


def test_preamble_padding_and_epilogue() -> None:
    body = (
        b"ignored preamble\r\n--B  \t\r\ncontent-disposition: form-data; name=a\r\n\r\n1"
        b'\r\n--B\r\nContent-Disposition: form-data; name="b"\r\n\r\n\r\n--B--junk after'
    )
    events = parse(body, "B")
    assert [e.name for e in events if isinstance(e, PartStart)] == ["a", "b"]
    assert [e.data for e in events if isinstance(e, PartData)] == [b"1"]


def test_disposition_parameters() -> None:
    head = b'--B\r\nContent-Disposition: form-data; name="a\\"b"; filename="C:\\dir\\x.txt"\r\n\r\n'
    start = parse(head + b"\r\n--B--", "B")[0]
    assert (start.name, start.filename) == ('a"b', "C:\\dir\\x.txt")
    head = (
        b'--B\r\nContent-Disposition: form-data; name=file; filename="x"; '
        b"filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n\r\n"
    )
    assert parse(head + b"\r\n--B--", "B")[0].filename == "été.txt"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary at all",
        b"--B",
        b"--B\r\n",
        b"--Bx\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Disposition: form-data; name=a\r\n\r\nno end",
        b"--B\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--B",
        b"--B\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--B-",
        b"--B\r\nContent-Disposition: form-data; name=a\r\n",
        b"--B\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Type: text/plain\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Disposition: attachment; name=a\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Disposition: form-data\r\n\r\n\r\n--B--",
        b'--B\r\nContent-Disposition: form-data; name="a\r\n\r\n\r\n--B--',
        b"--B\r\nbad header\r\n\r\n\r\n--B--",
        b"--B\r\n : x\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Disposition: form-data; name=\xff\r\n\r\n\r\n--B--",
        b"--B\r\nContent-Disposition: form-data; name=a\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n",
        b"--B " + b" " * 2000 + b"\r\n",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    assert code_of(body, "B") == "MalformedPOSTRequest"


def test_data_after_the_end_of_input() -> None:
    parser = FormParser(b"B")
    parser.receive_data(b"")
    with pytest.raises(S3Error):
        parser.receive_data(b"x")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
        ("multipart/form-data", "MalformedPOSTRequest"),
        ("multipart/form-data; boundary=", "MalformedPOSTRequest"),
        ("multipart/form-data; boundary=" + "x" * 71, "MalformedPOSTRequest"),
        ("multipart/form-data; boundary=é", "MalformedPOSTRequest"),
        ("application/x-www-form-urlencoded", "PreconditionFailed"),
        (None, "PreconditionFailed"),
    ],
)
def test_boundary_of(content_type: str | None, expected: bytes | str) -> None:
    if isinstance(expected, bytes):
        assert boundary_of(content_type) == expected
    else:
        with pytest.raises(S3Error) as info:
            boundary_of(content_type)
        assert info.value.code == expected


# -- the policy -------------------------------------------------------------------------------


def _b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


EXP = "2099-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "Invalid JSON."),
        (base64.b64encode(b"\xff\xfe").decode(), "Invalid JSON."),
        (_b64([1]), "Invalid JSON."),
        (base64.b64encode(b"[" * 100_000).decode(), "Invalid JSON."),
        (_b64({"conditions": []}), "Policy missing expiration."),
        (_b64({"expiration": EXP}), "Policy missing conditions."),
        (_b64({"expiration": "tomorrow", "conditions": []}), "Invalid 'expiration' value"),
        (_b64({"expiration": 5, "conditions": []}), "Invalid 'expiration' value"),
        (_b64({"expiration": EXP, "conditions": {}}), "Invalid 'conditions' value"),
        (_b64({"expiration": EXP, "conditions": [{"a": 1}]}), "Invalid Simple-Condition"),
        (_b64({"expiration": EXP, "conditions": [["eq", "key", "x"]]}), "Invalid Condition"),
        (_b64({"expiration": EXP, "conditions": [["eq", "$key"]]}), "Invalid Condition"),
        (_b64({"expiration": EXP, "conditions": [["in", "$key", "x"]]}), "unknown operation"),
        (_b64({"expiration": EXP, "conditions": [[]]}), "Invalid Condition"),
        (
            _b64({"expiration": EXP, "conditions": [["content-length-range", 5, 1]]}),
            "Invalid Condition",
        ),
        (
            _b64({"expiration": EXP, "conditions": [["content-length-range", -1, 1]]}),
            "Invalid Condition",
        ),
        (
            _b64({"expiration": EXP, "conditions": [["content-length-range", True, 1]]}),
            "Invalid Condition",
        ),
        (
            _b64({"expiration": EXP, "conditions": [["content-length-range", 1]]}),
            "Invalid Condition",
        ),
    ],
)
def test_invalid_policy_documents(text: str, message: str) -> None:
    with pytest.raises(S3Error) as info:
        decode_policy(text)
    assert (info.value.code, info.value.status) == ("InvalidPolicyDocument", 400)
    assert message in info.value.message


def test_policy_conditions() -> None:
    policy = decode_policy(
        _b64(
            {
                "expiration": "2099-01-01T00:00:00Z",
                "conditions": [
                    {"bucket": BUCKET, "Acl": "private"},
                    ["starts-with", "$Key", "user/"],
                    ["starts-with", "$Content-Type", "image/"],
                    ["EQ", "$x-amz-meta-a", "1"],
                    ["starts-with", "$x-amz-meta-any", ""],
                    ["content-length-range", "1", 10],
                    ["content-length-range", 0, 5],
                ],
            }
        )
    )
    assert policy.expiration == datetime(2099, 1, 1, tzinfo=UTC)
    assert policy.size_range == (1, 5)
    good = {
        "key": "user/x",
        "acl": "private",
        "content-type": "image/png, image/gif",
        "x-amz-meta-a": "1",
        "x-amz-meta-any": "whatever",
        "x-ignore-me": "?",
        "policy": "p",
        "x-amz-signature": "s",
        "file": "",
    }
    check_conditions(policy, good, bucket=BUCKET)
    check_conditions(policy, {**good, "x-amz-meta-any": ""}, bucket=BUCKET)
    failures = [
        ({**good, "key": "other/x"}, '["starts-with", "$Key", "user/"]'),
        ({**good, "content-type": "image/png,text/html"}, '"$Content-Type"'),
        ({**good, "x-amz-meta-a": "2"}, '["EQ", "$x-amz-meta-a", "1"]'),
        ({k: v for k, v in good.items() if k != "acl"}, '["eq", "$Acl", "private"]'),
    ]
    for fields, quoted in failures:
        with pytest.raises(S3Error) as info:
            check_conditions(policy, fields, bucket=BUCKET)
        assert info.value.code == "AccessDenied"
        assert info.value.message.startswith(
            "Invalid according to Policy: Policy Condition failed: "
        )
        assert quoted in info.value.message
    with pytest.raises(S3Error) as info:
        check_conditions(policy, good, bucket="other")
    assert '["eq", "$bucket", "forms"]' in info.value.message
    with pytest.raises(S3Error) as info:
        check_conditions(policy, {**good, "b": "1", "a": "2"}, bucket=BUCKET)
    assert info.value.message == "Invalid according to Policy: Extra input fields: a, b"
    # SigV2 forms need no conditions on their credential fields, SigV4 forms do.
    v2 = {**good, "awsaccesskeyid": "AK", "signature": "s"}
    check_conditions(policy, v2, bucket=BUCKET, signature_version=2)
    with pytest.raises(S3Error):
        check_conditions(policy, v2, bucket=BUCKET)


def test_check_size() -> None:
    policy = decode_policy(
        _b64({"expiration": EXP, "conditions": [["content-length-range", 2, 4]]})
    )
    policy.check_size(1, final=False)
    policy.check_size(4, final=True)
    with pytest.raises(S3Error) as info:
        policy.check_size(5, final=False)
    assert (info.value.code, dict(info.value.extra)) == (
        "EntityTooLarge",
        {"ProposedSize": "5", "MaxSizeAllowed": "4"},
    )
    with pytest.raises(S3Error) as info:
        policy.check_size(1, final=True)
    assert (info.value.code, info.value.extra["MinSizeAllowed"]) == ("EntityTooSmall", "2")
    unbounded = decode_policy(_b64({"expiration": EXP, "conditions": []}))
    unbounded.check_size(10**12, final=True)


SECRETS = {"AKIDPOSTFORM": "post/secret+key=="}


def _fields(presigned: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in presigned["fields"].items()}


def _boto_client(**config: Any) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url="http://127.0.0.1:9000",
        aws_access_key_id="AKIDPOSTFORM",
        aws_secret_access_key=SECRETS["AKIDPOSTFORM"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, **config),
    )


def test_boto3_presigned_post_authenticates() -> None:
    for config, version in (({"signature_version": "s3v4"}, 4), ({}, 2)):
        presigned = _boto_client(**config).generate_presigned_post(
            BUCKET, "k/${filename}", Conditions=[["content-length-range", 1, 9]]
        )
        fields = _fields(presigned)
        grant = authenticate_form(fields, SECRETS.get, datetime.now(UTC), region="us-east-1")
        assert (grant.access_key, grant.signature_version) == ("AKIDPOSTFORM", version)
        assert grant.policy.size_range == (1, 9)
        check_conditions(grant.policy, fields, bucket=BUCKET, signature_version=version)
        with pytest.raises(S3Error) as info:
            check_conditions(grant.policy, fields, bucket="elsewhere", signature_version=version)
        assert info.value.code == "AccessDenied"
        with pytest.raises(S3Error) as info:
            authenticate_form(fields, SECRETS.get, datetime.now(UTC) + timedelta(hours=2))
        assert info.value.message == "Invalid according to Policy: Policy expired."


def _code(fields: dict[str, str], **kwargs: Any) -> str:
    with pytest.raises(S3Error) as info:
        authenticate_form(fields, SECRETS.get, datetime.now(UTC), **kwargs)
    return info.value.code


def test_form_authentication_refusals() -> None:
    fields = _fields(_boto_client(signature_version="s3v4").generate_presigned_post(BUCKET, "k"))
    assert _code(fields, region="eu-west-1") == "InvalidArgument"
    assert _code({**fields, "x-amz-signature": "0" * 64}) == "SignatureDoesNotMatch"
    assert _code({**fields, "x-amz-signature": "é"}) == "SignatureDoesNotMatch"
    other = _b64({"expiration": EXP, "conditions": []})
    assert _code({**fields, "policy": other}) == "SignatureDoesNotMatch"
    assert _code({**fields, "x-amz-algorithm": "AWS4-HMAC-SHA512"}) == "InvalidArgument"
    assert _code({**fields, "x-amz-date": "yesterday"}) == "InvalidArgument"
    assert _code({**fields, "x-amz-date": "20000101T000000Z"}) == "InvalidArgument"
    assert _code({**fields, "x-amz-credential": "AKIDPOSTFORM/x"}) == "InvalidArgument"
    unknown = fields["x-amz-credential"].replace("AKIDPOSTFORM", "AKIDUNKNOWN")
    assert _code({**fields, "x-amz-credential": unknown}) == "InvalidAccessKeyId"
    for missing in ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"):
        assert _code({k: v for k, v in fields.items() if k != missing}) == "InvalidArgument"
    assert _code({k: v for k, v in fields.items() if k != "policy"}) == "AccessDenied"
    assert _code({**fields, "awsaccesskeyid": "AKIDPOSTFORM"}) == "InvalidArgument"
    v2 = _fields(_boto_client().generate_presigned_post(BUCKET, "k"))
    assert _code(v2, allow_sigv2=False) == "InvalidRequest"
    assert _code({**v2, "signature": "x"}) == "SignatureDoesNotMatch"
    assert _code({**v2, "awsaccesskeyid": "AKIDUNKNOWN"}) == "InvalidAccessKeyId"
    # A signature is checked over the policy text as sent, whatever it decodes to.
    garbage = "%%%"
    digest = hmac.digest(SECRETS["AKIDPOSTFORM"].encode(), garbage.encode(), "sha1")
    forged = {**v2, "policy": garbage, "signature": base64.b64encode(digest).decode()}
    assert _code(forged) == "InvalidPolicyDocument"


# -- the handler, driven with ASGI messages ---------------------------------------------------


async def test_upload_through_the_app() -> None:
    server = await form_server()
    fields = signed_fields(
        server.access_key,
        server.secret,
        [{"bucket": BUCKET}, ["starts-with", "$key", "in/"], ["starts-with", "$Content-Type", ""]],
        fields=[("key", "in/${filename}"), ("Content-Type", "text/csv")],
    )
    data = b"a,b\r\n--xYzZY-boundar\r\n1,2\r\n"
    body = encode_form(fields, data, filename="t.csv", after=[("ignored", "after the file")])
    status, headers, answer = await server.post(body, chunks=[5, 100, len(body) - 3])
    assert (status, answer) == (204, b"")
    assert headers["location"] == f"http://127.0.0.1/{BUCKET}/in/t.csv"
    assert await server.read("in/t.csv") == data
    info = await server.objects.head_object(BUCKET, "in/t.csv")
    assert (info.content_type, headers["etag"]) == ("text/csv", f'"{info.etag}"')


async def test_success_statuses() -> None:
    server = await form_server()
    cases = [("201", 201), ("200", 200), ("204", 204), ("202", 204), ("", 204)]
    for value, expected in cases:
        fields = signed_fields(
            server.access_key,
            server.secret,
            [
                {"key": "k"},
                {"success_action_status": value},
                {"success_action_redirect": "ftp://x"},
            ],
            fields=[
                ("key", "k"),
                ("success_action_status", value),
                ("success_action_redirect", "ftp://x"),
            ],
        )
        status, headers, answer = await server.post(encode_form(fields, b"x"))
        assert status == expected
        if expected == 201:
            root = ElementTree.fromstring(answer)
            assert (root.tag, root.findtext("Key"), root.findtext("ETag")) == (
                "PostResponse",
                "k",
                headers["etag"],
            )
            assert headers["content-type"] == "application/xml"
        else:
            assert answer == b""


async def test_redirect() -> None:
    server = await form_server()
    target = "http://example.com/after"
    fields = signed_fields(
        server.access_key,
        server.secret,
        [{"key": "a b"}, {"redirect": target}],
        fields=[("key", "a b"), ("redirect", target)],
    )
    status, headers, _ = await server.post(encode_form(fields, b"x"))
    assert status == 303
    etag = headers["etag"].strip('"')
    assert headers["location"] == f"{target}?bucket={BUCKET}&key=a+b&etag=%22{etag}%22"


async def test_form_refusals_store_nothing() -> None:
    server = await form_server()
    auth = (server.access_key, server.secret)
    base = signed_fields(*auth, [{"key": "k"}], fields=[("key", "k")])
    big = signed_fields(
        *auth,
        [{"key": "k"}, ["starts-with", "$x-amz-meta-big", ""]],
        fields=[("key", "k"), ("x-amz-meta-big", "b" * 21000)],
    )
    keyless = signed_fields(*auth, [])
    meta = signed_fields(
        *auth,
        [{"key": "k"}, ["starts-with", "$x-amz-meta-m", ""]],
        fields=[("key", "k"), ("x-amz-meta-m", "m" * 3000)],
    )
    bad_acl = signed_fields(
        *auth, [{"key": "k"}, {"acl": "nope"}], fields=[("key", "k"), ("acl", "nope")]
    )
    long_key = signed_fields(*auth, [["starts-with", "$key", ""]], fields=[("key", "k" * 1025)])
    cases: list[tuple[bytes, str]] = [
        (encode_form(base, None), "IncorrectNumberOfFilesInPostRequest"),
        (encode_form([*base, ("key", "k")], b"x"), "InvalidArgument"),
        (encode_form(big, b"x"), "MaxPostPreDataLengthExceededError"),
        (b"p" * 30000 + b"\r\n" + encode_form(base, b"x"), "MaxPostPreDataLengthExceededError"),
        (encode_form(keyless, b"x"), "InvalidArgument"),
        (encode_form(meta, b"x"), "MetadataTooLarge"),
        (encode_form(bad_acl, b"x"), "InvalidArgument"),
        (encode_form(long_key, b"x"), "KeyTooLongError"),
        (encode_form([*base[:-1], ("x-amz-signature", "0" * 64)], b"x"), "SignatureDoesNotMatch"),
        (encode_form([("key", "k")], b"x"), "AccessDenied"),
        (encode_form(base, b"x")[:-10], "MalformedPOSTRequest"),
        (encode_form([*base, ("x", b"\xff")], b"x"), "MalformedPOSTRequest"),
        (encode_form(base, b"x", after=[("pad", "p" * (1024 * 1024 + 1))]), "MalformedPOSTRequest"),
    ]
    for body, code in cases:
        status, _, answer = await server.post(body)
        root = ElementTree.fromstring(answer)
        assert (root.findtext("Code"), status) == (code, S3Error(code).status), code
        assert await server.read("k") is None
    status, _, answer = await server.post(encode_form(base, b"x"), content_type="text/plain")
    assert (status, ElementTree.fromstring(answer).findtext("Code")) == (412, "PreconditionFailed")


async def test_owner_is_the_signing_key() -> None:
    server = await form_server()
    fields = signed_fields(server.access_key, server.secret, [{"key": "k"}], fields=[("key", "k")])
    assert (await server.post(encode_form(fields, b"x")))[0] == 204
    info = await server.objects.head_object(BUCKET, "k")
    assert info.owner == server.access_key


def test_policy_text_helper_expires() -> None:
    expired = decode_policy(policy_text([], expires_in=-1))
    assert expired.expiration < datetime.now(UTC)
