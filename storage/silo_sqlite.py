"""The silo's SQLite threads: one writer with group commit, and readers.

Theory of operation
-------------------
A ``sqlite3`` connection belongs to the thread that made it, and every commit in
``synchronous=FULL`` mode ends with an fsync of the write-ahead log (~0.5–5 ms). So each
:class:`SqliteThread` owns one connection on one dedicated thread, and trio tasks hand it
*jobs* (plain functions of the connection) through a thread-safe queue.

The writer runs **group commit**: it takes every job waiting in the queue (up to
``max_batch``), runs them all in one ``BEGIN IMMEDIATE … COMMIT`` transaction, each inside its
own ``SAVEPOINT`` so that one failing job does not undo the others, and pays a single fsync
for the whole batch. There is no artificial delay: while one commit is being fsynced, the
next batch accumulates by itself, so a lone writer gets the latency of one commit and many
concurrent writers share each fsync.

When a batch is done the thread wakes the trio side with one
:meth:`trio.lowlevel.TrioToken.run_sync_soon` call per batch; in the trio thread each job's
``on_done`` callback runs (the silo updates its counters there, so they need no lock), then its
waiter is woken. A job's result is only reported after ``COMMIT`` returned: durable.

A job that was submitted always runs, even if the task awaiting it is cancelled.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import trio

from .errors import Corrupt, NoSpace

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26


def translate_sqlite_error(exc: sqlite3.Error) -> Exception:
    """Map SQLite's "disk full" and "corrupt file" codes to the storage error vocabulary."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        code &= 0xFF  # extended codes carry the primary code in the low byte
    if code == _SQLITE_FULL:
        return NoSpace(f"SQLite: {exc}")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return Corrupt(f"SQLite: {exc}")
    return exc


class Job(Generic[T]):
    """One unit of work for a :class:`SqliteThread`; await :meth:`wait` for its result."""

    __slots__ = ("_done", "after_commit", "error", "fn", "on_done", "result")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        on_done: Callable[[Job[T]], None] | None,
        after_commit: Callable[[T], None] | None,
    ) -> None:
        self.fn = fn
        self.on_done = on_done
        self.after_commit = after_commit
        self.result: T | None = None
        self.error: Exception | None = None
        self._done = trio.Event()

    async def wait(self) -> T:
        """Wait until the job ran (and, on the writer, committed); return its result.

        Cancellation stops the waiting only: the job still runs and commits.
        """
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set whenever error is None


_STOP: Final = object()


class SqliteThread:
    """A thread owning one SQLite connection, running submitted jobs in order.

    Args:
        path: the database file.
        name: thread name (shows in debuggers and logs).
        writer: run jobs in group-committed write transactions; otherwise each job runs on
            its own (readers).
        max_batch: most jobs in one transaction.
    """

    def __init__(self, path: Path, *, name: str, writer: bool, max_batch: int = 512) -> None:
        self._path = path
        self._writer = writer
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: Transactions committed (each one fsync) and jobs in them, for statistics().
        self.commits = 0
        self.records = 0
        self._thread.start()

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        on_done: Callable[[Job[T]], None] | None = None,
        after_commit: Callable[[T], None] | None = None,
    ) -> Job[T]:
        """Queue ``fn`` to run on the connection; return its :class:`Job` (never blocks).

        Args:
            fn: runs on the thread with the connection; its return value is the result.
            on_done: runs in the trio thread once the job finished (successfully or not),
                before the waiter wakes, whether or not anyone still waits.
            after_commit: runs on the SQLite thread after a successful commit (writer only),
                for side effects that must follow durability, like unlinking a block file.

        Raises:
            trio.ClosedResourceError: the thread was stopped.
        """
        if self._closed:
            raise trio.ClosedResourceError("the silo is closed")
        job = Job(fn, on_done, after_commit)
        self._queue.put(job)
        return job

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Submit ``fn`` and wait for its result (see :meth:`submit` and :meth:`Job.wait`)."""
        return await self.submit(fn).wait()

    async def aclose(self) -> None:
        """Finish every submitted job, close the connection and stop the thread.

        Shielded from cancellation: the wait is bounded by the jobs already queued.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    # --- on the thread -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=30.0)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            if self._writer:
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: every commit fsyncs the WAL, so a returned commit survives power loss
                # (NORMAL in WAL mode only survives a process crash).
                conn.execute("PRAGMA synchronous = FULL")
                # A checkpoint resets the WAL but never shrinks it; cap what a burst of
                # large inline blocks leaves behind.
                conn.execute("PRAGMA journal_size_limit = 67108864")
            else:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        open_error: Exception | None = None
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            open_error = translate_sqlite_error(exc)
            logger.error("silo: cannot open %s: %s", self._path, exc)
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    if conn is None:
                        for job in batch:
                            job.error = open_error
                    elif self._writer:
                        self._run_transaction(conn, batch)
                    else:
                        for job in batch:
                            self._run_job(conn, job)
                    try:
                        self._token.run_sync_soon(_complete, batch)
                    except trio.RunFinishedError:
                        logger.error("silo: trio run ended with %d job(s) unreported", len(batch))
                        return
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _next_batch(self) -> tuple[list[Job[Any]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        limit = self._max_batch if self._writer else 64
        while len(batch) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: Job[Any]) -> None:
        try:
            job.result = job.fn(conn)
        except sqlite3.Error as exc:
            job.error = translate_sqlite_error(exc)
        except Exception as exc:  # reported to the waiter, who re-raises it
            job.error = exc

    def _run_transaction(self, conn: sqlite3.Connection, batch: list[Job[Any]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:  # no savepoint needed: a failure rolls back the transaction
                self._run_job(conn, batch[0])
                conn.execute("COMMIT" if batch[0].error is None else "ROLLBACK")
            else:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    self._run_job(conn, job)
                    if job.error is not None:
                        conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = translate_sqlite_error(exc)
            logger.error("silo: commit of %d record(s) failed: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                job.result = None
                if job.error is None:
                    job.error = error
            return
        committed = sum(job.error is None for job in batch)
        if committed:
            self.commits += 1
            self.records += committed
        for job in batch:
            if job.error is None and job.after_commit is not None:
                try:
                    job.after_commit(job.result)
                except OSError as exc:  # e.g. an unlink: leaves garbage that open() clears
                    logger.warning("silo: post-commit cleanup failed: %s", exc)


def _complete(batch: list[Job[Any]]) -> None:
    """Report a finished batch, in the trio thread."""
    for job in batch:
        if job.on_done is not None:
            job.on_done(job)
        job._done.set()
