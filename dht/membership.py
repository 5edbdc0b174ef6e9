"""Cluster membership: join, gossip of the full member list, SWIM-style failure detection.

Theory of operation
===================

Sources: Das, Gupta & Motivala, "SWIM: Scalable Weakly-consistent Infection-style Process
Group Membership Protocol" (DSN 2002) for suspicion, incarnations and refutation; van
Renesse, Minsky & Hayden, "A Gossip-Style Failure Detection Service" (Middleware 1998) for
anti-entropy of the whole list; Infinit's "kouncil" overlay for keeping the complete member
list on every node of a cluster of up to a few hundred nodes; HashiCorp memberlist/Serf for
retrying dead members so that healed partitions merge again.

Every node keeps one *entry* per member it has heard of: its contact, a *state* (alive,
suspected, evicted), the member's *incarnation* number, whether the member is *draining*
(moving its data away before it leaves; storage places nothing new on it), and local
timestamps (last direct contact, time of the last state change). Entries are ordered by the key
``(incarnation, rank(state))`` with ``alive < suspected < evicted``, and merging two entries
for the same member keeps the larger key. That order is total, so merging is commutative,
associative and idempotent: any two nodes that have exchanged (directly or through others)
the same entries hold the same list, whatever the order of the messages — the member lists
converge once gossip has reached everyone.

Consequences of the order, which are the SWIM rules:

* ``suspected(i)`` overrides ``alive(i)``; ``evicted(i)`` overrides both.
* Only the member itself issues a higher incarnation. When a node learns that it is
  suspected or evicted at incarnation ``i`` >= its own, it *refutes*: it sets its incarnation
  to ``i + 1`` and gossips ``alive(i + 1)``, which overrides the accusation everywhere. This is
  also how an evicted node that comes back is re-admitted, and how a node that restarted
  with incarnation 0 gets ahead of its old entries.
* A node never holds itself as anything but alive.
* The draining flag belongs to an incarnation: only the member changes it, by raising its
  incarnation (:meth:`Membership.set_draining`), so it travels with the entry that wins.
* One deliberate exception to the pure order: a second-hand eviction of a member this node
  heard from directly within the last two ping intervals is adopted as a suspicion only.
  The member is demonstrably up, our next ping carries the suspicion to it, and its
  refutation (a higher incarnation) then dominates everywhere, so convergence still holds;
  what it buys is that the halves of a healed partition do not evict live nodes in passing.

Failure detection: every ``ping_interval`` a node pings the non-evicted members (all of them,
or ``probes_per_interval`` in round-robin order for large clusters) with ``ping_timeout``.
A member that misses ``suspect_after`` consecutive pings becomes *suspected* at its current
incarnation; a suspected member that has not refuted within ``eviction_delay`` (measured from
when this node came to suspect it) becomes *evicted*. Pings carry the pinger's view of the
target and the reply the target's view of the pinger, so a wrongly suspected node refutes on
the next ping it receives. With every member probed each interval, a dead member is
suspected by every live node within ``suspect_after * ping_interval + ping_timeout`` and
evicted ``eviction_delay`` (+ one ping interval of timer granularity) after that.

Dissemination: every ``gossip_interval`` a node sends its whole list to ``gossip_fanout``
random non-evicted members, which merge it and answer with their merged list (push-pull), so
news reaches everyone in O(log n) intervals. Evicted members are not probed, but every
``reconnect_interval`` a node push-pulls with one evicted member (or a bootstrap contact
when it knows nobody), so the halves of a healed partition find each other; evicted entries
are forgotten after ``forget_after``.

Joining is a push-pull with any reachable bootstrap contact. Every state change of another
member is published to subscribers (trio memory channels and callbacks); storage repair
listens for evictions.

Trust: entries about third parties are second-hand claims of authenticated members (the
transport checks passports); the id of a gossiped contact must be the hash of its key.

Wire format (msgpack):

* ``dht.ping``: request ``{"inc": int, "view": [state, inc] | None, "draining": bool,
  "from": contact}`` (the caller's own incarnation, what it believes about the callee, its
  draining flag, and its own contact, whose id must be the authenticated caller's); reply
  ``{"inc": int, "view": [state, inc] | None, "draining": bool}`` from the callee's side.
  Handlers never take an address from the transport: the address of an incoming
  connection may be an ephemeral port, so addresses come from the members' own declarations
  (the ``from`` of a ping, a member's own entry in its gossip).
* ``dht.gossip``: request and reply ``{"members": [[contact, state, inc, draining], ...],
  "from": contact}`` where ``contact`` is ``[node_id, host, port, public_key]``, ``state`` is
  ``"alive"``, ``"suspected"`` or ``"evicted"`` and ``draining`` a bool (optional: a 3-element
  entry is not draining); ``from`` is the sender's own contact (its
  id must be the authenticated peer's; a reply to an address-only bootstrap call is how the
  joiner learns its bootstrap node's id).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio

from .contracts import HandlerRegistry, RemoteCaller
from .errors import PeerUnreachable, RemoteError, RemoteProtocolError, RpcTimeout
from .ids import Contact, NodeId
from .routing import contact_from_wire, contact_to_wire

logger = logging.getLogger(__name__)

__all__ = [
    "GOSSIP",
    "PING",
    "Member",
    "MemberState",
    "MemberTable",
    "Membership",
    "MembershipConfig",
    "MembershipEvent",
    "MembershipStatistics",
]

#: RPC method names served by :class:`Membership`.
PING = "dht.ping"
GOSSIP = "dht.gossip"

#: Largest member list accepted in one gossip message.
MAX_MEMBERS = 16384


class MemberState(enum.Enum):
    """What a node believes about a member."""

    ALIVE = "alive"
    SUSPECTED = "suspected"
    EVICTED = "evicted"


_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECTED: 1, MemberState.EVICTED: 2}


@dataclass(frozen=True)
class Member:
    """One entry of the member list.

    Attributes:
        contact: the member's id, address and public key.
        state: alive, suspected or evicted.
        incarnation: the member's own version counter (only the member raises it).
        last_seen: local time of the last direct contact (or of first hearing of it).
        state_since: local time when this node adopted ``state``.
        draining: the member is moving its data away (set by the member itself).
    """

    contact: Contact
    state: MemberState
    incarnation: int
    last_seen: float
    state_since: float
    draining: bool = False

    @property
    def node_id(self) -> NodeId:
        """The member's node id."""
        return self.contact.node_id

    @property
    def version(self) -> tuple[int, int]:
        """The merge key: larger wins."""
        return (self.incarnation, _RANK[self.state])


@dataclass(frozen=True)
class MembershipEvent:
    """A member changed state (``previous`` is ``None`` for a member heard of first)."""

    member: Member
    previous: MemberState | None


@dataclass(frozen=True)
class MembershipConfig:
    """Timing and fan-out of membership; all durations in seconds.

    Attributes:
        ping_interval: period of failure-detection pings.
        ping_timeout: how long one ping may take (at most ``ping_interval``).
        suspect_after: consecutive missed pings before a member is suspected.
        eviction_delay: time a member stays suspected before it is evicted.
        gossip_interval: period of push-pull gossip.
        gossip_fanout: members gossiped with per interval.
        gossip_timeout: how long one gossip exchange may take.
        probes_per_interval: members pinged per interval, in round-robin order; ``None``
            pings all (the default, fine up to a few hundred members). With ``m`` probes, each
            node reaches a given member only every ``ceil((n - 1) / m)`` intervals, and the
            detection time grows by that factor.
        reconnect_interval: period of attempts to reach an evicted member or a bootstrap
            contact (heals partitions, retries a failed join).
        forget_after: evicted entries are dropped this long after eviction.
    """

    ping_interval: float = 1.0
    ping_timeout: float = 0.5
    suspect_after: int = 3
    eviction_delay: float = 30.0
    gossip_interval: float = 1.0
    gossip_fanout: int = 3
    gossip_timeout: float = 2.0
    probes_per_interval: int | None = None
    reconnect_interval: float = 10.0
    forget_after: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.ping_timeout <= self.ping_interval:
            raise ValueError("need 0 < ping_timeout <= ping_interval")
        if self.suspect_after < 1 or self.gossip_fanout < 1:
            raise ValueError("suspect_after and gossip_fanout must be positive")
        if self.probes_per_interval is not None and self.probes_per_interval < 1:
            raise ValueError("probes_per_interval must be positive or None")
        for name in ("eviction_delay", "gossip_interval", "gossip_timeout", "reconnect_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.forget_after < self.eviction_delay:
            raise ValueError("forget_after must be at least eviction_delay")

    @property
    def detection_time(self) -> float:
        """Upper bound for a dead member to be suspected when every member is probed."""
        return self.suspect_after * self.ping_interval + self.ping_timeout


@dataclass(frozen=True)
class MembershipStatistics:
    """Counters and a census of a :class:`Membership`."""

    alive: int
    suspected: int
    evicted: int
    incarnation: int
    pings_sent: int
    pings_failed: int
    gossip_sent: int
    gossip_failed: int
    gossip_received: int
    suspicions: int
    evictions: int
    refutations: int
    readmissions: int
    events_published: int
    events_dropped: int
    subscribers: int


# --- the member list: pure, synchronous ----------------------------------------------------


def entry_to_wire(member: Member) -> list[Any]:
    """Encode an entry as ``[contact, state, incarnation, draining]``."""
    return [
        contact_to_wire(member.contact),
        member.state.value,
        member.incarnation,
        member.draining,
    ]


def entry_from_wire(obj: object) -> tuple[Contact, MemberState, int, bool]:
    """Decode ``[contact, state, incarnation, draining]`` (``draining`` may be absent).

    Raises:
        RemoteProtocolError: the entry is malformed.
    """
    if not isinstance(obj, list | tuple) or len(obj) not in (3, 4):
        raise RemoteProtocolError("member entry must be a 3- or 4-element array")
    draining = obj[3] if len(obj) == 4 else False
    if not isinstance(draining, bool):
        raise RemoteProtocolError("member draining flag must be a bool")
    contact = contact_from_wire(obj[0])
    return (contact, *view_from_wire(obj[1:3]), draining)


def view_from_wire(obj: object) -> tuple[MemberState, int]:
    """Decode ``[state, incarnation]``.

    Raises:
        RemoteProtocolError: malformed.
    """
    if not isinstance(obj, list | tuple) or len(obj) != 2:
        raise RemoteProtocolError("member view must be [state, incarnation]")
    state, incarnation = obj
    try:
        parsed = MemberState(state)
    except ValueError:
        raise RemoteProtocolError(f"unknown member state {state!r:.40}") from None
    if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
        raise RemoteProtocolError("incarnation must be a non-negative integer")
    if incarnation >= 2**63:
        raise RemoteProtocolError("incarnation out of range")
    return parsed, incarnation


class MemberTable:
    """The member list and its merge rule, without I/O or clocks (times are arguments).

    Args:
        own: this node, always present and alive.
        now: the current local time.
        incarnation: this node's starting incarnation.
    """

    def __init__(self, own: Contact, now: float = 0.0, *, incarnation: int = 0) -> None:
        self.own = own
        self._members: dict[bytes, Member] = {
            bytes(own.node_id): Member(own, MemberState.ALIVE, incarnation, now, now)
        }
        self.refutations = 0

    @property
    def incarnation(self) -> int:
        """This node's own incarnation."""
        return self._members[bytes(self.own.node_id)].incarnation

    def get(self, node_id: bytes) -> Member | None:
        """The entry for ``node_id``, if any."""
        return self._members.get(bytes(node_id))

    def __len__(self) -> int:
        return len(self._members)

    def all(self) -> list[Member]:
        """Every entry, this node's included, evicted ones included."""
        return list(self._members.values())

    def live(self) -> list[Member]:
        """Entries not evicted (alive or suspected), this node's included."""
        return [m for m in self._members.values() if m.state is not MemberState.EVICTED]

    def hear_about_self(self, state: MemberState, incarnation: int, now: float) -> None:
        """Someone claims ``state`` at ``incarnation`` about us: stay alive, and newest."""
        me = self._members[bytes(self.own.node_id)]
        if state is MemberState.ALIVE:
            bumped = max(me.incarnation, incarnation)
        elif incarnation >= me.incarnation:
            bumped = incarnation + 1
            self.refutations += 1
            logger.info("refuting %s at incarnation %d: now %d", state.value, incarnation, bumped)
        else:
            return
        if bumped != me.incarnation:
            self._members[bytes(self.own.node_id)] = replace(
                me, incarnation=bumped, last_seen=now, state_since=now
            )

    def set_own_draining(self, draining: bool, now: float) -> bool:
        """Set this node's draining flag under a new incarnation; return whether it changed."""
        me = self._members[bytes(self.own.node_id)]
        if me.draining == draining:
            return False
        self._members[bytes(self.own.node_id)] = replace(
            me, incarnation=me.incarnation + 1, draining=draining, last_seen=now, state_since=now
        )
        return True

    def merge(
        self,
        contact: Contact,
        state: MemberState,
        incarnation: int,
        now: float,
        *,
        vouch_within: float | None = None,
        draining: bool = False,
    ) -> MembershipEvent | None:
        """Fold one entry in by the ``(incarnation, state)`` order.

        Args:
            draining: the entry's draining flag (kept with the entry if it wins).
            vouch_within: if given, a second-hand *eviction* of a member we heard from
                directly within this many seconds is taken as a suspicion only: the member
                is demonstrably up and will refute on our next ping (this keeps a healed
                partition from evicting live nodes in passing).

        Returns:
            The resulting state change of another member, if any (news about an evicted
            member we never knew is recorded but not reported).
        """
        key = bytes(contact.node_id)
        if key == bytes(self.own.node_id):
            self.hear_about_self(state, incarnation, now)
            return None
        old = self._members.get(key)
        if (
            vouch_within is not None
            and state is MemberState.EVICTED
            and old is not None
            and old.state is not MemberState.EVICTED
            and now - old.last_seen <= vouch_within
        ):
            state = MemberState.SUSPECTED
        if old is not None and (incarnation, _RANK[state]) <= old.version:
            return None
        if old is None:
            new = Member(contact, state, incarnation, now, now, draining)
        else:
            since = now if state is not old.state else old.state_since
            new = Member(contact, state, incarnation, old.last_seen, since, draining)
        self._members[key] = new
        previous = None if old is None else old.state
        if previous is state and old is not None and old.draining != draining:
            return MembershipEvent(new, previous)  # only the draining flag changed
        if previous is state or (previous is None and state is MemberState.EVICTED):
            return None
        return MembershipEvent(new, previous)

    def heard_from(self, contact: Contact, now: float) -> MembershipEvent | None:
        """Direct contact with ``contact``: refresh ``last_seen``; add it if new."""
        key = bytes(contact.node_id)
        if key == bytes(self.own.node_id):
            return None
        old = self._members.get(key)
        if old is None:
            new = Member(contact, MemberState.ALIVE, 0, now, now)
            self._members[key] = new
            return MembershipEvent(new, None)
        self._members[key] = replace(old, last_seen=now)
        return None

    def suspect(self, node_id: bytes, now: float) -> MembershipEvent | None:
        """Local decision: an alive member missed too many pings."""
        old = self._members.get(bytes(node_id))
        if old is None or old.state is not MemberState.ALIVE or node_id == self.own.node_id:
            return None
        return self.merge(
            old.contact, MemberState.SUSPECTED, old.incarnation, now, draining=old.draining
        )

    def evict_overdue(self, now: float, eviction_delay: float) -> list[MembershipEvent]:
        """Local decision: evict members suspected for ``eviction_delay`` or longer."""
        events = []
        for m in list(self._members.values()):
            if m.state is MemberState.SUSPECTED and now - m.state_since >= eviction_delay:
                event = self.merge(
                    m.contact, MemberState.EVICTED, m.incarnation, now, draining=m.draining
                )
                if event is not None:
                    events.append(event)
        return events

    def forget(self, now: float, forget_after: float) -> int:
        """Drop evicted entries older than ``forget_after``; return how many."""
        old = [
            key
            for key, m in self._members.items()
            if m.state is MemberState.EVICTED and now - m.state_since >= forget_after
        ]
        for key in old:
            del self._members[key]
        return len(old)

    def to_wire(self) -> list[list[Any]]:
        """Every entry in wire form (what a gossip message carries)."""
        return [entry_to_wire(m) for m in self._members.values()]


# --- the service ---------------------------------------------------------------------------


class Membership:
    """Keeps this node's member list current: joins, gossips, detects failures.

    Args:
        own: this node.
        caller: the RPC for outgoing calls.
        config: timing and fan-out.
        bootstrap: contacts to join through (any live member will do). A contact may have an
            empty node id (an address only) if the RPC accepts that, as ``dht.rpc`` does;
            the peer's own contact then comes from its answer.
        rng: randomness for target selection (seed it in tests).
        on_heard: called with every contact heard from directly (the overlay feeds its
            routing table with it).
        incarnation: the starting incarnation. A node process should pass something that
            grows across restarts (``int(time.time())``, say) so that a restarted node, perhaps
            at a new address, supersedes the entries of its previous life at once instead of
            waiting to be suspected.
    """

    def __init__(
        self,
        own: Contact,
        caller: RemoteCaller,
        *,
        config: MembershipConfig = MembershipConfig(),
        bootstrap: Sequence[Contact] = (),
        rng: random.Random | None = None,
        on_heard: Callable[[Contact], None] | None = None,
        incarnation: int = 0,
    ) -> None:
        self.own = own
        self.config = config
        self.bootstrap = [c for c in bootstrap if c.node_id != own.node_id]
        self._caller = caller
        self._rng = rng or random.Random()
        self._on_heard = on_heard or (lambda _c: None)
        self._table = MemberTable(own, self._now(), incarnation=incarnation)
        self._missed: dict[bytes, int] = {}
        self._probe_queue: list[bytes] = []
        self._listeners: list[Callable[[MembershipEvent], None]] = []
        self._channels: list[trio.MemorySendChannel[MembershipEvent]] = []
        self._pings_sent = self._pings_failed = 0
        self._gossip_sent = self._gossip_failed = self._gossip_received = 0
        self._suspicions = self._evictions = self._readmissions = 0
        self._published = self._dropped = 0

    @staticmethod
    def _now() -> float:
        try:
            return trio.current_time()
        except RuntimeError:  # constructed outside trio (a sync test); times start at 0
            return 0.0

    # --- queries ---------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Members not evicted (alive or suspected), this node included."""
        return self._table.live()

    def all_members(self) -> list[Member]:
        """Every entry, evicted members included."""
        return self._table.all()

    def live_contacts(self) -> list[Contact]:
        """Contacts of the members not evicted, this node included."""
        return [m.contact for m in self._table.live()]

    def get(self, node_id: bytes) -> Member | None:
        """The entry for ``node_id``, if any."""
        return self._table.get(node_id)

    @property
    def incarnation(self) -> int:
        """This node's current incarnation."""
        return self._table.incarnation

    @property
    def draining(self) -> bool:
        """Whether this node announces that it is draining."""
        me = self._table.get(self.own.node_id)
        return me is not None and me.draining

    def set_draining(self, draining: bool) -> None:
        """Announce (or withdraw) that this node is draining, under a new incarnation.

        Storage then places nothing new here and moves what this node holds elsewhere.
        """
        if self._table.set_own_draining(draining, self._now()):
            logger.info(
                "membership: this node %s draining (incarnation %d)",
                "is" if draining else "is no longer",
                self._table.incarnation,
            )

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(self, max_buffer_size: int = 1024) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A channel receiving every later state change of another member.

        A subscriber that falls ``max_buffer_size`` events behind loses events (counted in
        ``events_dropped``); closing the receive end unsubscribes.
        """
        send, receive = trio.open_memory_channel[MembershipEvent](max_buffer_size)
        self._channels.append(send)
        return receive

    def add_listener(self, callback: Callable[[MembershipEvent], None]) -> None:
        """Call ``callback`` synchronously on every state change (it must not block)."""
        self._listeners.append(callback)

    def _publish(self, event: MembershipEvent | None) -> None:
        if event is None:
            return
        self._published += 1
        m = event.member
        if event.previous is MemberState.EVICTED and m.state is not MemberState.EVICTED:
            self._readmissions += 1
        log = logger.info if event.previous is not None else logger.debug
        log(
            "member %s (%s) %s -> %s at incarnation %d",
            m.node_id.hex()[:12],
            m.contact.address,
            event.previous.value if event.previous else "new",
            m.state.value,
            m.incarnation,
        )
        if m.state is not MemberState.ALIVE:
            self._missed.pop(bytes(m.node_id), None)
        for callback in list(self._listeners):
            callback(event)
        for channel in list(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._channels.remove(channel)

    # --- merging ---------------------------------------------------------------------------

    def note_alive(self, contact: Contact) -> None:
        """Direct evidence that ``contact`` is up: a call we made to this address succeeded."""
        self._publish(self._table.heard_from(contact, self._now()))
        self._on_heard(contact)

    def note_caller(self, caller: Contact) -> None:
        """Direct evidence that a member called us (the caller of an incoming RPC).

        Only the authenticated node id is trusted: the address a transport reports for an
        incoming connection may be an ephemeral port, so the member's own entry supplies
        the address, and a caller not yet in the list is not added here.
        """
        member = self._table.get(caller.node_id)
        if member is not None:
            self.note_alive(member.contact)

    def _merge(
        self, contact: Contact, state: MemberState, incarnation: int, draining: bool
    ) -> None:
        vouch = 2 * self.config.ping_interval
        self._publish(
            self._table.merge(
                contact, state, incarnation, self._now(), vouch_within=vouch, draining=draining
            )
        )

    def _merge_wire(self, entries: object) -> None:
        """Merge a wire member list (raises RemoteProtocolError before merging anything)."""
        if not isinstance(entries, list | tuple) or len(entries) > MAX_MEMBERS:
            raise RemoteProtocolError("members must be an array of bounded length")
        decoded = [entry_from_wire(e) for e in entries]
        for contact, state, incarnation, draining in decoded:
            self._merge(contact, state, incarnation, draining)

    def _view_of(self, node_id: bytes) -> list[Any] | None:
        m = self._table.get(node_id)
        return None if m is None else [m.state.value, m.incarnation]

    def _ping_args(self, peer: Contact, *, request: bool) -> dict[str, Any]:
        args = {
            "inc": self._table.incarnation,
            "view": self._view_of(peer.node_id),
            "draining": self.draining,
        }
        if request:
            args["from"] = contact_to_wire(self.own)
        return args

    def _take_ping(self, peer: Contact, args: object, *, request: bool) -> None:
        """Fold a ping request (from ``peer``) or reply (of ``peer``) in.

        Raises:
            RemoteProtocolError: malformed, or a request whose declared contact is not the
                authenticated caller's.
        """
        if not isinstance(args, dict):
            raise RemoteProtocolError("ping must be a map")
        if request:
            peer = self._sender(args, peer)
        incarnation = args.get("inc")
        if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
            raise RemoteProtocolError("ping incarnation must be a non-negative integer")
        view = args.get("view")
        about_me = None if view is None else view_from_wire(view)
        draining = args.get("draining", False)
        if not isinstance(draining, bool):
            raise RemoteProtocolError("ping draining flag must be a bool")
        self._merge(peer, MemberState.ALIVE, incarnation, draining)
        self.note_alive(peer)
        if about_me is not None:
            self._table.hear_about_self(*about_me, self._now())

    # --- handlers --------------------------------------------------------------------------

    def register_handlers(self, registry: HandlerRegistry) -> None:
        """Serve ``dht.ping`` and ``dht.gossip`` on ``registry``."""
        registry.register(PING, self.handle_ping)
        registry.register(GOSSIP, self.handle_gossip)

    async def handle_ping(self, caller: Contact, args: Any) -> dict[str, Any]:
        """Serve ``dht.ping``: note the caller alive, refute suspicion of us, answer views.

        Raises:
            RemoteError: ``"bad_request"`` on malformed arguments.
        """
        try:
            self._take_ping(caller, args, request=True)
        except RemoteProtocolError as exc:
            raise RemoteError("bad_request", str(exc)) from None
        return self._ping_args(caller, request=False)

    async def handle_gossip(self, caller: Contact, args: Any) -> dict[str, Any]:
        """Serve ``dht.gossip``: merge the caller's list, answer with the merged one.

        Raises:
            RemoteError: ``"bad_request"`` on malformed arguments.
        """
        self._gossip_received += 1
        try:
            if not isinstance(args, dict):
                raise RemoteProtocolError("gossip must be a map")
            declared = self._sender(args, caller)
            self._merge_wire(args.get("members"))
        except RemoteProtocolError as exc:
            raise RemoteError("bad_request", str(exc)) from None
        self.note_alive(declared)
        return self._gossip_message()

    def _gossip_message(self) -> dict[str, Any]:
        return {"members": self._table.to_wire(), "from": contact_to_wire(self.own)}

    @staticmethod
    def _sender(message: dict[Any, Any], peer: Contact) -> Contact:
        """The contact a message declares for its sender, checked against ``peer``'s id.

        ``peer`` may have an empty id: a bootstrap contact known by address only.

        Raises:
            RemoteProtocolError: missing, malformed, or another node's contact.
        """
        declared = contact_from_wire(message.get("from"))
        if peer.node_id and declared.node_id != peer.node_id:
            raise RemoteProtocolError("message sender is not the authenticated peer")
        return declared

    # --- outgoing --------------------------------------------------------------------------

    async def probe(self, contact: Contact) -> bool:
        """Ping ``contact`` once; return whether it answered (a typed error counts)."""
        self._pings_sent += 1
        try:
            reply = await self._caller.call(
                contact,
                PING,
                self._ping_args(contact, request=True),
                timeout=self.config.ping_timeout,
            )
        except (PeerUnreachable, RpcTimeout):
            self._pings_failed += 1
            return False
        except RemoteError as exc:
            logger.info("ping to %s answered an error: %s", contact.address, exc)
            self.note_alive(contact)
            return True
        try:
            self._take_ping(contact, reply, request=False)
        except RemoteProtocolError as exc:
            logger.warning("bad ping reply from %s: %s", contact.address, exc)
        return True

    async def _probe_member(self, contact: Contact) -> None:
        key = bytes(contact.node_id)
        if await self.probe(contact):
            self._missed.pop(key, None)
            return
        member = self._table.get(key)
        if member is None or member.state is not MemberState.ALIVE:
            return
        missed = self._missed.get(key, 0) + 1
        self._missed[key] = missed
        if missed >= self.config.suspect_after:
            event = self._table.suspect(key, self._now())
            if event is not None:
                self._suspicions += 1
                self._publish(event)

    async def push_pull(self, contact: Contact) -> bool:
        """Exchange member lists with ``contact``; return whether it answered."""
        self._gossip_sent += 1
        try:
            reply = await self._caller.call(
                contact, GOSSIP, self._gossip_message(), timeout=self.config.gossip_timeout
            )
            if not isinstance(reply, dict):
                raise RemoteProtocolError("gossip reply must be a map")
            declared = self._sender(reply, contact)
            self._merge_wire(reply.get("members"))
        except (PeerUnreachable, RpcTimeout) as exc:
            logger.debug("gossip to %s failed: %r", contact.address, exc)
            self._gossip_failed += 1
            return False
        except (RemoteError, RemoteProtocolError) as exc:
            logger.warning("gossip with %s failed: %s", contact.address, exc)
            self._gossip_failed += 1
            return False
        self.note_alive(declared)
        return True

    async def join(self, contacts: Sequence[Contact] | None = None) -> bool:
        """Push-pull with the first reachable of ``contacts`` (default: the bootstrap list).

        Returns:
            Whether some contact answered; ``True`` with nothing to join (a first node).
        """
        source = self.bootstrap if contacts is None else contacts
        candidates = [c for c in source if c.node_id != self.own.node_id]
        if not candidates:
            return True
        self._rng.shuffle(candidates)
        for contact in candidates:
            if await self.push_pull(contact):
                logger.info("joined through %s: %d members", contact.address, len(self.members()))
                return True
        logger.warning("join failed: none of %d bootstrap contacts answered", len(candidates))
        return False

    def _next_probes(self) -> list[Contact]:
        others = [m for m in self._table.live() if m.node_id != self.own.node_id]
        limit = self.config.probes_per_interval
        if limit is None or limit >= len(others):
            return [m.contact for m in others]
        live = {bytes(m.node_id): m.contact for m in others}
        chosen: list[Contact] = []
        while len(chosen) < limit:
            if not self._probe_queue:
                self._probe_queue = list(live)
                self._rng.shuffle(self._probe_queue)
            key = self._probe_queue.pop()
            if key in live and live[key] not in chosen:
                chosen.append(live[key])
        return chosen

    def _gossip_targets(self) -> list[Contact]:
        others = [m.contact for m in self._table.live() if m.node_id != self.own.node_id]
        return self._rng.sample(others, min(self.config.gossip_fanout, len(others)))

    def _reconnect_target(self) -> Contact | None:
        members = self._table.live()
        live = {bytes(m.node_id) for m in members}
        addresses = {m.contact.address for m in members}
        candidates = [m.contact for m in self._table.all() if bytes(m.node_id) not in live]
        candidates += [
            c
            for c in self.bootstrap
            if bytes(c.node_id) not in live and (c.node_id or c.address not in addresses)
        ]
        if len(live) <= 1:
            candidates += self.bootstrap
        return self._rng.choice(candidates) if candidates else None

    # --- the service -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, then ping, gossip and reconnect until cancelled.

        ``task_status.started()`` is called after the first join attempt (successful or not;
        a failed join is retried by the reconnect loop). Cancellation stops every loop; the
        member list stays readable afterwards.
        """
        await self.join()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_loop)
            nursery.start_soon(self._gossip_loop)
            nursery.start_soon(self._reconnect_loop)
            task_status.started()

    async def _ping_loop(self) -> None:
        config = self.config
        # A random phase keeps the members of a cluster from pinging in lockstep.
        tick = trio.current_time() + self._rng.uniform(0, config.ping_interval)
        await trio.sleep_until(tick)
        while True:
            async with trio.open_nursery() as nursery:
                for contact in self._next_probes():
                    nursery.start_soon(self._probe_member, contact)
            now = trio.current_time()
            for event in self._table.evict_overdue(now, config.eviction_delay):
                self._evictions += 1
                self._publish(event)
            self._table.forget(now, config.forget_after)
            tick = max(tick + config.ping_interval, now)
            await trio.sleep_until(tick)

    async def _gossip_loop(self) -> None:
        while True:
            await trio.sleep(self.config.gossip_interval * (0.5 + self._rng.random()))
            async with trio.open_nursery() as nursery:
                for contact in self._gossip_targets():
                    nursery.start_soon(self.push_pull, contact)

    async def _reconnect_loop(self) -> None:
        while True:
            await trio.sleep(self.config.reconnect_interval * (0.5 + self._rng.random()))
            target = self._reconnect_target()
            if target is not None:
                await self.push_pull(target)

    def statistics(self) -> MembershipStatistics:
        """A census of the list and counters since creation."""
        members = self._table.all()
        return MembershipStatistics(
            alive=sum(m.state is MemberState.ALIVE for m in members),
            suspected=sum(m.state is MemberState.SUSPECTED for m in members),
            evicted=sum(m.state is MemberState.EVICTED for m in members),
            incarnation=self._table.incarnation,
            pings_sent=self._pings_sent,
            pings_failed=self._pings_failed,
            gossip_sent=self._gossip_sent,
            gossip_failed=self._gossip_failed,
            gossip_received=self._gossip_received,
            suspicions=self._suspicions,
            evictions=self._evictions,
            refutations=self._table.refutations,
            readmissions=self._readmissions,
            events_published=self._published,
            events_dropped=self._dropped,
            subscribers=len(self._channels) + len(self._listeners),
        )
