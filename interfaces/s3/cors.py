"""Cross-origin resource sharing: a bucket's CORS rules applied to a request (sans-IO).

As S3 evaluates them: the **first** rule wins whose ``AllowedOrigin`` patterns match the
request's ``Origin``, whose ``AllowedMethod`` list holds the method (of a preflight, its
``Access-Control-Request-Method``), and, for a preflight, whose ``AllowedHeader`` patterns
cover every name of ``Access-Control-Request-Headers``. A pattern holds at most one ``*``,
which stands for any run of characters, the empty one too; a pattern is anchored at both
ends. Origins are compared as sent (browsers send them lower-case), header names without
regard to case.

The answer (:func:`response_headers`) allows the request's origin, or ``*`` when the rule's
matching origin is ``*`` (and then, as S3, not ``Access-Control-Allow-Credentials``), lists
the rule's methods, the requested headers (lower-case, in the order requested), the exposed
headers and the max age, and always ``Vary`` on the three request headers the answer depends
on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.object_records import CorsRule

#: The ``Vary`` header of every answer a CORS rule allowed.
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


def pattern_matches(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern``, whose one ``*`` (if any) matches any run."""
    head, star, tail = pattern.partition("*")
    if not star:
        return value == pattern
    return len(value) >= len(head) + len(tail) and value.startswith(head) and value.endswith(tail)


def requested_headers(value: str | None) -> list[str]:
    """The names of ``Access-Control-Request-Headers``, lower-case, in order, no empties."""
    if value is None:
        return []
    return [name for name in (part.strip().lower() for part in value.split(",")) if name]


@dataclass(frozen=True)
class CorsMatch:
    """The rule that allowed a request, and the ``Access-Control-Allow-Origin`` it gets."""

    rule: CorsRule
    allow_origin: str


def match(
    rules: Iterable[CorsRule], origin: str, method: str, headers: Sequence[str] = ()
) -> CorsMatch | None:
    """The first rule allowing ``origin``, ``method`` and every one of ``headers``
    (lower-case names), or ``None``."""
    for rule in rules:
        allowed = next((p for p in rule.allowed_origins if pattern_matches(p, origin)), None)
        if allowed is None or method not in rule.allowed_methods:
            continue
        patterns = [p.lower() for p in rule.allowed_headers]
        if all(any(pattern_matches(p, name) for p in patterns) for name in headers):
            return CorsMatch(rule, "*" if allowed == "*" else origin)
    return None


def response_headers(found: CorsMatch, headers: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The ``Access-Control-*`` and ``Vary`` headers of an answer ``found`` allowed
    (``headers``: the names a preflight asked for)."""
    rule = found.rule
    out = [
        ("access-control-allow-origin", found.allow_origin),
        ("access-control-allow-methods", ", ".join(rule.allowed_methods)),
    ]
    if headers:
        out.append(("access-control-allow-headers", ", ".join(headers)))
    if rule.expose_headers:
        out.append(("access-control-expose-headers", ", ".join(rule.expose_headers)))
    if found.allow_origin != "*":
        out.append(("access-control-allow-credentials", "true"))
    if rule.max_age_seconds is not None:
        out.append(("access-control-max-age", str(rule.max_age_seconds)))
    out.append(("vary", VARY))
    return out


__all__ = ["VARY", "CorsMatch", "match", "pattern_matches", "requested_headers", "response_headers"]
