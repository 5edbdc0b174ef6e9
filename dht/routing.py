"""The Kademlia routing table, synchronous and typed, on the ``kademlia`` package's buckets.

We reuse ``kademlia.node.Node`` and ``kademlia.routing.KBucket`` as they are and subclass
``kademlia.routing.RoutingTable`` to fix the three places where it does not fit a trio
overlay:

* ``add_contact`` on a full, unsplittable bucket schedules ``protocol.call_ping(head)`` with
  ``asyncio.ensure_future``; inside trio that task never runs. Ours *returns* the bucket head
  instead, and the caller (the overlay) pings it and then calls :meth:`RoutingTable.add`
  again (head alive: it moves to the tail, the newcomer stays in the replacement cache) or
  :meth:`RoutingTable.remove` (head dead: the freshest replacement takes its place) — the
  eviction policy of section 2.2 of the Kademlia paper.
* ``find_neighbors`` walks buckets outward and stops after ``k`` candidates, which misses
  true neighbours when ``k`` is large or the walk order does not follow XOR distance; ours
  ranks every contact, which is exact and cheap at ``160 * ksize`` contacts at most.
* ``get_bucket_for`` compares with ``<`` against an inclusive upper bound (and scans every
  bucket), and bucket ages use ``time.monotonic``; ours bisects on the inclusive bound and
  uses an injected clock (trio's clock in the overlay, so ``MockClock`` drives refreshes in
  tests). ``KBucket.depth`` is recomputed on integers instead of bit strings.

The protocol object the base class wants is :data:`_NO_PROTOCOL`, which raises on any use,
so nothing here can ever reach asyncio. No method of this module awaits.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from kademlia.node import Node
from kademlia.routing import KBucket
from kademlia.routing import RoutingTable as _KademliaRoutingTable

from .errors import RemoteProtocolError
from .ids import NODE_ID_BYTES, Address, Contact, NodeId, distance, node_id_from_public_key

logger = logging.getLogger(__name__)

__all__ = [
    "ContactNode",
    "RoutingStatistics",
    "RoutingTable",
    "contact_from_wire",
    "contact_to_wire",
    "contacts_from_wire",
    "nearest",
    "random_id_in_range",
    "sort_by_distance",
]

ID_SPACE = 2**160


class _NoProtocol:
    """Stands in for the asyncio protocol the kademlia base class expects; any use is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"kademlia RoutingTable tried to use its protocol ({name!r})")


_NO_PROTOCOL = _NoProtocol()


class ContactNode(Node):  # type: ignore[misc]  # kademlia is untyped
    """A ``kademlia.node.Node`` that carries the full :class:`Contact` it stands for.

    The package keys everything by ``node.id`` (the 20 id bytes) and ``node.long_id`` (the
    same as an integer); ``ip``/``port`` mirror the contact's address for its ``__repr__``.
    """

    def __init__(self, contact: Contact) -> None:
        super().__init__(bytes(contact.node_id), contact.address.host, contact.address.port)
        self.contact = contact


def _probe_node(node_id: bytes) -> Node:
    """A bare node used only to locate a bucket or measure distances."""
    return Node(bytes(node_id))


class _TrioRoutingTable(_KademliaRoutingTable):  # type: ignore[misc]  # kademlia is untyped
    """``kademlia.routing.RoutingTable`` without asyncio, with an exact neighbour search."""

    def __init__(self, own: Node, ksize: int, clock: Callable[[], float]) -> None:
        self.clock = clock
        super().__init__(_NO_PROTOCOL, ksize, own)
        self.buckets[0].last_updated = clock()

    def flush(self) -> None:
        """Start over with one bucket covering the whole id space."""
        super().flush()
        self._uppers = [b.range[1] for b in self.buckets]

    def split_bucket(self, index: int) -> None:
        """Split a bucket; both halves inherit its age (KBucket stamps ``time.monotonic``)."""
        age = self.buckets[index].last_updated
        super().split_bucket(index)
        self.buckets[index].last_updated = age
        self.buckets[index + 1].last_updated = age
        self._uppers = [b.range[1] for b in self.buckets]

    def add_contact(self, node: Node) -> Node | None:
        """Add ``node``; return the head of its full bucket to ping, or ``None``.

        When ``node`` did not fit it sits in the bucket's replacement cache.
        """
        index = self.get_bucket_for(node)
        bucket: KBucket = self.buckets[index]
        if bucket.add_node(node):
            bucket.last_updated = self.clock()
            return None
        # Section 4.2 of the paper: split if the bucket covers our own id, or if its depth is
        # not a multiple of 5 (keeps unbalanced trees from losing nearby contacts).
        if bucket.has_in_range(self.node) or _depth(bucket) % 5 != 0:
            self.split_bucket(index)
            return self.add_contact(node)
        return cast(Node, bucket.head())

    def get_bucket_for(self, node: Node) -> int:
        """Index of the bucket whose inclusive range holds ``node``."""
        index = bisect.bisect_left(self._uppers, node.long_id)
        if index == len(self._uppers):
            raise AssertionError(f"id {node.long_id:x} outside the id space")
        return index

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Any = None) -> list[Node]:
        """The ``k`` contacts closest to ``node`` by XOR distance, exactly (``node`` excluded)."""
        k = k or self.ksize
        candidates = [
            n
            for bucket in self.buckets
            for n in bucket.nodes.values()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        ]
        candidates.sort(key=lambda n: n.long_id ^ node.long_id)
        return candidates[:k]

    def lonely_buckets(self, max_age: float = 3600.0) -> list[KBucket]:
        """Buckets not refreshed for ``max_age`` seconds of the injected clock."""
        oldest = self.clock() - max_age
        return [b for b in self.buckets if b.last_updated < oldest]


def _depth(bucket: KBucket) -> int:
    """Length of the id prefix shared by a bucket's contacts (``KBucket.depth`` on ints).

    The package's version builds a 160-character bit string per contact on every insertion
    into a full bucket; this is the same number from one XOR per contact.
    """
    ids = [n.long_id for n in bucket.nodes.values()]
    if not ids:
        return 0
    differing = 0
    for value in ids:
        differing |= value ^ ids[0]
    return 160 - differing.bit_length()


@dataclass(frozen=True)
class RoutingStatistics:
    """A snapshot of a routing table."""

    contacts: int
    replacements: int
    buckets: int
    ksize: int


class RoutingTable:
    """Kademlia k-buckets of :class:`Contact`, keyed by 160-bit node ids.

    Synchronous and free of I/O: the overlay feeds it contacts it has heard from directly,
    pings the heads it returns and removes contacts that stopped answering.

    Args:
        own: this node; never stored, but it decides which buckets split.
        ksize: the bucket size ``k`` (20 in the paper).
        clock: the time source for bucket ages (``trio.current_time`` in the overlay).
    """

    def __init__(
        self,
        own: Contact,
        *,
        ksize: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(own.node_id) != NODE_ID_BYTES:
            raise ValueError(f"node ids are {NODE_ID_BYTES} bytes, got {len(own.node_id)}")
        if ksize < 1:
            raise ValueError("ksize must be at least 1")
        self.own = own
        self.ksize = ksize
        self._table = _TrioRoutingTable(ContactNode(own), ksize, clock)

    def add(self, contact: Contact) -> Contact | None:
        """Record that ``contact`` was heard from directly.

        Returns:
            ``None`` if the contact is (now) in its bucket, else the head of its full bucket:
            the caller should ping it, then ``add(head)`` if it answered (the newcomer stays
            a replacement) or ``remove(head.node_id)`` if not (a replacement moves in).
        """
        if len(contact.node_id) != NODE_ID_BYTES:
            raise ValueError(f"node ids are {NODE_ID_BYTES} bytes, got {len(contact.node_id)}")
        if contact.node_id == self.own.node_id:
            return None
        head = self._table.add_contact(ContactNode(contact))
        return None if head is None else cast(Contact, head.contact)

    def remove(self, node_id: NodeId) -> bool:
        """Forget ``node_id`` (bucket and replacement cache); return whether it was known."""
        probe = _probe_node(node_id)
        bucket: KBucket = self._table.buckets[self._table.get_bucket_for(probe)]
        known = node_id in bucket.nodes or node_id in bucket.replacement_nodes
        bucket.remove_node(probe)
        return bool(known)

    def get(self, node_id: NodeId) -> Contact | None:
        """The contact stored under ``node_id`` in a bucket (not the replacement cache)."""
        probe = _probe_node(node_id)
        node = self._table.buckets[self._table.get_bucket_for(probe)][bytes(node_id)]
        return None if node is None else cast(Contact, node.contact)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, bytes) and self.get(NodeId(node_id)) is not None

    def __len__(self) -> int:
        return sum(len(b) for b in self._table.buckets)

    def contacts(self) -> list[Contact]:
        """Every contact in a bucket, in bucket order."""
        return [cast(Contact, n.contact) for b in self._table.buckets for n in b.nodes.values()]

    def closest(
        self, target: bytes, k: int | None = None, *, exclude: Iterable[bytes] = ()
    ) -> list[Contact]:
        """The ``k`` (default ``ksize``) known contacts closest to ``target``, nearest first.

        Exact: every contact is ranked. ``target`` itself and ids in ``exclude`` are left out.
        """
        k = self.ksize if k is None else k
        if k <= 0:
            return []
        excluded = {bytes(e) for e in exclude}
        nodes = self._table.find_neighbors(_probe_node(target), k + len(excluded))
        found = [cast(Contact, n.contact) for n in nodes if n.id not in excluded]
        return found[:k]

    def stale_buckets(self, max_age: float) -> list[tuple[int, int]]:
        """Inclusive id ranges of buckets not refreshed for ``max_age`` seconds."""
        return [cast(tuple[int, int], b.range) for b in self._table.lonely_buckets(max_age)]

    def touch(self, target: bytes) -> None:
        """Mark the bucket covering ``target`` refreshed (a lookup for it just ran)."""
        index = self._table.get_bucket_for(_probe_node(target))
        self._table.buckets[index].last_updated = self._table.clock()

    def bucket_ranges(self) -> list[tuple[int, int]]:
        """Inclusive id ranges of every bucket, lowest first."""
        return [cast(tuple[int, int], b.range) for b in self._table.buckets]

    def statistics(self) -> RoutingStatistics:
        """Counts of contacts, replacement-cache entries and buckets."""
        return RoutingStatistics(
            contacts=len(self),
            replacements=sum(len(b.replacement_nodes) for b in self._table.buckets),
            buckets=len(self._table.buckets),
            ksize=self.ksize,
        )


def random_id_in_range(low: int, high: int, rng: random.Random) -> NodeId:
    """A uniformly random 160-bit id in the inclusive range ``[low, high]``."""
    high = min(high, ID_SPACE - 1)
    return NodeId(rng.randint(low, high).to_bytes(NODE_ID_BYTES, "big"))


def sort_by_distance(target: bytes, contacts: Iterable[Contact]) -> list[Contact]:
    """``contacts`` ordered nearest first by XOR distance to ``target``."""
    return sorted(contacts, key=lambda c: distance(c.node_id, target))


def nearest(target: bytes, contacts: Iterable[Contact], k: int) -> list[Contact]:
    """The ``k`` of ``contacts`` nearest to ``target`` by XOR distance, nearest first."""
    point = int.from_bytes(target, "big")
    return heapq.nsmallest(k, contacts, key=lambda c: int.from_bytes(c.node_id, "big") ^ point)


# --- wire format -------------------------------------------------------------------------
# A contact travels as a msgpack array [node_id: bin(20), host: str, port: int,
# public_key: bin]. When the public key is present the node id must be its BLAKE2b-160, so
# a peer cannot plant a contact at an id of its choosing.


def contact_to_wire(contact: Contact) -> list[Any]:
    """Encode a contact as ``[node_id, host, port, public_key]``."""
    return [
        bytes(contact.node_id),
        contact.address.host,
        contact.address.port,
        bytes(contact.public_key),
    ]


def contact_from_wire(obj: object) -> Contact:
    """Decode ``[node_id, host, port, public_key]``.

    Raises:
        RemoteProtocolError: the value is malformed or the id does not match the key.
    """
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise RemoteProtocolError(f"contact must be a 4-element array, got {obj!r:.80}")
    node_id, host, port, public_key = obj
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_BYTES:
        raise RemoteProtocolError("contact node id must be 20 bytes")
    if not isinstance(host, str) or not host:
        raise RemoteProtocolError("contact host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RemoteProtocolError("contact port must be an integer in 1..65535")
    if not isinstance(public_key, bytes):
        raise RemoteProtocolError("contact public key must be bytes")
    if public_key and node_id_from_public_key(public_key) != node_id:
        raise RemoteProtocolError("contact node id is not the hash of its public key")
    return Contact(NodeId(node_id), Address(host, port), public_key)


def contacts_from_wire(obj: object, *, limit: int) -> list[Contact]:
    """Decode an array of at most ``limit`` contacts.

    Raises:
        RemoteProtocolError: not an array, too long, or any element is malformed.
    """
    if not isinstance(obj, list | tuple):
        raise RemoteProtocolError("contacts must be an array")
    if len(obj) > limit:
        raise RemoteProtocolError(f"too many contacts ({len(obj)} > {limit})")
    return [contact_from_wire(item) for item in obj]
