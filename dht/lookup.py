"""Iterative Kademlia FIND_NODE on trio.

Theory of operation
===================

Source: Maymounkov & Mazières, "Kademlia: A Peer-to-peer Information System Based on the XOR
Metric" (IPTPS 2002), section 2.3, "node lookup".

A lookup for a 160-bit ``target`` keeps a *shortlist*: the ``k`` contacts closest to the
target seen so far (a ``kademlia.node.NodeHeap`` capped at ``k``), seeded from our own
routing table. It proceeds in *rounds*:

1. Pick up to ``alpha`` (3) shortlist members not yet queried, nearest first, and send each a
   ``dht.find_node`` in parallel (one trio nursery per round; every request has its own
   timeout, so a round lasts at most one request timeout).
2. Merge every answer into the shortlist. A contact that does not answer (``PeerUnreachable``
   or ``RpcTimeout``) leaves the shortlist for the rest of the lookup — other answers that
   still name it do not bring it back — and is reported through ``on_unresponsive`` so the
   routing table drops it; one that answers is reported through ``on_alive``. A contact
   that answers with a typed error or garbage leaves the shortlist the same way but is not
   reported dead. Once some contacts failed, requests ask for that many more contacts (up
   to ``2k``): responders may still list the failed ones, which would otherwise crowd true
   neighbours out of a ``k``-sized answer.
3. If a round brought nothing closer than the closest contact already seen, the next round
   queries *all* of the ``k`` closest not yet queried (the paper's final step) instead of
   ``alpha``; a round that makes progress returns to ``alpha``.

Invariants:

* A contact is queried at most once per lookup; we never query ourselves.
* The lookup ends when every one of the ``k`` closest contacts in the shortlist has been
  queried and answered (failed ones are removed, which may expose further candidates), so
  the result consists only of nodes that answered during this lookup.
* Every round queries at least one contact never queried before, so a lookup ends after at
  most as many rounds as it saw contacts; ``max_rounds`` is a safety bound on top.
* ``trio.Cancelled`` is never caught: cancelling the caller cancels the round's requests.

Rounds are counted per lookup and summarised (mean/max) in :meth:`NodeLookup.statistics`;
with consistent routing tables they grow as O(log n).

Wire format of ``dht.find_node``: request ``{"target": bin(20), "k": int}``, reply
``{"contacts": [[node_id, host, port, public_key], ...]}`` — at most ``k`` contacts from the
responder's routing table, nearest first, excluding the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import trio
from kademlia.node import Node, NodeHeap

from .contracts import RemoteCaller
from .errors import PeerUnreachable, RemoteError, RemoteProtocolError, RpcTimeout
from .ids import NODE_ID_BYTES, Contact, NodeId
from .routing import ContactNode, RoutingTable, contact_to_wire, contacts_from_wire

logger = logging.getLogger(__name__)

__all__ = [
    "FIND_NODE",
    "LookupConfig",
    "LookupResult",
    "LookupStatistics",
    "NodeLookup",
]

#: RPC method name of Kademlia's FIND_NODE.
FIND_NODE = "dht.find_node"

#: Upper bound on ``k`` a responder honours, so a request cannot make it dump everything.
MAX_FIND_NODE_K = 256


@dataclass(frozen=True)
class LookupConfig:
    """Parameters of iterative lookups.

    Attributes:
        alpha: parallel requests per round (3 in the paper).
        k: result size when the caller does not give one (the bucket size).
        request_timeout: seconds one ``dht.find_node`` request may take.
        max_rounds: safety bound on rounds per lookup.
    """

    alpha: int = 3
    k: int = 20
    request_timeout: float = 2.0
    max_rounds: int = 64

    def __post_init__(self) -> None:
        if self.alpha < 1 or self.k < 1 or self.max_rounds < 1:
            raise ValueError("alpha, k and max_rounds must be positive")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")


@dataclass(frozen=True)
class LookupResult:
    """The outcome of one lookup: the closest answering contacts, nearest first."""

    target: NodeId
    contacts: tuple[Contact, ...]
    rounds: int
    queried: int
    failed: int


@dataclass(frozen=True)
class LookupStatistics:
    """Counters of a :class:`NodeLookup` since it was created."""

    lookups: int
    rounds_total: int
    rounds_max: int
    requests: int
    failures: int
    bad_replies: int
    served: int

    @property
    def rounds_mean(self) -> float:
        """Mean rounds per lookup (0.0 before the first lookup)."""
        return self.rounds_total / self.lookups if self.lookups else 0.0


class _Shortlist:
    """Typed view of ``kademlia.node.NodeHeap``: the ``k`` closest contacts seen so far."""

    def __init__(self, target: bytes, k: int) -> None:
        self._heap = NodeHeap(Node(bytes(target)), k)
        self._target = int.from_bytes(target, "big")

    def push(self, contacts: Iterable[Contact]) -> None:
        self._heap.push([ContactNode(c) for c in contacts])

    def remove(self, contacts: Iterable[Contact]) -> None:
        self._heap.remove([bytes(c.node_id) for c in contacts])

    def mark_queried(self, contact: Contact) -> None:
        self._heap.contacted.add(bytes(contact.node_id))

    def unqueried(self) -> list[Contact]:
        """Members of the top ``k`` not yet queried, nearest first."""
        return [cast(Contact, n.contact) for n in self._heap.get_uncontacted()]

    def closest(self) -> list[Contact]:
        return [cast(Contact, n.contact) for n in self._heap]

    def best_distance(self) -> int | float:
        """XOR distance of the closest entry (an exact int), or infinity when empty."""
        best = self.closest()
        if not best:
            return math.inf
        return int.from_bytes(best[0].node_id, "big") ^ self._target


class NodeLookup:
    """Runs iterative FIND_NODE lookups and serves ``dht.find_node``.

    Args:
        own: this node (never queried, never returned).
        routing: the routing table that seeds lookups and answers requests.
        caller: the RPC used for outgoing requests.
        config: lookup parameters.
        on_alive: called with every contact that answered us (the overlay adds it to the
            routing table).
        on_unresponsive: called with every contact that did not answer.
        on_caller: called with the caller of every ``dht.find_node`` we serve (default:
            ``on_alive``; the overlay resolves the caller's address from the member list).
    """

    def __init__(
        self,
        own: Contact,
        routing: RoutingTable,
        caller: RemoteCaller,
        *,
        config: LookupConfig = LookupConfig(),
        on_alive: Callable[[Contact], None] | None = None,
        on_unresponsive: Callable[[Contact], None] | None = None,
        on_caller: Callable[[Contact], None] | None = None,
    ) -> None:
        self.own = own
        self.routing = routing
        self.config = config
        self._caller = caller
        self._on_alive = on_alive or (lambda _c: None)
        self._on_unresponsive = on_unresponsive or (lambda _c: None)
        self._on_caller = on_caller or self._on_alive
        self._lookups = 0
        self._rounds_total = 0
        self._rounds_max = 0
        self._requests = 0
        self._failures = 0
        self._bad_replies = 0
        self._served = 0

    async def find_node(
        self, target: bytes, k: int | None = None, *, seeds: Iterable[Contact] = ()
    ) -> LookupResult:
        """Find the ``k`` nodes closest to ``target`` that answer, iteratively.

        Args:
            target: a 160-bit id (map other keys with ``dht.ids.key_to_node_space``).
            k: result size (default ``config.k``).
            seeds: extra starting contacts besides the routing table's closest.

        Returns:
            The closest answering nodes, nearest first, without this node; fewer than ``k``
            if the network is smaller. Cancellation cancels the outstanding requests.
        """
        if len(target) != NODE_ID_BYTES:
            raise ValueError(f"lookup targets are {NODE_ID_BYTES} bytes, got {len(target)}")
        k = self.config.k if k is None else k
        if k < 1:
            raise ValueError("k must be positive")
        own_id = self.own.node_id
        # Ourselves, and whoever failed to answer: never (re-)entered into the shortlist.
        shunned = {bytes(own_id)}
        shortlist = _Shortlist(target, k)
        shortlist.push(self.routing.closest(target, k, exclude=[own_id]))
        shortlist.push(c for c in seeds if c.node_id != own_id)
        best = shortlist.best_distance()
        everyone = False
        rounds = queried = failed = 0
        while rounds < self.config.max_rounds:
            candidates = shortlist.unqueried()
            if not candidates:
                break
            batch = candidates if everyone else candidates[: self.config.alpha]
            for contact in batch:
                shortlist.mark_queried(contact)
            rounds += 1
            queried += len(batch)
            replies: dict[bytes, list[Contact]] = {}
            lost: list[Contact] = []
            # Responders may still list contacts we know to be gone; ask for that many more
            # so that they do not crowd true neighbours out of a k-sized answer.
            ask = min(k + len(shunned) - 1, 2 * k, MAX_FIND_NODE_K)
            async with trio.open_nursery() as nursery:
                for contact in batch:
                    nursery.start_soon(self._ask, contact, target, ask, replies, lost)
            failed += len(lost)
            shunned.update(bytes(c.node_id) for c in lost)
            for found in replies.values():
                shortlist.push(c for c in found if bytes(c.node_id) not in shunned)
            shortlist.remove(lost)
            now_best = shortlist.best_distance()
            everyone = not now_best < best
            best = min(best, now_best)
        else:
            if shortlist.unqueried():
                logger.warning(
                    "lookup for %s stopped unfinished after %d rounds",
                    bytes(target).hex(),
                    self.config.max_rounds,
                )
        self._lookups += 1
        self._rounds_total += rounds
        self._rounds_max = max(self._rounds_max, rounds)
        result = LookupResult(
            target=NodeId(bytes(target)),
            contacts=tuple(shortlist.closest()),
            rounds=rounds,
            queried=queried,
            failed=failed,
        )
        logger.debug(
            "lookup %s: %d rounds, %d queried, %d failed",
            bytes(target).hex()[:12],
            rounds,
            queried,
            failed,
        )
        return result

    async def _ask(
        self,
        contact: Contact,
        target: bytes,
        k: int,
        replies: dict[bytes, list[Contact]],
        lost: list[Contact],
    ) -> None:
        """Send one ``dht.find_node``; record the answer in ``replies`` or the loss in ``lost``."""
        self._requests += 1
        timeout = self.config.request_timeout
        args = {"target": bytes(target), "k": k}
        reply: Any = None
        # The RPC honours its own timeout; the scope only guards against one that does not.
        with trio.move_on_after(timeout * 1.5 + 0.1) as scope:
            try:
                reply = await self._caller.call(contact, FIND_NODE, args, timeout=timeout)
            except (PeerUnreachable, RpcTimeout) as exc:
                logger.debug("find_node to %s failed: %r", contact.address, exc)
                self._failures += 1
                lost.append(contact)
                self._on_unresponsive(contact)
                return
            except RemoteError as exc:
                logger.info("find_node to %s answered an error: %s", contact.address, exc)
                self._bad_replies += 1
                lost.append(contact)
                self._on_alive(contact)
                return
        if scope.cancelled_caught:
            self._failures += 1
            lost.append(contact)
            self._on_unresponsive(contact)
            return
        try:
            if not isinstance(reply, dict):
                raise RemoteProtocolError("find_node reply must be a map")
            found = contacts_from_wire(reply.get("contacts"), limit=k)
        except RemoteProtocolError as exc:
            logger.warning("bad find_node reply from %s: %s", contact.address, exc)
            self._bad_replies += 1
            lost.append(contact)
            return
        self._on_alive(contact)
        replies[bytes(contact.node_id)] = found

    async def handle_find_node(self, caller: Contact, args: Any) -> dict[str, Any]:
        """Serve ``dht.find_node``: our closest known contacts to the target.

        Raises:
            RemoteError: ``"bad_request"`` if the arguments are malformed.
        """
        if not isinstance(args, dict):
            raise RemoteError("bad_request", "find_node arguments must be a map")
        target = args.get("target")
        k = args.get("k", self.config.k)
        if not isinstance(target, bytes) or len(target) != NODE_ID_BYTES:
            raise RemoteError("bad_request", "target must be 20 bytes")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RemoteError("bad_request", "k must be a positive integer")
        self._served += 1
        self._on_caller(caller)
        found = self.routing.closest(target, min(k, MAX_FIND_NODE_K), exclude=[caller.node_id])
        return {"contacts": [contact_to_wire(c) for c in found]}

    def statistics(self) -> LookupStatistics:
        """Lookup counters, including total and maximum rounds."""
        return LookupStatistics(
            lookups=self._lookups,
            rounds_total=self._rounds_total,
            rounds_max=self._rounds_max,
            requests=self._requests,
            failures=self._failures,
            bad_replies=self._bad_replies,
            served=self._served,
        )
