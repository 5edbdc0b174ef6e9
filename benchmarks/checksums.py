"""Checksum throughput: Ballast's native CRC-32, CRC-32C and CRC-64/NVME vs zlib.crc32.

On 64 MiB of random data every round times, one after the other: ``zlib.crc32`` (the peer:
the stdlib CRC at C speed, which ``native.crc32`` replaces with the same values), then
``native.crc32``, ``native.crc32c`` and ``native.crc64nvme`` with the automatic kernels, then
each portable kernel when the CPU has a faster one. Measurements of one round are interleaved
so drift in machine load hits them alike; each line reports the median of all rounds. The
pure-Python reference loops are timed once on a 256 KiB sample, for scale. Throughput is
bytes / time; MB is 10^6 bytes.

Runs on one thread, pinned to one CPU unless ``--no-pin``. The last line is the summary:
``checksums: crc32 X MB/s = r x zlib.crc32; crc32c Y MB/s = r x zlib.crc32; crc64nvme Z MB/s
= r x zlib.crc32``.

Usage: ``python benchmarks/checksums.py [--rounds 7] [--mib 64] [--cpu N | --no-pin]``
"""

from __future__ import annotations

import functools
import gc
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import native
from interfaces.s3.etag import crc32c_update_pure, crc64nvme_update_pure
from native import _checksums

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._cli import parse_and_pin

SAMPLE_BYTES = 256 * 1024  # what the pure-Python reference is timed on


@dataclass(frozen=True)
class Crc:
    """One native CRC: the automatic function, its kernel's name, and the by-kernel one."""

    run: Callable[[bytes], int]
    kernel: Callable[[], str]
    run_with: Callable[[str, bytes], int]


CRCS = {
    "crc32": Crc(native.crc32, native.crc32_kernel, _checksums.crc32_with),
    "crc32c": Crc(native.crc32c, native.crc32c_kernel, _checksums.crc32c_with),
    "crc64nvme": Crc(native.crc64nvme, native.crc64nvme_kernel, _checksums.crc64nvme_with),
}


@dataclass
class Measure:
    """One timed checksum and its per-round timings."""

    name: str
    run: Callable[[], int]
    times: list[float] = field(default_factory=list)

    def median(self) -> float:
        """Median time in seconds."""
        return statistics.median(self.times)


def auto_name(algorithm: str) -> str:
    """The measurement name of ``algorithm`` with its automatic kernel, e.g. ``crc32 (pclmul)``."""
    return f"{algorithm} ({CRCS[algorithm].kernel()})"


def measures(data: bytes) -> list[Measure]:
    """The checksums to time: the peer first, then ours (automatic, then portable kernels)."""
    found = [Measure("zlib.crc32", functools.partial(zlib.crc32, data))]
    for algorithm, crc in CRCS.items():
        found.append(Measure(auto_name(algorithm), functools.partial(crc.run, data)))
    for algorithm, crc in CRCS.items():
        if crc.kernel() != "portable":
            portable = functools.partial(crc.run_with, "portable", data)
            found.append(Measure(f"{algorithm} (portable)", portable))
    return found


def time_rounds(found: list[Measure], rounds: int) -> None:
    """Warm up, then run every measurement once per round, interleaved."""
    for measure in found:
        measure.run()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for measure in found:
                start = time.perf_counter()
                measure.run()
                measure.times.append(time.perf_counter() - start)
    finally:
        gc.enable()


def pure_reference_rate(data: bytes, fn: Callable[[bytes, int], int]) -> float:
    """MB/s of a pure-Python reference loop on the first SAMPLE_BYTES of ``data``."""
    sample = data[:SAMPLE_BYTES]
    start = time.perf_counter()
    fn(sample, 0)
    return len(sample) / (time.perf_counter() - start) / 1e6


def report(found: list[Measure], size: int) -> dict[str, float]:
    """Print one line per measurement; return the MB/s of each by name."""
    peer = found[0].median()
    rates: dict[str, float] = {}
    for measure in found:
        t = measure.median()
        rates[measure.name] = size / t / 1e6
        print(
            f"{measure.name:<22} median {t * 1e3:8.2f} ms  {rates[measure.name]:8.0f} MB/s"
            f"  = {peer / t:5.2f}x zlib.crc32  (min {min(measure.times) * 1e3:.2f} ms,"
            f" {len(measure.times)} rounds)"
        )
    return rates


def summary(rates: dict[str, float]) -> str:
    """The last line: each native CRC's MB/s and its ratio to zlib.crc32."""
    peer = rates["zlib.crc32"]
    parts = []
    for algorithm in CRCS:
        rate = rates[auto_name(algorithm)]
        parts.append(f"{algorithm} {rate:.0f} MB/s = {rate / peer:.2f}x zlib.crc32")
    return "checksums: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the summary line last."""
    args, pinned = parse_and_pin(__doc__, argv)
    size = args.mib * 1024 * 1024
    data = os.urandom(size)
    kernels = ", ".join(f"{algorithm} {crc.kernel()}" for algorithm, crc in CRCS.items())
    print(
        f"checksum benchmark: {args.mib} MiB random data, {args.rounds} rounds, one thread "
        f"({pinned}), kernels {kernels}"
    )
    found = measures(data)
    time_rounds(found, args.rounds)
    rates = report(found, size)
    print(
        f"pure-Python reference ({SAMPLE_BYTES // 1024} KiB): "
        f"crc32c {pure_reference_rate(data, crc32c_update_pure):.1f} MB/s, "
        f"crc64nvme {pure_reference_rate(data, crc64nvme_update_pure):.1f} MB/s"
    )
    print(summary(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
