"""The silo: each node's local crash-safe store of blocks and consensus state.

Theory of operation
-------------------
The silo is the only code in Ballast that fsyncs or commits. It holds

* **blocks**: immutable blocks and erasure-coded fragments, keyed by :class:`BlockKey`
  (32-byte address, plus the fragment index for a fragment, so a node may hold fragment
  ``i`` of a block). Payloads under 64 KiB are stored inline in SQLite; larger ones in one file
  each (:mod:`storage.silo_files`), with an index row in SQLite either way;
* **acceptor state** of mutable blocks: an :class:`AcceptorRecord` per address, opaque bytes
  to the silo;
* **settings**: a small key-value table for node-local metadata;
* **replica targets**: for a whole (replicated) block, the number of copies its writer asked
  for, so that repair knows what "full redundancy" means for it (fragments carry their
  geometry in their manifest).

A silo can stop *accepting new data* (:meth:`Silo.set_accepting`), as a draining node does:
puts of blocks it does not hold and acceptor records for addresses it has none for then
raise :class:`~storage.errors.NoSpace`, while existing records can still be replaced, read
and deleted.

Layout of a silo directory: ``silo.sqlite3`` (WAL mode, ``synchronous=FULL``), ``blocks/``
(sharded block files), ``tmp/`` (block files being written), ``LOCK`` (an exclusive
``flock`` so that two processes never open one silo).

Invariants
~~~~~~~~~~
1. **Durable before acknowledged.** Every mutating method returns only after its record is
   committed with an fsync (group commit shares one fsync between concurrent writers, see
   :mod:`storage.silo_sqlite`). A block file is fsynced, renamed into place and its directory
   fsynced *before* the index row naming it commits, so an index row always points at a
   complete file. (A crash during an *overwrite* can leave a complete file newer than its
   row; a read finds it self-consistent, serves it, as the interrupted put would have, and
   updates the row.)
2. **Never serve corrupt bytes.** Every record carries a CRC32 over its key and payload
   (block rows and block files the same value; acceptor and setting rows their own). A read
   that fails verification logs an error, bumps ``corrupt_detections`` and raises
   :class:`~storage.errors.Corrupt`.
3. **Crash leftovers are cleared on open**: temporary files (writes never acknowledged) and
   block files that no index row references (a write interrupted between rename and commit,
   or a delete between commit and unlink) are deleted.
4. **Capacity** counts stored payload bytes (blocks, and the fields of acceptor records).
   It is recomputed from the index on open and kept in memory; a write reserves its size
   before touching the disk and raises :class:`~storage.errors.NoSpace` instead of writing
   if the reservation would exceed the limit (overwrites reserve their full size).
5. **One mutation per block key at a time**: a put or delete of a key waits for the previous
   one on that key to commit, even if the task that started it was cancelled, so a file and
   its index row never diverge.

Blocking work runs off the trio loop: SQLite on its own threads, block files in worker
threads under a :class:`trio.CapacityLimiter`.

Cancellation: cancelling a mutating call stops the *waiting*; the write itself may or may not
become durable (if it does, it is as if the call had returned). Cancelling a read loses
nothing.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sqlite3
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import trio

from .errors import Corrupt, InvalidArgument, NoSpace, NotFound
from .ids import BLOCK_ADDRESS_BYTES, BlockAddress
from .silo_files import FILE_THRESHOLD, WHOLE_BLOCK, BlockFiles, block_checksum
from .silo_sqlite import Job, SqliteThread

logger = logging.getLogger(__name__)

__all__ = [
    "FILE_THRESHOLD",
    "MAX_REPLICAS",
    "AcceptorRecord",
    "BlockEntry",
    "BlockKey",
    "PaxosKey",
    "SettingKey",
    "Silo",
    "SiloKey",
    "SiloStatistics",
]

DB_NAME = "silo.sqlite3"
MAX_FRAGMENT = 2**31 - 1
#: Largest replica target a block may carry.
MAX_REPLICAS = 64
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    address  BLOB    NOT NULL,
    fragment INTEGER NOT NULL,  -- -1: a whole block
    size     INTEGER NOT NULL,
    checksum INTEGER NOT NULL,  -- CRC32 of key, size and payload (silo_files.block_checksum)
    payload  BLOB,              -- NULL: the payload is in a block file
    PRIMARY KEY (address, fragment)
);
CREATE TABLE IF NOT EXISTS paxos (
    address  BLOB    NOT NULL PRIMARY KEY,
    promised BLOB    NOT NULL,
    accepted BLOB,
    value    BLOB,
    metadata BLOB    NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name     TEXT    NOT NULL PRIMARY KEY,
    value    BLOB    NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replica_targets (
    address  BLOB    NOT NULL PRIMARY KEY,
    replicas INTEGER NOT NULL,
    checksum INTEGER NOT NULL  -- CRC32 of address and replicas (_target_checksum)
);
"""

Buffer: TypeAlias = bytes | bytearray | memoryview
#: address, fragment, size, replica target, its checksum
_EntryRow: TypeAlias = tuple[bytes, int, int, int | None, int | None]


@dataclass(frozen=True)
class BlockKey:
    """What identifies a stored block: its address, and the fragment index for a fragment."""

    address: BlockAddress
    fragment: int | None = None

    def __str__(self) -> str:
        suffix = "" if self.fragment is None else f"#{self.fragment}"
        return f"block {self.address.hex()}{suffix}"


@dataclass(frozen=True)
class PaxosKey:
    """What identifies the acceptor record of a mutable block."""

    address: BlockAddress

    def __str__(self) -> str:
        return f"acceptor record {self.address.hex()}"


@dataclass(frozen=True)
class SettingKey:
    """What identifies a node-local setting."""

    name: str

    def __str__(self) -> str:
        return f"setting {self.name!r}"


SiloKey: TypeAlias = BlockKey | PaxosKey | SettingKey


@dataclass(frozen=True)
class BlockEntry:
    """One held block as repair lists it: its key, payload size and replica target.

    ``replicas`` is ``None`` for fragments and for blocks stored without a target.
    """

    key: BlockKey
    size: int
    replicas: int | None


@dataclass(frozen=True)
class AcceptorRecord:
    """The durable state of one CASPaxos acceptor for one mutable block.

    All fields are opaque bytes to the silo; the consensus layer encodes its ballots.

    Attributes:
        promised: the highest ballot promised.
        accepted: the ballot of the accepted value, or None if nothing was accepted.
        value: the accepted value, or None.
        metadata: anything else the acceptor must keep (replica set, version), small.
    """

    promised: bytes
    accepted: bytes | None = None
    value: bytes | None = None
    metadata: bytes = b""

    def stored_size(self) -> int:
        """Bytes this record counts against the silo's capacity."""
        return (
            len(self.promised)
            + len(self.accepted or b"")
            + len(self.value or b"")
            + len(self.metadata)
        )


@dataclass(frozen=True)
class SiloStatistics:
    """A snapshot of a silo's counters (see :meth:`Silo.statistics`).

    Attributes:
        bytes_used: payload bytes stored (blocks and acceptor records).
        capacity_bytes: the limit ``bytes_used`` may not exceed.
        blocks: blocks and fragments held.
        acceptor_records: acceptor records held.
        records_committed: records made durable through SQLite since open.
        commits: SQLite transactions (each one fsync) since open; with group commit this is
            lower than ``records_committed``.
        block_files_written: block files written (each a file and a directory fsync).
        corrupt_detections: reads or scrubs that found a record failing its checksum.
    """

    bytes_used: int
    capacity_bytes: int
    blocks: int
    acceptor_records: int
    records_committed: int
    commits: int
    block_files_written: int
    corrupt_detections: int


class Silo:
    """A node's local store; open it with :meth:`Silo.open`, close it with :meth:`aclose`.

    Use ``async with await Silo.open(path, capacity_bytes=...) as silo:`` or call
    :meth:`aclose` yourself. Methods may be called concurrently from many tasks of the trio
    run that opened the silo.
    """

    def __init__(
        self,
        root: Path,
        files: BlockFiles,
        lock_fd: int,
        writer: SqliteThread,
        reader: SqliteThread,
        *,
        capacity_bytes: int,
        file_threads: int,
    ) -> None:
        # Private: Silo.open builds the parts and recomputes the counters.
        self._root = root
        self._files = files
        self._lock_fd = lock_fd
        self._writer = writer
        self._reader = reader
        self._file_limiter = trio.CapacityLimiter(file_threads)
        self._capacity = capacity_bytes
        self._used = 0
        self._reserved = 0
        self._blocks = 0
        self._acceptor_records = 0
        self._block_files_written = 0
        self._corrupt_detections = 0
        self._busy: dict[BlockKey, trio.Event] = {}
        self._active = 0
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        self._accepting = True

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, capacity_bytes: int, file_threads: int = 4
    ) -> Silo:
        """Open (creating if needed) the silo in directory ``path``.

        Clears crash leftovers (temporary files, unreferenced block files) and recomputes the
        bytes used from the index; this lists every block file, so it takes time in
        proportion to how many the node holds.

        Args:
            path: the silo's directory.
            capacity_bytes: the most payload bytes this silo may hold.
            file_threads: worker threads for block-file I/O.

        Raises:
            InvalidArgument: bad capacity, or another process has this silo open.
            Corrupt: the SQLite file is not a database or is damaged.

        Cancellation: safe; a cancelled open releases everything it opened.
        """
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
            raise InvalidArgument("capacity_bytes must be an int")
        if capacity_bytes < 0:
            raise InvalidArgument("capacity_bytes must not be negative")
        if isinstance(file_threads, bool) or not isinstance(file_threads, int) or file_threads < 1:
            raise InvalidArgument("file_threads must be a positive int")
        root = Path(path)
        files = BlockFiles(root)
        lock_fd = await trio.to_thread.run_sync(_lock_directory, root)
        writer: SqliteThread | None = None
        reader: SqliteThread | None = None
        opened = False
        try:
            await trio.to_thread.run_sync(files.setup)
            writer = SqliteThread(root / DB_NAME, name=f"silo-writer {root}", writer=True)
            await writer.run(_create_schema)
            reader = SqliteThread(root / DB_NAME, name=f"silo-reader {root}", writer=False)
            silo = cls(
                root,
                files,
                lock_fd,
                writer,
                reader,
                capacity_bytes=capacity_bytes,
                file_threads=file_threads,
            )
            await silo._recover()
            opened = True
        finally:
            if not opened:
                with trio.CancelScope(shield=True):
                    for thread in (reader, writer):
                        if thread is not None:
                            await thread.aclose()
                os.close(lock_fd)
        logger.info(
            "silo: opened %s: %d block(s), %d acceptor record(s), %d of %d bytes used",
            root,
            silo._blocks,
            silo._acceptor_records,
            silo._used,
            capacity_bytes,
        )
        return silo

    async def _recover(self) -> None:
        totals = await self._reader.run(_read_totals)
        self._used, self._blocks, self._acceptor_records, file_keys = totals
        missing, removed = await trio.to_thread.run_sync(self._reconcile_files, file_keys)
        for address, fragment in missing:
            key = _block_key(address, fragment)
            self._report_corrupt(key, Corrupt("indexed block file is missing"))
        if removed:
            logger.info("silo: removed %d unreferenced block file(s) in %s", removed, self._root)

    def _reconcile_files(
        self, file_keys: set[tuple[bytes, int]]
    ) -> tuple[set[tuple[bytes, int]], int]:
        """Delete block files no index row references; return (indexed but missing, removed)."""
        missing = set(file_keys)
        removed = 0
        for item in self._files.scan():
            if isinstance(item, Path):
                logger.warning("silo: ignoring stray file %s", item)
            elif item in file_keys:
                missing.discard(item)
            else:
                # Written but never indexed (crash before the commit: never acknowledged),
                # or de-indexed but not unlinked (crash during a delete).
                self._files.remove(*item)
                removed += 1
        return missing, removed

    async def aclose(self) -> None:
        """Wait for the calls in progress, then close the silo; idempotent.

        Every write that was acknowledged is durable already; calls made after ``aclose``
        started raise :class:`trio.ClosedResourceError`. Shielded from cancellation: it
        waits only for work already under way.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            await self._reader.aclose()
            await self._writer.aclose()
        os.close(self._lock_fd)
        logger.info("silo: closed %s", self._root)

    async def __aenter__(self) -> Silo:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def statistics(self) -> SiloStatistics:
        """Return a snapshot of the silo's counters."""
        return SiloStatistics(
            bytes_used=self._used,
            capacity_bytes=self._capacity,
            blocks=self._blocks,
            acceptor_records=self._acceptor_records,
            records_committed=self._writer.records,
            commits=self._writer.commits,
            block_files_written=self._block_files_written,
            corrupt_detections=self._corrupt_detections,
        )

    # --- blocks --------------------------------------------------------------------------

    async def put_block(
        self,
        address: BlockAddress,
        payload: Buffer,
        fragment: int | None = None,
        *,
        replicas: int | None = None,
    ) -> None:
        """Store a block (or fragment ``fragment`` of it) durably; replaces an existing one.

        Returns once the payload and its index row are on disk (fsynced). ``replicas``, for a
        whole block, records how many copies the cluster should keep of it (kept across
        later puts that give none).

        Raises:
            InvalidArgument: bad address, fragment, replicas or payload type.
            NoSpace: storing it would exceed the capacity (nothing is stored), the disk is
                full, or the silo does not accept new data and does not hold this key.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the block may or may not be stored; either way the silo stays
        consistent, and the next mutation of this key waits until this one settled.
        """
        key = _block_key(_address(address), _fragment(fragment))
        data = _payload(payload)
        target = _replicas(replicas, key.fragment)
        size = len(data)
        with self._call():
            await self._acquire(key)
            try:
                self._reserve(size)
            except NoSpace:
                self._release(key)
                raise
            submitted = False
            try:
                if not self._accepting and not await self._holds(key):
                    raise NoSpace("this node is draining: it accepts no new blocks")
                job = await self._submit_put(key, data, target)
                submitted = True
            finally:
                if not submitted:
                    self._reserved -= size
                    self._release(key)
            await job.wait()

    async def _submit_put(
        self, key: BlockKey, data: bytes, replicas: int | None
    ) -> Job[tuple[int, bool]]:
        address, fragment = key.address, _stored_fragment(key.fragment)
        size = len(data)
        if size < FILE_THRESHOLD:
            checksum = block_checksum(address, fragment, data)

            def put_row(conn: sqlite3.Connection) -> tuple[int, bool]:
                old = _old_block(conn, address, fragment)
                conn.execute(
                    "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                    (address, fragment, size, checksum, data),
                )
                _put_target(conn, address, replicas)
                return old

            def unlink_old_file(old: tuple[int, bool]) -> None:
                if old[1]:  # the block was in a file before; its row no longer says so
                    self._files.remove(address, fragment)

            return self._writer.submit(
                put_row, on_done=self._put_done(key, size), after_commit=unlink_old_file
            )
        # The file goes first and durably: an index row must never point at a partial file.
        checksum = await trio.to_thread.run_sync(
            self._files.write, address, fragment, data, limiter=self._file_limiter
        )
        self._block_files_written += 1

        def put_file_row(conn: sqlite3.Connection) -> tuple[int, bool]:
            old = _old_block(conn, address, fragment)
            conn.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, NULL)",
                (address, fragment, size, checksum),
            )
            _put_target(conn, address, replicas)
            return old

        # No checkpoint between the file write and this submit: a cancellation arriving
        # during the write is delivered by the job's wait, once the row is queued.
        return self._writer.submit(put_file_row, on_done=self._put_done(key, size))

    def _put_done(self, key: BlockKey, size: int) -> Callable[[Job[tuple[int, bool]]], None]:
        def done(job: Job[tuple[int, bool]]) -> None:
            self._reserved -= size
            if job.error is None and job.result is not None:
                old_size, _ = job.result
                self._used += size - max(old_size, 0)
                if old_size < 0:
                    self._blocks += 1
            self._release(key)

        return done

    async def get_block(self, address: BlockAddress, fragment: int | None = None) -> bytes:
        """Return a block's payload, verified against its checksum.

        Raises:
            InvalidArgument: bad address or fragment.
            NotFound: the silo holds no such block.
            Corrupt: the stored record fails verification (it is never returned).
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        key = _block_key(_address(address), _fragment(fragment))
        with self._call():
            try:
                return await self._get_block(key)
            except Corrupt as exc:
                self._report_corrupt(key, exc)
                raise

    async def _get_block(self, key: BlockKey) -> bytes:
        address, fragment = key.address, _stored_fragment(key.fragment)

        def read_row(conn: sqlite3.Connection) -> tuple[int, bytes | None] | None:
            row = conn.execute(
                "SELECT size, checksum, payload FROM blocks WHERE address = ? AND fragment = ?",
                (address, fragment),
            ).fetchone()
            if row is None:
                return None
            size, checksum, payload = row
            if payload is None:
                return checksum, None
            if (
                not isinstance(payload, bytes)
                or len(payload) != size
                or block_checksum(address, fragment, payload) != checksum
            ):
                raise Corrupt("index row fails its checksum")
            return checksum, payload

        for attempt in range(2):
            found = await self._reader.run(read_row)
            if found is None:
                raise NotFound(str(key))
            checksum, inline = found
            if inline is not None:
                return inline
            try:
                payload, file_checksum = await trio.to_thread.run_sync(
                    self._files.read, address, fragment, limiter=self._file_limiter
                )
            except FileNotFoundError:
                # A concurrent put or delete may have moved the block between our reads.
                if attempt:
                    raise Corrupt("indexed block file is missing") from None
                continue
            if file_checksum != checksum:
                await self._adopt_newer_file(key, checksum, file_checksum, len(payload))
            return payload
        raise AssertionError("unreachable")

    async def _adopt_newer_file(
        self, key: BlockKey, old_checksum: int, checksum: int, size: int
    ) -> None:
        """Point the index at a verified block file that differs from what the row says.

        Files are renamed into place before their row commits, so a crash during an
        overwrite (or a put racing this read) leaves a complete, self-verified file newer
        than its row. Serving it is what the interrupted put would have done; the row is
        updated only if it still names the old version.
        """
        address, fragment = key.address, _stored_fragment(key.fragment)

        def update(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT size FROM blocks WHERE address = ? AND fragment = ? AND payload IS NULL"
                " AND checksum = ?",
                (address, fragment, old_checksum),
            ).fetchone()
            if row is None:
                return -1
            conn.execute(
                "UPDATE blocks SET size = ?, checksum = ? WHERE address = ? AND fragment = ?",
                (size, checksum, address, fragment),
            )
            return int(row[0])

        def done(job: Job[int]) -> None:
            if job.error is None and job.result is not None and job.result >= 0:
                self._used += size - job.result
                logger.warning("silo: %s: adopted a block file newer than its index row", key)

        await self._writer.submit(update, on_done=done).wait()

    @property
    def accepting(self) -> bool:
        """Whether the silo takes new blocks and acceptor records (see the module doc)."""
        return self._accepting

    def set_accepting(self, accepting: bool) -> None:
        """Start (``True``) or stop (``False``) accepting new data; existing keys stay writable."""
        self._accepting = bool(accepting)

    async def _holds(self, key: BlockKey) -> bool:
        address, fragment = key.address, _stored_fragment(key.fragment)

        def exists(conn: sqlite3.Connection) -> bool:
            return _old_block(conn, address, fragment)[0] >= 0

        return await self._reader.run(exists)

    async def has_block(self, address: BlockAddress, fragment: int | None = None) -> bool:
        """Return whether the silo holds a block (without reading or verifying it).

        Raises:
            InvalidArgument: bad address or fragment.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        key = _block_key(_address(address), _fragment(fragment))
        stored = _stored_fragment(key.fragment)

        def exists(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM blocks WHERE address = ? AND fragment = ?", (key.address, stored)
            ).fetchone()
            return row is not None

        with self._call():
            return await self._reader.run(exists)

    async def delete_block(self, address: BlockAddress, fragment: int | None = None) -> bool:
        """Delete a block durably; return whether it was there.

        Raises:
            InvalidArgument: bad address or fragment.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the block may or may not be deleted.
        """
        key = _block_key(_address(address), _fragment(fragment))
        address_, fragment_ = key.address, _stored_fragment(key.fragment)

        def delete_row(conn: sqlite3.Connection) -> tuple[int, bool]:
            old = _old_block(conn, address_, fragment_)
            conn.execute(
                "DELETE FROM blocks WHERE address = ? AND fragment = ?", (address_, fragment_)
            )
            if fragment_ == WHOLE_BLOCK:
                conn.execute("DELETE FROM replica_targets WHERE address = ?", (address_,))
            return old

        def unlink_file(old: tuple[int, bool]) -> None:
            if old[1]:
                self._files.remove(address_, fragment_)

        def done(job: Job[tuple[int, bool]]) -> None:
            if job.error is None and job.result is not None and job.result[0] >= 0:
                self._used -= job.result[0]
                self._blocks -= 1
            self._release(key)

        with self._call():
            await self._acquire(key)
            submitted = False
            try:
                job = self._writer.submit(delete_row, on_done=done, after_commit=unlink_file)
                submitted = True
            finally:
                if not submitted:
                    self._release(key)
            old_size, _ = await job.wait()
            return old_size >= 0

    async def list_blocks(
        self, *, after: BlockKey | None = None, limit: int = 1000
    ) -> list[BlockKey]:
        """Return up to ``limit`` held blocks, in key order, starting after ``after``.

        Page through everything a node holds (repair does)::

            page = await silo.list_blocks()
            while page:
                ...
                page = await silo.list_blocks(after=page[-1])

        A whole block sorts before its fragments. Blocks stored or deleted while paging may
        or may not appear.

        Raises:
            InvalidArgument: bad ``after`` or ``limit``.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        rows = await self._list_block_rows(after, limit)
        return [_block_key(address, fragment) for address, fragment, _ in rows]

    async def list_block_entries(
        self, *, after: BlockKey | None = None, limit: int = 1000
    ) -> list[BlockEntry]:
        """Like :meth:`list_blocks`, with each block's size and replica target.

        A replica-target record that fails its checksum is logged, counted as a corruption
        and reported as ``None`` (unknown), never as a wrong number.
        """
        rows = await self._list_entry_rows(after, limit)
        entries = []
        for address, fragment, size, replicas, checksum in rows:
            key = _block_key(address, fragment)
            if replicas is not None and _target_checksum(address, replicas) != checksum:
                self._report_corrupt(key, Corrupt("replica target fails its checksum"))
                replicas = None
            entries.append(BlockEntry(key, size, replicas))
        return entries

    async def _list_entry_rows(self, after: BlockKey | None, limit: int) -> list[_EntryRow]:
        start = self._list_start(after, limit)

        def select(conn: sqlite3.Connection) -> list[_EntryRow]:
            return conn.execute(
                "SELECT b.address, b.fragment, b.size, t.replicas, t.checksum FROM blocks b"
                " LEFT JOIN replica_targets t ON t.address = b.address AND b.fragment = -1"
                " WHERE (b.address, b.fragment) > (?, ?) ORDER BY b.address, b.fragment"
                " LIMIT ?",
                (*start, limit),
            ).fetchall()

        with self._call():
            return await self._reader.run(select)

    def _list_start(self, after: BlockKey | None, limit: int) -> tuple[bytes, int]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument("limit must be a positive int")
        if after is None:
            return (b"", WHOLE_BLOCK - 1)
        if isinstance(after, BlockKey):
            return (_address(after.address), _stored_fragment(_fragment(after.fragment)))
        raise InvalidArgument("after must be a BlockKey or None")

    async def holdings(self, addresses: list[BlockAddress]) -> dict[BlockAddress, list[int | None]]:
        """Return, for each address held in any form, its keys: ``None`` (whole) or fragments.

        Addresses held in no form are absent from the result. One query for the lot.

        Raises:
            InvalidArgument: a bad address.
            trio.ClosedResourceError: the silo is closed.
        """
        wanted = [_address(a) for a in addresses]

        def select(conn: sqlite3.Connection) -> list[tuple[bytes, int]]:
            rows: list[tuple[bytes, int]] = []
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                rows += conn.execute(
                    f"SELECT address, fragment FROM blocks WHERE address IN ({marks})", part
                ).fetchall()
            return rows

        with self._call():
            rows = await self._reader.run(select)
        held: dict[BlockAddress, list[int | None]] = {}
        for address, fragment in rows:
            key = _block_key(address, fragment)
            held.setdefault(key.address, []).append(key.fragment)
        return held

    async def replica_target(self, address: BlockAddress) -> int | None:
        """Return the replica target stored with whole block ``address`` (None: unknown).

        A target record that fails its checksum is reported and taken as unknown.
        """
        addr = _address(address)

        def select(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT replicas, checksum FROM replica_targets WHERE address = ?", (addr,)
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        with self._call():
            row = await self._reader.run(select)
        if row is None:
            return None
        if _target_checksum(addr, row[0]) != row[1]:
            self._report_corrupt(BlockKey(addr), Corrupt("replica target fails its checksum"))
            return None
        return row[0]

    async def iter_blocks(self, *, page_size: int = 1000) -> AsyncIterator[BlockKey]:
        """Iterate over every held block, a page of :meth:`list_blocks` at a time."""
        after: BlockKey | None = None
        while True:
            page = await self.list_blocks(after=after, limit=page_size)
            for key in page:
                yield key
            if len(page) < page_size:
                return
            after = page[-1]

    async def _list_block_rows(
        self, after: BlockKey | None, limit: int
    ) -> list[tuple[bytes, int, int]]:
        start = self._list_start(after, limit)

        def select(conn: sqlite3.Connection) -> list[tuple[bytes, int, int]]:
            return conn.execute(
                "SELECT address, fragment, size FROM blocks WHERE (address, fragment) > (?, ?)"
                " ORDER BY address, fragment LIMIT ?",
                (*start, limit),
            ).fetchall()

        with self._call():
            return await self._reader.run(select)

    # --- acceptor state ------------------------------------------------------------------

    async def load_paxos(self, address: BlockAddress) -> AcceptorRecord | None:
        """Return the acceptor record of a mutable block, or None if there is none.

        Raises:
            InvalidArgument: bad address.
            Corrupt: the stored record fails its checksum (it is never returned).
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        addr = _address(address)

        def select(conn: sqlite3.Connection) -> AcceptorRecord | None:
            row = conn.execute(
                "SELECT promised, accepted, value, metadata, checksum FROM paxos WHERE address = ?",
                (addr,),
            ).fetchone()
            return None if row is None else _verified_acceptor_row(addr, row)

        with self._call():
            try:
                return await self._reader.run(select)
            except Corrupt as exc:
                self._report_corrupt(PaxosKey(addr), exc)
                raise

    async def save_paxos(self, address: BlockAddress, record: AcceptorRecord) -> None:
        """Store an acceptor record durably, replacing the previous one; return when on disk.

        An acceptor must not answer a proposer before this returns.

        Raises:
            InvalidArgument: bad address or record.
            NoSpace: the record would exceed the capacity (nothing is stored), or the silo
                does not accept new data and has no record for this address.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the record may or may not be stored (and must then be assumed
        stored: an acceptor that was cancelled must not later act on an older promise).
        """
        addr = _address(address)
        if not isinstance(record, AcceptorRecord):
            raise InvalidArgument("record must be an AcceptorRecord")
        fields = (
            _payload(record.promised),
            None if record.accepted is None else _payload(record.accepted),
            None if record.value is None else _payload(record.value),
            _payload(record.metadata),
        )
        size = record.stored_size()
        checksum = _acceptor_checksum(addr, *fields)

        accepting = self._accepting

        def upsert(conn: sqlite3.Connection) -> int:
            old = _old_acceptor_size(conn, addr)
            if old < 0 and not accepting:
                raise NoSpace("this node is draining: it takes on no new mutable blocks")
            conn.execute(
                "INSERT OR REPLACE INTO paxos VALUES (?, ?, ?, ?, ?, ?)",
                (addr, *fields, checksum),
            )
            return old

        def done(job: Job[int]) -> None:
            self._reserved -= size
            if job.error is None and job.result is not None:
                self._used += size - max(job.result, 0)
                if job.result < 0:
                    self._acceptor_records += 1

        with self._call():
            self._reserve(size)
            submitted = False
            try:
                job = self._writer.submit(upsert, on_done=done)
                submitted = True
            finally:
                if not submitted:
                    self._reserved -= size
            await job.wait()

    async def delete_paxos(
        self, address: BlockAddress, *, setting: tuple[str, Buffer] | None = None
    ) -> bool:
        """Delete a mutable block's acceptor record durably; return whether it was there.

        ``setting`` (name, value), if given, is stored in the same transaction: a node that
        must remember something about the record it forgets (a promise floor) never keeps
        one without the other.

        Raises:
            InvalidArgument: bad address or setting.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the record may or may not be deleted (with the setting).
        """
        addr = _address(address)
        extra = None if setting is None else _setting_row(*setting)

        def delete(conn: sqlite3.Connection) -> int:
            old = _old_acceptor_size(conn, addr)
            conn.execute("DELETE FROM paxos WHERE address = ?", (addr,))
            if extra is not None:
                conn.execute(_UPSERT_SETTING, extra)
            return old

        def done(job: Job[int]) -> None:
            if job.error is None and job.result is not None and job.result >= 0:
                self._used -= job.result
                self._acceptor_records -= 1

        with self._call():
            return await self._writer.submit(delete, on_done=done).wait() >= 0

    async def list_paxos(
        self, *, after: BlockAddress | None = None, limit: int = 1000
    ) -> list[BlockAddress]:
        """Return up to ``limit`` addresses holding acceptor records, in order, after ``after``.

        Raises:
            InvalidArgument: bad ``after`` or ``limit``.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument("limit must be a positive int")
        start = b"" if after is None else _address(after)

        def select(conn: sqlite3.Connection) -> list[BlockAddress]:
            rows = conn.execute(
                "SELECT address FROM paxos WHERE address > ? ORDER BY address LIMIT ?",
                (start, limit),
            ).fetchall()
            return [BlockAddress(row[0]) for row in rows]

        with self._call():
            return await self._reader.run(select)

    # --- settings ------------------------------------------------------------------------

    async def get_setting(self, name: str) -> bytes | None:
        """Return a node-local setting, or None if it is not set.

        Raises:
            InvalidArgument: ``name`` is not a non-empty str.
            Corrupt: the stored value fails its checksum.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: harmless.
        """
        name = _setting_name(name)

        def select(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT value, checksum FROM settings WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            value, checksum = row
            if not isinstance(value, bytes) or _setting_checksum(name, value) != checksum:
                raise Corrupt("setting fails its checksum")
            return value

        with self._call():
            try:
                return await self._reader.run(select)
            except Corrupt as exc:
                self._report_corrupt(SettingKey(name), exc)
                raise

    async def put_setting(self, name: str, value: Buffer) -> None:
        """Store a node-local setting durably (settings do not count against capacity).

        Raises:
            InvalidArgument: bad name or value.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the setting may or may not be stored.
        """
        row = _setting_row(name, value)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_SETTING, row)

        with self._call():
            await self._writer.submit(upsert).wait()

    async def delete_setting(self, name: str) -> bool:
        """Delete a node-local setting durably; return whether it was set.

        Raises:
            InvalidArgument: bad name.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: the setting may or may not be deleted.
        """
        name = _setting_name(name)

        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM settings WHERE name = ?", (name,)).rowcount > 0

        with self._call():
            return await self._writer.submit(delete).wait()

    # --- scrub ---------------------------------------------------------------------------

    async def verify_all(self, rate_limit_bytes_per_s: float) -> list[SiloKey]:
        """Re-verify every record's checksum, reading at most ``rate_limit_bytes_per_s``.

        Each bad record is logged and counted in ``corrupt_detections``, as on a read; the
        records stay in place (a later put of the same key replaces them). Records written
        during the scrub may or may not be checked.

        Args:
            rate_limit_bytes_per_s: read budget (payload bytes per second); ``math.inf`` for
                no limit.

        Returns:
            The keys of the records that failed verification.

        Raises:
            InvalidArgument: the rate is not a positive number.
            trio.ClosedResourceError: the silo is closed.

        Cancellation: stops the scrub; nothing is changed.
        """
        if isinstance(rate_limit_bytes_per_s, bool) or not isinstance(
            rate_limit_bytes_per_s, int | float
        ):
            raise InvalidArgument("rate_limit_bytes_per_s must be a number")
        rate = float(rate_limit_bytes_per_s)
        if math.isnan(rate) or rate <= 0:
            raise InvalidArgument("rate_limit_bytes_per_s must be positive")
        bad: list[SiloKey] = []
        start = trio.current_time()
        scanned = 0
        after: BlockKey | None = None
        while True:
            rows = await self._list_block_rows(after, 256)
            for address, fragment, size in rows:
                key = _block_key(address, fragment)
                try:
                    with self._call():
                        await self._get_block(key)
                except NotFound:
                    pass  # deleted meanwhile
                except Corrupt as exc:
                    self._report_corrupt(key, exc)
                    bad.append(key)
                scanned += size
                if rate != math.inf:
                    await trio.sleep_until(start + scanned / rate)
            if len(rows) < 256:
                break
            after = _block_key(rows[-1][0], rows[-1][1])
        with self._call():
            bad_rows = await self._reader.run(_verify_small_tables)
        for bad_key in bad_rows:
            self._report_corrupt(bad_key, Corrupt("record fails its checksum"))
            bad.append(bad_key)
        return bad

    # --- internals -----------------------------------------------------------------------

    def _call(self) -> _CallGuard:
        if self._closed:
            raise trio.ClosedResourceError("the silo is closed")
        return _CallGuard(self)

    def _reserve(self, size: int) -> None:
        if self._used + self._reserved + size > self._capacity:
            raise NoSpace(
                f"silo {self._root} full: {self._used} bytes used, {self._reserved} reserved,"
                f" {size} requested, capacity {self._capacity}"
            )
        self._reserved += size

    async def _acquire(self, key: BlockKey) -> None:
        while (busy := self._busy.get(key)) is not None:
            await busy.wait()
        self._busy[key] = trio.Event()

    def _release(self, key: BlockKey) -> None:
        self._busy.pop(key).set()

    def _report_corrupt(self, key: SiloKey, exc: Corrupt) -> None:
        self._corrupt_detections += 1
        logger.error("silo: corrupt %s in %s: %s", key, self._root, exc)


class _CallGuard:
    """Counts a call in progress, so that aclose waits for it."""

    __slots__ = ("_silo",)

    def __init__(self, silo: Silo) -> None:
        self._silo = silo

    def __enter__(self) -> None:
        silo = self._silo
        if silo._active == 0:
            silo._idle = trio.Event()
        silo._active += 1

    def __exit__(self, *exc_info: object) -> None:
        silo = self._silo
        silo._active -= 1
        if silo._active == 0:
            silo._idle.set()


# --- validation ----------------------------------------------------------------------------


def _address(address: object) -> BlockAddress:
    if not isinstance(address, bytes) or len(address) != BLOCK_ADDRESS_BYTES:
        raise InvalidArgument(f"a block address is {BLOCK_ADDRESS_BYTES} bytes")
    return BlockAddress(address)


def _fragment(fragment: object) -> int | None:
    if fragment is None:
        return None
    if isinstance(fragment, bool) or not isinstance(fragment, int):
        raise InvalidArgument("a fragment index is an int or None")
    if not 0 <= fragment <= MAX_FRAGMENT:
        raise InvalidArgument(f"a fragment index is in [0, {MAX_FRAGMENT}]")
    return fragment


def _payload(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)  # a snapshot: the caller may reuse its buffer
    raise InvalidArgument(f"expected bytes, got {type(payload).__name__}")


def _setting_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument("a setting name is a non-empty str")
    return name


def _block_key(address: bytes, fragment: int | None) -> BlockKey:
    return BlockKey(BlockAddress(address), None if fragment == WHOLE_BLOCK else fragment)


def _replicas(replicas: object, fragment: int | None) -> int | None:
    if replicas is None:
        return None
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise InvalidArgument("replicas must be an int or None")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be in 1..{MAX_REPLICAS}")
    if fragment is not None:
        raise InvalidArgument("a fragment carries no replica target")
    return replicas


def _target_checksum(address: bytes, replicas: int) -> int:
    return zlib.crc32(struct.pack(">I", replicas), zlib.crc32(b"target" + address))


def _put_target(conn: sqlite3.Connection, address: bytes, replicas: int | None) -> None:
    if replicas is not None:
        conn.execute(
            "INSERT OR REPLACE INTO replica_targets VALUES (?, ?, ?)",
            (address, replicas, _target_checksum(address, replicas)),
        )


def _stored_fragment(fragment: int | None) -> int:
    return WHOLE_BLOCK if fragment is None else fragment


# --- checksums and SQL helpers (run on the SQLite threads) ----------------------------------

_LENGTH = struct.Struct(">q")


def _acceptor_checksum(
    address: bytes, promised: bytes, accepted: bytes | None, value: bytes | None, metadata: bytes
) -> int:
    crc = zlib.crc32(b"paxos" + address)
    for field in (promised, accepted, value, metadata):
        crc = zlib.crc32(_LENGTH.pack(-1 if field is None else len(field)), crc)
        if field is not None:
            crc = zlib.crc32(field, crc)
    return crc


_UPSERT_SETTING = "INSERT OR REPLACE INTO settings VALUES (?, ?, ?)"


def _setting_row(name: object, value: object) -> tuple[str, bytes, int]:
    """A validated settings row: (name, value, checksum)."""
    name = _setting_name(name)
    data = _payload(value)
    return name, data, _setting_checksum(name, data)


def _setting_checksum(name: str, value: bytes) -> int:
    encoded = name.encode()
    return zlib.crc32(value, zlib.crc32(b"setting" + _LENGTH.pack(len(encoded)) + encoded))


def _verified_acceptor_row(address: bytes, row: tuple[Any, ...]) -> AcceptorRecord:
    promised, accepted, value, metadata, checksum = row
    fields_ok = all(isinstance(f, bytes) for f in (promised, metadata)) and all(
        f is None or isinstance(f, bytes) for f in (accepted, value)
    )
    if (
        not fields_ok
        or _acceptor_checksum(address, promised, accepted, value, metadata) != checksum
    ):
        raise Corrupt("acceptor record fails its checksum")
    return AcceptorRecord(promised=promised, accepted=accepted, value=value, metadata=metadata)


def _create_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, _SCHEMA_VERSION):  # version 2 only added replica_targets
        raise InvalidArgument(f"silo schema version {version} is not supported")
    # Statement by statement: executescript() would commit the writer's open transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _read_totals(conn: sqlite3.Connection) -> tuple[int, int, int, set[tuple[bytes, int]]]:
    block_bytes, blocks = conn.execute(
        "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blocks"
    ).fetchone()
    acceptor_bytes, acceptors = conn.execute(
        "SELECT COALESCE(SUM(length(promised) + COALESCE(length(accepted), 0)"
        " + COALESCE(length(value), 0) + length(metadata)), 0), COUNT(*) FROM paxos"
    ).fetchone()
    file_keys = {
        (address, fragment)
        for address, fragment in conn.execute(
            "SELECT address, fragment FROM blocks WHERE payload IS NULL"
        )
    }
    return block_bytes + acceptor_bytes, blocks, acceptors, file_keys


def _old_block(conn: sqlite3.Connection, address: bytes, fragment: int) -> tuple[int, bool]:
    """Return (size, is a file) of the stored block, or (-1, False) if there is none."""
    row = conn.execute(
        "SELECT size, payload IS NULL FROM blocks WHERE address = ? AND fragment = ?",
        (address, fragment),
    ).fetchone()
    return (-1, False) if row is None else (int(row[0]), bool(row[1]))


def _old_acceptor_size(conn: sqlite3.Connection, address: bytes) -> int:
    row = conn.execute(
        "SELECT length(promised) + COALESCE(length(accepted), 0) + COALESCE(length(value), 0)"
        " + length(metadata) FROM paxos WHERE address = ?",
        (address,),
    ).fetchone()
    return -1 if row is None else int(row[0])


def _verify_small_tables(conn: sqlite3.Connection) -> list[SiloKey]:
    bad: list[SiloKey] = []
    for row in conn.execute(
        "SELECT address, promised, accepted, value, metadata, checksum FROM paxos"
    ):
        try:
            _verified_acceptor_row(row[0], row[1:])
        except Corrupt:
            bad.append(PaxosKey(BlockAddress(row[0])))
    for name, value, checksum in conn.execute("SELECT name, value, checksum FROM settings"):
        if not isinstance(value, bytes) or _setting_checksum(name, value) != checksum:
            bad.append(SettingKey(name))
    return bad


def _lock_directory(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InvalidArgument(f"silo {root} is open in another process") from None
    return fd
