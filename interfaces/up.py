"""``ballast up``: the whole embedded deployment in one foreground process.

Start-up order: every node (silo, secure RPC, overlay, block service), then — once the nodes
see each other, so that new registers get a full replica set — the gateway on the first node:
a key-value client, the object store, the S3 credential store and the S3 endpoint. Cancelling
``run`` (Ctrl-C, SIGTERM) stops them in reverse order; every acknowledged write is durable.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from dht.ids import Address
from storage.kv_client import KVClient
from storage.objects import ObjectStore
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys

from .admin_api import GatewayAdmin
from .http import serve_app
from .local_cluster import LocalCluster
from .node import Node, NodeStartError
from .s3.app import S3App
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
            keys = ClientKeys(cluster.gateway_key.signing, cluster.gateway_key.data_key)
            client = KVClient(
                gateway.parts.rpc,
                OverlayPlacement(gateway.parts.overlay),
                keys=keys,
                default_redundancy=redundancy,
            )
            await nursery.start(client.run)
            objects = ObjectStore(client, default_redundancy=redundancy)
            credentials = CredentialStore(client)
            access_key, secret = await _initial_credentials(credentials, cluster.data_dir)
            app = S3App(objects, credentials, region=self.region)
            gateway.gateway = GatewayAdmin(
                objects,
                credentials,
                nodes_available=lambda: len(gateway.parts.overlay.members()),
                s3=app,
                kv_statistics=client.statistics,
            )
            try:
                bound = await nursery.start(serve_app, app, self.s3)
            except OSError as error:
                raise NodeStartError(f"cannot listen on {self.s3} (S3): {error.strerror}") from None
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
