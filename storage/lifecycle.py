"""Bucket lifecycle rules: which objects a rule applies to, and when they expire (pure).

Theory of operation
-------------------
A bucket's lifecycle configuration is a list of :class:`LifecycleRule` (at most
:data:`MAX_RULES`, IDs unique), as PutBucketLifecycleConfiguration sets it. A rule applies to
an object when it is enabled and its :class:`LifecycleFilter` matches: the key starts with
the filter's prefix, the object carries every tag of the filter with the same value, and its
size is strictly greater than ``ObjectSizeGreaterThan`` and strictly less than
``ObjectSizeLessThan`` (a filter of several predicates is their ``And``).

Expiry, as S3 computes it (:meth:`Expiration.expiry`):

* ``Days``: the object's last-modified time plus ``Days`` days, rounded up to the next
  midnight UTC: an object written on the 15th at 10:30 UTC under a 3-day rule expires on the
  19th at 00:00 UTC (:func:`expiry_after_days`);
* ``Date``: on that date (a midnight UTC); an object the rule matches that is written later
  expires at once.

An object several rules match expires at the earliest of their dates; :func:`object_expiry`
gives that date and the rule behind it (the ``x-amz-expiration`` header).
``AbortIncompleteMultipartUpload`` counts its ``DaysAfterInitiation`` from an upload's
initiation with the same rounding (:meth:`LifecycleRule.upload_abort_time`). Only the key
prefix of a rule's filter applies to uploads (S3 refuses tag and size filters on rules that
abort uploads).

``ExpiredObjectDeleteMarker`` and ``NoncurrentVersionExpiration`` are kept as configured but
never act: buckets are never versioned here, so there are neither delete markers nor
noncurrent versions. A rule without any action that acts is valid and does nothing.

A configuration is stored in the bucket's registry entry (``BucketConfig.lifecycle``) in the
compact msgpack form of :meth:`LifecycleRule.pack`; :meth:`LifecycleRule.unpack` raises
:class:`~storage.errors.Corrupt` on a malformed one. Applying the rules is the job of
:mod:`storage.lifecycle_worker`.
"""

from __future__ import annotations

import base64
import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import Corrupt

__all__ = [
    "MAX_RULES",
    "MAX_RULE_ID",
    "Expiration",
    "FilterForm",
    "LifecycleFilter",
    "LifecycleRule",
    "NoncurrentVersionExpiration",
    "ObjectExpiry",
    "expiry_after_days",
    "new_rule_id",
    "object_expiry",
    "pack_rules",
    "unpack_rules",
]

#: S3's limits: rules per configuration, characters per rule ID.
MAX_RULES = 1000
MAX_RULE_ID = 255

_DAY = 86_400


def new_rule_id() -> str:
    """A fresh random rule ID, of the form S3 gives a rule configured without one."""
    return base64.b64encode(str(uuid.uuid4()).encode("ascii")).decode("ascii")


def expiry_after_days(start: datetime, days: int) -> datetime | None:
    """``start`` plus ``days`` days, rounded up to the next midnight UTC (``None``: beyond
    the representable dates, never)."""
    day = int(start.timestamp()) // _DAY + days + 1
    try:
        return datetime.fromtimestamp(day * _DAY, UTC)
    except (OverflowError, ValueError, OSError):
        return None


class FilterForm(enum.Enum):
    """How a rule's filter was written, so that it reads back the same."""

    #: ``<Rule><Prefix>…</Prefix>`` (the form before ``Filter`` existed).
    LEGACY_PREFIX = "p"
    #: ``<Filter>`` holding at most one predicate.
    FILTER = "f"
    #: ``<Filter><And>…</And></Filter>``.
    AND = "a"


@dataclass(frozen=True)
class LifecycleFilter:
    """Which objects a rule applies to (every predicate set must hold).

    ``prefix`` is ``None`` when the filter names none (which matches every key); ``tags``
    are ``(key, value)`` pairs in the order configured.
    """

    prefix: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    size_greater_than: int | None = None
    size_less_than: int | None = None
    form: FilterForm = FilterForm.FILTER

    @property
    def key_prefix(self) -> str:
        """The prefix every key the filter matches starts with (``""``: any key)."""
        return self.prefix or ""

    @property
    def has_size(self) -> bool:
        """Whether the filter looks at the object's size."""
        return self.size_greater_than is not None or self.size_less_than is not None

    def matches(self, key: str, size: int, tags: Mapping[str, str]) -> bool:
        """Whether an object of ``key``, ``size`` bytes and tag set ``tags`` passes."""
        if not key.startswith(self.key_prefix):
            return False
        if any(tags.get(k) != v for k, v in self.tags):
            return False
        if self.size_greater_than is not None and not size > self.size_greater_than:
            return False
        return self.size_less_than is None or size < self.size_less_than

    def pack(self) -> dict[str, object]:
        """The compact msgpack form."""
        out: dict[str, object] = {"k": self.form.value}
        if self.prefix is not None:
            out["p"] = self.prefix
        if self.tags:
            out["t"] = [list(pair) for pair in self.tags]
        if self.size_greater_than is not None:
            out["gt"] = self.size_greater_than
        if self.size_less_than is not None:
            out["lt"] = self.size_less_than
        return out

    @classmethod
    def unpack(cls, raw: Any) -> LifecycleFilter:
        """Inverse of :meth:`pack`; raises ``ValueError``, ``TypeError`` or ``KeyError``."""
        prefix = raw.get("p")
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError("malformed prefix")
        tags = tuple((str(k), str(v)) for k, v in raw.get("t", ()))
        return cls(
            prefix=prefix,
            tags=tags,
            size_greater_than=_optional_int(raw.get("gt")),
            size_less_than=_optional_int(raw.get("lt")),
            form=FilterForm(raw["k"]),
        )


@dataclass(frozen=True)
class Expiration:
    """An ``Expiration`` action: exactly one of ``days``, ``date`` (a midnight UTC) or
    ``expired_object_delete_marker`` is set."""

    days: int | None = None
    date: datetime | None = None
    expired_object_delete_marker: bool | None = None

    def expiry(self, last_modified: datetime) -> datetime | None:
        """When an object last modified at ``last_modified`` expires (``None``: never)."""
        if self.days is not None:
            return expiry_after_days(last_modified, self.days)
        return self.date

    def pack(self) -> dict[str, object]:
        """The compact msgpack form (the date as seconds since the epoch)."""
        out: dict[str, object] = {}
        if self.days is not None:
            out["d"] = self.days
        if self.date is not None:
            out["dt"] = int(self.date.timestamp())
        if self.expired_object_delete_marker is not None:
            out["m"] = self.expired_object_delete_marker
        return out

    @classmethod
    def unpack(cls, raw: Any) -> Expiration:
        """Inverse of :meth:`pack`; raises ``ValueError``, ``TypeError`` or ``KeyError``."""
        date = _optional_int(raw.get("dt"))
        marker = raw.get("m")
        if marker is not None and not isinstance(marker, bool):
            raise ValueError("malformed delete-marker flag")
        return cls(
            days=_optional_int(raw.get("d")),
            date=None if date is None else datetime.fromtimestamp(date, UTC),
            expired_object_delete_marker=marker,
        )


@dataclass(frozen=True)
class NoncurrentVersionExpiration:
    """A ``NoncurrentVersionExpiration`` action, kept but never acting (no versioning)."""

    noncurrent_days: int
    newer_noncurrent_versions: int | None = None

    def pack(self) -> dict[str, object]:
        """The compact msgpack form."""
        out: dict[str, object] = {"d": self.noncurrent_days}
        if self.newer_noncurrent_versions is not None:
            out["n"] = self.newer_noncurrent_versions
        return out

    @classmethod
    def unpack(cls, raw: Any) -> NoncurrentVersionExpiration:
        """Inverse of :meth:`pack`; raises ``ValueError``, ``TypeError`` or ``KeyError``."""
        days = _optional_int(raw["d"])
        if days is None:
            raise ValueError("malformed noncurrent days")
        return cls(days, _optional_int(raw.get("n")))


@dataclass(frozen=True)
class LifecycleRule:
    """One rule of a bucket's lifecycle configuration (see the module docstring)."""

    id: str
    enabled: bool
    filter: LifecycleFilter
    expiration: Expiration | None = None
    abort_upload_days: int | None = None
    noncurrent_expiration: NoncurrentVersionExpiration | None = None

    @property
    def expires_objects(self) -> bool:
        """Whether the rule is enabled and expires current objects (``Days`` or ``Date``)."""
        e = self.expiration
        return self.enabled and e is not None and (e.days is not None or e.date is not None)

    @property
    def aborts_uploads(self) -> bool:
        """Whether the rule is enabled and aborts incomplete multipart uploads."""
        return self.enabled and self.abort_upload_days is not None

    def expiry(
        self, key: str, size: int, tags: Mapping[str, str], last_modified: datetime
    ) -> datetime | None:
        """When this rule expires the object (``None``: it does not apply, or never)."""
        if not self.expires_objects or not self.filter.matches(key, size, tags):
            return None
        assert self.expiration is not None
        return self.expiration.expiry(last_modified)

    def upload_abort_time(self, key: str, initiated: datetime) -> datetime | None:
        """When this rule aborts an upload of ``key`` initiated at ``initiated`` (``None``:
        it does not apply, or never)."""
        if not self.aborts_uploads or not key.startswith(self.filter.key_prefix):
            return None
        assert self.abort_upload_days is not None
        return expiry_after_days(initiated, self.abort_upload_days)

    def pack(self) -> dict[str, object]:
        """The compact msgpack form (absent actions are omitted)."""
        out: dict[str, object] = {"id": self.id, "on": self.enabled, "f": self.filter.pack()}
        if self.expiration is not None:
            out["x"] = self.expiration.pack()
        if self.abort_upload_days is not None:
            out["a"] = self.abort_upload_days
        if self.noncurrent_expiration is not None:
            out["nc"] = self.noncurrent_expiration.pack()
        return out

    @classmethod
    def unpack(cls, raw: Any) -> LifecycleRule:
        """Inverse of :meth:`pack`; raises ``Corrupt`` if malformed."""
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a map")
            rule_id, enabled = raw["id"], raw["on"]
            if not isinstance(rule_id, str) or not isinstance(enabled, bool):
                raise ValueError("malformed rule id or status")
            x, nc = raw.get("x"), raw.get("nc")
            return cls(
                id=rule_id,
                enabled=enabled,
                filter=LifecycleFilter.unpack(raw["f"]),
                expiration=None if x is None else Expiration.unpack(x),
                abort_upload_days=_optional_int(raw.get("a")),
                noncurrent_expiration=None
                if nc is None
                else NoncurrentVersionExpiration.unpack(nc),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError):
            raise Corrupt("malformed lifecycle rule") from None


def _optional_int(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int:
        raise ValueError("not an integer")
    return raw


def pack_rules(rules: Iterable[LifecycleRule]) -> list[object]:
    """A configuration in its stored form."""
    return [rule.pack() for rule in rules]


def unpack_rules(raw: Any) -> tuple[LifecycleRule, ...] | None:
    """A stored configuration (``None``: the bucket has none); raises ``Corrupt``."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise Corrupt("malformed lifecycle configuration")
    return tuple(LifecycleRule.unpack(rule) for rule in raw)


@dataclass(frozen=True)
class ObjectExpiry:
    """When an object expires, and the ID of the rule that decides it."""

    date: datetime
    rule_id: str


def object_expiry(
    rules: Iterable[LifecycleRule],
    *,
    key: str,
    size: int,
    tags: Mapping[str, str],
    last_modified: datetime,
) -> ObjectExpiry | None:
    """The earliest expiry the enabled rules give an object (the first such rule on a tie),
    or ``None`` when none of them expires it."""
    best: ObjectExpiry | None = None
    for rule in rules:
        date = rule.expiry(key, size, tags, last_modified)
        if date is not None and (best is None or date < best.date):
            best = ObjectExpiry(date, rule.id)
    return best
