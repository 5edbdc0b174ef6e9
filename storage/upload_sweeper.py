"""Aborting multipart uploads that nobody finished.

Theory of operation
-------------------
A client that starts a multipart upload and then dies leaves its parts stored and counted
against capacity forever; S3 offers a lifecycle rule (``AbortIncompleteMultipartUpload``) and
MinIO aborts such uploads after 24 hours. An :class:`UploadSweeper` does the latter: every
``interval`` it pages through every bucket's uploads in progress (the same listing as
ListMultipartUploads) and aborts, through :meth:`ObjectStore.abort_multipart_upload`, those
initiated more than ``expiry`` ago, which releases their parts.

Every gateway of a network runs one, so several may sweep at once: an abort that lost the race
answers ``NoSuchUpload`` and an upload being completed answers ``Conflict``; both are skipped
(the second is looked at again by the next sweep). A bucket deleted meanwhile is skipped. Any
other storage error (no quorum, say) ends that bucket's sweep; it is counted, logged, and
retried at the next interval.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from .errors import Conflict, InvalidArgument, NoSuchBucket, NoSuchUpload, StorageError
from .objects import ObjectStore, UploadInfo

logger = logging.getLogger(__name__)

__all__ = ["SweepStatistics", "UploadSweeper", "abort_quietly", "stale_uploads", "sweep_interval"]

#: The longest time between two sweeps.
MAX_INTERVAL = 6 * 3600.0


def sweep_interval(expiry: float) -> float:
    """How often to sweep for uploads older than ``expiry`` seconds: a quarter of it, at
    least a second and at most :data:`MAX_INTERVAL`."""
    return min(max(expiry / 4, 1.0), MAX_INTERVAL)


@dataclass(frozen=True)
class SweepStatistics:
    """Counters of an :class:`UploadSweeper` since it started."""

    sweeps: int
    uploads_aborted: int
    failures: int


class UploadSweeper:
    """Aborts multipart uploads older than ``expiry`` seconds (see the module docstring).

    Args:
        objects: the object store whose buckets are swept.
        expiry: age in seconds after which an unfinished upload is aborted.
        clock: wall-clock seconds since the epoch (uploads record their initiation time).
    """

    def __init__(
        self,
        objects: ObjectStore,
        *,
        expiry: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the sweeper; nothing runs until :meth:`run` or :meth:`sweep_now`."""
        if not (isinstance(expiry, int | float) and expiry > 0 and math.isfinite(expiry)):
            raise InvalidArgument("expiry must be a positive number of seconds")
        self._objects = objects
        self._expiry = float(expiry)
        self._clock = clock
        self._sweeps = self._aborted = self._failures = 0

    def statistics(self) -> SweepStatistics:
        """Return a snapshot of the counters."""
        return SweepStatistics(self._sweeps, self._aborted, self._failures)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every :func:`sweep_interval` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(sweep_interval(self._expiry))
            await self.sweep_now()

    async def sweep_now(self) -> int:
        """Sweep every bucket once; return how many uploads were aborted."""
        self._sweeps += 1
        try:
            buckets = await self._objects.list_buckets()
        except StorageError as exc:
            self._failures += 1
            logger.warning("upload sweep: cannot list buckets: %s", exc)
            return 0
        cutoff = datetime.fromtimestamp(self._clock() - self._expiry, UTC)
        aborted = 0
        for bucket in buckets:
            try:
                aborted += await self._sweep_bucket(bucket.name, cutoff)
            except NoSuchBucket:
                continue
            except StorageError as exc:
                self._failures += 1
                logger.warning("upload sweep of bucket %s stopped: %s", bucket.name, exc)
        return aborted

    async def _sweep_bucket(self, bucket: str, cutoff: datetime) -> int:
        aborted = 0
        for upload in await stale_uploads(self._objects, bucket, lambda u: u.initiated < cutoff):
            if not await abort_quietly(self._objects, bucket, upload):
                continue
            aborted += 1
            self._aborted += 1
            logger.info(
                "upload sweep: aborted upload %s of %s/%s (unfinished for over %.0f s)",
                upload.upload_id,
                bucket,
                upload.key,
                self._expiry,
            )
        return aborted


async def stale_uploads(
    objects: ObjectStore, bucket: str, stale: Callable[[UploadInfo], bool]
) -> list[UploadInfo]:
    """The uploads in progress in ``bucket`` that ``stale`` picks (every listing page)."""
    picked: list[UploadInfo] = []
    key_marker: str | None = None
    upload_marker: str | None = None
    while True:
        page = await objects.list_multipart_uploads(
            bucket, key_marker=key_marker, upload_id_marker=upload_marker
        )
        picked += [u for u in page.uploads if stale(u)]
        if not page.is_truncated:
            return picked
        key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker


async def abort_quietly(objects: ObjectStore, bucket: str, upload: UploadInfo) -> bool:
    """Abort ``upload``; return whether this call did. An abort that lost a race
    (``NoSuchUpload``: another gateway was first) or meets a completion under way
    (``Conflict``) is ``False``; other storage errors propagate."""
    try:
        await objects.abort_multipart_upload(bucket, upload.key, upload.upload_id)
    except (NoSuchUpload, Conflict):
        return False
    return True
