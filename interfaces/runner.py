"""Run a long-lived trio service in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .memory import settle_heap

logger = logging.getLogger(__name__)

Service = Callable[..., Awaitable[Any]]


def first_error(error: BaseException) -> BaseException:
    """Return the only leaf of nested single-exception groups (or ``error`` itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def run_until_signalled(
    service: Service, on_ready: Callable[[Any], None] | None = None
) -> None:
    """Start ``service`` (a ``run(*, task_status)`` method) and stop it cleanly on a signal.

    ``on_ready`` receives what the service reported as started. SIGINT and SIGTERM cancel
    the service, which tears its resources down in order; the function then returns normally.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(service)
            settle_heap()
            if on_ready is not None:
                on_ready(started)
            async for signum in signals:
                logger.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
