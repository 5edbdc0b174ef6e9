"""CORS rule evaluation: origin and header patterns, first match, the answer's headers."""

from __future__ import annotations

import pytest

from interfaces.s3.cors import (
    VARY,
    CorsMatch,
    match,
    pattern_matches,
    requested_headers,
    response_headers,
)
from storage.object_records import CorsRule


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("http://a.com", "http://a.com", True),
        ("http://a.com", "https://a.com", False),
        ("http://a.com", "http://a.com:80", False),
        ("http://a.com", "http://a.com/", False),
        ("*", "", True),
        ("*", "anything at all", True),
        ("http://*.a.com", "http://x.y.a.com", True),
        ("http://*.a.com", "http://.a.com", True),
        ("http://*.a.com", "http://a.com", False),
        ("*suffix", "foo.suffix", True),
        ("*suffix", "foo.suffix.get", False),
        ("start*end", "startend", True),
        ("start*end", "start12end", True),
        ("start*end", "0start12end", False),
        ("start*end", "startend0", False),
        ("prefix*", "prefix", True),
        ("prefix*", "bla.prefix", False),
        ("ab*ba", "aba", False),  # head and tail may not overlap
    ],
)
def test_pattern_matches(pattern: str, value: str, expected: bool) -> None:
    assert pattern_matches(pattern, value) is expected


def test_requested_headers() -> None:
    assert requested_headers(None) == []
    assert requested_headers("") == []
    assert requested_headers("X-Amz-Date, content-type,,  Authorization ") == [
        "x-amz-date",
        "content-type",
        "authorization",
    ]


RULES = (
    CorsRule(("http://*.example.com",), ("PUT", "POST"), ("Content-Type", "x-amz-*")),
    CorsRule(("http://www.example.com",), ("GET",), ("*",), ("ETag", "x-amz-request-id"), "g", 60),
    CorsRule(("http://other.com", "*"), ("GET", "HEAD")),
)


def test_the_first_rule_allowing_origin_method_and_headers_wins() -> None:
    www = "http://www.example.com"
    found = match(RULES, www, "PUT", ["content-type", "x-amz-date"])
    assert found == CorsMatch(RULES[0], www)
    assert match(RULES, www, "GET", ["authorization"]) == CorsMatch(RULES[1], www)
    assert match(RULES, www, "PUT", ["authorization"]) is None  # rule 1 lacks the header
    assert match(RULES, "http://x.com", "GET") == CorsMatch(RULES[2], "*")
    assert match(RULES, "http://other.com", "GET") == CorsMatch(RULES[2], "http://other.com")
    assert match(RULES, "http://x.com", "GET", ["x-a"]) is None  # no AllowedHeader: none
    assert match(RULES, "http://x.com", "DELETE") is None
    assert match(RULES, "http://x.com", "get") is None
    assert match((), "http://x.com", "GET") is None


def test_header_patterns_ignore_case() -> None:
    rule = CorsRule(("*",), ("GET",), ("X-AMZ-Server-SIDE-encryption", "X-Custom-*"))
    assert match([rule], "o", "GET", ["x-amz-server-side-encryption", "x-custom-"]) is not None
    assert match([rule], "o", "GET", ["x-amz-server-side"]) is None


def test_response_headers() -> None:
    found = CorsMatch(RULES[1], "http://www.example.com")
    assert response_headers(found, ["authorization", "x-amz-date"]) == [
        ("access-control-allow-origin", "http://www.example.com"),
        ("access-control-allow-methods", "GET"),
        ("access-control-allow-headers", "authorization, x-amz-date"),
        ("access-control-expose-headers", "ETag, x-amz-request-id"),
        ("access-control-allow-credentials", "true"),
        ("access-control-max-age", "60"),
        ("vary", VARY),
    ]
    assert response_headers(CorsMatch(RULES[2], "*")) == [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "GET, HEAD"),
        ("vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"),
    ]
