"""Buckets and objects on the key-value layer, independent of HTTP: what the S3 server calls.

Layout in the block store (register names are bytes):

* ``s3/buckets`` — the bucket **registry**: one register mapping each bucket name to its
  :class:`~storage.object_records.BucketConfig` (owner, creation time, redundancy, canned
  ACL, and the random ``index_id`` of this incarnation of the bucket);
* ``s3/idx/<index_id>/...`` — the bucket's sorted, sharded **index**
  (:mod:`storage.bucket_index`): object key (UTF-8) -> encoded
  :class:`~storage.object_records.ObjectRecord`;
* ``s3/up/<index_id>/<upload_id>`` — one register per multipart upload, its parts in
  registers of 100 parts each (``.../p/<group>``, :mod:`storage.upload_parts`), and
  ``s3/ups/<index_id>`` — the bucket's list of uploads in progress;
* object data: immutable chunks of ``chunk_size`` bytes (4 MiB), stored with the bucket's
  redundancy (replicas or erasure coding). Records with more than ``inline_chunks``
  references keep them in one *chunk-list chunk* instead.

Data moves in a bounded pipeline: a PUT stores up to :data:`PUT_PIPELINE` chunks at once
while the next one fills, and a GET fetches up to :data:`GET_PREFETCH` chunks ahead of the
one being sent, so a transfer holds a few chunks in memory, never the object. Concurrent
changes of one index shard share one consensus round (:mod:`storage.bucket_index`).

Rules that keep it correct:

* **Atomic conditional writes**: an object changes by one edit of one index shard, and the
  ``If-Match`` / ``If-None-Match`` check runs inside that edit.
* **Data before metadata**: chunks are durable (``put_chunk`` returned) before the record
  naming them is committed; a part is durable before ``upload_part`` returns.
* **Bucket configurations are cached** for :data:`BUCKET_CACHE_SECONDS` by object
  operations (PUT, GET, HEAD, DELETE, listing, copy): a configuration only names the
  bucket's incarnation (``index_id``) and redundancy, and every object operation goes
  through that incarnation's index, which refuses writes once a deletion sealed it and is
  gone once the deletion finished. So a stale entry never lets a write land in a deleted
  bucket: it fails there, the registry is re-read, and the operation is retried on the
  current incarnation (``NoSuchBucket`` if there is none). Bucket-level operations
  (create, HEAD, list, delete, ACL) and multipart uploads always read the registry.
* **Every chunk has exactly one owner** — one object record or one upload part — so
  releasing the chunks of an overwritten or deleted object never hurts another one.
  Hence *copy re-stores the data* (no sharing, no reference counts), and a completed
  multipart upload hands its parts' chunks over to the object (no data copy).
* **Garbage only after commit**: the old record's chunks are released (best effort,
  ``delete_chunk``) after the change that dropped them committed — at once, or, when the
  caller passes a :class:`ReleaseLater`, once it has answered its client and calls
  :meth:`ObjectStore.release` (a replaced 64 MiB object is 16 deletions on every holder:
  no reason to keep the client waiting for them). When the outcome of a
  commit is unknown (``Unavailable`` from the edit: it may or may not have been applied),
  nothing is released: the new chunks are leaked rather than risk deleting referenced ones.
* **Bucket deletion** seals every (empty) index shard first, then removes the registry
  entry; a writer that meets a seal waits for the deletion to finish (``NoSuchBucket``) or
  to be rolled back (it retries). A crashed deletion leaves the shards sealed: calling
  ``delete_bucket`` again finishes it.

* **Multipart completion** first *claims* the upload register (records the part list it
  completes with; from then on the upload cannot be aborted), then closes the upload's part
  groups (no part can change any more) and checks the list against what they hold, then
  commits the object, then retires the upload and releases what of the parts the object
  does not own. An abort drops
  the upload register first, then closes the groups and releases every part; an UploadPart
  that lands after either withdraws its own part (:mod:`storage.upload_parts`). A completion
  that failed part-way is finished by retrying it with the same list: the retry sees
  whether the object at the key is already this upload's (then only the clean-up is left)
  or commits it. A completion refused for sure (``If-None-Match``...) releases its claim.
  A claim records its time (a retry renews it) and a completion gives up if it has not
  committed within :data:`COMPLETION_PREPARE_SECONDS`; a claim older than
  :data:`ABANDONED_CLAIM_SECONDS` was abandoned, and an abort settles it (finishes the
  clean-up if the object was committed, else withdraws the claim and aborts, in one edit
  that checks the claim is still the abandoned one).

Known limits: a reader streaming an object while it is overwritten may find a chunk
already released (``NotFound`` mid-stream), as S3 readers of a replaced object may see a
truncated body. Chunks whose commit outcome was unknown, and the chunks an object replaced
by a completion that crashed after committing, are leaked (never wrongly released); a
future scrub can collect them. The registry and a bucket's uploads list are single
registers (fine for thousands of buckets / uploads in progress, not millions).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import time
from bisect import bisect_left
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

import trio

from .api import BlockStore
from .bucket_index import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, BucketIndex, IndexSealed
from .errors import (
    BadDigest,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    Conflict,
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    InvalidRange,
    KeyTooLong,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NotFound,
    PreconditionFailed,
    StorageError,
    Unavailable,
)
from .hash_lane import HashLane
from .lifecycle import LifecycleRule
from .object_records import (
    PART_INLINE_CHUNKS,
    BucketConfig,
    ContentHeaders,
    CorsRule,
    ObjectRecord,
    PartRecord,
    StoredChunk,
    UploadEntry,
    UploadRecord,
    check_acl,
    pack_chunk_list,
    pack_registry,
    pack_upload_list,
    unpack_chunk_list,
    unpack_registry,
    unpack_upload_list,
)
from .policy import Redundancy
from .upload_parts import FINAL, GroupClosed, UploadParts, group_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

REGISTRY = b"s3/buckets"
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_INLINE_CHUNKS = 64
#: Chunks of one upload being stored at once (while the next one fills).
PUT_PIPELINE = 4
#: Chunks of one download fetched ahead of the one being sent.
GET_PREFETCH = 3
#: How long object operations reuse a bucket's configuration (seconds; see the module doc).
BUCKET_CACHE_SECONDS = 2.0
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10_000
MAX_KEY_BYTES = 1024
MAX_LIST_KEYS = 1000
NULL_VERSION = "null"
#: A completion claim this old (seconds) was left by a completion that died: a completion
#: gives up if it has not reached its commit within :data:`COMPLETION_PREPARE_SECONDS` of
#: claiming (a retry renews the claim). An abort (or the sweeper's) settles older claims.
ABANDONED_CLAIM_SECONDS = 6 * 3600.0
#: Longest a completion may take from its claim to its commit (then Unavailable: retry it).
COMPLETION_PREPARE_SECONDS = ABANDONED_CLAIM_SECONDS / 4
#: How many deletions of one DeleteObjects call run at once.
DELETE_CONCURRENCY = 8
#: How many chunks of one dropped object (or upload) are released at once: an overwritten
#: 64 MiB object has 16, and releasing them one after the other added ~90 ms to the PUT.
RELEASE_CONCURRENCY = 8

#: How long a writer that meets a sealed index waits for the deletion to settle.
SEALED_WAIT_SECONDS = 2.0
_CLEANUP_SECONDS = 30.0


class _Exists(Exception):
    pass


class _NoChange(Exception):
    pass


# -- public result types --------------------------------------------------------------------


@dataclass(frozen=True)
class BucketInfo:
    """A bucket's configuration as the S3 layer needs it (``cors``: its CORS rules, ``None``
    when it has no CORS configuration; ``tags``: its tag set, ``None`` when it has none;
    ``lifecycle``: its lifecycle rules, ``None`` when it has no lifecycle configuration)."""

    name: str
    owner: str
    created: datetime
    redundancy: Redundancy
    acl: str
    region: str | None = None
    cors: tuple[CorsRule, ...] | None = None
    tags: Mapping[str, str] | None = None
    lifecycle: tuple[LifecycleRule, ...] | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """An object's metadata. ``etag`` is unquoted: hex MD5, or ``hex-N`` for multipart."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str = NULL_VERSION
    content_type: str | None = None
    content_encoding: str | None = None
    content_disposition: str | None = None
    content_language: str | None = None
    cache_control: str | None = None
    expires: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    acl: str = "private"
    owner: str | None = None
    parts_count: int | None = None
    storage_class: str = "STANDARD"
    checksum: tuple[str, bytes] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListPage:
    """One page of a listing, in S3 order; common prefixes count toward ``max_keys``.

    ``next_marker`` is the last key or common prefix returned when the page is truncated
    (ListObjects v1 ``NextMarker``); ``next_continuation_token`` encodes the same position
    opaquely for ListObjectsV2.
    """

    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_marker: str | None

    @property
    def next_continuation_token(self) -> str | None:
        """The ListObjectsV2 ``NextContinuationToken`` (``None`` unless truncated)."""
        if self.next_marker is None:
            return None
        return encode_continuation_token(self.next_marker)


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part. ``etag`` is the unquoted hex MD5."""

    part_number: int
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class PartsPage:
    """A page of ListParts, with the upload's owner."""

    bucket: str
    key: str
    upload_id: str
    owner: str | None
    parts: list[PartInfo]
    is_truncated: bool
    next_part_number_marker: int | None
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class UploadInfo:
    """One multipart upload in progress."""

    key: str
    upload_id: str
    initiated: datetime
    owner: str | None = None
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class UploadsPage:
    """A page of ListMultipartUploads."""

    uploads: list[UploadInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass(frozen=True)
class DeleteOutcome:
    """The result for one key of :meth:`ObjectStore.delete_objects` (``error`` or success)."""

    key: str
    error: StorageError | None = None


@dataclass(frozen=True)
class ObjectStoreStatistics:
    """Counters of one :class:`ObjectStore` since it was built."""

    objects_written: int
    objects_opened: int
    objects_deleted: int
    bytes_stored: int
    chunks_stored: int
    chunks_released: int
    release_failures: int
    ambiguous_commits: int


def encode_continuation_token(marker: str) -> str:
    """Encode a listing position as an opaque, URL-safe ListObjectsV2 continuation token."""
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode("ascii")


def decode_continuation_token(token: str) -> str:
    """Inverse of :func:`encode_continuation_token`; ``InvalidArgument`` if malformed."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidArgument("The continuation token provided is incorrect") from None


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _key_bytes(key: str) -> bytes:
    if not key:
        raise InvalidArgument("object key must not be empty")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("object key is not valid UTF-8") from None
    if len(raw) > MAX_KEY_BYTES:
        raise KeyTooLong(f"object key is {len(raw)} bytes long, more than {MAX_KEY_BYTES}")
    return raw


def _check_bucket_name(name: str) -> None:
    if not name or len(name) > 255 or "/" in name:
        raise InvalidArgument(f"invalid bucket name {name!r}")


def _unquote(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    if len(etag) >= 2 and etag[0] == '"' and etag[-1] == '"':
        etag = etag[1:-1]
    return etag


def _etag_in(header: str, etag: str) -> bool:
    """Whether an ``If-Match`` list (``*`` or comma-separated ETags) matches ``etag``."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or (tag and _unquote(tag) == etag):
            return True
    return False


def check_write_conditions(
    current_etag: str | None, if_match: str | None, if_none_match: str | None
) -> None:
    """Evaluate S3 conditional-write headers against the key's current ETag (or ``None``).

    Raises:
        PreconditionFailed: ``If-None-Match: *`` and the key exists, or ``If-Match`` differs.
        NoSuchKey: ``If-Match`` and the key does not exist.
        InvalidArgument: ``If-None-Match`` other than ``*``.
    """
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise InvalidArgument("If-None-Match supports only '*' on writes")
        if current_etag is not None:
            raise PreconditionFailed("the key exists (If-None-Match: *)")
    if if_match is not None:
        if current_etag is None:
            raise NoSuchKey("the key does not exist (If-Match)")
        if not _etag_in(if_match, current_etag):
            raise PreconditionFailed("the ETag differs (If-Match)")


def _headers(
    content_type: str | None,
    content_encoding: str | None,
    content_disposition: str | None,
    content_language: str | None,
    cache_control: str | None,
    expires: str | None,
    metadata: Mapping[str, str] | None,
    acl: str,
    tags: Mapping[str, str] | None,
) -> ContentHeaders:
    return ContentHeaders(
        content_type=content_type,
        content_encoding=content_encoding,
        content_disposition=content_disposition,
        content_language=content_language,
        cache_control=cache_control,
        expires=expires,
        metadata=dict(metadata or {}),
        acl=check_acl(acl),
        tags=dict(tags or {}),
    )


def _bucket_info(cfg: BucketConfig) -> BucketInfo:
    return BucketInfo(
        name=cfg.name,
        owner=cfg.owner,
        created=_datetime(cfg.created_ms),
        redundancy=cfg.redundancy,
        acl=cfg.acl,
        region=cfg.region,
        cors=cfg.cors,
        tags=cfg.tags,
        lifecycle=cfg.lifecycle,
    )


def _object_info(bucket: str, key: str, record: ObjectRecord) -> ObjectInfo:
    h = record.headers
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=record.size,
        etag=record.etag,
        last_modified=_datetime(record.mtime_ms),
        content_type=h.content_type,
        content_encoding=h.content_encoding,
        content_disposition=h.content_disposition,
        content_language=h.content_language,
        cache_control=h.cache_control,
        expires=h.expires,
        metadata=dict(h.metadata),
        acl=h.acl,
        owner=record.owner,
        parts_count=record.parts_count,
        checksum=record.checksum,
        tags=dict(h.tags),
    )


def _register_policy(policy: Redundancy) -> Redundancy | None:
    # Registers are always replicated; an erasure-coded bucket uses the store's default.
    return policy if not policy.is_erasure_coded else None


# -- reading --------------------------------------------------------------------------------


class ObjectReader:
    """An object opened for reading: its metadata, and its bytes on demand.

    It holds the record seen when it was opened, so :attr:`info` and the streamed bytes
    belong to the same version even if the key is overwritten meanwhile.
    """

    def __init__(self, store: BlockStore, info: ObjectInfo, record: ObjectRecord) -> None:
        self._store = store
        self.info = info
        self._record = record

    @property
    def record(self) -> ObjectRecord:
        """The stored record this reader serves."""
        return self._record

    async def chunks(self) -> list[StoredChunk]:
        """The object's chunk list (fetching the chunk-list chunk if there is one)."""
        return await _chunk_list(self._store, self._record)

    def check_range(self, start: int, end: int | None) -> tuple[int, int]:
        """Clamp ``start..end`` (inclusive) to the object; return the range to serve.

        Raises:
            InvalidArgument: ``start < 0`` or ``end < start``.
            InvalidRange: ``start`` is at or beyond the end of the object.
        """
        size = self.info.size
        if start < 0 or (end is not None and end < start):
            raise InvalidArgument(f"invalid byte range {start}-{end}")
        if start >= size:
            raise InvalidRange(size)
        return start, size - 1 if end is None else min(end, size - 1)

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``start..end`` (inclusive; ``None``: to the end), chunk by chunk.

        Only the chunks overlapping the range are fetched, one at a time.
        """
        if self.info.size == 0:
            if start != 0 or end is not None:
                raise InvalidRange(0)
            return
        start, end = self.check_range(start, end)
        offset = 0
        for chunk in await self.chunks():
            chunk_end = offset + chunk.length  # exclusive
            if chunk_end > start and offset <= end:
                data = await self._store.get_chunk(chunk.ref)
                if len(data) != chunk.length:
                    raise NotFound("chunk length differs from its record")
                lo = max(start - offset, 0)
                hi = min(end + 1 - offset, chunk.length)
                yield data if lo == 0 and hi == len(data) else data[lo:hi]
            offset = chunk_end
            if offset > end:
                break

    async def send_to(
        self, sink: Callable[[bytes], Awaitable[None]], start: int = 0, end: int | None = None
    ) -> int:
        """Send the bytes ``start..end`` to ``sink``, fetching the next chunks meanwhile.

        This is the server's fast path (e.g. an ASGI ``send`` wrapper): while ``sink``
        writes chunk *i*, up to :data:`GET_PREFETCH` - 1 following chunks are fetched
        concurrently, so at most :data:`GET_PREFETCH` chunks are in memory; they are sent
        in order. Errors from the store or from ``sink`` propagate unchanged (the first
        chunk that fails, in order, decides the store's error).

        Returns:
            How many bytes were sent.
        """
        if self.info.size == 0:
            if start != 0 or end is not None:
                raise InvalidRange(0)
            return 0
        start, end = self.check_range(start, end)
        plan: list[tuple[StoredChunk, int, int]] = []
        offset = 0
        for chunk in await self.chunks():
            if offset > end:
                break
            if offset + chunk.length > start:
                lo = max(start - offset, 0)
                plan.append((chunk, lo, min(end + 1 - offset, chunk.length)))
            offset += chunk.length
        results: list[bytes | StorageError | None] = [None] * len(plan)
        ready = [trio.Event() for _ in plan]
        window = trio.Semaphore(GET_PREFETCH)

        async def fetch(i: int) -> None:
            chunk, lo, hi = plan[i]
            try:
                data = await self._store.get_chunk(chunk.ref)
                if len(data) != chunk.length:
                    raise NotFound("chunk length differs from its record")
            except StorageError as exc:
                results[i] = exc
            else:
                results[i] = data if lo == 0 and hi == len(data) else data[lo:hi]
            ready[i].set()

        async def feed(nursery: trio.Nursery) -> None:
            for i in range(len(plan)):
                await window.acquire()
                nursery.start_soon(fetch, i)

        sent = 0
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, nursery)
            try:
                for i in range(len(plan)):
                    await ready[i].wait()
                    item, results[i] = results[i], None
                    if isinstance(item, StorageError):
                        raise item
                    assert item is not None
                    await sink(item)
                    sent += len(item)
                    window.release()
            except Exception as exc:  # re-raised below, outside the nursery, unwrapped
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return sent


async def _chunk_list(store: BlockStore, record: ObjectRecord) -> list[StoredChunk]:
    if record.chunk_list is None:
        return list(record.chunks)
    return unpack_chunk_list(await store.get_chunk(record.chunk_list.ref))


async def _part_chunks(store: BlockStore, part: PartRecord) -> list[StoredChunk]:
    if part.chunk_list is None:
        return list(part.chunks)
    return unpack_chunk_list(await store.get_chunk(part.chunk_list.ref))


# -- the object store ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dropped:
    """A dropped object record, the addresses to keep, and where it was: its bucket and key
    (for an object a multipart upload made, see ``ObjectStore._owned_chunks``)."""

    record: ObjectRecord
    keep: frozenset[bytes]
    cfg: BucketConfig
    raw_key: bytes


@dataclass(frozen=True)
class DroppedUpload:
    """An upload whose register is gone: its parts are to be collected, all but the data
    chunks whose address is in ``keep`` (a completed object owns them)."""

    name: bytes
    upload: UploadRecord
    keep: frozenset[bytes] = frozenset()


class ReleaseLater:
    """Dropped objects and uploads whose chunks are to be released after the caller answered
    its client.

    Pass one to the operations that replace or delete objects or end uploads, answer, then
    hand it to :meth:`ObjectStore.release`. What a process dies before releasing is leaked,
    exactly as a release cut short (see the module docstring).
    """

    def __init__(self) -> None:
        """Start empty."""
        self._records: list[_Dropped] = []
        self._uploads: list[DroppedUpload] = []

    def add(self, dropped: _Dropped) -> None:
        """Remember to release a dropped record's chunks."""
        self._records.append(dropped)

    def add_upload(self, dropped: DroppedUpload) -> None:
        """Remember to collect the parts of a dropped upload."""
        self._uploads.append(dropped)

    def take(self) -> list[_Dropped]:
        """Return the objects added and forget them."""
        records, self._records = self._records, []
        return records

    def take_uploads(self) -> list[DroppedUpload]:
        """Return the uploads added and forget them."""
        uploads, self._uploads = self._uploads, []
        return uploads

    def __len__(self) -> int:
        return len(self._records) + len(self._uploads)


class ObjectStore:
    """Buckets, objects and multipart uploads on a :class:`~storage.api.BlockStore`.

    Args:
        store: the cluster (or a fake in tests).
        default_redundancy: the policy of new buckets that do not name one.
        chunk_size: object data is stored in chunks of this many bytes.
        inline_chunks: records with more chunk references use a chunk-list chunk.
        min_part_size: every multipart part but the last must be at least this big.
        index_max_entries: index shards split beyond this many entries.
        index_max_bytes: index shards split beyond this many encoded bytes.
        clock: seconds since the epoch, for ``last_modified``.
        bucket_cache_seconds: how long object operations reuse a bucket's configuration
            (0: read the registry every time).

    Every method may raise ``Unavailable`` (unchanged from the block store) besides the
    errors it documents. Cancelling a call leaves no partial object visible; data chunks
    stored by a cancelled write are released (shielded, best effort).
    """

    def __init__(
        self,
        store: BlockStore,
        *,
        default_redundancy: Redundancy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        inline_chunks: int = DEFAULT_INLINE_CHUNKS,
        min_part_size: int = MIN_PART_SIZE,
        index_max_entries: int = DEFAULT_MAX_ENTRIES,
        index_max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        bucket_cache_seconds: float = BUCKET_CACHE_SECONDS,
    ) -> None:
        if chunk_size <= 0 or inline_chunks <= 0:
            raise ValueError("chunk_size and inline_chunks must be positive")
        if bucket_cache_seconds < 0:
            raise ValueError("bucket_cache_seconds must not be negative")
        self._store = store
        self.default_redundancy = default_redundancy or Redundancy(replicas=3)
        self.chunk_size = chunk_size
        self.inline_chunks = inline_chunks
        self.min_part_size = min_part_size
        self._index_max_entries = index_max_entries
        self._index_max_bytes = index_max_bytes
        self._clock = clock
        self._indexes: dict[bytes, BucketIndex] = {}
        self._bucket_cache_seconds = bucket_cache_seconds
        #: name -> (configuration, trio time until which object operations may use it)
        self._bucket_cache: dict[str, tuple[BucketConfig, float]] = {}
        self._registry_lock = trio.Lock()
        self._counts: dict[str, int] = dict.fromkeys(ObjectStoreStatistics.__dataclass_fields__, 0)

    def statistics(self) -> ObjectStoreStatistics:
        """Return this object's counters (for metrics)."""
        return ObjectStoreStatistics(**self._counts)

    # -- plumbing ------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _registry(self) -> dict[str, BucketConfig]:
        """A linearizable read of the registry (which also refreshes the cache)."""
        try:
            versioned = await self._store.read(REGISTRY)
        except NotFound:
            buckets = {}
        else:
            buckets = unpack_registry(versioned.value)
        self._remember_buckets(buckets)
        return buckets

    def _remember_buckets(self, buckets: Mapping[str, BucketConfig]) -> None:
        until = trio.current_time() + self._bucket_cache_seconds
        self._bucket_cache = {name: (cfg, until) for name, cfg in buckets.items()}

    async def _bucket(self, name: str) -> BucketConfig:
        """The bucket's configuration, read from the registry now (``NoSuchBucket``)."""
        cfg = (await self._registry()).get(name)
        if cfg is None:
            raise NoSuchBucket(f"no bucket {name!r}")
        return cfg

    def _cached(self, name: str) -> BucketConfig | None:
        entry = self._bucket_cache.get(name)
        if entry is None or trio.current_time() >= entry[1]:
            return None
        return entry[0]

    async def _object_bucket(self, name: str) -> tuple[BucketConfig, bool]:
        """The configuration object operations use: cached, or read now.

        Returns:
            ``(configuration, fresh)``: ``fresh`` when it was read from the registry by
            this call (a ``NoSuchBucket`` from its index is then final).
        """
        cfg = self._cached(name)
        if cfg is not None:
            return cfg, False
        async with self._registry_lock:  # one refresh at a time; the others reuse it
            cfg = self._cached(name)
            if cfg is not None:
                return cfg, False
            return await self._bucket(name), True

    async def _on_bucket(self, name: str, op: Callable[[BucketConfig], Awaitable[T]]) -> T:
        """Run ``op`` on the bucket's configuration; retry once on a fresh one if it is stale.

        ``op`` must be safe to run again after it raised ``NoSuchBucket`` (it changed nothing).
        """
        cfg, fresh = await self._object_bucket(name)
        try:
            return await op(cfg)
        except NoSuchBucket:
            if fresh:
                raise
        return await op(await self._bucket(name))

    def index(self, cfg: BucketConfig) -> BucketIndex:
        """The (cached) index object of a bucket incarnation."""
        idx = self._indexes.get(cfg.index_id)
        if idx is None:
            idx = BucketIndex(
                self._store,
                b"s3/idx/" + cfg.index_id.hex().encode(),
                redundancy=_register_policy(cfg.redundancy),
                max_entries=self._index_max_entries,
                max_bytes=self._index_max_bytes,
            )
            self._indexes[cfg.index_id] = idx
        return idx

    async def bucket_index(self, bucket: str) -> BucketIndex:
        """The index of ``bucket`` (for tests, tools and statistics)."""
        return self.index(await self._bucket(bucket))

    @staticmethod
    def _upload_name(cfg: BucketConfig, upload_id: str) -> bytes:
        return b"s3/up/" + cfg.index_id.hex().encode() + b"/" + upload_id.encode("ascii")

    @staticmethod
    def _uploads_name(cfg: BucketConfig) -> bytes:
        return b"s3/ups/" + cfg.index_id.hex().encode()

    async def _index_update(
        self, cfg: BucketConfig, key: bytes, fn: Callable[[bytes | None], bytes | None]
    ) -> tuple[bytes | None, bytes | None]:
        index = self.index(cfg)
        deadline = trio.current_time() + SEALED_WAIT_SECONDS
        while True:
            try:
                return await index.update(key, fn)
            except IndexSealed:
                current = (await self._registry()).get(cfg.name)
                if current is None or current.index_id != cfg.index_id:
                    raise NoSuchBucket(f"no bucket {cfg.name!r}") from None
                if trio.current_time() > deadline:
                    raise IndexSealed(f"bucket {cfg.name!r} is being deleted") from None
                await trio.sleep(0.05)

    async def _release(
        self, chunks: Iterable[StoredChunk], limiter: trio.CapacityLimiter | None = None
    ) -> None:
        """Delete ``chunks``, :data:`RELEASE_CONCURRENCY` at a time (or as ``limiter``
        allows); failures are logged."""
        limiter = limiter or trio.CapacityLimiter(RELEASE_CONCURRENCY)

        async def release_one(chunk: StoredChunk) -> None:
            async with limiter:
                try:
                    await self._store.delete_chunk(chunk.ref)
                except StorageError as exc:
                    self._counts["release_failures"] += 1
                    logger.warning("could not release chunk %s: %s", chunk.ref.address.hex(), exc)
                else:
                    self._counts["chunks_released"] += 1

        async with trio.open_nursery() as nursery:
            for chunk in chunks:
                nursery.start_soon(release_one, chunk)

    async def _release_shielded(self, chunks: Sequence[StoredChunk]) -> None:
        if chunks:
            with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                await self._release(chunks)

    async def _release_record(
        self,
        cfg: BucketConfig,
        raw_key: bytes,
        record: ObjectRecord,
        keep: frozenset[bytes],
        later: ReleaseLater | None,
    ) -> None:
        """Release the chunks of the record dropped at ``raw_key``, except those whose
        address is in ``keep`` (now, or through ``later``)."""
        if not record.chunks and record.chunk_list is None:
            return  # an empty object: nothing to release
        dropped = _Dropped(record, keep, cfg, raw_key)
        if later is not None:
            later.add(dropped)
        else:
            await self._release(await self._owned_chunks(dropped))

    async def _owned_chunks(self, dropped: _Dropped) -> list[StoredChunk]:
        """A dropped record's chunks (its chunk list too) that are not to be kept.

        An object a multipart upload made shares its data with that upload's parts until the
        upload is cleaned up, and a retried completion may commit the same parts again. So
        while the upload's register is there its data stays (the clean-up releases what no
        object of the upload holds); after that, what an object of the same upload now at
        the key holds stays too (no claim, so no new commit, can follow).
        """
        record, keep = dropped.record, set(dropped.keep)
        own_list = [record.chunk_list] if record.chunk_list is not None else []
        try:
            if record.upload_id is not None:
                cfg = dropped.cfg
                if await self._upload_exists(self._upload_name(cfg, record.upload_id)):
                    return [c for c in own_list if bytes(c.ref.address) not in keep]
                current = await self._committed_by(cfg, dropped.raw_key, record.upload_id)
                if current is not None:
                    keep.update(
                        bytes(c.ref.address) for c in await _chunk_list(self._store, current)
                    )
            data = await _chunk_list(self._store, record)
        except StorageError as exc:
            logger.warning("kept the chunks of a dropped object (leaked): %s", exc)
            return []
        return [c for c in data + own_list if bytes(c.ref.address) not in keep]

    async def release(self, later: ReleaseLater) -> None:
        """Release the chunks of the objects ``later`` holds, :data:`RELEASE_CONCURRENCY`
        at a time; failures are logged and counted, never raised.

        The objects are taken up several at a time, each released as soon as its chunk
        list is read. For the first ``_CLEANUP_SECONDS`` this is shielded from cancellation
        (a client that hangs up must not leak what its answer dropped); what is left after
        that goes on unshielded, and only a cancellation leaves it (logged) unreleased.
        """
        pending = deque(later.take())
        uploads = deque(later.take_uploads())
        limiter = trio.CapacityLimiter(RELEASE_CONCURRENCY)

        async def release_next() -> None:
            while pending:
                dropped = pending.popleft()
                try:
                    await self._release(await self._owned_chunks(dropped), limiter)
                except BaseException:  # cancelled part-way: releasing it again is harmless
                    pending.appendleft(dropped)
                    raise

        async def collect_uploads() -> None:
            while uploads:
                try:
                    await self._collect_parts(uploads[0])
                except StorageError as exc:
                    logger.warning("parts of upload %r not collected: %s", uploads[0].name, exc)
                uploads.popleft()  # a cancelled collection stays: collecting again is harmless

        async def drain() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(min(RELEASE_CONCURRENCY, len(pending))):
                    nursery.start_soon(release_next)
                nursery.start_soon(collect_uploads)

        with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
            await drain()
        try:
            await drain()
        finally:
            if pending or uploads:
                logger.warning(
                    "release of %d dropped object(s) and %d upload(s) cancelled: their chunks"
                    " are leaked",
                    len(pending),
                    len(uploads),
                )

    async def _release_part(self, part: PartRecord, keep: frozenset[bytes] = frozenset()) -> None:
        """Release a part's chunks (its chunk list too), but not the data chunks whose
        address is in ``keep``."""
        try:
            data = await _part_chunks(self._store, part)
        except StorageError as exc:
            logger.warning("could not read the chunk list of a dropped part: %s", exc)
            return
        owned = [c for c in data if bytes(c.ref.address) not in keep]
        await self._release(owned + ([part.chunk_list] if part.chunk_list is not None else []))

    async def _store_body(
        self,
        body: AsyncIterable[bytes],
        policy: Redundancy,
        out: list[StoredChunk],
    ) -> tuple[int, bytes]:
        """Chunk and store ``body``, appending its chunks to ``out`` in order.

        Up to :data:`PUT_PIPELINE` chunks are being stored at once while the next one
        fills, so at most ``PUT_PIPELINE + 1`` chunks are held, plus what the MD5's
        :class:`HashLane` has not hashed yet (at most its ``LIMIT_BYTES``). After an error
        (of the body or of a store) no more of the body is read, but the stores under way
        finish, so that every chunk stored is in ``out`` for the caller to release (only
        cancellation abandons them); the first error is raised, unwrapped. A body left
        unfinished is closed if it has ``aclose``.

        Returns:
            ``(size, md5)``.
        """
        md5 = hashlib.md5(usedforsecurity=False)
        lane = HashLane([md5])  # the ETag's MD5, computed off the event loop
        size = 0
        stored: list[StoredChunk | None] = []
        window = trio.Semaphore(PUT_PIPELINE)
        error: Exception | None = None
        reading = trio.CancelScope()

        async def store(index: int, data: memoryview, nursery: trio.Nursery) -> None:
            nonlocal error
            try:
                ref = await self._store.put_chunk(data, redundancy=policy)
            except StorageError as exc:
                if error is None:
                    error = exc
                reading.cancel()
                return
            finally:
                window.release()
            stored[index] = StoredChunk(ref, len(data))
            self._counts["chunks_stored"] += 1
            self._counts["bytes_stored"] += len(data)

        async def flush(data: memoryview, nursery: trio.Nursery) -> None:
            await window.acquire()
            stored.append(None)
            nursery.start_soon(store, len(stored) - 1, data, nursery)

        async def read(nursery: trio.Nursery) -> None:
            nonlocal size
            # A chunk's pieces are joined once it is full: one copy, into a buffer of its
            # own, handed over without a copy and never written again.
            pieces: list[bytes | memoryview] = []
            filled = 0
            exhausted = False
            try:
                async for piece in body:
                    await lane.update(piece)
                    size += len(piece)
                    view = memoryview(piece)
                    while view:
                        room = self.chunk_size - filled
                        pieces.append(view[:room] if len(view) > room else view)
                        filled += min(room, len(view))
                        view = view[room:]
                        if filled == self.chunk_size:
                            await flush(memoryview(b"".join(pieces)), nursery)
                            pieces, filled = [], 0
                exhausted = True
            finally:
                # Close a body we stop reading early (an async generator would otherwise be
                # finalized by the garbage collector, outside any task).
                aclose = getattr(body, "aclose", None)
                if not exhausted and aclose is not None:
                    with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                        await aclose()
            if pieces:
                await flush(memoryview(b"".join(pieces)), nursery)

        try:
            async with trio.open_nursery() as nursery:
                with reading:
                    try:
                        await read(nursery)
                    except Exception as exc:  # re-raised below, outside the nursery, unwrapped
                        if error is None:
                            error = exc
        finally:
            out.extend(chunk for chunk in stored if chunk is not None)
        if error is not None:
            raise error
        await lane.finish()
        return size, md5.digest()

    async def _record_chunks(
        self, chunks: Sequence[StoredChunk], policy: Redundancy, out: list[StoredChunk]
    ) -> tuple[tuple[StoredChunk, ...], StoredChunk | None]:
        """Inline references, or a chunk-list chunk (appended to ``out``) when too many."""
        if len(chunks) <= self.inline_chunks:
            return tuple(chunks), None
        payload = pack_chunk_list(chunks)
        ref = await self._store.put_chunk(payload, redundancy=policy)
        listing = StoredChunk(ref, len(payload))
        out.append(listing)
        return (), listing

    async def _commit_object(
        self,
        cfg: BucketConfig,
        key: bytes,
        record: ObjectRecord,
        if_match: str | None,
        if_none_match: str | None,
    ) -> ObjectRecord | None:
        """Write ``record`` at ``key`` if the conditions hold; return the replaced record."""
        data = record.pack()

        def put(current: bytes | None) -> bytes:
            etag = None if current is None else ObjectRecord.unpack(current).etag
            check_write_conditions(etag, if_match, if_none_match)
            return data

        old, _ = await self._index_update(cfg, key, put)
        return None if old is None else ObjectRecord.unpack(old)

    async def _write_object(
        self,
        cfg: BucketConfig,
        key: str,
        body: AsyncIterable[bytes],
        headers: ContentHeaders,
        owner: str | None,
        if_match: str | None,
        if_none_match: str | None,
        content_md5: bytes | None,
        *,
        fresh: bool = True,
        release_later: ReleaseLater | None = None,
        checksum: Callable[[], tuple[str, bytes] | None] | None = None,
    ) -> ObjectInfo:
        """Store ``body`` and commit its record at ``key`` in ``cfg``'s bucket.

        ``checksum``, called once the body is read, gives the verified checksum to keep.
        With ``fresh=False`` (``cfg`` came from the cache) a commit refused because the
        bucket incarnation is gone is retried on the current one, if the bucket was
        re-created with the same redundancy as the stored chunks (or the object is empty).
        """
        raw_key = _key_bytes(key)
        if if_none_match is not None and if_none_match.strip() != "*":
            raise InvalidArgument("If-None-Match supports only '*' on writes")
        stored: list[StoredChunk] = []
        keep_data = False
        try:
            size, md5 = await self._store_body(body, cfg.redundancy, stored)
            if content_md5 is not None and content_md5 != md5:
                raise BadDigest("the body's MD5 differs from Content-MD5")
            data_chunks = list(stored)
            inline, listing = await self._record_chunks(data_chunks, cfg.redundancy, stored)
            record = ObjectRecord(
                size=size,
                etag=md5.hex(),
                mtime_ms=self._now_ms(),
                headers=headers,
                owner=owner,
                chunks=inline,
                chunk_list=listing,
                chunk_count=len(data_chunks),
                checksum=None if checksum is None else checksum(),
            )
            keep_data = True  # from here an error may leave the record committed
            try:
                try:
                    old = await self._commit_object(cfg, raw_key, record, if_match, if_none_match)
                except NoSuchBucket:
                    if fresh:
                        raise
                    current = await self._bucket(cfg.name)
                    if current.index_id == cfg.index_id or (
                        stored and current.redundancy != cfg.redundancy
                    ):
                        raise
                    cfg = current
                    old = await self._commit_object(cfg, raw_key, record, if_match, if_none_match)
            except (PreconditionFailed, NoSuchKey, NoSuchBucket, InvalidArgument, Conflict):
                keep_data = False  # refused for sure: nothing references the chunks
                raise
            except StorageError:
                self._counts["ambiguous_commits"] += 1
                logger.warning("commit of %r/%r has an unknown outcome", cfg.name, key)
                raise
            self._counts["objects_written"] += 1
        finally:
            if not keep_data:
                await self._release_shielded(stored)
        if old is not None:
            keep = frozenset(bytes(c.ref.address) for c in stored)
            await self._release_record(cfg, raw_key, old, keep, release_later)
        return _object_info(cfg.name, key, record)

    # -- buckets -------------------------------------------------------------------------------

    async def create_bucket(
        self,
        name: str,
        *,
        owner: str,
        acl: str = "private",
        redundancy: Redundancy | None = None,
        region: str | None = None,
    ) -> BucketInfo:
        """Create an empty bucket owned by ``owner``.

        Raises:
            BucketAlreadyOwnedByYou: ``owner`` already owns a bucket of that name.
            BucketAlreadyExists: another owner has it.
            InvalidArgument: bad name or ACL.
        """
        _check_bucket_name(name)
        check_acl(acl)
        existing = (await self._registry()).get(name)
        if existing is not None:
            raise self._exists_error(existing, owner)
        cfg = BucketConfig(
            name=name,
            owner=owner,
            created_ms=self._now_ms(),
            redundancy=redundancy or self.default_redundancy,
            acl=acl,
            index_id=os.urandom(16),
            region=region,
        )
        index = self.index(cfg)
        await index.create()
        box: dict[str, BucketConfig] = {}

        def add(current: bytes | None) -> bytes:
            buckets = unpack_registry(current)
            if name in buckets:
                box["existing"] = buckets[name]
                raise _Exists
            buckets[name] = cfg
            return pack_registry(buckets)

        try:
            await self._store.edit(REGISTRY, add)
        except _Exists:
            await index.destroy()
            raise self._exists_error(box["existing"], owner) from None
        self._bucket_cache[name] = (cfg, trio.current_time() + self._bucket_cache_seconds)
        logger.info("created bucket %r (%s) for %r", name, cfg.redundancy, owner)
        return _bucket_info(cfg)

    @staticmethod
    def _exists_error(existing: BucketConfig, owner: str) -> StorageError:
        if existing.owner == owner:
            return BucketAlreadyOwnedByYou(owner, f"you already own bucket {existing.name!r}")
        return BucketAlreadyExists(existing.owner, f"bucket {existing.name!r} exists")

    async def head_bucket(self, name: str) -> BucketInfo:
        """The bucket's configuration. Raises ``NoSuchBucket``."""
        return _bucket_info(await self._bucket(name))

    async def list_buckets(self, *, owner: str | None = None) -> list[BucketInfo]:
        """Every bucket (of ``owner`` if given), sorted by name."""
        buckets = await self._registry()
        return [
            _bucket_info(cfg)
            for name, cfg in sorted(buckets.items())
            if owner is None or cfg.owner == owner
        ]

    async def set_bucket_acl(self, name: str, acl: str) -> None:
        """Replace the bucket's canned ACL. Raises ``NoSuchBucket``, ``InvalidArgument``."""
        await self._change_bucket(name, acl=check_acl(acl))

    async def set_bucket_cors(self, name: str, rules: Sequence[CorsRule] | None) -> None:
        """Replace the bucket's CORS configuration (``None`` removes it). Raises
        ``NoSuchBucket``."""
        await self._change_bucket(name, cors=None if rules is None else tuple(rules))

    async def set_bucket_tags(self, name: str, tags: Mapping[str, str] | None) -> None:
        """Replace the bucket's tag set (``None`` removes it). Raises ``NoSuchBucket``."""
        await self._change_bucket(name, tags=None if tags is None else dict(tags))

    async def set_bucket_lifecycle(self, name: str, rules: Sequence[LifecycleRule] | None) -> None:
        """Replace the bucket's lifecycle configuration (``None`` removes it). Raises
        ``NoSuchBucket``."""
        await self._change_bucket(name, lifecycle=None if rules is None else tuple(rules))

    async def _change_bucket(self, name: str, **changes: object) -> None:
        """Replace fields of the bucket's registry entry (``NoSuchBucket`` if none)."""

        def change(current: bytes | None) -> bytes:
            buckets = unpack_registry(current)
            if name not in buckets:
                raise NoSuchBucket(f"no bucket {name!r}")
            buckets[name] = replace(buckets[name], **changes)  # type: ignore[arg-type]
            return pack_registry(buckets)

        await self._store.edit(REGISTRY, change)
        self._bucket_cache.pop(name, None)

    async def cors_rules(self, name: str) -> tuple[CorsRule, ...] | None:
        """The bucket's CORS rules (``None``: no configuration), from a configuration up to
        :data:`BUCKET_CACHE_SECONDS` old, as object operations use: answering a cross-origin
        request costs no registry read while it is cached. Raises ``NoSuchBucket``."""
        cfg, _fresh = await self._object_bucket(name)
        return cfg.cors

    async def lifecycle_rules(self, name: str) -> tuple[LifecycleRule, ...] | None:
        """The bucket's lifecycle rules (``None``: no configuration), from a configuration up
        to :data:`BUCKET_CACHE_SECONDS` old, as object operations use (so GET and HEAD can
        tell an object's expiry at no cost while it is cached). Raises ``NoSuchBucket``."""
        cfg, _fresh = await self._object_bucket(name)
        return cfg.lifecycle

    async def delete_bucket(self, name: str) -> None:
        """Delete an empty bucket; multipart uploads still in progress are aborted.

        Raises:
            NoSuchBucket: no such bucket.
            BucketNotEmpty: it holds objects (nothing changes).
        """
        cfg = await self._bucket(name)
        index = self.index(cfg)
        await index.seal()

        def remove(current: bytes | None) -> bytes:
            buckets = unpack_registry(current)
            if name not in buckets or buckets[name].index_id != cfg.index_id:
                raise _NoChange
            del buckets[name]
            return pack_registry(buckets)

        with contextlib.suppress(_NoChange):
            await self._store.edit(REGISTRY, remove)
        self._bucket_cache.pop(name, None)
        # The bucket is gone; what follows only collects garbage.
        try:
            uploads = unpack_upload_list((await self._store.read(self._uploads_name(cfg))).value)
        except NotFound:
            uploads = []
        except StorageError as exc:
            logger.warning("uploads of deleted bucket %r not collected: %s", name, exc)
            uploads = []
        for upload_id in [entry.upload_id for entry in uploads]:
            box: dict[str, UploadRecord] = {}

            def take(current: bytes | None, box: dict[str, UploadRecord] = box) -> None:
                if current is not None:
                    box["upload"] = UploadRecord.unpack(current)
                return None

            upload_name = self._upload_name(cfg, upload_id)
            try:
                await self._store.edit(upload_name, take)
                if "upload" in box:
                    await self._collect_parts(DroppedUpload(upload_name, box["upload"]))
            except StorageError as exc:
                logger.warning("upload %s of deleted bucket not collected: %s", upload_id, exc)
        try:
            await self._store.edit(self._uploads_name(cfg), lambda _current: None)
        except StorageError as exc:
            logger.warning("uploads index of deleted bucket %r not removed: %s", name, exc)
        await index.destroy()
        self._indexes.pop(cfg.index_id, None)
        logger.info("deleted bucket %r", name)

    # -- objects -------------------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        content_disposition: str | None = None,
        content_language: str | None = None,
        cache_control: str | None = None,
        expires: str | None = None,
        metadata: Mapping[str, str] | None = None,
        acl: str = "private",
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        content_md5: bytes | None = None,
        release_later: ReleaseLater | None = None,
        checksum: Callable[[], tuple[str, bytes] | None] | None = None,
    ) -> ObjectInfo:
        """Store an object from a stream of bytes, replacing any object at ``key``.

        The body is chunked and stored as it arrives (one chunk buffered at a time); the
        object becomes visible atomically when its record is committed, and only if the
        conditions hold at that moment.

        Args:
            body: the object's bytes, in pieces of any size.
            tags: the object's tag set (validated by the caller).
            if_match: commit only if the current ETag is in this list (``*``: any).
            if_none_match: ``"*"``: commit only if the key does not exist.
            content_md5: the 16-byte MD5 the client claims (``Content-MD5``).
            release_later: where to leave the replaced object's chunks (else released now).
            checksum: called once the body is read: the ``(algorithm, digest)`` the client
                sent and the caller verified against the body, kept with the object.

        Raises:
            NoSuchBucket, PreconditionFailed, NoSuchKey (``If-Match`` on an absent key),
            BadDigest, InvalidArgument, KeyTooLong.
        """
        cfg, fresh = await self._object_bucket(bucket)
        headers = _headers(
            content_type,
            content_encoding,
            content_disposition,
            content_language,
            cache_control,
            expires,
            metadata,
            acl,
            tags,
        )
        return await self._write_object(
            cfg,
            key,
            body,
            headers,
            owner,
            if_match,
            if_none_match,
            content_md5,
            fresh=fresh,
            release_later=release_later,
            checksum=checksum,
        )

    async def open_object(self, bucket: str, key: str) -> ObjectReader:
        """Look an object up and return a reader of that version.

        Raises:
            NoSuchBucket, NoSuchKey.
        """
        raw_key = _key_bytes(key)

        async def lookup(cfg: BucketConfig) -> bytes | None:
            return await self.index(cfg).get(raw_key)

        raw = await self._on_bucket(bucket, lookup)
        if raw is None:
            raise NoSuchKey(f"no key {key!r} in bucket {bucket!r}")
        record = ObjectRecord.unpack(raw)
        self._counts["objects_opened"] += 1
        return ObjectReader(self._store, _object_info(bucket, key, record), record)

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """An object's metadata. Raises ``NoSuchBucket``, ``NoSuchKey``."""
        return (await self.open_object(bucket, key)).info

    async def get_object(
        self, bucket: str, key: str, *, range: tuple[int, int | None] | None = None
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """An object's metadata and a stream of its bytes (or of ``range``, inclusive).

        The range is validated before returning: ``end`` is clamped to the last byte.
        The stream is an async generator: a caller that stops early should ``aclose()`` it.

        Raises:
            NoSuchBucket, NoSuchKey, InvalidRange (``start`` beyond the end).
        """
        reader = await self.open_object(bucket, key)
        if range is None:
            return reader.info, reader.stream()
        start, end = range
        if reader.info.size == 0:
            raise InvalidRange(0)
        start, last = reader.check_range(start, end)
        return reader.info, reader.stream(start, last)

    async def set_object_acl(self, bucket: str, key: str, acl: str) -> None:
        """Replace an object's canned ACL. Raises ``NoSuchBucket``, ``NoSuchKey``."""
        await self._change_object_headers(bucket, key, acl=check_acl(acl))

    async def set_object_tags(self, bucket: str, key: str, tags: Mapping[str, str]) -> None:
        """Replace an object's tag set (empty: remove its tags); its data and ETag are
        unchanged. Raises ``NoSuchBucket``, ``NoSuchKey``."""
        await self._change_object_headers(bucket, key, tags=dict(tags))

    async def _change_object_headers(self, bucket: str, key: str, **changes: object) -> None:
        """Replace fields of an object's headers in one index edit (``NoSuchKey`` if none)."""
        raw_key = _key_bytes(key)

        def change(current: bytes | None) -> bytes:
            if current is None:
                raise NoSuchKey(f"no key {key!r} in bucket {bucket!r}")
            record = ObjectRecord.unpack(current)
            headers = replace(record.headers, **changes)  # type: ignore[arg-type]
            return replace(record, headers=headers).pack()

        async def update(cfg: BucketConfig) -> None:
            await self._index_update(cfg, raw_key, change)

        await self._on_bucket(bucket, update)

    async def delete_object(
        self, bucket: str, key: str, *, release_later: ReleaseLater | None = None
    ) -> bool:
        """Delete an object; deleting an absent key is fine (S3). Return whether it existed.

        ``release_later``: where to leave the object's chunks (else released now).

        Raises:
            NoSuchBucket.
        """
        _key_bytes(key)

        async def delete(cfg: BucketConfig) -> bool:
            return await self._delete(cfg, key, release_later)

        return await self._on_bucket(bucket, delete)

    async def delete_object_if(
        self,
        bucket: str,
        key: str,
        condition: Callable[[ObjectInfo], bool],
        *,
        release_later: ReleaseLater | None = None,
    ) -> bool:
        """Delete the object at ``key`` only if ``condition`` holds for the object stored
        there at the moment of the deletion; return whether it was deleted.

        ``condition`` runs inside the index edit that deletes (so nothing written at the key
        meanwhile can slip between the check and the deletion); it may run more than once
        and must be pure. An absent key is not deleted (``False``).

        Raises:
            NoSuchBucket.
        """
        _key_bytes(key)

        async def delete(cfg: BucketConfig) -> bool:
            return await self._delete(cfg, key, release_later, condition)

        return await self._on_bucket(bucket, delete)

    async def _delete(
        self,
        cfg: BucketConfig,
        key: str,
        later: ReleaseLater | None,
        condition: Callable[[ObjectInfo], bool] | None = None,
    ) -> bool:
        raw_key = _key_bytes(key)

        def delete(current: bytes | None) -> None:
            if condition is not None and (
                current is None
                or not condition(_object_info(cfg.name, key, ObjectRecord.unpack(current)))
            ):
                raise _NoChange
            return None

        try:
            old, _ = await self._index_update(cfg, raw_key, delete)
        except _NoChange:
            return False
        if old is None:
            return False
        self._counts["objects_deleted"] += 1
        await self._release_record(cfg, raw_key, ObjectRecord.unpack(old), frozenset(), later)
        return True

    async def delete_objects(
        self, bucket: str, keys: Sequence[str], *, release_later: ReleaseLater | None = None
    ) -> list[DeleteOutcome]:
        """Delete many keys (DeleteObjects); a failure is reported per key, not raised.

        ``release_later``: where to leave the deleted objects' chunks (else released now).

        Raises:
            NoSuchBucket: the bucket does not exist (nothing is deleted).
        """
        cfg, fresh = await self._object_bucket(bucket)
        outcomes: list[DeleteOutcome] = [DeleteOutcome(key) for key in keys]
        limiter = trio.CapacityLimiter(DELETE_CONCURRENCY)

        async def delete_one(cfg: BucketConfig, i: int) -> None:
            async with limiter:
                try:
                    await self._delete(cfg, keys[i], release_later)
                except StorageError as exc:
                    outcomes[i] = DeleteOutcome(keys[i], exc)
                else:
                    outcomes[i] = DeleteOutcome(keys[i])

        async def delete_all(cfg: BucketConfig, which: Iterable[int]) -> None:
            async with trio.open_nursery() as nursery:
                for i in which:
                    nursery.start_soon(delete_one, cfg, i)

        await delete_all(cfg, range(len(keys)))
        stale = [i for i, o in enumerate(outcomes) if isinstance(o.error, NoSuchBucket)]
        if stale and not fresh:
            # The cached incarnation is gone: the registry says whether another one exists.
            await delete_all(await self._bucket(bucket), stale)
        return outcomes

    async def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        metadata_directive: str = "COPY",
        tagging_directive: str = "COPY",
        content_type: str | None = None,
        content_encoding: str | None = None,
        content_disposition: str | None = None,
        content_language: str | None = None,
        cache_control: str | None = None,
        expires: str | None = None,
        metadata: Mapping[str, str] | None = None,
        acl: str = "private",
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        source_check: Callable[[ObjectInfo], None] | None = None,
        release_later: ReleaseLater | None = None,
    ) -> ObjectInfo:
        """Copy an object (CopyObject). The data is re-stored, never shared (see module doc).

        Args:
            metadata_directive: ``COPY`` keeps the source's headers and user metadata;
                ``REPLACE`` uses the ones given here. The ACL is always ``acl``, as S3 does.
            tagging_directive: ``COPY`` keeps the source's tags; ``REPLACE`` uses ``tags``.
            if_match, if_none_match: conditions on the *destination* key.
            source_check: called with the source's info before copying (the S3 layer's
                ``x-amz-copy-source-if-*`` evaluation); whatever it raises propagates.
            release_later: where to leave the replaced object's chunks (else released now).

        Raises:
            NoSuchBucket, NoSuchKey (source), PreconditionFailed, InvalidArgument.
        """
        if metadata_directive not in ("COPY", "REPLACE"):
            raise InvalidArgument(f"unknown metadata directive {metadata_directive!r}")
        if tagging_directive not in ("COPY", "REPLACE"):
            raise InvalidArgument(f"unknown tagging directive {tagging_directive!r}")
        reader = await self.open_object(src_bucket, src_key)
        if source_check is not None:
            source_check(reader.info)
        if metadata_directive == "COPY":
            headers = replace(reader.record.headers, acl=check_acl(acl))
        else:
            headers = _headers(
                content_type,
                content_encoding,
                content_disposition,
                content_language,
                cache_control,
                expires,
                metadata,
                acl,
                None,
            )
        kept = reader.record.headers.tags if tagging_directive == "COPY" else tags
        headers = replace(headers, tags=dict(kept or {}))
        cfg, fresh = await self._object_bucket(dst_bucket)
        return await self._write_object(
            cfg,
            dst_key,
            reader.stream(),
            headers,
            owner,
            if_match,
            if_none_match,
            None,
            fresh=fresh,
            release_later=release_later,
            checksum=lambda: reader.record.checksum,  # the same bytes
        )

    # -- listing -------------------------------------------------------------------------------

    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        continuation_token: str | None = None,
        max_keys: int = MAX_LIST_KEYS,
    ) -> ListPage:
        """One page of keys in UTF-8 byte order (ListObjects v1 and v2).

        Keys after ``start_after`` (the v1 ``marker``; a ``continuation_token`` takes
        precedence) that start with ``prefix``; with a ``delimiter``, keys that contain it
        after the prefix are rolled up into common prefixes, which count toward
        ``max_keys`` (clamped to 1000). A common prefix that sorts at or before the marker
        was served on an earlier page and is not repeated. Only the index shards covering
        the range are read, and whole common prefixes are skipped without reading them.

        Raises:
            NoSuchBucket, InvalidArgument (negative ``max_keys``, bad token).
        """
        if max_keys < 0:
            raise InvalidArgument("max-keys must not be negative")
        max_keys = min(max_keys, MAX_LIST_KEYS)
        marker = (
            decode_continuation_token(continuation_token)
            if continuation_token is not None
            else start_after or ""
        )
        raw_prefix = prefix.encode("utf-8")
        raw_marker = marker.encode("utf-8")
        raw_delim = delimiter.encode("utf-8") if delimiter else None

        async def scan(cfg: BucketConfig) -> ListPage:
            index = self.index(cfg)
            objects: list[ObjectInfo] = []
            prefixes: list[str] = []
            last: bytes | None = None
            truncated = False
            if max_keys == 0:
                return ListPage(objects, prefixes, False, None)
            floor = max(raw_prefix, raw_marker + b"\x00" if raw_marker else b"")
            position: bytes | None = floor
            done = False
            while position is not None and not done:
                entries, next_start = await index.read_from(position)
                for raw_key, value in entries:
                    if raw_key < floor:
                        continue
                    if not raw_key.startswith(raw_prefix):
                        done = True  # sorted: every later key is past the prefix too
                        break
                    item: bytes = raw_key
                    common = False
                    if raw_delim is not None:
                        cut = raw_key.find(raw_delim, len(raw_prefix))
                        if cut >= 0:
                            item, common = raw_key[: cut + len(raw_delim)], True
                            # UTF-8 never contains 0xFF: this skips every key under the prefix.
                            floor = item + b"\xff"
                            if item <= raw_marker:
                                continue
                    if len(objects) + len(prefixes) == max_keys:
                        truncated, done = True, True
                        break
                    last = item
                    if common:
                        prefixes.append(item.decode("utf-8"))
                    else:
                        record = ObjectRecord.unpack(value)
                        objects.append(_object_info(bucket, raw_key.decode("utf-8"), record))
                if next_start is None:
                    break
                position = max(next_start, floor)
            next_marker = last.decode("utf-8") if truncated and last is not None else None
            return ListPage(objects, prefixes, truncated, next_marker)

        return await self._on_bucket(bucket, scan)

    async def list_object_versions(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        max_keys: int = MAX_LIST_KEYS,
    ) -> ListPage:
        """ListObjectVersions on an unversioned bucket: every object is version ``"null"``.

        Each :class:`ObjectInfo` is the latest (and only) version of its key.
        """
        return await self.list_objects(
            bucket, prefix=prefix, delimiter=delimiter, start_after=key_marker, max_keys=max_keys
        )

    # -- multipart uploads ---------------------------------------------------------------------

    async def create_multipart_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        content_disposition: str | None = None,
        content_language: str | None = None,
        cache_control: str | None = None,
        expires: str | None = None,
        metadata: Mapping[str, str] | None = None,
        acl: str = "private",
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
    ) -> str:
        """Start a multipart upload; return its id (random, URL-safe). The object it
        completes gets the headers and ``tags`` given here.

        Raises:
            NoSuchBucket, InvalidArgument, KeyTooLong.
        """
        _key_bytes(key)
        cfg = await self._bucket(bucket)
        upload_id = secrets.token_urlsafe(24)
        record = UploadRecord(
            key=key,
            upload_id=upload_id,
            initiated_ms=self._now_ms(),
            headers=_headers(
                content_type,
                content_encoding,
                content_disposition,
                content_language,
                cache_control,
                expires,
                metadata,
                acl,
                tags,
            ),
            owner=owner,
        )
        data = record.pack()

        def create(current: bytes | None) -> bytes:
            if current is not None:
                raise Conflict(None, "upload id collision")
            return data

        await self._store.edit(self._upload_name(cfg, upload_id), create)
        entry = UploadEntry(key, record.initiated_ms, upload_id, owner)

        def add(current: bytes | None) -> bytes:
            entries = unpack_upload_list(current)
            entries.append(entry)
            entries.sort(key=lambda e: (e[0].encode("utf-8"), e[1], e[2]))
            return pack_upload_list(entries)

        await self._store.edit(self._uploads_name(cfg), add)
        return upload_id

    async def _read_upload(self, cfg: BucketConfig, key: str, upload_id: str) -> UploadRecord:
        try:
            versioned = await self._store.read(self._upload_name(cfg, upload_id))
        except NotFound:
            raise NoSuchUpload(f"no upload {upload_id!r}") from None
        upload = UploadRecord.unpack(versioned.value)
        if upload.key != key:
            raise NoSuchUpload(f"upload {upload_id!r} is not for key {key!r}")
        return upload

    @staticmethod
    def _check_upload_id(upload_id: str) -> None:
        if not upload_id or not upload_id.isascii() or len(upload_id) > 128:
            raise NoSuchUpload(f"no upload {upload_id!r}")

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        body: AsyncIterable[bytes],
        *,
        content_md5: bytes | None = None,
    ) -> PartInfo:
        """Store one part (1..10000) of an upload; it is durable when this returns.

        Uploading the same part number again replaces the part.

        Raises:
            NoSuchBucket, NoSuchUpload, InvalidArgument (part number), BadDigest.
        """
        cfg = await self._bucket(bucket)
        self._check_upload_id(upload_id)
        return await self._upload_part(cfg, key, upload_id, part_number, body, content_md5)

    async def _upload_part(
        self,
        cfg: BucketConfig,
        key: str,
        upload_id: str,
        part_number: int,
        body: AsyncIterable[bytes],
        content_md5: bytes | None,
    ) -> PartInfo:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise InvalidArgument(f"part number must be in 1..{MAX_PART_NUMBER}")
        upload = await self._read_upload(cfg, key, upload_id)
        if upload.completing is not None:
            raise NoSuchUpload(f"upload {upload_id!r} is being completed")
        upload_name = self._upload_name(cfg, upload_id)
        parts = UploadParts(self._store, upload_name)
        group = group_of(part_number)
        stored: list[StoredChunk] = []
        keep = False
        try:
            size, md5 = await self._store_body(body, cfg.redundancy, stored)
            if content_md5 is not None and content_md5 != md5:
                raise BadDigest("the part's MD5 differs from Content-MD5")
            data_chunks = list(stored)
            if len(data_chunks) > PART_INLINE_CHUNKS:
                payload = pack_chunk_list(data_chunks)
                ref = await self._store.put_chunk(payload, redundancy=cfg.redundancy)
                listing: StoredChunk | None = StoredChunk(ref, len(payload))
                stored.append(StoredChunk(ref, len(payload)))
                inline: tuple[StoredChunk, ...] = ()
            else:
                listing, inline = None, tuple(data_chunks)
            part = PartRecord(md5, size, self._now_ms(), inline, listing)
            if group not in upload.groups:
                await self._add_group(upload_name, key, group)
            keep = True
            try:
                old = await parts.write(part_number, part)
            except GroupClosed:
                keep = False
                raise NoSuchUpload(f"upload {upload_id!r} is completed or completing") from None
        finally:
            if not keep:
                await self._release_shielded(stored)
        if old is not None:
            await self._release_part(old)
        if not await self._upload_exists(upload_name):
            # Aborted (or completed) meanwhile: the clean-up may have missed this part.
            if await parts.withdraw(part_number, part):
                await self._release_part(part)
            raise NoSuchUpload(f"upload {upload_id!r} was aborted or completed")
        return PartInfo(part_number, md5.hex(), size, _datetime(part.mtime_ms))

    async def _add_group(self, upload_name: bytes, key: str, group: int) -> None:
        """Name ``group`` in the upload register (rule 2 of :mod:`storage.upload_parts`)."""

        def add(current: bytes | None) -> bytes:
            if current is None:
                raise NoSuchUpload("the upload was aborted or completed")
            state = UploadRecord.unpack(current)
            if state.key != key or state.completing is not None:
                raise NoSuchUpload("the upload is completed or being completed")
            if group in state.groups:
                raise _NoChange
            return replace(state, groups=state.groups | {group}).pack()

        with contextlib.suppress(_NoChange):
            await self._store.edit(upload_name, add)

    async def _upload_exists(self, upload_name: bytes) -> bool:
        try:
            await self._store.read(upload_name)
        except NotFound:
            return False
        return True

    async def _collect_parts(self, dropped: DroppedUpload) -> None:
        """After the upload register is gone: close its groups for good, release its parts
        (but the data chunks a completed object owns: ``dropped.keep``) and delete the
        groups. Failures are logged: what they leave is leaked."""
        parts = UploadParts(self._store, dropped.name)
        groups = dropped.upload.groups
        try:
            grouped = await parts.close(groups, FINAL)
            for part in [*grouped.values(), *dropped.upload.legacy_parts.values()]:
                await self._release_part(part, dropped.keep)
            await parts.destroy(groups)
        except StorageError as exc:
            logger.warning("parts of upload %r not all collected: %s", dropped.name, exc)

    async def _drop_parts(self, dropped: DroppedUpload, later: ReleaseLater | None) -> None:
        """Collect a dropped upload's parts now, or through ``later``."""
        if later is not None:
            later.add_upload(dropped)
        else:
            await self._collect_parts(dropped)

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        src_bucket: str,
        src_key: str,
        *,
        range: tuple[int, int] | None = None,
        source_check: Callable[[ObjectInfo], None] | None = None,
    ) -> PartInfo:
        """Store a part copied from (a range of) an existing object (UploadPartCopy).

        Raises:
            NoSuchBucket, NoSuchUpload, NoSuchKey (source), InvalidRange (``range`` not
            within the source), InvalidArgument.
        """
        cfg = await self._bucket(bucket)
        self._check_upload_id(upload_id)
        await self._read_upload(cfg, key, upload_id)
        reader = await self.open_object(src_bucket, src_key)
        if source_check is not None:
            source_check(reader.info)
        if range is None:
            body = reader.stream()
        else:
            start, end = range
            if start < 0 or end < start or end >= reader.info.size:
                raise InvalidRange(reader.info.size)
            body = reader.stream(start, end)
        return await self._upload_part(cfg, key, upload_id, part_number, body, None)

    async def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        release_later: ReleaseLater | None = None,
    ) -> ObjectInfo:
        """Assemble the listed parts into the object at ``key`` (no data is copied).

        The object's ETag is ``hex(MD5(md5(part1) || ... || md5(partN)))-N``. Parts uploaded
        but not listed are released. Completing again after success raises
        ``NoSuchUpload``; a retry after a failure part-way (same list) finishes the job and
        returns the object's info, even if the failed attempt had already committed it.

        Args:
            parts: ``(part number, ETag)`` pairs, in strictly ascending part order.
            release_later: where to leave the replaced object's chunks (else released now).

        Raises:
            NoSuchBucket, NoSuchUpload, InvalidPartOrder, InvalidPart, EntityTooSmall,
            PreconditionFailed, NoSuchKey (``If-Match`` on an absent key), Conflict (a
            completion with another part list is under way), InvalidArgument.
        """
        cfg = await self._bucket(bucket)
        self._check_upload_id(upload_id)
        raw_key = _key_bytes(key)
        if not parts:
            raise InvalidArgument("a multipart completion needs at least one part")
        wanted = tuple((int(n), _unquote(e).lower()) for n, e in parts)
        for (a, _), (b, _) in itertools.pairwise(wanted):
            if b <= a:
                raise InvalidPartOrder("parts must be listed in ascending order")
        if not wanted[0][0] >= 1 or wanted[-1][0] > MAX_PART_NUMBER:
            raise InvalidPart(f"part numbers must be in 1..{MAX_PART_NUMBER}")
        box: dict[str, UploadRecord] = {}
        renewing: list[bool] = []
        await self._check_parts(cfg, key, upload_id, wanted)  # a wrong list claims nothing

        def claim(current: bytes | None) -> bytes:
            if current is None:
                raise NoSuchUpload(f"no upload {upload_id!r}")
            upload = UploadRecord.unpack(current)
            if upload.key != key:
                raise NoSuchUpload(f"upload {upload_id!r} is not for key {key!r}")
            if upload.completing is not None and upload.completing != wanted:
                raise Conflict(None, "another completion of this upload is under way")
            box["upload"] = upload
            # A retry (an earlier completion with this list claimed it, then failed) renews
            # the claim's time: an abort must not take it for abandoned while this runs.
            renewing.append(upload.completing == wanted)
            claimed = replace(
                upload,
                completing=wanted,
                completing_ms=self._now_ms(),
                claim_epoch=upload.claim_epoch + 1,
            )
            return claimed.pack()

        upload_name = self._upload_name(cfg, upload_id)
        await self._store.edit(upload_name, claim)
        # From the claim to the commit, well under ABANDONED_CLAIM_SECONDS (see there).
        prepared_by = trio.current_time() + COMPLETION_PREPARE_SECONDS
        retry = renewing[-1]  # the edit function's last run is the one that was applied
        upload = box["upload"]
        epoch = upload.claim_epoch + 1  # this claim's
        if retry:
            committed = await self._committed_by(cfg, raw_key, upload_id)
            if committed is not None:
                # The earlier attempt did commit: only its clean-up is left to do.
                owned = await _chunk_list(self._store, committed)
                await self._retire_upload(
                    cfg, upload, upload_name, raw_key, wanted, owned, None, [], None
                )
                return _object_info(bucket, key, committed)
        data_chunks: list[StoredChunk] = []
        with trio.move_on_at(prepared_by) as reading:
            chosen = await self._claimed_parts(cfg, upload, wanted, epoch)
            for part in chosen:
                data_chunks.extend(await _part_chunks(self._store, part))
        if reading.cancelled_caught:
            raise Unavailable(0, 0, "reading the parts took too long; retry the completion")
        digest = hashlib.md5(b"".join(p.md5 for p in chosen), usedforsecurity=False)
        extra: list[StoredChunk] = []
        keep = False
        try:
            with trio.move_on_at(prepared_by) as listing_parts:
                inline, listing = await self._record_chunks(data_chunks, cfg.redundancy, extra)
            if listing_parts.cancelled_caught:
                raise Unavailable(0, 0, "listing the parts took too long; retry the completion")
            record = ObjectRecord(
                size=sum(p.size for p in chosen),
                etag=f"{digest.hexdigest()}-{len(chosen)}",
                mtime_ms=self._now_ms(),
                headers=upload.headers,
                owner=upload.owner,
                chunks=inline,
                chunk_list=listing,
                chunk_count=len(data_chunks),
                parts_count=len(chosen),
                upload_id=upload_id,
                part_sizes=tuple(p.size for p in chosen),
            )
            await self._check_claim(cfg, key, upload_id, epoch)
            keep = True
            try:
                old = await self._commit_object(cfg, raw_key, record, if_match, if_none_match)
            except (PreconditionFailed, NoSuchKey, NoSuchBucket, Conflict):
                keep = False
                if not retry:
                    # Refused for sure: give the upload back (abortable, completable again)
                    # unless someone else's attempt with this list committed meanwhile.
                    with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                        if await self._committed_by(cfg, raw_key, upload_id) is None:
                            await self._unclaim(upload_name, upload, epoch)
                raise
        finally:
            if not keep:
                await self._release_shielded(extra)
        await self._retire_upload(
            cfg, upload, upload_name, raw_key, wanted, data_chunks, old, extra, release_later
        )
        return _object_info(bucket, key, record)

    async def _check_parts(
        self, cfg: BucketConfig, key: str, upload_id: str, wanted: tuple[tuple[int, str], ...]
    ) -> None:
        """Check ``wanted`` against the parts as they are now (before claiming)."""
        upload = await self._read_upload(cfg, key, upload_id)
        parts = UploadParts(self._store, self._upload_name(cfg, upload_id))
        try:
            self._validate(wanted, {**upload.legacy_parts, **await parts.read(upload.groups)})
        except (InvalidPart, EntityTooSmall):
            await self._read_upload(cfg, key, upload_id)  # completed or aborted meanwhile?
            raise

    def _validate(
        self, wanted: tuple[tuple[int, str], ...], parts: Mapping[int, PartRecord]
    ) -> list[PartRecord]:
        """The ``wanted`` parts, or InvalidPart / EntityTooSmall."""
        min_size = self.min_part_size
        for i, (number, etag) in enumerate(wanted):
            part = parts.get(number)
            if part is None or part.etag != etag:
                raise InvalidPart(f"part {number} was not uploaded or its ETag differs")
            if i < len(wanted) - 1 and part.size < min_size:
                raise EntityTooSmall(f"part {number} is smaller than {min_size} bytes")
        return [parts[n] for n, _ in wanted]

    async def _claimed_parts(
        self,
        cfg: BucketConfig,
        upload: UploadRecord,
        wanted: tuple[tuple[int, str], ...],
        epoch: int,
    ) -> list[PartRecord]:
        """Close the claimed upload's groups at ``epoch`` and return the ``wanted`` parts; if
        the list does not match them (they changed since it was checked), give the claim back
        and raise."""
        upload_name = self._upload_name(cfg, upload.upload_id)
        try:
            closed = await UploadParts(self._store, upload_name).close(upload.groups, epoch)
        except GroupClosed as refused:
            if refused.final:
                raise NoSuchUpload(f"upload {upload.upload_id!r} was aborted") from None
            raise Conflict(None, "a retry of this completion took it over") from None
        try:
            return self._validate(wanted, {**upload.legacy_parts, **closed})
        except (InvalidPart, EntityTooSmall):
            with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                await self._unclaim(upload_name, upload, epoch)
                gone = not await self._upload_exists(upload_name)
            if gone:  # aborted or its bucket deleted while claimed: the groups were collected
                raise NoSuchUpload(f"upload {upload.upload_id!r} was aborted") from None
            raise

    async def _check_claim(self, cfg: BucketConfig, key: str, upload_id: str, epoch: int) -> None:
        """Raise unless the completion claim made at ``epoch`` is still the upload's newest.

        Checked just before the commit: an attempt that stalled after reading its parts while
        a retry completed, cleaned up and had its object deleted (the parts released) would
        otherwise commit an object of released data. What is left is the commit's own
        round: the registers of the upload and of the index change separately.

        Raises:
            NoSuchUpload: the upload was completed (by a retry) or aborted meanwhile.
            Conflict: a retry of this completion claimed the upload since.
        """
        upload = await self._read_upload(cfg, key, upload_id)
        if upload.claim_epoch != epoch:
            raise Conflict(None, "a retry of this completion took it over")

    async def _committed_by(
        self, cfg: BucketConfig, raw_key: bytes, upload_id: str
    ) -> ObjectRecord | None:
        """The record at ``raw_key`` if it was written by completing ``upload_id``."""
        try:
            raw = await self.index(cfg).get(raw_key)
        except NoSuchBucket:
            return None
        record = None if raw is None else ObjectRecord.unpack(raw)
        return record if record is not None and record.upload_id == upload_id else None

    async def _retire_upload(
        self,
        cfg: BucketConfig,
        upload: UploadRecord,
        upload_name: bytes,
        raw_key: bytes,
        wanted: tuple[tuple[int, str], ...],
        data_chunks: Sequence[StoredChunk],
        old: ObjectRecord | None,
        extra: Sequence[StoredChunk],
        later: ReleaseLater | None,
    ) -> None:
        """After a completion committed: drop the upload, release what nothing references
        (the replaced object's chunks through ``later`` if given)."""

        def finish(current: bytes | None) -> bytes | None:
            if current is None:
                raise _NoChange
            if UploadRecord.unpack(current).completing != wanted:
                raise _NoChange
            return None

        with contextlib.suppress(_NoChange):
            await self._store.edit(upload_name, finish)
        # Keep what the object at the key owns if it is still this upload's: it may have been
        # replaced or deleted meanwhile, and that release left the data to this clean-up.
        owned = frozenset(bytes(c.ref.address) for c in data_chunks)
        try:
            current = await self._committed_by(cfg, raw_key, upload.upload_id)
            chunks = [] if current is None else await _chunk_list(self._store, current)
            owned = frozenset(bytes(c.ref.address) for c in chunks)
        except StorageError as exc:
            logger.warning("kept the parts of upload %s (object unknown): %s", upload_name, exc)
        await self._drop_parts(DroppedUpload(upload_name, upload, owned), later)
        await self._drop_from_uploads(cfg, upload.upload_id)
        if old is not None:
            keep_addresses = {bytes(c.ref.address) for c in data_chunks}
            keep_addresses.update(bytes(c.ref.address) for c in extra)
            await self._release_record(cfg, raw_key, old, frozenset(keep_addresses), later)

    async def _unclaim(self, upload_name: bytes, claimed: UploadRecord, epoch: int) -> None:
        """Give back the claim made at ``epoch`` if it is still there, then reopen the groups
        it closed (rule 6 of :mod:`storage.upload_parts`)."""

        def unclaim(current: bytes | None) -> bytes | None:
            if current is None:
                raise _NoChange
            upload = UploadRecord.unpack(current)
            if upload.completing is None or upload.claim_epoch != epoch:
                raise _NoChange
            return replace(upload, completing=None, completing_ms=None).pack()

        try:
            await self._store.edit(upload_name, unclaim)
            await UploadParts(self._store, upload_name).reopen(claimed.groups, epoch)
        except _NoChange:
            pass
        except StorageError as exc:
            logger.warning("could not release the completion claim of %r: %s", upload_name, exc)

    async def _drop_from_uploads(self, cfg: BucketConfig, upload_id: str) -> None:
        def drop(current: bytes | None) -> bytes | None:
            entries = unpack_upload_list(current)
            kept = [e for e in entries if e[2] != upload_id]
            if len(kept) == len(entries):
                raise _NoChange
            return pack_upload_list(kept)

        with contextlib.suppress(_NoChange):
            await self._store.edit(self._uploads_name(cfg), drop)

    async def abort_multipart_upload(
        self, bucket: str, key: str, upload_id: str, *, release_later: ReleaseLater | None = None
    ) -> None:
        """Abort an upload and release its parts (through ``release_later`` if given).

        An upload claimed by a completion more than :data:`ABANDONED_CLAIM_SECONDS` ago was
        left so by a completion that died part-way: if that completion committed the object,
        its clean-up is finished (and the upload is gone: ``NoSuchUpload``); otherwise the
        claim is withdrawn and the upload aborted.

        Raises:
            NoSuchBucket, NoSuchUpload, Conflict (a completion is under way: retry it).
        """
        cfg = await self._bucket(bucket)
        self._check_upload_id(upload_id)
        upload_name = self._upload_name(cfg, upload_id)
        box: dict[str, UploadRecord] = {}
        now_ms = self._now_ms()
        abandoned_before = now_ms - int(ABANDONED_CLAIM_SECONDS * 1000)
        being_completed = Conflict(None, "the upload is being completed")

        def drop(current: bytes | None) -> bytes | None:
            if current is None:
                raise NoSuchUpload(f"no upload {upload_id!r}")
            upload = UploadRecord.unpack(current)
            if upload.key != key:
                raise NoSuchUpload(f"upload {upload_id!r} is not for key {key!r}")
            box.pop("stamped", None)
            if upload.completing is not None:
                if upload.completing_ms is None:
                    # Claimed without a time (older records): its time starts now.
                    box["stamped"] = upload
                    return replace(upload, completing_ms=now_ms).pack()
                if upload.completing_ms > abandoned_before:
                    raise being_completed
                box["abandoned"] = upload
                raise _NoChange
            box["upload"] = upload
            return None

        try:
            await self._store.edit(upload_name, drop)
        except _NoChange:
            await self._settle_abandoned(cfg, key, upload_name, box["abandoned"], box)
        if "stamped" in box:
            raise being_completed
        await self._drop_parts(DroppedUpload(upload_name, box["upload"]), release_later)
        await self._drop_from_uploads(cfg, upload_id)

    async def _settle_abandoned(
        self,
        cfg: BucketConfig,
        key: str,
        upload_name: bytes,
        judged: UploadRecord,
        box: dict[str, UploadRecord],
    ) -> None:
        """Settle the abandoned completion claim of ``judged`` (see abort_multipart_upload).

        If its object was committed, finish that completion's clean-up and raise
        ``NoSuchUpload``. Otherwise withdraw the claim and drop the upload in one edit, and
        only if the claim is still the one judged: a retried completion renews the claim's
        time, and then keeps the upload (``Conflict``). Leaves the dropped upload in
        ``box["upload"]`` for its parts to be released.
        """
        upload_id = judged.upload_id
        assert judged.completing is not None
        committed = await self._committed_by(cfg, _key_bytes(key), upload_id)
        if committed is not None:
            owned = await _chunk_list(self._store, committed)
            await self._retire_upload(
                cfg, judged, upload_name, _key_bytes(key), judged.completing, owned, None, [], None
            )
            logger.info("finished the clean-up of upload %s, completed earlier", upload_id)
            raise NoSuchUpload(f"upload {upload_id!r} was completed")

        def withdraw(current: bytes | None) -> bytes | None:
            if current is None:
                raise NoSuchUpload(f"no upload {upload_id!r}")
            upload = UploadRecord.unpack(current)
            if (upload.completing, upload.completing_ms, upload.claim_epoch) != (
                judged.completing,
                judged.completing_ms,
                judged.claim_epoch,
            ):
                raise Conflict(None, "the upload is being completed")
            box["upload"] = upload
            return None

        await self._store.edit(upload_name, withdraw)
        logger.info("aborted upload %s, whose completion was abandoned", upload_id)

    async def list_parts(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        *,
        part_number_marker: int = 0,
        max_parts: int = 1000,
    ) -> PartsPage:
        """The parts of an upload after ``part_number_marker``, in order.

        Raises:
            NoSuchBucket, NoSuchUpload.
        """
        cfg = await self._bucket(bucket)
        self._check_upload_id(upload_id)
        upload = await self._read_upload(cfg, key, upload_id)
        max_parts = max(0, min(max_parts, 1000))
        groups = UploadParts(self._store, self._upload_name(cfg, upload_id))
        found: dict[int, PartRecord] = dict(upload.legacy_parts)
        if upload.legacy_parts:  # (from before groups) any group may override one: read all
            found.update(await groups.read(upload.groups))
        else:
            first = group_of(part_number_marker + 1)
            for group in sorted(g for g in upload.groups if g >= first):
                found.update(await groups.read([group]))
                if sum(n > part_number_marker for n in found) > max_parts:
                    break  # enough for this page and to tell it is truncated
        numbers = sorted(n for n in found if n > part_number_marker)
        page = numbers[:max_parts]
        truncated = len(numbers) > len(page)
        parts = [
            PartInfo(n, found[n].etag, found[n].size, _datetime(found[n].mtime_ms)) for n in page
        ]
        return PartsPage(
            bucket=bucket,
            key=key,
            upload_id=upload_id,
            owner=upload.owner,
            parts=parts,
            is_truncated=truncated,
            next_part_number_marker=page[-1] if truncated and page else None,
        )

    async def list_multipart_uploads(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
        max_uploads: int = 1000,
    ) -> UploadsPage:
        """Uploads in progress, by key (byte order) then initiation time.

        Without ``upload_id_marker`` the page starts after every upload of ``key_marker``;
        with it, after that upload of ``key_marker``.

        Raises:
            NoSuchBucket.
        """
        cfg = await self._bucket(bucket)
        try:
            entries = unpack_upload_list((await self._store.read(self._uploads_name(cfg))).value)
        except NotFound:
            entries = []
        entries.sort(key=lambda e: (e[0].encode("utf-8"), e[1], e[2]))
        keys = [e[0].encode("utf-8") for e in entries]
        begin = 0
        raw_marker = b""
        if key_marker:
            raw_marker = key_marker.encode("utf-8")
            begin = bisect_left(keys, raw_marker + b"\x00")  # after every upload of the key
            if upload_id_marker:
                for i, (k, _t, u, _o) in enumerate(entries):
                    if k == key_marker and u == upload_id_marker:
                        begin = i + 1
                        break
        max_uploads = max(0, min(max_uploads, 1000))
        raw_prefix = prefix.encode("utf-8")
        raw_delim = delimiter.encode("utf-8") if delimiter else None
        uploads: list[UploadInfo] = []
        prefixes: list[str] = []
        truncated = False
        last: tuple[str, str | None] | None = None
        for k, initiated, u, initiator in entries[begin:]:
            raw = k.encode("utf-8")
            if not raw.startswith(raw_prefix):
                continue
            if raw_delim is not None:
                cut = raw.find(raw_delim, len(raw_prefix))
                if cut >= 0:
                    common = raw[: cut + len(raw_delim)].decode("utf-8")
                    if (prefixes and prefixes[-1] == common) or common.encode() <= raw_marker:
                        continue
                    if len(uploads) + len(prefixes) >= max_uploads:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = (common, None)
                    continue
            if len(uploads) + len(prefixes) >= max_uploads:
                truncated = True
                break
            uploads.append(UploadInfo(k, u, _datetime(initiated), initiator))
            last = (k, u)
        return UploadsPage(
            uploads=uploads,
            common_prefixes=prefixes,
            is_truncated=truncated,
            next_key_marker=last[0] if truncated and last else None,
            next_upload_id_marker=last[1] if truncated and last else None,
        )
