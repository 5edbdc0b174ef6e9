"""A sharded, sorted map on linearizable registers: the index of a bucket's objects.

Theory of operation
-------------------
Keys are bytes compared bytewise (for object keys, their UTF-8: S3's listing order); values
are opaque bytes (encoded object records). The map lives in registers under one prefix:

* the **root** register holds the sorted *boundaries* ``b0 = b"" < b1 < ... < bn`` and, for
  each, the id of the **shard** register owning the keys ``[bi, bi+1)`` (the last one up to
  infinity);
* each **shard** register holds its own range ``[lo, hi)`` (``hi = None``: unbounded), the
  sorted run of entries in it, an optional *pending split* ``(m, new_id)`` and a *sealed*
  flag (set while the bucket is being deleted).

Every change of an entry is one ``edit`` of one shard: atomic, and a caller's condition
(``If-Match``...) is evaluated inside it. A shard's ``lo`` never changes, its ``hi`` only
shrinks, boundaries are only ever added to the root (no merges), and shards are never deleted
while the bucket lives. So a cached root is at worst *coarser* than the truth, which is why
it can be cached: a writer's edit checks the key against the shard's own range and redirects
(refresh the root, retry) when it is outside; a reader detects ``shard.hi < root's upper
bound`` and refreshes before going on.

**Splitting** a shard ``S = [lo, hi)`` that exceeds ``max_entries`` or ``max_bytes``:

1. *freeze*: edit ``S`` to record the pending split ``(m, N)`` with ``m`` a separator near the
   middle (the shortest one, so the root stays small). From now on writes of keys ``>= m``
   are refused by ``S``'s edit function: the entries ``[m, hi)`` of ``S`` are frozen;
2. *copy*: create shard ``N = [m, hi)`` holding those frozen entries (only if ``N`` does
   not exist yet: a helper may have done it, and ``N`` may already have newer writes);
3. *publish*: add boundary ``m -> N`` to the root (if absent);
4. *trim*: edit ``S`` to ``[lo, m)``, dropping the frozen entries and the pending mark (only
   if the mark is still ``(m, N)``).

Each step is idempotent and checks it still applies, so anyone can run steps 2–4 again:
a writer refused by a frozen range *helps* finish the split, then retries. A crash between
any two steps therefore never blocks the map for long and never loses an entry: until step 3
the frozen copy in ``S`` is the only one anybody reads or writes (``N`` is unreachable), and
from step 3 on ``N`` is the only one (readers with a root that has ``m`` clip ``S`` at ``m``;
readers whose root lacks ``m`` and who find a pending split re-read the root *after* having
read ``S`` — if ``m`` is still absent, no write can have reached ``N`` before that root read,
so ``S``'s frozen copy was current). Readers never see an entry twice: the part of ``S`` they
use is clipped to ``[lo, min(S.hi, the next boundary of their root))``.

**Group commit.** Concurrent changes and reads of one shard are combined: the first caller
to find no round in flight for the shard *leads* it, taking every request queued at that
moment (at most :data:`MAX_BATCH`) into one ``edit`` (or, for reads alone, one ``read``);
callers arriving meanwhile queue for the next round, whose leader is the first of them. Each
change's function still runs inside the edit against the entry as left by the changes before
it in the batch, so a condition it checks holds at the moment of the commit; an exception it
raises fails that change alone. A read in a batch returns the shard as the edit committed it
(a batch with reads but no effective change writes the value back, as a read does), so every
caller's answer comes from a round that began after it asked: reads and writes stay
linearizable. Reads of the root are combined the same way. The leader's round is shielded
from its own cancellation (the store bounds it with its timeout), since others wait on it; a
waiter cancelled before its round began is withdrawn, one cancelled during it has an unknown
outcome, as with any edit. A split met by several writers is finished by one of them (per
process); the others wait for it, then retry.

**Listing** reads the root (cached), then only the shards covering the requested range, in
order, until the caller has enough. **Sealing** (bucket deletion) marks every shard sealed
only if all are empty; writers refused by a seal report :class:`IndexSealed` so the object
layer can decide whether the bucket is gone or the deletion failed and was rolled back.

Limits: the root holds one boundary per shard (short separators keep it small — about
20 KB for 100,000 objects with 50-byte keys); an entry larger than ``max_bytes`` lives alone
in its shard.
"""

from __future__ import annotations

import contextlib
import logging
import os
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from .api import BlockStore
from .errors import (
    BucketNotEmpty,
    Contention,
    Corrupt,
    NoSuchBucket,
    NotFound,
    StorageError,
    Unavailable,
)
from .policy import Redundancy

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 512
DEFAULT_MAX_BYTES = 128 * 1024
_FORMAT = 1
_MAX_ATTEMPTS = 64
_FIRST_SHARD = b"0"
#: Most requests (entry changes and reads) one shard round serves together.
MAX_BATCH = 64
#: Upper bound of a shielded batch round (the store's own timeout normally ends it first).
_BATCH_SECONDS = 120.0


class IndexSealed(Contention):
    """The shard is sealed: the bucket is being (or has been) deleted.

    Transient while a deletion runs (it may fail and be rolled back), hence a
    :class:`~storage.errors.Contention`.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message or "bucket index is sealed")


class _Redirect(Exception):
    """The key is not (or no longer) writable in this shard; maybe help a pending split."""

    def __init__(self, split: tuple[bytes, bytes] | None) -> None:
        super().__init__("redirect")
        self.split = split


class _NoChange(Exception):
    """Abort an edit: the register already holds what we want."""


class _Missing(Exception):
    """The shard register does not exist."""


@dataclass(eq=False)
class _Request:
    """One caller's change of one entry (``fn``), or a read of the shard (``fn is None``)."""

    key: bytes
    fn: Callable[[bytes | None], bytes | None] | None
    woken: trio.Event = field(default_factory=trio.Event)
    #: Set when the request was promoted to lead the next round of its shard.
    lead: bool = False
    served: bool = False
    #: A change: ``(old, new)``; a read: the shard.
    result: Any = None
    error: BaseException | None = None
    #: A change the shard refused (key out of its range): the pending split, if any.
    redirect: tuple[bytes, bytes] | None = None
    redirected: bool = False
    #: This change made the shard exceed its limits: its caller splits it.
    split: bool = False


@dataclass
class _Queue:
    """The requests waiting for the next round of one shard."""

    pending: deque[_Request] = field(default_factory=deque)
    busy: bool = False


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise Corrupt(f"undecodable {what}") from None
    if not isinstance(obj, dict) or obj.get("v") != _FORMAT:
        raise Corrupt(f"malformed {what}")
    return obj


@dataclass
class _Shard:
    lo: bytes
    hi: bytes | None
    keys: list[bytes]
    vals: list[bytes]
    split: tuple[bytes, bytes] | None = None
    sealed: bool = False

    def encode(self) -> bytes:
        obj: dict[str, object] = {"v": _FORMAT, "lo": self.lo, "hi": self.hi, "k": self.keys}
        obj["d"] = self.vals
        if self.split is not None:
            obj["sp"] = list(self.split)
        if self.sealed:
            obj["x"] = True
        return _pack(obj)

    @classmethod
    def decode(cls, data: bytes) -> _Shard:
        obj = _unpack(data, "index shard")
        try:
            sp = obj.get("sp")
            shard = cls(
                lo=bytes(obj["lo"]),
                hi=None if obj["hi"] is None else bytes(obj["hi"]),
                keys=list(obj["k"]),
                vals=list(obj["d"]),
                split=None if sp is None else (bytes(sp[0]), bytes(sp[1])),
                sealed=bool(obj.get("x", False)),
            )
        except (KeyError, TypeError, IndexError):
            raise Corrupt("malformed index shard") from None
        if len(shard.keys) != len(shard.vals):
            raise Corrupt("malformed index shard")
        return shard

    def writable_hi(self) -> bytes | None:
        """The exclusive upper bound of keys this shard accepts writes for."""
        return self.split[0] if self.split is not None else self.hi

    def accepts(self, key: bytes) -> bool:
        hi = self.writable_hi()
        return self.lo <= key and (hi is None or key < hi)


@dataclass(frozen=True)
class _Root:
    bounds: tuple[bytes, ...]
    ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        return _pack({"v": _FORMAT, "b": list(self.bounds), "i": list(self.ids)})

    @classmethod
    def decode(cls, data: bytes) -> _Root:
        obj = _unpack(data, "index root")
        try:
            root = cls(tuple(bytes(b) for b in obj["b"]), tuple(bytes(i) for i in obj["i"]))
        except (KeyError, TypeError):
            raise Corrupt("malformed index root") from None
        if not root.bounds or root.bounds[0] != b"" or len(root.bounds) != len(root.ids):
            raise Corrupt("malformed index root")
        return root

    def locate(self, key: bytes) -> int:
        return bisect_right(self.bounds, key) - 1

    def upper(self, i: int) -> bytes | None:
        return self.bounds[i + 1] if i + 1 < len(self.bounds) else None


def _min_hi(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _separator(below: bytes, above: bytes) -> bytes:
    """The shortest prefix of ``above`` that sorts after ``below`` (``below < above``)."""
    for length in range(1, len(above) + 1):
        candidate = above[:length]
        if candidate > below:
            return candidate
    return above


@dataclass(frozen=True)
class IndexStatistics:
    """Counters of one :class:`BucketIndex` object (since it was built).

    ``shard_reads`` and ``batched`` count callers' requests (reads; reads and changes served
    by shard rounds), ``root_reads`` and ``edits`` the rounds run against the store.
    """

    shard_reads: int
    root_reads: int
    edits: int
    batched: int
    splits_started: int
    splits_helped: int
    shards: int


class BucketIndex:
    """A sharded sorted map of ``bytes -> bytes`` stored in registers under ``prefix``.

    Args:
        store: the block store holding the registers.
        prefix: the register-name prefix of this map (unique per bucket incarnation).
        redundancy: the policy passed to register edits (``None``: the store's default).
        max_entries: a shard holding more entries is split.
        max_bytes: a shard whose encoding is larger is split.
    """

    def __init__(
        self,
        store: BlockStore,
        prefix: bytes,
        *,
        redundancy: Redundancy | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_entries < 2 or max_bytes < 64:
            raise ValueError("shard limits too small")
        self._store = store
        self._prefix = prefix
        self._redundancy = redundancy
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._root_cache: _Root | None = None
        self._queues: dict[bytes, _Queue] = {}
        self._helping: dict[tuple[bytes, tuple[bytes, bytes]], trio.Event] = {}
        self._shard_reads = 0
        self._root_reads = 0
        self._edits = 0
        self._batched = 0
        self._splits_started = 0
        self._splits_helped = 0

    # -- names and plumbing --------------------------------------------------------------------

    @property
    def root_name(self) -> bytes:
        """The register name of the root."""
        return self._prefix + b"/root"

    def shard_name(self, shard_id: bytes) -> bytes:
        """The register name of shard ``shard_id``."""
        return self._prefix + b"/s/" + shard_id

    def statistics(self) -> IndexStatistics:
        """Return this object's counters."""
        return IndexStatistics(
            shard_reads=self._shard_reads,
            root_reads=self._root_reads,
            edits=self._edits,
            batched=self._batched,
            splits_started=self._splits_started,
            splits_helped=self._splits_helped,
            shards=len(self._root_cache.ids) if self._root_cache else 0,
        )

    async def _edit(self, name: bytes, fn: Callable[[bytes | None], bytes | None]) -> None:
        self._edits += 1
        await self._store.edit(name, fn, redundancy=self._redundancy)

    async def _root(self, *, refresh: bool = False) -> _Root:
        """The root: cached, or (``refresh``) from a read that begins after this call."""
        if self._root_cache is None or refresh:
            request = _Request(b"", None)
            await self._submit(self.root_name, request)
            if request.error is not None:
                raise request.error
            self._root_cache = request.result
        return self._root_cache

    async def _read_shard(self, shard_id: bytes) -> _Shard:
        """A linearizable read of one shard (combined with concurrent requests; not to mutate)."""
        request = _Request(b"", None)
        await self._submit(self.shard_name(shard_id), request)
        if request.error is not None:
            raise request.error
        shard: _Shard = request.result
        return shard

    def _over(self, shard: _Shard, encoded_size: int) -> bool:
        return len(shard.keys) >= 2 and (
            len(shard.keys) > self.max_entries or encoded_size > self.max_bytes
        )

    # -- group commit --------------------------------------------------------------------------

    async def _submit(self, name: bytes, request: _Request) -> None:
        """Have ``request`` served by a round of register ``name`` (see "Group commit").

        ``name`` is a shard, or the root (reads only).
        """
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        queue.pending.append(request)
        if queue.busy:
            woken = False
            try:
                await request.woken.wait()
                woken = True
            finally:
                if not woken:
                    # Cancelled: a request still queued was never applied; withdraw it, and
                    # pass the lead on if it had just been handed to us.
                    if request in queue.pending:
                        queue.pending.remove(request)
                    if request.lead:
                        self._hand_over(name, queue)
            if request.served:
                return
        else:
            queue.busy = True
        batch = [queue.pending.popleft() for _ in range(min(MAX_BATCH, len(queue.pending)))]
        assert batch[0] is request
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _BATCH_SECONDS):
                await self._run_batch(name, batch)
        finally:
            for each in batch:
                if not each.served:  # the shielded round ran out of time
                    each.error = Unavailable(1, 0, "bucket index round timed out")
                    each.served = True
                    each.woken.set()
            self._hand_over(name, queue)

    def _hand_over(self, name: bytes, queue: _Queue) -> None:
        """Wake the next leader of register ``name`` or, with nobody waiting, mark it idle."""
        if queue.pending:
            head = queue.pending[0]
            head.lead = True
            head.woken.set()
        else:
            queue.busy = False
            if self._queues.get(name) is queue:
                del self._queues[name]

    async def _run_batch(self, name: bytes, batch: list[_Request]) -> None:
        """One round for ``batch``: an edit applying its changes in order, or a plain read.

        Every request of the batch is served when this returns (or raises ``Cancelled``).
        """
        reads = sum(1 for r in batch if r.fn is None)
        root = name == self.root_name
        if root:
            self._root_reads += 1
        else:
            self._shard_reads += reads
            self._batched += len(batch)
        outcomes: list[tuple[str, Any]] = []
        final: list[Any] = []  # the shard (or root) as the round left it
        over = False

        def apply(current: bytes | None) -> bytes | None:
            nonlocal over
            outcomes.clear()
            final.clear()
            if current is None:
                raise _Missing
            shard = _Shard.decode(current)
            changed = False
            for request in batch:
                outcomes.append(self._apply_one(shard, request))
                changed = changed or outcomes[-1][0] == "changed"
            final.append(shard)
            if not changed:
                if reads:
                    return current  # written back: a linearizable read
                raise _NoChange
            data = shard.encode()
            over = self._over(shard, len(data))
            return data

        failure: BaseException | None = None
        try:
            if reads < len(batch):
                with contextlib.suppress(_NoChange):
                    await self._edit(name, apply)
            else:
                try:
                    versioned = await self._store.read(name)
                except NotFound:
                    raise _Missing from None
                final.append((_Root if root else _Shard).decode(versioned.value))
                outcomes.extend(("read", None) for _ in batch)
        except _Missing:
            failure = NoSuchBucket(f"bucket index {'root' if root else 'shard'} is gone")
        except Exception as exc:  # the store's error (or a bug): every request of the round
            failure = exc
        for i, request in enumerate(batch):
            kind, value = ("failed", None) if failure is not None else outcomes[i]
            if failure is not None:
                request.error = failure
            elif kind == "read":
                request.result = final[0]
            elif kind in ("changed", "same"):
                request.result = value
                if over and kind == "changed":
                    request.split, over = True, False
            elif kind == "redirect":
                request.redirected, request.redirect = True, value
            else:
                request.error = value
            request.served = True
            request.woken.set()

    @staticmethod
    def _apply_one(shard: _Shard, request: _Request) -> tuple[str, Any]:
        """Apply one request of a batch to ``shard`` (in place); return what happened.

        ``("read", None)``; ``("changed" | "same", (old, new))``; ``("redirect", split)`` for
        a key outside the shard's writable range; ``("error", exception)``.
        """
        fn = request.fn
        if fn is None:
            return "read", None
        if shard.sealed:
            return "error", IndexSealed()
        key = request.key
        if not shard.accepts(key):
            return "redirect", shard.split if shard.lo <= key else None
        j = bisect_left(shard.keys, key)
        present = j < len(shard.keys) and shard.keys[j] == key
        old = shard.vals[j] if present else None
        try:
            new = fn(old)
        except Exception as exc:  # this change's own refusal: it alone fails
            return "error", exc
        if new is None:
            if not present:
                return "same", (None, None)
            del shard.keys[j], shard.vals[j]
        elif present:
            shard.vals[j] = new
        else:
            shard.keys.insert(j, key)
            shard.vals.insert(j, new)
        return "changed", (old, new)

    # -- creation and deletion -----------------------------------------------------------------

    async def create(self) -> None:
        """Create an empty map (one shard and the root); creating it again is harmless."""
        shard = _Shard(lo=b"", hi=None, keys=[], vals=[]).encode()
        root = _Root((b"",), (_FIRST_SHARD,)).encode()

        def put(data: bytes) -> Callable[[bytes | None], bytes | None]:
            def fn(current: bytes | None) -> bytes | None:
                if current is not None:
                    raise _NoChange
                return data

            return fn

        # The shard first: a root never names a shard that does not exist.
        for name, data in ((self.shard_name(_FIRST_SHARD), shard), (self.root_name, root)):
            with contextlib.suppress(_NoChange):
                await self._edit(name, put(data))

    async def seal(self) -> None:
        """Seal every shard if the map is empty, so no entry can be added any more.

        Raises:
            BucketNotEmpty: some shard holds an entry (nothing stays sealed).
        """
        root = await self._root(refresh=True)
        sealed: list[bytes] = []

        def seal_fn(current: bytes | None) -> bytes | None:
            if current is None:
                raise _Missing
            shard = _Shard.decode(current)
            if shard.keys or shard.split is not None:
                raise BucketNotEmpty("the bucket is not empty")
            if shard.sealed:
                raise _NoChange
            shard.sealed = True
            return shard.encode()

        done = False
        try:
            for shard_id in root.ids:
                try:
                    await self._edit(self.shard_name(shard_id), seal_fn)
                except _NoChange:
                    pass
                except _Missing:
                    raise NoSuchBucket("bucket index shard is gone") from None
                sealed.append(shard_id)
            again = await self._root(refresh=True)
            if again.ids != root.ids:
                # A split finished meanwhile, so entries existed.
                raise BucketNotEmpty("the bucket is not empty")
            done = True
        finally:
            if not done and sealed:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 10
                    await self._unseal(sealed)

    async def unseal(self) -> None:
        """Clear the seal of every shard (rolls back a deletion that did not finish)."""
        root = await self._root(refresh=True)
        await self._unseal(list(root.ids))

    async def _unseal(self, shard_ids: Sequence[bytes]) -> None:
        def unseal_fn(current: bytes | None) -> bytes | None:
            if current is None:
                raise _NoChange
            shard = _Shard.decode(current)
            if not shard.sealed:
                raise _NoChange
            shard.sealed = False
            return shard.encode()

        for shard_id in shard_ids:
            try:
                await self._edit(self.shard_name(shard_id), unseal_fn)
            except _NoChange:
                pass
            except StorageError as exc:
                logger.warning("could not unseal shard %r of %r: %s", shard_id, self._prefix, exc)

    async def destroy(self) -> None:
        """Delete every register of the map (best effort: failures are logged)."""
        try:
            root = await self._root(refresh=True)
        except NoSuchBucket:
            return
        for name in [self.shard_name(i) for i in root.ids] + [self.root_name]:
            try:
                await self._edit(name, lambda _current: None)
            except StorageError as exc:
                logger.warning("could not delete index register %r: %s", name, exc)
        self._root_cache = None

    # -- writes --------------------------------------------------------------------------------

    async def update(
        self, key: bytes, fn: Callable[[bytes | None], bytes | None]
    ) -> tuple[bytes | None, bytes | None]:
        """Atomically replace the value of ``key`` by ``fn(current)`` (``None``: absent/delete).

        ``fn`` runs inside the shard's edit, so a condition it checks holds at the moment of
        the change; it may run more than once (retries) and should be pure. An exception it
        raises aborts the change and propagates.

        Returns:
            ``(old, new)`` as seen by the committed application of ``fn``.

        Raises:
            IndexSealed: the bucket is being deleted.
            Contention: the shard kept splitting under the change (nothing was applied).
            NoSuchBucket: the map's registers are gone.
        """
        for _ in range(_MAX_ATTEMPTS):
            root = await self._root()
            shard_id = root.ids[root.locate(key)]
            request = _Request(key, fn)
            await self._submit(self.shard_name(shard_id), request)
            if request.error is not None:
                raise request.error
            if request.redirected:
                if request.redirect is not None:
                    await self._help_split(shard_id, request.redirect)
                await self._root(refresh=True)
                continue
            if request.split:
                await self._split_after_write(shard_id)
            old, new = request.result
            return old, new
        raise Contention("bucket index kept moving; giving up")

    async def insert_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Insert or overwrite many entries with few edits (one per shard and batch).

        Meant for bulk loads: each batch is still one atomic shard edit.
        """
        pending = sorted(dict(items).items())
        batch_entries = max(1, self.max_entries // 2)
        batch_bytes = max(1, self.max_bytes // 2)
        attempts = 0
        box: dict[str, Any] = {}
        while pending:
            attempts += 1
            if attempts > _MAX_ATTEMPTS * (1 + len(pending)):
                raise Contention("bucket index kept moving; giving up")
            root = await self._root()
            i = root.locate(pending[0][0])
            shard_id, upper = root.ids[i], root.upper(i)
            batch: list[tuple[bytes, bytes]] = []
            size = 0
            for key, value in pending:
                if (upper is not None and key >= upper) or len(batch) >= batch_entries:
                    break
                size += len(key) + len(value)
                if batch and size > batch_bytes:
                    break
                batch.append((key, value))

            def apply(current: bytes | None, batch: list[tuple[bytes, bytes]] = batch) -> bytes:
                if current is None:
                    raise _Missing
                shard = _Shard.decode(current)
                if shard.sealed:
                    raise IndexSealed
                taken = [kv for kv in batch if shard.accepts(kv[0])]
                if not taken or taken[0] is not batch[0]:
                    raise _Redirect(shard.split)
                taken = batch[: len(taken)]
                merged = dict(zip(shard.keys, shard.vals, strict=True))
                merged.update(taken)
                ordered = sorted(merged.items())
                shard.keys = [k for k, _ in ordered]
                shard.vals = [v for _, v in ordered]
                data = shard.encode()
                box["n"], box["over"] = len(taken), self._over(shard, len(data))
                return data

            try:
                await self._edit(self.shard_name(shard_id), apply)
            except _Missing:
                raise NoSuchBucket("bucket index shard is gone") from None
            except _Redirect as redirect:
                if redirect.split is not None:
                    await self._finish_split(shard_id, *redirect.split)
                await self._root(refresh=True)
                continue
            pending = pending[box["n"] :]
            if box["over"]:
                await self._split_after_write(shard_id)

    # -- splits --------------------------------------------------------------------------------

    async def _split_after_write(self, shard_id: bytes) -> None:
        # The write has committed; a failed split is only deferred (the next write retries
        # it, and a half-done one is finished by whoever runs into it), so it is not the
        # caller's error.
        try:
            await self._split(shard_id, depth=0)
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except StorageError as exc:
            logger.warning("split of shard %r of %r deferred: %s", shard_id, self._prefix, exc)

    async def _split(self, shard_id: bytes, *, depth: int) -> None:
        new_id = os.urandom(9).hex().encode()
        box: dict[str, tuple[bytes, bytes]] = {}

        def freeze(current: bytes | None) -> bytes | None:
            box.clear()
            if current is None:
                raise _NoChange
            shard = _Shard.decode(current)
            if shard.sealed:
                raise _NoChange
            if shard.split is not None:
                box["split"] = shard.split
                raise _NoChange
            data_size = len(current)
            if not self._over(shard, data_size):
                raise _NoChange
            mid = self._middle(shard)
            boundary = _separator(shard.keys[mid - 1], shard.keys[mid])
            shard.split = (boundary, new_id)
            box["split"] = shard.split
            return shard.encode()

        try:
            await self._edit(self.shard_name(shard_id), freeze)
            self._splits_started += 1
        except _NoChange:
            pass
        split = box.get("split")
        if split is None:
            return
        await self._finish_split(shard_id, *split)
        if depth < 8:
            # Bulk loads can leave a half still over the limits.
            for half in (shard_id, split[1]):
                shard = await self._read_shard(half)
                if self._over(shard, len(shard.encode())):
                    await self._split(half, depth=depth + 1)

    def _middle(self, shard: _Shard) -> int:
        """The index of the first entry of the upper half (by bytes, at least one each side)."""
        sizes = [len(k) + len(v) + 8 for k, v in zip(shard.keys, shard.vals, strict=True)]
        half = sum(sizes) // 2
        total = 0
        for i, size in enumerate(sizes):
            total += size
            if total >= half:
                return min(max(i, 1), len(sizes) - 1)
        return len(sizes) // 2

    async def _help_split(self, shard_id: bytes, split: tuple[bytes, bytes]) -> None:
        """Finish a pending split met by a write; one helper per split in this process."""
        helping = self._helping.get((shard_id, split))
        if helping is not None:
            await helping.wait()  # its helper's outcome is ours: the caller retries anyway
            return
        helping = self._helping[(shard_id, split)] = trio.Event()
        try:
            self._splits_helped += 1
            await self._finish_split(shard_id, *split)
        finally:
            del self._helping[(shard_id, split)]
            helping.set()

    async def _finish_split(self, shard_id: bytes, boundary: bytes, new_id: bytes) -> None:
        """Run steps 2–4 of a split whose step 1 committed (idempotent; anyone may help)."""
        shard = await self._read_shard(shard_id)
        if shard.split != (boundary, new_id):
            return  # finished already (or another split now): steps 3-4 are done
        j = bisect_left(shard.keys, boundary)
        upper = _Shard(lo=boundary, hi=shard.hi, keys=shard.keys[j:], vals=shard.vals[j:])
        upper_data = upper.encode()

        def create(current: bytes | None) -> bytes | None:
            if current is not None:
                raise _NoChange
            return upper_data

        def publish(current: bytes | None) -> bytes | None:
            if current is None:
                raise _Missing
            root = _Root.decode(current)
            i = bisect_left(root.bounds, boundary)
            if i < len(root.bounds) and root.bounds[i] == boundary:
                raise _NoChange
            bounds = (*root.bounds[:i], boundary, *root.bounds[i:])
            ids = (*root.ids[:i], new_id, *root.ids[i:])
            return _Root(bounds, ids).encode()

        def trim(current: bytes | None) -> bytes | None:
            if current is None:
                raise _NoChange
            lower = _Shard.decode(current)
            if lower.split != (boundary, new_id):
                raise _NoChange
            k = bisect_left(lower.keys, boundary)
            lower.keys, lower.vals = lower.keys[:k], lower.vals[:k]
            lower.hi, lower.split = boundary, None
            return lower.encode()

        for name, fn in (
            (self.shard_name(new_id), create),
            (self.root_name, publish),
            (self.shard_name(shard_id), trim),
        ):
            try:
                await self._edit(name, fn)
            except _NoChange:
                pass
            except _Missing:
                raise NoSuchBucket("bucket index is gone") from None
        self._root_cache = None

    # -- reads ---------------------------------------------------------------------------------

    async def read_from(self, start: bytes) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Read the entries ``>= start`` of the one shard covering ``start``.

        Returns:
            ``(entries, next_start)``: the entries in order, and where the next shard
            begins (``None`` when this shard is the last).
        """
        for _ in range(_MAX_ATTEMPTS):
            root = await self._root()
            i = root.locate(start)
            shard = await self._read_shard(root.ids[i])
            end = _min_hi(root.upper(i), shard.hi)
            if shard.hi is not None and start >= shard.hi:
                await self._root(refresh=True)  # stale root: that range moved on
                continue
            if shard.split is not None:
                boundary = shard.split[0]
                upper = root.upper(i)
                if upper is None or upper > boundary:
                    # Our root lacks the boundary. Re-read it *after* the shard: if it still
                    # lacks it, nothing can have been written to the new shard yet, so the
                    # frozen entries we hold are current.
                    fresh = await self._root(refresh=True)
                    if boundary in fresh.bounds:
                        if start >= boundary:
                            continue
                        end = _min_hi(end, boundary)
            if shard.hi is not None and end == shard.hi and shard.hi != root.upper(i):
                self._root_cache = None  # the shard shrank: refresh before the next shard
            lo = bisect_left(shard.keys, start)
            hi = len(shard.keys) if end is None else bisect_left(shard.keys, end)
            return list(zip(shard.keys[lo:hi], shard.vals[lo:hi], strict=True)), end
        raise Contention("bucket index kept moving; giving up")

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None`` if absent."""
        entries, _ = await self.read_from(key)
        if entries and entries[0][0] == key:
            return entries[0][1]
        return None

    async def scan(self, start: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Every entry ``>= start`` in order (at most ``limit``), shard after shard."""
        out: list[tuple[bytes, bytes]] = []
        position: bytes | None = start
        while position is not None and (limit is None or len(out) < limit):
            entries, position = await self.read_from(position)
            out.extend(entries)
        return out if limit is None else out[:limit]

    async def is_empty(self) -> bool:
        """Whether the map holds no entry."""
        return not await self.scan(b"", limit=1)
