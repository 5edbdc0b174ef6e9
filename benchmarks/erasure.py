"""Erasure coding throughput: Ballast's native Reed-Solomon vs memcpy, zfec and pyeclib (ISA-L).

On 64 MiB of random data, for the geometries 10+4, 4+2 and 8+3, every round times, one after
the other: memcpy of the same 64 MiB into a preallocated buffer (the physical anchor), Ballast
encode (fresh parity buffer) and encode_into (reused buffer), Ballast decode with min(k, m)
data fragments lost (fresh output) and decode_into (reused output), then the peers' encode
and decode of the same data with the same losses: zfec (data given as zero-copy views,
parity only) and pyeclib with ISA-L's ``isa_l_rs_vand``. Measurements of one round are
interleaved so drift in machine load hits them alike; each line reports the median of all
rounds. Throughput is always input bytes (64 MiB) / time; MB is 10^6 bytes.

Runs on one thread, pinned to one CPU unless ``--no-pin``. The last line is the summary for
10+4: ``erasure 10+4 64MiB: encode X MB/s = r x memcpy; decode Y MB/s = r x memcpy; best
peer NAME Z MB/s`` (decode = fresh output; best peer = the peer with the fastest encode).

Usage: ``python benchmarks/erasure.py [--rounds 7] [--mib 64] [--cpu N | --no-pin]``
(``make bench`` installs the peers: ``pip install zfec pyeclib``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import native

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._cli import parse_and_pin

GEOMETRIES = ((4, 2), (8, 3), (10, 4))  # 10+4 last: the summary line is about it


@dataclass
class Measure:
    """One timed operation and its per-round timings."""

    name: str
    run: Callable[[], object]
    peer: str | None = None  # peer name for peer encodes
    times: list[float] = field(default_factory=list)

    def median(self) -> float:
        """Median time in seconds."""
        return statistics.median(self.times)


def _peers(data: bytes, k: int, m: int, lost: list[int]) -> list[Measure]:
    """The peers' encode and decode of ``data``; empty for a peer that is not installed."""
    measures: list[Measure] = []
    size = len(data)
    frag = native.fragment_size(size, k)
    keep = [i for i in range(k + m) if i not in lost][:k]
    try:
        import zfec
    except ImportError:
        print("zfec not installed: skipped (pip install zfec)")
    else:
        encoder = zfec.Encoder(k, k + m)
        decoder = zfec.Decoder(k, k + m)
        view = memoryview(data)
        tail = bytes(data[(k - 1) * frag :]) + bytes(k * frag - size)
        blocks = [view[i * frag : (i + 1) * frag] for i in range(k - 1)] + [tail]
        parity_nums = list(range(k, k + m))

        def zfec_encode() -> object:
            last = bytes(view[(k - 1) * frag :]) + bytes(k * frag - size)  # its padding copy
            return encoder.encode([*blocks[:-1], last], parity_nums)

        all_blocks = blocks + list(encoder.encode(blocks, parity_nums))
        have = [all_blocks[i] for i in keep]

        def zfec_decode() -> object:
            return b"".join(decoder.decode(have, keep))[:size]

        assert zfec_decode() == data, "zfec decode mismatch"
        measures += [
            Measure("zfec encode", zfec_encode, peer="zfec"),
            Measure("zfec decode", zfec_decode),
        ]
    try:
        from pyeclib.ec_iface import ECDriver
    except ImportError:
        print("pyeclib not installed: skipped (pip install pyeclib)")
    else:
        driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_vand")
        fragments = driver.encode(data)
        survivors = [fragments[i] for i in keep]
        assert driver.decode(survivors) == data, "pyeclib decode mismatch"
        measures += [
            Measure("pyeclib isa_l_rs_vand encode", lambda: driver.encode(data), "pyeclib"),
            Measure("pyeclib isa_l_rs_vand decode", lambda: driver.decode(survivors)),
        ]
    return measures


def run_geometry(data: bytes, k: int, m: int, rounds: int) -> dict[str, Any]:
    """Time every measurement of one geometry; print one line each; return the medians."""
    size = len(data)
    codec = native.ReedSolomon(k, m)
    lost = list(range(min(k, m)))
    data_fragments, parity = codec.encode(data)
    everything = data_fragments + parity
    survivors = {i: everything[i] for i in range(k + m) if i not in lost}
    assert codec.decode(survivors, size) == data, "ballast decode mismatch"

    copy_out = bytearray(size)
    parity_out = bytearray(m * codec.fragment_size(size))
    decode_out = bytearray(size)
    src_addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert src_addr is not None
    dst_addr = ctypes.addressof(ctypes.c_char.from_buffer(copy_out))

    measures = [
        Measure("memcpy", lambda: ctypes.memmove(dst_addr, src_addr, size)),
        Measure("ballast encode", lambda: codec.encode(data)),
        Measure("ballast encode_into", lambda: codec.encode_into(data, parity_out)),
        Measure("ballast decode", lambda: codec.decode(survivors, size)),
        Measure("ballast decode_into", lambda: codec.decode_into(survivors, size, decode_out)),
        *_peers(data, k, m, lost),
    ]
    for measure in measures:  # warm up: code paths, allocator, page tables
        measure.run()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for measure in measures:
                start = time.perf_counter()
                result = measure.run()
                measure.times.append(time.perf_counter() - start)
                del result
    finally:
        gc.enable()
    assert decode_out == data, "ballast decode_into mismatch"

    memcpy = measures[0].median()
    label = f"{k}+{m}"
    medians: dict[str, Any] = {"memcpy": memcpy}
    for measure in measures:
        t = measure.median()
        medians[measure.name] = t
        print(
            f"{label} {measure.name:<30} median {t * 1e3:8.2f} ms  {size / t / 1e6:8.0f} MB/s"
            f"  = {memcpy / t:5.3f}x memcpy  (min {min(measure.times) * 1e3:.2f} ms,"
            f" {len(measure.times)} rounds)"
        )
    peers = [(mm.peer, mm.median()) for mm in measures if mm.peer is not None]
    medians["best peer"] = min(peers, key=lambda p: p[1]) if peers else None
    enc, dec = medians["ballast encode"], medians["ballast decode"]
    peer_text = "no peer installed"
    if peers:
        name, t = medians["best peer"]
        peer_text = f"best peer {name} encode {size / t / 1e6:.0f} MB/s; ours {t / enc:.1f}x it"
    print(
        f"{label} summary: encode {memcpy / enc:.3f}x memcpy, decode {memcpy / dec:.3f}x, "
        f"decode_into {memcpy / medians['ballast decode_into']:.3f}x, "
        f"encode_into {memcpy / medians['ballast encode_into']:.3f}x; {peer_text}"
    )
    sys.stdout.flush()
    return medians


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the summary line last."""
    args, pinned = parse_and_pin(__doc__, argv)
    size = args.mib * 1024 * 1024
    data = os.urandom(size)
    print(
        f"erasure benchmark: {args.mib} MiB random data, {args.rounds} rounds, one thread "
        f"({pinned}), kernel {native.kernel_name()}"
    )
    results = {(k, m): run_geometry(data, k, m, args.rounds) for k, m in GEOMETRIES}
    r = results[(10, 4)]
    memcpy, enc, dec = r["memcpy"], r["ballast encode"], r["ballast decode"]
    if r["best peer"] is None:
        peer = "best peer none 0 MB/s"
    else:
        name, t = r["best peer"]
        peer = f"best peer {name} {size / t / 1e6:.0f} MB/s"
    print(
        f"erasure 10+4 {args.mib}MiB: encode {size / enc / 1e6:.0f} MB/s = {memcpy / enc:.2f}x "
        f"memcpy; decode {size / dec / 1e6:.0f} MB/s = {memcpy / dec:.2f}x memcpy; {peer}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
