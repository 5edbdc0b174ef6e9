"""Interfaces between the parts of ``dht`` (and what ``storage`` may rely on).

The RPC layer implements :class:`RemoteCaller` and :class:`HandlerRegistry`; routing,
lookups and membership are written against these protocols so that they can be tested with
an in-memory fake and run on the real secure transport unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .ids import Contact

#: A request handler: receives the authenticated caller and the call's msgpack arguments,
#: returns a msgpack-serialisable result or raises ``dht.errors.RemoteError``.
Handler = Callable[[Contact, Any], Awaitable[Any]]


class RemoteCaller(Protocol):
    """Something that can call a method on another node."""

    async def call(self, contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        """Call ``method`` on ``contact`` with msgpack-serialisable ``args``.

        Raises:
            PeerUnreachable: no connection could be made, or it broke mid-call.
            RpcTimeout: no answer within ``timeout`` seconds (the call may have run).
            RemoteError: the peer answered with a typed error.
        """
        ...


class HandlerRegistry(Protocol):
    """Something that dispatches incoming calls to handlers by method name."""

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler``; registering a name twice is an error."""
        ...
