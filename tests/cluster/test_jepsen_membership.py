"""Jepsen-style test under membership change: joins, a drain and a node lost for good.

Five node processes start in network namespaces, two spare hosts wait; while five clients
read, write and compare-and-set registers and a sixth writes chunks, a
:class:`~tests.cluster.jepsen.MembershipNemesis` adds both spares, drains one member, loses
another for good (its data deleted), and between those injects the usual partitions,
crashes and pauses. The history must be linearizable, no acknowledged write may be lost,
every acknowledged chunk must read back bit-exact, and the drained node must end up holding
nothing. Knobs as in :mod:`tests.cluster.test_jepsen`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.cluster.jepsen import ClientSide, MembershipNemesis, Nemesis, ProcessCluster
from tests.cluster.jepsen_run import assert_sound, run_jepsen

INITIAL = 5
SPARES = 2

pytestmark = pytest.mark.slow


async def test_registers_stay_linearizable_while_nodes_join_drain_and_die(
    tmp_path: Path,
) -> None:
    nemeses: list[MembershipNemesis] = []

    def make_nemesis(*args: object) -> Nemesis:
        nemesis = MembershipNemesis(*args)  # type: ignore[arg-type]
        nemeses.append(nemesis)
        return nemesis

    drain_report: dict[int, dict[str, object]] = {}

    async def drained_node_ends_empty(cluster: ProcessCluster, side: ClientSide) -> None:
        del side
        for i in nemeses[0].drained:
            with trio.fail_after(120):
                while True:
                    status = await cluster.admin(i, "GET", "/admin/node/drain")
                    if status["remaining"] == 0:
                        drain_report[i] = status
                        break
                    await trio.sleep(1.0)

    run = await run_jepsen(
        tmp_path,
        hosts=INITIAL + SPARES,
        initial=INITIAL,
        make_nemesis=make_nemesis,
        after_recovery=drained_node_ends_empty,
    )
    assert_sound(run)
    counts = run.nemesis.counts
    assert counts["join"] == SPARES, counts
    assert counts["drain"] == 1, counts
    assert counts["retire"] == 1, counts
    assert len(drain_report) == 1
    print(f"  drained node at the end: {drain_report}")
