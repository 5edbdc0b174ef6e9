"""One node of ``ballast up``, as a process of its own (``python -m interfaces.up_node``).

Theory of operation
-------------------
``ballast up`` (:mod:`interfaces.up`) supervises one such process per node, so that the nodes
(and the S3 gateway, hosted by the first node's process) run on every core rather than on one
event loop. The parent and a child talk over the child's standard streams, one JSON object
per line:

* **stdin** — the parent sends one :class:`NodeSpec` line when it is this node's turn to
  start (the child has imported everything meanwhile), then keeps the pipe open. End of
  file means the parent is gone: the child stops, as on SIGTERM or SIGINT.
* **stdout** — ``{"node": "HOST:PORT"}`` once the node serves (the next node may join
  through it); then, for the node hosting the gateway, ``{"gateway": {...}}`` once S3
  answers (its address, the ``ballast up`` access key and secret, the admin address). A
  start-up failure is ``{"error": "one line"}`` followed by exit status 1.

Stopping (SIGTERM, SIGINT, or end of stdin) cancels the node, which tears its layers down in
reverse order; every acknowledged write is durable before the process exits with status 0.
Logs go to stderr, formatted as the parent's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from dht.errors import CredentialError
from dht.ids import Address
from storage.errors import Unavailable
from storage.policy import Redundancy

from .config import ConfigError, NodeConfig, parse_address
from .gateway import Gateway, run_gateway
from .gateway_key import load_gateway_key
from .logs import configure_logging
from .memory import keep_buffers_resident, settle_heap
from .node import Node, NodeStartError
from .runner import first_error
from .s3.credentials import CredentialStore

logger = logging.getLogger(__name__)

#: Where ``ballast up`` keeps the access key id it created (its secret lives in the cluster).
ACCESS_KEY_FILE = "s3-access-key"
#: How long the gateway's node waits for the other nodes to become members.
MEMBERSHIP_WAIT = 30.0
#: Seconds between attempts of a start-up step that found no quorum yet.
_START_RETRY_DELAY = 0.5
T = TypeVar("T")


@dataclass(frozen=True)
class GatewaySpec:
    """What the node hosting the S3 gateway needs besides its own configuration."""

    s3: Address
    key_file: Path
    data_dir: Path
    members: int
    redundancy: int
    region: str


@dataclass(frozen=True)
class NodeSpec:
    """Everything a child needs to run its node (sent by the parent as one JSON line)."""

    config: NodeConfig
    gateway: GatewaySpec | None
    log_level: str
    log_format: str

    def to_json(self) -> str:
        """The one-line wire form."""
        c = self.config
        document: dict[str, Any] = {
            "data_dir": str(c.data_dir),
            "listen": str(c.listen),
            "capacity_bytes": c.capacity_bytes,
            "bootstrap": [str(a) for a in c.bootstrap],
            "eviction_delay": c.eviction_delay,
            "admin": None if c.admin_listen is None else str(c.admin_listen),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "gateway": None,
        }
        g = self.gateway
        if g is not None:
            document["gateway"] = {
                "s3": str(g.s3),
                "key_file": str(g.key_file),
                "data_dir": str(g.data_dir),
                "members": g.members,
                "redundancy": g.redundancy,
                "region": g.region,
            }
        return json.dumps(document)

    @classmethod
    def from_json(cls, line: str) -> NodeSpec:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: the line is not a node specification.
        """
        try:
            d = json.loads(line)
            config = NodeConfig(
                data_dir=Path(d["data_dir"]),
                listen=parse_address(d["listen"]),
                capacity_bytes=int(d["capacity_bytes"]),
                bootstrap=tuple(parse_address(a) for a in d["bootstrap"]),
                eviction_delay=float(d["eviction_delay"]),
                admin_listen=None if d["admin"] is None else parse_address(d["admin"]),
            )
            g = d["gateway"]
            gateway = None
            if g is not None:
                gateway = GatewaySpec(
                    s3=parse_address(g["s3"]),
                    key_file=Path(g["key_file"]),
                    data_dir=Path(g["data_dir"]),
                    members=int(g["members"]),
                    redundancy=int(g["redundancy"]),
                    region=str(g["region"]),
                )
            return cls(config, gateway, str(d["log_level"]), str(d["log_format"]))
        except (KeyError, TypeError, ConfigError, json.JSONDecodeError) as error:
            raise ValueError(f"not a node specification: {error}") from None


async def _wait_for_members(node: Node, count: int, timeout: float) -> None:
    """Wait until ``node`` sees ``count`` live members (itself included)."""
    with trio.move_on_after(timeout):
        while True:
            alive = [m for m in node.parts.overlay.members() if m.state.value == "alive"]
            if len(alive) >= count:
                return
            await trio.sleep(0.05)
    raise NodeStartError(f"the local nodes did not find each other within {timeout:.0f} s")


async def initial_credentials(credentials: CredentialStore, data_dir: Path) -> tuple[str, str]:
    """Reuse the access key created on the first run (its secret lives in the cluster)."""
    key_file = data_dir / ACCESS_KEY_FILE
    if key_file.exists():
        access_key = key_file.read_text(encoding="ascii").strip()
        secret = await credentials.lookup(access_key)
        if secret is not None:
            return access_key, secret
        logger.warning("access key %s no longer exists; creating a new one", access_key)
    access_key, secret = await credentials.create_key("ballast up")
    key_file.write_text(access_key + "\n", encoding="ascii")
    return access_key, secret


async def _retrying_unavailable(operation: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run ``operation``, again while it finds no quorum (the local nodes are still
    meeting each other), for up to ``timeout`` seconds.

    Raises:
        NodeStartError: still no quorum after ``timeout``.
    """
    deadline = trio.current_time() + timeout
    while True:
        try:
            return await operation()
        except Unavailable as error:
            if trio.current_time() + _START_RETRY_DELAY >= deadline:
                raise NodeStartError(f"the local nodes reach no quorum: {error}") from None
            logger.info("no quorum yet (%s); trying again", error)
            await trio.sleep(_START_RETRY_DELAY)


def _report(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def serve(
    spec: NodeSpec, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the node (and the gateway it hosts) until cancelled, reporting on stdout.

    Raises:
        NodeStartError: the node or the gateway cannot start.
    """
    node = Node(spec.config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        _report({"node": str(node.contact.address)})
        g = spec.gateway
        if g is not None:
            try:
                key = load_gateway_key(g.key_file)
            except CredentialError as error:
                raise NodeStartError(f"S3 gateway: {error}") from None
            await _wait_for_members(node, g.members, MEMBERSHIP_WAIT)
            served: Gateway = await nursery.start(
                functools.partial(
                    run_gateway,
                    node,
                    key,
                    g.s3,
                    redundancy=Redundancy(replicas=g.redundancy),
                    region=g.region,
                )
            )
            access_key, secret = await _retrying_unavailable(
                functools.partial(initial_credentials, served.credentials, g.data_dir),
                MEMBERSHIP_WAIT,
            )
            admin = node.admin_address
            _report(
                {
                    "gateway": {
                        "s3": str(served.s3),
                        "access_key": access_key,
                        "secret_key": secret,
                        "admin": None if admin is None else str(admin),
                    }
                }
            )
        task_status.started()


async def _until_parent_leaves(stdin: trio.abc.ReceiveStream) -> None:
    while await stdin.receive_some():
        pass


async def _main(spec: NodeSpec) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with stdin, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logger.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

            async def stop_without_parent() -> None:
                await _until_parent_leaves(stdin)
                logger.info("ballast up is gone: shutting down")
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(stop_without_parent)
            await nursery.start(serve, spec)
            settle_heap()


def _read_spec() -> NodeSpec | None:
    """Block until the parent sends the specification line (``None``: it left first)."""
    buffer = b""
    while b"\n" not in buffer:
        data = os.read(0, 65536)
        if not data:
            return None
        buffer += data
    return NodeSpec.from_json(buffer.partition(b"\n")[0].decode("utf-8"))


def main() -> None:
    """Entry point of the child process (see the module docstring)."""
    spec = _read_spec()
    if spec is None:
        return  # the parent left before this node's turn
    configure_logging(level=spec.log_level, log_format=spec.log_format)
    keep_buffers_resident()
    failure: str | None = None
    try:
        trio.run(_main, spec)
    except* (NodeStartError, ConfigError) as group:
        failure = str(first_error(group))
    if failure is not None:
        _report({"error": failure})
        sys.exit(1)


if __name__ == "__main__":
    main()
