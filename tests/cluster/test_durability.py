"""Every acknowledged write survives ``kill -9`` of every node at once.

Six node processes (one per network namespace, started with ``node run --config``) take a
write load of immutable chunks and registers, each both replicated (3) and erasure-coded
(4+2; its registers live on min(2m+1, k+m) = 5 acceptors). In the middle of the load every
node is SIGKILLed, the load runs on briefly against the dead cluster, then every node is
restarted on its data directory. Afterwards every acknowledged chunk must read back
bit-exact, and every register must hold its last acknowledged value or the value of a
later write whose outcome was unknown (each register has one sequential writer, so "last"
is well defined).
"""

from __future__ import annotations

import functools
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
import trio

from storage.errors import StorageError, Unavailable
from storage.kv_client import KVClient
from storage.policy import Redundancy
from tests.cluster.jepsen import (
    ChunkLog,
    History,
    ProcessCluster,
    bootstrap_probe,
    chunk_worker,
    constant,
    do_read,
    nodes_listing,
    open_clients,
    save_artifacts,
    start_cluster,
    verify_chunks,
    wait_converged,
)
from tests.netns import NetnsLab

NODES = 6
REPLICATED = Redundancy(replicas=3)
CODED = Redundancy(data=4, parity=2)
REGISTERS = {"m0": REPLICATED, "m1": REPLICATED, "e0": CODED, "e1": CODED}
LOAD_BEFORE_KILL = 8.0
LOAD_AFTER_KILL = 2.0

pytestmark = pytest.mark.slow


async def register_writer(
    history: History, client: KVClient, key: str, policy: Redundancy, until: float
) -> None:
    """Write ``key-1``, ``key-2``, ... to register ``key`` one after the other until ``until``.

    A write that fails with ``Unavailable`` has an unknown outcome (it may have been chosen).
    """
    seq = 0
    while trio.current_time() < until:
        seq += 1
        value = f"{key}-{seq}"
        record = history.invoke("writer", key, "write", value)
        try:
            await client.edit(key.encode(), constant(value.encode()), redundancy=policy)
        except Unavailable as exc:
            history.complete(record, "unknown", error=str(exc))
            await trio.sleep(0.05)
        except StorageError as exc:
            history.complete(record, "unknown", error=repr(exc))
            history.unexpected.append(f"write {key}={value}: {exc!r}")
        else:
            history.complete(record, "ok")


async def test_every_acknowledged_write_survives_kill_9_of_every_node(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    history = History()
    chunks = ChunkLog()
    with NetnsLab(NODES) as lab:
        cluster = ProcessCluster(lab, tmp_path, eviction_delay="30s")
        try:
            wall = time.monotonic()
            await cluster.prepare()
            async with bootstrap_probe(cluster) as probe:
                await start_cluster(cluster, probe)
            async with open_clients(cluster, 3) as side:
                await wait_converged(cluster, side)
                print(f"\ndurability: {NODES} nodes up in {time.monotonic() - wall:.1f} s")
                registers, chunk_replicated, chunk_coded = side.clients
                for key, policy in REGISTERS.items():
                    # Create each register (its replica set) while every view agrees.
                    record = history.invoke("writer", key, "write", f"{key}-0")
                    initial = constant(f"{key}-0".encode())
                    await registers.edit(key.encode(), initial, redundancy=policy)
                    history.complete(record, "ok")
                kill_at = trio.current_time() + LOAD_BEFORE_KILL
                until = kill_at + LOAD_AFTER_KILL
                async with trio.open_nursery() as nursery:
                    for key, policy in REGISTERS.items():
                        nursery.start_soon(register_writer, history, registers, key, policy, until)
                    nursery.start_soon(
                        functools.partial(chunk_worker, think=0.01),
                        chunks,
                        chunk_replicated,
                        (REPLICATED,),
                        until,
                        random.Random(rng.random()),
                    )
                    nursery.start_soon(
                        functools.partial(chunk_worker, think=0.01),
                        chunks,
                        chunk_coded,
                        (CODED,),
                        until,
                        random.Random(rng.random()),
                    )
                    await trio.sleep_until(kill_at)
                    for node in cluster.nodes:
                        cluster.kill(node.index)
                    acknowledged_at_kill = (
                        sum(r.outcome == "ok" for r in history.records),
                        len(chunks.acknowledged),
                    )
                    print(
                        f"durability: kill -9 of all {NODES} nodes after "
                        f"{acknowledged_at_kill[0]} register writes and "
                        f"{acknowledged_at_kill[1]} chunks acknowledged"
                    )
                for node in cluster.nodes:
                    cluster.start(node.index)
                recovery = await wait_converged(cluster, side, timeout=90)
                print(f"durability: all {NODES} restarted and converged in {recovery:.1f} s")

                finals: dict[str, tuple[int, object] | None] = {}
                deadline = trio.current_time() + 30
                for key in REGISTERS:
                    got = None
                    while got is None and trio.current_time() < deadline:
                        got = await do_read(history, registers, "final", key)
                        if got is None:
                            await trio.sleep(0.2)
                    finals[key] = got
                listing_client = await nodes_listing(cluster, side, side.rpc.node_id)
                problems = await verify_chunks(chunks, chunk_replicated, trio.current_time() + 30)
        finally:
            cluster.close()
            out = Path(os.environ.get("BALLAST_JEPSEN_OUT", tempfile.gettempdir()))
            artifacts = save_artifacts(cluster, history, out / "ballast-durability")
            print(f"durability: history and node logs in {artifacts}")
    writes = [r for r in history.records if r.kind == "write"]
    outcomes = {o: sum(r.outcome == o for r in writes) for o in ("ok", "unknown")}
    coded_chunks = sum(ref.redundancy == CODED for ref, _ in chunks.acknowledged)
    print(
        f"durability: register writes {outcomes}; chunks acknowledged "
        f"{len(chunks.acknowledged)} ({coded_chunks} as 4+2), failed {chunks.failed}; "
        f"bit-exact: {not problems}"
    )
    assert not listing_client, f"nodes {listing_client} list the client as a member"
    assert not history.unexpected, history.unexpected
    assert not chunks.unexpected, chunks.unexpected
    assert not problems, problems
    assert acknowledged_at_kill[1] > 0
    assert coded_chunks > 0
    for key in REGISTERS:
        final = finals[key]
        assert final is not None, f"register {key} unreadable after the restart"
        mine = [r for r in writes if r.key == key]
        last_ok = max(i for i, r in enumerate(mine) if r.outcome == "ok")
        allowed = {mine[last_ok].input} | {
            r.input for r in mine[last_ok + 1 :] if r.outcome == "unknown"
        }
        print(f"  {key}: last acknowledged {mine[last_ok].input}, read {final[1]}")
        assert final[1] in allowed, (key, final, sorted(allowed))
        assert sum(r.outcome == "ok" for r in mine) > 1, f"no load on {key}"
