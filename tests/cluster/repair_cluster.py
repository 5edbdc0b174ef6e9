"""An in-process cluster whose nodes run repair, with fast eviction, and census helpers.

The census asks every running node's silo what it holds (the same answer ``repair.holdings``
gives over RPC) and compares it with the placement rule of :mod:`storage.repair_plan`.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dht.ids import Contact, NodeId
from dht.membership import MembershipConfig, MemberState
from dht.overlay import OverlayConfig
from storage.api import ChunkRef
from storage.ids import BlockAddress
from storage.kv_client import KVClient
from storage.paxos import AcceptorState, Ballot
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.repair import RepairConfig, RepairService
from storage.repair_plan import targets
from tests.cluster.conftest import Cluster, ClusterNode

#: Failure detection and eviction within about two seconds.
FAST_MEMBERSHIP = MembershipConfig(
    ping_interval=0.25,
    ping_timeout=0.2,
    suspect_after=2,
    eviction_delay=1.0,
    gossip_interval=0.2,
    gossip_fanout=3,
    gossip_timeout=1.0,
    reconnect_interval=0.5,
    forget_after=600.0,
)
FAST_REPAIR = RepairConfig(scan_interval=1.0, settle_delay=0.2, parallel=8, rpc_timeout=3.0)
REPLICATED = Redundancy(replicas=3)
ERASURE = Redundancy(data=4, parity=2)


@dataclass
class RepairCluster:
    """A :class:`Cluster` plus each node's repair service and register client."""

    cluster: Cluster
    services: dict[int, RepairService] = field(default_factory=dict)
    movers: dict[int, KVClient] = field(default_factory=dict)

    def running(self) -> list[ClusterNode]:
        """The nodes that are up."""
        return self.cluster.running()

    def service(self, index: int) -> RepairService:
        """Node ``index``'s repair service."""
        return self.services[index]

    async def start(self, index: int) -> ClusterNode:
        """Start node ``index`` (its repair service starts with it)."""
        return await self.cluster.start(index)

    async def add_node(self) -> ClusterNode:
        """Create and start one more node; it joins through the running ones."""
        node = self.cluster.add()
        return await self.cluster.start(node.index)

    async def kill_for_good(self, index: int) -> NodeId:
        """Stop node ``index`` and never start it again (its data is gone with it)."""
        node_id = self.cluster.nodes[index].identity.node_id
        await self.cluster.stop(index)
        return node_id

    async def wait_evicted(self, node_id: NodeId, timeout: float = 15.0) -> None:
        """Wait until every running node lists ``node_id`` as evicted (or not at all)."""
        with trio.fail_after(timeout):
            while True:
                states = []
                for node in self.running():
                    assert node.overlay is not None
                    member = node.overlay.membership.get(node_id)
                    states.append(member is None or member.state is MemberState.EVICTED)
                if all(states):
                    return
                await trio.sleep(0.1)

    def eligible(self) -> list[Contact]:
        """Running, non-draining nodes, as the placement rule counts them."""
        return [
            n.contact
            for n in self.running()
            if not self.services[n.index].draining and n.overlay is not None
        ]


@asynccontextmanager
async def repair_cluster(
    root: Path, n: int, *, repair: RepairConfig = FAST_REPAIR
) -> AsyncIterator[RepairCluster]:
    """Start ``n`` nodes running repair (fast eviction); stop them all on exit."""
    async with trio.open_nursery() as nursery:
        holder: list[RepairCluster] = []

        async def on_start(node: ClusterNode, node_nursery: trio.Nursery) -> None:
            assert node.rpc is not None
            assert node.overlay is not None
            assert node.silo is not None
            mover = KVClient(
                node.rpc,
                OverlayPlacement(node.overlay),
                keys=ClientKeys.generate(),
                default_redundancy=REPLICATED,
                timeout=10.0,
            )
            await node_nursery.start(mover.run)
            service = RepairService(
                node.silo,
                node.rpc,
                node.overlay.membership,
                mover,
                default_replicas=3,
                config=repair,
            )
            service.register_handlers(node.rpc)
            holder[0].services[node.index] = service
            holder[0].movers[node.index] = mover
            await node_nursery.start(service.run)

        cluster = Cluster(
            nursery,
            root,
            overlay_config=OverlayConfig(lookup_timeout=1.0, membership=FAST_MEMBERSHIP),
            on_start=on_start,
        )
        rc = RepairCluster(cluster)
        holder.append(rc)
        for _ in range(n):
            cluster.add()
        for i in range(n):
            await cluster.start(i)
        await cluster.wait_converged()
        try:
            yield rc
        finally:
            await cluster.aclose()


def random_payload(rng: random.Random, index: int) -> bytes:
    """A payload of mixed size (mostly small, some above the silo's file threshold)."""
    size = rng.choice([100, 1000, 4000, 20_000, 70_000, 200_000])
    return index.to_bytes(4, "big") + os.urandom(size)


@dataclass(frozen=True)
class ChunkCensus:
    """Where one chunk is, by the silos of the running nodes."""

    ref: ChunkRef
    holders: dict[NodeId, frozenset[int | None]]

    def at_full_redundancy(self, nodes: int) -> bool:
        """``r`` replicas, or all ``k + m`` fragments, on distinct nodes of ``nodes`` running.

        With fewer running nodes than the policy needs, every node must hold a share.
        """
        policy = self.ref.redundancy
        spread = min(policy.nodes_needed, nodes)
        if policy.replicas is not None:
            return sum(None in keys for keys in self.holders.values()) >= spread
        indexes: set[int] = set()
        for keys in self.holders.values():
            indexes |= {k for k in keys if k is not None}
        with_fragments = sum(1 for keys in self.holders.values() if keys - {None})
        return len(indexes) == policy.nodes_needed and with_fragments >= spread

    def matches_placement(self, eligible: list[Contact]) -> bool:
        """The holders are exactly the placement rule's targets."""
        width = self.ref.redundancy.nodes_needed
        want = {c.node_id for c in targets(self.ref.address, eligible, width)}
        return {n for n, keys in self.holders.items() if keys} == want


async def chunk_census(rc: RepairCluster, refs: list[ChunkRef]) -> list[ChunkCensus]:
    """Ask every running node's silo which keys of each chunk it holds."""
    addresses = [r.address for r in refs]
    held: dict[NodeId, dict[BlockAddress, list[int | None]]] = {}
    for node in rc.running():
        assert node.silo is not None
        held[node.identity.node_id] = await node.silo.holdings(addresses)
    return [
        ChunkCensus(
            ref,
            {
                node: frozenset(keys[ref.address])
                for node, keys in held.items()
                if ref.address in keys
            },
        )
        for ref in refs
    ]


@dataclass(frozen=True)
class RegisterCensus:
    """Where one register is: each running node's accepted ballot and value for it."""

    address: BlockAddress
    states: dict[NodeId, AcceptorState]

    def newest(self) -> AcceptorState | None:
        """The state with the highest accepted ballot."""
        accepted = [s for s in self.states.values() if s.accepted_ballot is not None]
        return max(accepted, key=lambda s: s.accepted_ballot or Ballot(0, b""), default=None)

    def at_full_redundancy(self) -> bool:
        """Not moving, and every member of its replica set runs and holds the newest value."""
        newest = self.newest()
        if newest is None or newest.value is None or newest.value.is_moving:
            return False
        return all(
            node in self.states and self.states[node].accepted_ballot == newest.accepted_ballot
            for node in newest.value.replica_set
        )

    def matches_placement(self, eligible: list[Contact]) -> bool:
        """Its replica set is the placement rule's targets."""
        newest = self.newest()
        if newest is None or newest.value is None:
            return False
        size = len(newest.value.replica_set)
        want = {c.node_id for c in targets(self.address, eligible, size)}
        return set(newest.value.replica_set) == want


async def register_census(rc: RepairCluster, addresses: list[BlockAddress]) -> list[RegisterCensus]:
    """Read every running node's acceptor state of each register from its silo."""
    states: dict[BlockAddress, dict[NodeId, AcceptorState]] = {a: {} for a in addresses}
    for node in rc.running():
        assert node.silo is not None
        for address in addresses:
            record = await node.silo.load_paxos(address)
            if record is not None and record.value is not None:
                states[address][node.identity.node_id] = AcceptorState.from_bytes(record.value)
    return [RegisterCensus(a, states[a]) for a in addresses]


async def wait_for(
    description: str, check: object, timeout: float, *, interval: float = 0.25
) -> None:
    """Poll the async predicate ``check`` until it returns True (fail after ``timeout``)."""
    assert callable(check)
    with trio.move_on_after(timeout) as waited:
        while not await check():  # noqa: ASYNC110  (polling other nodes' state)
            await trio.sleep(interval)
    assert not waited.cancelled_caught, f"timed out after {timeout} s waiting for {description}"
