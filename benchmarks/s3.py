"""S3 benchmark: Ballast (``ballast up``, 3 nodes) beside moto's S3 server and the local disk.

In one run, on this machine:

* **Ballast**: ``ballast up --json`` as a subprocess (three nodes on loopback, one process
  each, ``replicas=3``, every write fsynced on a majority before it is acknowledged, the S3
  gateway in node 0's process);
* **moto**: ``moto_server`` (moto's S3 in a werkzeug threaded server, objects in memory, no
  durability) as a subprocess on a free loopback port — the peer;
* **local disk**: the same bytes written to plain files in the same directory and fsynced
  (the durability limit), and read back (page cache).

Figures, all from boto3 clients in this process:

* ``put64M`` / ``get64M``: one 64 MiB object, one ``put_object`` / one ``get_object``, one
  client (MB/s, 10^6 bytes);
* ``put4k`` / ``get4k``: 4 KiB objects from ``--clients`` (16) concurrent boto3 clients, one
  per thread, for ``--seconds`` each (operations per second). GETs read objects written
  before the timing starts.

Rounds alternate between the three systems (all up throughout) and the medians are
reported, so that the shared machine's changing load hits all alike. Beside the rates, the
CPU the servers spent per MiB of the 64 MiB PUT and GET (every process of each system, from
/proc) is printed next to a *floor*: the CPU per MiB of the primitives a replicated PUT and
GET must run by design (checks, sealing, addresses, the secure channel), measured in this
process. The last line states the ratios to moto.

Usage: ``python benchmarks/s3.py [--dir DIR] [--rounds R] [--seconds S] [--clients N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
BIG = 64 * MiB
SMALL = 4096
READY_TIMEOUT = 60.0
BUCKET = "bench"
#: 4 KiB objects written once per system for the GET runs.
GET_POOL = 256
FIGURES = ("put64M", "get64M", "put4k", "get4k")


@dataclass
class Endpoint:
    """An S3 endpoint under test and the boto3 clients that drive it."""

    name: str
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    pid: int | None = None  # the server's process; its CPU (and its children's) is measured
    clients: list[Any] = field(default_factory=list)

    def make_clients(self, count: int) -> None:
        """Create ``count`` boto3 clients (one per worker thread)."""
        config = Config(
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            max_pool_connections=4,
            connect_timeout=30,
            read_timeout=120,
        )
        session = boto3.session.Session()
        for _ in range(count):
            self.clients.append(
                session.client(
                    "s3",
                    endpoint_url=self.url,
                    aws_access_key_id=self.access_key,
                    aws_secret_access_key=self.secret_key,
                    region_name=self.region,
                    config=config,
                )
            )

    def close(self) -> None:
        """Close every client."""
        for client in self.clients:
            client.close()
        self.clients.clear()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@contextmanager
def ballast_up(directory: Path) -> Iterator[Endpoint]:
    """Run ``ballast up --json`` (3 nodes) in ``directory``; stop it with SIGTERM after."""
    log = (directory / "ballast.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "interfaces.cli", "up", "--json", "--data",
         str(directory / "ballast"), "--s3", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"ballast up did not start; see {directory / 'ballast.log'}")
        document = json.loads(line)
        yield Endpoint(
            "ballast",
            document["s3_endpoint"],
            document["access_key"],
            document["secret_key"],
            document["region"],
            pid=process.pid,
        )
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()
        log.close()


@contextmanager
def moto_server(directory: Path) -> Iterator[Endpoint]:
    """Run ``moto_server`` on a free loopback port; stop it after."""
    executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(executable).exists():
        raise SystemExit("moto_server is missing: pip install 'moto[server]' (the bench extra)")
    port = _free_port()
    log = (directory / "moto.log").open("w")
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {directory}") from None
                time.sleep(0.2)
        yield Endpoint("moto", url, "bench-access-key", "bench-secret-key", pid=process.pid)
    finally:
        _stop(process)
        log.close()


# -- CPU accounting ------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    total = 0.0
    for pid, seconds in cpu.items():
        ancestor = pid
        while ancestor != root and ancestor in parents and ancestor > 1:
            ancestor = parents[ancestor]
        if ancestor == root:
            total += seconds
    return total


def _cpu_ms(work: Callable[[], object], repeat: int = 5) -> float:
    """CPU milliseconds per MiB that ``work`` (on 4 MiB) takes in this thread, best of a few."""
    best = math.inf
    for _ in range(repeat):
        began = time.thread_time()
        work()
        best = min(best, time.thread_time() - began)
    return best * 1000 / 4


def primitive_floor() -> tuple[dict[str, float], dict[str, float]]:
    """CPU ms per MiB of the primitives a replicated PUT and GET must run, measured here.

    PUT (``replicas=3``, the gateway's node among the holders): the request's checks (MD5
    for the ETag, the payload's SHA-256 and CRC-32 that boto3 sends), sealing, the address
    (BLAKE3) and its check by the two other holders, and the secure channel to them
    (the frame codec's encode + decode, twice). GET from the gateway's own node: the silo's file
    checksum and unsealing. No interpreter, socket, disk or scheduling cost is included:
    this is a floor, not an estimate. Measured with the allocator settings the nodes run
    with (:func:`interfaces.memory.keep_buffers_resident`: a fresh 4 MiB result buffer is not
    faulted in page by page).
    """
    import hashlib

    import native
    from dht.framing import FrameDecoder, FrameEncoder
    from interfaces.memory import keep_buffers_resident
    from storage.chunks import chunk_address, seal, unseal

    keep_buffers_resident()
    data = os.urandom(4 * MiB)
    sealed = seal(data)
    key = os.urandom(32)
    encoder = FrameEncoder(key)
    decoder = FrameDecoder(key, encoder.header)

    def channel() -> None:
        decoder.receive_data(encoder.encode(data))
        decoder.next_message()

    put = {
        "md5": _cpu_ms(lambda: hashlib.md5(data, usedforsecurity=False).digest()),
        "sha256": _cpu_ms(lambda: hashlib.sha256(data).digest()),
        "crc32": _cpu_ms(lambda: native.crc32(data)),
        "seal": _cpu_ms(lambda: seal(data)),
        "address x3": 3 * _cpu_ms(lambda: chunk_address(sealed.ciphertext)),
        "channel x2": 2 * _cpu_ms(channel),
        "file crc32 x3": 3 * _cpu_ms(lambda: native.crc32(sealed.ciphertext)),
    }
    get = {
        "file crc32": _cpu_ms(lambda: native.crc32(sealed.ciphertext)),
        "unseal": _cpu_ms(lambda: unseal(sealed.ciphertext, sealed.key)),
    }
    return put, get


# -- workloads ---------------------------------------------------------------------------------


def _in_threads(workers: int, seconds: float, op: Callable[[int, int], None]) -> float:
    """Run ``op(worker, i)`` in ``workers`` threads for ``seconds``; return operations/s."""
    counts = [0] * workers
    errors: list[BaseException] = []
    start = threading.Barrier(workers + 1)
    deadline = 0.0

    def work(worker: int) -> None:
        start.wait()
        i = 0
        try:
            while time.perf_counter() < deadline:
                op(worker, i)
                i += 1
        except Exception as error:
            errors.append(error)
        counts[worker] = i

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} operation(s) failed: {errors[0]!r}") from errors[0]
    return sum(counts) / elapsed


class S3Workload:
    """The four measurements on one S3 endpoint."""

    def __init__(self, endpoint: Endpoint, big: bytes, small: bytes, clients: int) -> None:
        self.endpoint = endpoint
        self.big = big
        self.small = small
        self.workers = clients
        endpoint.make_clients(clients)
        s3 = endpoint.clients[0]
        s3.create_bucket(Bucket=BUCKET)
        for i in range(GET_POOL):
            s3.put_object(Bucket=BUCKET, Key=f"pool/{i}", Body=small)
        self._round = 0
        #: Server CPU milliseconds per MiB of each 64 MiB PUT and GET (all its processes).
        self.cpu: dict[str, list[float]] = {"put64M": [], "get64M": []}

    def _server_cpu(self) -> float:
        return 0.0 if self.endpoint.pid is None else tree_cpu_seconds(self.endpoint.pid)

    def _record_cpu(self, figure: str, before: float) -> None:
        if self.endpoint.pid is not None:
            spent = tree_cpu_seconds(self.endpoint.pid) - before
            self.cpu[figure].append(spent * 1000 / (len(self.big) / MiB))

    def put64m(self) -> float:
        """MB/s of one 64 MiB ``put_object``."""
        s3 = self.endpoint.clients[0]
        cpu = self._server_cpu()
        began = time.perf_counter()
        s3.put_object(Bucket=BUCKET, Key="big", Body=self.big)
        rate = len(self.big) / (time.perf_counter() - began) / 1e6
        self._record_cpu("put64M", cpu)
        return rate

    def get64m(self) -> float:
        """MB/s of one 64 MiB ``get_object`` (body read whole); checks the bytes."""
        s3 = self.endpoint.clients[0]
        cpu = self._server_cpu()
        began = time.perf_counter()
        body = s3.get_object(Bucket=BUCKET, Key="big")["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        rate = len(self.big) / (time.perf_counter() - began) / 1e6
        self._record_cpu("get64M", cpu)
        if data != self.big:
            raise RuntimeError(f"{self.endpoint.name}: the 64 MiB object came back different")
        return rate

    def put4k(self, seconds: float) -> float:
        """4 KiB ``put_object``/s from every client at once (fresh keys)."""
        self._round += 1
        prefix = f"small/{self._round}"

        def put(worker: int, i: int) -> None:
            self.endpoint.clients[worker].put_object(
                Bucket=BUCKET, Key=f"{prefix}/{worker}/{i}", Body=self.small
            )

        return _in_threads(self.workers, seconds, put)

    def get4k(self, seconds: float) -> float:
        """4 KiB ``get_object``/s from every client at once (bodies read and checked)."""

        def get(worker: int, i: int) -> None:
            key = f"pool/{(worker * 31 + i * 7) % GET_POOL}"
            body = self.endpoint.clients[worker].get_object(Bucket=BUCKET, Key=key)["Body"]
            try:
                if body.read() != self.small:
                    raise RuntimeError(f"{self.endpoint.name}: {key} came back different")
            finally:
                body.close()

        return _in_threads(self.workers, seconds, get)


class DiskWorkload:
    """The same bytes on the local disk: write + fsync, and read back."""

    def __init__(self, directory: Path, big: bytes, small: bytes, clients: int) -> None:
        self.directory = directory
        self.big = big
        self.small = small
        self.workers = clients
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(GET_POOL):
            self._write(directory / f"pool-{i}", small)
        self._round = 0

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def put64m(self) -> float:
        """MB/s of writing and fsyncing one 64 MiB file."""
        began = time.perf_counter()
        self._write(self.directory / "big", self.big)
        return len(self.big) / (time.perf_counter() - began) / 1e6

    def get64m(self) -> float:
        """MB/s of reading the 64 MiB file back (from the page cache)."""
        began = time.perf_counter()
        data = (self.directory / "big").read_bytes()
        rate = len(data) / (time.perf_counter() - began) / 1e6
        if data != self.big:
            raise RuntimeError("the 64 MiB file came back different")
        return rate

    def put4k(self, seconds: float) -> float:
        """4 KiB file writes + fsync per second from every worker thread at once."""
        self._round += 1
        folder = self.directory / f"small-{self._round}"
        folder.mkdir()

        def put(worker: int, i: int) -> None:
            self._write(folder / f"{worker}-{i}", self.small)

        return _in_threads(self.workers, seconds, put)

    def get4k(self, seconds: float) -> float:
        """4 KiB file reads per second from every worker thread at once."""

        def get(worker: int, i: int) -> None:
            path = self.directory / f"pool-{(worker * 31 + i * 7) % GET_POOL}"
            if path.read_bytes() != self.small:
                raise RuntimeError(f"{path} came back different")

        return _in_threads(self.workers, seconds, get)


def _measure(workload: S3Workload | DiskWorkload, seconds: float) -> dict[str, float]:
    return {
        "put64M": workload.put64m(),
        "get64M": workload.get64m(),
        "put4k": workload.put4k(seconds),
        "get4k": workload.get4k(seconds),
    }


def _line(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name:<8} put64M {figures['put64M']:7.1f} MB/s  get64M {figures['get64M']:7.1f} MB/s  "
        f"put4k {figures['put4k']:7.0f}/s  get4k {figures['get4k']:7.0f}/s"
    )


def _print_cpu(server_cpu: dict[str, dict[str, list[float]]]) -> None:
    """Server CPU per MiB (medians) beside the floor of the primitives Ballast must run."""
    for figure in ("put64M", "get64M"):
        print(
            f"server CPU, {figure}: "
            + "; ".join(
                f"{name} {statistics.median(cpu[figure]):.1f} ms/MiB"
                for name, cpu in server_cpu.items()
                if cpu[figure]
            )
        )
    for figure, parts in zip(("put64M", "get64M"), primitive_floor(), strict=True):
        listed = ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items())
        print(f"floor, {figure}: {sum(parts.values()):.1f} ms/MiB of primitives ({listed})")


def run(directory: Path, rounds: int, seconds: float, clients: int) -> str:
    """Run the benchmark in ``directory``; print progress and return the last line."""
    big = os.urandom(BIG)
    small = os.urandom(SMALL)
    print(
        f"S3: 64 MiB objects (one client), 4 KiB objects ({clients} boto3 clients, "
        f"{seconds:g} s each); {rounds} interleaved rounds; data in {directory}",
        flush=True,
    )
    results: dict[str, dict[str, list[float]]] = {}
    server_cpu: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        endpoints = [
            stack.enter_context(ballast_up(directory)),
            stack.enter_context(moto_server(directory)),
        ]
        workloads: list[tuple[str, S3Workload | DiskWorkload]] = []
        for endpoint in endpoints:
            stack.callback(endpoint.close)
            workloads.append((endpoint.name, S3Workload(endpoint, big, small, clients)))
        workloads.append(("disk", DiskWorkload(directory / "disk", big, small, clients)))
        for name, _ in workloads:
            results[name] = {figure: [] for figure in FIGURES}
        for round_ in range(1, rounds + 1):
            # Rotate the order too, so no system always runs first after a pause.
            shift = (round_ - 1) % len(workloads)
            for name, workload in workloads[shift:] + workloads[:shift]:
                figures = _measure(workload, seconds)
                for figure, value in figures.items():
                    results[name][figure].append(value)
                print(f"round {round_}: {_line(name, figures)}", flush=True)
        for name, workload in workloads:
            if isinstance(workload, S3Workload):
                server_cpu[name] = workload.cpu
    medians = {
        name: {figure: statistics.median(values) for figure, values in by_figure.items()}
        for name, by_figure in results.items()
    }
    print(f"medians of {rounds} rounds:")
    for name, figures in medians.items():
        print(f"  {_line(name, figures)}")
    ballast, moto, disk = medians["ballast"], medians["moto"], medians["disk"]
    print(
        "ballast vs local disk (fsync): "
        + "; ".join(f"{f} {ballast[f] / disk[f]:.2f}x" for f in FIGURES)
    )
    _print_cpu(server_cpu)
    units = {"put64M": " MB/s", "get64M": " MB/s", "put4k": "/s", "get4k": "/s"}
    return "s3: " + "; ".join(
        f"{f} {ballast[f]:.0f}{units[f]} = {ballast[f] / moto[f]:.2f}x moto" for f in FIGURES
    )


def main() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each 4 KiB run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent 4 KiB clients")
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.dir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3bench-")))
        else:
            directory = args.dir
            directory.mkdir(parents=True, exist_ok=True)
        last = run(directory, args.rounds, args.seconds, args.clients)
    print(last, flush=True)


if __name__ == "__main__":
    main()
