"""boto3 against a cluster whose nodes are real processes, killed with SIGKILL.

The in-process cluster of :mod:`tests.e2e.test_s3_cluster` can only *cancel* a node; here
every node is a process of its own, exactly as ``ballast up`` runs it
(``python -m interfaces.up_node``, fed the :class:`~interfaces.up_node.NodeSpec` that
:class:`~interfaces.up.LocalDeployment` builds from a prepared :mod:`interfaces.local_cluster`
data directory), so a victim dies the way a crashed machine does: ``kill -9``, no shutdown
code, half-written RPCs cut off. ``ballast up`` itself is not used because it stops the whole
deployment as soon as one child dies; this module plays its part (spawn, send the spec line,
read the ``{"node": ...}`` / ``{"gateway": ...}`` reports) and keeps the others running.

Node 0 hosts the S3 gateway (``replicas=3`` on three nodes, so every chunk and register has
a copy on every node) and the admin endpoint the tests observe the cluster through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest
from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped, unused-ignore]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

from dht.ids import Address
from interfaces.local_cluster import prepare_local_cluster
from interfaces.up import LocalDeployment
from interfaces.up_node import NodeSpec
from tests.e2e.s3_bodies import md5_hex, read_body

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
REGION = "us-east-1"
#: Seconds a node process may take to import, start and report.
START_TIMEOUT = 60.0
#: Seconds within which a request must be answered while the cluster has no quorum.
OUTAGE_BOUND = 30.0
#: Seconds the gateway may take to see restarted nodes alive again.
CONVERGE_TIMEOUT = 30.0
#: Members are evicted after this long: out of every test's time span, so that a node down
#: for a while is only suspected, as in :mod:`tests.cluster.conftest` (``ballast up`` says 30 s).
EVICTION_DELAY = 600.0
#: Status codes an overloaded or quorum-less S3 service answers with.
UNAVAILABLE_CODES = {"ServiceUnavailable", "SlowDown"}


class NodeProcess:
    """One ``python -m interfaces.up_node`` child: its spec, log and report lines."""

    def __init__(self, index: int, spec: NodeSpec, log: Path) -> None:
        self.index = index
        self.spec = spec
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._reports: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited."""
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the process and send it its spec (it starts serving at once)."""
        assert not self.running, f"node {self.index} is already running"
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in _reap
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "interfaces.up_node"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            start_new_session=True,
        )
        self._reports = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_reports, args=(self.process, self._reports), daemon=True
        )
        self._reader.start()
        assert self.process.stdin is not None
        # The pipe stays open: its end of file would tell the node to stop.
        self.process.stdin.write(self.spec.to_json().encode("utf-8") + b"\n")
        self.process.stdin.flush()

    @staticmethod
    def _read_reports(
        process: subprocess.Popen[bytes], reports: queue.Queue[dict[str, Any] | None]
    ) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                document = json.loads(line)
            except ValueError:
                document = {"unexpected": line.decode("utf-8", "replace")}
            reports.put(document if isinstance(document, dict) else {"unexpected": document})
        reports.put(None)  # end of file: the process is gone

    def expect(self, kind: str, timeout: float = START_TIMEOUT) -> Any:
        """The next report, which must be of ``kind`` (fails the test otherwise)."""
        try:
            document = self._reports.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(
                f"node {self.index} did not report {kind!r} in {timeout:.0f} s\n{self.tail()}"
            )
        if document is None or kind not in document:
            pytest.fail(f"node {self.index} reported {document!r}, not {kind!r}\n{self.tail()}")
        return document[kind]

    def kill(self) -> None:
        """SIGKILL the process (no shutdown code runs) and reap it."""
        assert self.process is not None, f"node {self.index} was never started"
        assert self.running, f"node {self.index} is not running"
        self.process.send_signal(signal.SIGKILL)
        status = self.process.wait(timeout=30)
        assert status == -signal.SIGKILL, f"node {self.index} exited with {status}, not SIGKILL"
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP the process: its sockets stay open but nothing answers (a hung machine)."""
        assert self.process is not None, f"node {self.index} was never started"
        self.process.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rpartition(")")[2].split()[0] != "T":
            assert time.monotonic() < deadline, f"node {self.index} did not stop"
            time.sleep(0.01)

    def thaw(self) -> None:
        """SIGCONT a frozen process."""
        assert self.process is not None, f"node {self.index} was never started"
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM; SIGKILL after 30 s) and reap."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen node could not stop
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reap()

    def _reap(self) -> None:
        assert self.process is not None
        if self._reader is not None:
            self._reader.join(timeout=30)  # the pipe's end of file ends it
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.process = None
        self._reader = None

    def tail(self, lines: int = 30) -> str:
        """The end of the node's log, for failure messages."""
        if not self.log.exists():
            return f"(node {self.index} wrote no log)"
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"-- node {self.index} log --\n" + "\n".join(text[-lines:])


class ProcessCluster:
    """``nodes`` node processes on loopback; node 0 hosts the S3 gateway and admin endpoint."""

    def __init__(self, root: Path, nodes: int) -> None:
        prepared = prepare_local_cluster(root / "data", nodes=nodes, capacity_bytes=1 << 30)
        deployment = LocalDeployment(
            prepared,
            s3=Address("127.0.0.1", 0),
            admin=Address("127.0.0.1", 0),
            region=REGION,
            log_level="info",
            log_format="text",
        )
        self.nodes = [
            NodeProcess(
                i,
                dataclasses.replace(
                    spec, config=dataclasses.replace(spec.config, eviction_delay=EVICTION_DELAY)
                ),
                root / f"node{i}.log",
            )
            for i, spec in enumerate(deployment.specs())
        ]
        self.s3_endpoint = ""
        self.admin = ""
        self.access_key = ""
        self.secret_key = ""
        self._clients: list[Any] = []

    def start(self) -> None:
        """Start every node in turn (each joins through the earlier ones), then the gateway."""
        for node in self.nodes:
            node.spawn()
            node.expect("node")
        gateway = self.nodes[0].expect("gateway")
        self.s3_endpoint = f"http://{gateway['s3']}"
        self.admin = f"http://{gateway['admin']}"
        self.access_key = gateway["access_key"]
        self.secret_key = gateway["secret_key"]

    def restart(self, index: int) -> None:
        """Start a killed node again: same key, port and data directory."""
        node = self.nodes[index]
        node.spawn()
        node.expect("node")

    def close(self) -> None:
        """Close the clients and stop every node still running."""
        for client in self._clients:
            client.close()
        for node in reversed(self.nodes):
            node.stop()

    def tails(self) -> str:
        """Every node's log tail."""
        return "\n".join(node.tail() for node in self.nodes)

    # -- observation through node 0's admin endpoint ----------------------------------------

    def status(self) -> dict[str, Any]:
        """Node 0's ``GET /status`` document."""
        with urllib.request.urlopen(f"{self.admin}/status", timeout=10) as response:
            document: dict[str, Any] = json.load(response)
        return document

    def alive_members(self) -> int:
        """How many members node 0 (the gateway's node) sees alive, itself included."""
        return sum(m["state"] == "alive" for m in self.status()["members"])

    def chunks_put(self) -> int:
        """Chunks the gateway's key-value client has stored (acknowledged by a quorum)."""
        return int(self.status()["gateway"]["kv_client"]["chunks_put"])

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Poll ``condition`` (a remote state with no event to await) until true."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"not reached within {timeout:.0f} s: {what}\n{self.tails()}")
            time.sleep(0.1)

    # -- clients ----------------------------------------------------------------------------

    def client(self, **config: Any) -> Any:
        """A path-style boto3 client on the gateway, without retries unless told."""
        config.setdefault("retries", {"total_max_attempts": 1})
        config.setdefault("s3", {"addressing_style": "path"})
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(**config),
        )
        self._clients.append(client)
        return client

    def signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """SigV4 headers (botocore's signer, payload SHA-256 signed) for a raw request."""
        request = AWSRequest(method=method, url=f"{self.s3_endpoint}{path}", data=body)
        credentials = Credentials(self.access_key, self.secret_key)
        S3SigV4Auth(credentials, "s3", REGION).add_auth(request)
        return dict(request.headers.items())


@pytest.fixture
def process_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    """Three converged node processes serving S3 (``replicas=3``); stopped after the test."""
    cluster = ProcessCluster(tmp_path, nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f'"{md5_hex(digests)}-{len(parts)}"'


def _error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an S3 XML error body."""
    text = body.decode("utf-8", "replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    return None if start < 0 or end < start else text[start + len("<Code>") : end]


def test_node_sigkilled_while_a_part_streams(process_cluster: ProcessCluster) -> None:
    """SIGKILL a storage node (not the gateway's) while UploadPart's body is half sent.

    The victim holds a replica of every chunk, and the gateway is storing chunks of the part
    when it dies (its chunk counter moved while the rest of the body is still unsent). The
    part then either succeeds or fails with a clean 503; after retrying it if needed the
    upload completes on the surviving majority and reads back bit-exact.
    """
    cluster = process_cluster
    s3 = cluster.client(connect_timeout=10, read_timeout=120)
    rng = random.Random(11)
    parts = [rng.randbytes(5 * MiB + 1), rng.randbytes(13 * MiB + 5), rng.randbytes(MiB + 7)]
    s3.create_bucket(Bucket="kill9")
    upload_id = s3.create_multipart_upload(Bucket="kill9", Key="big.bin")["UploadId"]
    etags: dict[int, str] = {}

    def upload(number: int) -> None:
        etags[number] = s3.upload_part(
            Bucket="kill9",
            Key="big.bin",
            UploadId=upload_id,
            PartNumber=number,
            Body=parts[number - 1],
        )["ETag"]

    upload(1)

    # Part 2 by hand, so that the kill lands while its body is on the wire.
    body = parts[1]
    path = f"/kill9/big.bin?partNumber=2&uploadId={quote(upload_id, safe='')}"
    headers = cluster.signed_headers("PUT", path, body)
    host, _, port = cluster.s3_endpoint.removeprefix("http://").rpartition(":")
    # Two whole 4 MiB chunks and a bit: the kill comes once the first chunk is acknowledged,
    # with the second one being stored (pipelined) and the rest of the body still unsent.
    first = 9 * MiB
    stored_before = cluster.chunks_put()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.putrequest("PUT", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:first])
        cluster.wait_for(
            "the gateway stores chunks of the streaming part",
            lambda: cluster.chunks_put() >= stored_before + 1,
            30.0,
        )
        victim = cluster.nodes[2]
        victim.kill()
        assert not victim.running
        conn.send(body[first:])
        response = conn.getresponse()
        answer = response.read()
        status, etag = response.status, response.getheader("ETag")
    finally:
        conn.close()
    logger.info("part 2, victim killed mid-body: HTTP %d %s", status, answer[:300])
    if status == 200:
        assert etag == f'"{md5_hex(body)}"'
        etags[2] = etag
    else:
        # A clean failure: an S3 error saying "try again", never a 500 or a cut connection.
        assert status == 503, (status, answer[:500], cluster.tails())
        assert _error_code(answer) in UNAVAILABLE_CODES, answer[:500]
        for attempt in range(3):
            try:
                upload(2)
                break
            except ClientError as error:
                code = error.response["Error"]["Code"]
                if code not in UNAVAILABLE_CODES or attempt == 2:
                    raise
    upload(3)
    listed = s3.list_parts(Bucket="kill9", Key="big.bin", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [
        (n, len(d)) for n, d in enumerate(parts, start=1)
    ]
    complete = s3.complete_multipart_upload(
        Bucket="kill9",
        Key="big.bin",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(etags.items())]},
    )
    assert complete["ETag"] == _multipart_etag(parts)
    whole = b"".join(parts)
    got = s3.get_object(Bucket="kill9", Key="big.bin")
    assert got["ContentLength"] == len(whole)
    data = read_body(got)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(whole).hexdigest()
    assert cluster.nodes[0].running
    assert cluster.nodes[1].running
    # The victim comes back from its kill -9 (its silo recovers): still the same object.
    cluster.restart(2)
    cluster.wait_for(
        "all three nodes alive", lambda: cluster.alive_members() == 3, CONVERGE_TIMEOUT
    )
    assert read_body(s3.get_object(Bucket="kill9", Key="big.bin")) == whole


def _expect_unavailable(call: Callable[[], Any], what: str, cluster: ProcessCluster) -> float:
    """Run ``call``: it must fail with 503 ServiceUnavailable/SlowDown within the bound.

    Returns:
        The seconds the answer took.
    """
    start = time.monotonic()
    with pytest.raises(ClientError) as info:
        call()
    elapsed = time.monotonic() - start
    response = info.value.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    assert (status, response["Error"]["Code"]) in {(503, c) for c in UNAVAILABLE_CODES}, (
        f"{what}: {status} {response['Error']}\n{cluster.tails()}"
    )
    assert response["ResponseMetadata"].get("RetryAttempts", 0) == 0, "retries are off"
    assert elapsed < OUTAGE_BOUND, f"{what} took {elapsed:.1f} s"
    logger.info("%s: 503 %s in %.2f s", what, response["Error"]["Code"], elapsed)
    return elapsed


@pytest.mark.parametrize("outage", ["sigkill", "sigstop"])
def test_lost_quorum_answers_503_then_recovers(
    process_cluster: ProcessCluster, outage: str
) -> None:
    """Two of three nodes down: PUT and GET answer 503 in bounded time, both right after the
    failure and once the gateway suspects the nodes; with the nodes back, writes work again.

    ``sigkill``: the nodes die (their ports refuse connections, the next start recovers the
    silos). ``sigstop``: they hang (connections stay open, nothing answers) until SIGCONT,
    so every request has to give up on its own timeout rather than on a refused connection.
    """
    cluster = process_cluster
    s3 = cluster.client()
    s3.create_bucket(Bucket="quorum")
    kept = os.urandom(100_000)
    s3.put_object(Bucket="quorum", Key="kept", Body=kept)
    # No retries, and a read timeout above the bound: a hang fails as ReadTimeoutError.
    unavailable = cluster.client(
        retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=OUTAGE_BOUND + 5
    )
    for index in (1, 2):
        if outage == "sigkill":
            cluster.nodes[index].kill()
        else:
            cluster.nodes[index].freeze()

    def put() -> Any:
        return unavailable.put_object(Bucket="quorum", Key="new", Body=b"x" * 300_000)

    def get() -> Any:
        return read_body(unavailable.get_object(Bucket="quorum", Key="kept"))

    # At once: the gateway still believes the nodes are alive.
    _expect_unavailable(put, f"PUT right after {outage}", cluster)
    _expect_unavailable(get, f"GET right after {outage}", cluster)
    if outage == "sigkill":
        # Once the failure detector has marked them, placement no longer offers them. (Hung
        # nodes are suspected within seconds, while the requests above wait for them.)
        cluster.wait_for("only node 0 alive", lambda: cluster.alive_members() == 1, 30.0)
        _expect_unavailable(put, f"PUT with the {outage} nodes suspected", cluster)
        _expect_unavailable(get, f"GET with the {outage} nodes suspected", cluster)

    for index in (1, 2):
        if outage == "sigkill":
            cluster.restart(index)
        else:
            cluster.nodes[index].thaw()
    cluster.wait_for(
        "all three nodes alive", lambda: cluster.alive_members() == 3, CONVERGE_TIMEOUT
    )
    again = cluster.client()
    body = os.urandom(5 * MiB + 3)
    put_again = again.put_object(Bucket="quorum", Key="after", Body=body)
    assert put_again["ETag"] == f'"{md5_hex(body)}"'
    assert read_body(again.get_object(Bucket="quorum", Key="after")) == body
    assert read_body(again.get_object(Bucket="quorum", Key="kept")) == kept
