"""An in-process cluster of real nodes for the cluster tests.

Every node is the real thing, all in the test's trio run: an :class:`dht.rpc.RpcNode` on a
loopback TCP port (secure handshake with a passport of one test network), an
:class:`dht.overlay.Overlay` with fast failure detection, a :class:`storage.silo.Silo` in its
own directory under ``tmp_path`` and a :class:`storage.kv_service.BlockService`. Use the
``cluster_factory`` fixture::

    async def test_x(cluster_factory: ClusterFactory) -> None:
        cluster = await cluster_factory(3)
        client = await cluster.client(0)
        ref = await client.put_chunk(b"data")
        await cluster.stop(1)          # cancels the node, closes its silo
        await cluster.restart(1)       # same key, port and data directory

A stopped node stays in the other nodes' member lists (suspected, not evicted: the
eviction delay is longer than any test), as a crashed machine would until an operator or
the eviction delay removes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
import trio

from dht.contracts import HandlerRegistry
from dht.identity import NetworkDescriptor, NodeIdentity, Passport
from dht.ids import Contact
from dht.membership import MembershipConfig, MemberState
from dht.overlay import Overlay, OverlayConfig
from dht.rpc import RpcNode
from storage.kv_client import KVClient
from storage.kv_service import BlockService
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.silo import Silo

#: Fast failure detection; eviction is left out of the tests' time span on purpose.
MEMBERSHIP = MembershipConfig(
    ping_interval=0.5,
    ping_timeout=0.4,
    suspect_after=3,
    eviction_delay=600.0,
    gossip_interval=0.25,
    gossip_fanout=3,
    gossip_timeout=1.0,
    reconnect_interval=0.5,
    forget_after=1200.0,
)
OVERLAY = OverlayConfig(lookup_timeout=1.0, membership=MEMBERSHIP)
DEFAULT_CAPACITY = 1 << 30

#: Builds the registry a node's BlockService registers on (tests wrap the RpcNode).
RegistryWrapper = Callable[[int, RpcNode], HandlerRegistry]
#: Called in a node's nursery once its overlay runs (to start more services on it).
StartHook = Callable[["ClusterNode", trio.Nursery], Awaitable[None]]


@dataclass
class ClusterNode:
    """One node of a :class:`Cluster` and its parts (``None`` while stopped)."""

    index: int
    identity: NodeIdentity
    passport: Passport
    directory: Path
    capacity: int
    port: int = 0
    incarnation: int = 0
    rpc: RpcNode | None = None
    overlay: Overlay | None = None
    silo: Silo | None = None
    service: BlockService | None = None
    nursery: trio.Nursery | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def running(self) -> bool:
        """Whether the node is up."""
        return self.scope is not None and not self.stopped.is_set()

    @property
    def contact(self) -> Contact:
        """How peers reach the node (it must be running)."""
        assert self.rpc is not None
        return self.rpc.contact


class Cluster:
    """N real nodes of one network in this trio run (see the module docstring)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        root: Path,
        *,
        registry_wrapper: RegistryWrapper | None = None,
        overlay_config: OverlayConfig = OVERLAY,
        on_start: StartHook | None = None,
    ) -> None:
        self._nursery = nursery
        self._overlay_config = overlay_config
        self._on_start = on_start
        self.root = root
        self.owner = NodeIdentity.generate()
        self.network = NetworkDescriptor.create(self.owner, "kv-test", {"replicas": 3})
        self.nodes: list[ClusterNode] = []
        self._wrapper = registry_wrapper
        #: The default register owner of this cluster's clients.
        self.keys = ClientKeys.generate()

    # -- membership -----------------------------------------------------------------------

    def add(self, *, capacity: int = DEFAULT_CAPACITY) -> ClusterNode:
        """Create (not start) one more node."""
        identity = NodeIdentity.generate()
        index = len(self.nodes)
        node = ClusterNode(
            index=index,
            identity=identity,
            passport=Passport.issue(self.owner, self.network, identity.public_key, "storage"),
            directory=self.root / f"node{index}",
            capacity=capacity,
        )
        self.nodes.append(node)
        return node

    async def start(self, index: int) -> ClusterNode:
        """Start node ``index`` (open its silo, serve RPC, join the overlay)."""
        node = self.nodes[index]
        assert not node.running, f"node {index} is already running"
        node.stopped = trio.Event()
        node.incarnation += 1
        silo = await Silo.open(node.directory, capacity_bytes=node.capacity)
        rpc = RpcNode(node.identity, node.passport, self.network, listen_port=node.port)
        registry: HandlerRegistry = rpc if self._wrapper is None else self._wrapper(index, rpc)
        node.silo, node.rpc = silo, rpc
        node.service = BlockService(silo, registry)
        bootstrap = [n.contact for n in self.nodes if n.running and n is not node]
        node.scope = trio.CancelScope()
        await self._nursery.start(self._serve, node, rpc, silo, bootstrap)
        return node

    async def _serve(
        self,
        node: ClusterNode,
        rpc: RpcNode,
        silo: Silo,
        bootstrap: list[Contact],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert node.scope is not None
        try:
            with node.scope:
                async with trio.open_nursery() as nursery:
                    node.nursery = nursery
                    address = await nursery.start(rpc.run)
                    node.port = address.port
                    overlay = Overlay(
                        rpc.contact,
                        rpc,
                        rpc,
                        config=self._overlay_config,
                        bootstrap=bootstrap,
                        incarnation=node.incarnation,
                    )
                    node.overlay = overlay
                    await nursery.start(overlay.run)
                    if self._on_start is not None:
                        await self._on_start(node, nursery)
                    task_status.started()
        finally:
            node.nursery = None
            with trio.CancelScope(shield=True):
                await silo.aclose()
            node.stopped.set()

    async def stop(self, index: int) -> None:
        """Stop node ``index``: cancel everything it runs (its clients too), close its silo."""
        node = self.nodes[index]
        assert node.scope is not None
        node.scope.cancel()
        await node.stopped.wait()
        node.rpc = node.overlay = node.silo = node.service = None

    async def restart(self, index: int) -> ClusterNode:
        """Start a stopped node again: same key, port and data directory."""
        return await self.start(index)

    def running(self) -> list[ClusterNode]:
        """The nodes that are up."""
        return [n for n in self.nodes if n.running]

    async def wait_converged(self, timeout: float = 15.0) -> None:
        """Wait until every running node sees every running node alive."""
        with trio.fail_after(timeout):
            while True:
                up = self.running()
                ids = {n.identity.node_id for n in up}
                if all(_alive_ids(n) >= ids for n in up):
                    return
                await trio.sleep(0.05)

    # -- clients --------------------------------------------------------------------------

    async def client(
        self,
        index: int,
        *,
        keys: ClientKeys | None = None,
        redundancy: Redundancy | None = None,
        timeout: float = 5.0,
    ) -> KVClient:
        """Start a :class:`KVClient` on node ``index`` (it stops with the node)."""
        node = self.nodes[index]
        assert node.rpc is not None
        assert node.overlay is not None
        assert node.nursery is not None
        client = KVClient(
            node.rpc,
            OverlayPlacement(node.overlay),
            keys=keys or self.keys,
            default_redundancy=redundancy or Redundancy(replicas=3),
            timeout=timeout,
        )
        await node.nursery.start(client.run)
        return client

    async def aclose(self) -> None:
        """Stop every running node."""
        for node in self.nodes:
            if node.running:
                await self.stop(node.index)


def _alive_ids(node: ClusterNode) -> set[bytes]:
    assert node.overlay is not None
    return {bytes(m.node_id) for m in node.overlay.members() if m.state is MemberState.ALIVE}


class ClusterFactory(Protocol):
    """Starts a converged cluster of ``n`` nodes (see :func:`cluster_factory`)."""

    def __call__(
        self,
        n: int,
        *,
        capacities: dict[int, int] | None = None,
        registry_wrapper: RegistryWrapper | None = None,
    ) -> Awaitable[Cluster]:
        """Return the running cluster."""
        ...


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """Yield a function that starts an N-node in-process cluster; stops them all after."""
    clusters: list[Cluster] = []
    async with trio.open_nursery() as nursery:

        async def make(
            n: int,
            *,
            capacities: dict[int, int] | None = None,
            registry_wrapper: RegistryWrapper | None = None,
        ) -> Cluster:
            cluster = Cluster(
                nursery, tmp_path / f"cluster{len(clusters)}", registry_wrapper=registry_wrapper
            )
            clusters.append(cluster)
            for i in range(n):
                cluster.add(capacity=(capacities or {}).get(i, DEFAULT_CAPACITY))
            for i in range(n):
                await cluster.start(i)
            await cluster.wait_converged()
            return cluster

        yield make
        for cluster in clusters:
            await cluster.aclose()
