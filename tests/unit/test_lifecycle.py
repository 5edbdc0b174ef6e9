"""Lifecycle rules: filters, expiry dates as S3 computes them, and their stored form."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pytest

from storage.errors import Corrupt
from storage.lifecycle import (
    Expiration,
    FilterForm,
    LifecycleFilter,
    LifecycleRule,
    NoncurrentVersionExpiration,
    ObjectExpiry,
    expiry_after_days,
    new_rule_id,
    object_expiry,
    unpack_rules,
)
from storage.object_records import BucketConfig, pack_registry, unpack_registry
from storage.policy import Redundancy


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """A UTC datetime."""
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        # S3's own example: written 2014-01-15 10:30 UTC, 3 days -> 2014-01-19 00:00 UTC.
        (utc(2014, 1, 15, 10, 30), 3, utc(2014, 1, 19)),
        (utc(2014, 1, 15, 23, 59, 59), 1, utc(2014, 1, 17)),
        (utc(2014, 1, 15, 0, 0, 0, 1), 1, utc(2014, 1, 17)),
        (utc(2014, 1, 15), 1, utc(2014, 1, 17)),  # at midnight: the next one still
        (utc(2012, 2, 28, 12), 1, utc(2012, 3, 1)),  # a leap day in between
        (utc(2012, 12, 31, 6), 365, utc(2014, 1, 1)),
    ],
)
def test_days_round_up_to_the_next_midnight_utc(
    start: datetime, days: int, expected: datetime
) -> None:
    assert expiry_after_days(start, days) == expected
    assert Expiration(days=days).expiry(start) == expected


def test_an_expiry_beyond_the_calendar_is_never() -> None:
    assert expiry_after_days(utc(2020, 1, 1), 2**31 - 1) is None
    rule = LifecycleRule("r", True, LifecycleFilter(), Expiration(days=2**31 - 1))
    assert object_expiry([rule], key="k", size=1, tags={}, last_modified=utc(2020, 1, 1)) is None


def test_a_date_rule_expires_everything_on_that_date() -> None:
    date = utc(2012, 12, 23)
    expiration = Expiration(date=date)
    assert expiration.expiry(utc(2001, 1, 1)) == date
    assert expiration.expiry(utc(2030, 1, 1)) == date  # written after it: expired at once


@pytest.mark.parametrize(
    ("rule_filter", "key", "size", "tags", "expected"),
    [
        (LifecycleFilter(), "anything", 0, {}, True),
        (LifecycleFilter(prefix="logs/"), "logs/a", 0, {}, True),
        (LifecycleFilter(prefix="logs/"), "log/a", 0, {}, False),
        (LifecycleFilter(prefix="", form=FilterForm.LEGACY_PREFIX), "x", 0, {}, True),
        (LifecycleFilter(tags=(("t", "1"),)), "k", 0, {"t": "1", "u": "2"}, True),
        (LifecycleFilter(tags=(("t", "1"),)), "k", 0, {"t": "2"}, False),
        (LifecycleFilter(tags=(("t", "1"),)), "k", 0, {}, False),
        (LifecycleFilter(tags=(("t", ""),)), "k", 0, {}, False),
        (LifecycleFilter(size_greater_than=10), "k", 10, {}, False),
        (LifecycleFilter(size_greater_than=10), "k", 11, {}, True),
        (LifecycleFilter(size_less_than=10), "k", 10, {}, False),
        (LifecycleFilter(size_less_than=10), "k", 9, {}, True),
        (
            LifecycleFilter("a/", (("x", "1"), ("y", "2")), 1, 100, FilterForm.AND),
            "a/k",
            50,
            {"x": "1", "y": "2"},
            True,
        ),
        (
            LifecycleFilter("a/", (("x", "1"), ("y", "2")), 1, 100, FilterForm.AND),
            "a/k",
            50,
            {"x": "1"},
            False,
        ),
        (
            LifecycleFilter("a/", (("x", "1"),), 1, 100, FilterForm.AND),
            "b/k",
            50,
            {"x": "1"},
            False,
        ),
    ],
)
def test_filters(
    rule_filter: LifecycleFilter, key: str, size: int, tags: dict[str, str], expected: bool
) -> None:
    assert rule_filter.matches(key, size, tags) is expected


def test_the_earliest_enabled_matching_rule_decides() -> None:
    written = utc(2024, 5, 1, 12)
    rules = [
        LifecycleRule("long", True, LifecycleFilter(), Expiration(days=30)),
        LifecycleRule("off", False, LifecycleFilter(), Expiration(days=1)),
        LifecycleRule("other prefix", True, LifecycleFilter(prefix="x/"), Expiration(days=1)),
        LifecycleRule("short", True, LifecycleFilter(prefix="a/"), Expiration(days=7)),
        LifecycleRule("uploads", True, LifecycleFilter(), abort_upload_days=1),
        LifecycleRule(
            "marker", True, LifecycleFilter(), Expiration(expired_object_delete_marker=True)
        ),
    ]
    found = object_expiry(rules, key="a/k", size=1, tags={}, last_modified=written)
    assert found == ObjectExpiry(utc(2024, 5, 9), "short")
    found = object_expiry(rules, key="b/k", size=1, tags={}, last_modified=written)
    assert found == ObjectExpiry(utc(2024, 6, 1), "long")
    assert object_expiry(rules[1:3], key="b", size=1, tags={}, last_modified=written) is None


def test_uploads_are_aborted_by_prefix_after_days() -> None:
    rule = LifecycleRule("u", True, LifecycleFilter(prefix="tmp/"), abort_upload_days=2)
    assert rule.upload_abort_time("tmp/x", utc(2024, 1, 1, 8)) == utc(2024, 1, 4)
    assert rule.upload_abort_time("keep/x", utc(2024, 1, 1, 8)) is None
    disabled = LifecycleRule("u", False, LifecycleFilter(), abort_upload_days=2)
    assert disabled.upload_abort_time("tmp/x", utc(2024, 1, 1)) is None
    assert not LifecycleRule("e", True, LifecycleFilter(), Expiration(days=1)).aborts_uploads


RULES = (
    LifecycleRule("days", True, LifecycleFilter(prefix="logs/"), Expiration(days=30)),
    LifecycleRule(
        "date & <more>",
        False,
        LifecycleFilter("p", (("k", "v"), ("k2", "")), 5, 10, FilterForm.AND),
        Expiration(date=utc(2030, 1, 1)),
    ),
    LifecycleRule("legacy", True, LifecycleFilter("", form=FilterForm.LEGACY_PREFIX), None, 7),
    LifecycleRule(
        "noncurrent",
        True,
        LifecycleFilter(),
        Expiration(expired_object_delete_marker=False),
        None,
        NoncurrentVersionExpiration(30, 2),
    ),
)


def test_rules_survive_the_bucket_registry() -> None:
    config = BucketConfig(
        "b", "alice", 1, Redundancy(replicas=3), "private", b"\x01" * 16, lifecycle=RULES
    )
    assert unpack_registry(pack_registry({"b": config}))["b"].lifecycle == RULES
    without = BucketConfig("b", "alice", 1, Redundancy(replicas=3), "private", b"\x01" * 16)
    assert "lc" not in without.pack_entry()  # entries written before lifecycle have none
    assert unpack_registry(pack_registry({"b": without}))["b"].lifecycle is None
    empty = BucketConfig(
        "b", "alice", 1, Redundancy(replicas=3), "private", b"\x01" * 16, lifecycle=()
    )
    assert unpack_registry(pack_registry({"b": empty}))["b"].lifecycle == ()


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        [1],
        [{"id": "r", "on": True}],
        [{"id": 1, "on": True, "f": {"k": "f"}}],
        [{"id": "r", "on": "yes", "f": {"k": "f"}}],
        [{"id": "r", "on": True, "f": {"k": "zz"}}],
        [{"id": "r", "on": True, "f": {"k": "f", "p": 3}}],
        [{"id": "r", "on": True, "f": {"k": "f", "t": [["a"]]}}],
        [{"id": "r", "on": True, "f": {"k": "f", "gt": "1"}}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "x": {"d": 1.5}}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "x": {"m": 1}}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "x": 5}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "x": {"dt": 2**62}}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "nc": {}}],
        [{"id": "r", "on": True, "f": {"k": "f"}, "a": True}],
    ],
)
def test_a_malformed_stored_configuration_is_corrupt(raw: object) -> None:
    with pytest.raises(Corrupt):
        unpack_rules(raw)
    entry = {"ow": "a", "mt": 1, "rd": "3", "acl": "private", "id": b"x", "lc": raw}
    data = msgpack.packb({"v": 1, "b": {"b": entry}}, use_bin_type=True)
    with pytest.raises(Corrupt):
        unpack_registry(data)


def test_generated_rule_ids_are_unique_and_short() -> None:
    ids = {new_rule_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(0 < len(i) <= 255 for i in ids)
