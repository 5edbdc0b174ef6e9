"""``ballast up``: the whole embedded deployment, one foreground command.

The command supervises one process per node (:mod:`interfaces.up_node`), so that the nodes
use every core instead of sharing one event loop; the first node's process also hosts the
S3 gateway (key-value client, object store, S3 credential store, S3 endpoint) and the admin
endpoint.

Start-up order: every child process is spawned at once (their imports overlap), then each
node is told to start in turn, once the previous one serves, so each joins through the
ones already running; once the nodes see each other (so that new registers get a full
replica set) the first node starts the gateway and reports the S3 address and credentials.
A child that fails to start makes the whole command fail with its one-line error; a child
that dies later stops the deployment with an error too.

Cancelling ``run`` (Ctrl-C, SIGTERM of this process) sends SIGTERM to every child and waits
for them to stop (killing, after :data:`STOP_SECONDS`, one that does not); every
acknowledged write is durable on a write quorum before it was acknowledged, so stopping
loses nothing. The children are in a session of their own (a terminal's Ctrl-C reaches
only this process) and stop by themselves when this process disappears (their stdin
closes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from dht.ids import Address

from .config import ConfigError, parse_address
from .local_cluster import LocalCluster
from .logs import JsonFormatter
from .node import NodeStartError
from .up_node import GatewaySpec, NodeSpec

logger = logging.getLogger(__name__)

#: How long stopping waits for the node processes before killing them.
STOP_SECONDS = 30.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoints:
    """What ``ballast up`` prints once it serves."""

    s3: Address
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    nodes: tuple[Address, ...]
    admin: Address | None

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document."""
        return {
            "s3_endpoint": f"http://{self.s3}",
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "data_dir": str(self.data_dir),
            "nodes": [str(a) for a in self.nodes],
            "admin": None if self.admin is None else f"http://{self.admin}",
        }


def current_log_settings() -> tuple[str, str]:
    """The level and format (``text`` / ``json``) the root logger was configured with."""
    root = logging.getLogger()
    level = logging.getLevelName(root.level).lower()
    if level not in ("debug", "info", "warning", "error"):
        level = "warning"
    formats = {isinstance(h.formatter, JsonFormatter) for h in root.handlers}
    return level, "json" if True in formats else "text"


class _Child:
    """One node process and the line protocol on its standard streams."""

    def __init__(self, index: int, process: trio.Process) -> None:
        self.index = index
        self.process = process
        self._buffer = b""

    @classmethod
    async def spawn(cls, index: int) -> _Child:
        """Start the process; it waits for its specification."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "interfaces.up_node"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        return cls(index, process)

    @property
    def name(self) -> str:
        """How errors name this node."""
        return f"node {self.index + 1}"

    async def start(self, spec: NodeSpec) -> None:
        """Send the specification: the node starts (a child already gone shows in ``expect``)."""
        assert self.process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError):
            await self.process.stdin.send_all(spec.to_json().encode("utf-8") + b"\n")

    async def _line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some()
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            document = json.loads(line)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise NodeStartError(f"{self.name} said something unexpected: {line[:200]!r}")
        return document

    async def expect(self, kind: str) -> Any:
        """The next report, which must be of ``kind``.

        Raises:
            NodeStartError: the child reported an error, or stopped.
        """
        document = await self._line()
        if document is None:
            status = await self.process.wait()
            raise NodeStartError(f"{self.name} stopped while starting (exit status {status})")
        if "error" in document:
            raise NodeStartError(str(document["error"]))
        if kind not in document:
            raise NodeStartError(f"{self.name} reported {sorted(document)}, not {kind!r}")
        return document[kind]

    async def watch(self) -> None:
        """Return never; raise once the process exits."""
        status = await self.process.wait()
        raise NodeStartError(f"{self.name} stopped unexpectedly (exit status {status})")


async def _stop(children: list[_Child]) -> None:
    """Stop every child (SIGTERM, then SIGKILL after :data:`STOP_SECONDS`); shielded."""
    with trio.CancelScope(shield=True):
        for child in children:
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_SECONDS):
            for child in children:
                await child.process.wait()
        for child in children:
            if child.process.returncode is None:
                logger.warning(
                    "%s did not stop within %.0f s: killing it", child.name, STOP_SECONDS
                )
                child.process.kill()
            await child.process.wait()
            for pipe in (child.process.stdin, child.process.stdout):
                if pipe is not None:
                    await pipe.aclose()


class LocalDeployment:
    """Every node of a :class:`LocalCluster` in a process of its own, plus the S3 gateway.

    Args:
        cluster: the prepared deployment (node configurations, gateway key).
        s3: where the S3 endpoint listens (port 0: any free port).
        admin: where the first node's admin endpoint listens (``None``: nowhere).
        region: the S3 region.
        log_level, log_format: how the nodes log (default: as this process does).
    """

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        s3: Address,
        admin: Address | None = None,
        region: str = "us-east-1",
        log_level: str | None = None,
        log_format: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.admin = admin
        self.region = region
        level, fmt = current_log_settings()
        self.log_level = log_level or level
        self.log_format = log_format or fmt

    def specs(self) -> list[NodeSpec]:
        """The specification of each node, in start order (the first hosts the gateway)."""
        cluster = self.cluster
        count = len(cluster.nodes)
        specs = []
        for index, config in enumerate(cluster.nodes):
            gateway = None
            if index == 0:
                config = replace(config, admin_listen=self.admin)
                gateway = GatewaySpec(
                    s3=self.s3,
                    key_file=cluster.data_dir / "gateway.key",
                    data_dir=cluster.data_dir,
                    members=count,
                    redundancy=min(3, count),
                    region=self.region,
                )
            specs.append(NodeSpec(config, gateway, self.log_level, self.log_format))
        return specs

    async def run(
        self, *, task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; report the :class:`Endpoints` once S3 answers.

        Raises:
            NodeStartError: a node or the gateway could not start, or a node died.
        """
        specs = self.specs()
        children: list[_Child] = []
        try:
            for index in range(len(specs)):
                children.append(await _Child.spawn(index))
            nodes: list[Address] = []
            for child, spec in zip(children, specs, strict=True):
                await child.start(spec)
                nodes.append(_address(await child.expect("node")))
            gateway = await children[0].expect("gateway")
            try:
                endpoints = Endpoints(
                    s3=_address(gateway["s3"]),
                    access_key=str(gateway["access_key"]),
                    secret_key=str(gateway["secret_key"]),
                    region=self.region,
                    data_dir=self.cluster.data_dir,
                    nodes=tuple(nodes),
                    admin=None if gateway.get("admin") is None else _address(gateway["admin"]),
                )
            except (KeyError, TypeError, AttributeError) as error:
                raise NodeStartError(f"node 1 reported a malformed gateway: {error}") from None
            task_status.started(endpoints)
            async with trio.open_nursery() as nursery:
                for child in children:
                    nursery.start_soon(child.watch)
        finally:
            await _stop(children)


def _address(text: object) -> Address:
    try:
        return parse_address(str(text))
    except ConfigError as error:
        raise NodeStartError(f"a node reported a bad address: {error}") from None
