"""Serving plain ASGI apps with hypercorn's trio worker, inside the node's own event loop."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio import tcp_server as hypercorn_tcp_server

from dht.ids import Address

from .runner import first_error

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: Bytes hypercorn's trio worker asks the socket for at once (its module constant, 64 KiB by
#: default). Every read travels through h11, hypercorn's stream and the ASGI queue: with
#: 1 MiB reads a 64 MiB upload takes ~11% less CPU in the gateway (measured on two cores,
#: 0.75 → 0.66 s). ``recv`` allocates the size asked for and shrinks it to what arrived.
RECEIVE_BYTES = 1 << 20


def _read_more_at_once() -> None:
    if not isinstance(getattr(hypercorn_tcp_server, "MAX_RECV", None), int):
        raise RuntimeError("hypercorn.trio.tcp_server.MAX_RECV is gone: update interfaces/http.py")
    hypercorn_tcp_server.MAX_RECV = RECEIVE_BYTES


def hypercorn_config(address: Address) -> Config:
    """A hypercorn configuration for one plain-HTTP listener, logging through ``logging``."""
    config = Config()
    config.bind = [f"[{address.host}]:{address.port}" if ":" in address.host else str(address)]
    config.accesslog = None
    config.errorlog = logging.getLogger("ballast.http")
    config.graceful_timeout = 2.0
    config.h11_max_incomplete_size = 64 * 1024  # header section limit (S3's is 8 KiB + URL)
    return config


async def serve_app(
    app: ASGIApp,
    address: Address,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``address`` until cancelled; report the bound address when listening.

    Raises:
        OSError: the address cannot be bound (in use, not local, no permission).
    """

    class _Status:
        """Translate hypercorn's "bound to these URLs" into our bound :class:`Address`."""

        def started(self, urls: list[str] | None = None) -> None:
            host_port = (urls or [f"http://{address}"])[0].split("//", 1)[1]
            host, _, port = host_port.rpartition(":")
            task_status.started(Address(host.strip("[]"), int(port)))

    _read_more_at_once()
    try:
        await serve(app, hypercorn_config(address), task_status=_Status())  # type: ignore[arg-type]
    except* OSError as group:
        # hypercorn binds inside its own nurseries: surface the bind error itself.
        raise first_error(group) from None


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete HTTP response through an ASGI ``send``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, document: object) -> None:
    """Send ``document`` as a JSON response."""
    body = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    await send_response(send, status, body, "application/json")


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer ASGI lifespan events (nothing to set up: the node owns every resource)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
