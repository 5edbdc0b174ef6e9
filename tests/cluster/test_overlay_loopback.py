"""A 30-node overlay in one process on loopback, over the real secure RPC.

The same checks as ``test_overlay_inprocess.py`` (which runs on the fake network under a
mock clock), but every node is a :class:`dht.rpc.RpcNode` on its own 127.0.0.1 port with
the authenticated, encrypted transport, and time is real: ``closest_nodes`` is exact on
every node, iterative FIND_NODE finds the true closest nodes (its rounds are printed), five
killed nodes are suspected within the configured detection time and evicted after the
eviction delay, and placement and lookups are exact again afterwards.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from dht.ids import Contact, distance, key_to_node_space
from dht.membership import MembershipConfig, MembershipEvent, MemberState
from dht.overlay import Overlay, OverlayConfig
from dht.rpc import RpcNode
from tests.dht_strategies import make_member, make_network

NODES = 30
KILLED = 5
K = 5
KEYS = 200
#: Failure detection: a dead member is suspected within 2 * 2.0 + 2.0 = 6 s and evicted 2 s
#: after that. Faster timings do not fit one Python process hosting 30 nodes on a shared
#: 2-core machine: every node pings all 29 others (~435 pings/s here, 0.4 core), and with
#: 1 s timeouts the burst of ~450 handshakes when the member lists fill up already makes
#: calls time out, healthy nodes get suspected and joins fail.
MEMBERSHIP = MembershipConfig(
    ping_interval=2.0,
    ping_timeout=2.0,
    suspect_after=2,
    eviction_delay=2.0,
    gossip_interval=1.0,
    gossip_fanout=2,
    gossip_timeout=2.0,
    reconnect_interval=2.0,
    forget_after=60.0,
)
# ksize=5 as in the fake-network test. With 30 nodes the routing tables still end up holding
# (nearly) all 29 others, because buckets also split at depths not divisible by 5 (paper,
# section 4.2), so a lookup takes the minimum of two rounds: alpha requests, then the rest
# of the k closest. The rounds are printed, not assumed. The request timeout is generous:
# with every node up, a lookup is exact unless a request times out, and this process shares
# its core with 29 other nodes.
CONFIG = OverlayConfig(ksize=5, alpha=3, lookup_timeout=5.0, membership=MEMBERSHIP)
#: Concurrent lookups (as storage would issue them), bounded so that 200 lookups of a
#: single-threaded process do not make each other time out.
LOOKUP_CONCURRENCY = 10


@dataclass
class LoopbackNode:
    """One running node: its RPC endpoint, overlay and the scope that kills it."""

    rpc: RpcNode
    overlay: Overlay
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def contact(self) -> Contact:
        """How peers reach the node."""
        return self.overlay.own

    @property
    def running(self) -> bool:
        """Whether the node has not been killed."""
        return not self.scope.cancel_called


class LoopbackCluster:
    """Nodes of one network, each on its own loopback port, all in this trio run."""

    def __init__(self, nursery: trio.Nursery, seed: int) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.owner, self.network = make_network("loopback-test")
        self.nodes: list[LoopbackNode] = []

    async def start(self, count: int) -> None:
        """Start ``count`` nodes one after the other, each joining through a random one."""
        for index in range(count):
            bootstrap = [self.rng.choice(self.nodes).contact] if self.nodes else []
            node: LoopbackNode = await self.nursery.start(self._serve, index, bootstrap)
            self.nodes.append(node)

    async def _serve(
        self,
        index: int,
        bootstrap: list[Contact],
        *,
        task_status: trio.TaskStatus[LoopbackNode],
    ) -> None:
        member = make_member(self.owner, self.network)
        rpc = RpcNode(member.identity, member.passport, member.network, listen_host="127.0.0.1")
        stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(rpc.run)
                    overlay = Overlay(
                        rpc.contact,
                        rpc,
                        rpc,
                        config=CONFIG,
                        bootstrap=bootstrap,
                        rng=random.Random(index),
                    )
                    await nursery.start(overlay.run)
                    task_status.started(LoopbackNode(rpc, overlay, scope, stopped))
        finally:
            stopped.set()

    async def kill(self, node: LoopbackNode) -> None:
        """Cancel everything the node runs (its listener and connections close)."""
        node.scope.cancel()
        await node.stopped.wait()

    def live(self) -> list[LoopbackNode]:
        """The nodes not killed."""
        return [n for n in self.nodes if n.running]


async def wait_until(condition: Callable[[], bool], limit: float, what: str) -> float:
    """Wait (polling) until ``condition`` holds; return the seconds it took.

    Raises:
        AssertionError: it did not hold within ``limit`` seconds.
    """
    start = trio.current_time()
    while not condition():
        assert trio.current_time() - start <= limit, f"not within {limit} s: {what}"
        await trio.sleep(0.05)
    return trio.current_time() - start


def brute_force(key: bytes, contacts: Sequence[Contact], k: int) -> list[Contact]:
    """The ``k`` contacts nearest to ``key``, by sorting all of them."""
    target = key_to_node_space(key)
    return sorted(contacts, key=lambda c: distance(c.node_id, target))[:k]


def lookup_failures(cluster: LoopbackCluster) -> int:
    """``dht.find_node`` requests that failed (unreachable or timed out), on all nodes."""
    return sum(n.overlay.statistics().lookup.failures for n in cluster.nodes)


def member_ids(node: LoopbackNode) -> set[bytes]:
    """Ids of the members ``node`` does not consider evicted (itself included)."""
    return {bytes(m.node_id) for m in node.overlay.members()}


async def check_exact(cluster: LoopbackCluster, keys: list[bytes]) -> list[int]:
    """Check placement and lookups against brute force; return the lookups' rounds.

    ``closest_nodes(key, K)`` must equal the brute-force answer over the live members on
    every live node, and an iterative lookup from a random live node must return the ``K``
    nearest other live nodes.
    """
    live = cluster.live()
    contacts = [n.contact for n in live]
    for key in keys:
        expected = brute_force(key, contacts, K)
        for node in live:
            assert node.overlay.closest_nodes(key, K) == expected
    rounds: list[int] = []
    limiter = trio.CapacityLimiter(LOOKUP_CONCURRENCY)

    async def look_up(key: bytes, origin: LoopbackNode) -> None:
        async with limiter:
            result = await origin.overlay.lookup_nodes(key, K)
        others = [c for c in contacts if c != origin.contact]
        expected = brute_force(key, others, K)
        assert list(result.contacts) == expected, (
            f"lookup for {key.hex()[:12]} from {origin.contact.address}: "
            f"{result.rounds} rounds, {result.queried} queried, {result.failed} failed; "
            f"found {[c in result.contacts for c in expected]} of the nearest"
        )
        rounds.append(result.rounds)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(look_up, key, cluster.rng.choice(live))
    assert len(rounds) == len(keys)
    return rounds


async def test_thirty_nodes_on_loopback_exact_placement_and_failure_handling() -> None:
    """30 secure-RPC nodes: exact placement and lookups; 5 killed are suspected, evicted."""
    keys = [random.Random(i).randbytes(32) for i in range(KEYS)]
    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        cluster = LoopbackCluster(nursery, seed=7)
        await cluster.start(NODES)
        started = time.monotonic() - began
        everyone = {bytes(n.contact.node_id) for n in cluster.nodes}
        joined = await wait_until(
            lambda: all(member_ids(n) == everyone for n in cluster.nodes), 30, "full lists"
        )
        await trio.sleep(MEMBERSHIP.ping_interval)  # one ping round: every node heard from all
        failures_before = lookup_failures(cluster)
        checking = time.monotonic()
        rounds = await check_exact(cluster, keys)
        print(
            f"\n{NODES} nodes on loopback (secure RPC), ksize={CONFIG.ksize}, "
            f"alpha={CONFIG.alpha}: started in {started:.1f} s, full member lists "
            f"{joined:.1f} s later; {len(keys)} keys exact on every node; FIND_NODE rounds "
            f"over {len(rounds)} lookups ({time.monotonic() - checking:.1f} s): "
            f"mean {statistics.mean(rounds):.2f}, max {max(rounds)}; routing table contacts "
            f"per node: mean {statistics.mean(len(n.overlay.routing) for n in cluster.nodes):.1f}"
            f" of {NODES - 1}"
        )
        assert max(rounds) <= 6
        assert lookup_failures(cluster) == failures_before, "find_node requests failed"

        # Kill five nodes; note when each survivor suspects and evicts each of them.
        changed_at: dict[tuple[bytes, bytes, MemberState], float] = {}

        def recorder(observer: bytes) -> Callable[[MembershipEvent], None]:
            def record(event: MembershipEvent) -> None:
                key = (observer, bytes(event.member.node_id), event.member.state)
                changed_at.setdefault(key, trio.current_time())

            return record

        for node in cluster.nodes:
            node.overlay.membership.add_listener(recorder(bytes(node.contact.node_id)))
        victims = cluster.rng.sample(cluster.nodes, KILLED)
        killed_at = trio.current_time()
        for victim in victims:
            await cluster.kill(victim)
        dead = {bytes(v.contact.node_id) for v in victims}
        survivors = cluster.live()
        assert len(survivors) == NODES - KILLED

        bound = MEMBERSHIP.detection_time + MEMBERSHIP.eviction_delay + MEMBERSHIP.ping_interval
        gone = await wait_until(
            lambda: all(not member_ids(n) & dead for n in survivors), bound + 10, "evictions"
        )
        pairs = [(bytes(n.contact.node_id), victim) for n in survivors for victim in dead]
        suspected = [
            min(
                changed_at.get((observer, victim, state), float("inf"))
                for state in (MemberState.SUSPECTED, MemberState.EVICTED)
            )
            - killed_at
            for observer, victim in pairs
        ]
        evicted = [changed_at[(o, v, MemberState.EVICTED)] - killed_at for o, v in pairs]
        print(
            f"killed {KILLED}: suspected by every survivor within {max(suspected):.2f} s "
            f"(configured detection time {MEMBERSHIP.detection_time} s), evicted by all within "
            f"{max(evicted):.2f} s (eviction delay {MEMBERSHIP.eviction_delay} s; bound "
            f"{bound} s); no survivor lists them after {gone:.2f} s"
        )
        assert max(suspected) <= MEMBERSHIP.detection_time
        assert min(evicted) >= MEMBERSHIP.eviction_delay
        assert max(evicted) <= bound
        for node in survivors:
            assert node.overlay.membership.statistics().evicted == KILLED
            assert not {bytes(c.node_id) for c in node.overlay.routing.contacts()} & dead

        rounds_after = await check_exact(cluster, keys)
        print(
            f"after the evictions: placement exact on all {len(survivors)} survivors; "
            f"FIND_NODE rounds mean {statistics.mean(rounds_after):.2f}, max {max(rounds_after)}"
        )
        assert max(rounds_after) <= 6
        nursery.cancel_scope.cancel()
    print(f"total {time.monotonic() - began:.1f} s")
