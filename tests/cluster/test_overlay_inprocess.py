"""A 30-node overlay in one process on the fake network, under trio's MockClock.

Checks that ``closest_nodes`` is exact over the live members on every node, that iterative
FIND_NODE finds the true closest nodes (and how many rounds it takes), that killed nodes are
suspected within the detection time and evicted after the eviction delay, and that a
partitioned cluster converges again after healing.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Callable, Sequence

import trio
import trio.testing

from dht.ids import NODE_ID_BYTES, Address, Contact, NodeId, distance, key_to_node_space
from dht.membership import MembershipConfig, MembershipEvent, MemberState
from dht.overlay import Overlay, OverlayConfig
from tests.fake_network import FakeNetwork, make_contact, start_service

logger = logging.getLogger(__name__)

MEMBERSHIP = MembershipConfig(
    ping_interval=1.0,
    ping_timeout=0.5,
    suspect_after=3,
    eviction_delay=5.0,
    gossip_interval=1.0,
    gossip_fanout=3,
    reconnect_interval=2.0,
    forget_after=120.0,
)
# A small bucket size makes the 30-node Kademlia lookups multi-hop, as in a larger network.
CONFIG = OverlayConfig(ksize=5, alpha=3, lookup_timeout=1.0, membership=MEMBERSHIP)


class _Cluster:
    def __init__(self, network: FakeNetwork, nursery: trio.Nursery, seed: int) -> None:
        self.network = network
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.nodes: list[Overlay] = []
        self.scopes: list[trio.CancelScope] = []

    async def start(self, n: int, config: OverlayConfig = CONFIG) -> None:
        for i in range(n):
            contact = make_contact(i, self.rng)
            endpoint = self.network.endpoint(contact)
            bootstrap = [self.rng.choice(self.nodes).own] if self.nodes else []
            overlay = Overlay(
                contact,
                endpoint,
                endpoint,
                config=config,
                bootstrap=bootstrap,
                rng=random.Random(i),
            )
            self.nodes.append(overlay)
            self.scopes.append(await start_service(self.nursery, overlay.run))

    def kill(self, index: int) -> None:
        self.scopes[index].cancel()
        self.network.kill(self.nodes[index].own.node_id)

    def live(self) -> list[Overlay]:
        return [n for n, s in zip(self.nodes, self.scopes, strict=True) if not s.cancel_called]

    async def wait_until(self, condition: Callable[[], bool], limit: float) -> float:
        start = trio.current_time()
        while not condition():
            assert trio.current_time() - start <= limit, "condition not reached in time"
            await trio.sleep(0.1)
        return trio.current_time() - start


def _brute_force(key: bytes, contacts: Sequence[Contact], k: int) -> list[Contact]:
    target = key_to_node_space(key)
    return sorted(contacts, key=lambda c: distance(c.node_id, target))[:k]


def _member_ids(node: Overlay) -> set[bytes]:
    return {bytes(m.node_id) for m in node.members()}


async def _check_exact(cluster: _Cluster, keys: list[bytes]) -> list[int]:
    """closest_nodes on every live node equals brute force; lookups too. Returns rounds."""
    live = cluster.live()
    contacts = [n.own for n in live]
    for key in keys:
        expected = _brute_force(key, contacts, 5)
        for node in live:
            assert node.closest_nodes(key, 5) == expected
    rounds = []

    async def look_up(key: bytes, origin: Overlay) -> None:
        result = await origin.lookup_nodes(key, 5)
        others = [c for c in contacts if c != origin.own]
        assert list(result.contacts) == _brute_force(key, others, 5)
        rounds.append(result.rounds)

    async with trio.open_nursery() as nursery:  # concurrent lookups, as storage would issue
        for key in keys:
            nursery.start_soon(look_up, key, cluster.rng.choice(live))
    assert len(rounds) == len(keys)
    return rounds


async def test_thirty_nodes_exact_placement_and_failure_handling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(latency=0.002)
    keys = [random.Random(i).randbytes(32) for i in range(200)]
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery, seed=1)
        await cluster.start(30)
        everyone = {bytes(n.own.node_id) for n in cluster.nodes}
        joined = await cluster.wait_until(
            lambda: all(_member_ids(n) == everyone for n in cluster.nodes), limit=30
        )
        await trio.sleep(3)  # a few ping rounds: every node has heard from every other
        rounds = await _check_exact(cluster, keys)
        print(
            f"\n30 nodes, ksize={CONFIG.ksize}, alpha={CONFIG.alpha}: joined in {joined:.1f}s; "
            f"FIND_NODE rounds over {len(rounds)} lookups: "
            f"mean {statistics.mean(rounds):.2f}, max {max(rounds)}"
        )
        assert max(rounds) <= 6
        table_sizes = [len(n.routing) for n in cluster.nodes]
        print(f"routing table contacts per node: mean {statistics.mean(table_sizes):.1f} of 29")

        # Kill five nodes (two refuse connections, three vanish silently), and note when each
        # survivor stops considering each of them alive, and when it evicts them.
        changed_at: dict[tuple[bytes, bytes, MemberState], float] = {}

        def recorder(observer: bytes) -> Callable[[MembershipEvent], None]:
            def record(event: MembershipEvent) -> None:
                key = (observer, bytes(event.member.node_id), event.member.state)
                changed_at.setdefault(key, trio.current_time())

            return record

        for node in cluster.nodes:
            node.membership.add_listener(recorder(bytes(node.own.node_id)))
        killed_at = trio.current_time()
        victims = cluster.rng.sample(range(30), 5)
        for index in victims[:2]:
            cluster.kill(index)
        for index in victims[2:]:
            cluster.kill(index)
            network.kill(cluster.nodes[index].own.node_id, blackhole=True)
        dead = {bytes(cluster.nodes[i].own.node_id) for i in victims}
        survivors = cluster.live()
        assert len(survivors) == 25

        await cluster.wait_until(lambda: all(not _member_ids(n) & dead for n in survivors), 30)
        pairs = [(bytes(n.own.node_id), victim) for n in survivors for victim in dead]
        suspected = (
            max(
                min(
                    changed_at.get((observer, victim, state), float("inf"))
                    for state in (MemberState.SUSPECTED, MemberState.EVICTED)
                )
                for observer, victim in pairs
            )
            - killed_at
        )
        evicted = max(changed_at[(o, v, MemberState.EVICTED)] for o, v in pairs) - killed_at
        assert suspected <= MEMBERSHIP.detection_time
        assert evicted <= (
            MEMBERSHIP.detection_time + MEMBERSHIP.eviction_delay + MEMBERSHIP.ping_interval
        )
        for node in survivors:
            assert node.membership.statistics().evicted == 5
            assert not {bytes(c.node_id) for c in node.routing.contacts()} & dead
        rounds_after = await _check_exact(cluster, keys)
        print(
            f"killed 5: suspected by every survivor within {suspected:.2f}s "
            f"(bound {MEMBERSHIP.detection_time}s), evicted everywhere within {evicted:.2f}s; "
            f"FIND_NODE rounds mean {statistics.mean(rounds_after):.2f}, "
            f"max {max(rounds_after)}"
        )
        stats = survivors[0].statistics()
        logger.info("overlay statistics of one survivor: %s", stats)
        assert stats.members == 25
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


async def test_partition_then_heal_converges(autojump_clock: trio.testing.MockClock) -> None:
    network = FakeNetwork(latency=0.002)
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery, seed=2)
        await cluster.start(5)
        nodes = cluster.nodes
        everyone = {bytes(n.own.node_id) for n in nodes}
        await cluster.wait_until(lambda: all(_member_ids(n) == everyone for n in nodes), 20)
        left, right = nodes[:2], nodes[2:]
        network.partition([n.own.node_id for n in left], [n.own.node_id for n in right])
        # Long enough for each side to evict the other.
        await cluster.wait_until(
            lambda: (
                all(len(n.members()) == len(left) for n in left)
                and all(len(n.members()) == len(right) for n in right)
            ),
            limit=MEMBERSHIP.detection_time + MEMBERSHIP.eviction_delay + 5,
        )
        for node in left:
            assert node.closest_nodes(b"k" * 32, 5) == _brute_force(
                b"k" * 32, [n.own for n in left], 5
            )
        network.heal()
        late_evictions: list[MembershipEvent] = []

        def watch(event: MembershipEvent) -> None:
            if event.member.state is MemberState.EVICTED:
                late_evictions.append(event)

        for node in nodes:
            node.membership.add_listener(watch)

        def converged() -> bool:
            views = [
                {(bytes(m.node_id), m.state, m.incarnation) for m in n.membership.all_members()}
                for n in nodes
            ]
            return all(v == views[0] for v in views) and all(
                state is MemberState.ALIVE for _, state, _ in views[0]
            )

        took = await cluster.wait_until(converged, limit=30)
        print(f"\npartition {{1,2}}|{{3,4,5}} healed: member lists converged after {took:.1f}s")
        for node in nodes:
            assert _member_ids(node) == everyone
        # Hearing the other side's (stale) evictions of live nodes did not evict anyone anew.
        assert late_evictions == []
        key = random.Random(3).randbytes(NODE_ID_BYTES)
        expected = _brute_force(key, [n.own for n in nodes], 5)
        assert all(n.closest_nodes(key, 5) == expected for n in nodes)
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


async def test_stale_buckets_are_refreshed_by_lookups(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Pings and gossip practically off: only joins, the own-id lookups and bucket refreshes
    # teach the routing tables anything.
    quiet = MembershipConfig(
        ping_interval=1000.0,
        ping_timeout=0.5,
        eviction_delay=1000.0,
        gossip_interval=1000.0,
        reconnect_interval=1000.0,
        forget_after=1000.0,
    )
    config = OverlayConfig(ksize=3, refresh_interval=10.0, lookup_timeout=1.0, membership=quiet)
    network = FakeNetwork(latency=0.002)
    async with trio.open_nursery() as nursery:
        cluster = _Cluster(network, nursery, seed=4)
        await cluster.start(40, config=config)
        before = sum(len(n.routing) for n in cluster.nodes)
        await trio.sleep(30)
        after = sum(len(n.routing) for n in cluster.nodes)
        refreshes = sum(n.statistics().refreshes for n in cluster.nodes)
        assert refreshes > 0
        assert after > before
        print(
            f"\nbucket refresh: {refreshes} refresh lookups; routing contacts {before} -> {after}"
        )
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


def _contact_at(value: int) -> Contact:
    return Contact(
        NodeId(value.to_bytes(NODE_ID_BYTES, "big")), Address("10.0.9.9", value % 60000 + 1)
    )


async def test_full_bucket_heads_are_pinged_and_dead_ones_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    quiet = MembershipConfig(
        ping_interval=1000.0,
        ping_timeout=0.5,
        eviction_delay=1000.0,
        gossip_interval=1000.0,
        reconnect_interval=1000.0,
        forget_after=1000.0,
    )
    network = FakeNetwork()
    own = _contact_at(0)
    endpoint = network.endpoint(own)
    overlay = Overlay(own, endpoint, endpoint, config=OverlayConfig(ksize=2, membership=quiet))
    # Ids sharing exactly five leading bits: their bucket can neither split nor grow.
    top = 1 << 159
    dead_head, live_head = _contact_at(top | 1), _contact_at(top | (1 << 154))
    newcomers = [_contact_at(top | 2), _contact_at(top | 3)]

    async def pong(caller: Contact, args: object) -> object:
        return {"inc": 0, "view": None}

    network.endpoint(live_head).register("dht.ping", pong)
    async with trio.open_nursery() as nursery:
        await start_service(nursery, overlay.run)
        overlay.routing.add(dead_head)
        overlay.routing.add(live_head)
        # A newcomer meets a full bucket: its head (never heard from) is pinged, does not
        # answer, and the newcomer takes its place.
        overlay.membership.note_alive(newcomers[0])
        await trio.sleep(1)
        assert dead_head.node_id not in overlay.routing
        assert newcomers[0].node_id in overlay.routing
        # The next head answers: it stays, and the newcomer waits in the replacement cache.
        overlay.membership.note_alive(newcomers[1])
        await trio.sleep(1)
        assert live_head.node_id in overlay.routing
        assert newcomers[1].node_id not in overlay.routing
        assert overlay.routing.statistics().replacements == 1
        assert overlay.statistics().head_pings == 2
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []
