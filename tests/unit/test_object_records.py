"""Bucket registry entries: the CORS configuration field and entries written before it."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from storage.errors import Corrupt
from storage.object_records import (
    BucketConfig,
    CorsRule,
    pack_registry,
    unpack_registry,
)
from storage.policy import Redundancy

CONFIG = BucketConfig("b", "owner", 1_700_000_000_000, Redundancy(replicas=3), "private", b"i" * 16)
RULES = (
    CorsRule(("*",), ("GET", "HEAD")),
    CorsRule(("https://*.example.com",), ("PUT",), ("x-amz-*",), ("ETag",), "uploads", 3000),
)


def _registry(entry: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "b": {"b": entry}}, use_bin_type=True)
    return packed


def test_cors_round_trip() -> None:
    for cors in (None, RULES, ()):
        config = BucketConfig(**{**CONFIG.__dict__, "cors": cors})
        assert unpack_registry(pack_registry({"b": config})) == {"b": config}


def test_cors_is_packed_under_its_own_short_key() -> None:
    with_rules = BucketConfig(**{**CONFIG.__dict__, "cors": RULES}).pack_entry()
    without = CONFIG.pack_entry()
    assert with_rules.keys() - without.keys() == {"cr"}
    assert with_rules["cr"] == [
        {"o": ["*"], "m": ["GET", "HEAD"]},
        {
            "o": ["https://*.example.com"],
            "m": ["PUT"],
            "h": ["x-amz-*"],
            "e": ["ETag"],
            "id": "uploads",
            "ma": 3000,
        },
    ]


def test_entries_written_before_cors_are_read_without_rules() -> None:
    old = {"ow": "owner", "mt": 1_700_000_000_000, "rd": "3", "acl": "private", "id": b"i" * 16}
    assert unpack_registry(_registry(old))["b"] == CONFIG
    assert unpack_registry(_registry({**old, "cr": None}))["b"].cors is None


@pytest.mark.parametrize(
    "cors",
    [
        "rules",
        [{"m": ["GET"]}],
        [{"o": ["*"]}],
        [{"o": "*", "m": ["GET"]}],
        [{"o": ["*"], "m": [1]}],
        [{"o": ["*"], "m": ["GET"], "ma": -1}],
        [{"o": ["*"], "m": ["GET"], "ma": "5"}],
        [{"o": ["*"], "m": ["GET"], "ma": True}],
        [{"o": ["*"], "m": ["GET"], "id": 7}],
        [["*", "GET"]],
    ],
)
def test_malformed_cors_is_corrupt(cors: object) -> None:
    old = {"ow": "owner", "mt": 1, "rd": "3", "acl": "private", "id": b"i" * 16}
    with pytest.raises(Corrupt):
        unpack_registry(_registry({**old, "cr": cors}))
