"""The routing table: synchronous, no event loop, never asyncio."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from dht.errors import RemoteProtocolError
from dht.ids import NODE_ID_BYTES, Address, Contact, NodeId, distance
from dht.routing import (
    RoutingTable,
    contact_from_wire,
    contact_to_wire,
    contacts_from_wire,
    nearest,
    random_id_in_range,
    sort_by_distance,
)
from tests.fake_network import make_contact


def _contact_at(node_id: int, port: int = 1) -> Contact:
    return Contact(NodeId(node_id.to_bytes(NODE_ID_BYTES, "big")), Address("h", port))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kademlia base class would schedule asyncio tasks; ours must never try."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("asyncio touched by the routing table")

    monkeypatch.setattr(asyncio, "ensure_future", refuse)
    monkeypatch.setattr(asyncio, "create_task", refuse)


def test_add_get_remove_and_own_id_is_never_stored() -> None:
    own = make_contact(0)
    table = RoutingTable(own, ksize=4)
    assert table.add(own) is None
    assert len(table) == 0
    other = make_contact(1)
    assert table.add(other) is None
    assert table.get(other.node_id) == other
    assert other.node_id in table
    assert table.contacts() == [other]
    assert table.remove(other.node_id)
    assert not table.remove(other.node_id)
    assert other.node_id not in table
    assert len(table) == 0


def test_re_adding_updates_the_contact() -> None:
    table = RoutingTable(make_contact(0), ksize=4)
    c = make_contact(1)
    table.add(c)
    moved = Contact(c.node_id, Address("10.9.9.9", 9), c.public_key)
    table.add(moved)
    assert table.get(c.node_id) == moved
    assert len(table) == 1


def test_full_far_bucket_returns_head_and_keeps_newcomer_as_replacement() -> None:
    # Own id 0, k=2. After one split the upper half [2**159 + 1, 2**160] holds ids that share
    # exactly 5 leading bits: it neither contains us nor has a depth that is not a multiple
    # of 5, so it cannot split (section 4.2 of the paper) and a newcomer must wait.
    own = _contact_at(0)
    table = RoutingTable(own, ksize=2)
    top = 1 << 159
    first, second, third = _contact_at(top | 1), _contact_at(top | (1 << 154)), _contact_at(top | 2)
    assert table.add(first) is None
    assert table.add(second) is None
    head = table.add(third)
    assert head == first  # least recently seen
    assert third.node_id not in table
    assert table.statistics().replacements == 1
    # The head answered: it moves to the tail, the newcomer stays a replacement.
    assert table.add(first) is None
    assert table.add(third) == second
    # The new head did not answer: the freshest replacement takes its place.
    assert table.remove(second.node_id)
    assert third.node_id in table
    assert {c.node_id for c in table.contacts()} == {first.node_id, third.node_id}


def test_bucket_containing_own_id_splits_instead_of_refusing() -> None:
    own = _contact_at(0)
    table = RoutingTable(own, ksize=2)
    for i in range(1, 30):
        table.add(_contact_at(i))
    # Our own neighbourhood is fully known: the two closest ids to 0 are 1 and 2.
    assert table.closest(own.node_id, 2) == [_contact_at(1), _contact_at(2)]
    assert table.statistics().buckets > 1


@pytest.mark.parametrize("ksize", [1, 3, 20])
@pytest.mark.parametrize("k", [1, 5, 20, 100, 1000])
def test_closest_is_exact(ksize: int, k: int) -> None:
    rng = random.Random(ksize * 1000 + k)
    own = make_contact(0, rng)
    table = RoutingTable(own, ksize=ksize)
    for i in range(1, 400):
        table.add(make_contact(i, rng))
    stored = table.contacts()
    for _ in range(50):
        target = rng.randbytes(NODE_ID_BYTES)
        expected = sorted(stored, key=lambda c: distance(c.node_id, target))[:k]
        assert table.closest(target, k) == expected


def test_closest_excludes_target_and_excluded_ids() -> None:
    rng = random.Random(7)
    table = RoutingTable(make_contact(0, rng), ksize=20)
    contacts = [make_contact(i, rng) for i in range(1, 40)]
    for c in contacts:
        table.add(c)
    target = contacts[0].node_id
    found = table.closest(target, 5, exclude=[contacts[1].node_id])
    ids = [c.node_id for c in found]
    assert target not in ids
    assert contacts[1].node_id not in ids
    assert len(found) == 5
    assert table.closest(target, 0) == []


def test_contact_exactly_at_a_split_point_is_found() -> None:
    # kademlia's get_bucket_for compares with `<` against the inclusive upper bound, so an
    # id equal to a split point is looked up in the wrong bucket; ours is inclusive.
    own = _contact_at(0)
    table = RoutingTable(own, ksize=1)
    on_the_edge = _contact_at(2**159)
    table.add(on_the_edge)
    table.add(_contact_at(1))  # splits [0, 2**160] at 2**159, then [0, 2**159] at 2**158
    assert any(hi == 2**159 for _, hi in table.bucket_ranges())
    assert table.get(on_the_edge.node_id) == on_the_edge
    assert table.closest(on_the_edge.node_id, 5, exclude=()) == [_contact_at(1)]
    assert table.remove(on_the_edge.node_id)
    assert on_the_edge.node_id not in table
    ranges = table.bucket_ranges()
    assert ranges[0][0] == 0
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo == hi + 1


def test_stale_buckets_follow_the_injected_clock() -> None:
    clock = _Clock()
    table = RoutingTable(_contact_at(0), ksize=2, clock=clock)
    near, far = _contact_at(1), _contact_at(1 << 159)
    for i in (1, 2, 3, 1 << 159, (1 << 159) + 1):
        table.add(_contact_at(i))
    assert table.stale_buckets(60) == []
    clock.now += 61
    assert table.stale_buckets(60) == table.bucket_ranges()
    buckets = len(table.bucket_ranges())

    def covering(c: Contact) -> tuple[int, int]:
        value = int.from_bytes(c.node_id, "big")
        return next(r for r in table.bucket_ranges() if r[0] <= value <= r[1])

    assert covering(near) != covering(far)
    table.add(far)  # traffic from a contact refreshes its bucket
    assert covering(far) not in table.stale_buckets(60)
    assert len(table.stale_buckets(60)) == buckets - 1
    table.touch(near.node_id)  # so does a lookup into the bucket
    assert covering(near) not in table.stale_buckets(60)
    assert len(table.stale_buckets(60)) == buckets - 2


def test_random_id_in_range_stays_in_range() -> None:
    rng = random.Random(1)
    for low, high in [(0, 0), (5, 9), (2**159, 2**160), (0, 2**160)]:
        for _ in range(20):
            value = int.from_bytes(random_id_in_range(low, high, rng), "big")
            assert low <= value <= min(high, 2**160 - 1)


def test_sort_by_distance() -> None:
    contacts = [_contact_at(i) for i in (8, 1, 3, 2)]
    target = (3).to_bytes(NODE_ID_BYTES, "big")
    assert [int.from_bytes(c.node_id, "big") for c in sort_by_distance(target, contacts)] == [
        3,
        2,
        1,
        8,
    ]


def test_nearest_agrees_with_sorting() -> None:
    rng = random.Random(4)
    contacts = [make_contact(i, rng) for i in range(50)]
    for k in (0, 1, 5, 50, 80):
        target = rng.randbytes(NODE_ID_BYTES)
        assert nearest(target, contacts, k) == sort_by_distance(target, contacts)[:k]


def test_contact_wire_round_trip_and_validation() -> None:
    c = make_contact(5)
    assert contact_from_wire(contact_to_wire(c)) == c
    assert contact_from_wire(tuple(contact_to_wire(c))) == c
    keyless = _contact_at(77, port=65535)
    assert contact_from_wire(contact_to_wire(keyless)) == keyless
    good = contact_to_wire(c)
    bad_values: list[object] = [
        None,
        "x",
        good[:3],
        [b"short", *good[1:]],
        [good[0], "", *good[2:]],
        [good[0], good[1], 0, good[3]],
        [good[0], good[1], 70000, good[3]],
        [good[0], good[1], True, good[3]],
        [good[0], good[1], good[2], "key"],
        [make_contact(6).node_id, *good[1:]],  # id is not the hash of the key
    ]
    for bad in bad_values:
        with pytest.raises(RemoteProtocolError):
            contact_from_wire(bad)
    assert contacts_from_wire([good, good], limit=2) == [c, c]
    with pytest.raises(RemoteProtocolError):
        contacts_from_wire([good, good, good], limit=2)
    with pytest.raises(RemoteProtocolError):
        contacts_from_wire({"a": 1}, limit=2)


def test_rejects_ids_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        RoutingTable(Contact(NodeId(b"x" * 32), Address("h", 1)))
    table = RoutingTable(make_contact(0))
    with pytest.raises(ValueError, match="20 bytes"):
        table.add(Contact(NodeId(b"x" * 32), Address("h", 1)))


def test_the_base_class_neighbour_search_is_not_exact() -> None:
    """Why ``find_neighbors`` is overridden: kademlia's stops early in bucket order."""
    from kademlia.node import Node
    from kademlia.routing import RoutingTable as KademliaRoutingTable

    rng = random.Random(3)
    table = RoutingTable(make_contact(0, rng), ksize=3)
    for i in range(1, 300):
        table.add(make_contact(i, rng))
    inner = table._table
    misses = 0
    for _ in range(50):
        target = rng.randbytes(NODE_ID_BYTES)
        theirs = [n.id for n in KademliaRoutingTable.find_neighbors(inner, Node(target), 20)]
        misses += theirs != [c.node_id for c in table.closest(target, 20)]
    assert misses > 0


def test_depth_matches_the_package() -> None:
    from kademlia.routing import KBucket

    from dht.routing import ContactNode, _depth

    rng = random.Random(12)
    for size in (1, 2, 5):
        for shared in (0, 1, 5, 17, 159):
            bucket = KBucket(0, 2**160, size)
            prefix = rng.getrandbits(shared) << (160 - shared) if shared else 0
            for _ in range(size):
                value = prefix | rng.getrandbits(160 - shared)
                bucket.add_node(ContactNode(_contact_at(value)))
            assert _depth(bucket) == bucket.depth()
