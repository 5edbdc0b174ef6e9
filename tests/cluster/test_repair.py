"""Self-healing on a real in-process cluster: eviction repair, join rebalancing, drain."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from storage.api import ChunkRef
from storage.errors import NotFound
from storage.ids import BlockAddress
from storage.paxos import AcceptorState
from storage.registers import register_address
from tests.cluster.repair_cluster import (
    ERASURE,
    FAST_REPAIR,
    REPLICATED,
    RepairCluster,
    chunk_census,
    random_payload,
    register_census,
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


async def write_registers(rc: RepairCluster, count: int) -> dict[bytes, bytes]:
    """Write ``count`` registers (half with replicas=3, half with 4+2's replica count)."""
    client = await rc.cluster.client(0, timeout=10.0)
    written: dict[bytes, bytes] = {}
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        name, value = f"register-{i}".encode(), f"value {i} ".encode() * (1 + i % 7)
        async with limiter:
            await client.edit(name, lambda _old: value, redundancy=REPLICATED if i % 2 else ERASURE)
        written[name] = value

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return written


def register_addresses(rc: RepairCluster, names: Iterable[bytes]) -> list[BlockAddress]:
    return [register_address(rc.cluster.keys.signing.public_key, n) for n in names]


async def read_registers(rc: RepairCluster, written: dict[bytes, bytes], via: int) -> None:
    client = await rc.cluster.client(via, timeout=10.0)
    limiter = trio.CapacityLimiter(16)
    bad: list[bytes] = []

    async def one(name: bytes, value: bytes) -> None:
        async with limiter:
            if (await client.read(name)).value != value:
                bad.append(name)

    async with trio.open_nursery() as nursery:
        for name, value in written.items():
            nursery.start_soon(one, name, value)
    assert not bad, f"{len(bad)} registers read back wrong"


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
    """6 nodes, 1,000 blocks of mixed kinds; one node dies for good; all heal and read."""
    async with repair_cluster(tmp_path, 6) as rc:
        chunks = await write_chunks(rc, 500, seed=7)
        registers = await write_registers(rc, 500)
        refs, addresses = list(chunks), register_addresses(rc, registers)

        async def complete() -> bool:
            nodes = len(rc.running())
            census = await chunk_census(rc, refs)
            if not all(c.at_full_redundancy(nodes) for c in census):
                return False
            return all(r.at_full_redundancy() for r in await register_census(rc, addresses))

        await wait_for("full redundancy after the writes", complete, 60)
        victim = await rc.kill_for_good(3)
        started = trio.current_time()
        await rc.wait_evicted(victim)
        await wait_for("full redundancy without node 3", complete, 120)
        healed_after = trio.current_time() - started
        assert all(victim not in c.holders for c in await chunk_census(rc, refs))
        for r in await register_census(rc, addresses):
            newest = r.newest()
            assert newest is not None
            assert newest.value is not None
            assert victim not in newest.value.replica_set
        await read_all(rc, chunks, via=1)
        await read_registers(rc, registers, via=2)
        stats = [rc.service(n.index).statistics() for n in rc.running()]
        assert sum(s.copies_made for s in stats) > 0
        assert sum(s.fragments_rebuilt for s in stats) > 0
        assert sum(s.registers_moved for s in stats) > 0
        moved = sum(s.bytes_moved for s in stats)
        print(f"repair: {moved} bytes moved; full redundancy {healed_after:.1f} s after the kill")


async def test_new_nodes_take_their_share(tmp_path: Path) -> None:
    """Two nodes join a loaded cluster: holders match placement again, load is balanced."""
    async with repair_cluster(tmp_path, 6) as rc:
        chunks = await write_chunks(rc, 300, seed=11)
        registers = await write_registers(rc, 200)
        refs, addresses = list(chunks), register_addresses(rc, registers)
        await rc.add_node()
        await rc.add_node()
        await rc.cluster.wait_converged()

        async def placed() -> bool:
            eligible = rc.eligible()
            if not all(c.matches_placement(eligible) for c in await chunk_census(rc, refs)):
                return False
            census = await register_census(rc, addresses)
            return all(r.matches_placement(eligible) and r.at_full_redundancy() for r in census)

        await wait_for("every block on its placement targets", placed, 120)
        counts = []
        for node in rc.running():
            assert node.silo is not None
            counts.append(node.silo.statistics().blocks)
        mean = sum(counts) / len(counts)
        assert max(counts) <= 1.5 * mean, counts
        await read_all(rc, chunks, via=7)
        await read_registers(rc, registers, via=6)


async def test_a_drained_node_ends_empty_and_everything_reads(tmp_path: Path) -> None:
    """A draining node moves everything away, refuses new blocks, and ends holding nothing."""
    async with repair_cluster(tmp_path, 6) as rc:
        chunks = await write_chunks(rc, 150, seed=13)
        registers = await write_registers(rc, 100)
        refs, addresses = list(chunks), register_addresses(rc, registers)
        drained = rc.cluster.nodes[2]
        await rc.service(2).set_draining(True)

        async def empty() -> bool:
            assert drained.silo is not None
            stats = drained.silo.statistics()
            return stats.blocks == 0 and stats.acceptor_records == 0

        await wait_for("node 2 to hold nothing", empty, 90)
        eligible = len(rc.eligible())
        assert all(c.at_full_redundancy(eligible) for c in await chunk_census(rc, refs))
        census = await register_census(rc, addresses)
        assert all(r.at_full_redundancy() for r in census)
        assert rc.service(2).statistics().drain_remaining == 0
        # Writes during the drain never land on the draining node.
        more = await write_chunks(rc, 20, seed=14)
        assert drained.silo is not None
        assert drained.silo.statistics().blocks == 0
        await read_all(rc, {**chunks, **more}, via=0)
        await read_registers(rc, registers, via=2)


async def test_scrub_finds_damaged_copies_and_heals_them_from_good_ones(tmp_path: Path) -> None:
    async with repair_cluster(tmp_path, 6) as rc:
        chunks = await write_chunks(rc, 40, seed=17)
        node = rc.cluster.nodes[1]
        assert node.silo is not None
        entries = await node.silo.list_block_entries()
        # Damage one replica and one fragment stored inline in SQLite (checksums unchanged).
        whole = next(e.key for e in entries if e.key.fragment is None and e.size < 60_000)
        fragment = next(e.key for e in entries if e.key.fragment is not None and e.size < 60_000)
        with closing(sqlite3.connect(node.directory / "silo.sqlite3")) as conn, conn:
            for key in (whole, fragment):
                stored = -1 if key.fragment is None else key.fragment
                (payload,) = conn.execute(
                    "SELECT payload FROM blocks WHERE address = ? AND fragment = ?",
                    (key.address, stored),
                ).fetchone()
                damaged = bytes([payload[0] ^ 0x01]) + payload[1:]
                conn.execute(
                    "UPDATE blocks SET payload = ? WHERE address = ? AND fragment = ?",
                    (damaged, key.address, stored),
                )
        service = rc.service(1)
        assert await service.scrub_now() == 2
        stats = service.statistics()
        assert (stats.corrupt_found, stats.corrupt_repaired) == (2, 2)
        assert await service.scrub_now() == 0  # healed in place
        await node.silo.get_block(whole.address)
        await node.silo.get_block(fragment.address, fragment.fragment)
        await read_all(rc, chunks, via=1)


async def test_deleted_registers_are_collected_and_never_come_back(tmp_path: Path) -> None:
    """Tombstones older than the grace are dropped by every node; what is deleted stays
    deleted, the rest is untouched, and a collected name can be written again."""
    config = replace(FAST_REPAIR, scan_interval=0.5, tombstone_grace=1.0)
    async with repair_cluster(tmp_path, 4, repair=config) as rc:
        registers = await write_registers(rc, 40)
        client = await rc.cluster.client(1, timeout=10.0)
        deleted = sorted(registers)[::2]
        async with trio.open_nursery() as nursery:
            for name in deleted:
                nursery.start_soon(client.delete, name)
        gone = register_addresses(rc, deleted)

        async def collected() -> bool:
            for node in rc.running():
                assert node.silo is not None
                for address in gone:
                    if await node.silo.load_paxos(address) is not None:
                        return False
            return True

        async def only_live_values() -> bool:
            """No tombstone, and no lone promise (a probe's, dropped after the grace)."""
            for node in rc.running():
                assert node.silo is not None
                for address in await node.silo.list_paxos():
                    record = await node.silo.load_paxos(address)
                    if record is None or record.value is None:
                        return False
                    state = AcceptorState.from_bytes(record.value)
                    if state.value is None or state.value.is_tombstone:
                        return False
            return True

        await wait_for("every tombstone to be collected", collected, 30)
        counted = sum(rc.service(n.index).statistics().tombstones_collected for n in rc.running())
        assert counted == len(deleted)
        await wait_for("nothing but live values to be left", only_live_values, 30)
        kept = {name: value for name, value in registers.items() if name not in deleted}
        await read_registers(rc, kept, via=3)
        reader = await rc.cluster.client(2, timeout=10.0)
        for name in deleted:
            with pytest.raises(NotFound):
                await reader.read(name)
        again = deleted[0]
        await client.compare_and_set(again, None, b"a second life")
        assert (await reader.read(again)).value == b"a second life"
        with pytest.raises(NotFound):
            await client.read(deleted[1])
        # Every node now keeps a promise floor; a client learns it once, not per register.
        writer = await rc.cluster.client(3, timeout=10.0)
        for i in range(10):
            await writer.compare_and_set(b"fresh-%d" % i, None, b"new")
        assert writer.statistics().preemptions <= 1
