"""Helpers of the native kernels' tests.

* Running a script in a child Python with ``BALLAST_NATIVE_PORTABLE`` set or unset: the
  kernels are chosen once, when :mod:`native` is imported, so the choice the environment
  variable makes is only observable in a fresh interpreter.
* Checking that a long native call releases the GIL.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import native

ROOT = Path(__file__).resolve().parents[1]


def run_with_portable_env(script: str, env_value: str | None) -> Any:
    """Run ``script`` with the variable set to ``env_value`` (unset for None); return the JSON
    it prints."""
    env = {key: value for key, value in os.environ.items() if key != native.PORTABLE_ENV}
    if env_value is not None:
        env[native.PORTABLE_ENV] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(proc.stdout)


def _spin(done: threading.Event, stamps: list[float]) -> None:
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0)


def assert_gil_released(call: Callable[[], object], what: str) -> None:
    """Fail unless another thread keeps running Python while ``call()`` runs (best of 3)."""
    for _attempt in range(3):
        stamps: list[float] = []
        done = threading.Event()
        thread = threading.Thread(target=_spin, args=(done, stamps))
        thread.start()
        time.sleep(0.01)
        start = time.perf_counter()
        call()
        end = time.perf_counter()
        done.set()
        thread.join()
        during = [t for t in stamps if start <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise([start, *during, end])]
        if max(gaps) < 0.5 * (end - start):
            return
    pytest.fail(f"no other thread ran for {max(gaps):.3f} s of a {end - start:.3f} s {what}")
