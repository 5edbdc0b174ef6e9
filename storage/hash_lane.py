"""Hashing a stream in a worker thread, in order, while the event loop goes on.

Theory of operation
-------------------
A large upload is hashed several times over (MD5 for its ETag, SHA-256 for a signed payload,
the client's CRC): at ~1.5 ms of CPU per MiB for MD5 alone, hashing on the event loop would
stall every other request of the node for that long. ``hashlib`` and ``zlib`` release the GIL
on large buffers, so a worker thread hashes in parallel with the loop.

A :class:`HashLane` keeps the pieces it is fed in a queue. Once :data:`BATCH_BYTES` are
waiting, one worker thread (trio's thread cache, no nursery needed) takes the whole queue and
feeds every piece, in order, to every hasher; it goes on with whatever was queued meanwhile
and stops when the queue is empty. At most one worker runs per lane, so the hashers see the
pieces in the order they were fed. The loop waits only when :data:`LIMIT_BYTES` are queued
(back-pressure: the pieces stay alive until hashed, so a lane keeps at most that much, plus
one piece, alive beyond what its caller holds) and in :meth:`HashLane.finish`, which hashes a
small remainder inline (a 4 KiB object is not worth a thread hand-off). However many uploads
run, at most :data:`HASH_THREADS` workers hash at once; the others wait for a turn.

Fed pieces must not change afterwards (``bytes``, or buffers the caller never writes again).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Protocol

import trio

#: Queued bytes that start the worker thread.
BATCH_BYTES = 1 << 20
#: Queued bytes at which :meth:`HashLane.update` waits for the worker to catch up.
LIMIT_BYTES = 8 << 20
#: Workers hashing at once in this process, all lanes together (more wait their turn).
HASH_THREADS = max(2, os.cpu_count() or 2)
_HASHING = threading.BoundedSemaphore(HASH_THREADS)

Buffer = bytes | bytearray | memoryview


class Updatable(Protocol):
    """Anything fed with ``update(data)``: ``hashlib`` objects, checksum accumulators."""

    def update(self, data: Buffer, /) -> None:
        """Add ``data`` to the running digest."""
        ...


class HashLane:
    """Feeds pieces to ``hashers`` in order, in a worker thread (see the module docstring).

    Use from one trio task at a time.
    """

    def __init__(
        self,
        hashers: Sequence[Updatable],
        *,
        batch_bytes: int = BATCH_BYTES,
        limit_bytes: int = LIMIT_BYTES,
    ) -> None:
        """Hash into ``hashers``; start a worker once ``batch_bytes`` wait."""
        self._hashers = tuple(hashers)
        self._batch_bytes = batch_bytes
        self._limit_bytes = max(limit_bytes, batch_bytes)
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()  # guards the fields below
        self._queue: list[Buffer] = []
        self._queued = 0  # bytes fed and not yet hashed (queued or being hashed)
        self._worker_done: trio.Event | None = None  # set when the running worker stops
        self._error: BaseException | None = None

    async def update(self, data: Buffer) -> None:
        """Queue ``data`` for hashing; wait only if the worker is far behind."""
        await self.wait_for_room()
        self.feed(data)

    async def wait_for_room(self) -> None:
        """Wait while :data:`LIMIT_BYTES` or more wait to be hashed (back-pressure)."""
        while self._queued >= self._limit_bytes:
            with self._lock:
                done = self._worker_done
            if done is None:
                break
            await done.wait()

    def feed(self, data: Buffer) -> None:
        """Queue ``data`` without waiting (the caller bounds what it feeds)."""
        self._raise_error()
        size = memoryview(data).nbytes
        if not size:
            return
        with self._lock:
            self._queue.append(data)
            self._queued += size
            done = None
            if self._worker_done is None and self._queued >= self._batch_bytes:
                done = self._worker_done = trio.Event()
        if done is not None:
            trio.lowlevel.start_thread_soon(self._drain, lambda _: self._wake(done))

    async def finish(self) -> None:
        """Return once every piece fed so far is hashed; hash a small remainder inline.

        Raises:
            Exception: whatever a hasher raised, in the worker or here.
        """
        while True:
            with self._lock:
                done = self._worker_done
                if done is None:
                    pieces, self._queue, self._queued = self._queue, [], 0
                    break
            await done.wait()
        self._raise_error()
        for piece in pieces:  # fewer than ``batch_bytes``: a worker would have started
            for hasher in self._hashers:
                hasher.update(piece)

    def _drain(self) -> None:
        """Worker thread: hash queued pieces, in order, until none are left."""
        with _HASHING:
            try:
                while True:
                    with self._lock:
                        pieces, self._queue = self._queue, []
                        if not pieces or self._error is not None:
                            self._queued = 0
                            self._worker_done = None
                            return
                    size = 0
                    for piece in pieces:
                        for hasher in self._hashers:
                            hasher.update(piece)
                        size += memoryview(piece).nbytes
                    with self._lock:
                        self._queued -= size
            except BaseException as exc:  # reported to the loop by feed() and finish()
                with self._lock:
                    self._error = exc
                    self._queue, self._queued = [], 0
                    self._worker_done = None

    def _wake(self, done: trio.Event) -> None:
        """Worker thread, after :meth:`_drain`: wake the loop's waiters."""
        with contextlib.suppress(trio.RunFinishedError):  # the node is shutting down
            self._token.run_sync_soon(done.set)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
