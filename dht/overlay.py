"""The overlay facade: Kademlia routing, iterative lookups and membership on one RPC.

:class:`Overlay` wires a :class:`~dht.routing.RoutingTable`, a
:class:`~dht.lookup.NodeLookup` and a :class:`~dht.membership.Membership` onto anything that
implements :class:`~dht.contracts.RemoteCaller` and :class:`~dht.contracts.HandlerRegistry`
(the secure RPC in production, ``tests/fake_network.py`` in tests), and serves
``dht.ping``, ``dht.gossip``, ``dht.find_node`` and ``dht.members``.

How the parts feed each other:

* Every contact heard from directly (an RPC to or from it succeeded) is noted alive in the
  member list and offered to the routing table. When its bucket is full, the bucket head is
  kept without a ping if membership heard from it within two ping intervals, and pinged
  otherwise (dead head: replaced by the newcomer) — Kademlia's least-recently-seen policy.
* An evicted member leaves the routing table; a contact that fails a lookup request leaves
  it too (it comes back when heard from again).
* :meth:`Overlay.closest_nodes` — the placement primitive of ``storage`` — answers from the
  full member list (Infinit's "kouncil"), exactly: the ``k`` non-evicted members, this node
  included, nearest by XOR distance to the key mapped into node space.
  :meth:`Overlay.lookup_nodes` is the O(log n) Kademlia lookup for networks larger than one
  member list should hold.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from .contracts import HandlerRegistry, RemoteCaller
from .ids import Contact, key_to_node_space
from .lookup import FIND_NODE, LookupConfig, LookupResult, LookupStatistics, NodeLookup
from .membership import (
    Member,
    Membership,
    MembershipConfig,
    MembershipEvent,
    MembershipStatistics,
    MemberState,
    entry_to_wire,
)
from .routing import (
    RoutingStatistics,
    RoutingTable,
    contact_to_wire,
    nearest,
    random_id_in_range,
)

logger = logging.getLogger(__name__)

__all__ = ["MEMBERS", "Overlay", "OverlayConfig", "OverlayStatistics"]

#: The read-only member-list RPC for non-members (see the module docstring).
MEMBERS = "dht.members"


@dataclass(frozen=True)
class OverlayConfig:
    """Parameters of the overlay.

    Attributes:
        ksize: Kademlia bucket size ``k`` (also the default lookup result size).
        alpha: parallel requests per lookup round.
        lookup_timeout: seconds one ``dht.find_node`` request may take.
        refresh_interval: a bucket that saw no traffic for this long gets a lookup for a
            random id in its range (the paper uses an hour).
        membership: timing of failure detection and gossip.
    """

    ksize: int = 20
    alpha: int = 3
    lookup_timeout: float = 2.0
    refresh_interval: float = 3600.0
    membership: MembershipConfig = field(default_factory=MembershipConfig)

    def __post_init__(self) -> None:
        if not self.refresh_interval > 0:
            raise ValueError("refresh_interval must be positive")
        LookupConfig(alpha=self.alpha, k=self.ksize, request_timeout=self.lookup_timeout)


@dataclass(frozen=True)
class OverlayStatistics:
    """A snapshot of the overlay and its parts."""

    members: int
    routing: RoutingStatistics
    lookup: LookupStatistics
    membership: MembershipStatistics
    head_pings: int
    head_pings_dropped: int
    refreshes: int


class Overlay:
    """Routing, lookups and membership of one node, served on ``registry``.

    Args:
        own: this node's contact.
        caller: the RPC for outgoing calls.
        registry: where ``dht.ping``, ``dht.gossip``, ``dht.find_node`` and ``dht.members``
            are registered (at construction).
        config: parameters.
        bootstrap: contacts of existing members to join through (empty for the first node).
        rng: randomness for gossip targets and refresh ids (seed it in tests).
        incarnation: starting incarnation; pass a value that grows across restarts
            (``int(time.time())``) — see :class:`~dht.membership.Membership`.
    """

    def __init__(
        self,
        own: Contact,
        caller: RemoteCaller,
        registry: HandlerRegistry,
        *,
        config: OverlayConfig = OverlayConfig(),
        bootstrap: Sequence[Contact] = (),
        rng: random.Random | None = None,
        incarnation: int = 0,
    ) -> None:
        self.own = own
        self.config = config
        self._rng = rng or random.Random()
        self.routing = RoutingTable(own, ksize=config.ksize, clock=_clock)
        self.membership = Membership(
            own,
            caller,
            config=config.membership,
            bootstrap=bootstrap,
            rng=self._rng,
            on_heard=self._heard,
            incarnation=incarnation,
        )
        self.lookups = NodeLookup(
            own,
            self.routing,
            caller,
            config=LookupConfig(
                alpha=config.alpha, k=config.ksize, request_timeout=config.lookup_timeout
            ),
            on_alive=self.membership.note_alive,
            on_unresponsive=self._unresponsive,
            on_caller=self.membership.note_caller,
        )
        self.membership.add_listener(self._member_changed)
        self.membership.register_handlers(registry)
        registry.register(FIND_NODE, self.lookups.handle_find_node)
        registry.register(MEMBERS, self._handle_members)
        self._heads_send, self._heads_receive = trio.open_memory_channel[tuple[Contact, Contact]](
            64
        )
        self._pending_heads: set[bytes] = set()
        self._head_pings = 0
        self._head_pings_dropped = 0
        self._refreshes = 0

    # --- what storage and the node process use ----------------------------------------------

    def closest_nodes(self, key: bytes, k: int) -> list[Contact]:
        """The ``k`` non-evicted members nearest to ``key``, nearest first, exactly.

        ``key`` (a block address, say) is mapped with ``dht.ids.key_to_node_space``; this node
        is a candidate like any other. Answers from the local member list, without I/O.
        """
        if k <= 0:
            return []
        target = key_to_node_space(key)
        return nearest(target, self.membership.live_contacts(), k)

    async def lookup_nodes(self, key: bytes, k: int | None = None) -> LookupResult:
        """Iterative Kademlia FIND_NODE for ``key`` (mapped into node space).

        The result holds the ``k`` (default ``ksize``) closest nodes that answered, this node
        excluded; cost O(log n) requests. Cancellation cancels the outstanding requests.
        """
        target = key_to_node_space(key)
        result = await self.lookups.find_node(target, k)
        self.routing.touch(target)
        return result

    def members(self) -> list[Member]:
        """The non-evicted members (alive or suspected), this node included."""
        return self.membership.members()

    def subscribe(self, max_buffer_size: int = 1024) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A channel of member state changes (see :meth:`Membership.subscribe`)."""
        return self.membership.subscribe(max_buffer_size)

    def note_caller(self, caller: Contact) -> None:
        """Direct evidence that a member called us through any RPC (feeds members, routing).

        Only ``caller.node_id`` is used; the address comes from the member list.
        """
        self.membership.note_caller(caller)

    def statistics(self) -> OverlayStatistics:
        """Statistics of the overlay and its parts."""
        return OverlayStatistics(
            members=len(self.membership.members()),
            routing=self.routing.statistics(),
            lookup=self.lookups.statistics(),
            membership=self.membership.statistics(),
            head_pings=self._head_pings,
            head_pings_dropped=self._head_pings_dropped,
            refreshes=self._refreshes,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, populate the routing table, then keep everything fresh until cancelled.

        ``task_status.started()`` is called once the join attempt and a lookup of our own id
        are done. Cancellation stops membership, head pings and bucket refreshes.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.membership.run)
            nursery.start_soon(self._head_pinger)
            if len(self.routing):
                # Kademlia's join: looking ourselves up fills our buckets and announces us
                # to the nodes nearest to us.
                await self.lookup_nodes(self.own.node_id)
            nursery.start_soon(self._refresh_loop)
            task_status.started()

    async def _handle_members(self, caller: Contact, args: Any) -> dict[str, Any]:
        """Serve ``dht.members``: the member list, read-only (the caller is not added)."""
        del caller, args
        return {
            "members": [entry_to_wire(m) for m in self.membership.all_members()],
            "from": contact_to_wire(self.own),
        }

    # --- wiring -----------------------------------------------------------------------------

    def _heard(self, contact: Contact) -> None:
        """A contact answered or called us: offer it to the routing table."""
        member = self.membership.get(contact.node_id)
        if member is not None and member.state is MemberState.EVICTED:
            return  # it must refute first; it will, on our next exchange
        head = self.routing.add(contact)
        if head is None:
            return
        head_member = self.membership.get(head.node_id)
        fresh = 2 * self.config.membership.ping_interval
        if (
            head_member is not None
            and head_member.state is MemberState.ALIVE
            and _clock() - head_member.last_seen <= fresh
        ):
            self.routing.add(head)  # recently seen: keep it, the newcomer waits as replacement
            return
        key = bytes(head.node_id)
        if key in self._pending_heads:
            return
        try:
            self._heads_send.send_nowait((head, contact))
        except trio.WouldBlock:
            self._head_pings_dropped += 1
            return
        self._pending_heads.add(key)

    async def _head_pinger(self) -> None:
        async for head, newcomer in self._heads_receive:
            self._head_pings += 1
            try:
                if await self.membership.probe(head):
                    self.routing.add(head)
                else:
                    self.routing.remove(head.node_id)
                    self.routing.add(newcomer)
            finally:
                self._pending_heads.discard(bytes(head.node_id))

    def _unresponsive(self, contact: Contact) -> None:
        self.routing.remove(contact.node_id)

    def _member_changed(self, event: MembershipEvent) -> None:
        if event.member.state is MemberState.EVICTED:
            self.routing.remove(event.member.node_id)

    async def _refresh_loop(self) -> None:
        interval = self.config.refresh_interval
        while True:
            await trio.sleep(interval / 4)
            for low, high in self.routing.stale_buckets(interval):
                self._refreshes += 1
                await self.lookup_nodes(random_id_in_range(low, high, self._rng))


def _clock() -> float:
    """Trio's clock inside a run (so MockClock drives it), 0.0 outside one."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0
