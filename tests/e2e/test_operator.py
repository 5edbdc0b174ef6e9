"""Day-2 operations as an operator runs them: ``ballast up`` (or ``ballast node run``) as a
subprocess, and the ``ballast`` command talking to its admin endpoint.

One ``ballast up`` serves the whole module (starting a cluster costs seconds). Most commands
run in-process through click's runner (the node is what is under test, over real HTTP); the
ones whose exact user-visible output matters — the one error line, the exit status — run as
real subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from interfaces.cli import main

READY_TIMEOUT = 60.0
#: The credential cache TTL of a gateway (interfaces.s3.credentials.CredentialStore).
CREDENTIAL_TTL = 5.0
LOG_FIELDS = {"time", "level", "component", "message"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Deployment:
    """A running ``ballast up``: its process, endpoints document, admin address and log file."""

    process: subprocess.Popen[str]
    endpoints: dict[str, Any]
    admin: str
    log: Path

    def s3(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 client (the ``ballast up`` key by default)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoints["s3_endpoint"],
            aws_access_key_id=access_key or self.endpoints["access_key"],
            aws_secret_access_key=secret_key or self.endpoints["secret_key"],
            region_name=self.endpoints["region"],
        )


def _wait_ready(process: subprocess.Popen[str], log: Path) -> str:
    """The first stdout line of a starting ``ballast up --json``."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = ""
    while time.monotonic() < deadline and not line:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
    if not line:
        process.kill()
        process.communicate(timeout=10)
        pytest.fail(f"ballast up did not report ready; stderr:\n{log.read_text()}")
    return line


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    return process.returncode


@contextmanager
def _ballast_up(root: Path, nodes: int = 3) -> Iterator[Deployment]:
    """``ballast up --json --log-format json --log-level info`` on free loopback ports."""
    admin = f"127.0.0.1:{_free_port()}"
    log = root / "stderr.log"
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli", "up", "--json", "--data", str(root / "d"),
             "--nodes", str(nodes), "--s3", "127.0.0.1:0", "--admin", admin,
             "--log-format", "json", "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        endpoints = json.loads(_wait_ready(process, log))
        yield Deployment(process, endpoints, admin, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One three-node ``ballast up`` for the module."""
    with _ballast_up(tmp_path_factory.mktemp("operator")) as running:
        yield running


def ballast(*args: str) -> tuple[int, str]:
    """Run a ``ballast`` command in-process; return the exit status and its output."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def ballast_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m interfaces.cli ARGS`` as a user would run ``ballast ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "interfaces.cli", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_s3_key_lifecycle(deployment: Deployment) -> None:
    done = ballast_process("s3", "key", "create", "--name", "ops", "--json",
                           "--admin", deployment.admin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)
    assert key["name"] == "ops"
    client = deployment.s3(key["access_key"], key["secret_key"])
    client.create_bucket(Bucket="ops-keys")
    client.put_object(Bucket="ops-keys", Key="k", Body=b"with the new key")
    assert client.get_object(Bucket="ops-keys", Key="k")["Body"].read() == b"with the new key"

    code, output = ballast("s3", "key", "list", "--json", "--admin", deployment.admin)
    assert code == 0
    listed = {k["access_key"]: k["name"] for k in json.loads(output)["keys"]}
    assert listed[key["access_key"]] == "ops"
    assert listed[deployment.endpoints["access_key"]] == "ballast up"
    code, table = ballast("s3", "key", "list", "--admin", deployment.admin)
    assert code == 0
    assert key["access_key"] in table
    assert key["secret_key"] not in output + table

    code, output = ballast("s3", "key", "delete", key["access_key"], "--admin", deployment.admin)
    assert code == 0, output
    # The gateway that deleted the key updates its own cache at once; another gateway would
    # keep accepting it for up to CREDENTIAL_TTL seconds, so poll for that long at most.
    deadline = time.monotonic() + CREDENTIAL_TTL + 2
    while True:
        try:
            client.list_objects_v2(Bucket="ops-keys")
        except ClientError as error:
            refused = error.response["Error"]["Code"]
            break
        assert time.monotonic() < deadline, "the deleted key still works"
        time.sleep(0.5)
    assert refused == "InvalidAccessKeyId"
    client.close()

    again = ballast_process("s3", "key", "delete", key["access_key"], "--admin", deployment.admin)
    assert key["access_key"] in _one_error_line(again)


def test_bucket_lifecycle(deployment: Deployment) -> None:
    admin = ("--admin", deployment.admin)
    wide = ballast_process("bucket", "create", "ops-b1", "--redundancy", "4+2", *admin)
    assert "needs 6 distinct nodes, but the cluster has 3" in _one_error_line(wide)
    bad = ballast_process("bucket", "create", "ops-b1", "--redundancy", "4+", *admin)
    assert "bad --redundancy" in _one_error_line(bad)

    code, output = ballast("bucket", "create", "ops-b1", "--redundancy", "3", "--json", *admin)
    assert code == 0, output
    assert json.loads(output)["redundancy"] == "3"
    code, output = ballast("bucket", "create", "ops-ec", "--redundancy", "2+1",
                           "--acl", "public-read", *admin)  # fmt: skip
    assert code == 0, output
    assert "'ops-ec' created (redundancy 2+1, acl public-read)" in output
    exists = ballast_process("bucket", "create", "ops-b1", "--redundancy", "3", *admin)
    assert "bucket 'ops-b1' already exists" in _one_error_line(exists)

    code, output = ballast("bucket", "list", "--json", *admin)
    assert code == 0
    buckets = {b["name"]: b for b in json.loads(output)["buckets"]}
    assert buckets["ops-b1"]["redundancy"] == "3"
    assert (buckets["ops-ec"]["redundancy"], buckets["ops-ec"]["acl"]) == ("2+1", "public-read")

    client = deployment.s3()
    assert (
        client.head_bucket(Bucket="ops-ec")["ResponseMetadata"]["HTTPHeaders"][
            "x-ballast-redundancy"
        ]
        == "2+1"
    )
    payload = os.urandom(300_000)
    client.put_object(Bucket="ops-ec", Key="obj", Body=payload)
    assert client.get_object(Bucket="ops-ec", Key="obj")["Body"].read() == payload
    code, output = ballast("bucket", "delete", "ops-ec", *admin)
    assert code == 1
    assert "Error: bucket 'ops-ec' is not empty" in output
    client.delete_object(Bucket="ops-ec", Key="obj")
    client.close()
    for name in ("ops-ec", "ops-b1"):
        code, output = ballast("bucket", "delete", name, *admin)
        assert code == 0, output
    code, output = ballast("bucket", "list", "--json", *admin)
    assert not {"ops-b1", "ops-ec"} & {b["name"] for b in json.loads(output)["buckets"]}


def test_status(deployment: Deployment) -> None:
    done = ballast_process("status", "--json", "--admin", deployment.admin)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    members = document["members"]
    assert len(members) == 3
    for member in members:
        assert member["state"] == "alive"
        assert member["capacity_bytes"] > 0
        assert isinstance(member["used_bytes"], int)
        assert isinstance(member["blocks"], int)
        assert isinstance(member["registers"], int)
    assert {m["address"] for m in members} == set(deployment.endpoints["nodes"])
    assert document["gateway"]["kv_client"]["register_ops"] > 0
    assert "paxos_requests" in document["service"]
    for member in members:
        assert member["draining"] is False
        assert member["repair"]["under_target"] >= 0
    code, table = ballast("status", "--admin", deployment.admin)
    assert code == 0
    assert "3/3 members alive" in table
    for address in deployment.endpoints["nodes"]:
        assert address in table
    assert "under target" in table
    assert "to move; no drain in progress" in table


def test_metrics_include_the_gateway(deployment: Deployment) -> None:
    client = deployment.s3()
    client.create_bucket(Bucket="ops-metrics")
    client.put_object(Bucket="ops-metrics", Key="m", Body=b"x")
    with pytest.raises(ClientError):
        client.get_object(Bucket="ops-metrics", Key="missing")
    client.close()
    with urllib.request.urlopen(f"http://{deployment.admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["operation"], s.labels["status"]): s.value
        for s in families["ballast_s3_operation_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("CreateBucket", "2xx")] >= 1
    assert requests[("PutObject", "2xx")] >= 1
    assert requests[("GetObject", "4xx")] >= 1
    for name in (
        "ballast_rpc_calls_succeeded",
        "ballast_silo_bytes_used",
        "ballast_kv_client_unavailable",  # quorum failures
        "ballast_kv_client_chunks_put",
        "ballast_objects_bytes_stored",
        "ballast_s3_requests",
        "ballast_repair_under_target",
        "ballast_repair_draining",
    ):
        assert name in families, name
    assert families["ballast_kv_client_chunks_put"].samples[0].value >= 1


def test_up_logs_json_lines(deployment: Deployment) -> None:
    """Every stderr line of ``ballast up --log-format json`` is one JSON log record."""
    lines = deployment.log.read_text(encoding="utf-8").splitlines()
    assert lines, "ballast up --log-level info logged nothing"
    for line in lines:
        record = json.loads(line)
        assert set(record) >= LOG_FIELDS, line
    assert any(json.loads(line)["component"] == "interfaces.node" for line in lines)


def test_node_run_json_logs_and_no_gateway(tmp_path: Path) -> None:
    """``ballast node run --log-format json`` logs JSON only; a node without a gateway
    answers the S3/bucket commands with one clear error line."""
    net, data = tmp_path / "net", tmp_path / "node"
    for args in (
        ("network", "create", "solo", "--dir", str(net)),
        ("node", "init", "--data", str(data)),
        ("passport", "issue", str(data / "node.pub"), "--network", str(net / "solo.network"),
         "--owner-key", str(net / "owner.key"), "--out", str(data / "passport")),
    ):  # fmt: skip
        code, output = ballast(*args)
        assert code == 0, output
    (data / "network").write_bytes((net / "solo.network").read_bytes())
    admin = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{data}"\nlisten = "127.0.0.1:{_free_port()}"\n'
        f'capacity = "1GiB"\n\n[admin]\nlisten = "{admin}"\n'
    )
    log = tmp_path / "stderr.log"
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli", "node", "run", "--config", str(config),
             "--log-format", "json", "--log-level", "debug"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        code, output = ballast("status", "--json", "--admin", admin)
        assert code == 0, output
        (member,) = json.loads(output)["members"]
        assert member["state"] == "alive"
        assert "gateway" not in json.loads(output)
        done = ballast_process("bucket", "list", "--admin", admin)
        assert "hosts no S3 gateway" in _one_error_line(done)
        assert _stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 3
    for line in lines:
        assert set(json.loads(line)) >= LOG_FIELDS, line
    levels = {json.loads(line)["level"] for line in lines}
    assert "info" in levels


def test_repair_scrub_and_wait_healthy(deployment: Deployment) -> None:
    """``ballast node repair`` and ``node scrub`` run on the node now and report; a healthy
    cluster passes ``ballast status --wait-healthy`` at once."""
    client = deployment.s3()
    client.create_bucket(Bucket="ops-scrub")
    client.put_object(Bucket="ops-scrub", Key="s", Body=os.urandom(100_000))
    client.close()
    admin = ("--admin", deployment.admin)
    code, output = ballast("node", "repair", "--json", *admin)
    assert code == 0, output
    repaired = json.loads(output)
    assert isinstance(repaired["found_work"], bool)
    assert repaired["repair"]["passes"] >= 1
    done = ballast_process("node", "scrub", *admin)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("scrub done: 0 corrupt records found\n")
    code, output = ballast("node", "scrub", "--json", *admin)
    assert code == 0, output
    scrubbed = json.loads(output)
    assert scrubbed["corrupt"] == 0
    assert scrubbed["repair"]["scrub_passes"] >= 2
    assert scrubbed["repair"]["scrubbed_bytes"] > 0
    done = ballast_process("status", "--wait-healthy", "--timeout", "60", *admin)
    assert done.returncode == 0, done.stderr
    assert "healthy after" in done.stdout


def test_drain_of_an_unreachable_node_is_one_error_line() -> None:
    admin = f"127.0.0.1:{_free_port()}"
    line = _one_error_line(ballast_process("node", "drain", "--wait", "--admin", admin))
    assert f"cannot reach the node's admin endpoint http://{admin}" in line


@pytest.mark.slow
def test_drain_one_node_of_four(tmp_path: Path) -> None:
    """On ``ballast up --nodes 4``, ``ballast node drain --wait`` empties the node whose admin
    endpoint it asks (the one hosting the S3 gateway, which keeps serving as a client); every
    object written before reads back, and the cluster is healthy afterwards."""
    with _ballast_up(tmp_path, nodes=4) as four:
        admin = ("--admin", four.admin)
        code, output = ballast("bucket", "create", "drain-ec", "--redundancy", "2+1", *admin)
        assert code == 0, output
        client = four.s3()
        client.create_bucket(Bucket="drain-rep")
        written = {
            (bucket, f"obj-{i}"): os.urandom(40_000 * (i + 1))
            for bucket in ("drain-rep", "drain-ec")
            for i in range(4)
        }
        for (bucket, key), payload in written.items():
            client.put_object(Bucket=bucket, Key=key, Body=payload)
        before = json.loads(ballast("status", "--json", *admin)[1])
        assert before["node"]["blocks"] > 0

        done = ballast_process("node", "drain", "--wait", "--json", "--timeout", "120", *admin)
        assert done.returncode == 0, done.stderr
        drained = json.loads(done.stdout)
        assert drained["draining"] is True
        assert (drained["remaining"], drained["blocks"], drained["registers"]) == (0, 0, 0)

        for (bucket, key), payload in written.items():
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
        client.put_object(Bucket="drain-rep", Key="after", Body=b"written after the drain")
        assert client.get_object(Bucket="drain-rep", Key="after")["Body"].read() == (
            b"written after the drain"
        )
        client.close()

        done = ballast_process("status", "--wait-healthy", "--timeout", "120", *admin)
        assert done.returncode == 0, done.stderr
        assert "alive (draining)" in done.stdout
        here = [m for m in json.loads(ballast("status", "--json", *admin)[1])["members"]
                if m["draining"]]  # fmt: skip
        assert [(m["address"], m["blocks"]) for m in here] == [(four.endpoints["nodes"][0], 0)]

        # Having dropped its consensus state, a drained node may not take data again.
        code, output = ballast("node", "drain", "--cancel", *admin)
        assert code != 0, output
        assert len(output.strip().splitlines()) == 1, output
        assert "cannot take blocks again" in output
        assert _stop(four.process) == 0


def test_stops_cleanly(deployment: Deployment) -> None:
    """Last in the module: SIGTERM stops the deployment with status 0, still logging JSON."""
    assert _stop(deployment.process) == 0
    for line in deployment.log.read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)) >= LOG_FIELDS, line
