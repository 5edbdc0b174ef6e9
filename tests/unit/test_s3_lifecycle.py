"""Lifecycle configuration bodies: what boto3 sends parses, reads back as boto3 expects,
and every bad body gets its S3 error (never anything else)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.parsers import create_parser  # type: ignore[import-untyped]
from botocore.serialize import create_serializer  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from interfaces.s3 import xml
from interfaces.s3.errors import ERROR_TABLE, NAMED_BY, S3Error
from storage.lifecycle import (
    Expiration,
    FilterForm,
    LifecycleFilter,
    LifecycleRule,
    NoncurrentVersionExpiration,
)


@cache
def _model() -> Any:
    return botocore.session.get_session().get_service_model("s3")


def put_body(rules: list[dict[str, Any]]) -> bytes:
    """The PutBucketLifecycleConfiguration body boto3 sends for ``rules``."""
    operation = _model().operation_model("PutBucketLifecycleConfiguration")
    request = create_serializer("rest-xml").serialize_to_request(
        {"Bucket": "b", "LifecycleConfiguration": {"Rules": rules}}, operation
    )
    body: bytes = request["body"]
    return body


def boto_rules(body: bytes) -> list[dict[str, Any]]:
    """``body`` parsed as boto3 parses a GetBucketLifecycleConfiguration answer."""
    shape = _model().operation_model("GetBucketLifecycleConfiguration").output_shape
    parsed = create_parser("rest-xml").parse(
        {"body": body, "headers": {}, "status_code": 200}, shape
    )
    rules: list[dict[str, Any]] = parsed["Rules"]
    return rules


DATE = datetime(2030, 12, 23, tzinfo=UTC)
BOTO_RULES: list[dict[str, Any]] = [
    {
        "ID": "logs & <old>",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    },
    {
        "ID": "tagged",
        "Filter": {"Tag": {"Key": "class", "Value": "tmp"}},
        "Status": "Disabled",
        "Expiration": {"Date": DATE},
    },
    {
        "ID": "and",
        "Filter": {
            "And": {
                "Prefix": "data/",
                "Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": ""}],
                "ObjectSizeGreaterThan": 100,
                "ObjectSizeLessThan": 2000,
            }
        },
        "Status": "Enabled",
        "Expiration": {"Days": 1},
    },
    {"ID": "legacy", "Prefix": "", "Status": "Enabled", "Expiration": {"Days": 365}},
    {"ID": "bigger", "Filter": {"ObjectSizeGreaterThan": 0}, "Status": "Enabled",
     "Expiration": {"Days": 2}},
    {"ID": "smaller", "Filter": {"ObjectSizeLessThan": 5}, "Status": "Enabled",
     "Expiration": {"Days": 3}},
    {
        "ID": "versions",
        "Filter": {},
        "Status": "Enabled",
        "Expiration": {"ExpiredObjectDeleteMarker": True},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 30, "NewerNoncurrentVersions": 3},
    },
]  # fmt: skip

EXPECTED = (
    LifecycleRule("logs & <old>", True, LifecycleFilter(prefix="logs/"), Expiration(days=30), 7),
    LifecycleRule(
        "tagged", False, LifecycleFilter(tags=(("class", "tmp"),)), Expiration(date=DATE)
    ),
    LifecycleRule(
        "and",
        True,
        LifecycleFilter("data/", (("a", "1"), ("b", "")), 100, 2000, FilterForm.AND),
        Expiration(days=1),
    ),
    LifecycleRule(
        "legacy", True, LifecycleFilter("", form=FilterForm.LEGACY_PREFIX), Expiration(days=365)
    ),
    LifecycleRule("bigger", True, LifecycleFilter(size_greater_than=0), Expiration(days=2)),
    LifecycleRule("smaller", True, LifecycleFilter(size_less_than=5), Expiration(days=3)),
    LifecycleRule(
        "versions",
        True,
        LifecycleFilter(),
        Expiration(expired_object_delete_marker=True),
        noncurrent_expiration=NoncurrentVersionExpiration(30, 3),
    ),
)


def test_boto3_bodies_parse_and_read_back_the_same() -> None:
    rules = xml.parse_lifecycle_configuration(put_body(BOTO_RULES))
    assert rules == EXPECTED
    body = xml.lifecycle_configuration(rules)
    assert boto_rules(body) == BOTO_RULES
    assert xml.parse_lifecycle_configuration(body) == rules


def test_the_reference_example() -> None:
    """PutBucketLifecycleConfiguration's example request, verbatim but for the namespace."""
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
    <LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
      <Rule>
        <ID>id1</ID>
        <Filter>
           <And>
              <Prefix>documents/</Prefix>
              <Tag>
                 <Key>key1</Key>
                 <Value>value1</Value>
              </Tag>
              <Tag>
                 <Key>key2</Key>
                 <Value>value2</Value>
              </Tag>
            </And>
        </Filter>
        <Status>Enabled</Status>
        <Expiration>
          <Date>2023-01-01T00:00:00.000Z</Date>
        </Expiration>
      </Rule>
      <Rule>
        <ID>id2</ID>
        <Filter>
           <Prefix>logs/</Prefix>
        </Filter>
        <Status>Enabled</Status>
        <Expiration>
          <Days>365</Days>
        </Expiration>
      </Rule>
    </LifecycleConfiguration>"""
    first, second = xml.parse_lifecycle_configuration(body)
    assert first == LifecycleRule(
        "id1",
        True,
        LifecycleFilter(
            "documents/", (("key1", "value1"), ("key2", "value2")), form=FilterForm.AND
        ),
        Expiration(date=datetime(2023, 1, 1, tzinfo=UTC)),
    )
    assert second == LifecycleRule(
        "id2", True, LifecycleFilter(prefix="logs/"), Expiration(days=365)
    )
    assert b"<Date>2023-01-01T00:00:00.000Z</Date>" in xml.lifecycle_configuration([first])


@pytest.mark.parametrize(
    "text",
    ["2023-01-01T00:00:00Z", "2023-01-01T00:00:00.000Z", "2023-01-01", "2023-01-01T02:00:00+02:00"],
)
def test_dates_at_midnight_utc_in_any_iso_form(text: str) -> None:
    (rule,) = xml.parse_lifecycle_configuration(
        _config(_rule(f"<Expiration><Date>{text}</Date></Expiration>"))
    )
    assert rule.expiration == Expiration(date=datetime(2023, 1, 1, tzinfo=UTC))


def test_a_rule_without_id_gets_a_random_one() -> None:
    body = _config(_rule(id_=None), _rule(id_=None), _rule(id_=""))
    rules = xml.parse_lifecycle_configuration(body)
    assert len({r.id for r in rules}) == 3
    assert all(0 < len(r.id) <= 255 for r in rules)


def test_limits_are_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 rules do not fit in a body of 64 KiB: the rule limit is checked on its own.
    monkeypatch.setattr(xml, "MAX_LIFECYCLE_XML_BYTES", 1024 * 1024)
    rules = [_rule(id_=str(i), filter_="<Filter/>") for i in range(1001)]
    assert len(xml.parse_lifecycle_configuration(_config(*rules[:1000]))) == 1000
    with pytest.raises(S3Error) as info:
        xml.parse_lifecycle_configuration(_config(*rules))
    assert info.value.code == "InvalidRequest"
    assert "1000 rules" in info.value.message
    (rule,) = xml.parse_lifecycle_configuration(_config(_rule(id_="i" * 255)))
    assert rule.id == "i" * 255


_EXPIRE = "<Expiration><Days>1</Days></Expiration>"


def _rule(
    actions: str = _EXPIRE,
    *,
    id_: str | None = "r",
    status: str = "<Status>Enabled</Status>",
    filter_: str = "<Filter><Prefix>p/</Prefix></Filter>",
) -> str:
    rule_id = "" if id_ is None else f"<ID>{id_}</ID>"
    return f"<Rule>{rule_id}{filter_}{status}{actions}</Rule>"


def _config(*rules: str) -> bytes:
    return ("<LifecycleConfiguration>" + "".join(rules) + "</LifecycleConfiguration>").encode()


def _and(inner: str) -> str:
    return f"<Filter><And>{inner}</And></Filter>"


def _x(inner: str) -> bytes:
    """A configuration of one rule whose only action is ``<Expiration>inner</Expiration>``."""
    return _config(_rule(f"<Expiration>{inner}</Expiration>"))


def _f(inner: str, actions: str = _EXPIRE) -> bytes:
    """A configuration of one rule whose filter is ``<Filter>inner</Filter>``."""
    return _config(_rule(actions, filter_=f"<Filter>{inner}</Filter>"))


_TAG = "<Tag><Key>k</Key><Value>v</Value></Tag>"
_ABORT = "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>"
_ABORT += "</AbortIncompleteMultipartUpload>"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        # not a lifecycle configuration of well-formed rules
        (b"", "MalformedXML"),
        (b"<LifecycleConfiguration>", "MalformedXML"),
        (_config(), "MalformedXML"),
        (_config(_rule()).replace(b"LifecycleConfiguration", b"Lifecycle"), "MalformedXML"),
        (_config(_rule(), "<Other/>"), "MalformedXML"),
        (_config(_rule(_EXPIRE + "<Unknown/>")), "MalformedXML"),
        (_config(_rule(_EXPIRE * 2)), "MalformedXML"),
        (_config(_rule(id_="a</ID><ID>b")), "MalformedXML"),
        (_config(_rule(id_="<b>x</b>")), "MalformedXML"),
        (_config(_rule(status="")), "MalformedXML"),
        (_config(_rule(status="<Status>enabled</Status>")), "MalformedXML"),
        (_config(_rule(status="<Status>Enabled</Status><Status>Enabled</Status>")), "MalformedXML"),
        # the filter
        (_config(_rule(filter_="")), "MalformedXML"),
        (_config(_rule(filter_="<Prefix>a</Prefix><Filter/>")), "MalformedXML"),
        (_config(_rule(filter_="<Filter><Prefix>a</Prefix>" + _TAG + "</Filter>")), "MalformedXML"),
        (_config(_rule(filter_="<Filter><Unknown/></Filter>")), "MalformedXML"),
        (_config(_rule(filter_="<Filter><Prefix><x/></Prefix></Filter>")), "MalformedXML"),
        (_config(_rule(filter_=_and("<And/>"))), "MalformedXML"),
        (_config(_rule(filter_=_and("<Prefix>a</Prefix><Prefix>b</Prefix>"))), "MalformedXML"),
        (_config(_rule(filter_="<Filter><Tag><Key>k</Key></Tag></Filter>")), "MalformedXML"),
        (
            _config(_rule(filter_="<Filter><ObjectSizeGreaterThan>x</ObjectSizeGreaterThan></Filter>")),
            "MalformedXML",
        ),
        (
            _config(_rule(filter_="<Filter><ObjectSizeLessThan>1e3</ObjectSizeLessThan></Filter>")),
            "MalformedXML",
        ),
        (
            _config(_rule(filter_=f"<Filter><ObjectSizeLessThan>{2**63}</ObjectSizeLessThan></Filter>")),
            "MalformedXML",
        ),
        (
            _config(_rule(filter_="<Filter><ObjectSizeGreaterThan>-1</ObjectSizeGreaterThan></Filter>")),
            "InvalidRequest",
        ),
        (
            _config(_rule(filter_="<Filter><ObjectSizeLessThan>0</ObjectSizeLessThan></Filter>")),
            "InvalidRequest",
        ),
        (
            _config(_rule(filter_=_and(
                "<ObjectSizeGreaterThan>10</ObjectSizeGreaterThan>"
                "<ObjectSizeLessThan>10</ObjectSizeLessThan>"
            ))),
            "InvalidRequest",
        ),
        (_config(_rule(filter_=_and(_TAG + _TAG))), "InvalidRequest"),
        (_f("<And><Tag><Key>aws:x</Key><Value>v</Value></Tag></And>"), "InvalidTag"),
        (_f(f"<And><Tag><Key>{'k' * 129}</Key><Value>v</Value></Tag></And>"), "InvalidTag"),
        # actions
        (_config(_rule("")), "InvalidRequest"),
        (_config(_rule("<Expiration/>")), "MalformedXML"),
        (_x("<Days>1</Days><Date>2030-01-01</Date>"), "MalformedXML"),
        (_x("<Days>one</Days>"), "MalformedXML"),
        (_x("<Days>1.0</Days>"), "MalformedXML"),
        (_config(_rule(f"<Expiration><Days>{2**31}</Days></Expiration>")), "MalformedXML"),
        (_x("<Days>0</Days>"), "InvalidArgument"),
        (_x("<Days>-3</Days>"), "InvalidArgument"),
        (_x("<Date>tomorrow</Date>"), "MalformedXML"),
        (_x("<Date></Date>"), "MalformedXML"),
        (_x("<Date>2030-01-01T10:00:00Z</Date>"), "InvalidArgument"),
        (_x("<Date>2030-01-01T00:00:00+01:00</Date>"), "InvalidArgument"),
        (_x("<Date>9999-12-31T23:00:00-01:00</Date>"), "MalformedXML"),
        (
            _x("<ExpiredObjectDeleteMarker>yes</ExpiredObjectDeleteMarker>"),
            "MalformedXML",
        ),
        (
            _config(_rule(
                "<Expiration><Days>1</Days><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker>"
                "</Expiration>"
            )),
            "InvalidRequest",
        ),
        (
            _config(_rule(
                "<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>",
                filter_=f"<Filter>{_TAG}</Filter>",
            )),
            "InvalidRequest",
        ),
        (_config(_rule("<AbortIncompleteMultipartUpload/>")), "MalformedXML"),
        (
            _config(_rule(_ABORT.replace("<DaysAfterInitiation>1", "<DaysAfterInitiation>0"))),
            "InvalidArgument",
        ),
        (_config(_rule(_ABORT, filter_=f"<Filter>{_TAG}</Filter>")), "InvalidRequest"),
        (_config(_rule(_ABORT, filter_=_and(f"<Prefix>a</Prefix>{_TAG}"))), "InvalidRequest"),
        (
            _f("<ObjectSizeLessThan>9</ObjectSizeLessThan>", _ABORT),
            "InvalidRequest",
        ),
        (_config(_rule("<NoncurrentVersionExpiration/>")), "MalformedXML"),
        (
            _config(_rule("<NoncurrentVersionExpiration><NoncurrentDays>0</NoncurrentDays>"
                          "</NoncurrentVersionExpiration>")),
            "InvalidArgument",
        ),
        (
            _config(_rule("<Transition><Days>30</Days><StorageClass>GLACIER</StorageClass></Transition>")),
            "NotImplemented",
        ),
        (
            _config(_rule(_EXPIRE + "<NoncurrentVersionTransition><NoncurrentDays>30"
                          "</NoncurrentDays><StorageClass>GLACIER</StorageClass>"
                          "</NoncurrentVersionTransition>")),
            "NotImplemented",
        ),
        # the configuration as a whole
        (_config(_rule(id_="i" * 256)), "InvalidArgument"),
        (_config(_rule(id_="same"), _rule(id_="same")), "InvalidArgument"),
        (_config(_rule()) + b" " * xml.MAX_LIFECYCLE_XML_BYTES, "InvalidRequest"),
        (b"<!DOCTYPE x [<!ENTITY e 'Enabled'>]>" + _config(_rule(status="<Status>&e;</Status>")),
         "MalformedXML"),
    ],
)  # fmt: skip
def test_refusals(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as info:
        xml.parse_lifecycle_configuration(body)
    assert info.value.code == code, info.value.message
    assert info.value.status in (400, 501)


def test_the_missing_configuration_error() -> None:
    assert ERROR_TABLE["NoSuchLifecycleConfiguration"] == (
        404,
        "The lifecycle configuration does not exist",
    )
    err = S3Error("NoSuchLifecycleConfiguration").naming(bucket="b")
    assert err.extra == {"BucketName": "b"}
    assert NAMED_BY["NoSuchLifecycleConfiguration"] == "BucketName"


_PIECES = [
    "<LifecycleConfiguration>", "</LifecycleConfiguration>", "<Rule>", "</Rule>",
    "<ID>", "</ID>", "<Status>Enabled</Status>", "<Status>Disabled</Status>", "<Status>",
    "</Status>", "<Filter>", "</Filter>", "<Filter/>", "<And>", "</And>", "<Prefix>",
    "</Prefix>", "<Tag>", "</Tag>", "<Key>", "</Key>", "<Value>", "</Value>",
    "<ObjectSizeGreaterThan>", "</ObjectSizeGreaterThan>", "<ObjectSizeLessThan>",
    "</ObjectSizeLessThan>", "<Expiration>", "</Expiration>", "<Days>", "</Days>", "<Date>",
    "</Date>", "<ExpiredObjectDeleteMarker>", "</ExpiredObjectDeleteMarker>",
    "<AbortIncompleteMultipartUpload>", "</AbortIncompleteMultipartUpload>",
    "<DaysAfterInitiation>", "</DaysAfterInitiation>", "<NoncurrentVersionExpiration>",
    "</NoncurrentVersionExpiration>", "<NoncurrentDays>", "</NoncurrentDays>",
    "<NewerNoncurrentVersions>", "</NewerNoncurrentVersions>", "<Transition>", "</Transition>",
    "1", "0", "-1", "true", "false", "2030-01-01", "2030-01-01T00:00:00Z", "T10:00:00Z",
    "99999999999999999999", "+05:00", "x", " ", "\x00", "é", "&amp;", "<", ">", "aws:",
]  # fmt: skip


def _rule_pieces() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


#: Values each element may validly hold.
_VALID = {
    "ID": ["r1", "r2"],
    "Prefix": ["a/", ""],
    "Key": ["k", "t"],
    "Value": ["v", ""],
    "ObjectSizeGreaterThan": ["0", "10"],
    "ObjectSizeLessThan": ["100"],
    "Days": ["1", "30"],
    "Date": ["2030-01-01T00:00:00Z", "2030-01-01"],
    "ExpiredObjectDeleteMarker": ["true", "false"],
    "DaysAfterInitiation": ["7"],
    "NoncurrentDays": ["1"],
    "NewerNoncurrentVersions": ["2"],
}


@st.composite
def _leaf(draw: st.DrawFn, name: str) -> str:
    """The text of element ``name``: mostly a valid value, else anything at all (escaped)."""
    if draw(st.integers(0, 3)):
        return draw(st.sampled_from(_VALID[name]))
    return draw(
        st.one_of(
            st.sampled_from(["0", "-1", "2030-01-01T10:00:00Z", "Enabled", "yes"]),
            st.integers(min_value=-(2**64), max_value=2**64).map(str),
            st.text(max_size=20).map(xml.escape),
        )
    )


@st.composite
def _well_formed_rules(draw: st.DrawFn) -> bytes:
    """A configuration of rules of the right shape whose values are drawn at random."""

    def element(name: str) -> str:
        return f"<{name}>{draw(_leaf(name))}</{name}>"

    def some(*names: str) -> str:
        return "".join(element(n) for n in names if draw(st.booleans()))

    def one(*names: str) -> str:
        return element(draw(st.sampled_from(names))) if draw(st.integers(0, 3)) else some(*names)

    rules = []
    for _ in range(draw(st.integers(1, 2))):
        tag = f"<Tag>{element('Key')}{element('Value')}</Tag>"
        predicates = some("Prefix", "ObjectSizeGreaterThan", "ObjectSizeLessThan")
        filter_ = draw(
            st.sampled_from(
                [
                    f"<Filter>{predicates}</Filter>",
                    f"<Filter>{tag}</Filter>",
                    f"<Filter><And>{predicates}{tag}</And></Filter>",
                    element("Prefix"),
                ]
            )
        )
        actions = ""
        if draw(st.booleans()):
            actions += (
                f"<Expiration>{one('Days', 'Date', 'ExpiredObjectDeleteMarker')}</Expiration>"
            )
        if draw(st.booleans()):
            actions += (
                f"<AbortIncompleteMultipartUpload>{element('DaysAfterInitiation')}"
                "</AbortIncompleteMultipartUpload>"
            )
        if draw(st.booleans()):
            actions += (
                f"<NoncurrentVersionExpiration>{some('NoncurrentDays', 'NewerNoncurrentVersions')}"
                "</NoncurrentVersionExpiration>"
            )
        status = draw(st.sampled_from(["Enabled", "Disabled"])) if draw(st.booleans()) else ""
        status = status or draw(_leaf("Value"))
        rules.append(f"<Rule>{some('ID')}<Status>{status}</Status>{filter_}{actions}</Rule>")
    return _config(*rules)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        _rule_pieces().map(str.encode),
        st.lists(_rule_pieces(), max_size=4).map(
            lambda rules: _config(*[f"<Rule>{r}</Rule>" for r in rules])
        ),
        _well_formed_rules(),
    )
)
def test_garbled_bodies_are_refused_never_a_crash(body: bytes) -> None:
    error: S3Error | None = None
    try:
        rules = xml.parse_lifecycle_configuration(body)
    except S3Error as err:
        error = err
    if error is None:
        rendered = xml.lifecycle_configuration(rules)
        assert xml.parse_lifecycle_configuration(rendered) == rules
    else:
        assert error.code in ERROR_TABLE
        assert error.status < 500 or error.code == "NotImplemented"
