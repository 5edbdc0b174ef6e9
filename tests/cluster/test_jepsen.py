"""Jepsen-style test of the key-value layer: 5 node processes, 5 clients, a nemesis, a checker.

See :mod:`tests.cluster.jepsen` for the harness. Environment knobs: ``BALLAST_JEPSEN_SEED``
(replay a run), ``BALLAST_JEPSEN_SECONDS`` (length of the faulty phase, default 60).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import pytest
import trio

from storage.linearizability import VersionedRegisterModel, check_history
from storage.policy import Redundancy
from tests.cluster.jepsen import (
    ChunkLog,
    History,
    Nemesis,
    ProcessCluster,
    bootstrap_probe,
    chunk_worker,
    do_read,
    do_write,
    nodes_listing,
    open_clients,
    register_worker,
    save_artifacts,
    start_cluster,
    verify_chunks,
    wait_converged,
    written_values,
)
from tests.netns import NetnsLab

NODES = 5
CLIENTS = 5
KEYS = ("r0", "r1", "r2", "r3")
CHUNK_POLICIES = (Redundancy(replicas=3), Redundancy(data=3, parity=2))
#: Search budget of the checker per key: a history it cannot decide within it fails.
#: Unknown-outcome writes make the search wide: a linearizable history of 632 operations with
#: 83 of them needed just over 3 million steps (about 2 s); 50 million bounds the worst case
#: to about half a minute per key.
MAX_STEPS = 50_000_000

pytestmark = pytest.mark.slow


async def test_registers_stay_linearizable_under_partitions_crashes_and_pauses(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("BALLAST_JEPSEN_SEED", str(random.SystemRandom().randrange(2**32))))
    seconds = float(os.environ.get("BALLAST_JEPSEN_SECONDS", "60"))
    print(f"\njepsen: seed {seed} (replay with BALLAST_JEPSEN_SEED={seed}), {seconds:g} s")
    rng = random.Random(seed)
    history = History()
    chunks = ChunkLog()
    with NetnsLab(NODES) as lab:
        cluster = ProcessCluster(lab, tmp_path, eviction_delay="2s")
        try:
            wall = time.monotonic()
            await cluster.prepare()
            prepared = time.monotonic() - wall
            async with bootstrap_probe(cluster) as probe:
                await start_cluster(cluster, probe)
            async with open_clients(cluster, CLIENTS + 1) as side:
                converged = await wait_converged(cluster, side)
                print(
                    f"jepsen: credentials {prepared:.1f} s; {NODES} nodes up and converged "
                    f"{time.monotonic() - wall:.1f} s after the start (last {converged:.1f} s)"
                )
                # Create the registers while every view agrees (a register's replica set is
                # fixed at creation), and let every client learn it.
                for key in KEYS:
                    await do_write(history, side.clients[0], "c0", key, f"init-{key}")
                for c, client in enumerate(side.clients[:CLIENTS]):
                    for key in KEYS:
                        await do_read(history, client, f"c{c}", key)

                start = trio.current_time()
                until = start + seconds
                nemesis = Nemesis(cluster, side.model, random.Random(rng.random()), start)
                async with trio.open_nursery() as nursery:
                    for c in range(CLIENTS):
                        nursery.start_soon(
                            register_worker,
                            history,
                            side.clients[c],
                            f"c{c}",
                            KEYS,
                            until,
                            random.Random(rng.random()),
                        )
                    nursery.start_soon(
                        chunk_worker,
                        chunks,
                        side.clients[CLIENTS],
                        CHUNK_POLICIES,
                        until,
                        random.Random(rng.random()),
                    )
                    nursery.start_soon(nemesis.run, until)
                workload_end = trio.current_time()

                nemesis.recover_all()
                recovery = await wait_converged(cluster, side, timeout=90)
                final = side.clients[0]
                deadline = trio.current_time() + 30
                for key in KEYS:
                    while await do_read(history, final, "final", key) is None:
                        assert trio.current_time() < deadline, f"no final read of {key}"
                        await trio.sleep(0.2)
                chunk_problems = await verify_chunks(
                    chunks, side.clients[CLIENTS], trio.current_time() + 30
                )
                listing_client = await nodes_listing(cluster, side, side.rpc.node_id)
                stats = [c.statistics() for c in side.clients]
                dropped = sum(c.dropped for c in side.callers)
        finally:
            cluster.close()
            # Kept whatever happens (pytest's tmp_path rotates away); the checker's verdict
            # refers to this history.
            out = Path(os.environ.get("BALLAST_JEPSEN_OUT", tempfile.gettempdir()))
            artifacts = save_artifacts(cluster, history, out / f"ballast-jepsen-{seed}")
            print(f"jepsen: history and node logs in {artifacts}")
    checked_at = time.monotonic()
    result = check_history(history.operations(), VersionedRegisterModel(), max_steps=MAX_STEPS)
    check_seconds = time.monotonic() - checked_at

    # --- summary ------------------------------------------------------------------------
    print(f"jepsen: workload {workload_end - start:.1f} s, recovery {recovery:.1f} s")
    for kind, counts in sorted(history.counts().items()):
        print(f"  {kind:5}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  ops per key: {dict(sorted(history.per_key().items()))}")
    print(
        f"  chunks: {len(chunks.acknowledged)} acknowledged, {chunks.failed} failed, "
        f"all acknowledged read back bit-exact: {not chunk_problems}"
    )
    print(
        f"  paxos rounds {sum(s.paxos_rounds for s in stats)}, preemptions "
        f"{sum(s.preemptions for s in stats)}, replays avoided "
        f"{sum(s.replays_avoided for s in stats)}, client calls dropped by emulated "
        f"partitions {dropped}"
    )
    print(f"  nemesis: {dict(sorted(nemesis.counts.items()))}")
    print(nemesis.timeline())
    print(f"  checker ({check_seconds:.1f} s): {result.explanation.splitlines()[0]}")

    assert not listing_client, f"nodes {listing_client} list the client as a member"
    assert not history.unexpected, history.unexpected
    assert not chunks.unexpected, chunks.unexpected
    assert result.ok is True, result.explanation
    for key in KEYS:
        finals = [r for r in history.records if r.client == "final" and r.key == key]
        assert finals, key
        assert finals[-1].outcome == "ok", key
        _, value = finals[-1].output
        assert value in written_values(history, key), (key, value)
    assert not chunk_problems, chunk_problems
    assert len(chunks.acknowledged) > 0
    ok_ops = sum(c["ok"] + c["fail"] for c in history.counts().values())
    assert ok_ops > 200, "too few operations completed to mean anything"
    assert sum(nemesis.counts.values()) >= 5
