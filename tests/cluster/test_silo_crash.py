"""A real crash test of the silo: SIGKILL a writing process, then check every acknowledged write.

The writer (this module run as a script) puts blocks of every size class, deletes some,
and keeps rewriting acceptor records, from several concurrent tasks; it prints one line per
operation as soon as the call returned. The test kills it with SIGKILL in the middle of the
load, reopens the silo and checks that everything acknowledged reads back bit-exact, that
acknowledged deletions stayed deleted, and that no acceptor record went back in time.
Power loss cannot be simulated here; ``kill -9`` is the bar.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from storage.errors import NotFound
from storage.ids import BlockAddress
from storage.silo import FILE_THRESHOLD, AcceptorRecord, Silo

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 1 << 34
WRITER_TASKS = 8


def payload_for(address: bytes, size: int) -> bytes:
    """The payload the writer stores at ``address``: recomputable from the ack line."""
    return hashlib.shake_256(address + size.to_bytes(8, "big")).digest(size)


def acceptor_record(address: bytes, version: int) -> AcceptorRecord:
    """The acceptor record the writer saves as ``version`` of ``address``."""
    ballot = version.to_bytes(8, "big")
    return AcceptorRecord(ballot, ballot, payload_for(address, 1000 + version % 50), ballot)


def _address(*parts: object) -> BlockAddress:
    return BlockAddress(hashlib.blake2b(repr(parts).encode(), digest_size=32).digest())


async def _writer(path: str, round_: int) -> None:
    def ack(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def task(silo: Silo, t: int) -> None:
        rng = random.Random(f"{round_}-{t}")
        paxos_address = _address("paxos", t)
        previous = await silo.load_paxos(paxos_address)
        version = 0 if previous is None else int.from_bytes(previous.metadata, "big")
        for i in range(1_000_000):
            kind = i % 5
            if kind == 4:
                version += 1
                await silo.save_paxos(paxos_address, acceptor_record(paxos_address, version))
                ack(f"P {paxos_address.hex()} {version}")
                continue
            address = _address(round_, t, i)
            size = rng.choice([rng.randrange(0, 4096), rng.randrange(4096, FILE_THRESHOLD)])
            if kind == 1:
                size = rng.randrange(FILE_THRESHOLD, 400_000)
            fragment = rng.randrange(0, 12) if kind == 2 else None
            await silo.put_block(address, payload_for(address, size), fragment)
            ack(f"B {address.hex()} {'-' if fragment is None else fragment} {size}")
            if kind == 3 and i % 3 == 0:
                ack(f"d {address.hex()} -")  # the delete may land without its ack
                await silo.delete_block(address, fragment)
                ack(f"D {address.hex()} -")

    silo = await Silo.open(path, capacity_bytes=CAPACITY)
    ack("READY")
    async with trio.open_nursery() as nursery:
        for t in range(WRITER_TASKS):
            nursery.start_soon(task, silo, t)


@dataclass
class Acked:
    """What the writers acknowledged, across rounds."""

    blocks: dict[tuple[str, int | None], int] = field(default_factory=dict)
    deleted: set[tuple[str, int | None]] = field(default_factory=set)
    deleting: set[tuple[str, int | None]] = field(default_factory=set)
    paxos: dict[str, int] = field(default_factory=dict)

    def add(self, line: str) -> None:
        kind, address, *rest = line.split()
        if kind == "B":
            fragment = None if rest[0] == "-" else int(rest[0])
            self.blocks[(address, fragment)] = int(rest[1])
        elif kind == "d":
            self.deleting.add((address, None))
        elif kind == "D":
            self.deleting.remove((address, None))
            self.deleted.add((address, None))
            del self.blocks[(address, None)]
        elif kind == "P":
            self.paxos[address] = max(self.paxos.get(address, 0), int(rest[0]))


async def _run_and_kill(path: Path, round_: int, kill_after: int, acked: Acked) -> int:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.cluster.test_silo_crash", str(path), str(round_)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    buffer = b""
    acks = 0
    killed = False
    try:
        with trio.fail_after(30):
            while True:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line != b"READY":
                        acked.add(line.decode())
                        acks += 1
                if acks >= kill_after and not killed:
                    proc.send_signal(signal.SIGKILL)  # lines already in the pipe still count
                    killed = True
    finally:
        if not killed:
            proc.kill()
        await proc.wait()
        await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    return acks


async def _verify(path: Path, acked: Acked) -> None:
    async with await Silo.open(path, capacity_bytes=CAPACITY) as silo:
        assert list((path / "tmp").iterdir()) == []  # interrupted writes were cleared
        for (address_hex, fragment), size in acked.blocks.items():
            address = BlockAddress(bytes.fromhex(address_hex))
            maybe_deleted = (address_hex, fragment) in acked.deleting  # killed mid-delete
            if maybe_deleted and not await silo.has_block(address, fragment):
                continue
            assert await silo.get_block(address, fragment) == payload_for(address, size)
        for address_hex, fragment in acked.deleted:
            with pytest.raises(NotFound):
                await silo.get_block(BlockAddress(bytes.fromhex(address_hex)), fragment)
        for address_hex, version in acked.paxos.items():
            address = BlockAddress(bytes.fromhex(address_hex))
            record = await silo.load_paxos(address)
            assert record is not None
            stored = int.from_bytes(record.metadata, "big")
            assert stored >= version  # a later, unacknowledged save may have landed too
            assert record == acceptor_record(address, stored)
        assert await silo.verify_all(float("inf")) == []
        assert silo.statistics().corrupt_detections == 0


@pytest.mark.slow
async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    acked = Acked()
    rng = random.Random(1234)
    for round_ in range(3):
        acks = await _run_and_kill(tmp_path, round_, rng.randrange(200, 600), acked)
        assert acks >= 200
        await _verify(tmp_path, acked)
    assert len(acked.blocks) > 300
    assert acked.deleted
    assert acked.paxos


if __name__ == "__main__":
    trio.run(_writer, sys.argv[1], int(sys.argv[2]))
