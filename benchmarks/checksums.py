"""Checksum throughput: Ballast's native CRC-32C and CRC-64/NVME vs zlib.crc32.

On 64 MiB of random data every round times, one after the other: ``zlib.crc32`` (the peer:
the stdlib CRC the S3 front end already computes at C speed), then ``native.crc32c`` and
``native.crc64nvme`` with the automatic kernels, then each portable kernel when the CPU has a
faster one. Measurements of one round are interleaved so drift in machine load hits them
alike; each line reports the median of all rounds. The pure-Python reference loops are timed
once on a 256 KiB sample, for scale. Throughput is bytes / time; MB is 10^6 bytes.

Runs on one thread, pinned to one CPU unless ``--no-pin``. The last line is the summary:
``checksums: crc32c X MB/s = r x zlib.crc32; crc64nvme Y MB/s = r x zlib.crc32``.

Usage: ``python benchmarks/checksums.py [--rounds 7] [--mib 64] [--cpu N | --no-pin]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import native
from interfaces.s3.etag import crc32c_update_pure, crc64nvme_update_pure
from native import _checksums

SAMPLE_BYTES = 256 * 1024  # what the pure-Python reference is timed on


@dataclass
class Measure:
    """One timed checksum and its per-round timings."""

    name: str
    run: Callable[[], int]
    times: list[float] = field(default_factory=list)

    def median(self) -> float:
        """Median time in seconds."""
        return statistics.median(self.times)


def measures(data: bytes) -> list[Measure]:
    """The checksums to time: the peer first, then ours (automatic, then portable kernels)."""
    found = [
        Measure("zlib.crc32", lambda: zlib.crc32(data)),
        Measure(f"crc32c ({native.crc32c_kernel()})", lambda: native.crc32c(data)),
        Measure(f"crc64nvme ({native.crc64nvme_kernel()})", lambda: native.crc64nvme(data)),
    ]
    if native.crc32c_kernel() != "portable":
        found.append(Measure("crc32c (portable)", lambda: _checksums.crc32c_with("portable", data)))
    if native.crc64nvme_kernel() != "portable":
        found.append(
            Measure("crc64nvme (portable)", lambda: _checksums.crc64nvme_with("portable", data))
        )
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the summary line last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--mib", type=int, default=64, help="data size in MiB")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.mib < 1:
        parser.error("--rounds and --mib must be >= 1")
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"pinned to CPU {cpu}"
    else:
        pinned = "not pinned"
    size = args.mib * 1024 * 1024
    data = os.urandom(size)
    print(
        f"checksum benchmark: {args.mib} MiB random data, {args.rounds} rounds, one thread "
        f"({pinned}), kernels crc32c {native.crc32c_kernel()}, "
        f"crc64nvme {native.crc64nvme_kernel()}"
    )
    found = measures(data)
    time_rounds(found, args.rounds)
    rates = report(found, size)
    print(
        f"pure-Python reference ({SAMPLE_BYTES // 1024} KiB): "
        f"crc32c {pure_reference_rate(data, crc32c_update_pure):.1f} MB/s, "
        f"crc64nvme {pure_reference_rate(data, crc64nvme_update_pure):.1f} MB/s"
    )
    peer = rates["zlib.crc32"]
    crc32c = rates[found[1].name]
    crc64 = rates[found[2].name]
    print(
        f"checksums: crc32c {crc32c:.0f} MB/s = {crc32c / peer:.2f}x zlib.crc32; "
        f"crc64nvme {crc64:.0f} MB/s = {crc64 / peer:.2f}x zlib.crc32"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
