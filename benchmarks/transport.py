"""Secure RPC vs raw TCP on one loopback connection, in the same run.

Measures, on one connection over 127.0.0.1 between this process (client) and a server
process it starts (as two nodes would run), the same setup for both contenders:

* bulk: 1 MiB messages, client to server, ``DEPTH`` in flight, each acknowledged by a small
  reply: raw length-prefixed TCP on trio sockets vs ``RpcNode.call("sink", payload)``;
* small: tiny requests with 16 in flight, each answered: raw TCP vs ``RpcNode.call``.

The four measurements run in alternating rounds (so that load from elsewhere on the machine
hits both contenders alike); it prints one line per measurement and round, then compares
each contender's best round, ending with
``transport: secure bulk <X> MB/s = <r>x raw TCP; small rpc <N>/s``.

Bulk lines also give the CPU time both processes spent per MiB. With both ends on one small
machine both contenders are CPU-bound, so their throughput ratio is about the inverse ratio
of those CPU costs: the secure side adds XChaCha20-Poly1305 at each end (about 0.8 ms per MiB
per end on a core that encrypts 1.2-1.3 GB/s) to everything raw TCP spends.

Usage: ``python benchmarks/transport.py [--bulk-mib N] [--small N] [--rounds N]``
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dht.identity import (
    NetworkDescriptor,
    NodeIdentity,
    Passport,
    load_identity,
    load_network,
    load_passport,
    save_identity,
    save_network,
    save_passport,
)
from dht.ids import Address, Contact, NodeId
from dht.rpc import RpcNode

MIB = 1 << 20
DEPTH = 4  # bulk messages in flight
SMALL_IN_FLIGHT = 16
_HEADER = struct.Struct(">I")


async def _read_exactly(stream: trio.SocketStream, size: int, buf: bytearray) -> None:
    """Fill ``buf[:size]`` from ``stream`` (raw baseline: one copy into the app's buffer)."""
    view = memoryview(buf)
    got = 0
    while got < size:
        data = await stream.receive_some(size - got)
        if not data:
            raise EOFError("peer closed")
        view[got : got + len(data)] = data
        got += len(data)


async def _raw_server(stream: trio.SocketStream) -> None:
    """Read length-prefixed messages; answer each with a 4-byte acknowledgement."""
    header = bytearray(4)
    body = bytearray(MIB)
    try:
        while True:
            await _read_exactly(stream, 4, header)
            (size,) = _HEADER.unpack(header)
            if size > len(body):
                body = bytearray(size)
            await _read_exactly(stream, size, body)
            await stream.send_all(_HEADER.pack(size))
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        return


def _cpu_seconds() -> float:
    """Return the CPU time (user + system) this process has used so far."""
    times = os.times()
    return times.user + times.system


def _write_credentials(directory: Path) -> tuple[NodeIdentity, Passport, NetworkDescriptor]:
    """Create a network with two members; save the server's credentials in ``directory``."""
    owner = NodeIdentity.generate()
    network = NetworkDescriptor.create(owner, "bench", {"replicas": 3})
    members = []
    for _ in range(2):
        identity = NodeIdentity.generate()
        members.append((identity, Passport.issue(owner, network, identity.public_key, "storage")))
    save_network(directory / "network", network)
    save_identity(directory / "server.key", members[1][0])
    save_passport(directory / "server.passport", members[1][1])
    return members[0][0], members[0][1], network


async def serve(directory: Path) -> None:
    """The server process: a raw TCP sink and an RPC node; runs until stdin closes."""
    network = load_network(directory / "network")
    identity = load_identity(directory / "server.key")
    server = RpcNode(identity, load_passport(directory / "server.passport", network), network)

    async def sink(caller: Contact, payload: Any) -> int:
        return len(payload)

    async def cpu(caller: Contact, args: Any) -> float:
        return _cpu_seconds()

    server.register("sink", sink)
    server.register("cpu", cpu)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, _raw_server, 0, host="127.0.0.1")
        )
        raw_port = listeners[0].socket.getsockname()[1]
        address = await nursery.start(server.run)
        print(f"READY {raw_port} {address.port} {identity.node_id.hex()}", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        nursery.cancel_scope.cancel()


async def raw_tcp(port: int, message_size: int, count: int, in_flight: int) -> float:
    """Send ``count`` messages of ``message_size`` bytes, ``in_flight`` at a time; return s."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    payload = _HEADER.pack(message_size) + bytes(message_size)
    window = trio.Semaphore(in_flight)
    ack = bytearray(4)
    started = time.perf_counter()

    async def acks() -> None:
        for _ in range(count):
            await _read_exactly(stream, 4, ack)
            window.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acks)
        for _ in range(count):
            await window.acquire()
            await stream.send_all(payload)
    elapsed = time.perf_counter() - started
    await stream.aclose()
    return elapsed


async def secure_rpc(client: RpcNode, server: Contact, size: int, count: int, depth: int) -> float:
    """Make ``count`` calls carrying ``size`` bytes, ``depth`` at a time; return seconds."""
    payload = bytes(size)
    per_worker = count // depth

    async def worker() -> None:
        for _ in range(per_worker):
            await client.call(server, "sink", payload, timeout=60)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(depth):
            nursery.start_soon(worker)
    return (time.perf_counter() - started) * count / (per_worker * depth)


async def main(bulk_mib: int, small: int, rounds: int) -> None:
    """Start the server process, run every measurement, print the summary line last."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        identity, passport, network = _write_credentials(directory)
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, __file__, "--serve", tmp],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
            assert process.stdout is not None
            assert process.stdin is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
            _, raw_port, rpc_port, node_id = line.decode().split()
            server = Contact(NodeId(bytes.fromhex(node_id)), Address("127.0.0.1", int(rpc_port)))
            client = RpcNode(identity, passport, network)
            await nursery.start(client.run)
            await client.call(server, "sink", b"", timeout=30)  # connect and warm up

            port = int(raw_port)

            async def cpu_used() -> float:
                """CPU seconds used so far by both processes (the call itself is tiny)."""
                return _cpu_seconds() + float(await client.call(server, "cpu", None, timeout=30))

            async def bulk(secure: bool) -> tuple[float, float]:
                """Return (MB/s, CPU ms per MiB of both processes) of one bulk measurement."""
                cpu_before = await cpu_used()
                if secure:
                    seconds = await secure_rpc(client, server, MIB, bulk_mib, DEPTH)
                else:
                    seconds = await raw_tcp(port, MIB, bulk_mib, DEPTH)
                cpu_ms = (await cpu_used() - cpu_before) * 1000 / bulk_mib
                return bulk_mib * MIB / seconds / 1e6, cpu_ms

            best = {"raw bulk": 0.0, "secure bulk": 0.0, "raw small": 0.0, "secure small": 0.0}
            cpu_ms = {"raw bulk": math.inf, "secure bulk": math.inf}
            bulk_label = f"bulk  1 MiB x {bulk_mib}, {DEPTH} in flight"
            small_label = f"small x {small}, {SMALL_IN_FLIGHT} in flight"
            # Rounds alternate the contenders so that load from elsewhere on the machine hits
            # both alike; each contender's best round is what the summary compares.
            for round_ in range(1, rounds + 1):
                raw_rate, raw_cpu = await bulk(secure=False)
                secure_rate, secure_cpu = await bulk(secure=True)
                results = {
                    "raw bulk": raw_rate,
                    "secure bulk": secure_rate,
                    "raw small": small / await raw_tcp(port, 16, small, SMALL_IN_FLIGHT),
                    "secure small": small
                    / await secure_rpc(client, server, 16, small, SMALL_IN_FLIGHT),
                }
                cpu_ms["raw bulk"] = min(cpu_ms["raw bulk"], raw_cpu)
                cpu_ms["secure bulk"] = min(cpu_ms["secure bulk"], secure_cpu)
                print(
                    f"round {round_}: raw tcp    {bulk_label}: {raw_rate:8.0f} MB/s"
                    f"  (CPU {raw_cpu:.2f} ms/MiB)"
                )
                print(
                    f"round {round_}: secure rpc {bulk_label}: {secure_rate:8.0f} MB/s"
                    f"  (CPU {secure_cpu:.2f} ms/MiB)"
                )
                print(
                    f"round {round_}: raw tcp    {small_label}: {results['raw small']:8.0f} req/s"
                )
                print(
                    f"round {round_}: secure rpc {small_label}: "
                    f"{results['secure small']:8.0f} req/s"
                )
                best = {key: max(best[key], value) for key, value in results.items()}
            await client.aclose()
            await process.stdin.aclose()
    print(
        f"best of {rounds}: raw tcp bulk {best['raw bulk']:.0f} MB/s, "
        f"raw tcp small {best['raw small']:.0f} req/s"
    )
    print(
        f"bulk CPU time of both processes per MiB (least of {rounds}): raw tcp "
        f"{cpu_ms['raw bulk']:.2f} ms, secure rpc {cpu_ms['secure bulk']:.2f} ms; "
        f"raw/secure = {cpu_ms['raw bulk'] / cpu_ms['secure bulk']:.2f}"
    )
    ratio = best["secure bulk"] / best["raw bulk"]
    print(
        f"transport: secure bulk {best['secure bulk']:.0f} MB/s = {ratio:.2f}x raw TCP; "
        f"small rpc {best['secure small']:.0f}/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mib", type=int, default=256, help="1 MiB messages per round")
    parser.add_argument("--small", type=int, default=10000, help="small requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        trio.run(serve, Path(options.serve))
    else:
        trio.run(main, options.bulk_mib, options.small, options.rounds)
