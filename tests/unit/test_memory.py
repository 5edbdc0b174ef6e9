"""Node processes keep their large buffers resident instead of faulting them in each time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import os, resource, sys
    from interfaces.memory import keep_buffers_resident
    if sys.argv[1] == "tuned":
        assert keep_buffers_resident()
    source = os.urandom(4 << 20)
    bytes(bytearray(source))  # warm up (glibc adapts its thresholds to the first frees)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):  # a buffer and a copy of it alive at once, as a frame and its payload
        frame = bytearray(source)
        payload = bytes(frame)
        del frame, payload
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50 / 8)
    """
)


def faults_per_mib(mode: str) -> float:
    """Page faults per MiB of fresh 4 MiB buffers in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def test_fresh_buffers_reuse_resident_memory_once_tuned() -> None:
    assert faults_per_mib("default") > 100  # glibc maps and unmaps each 4 MiB buffer
    assert faults_per_mib("tuned") < 10


def test_settling_the_heap_hides_start_up_objects_from_the_collector() -> None:
    probe = textwrap.dedent(
        """
        import gc
        from interfaces.memory import settle_heap
        start_up = [[i] for i in range(10_000)]
        settle_heap()
        assert gc.get_freeze_count() >= 10_000
        assert not any(gc.is_tracked(o) and o in gc.get_objects() for o in start_up[:3])
        """
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
