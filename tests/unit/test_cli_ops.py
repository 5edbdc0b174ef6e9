"""Day-2 operations without a cluster: CLI argument checks, the gateway's admin API over an
in-memory block store, the admin HTTP edge, metrics, and the deployment files.

Commands that need a running node are exercised against a real ``ballast up`` in
``tests/e2e/test_operator.py``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from dht.identity import load_identity, load_network, load_passport
from interfaces.admin_api import GatewayAdmin
from interfaces.cli import main
from interfaces.config import NodeConfig, load_config, parse_config
from interfaces.metrics import LabelledCounter, node_registry, render
from interfaces.node import Node, _is_loopback
from interfaces.s3.app import S3App
from interfaces.s3.credentials import CredentialStore
from storage.objects import ObjectStore
from storage.policy import Redundancy
from tests.fake_blockstore import FakeBlockStore

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "interfaces" / "deploy"


def _one_error_line(result: Result) -> str:
    """The command failed with exactly one ``Error: ...`` line and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# -- CLI argument validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bucket", "create", "b1", "--redundancy", "0+0"], "bad --redundancy"),
        (["bucket", "create", "b1", "--redundancy", "three"], "bad --redundancy"),
        (["bucket", "create", "b1", "--redundancy", "17"], "replicas must be"),
        (["bucket", "create", "b1", "--acl", "world-writable"], "--acl 'world-writable'"),
        (["s3", "key", "list", "--admin", "nohost"], "--admin"),
        (["bucket", "list", "--admin", "127.0.0.1:99999"], "invalid port"),
    ],
)
def test_bad_arguments_are_one_error_line(args: list[str], message: str) -> None:
    line = _one_error_line(CliRunner().invoke(main, args))
    assert message in line


@pytest.mark.parametrize(
    "args",
    [
        ["s3", "key", "create", "--name", "x"],
        ["s3", "key", "list", "--json"],
        ["s3", "key", "delete", "BKAAAAAAAAAAAAAAAAAA"],
        ["bucket", "create", "b1", "--redundancy", "3"],
        ["bucket", "list"],
        ["bucket", "delete", "b1"],
        ["status"],
    ],
)
def test_unreachable_node_is_one_error_line(args: list[str], closed_port: int) -> None:
    result = CliRunner().invoke(main, [*args, "--admin", f"127.0.0.1:{closed_port}"])
    line = _one_error_line(result)
    assert f"127.0.0.1:{closed_port}" in line
    assert "cannot reach" in line


def test_missing_arguments_are_usage_errors() -> None:
    for args in (["bucket", "create"], ["bucket", "delete"], ["s3", "key", "delete"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert "Missing argument" in result.output


@pytest.mark.parametrize(
    "path",
    [["s3"], ["s3", "key"], ["s3", "key", "create"], ["bucket"], ["bucket", "create"]],
)
def test_help(path: list[str]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output


# -- the gateway's admin API over an in-memory cluster --------------------------------------


def _gateway(nodes: int = 3) -> tuple[GatewayAdmin, S3App]:
    fake = FakeBlockStore()
    objects = ObjectStore(fake, default_redundancy=Redundancy(replicas=3))
    credentials = CredentialStore(fake)
    app = S3App(objects, credentials)
    return GatewayAdmin(objects, credentials, nodes_available=lambda: nodes, s3=app), app


async def test_admin_api_keys() -> None:
    admin, _ = _gateway()
    status, created = await admin.handle("POST", "/admin/s3-keys", b'{"name": "alice"}')
    assert status == 201
    assert re.fullmatch(r"BK[A-Z0-9]{18}", created["access_key"])
    assert len(created["secret_key"]) == 40
    assert created["name"] == "alice"
    status, listing = await admin.handle("GET", "/admin/s3-keys", b"")
    assert status == 200
    assert [(k["access_key"], k["name"]) for k in listing["keys"]] == [
        (created["access_key"], "alice")
    ]
    assert "secret" not in json.dumps(listing)
    ak = created["access_key"]
    assert await admin.handle("DELETE", f"/admin/s3-keys/{ak}", b"") == (200, {"deleted": ak})
    status, error = await admin.handle("DELETE", f"/admin/s3-keys/{ak}", b"")
    assert status == 404
    assert ak in error["error"]


async def test_admin_api_buckets() -> None:
    admin, _ = _gateway(nodes=3)
    status, made = await admin.handle(
        "POST", "/admin/buckets", b'{"name": "bk1", "redundancy": "3", "acl": "public-read"}'
    )
    assert status == 201
    assert (made["name"], made["redundancy"], made["acl"]) == ("bk1", "3", "public-read")
    status, error = await admin.handle("POST", "/admin/buckets", b'{"name": "bk1"}')
    assert (status, error) == (409, {"error": "bucket 'bk1' already exists"})
    status, error = await admin.handle(
        "POST", "/admin/buckets", b'{"name": "bk2", "redundancy": "4+2"}'
    )
    assert status == 400
    assert "4+2 needs 6 distinct nodes" in error["error"]
    assert "has 3" in error["error"]
    for body, message in (
        (b'{"name": "bk2", "redundancy": "0"}', "redundancy"),
        (b'{"name": "Bad_Name"}', "invalid bucket name 'Bad_Name'"),
        (b'{"name": "b1"}', "between 3 (min) and 63 (max)"),
        (b'{"name": "bk2", "acl": "nope"}', "ACL"),
        (b'{"redundancy": "3"}', "'name' is required"),
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
    ):
        status, error = await admin.handle("POST", "/admin/buckets", body)
        assert status == 400, (body, error)
        assert message in error["error"], (body, error)
    status, listing = await admin.handle("GET", "/admin/buckets", b"")
    assert [b["name"] for b in listing["buckets"]] == ["bk1"]
    assert await admin.handle("DELETE", "/admin/buckets/bk1", b"") == (200, {"deleted": "bk1"})
    status, error = await admin.handle("DELETE", "/admin/buckets/bk1", b"")
    assert (status, error) == (404, {"error": "no bucket 'bk1'"})


async def test_admin_api_routes() -> None:
    admin, _ = _gateway()
    assert (await admin.handle("GET", "/admin/nothing", b""))[0] == 404
    assert (await admin.handle("GET", "/admin/buckets/a/b", b""))[0] == 404
    assert (await admin.handle("PUT", "/admin/buckets", b""))[0] == 405
    assert (await admin.handle("DELETE", "/admin/s3-keys", b""))[0] == 405
    assert (await admin.handle("POST", "/admin/buckets/bk1", b"{}"))[0] == 405


async def test_unavailable_cluster_is_503() -> None:
    fake = FakeBlockStore()
    objects = ObjectStore(fake)
    admin = GatewayAdmin(objects, CredentialStore(fake), nodes_available=lambda: 3)
    fake.fail("read")
    status, error = await admin.handle("GET", "/admin/buckets", b"")
    assert status == 503
    assert error["error"]


# -- the admin HTTP edge (Node.admin_app, driven with ASGI messages) ------------------------


async def _asgi(
    app: Any, method: str, path: str, body: bytes = b"", client: str = "127.0.0.1"
) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "client": (client, 50000)}
    await app(scope, receive, send)
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


async def test_admin_http_edge(tmp_path: Path) -> None:
    node = Node(NodeConfig(data_dir=tmp_path))
    status, error = await _asgi(node.admin_app, "GET", "/admin/buckets")
    assert status == 404
    assert "no S3 gateway" in error["error"]
    node.gateway, _ = _gateway()
    status, made = await _asgi(node.admin_app, "POST", "/admin/buckets", b'{"name": "bk1"}')
    assert (status, made["name"], made["redundancy"]) == (201, "bk1", "3")
    status, error = await _asgi(node.admin_app, "GET", "/admin/buckets", client="10.1.2.3")
    assert status == 403
    assert "loopback" in error["error"]
    status, _ = await _asgi(node.admin_app, "GET", "/admin/buckets", client="::1")
    assert status == 200


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        (None, True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str | None, local: bool) -> None:
    assert _is_loopback(host) is local


# -- metrics --------------------------------------------------------------------------------


async def test_s3_requests_by_operation_are_exported() -> None:
    admin, app = _gateway()
    # Unsigned: refused (a listing of buckets), or no such bucket; all counted.
    for path, expected in (("/", 403), ("/", 403), ("/bucket", 404)):
        status, _ = await _asgi_raw(app, "GET", path)
        assert status == expected
    assert app.operation_counts() == {("ListBuckets", "4xx"): 2, ("ListObjects", "4xx"): 1}
    registry = node_registry("n1", admin.metric_sources(), admin.metric_counters())
    families = {f.name: f for f in text_string_to_metric_families(render(registry).decode())}
    samples = {
        (s.labels["operation"], s.labels["status"]): s.value
        for s in families["ballast_s3_operation_requests"].samples
        if s.name.endswith("_total")
    }
    assert samples == {("ListBuckets", "4xx"): 2.0, ("ListObjects", "4xx"): 1.0}
    assert families["ballast_s3_responses_4xx"].samples[0].value == 3.0
    assert "ballast_objects_bytes_stored" in families
    assert admin.status()["s3_operations"] == {"ListBuckets 4xx": 2, "ListObjects 4xx": 1}


async def _asgi_raw(app: Any, method: str, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_labelled_counters_render() -> None:
    counter = LabelledCounter("ballast_demo", "demo", ("op",), lambda: {("a",): 2, ("b",): 1})
    text = render(node_registry("n1", [], [counter])).decode()
    assert 'ballast_demo_total{node="n1",op="a"} 2.0' in text
    assert 'ballast_demo_total{node="n1",op="b"} 1.0' in text


# -- deployment files -----------------------------------------------------------------------


def _check_ballast_command(argv: list[str]) -> None:
    """``argv`` (after ``ballast``) names a real command, and its options exist there."""
    words = [w for w in argv if not w.startswith("-")]
    options = [w.split("=", 1)[0] for w in argv if w.startswith("--")]
    # The subcommand path: leading words that the CLI knows as groups/commands.
    path: list[str] = []
    for word in words:
        result = CliRunner().invoke(main, [*path, word, "--help"])
        if result.exit_code != 0:
            break
        path.append(word)
    assert path, f"no ballast command in {argv}"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Commands:" not in result.output, f"{path} is a group, not a command"
    for option in options:
        assert option in result.output, f"ballast {' '.join(path)} has no {option}"


def _ballast_invocations(text: str) -> list[list[str]]:
    """Every command line starting with ``ballast`` in a shell script or Dockerfile RUN lines
    (each ``&&``/``;``/``|`` segment is a command)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            continue
        for segment in re.split(r"&&|;|\|", line):
            tokens = shlex.split(segment, comments=True)
            if tokens[:1] == ["RUN"]:
                tokens = tokens[1:]
            if tokens and (tokens[0] == "ballast" or tokens[0].endswith("/bin/ballast")):
                found.append(tokens[1:])
    return found


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "ballast.service", encoding="utf-8")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/ballast")
    assert argv[1:3] == ["node", "run"]
    assert argv[argv.index("--log-format") + 1] == "json"
    _check_ballast_command(argv[1:])
    assert service["Restart"] == "on-failure"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert hardening in service
    assert service["User"] != "root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    config = load_config(DEPLOY / "node.toml")
    assert config.admin_listen is not None
    assert config.admin_listen.host == "127.0.0.1"


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert stages
    assert all(s == "python:3.11-slim-bookworm" for s in stages)
    assert "COPY native/ native/" in text
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.MULTILINE)[1])  # type: ignore[index]
    cmd = json.loads(re.search(r"^CMD (.*)$", text, re.MULTILINE)[1])  # type: ignore[index]
    assert entrypoint == ["ballast"]
    _check_ballast_command(cmd)
    assert re.search(r"^VOLUME /var/lib/ballast$", text, re.MULTILINE)
    exposed = re.search(r"^EXPOSE (.*)$", text, re.MULTILINE)
    assert exposed is not None
    assert {"4100", "9100", "9000"} <= set(exposed[1].split())
    runs = _ballast_invocations("\n".join(re.findall(r"^RUN (?:.*\\\n)*.*$", text, re.MULTILINE)))
    assert runs, "the image checks its build with a ballast command"
    for argv in runs:
        _check_ballast_command(argv)
    for path in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (REPO / path).exists(), path


def _kubernetes() -> list[dict[str, Any]]:
    import yaml  # the test extra installs PyYAML; a missing one must fail, not skip

    with open(DEPLOY / "kubernetes.yaml", encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_kubernetes_manifest() -> None:
    documents = {d["kind"]: d for d in _kubernetes()}
    assert set(documents) == {"ConfigMap", "Service", "StatefulSet"}
    service, statefulset = documents["Service"], documents["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"
    spec = statefulset["spec"]
    assert spec["serviceName"] == service["metadata"]["name"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps = {v["configMap"]["name"] for v in volumes.values() if "configMap" in v}
    assert config_maps == {documents["ConfigMap"]["metadata"]["name"]}
    for container in pod["initContainers"] + pod["containers"]:
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes or mount["name"] in claims, mount
    (node,) = pod["containers"]
    assert any(m["mountPath"] == "/var/lib/ballast" and m["name"] in claims for m in
               node["volumeMounts"])  # fmt: skip
    assert node["args"][:2] == ["node", "run"]
    _check_ballast_command(node["args"])
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert node["readinessProbe"]["httpGet"]["path"] == "/health"
    assert ports[node["readinessProbe"]["httpGet"]["port"]] == 9100
    (init,) = pod["initContainers"]
    script = init["args"][0]
    invocations = _ballast_invocations(script)
    assert [a[:2] for a in invocations] == [["node", "init"], ["passport", "issue"]]
    for argv in invocations:
        _check_ballast_command(argv)
    template = documents["ConfigMap"]["data"]["node.toml"]
    config = parse_config(
        __import__("tomllib").loads(template.replace("@POD_NAME@", "ballast-0")), source="cm"
    )
    assert config.data_dir == Path("/var/lib/ballast")
    assert len(config.bootstrap) == spec["replicas"]


def test_kubernetes_init_script_runs(tmp_path: Path) -> None:
    """The init container's script, run here with its paths moved under ``tmp_path``:
    it creates a node key, issues a valid passport, and renders the pod's node.toml."""
    documents = {d["kind"]: d for d in _kubernetes()}
    pod = documents["StatefulSet"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    data, etc, tmp, bin_dir = (tmp_path / p for p in ("data", "etc", "tmp", "bin"))
    for directory in (data, etc / "network", etc / "template", tmp, bin_dir):
        directory.mkdir(parents=True)
    network_dir = tmp_path / "net"
    result = CliRunner().invoke(main, ["network", "create", "cluster", "--dir", str(network_dir)])
    assert result.exit_code == 0, result.output
    for name in ("cluster.network", "owner.key"):
        target = etc / "network" / name
        target.write_bytes((network_dir / name).read_bytes())
        target.chmod(0o440)  # as a Secret volume with fsGroup presents it
    (etc / "template" / "node.toml").write_text(documents["ConfigMap"]["data"]["node.toml"])
    ballast = bin_dir / "ballast"
    ballast.write_text(f'#!/bin/sh\nexec {sys.executable} -m interfaces.cli "$@"\n')
    ballast.chmod(stat.S_IRWXU)
    script = (
        init["args"][0]
        .replace("/tmp/", "@TMP@/")
        .replace("/var/lib/ballast", str(data))
        .replace("/etc/ballast", str(etc))
        .replace("@TMP@", str(tmp))
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "POD_NAME": "ballast-1",
        "PYTHONPATH": str(REPO),
    }
    for _ in range(2):  # a restarted pod runs it again: nothing changes, nothing fails
        done = subprocess.run(
            ["/bin/sh", "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    network = load_network(data / "network")
    identity = load_identity(data / "node.key")
    assert load_passport(data / "passport", network, identity).role == "storage"
    assert not (tmp / "owner.key").exists()
    config = load_config(data / "node.toml")
    assert str(config.advertise) == "ballast-1.ballast:4100"
    assert [str(a) for a in config.bootstrap] == [
        "ballast-0.ballast:4100",
        "ballast-2.ballast:4100",
    ]
