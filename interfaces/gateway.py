"""The S3 gateway a node can host: key-value client, object store, credentials and S3 endpoint.

Any node whose configuration has ``[s3] listen`` (and every ``ballast up``) runs one. All
gateways of a network that hold the same gateway key serve the same buckets: the buckets,
objects and access keys live in registers owned by that key, never on the gateway itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dht.errors import CredentialError
from dht.ids import Address
from storage.kv_client import KVClient
from storage.lifecycle_worker import LifecycleWorker
from storage.objects import ObjectStore
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.upload_sweeper import UploadSweeper

from .admin_api import GatewayAdmin
from .config import DEFAULT_LIFECYCLE_INTERVAL, DEFAULT_REGION, DEFAULT_UPLOAD_EXPIRY, NodeConfig
from .gateway_key import GatewayKey, load_gateway_key
from .http import serve_app
from .node import Node, NodeStartError
from .s3.app import S3App
from .s3.credentials import CredentialStore


@dataclass(frozen=True)
class Gateway:
    """A serving gateway: where S3 answers, and the stores behind it."""

    s3: Address
    objects: ObjectStore
    credentials: CredentialStore
    client: KVClient


def network_redundancy(node: Node) -> Redundancy:
    """The network's default policy, from its (owner-signed, validated) descriptor."""
    return Redundancy(**node.credentials.network.redundancy)


async def run_gateway(
    node: Node,
    key: GatewayKey,
    listen: Address,
    *,
    redundancy: Redundancy | None = None,
    region: str = DEFAULT_REGION,
    domains: Sequence[str] = (),
    upload_expiry: float = DEFAULT_UPLOAD_EXPIRY,
    lifecycle_interval: float = DEFAULT_LIFECYCLE_INTERVAL,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve S3 from ``node`` until cancelled; report the :class:`Gateway` once listening.

    Multipart uploads left unfinished for ``upload_expiry`` seconds are aborted, and buckets'
    lifecycle rules are applied every ``lifecycle_interval`` seconds (:class:`LifecycleWorker`).
    Requests for
    ``BUCKET.DOMAIN`` (``DOMAIN`` in ``domains``) use virtual-host addressing.

    Raises:
        NodeStartError: the S3 address cannot be bound.
    """
    policy = redundancy or network_redundancy(node)
    client = KVClient(
        node.parts.rpc,
        OverlayPlacement(node.parts.overlay),
        keys=ClientKeys(key.signing, key.data_key),
        default_redundancy=policy,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        objects = ObjectStore(client, default_redundancy=policy)
        credentials = CredentialStore(client)
        app = S3App(objects, credentials, region=region, base_domains=domains)
        sweeper = UploadSweeper(objects, expiry=upload_expiry)
        lifecycle = LifecycleWorker(objects, interval=lifecycle_interval)
        node.gateway = GatewayAdmin(
            objects,
            credentials,
            nodes_available=lambda: len(node.parts.overlay.members()),
            s3=app,
            kv_statistics=client.statistics,
            sweeper_statistics=sweeper.statistics,
            lifecycle_statistics=lifecycle.statistics,
        )
        try:
            bound = await nursery.start(serve_app, app, listen)
        except OSError as error:
            raise NodeStartError(f"cannot listen on {listen} (S3): {error.strerror}") from None
        await nursery.start(sweeper.run)
        await nursery.start(lifecycle.run)
        task_status.started(Gateway(bound, objects, credentials, client))


class ServingNode:
    """A node process: the :class:`Node`, plus the S3 gateway when ``[s3] listen`` is set."""

    def __init__(self, config: NodeConfig) -> None:
        self.node = Node(config)
        self.gateway: Gateway | None = None

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; report the node once it (and its gateway) serve.

        Raises:
            NodeStartError: credentials, ports, data directory or gateway key are unusable.
        """
        config = self.node.config
        key: GatewayKey | None = None
        if config.s3_listen is not None:
            try:
                key = load_gateway_key(config.gateway_key_file)
            except CredentialError as error:
                raise NodeStartError(f"S3 gateway: {error}") from None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            if key is not None and config.s3_listen is not None:
                self.gateway = await nursery.start(
                    functools.partial(
                        run_gateway,
                        region=config.s3_region,
                        domains=config.s3_domains,
                        upload_expiry=config.s3_incomplete_upload_expiry,
                        lifecycle_interval=config.s3_lifecycle_interval,
                    ),
                    self.node,
                    key,
                    config.s3_listen,
                )
            task_status.started(self.node)
