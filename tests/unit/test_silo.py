"""Unit tests of the silo: every method, corruption detection, capacity, crash leftovers."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import Corrupt, InvalidArgument, NoSpace, NotFound
from storage.ids import BlockAddress
from storage.silo import (
    DB_NAME,
    FILE_THRESHOLD,
    AcceptorRecord,
    BlockKey,
    PaxosKey,
    SettingKey,
    Silo,
)
from storage.silo_files import HEADER, BlockFiles
from storage.silo_sqlite import Job, SqliteThread

CAPACITY = 64 * 1024 * 1024


def addr(n: int) -> BlockAddress:
    """A deterministic 32-byte address."""
    return BlockAddress(hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).digest())


def data(n: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(size)


@pytest.fixture
async def silo(tmp_path: Path) -> AsyncIterator[Silo]:
    async with await Silo.open(tmp_path / "silo", capacity_bytes=CAPACITY) as s:
        yield s


def db_execute(root: Path, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(root / DB_NAME)) as conn, conn:
        conn.execute(sql, args)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


# --- blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, FILE_THRESHOLD - 1, FILE_THRESHOLD, 300_000])
async def test_put_get_round_trip(silo: Silo, size: int) -> None:
    payload = data(size, size)
    await silo.put_block(addr(1), payload)
    assert await silo.get_block(addr(1)) == payload
    stats = silo.statistics()
    assert stats.blocks == 1
    assert stats.bytes_used == size
    assert stats.block_files_written == (1 if size >= FILE_THRESHOLD else 0)


async def test_fragments_are_distinct_keys(silo: Silo) -> None:
    await silo.put_block(addr(1), b"whole")
    await silo.put_block(addr(1), b"fragment 0", fragment=0)
    await silo.put_block(addr(1), data(7, FILE_THRESHOLD * 2), fragment=7)
    assert await silo.get_block(addr(1)) == b"whole"
    assert await silo.get_block(addr(1), 0) == b"fragment 0"
    assert await silo.get_block(addr(1), 7) == data(7, FILE_THRESHOLD * 2)
    with pytest.raises(NotFound):
        await silo.get_block(addr(1), 1)
    assert await silo.has_block(addr(1), 7)
    assert not await silo.has_block(addr(1), 8)


async def test_buffer_payloads_are_accepted(silo: Silo) -> None:
    buf = bytearray(b"abc")
    await silo.put_block(addr(1), buf)
    buf[0] = 0  # the silo stored a snapshot
    await silo.put_block(addr(2), memoryview(b"xyz" * 30_000))
    assert await silo.get_block(addr(1)) == b"abc"
    assert await silo.get_block(addr(2)) == b"xyz" * 30_000


async def test_get_missing_raises_not_found(silo: Silo) -> None:
    with pytest.raises(NotFound):
        await silo.get_block(addr(9))
    assert not await silo.has_block(addr(9))


async def test_delete_block(silo: Silo, tmp_path: Path) -> None:
    await silo.put_block(addr(1), b"small")
    await silo.put_block(addr(2), data(2, 100_000))
    file = BlockFiles(tmp_path / "silo").path(addr(2), -1)
    assert file.exists()
    assert await silo.delete_block(addr(1))
    assert await silo.delete_block(addr(2))
    assert not file.exists()
    assert not await silo.delete_block(addr(2))
    assert not await silo.has_block(addr(1))
    with pytest.raises(NotFound):
        await silo.get_block(addr(2))
    stats = silo.statistics()
    assert (stats.blocks, stats.bytes_used) == (0, 0)


async def test_overwrite_moves_between_sqlite_and_file(silo: Silo, tmp_path: Path) -> None:
    file = BlockFiles(tmp_path / "silo").path(addr(1), -1)
    await silo.put_block(addr(1), b"small")
    await silo.put_block(addr(1), data(1, 100_000))
    assert file.exists()
    assert await silo.get_block(addr(1)) == data(1, 100_000)
    await silo.put_block(addr(1), b"small again")
    assert not file.exists()
    assert await silo.get_block(addr(1)) == b"small again"
    stats = silo.statistics()
    assert (stats.blocks, stats.bytes_used) == (1, len(b"small again"))


async def test_list_blocks_pages_in_key_order(silo: Silo) -> None:
    keys = {BlockKey(addr(i), None if i % 3 else i % 5) for i in range(25)}
    for key in keys:
        await silo.put_block(key.address, b"x", key.fragment)
    pages: list[list[BlockKey]] = []
    page = await silo.list_blocks(limit=10)
    while page:
        pages.append(page)
        page = await silo.list_blocks(after=page[-1], limit=10)
    assert [len(p) for p in pages] == [10, 10, 5]
    listed = [key for p in pages for key in p]
    assert set(listed) == keys
    assert [k.address for k in listed] == sorted(k.address for k in listed)
    assert [key async for key in silo.iter_blocks(page_size=7)] == listed


async def test_concurrent_puts_of_one_key_serialise(silo: Silo) -> None:
    payloads = [data(i, FILE_THRESHOLD + i) for i in range(4)] + [b"small"]
    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(silo.put_block, addr(1), payload)
            nursery.start_soon(silo.delete_block, addr(1))
    await silo.put_block(addr(1), payloads[0])
    assert await silo.get_block(addr(1)) == payloads[0]
    assert await silo.verify_all(float("inf")) == []
    stats = silo.statistics()
    assert (stats.blocks, stats.bytes_used) == (1, len(payloads[0]))


# --- acceptor state and settings ----------------------------------------------------------


async def test_paxos_records(silo: Silo) -> None:
    assert await silo.load_paxos(addr(1)) is None
    promise_only = AcceptorRecord(promised=b"ballot 1")
    full = AcceptorRecord(b"ballot 3", b"ballot 2", b"value", b"meta")
    await silo.save_paxos(addr(1), promise_only)
    await silo.save_paxos(addr(2), full)
    assert await silo.load_paxos(addr(1)) == promise_only
    assert await silo.load_paxos(addr(2)) == full
    await silo.save_paxos(addr(1), full)
    assert await silo.load_paxos(addr(1)) == full
    assert await silo.list_paxos() == sorted([addr(1), addr(2)])
    assert await silo.list_paxos(after=min(addr(1), addr(2))) == [max(addr(1), addr(2))]
    assert silo.statistics().bytes_used == 2 * full.stored_size()
    assert silo.statistics().acceptor_records == 2
    assert await silo.delete_paxos(addr(1))
    assert not await silo.delete_paxos(addr(1))
    assert await silo.load_paxos(addr(1)) is None
    assert silo.statistics().bytes_used == full.stored_size()


async def test_settings(silo: Silo) -> None:
    assert await silo.get_setting("node.id") is None
    await silo.put_setting("node.id", b"\x01\x02")
    await silo.put_setting("node.id", b"\x03")
    assert await silo.get_setting("node.id") == b"\x03"
    assert await silo.delete_setting("node.id")
    assert not await silo.delete_setting("node.id")
    assert await silo.get_setting("node.id") is None


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        (b"\x00" * 31, None),
        (b"\x00" * 33, None),
        ("0" * 32, None),
        (bytearray(32), None),
        (b"\x00" * 32, -1),
        (b"\x00" * 32, True),
        (b"\x00" * 32, 1.0),
        (b"\x00" * 32, 2**31),
    ],
)
async def test_bad_keys_are_invalid_arguments(
    silo: Silo, address: object, fragment: object
) -> None:
    with pytest.raises(InvalidArgument):
        await silo.put_block(address, b"x", fragment)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.get_block(address, fragment)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.has_block(address, fragment)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.delete_block(address, fragment)  # type: ignore[arg-type]


async def test_bad_values_are_invalid_arguments(silo: Silo, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        await silo.put_block(addr(1), "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.save_paxos(addr(1), (b"p", None, None, b""))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.save_paxos(addr(1), AcceptorRecord(promised=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.load_paxos(b"short")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await silo.put_setting("", b"x")
    with pytest.raises(InvalidArgument):
        await silo.list_blocks(limit=0)
    with pytest.raises(InvalidArgument):
        await silo.verify_all(0)
    with pytest.raises(InvalidArgument):
        await Silo.open(tmp_path / "other", capacity_bytes=-1)
    assert silo.statistics().blocks == 0


# --- capacity -----------------------------------------------------------------------------


async def test_capacity_is_enforced_and_nothing_is_stored(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=200_000) as silo:
        await silo.put_block(addr(1), data(1, 150_000))
        with pytest.raises(NoSpace):
            await silo.put_block(addr(2), data(2, 60_000))
        with pytest.raises(NoSpace):
            await silo.put_block(addr(3), data(3, 100_000))
        with pytest.raises(NoSpace):
            await silo.save_paxos(addr(4), AcceptorRecord(b"p", value=bytes(60_000)))
        assert not await silo.has_block(addr(2))
        assert not await silo.has_block(addr(3))
        assert await silo.load_paxos(addr(4)) is None
        assert list((tmp_path / "tmp").iterdir()) == []
        await silo.put_block(addr(5), data(5, 50_000))  # still fits exactly
        assert silo.statistics().bytes_used == 200_000
        await silo.delete_block(addr(1))
        await silo.put_block(addr(2), data(2, 60_000))
    async with await Silo.open(tmp_path, capacity_bytes=200_000) as silo:
        assert silo.statistics().bytes_used == 110_000  # recomputed on open
        assert silo.statistics().blocks == 2


async def test_concurrent_puts_cannot_overcommit(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=10 * 100_000) as silo:
        outcomes: list[bool] = []

        async def put(i: int) -> None:
            try:
                await silo.put_block(addr(i), data(i, 100_000))
                outcomes.append(True)
            except NoSpace:
                outcomes.append(False)

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(put, i)
        assert outcomes.count(True) == 10
        assert silo.statistics().bytes_used == 1_000_000


# --- persistence, crash leftovers ---------------------------------------------------------


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    record = AcceptorRecord(b"b1", b"b0", b"v", b"m")
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), b"small")
        await silo.put_block(addr(2), data(2, 200_000), fragment=4)
        await silo.save_paxos(addr(3), record)
        await silo.put_setting("k", b"v")
        before = silo.statistics()
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        assert await silo.get_block(addr(1)) == b"small"
        assert await silo.get_block(addr(2), 4) == data(2, 200_000)
        assert await silo.load_paxos(addr(3)) == record
        assert await silo.get_setting("k") == b"v"
        after = silo.statistics()
        assert (after.bytes_used, after.blocks, after.acceptor_records) == (
            before.bytes_used,
            before.blocks,
            before.acceptor_records,
        )


async def test_open_cleans_tmp_and_unreferenced_files(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), data(1, 100_000))
    files = BlockFiles(tmp_path)
    half_written = tmp_path / "tmp" / "abc.123.tmp"
    half_written.write_bytes(b"partial")
    orphan = files.path(addr(2), 0)  # as if a crash hit between rename and index commit
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(files.path(addr(1), -1).read_bytes())
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        assert not half_written.exists()
        assert not orphan.exists()
        assert await silo.get_block(addr(1)) == data(1, 100_000)
        assert silo.statistics().blocks == 1


async def test_damaged_database_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not an SQLite database" * 200)
    with pytest.raises(Corrupt):
        await Silo.open(tmp_path, capacity_bytes=CAPACITY)
    (tmp_path / DB_NAME).unlink()
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:  # lock released
        assert silo.statistics().blocks == 0


async def test_second_open_of_same_directory_is_refused(silo: Silo, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="open in another"):
        await Silo.open(tmp_path / "silo", capacity_bytes=CAPACITY)


async def test_closed_silo_refuses_calls(tmp_path: Path) -> None:
    silo = await Silo.open(tmp_path, capacity_bytes=CAPACITY)
    await silo.aclose()
    await silo.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await silo.get_block(addr(1))
    with pytest.raises(trio.ClosedResourceError):
        await silo.put_block(addr(1), b"x")


async def test_cancelled_put_leaves_silo_consistent(silo: Silo) -> None:
    sizes = (10, 500_000, 900_000)
    for delay in (0, 0.0005, 0.002, 0.01):
        for size in sizes:
            with trio.move_on_after(delay):  # before, during or after the I/O
                await silo.put_block(addr(size), data(size + 1, size))
            with trio.move_on_after(delay):
                await silo.delete_block(addr(size))
            # Stored or not, the silo agrees with itself and the key is usable again.
            await silo.put_block(addr(size), data(size, size))
            assert await silo.get_block(addr(size)) == data(size, size)
    stats = silo.statistics()
    assert (stats.blocks, stats.bytes_used) == (len(sizes), sum(sizes))
    assert await silo.verify_all(float("inf")) == []


# --- corruption ---------------------------------------------------------------------------


async def test_flipped_byte_in_block_file_is_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), data(1, 100_000))
        await silo.put_block(addr(2), data(2, 100_000), fragment=2)
    files = BlockFiles(tmp_path)
    flip_byte(files.path(addr(1), -1), HEADER.size + 5000)
    flip_byte(files.path(addr(2), 2), 10)  # in the header's length field
    with caplog.at_level(logging.ERROR, logger="storage.silo"):
        async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
            with pytest.raises(Corrupt):
                await silo.get_block(addr(1))
            with pytest.raises(Corrupt):
                await silo.get_block(addr(2), 2)
            assert silo.statistics().corrupt_detections == 2
            assert set(await silo.verify_all(float("inf"))) == {
                BlockKey(addr(1)),
                BlockKey(addr(2), 2),
            }
            assert silo.statistics().corrupt_detections == 4
            # A fresh put (repair) replaces the corrupt copy.
            await silo.put_block(addr(1), data(1, 100_000))
            assert await silo.get_block(addr(1)) == data(1, 100_000)
    assert "corrupt block" in caplog.text


async def test_stored_checksums_are_zlib_crc32_of_the_record(tmp_path: Path) -> None:
    """Row and file header hold zlib.crc32 of key, length and payload, as silos always did."""
    blocks = {(1, -1): data(1, 1000), (2, -1): data(2, 100_000), (3, 4): data(3, 70_000)}
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        for (n, fragment), payload in blocks.items():
            await silo.put_block(addr(n), payload, None if fragment == -1 else fragment)
    with closing(sqlite3.connect(tmp_path / DB_NAME)) as conn:
        rows = {
            (a, f): c for a, f, c in conn.execute("SELECT address, fragment, checksum FROM blocks")
        }
    files = BlockFiles(tmp_path)
    for (n, fragment), payload in blocks.items():
        record = struct.pack(">32siQ", addr(n), fragment, len(payload)) + payload
        assert rows[addr(n), fragment] == zlib.crc32(record)
        if len(payload) >= FILE_THRESHOLD:
            header = files.path(addr(n), fragment).read_bytes()[: HEADER.size]
            assert HEADER.unpack(header)[-1] == zlib.crc32(record)


async def test_truncated_or_misplaced_block_file_is_detected(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), data(1, 100_000))
        await silo.put_block(addr(2), data(2, 100_000))
        await silo.put_block(addr(3), data(3, 100_000))
    files = BlockFiles(tmp_path)
    os.truncate(files.path(addr(1), -1), HEADER.size + 50_000)  # a torn write
    files.path(addr(2), -1).write_bytes(files.path(addr(3), -1).read_bytes())
    files.path(addr(3), -1).write_bytes(b"BLSB")  # truncated inside the header
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        for i in (1, 2, 3):
            with pytest.raises(Corrupt):
                await silo.get_block(addr(i))
        assert silo.statistics().corrupt_detections == 3


async def test_file_newer_than_its_row_is_adopted(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), data(1, 100_000))
    # A crash during an overwrite: the new file was renamed into place, its row not committed.
    BlockFiles(tmp_path).write(addr(1), -1, data(2, 120_000))
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        assert await silo.get_block(addr(1)) == data(2, 120_000)
        assert await silo.get_block(addr(1)) == data(2, 120_000)
        assert silo.statistics().bytes_used == 120_000
        assert silo.statistics().corrupt_detections == 0
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        assert silo.statistics().bytes_used == 120_000  # the row was fixed durably
        assert await silo.verify_all(float("inf")) == []


async def test_missing_block_file_is_corrupt(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), data(1, 100_000))
    BlockFiles(tmp_path).path(addr(1), -1).unlink()
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        assert silo.statistics().corrupt_detections == 1  # noticed on open
        with pytest.raises(Corrupt):
            await silo.get_block(addr(1))


async def test_flipped_bytes_in_sqlite_rows_are_detected(tmp_path: Path) -> None:
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), b"small payload")
        await silo.save_paxos(addr(2), AcceptorRecord(b"ballot", b"ballot", b"value"))
        await silo.put_setting("name", b"value")
    db_execute(tmp_path, "UPDATE blocks SET payload = ?", b"small pAyload")
    db_execute(tmp_path, "UPDATE paxos SET value = ?", b"valuE")
    db_execute(tmp_path, "UPDATE settings SET value = ?", b"vAlue")
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        with pytest.raises(Corrupt):
            await silo.get_block(addr(1))
        with pytest.raises(Corrupt):
            await silo.load_paxos(addr(2))
        with pytest.raises(Corrupt):
            await silo.get_setting("name")
        assert silo.statistics().corrupt_detections == 3
        assert set(await silo.verify_all(1e9)) == {
            BlockKey(addr(1)),
            PaxosKey(addr(2)),
            SettingKey("name"),
        }


async def test_flipped_byte_in_the_sqlite_file_is_detected(tmp_path: Path) -> None:
    payload = b"needle:" + data(1, 2000)
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        await silo.put_block(addr(1), payload)
    # Closing checkpointed the WAL into the main file; flip a bit of the row on disk.
    db = tmp_path / DB_NAME
    offset = db.read_bytes().index(payload)
    flip_byte(db, offset + 1000)
    async with await Silo.open(tmp_path, capacity_bytes=CAPACITY) as silo:
        with pytest.raises(Corrupt):
            await silo.get_block(addr(1))
        assert await silo.verify_all(float("inf")) == [BlockKey(addr(1))]


async def test_verify_all_respects_the_rate_limit(silo: Silo) -> None:
    for i in range(4):
        await silo.put_block(addr(i), bytes(100_000))
    start = trio.current_time()
    assert await silo.verify_all(2_000_000) == []
    assert trio.current_time() - start >= 0.19  # 400 kB at 2 MB/s


# --- group commit -------------------------------------------------------------------------


async def test_concurrent_writers_share_commits(silo: Silo) -> None:
    before = silo.statistics()
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(silo.put_block, addr(i), data(i, 1024))
    after = silo.statistics()
    records = after.records_committed - before.records_committed
    commits = after.commits - before.commits
    assert records == 200
    assert commits < records / 2


async def test_a_failing_job_does_not_undo_its_batch(tmp_path: Path) -> None:
    writer = SqliteThread(tmp_path / "t.sqlite3", name="test writer", writer=True)
    try:
        await writer.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))

        def insert(k: int) -> Job[None]:
            def job(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t VALUES (?)", (k,))
                if k == 2:
                    raise ValueError("job 2 fails after writing")

            return writer.submit(job)

        jobs = [insert(k) for k in range(4)]  # queued together: one batch, most likely
        for k, job in enumerate(jobs):
            if k == 2:
                with pytest.raises(ValueError, match="job 2"):
                    await job.wait()
            else:
                await job.wait()
        rows = await writer.run(lambda conn: conn.execute("SELECT k FROM t ORDER BY k").fetchall())
        assert rows == [(0,), (1,), (3,)]
    finally:
        await writer.aclose()
    with pytest.raises(trio.ClosedResourceError):
        writer.submit(lambda conn: None)


# --- property -----------------------------------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.integers(0, 5),  # address
        st.none() | st.integers(0, 3),  # fragment
        st.none() | st.binary(max_size=300) | st.integers(FILE_THRESHOLD, FILE_THRESHOLD + 999),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
async def test_random_sequences_round_trip(
    ops: list[tuple[int, int | None, bytes | int | None]],
) -> None:
    model: dict[tuple[int, int | None], bytes] = {}
    with tempfile.TemporaryDirectory() as root:
        async with await Silo.open(root, capacity_bytes=CAPACITY) as silo:
            for n, fragment, value in ops:
                if value is None:
                    existed = await silo.delete_block(addr(n), fragment)
                    assert existed == ((n, fragment) in model)
                    model.pop((n, fragment), None)
                else:
                    payload = value if isinstance(value, bytes) else data(n, value)
                    await silo.put_block(addr(n), payload, fragment)
                    model[(n, fragment)] = payload
        async with await Silo.open(root, capacity_bytes=CAPACITY) as silo:
            for (n, fragment), payload in model.items():
                assert await silo.get_block(addr(n), fragment) == payload
            listed = {(k.address, k.fragment) async for k in silo.iter_blocks()}
            assert listed == {(addr(n), f) for n, f in model}
            assert silo.statistics().bytes_used == sum(map(len, model.values()))


# --- what repair relies on ----------------------------------------------------------------


async def test_replica_targets_are_kept_listed_and_checked(silo: Silo, tmp_path: Path) -> None:
    await silo.put_block(addr(1), data(1, 100), replicas=3)
    await silo.put_block(addr(1), data(1, 100))  # a later put without a target keeps it
    await silo.put_block(addr(2), data(2, 100_000), replicas=5)
    await silo.put_block(addr(3), data(3, 10), 4)
    assert await silo.replica_target(addr(1)) == 3
    assert await silo.replica_target(addr(3)) is None
    entries = {e.key: e.replicas for e in await silo.list_block_entries()}
    assert entries[BlockKey(addr(1))] == 3
    assert entries[BlockKey(addr(2))] == 5
    assert entries[BlockKey(addr(3), 4)] is None
    held = await silo.holdings([addr(1), addr(3), addr(9)])
    assert held == {addr(1): [None], addr(3): [4]}
    with pytest.raises(InvalidArgument):
        await silo.put_block(addr(4), b"x", replicas=0)
    with pytest.raises(InvalidArgument):
        await silo.put_block(addr(4), b"x", 1, replicas=3)
    # A corrupted target is reported and read as unknown, never as a wrong number.
    db_execute(
        tmp_path / "silo", "UPDATE replica_targets SET replicas = 7 WHERE address = ?", addr(2)
    )
    assert await silo.replica_target(addr(2)) is None
    assert silo.statistics().corrupt_detections >= 1
    await silo.delete_block(addr(1))
    assert await silo.replica_target(addr(1)) is None


async def test_a_silo_that_stops_accepting_refuses_only_new_data(silo: Silo) -> None:
    await silo.put_block(addr(1), data(1, 100))
    await silo.save_paxos(addr(2), AcceptorRecord(promised=b"ballot 1"))
    silo.set_accepting(False)
    assert not silo.accepting
    with pytest.raises(NoSpace):
        await silo.put_block(addr(3), data(3, 100))
    with pytest.raises(NoSpace):
        await silo.put_block(addr(3), data(3, 100_000))
    with pytest.raises(NoSpace):
        await silo.save_paxos(addr(4), AcceptorRecord(promised=b"ballot 1"))
    await silo.put_block(addr(1), data(1, 100))  # what it holds stays writable
    await silo.save_paxos(addr(2), AcceptorRecord(promised=b"ballot 2"))
    assert await silo.delete_block(addr(1))
    assert silo.statistics().blocks == 0
    silo.set_accepting(True)
    await silo.put_block(addr(3), data(3, 100))
