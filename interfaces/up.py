"""``ballast up``: the whole embedded deployment in one foreground process.

Start-up order: every node (silo, secure RPC, overlay, block service), then — once the nodes
see each other, so that new registers get a full replica set — the gateway on the first node:
a key-value client, the object store, the S3 credential store and the S3 endpoint. Cancelling
``run`` (Ctrl-C, SIGTERM) stops them in reverse order; every acknowledged write is durable.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from dht.ids import Address
from storage.policy import Redundancy

from .gateway import Gateway, run_gateway
from .local_cluster import LocalCluster
from .node import Node, NodeStartError
from .s3.credentials import CredentialStore

logger = logging.getLogger(__name__)

ACCESS_KEY_FILE = "s3-access-key"
MEMBERSHIP_WAIT = 30.0


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


async def _wait_for_members(node: Node, count: int, timeout: float) -> None:
    """Wait until ``node`` sees ``count`` live members (itself included)."""
    with trio.move_on_after(timeout):
        while True:
            alive = [m for m in node.parts.overlay.members() if m.state.value == "alive"]
            if len(alive) >= count:
                return
            await trio.sleep(0.05)
    raise NodeStartError(f"the local nodes did not find each other within {timeout:.0f} s")


async def _initial_credentials(credentials: CredentialStore, data_dir: Path) -> tuple[str, str]:
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


class LocalDeployment:
    """Every node of a :class:`LocalCluster`, plus the S3 gateway on the first one."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        s3: Address,
        admin: Address | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.admin = admin
        self.region = region
        self.nodes: list[Node] = []

    async def run(
        self, *, task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; report the :class:`Endpoints` once S3 answers."""
        cluster = self.cluster
        async with trio.open_nursery() as nursery:
            for index, config in enumerate(cluster.nodes):
                if index == 0 and self.admin is not None:
                    config = dataclasses.replace(config, admin_listen=self.admin)
                node = Node(config)
                await nursery.start(node.run)
                self.nodes.append(node)
            gateway = self.nodes[0]
            await _wait_for_members(gateway, len(self.nodes), MEMBERSHIP_WAIT)
            redundancy = Redundancy(replicas=min(3, len(self.nodes)))
            served: Gateway = await nursery.start(
                functools.partial(
                    run_gateway,
                    gateway,
                    cluster.gateway_key,
                    self.s3,
                    redundancy=redundancy,
                    region=self.region,
                )
            )
            access_key, secret = await _initial_credentials(served.credentials, cluster.data_dir)
            bound = served.s3
            task_status.started(
                Endpoints(
                    s3=bound,
                    access_key=access_key,
                    secret_key=secret,
                    region=self.region,
                    data_dir=cluster.data_dir,
                    nodes=tuple(n.contact.address for n in self.nodes),
                    admin=gateway.admin_address,
                )
            )
