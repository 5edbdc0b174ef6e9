"""Jepsen-style test of the key-value layer: 5 node processes, 5 clients, a nemesis, a checker.

See :mod:`tests.cluster.jepsen` for the harness and :mod:`tests.cluster.jepsen_run` for the
run. Environment knobs: ``BALLAST_JEPSEN_SEED`` (replay a run), ``BALLAST_JEPSEN_SECONDS``
(length of the faulty phase, default 60).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.jepsen import Nemesis
from tests.cluster.jepsen_run import assert_sound, run_jepsen

NODES = 5

pytestmark = pytest.mark.slow


async def test_registers_stay_linearizable_under_partitions_crashes_and_pauses(
    tmp_path: Path,
) -> None:
    run = await run_jepsen(tmp_path, hosts=NODES, initial=NODES, make_nemesis=Nemesis)
    assert_sound(run)
