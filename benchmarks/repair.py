"""Repair benchmark: how fast the data of a node lost for good is rebuilt on the others.

Six storage nodes, each a ``ballast node run`` process (real secure RPC on loopback, real
silos, repair at its configured bandwidth), and a writer in this process (a client that
is not a member, as an S3 gateway's key-value client would be) storing ``--mib`` MiB as
4 MiB chunks, half with ``replicas=3`` and half with ``data=4, parity=2``. Then one node is
killed with SIGKILL and its data directory deleted. The benchmark waits until every
survivor has evicted it, then until every chunk is back at full redundancy on the five
survivors (asking each node what it holds with ``repair.holdings``), and every chunk is read
back and compared.

The peer, in the same run: copying as many bytes as the lost node held from one file to
another on the same disk, with fsync (what ``cp`` of that node's data would cost). The last
line is ``repair: <N> MiB lost with one node, rebuilt in <T> s = <R> MB/s = <r>x local disk
copy``; the time counts from the eviction (detection and the eviction delay are
configuration, not repair speed).

Usage: ``python benchmarks/repair.py [--dir DIR] [--mib N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from dht.identity import (
    NetworkDescriptor,
    NodeIdentity,
    Passport,
    save_identity,
    save_network,
    save_passport,
)
from dht.ids import Address, Contact, NodeId
from dht.member_view import MemberView
from dht.rpc import RpcNode
from storage.api import ChunkRef
from storage.client_placement import ViewPlacement
from storage.ids import BlockAddress
from storage.kv_client import KVClient
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.repair import HOLDINGS, MAX_QUERY

NODES = 6
CHUNK = 4 * 1024 * 1024
POLICIES = (Redundancy(replicas=3), Redundancy(data=4, parity=2))
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Deployment:
    """``NODES`` node processes on loopback, made as an operator would (keys, passports)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.owner = NodeIdentity.generate()
        self.network = NetworkDescriptor.create(self.owner, "repair-bench", {"replicas": 3})
        self.ports = [_free_port() for _ in range(NODES)]
        self.dirs = [root / f"node{i}" for i in range(NODES)]
        self.processes: list[subprocess.Popen[bytes] | None] = []
        self.ids: list[NodeId] = []
        for i, directory in enumerate(self.dirs):
            directory.mkdir(parents=True)
            identity = NodeIdentity.generate()
            self.ids.append(identity.node_id)
            save_identity(directory / "node.key", identity)
            save_network(directory / "network", self.network)
            passport = Passport.issue(self.owner, self.network, identity.public_key, "storage")
            save_passport(directory / "passport", passport)
            others = ", ".join(f'"127.0.0.1:{p}"' for j, p in enumerate(self.ports) if j != i)
            (root / f"node{i}.toml").write_text(
                "[node]\n"
                f'data_dir = "{directory}"\n'
                f'listen = "127.0.0.1:{self.ports[i]}"\n'
                f"bootstrap = [{others}]\n"
                'capacity = "64GiB"\n'
                "[membership]\n"
                'eviction_delay = "3s"\n'
                "[repair]\n"
                'interval = "2s"\n'
                'bandwidth = "4GiB"\n'
            )

    def start(self) -> None:
        for i in range(NODES):
            log = open(self.root / f"node{i}.log", "wb")  # noqa: SIM115 - the child owns it
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "interfaces.cli",
                        "node",
                        "run",
                        "--config",
                        str(self.root / f"node{i}.toml"),
                        "--log-level",
                        "warning",
                    ],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def lose(self, i: int) -> None:
        """SIGKILL node ``i`` and delete its data (a disk lost with its machine)."""
        process = self.processes[i]
        assert process is not None
        process.kill()
        process.wait()
        self.processes[i] = None
        shutil.rmtree(self.dirs[i])

    def stop(self) -> None:
        for process in self.processes:
            if process is not None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()

    def address(self, i: int) -> Contact:
        return Contact(NodeId(b""), Address("127.0.0.1", self.ports[i]))

    def client_rpc(self) -> RpcNode:
        identity = NodeIdentity.generate()
        passport = Passport.issue(self.owner, self.network, identity.public_key, "client")
        return RpcNode(identity, passport, self.network)


async def holders(rpc: RpcNode, contact: Contact, addresses: list[BlockAddress]) -> list[list[int]]:
    """What ``contact`` holds of each address (``-1``: a whole block; else fragment indexes)."""
    out: list[list[int]] = []
    for start in range(0, len(addresses), MAX_QUERY):
        batch = addresses[start : start + MAX_QUERY]
        reply = await rpc.call(contact, HOLDINGS, {"blocks": batch, "registers": []}, timeout=30.0)
        out += reply["blocks"]
    return out


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll ``check`` (which asks other processes) until it is true."""
    with trio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - the state is in other processes
            await trio.sleep(0.25)


async def complete(
    rpc: RpcNode, deployment: Deployment, survivors: list[int], refs: list[ChunkRef]
) -> bool:
    """Whether every chunk is at full redundancy on ``survivors``."""
    addresses = [r.address for r in refs]
    held = [await holders(rpc, deployment.address(i), addresses) for i in survivors]
    short = 0
    for n, ref in enumerate(refs):
        keys = [h[n] for h in held]
        if ref.redundancy.replicas is not None:
            short += sum(-1 in k for k in keys) < min(ref.redundancy.replicas, len(survivors))
        else:
            indexes = {i for k in keys for i in k if i >= 0}
            spread = sum(1 for k in keys if any(i >= 0 for i in k))
            short += len(indexes) < ref.redundancy.nodes_needed or spread < len(survivors)
    return short == 0


async def evicted_everywhere(rpc: RpcNode, deployment: Deployment, survivors: list[int]) -> bool:
    lost = bytes(deployment.ids[-1])
    for i in survivors:
        reply = await rpc.call(deployment.address(i), "dht.members", None, timeout=5.0)
        for entry in reply["members"]:
            if bytes(entry[0][0]) == lost and entry[1] != "evicted":
                return False
    return True


def disk_copy(root: Path, size: int) -> float:
    """MB/s of copying ``size`` bytes from one file to another with fsync (the peer)."""
    source, target = root / "copy-source", root / "copy-target"
    with open(source, "wb") as f:
        for _ in range(0, size, CHUNK):
            f.write(os.urandom(CHUNK))
        f.flush()
        os.fsync(f.fileno())
    start = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    elapsed = time.perf_counter() - start
    copied = target.stat().st_size
    source.unlink()
    target.unlink()
    return copied / elapsed / 1e6


async def main(root: Path, mib: int) -> None:
    deployment = Deployment(root)
    deployment.start()
    try:
        async with trio.open_nursery() as nursery:
            rpc = deployment.client_rpc()
            await nursery.start(rpc.run)
            view = MemberView(rpc, [deployment.address(i) for i in range(NODES)])
            with trio.fail_after(60):
                await nursery.start(view.run)
                while len(view.members()) < NODES:
                    await view.wait_changed()
            client = KVClient(
                rpc,
                ViewPlacement(view),
                keys=ClientKeys.generate(),
                default_redundancy=POLICIES[0],
                timeout=60.0,
            )
            await nursery.start(client.run)
            count = max(2, mib * 1024 * 1024 // CHUNK)
            data = {i: os.urandom(CHUNK) for i in range(count)}
            refs: dict[ChunkRef, int] = {}
            started = time.perf_counter()
            limiter = trio.CapacityLimiter(4)

            async def put(i: int) -> None:
                async with limiter:
                    refs[await client.put_chunk(data[i], redundancy=POLICIES[i % 2])] = i

            async with trio.open_nursery() as writers:
                for i in range(count):
                    writers.start_soon(put, i)
            print(f"wrote {count} chunks of 4 MiB in {time.perf_counter() - started:.1f} s")
            survivors = list(range(NODES - 1))
            everyone = list(range(NODES))
            chunks = list(refs)
            await until(lambda: complete(rpc, deployment, everyone, chunks), 300)
            info = await rpc.call(deployment.address(NODES - 1), "node.info", None, timeout=10.0)
            lost_bytes = int(info["used_bytes"])
            deployment.lose(NODES - 1)
            lost_at = time.perf_counter()
            await until(lambda: evicted_everywhere(rpc, deployment, survivors), 120)
            evicted_at = time.perf_counter()
            await until(lambda: complete(rpc, deployment, survivors, chunks), 1800)
            healed_at = time.perf_counter()
            for ref, i in refs.items():
                assert await client.get_chunk(ref) == data[i], "a chunk read back wrong"
            nursery.cancel_scope.cancel()
    finally:
        deployment.stop()
    seconds = healed_at - evicted_at
    rate = lost_bytes / seconds / 1e6
    copy = disk_copy(root, lost_bytes)
    print(
        f"lost node held {lost_bytes / 2**20:.0f} MiB; evicted {evicted_at - lost_at:.1f} s "
        f"after the kill; every chunk read back bit-exact afterwards"
    )
    print(f"peer: local disk copy of the same bytes with fsync: {copy:.0f} MB/s")
    print(
        f"repair: {lost_bytes / 2**20:.0f} MiB lost with one node, rebuilt in {seconds:.1f} s "
        f"= {rate:.0f} MB/s = {rate / copy:.2f}x local disk copy"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="ballast-repair-"))
    try:
        trio.run(main, directory, args.mib)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
