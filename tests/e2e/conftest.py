"""An S3 endpoint on loopback for real clients (boto3, http.client, raw sockets).

boto3 is synchronous, so the server runs in its own thread with its own ``trio.run``: the
thread opens the block store, starts :func:`interfaces.http.serve_app` on 127.0.0.1 port 0,
creates an access key in the cluster's credential register, and reports the bound port
through a :class:`threading.Event`. Tests drive boto3 from the test thread and reach into
the server's event loop with :meth:`S3Server.run` (``trio.from_thread.run``).

The backend comes from ONE fixture, :func:`block_store_factory`: an async context manager
factory yielding a :class:`~storage.api.BlockStore`. It is entered inside the server's
event loop, so a real cluster (nodes in a nursery) can replace the in-memory fake by
overriding only that fixture.

:func:`cluster_s3` is the same endpoint on a real cluster: :func:`cluster_block_store_factory`
starts in-process nodes (:class:`tests.cluster.conftest.Cluster`: secure RPC on loopback,
overlay, silo, block service) in the server's event loop and serves S3 through a
:class:`~storage.kv_client.KVClient` on node 0, the gateway. :func:`running_cluster_s3` gives
a private one (for tests that stop nodes).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest
import trio
from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped, unused-ignore]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]

from dht.ids import Address
from interfaces.http import serve_app
from interfaces.s3.app import S3App
from interfaces.s3.credentials import CredentialStore
from storage.api import BlockStore
from storage.objects import ObjectStore
from storage.policy import Redundancy
from tests.cluster.conftest import Cluster
from tests.fake_blockstore import FakeBlockStore

T = TypeVar("T")
BlockStoreFactory = Callable[[], AbstractAsyncContextManager[BlockStore]]

REGION = "us-east-1"
#: Virtual-host addressing: ``BUCKET.s3.localhost`` (resolved by tests to 127.0.0.1).
BASE_DOMAIN = "s3.localhost"
_START_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def block_store_factory() -> BlockStoreFactory:
    """The backend of the e2e S3 endpoint (override this fixture to test a real cluster)."""

    @asynccontextmanager
    async def fake() -> AsyncIterator[BlockStore]:
        yield FakeBlockStore()

    return fake


@dataclass
class S3Server:
    """A running S3 endpoint and the credentials created for the tests."""

    host: str
    port: int
    access_key: str
    secret: str
    store: BlockStore
    objects: ObjectStore
    credentials: CredentialStore
    app: S3App
    token: trio.lowlevel.TrioToken
    region: str = REGION
    base_domain: str = BASE_DOMAIN
    _clients: list[Any] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The path-style endpoint URL."""
        return f"http://{self.host}:{self.port}"

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the server's event loop and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def client(
        self,
        *,
        access_key: str | None = None,
        secret: str | None = None,
        endpoint: str | None = None,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client for this endpoint (closed when the session ends)."""
        config.setdefault("retries", {"total_max_attempts": 1})
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret or self.secret,
            region_name=self.region,
            config=Config(**config),
        )
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client :meth:`client` made."""
        for client in self._clients:
            client.close()
        self._clients.clear()

    # -- raw requests ------------------------------------------------------------------------

    def sign(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        secret: str | None = None,
        access_key: str | None = None,
    ) -> dict[str, str]:
        """SigV4 headers (botocore's signer, body hash signed) for a raw request."""
        url = f"{self.endpoint}{path}"
        request = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
        credentials = Credentials(access_key or self.access_key, secret or self.secret)
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        return {k: v for k, v in request.headers.items()}

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        sign: bool = True,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one raw HTTP request (signed unless ``sign=False``); return the answer."""
        all_headers = self.sign(method, path, headers=headers, body=body) if sign else headers
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def healthy(self) -> bool:
        """Whether the server still answers a signed ListBuckets with 200."""
        status, _, body = self.request("GET", "/")
        return status == 200 and b"ListAllMyBucketsResult" in body


class _ServerThread:
    """The trio event loop of the S3 endpoint, in a thread of its own."""

    def __init__(self, factory: BlockStoreFactory) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._cancel: trio.CancelScope | None = None
        self.server: S3Server | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._main, name="s3-e2e-server", daemon=True)

    def start(self) -> S3Server:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the S3 server did not start")
        if self.server is None:
            raise RuntimeError(f"the S3 server failed to start: {self.error!r}")
        return self.server

    def stop(self) -> None:
        if self.server is not None and self._cancel is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self.server.token)
        self._thread.join(_START_TIMEOUT)
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except Exception as exc:  # re-raised in the test thread by stop()
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with self._factory() as store, trio.open_nursery() as nursery:
                objects = ObjectStore(store)
                credentials = CredentialStore(store)
                access_key, secret = await credentials.create_key("e2e")
                app = S3App(objects, credentials, region=REGION, base_domains=(BASE_DOMAIN,))
                bound: Address = await nursery.start(serve_app, app, Address("127.0.0.1", 0))
                self.server = S3Server(
                    host=bound.host,
                    port=bound.port,
                    access_key=access_key,
                    secret=secret,
                    store=store,
                    objects=objects,
                    credentials=credentials,
                    app=app,
                    token=trio.lowlevel.current_trio_token(),
                )
                self._ready.set()


@pytest.fixture(scope="session")
def s3_server(block_store_factory: BlockStoreFactory) -> Iterator[S3Server]:
    """The S3 endpoint, shared by the session (tests use their own buckets)."""
    thread = _ServerThread(block_store_factory)
    server = thread.start()
    try:
        yield server
    finally:
        server.close_clients()
        thread.stop()


@pytest.fixture(scope="session")
def s3(s3_server: S3Server) -> Any:
    """A path-style boto3 client (SigV4, body hash signed over http)."""
    return s3_server.client(s3={"addressing_style": "path"})


_counter = iter(range(1_000_000))


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    """A fresh, empty bucket; emptied and deleted after the test."""
    name = f"e2e-{next(_counter)}-{threading.get_ident() % 10000}"
    s3.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        uploads = s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for upload in uploads:
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)


# -- the same endpoint on a real cluster ---------------------------------------------------------

#: Nodes of the shared cluster behind :func:`cluster_s3` (more than the replica count, so
#: that placement really chooses).
CLUSTER_NODES = 4
#: Seconds any one key-value operation of the gateway may take.
CLUSTER_CLIENT_TIMEOUT = 10.0


@dataclass
class ClusterS3Server:
    """An S3 endpoint served by node 0 (the gateway) of an in-process cluster."""

    server: S3Server
    clusters: list[Cluster]

    @property
    def cluster(self) -> Cluster:
        """The running cluster (valid once the server has started)."""
        return self.clusters[0]

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` (its silo is closed, its port refuses connections)."""
        if index == 0:
            raise ValueError("node 0 is the gateway; stop a storage node instead")
        self.server.run(self.cluster.stop, index)

    def restart_node(self, index: int) -> None:
        """Start a stopped node again (same key, port and data) and wait for convergence."""

        async def restart() -> None:
            await self.cluster.restart(index)
            await self.cluster.wait_converged()

        self.server.run(restart)

    def running_nodes(self) -> int:
        """How many nodes are up."""

        async def count() -> int:
            return len(self.cluster.running())

        return self.server.run(count)


def cluster_block_store_factory(
    root: Path, nodes: int, clusters: list[Cluster], *, replicas: int = 3
) -> BlockStoreFactory:
    """A backend factory: ``nodes`` real nodes under ``root``, a KVClient on node 0.

    The started :class:`Cluster` is appended to ``clusters`` so that tests can stop and
    restart its nodes. Leaving the context cancels every node (silos close, shielded).
    """

    @asynccontextmanager
    async def real() -> AsyncIterator[BlockStore]:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, root)
            clusters.append(cluster)
            for _ in range(nodes):
                cluster.add()
            for index in range(nodes):
                await cluster.start(index)
            await cluster.wait_converged()
            client = await cluster.client(
                0, redundancy=Redundancy(replicas=replicas), timeout=CLUSTER_CLIENT_TIMEOUT
            )
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()

    return real


@contextlib.contextmanager
def running_cluster_s3(root: Path, nodes: int = CLUSTER_NODES) -> Iterator[ClusterS3Server]:
    """Start an S3 endpoint on a fresh ``nodes``-node cluster under ``root``; stop it after."""
    clusters: list[Cluster] = []
    thread = _ServerThread(cluster_block_store_factory(root, nodes, clusters))
    server = thread.start()
    try:
        yield ClusterS3Server(server, clusters)
    finally:
        server.close_clients()
        thread.stop()


@pytest.fixture(scope="module")
def cluster_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterS3Server]:
    """The S3 endpoint on a real :data:`CLUSTER_NODES`-node cluster, shared by a module."""
    with running_cluster_s3(tmp_path_factory.mktemp("s3-cluster")) as running:
        yield running


@pytest.fixture
def localhost_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve every ``*.localhost`` name to 127.0.0.1 (virtual-host addressing)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def url_path(url: str) -> str:
    """The path and query of ``url``, as a raw request target."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")
