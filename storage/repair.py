"""Self-healing of one node's holdings: repair, rebalancing, drain and scrubbing.

Theory of operation
-------------------
Every storage node runs one :class:`RepairService`. It never waits for a coordinator: each
node looks after what it holds, in *passes*, and the placement rule of
:mod:`storage.repair_plan` says what full redundancy means for each block.

A pass (every ``scan_interval`` seconds, and soon after any membership change: a join, an
eviction, a member starting to drain; on a node holding so much that a pass is long, a pass
that found nothing to do is followed by an idle wait of at least ``1 / max_duty - 1`` times
its duration, so such passes take at most ``max_duty`` of the node's time):

1. **Chunks.** The node pages through its silo. For each block address it asks, in one
   batched ``repair.holdings`` call per node, the block's targets, a window of the next
   nearest eligible members and every draining member which keys of the block they hold,
   then plans (:func:`~storage.repair_plan.plan_replicas`,
   :func:`~storage.repair_plan.plan_fragments`). Plans run with the least redundancy left
   first, ``parallel`` at a time, bandwidth-limited to ``bandwidth`` bytes per second: copies
   are ``kv.put`` calls (durable on the target when they return; the target verifies the
   bytes against the address), rebuilt fragments are decoded from ``k`` verified fragments in
   a worker thread and checked against the manifest before they are sent, and a local copy
   is released only after what replaces it is durable.
2. **Registers.** For each register whose replica set names this node, the first live,
   non-draining member of the set (the *responsible* one; a draining node acts for all of
   its registers) compares the set with the placement rule. If they differ, it moves the
   register by consensus (joint quorums: :meth:`RegisterMover.move_register`); if they
   agree, it asks the members for their accepted ballots and brings a lagging or empty
   member up to date with a write-back round (:meth:`RegisterMover.sync_register`).
3. **Tombstones.** The responsible node of a deleted register (its value is a tombstone,
   not moving) that has seen that deletion (by version: a read's write-back moves it to a
   new ballot, not to a new deletion) for ``tombstone_grace`` asks every member it knows,
   evicted ones included, for its accepted ballot of the register. If all answer, none is
   above the tombstone's ballot ``t`` (the register did not live again) and a majority of
   the replica set holds ``t`` (it is decided), it sends ``kv.collect(t)``
   (:func:`~storage.paxos.collection_order`): first to the nodes holding an older value (a
   lagging or retired acceptor: once the others forget the tombstone, such a value must not
   be left to be read), then to those holding nothing (their floor rises), then to the
   tombstone's holders, itself last, stopping at the first refusal or failure. What is left
   then is the tombstone on some holders: the register still reads as deleted, and if fewer
   than a majority keep it, the next pass's sync writes it back to all (a new ballot) and it
   is collected a grace later. Each acceptor drops the record and keeps a node-wide promise
   floor (:mod:`storage.kv_service`), so no proposer that prepared before ``t`` can get an
   old value accepted afterwards. The grace must exceed any operation's timeout. A member is
   asked until membership forgets it (``forget_after`` after its eviction), so one that is
   down blocks collection until then; a node forgotten by the network must rejoin with an
   empty data directory (as after Cassandra's ``gc_grace_seconds``), since it may hold a
   value whose deletion was collected without it. A record that holds only a promise (a
   proposer probed this node, or never got to accept) is dropped after the grace by its own
   node (``promise_only``: never if it accepted anything): folding a promise into the floor
   forgets nothing.

Eviction repair, join rebalancing and drain are the same pass under a different member
list: an evicted member is no longer eligible, so its blocks have a missing target; a new
member is nearer than an old target, so the old holder copies and releases; a draining
member is not eligible, so everything it holds has targets elsewhere.

**Drain.** :meth:`RepairService.set_draining` persists the flag in the silo, makes the silo
refuse new blocks and new acceptor records (a writer then places on a spare) and announces
the flag through membership (other nodes stop counting this node as a target). Passes then
run back to back until the node holds no block and no register names it; finally it drops
its retired acceptor records (it refuses new ones, so it can never act on a forgotten
promise; a proposer whose hint still names it finds the register through the placement
rule).

**Scrubbing.** Every ``scrub_interval`` the silo re-verifies every record's checksum at
``scrub_rate`` bytes per second (:meth:`storage.silo.Silo.verify_all`). A bad replica is
replaced by a verified copy from another holder; a bad fragment is rebuilt from ``k`` others.
A bad acceptor record is reported and left alone (resetting it could break consensus).

**Visibility.** :meth:`RepairService.statistics`: blocks under target (counted only by the
block's responsible holder, so sums over nodes count each block once), bytes still to move,
copies, rebuilds, moves and releases done, the repair rate, the drain's progress, scrub
results.

Wire format (msgpack): ``repair.holdings`` request ``{"blocks": [address, ...],
"registers": [address, ...]}`` (at most :data:`MAX_QUERY` of each), reply ``{"blocks":
[[key, ...], ...], "registers": [ballot | None, ...], "draining": bool}`` in the same
order, where a key is ``-1`` for a whole block or a fragment index, and a ballot is
``[counter, proposer]``. A node that learns from this reply that a target drains before
gossip told it leaves that block for the next pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from dht.contracts import HandlerRegistry, RemoteCaller
from dht.errors import RemoteError, RpcError
from dht.ids import Contact, NodeId
from dht.membership import Member, MembershipEvent, MemberState

from .chunks import Manifest, is_replica_of, rebuild_fragments, verify_fragment, verify_manifest
from .errors import Conflict, Corrupt, InvalidArgument, NotFound, StorageError, Unavailable
from .ids import BLOCK_ADDRESS_BYTES, BlockAddress
from .kv_service import ACCEPTOR_RECORD_FORMAT, pack_fragment_record, unpack_fragment_record
from .paxos import AcceptorState, Ballot, RegisterValue, collection_order
from .repair_plan import BlockPlan, Copy, Rebuild, by_distance, plan_fragments, plan_replicas
from .repair_plan import targets as placement_targets
from .silo import BlockEntry, BlockKey, PaxosKey, Silo

logger = logging.getLogger(__name__)

__all__ = [
    "HOLDINGS",
    "MAX_QUERY",
    "MemberSource",
    "RegisterMover",
    "RepairConfig",
    "RepairService",
    "RepairStatistics",
]

#: RPC method served by :class:`RepairService`.
HOLDINGS = "repair.holdings"
#: Most addresses of each kind in one ``repair.holdings`` request.
MAX_QUERY = 1024
_DRAINING_SETTING = "repair.draining"
#: Set once a draining node dropped acceptor records: it must never accept records again.
_DROPPED_SETTING = "repair.dropped-records"
_WHOLE = -1


class RegisterMover(Protocol):
    """Consensus operations on registers by address (``storage.kv_client.KVClient``)."""

    async def move_register(
        self, address: BlockAddress, new_set: tuple[NodeId, ...], *, hint: tuple[NodeId, ...]
    ) -> RegisterValue | None:
        """Move the register to ``new_set`` by consensus; return its value (None: absent)."""
        ...

    async def sync_register(
        self, address: BlockAddress, *, hint: tuple[NodeId, ...]
    ) -> RegisterValue | None:
        """Write the register's value back to every acceptor of its configuration."""
        ...


class MemberSource(Protocol):
    """The member list as repair needs it (``dht.membership.Membership``)."""

    own: Contact

    def all_members(self) -> list[Member]:
        """Every entry, evicted ones included."""
        ...

    @property
    def draining(self) -> bool:
        """Whether this node announces that it drains."""
        ...

    def set_draining(self, draining: bool) -> None:
        """Announce (or withdraw) draining."""
        ...

    def subscribe(self, max_buffer_size: int = 1024) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A channel of member state changes."""
        ...


@dataclass(frozen=True)
class RepairConfig:
    """Pace of repair; durations in seconds, rates in bytes per second.

    Attributes:
        scan_interval: time between passes when nothing changes.
        max_duty: most of the time that passes finding nothing to do may take (a pass costs
            tens of microseconds per block held: at a million blocks, ~45 s).
        settle_delay: wait after a membership change before the next pass (changes often come
            in bursts).
        bandwidth: most bytes per second this node sends for repair.
        parallel: blocks repaired at once.
        page: blocks (and registers) planned per holdings query.
        window: further members asked beyond a block's targets (they may hold it after a join).
        rpc_timeout: timeout of each call repair makes.
        scrub_interval: time between scrub passes.
        scrub_rate: most bytes per second a scrub reads.
        tombstone_grace: how long a deleted register's tombstone is kept before it is
            collected (longer than any operation's timeout).
    """

    scan_interval: float = 30.0
    max_duty: float = 0.05
    settle_delay: float = 1.0
    bandwidth: float = 64 * 1024 * 1024
    parallel: int = 4
    page: int = 256
    window: int = 2
    rpc_timeout: float = 10.0
    scrub_interval: float = 24 * 3600.0
    scrub_rate: float = 8 * 1024 * 1024
    tombstone_grace: float = 3600.0

    def __post_init__(self) -> None:
        for name in (
            "scan_interval",
            "bandwidth",
            "rpc_timeout",
            "scrub_interval",
            "scrub_rate",
            "tombstone_grace",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and not math.isnan(value)):
                raise InvalidArgument(f"{name} must be a positive number")
        if self.settle_delay < 0:
            raise InvalidArgument("settle_delay must not be negative")
        if not (isinstance(self.max_duty, int | float) and 0 < self.max_duty <= 1):
            raise InvalidArgument("max_duty must be in (0, 1]")
        for name in ("parallel", "page"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be positive")
        if self.window < 0:
            raise InvalidArgument("window must not be negative")

    def idle_wait(self, pass_seconds: float) -> float:
        """How long to wait, unless woken, after a pass of ``pass_seconds`` that found
        nothing to do: ``scan_interval``, or longer so that passes take at most
        ``max_duty`` of the time."""
        return max(self.scan_interval, pass_seconds * (1 / self.max_duty - 1))


@dataclass(frozen=True)
class RepairStatistics:
    """A snapshot of one node's repair work.

    ``under_target``, ``misplaced`` and ``bytes_to_move`` describe the last complete pass;
    the rest are totals since start.
    """

    draining: bool
    drain_remaining: int
    passes: int
    last_pass_seconds: float
    blocks_examined: int
    registers_examined: int
    under_target: int
    misplaced: int
    bytes_to_move: int
    copies_made: int
    fragments_rebuilt: int
    registers_moved: int
    registers_synced: int
    copies_released: int
    retired_records_dropped: int
    tombstones_collected: int
    promises_dropped: int
    bytes_moved: int
    repair_seconds: float
    repair_rate: float
    failures: int
    scrub_passes: int
    scrubbed_bytes: int
    corrupt_found: int
    corrupt_repaired: int


@dataclass
class _Counters:
    passes: int = 0
    last_pass_seconds: float = 0.0
    blocks_examined: int = 0
    registers_examined: int = 0
    under_target: int = 0
    misplaced: int = 0
    bytes_to_move: int = 0
    copies_made: int = 0
    fragments_rebuilt: int = 0
    registers_moved: int = 0
    registers_synced: int = 0
    copies_released: int = 0
    retired_records_dropped: int = 0
    tombstones_collected: int = 0
    promises_dropped: int = 0
    bytes_moved: int = 0
    repair_seconds: float = 0.0
    failures: int = 0
    scrub_passes: int = 0
    scrubbed_bytes: int = 0
    corrupt_found: int = 0
    corrupt_repaired: int = 0


@dataclass(frozen=True)
class _View:
    """The member list as one pass sees it."""

    own: Contact
    eligible: tuple[Contact, ...]  # neither evicted nor draining
    draining: tuple[Contact, ...]  # not evicted, draining (this node included if it drains)
    live: frozenset[NodeId]  # not evicted
    contacts: Mapping[NodeId, Contact]


@dataclass
class _PassTally:
    under_target: int = 0
    misplaced: int = 0
    bytes_to_move: int = 0
    work: int = 0


Holdings = dict[NodeId, dict[BlockAddress, list[int | None]]]


class RepairService:
    """Keeps the blocks this node holds at their target redundancy (see the module doc).

    Args:
        silo: this node's silo.
        caller: the RPC for outgoing calls.
        members: this node's member list (its draining flag is set through it).
        registers: consensus moves of registers (a ``KVClient``); ``None`` leaves registers
            alone.
        default_replicas: the replica count of a whole block stored without one.
        config: pace and limits.
    """

    def __init__(
        self,
        silo: Silo,
        caller: RemoteCaller,
        members: MemberSource,
        registers: RegisterMover | None,
        *,
        default_replicas: int,
        config: RepairConfig | None = None,
    ) -> None:
        """Configure the service; nothing runs until :meth:`run`."""
        if default_replicas < 1:
            raise InvalidArgument("default_replicas must be positive")
        self._silo = silo
        self._caller = caller
        self._members = members
        self._registers = registers
        self._default_replicas = default_replicas
        self.config = config or RepairConfig()
        self._n = _Counters()
        self._pass_lock = trio.Lock()
        self._wake = trio.Event()
        #: How long the last pass took if it found nothing to do, else 0 (see ``run``).
        self._idle_pass_seconds = 0.0
        self._geometry: dict[BlockAddress, tuple[int, int]] = {}
        self._send_at = 0.0
        self._cpu = trio.CapacityLimiter(1)
        self._limiter = trio.CapacityLimiter(self.config.parallel)
        self._stale_view = False
        #: Tombstones this node is responsible for (by version: a read's write-back moves
        #: them to a new ballot, not to a new deletion) and records holding only a promise
        #: (by ballot): address → (what was seen, when first seen).
        self._tombstones: dict[BlockAddress, tuple[object, float]] = {}

    # -- RPC ------------------------------------------------------------------------------

    def register_handlers(self, registry: HandlerRegistry) -> None:
        """Serve ``repair.holdings`` on ``registry``."""
        registry.register(HOLDINGS, self._handle_holdings)

    async def _handle_holdings(self, caller: Contact, raw: Any) -> Any:
        try:
            blocks = _addresses(raw, "blocks")
            registers = _addresses(raw, "registers")
        except InvalidArgument as exc:
            logger.warning("repair: bad holdings query from %s: %s", caller.node_id.hex(), exc)
            raise RemoteError("invalid", str(exc)) from None
        held = await self._silo.holdings(blocks) if blocks else {}
        ballots = [await self._accepted_ballot(address) for address in registers]
        return {
            "blocks": [[_WHOLE if k is None else k for k in held.get(a, [])] for a in blocks],
            "registers": ballots,
            "draining": self.draining,
        }

    async def _accepted_ballot(self, address: BlockAddress) -> list[Any] | None:
        state = await self._load_state(address)
        if state is None or state.accepted_ballot is None:
            return None
        return state.accepted_ballot.to_wire()

    async def _load_state(self, address: BlockAddress) -> AcceptorState | None:
        try:
            return await self._read_state(address)
        except Corrupt as exc:
            logger.error("repair: acceptor record of %s unreadable: %s", address.hex()[:16], exc)
            return None

    async def _read_state(self, address: BlockAddress) -> AcceptorState | None:
        """This node's acceptor state of ``address`` (None: no record).

        Raises:
            Corrupt: the record is unreadable (it is then left alone).
        """
        record = await self._silo.load_paxos(address)
        if record is None or record.value is None:
            return None
        if record.metadata != ACCEPTOR_RECORD_FORMAT:
            raise Corrupt("unknown acceptor record format")
        return AcceptorState.from_bytes(record.value)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run passes (and scrubs) until cancelled."""
        try:
            draining = await self._silo.get_setting(_DRAINING_SETTING) == b"1"
        except Corrupt as exc:  # cannot tell: draining is the safe side
            logger.error("repair: draining setting unreadable (%s); draining", exc)
            draining = True
        if draining:
            await self.set_draining(True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_members)
            nursery.start_soon(self._scrub_loop)
            task_status.started()
            while True:
                self._wake = trio.Event()  # a change during the pass wakes the next one
                busy = await self.repair_now()
                if busy:
                    await trio.sleep(self.config.settle_delay)
                    continue
                with trio.move_on_after(self.config.idle_wait(self._idle_pass_seconds)):
                    await self._wake.wait()
                    await trio.sleep(self.config.settle_delay)

    async def _watch_members(self) -> None:
        channel = self._members.subscribe()
        async with channel:
            async for event in channel:
                if event.member.state is not MemberState.SUSPECTED:
                    self._wake.set()

    def wake(self) -> None:
        """Start the next pass soon (after ``settle_delay``)."""
        self._wake.set()

    # -- drain ----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether this node is draining."""
        return not self._silo.accepting

    def drain_remaining(self) -> int:
        """Blocks and acceptor records this node still holds."""
        stats = self._silo.statistics()
        return stats.blocks + stats.acceptor_records

    async def set_draining(self, draining: bool) -> None:
        """Start (or stop) draining this node; persisted across restarts.

        Raises:
            InvalidArgument: stopping a drain after it dropped consensus state: the node
                could then answer for promises it forgot (wipe it and join it afresh).
        """
        if not draining and await self._silo.get_setting(_DROPPED_SETTING) is not None:
            raise InvalidArgument(
                "this node dropped consensus state while draining and cannot take blocks "
                "again; remove its data directory and join it as a new node"
            )
        await self._silo.put_setting(_DRAINING_SETTING, b"1" if draining else b"0")
        self._silo.set_accepting(not draining)
        self._members.set_draining(draining)
        logger.info("repair: node %s draining", "now" if draining else "no longer")
        self._wake.set()

    # -- statistics -----------------------------------------------------------------------

    def statistics(self) -> RepairStatistics:
        """Return a snapshot of the counters (see :class:`RepairStatistics`)."""
        n = self._n
        return RepairStatistics(
            draining=self.draining,
            drain_remaining=self.drain_remaining() if self.draining else 0,
            passes=n.passes,
            last_pass_seconds=round(n.last_pass_seconds, 3),
            blocks_examined=n.blocks_examined,
            registers_examined=n.registers_examined,
            under_target=n.under_target,
            misplaced=n.misplaced,
            bytes_to_move=n.bytes_to_move,
            copies_made=n.copies_made,
            fragments_rebuilt=n.fragments_rebuilt,
            registers_moved=n.registers_moved,
            registers_synced=n.registers_synced,
            copies_released=n.copies_released,
            retired_records_dropped=n.retired_records_dropped,
            tombstones_collected=n.tombstones_collected,
            promises_dropped=n.promises_dropped,
            bytes_moved=n.bytes_moved,
            repair_seconds=round(n.repair_seconds, 3),
            repair_rate=round(n.bytes_moved / n.repair_seconds, 1) if n.repair_seconds else 0.0,
            failures=n.failures,
            scrub_passes=n.scrub_passes,
            scrubbed_bytes=n.scrubbed_bytes,
            corrupt_found=n.corrupt_found,
            corrupt_repaired=n.corrupt_repaired,
        )

    # -- one pass -------------------------------------------------------------------------

    def _view(self) -> _View:
        own = self._members.own
        eligible: list[Contact] = []
        draining: list[Contact] = []
        live: set[NodeId] = set()
        contacts: dict[NodeId, Contact] = {}
        for member in self._members.all_members():
            contacts[member.node_id] = member.contact
            if member.state is MemberState.EVICTED:
                continue
            live.add(member.node_id)
            if member.node_id == own.node_id:
                continue
            (draining if member.draining else eligible).append(member.contact)
        live.add(own.node_id)
        contacts[own.node_id] = own
        (draining if self.draining else eligible).append(own)
        return _View(own, tuple(eligible), tuple(draining), frozenset(live), contacts)

    def _progress(self) -> int:
        n = self._n
        return (
            n.copies_made
            + n.fragments_rebuilt
            + n.registers_moved
            + n.registers_synced
            + n.copies_released
            + n.retired_records_dropped
            + n.tombstones_collected
        )

    async def repair_now(self) -> bool:
        """Run one pass now (waiting for a running one); return whether it made progress
        (or must look again soon)."""
        async with self._pass_lock:
            started = trio.current_time()
            before = self._progress()
            self._stale_view = False
            view = self._view()
            tally = _PassTally()
            examined = await self._chunk_pass(view, tally)
            registers = 0
            if self._registers is not None:
                registers = await self._register_pass(view, tally)
            if self.draining and self.drain_remaining() == 0:
                logger.info("repair: drain complete: this node holds nothing")
            n = self._n
            n.passes += 1
            n.last_pass_seconds = trio.current_time() - started
            n.blocks_examined, n.registers_examined = examined, registers
            n.under_target, n.misplaced = tally.under_target, tally.misplaced
            n.bytes_to_move = tally.bytes_to_move
            if tally.work:
                n.repair_seconds += n.last_pass_seconds
            # Only a pass that found nothing to do stretches the wait before the next one: a
            # pass that found work and failed (a copy timed out) is long for want of peers,
            # not of CPU, and is retried after ``scan_interval`` as always.
            self._idle_pass_seconds = 0.0 if tally.work else n.last_pass_seconds
            # Passes repeat at once only while they get somewhere: a failure that persists
            # (a full target, an unreachable acceptor) waits for the next interval or event.
            return self._progress() > before or self._stale_view

    # -- chunks ---------------------------------------------------------------------------

    async def _chunk_pass(self, view: _View, tally: _PassTally) -> int:
        examined = 0
        after: BlockKey | None = None
        while True:
            entries = await self._silo.list_block_entries(after=after, limit=self.config.page)
            if not entries:
                return examined
            full = len(entries) == self.config.page
            groups = _group(entries, keep_last=not full)
            if not groups:  # one address fills a page: take it whole
                groups = _group(entries, keep_last=True)
            examined += len(groups)
            plans = await self._plan_chunks(view, groups)
            for plan, _ in plans:
                tally.under_target += plan.responsible and plan.under_target
                tally.misplaced += bool(plan.release)
            await self._run_plans(plans, tally)
            if not full:
                return examined
            after = groups[-1][-1].key

    async def _plan_chunks(
        self, view: _View, groups: list[list[BlockEntry]]
    ) -> list[tuple[BlockPlan, int]]:
        wanted: dict[NodeId, set[BlockAddress]] = {}
        shapes: list[tuple[list[BlockEntry], list[Contact], list[Contact], int, int]] = []
        for group in groups:
            address = group[0].key.address
            fragments = [e.key.fragment for e in group if e.key.fragment is not None]
            data, parity = 0, 0
            if fragments:
                geometry = await self._fragment_geometry(address, fragments[0])
                if geometry is None:
                    continue
                data, parity = geometry
                count = data + parity
            else:
                count = group[0].replicas or self._default_replicas
            ordered = by_distance(address, view.eligible)
            target_set = ordered[:count]
            others = [*ordered[count : count + count * self.config.window], *view.draining]
            for contact in (*target_set, *others):
                if contact.node_id != view.own.node_id:
                    wanted.setdefault(contact.node_id, set()).add(address)
            shapes.append((group, target_set, others, data, parity))
        holdings, draining = await self._query_blocks(view, wanted)
        plans: list[tuple[BlockPlan, int]] = []
        for group, target_set, others, data, parity in shapes:
            address = group[0].key.address
            if draining.intersection(t.node_id for t in target_set):
                # A target drains and this node has not heard yet: planning on it could
                # release a copy that the target is about to move away. Next pass.
                self._stale_view = True
                continue
            asked = [c for c in (*target_set, *others) if c.node_id in holdings]
            size = max(e.size for e in group)
            if data:
                holders = {
                    node: frozenset(k for k in held.get(address, []) if k is not None)
                    for node, held in holdings.items()
                }
                local = [e.key.fragment for e in group if e.key.fragment is not None]
                plan = plan_fragments(
                    address, view.own, local, data, parity, target_set, holders, asked
                )
            else:
                whole = {node: None in held.get(address, []) for node, held in holdings.items()}
                plan = plan_replicas(address, view.own, target_set, whole, asked)
            plans.append((plan, size))
        return plans

    async def _fragment_geometry(
        self, address: BlockAddress, fragment: int
    ) -> tuple[int, int] | None:
        known = self._geometry.get(address)
        if known is not None:
            return known
        try:
            manifest, _ = await self._local_fragment(address, fragment)
        except (Corrupt, NotFound) as exc:
            logger.warning("repair: fragment %d of %s unusable: %s", fragment, address.hex(), exc)
            return None
        if len(self._geometry) > 100_000:
            self._geometry.clear()
        self._geometry[address] = (manifest.data, manifest.parity)
        return manifest.data, manifest.parity

    async def _local_fragment(self, address: BlockAddress, index: int) -> tuple[Manifest, bytes]:
        record = await self._silo.get_block(address, index)
        raw_manifest, data = unpack_fragment_record(record)
        manifest = verify_manifest(address, raw_manifest)
        verify_fragment(manifest, index, data)
        return manifest, bytes(data)

    async def _query_blocks(
        self, view: _View, wanted: Mapping[NodeId, Iterable[BlockAddress]]
    ) -> tuple[Holdings, set[NodeId]]:
        """What each asked node holds, and which of them said they drain."""
        answers, draining = await self._ask_holdings(view, wanted, "blocks")
        holdings: Holdings = {}
        for node, keys in answers.items():
            try:
                holdings[node] = _parse_keys(keys)
            except InvalidArgument as exc:
                logger.debug("repair: holdings of %s unknown: %s", node.hex()[:8], exc)
        return holdings, draining

    async def _ask_holdings(
        self, view: _View, wanted: Mapping[NodeId, Iterable[BlockAddress]], kind: str
    ) -> tuple[dict[NodeId, dict[BlockAddress, Any]], set[NodeId]]:
        """Ask each node of ``wanted`` (in batches) what it holds of ``kind`` (``"blocks"``
        or ``"registers"``): node → address → its answer, unchecked, and the nodes that
        said they drain. A node that fails or answers out of shape is left out (unknown).
        """
        answers: dict[NodeId, dict[BlockAddress, Any]] = {}
        draining: set[NodeId] = set()

        async def ask(node: NodeId, addresses: list[BlockAddress]) -> None:
            contact = view.contacts.get(node)
            if contact is None:
                return
            query: dict[str, list[BlockAddress]] = {"blocks": [], "registers": []}
            query[kind] = addresses
            try:
                reply = await self._caller.call(
                    contact, HOLDINGS, query, timeout=self.config.rpc_timeout
                )
                got = reply.get(kind) if isinstance(reply, dict) else None
                if not isinstance(got, list) or len(got) != len(addresses):
                    raise InvalidArgument("holdings reply does not match the query")
            except (RpcError, InvalidArgument) as exc:
                logger.debug("repair: %s held by %s unknown: %s", kind, node.hex()[:8], exc)
                return
            answers.setdefault(node, {}).update(zip(addresses, got, strict=True))
            if reply.get("draining") is True:
                draining.add(node)

        async with trio.open_nursery() as nursery:
            for node, addresses in wanted.items():
                batch = sorted(addresses)
                for start in range(0, len(batch), MAX_QUERY):
                    nursery.start_soon(ask, node, batch[start : start + MAX_QUERY])
        return answers, draining

    async def _run_plans(self, plans: list[tuple[BlockPlan, int]], tally: _PassTally) -> None:
        todo = sorted((p for p in plans if not p[0].idle), key=lambda p: p[0].redundancy_left)
        for plan, size in todo:
            tally.work += 1
            tally.bytes_to_move += size * (len(plan.copies) + len(plan.rebuilds))

        async def run(plan: BlockPlan) -> None:
            async with self._limiter:
                await self._execute(plan)

        async with trio.open_nursery() as nursery:
            for plan, _ in todo:
                nursery.start_soon(run, plan)

    async def _execute(self, plan: BlockPlan) -> None:
        try:
            await self._carry_out(plan)
        except Exception:  # a bug or a peer's surprise must not stop the node's repair
            self._n.failures += 1
            logger.exception("repair: plan for %s failed", plan.address.hex()[:16])

    async def _carry_out(self, plan: BlockPlan) -> None:
        done: set[Copy] = set()
        for copy in plan.copies:
            if await self._copy(plan.address, copy):
                done.add(copy)
        for rebuild in plan.rebuilds:
            await self._rebuild(plan.address, rebuild)
        for key, needs in plan.release.items():
            if needs <= done and await self._silo.delete_block(plan.address, key):
                self._n.copies_released += 1
                logger.debug("repair: released %s", BlockKey(plan.address, key))

    async def _copy(self, address: BlockAddress, copy: Copy) -> bool:
        try:
            args = await self._put_args(address, copy.fragment)
        except (Corrupt, NotFound) as exc:
            self._n.failures += 1
            logger.warning("repair: cannot copy %s: %s", BlockKey(address, copy.fragment), exc)
            return False
        if await self._send(copy.target, args):
            self._n.copies_made += 1
            return True
        return False

    async def _put_args(self, address: BlockAddress, fragment: int | None) -> dict[str, Any]:
        if fragment is None:
            payload = await self._silo.get_block(address)
            replicas = await self._replica_target(address)
            return {"address": address, "payload": payload, "replicas": replicas}
        manifest, data = await self._local_fragment(address, fragment)
        return {
            "address": address,
            "payload": data,
            "fragment": fragment,
            "manifest": manifest.to_bytes(),
        }

    async def _replica_target(self, address: BlockAddress) -> int:
        return await self._silo.replica_target(address) or self._default_replicas

    async def _send(self, target: Contact, args: dict[str, Any]) -> bool:
        size = len(args["payload"])
        await self._throttle(size)
        try:
            await self._caller.call(target, "kv.put", args, timeout=self.config.rpc_timeout)
        except RpcError as exc:
            self._n.failures += 1
            logger.info(
                "repair: %s of %s to %s failed: %s",
                "replica" if "fragment" not in args else f"fragment {args['fragment']}",
                bytes(args["address"]).hex()[:16],
                target.node_id.hex()[:8],
                exc,
            )
            return False
        self._n.bytes_moved += size
        return True

    async def _throttle(self, size: int) -> None:
        now = trio.current_time()
        start = max(now, self._send_at)
        self._send_at = start + size / self.config.bandwidth
        await trio.sleep_until(start)

    async def _rebuild(self, address: BlockAddress, rebuild: Rebuild) -> None:
        try:
            fragment, manifest = await self._rebuilt_fragment(address, rebuild.fragment)
        except (StorageError, RpcError) as exc:
            self._n.failures += 1
            logger.warning(
                "repair: cannot rebuild fragment %d of %s: %s",
                rebuild.fragment,
                address.hex()[:16],
                exc,
            )
            return
        args = {
            "address": address,
            "payload": fragment,
            "fragment": rebuild.fragment,
            "manifest": manifest.to_bytes(),
        }
        if await self._send(rebuild.target, args):
            self._n.fragments_rebuilt += 1

    async def _rebuilt_fragment(self, address: BlockAddress, index: int) -> tuple[bytes, Manifest]:
        """Gather ``k`` verified fragments (local first, then any holder) and rebuild ``index``."""
        gathered: dict[int, bytes] = {}
        manifest: Manifest | None = None
        held = await self._silo.holdings([address])
        for local in held.get(address, []):
            if local is None or local == index:
                continue
            try:
                manifest, data = await self._local_fragment(address, local)
                gathered[local] = data
            except (Corrupt, NotFound):
                continue
        view = self._view()
        candidates = [
            c
            for c in by_distance(address, (*view.eligible, *view.draining))
            if c.node_id != view.own.node_id
        ]
        progress = True
        while progress and candidates:  # a node may hold several fragments: ask again
            progress = False
            for contact in list(candidates):
                if manifest is not None and len(gathered) >= manifest.data:
                    break
                got = await self._remote_fragment(address, contact, [index, *gathered])
                if got is None:
                    candidates.remove(contact)
                    continue
                manifest, got_index, data = got
                gathered[got_index] = data
                progress = True
        if manifest is None or len(gathered) < manifest.data:
            needed = manifest.data if manifest is not None else 1
            raise Unavailable(needed, len(gathered), "too few fragments to rebuild from")
        chosen = manifest

        def compute() -> bytes:
            return rebuild_fragments(chosen, gathered, [index])[index]

        fragment = await trio.to_thread.run_sync(compute, limiter=self._cpu)
        return fragment, chosen

    # -- registers ------------------------------------------------------------------------

    async def _remote_fragment(
        self, address: BlockAddress, contact: Contact, skip: list[int]
    ) -> tuple[Manifest, int, bytes] | None:
        """One verified fragment not in ``skip`` from ``contact``, or None."""
        try:
            reply = await self._caller.call(
                contact,
                "kv.get",
                {"address": address, "fragment": skip[0], "skip": skip},
                timeout=self.config.rpc_timeout,
            )
            if not isinstance(reply, dict):
                raise Corrupt("reply is not a map")
            raw_manifest, got_index, data = reply["manifest"], reply["index"], reply["fragment"]
            if not isinstance(raw_manifest, bytes) or not isinstance(data, bytes):
                raise Corrupt("manifest and fragment must be bytes")
            if type(got_index) is not int or got_index in skip:
                raise Corrupt(f"unexpected fragment index {got_index!r}")
            manifest = verify_manifest(address, raw_manifest)
            verify_fragment(manifest, got_index, data)
        except (RpcError, Corrupt, KeyError) as exc:
            logger.debug("repair: no fragment of %s from %s: %s", address.hex()[:16], contact, exc)
            return None
        return manifest, got_index, data

    async def _register_pass(self, view: _View, tally: _PassTally) -> int:
        examined = 0
        after: BlockAddress | None = None
        tombstones: dict[BlockAddress, tuple[object, float]] = {}
        while True:
            addresses = await self._silo.list_paxos(after=after, limit=self.config.page)
            examined += len(addresses)
            in_place: list[tuple[BlockAddress, RegisterValue]] = []
            ripe: list[tuple[BlockAddress, RegisterValue, Ballot]] = []
            promises: list[tuple[BlockAddress, Ballot]] = []
            moves: list[tuple[BlockAddress, RegisterValue, tuple[NodeId, ...]]] = []
            for address in addresses:
                try:
                    state = await self._read_state(address)
                except Corrupt as exc:
                    logger.error("repair: acceptor record %s left alone: %s", address.hex(), exc)
                    continue
                value = None if state is None else state.value
                if value is None or view.own.node_id not in value.config.members:
                    if self.draining:
                        await self._drop_retired(address)
                    elif state is not None and state.promised is not None and value is None:
                        promises.append((address, state.promised))
                    continue
                desired = self._register_targets(address, value, view)
                if desired is None:
                    continue
                if value.is_moving or set(value.replica_set) != set(desired):
                    moves.append((address, value, desired))
                    continue
                in_place.append((address, value))
                if value.is_tombstone and state is not None and not self.draining:
                    ballot = state.accepted_ballot
                    assert ballot is not None
                    seen = self._aged(tombstones, address, ("deleted", value.version))
                    if seen >= self.config.tombstone_grace:
                        ripe.append((address, value, ballot))
            tally.work += len(moves)
            tally.under_target += len(moves)
            async with trio.open_nursery() as nursery:
                for address, value, desired in moves:
                    nursery.start_soon(self._move, address, value, desired)
            await self._sync_lagging(view, in_place, tally)
            await self._collect_tombstones(view, ripe)
            for address, promised in promises:
                seen = self._aged(tombstones, address, ("promised", promised))
                if seen >= self.config.tombstone_grace and await self._tell_collect(
                    view, address, promised, [view.own.node_id], promise_only=True
                ):
                    self._n.promises_dropped += 1
            if len(addresses) < self.config.page:
                self._tombstones = tombstones
                return examined
            after = addresses[-1]

    def _aged(
        self,
        seen_now: dict[BlockAddress, tuple[object, float]],
        address: BlockAddress,
        what: object,
    ) -> float:
        """Note that ``address`` shows ``what`` in this pass; return for how long it has."""
        seen = self._tombstones.get(address)
        if seen is None or seen[0] != what:
            seen = (what, trio.current_time())
        seen_now[address] = seen
        return trio.current_time() - seen[1]

    async def _collect_tombstones(
        self, view: _View, ripe: Sequence[tuple[BlockAddress, RegisterValue, Ballot]]
    ) -> None:
        """Collect tombstones every member agrees are the last word (see the module doc)."""
        if not ripe:
            return
        # Every member this node knows, evicted ones included: a member cut off for a while
        # may hold an older value of the register and come back (it is asked until the
        # membership forgets it).
        others = sorted(set(view.contacts) - {view.own.node_id})
        wanted = {node: [address for address, _, _ in ripe] for node in others}
        ballots, _ = await self._ask_holdings(view, wanted, "registers")
        silent = [node for node in others if node not in ballots]
        if silent:
            logger.info("repair: %d tombstones kept: no answer from %s", len(ripe), _ids(silent))
            return
        own = view.own.node_id
        for address, value, ballot in ripe:
            accepted: dict[NodeId, Ballot | None] = {own: ballot}
            try:
                for node in others:
                    raw = ballots[node].get(address)
                    accepted[node] = None if raw is None else Ballot.from_wire(raw)
            except Corrupt as exc:
                logger.debug("repair: tombstone of %s kept: %s", address.hex()[:16], exc)
                continue
            order = collection_order(value, ballot, accepted, last=own)
            if order is None:
                logger.debug("repair: tombstone of %s not collectable yet", address.hex()[:16])
                continue
            if await self._tell_collect(view, address, ballot, order):
                self._tombstones.pop(address, None)
                self._n.tombstones_collected += 1

    async def _tell_collect(
        self,
        view: _View,
        address: BlockAddress,
        ballot: Ballot,
        nodes: Sequence[NodeId],
        *,
        promise_only: bool = False,
    ) -> bool:
        """Send ``kv.collect`` to ``nodes`` in order; stop at the first that does not."""
        request = {"address": address, "ballot": ballot.to_wire(), "promise_only": promise_only}
        for node in nodes:
            try:
                reply = await self._caller.call(
                    view.contacts[node], "kv.collect", request, timeout=self.config.rpc_timeout
                )
            except RpcError as exc:
                logger.info(
                    "repair: tombstone of %s not collected on %s: %s",
                    address.hex()[:16],
                    node.hex()[:8],
                    exc,
                )
                return False
            if not (isinstance(reply, dict) and reply.get("collected") is True):
                logger.info(
                    "repair: %s refused to collect the tombstone of %s",
                    node.hex()[:8],
                    address.hex()[:16],
                )
                return False
        logger.debug("repair: tombstone of %s collected at %s", address.hex()[:16], ballot)
        return True

    def _register_targets(
        self, address: BlockAddress, value: RegisterValue, view: _View
    ) -> tuple[NodeId, ...] | None:
        """The set ``value`` should live on, or None if another member is responsible."""
        if not self.draining:
            members = [*value.replica_set, *(value.next_replica_set or ())]
            live = [n for n in members if n in view.live]
            draining = {c.node_id for c in view.draining}
            ready = [n for n in live if n not in draining] or live
            if not ready or ready[0] != view.own.node_id:
                return None
        current = value.next_replica_set or value.replica_set
        # Grow back to the network's default after a shrink (the set's size may have been
        # cut while too few members were eligible).
        size = max(len(current), self._default_replicas)
        chosen = placement_targets(address, view.eligible, size)
        if not chosen:
            return None
        draining = {c.node_id for c in view.draining}
        healthy = all(n in view.live and n not in draining for n in current)
        if len(chosen) < len(current) and healthy:
            return tuple(current)  # cannot do better than the healthy set it has
        return tuple(c.node_id for c in chosen)

    async def _move(
        self, address: BlockAddress, value: RegisterValue, desired: tuple[NodeId, ...]
    ) -> None:
        assert self._registers is not None
        hint = tuple(value.replica_set)
        try:
            async with self._limiter:
                await self._registers.move_register(address, desired, hint=hint)
        except (StorageError, RpcError) as exc:
            self._n.failures += 1
            level = logging.INFO if isinstance(exc, Conflict | Unavailable) else logging.WARNING
            logger.log(level, "repair: move of register %s failed: %s", address.hex()[:16], exc)
            return
        self._n.registers_moved += 1
        logger.debug("repair: register %s moved to %s", address.hex()[:16], _ids(desired))

    async def _sync_lagging(
        self,
        view: _View,
        registers: Sequence[tuple[BlockAddress, RegisterValue]],
        tally: _PassTally,
    ) -> None:
        if not registers:
            return
        wanted: dict[NodeId, list[BlockAddress]] = {}
        for address, value in registers:
            for node in value.replica_set:
                if node != view.own.node_id:
                    wanted.setdefault(node, []).append(address)
        ballots, _ = await self._ask_holdings(view, wanted, "registers")
        lagging = []
        for address, value in registers:
            mine = await self._accepted_ballot(address)
            seen = [ballots[n].get(address) for n in value.replica_set if n in ballots]
            if all(b == mine for b in seen):
                continue  # up to date, or a member is unreachable: nothing to sync it with
            lagging.append((address, value))
        tally.work += len(lagging)
        tally.under_target += len(lagging)

        async def sync(address: BlockAddress, value: RegisterValue) -> None:
            assert self._registers is not None
            async with self._limiter:
                try:
                    await self._registers.sync_register(address, hint=tuple(value.replica_set))
                    self._n.registers_synced += 1
                except (StorageError, RpcError) as exc:
                    self._n.failures += 1
                    logger.info("repair: sync of register %s failed: %s", address.hex()[:16], exc)

        async with trio.open_nursery() as nursery:
            for address, value in lagging:
                nursery.start_soon(sync, address, value)

    async def _drop_retired(self, address: BlockAddress) -> None:
        """Drop an acceptor record no configuration needs here (only while draining).

        The silo refuses new acceptor records while draining, and the node may never stop
        draining once it dropped one (:meth:`set_draining`), so it can never answer for a
        promise it forgot: to consensus it is a crashed acceptor.
        """
        await self._silo.put_setting(_DROPPED_SETTING, b"1")
        if await self._silo.delete_paxos(address):
            self._n.retired_records_dropped += 1

    # -- scrubbing ------------------------------------------------------------------------

    async def _scrub_loop(self) -> None:
        while True:
            await trio.sleep(self.config.scrub_interval)
            await self.scrub_now()

    async def scrub_now(self) -> int:
        """Verify every record now (at ``scrub_rate``) and heal bad copies; return the bad count."""
        before = self._silo.statistics()
        bad = await self._silo.verify_all(self.config.scrub_rate)
        self._n.scrub_passes += 1
        self._n.scrubbed_bytes += before.bytes_used
        self._n.corrupt_found += len(bad)
        for key in bad:
            if isinstance(key, BlockKey):
                if await self._heal(key):
                    self._n.corrupt_repaired += 1
            elif isinstance(key, PaxosKey):
                logger.error("repair: acceptor record %s is corrupt; left for an operator", key)
        return len(bad)

    async def _heal(self, key: BlockKey) -> bool:
        """Replace a corrupt local copy by a verified one from other holders."""
        address = key.address
        try:
            if key.fragment is None:
                payload = await self._good_replica(address)
                replicas = await self._replica_target(address)
                await self._silo.put_block(address, payload, replicas=replicas)
            else:
                fragment, manifest = await self._rebuilt_fragment(address, key.fragment)
                record = pack_fragment_record(manifest.to_bytes(), fragment)
                await self._silo.put_block(address, record, key.fragment)
        except (StorageError, RpcError) as exc:
            self._n.failures += 1
            logger.error("repair: corrupt %s not healed: %s", key, exc)
            return False
        except Exception:  # a bug or a peer's surprise must not stop the scrub
            self._n.failures += 1
            logger.exception("repair: corrupt %s not healed", key)
            return False
        logger.warning("repair: corrupt %s replaced by a verified copy", key)
        return True

    async def _good_replica(self, address: BlockAddress) -> bytes:
        view = self._view()
        for contact in by_distance(address, (*view.eligible, *view.draining)):
            if contact.node_id == view.own.node_id:
                continue
            try:
                reply = await self._caller.call(
                    contact, "kv.get", {"address": address}, timeout=self.config.rpc_timeout
                )
                payload = reply["payload"] if isinstance(reply, dict) else None
            except (RpcError, KeyError):
                continue
            if not isinstance(payload, bytes):
                logger.warning("repair: %s answered kv.get with no payload bytes", contact)
                continue
            if is_replica_of(address, payload):
                return payload
            logger.error("repair: %s served a bad copy of %s", contact, address.hex()[:16])
        raise Unavailable(1, 0, "no verified copy found")


# -- helpers ------------------------------------------------------------------------------


def _addresses(raw: Any, name: str) -> list[BlockAddress]:
    if not isinstance(raw, dict):
        raise InvalidArgument("holdings query must be a map")
    value = raw.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_QUERY:
        raise InvalidArgument(f"{name!r} must be a list of at most {MAX_QUERY} addresses")
    if not all(isinstance(a, bytes) and len(a) == BLOCK_ADDRESS_BYTES for a in value):
        raise InvalidArgument(f"{name!r} must hold {BLOCK_ADDRESS_BYTES}-byte addresses")
    return [BlockAddress(a) for a in value]


def _parse_keys(answers: Mapping[BlockAddress, Any]) -> dict[BlockAddress, list[int | None]]:
    """Check one node's block holdings (``-1``: whole block, else fragment indexes)."""
    out: dict[BlockAddress, list[int | None]] = {}
    for address, keys in answers.items():
        if not isinstance(keys, list) or not all(type(k) is int and k >= -1 for k in keys):
            raise InvalidArgument("holdings reply lists malformed keys")
        out[address] = [None if k == _WHOLE else k for k in keys]
    return out


def _group(entries: list[BlockEntry], *, keep_last: bool) -> list[list[BlockEntry]]:
    """Group consecutive entries by address; drop the last group unless ``keep_last``."""
    groups: list[list[BlockEntry]] = []
    for entry in entries:
        if groups and groups[-1][0].key.address == entry.key.address:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    if not keep_last and groups:
        groups.pop()
    return groups


def _ids(nodes: Sequence[NodeId]) -> str:
    return ",".join(n.hex()[:8] for n in nodes)
