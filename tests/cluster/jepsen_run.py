"""One Jepsen-style run end to end: start, workload under a nemesis, recovery, checks.

:func:`run_jepsen` is shared by the tests of :mod:`tests.cluster.test_jepsen` (crashes,
partitions, pauses) and :mod:`tests.cluster.test_jepsen_membership` (joins, drains, nodes
lost for good, on top of those); :func:`assert_sound` states what every run must satisfy.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from storage.kv_client import KVClientStatistics
from storage.linearizability import CheckResult, VersionedRegisterModel, check_history
from storage.policy import Redundancy
from tests.cluster.jepsen import (
    ChunkLog,
    ClientSide,
    History,
    Nemesis,
    NetworkModel,
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

CLIENTS = 5
KEYS = ("r0", "r1", "r2", "r3")
CHUNK_POLICIES = (Redundancy(replicas=3), Redundancy(data=3, parity=2))
#: Search budget of the checker per key: a history it cannot decide within it fails.
#: Unknown-outcome writes make the search wide: a linearizable history of 632 operations with
#: 83 of them needed just over 3 million steps (about 2 s); 50 million bounds the worst case
#: to about half a minute per key.
MAX_STEPS = 50_000_000

NemesisFactory = Callable[[ProcessCluster, NetworkModel, random.Random, float], Nemesis]
#: Runs after recovery, before the checks (extra end-state checks of a test).
AfterRecovery = Callable[[ProcessCluster, ClientSide], Awaitable[None]]


@dataclass
class JepsenRun:
    """What one run recorded and what the checker said."""

    seed: int
    history: History
    chunks: ChunkLog
    nemesis: Nemesis
    result: CheckResult
    chunk_problems: list[str]
    listing_client: list[int]
    stats: list[KVClientStatistics]
    dropped: int
    workload_seconds: float
    recovery_seconds: float
    check_seconds: float


def jepsen_seed() -> tuple[int, float]:
    """The run's seed and length (``BALLAST_JEPSEN_SEED``, ``BALLAST_JEPSEN_SECONDS``)."""
    seed = int(os.environ.get("BALLAST_JEPSEN_SEED", str(random.SystemRandom().randrange(2**32))))
    seconds = float(os.environ.get("BALLAST_JEPSEN_SECONDS", "60"))
    print(f"\njepsen: seed {seed} (replay with BALLAST_JEPSEN_SEED={seed}), {seconds:g} s")
    return seed, seconds


async def run_jepsen(
    root: Path,
    *,
    hosts: int,
    initial: int,
    make_nemesis: NemesisFactory,
    after_recovery: AfterRecovery | None = None,
) -> JepsenRun:
    """Start ``initial`` of ``hosts`` node processes, run the workload and the nemesis, check."""
    seed, seconds = jepsen_seed()
    rng = random.Random(seed)
    history = History()
    chunks = ChunkLog()
    with NetnsLab(hosts) as lab:
        cluster = ProcessCluster(lab, root, eviction_delay="2s", initial=initial)
        try:
            wall = time.monotonic()
            await cluster.prepare()
            prepared = time.monotonic() - wall
            async with bootstrap_probe(cluster) as probe:
                await start_cluster(cluster, probe)
            async with open_clients(cluster, CLIENTS + 1) as side:
                converged = await wait_converged(cluster, side)
                print(
                    f"jepsen: credentials {prepared:.1f} s; {initial} nodes up and converged "
                    f"{time.monotonic() - wall:.1f} s after the start (last {converged:.1f} s)"
                )
                # Create the registers while every view agrees, and let every client learn them.
                for key in KEYS:
                    await do_write(history, side.clients[0], "c0", key, f"init-{key}")
                for c, client in enumerate(side.clients[:CLIENTS]):
                    for key in KEYS:
                        await do_read(history, client, f"c{c}", key)

                start = trio.current_time()
                until = start + seconds
                nemesis = make_nemesis(cluster, side.model, random.Random(rng.random()), start)
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
                if after_recovery is not None:
                    await after_recovery(cluster, side)
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
    run = JepsenRun(
        seed=seed,
        history=history,
        chunks=chunks,
        nemesis=nemesis,
        result=result,
        chunk_problems=chunk_problems,
        listing_client=listing_client,
        stats=stats,
        dropped=dropped,
        workload_seconds=workload_end - start,
        recovery_seconds=recovery,
        check_seconds=time.monotonic() - checked_at,
    )
    _summarise(run)
    return run


def _summarise(run: JepsenRun) -> None:
    print(f"jepsen: workload {run.workload_seconds:.1f} s, recovery {run.recovery_seconds:.1f} s")
    for kind, counts in sorted(run.history.counts().items()):
        print(f"  {kind:5}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  ops per key: {dict(sorted(run.history.per_key().items()))}")
    print(
        f"  chunks: {len(run.chunks.acknowledged)} acknowledged, {run.chunks.failed} failed, "
        f"all acknowledged read back bit-exact: {not run.chunk_problems}"
    )
    stats = run.stats
    print(
        f"  paxos rounds {sum(s.paxos_rounds for s in stats)}, preemptions "
        f"{sum(s.preemptions for s in stats)}, replays avoided "
        f"{sum(s.replays_avoided for s in stats)}, client calls dropped by emulated "
        f"partitions {run.dropped}"
    )
    print(f"  nemesis: {dict(sorted(run.nemesis.counts.items()))}")
    print(run.nemesis.timeline())
    print(f"  checker ({run.check_seconds:.1f} s): {run.result.explanation.splitlines()[0]}")


def assert_sound(run: JepsenRun) -> None:
    """Linearizable, no acknowledged write lost, every acknowledged chunk intact."""
    history = run.history
    assert not run.listing_client, f"nodes {run.listing_client} list the client as a member"
    assert not history.unexpected, history.unexpected
    assert not run.chunks.unexpected, run.chunks.unexpected
    assert run.result.ok is True, run.result.explanation
    for key in KEYS:
        finals = [r for r in history.records if r.client == "final" and r.key == key]
        assert finals, key
        assert finals[-1].outcome == "ok", key
        _, value = finals[-1].output
        assert value in written_values(history, key), (key, value)
    assert not run.chunk_problems, run.chunk_problems
    assert len(run.chunks.acknowledged) > 0
    ok_ops = sum(c["ok"] + c["fail"] for c in history.counts().values())
    assert ok_ops > 200, "too few operations completed to mean anything"
    assert sum(run.nemesis.counts.values()) >= 5
