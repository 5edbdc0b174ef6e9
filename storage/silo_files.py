"""Block files of the silo: one file per large block, written crash-safely.

Theory of operation
-------------------
A block (or fragment) of ``FILE_THRESHOLD`` bytes or more lives in its own file,
``blocks/<aa>/<bb>/<64 hex digits of the address>[.<fragment index>]``, sharded on the
first two bytes of the address so that no directory grows past a few thousand entries.

A file is a fixed header followed by the payload::

    magic "BLSB" | version u8 | 3 reserved bytes | fragment i32 (-1: whole block)
    | payload length u64 | address 32 bytes | CRC32 u32

The CRC32 covers the key (address, fragment), the length and the payload (see
:func:`block_checksum`), so a torn write, a bit flip, a truncation or a file copied under
another block's name are all detected when the file is read.

Writes follow the sequence POSIX makes crash-safe: write a temporary file, ``fdatasync`` it,
``rename`` it over the final name, then ``fsync`` the directory. POSIX ``rename()`` is atomic
(a reader sees the old file or the new one, never a mix), and ``fsync()``/``fdatasync()``
transfer *the file's* data to the device; neither makes the directory entry durable. The
directory is a file of its own and must be fsynced too — the Linux fsync(2) page says it
outright: "Calling fsync() does not necessarily ensure that the entry in the directory
containing the file has also reached disk. For that an explicit fsync() on a file descriptor
for the directory is also needed." Without it an acknowledged block can vanish after a power
loss although its data reached the disk. Newly created shard directories are fsynced into
their parent for the same reason. (LevelDB, SQLite and Garage do the same.)

Temporary files live in ``tmp/`` at the silo root; anything found there on open is a write a
crash interrupted, never acknowledged, and is deleted.

Everything here blocks: callers run it in worker threads, never on the trio loop.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import native

from .errors import Corrupt, NoSpace

logger = logging.getLogger(__name__)

#: Payloads at least this large get their own file; smaller ones live in SQLite, whose reads
#: of large blobs are slow (see DESIGN.md, "local store").
FILE_THRESHOLD = 64 * 1024

MAGIC = b"BLSB"
VERSION = 1
WHOLE_BLOCK = -1  # the fragment number stored for a whole (not erasure-coded) block
HEADER = struct.Struct(">4sB3xiQ32sI")
_KEY = struct.Struct(">32siQ")


def block_checksum(address: bytes, fragment: int, payload: bytes) -> int:
    """Return the CRC32 of a block record: its key, its length and its payload.

    ``fragment`` is the stored fragment number (``WHOLE_BLOCK`` for a whole block). The same
    value is kept in the SQLite index row and in the file header. It is zlib's CRC-32 (the
    value ``zlib.crc32`` gives), computed by the native kernel.
    """
    crc = native.crc32(_KEY.pack(address, fragment, len(payload)))
    return native.crc32(payload, crc)


def block_file_name(address: bytes, fragment: int) -> str:
    """Return the file name of a block: hex address, plus ``.<fragment>`` for a fragment."""
    name = address.hex()
    return name if fragment == WHOLE_BLOCK else f"{name}.{fragment}"


def parse_block_file_name(name: str) -> tuple[bytes, int] | None:
    """Return ``(address, fragment)`` for a block file name, or None if it is not one."""
    hex_part, dot, fragment_part = name.partition(".")
    if len(hex_part) != 64:
        return None
    try:
        address = bytes.fromhex(hex_part)
    except ValueError:
        return None
    if not dot:
        return address, WHOLE_BLOCK
    if not fragment_part.isdigit() or block_file_name(address, int(fragment_part)) != name:
        return None
    return address, int(fragment_part)


class BlockFiles:
    """The directory tree of block files under one silo root."""

    def __init__(self, root: Path) -> None:
        self.blocks_dir = root / "blocks"
        self.tmp_dir = root / "tmp"
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()

    def setup(self) -> int:
        """Create the directories and delete leftover temporary files; return how many."""
        for directory in (self.blocks_dir, self.tmp_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                _fsync_dir(directory.parent)
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            # Only a crash leaves files here; none was ever acknowledged.
            os.unlink(entry.path)
            removed += 1
        if removed:
            logger.info(
                "silo: removed %d interrupted temporary file(s) from %s", removed, self.tmp_dir
            )
            _fsync_dir(self.tmp_dir)
        return removed

    def path(self, address: bytes, fragment: int) -> Path:
        """Return where the file of a block lives (whether or not it exists)."""
        hex_address = address.hex()
        return (
            self.blocks_dir
            / hex_address[0:2]
            / hex_address[2:4]
            / block_file_name(address, fragment)
        )

    def write(self, address: bytes, fragment: int, payload: bytes) -> int:
        """Write a block file durably and return its checksum.

        Raises:
            NoSpace: the file system is full (nothing is left behind).
            OSError: any other I/O failure (nothing is left behind).
        """
        checksum = block_checksum(address, fragment, payload)
        header = HEADER.pack(MAGIC, VERSION, fragment, len(payload), address, checksum)
        final = self.path(address, fragment)
        tmp = self.tmp_dir / f"{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, header)
                _write_all(fd, payload)
                os.fdatasync(fd)  # data (and size) on disk before a name points at it
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)  # makes the renamed entry itself durable (see module doc)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"disk full writing block {final.name}") from exc
            raise
        return checksum

    def read(self, address: bytes, fragment: int) -> tuple[bytes, int]:
        """Read and verify a block file, returning its payload and checksum.

        Raises:
            FileNotFoundError: there is no file for this block.
            Corrupt: the file fails any check (magic, version, key, length, checksum).
        """
        path = self.path(address, fragment)
        with open(path, "rb") as f:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                raise Corrupt(f"block file {path.name}: truncated header ({len(header)} bytes)")
            magic, version, stored_fragment, length, stored_address, checksum = HEADER.unpack(
                header
            )
            if magic != MAGIC or version != VERSION:
                raise Corrupt(f"block file {path.name}: bad magic or version")
            if stored_address != address or stored_fragment != fragment:
                raise Corrupt(f"block file {path.name}: header names another block")
            on_disk = os.fstat(f.fileno()).st_size - HEADER.size
            if on_disk != length:  # checked first: a corrupt length must not drive a huge read
                raise Corrupt(
                    f"block file {path.name}: {on_disk} payload bytes, header says {length}"
                )
            payload = f.read(length)
        if len(payload) != length:
            raise Corrupt(f"block file {path.name}: short read ({len(payload)} of {length})")
        if block_checksum(address, fragment, payload) != checksum:
            raise Corrupt(f"block file {path.name}: checksum mismatch")
        return payload, checksum

    def remove(self, address: bytes, fragment: int) -> bool:
        """Delete a block file; return whether it existed.

        No directory fsync: a deletion that a crash undoes leaves an unreferenced file, which
        :meth:`scan` reports on the next open.
        """
        try:
            os.unlink(self.path(address, fragment))
        except FileNotFoundError:
            return False
        return True

    def scan(self) -> Iterator[tuple[bytes, int] | Path]:
        """Yield the key of every block file, or its path when the name is not a block's."""
        for first in os.scandir(self.blocks_dir):
            if not first.is_dir(follow_symlinks=False):
                yield Path(first.path)
                continue
            for second in os.scandir(first.path):
                if not second.is_dir(follow_symlinks=False):
                    yield Path(second.path)
                    continue
                for entry in os.scandir(second.path):
                    key = parse_block_file_name(entry.name)
                    yield key if key is not None else Path(entry.path)

    def _ensure_dir(self, directory: Path) -> None:
        # A lock, not just exist_ok: a second writer must not rename into a directory whose
        # own entry another thread created but has not fsynced into the parent yet.
        if directory in self._known_dirs:
            return
        with self._dir_lock:
            missing: list[Path] = []
            probe = directory
            while not probe.is_dir():
                missing.append(probe)
                probe = probe.parent
            for new in reversed(missing):
                new.mkdir(exist_ok=True)
                _fsync_dir(new.parent)
            self._known_dirs.add(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
