"""A three-machine deployment, each machine a network namespace, set up only with the CLI.

``network create``, ``node init``, ``passport issue`` and ``node run --config`` on each host;
then ``ballast status --json`` lists three alive members with their capacity, and an S3 round
trip works through any of them (bucket made through one gateway, written through a second,
read through the third), in the region the configuration names, path-style and
virtual-host-style (``BUCKET.s3.ballast.test``, the configured domain).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from tests.netns import NetnsLab

CLI = [sys.executable, "-m", "interfaces.cli"]
HOSTS = 3
REGION = "eu-west-3"
DOMAIN = "s3.ballast.test"


def _cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
            if last:
                return
        except OSError as error:
            last = error
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NetnsLab, Path]]:
    work = tmp_path_factory.mktemp("deployment")
    _cli("network", "create", "prod", "--redundancy", "3", "--dir", "net", cwd=work)
    with NetnsLab(HOSTS) as lab:
        for i in range(1, HOSTS + 1):
            data = work / f"host{i}"
            _cli("node", "init", "--data", str(data), cwd=work)
            _cli("passport", "issue", str(data / "node.pub"),
                 "--network", "net/prod.network", "--owner-key", "net/owner.key",
                 "--out", str(data / "passport"), cwd=work)  # fmt: skip
            shutil.copyfile(work / "net" / "prod.network", data / "network")
            shutil.copyfile(work / "net" / "gateway.key", data / "gateway.key")
            (data / "gateway.key").chmod(0o600)
            others = [f'"{lab.host(j)}:4100"' for j in range(1, HOSTS + 1) if j != i]
            (data / "node.toml").write_text(
                f'[node]\ndata_dir = "{data}"\nlisten = "{lab.host(i)}:4100"\n'
                f'capacity = "2GiB"\nbootstrap = [{", ".join(others)}]\n'
                f'[admin]\nlisten = "0.0.0.0:9100"\n[s3]\nlisten = "{lab.host(i)}:9000"\n'
                f'region = "{REGION}"\ndomains = ["{DOMAIN.upper()}."]\n'
            )
            lab.popen(i, [*CLI, "node", "run", "--config", str(data / "node.toml")],
                      cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        yield lab, work


def _signed_get(
    ip: str, host: str, path: str, credentials: Credentials, region: str
) -> tuple[int, bytes]:
    """GET ``path`` from ``ip:9000`` with ``Host: host``, signed with SigV4 for ``region``."""
    request = AWSRequest(method="GET", url=f"http://{host}{path}")
    request.headers["Host"] = host
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(credentials, "s3", region).add_auth(request)
    connection = http.client.HTTPConnection(ip, 9000, timeout=30)
    try:
        connection.request("GET", path, headers=dict(request.headers.items()))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _alive_members(lab: NetnsLab, i: int) -> int:
    url = f"http://{lab.host(i)}:9100/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        document = json.load(response)
    return sum(member["state"] == "alive" for member in document["members"])


def test_status_lists_three_alive_members_with_capacity(
    deployment: tuple[NetnsLab, Path],
) -> None:
    lab, work = deployment

    def all_alive() -> bool:
        return all(_alive_members(lab, i) == HOSTS for i in range(1, HOSTS + 1))

    _wait("three alive members on every host", all_alive)
    out = _cli("status", "--json", "--admin", f"{lab.host(2)}:9100", cwd=work)
    members = json.loads(out)["members"]
    assert len(members) == HOSTS
    assert all(m["state"] == "alive" for m in members)
    assert all(m["capacity_bytes"] == 2 * 1024**3 for m in members)


def test_s3_round_trip_through_any_node(deployment: tuple[NetnsLab, Path]) -> None:
    lab, work = deployment
    _wait("the S3 gateways", lambda: all(
        urllib.request.urlopen(f"http://{lab.host(i)}:9100/health", timeout=2).status == 200
        for i in range(1, HOSTS + 1)
    ))  # fmt: skip
    # Key management is loopback-only on the admin port: run it on host 1 itself.
    created = lab.run(1, [*CLI, "s3", "key", "create", "--name", "ci", "--json",
                          "--admin", "127.0.0.1:9100"], cwd=work, timeout=60)  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    clients = [
        boto3.client(
            "s3",
            endpoint_url=f"http://{lab.host(i)}:9000",
            aws_access_key_id=key["access_key"],
            aws_secret_access_key=key["secret_key"],
            region_name=REGION,
        )
        for i in range(1, HOSTS + 1)
    ]
    try:
        payload = bytes(range(256)) * 4096 + b"tail"
        clients[0].create_bucket(Bucket="deploy-test")
        clients[1].put_object(Bucket="deploy-test", Key="x/y.bin", Body=payload)
        assert clients[2].get_object(Bucket="deploy-test", Key="x/y.bin")["Body"].read() == payload
        listed = clients[2].list_objects_v2(Bucket="deploy-test")["Contents"]
        assert [o["Key"] for o in listed] == ["x/y.bin"]
        # Virtual-host style: the bucket is in the Host header, under the configured domain.
        credentials = Credentials(key["access_key"], key["secret_key"])
        status, body = _signed_get(
            lab.host(3), f"deploy-test.{DOMAIN}:9000", "/x/y.bin", credentials, REGION
        )
        assert (status, body) == (200, payload)
        # Signed for another region: refused, naming the region the gateway expects.
        status, body = _signed_get(
            lab.host(3), f"deploy-test.{DOMAIN}:9000", "/x/y.bin", credentials, "us-east-1"
        )
        assert status == 400
        assert b"<Code>AuthorizationHeaderMalformed</Code>" in body
        assert REGION.encode() in body
    finally:
        for client in clients:
            client.close()
