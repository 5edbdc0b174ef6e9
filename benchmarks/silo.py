"""Silo benchmark: durable commits/s and block-write MB/s, against their peers in the same run.

* commits: 1 KiB records, each durable before the writer continues, from 1 and from 16
  concurrent writers, against a plain ``sqlite3`` loop (WAL, ``synchronous=FULL``) that commits
  each record on its own — what the silo would do without group commit;
* blocks: 4 MiB blocks, against writing and fsyncing the same bytes to a plain file (the
  local-disk limit; the silo also renames and fsyncs the directory).

Usage: ``python benchmarks/silo.py [--dir DIR] [--seconds S] [--blocks N] [--rounds R]``.
The last line states the ratios.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.ids import BlockAddress
from storage.silo import Silo

RECORD = 1024
BLOCK = 4 * 1024 * 1024


def plain_sqlite_commits(path: Path, seconds: float) -> float:
    """Commits/s of a loop inserting one 1 KiB record per transaction (synchronous=FULL)."""
    payload = os.urandom(RECORD)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE records (key BLOB PRIMARY KEY, value BLOB)")
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO records VALUES (?, ?)", (os.urandom(32), payload))
            conn.execute("COMMIT")
            count += 1
    return count / elapsed


async def silo_commits(silo: Silo, writers: int, seconds: float) -> tuple[float, float]:
    """Return (durable 1 KiB puts/s, records per commit) with ``writers`` concurrent tasks."""
    payload = os.urandom(RECORD)
    count = 0
    before = silo.statistics()
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await silo.put_block(BlockAddress(os.urandom(32)), payload)
            count += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    elapsed = time.perf_counter() - start
    after = silo.statistics()
    per_commit = (after.records_committed - before.records_committed) / max(
        1, after.commits - before.commits
    )
    return count / elapsed, per_commit


def plain_file_blocks(directory: Path, payload: bytes, count: int) -> float:
    """MB/s of writing and fsyncing ``count`` files holding ``payload`` each."""
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(directory / f"plain-{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    for i in range(count):
        os.unlink(directory / f"plain-{i}")
    return count * len(payload) / elapsed / 1e6


async def silo_blocks(silo: Silo, payload: bytes, count: int, writers: int) -> float:
    """MB/s of ``count`` durable block puts of ``payload`` from ``writers`` tasks."""
    remaining = count

    async def writer() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await silo.put_block(BlockAddress(os.urandom(32)), payload)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    return count * len(payload) / (time.perf_counter() - start) / 1e6


async def main(directory: Path, seconds: float, blocks: int, rounds: int) -> None:
    """Run every measurement and print one line each, then the summary line.

    fsync latency on shared or virtual disks drifts by several times within a minute, so
    silo and peer alternate in short rounds and each reports its median.
    """
    peer, one, many, per_commit = [], [], [], []
    plain_mb, block_mb, block_mb_4 = [], [], []
    payload = os.urandom(BLOCK)
    async with await Silo.open(directory / "silo", capacity_bytes=1 << 40) as silo:
        for round_ in range(rounds):
            peer.append(
                await trio.to_thread.run_sync(
                    plain_sqlite_commits, directory / f"plain-{round_}.sqlite3", seconds
                )
            )
            one.append((await silo_commits(silo, 1, seconds))[0])
            rate, batch = await silo_commits(silo, 16, seconds)
            many.append(rate)
            per_commit.append(batch)
            plain_mb.append(
                await trio.to_thread.run_sync(plain_file_blocks, directory, payload, blocks)
            )
            block_mb.append(await silo_blocks(silo, payload, blocks, 1))
            block_mb_4.append(await silo_blocks(silo, payload, blocks, 4))
    med = statistics.median
    print(f"plain sqlite3, commit per record:  {med(peer):8.0f} commits/s   {_spread(peer)}")
    print(f"silo, 1 writer:                    {med(one):8.0f} durable puts/s {_spread(one)}")
    print(
        f"silo, 16 writers:                  {med(many):8.0f} durable puts/s {_spread(many)}"
        f" ({med(per_commit):.1f} records per commit)"
    )
    print(f"plain file, write + fsync 4 MiB:   {med(plain_mb):8.0f} MB/s {_spread(plain_mb)}")
    print(f"silo, 4 MiB blocks, 1 writer:      {med(block_mb):8.0f} MB/s {_spread(block_mb)}")
    print(f"silo, 4 MiB blocks, 4 writers:     {med(block_mb_4):8.0f} MB/s {_spread(block_mb_4)}")
    print(
        f"silo: commit {med(many):.0f}/s = {med(many) / med(peer):.2f}x sqlite;"
        f" block {med(block_mb):.0f} MB/s = {med(block_mb) / med(plain_mb):.2f}x local disk"
    )


def _spread(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.0f}" for v in values) + "]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per commit measurement")
    parser.add_argument("--blocks", type=int, default=16, help="4 MiB blocks per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        trio.run(main, Path(tmp), args.seconds, args.blocks, args.rounds)
