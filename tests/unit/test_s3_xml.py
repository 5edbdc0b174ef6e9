"""XML builders (checked by parsing them with botocore's own S3 response parser) and the
guarded request parsers (examples from the S3 API reference, plus hostile documents)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any
from xml.etree import ElementTree

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.parsers import create_parser  # type: ignore[import-untyped]
from botocore.serialize import create_serializer  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from interfaces.s3 import xml
from interfaces.s3.errors import ERROR_TABLE, S3Error
from storage.object_records import CANNED_ACLS, CorsRule

WHEN = datetime(2009, 10, 12, 17, 50, 30, 123456, tzinfo=UTC)
OWNER = xml.Owner("75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a", "me")


@cache
def _model() -> Any:
    return botocore.session.get_session().get_service_model("s3")


def boto_parse(operation: str, body: bytes, status: int = 200) -> dict[str, Any]:
    """Parse ``body`` exactly as boto3 would parse the response of ``operation``."""
    shape = _model().operation_model(operation).output_shape
    parsed: dict[str, Any] = create_parser("rest-xml").parse(
        {"body": body, "headers": {}, "status_code": status}, shape
    )
    return parsed


def test_iso8601() -> None:
    assert xml.iso8601(WHEN) == "2009-10-12T17:50:30.123Z"
    assert xml.iso8601(datetime(2009, 10, 12)) == "2009-10-12T00:00:00.000Z"


def test_escape() -> None:
    assert xml.escape("a&b<c>d\re\x01") == "a&amp;b&lt;c&gt;d&#xD;e&#x1;"
    assert xml.escape("quote \" apostrophe ' tab\tnl\n") == "quote \" apostrophe ' tab\tnl\n"


def test_list_buckets() -> None:
    body = xml.list_buckets(OWNER, [xml.BucketInfo("b1", WHEN), xml.BucketInfo("b&2", WHEN)])
    parsed = boto_parse("ListBuckets", body)
    assert [b["Name"] for b in parsed["Buckets"]] == ["b1", "b&2"]
    assert parsed["Buckets"][0]["CreationDate"] == datetime(
        2009, 10, 12, 17, 50, 30, 123000, tzinfo=parsed["Buckets"][0]["CreationDate"].tzinfo
    )
    assert parsed["Owner"] == {"ID": OWNER.id, "DisplayName": "me"}


def test_list_objects_v1() -> None:
    body = xml.list_objects(
        bucket="bucket",
        prefix="",
        marker="",
        max_keys=1000,
        is_truncated=True,
        contents=[
            xml.ObjectInfo(
                "my image.jpg", WHEN, '"fba9dede5f27731c9771645a39863328"', 434234, owner=OWNER
            )
        ],
        common_prefixes=["photos/"],
        delimiter="/",
        next_marker="my image.jpg",
    )
    parsed = boto_parse("ListObjects", body)
    assert parsed["Name"] == "bucket"
    assert parsed["IsTruncated"] is True
    assert parsed["NextMarker"] == "my image.jpg"
    assert parsed["Contents"][0]["Key"] == "my image.jpg"
    assert parsed["Contents"][0]["Size"] == 434234
    assert parsed["Contents"][0]["ETag"] == '"fba9dede5f27731c9771645a39863328"'
    assert parsed["CommonPrefixes"] == [{"Prefix": "photos/"}]


def test_list_objects_v2_url_encoding() -> None:
    key = "a b+c/ü%\x01"
    body = xml.list_objects_v2(
        bucket="bucket",
        prefix="a b",
        max_keys=2,
        is_truncated=True,
        contents=[xml.ObjectInfo(key, WHEN, '"x"', 1)],
        common_prefixes=["a b/"],
        delimiter="/",
        continuation_token="tok",
        next_continuation_token="next",
        start_after="a",
        encoding_type="url",
    )
    assert b"a%20b%2Bc/%C3%BC%25%01" in body
    parsed = boto_parse("ListObjectsV2", body)
    assert parsed["KeyCount"] == 2
    assert parsed["NextContinuationToken"] == "next"
    assert parsed["EncodingType"] == "url"
    # boto3 decodes url-encoded keys in a handler, with unquote_plus semantics:
    from urllib.parse import unquote_plus

    assert unquote_plus(parsed["Contents"][0]["Key"]) == key
    assert unquote_plus(parsed["Prefix"]) == "a b"


def test_list_object_versions() -> None:
    body = xml.list_object_versions(
        bucket="bucket",
        prefix="",
        key_marker="",
        version_id_marker="",
        max_keys=10,
        is_truncated=False,
        versions=[
            xml.VersionInfo("k", "v2", True, WHEN, delete_marker=True, owner=OWNER),
            xml.VersionInfo("k", "v1", False, WHEN, '"e"', 5),
        ],
    )
    parsed = boto_parse("ListObjectVersions", body)
    assert parsed["DeleteMarkers"][0]["VersionId"] == "v2"
    assert parsed["DeleteMarkers"][0]["IsLatest"] is True
    assert parsed["Versions"][0]["Size"] == 5


def test_multipart_bodies() -> None:
    parsed = boto_parse("CreateMultipartUpload", xml.initiate_multipart_upload("b", "k", "u1"))
    assert (parsed["Bucket"], parsed["Key"], parsed["UploadId"]) == ("b", "k", "u1")
    parsed = boto_parse(
        "CompleteMultipartUpload",
        xml.complete_multipart_upload(
            "http://h/b/k", "b", "k", '"3858f62230ac3c915f300c664312c11f-9"'
        ),
    )
    assert parsed["ETag"] == '"3858f62230ac3c915f300c664312c11f-9"'
    body = xml.list_parts(
        bucket="b",
        key="k",
        upload_id="u1",
        part_number_marker=1,
        max_parts=2,
        is_truncated=True,
        next_part_number_marker=3,
        owner=OWNER,
        parts=[
            xml.PartInfo(2, WHEN, '"7778aef83f66abc1fa1e8477f296d394"', 10485760),
            xml.PartInfo(3, WHEN, '"aaaa18db4cc2f85cedef654fccc4a4x8"', 10485760),
        ],
    )
    parsed = boto_parse("ListParts", body)
    assert [p["PartNumber"] for p in parsed["Parts"]] == [2, 3]
    assert parsed["NextPartNumberMarker"] == 3
    assert parsed["Initiator"]["ID"] == OWNER.id
    body = xml.list_multipart_uploads(
        bucket="b",
        key_marker="",
        upload_id_marker="",
        max_uploads=3,
        is_truncated=False,
        uploads=[xml.UploadInfo("my-movie.m2ts", "VXBsb2Fk", WHEN, owner=OWNER)],
    )
    parsed = boto_parse("ListMultipartUploads", body)
    assert parsed["Uploads"][0]["UploadId"] == "VXBsb2Fk"


def _attributes(body: bytes) -> dict[str, Any]:
    """The GetObjectAttributes fields boto3 reads from ``body`` (no response metadata)."""
    parsed = boto_parse("GetObjectAttributes", body)
    parsed.pop("ResponseMetadata", None)
    return parsed


def test_get_object_attributes_every_attribute() -> None:
    body = xml.get_object_attributes(
        etag="3858f62230ac3c915f300c664312c11f-9",
        checksum=("CRC32", "i9aeUg=="),
        object_parts=xml.ObjectParts(
            9,
            [(3, 5242880), (4, 17)],
            part_number_marker=2,
            max_parts=2,
            is_truncated=True,
            next_part_number_marker=4,
        ),
        storage_class="STANDARD",
        object_size=41943057,
    )
    root = ElementTree.fromstring(body)
    ns = "{" + xml.S3_NAMESPACE + "}"
    assert root.tag == ns + "GetObjectAttributesResponse"
    # the order of the S3 API reference's response syntax
    assert [child.tag.removeprefix(ns) for child in root] == [
        "ETag",
        "Checksum",
        "ObjectParts",
        "StorageClass",
        "ObjectSize",
    ]
    parsed = _attributes(body)
    assert parsed["ETag"] == "3858f62230ac3c915f300c664312c11f-9"
    assert parsed["Checksum"] == {"ChecksumCRC32": "i9aeUg==", "ChecksumType": "FULL_OBJECT"}
    assert parsed["ObjectParts"] == {
        "TotalPartsCount": 9,
        "PartNumberMarker": 2,
        "NextPartNumberMarker": 4,
        "MaxParts": 2,
        "IsTruncated": True,
        "Parts": [{"PartNumber": 3, "Size": 5242880}, {"PartNumber": 4, "Size": 17}],
    }
    assert (parsed["StorageClass"], parsed["ObjectSize"]) == ("STANDARD", 41943057)


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_get_object_attributes_checksum_names(algorithm: str) -> None:
    parsed = _attributes(xml.get_object_attributes(checksum=(algorithm, "AAAA")))
    assert parsed == {"Checksum": {f"Checksum{algorithm}": "AAAA", "ChecksumType": "FULL_OBJECT"}}


def test_get_object_attributes_only_what_is_given() -> None:
    assert _attributes(xml.get_object_attributes(object_size=0)) == {"ObjectSize": 0}
    assert _attributes(xml.get_object_attributes(etag="a&b")) == {"ETag": "a&b"}
    assert _attributes(xml.get_object_attributes()) == {}


def test_get_object_attributes_parts() -> None:
    last_page = xml.ObjectParts(3, [(3, 20)], part_number_marker=2, max_parts=1000)
    parsed = _attributes(xml.get_object_attributes(object_parts=last_page))
    assert parsed["ObjectParts"] == {
        "TotalPartsCount": 3,
        "PartNumberMarker": 2,
        "MaxParts": 1000,
        "IsTruncated": False,
        "Parts": [{"PartNumber": 3, "Size": 20}],
    }
    beyond = xml.ObjectParts(3, [], part_number_marker=7, max_parts=5)
    parsed = _attributes(xml.get_object_attributes(object_parts=beyond))
    assert parsed["ObjectParts"]["IsTruncated"] is False
    assert "Parts" not in parsed["ObjectParts"]
    # part sizes not recorded: the count alone
    unknown = xml.ObjectParts(3)
    parsed = _attributes(xml.get_object_attributes(object_parts=unknown))
    assert parsed["ObjectParts"] == {"TotalPartsCount": 3}


def test_copy_results() -> None:
    parsed = boto_parse("CopyObject", xml.copy_object_result('"e"', WHEN))
    assert parsed["CopyObjectResult"]["ETag"] == '"e"'
    parsed = boto_parse("UploadPartCopy", xml.copy_part_result('"e"', WHEN))
    assert parsed["CopyPartResult"]["ETag"] == '"e"'


def test_delete_result() -> None:
    body = xml.delete_result(
        [
            xml.Deleted("sample1.txt"),
            xml.Deleted("x", delete_marker=True, delete_marker_version_id="dm"),
        ],
        [xml.DeleteError("sample2.txt", "AccessDenied", "Access Denied")],
    )
    parsed = boto_parse("DeleteObjects", body)
    assert parsed["Deleted"][0] == {"Key": "sample1.txt"}
    assert parsed["Deleted"][1]["DeleteMarker"] is True
    assert parsed["Errors"][0]["Code"] == "AccessDenied"
    quiet = xml.delete_result([xml.Deleted("a")], [], quiet=True)
    assert b"<Deleted>" not in quiet


def test_location_constraint() -> None:
    # botocore reads the root element's text (handlers.parse_get_bucket_location)
    root = ElementTree.fromstring(xml.location_constraint("eu-west-1"))
    assert root.tag == f"{{{xml.S3_NAMESPACE}}}LocationConstraint"
    assert root.text == "eu-west-1"
    assert b"></LocationConstraint>" in xml.location_constraint("us-east-1")
    assert b"></LocationConstraint>" in xml.location_constraint(None)


def test_error_body() -> None:
    err = S3Error("NoSuchKey", resource="/b/k")
    body = xml.error(err, request_id="4442587FB7D0A2F9")
    shape = _model().operation_model("GetObject").output_shape
    parsed = create_parser("rest-xml").parse(
        {"body": body, "headers": {}, "status_code": err.status}, shape
    )
    assert parsed["Error"]["Code"] == "NoSuchKey"
    assert parsed["Error"]["Message"] == "The specified key does not exist."
    assert parsed["Error"]["Resource"] == "/b/k"
    assert b"<RequestId>4442587FB7D0A2F9</RequestId>" in body
    assert b"<Resource>/b/k</Resource>" in body
    with_extra = xml.error(S3Error("InvalidArgument", "bad", extra={"ArgumentName": "x"}))
    assert b"<ArgumentName>x</ArgumentName>" in with_extra


def test_error_table_statuses() -> None:
    expected = {
        "NoSuchBucket": 404,
        "NoSuchKey": 404,
        "BucketNotEmpty": 409,
        "BucketAlreadyOwnedByYou": 409,
        "BucketAlreadyExists": 409,
        "InvalidRange": 416,
        "PreconditionFailed": 412,
        "NotModified": 304,
        "SignatureDoesNotMatch": 403,
        "InvalidAccessKeyId": 403,
        "AccessDenied": 403,
        "RequestTimeTooSkewed": 403,
        "EntityTooSmall": 400,
        "EntityTooLarge": 400,
        "InvalidPart": 400,
        "InvalidPartOrder": 400,
        "NoSuchUpload": 404,
        "MalformedXML": 400,
        "InvalidArgument": 400,
        "InvalidBucketName": 400,
        "InvalidDigest": 400,
        "BadDigest": 400,
        "XAmzContentSHA256Mismatch": 400,
        "IncompleteBody": 400,
        "MissingContentLength": 411,
        "MethodNotAllowed": 405,
        "NotImplemented": 501,
        "SlowDown": 503,
        "ServiceUnavailable": 503,
        "InternalError": 500,
        "KeyTooLongError": 400,
        "MetadataTooLarge": 400,
        "RequestHeaderSectionTooLarge": 400,
        "InvalidRequest": 400,
        "AuthorizationHeaderMalformed": 400,
        "IllegalLocationConstraintException": 400,
        "MalformedACLError": 400,
        "MissingSecurityHeader": 400,
        "NoSuchCORSConfiguration": 404,
        "AccessForbidden": 403,
        "BadRequest": 400,
    }
    assert {code: ERROR_TABLE[code][0] for code in expected} == expected
    assert S3Error("Unheard").status == 500


# -- parsers ------------------------------------------------------------------------------------

COMPLETE = b"""<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><PartNumber>1</PartNumber><ETag>"a54357aff0632cce46d942af68356b38"</ETag></Part>
  <Part><PartNumber>2</PartNumber><ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag>
        <ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>
  <Part><PartNumber>3</PartNumber><ETag>&quot;acbd18db4cc2f85cedef654fccc4a4d8&quot;</ETag></Part>
</CompleteMultipartUpload>"""


def test_parse_complete_multipart_upload() -> None:
    parts = xml.parse_complete_multipart_upload(COMPLETE)
    assert [p.part_number for p in parts] == [1, 2, 3]
    assert parts[0].etag == '"a54357aff0632cce46d942af68356b38"'
    assert parts[2].etag == '"acbd18db4cc2f85cedef654fccc4a4d8"'
    assert parts[1].checksums == (("CRC32", "AAAAAA=="),)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (COMPLETE.replace(b"<PartNumber>2<", b"<PartNumber>5<"), "InvalidPartOrder"),
        (COMPLETE.replace(b"<PartNumber>3<", b"<PartNumber>2<"), "InvalidPartOrder"),
        (COMPLETE.replace(b"<PartNumber>1<", b"<PartNumber>0<"), "InvalidArgument"),
        (COMPLETE.replace(b"<PartNumber>1<", b"<PartNumber>x<"), "MalformedXML"),
        (b"<CompleteMultipartUpload/>", "MalformedXML"),
        (b"<Other/>", "MalformedXML"),
        (b"", "MalformedXML"),
        (
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
            b"</CompleteMultipartUpload>",
            "MalformedXML",
        ),
        (b"<CompleteMultipartUpload><Part>", "MalformedXML"),
    ],
)
def test_parse_complete_errors(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_complete_multipart_upload(body)
    assert info.value.code == code


def test_parse_delete_objects() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
    <Quiet>true</Quiet>
    <Object><Key>sample1.txt</Key></Object>
    <Object><Key> spaced &amp; &#x1F600; </Key>
      <VersionId>OYcLXagmS.WaD..oyH4KRguB95_YhLs7</VersionId></Object>
</Delete>"""
    request = xml.parse_delete_objects(body)
    assert request.quiet is True
    assert request.objects == (
        xml.ObjectIdentifier("sample1.txt"),
        xml.ObjectIdentifier(" spaced & 😀 ", "OYcLXagmS.WaD..oyH4KRguB95_YhLs7"),
    )
    many = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    with pytest.raises(S3Error, match="MalformedXML"):
        xml.parse_delete_objects(many)
    with pytest.raises(S3Error, match="MalformedXML"):
        xml.parse_delete_objects(b"<Delete><Quiet>maybe</Quiet></Delete>")


def test_parse_create_bucket() -> None:
    assert xml.parse_create_bucket(b"") is None
    body = (
        b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
    )
    assert xml.parse_create_bucket(body) == "eu-west-1"


@pytest.mark.parametrize(
    "body",
    [
        # billion laughs
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b"<Delete><Object><Key>&lol2;</Key></Object></Delete>",
        # external entity
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<Delete><Object><Key>&xxe;</Key></Object></Delete>",
        # external DTD
        b'<!DOCTYPE Delete SYSTEM "http://example.com/evil.dtd"><Delete/>',
        # undefined entity
        b"<Delete><Object><Key>&nope;</Key></Object></Delete>",
        # too deep
        b"<Delete>" + b"<a>" * 50 + b"</a>" * 50 + b"</Delete>",
        # two roots, trailing junk
        b"<Delete/><Delete/>",
        # not UTF-8
        b"<Delete><Object><Key>\xff</Key></Object></Delete>",
    ],
)
def test_hostile_xml_refused(body: bytes) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_delete_objects(body)
    assert info.value.code == "MalformedXML"


def test_oversized_xml_refused() -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_xml(b"<a>" + b" " * (xml.MAX_XML_BYTES + 1) + b"</a>")
    assert info.value.code == "InvalidRequest"


# -- access control lists and versioning ------------------------------------------------------

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
ALL = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOGS = "http://acs.amazonaws.com/groups/s3/LogDelivery"
OWNER_GRANT = {
    "Grantee": {"Type": "CanonicalUser", "ID": OWNER.id, "DisplayName": "me"},
    "Permission": "FULL_CONTROL",
}


def _group(uri: str, permission: str) -> dict[str, Any]:
    return {"Grantee": {"Type": "Group", "URI": uri}, "Permission": permission}


#: What S3 answers for each canned ACL, after the owner's FULL_CONTROL.
CANNED = {
    "private": [],
    "public-read": [_group(ALL, "READ")],
    "public-read-write": [_group(ALL, "READ"), _group(ALL, "WRITE")],
    "authenticated-read": [_group(AUTHENTICATED, "READ")],
    "aws-exec-read": [],
    "bucket-owner-read": [],
    "bucket-owner-full-control": [],
    "log-delivery-write": [_group(LOGS, "WRITE"), _group(LOGS, "READ_ACP")],
}


def _put_acl_body(policy: dict[str, Any]) -> bytes:
    """The PutBucketAcl body boto3 sends for ``AccessControlPolicy=policy``."""
    operation = _model().operation_model("PutBucketAcl")
    request = create_serializer("rest-xml").serialize_to_request(
        {"Bucket": "b", "AccessControlPolicy": policy}, operation
    )
    body: bytes = request["body"]
    return body


def test_canned_acls_are_those_the_store_knows() -> None:
    assert set(xml.CANNED_GRANTS) == set(CANNED_ACLS) == set(CANNED)


@pytest.mark.parametrize("acl", sorted(CANNED))
def test_access_control_policy(acl: str) -> None:
    body = xml.access_control_policy(OWNER, acl)
    for operation in ("GetBucketAcl", "GetObjectAcl"):
        parsed = boto_parse(operation, body)
        assert parsed["Owner"] == {"ID": OWNER.id, "DisplayName": "me"}
        assert parsed["Grants"] == [OWNER_GRANT, *CANNED[acl]]
    root = ElementTree.fromstring(body)
    assert root.tag == "{http://s3.amazonaws.com/doc/2006-03-01/}AccessControlPolicy"
    grantees = root.iter("{http://s3.amazonaws.com/doc/2006-03-01/}Grantee")
    assert [g.get(XSI_TYPE) for g in grantees] == ["CanonicalUser"] + ["Group"] * len(CANNED[acl])


@pytest.mark.parametrize("acl", sorted(CANNED))
def test_policies_read_back_as_their_canned_acl(acl: str) -> None:
    expected = acl if CANNED[acl] else "private"  # owner-only ACLs all read back as private
    grants = xml.parse_access_control_policy(xml.access_control_policy(OWNER, acl))
    assert xml.canned_acl(grants, {OWNER.id}) == expected
    sent = _put_acl_body({"Owner": {"ID": OWNER.id}, "Grants": [OWNER_GRANT, *CANNED[acl]]})
    assert xml.canned_acl(xml.parse_access_control_policy(sent), {OWNER.id}) == expected


@pytest.mark.parametrize(
    ("grants", "expected"),
    [
        ([], "private"),
        ([OWNER_GRANT], "private"),
        ([_group(ALL, "READ")], "public-read"),
        ([_group(ALL, "WRITE"), OWNER_GRANT, _group(ALL, "READ")], "public-read-write"),
        ([_group(AUTHENTICATED, "READ"), OWNER_GRANT], "authenticated-read"),
        ([_group(LOGS, "READ_ACP"), _group(LOGS, "WRITE")], "log-delivery-write"),
        ([_group(ALL, "READ"), _group(ALL, "READ")], "public-read"),
        # not canned
        ([{"Grantee": {"Type": "CanonicalUser", "ID": "someone"}, "Permission": "READ"}], None),
        (
            [{"Grantee": {"Type": "CanonicalUser", "ID": "someone"}, "Permission": "FULL_CONTROL"}],
            None,
        ),
        ([{"Grantee": {"Type": "CanonicalUser", "ID": OWNER.id}, "Permission": "READ"}], None),
        (
            [
                {
                    "Grantee": {"Type": "AmazonCustomerByEmail", "EmailAddress": "a@b.c"},
                    "Permission": "READ",
                }
            ],
            None,
        ),
        ([_group(ALL, "READ"), _group(ALL, "WRITE_ACP")], None),
        ([_group(ALL, "WRITE")], None),
        ([_group(AUTHENTICATED, "READ"), _group(ALL, "READ")], None),
        ([_group(LOGS, "WRITE")], None),
        ([_group("http://acs.amazonaws.com/groups/global/Nobody", "READ")], None),
    ],
)
def test_grants_to_canned_acl(grants: list[dict[str, Any]], expected: str | None) -> None:
    body = _put_acl_body({"Owner": {"ID": OWNER.id, "DisplayName": "me"}, "Grants": grants})
    assert xml.canned_acl(xml.parse_access_control_policy(body), {OWNER.id}) == expected


def test_grantee_type_from_its_element_and_whitespace() -> None:
    body = (
        b"<AccessControlPolicy><AccessControlList>\n"
        b"  <Grant><Grantee><URI> " + ALL.encode() + b" </URI></Grantee>"
        b"<Permission> READ </Permission></Grant>\n"
        b"  <Grant><Grantee><ID>me</ID><DisplayName>x</DisplayName></Grantee>"
        b"<Permission>FULL_CONTROL</Permission></Grant>\n"
        b"</AccessControlList></AccessControlPolicy>"
    )
    assert xml.parse_access_control_policy(body) == [
        xml.Grant("Group", ALL, "READ"),
        xml.Grant("CanonicalUser", "me", "FULL_CONTROL"),
    ]


_GRANT = (
    '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="{type}">'
    "{grantee}</Grantee><Permission>{permission}</Permission></Grant>"
)


def _policy(*grants: str, owner: str = "<Owner><ID>me</ID></Owner>") -> bytes:
    return (
        f"<AccessControlPolicy>{owner}<AccessControlList>{''.join(grants)}"
        "</AccessControlList></AccessControlPolicy>"
    ).encode()


def _g(kind: str = "Group", grantee: str = f"<URI>{ALL}</URI>", permission: str = "READ") -> str:
    return _GRANT.format(type=kind, grantee=grantee, permission=permission)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not xml",
        b"<AccessControlPolicy>",
        b"<AccessControlPolicy/>",
        b"<Other><AccessControlList/></Other>",
        b"<AccessControlPolicy><AccessControlList/><AccessControlList/></AccessControlPolicy>",
        b"<AccessControlPolicy><AccessControlList/><Extra/></AccessControlPolicy>",
        _policy(owner="<Owner><DisplayName>x</DisplayName></Owner>"),
        _policy(owner="<Owner><ID>a</ID><ID>b</ID></Owner>"),
        _policy(owner="<Owner><ID>a</ID><Nope/></Owner>"),
        _policy("<NotAGrant/>"),
        _policy("<Grant><Permission>READ</Permission></Grant>"),
        _policy(f"<Grant><Grantee><URI>{ALL}</URI></Grantee></Grant>"),
        _policy(_g(permission="EVERYTHING")),
        _policy(_g(permission="")),
        _policy(_g(kind="Robot")),
        _policy(_g(kind="CanonicalUser")),
        _policy(_g(grantee="<URI></URI>")),
        _policy(_g(grantee=f"<URI>{ALL}</URI><URI>{ALL}</URI>")),
        _policy(_g(grantee=f"<URI>{ALL}</URI><ID>me</ID>")),
        _policy(_g(grantee=f"<URI>{ALL}</URI><DisplayName>all</DisplayName>")),
        _policy(_g(grantee=f"<URI>{ALL}</URI><Extra/>")),
        _policy("<Grant><Grantee><Nothing/></Grantee><Permission>READ</Permission></Grant>"),
        _policy(_g() + "<Grant><Grantee><ID>a</ID></Grantee><Permission>READ</Permission>"),
        _policy(
            f"<Grant><Grantee><URI>{ALL}</URI></Grantee><Permission>READ</Permission>"
            "<Permission>WRITE</Permission></Grant>"
        ),
        b'<!DOCTYPE a [<!ENTITY e "x">]><AccessControlPolicy><AccessControlList/>'
        b"</AccessControlPolicy>",
        _policy(_g()).replace(b"READ", b"R\xffEAD"),
    ],
)
def test_malformed_acl(body: bytes) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_access_control_policy(body)
    assert (info.value.code, info.value.status) == ("MalformedACLError", 400)
    assert info.value.message == ERROR_TABLE["MalformedXML"][1]


_ACL_PIECES = [
    "<AccessControlPolicy>", "</AccessControlPolicy>", "<AccessControlList>",
    "</AccessControlList>", "<Grant>", "</Grant>", "<Grantee>", "</Grantee>",
    '<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">',
    '<Grantee xsi:type="CanonicalUser">', "<ID>", "</ID>", "<URI>", "</URI>", ALL,
    "<Permission>", "</Permission>", "READ", "WRITE", "FULL_CONTROL", "<Owner>", "</Owner>",
    "<DisplayName>", "</DisplayName>", "&amp;", "&bad;", "<!DOCTYPE x>", "<?xml version='1.0'?>",
    "<a/>", " ", "\x00", "é", "<", ">", '"',
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(_ACL_PIECES), max_size=40).map(lambda p: "".join(p).encode()),
    )
)
def test_garbage_acl_bodies_are_malformed_never_a_crash(body: bytes) -> None:
    code = None
    try:
        grants = xml.parse_access_control_policy(body)
    except S3Error as err:
        code = err.code
    else:
        assert all(isinstance(g, xml.Grant) for g in grants)
        xml.canned_acl(grants, {"me"})
    assert code in (None, "MalformedACLError")


def test_oversized_acl_refused() -> None:
    body = _policy(_g() * (xml.MAX_ACL_XML_BYTES // len(_g()) + 1))
    with pytest.raises(S3Error) as info:
        xml.parse_access_control_policy(body)
    assert info.value.code == "InvalidRequest"


def test_versioning_configuration() -> None:
    body = xml.empty_configuration("VersioningConfiguration")
    parsed = boto_parse("GetBucketVersioning", body)
    assert parsed.keys() == {"ResponseMetadata"}
    root = ElementTree.fromstring(body)
    assert root.tag == "{http://s3.amazonaws.com/doc/2006-03-01/}VersioningConfiguration"
    assert list(root) == []
    assert not (root.text or "").strip()


# -- cross-origin resource sharing ------------------------------------------------------------


def _put_cors_body(rules: list[dict[str, Any]]) -> bytes:
    """The PutBucketCors body boto3 sends for ``CORSConfiguration={"CORSRules": rules}``."""
    operation = _model().operation_model("PutBucketCors")
    request = create_serializer("rest-xml").serialize_to_request(
        {"Bucket": "b", "CORSConfiguration": {"CORSRules": rules}}, operation
    )
    body: bytes = request["body"]
    return body


BOTO_CORS_RULES: list[dict[str, Any]] = [
    {
        "ID": "uploads & <friends>",
        "AllowedHeaders": ["*", "x-amz-*"],
        "AllowedMethods": ["PUT", "POST", "DELETE"],
        "AllowedOrigins": ["http://www.example.com", "https://*.example.com"],
        "ExposeHeaders": ["ETag", "x-amz-request-id"],
        "MaxAgeSeconds": 3000,
    },
    {"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"]},
]


def test_cors_configuration_round_trip() -> None:
    rules = xml.parse_cors_configuration(_put_cors_body(BOTO_CORS_RULES))
    assert rules == (
        CorsRule(
            ("http://www.example.com", "https://*.example.com"),
            ("PUT", "POST", "DELETE"),
            ("*", "x-amz-*"),
            ("ETag", "x-amz-request-id"),
            "uploads & <friends>",
            3000,
        ),
        CorsRule(("*",), ("GET", "HEAD")),
    )
    body = xml.cors_configuration(rules)
    assert boto_parse("GetBucketCors", body)["CORSRules"] == BOTO_CORS_RULES
    assert xml.parse_cors_configuration(body) == rules


def test_parse_cors_example_from_the_reference() -> None:
    body = b"""<CORSConfiguration>
      <CORSRule>
        <AllowedOrigin>http://www.example.com</AllowedOrigin>
        <AllowedMethod>PUT</AllowedMethod>
        <AllowedMethod>POST</AllowedMethod>
        <AllowedMethod>DELETE</AllowedMethod>
        <AllowedHeader>*</AllowedHeader>
        <MaxAgeSeconds> 3000 </MaxAgeSeconds>
        <ExposeHeader>x-amz-server-side-encryption</ExposeHeader>
      </CORSRule>
      <CORSRule>
        <AllowedOrigin></AllowedOrigin>
        <AllowedMethod>GET</AllowedMethod>
      </CORSRule>
    </CORSConfiguration>"""
    first, second = xml.parse_cors_configuration(body)
    assert first == CorsRule(
        ("http://www.example.com",),
        ("PUT", "POST", "DELETE"),
        ("*",),
        ("x-amz-server-side-encryption",),
        None,
        3000,
    )
    assert second == CorsRule(("",), ("GET",))


_RULE = "<AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"


def _cors(*rules: str) -> bytes:
    return ("<CORSConfiguration>" + "".join(rules) + "</CORSConfiguration>").encode()


def _rule(inner: str = _RULE) -> str:
    return f"<CORSRule>{inner}</CORSRule>"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"", "MalformedXML", None),
        (b"not xml", "MalformedXML", None),
        (_cors(), "MalformedXML", None),
        (b"<CORSConfiguration/>", "MalformedXML", None),
        (_cors(_rule()).replace(b"CORSConfiguration", b"CorsConfiguration"), "MalformedXML", None),
        (_cors(_rule(), "<Rule/>"), "MalformedXML", None),
        (_cors(_rule("")), "MalformedXML", None),
        (_cors(_rule("<AllowedMethod>GET</AllowedMethod>")), "MalformedXML", None),
        (_cors(_rule("<AllowedOrigin>*</AllowedOrigin>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<Unknown>x</Unknown>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<ID>a</ID><ID>b</ID>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds>1</MaxAgeSeconds>" * 2)), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds>-1</MaxAgeSeconds>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds>1.5</MaxAgeSeconds>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds></MaxAgeSeconds>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds>2147483648</MaxAgeSeconds>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<MaxAgeSeconds>١</MaxAgeSeconds>")), "MalformedXML", None),
        (_cors(_rule(_RULE + "<ID><b>x</b></ID>")), "MalformedXML", None),
        (
            _cors(_rule("<AllowedOrigin>*</AllowedOrigin><AllowedMethod>PATCH</AllowedMethod>")),
            "InvalidRequest",
            "Found unsupported HTTP method in CORS config. Unsupported method is PATCH",
        ),
        (
            _cors(_rule(_RULE + "<AllowedMethod>get</AllowedMethod>")),
            "InvalidRequest",
            "Found unsupported HTTP method in CORS config. Unsupported method is get",
        ),
        (
            _cors(_rule(_RULE + "<AllowedMethod>OPTIONS</AllowedMethod>")),
            "InvalidRequest",
            "Found unsupported HTTP method in CORS config. Unsupported method is OPTIONS",
        ),
        (
            _cors(_rule(_RULE + "<AllowedMethod></AllowedMethod>")),
            "InvalidRequest",
            "Found unsupported HTTP method in CORS config. Unsupported method is ",
        ),
        (
            _cors(_rule(_RULE + "<AllowedOrigin>https://*.example.*</AllowedOrigin>")),
            "InvalidRequest",
            'AllowedOrigin "https://*.example.*" can not have more than one wildcard.',
        ),
        (
            _cors(_rule(_RULE + "<AllowedHeader>x-*-*</AllowedHeader>")),
            "InvalidRequest",
            'AllowedHeader "x-*-*" can not have more than one wildcard.',
        ),
        (
            _cors(_rule(_RULE + "<ExposeHeader>x-amz-*</ExposeHeader>")),
            "InvalidRequest",
            'ExposeHeader "x-amz-*" contains wildcard. We currently do not support wildcard '
            "for ExposeHeader.",
        ),
        (
            _cors(_rule(_RULE + f"<ID>{'i' * 256}</ID>")),
            "InvalidRequest",
            f'The ID value can be up to 255 characters long. Invalid ID is "{"i" * 64}"',
        ),
        (
            _cors(*[_rule()] * 101),
            "InvalidRequest",
            "The number of CORS rules should not exceed allowed limit of 100 rules.",
        ),
        (
            b"<!DOCTYPE x [<!ENTITY e 'GET'>]>" + _cors(_rule(_RULE.replace("GET", "&e;"))),
            "MalformedXML",
            None,
        ),
    ],
)
def test_parse_cors_refusals(body: bytes, code: str, message: str | None) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_cors_configuration(body)
    assert (info.value.code, info.value.status) == (code, 400)
    if message is not None:
        assert info.value.message == message


def test_cors_limits_are_inclusive() -> None:
    rules = xml.parse_cors_configuration(_cors(*[_rule()] * 100))
    assert len(rules) == 100
    (rule,) = xml.parse_cors_configuration(
        _cors(_rule(_RULE + f"<ID>{'i' * 255}</ID><MaxAgeSeconds>2147483647</MaxAgeSeconds>"))
    )
    assert (rule.id, rule.max_age_seconds) == ("i" * 255, 2**31 - 1)


def test_oversized_cors_refused() -> None:
    body = _cors(_rule(_RULE + "<ID>x</ID>" + " " * xml.MAX_CORS_XML_BYTES))
    with pytest.raises(S3Error) as info:
        xml.parse_cors_configuration(body)
    assert info.value.code == "InvalidRequest"


_CORS_PIECES = [
    "<CORSConfiguration>", "</CORSConfiguration>", "<CORSRule>", "</CORSRule>",
    "<AllowedOrigin>", "</AllowedOrigin>", "<AllowedMethod>", "</AllowedMethod>",
    "<AllowedHeader>", "</AllowedHeader>", "<ExposeHeader>", "</ExposeHeader>", "<ID>", "</ID>",
    "<MaxAgeSeconds>", "</MaxAgeSeconds>", "GET", "PUT", "PATCH", "*", "**", "http://a",
    "3000", "-1", "99999999999", "&amp;", "&bad;", "<!DOCTYPE x>", "<?xml version='1.0'?>",
    "<a/>", " ", "\x00", "é", "<", ">", '"',
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(_CORS_PIECES), max_size=40).map(lambda p: "".join(p).encode()),
    )
)
def test_garbage_cors_bodies_are_a_400_never_a_crash(body: bytes) -> None:
    refusal = None
    try:
        rules = xml.parse_cors_configuration(body)
    except S3Error as err:
        refusal = (err.code, err.status)
    else:
        assert 1 <= len(rules) <= xml.MAX_CORS_RULES
        assert xml.parse_cors_configuration(xml.cors_configuration(rules)) == rules
    assert refusal in (None, ("MalformedXML", 400), ("InvalidRequest", 400))


# -- tagging --------------------------------------------------------------------------------


def _put_tagging_body(operation: str, tags: list[dict[str, str]]) -> bytes:
    """The body boto3 sends for PutObjectTagging or PutBucketTagging."""
    model = _model().operation_model(operation)
    params: dict[str, Any] = {"Bucket": "b", "Tagging": {"TagSet": tags}}
    if operation == "PutObjectTagging":
        params["Key"] = "k"
    request = create_serializer("rest-xml").serialize_to_request(params, model)
    body: bytes = request["body"]
    return body


BOTO_TAGS = [
    {"Key": "project", "Value": "ballast & <co>"},
    {"Key": "empty", "Value": ""},
    {"Key": "é 🚀", "Value": "v"},
]


@pytest.mark.parametrize(
    ("put", "get"),
    [("PutObjectTagging", "GetObjectTagging"), ("PutBucketTagging", "GetBucketTagging")],
)
def test_tagging_round_trip(put: str, get: str) -> None:
    tags = xml.parse_tagging(_put_tagging_body(put, BOTO_TAGS), bucket=put == "PutBucketTagging")
    assert tags == {"project": "ballast & <co>", "empty": "", "é 🚀": "v"}
    assert list(tags) == ["project", "empty", "é 🚀"]
    body = xml.tagging(tags)
    assert boto_parse(get, body)["TagSet"] == BOTO_TAGS
    assert xml.parse_tagging(body) == tags


def test_empty_tagging() -> None:
    body = xml.tagging({})
    assert boto_parse("GetObjectTagging", body)["TagSet"] == []
    assert xml.parse_tagging(body) == {}
    assert xml.parse_tagging(b"<Tagging><TagSet/></Tagging>") == {}


def test_parse_tagging_example_from_the_reference() -> None:
    body = b"""<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
      <TagSet>
        <Tag>
          <Key>tag1</Key>
          <Value>val1</Value>
        </Tag>
        <Tag><Key>tag2</Key><Value>val2</Value></Tag>
      </TagSet>
    </Tagging>"""
    assert xml.parse_tagging(body) == {"tag1": "val1", "tag2": "val2"}


def _tagging(*tags: str) -> bytes:
    return f"<Tagging><TagSet>{''.join(tags)}</TagSet></Tagging>".encode()


def _t(key: str, value: str = "v") -> str:
    return f"<Tag><Key>{key}</Key><Value>{value}</Value></Tag>"


@pytest.mark.parametrize(
    ("body", "bucket", "code", "message"),
    [
        (b"", False, "MalformedXML", None),
        (b"<Tagging>", False, "MalformedXML", None),
        (b"<Tagging/>", False, "MalformedXML", None),
        (b"<Other><TagSet/></Other>", False, "MalformedXML", None),
        (b"<Tagging><TagSet/><TagSet/></Tagging>", False, "MalformedXML", None),
        (b"<Tagging><TagSet/><Extra/></Tagging>", False, "MalformedXML", None),
        (_tagging("<Other/>"), False, "MalformedXML", None),
        (_tagging("<Tag><Key>k</Key></Tag>"), False, "MalformedXML", None),
        (_tagging("<Tag><Value>v</Value></Tag>"), False, "MalformedXML", None),
        (_tagging("<Tag><Key>k</Key><Key>j</Key><Value/></Tag>"), False, "MalformedXML", None),
        (_tagging("<Tag><Key>k</Key><Value>v</Value><X/></Tag>"), False, "MalformedXML", None),
        (_tagging("<Tag><Key><a/></Key><Value>v</Value></Tag>"), False, "MalformedXML", None),
        (_tagging(_t("k", "<b/>")), False, "MalformedXML", None),
        (b"<!DOCTYPE x [<!ENTITY e 'k'>]>" + _tagging(_t("&e;")), False, "MalformedXML", None),
        (_tagging(_t("")), False, "InvalidTag", "The TagKey you have provided is invalid"),
        (
            _tagging(_t("k" * 129)),
            False,
            "InvalidTag",
            "The TagKey you have provided is too long, max 128",
        ),
        (
            _tagging(_t("k", "v" * 257)),
            True,
            "InvalidTag",
            "The TagValue you have provided is too long, max 256",
        ),
        (
            _tagging(_t("k"), _t("k", "w")),
            False,
            "InvalidTag",
            "Cannot provide multiple Tags with the same key",
        ),
        (
            _tagging(_t("aws:createdBy")),
            False,
            "InvalidTag",
            "Your TagKey cannot be prefixed with aws:",
        ),
        (
            _tagging(_t("aws:createdBy")),
            True,
            "InvalidTag",
            "System tags cannot be added/updated by requester",
        ),
        (
            _tagging(*[_t(f"k{i}") for i in range(11)]),
            False,
            "InvalidTag",
            "Object tags cannot be greater than 10",
        ),
        (
            _tagging(*[_t(f"k{i}") for i in range(51)]),
            True,
            "InvalidTag",
            "Bucket tag count cannot be greater than 50",
        ),
        (_tagging(_t("k", " " * xml.MAX_TAGGING_XML_BYTES)), False, "InvalidRequest", None),
    ],
)  # fmt: skip
def test_parse_tagging_refusals(body: bytes, bucket: bool, code: str, message: str | None) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_tagging(body, bucket=bucket)
    assert (info.value.code, info.value.status) == (code, 400)
    if message is not None:
        assert info.value.message == message


def test_tag_limits_are_inclusive() -> None:
    tags = xml.parse_tagging(_tagging(*[_t(f"k{i}") for i in range(10)]))
    assert len(tags) == 10
    tags = xml.parse_tagging(_tagging(*[_t(f"k{i}") for i in range(50)]), bucket=True)
    assert len(tags) == 50
    long_key, long_value = "é" * 128, "€" * 256  # characters, not bytes
    assert xml.parse_tagging(_tagging(_t(long_key, long_value))) == {long_key: long_value}
    assert xml.check_tags([("AWS:upper", "x"), ("a", "aws:")]) == {"AWS:upper": "x", "a": "aws:"}


_TAGGING_PIECES = [
    "<Tagging>", "</Tagging>", "<TagSet>", "</TagSet>", "<Tag>", "</Tag>", "<Key>", "</Key>",
    "<Value>", "</Value>", "<TagSet/>", "<Key/>", "<Value/>", "k", "aws:", "v" * 200, "&amp;",
    "&bad;", "<!DOCTYPE x>", "<?xml version='1.0'?>", "<a/>", " ", "\x00", "é", "<", ">", '"',
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(_TAGGING_PIECES), max_size=60).map(lambda p: "".join(p).encode()),
    ),
    st.booleans(),
)
def test_garbage_tagging_bodies_are_a_400_never_a_crash(body: bytes, bucket: bool) -> None:
    refusal = None
    try:
        tags = xml.parse_tagging(body, bucket=bucket)
    except S3Error as err:
        refusal = (err.code, err.status)
    else:
        assert len(tags) <= (xml.MAX_BUCKET_TAGS if bucket else xml.MAX_OBJECT_TAGS)
        assert xml.parse_tagging(xml.tagging(tags), bucket=bucket) == tags
    assert refusal in (None, ("MalformedXML", 400), ("InvalidTag", 400))


@pytest.mark.parametrize("bad", ["\x01", "a\x7fb", "line\nbreak", "\ud800", "\ufffe"])
def test_tags_with_control_characters_are_invalid(bad: str) -> None:
    """They could not be sent back in XML (a client could not read its tags again)."""
    for pairs in ([(bad, "v")], [("k", bad)]):
        with pytest.raises(S3Error) as info:
            xml.check_tags(pairs)
        assert info.value.code == "InvalidTag"
    assert xml.check_tags([("k", "ballast & <co> é 🚀")]) == {"k": "ballast & <co> é 🚀"}


def test_a_tag_with_two_keys_is_malformed() -> None:
    body = (
        b"<Tagging><TagSet><Tag><Key>a</Key><Key>b</Key><Value>v</Value></Tag></TagSet></Tagging>"
    )
    with pytest.raises(S3Error) as info:
        xml.parse_tagging(body)
    assert info.value.code == "MalformedXML"
