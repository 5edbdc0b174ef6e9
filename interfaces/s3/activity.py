"""Requests in flight, and a way for background work to wait until there are none.

Theory of operation
-------------------
Releasing the chunks that an overwrite or a delete dropped is work no client waits for (the
request answers first, see :class:`storage.objects.ReleaseLater`), but it costs CPU on every
holder: a replaced 64 MiB object is 16 deletions on each of three nodes. Started at once, it
competes with the requests that follow: measured on two cores, a 64 MiB GET right after the
PUT that replaced the object ran ~20% slower than one a second later (465 against 566 MB/s,
medians of eight).

So the release *yields*: once its request is answered, it waits until no request has been in
flight for :attr:`RequestActivity.quiet` seconds, or until :attr:`RequestActivity.longest`
seconds have passed since the answer, whichever comes first. Under steady load a release
therefore runs ``longest`` late, never later; a process that dies in that window leaks what
it would have leaked dying during the release (see :mod:`storage.objects`).

Waiting costs a timer wake-up per ``quiet`` seconds while requests keep coming. At most
:attr:`RequestActivity.waiters` tasks wait for a quiet moment at once; the others queue
behind them (trio's locks and semaphores are FIFO), and every one of them still stops
waiting at its own deadline, so a burst of deletions costs a bounded number of wake-ups and
no release is deferred past ``longest``.
"""

from __future__ import annotations

import trio

#: No request for this long counts as a quiet moment (seconds).
QUIET_SECONDS = 0.1
#: A release waits at most this long after its answer (seconds).
LONGEST_WAIT_SECONDS = 2.0
#: Tasks waiting for a quiet moment at once; the others queue.
WAITERS = 16


class RequestActivity:
    """Counts the requests in flight and tells background work when the front end is quiet.

    Call :meth:`started` and :meth:`ended` around every request (from trio tasks).
    """

    def __init__(
        self,
        *,
        quiet: float = QUIET_SECONDS,
        longest: float = LONGEST_WAIT_SECONDS,
        waiters: int = WAITERS,
    ) -> None:
        """Set the quiet period, the longest wait and how many may wait at once."""
        self.quiet = quiet
        self.longest = longest
        self.waiters = waiters
        self.in_flight = 0
        self._last_change = -float("inf")
        self._turns = trio.Semaphore(waiters)

    def started(self) -> None:
        """A request began."""
        self.in_flight += 1
        self._last_change = trio.current_time()

    def ended(self) -> None:
        """A request ended (answered, failed or abandoned)."""
        self.in_flight -= 1
        self._last_change = trio.current_time()

    async def wait_until_quiet(self, since: float) -> None:
        """Return once no request has been in flight for ``quiet`` seconds, or at the latest
        ``longest`` seconds after ``since`` (a :func:`trio.current_time` value).

        Cancellation: returns early only by raising the cancellation, as any wait does;
        callers that must go on afterwards shield it (it is bounded by ``longest``).
        """
        with trio.move_on_at(since + self.longest):
            async with self._turns:
                while True:
                    if self.in_flight:
                        await trio.sleep(self.quiet)
                        continue
                    quiet_from = self._last_change + self.quiet
                    if trio.current_time() >= quiet_from:
                        return
                    await trio.sleep_until(quiet_from)
