"""Key-value benchmark: Ballast registers beside etcd, Ballast chunks beside the local disk.

* mutable: 1 KiB register writes (one CASPaxos change each, durable on a majority) and
  linearizable reads (a quick read: the acceptors' states compared, nothing written; a
  CASPaxos round when they disagree), from 1 and from 16 concurrent clients (each on its
  own key), on 3 Ballast storage nodes, each its own process (real secure RPC on
  loopback, real silos), beside a 3-member etcd cluster (Debian ``etcd-server``, three
  processes) driven through its JSON gateway over keep-alive HTTP/1.1 connections
  (``/v3/kv/put`` and linearizable ``/v3/kv/range``). Both are driven from this process by
  trio tasks, the Ballast ones through one ``KVClient`` on one client node (a member of the
  overlay that stores nothing), as a gateway process runs one for all its requests, the
  etcd ones spread over the three members;
* immutable: 4 MiB chunk writes and reads, ``replicas=3`` and ``data=4, parity=2``, on 6
  storage node processes, one writer that keeps as many chunks in flight as one S3 PUT
  (``storage.objects.PUT_PIPELINE``) or GET (``GET_PREFETCH``) does, beside writing and
  fsyncing the same bytes to a plain file on the same disk (the local-disk limit).

Mutable runs alternate between the two systems (both clusters up throughout) and report
the median of the rounds, so that the shared machine's changing load hits both alike. The
last line states the ratios (16 clients for the mutable ones).

Usage: ``python benchmarks/kv.py [--dir DIR] [--seconds S] [--rounds R] [--chunks N]``;
a storage node process is ``python benchmarks/kv.py --node CONFIG INDEX`` (the benchmark
starts them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dht.identity import NetworkDescriptor, NodeIdentity, Passport
from dht.ids import Address, Contact, NodeId
from dht.membership import MembershipConfig, MemberState
from dht.overlay import Overlay, OverlayConfig
from dht.rpc import RpcNode
from interfaces.memory import keep_buffers_resident
from storage.api import ChunkRef
from storage.kv_client import KVClient
from storage.kv_service import BlockService
from storage.objects import GET_PREFETCH, PUT_PIPELINE
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.silo import Silo

OVERLAY = OverlayConfig(
    membership=MembershipConfig(ping_interval=1.0, eviction_delay=600.0, forget_after=1200.0)
)

VALUE = 1024
CHUNK = 4 * 1024 * 1024
CONCURRENCY = (1, 16)


# --- measurement ------------------------------------------------------------------------------


class Result:
    """Throughput and latency percentiles of one run."""

    def __init__(self, ops: int, elapsed: float, latencies: list[float]) -> None:
        self.rate = ops / elapsed
        ordered = sorted(latencies)
        self.p50 = ordered[len(ordered) // 2] * 1000 if ordered else 0.0
        self.p99 = (
            ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0
        )

    def __str__(self) -> str:
        return f"{self.rate:8.0f} ops/s  p50 {self.p50:6.2f} ms  p99 {self.p99:6.2f} ms"


async def drive(workers: int, seconds: float, op: Callable[[int], Awaitable[None]]) -> Result:
    """Run ``op(worker)`` in a loop on ``workers`` tasks for ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await op(index)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(workers):
            nursery.start_soon(worker, index)
    return Result(len(latencies), time.perf_counter() - start, latencies)


# --- etcd -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdCluster:
    """Three etcd members on loopback, each its own process and data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_ports = [_free_port() for _ in range(3)]
        peer_ports = [_free_port() for _ in range(3)]
        self._initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports))
        self._peer_ports = peer_ports
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for i, (client, peer) in enumerate(zip(self.client_ports, self._peer_ports, strict=True)):
            log = open(self.root / f"etcd-m{i}.log", "wb")  # noqa: SIM115 - closed with the process
            self.processes.append(
                subprocess.Popen(
                    [
                        "etcd",
                        f"--name=m{i}",
                        f"--data-dir={self.root / f'etcd-m{i}'}",
                        f"--listen-client-urls=http://127.0.0.1:{client}",
                        f"--advertise-client-urls=http://127.0.0.1:{client}",
                        f"--listen-peer-urls=http://127.0.0.1:{peer}",
                        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                        f"--initial-cluster={self._initial}",
                        "--initial-cluster-state=new",
                        "--initial-cluster-token=ballast-bench",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class EtcdConnection:
    """One keep-alive HTTP/1.1 connection to an etcd member's JSON gateway (h11, sans-IO)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def post(self, target: str, body: dict[str, object]) -> dict[str, object]:
        assert self.stream is not None
        data = json.dumps(body).encode()
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", f"127.0.0.1:{self.port}"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
            ],
        )
        await self.stream.send_all(
            self.conn.send(request)
            + self.conn.send(h11.Data(data=data))
            + self.conn.send(h11.EndOfMessage())
        )
        status = 0
        parts: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        self.conn.start_next_cycle()
        if status != 200:
            raise RuntimeError(f"etcd answered {status}: {b''.join(parts)[:200]!r}")
        result: dict[str, object] = json.loads(b"".join(parts))
        return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def etcd_ready(ports: list[int], timeout: float = 30.0) -> None:
    """Wait until every member answers a linearizable read."""
    with trio.fail_after(timeout):
        for port in ports:
            while True:
                try:
                    conn = EtcdConnection(port)
                    await conn.connect()
                    try:
                        await conn.post("/v3/kv/range", {"key": _b64(b"ready")})
                    finally:
                        await conn.aclose()
                    break
                except (OSError, RuntimeError, h11.ProtocolError):
                    await trio.sleep(0.2)


def _etcd_ops(
    conns: list[EtcdConnection], value: str
) -> tuple[Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]]]:
    async def put(index: int) -> None:
        key = _b64(f"key{index}".encode())
        await conns[index].post("/v3/kv/put", {"key": key, "value": value})

    async def get(index: int) -> None:
        key = _b64(f"key{index}".encode())
        reply = await conns[index].post("/v3/kv/range", {"key": key})
        assert reply.get("kvs"), reply

    return put, get


# --- Ballast ----------------------------------------------------------------------------------


class BallastProcesses:
    """``n`` storage nodes, each its own process (``kv.py --node CONFIG INDEX``), plus a
    client node in this process that joins them and runs the :class:`KVClient` s.

    The client node is a member of the overlay too; its placement leaves it out, since it
    stores nothing.
    """

    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.owner = NodeIdentity.generate()
        self.network = NetworkDescriptor.create(self.owner, "kv-bench", {"replicas": 3})
        self.identities = [NodeIdentity.generate() for _ in range(nodes)]
        ports = [_free_port() for _ in range(nodes)]
        self.contacts = [
            Contact(i.node_id, Address("127.0.0.1", port), i.public_key)
            for i, port in zip(self.identities, ports, strict=True)
        ]
        config = {
            "root": str(root),
            "network": self.network.to_bytes().hex(),
            "nodes": [
                {
                    "seed": i.seed.hex(),
                    "passport": Passport.issue(self.owner, self.network, i.public_key, "storage")
                    .to_bytes()
                    .hex(),
                    "port": c.address.port,
                    "id": c.node_id.hex(),
                    "pk": c.public_key.hex(),
                }
                for i, c in zip(self.identities, self.contacts, strict=True)
            ],
        }
        self.config = root / "nodes.json"
        self.config.write_text(json.dumps(config))
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for index in range(len(self.identities)):
            log = open(self.root / f"node{index}.log", "wb")  # noqa: SIM115 - the child owns it
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--node", str(self.config), str(index)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def clients(
        self, nursery: trio.Nursery, count: int, *, timeout: float = 30.0
    ) -> list[KVClient]:
        """Join the storage nodes with a client node; return ``count`` running clients."""
        for contact in self.contacts:  # wait until every node listens
            with trio.fail_after(30):
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", contact.address.port)
                    except OSError:
                        await trio.sleep(0.05)
                        continue
                    await stream.aclose()
                    break
        identity = NodeIdentity.generate()
        passport = Passport.issue(self.owner, self.network, identity.public_key, "client")
        rpc = RpcNode(identity, passport, self.network)
        await nursery.start(rpc.run)
        overlay = Overlay(rpc.contact, rpc, rpc, config=OVERLAY, bootstrap=self.contacts)
        await nursery.start(overlay.run)
        wanted = {c.node_id for c in self.contacts}
        with trio.fail_after(60):
            while not wanted <= {  # noqa: ASYNC110 - membership offers no event for this
                m.node_id for m in overlay.members() if m.state is MemberState.ALIVE
            }:
                await trio.sleep(0.1)
        keys = ClientKeys.generate()
        placement = _StoragePlacement(overlay)
        clients = [
            KVClient(
                rpc,
                placement,
                keys=keys,
                default_redundancy=Redundancy(replicas=3),
                timeout=timeout,
            )
            for _ in range(count)
        ]
        for client in clients:
            await nursery.start(client.run)
        return clients


class _StoragePlacement:
    """:class:`OverlayPlacement` without the client's own node (it stores nothing)."""

    def __init__(self, overlay: Overlay) -> None:
        self._overlay = overlay
        self._inner = OverlayPlacement(overlay)

    def closest(self, key: bytes, n: int) -> list[Contact]:
        own = self._overlay.own.node_id
        return [c for c in self._overlay.closest_nodes(key, n + 1) if c.node_id != own][:n]

    def contact(self, node_id: NodeId) -> Contact | None:
        return self._inner.contact(node_id)


async def run_node(config_text: str, index: int) -> None:
    """The body of one storage node process (``kv.py --node CONFIG INDEX``)."""
    config = json.loads(config_text)
    network = NetworkDescriptor.from_bytes(bytes.fromhex(config["network"]))
    entry = config["nodes"][index]
    identity = NodeIdentity.from_seed(bytes.fromhex(entry["seed"]))
    passport = Passport.from_bytes(bytes.fromhex(entry["passport"]), network)
    others = [
        Contact(
            NodeId(bytes.fromhex(n["id"])), Address("127.0.0.1", n["port"]), bytes.fromhex(n["pk"])
        )
        for i, n in enumerate(config["nodes"])
        if i != index
    ]
    silo = await Silo.open(Path(config["root"]) / f"node{index}", capacity_bytes=1 << 40)
    try:
        rpc = RpcNode(identity, passport, network, listen_port=entry["port"])
        BlockService(silo, rpc)
        async with trio.open_nursery() as nursery:
            await nursery.start(rpc.run)
            overlay = Overlay(rpc.contact, rpc, rpc, config=OVERLAY, bootstrap=others)
            await nursery.start(overlay.run)
    finally:
        with trio.CancelScope(shield=True):
            await silo.aclose()


async def bench_mutable(
    root: Path, seconds: float, rounds: int
) -> tuple[dict[tuple[str, int], list[Result]], dict[tuple[str, int], list[Result]]]:
    """Run Ballast and etcd side by side, alternating, ``rounds`` times per configuration.

    Alternating runs of a few seconds each share the machine's changing load fairly.
    """
    ours: dict[tuple[str, int], list[Result]] = {}
    theirs: dict[tuple[str, int], list[Result]] = {}
    nodes = BallastProcesses(root / "ballast-registers", 3)
    etcd = EtcdCluster(root)
    nodes.start()
    etcd.start()
    try:
        async with trio.open_nursery() as nursery:
            clients = await nodes.clients(nursery, 1)
            await etcd_ready(etcd.client_ports)
            value = os.urandom(VALUE)
            for workers in CONCURRENCY:
                conns = [EtcdConnection(etcd.client_ports[i % 3]) for i in range(workers)]
                for conn in conns:
                    await conn.connect()
                ballast_ops = _ballast_ops(clients, value)
                etcd_ops = _etcd_ops(conns, _b64(value))
                for _ in range(rounds):
                    for op, index in (("put", 0), ("get", 1)):
                        key = (op, workers)
                        ours.setdefault(key, []).append(
                            await drive(workers, seconds, ballast_ops[index])
                        )
                        theirs.setdefault(key, []).append(
                            await drive(workers, seconds, etcd_ops[index])
                        )
                for conn in conns:
                    await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        etcd.stop()
        nodes.stop()
    return ours, theirs


def _ballast_ops(
    clients: list[KVClient], value: bytes
) -> tuple[Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]]]:
    async def put(index: int) -> None:
        await clients[index % len(clients)].edit(f"key{index}".encode(), lambda _: value)

    async def get(index: int) -> None:
        await clients[index % len(clients)].read(f"key{index}".encode())

    return put, get


async def bench_chunks(root: Path, count: int) -> dict[str, float]:
    results: dict[str, float] = {}
    data = [os.urandom(CHUNK) for _ in range(count)]
    nodes = BallastProcesses(root / "ballast-chunks", 6)
    nodes.start()
    try:
        async with trio.open_nursery() as nursery:
            (client,) = await nodes.clients(nursery, 1, timeout=60.0)
            for label, policy in (
                ("replicas=3", Redundancy(replicas=3)),
                ("4+2", Redundancy(data=4, parity=2)),
            ):
                write, read = await chunk_rates(client, policy, data)
                results[f"{label} write"], results[f"{label} read"] = write, read
            nursery.cancel_scope.cancel()
    finally:
        nodes.stop()
    return results


async def chunk_rates(
    client: KVClient, policy: Redundancy, data: list[bytes]
) -> tuple[float, float]:
    """MB/s of writing then reading ``data`` as chunks under ``policy``."""
    count = len(data)
    refs: list[ChunkRef | None] = [None] * count

    async def put(index: int) -> None:
        refs[index] = await client.put_chunk(data[index], redundancy=policy)

    async def get(index: int) -> None:
        ref = refs[index]
        assert ref is not None
        assert await client.get_chunk(ref) == data[index]

    start = time.perf_counter()
    await in_flight(PUT_PIPELINE, count, put)
    write = count * CHUNK / (time.perf_counter() - start) / 1e6
    # Let the stragglers finish: they are not part of the reads.
    while client.statistics().background_tasks:  # noqa: ASYNC110 - no event exposed
        await trio.sleep(0.01)
    start = time.perf_counter()
    await in_flight(GET_PREFETCH, count, get)
    return write, count * CHUNK / (time.perf_counter() - start) / 1e6


async def in_flight(width: int, count: int, op: Callable[[int], Awaitable[None]]) -> None:
    """Run ``op(0) .. op(count - 1)``, at most ``width`` at a time, started in order."""
    window = trio.Semaphore(width)

    async def one(index: int) -> None:
        try:
            await op(index)
        finally:
            window.release()

    async with trio.open_nursery() as nursery:
        for index in range(count):
            await window.acquire()
            nursery.start_soon(one, index)


def local_disk(root: Path, count: int) -> float:
    """MB/s of writing 4 MiB files and fsyncing each (the local-disk limit)."""
    data = os.urandom(CHUNK)
    start = time.perf_counter()
    for i in range(count):
        path = root / f"plain-{i}"
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    for i in range(count):
        (root / f"plain-{i}").unlink()
    return count * CHUNK / elapsed / 1e6


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


async def main(root: Path, seconds: float, rounds: int, chunks: int) -> None:
    ours, etcd = await bench_mutable(root, seconds, rounds)
    print(
        f"mutable 1 KiB values: median of {rounds} alternating runs of {seconds:g} s"
        " (3 Ballast node processes; 3 etcd members)"
    )
    for op in ("put", "get"):
        for workers in CONCURRENCY:
            print(f"  ballast {op} x{workers:<2}  {_median(ours[op, workers])}")
            print(f"  etcd    {op} x{workers:<2}  {_median(etcd[op, workers])}")
    disk = local_disk(root, chunks)
    blocks = await bench_chunks(root, chunks)
    print(
        f"immutable 4 MiB chunks, {chunks} each, one writer with {PUT_PIPELINE} writes"
        f" / {GET_PREFETCH} reads in flight (6 Ballast node processes)"
    )
    for label, rate in blocks.items():
        print(f"  ballast {label:<18} {rate:7.1f} MB/s")
    print(f"  local disk write+fsync   {disk:7.1f} MB/s")
    top = CONCURRENCY[-1]
    put, get = _median(ours["put", top]).rate, _median(ours["get", top]).rate
    ec = blocks["4+2 write"]
    print(
        f"kv: put {put:.0f}/s = {put / _median(etcd['put', top]).rate:.2f}x etcd; "
        f"get {get:.0f}/s = {get / _median(etcd['get', top]).rate:.2f}x etcd; "
        f"ec write {ec:.0f} MB/s = {ec / disk:.2f}x local disk"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--node":
        keep_buffers_resident()  # as every ballast node process does
        trio.run(run_node, Path(sys.argv[2]).read_text(), int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="where data goes (default: tmp)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per mutable run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per setting")
    parser.add_argument("--chunks", type=int, default=16, help="4 MiB chunks per policy")
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        sys.exit("etcd not found: apt-get install etcd-server etcd-client")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        trio.run(main, Path(tmp), args.seconds, args.rounds, args.chunks)
