"""The storage node's side of the key-value layer: chunk storage and CASPaxos acceptors on RPC.

Theory of operation
-------------------
A :class:`BlockService` serves the ``kv.*`` RPC methods on one node's :class:`Silo`. Every
argument and result is a msgpack map of bytes and ints; large payloads travel as bytes or
memoryviews (the RPC sends buffers of 64 KiB and more without copying them).

=============  =======================================================  ==========================
method         arguments                                                result
=============  =======================================================  ==========================
``kv.put``     ``{address, payload, replicas}`` (a replica; the         ``{"stored": True}``
               optional ``replicas`` is its target copy count, kept
               for repair) or ``{address, payload, fragment,
               manifest}`` (fragment i)
``kv.get``     ``{address}`` (a replica) or                             ``{payload}`` or
               ``{address, fragment, skip}`` (a fragment: ``fragment``  ``{manifest, index,
               is the one preferred, any other held one not in          fragment}``
               ``skip`` will do)
``kv.has``     ``{address}``                                            ``{whole: bool,
                                                                        fragments: [int]}``
``kv.delete``  ``{address}`` (the whole block and every fragment)       ``{"deleted": int}``
``kv.paxos``   ``{address, message}`` (``paxos.encode_message`` bytes:  ``{message}``
               ``Prepare``, ``Accept`` or ``Inspect``)
``kv.paxos_``  ``{batch: [[address, message], ...]}`` (at most          ``{batch: [message |
``batch``      :data:`MAX_PAXOS_BATCH`; handled concurrently)           [code, text], ...]}``
``kv.collect`` ``{address, ballot, promise_only}`` (forget a decided     ``{"collected": bool}``
               tombstone, or only a promise: see "Collected tombstones")
=============  =======================================================  ==========================

Errors travel as :class:`dht.errors.RemoteError` with stable codes (:data:`ERROR_CODES`):
``not_found``, ``corrupt``, ``no_space``, ``invalid``, ``forbidden``, ``unavailable``
(shutting down). Bad input from a peer (wrong types, lengths, a payload that does not hash
to its address) is answered ``invalid``, logged with the caller's node id, and never
crashes the node.

What is durable when
~~~~~~~~~~~~~~~~~~~~
* ``kv.put`` answers only after the silo has the block on disk (fsynced), and only after
  verifying it: a replica must hash to its address (``verify_replica``); a fragment's
  manifest must hash to the address and the fragment must match the manifest's hash for its
  index. Hashing large payloads runs in worker threads under a limiter. A node therefore
  never stores bytes a reader would reject. (A replica this node's own client puts, through
  an in-process call, is not hashed again: the client has just computed its address from
  those very bytes.) A fragment is always stored *with* its
  manifest, in one silo record (:func:`pack_fragment_record`): a node that holds fragment
  ``i`` can serve it to a reader whose placement has shifted, without any other node.
* ``kv.paxos`` runs, under a per-address lock (dropped once idle), ``load_paxos`` →
  :meth:`storage.paxos.Acceptor.handle` → ``save_paxos`` (only if the state changed; durable
  *before* the reply) → reply. The acceptor refuses (``Reject(FORBIDDEN)``) any value whose
  signature does not verify for this address (the ``verify`` hook, bound to the address);
  a write-back of the very value it already accepted is not checked again (it was when it
  was accepted), which halves the signature checks of reads. ``Inspect`` (a quick read)
  reports the durable state and changes nothing, so it takes no lock and writes nothing.
  ``kv.paxos_batch`` carries many such messages (for many addresses) in one call, as a
  client sends them when many of its operations are in flight at once: each is handled as
  by ``kv.paxos``, all at the same time (their state writes share the silo's group
  commit), and each gets its own reply or error code in the answer.

Limits: any member of the network may call ``kv.delete`` (chunks carry no owner yet; the
transport admits only nodes with a passport), and ``fragment`` ``-1`` or absent means the
whole block.

Acceptor state in the silo
~~~~~~~~~~~~~~~~~~~~~~~~~~
Each address's :class:`storage.paxos.AcceptorState` maps onto an :class:`AcceptorRecord`
as: ``value`` = ``AcceptorState.to_bytes()`` (the authoritative state, versioned msgpack);
``promised`` = the promised ballot as msgpack ``[counter, proposer]`` (``b""`` if none: a
copy kept readable for node-wide scans, e.g. a future promise floor); ``accepted`` = None;
``metadata`` = :data:`ACCEPTOR_RECORD_FORMAT`. A record that fails its checksum or does not
parse is never used: the node answers ``corrupt`` and the proposer counts that acceptor as
failed (resetting it could break consensus safety).

The service keeps the most recently used states (:data:`STATE_CACHE`, each at most
:data:`STATE_CACHE_MAX_BYTES` serialised) in memory, so that a message for a busy register
costs no read of the silo. The cache only ever holds a state the silo has durably: an
entry is dropped before a save and set again once the save returned (a failed or
cancelled save may or may not have changed the record, so it is read back), and only
under the address's lock, which every save holds (an ``Inspect`` that reads the silo
without the lock keeps nothing: a save may commit while its read is in flight). The
service is the only writer of acceptor records. Other code may *delete* a record directly (a
draining node dropping retired ones); the cache may then still answer from the dropped
state, which is safe: an acceptor that remembers more than its disk is never less safe
(only forgetting a promise is dangerous), and a draining silo refuses to write it again.

Collected tombstones
~~~~~~~~~~~~~~~~~~~~
``kv.collect(address, t)`` is sent by the register's responsible node once a tombstone
decided at ballot ``t`` is old enough and every member of the network reported it at ``t``
or held nothing newer (:mod:`storage.repair`; the rule is
:func:`storage.paxos.collection_order`). The acceptor then drops the record and folds
its promise (and ``t``) into one node-wide *promise floor*, stored in the same silo
transaction (setting :data:`PROMISE_FLOOR_SETTING`): every address without a record
answers as an acceptor that promised the floor, so an ``Accept`` of an older value from a
proposer that prepared before ``t`` can never land on the emptied acceptor. A record that
is newer than ``t`` (the register lives again) or holds another value at ``t`` is kept
(``collected: False``); an older record (a retired holder's stale value) is dropped too,
since the tombstone supersedes it. With ``promise_only`` the record goes only if it holds no
accepted value (a node folding its own lone promises into the floor). The floor is raised in
memory before the deletion commits (remembering more than the disk is safe), and a promise
given at exactly the floor to an absent record is saved as that record's own, so no answer
ever rests on a floor that a crash could take back. Proposers learn the floor from the first
rejection and start fresh registers above it.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from dht.contracts import HandlerRegistry
from dht.errors import RemoteError
from dht.ids import Contact, NodeId

from .chunks import verify_fragment, verify_manifest, verify_replica
from .errors import Corrupt, InvalidArgument, NoSpace, NotFound, PermissionDenied, StorageError
from .ids import BLOCK_ADDRESS_BYTES, BlockAddress
from .paxos import (
    Accept,
    Acceptor,
    AcceptorState,
    Ballot,
    Inspect,
    Prepare,
    Promise,
    RegisterValue,
    Reject,
    RejectReason,
    decode_message,
    encode_message,
    higher_ballot,
)
from .registers import verify_register_value
from .silo import MAX_FRAGMENT, MAX_REPLICAS, AcceptorRecord, BlockKey, Silo

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPTOR_RECORD_FORMAT",
    "ERROR_CODES",
    "MAX_PAXOS_BATCH",
    "PROMISE_FLOOR_SETTING",
    "BlockService",
    "BlockServiceStatistics",
    "pack_fragment_record",
    "unpack_fragment_record",
]

#: Storage errors and the stable RPC error codes they travel as.
ERROR_CODES: dict[type[StorageError], str] = {
    NotFound: "not_found",
    Corrupt: "corrupt",
    NoSpace: "no_space",
    InvalidArgument: "invalid",
    PermissionDenied: "forbidden",
}
#: The node-wide promise floor of collected tombstones: msgpack ``[counter, proposer]``.
PROMISE_FLOOR_SETTING = "kv.promise-floor"
#: ``metadata`` of every acceptor record this service writes.
ACCEPTOR_RECORD_FORMAT = b"ballast-acceptor-state-v1"
#: Payloads at least this large are hashed in a worker thread.
HASH_IN_THREAD_BYTES = 64 * 1024
#: Largest fragment index a request may name (the silo's limit).
_MAX_FRAGMENT = MAX_FRAGMENT
#: Largest consensus message accepted (a register value plus a little).
MAX_PAXOS_MESSAGE = 16 << 20
#: Most consensus messages in one ``kv.paxos_batch`` call.
MAX_PAXOS_BATCH = 256
#: Acceptor states kept in memory (the most recently used), and the largest one kept.
STATE_CACHE = 4096
STATE_CACHE_MAX_BYTES = 64 * 1024
_FRAGMENT_MAGIC = b"BLFM"
_FRAGMENT_HEADER = struct.Struct(">4sI")


def pack_fragment_record(manifest: bytes, fragment: bytes | memoryview) -> bytes:
    """Return the silo record of a fragment: ``"BLFM" | u32 manifest length | manifest | data``."""
    return b"".join((_FRAGMENT_HEADER.pack(_FRAGMENT_MAGIC, len(manifest)), manifest, fragment))


def unpack_fragment_record(record: bytes) -> tuple[bytes, memoryview]:
    """Split a fragment record into (manifest bytes, fragment view).

    Raises:
        Corrupt: the record is not a fragment record.
    """
    if len(record) < _FRAGMENT_HEADER.size:
        raise Corrupt("fragment record too short")
    magic, length = _FRAGMENT_HEADER.unpack_from(record)
    end = _FRAGMENT_HEADER.size + length
    if magic != _FRAGMENT_MAGIC or end > len(record):
        raise Corrupt("malformed fragment record")
    view = memoryview(record)
    return bytes(view[_FRAGMENT_HEADER.size : end]), view[end:]


@dataclass(frozen=True)
class BlockServiceStatistics:
    """Counters of a :class:`BlockService`.

    Attributes:
        blocks_stored: replicas and fragments stored by ``kv.put`` (already held ones too).
        bytes_stored: payload bytes received by successful ``kv.put`` calls.
        blocks_served: replicas and fragments returned by ``kv.get``.
        bytes_served: payload bytes returned by ``kv.get``.
        not_found: ``kv.get`` calls for blocks this node does not hold.
        corrupt_reads: ``kv.get`` calls that found the stored copy corrupt (not served).
        rejected_uploads: ``kv.put`` payloads refused because they fail verification.
        no_space: writes refused because the silo is full.
        invalid_requests: requests refused as malformed.
        deletes: blocks and fragments deleted.
        paxos_requests: consensus messages handled.
        paxos_inspections: of those, read-only state reports (quick reads).
        paxos_state_writes: acceptor states made durable.
        paxos_forbidden: proposals refused because their signature does not verify.
        paxos_locks: addresses with a consensus message in progress right now.
        tombstones_collected: acceptor records dropped by ``kv.collect``.
    """

    blocks_stored: int
    bytes_stored: int
    blocks_served: int
    bytes_served: int
    not_found: int
    corrupt_reads: int
    rejected_uploads: int
    no_space: int
    invalid_requests: int
    deletes: int
    paxos_requests: int
    paxos_inspections: int
    paxos_state_writes: int
    paxos_forbidden: int
    paxos_locks: int
    tombstones_collected: int


class _Invalid(Exception):
    """A request is malformed (becomes RemoteError("invalid"))."""


def _bytes_field(args: dict[Any, Any], name: str, *, size: int | None = None) -> bytes:
    value = args.get(name)
    if not isinstance(value, bytes):
        raise _Invalid(f"{name!r} must be bytes")
    if size is not None and len(value) != size:
        raise _Invalid(f"{name!r} must be {size} bytes")
    return value


def _fragment_field(args: dict[Any, Any], name: str = "fragment") -> int | None:
    value = args.get(name, -1)
    if value is None or (type(value) is int and value == -1):
        return None
    if type(value) is not int or not 0 <= value <= _MAX_FRAGMENT:
        raise _Invalid(f"{name!r} must be -1 or a fragment index")
    return value


def _replicas_field(args: dict[Any, Any]) -> int | None:
    value = args.get("replicas")
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_REPLICAS:
        raise _Invalid(f"'replicas' must be an int in 1..{MAX_REPLICAS}")
    return value


def _address_field(args: dict[Any, Any]) -> BlockAddress:
    return BlockAddress(_bytes_field(args, "address", size=BLOCK_ADDRESS_BYTES))


def _map(args: Any) -> dict[Any, Any]:
    if not isinstance(args, dict):
        raise _Invalid("arguments must be a map")
    return args


class _KeyedLocks:
    """One :class:`trio.Lock` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[trio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_now, users_now = self._locks[key]
            if users_now == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_now, users_now - 1)


class BlockService:
    """Serves ``kv.put/get/has/delete/paxos`` from a silo (see the module docstring).

    Args:
        silo: the node's open silo (the caller owns and closes it).
        registry: where the handlers are registered (at construction).
        verify: decides whether a register value may be accepted at an address; the
            default checks the owner's signature (:func:`verify_register_value`).
        hash_threads: worker threads hashing large payloads at once.
    """

    def __init__(
        self,
        silo: Silo,
        registry: HandlerRegistry,
        *,
        verify: Callable[[BlockAddress, RegisterValue], bool] = verify_register_value,
        hash_threads: int = 2,
    ) -> None:
        """Register the handlers on ``registry``; nothing else happens until calls arrive."""
        self._silo = silo
        self._verify = verify
        # Calls from this very node (in-process, see ``RpcNode._call_self``) carry payloads
        # its own client has just hashed; a peer cannot take this id (the transport
        # authenticates node keys).
        self._own_id: NodeId | None = getattr(registry, "node_id", None)
        self._limiter = trio.CapacityLimiter(hash_threads)
        self._paxos_locks = _KeyedLocks()
        self._states: OrderedDict[BlockAddress, AcceptorState] = OrderedDict()
        self._blocks_stored = self._bytes_stored = 0
        self._blocks_served = self._bytes_served = 0
        self._not_found = self._corrupt_reads = self._rejected_uploads = 0
        self._no_space = self._invalid = self._deletes = 0
        self._paxos_requests = self._paxos_writes = self._paxos_forbidden = 0
        self._paxos_inspections = self._tombstones_collected = 0
        self._floor: Ballot | None = None
        self._floor_loaded = False
        handlers: dict[str, Callable[[Contact, Any], Awaitable[Any]]] = {
            "kv.put": self._put,
            "kv.get": self._get,
            "kv.has": self._has,
            "kv.delete": self._delete,
            "kv.paxos": self._paxos,
            "kv.paxos_batch": self._paxos_batch,
            "kv.collect": self._collect,
        }
        for method, handler in handlers.items():
            registry.register(method, self._guard(method, handler))

    def statistics(self) -> BlockServiceStatistics:
        """Return a snapshot of the counters."""
        return BlockServiceStatistics(
            blocks_stored=self._blocks_stored,
            bytes_stored=self._bytes_stored,
            blocks_served=self._blocks_served,
            bytes_served=self._bytes_served,
            not_found=self._not_found,
            corrupt_reads=self._corrupt_reads,
            rejected_uploads=self._rejected_uploads,
            no_space=self._no_space,
            invalid_requests=self._invalid,
            deletes=self._deletes,
            paxos_requests=self._paxos_requests,
            paxos_inspections=self._paxos_inspections,
            paxos_state_writes=self._paxos_writes,
            paxos_forbidden=self._paxos_forbidden,
            paxos_locks=len(self._paxos_locks),
            tombstones_collected=self._tombstones_collected,
        )

    # -- error translation ----------------------------------------------------------------

    def _guard(
        self, method: str, handler: Callable[[Contact, Any], Awaitable[Any]]
    ) -> Callable[[Contact, Any], Awaitable[Any]]:
        """Translate storage errors into RemoteError codes, once, at the RPC edge."""

        @functools.wraps(handler)
        async def guarded(caller: Contact, args: Any) -> Any:
            try:
                return await handler(caller, args)
            except (_Invalid, StorageError, trio.ClosedResourceError) as exc:
                raise self._translate(method, caller, exc) from None

        return guarded

    def _translate(self, method: str, caller: Contact, exc: Exception) -> RemoteError:
        """Return the RemoteError an error of a request travels as (counted and logged)."""
        if isinstance(exc, _Invalid | InvalidArgument):
            self._invalid += 1
            logger.warning("kv: invalid %s request from %s: %s", method, caller.node_id.hex(), exc)
            return RemoteError("invalid", str(exc))
        if isinstance(exc, NoSpace):
            self._no_space += 1
            logger.warning("kv: %s refused, silo full: %s", method, exc)
            return RemoteError("no_space", str(exc))
        if isinstance(exc, PermissionDenied):
            logger.warning("kv: %s from %s forbidden: %s", method, caller.node_id.hex(), exc)
            return RemoteError("forbidden", str(exc))
        if isinstance(exc, trio.ClosedResourceError):
            return RemoteError("unavailable", "the node is shutting down")
        for kind, code in ERROR_CODES.items():
            if isinstance(exc, kind):
                return RemoteError(code, str(exc))
        return RemoteError("unavailable", str(exc))

    # -- chunks ---------------------------------------------------------------------------

    async def _hash_check(self, size: int, check: Callable[[], object]) -> None:
        if size >= HASH_IN_THREAD_BYTES:
            await trio.to_thread.run_sync(check, limiter=self._limiter)
        else:
            check()

    async def _put(self, caller: Contact, raw: Any) -> Any:
        args = _map(raw)
        address = _address_field(args)
        payload = _bytes_field(args, "payload")
        fragment = _fragment_field(args)
        record: bytes
        try:
            if fragment is None:
                if self._own_id is None or caller.node_id != self._own_id:
                    await self._hash_check(
                        len(payload), functools.partial(verify_replica, address, payload)
                    )
                record = payload
            else:
                manifest_bytes = _bytes_field(args, "manifest")
                manifest = verify_manifest(address, manifest_bytes)
                await self._hash_check(
                    len(payload), functools.partial(verify_fragment, manifest, fragment, payload)
                )
                record = pack_fragment_record(manifest_bytes, payload)
        except Corrupt as exc:
            self._rejected_uploads += 1
            logger.warning(
                "kv: refused %s from %s: %s",
                BlockKey(address, fragment),
                caller.node_id.hex(),
                exc,
            )
            raise _Invalid(str(exc)) from None
        replicas = _replicas_field(args) if fragment is None else None
        # Always (re)written, even when held: a repeated put is how a damaged copy heals.
        await self._silo.put_block(address, record, fragment, replicas=replicas)
        self._blocks_stored += 1
        self._bytes_stored += len(payload)
        return {"stored": True}

    async def _held_fragments(self, address: BlockAddress) -> list[int]:
        keys = await self._silo.list_blocks(after=BlockKey(address, None), limit=64)
        return [k.fragment for k in keys if k.address == address and k.fragment is not None]

    async def _get(self, caller: Contact, raw: Any) -> Any:
        args = _map(raw)
        address = _address_field(args)
        fragment = _fragment_field(args)
        try:
            if fragment is None:
                payload = await self._silo.get_block(address)
                self._blocks_served += 1
                self._bytes_served += len(payload)
                return {"payload": payload}
            skip_raw = args.get("skip", [])
            if not isinstance(skip_raw, list) or not all(type(i) is int for i in skip_raw):
                raise _Invalid("'skip' must be a list of ints")
            skip = set(skip_raw)
            held = await self._held_fragments(address)
            order = ([fragment] if fragment in held else []) + [
                i for i in held if i != fragment and i not in skip
            ]
            if not order:
                raise NotFound(f"no fragment of {address.hex()[:16]} held here")
            corrupt = 0
            for index in order:
                try:
                    record = await self._silo.get_block(address, index)
                    manifest, data = unpack_fragment_record(record)
                except NotFound:
                    continue  # deleted meanwhile
                except Corrupt as exc:
                    corrupt += 1
                    self._corrupt_reads += 1
                    logger.error("kv: corrupt %s not served: %s", BlockKey(address, index), exc)
                    continue
                self._blocks_served += 1
                self._bytes_served += len(data)
                return {"manifest": manifest, "index": index, "fragment": data}
            if corrupt:
                raise Corrupt(f"every fragment of {address.hex()[:16]} held here is unreadable")
            raise NotFound(f"no fragment of {address.hex()[:16]} held here")
        except NotFound:
            self._not_found += 1
            raise
        except Corrupt as exc:
            if fragment is None:
                self._corrupt_reads += 1
                logger.error("kv: corrupt %s not served: %s", BlockKey(address), exc)
            raise

    async def _has(self, caller: Contact, raw: Any) -> Any:
        address = _address_field(_map(raw))
        whole = await self._silo.has_block(address)
        return {"whole": whole, "fragments": await self._held_fragments(address)}

    async def _delete(self, caller: Contact, raw: Any) -> Any:
        address = _address_field(_map(raw))
        deleted = 0
        if await self._silo.delete_block(address):
            deleted += 1
        for index in await self._held_fragments(address):
            if await self._silo.delete_block(address, index):
                deleted += 1
        self._deletes += deleted
        return {"deleted": deleted}

    # -- consensus ------------------------------------------------------------------------

    async def _load_state(self, address: BlockAddress, *, keep: bool) -> AcceptorState:
        """Return the durable state of ``address``; ``keep`` it in the cache if read.

        Only a caller holding the address's lock may keep what it read: without the lock a
        save may commit, and cache its newer state, while this read is in flight.
        """
        state = self._states.get(address)
        if state is not None:
            self._states.move_to_end(address)
            return state
        record = await self._silo.load_paxos(address)
        if record is None:
            return AcceptorState(promised=await self._promise_floor())
        if record.metadata != ACCEPTOR_RECORD_FORMAT or record.value is None:
            raise Corrupt(f"acceptor record of {address.hex()[:16]} has an unknown format")
        state = AcceptorState.from_bytes(record.value)
        if keep:
            self._keep_state(address, state, len(record.value))
        return state

    async def _promise_floor(self) -> Ballot | None:
        """The node-wide promise floor of collected tombstones (read from the silo once).

        Raises:
            Corrupt: the stored floor is unreadable (no consensus message is answered then:
                answering below a forgotten floor could resurrect deleted data).
        """
        if not self._floor_loaded:
            raw = await self._silo.get_setting(PROMISE_FLOOR_SETTING)
            stored = None
            if raw is not None:
                try:
                    stored = Ballot.from_wire(msgpack.unpackb(raw))
                except (ValueError, Corrupt, msgpack.UnpackException) as exc:
                    raise Corrupt(f"promise floor unreadable: {exc}") from None
            if not self._floor_loaded:  # a collect may have raised it while we read
                self._floor = higher_ballot(self._floor, stored)
                self._floor_loaded = True
        return self._floor

    async def _collect(self, caller: Contact, raw: Any) -> Any:
        args = _map(raw)
        address = _address_field(args)
        try:
            ballot = Ballot.from_wire(args.get("ballot"))
        except Corrupt as exc:
            raise _Invalid(f"bad 'ballot': {exc}") from None
        promise_only = args.get("promise_only") is True
        async with self._paxos_locks.hold(address):
            state = await self._load_state(address, keep=False)
            left = Acceptor.collect(state, ballot)
            if left is None or (promise_only and state.accepted_ballot is not None):
                return {"collected": False}  # the register lives again, or not this tombstone
            before = await self._promise_floor()
            if (
                state == left
                and left.promised == before
                and await self._silo.load_paxos(address) is None
            ):
                return {"collected": True}  # nothing held, and the floor already covers it
            floor = higher_ballot(before, left.promised)
            assert floor is not None
            # Raised in memory before the record goes: an acceptor that remembers more than
            # its disk is never less safe.
            self._floor = floor
            self._states.pop(address, None)
            dropped = await self._silo.delete_paxos(
                address, setting=(PROMISE_FLOOR_SETTING, msgpack.packb(floor.to_wire()))
            )
            if dropped:
                self._tombstones_collected += 1
                logger.debug("kv: collected the tombstone of %s at %s", address.hex()[:16], ballot)
        return {"collected": True}

    def _keep_state(self, address: BlockAddress, state: AcceptorState, size: int) -> None:
        """Remember a durable acceptor state (see the module docstring)."""
        if size > STATE_CACHE_MAX_BYTES:
            self._states.pop(address, None)
            return
        self._states[address] = state
        self._states.move_to_end(address)
        if len(self._states) > STATE_CACHE:
            self._states.popitem(last=False)

    def _check_value(
        self, address: BlockAddress, state: AcceptorState, value: RegisterValue
    ) -> bool:
        # The value this acceptor already accepted passed this check when it was accepted:
        # a write-back of it (every read, the first step of a move) needs no new signature
        # check, which is the acceptor's main CPU cost.
        return value == state.value or self._verify(address, value)

    async def _paxos(self, caller: Contact, raw: Any) -> Any:
        args = _map(raw)
        address = _address_field(args)
        message = _bytes_field(args, "message")
        return {"message": await self._consensus_message(caller, address, message)}

    async def _paxos_batch(self, caller: Contact, raw: Any) -> Any:
        batch = _map(raw).get("batch")
        if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_PAXOS_BATCH:
            raise _Invalid(f"'batch' must be a list of 1 to {MAX_PAXOS_BATCH} items")
        results: list[Any] = [None] * len(batch)

        async def one(index: int, item: Any) -> None:
            try:
                if not isinstance(item, list) or len(item) != 2:
                    raise _Invalid("a batch item is [address, message]")
                address = _address_field({"address": item[0]})
                message = _bytes_field({"message": item[1]}, "message")
                results[index] = await self._consensus_message(caller, address, message)
            except (_Invalid, StorageError, trio.ClosedResourceError) as exc:
                error = self._translate("kv.paxos_batch", caller, exc)
                results[index] = [error.code, error.message]

        async with trio.open_nursery() as nursery:
            for index, item in enumerate(batch):
                nursery.start_soon(one, index, item)
        return {"batch": results}

    async def _consensus_message(
        self, caller: Contact, address: BlockAddress, message: bytes
    ) -> bytes:
        """Handle one encoded consensus request for ``address``; return the encoded reply."""
        if len(message) > MAX_PAXOS_MESSAGE:
            raise _Invalid("consensus message too large")
        try:
            request = decode_message(message)
        except Corrupt as exc:
            raise _Invalid(str(exc)) from None
        if isinstance(request, Inspect):
            self._paxos_requests += 1
            self._paxos_inspections += 1
            # Nothing changes, so no lock: the state read is one the acceptor made durable.
            state = await self._load_state(address, keep=False)
            return encode_message(Acceptor.on_inspect(state))
        if not isinstance(request, Prepare | Accept):
            raise _Invalid(f"{type(request).__name__} is not a request")
        self._paxos_requests += 1
        async with self._paxos_locks.hold(address):
            state = await self._load_state(address, keep=True)
            acceptor = Acceptor(verify=functools.partial(self._check_value, address, state))
            new_state, reply = acceptor.handle(state, request)
            # A promise equal to the node-wide floor changes no state, but if the record is
            # absent it exists only as the floor, which may not be durable yet (a collect
            # raises it in memory first): save it as the record's own.
            if new_state != state or (
                isinstance(reply, Promise)
                and state.accepted_ballot is None
                and state.promised == self._floor
            ):
                encoded = new_state.to_bytes()
                # Until the save returns the old state is the durable one; if it fails (or
                # is cancelled) the record may or may not have changed: read it back.
                self._states.pop(address, None)
                await self._silo.save_paxos(
                    address,
                    AcceptorRecord(
                        promised=b""
                        if new_state.promised is None
                        else bytes(msgpack.packb(new_state.promised.to_wire())),
                        accepted=None,
                        value=encoded,
                        metadata=ACCEPTOR_RECORD_FORMAT,
                    ),
                )
                self._keep_state(address, new_state, len(encoded))
                self._paxos_writes += 1
        if isinstance(reply, Reject) and reply.reason is RejectReason.FORBIDDEN:
            self._paxos_forbidden += 1
            logger.warning(
                "kv: refused a proposal for register %s at ballot %s from %s: bad signature",
                address.hex()[:16],
                request.ballot,
                caller.node_id.hex(),
            )
        return encode_message(reply)
