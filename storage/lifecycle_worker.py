"""Applying buckets' lifecycle rules: expiring objects and aborting incomplete uploads.

Theory of operation
-------------------
A bucket's lifecycle rules (:mod:`storage.lifecycle`) only say what should happen; a
:class:`LifecycleWorker` makes it happen. Every ``interval`` (an hour by default) it reads the
bucket registry and, for each bucket with enabled rules:

* **expires objects**: it pages through the keys under the rules' prefixes (one listing per
  prefix that no shorter one covers, so nested prefixes are read once), works out each
  object's expiry from the listed record (size, tags and last-modified time are all in the
  index entry, so no object is opened), and deletes those whose expiry has passed with
  :meth:`ObjectStore.delete_object_if`. The rules it judges by are read afresh after each
  listing page (a rule removed, disabled or narrowed meanwhile stops acting at once; the
  scan only started from the rules it found). The condition runs inside the index edit
  that deletes: the key must still hold the very object judged expired (same ETag and
  last-modified time) and the rules must still expire it (its tags may have changed). An
  object written at the key after the listing is therefore never deleted by this scan; the
  next one judges it.
* **aborts incomplete multipart uploads** of a rule's prefix initiated more than
  ``DaysAfterInitiation`` days ago (rounded up to midnight UTC, as S3), through
  :meth:`ObjectStore.abort_multipart_upload`, which releases their parts; each is checked
  again against the rules read afresh just before its abort.

Every gateway of a network runs one, so several may act on a bucket at once: a deletion that
lost the race finds the key gone or changed and does nothing; an abort that lost answers
``NoSuchUpload`` and an upload being completed answers ``Conflict``; both are skipped. A
bucket deleted meanwhile is skipped. Any other storage error (no quorum, say) ends that part
of the bucket's scan; it is counted, logged, and retried at the next interval. Expiry is
checked against the worker's ``clock`` (wall-clock seconds), injectable for tests.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from .errors import InvalidArgument, NoSuchBucket, StorageError
from .lifecycle import LifecycleRule, object_expiry
from .objects import ObjectInfo, ObjectStore, UploadInfo
from .upload_sweeper import abort_quietly, stale_uploads

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INTERVAL",
    "LifecycleStatistics",
    "LifecycleWorker",
    "ScanOutcome",
    "covering_prefixes",
]

#: Time between two scans unless configured otherwise (S3 applies its rules about daily).
DEFAULT_INTERVAL = 3600.0


@dataclass(frozen=True)
class LifecycleStatistics:
    """Counters of a :class:`LifecycleWorker` since it started."""

    scans: int
    objects_expired: int
    uploads_aborted: int
    failures: int


@dataclass(frozen=True)
class ScanOutcome:
    """What one scan did."""

    objects_expired: int = 0
    uploads_aborted: int = 0


def covering_prefixes(prefixes: Sequence[str]) -> list[str]:
    """The prefixes of ``prefixes`` that no other (shorter) one covers, sorted: listing
    these lists every key under any of them once."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        # In sorted order a covering prefix is the last one kept (every key between it and
        # ``prefix`` starts with it, so none was kept after it).
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


class LifecycleWorker:
    """Applies the lifecycle rules of every bucket (see the module docstring).

    Args:
        objects: the object store whose buckets are scanned.
        interval: seconds between two scans.
        clock: wall-clock seconds since the epoch (objects record their last-modified time).
    """

    def __init__(
        self,
        objects: ObjectStore,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the worker; nothing runs until :meth:`run` or :meth:`scan_now`."""
        if not (isinstance(interval, int | float) and interval > 0 and math.isfinite(interval)):
            raise InvalidArgument("interval must be a positive number of seconds")
        self._objects = objects
        self._interval = float(interval)
        self._clock = clock
        self._scans = self._expired = self._aborted = self._failures = 0

    def statistics(self) -> LifecycleStatistics:
        """Return a snapshot of the counters."""
        return LifecycleStatistics(self._scans, self._expired, self._aborted, self._failures)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan every ``interval`` seconds until cancelled (cancellation may stop a scan
        between two deletions; each deletion is atomic)."""
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.scan_now()

    async def scan_now(self) -> ScanOutcome:
        """Apply every bucket's rules once; return what was done."""
        self._scans += 1
        try:
            buckets = await self._objects.list_buckets()
        except StorageError as exc:
            self._failures += 1
            logger.warning("lifecycle scan: cannot list buckets: %s", exc)
            return ScanOutcome()
        now = datetime.fromtimestamp(self._clock(), UTC)
        expired = aborted = 0
        for bucket in buckets:
            rules = bucket.lifecycle or ()
            expiring = [rule for rule in rules if rule.expires_objects]
            aborting = [rule for rule in rules if rule.aborts_uploads]
            if expiring:
                expired += await self._guarded(bucket.name, "expiry", self._expire, expiring, now)
            if aborting:
                aborted += await self._guarded(bucket.name, "abort", self._abort, aborting, now)
        return ScanOutcome(expired, aborted)

    async def _guarded(
        self,
        bucket: str,
        what: str,
        step: Callable[[str, Sequence[LifecycleRule], datetime], Awaitable[int]],
        rules: Sequence[LifecycleRule],
        now: datetime,
    ) -> int:
        try:
            return await step(bucket, rules, now)
        except NoSuchBucket:
            return 0
        except StorageError as exc:
            self._failures += 1
            logger.warning("lifecycle %s in bucket %s stopped: %s", what, bucket, exc)
            return 0

    async def _current_rules(
        self, bucket: str, which: Callable[[LifecycleRule], bool]
    ) -> list[LifecycleRule]:
        """The bucket's rules as configured now (a fresh read), those ``which`` picks: a rule
        removed, disabled or narrowed during a scan stops acting at once."""
        rules = (await self._objects.head_bucket(bucket)).lifecycle or ()
        return [rule for rule in rules if which(rule)]

    async def _expire(self, bucket: str, rules: Sequence[LifecycleRule], now: datetime) -> int:
        expired = 0
        for prefix in covering_prefixes([rule.filter.key_prefix for rule in rules]):
            marker: str | None = None
            while True:
                page = await self._objects.list_objects(bucket, prefix=prefix, start_after=marker)
                current = await self._current_rules(bucket, _expires_objects)
                for info in page.objects:
                    if _expired(current, info, now) and await self._delete(
                        bucket, info, current, now
                    ):
                        expired += 1
                if not current or not page.is_truncated or page.next_marker is None:
                    break
                marker = page.next_marker
        return expired

    async def _delete(
        self, bucket: str, seen: ObjectInfo, rules: Sequence[LifecycleRule], now: datetime
    ) -> bool:
        def still_expired(current: ObjectInfo) -> bool:
            return (
                current.etag == seen.etag
                and current.last_modified == seen.last_modified
                and _expired(rules, current, now)
            )

        if not await self._objects.delete_object_if(bucket, seen.key, still_expired):
            return False  # changed or deleted meanwhile
        self._expired += 1
        logger.info(
            "lifecycle: expired %s/%s (last modified %s)",
            bucket,
            seen.key,
            seen.last_modified.isoformat(),
        )
        return True

    async def _abort(self, bucket: str, rules: Sequence[LifecycleRule], now: datetime) -> int:
        def stale_under(these: Sequence[LifecycleRule]) -> Callable[[UploadInfo], bool]:
            def stale(upload: UploadInfo) -> bool:
                times = (rule.upload_abort_time(upload.key, upload.initiated) for rule in these)
                return any(t is not None and t <= now for t in times)

            return stale

        aborted = 0
        for upload in await stale_uploads(self._objects, bucket, stale_under(rules)):
            current = await self._current_rules(bucket, _aborts_uploads)
            if not stale_under(current)(upload):
                continue
            if not await abort_quietly(self._objects, bucket, upload):
                continue
            aborted += 1
            self._aborted += 1
            logger.info(
                "lifecycle: aborted upload %s of %s/%s", upload.upload_id, bucket, upload.key
            )
        return aborted


def _expires_objects(rule: LifecycleRule) -> bool:
    return rule.expires_objects


def _aborts_uploads(rule: LifecycleRule) -> bool:
    return rule.aborts_uploads


def _expired(rules: Sequence[LifecycleRule], info: ObjectInfo, now: datetime) -> bool:
    """Whether ``rules`` expire the object ``info`` describes at ``now``."""
    found = object_expiry(
        rules, key=info.key, size=info.size, tags=info.tags, last_modified=info.last_modified
    )
    return found is not None and found.date <= now
