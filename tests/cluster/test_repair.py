"""Self-healing on a real in-process cluster: eviction repair, join rebalancing, drain."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from storage.api import ChunkRef
from tests.cluster.repair_cluster import (
    ERASURE,
    REPLICATED,
    RepairCluster,
    chunk_census,
    random_payload,
    repair_cluster,
    wait_for,
)


async def write_chunks(rc: RepairCluster, count: int, seed: int) -> dict[ChunkRef, bytes]:
    """Write ``count`` chunks, alternating replicas=3 and 4+2, through node 0."""
    client = await rc.cluster.client(0, timeout=10.0)
    rng = random.Random(seed)
    written: dict[ChunkRef, bytes] = {}
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        data = random_payload(rng, i)
        async with limiter:
            ref = await client.put_chunk(data, redundancy=REPLICATED if i % 2 else ERASURE)
        written[ref] = data

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return written


async def read_all(rc: RepairCluster, written: dict[ChunkRef, bytes], via: int) -> None:
    client = await rc.cluster.client(via, timeout=10.0)
    limiter = trio.CapacityLimiter(16)
    bad: list[ChunkRef] = []

    async def one(ref: ChunkRef, data: bytes) -> None:
        async with limiter:
            if await client.get_chunk(ref) != data:
                bad.append(ref)

    async with trio.open_nursery() as nursery:
        for ref, data in written.items():
            nursery.start_soon(one, ref, data)
    assert not bad, f"{len(bad)} chunks read back wrong"


async def test_a_node_killed_for_good_is_repaired_around(tmp_path: Path) -> None:
    async with repair_cluster(tmp_path, 6) as rc:
        written = await write_chunks(rc, 200, seed=7)
        refs = list(written)

        async def complete() -> bool:
            nodes = len(rc.running())
            return all(c.at_full_redundancy(nodes) for c in await chunk_census(rc, refs))

        await wait_for("full redundancy after the writes", complete, 30)
        victim = await rc.kill_for_good(3)
        await rc.wait_evicted(victim)
        await wait_for("full redundancy without node 3", complete, 60)
        census = await chunk_census(rc, refs)
        assert all(victim not in c.holders for c in census)
        await read_all(rc, written, via=1)
        copies = sum(rc.service(n.index).statistics().copies_made for n in rc.running())
        rebuilds = sum(rc.service(n.index).statistics().fragments_rebuilt for n in rc.running())
        assert copies > 0
        assert rebuilds > 0


async def test_new_nodes_take_their_share(tmp_path: Path) -> None:
    async with repair_cluster(tmp_path, 6) as rc:
        written = await write_chunks(rc, 200, seed=11)
        refs = list(written)
        await rc.add_node()
        await rc.add_node()
        await rc.cluster.wait_converged()

        async def placed() -> bool:
            census = await chunk_census(rc, refs)
            return all(c.matches_placement(rc.eligible()) for c in census)

        await wait_for("every chunk on its placement targets", placed, 90)
        counts = []
        for node in rc.running():
            assert node.silo is not None
            counts.append(node.silo.statistics().blocks)
        mean = sum(counts) / len(counts)
        assert max(counts) <= 1.5 * mean, counts
        await read_all(rc, written, via=7)


async def test_a_drained_node_ends_empty_and_everything_reads(tmp_path: Path) -> None:
    async with repair_cluster(tmp_path, 6) as rc:
        written = await write_chunks(rc, 120, seed=13)
        refs = list(written)
        drained = rc.cluster.nodes[2]
        await rc.service(2).set_draining(True)

        async def empty() -> bool:
            assert drained.silo is not None
            stats = drained.silo.statistics()
            return stats.blocks == 0 and stats.acceptor_records == 0

        await wait_for("node 2 to hold nothing", empty, 60)
        census = await chunk_census(rc, refs)
        assert all(c.at_full_redundancy(len(rc.eligible())) for c in census)
        assert rc.service(2).statistics().drain_remaining == 0
        await read_all(rc, written, via=0)
