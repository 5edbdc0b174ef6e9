"""Conditional GET/HEAD (RFC 9110 §13.2.2 order, S3's documented pairs) and conditional PUT."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from interfaces.s3.conditions import (
    check_read_preconditions,
    check_write_preconditions,
    etag_matches,
    format_http_date,
    parse_http_date,
)
from interfaces.s3.errors import S3Error

ETAG = '"fba9dede5f27731c9771645a39863328"'
MODIFIED = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
BEFORE = "Wed, 01 May 2024 11:00:00 GMT"
SAME = "Wed, 01 May 2024 12:00:00 GMT"
AFTER = "Wed, 01 May 2024 13:00:00 GMT"


def outcome(**headers: str) -> int:
    try:
        check_read_preconditions(etag=ETAG, last_modified=MODIFIED, **headers)
    except S3Error as err:
        return err.status
    return 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),
        ({"if_match": ETAG}, 200),
        ({"if_match": ETAG.strip('"')}, 200),  # unquoted, as some clients send
        ({"if_match": '"other", ' + ETAG}, 200),
        ({"if_match": "*"}, 200),
        ({"if_match": '"other"'}, 412),
        ({"if_match": "W/" + ETAG}, 412),  # weak tags never match strongly
        ({"if_none_match": ETAG}, 304),
        ({"if_none_match": "W/" + ETAG}, 304),
        ({"if_none_match": "*"}, 304),
        ({"if_none_match": '"other"'}, 200),
        ({"if_modified_since": BEFORE}, 200),
        ({"if_modified_since": SAME}, 304),  # one-second resolution
        ({"if_modified_since": AFTER}, 304),
        ({"if_modified_since": "garbage"}, 200),
        ({"if_unmodified_since": BEFORE}, 412),
        ({"if_unmodified_since": SAME}, 200),
        ({"if_unmodified_since": AFTER}, 200),
        # S3's documented pairs
        ({"if_match": ETAG, "if_unmodified_since": BEFORE}, 200),
        ({"if_none_match": '"other"', "if_modified_since": AFTER}, 200),
        ({"if_none_match": ETAG, "if_modified_since": BEFORE}, 304),
        # If-Match is checked before If-None-Match
        ({"if_match": '"other"', "if_none_match": ETAG}, 412),
        ({"if_unmodified_since": BEFORE, "if_modified_since": AFTER}, 412),
    ],
)
def test_read_preconditions(headers: dict[str, str], status: int) -> None:
    assert outcome(**headers) == status


def test_error_codes() -> None:
    with pytest.raises(S3Error) as info:
        check_read_preconditions(etag=ETAG, last_modified=MODIFIED, if_match='"x"')
    assert info.value.code == "PreconditionFailed"
    with pytest.raises(S3Error) as info:
        check_read_preconditions(etag=ETAG, last_modified=MODIFIED, if_none_match=ETAG)
    assert info.value.code == "NotModified"


@pytest.mark.parametrize(
    ("current", "headers", "code"),
    [
        (None, {"if_none_match": "*"}, None),
        (ETAG, {"if_none_match": "*"}, "PreconditionFailed"),
        (ETAG, {"if_none_match": ETAG}, "NotImplemented"),
        (None, {"if_match": ETAG}, "NoSuchKey"),
        (ETAG, {"if_match": ETAG}, None),
        (ETAG, {"if_match": '"other"'}, "PreconditionFailed"),
        (ETAG, {"if_match": "*"}, None),
        (None, {}, None),
        (ETAG, {}, None),
    ],
)
def test_write_preconditions(
    current: str | None, headers: dict[str, str], code: str | None
) -> None:
    if code is None:
        check_write_preconditions(current_etag=current, **headers)
    else:
        with pytest.raises(S3Error) as info:
            check_write_preconditions(current_etag=current, **headers)
        assert info.value.code == code


def test_http_dates() -> None:
    when = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
    assert format_http_date(when) == "Sun, 06 Nov 1994 08:49:37 GMT"
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert parse_http_date(text) == when, text
    assert parse_http_date("not a date") is None
    assert parse_http_date(None) is None


def test_etag_matches_list() -> None:
    assert etag_matches('"a", "b"', '"b"', weak=False)
    assert not etag_matches('"a", "b"', '"c"', weak=True)
