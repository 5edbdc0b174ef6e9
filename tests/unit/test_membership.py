"""Membership: the merge rule without an event loop, then SWIM behaviour on the fake network."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio.testing

from dht.errors import RemoteError, RemoteProtocolError
from dht.ids import Address, Contact, NodeId
from dht.membership import (
    GOSSIP,
    PING,
    Member,
    Membership,
    MembershipConfig,
    MembershipEvent,
    MemberState,
    MemberTable,
    entry_from_wire,
    entry_to_wire,
    view_from_wire,
)
from dht.routing import contact_to_wire
from tests.fake_network import FakeNetwork, make_contact, start_service

ALIVE, SUSPECTED, EVICTED = MemberState.ALIVE, MemberState.SUSPECTED, MemberState.EVICTED

CONFIG = MembershipConfig(
    ping_interval=1.0,
    ping_timeout=0.5,
    suspect_after=3,
    eviction_delay=5.0,
    gossip_interval=1.0,
    gossip_fanout=2,
    reconnect_interval=2.0,
    forget_after=60.0,
)


def _view(table: MemberTable) -> set[tuple[bytes, MemberState, int]]:
    return {(bytes(m.node_id), m.state, m.incarnation) for m in table.all()}


# --- the member table, synchronous ---------------------------------------------------------


def test_merge_order_is_incarnation_then_state() -> None:
    me, other = make_contact(0), make_contact(1)
    table = MemberTable(me)
    steps = [
        (ALIVE, 0, ALIVE),
        (SUSPECTED, 0, SUSPECTED),
        (ALIVE, 0, SUSPECTED),  # same incarnation: the accusation stands
        (EVICTED, 0, EVICTED),
        (SUSPECTED, 0, EVICTED),
        (ALIVE, 1, ALIVE),  # the member refuted: a higher incarnation wins
        (EVICTED, 0, ALIVE),  # stale news loses
        (SUSPECTED, 1, SUSPECTED),
    ]
    for state, incarnation, expected in steps:
        table.merge(other, state, incarnation, now=0.0)
        member = table.get(other.node_id)
        assert member is not None
        assert member.state is expected, (state, incarnation)


def test_merging_in_any_order_converges() -> None:
    rng = random.Random(1)
    me = make_contact(0)
    others = [make_contact(i) for i in range(1, 6)]
    entries = [
        (rng.choice(others), rng.choice(list(MemberState)), rng.randrange(4)) for _ in range(12)
    ]
    views = set()
    for order in itertools.islice(itertools.permutations(entries), 0, 2000, 97):
        table = MemberTable(me)
        for contact, state, incarnation in order:
            table.merge(contact, state, incarnation, now=0.0)
        views.add(frozenset(_view(table)))
    assert len(views) == 1


def test_a_node_refutes_accusations_about_itself() -> None:
    me = make_contact(0)
    table = MemberTable(me)
    assert table.merge(me, SUSPECTED, 0, now=1.0) is None
    assert table.incarnation == 1
    table.merge(me, EVICTED, 4, now=2.0)
    assert table.incarnation == 5
    table.merge(me, SUSPECTED, 2, now=3.0)  # older than our incarnation: nothing to refute
    assert table.incarnation == 5
    table.merge(me, ALIVE, 9, now=4.0)  # a previous life of ours got further: catch up
    assert table.incarnation == 9
    assert table.refutations == 2
    mine = table.get(me.node_id)
    assert mine is not None
    assert mine.state is ALIVE


def test_events_suspicion_eviction_and_forgetting() -> None:
    me, other, ghost = make_contact(0), make_contact(1), make_contact(2)
    table = MemberTable(me)
    event = table.heard_from(other, now=0.0)
    assert event is not None
    assert event.previous is None
    assert event.member.state is ALIVE
    assert table.heard_from(other, now=1.0) is None
    # Hearing of an eviction of someone we never knew is recorded, not announced.
    assert table.merge(ghost, EVICTED, 3, now=1.0) is None
    assert table.get(ghost.node_id) is not None
    event = table.suspect(other.node_id, now=2.0)
    assert event is not None
    assert (event.previous, event.member.state) == (ALIVE, SUSPECTED)
    assert table.suspect(other.node_id, now=2.5) is None
    assert table.evict_overdue(now=6.9, eviction_delay=5.0) == []
    (evicted,) = table.evict_overdue(now=7.0, eviction_delay=5.0)
    assert (evicted.previous, evicted.member.state) == (SUSPECTED, EVICTED)
    assert [m.node_id for m in table.live()] == [me.node_id]
    assert table.forget(now=30.0, forget_after=60.0) == 0
    assert table.forget(now=67.0, forget_after=60.0) == 2
    assert len(table) == 1


def test_second_hand_eviction_of_a_member_we_just_heard_from_is_only_a_suspicion() -> None:
    me, other = make_contact(0), make_contact(1)
    table = MemberTable(me)
    table.heard_from(other, now=10.0)
    event = table.merge(other, EVICTED, 0, now=11.0, vouch_within=2.0)
    assert event is not None
    assert event.member.state is SUSPECTED
    event = table.merge(other, EVICTED, 0, now=13.0, vouch_within=2.0)
    assert event is not None
    assert event.member.state is EVICTED


def test_wire_entries_round_trip_and_reject_garbage() -> None:
    member = Member(make_contact(3), SUSPECTED, 7, 0.0, 0.0)
    assert entry_from_wire(entry_to_wire(member)) == (member.contact, SUSPECTED, 7, False)
    good = entry_to_wire(member)
    assert entry_from_wire(good[:3]) == (member.contact, SUSPECTED, 7, False)
    draining = replace(member, draining=True)
    assert entry_from_wire(entry_to_wire(draining)) == (member.contact, SUSPECTED, 7, True)
    for bad in [
        None,
        good[:2],
        [good[0], "dead", 1],
        [good[0], "alive", -1],
        [*good[:3], "yes"],
        [*good, False],
    ]:
        with pytest.raises(RemoteProtocolError):
            entry_from_wire(bad)
    for bad_view in [[], ["alive", True], ["alive", 2**64], "alive"]:
        with pytest.raises(RemoteProtocolError):
            view_from_wire(bad_view)


def test_draining_flag_travels_with_the_incarnation_that_set_it() -> None:
    me, other = make_contact(1), make_contact(2)
    mine, theirs = MemberTable(me, incarnation=4), MemberTable(other)
    assert mine.set_own_draining(True, now=1.0)
    assert not mine.set_own_draining(True, now=2.0)  # no change, no new incarnation
    assert mine.incarnation == 5
    for contact, state, incarnation, draining in map(entry_from_wire, mine.to_wire()):
        theirs.merge(contact, state, incarnation, now=3.0, draining=draining)
    seen = theirs.get(me.node_id)
    assert seen is not None
    assert (seen.draining, seen.incarnation) == (True, 5)
    # A stale entry (older incarnation, not draining) does not clear the flag...
    assert theirs.merge(me, ALIVE, 4, now=4.0) is None
    # ...and a local suspicion keeps it.
    theirs.suspect(me.node_id, now=5.0)
    suspected = theirs.get(me.node_id)
    assert suspected is not None
    assert (suspected.state, suspected.draining) == (SUSPECTED, True)
    # Withdrawing it is another incarnation, which wins everywhere.
    assert mine.set_own_draining(False, now=6.0)
    for contact, state, incarnation, draining in map(entry_from_wire, mine.to_wire()):
        event = theirs.merge(contact, state, incarnation, now=7.0, draining=draining)
        if contact.node_id == me.node_id:
            assert event is not None
            assert not event.member.draining


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="ping_timeout"):
        MembershipConfig(ping_interval=1.0, ping_timeout=2.0)
    with pytest.raises(ValueError, match="positive"):
        MembershipConfig(suspect_after=0)
    with pytest.raises(ValueError, match="forget_after"):
        MembershipConfig(eviction_delay=10.0, forget_after=5.0)
    assert CONFIG.detection_time == 3.5


# --- the service on the fake network -------------------------------------------------------


class _Cluster:
    def __init__(self, network: FakeNetwork, nursery: trio.Nursery) -> None:
        self.network = network
        self.nursery = nursery
        self.members: dict[int, Membership] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.contacts: dict[int, Contact] = {}

    async def start(
        self, index: int, bootstrap: Sequence[int] = (0,), config: MembershipConfig = CONFIG
    ) -> Membership:
        contact = self.contacts.setdefault(index, make_contact(index))
        endpoint = self.network.endpoint(contact)
        membership = Membership(
            contact,
            endpoint,
            config=config,
            bootstrap=[self.contacts[b] for b in bootstrap if b in self.contacts],
            rng=random.Random(index),
        )
        membership.register_handlers(endpoint)
        self.members[index] = membership
        self.scopes[index] = await start_service(self.nursery, membership.run)
        return membership

    def stop(self, index: int) -> None:
        """The process dies: its loops stop and it answers nothing."""
        self.scopes[index].cancel()
        self.network.kill(self.contacts[index].node_id)
        self.network.detach(self.contacts[index].node_id)

    def running(self) -> list[int]:
        return [i for i, s in self.scopes.items() if not s.cancel_called]

    def state_of(self, observer: int, subject: int) -> MemberState | None:
        member = self.members[observer].get(self.contacts[subject].node_id)
        return None if member is None else member.state

    async def wait_until(
        self, condition: Callable[[], bool], limit: float, step: float = 0.1
    ) -> float:
        """Poll ``condition``; return the (virtual) time it took; fail after ``limit``."""
        start = trio.current_time()
        while not condition():
            assert trio.current_time() - start <= limit, "condition not reached in time"
            await trio.sleep(step)
        return trio.current_time() - start


async def test_nodes_join_through_one_member_and_learn_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        await cluster.start(0, bootstrap=())
        for i in range(1, 10):
            await cluster.start(i, bootstrap=[0] if i % 2 else [i - 1])
        took = await cluster.wait_until(
            lambda: all(len(m.members()) == 10 for m in cluster.members.values()), limit=10
        )
        assert took <= 5
        for m in cluster.members.values():
            assert {x.state for x in m.all_members()} == {ALIVE}
            stats = m.statistics()
            assert stats.alive == 10
            assert stats.suspected == stats.evicted == 0
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


async def test_a_dead_member_is_suspected_then_evicted_and_subscribers_hear_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        for i in range(6):
            await cluster.start(i, bootstrap=[0] if i else ())
        await cluster.wait_until(
            lambda: all(len(m.members()) == 6 for m in cluster.members.values()), limit=10
        )
        events = cluster.members[1].subscribe()
        heard: list[MembershipEvent] = []
        cluster.members[2].add_listener(heard.append)
        victim = cluster.contacts[5].node_id
        times: dict[tuple[int, MemberState], float] = {}
        for o in range(5):

            def record(event: MembershipEvent, o: int = o) -> None:
                if event.member.node_id == victim:
                    times.setdefault((o, event.member.state), trio.current_time())

            cluster.members[o].add_listener(record)
        killed_at = trio.current_time()
        cluster.stop(5)
        observers = cluster.running()
        await cluster.wait_until(
            lambda: all(cluster.state_of(o, 5) is EVICTED for o in observers), limit=20
        )
        suspected_after = max(
            min(times.get((o, SUSPECTED), math.inf), times[(o, EVICTED)]) for o in observers
        )
        assert suspected_after - killed_at <= CONFIG.detection_time
        evicted_after = max(times[(o, EVICTED)] for o in observers)
        bound = CONFIG.detection_time + CONFIG.eviction_delay + CONFIG.ping_interval
        assert evicted_after - killed_at <= bound
        for o in observers:
            assert victim not in {m.node_id for m in cluster.members[o].members()}
        first = events.receive_nowait()
        second = events.receive_nowait()
        assert (first.member.node_id, first.previous, first.member.state) == (
            victim,
            ALIVE,
            SUSPECTED,
        )
        assert (second.previous, second.member.state) == (SUSPECTED, EVICTED)
        assert [e.member.state for e in heard if e.member.node_id == victim] == [
            SUSPECTED,
            EVICTED,
        ]
        stats = cluster.members[1].statistics()
        assert stats.evicted == 1
        assert stats.alive == 5
        assert stats.pings_failed >= CONFIG.suspect_after
        await events.aclose()
        await trio.sleep(5)  # a closed subscription is dropped without complaint
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


async def test_a_restarted_node_is_readmitted_with_a_higher_incarnation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        for i in range(5):
            await cluster.start(i, bootstrap=[0] if i else ())
        await cluster.wait_until(
            lambda: all(len(m.members()) == 5 for m in cluster.members.values()), limit=10
        )
        cluster.stop(4)
        await cluster.wait_until(
            lambda: all(cluster.state_of(o, 4) is EVICTED for o in range(4)), limit=20
        )
        network.revive(cluster.contacts[4].node_id)
        reborn = await cluster.start(4, bootstrap=[2])  # fresh state: incarnation 0
        await cluster.wait_until(
            lambda: all(cluster.state_of(o, 4) is ALIVE for o in range(4)), limit=10
        )
        assert reborn.incarnation >= 1
        for o in range(4):
            member = cluster.members[o].get(cluster.contacts[4].node_id)
            assert member is not None
            assert member.incarnation == reborn.incarnation
        assert sum(cluster.members[o].statistics().readmissions for o in range(4)) == 4
        nursery.cancel_scope.cancel()


async def test_a_slow_node_refutes_suspicion_and_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    config = MembershipConfig(
        ping_interval=1.0,
        ping_timeout=0.5,
        suspect_after=2,
        eviction_delay=30.0,
        gossip_interval=1.0,
        gossip_fanout=2,
        gossip_timeout=5.0,
        reconnect_interval=2.0,
        forget_after=60.0,
    )
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        for i in range(5):
            await cluster.start(i, bootstrap=[0] if i else (), config=config)
        await cluster.wait_until(
            lambda: all(len(m.members()) == 5 for m in cluster.members.values()), limit=10
        )
        slow = cluster.contacts[3].node_id
        network.delay(slow, 0.3)  # round trips of 1.2 s: every ping to it times out
        await cluster.wait_until(lambda: cluster.state_of(0, 3) is SUSPECTED, limit=10)
        network.delay(slow, 0.0)
        await cluster.wait_until(
            lambda: all(cluster.state_of(o, 3) is ALIVE for o in (0, 1, 2, 4)), limit=10
        )
        assert cluster.members[3].incarnation >= 1
        assert cluster.members[3].statistics().refutations >= 1
        assert all(m.statistics().evictions == 0 for m in cluster.members.values())
        nursery.cancel_scope.cancel()


async def test_round_robin_probing_still_detects_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    config = MembershipConfig(
        ping_interval=1.0,
        ping_timeout=0.5,
        suspect_after=2,
        eviction_delay=5.0,
        probes_per_interval=2,
        gossip_interval=1.0,
        gossip_fanout=2,
        reconnect_interval=2.0,
        forget_after=60.0,
    )
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        for i in range(12):
            await cluster.start(i, bootstrap=[0] if i else (), config=config)
        await cluster.wait_until(
            lambda: all(len(m.members()) == 12 for m in cluster.members.values()), limit=10
        )
        before = [m.statistics().pings_sent for m in cluster.members.values()]
        await trio.sleep(10)
        after = [m.statistics().pings_sent for m in cluster.members.values()]
        # Two probes per interval, not eleven.
        assert all(a - b <= 2 * 11 for a, b in zip(after, before, strict=True))
        cluster.stop(7)
        await cluster.wait_until(
            lambda: all(cluster.state_of(o, 7) is EVICTED for o in cluster.running()), limit=30
        )
        nursery.cancel_scope.cancel()


async def test_handlers_reject_malformed_requests() -> None:
    network = FakeNetwork()
    me, caller = make_contact(0), make_contact(1)
    membership = Membership(me, network.endpoint(me))
    me_wire, caller_wire = contact_to_wire(me), contact_to_wire(caller)
    bad_pings: list[Any] = [
        None,
        {},
        {"inc": -1, "from": caller_wire},
        {"inc": 0, "view": ["zombie", 0], "from": caller_wire},
        {"inc": 0, "view": None},  # who is calling?
        {"inc": 0, "view": None, "from": me_wire},  # not the authenticated caller
    ]
    for args in bad_pings:
        with pytest.raises(RemoteError) as info:
            await membership.handle_ping(caller, args)
        assert info.value.code == "bad_request"
    bad_gossip: list[Any] = [
        None,
        {},
        {"members": [], "from": None},
        {"members": [], "from": me_wire},  # not the authenticated caller
        {"members": [[1, 2, 3]], "from": caller_wire},
        {"members": "x", "from": caller_wire},
    ]
    for args in bad_gossip:
        with pytest.raises(RemoteError) as info:
            await membership.handle_gossip(caller, args)
        assert info.value.code == "bad_request"
    # A well-formed ping from a stranger introduces it.
    reply = await membership.handle_ping(caller, {"inc": 2, "view": None, "from": caller_wire})
    assert reply == {"inc": 0, "view": ["alive", 2], "draining": False}
    assert [m.node_id for m in membership.members()] == [me.node_id, caller.node_id]
    assert {PING, GOSSIP} == {"dht.ping", "dht.gossip"}


async def test_incoming_calls_take_addresses_from_members_not_the_transport() -> None:
    network = FakeNetwork()
    me, peer = make_contact(0), make_contact(1)
    heard: list[Contact] = []
    membership = Membership(me, network.endpoint(me), on_heard=heard.append)
    ephemeral = Contact(peer.node_id, Address("10.0.0.1", 54321), peer.public_key)
    # An unknown caller seen only through the transport is not added...
    membership.note_caller(ephemeral)
    assert membership.get(peer.node_id) is None
    # ...its ping declares its listening address, which is what we keep.
    args = {"inc": 0, "view": None, "from": contact_to_wire(peer)}
    await membership.handle_ping(ephemeral, args)
    member = membership.get(peer.node_id)
    assert member is not None
    assert member.contact == peer
    membership.note_caller(ephemeral)
    assert heard == [peer, peer]


def test_a_restart_with_a_higher_incarnation_supersedes_the_old_entry() -> None:
    me, other = make_contact(0), make_contact(1)
    table = MemberTable(me)
    table.merge(other, SUSPECTED, 3, now=0.0)
    moved = Contact(other.node_id, Address("10.1.1.1", 7), other.public_key)
    event = table.merge(moved, ALIVE, 1_700_000_000, now=1.0)
    assert event is not None
    assert event.member.contact == moved
    assert MemberTable(me, incarnation=5).incarnation == 5


async def test_joining_through_an_address_only_bootstrap_contact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery)
        first = await cluster.start(0, bootstrap=())
        address_only = Contact(NodeId(b""), cluster.contacts[0].address)
        contact = cluster.contacts.setdefault(1, make_contact(1))
        endpoint = network.endpoint(contact)
        joiner = Membership(contact, endpoint, config=CONFIG, bootstrap=[address_only])
        joiner.register_handlers(endpoint)
        await start_service(nursery, joiner.run)
        ids = {bytes(contact.node_id), bytes(cluster.contacts[0].node_id)}
        assert {bytes(m.node_id) for m in joiner.members()} == ids
        assert joiner.get(cluster.contacts[0].node_id) is not None
        await trio.sleep(5)
        assert {bytes(m.node_id) for m in first.members()} == ids
        assert all(len(m.node_id) == 20 for m in joiner.all_members())
        # The bootstrap address belongs to a live member: no reconnect attempts to it.
        assert joiner.statistics().gossip_sent <= 1 + 5 * 2
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []
