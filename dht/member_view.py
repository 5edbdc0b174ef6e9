"""A read-only view of the member list for processes that are not storage members.

Theory of operation
===================

A client (the S3 gateway of another machine, a test driving the cluster, an operator's
tool) needs the same placement answers as the storage nodes — "which members are nearest
to this block address?" — without *becoming* a member: if it took part in gossip or pings,
the members would add it to their lists and placement would choose it to store blocks.
So a :class:`MemberView` never calls ``dht.gossip`` or ``dht.ping``; it polls
``dht.members`` (served by :class:`dht.overlay.Overlay`), which answers a member's list in
the gossip encoding and merges nothing, and it never serves anything itself.

Every ``refresh_interval`` the view asks one source for its list: a random non-evicted
member it already knows, else the next one, else the bootstrap contacts (which may be known
by address only; the RPC then accepts whoever answers there, as on a join). It merges the
answer entry by entry with the membership's own rule (:mod:`dht.membership`): per member,
the larger ``(incarnation, rank(state))`` wins, with ``alive < suspected < evicted``. That
order is total, so the view converges with the members' lists whatever the order of the
answers, a stale answer never undoes newer news, and a restarted or refuting member (a
higher incarnation) comes back alive everywhere. An answer that does not decode is
dropped whole (nothing of it is merged) and the next source is tried.

What the view answers, without I/O:

* :meth:`MemberView.closest_nodes` — exactly what :meth:`dht.overlay.Overlay.closest_nodes`
  answers on a member with the same list: the ``k`` non-evicted (alive or suspected)
  members nearest by XOR distance to the key mapped into node space
  (:func:`dht.ids.key_to_node_space`, :func:`dht.routing.nearest`).
* :meth:`MemberView.contact` — how to reach any member still in the list, evicted ones
  included (a register's replica set is consensus state and is tried until consensus moves
  it, as :class:`storage.placement.OverlayPlacement` does).

Failure: when no source answers, the view keeps its last list (and counts the failure);
the members' own failure detection is what marks members suspected and evicted, and the
view learns it from them at the next successful refresh. Cancellation of :meth:`run` stops
the polling; the view stays readable.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .contracts import RemoteCaller
from .errors import PeerUnreachable, RemoteError, RemoteProtocolError, RpcTimeout
from .ids import Contact, NodeId, key_to_node_space
from .membership import MAX_MEMBERS, Member, MemberState, entry_from_wire
from .overlay import MEMBERS
from .routing import contact_from_wire, nearest

logger = logging.getLogger(__name__)

__all__ = ["MemberView", "MemberViewStatistics"]

_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECTED: 1, MemberState.EVICTED: 2}


@dataclass(frozen=True)
class MemberViewStatistics:
    """A census of a :class:`MemberView` and its counters.

    Attributes:
        alive / suspected / evicted: members in each state.
        refreshes: successful fetches of a member list.
        refresh_failures: sources that did not answer (or answered garbage).
        rounds_failed: refresh rounds in which no source answered.
        last_refresh: trio time of the last successful fetch (``None``: none yet).
    """

    alive: int
    suspected: int
    evicted: int
    refreshes: int
    refresh_failures: int
    rounds_failed: int
    last_refresh: float | None


class MemberView:
    """The member list as the members see it, polled over ``dht.members`` (see module doc).

    Args:
        caller: the RPC used to reach members (a client's own ``RpcNode``).
        bootstrap: members to start from; an empty node id means "whoever is at this address".
        refresh_interval: seconds between two fetches.
        timeout: seconds one fetch may take.
        rng: randomness for the choice of source (seed it in tests).

    Start it with ``await nursery.start(view.run)``.
    """

    def __init__(
        self,
        caller: RemoteCaller,
        bootstrap: Sequence[Contact],
        *,
        refresh_interval: float = 1.0,
        timeout: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        """Configure the view; nothing is fetched until :meth:`run` or :meth:`refresh`."""
        if not refresh_interval > 0 or not timeout > 0:
            raise ValueError("refresh_interval and timeout must be positive")
        self._caller = caller
        self.bootstrap = list(bootstrap)
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._rng = rng or random.Random()
        self._members: dict[bytes, Member] = {}
        self._refreshes = self._failures = self._rounds_failed = 0
        self._last_refresh: float | None = None
        self._changed = trio.Event()

    # --- queries (no I/O) -------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The non-evicted members (alive or suspected)."""
        return [m for m in self._members.values() if m.state is not MemberState.EVICTED]

    def all_members(self) -> list[Member]:
        """Every entry, evicted members included."""
        return list(self._members.values())

    def get(self, node_id: bytes) -> Member | None:
        """The entry for ``node_id``, if any."""
        return self._members.get(bytes(node_id))

    def closest_nodes(self, key: bytes, k: int) -> list[Contact]:
        """The ``k`` non-evicted members nearest to ``key``, nearest first, exactly.

        The same answer as :meth:`dht.overlay.Overlay.closest_nodes` on a member holding the
        same list (``key`` is mapped with :func:`dht.ids.key_to_node_space`).
        """
        if k <= 0:
            return []
        return nearest(key_to_node_space(key), [m.contact for m in self.members()], k)

    def contact(self, node_id: NodeId) -> Contact | None:
        """How to reach member ``node_id`` (evicted ones too), or None if the list lacks it."""
        member = self._members.get(bytes(node_id))
        return None if member is None else member.contact

    def statistics(self) -> MemberViewStatistics:
        """A census of the list and the counters since creation."""
        states = [m.state for m in self._members.values()]
        return MemberViewStatistics(
            alive=states.count(MemberState.ALIVE),
            suspected=states.count(MemberState.SUSPECTED),
            evicted=states.count(MemberState.EVICTED),
            refreshes=self._refreshes,
            refresh_failures=self._failures,
            rounds_failed=self._rounds_failed,
            last_refresh=self._last_refresh,
        )

    async def wait_changed(self) -> None:
        """Wait until the next fetch that changes the list (or the first fetch)."""
        await self._changed.wait()

    # --- fetching ---------------------------------------------------------------------------

    def merge(self, entries: object, now: float) -> bool:
        """Fold a wire member list in by the ``(incarnation, state)`` order.

        Returns:
            Whether anything changed.

        Raises:
            RemoteProtocolError: the list is malformed (nothing of it is merged).
        """
        if not isinstance(entries, list | tuple) or len(entries) > MAX_MEMBERS:
            raise RemoteProtocolError("members must be an array of bounded length")
        decoded = [entry_from_wire(e) for e in entries]
        changed = False
        for contact, state, incarnation, draining in decoded:
            key = bytes(contact.node_id)
            old = self._members.get(key)
            if old is not None and (incarnation, _RANK[state]) <= old.version:
                continue
            since = now if old is None or old.state is not state else old.state_since
            self._members[key] = Member(contact, state, incarnation, now, since, draining)
            changed = True
        return changed

    def _sources(self) -> list[Contact]:
        known = [m.contact for m in self.members()]
        self._rng.shuffle(known)
        ids = {bytes(c.node_id) for c in known}
        addresses = {c.address for c in known}
        extra = [
            c
            for c in self.bootstrap
            if bytes(c.node_id) not in ids and (c.node_id or c.address not in addresses)
        ]
        self._rng.shuffle(extra)
        return known + extra

    async def _fetch(self, source: Contact) -> bool:
        try:
            reply: Any = await self._caller.call(source, MEMBERS, None, timeout=self.timeout)
            if not isinstance(reply, dict):
                raise RemoteProtocolError("dht.members reply must be a map")
            if source.node_id:
                sender = contact_from_wire(reply.get("from"))
                if sender.node_id != source.node_id:
                    raise RemoteProtocolError("dht.members answered by another node")
            changed = self.merge(reply.get("members"), trio.current_time())
        except (PeerUnreachable, RpcTimeout) as exc:
            logger.debug("member list from %s: %r", source.address, exc)
            self._failures += 1
            return False
        except (RemoteError, RemoteProtocolError) as exc:
            logger.warning("member list from %s refused or malformed: %s", source.address, exc)
            self._failures += 1
            return False
        self._refreshes += 1
        self._last_refresh = trio.current_time()
        if changed or self._refreshes == 1:
            self._changed.set()
            self._changed = trio.Event()
        return True

    async def refresh(self) -> bool:
        """Fetch one member list from the first source that answers; return whether one did.

        Cancellation: harmless (a partial answer is never merged).
        """
        for source in self._sources():
            if await self._fetch(source):
                return True
        self._rounds_failed += 1
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the member list every ``refresh_interval`` until cancelled.

        ``task_status.started()`` is called after the first successful fetch (until then the
        bootstrap contacts are retried every interval). Cancellation stops the polling; the
        view stays readable.
        """
        started = False
        while True:
            ok = await self.refresh()
            if ok and not started:
                started = True
                task_status.started()
            elif not ok:
                logger.info("member view: no member answered (%d sources)", len(self._sources()))
            await trio.sleep(self.refresh_interval)
