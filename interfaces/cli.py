"""The ``ballast`` command line.

Every expected failure (a malformed credential file, a bad argument, a missing passport) is
reported as one clear error line and a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import string
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import trio

from dht.errors import CredentialError
from dht.identity import (
    ROLES,
    NetworkDescriptor,
    NodeIdentity,
    Passport,
    load_identity,
    load_network,
    save_identity,
    save_network,
    save_passport,
)
from dht.ids import Address
from storage.errors import InvalidArgument
from storage.policy import Redundancy

from .admin_client import DEFAULT_TIMEOUT, AdminClient, AdminClientError
from .config import ConfigError, load_config, parse_address
from .gateway import ServingNode
from .gateway_key import GatewayKey, save_gateway_key
from .local_cluster import LocalClusterError, prepare_local_cluster
from .logs import configure_logging
from .memory import keep_buffers_resident
from .node import NodeStartError
from .runner import Service, first_error, run_until_signalled
from .up import Endpoints, LocalDeployment

logger = logging.getLogger("ballast.cli")

NODE_KEY_FILE = "node.key"
NODE_PUBLIC_KEY_FILE = "node.pub"
OWNER_KEY_FILE = "owner.key"
GATEWAY_KEY_FILE = "gateway.key"


def _version() -> str:
    try:
        return importlib.metadata.version("ballast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fail(message: str) -> click.ClickException:
    """Build the one-line error every command reports for an expected failure."""
    logger.debug("command failed: %s", message)
    return click.ClickException(message)


def _redundancy_data(text: str) -> dict[str, int]:
    """Parse ``3`` or ``4+2`` into the plain policy a network descriptor carries."""
    try:
        policy = Redundancy.parse(text)
    except InvalidArgument as error:
        raise click.BadParameter(str(error)) from None
    return policy.as_dict()


def _read_public_key(text: str) -> bytes:
    """Accept a node public key as 64 hex digits, or the path of a ``node.pub`` file."""
    candidate = text.strip()
    path = Path(candidate)
    if not (len(candidate) == 64 and all(c in string.hexdigits for c in candidate)):
        if not path.is_file():
            raise _fail(f"{text!r} is neither a 64-hex-digit public key nor a readable file")
        try:
            candidate = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise _fail(f"cannot read public key file {text!r}: {error}") from None
    try:
        key = bytes.fromhex(candidate)
    except ValueError:
        raise _fail(f"public key in {text!r} is not hexadecimal") from None
    if len(key) != 32:
        raise _fail(f"a node public key is 32 bytes (64 hex digits), got {len(key)} bytes")
    return key


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="ballast")
def main() -> None:
    """Ballast: distributed storage with file, S3, block and Docker interfaces."""


@main.command("native-info")
def native_info() -> None:
    """Show which erasure-coding kernel this machine uses."""
    import native

    click.echo(f"erasure-coding kernel: {native.kernel_name()}")
    click.echo(f"available kernels: {', '.join(native.available_kernels())}")


@main.group()
def network() -> None:
    """Create and inspect networks."""


@network.command("create")
@click.argument("name")
@click.option(
    "--redundancy", default="3", show_default=True, help="replicas (3) or data+parity (4+2)"
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where to write the owner key and the network file",
)
def network_create(name: str, redundancy: str, directory: Path) -> None:
    """Create network NAME: an owner key and a signed network descriptor."""
    policy = _redundancy_data(redundancy)
    owner_path = directory / OWNER_KEY_FILE
    network_path = directory / f"{name}.network"
    gateway_path = directory / GATEWAY_KEY_FILE
    for path in (owner_path, network_path, gateway_path):
        if path.exists():
            raise _fail(f"{path} already exists; refusing to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        owner = NodeIdentity.generate()
        descriptor = NetworkDescriptor.create(owner, name, policy)
        save_identity(owner_path, owner)
        save_gateway_key(gateway_path, GatewayKey.generate())
        save_network(network_path, descriptor)
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write to {directory}: {error.strerror}") from None
    click.echo(f"network {name!r} created (default redundancy {redundancy})")
    click.echo(f"  owner key:    {owner_path}   (keep it secret: it issues passports)")
    click.echo(f"  gateway key:  {gateway_path}   (copy to the nodes that serve S3)")
    click.echo(f"  network file: {network_path}   (give it to every node)")


@network.command("show")
@click.argument("network_file", type=click.Path(dir_okay=False, path_type=Path))
def network_show(network_file: Path) -> None:
    """Verify and describe a network file."""
    try:
        descriptor = load_network(network_file)
    except CredentialError as error:
        raise _fail(str(error)) from None
    click.echo(f"network:     {descriptor.name}")
    click.echo(f"owner:       {descriptor.owner_public_key.hex()}")
    click.echo(f"redundancy:  {dict(descriptor.redundancy)}")
    click.echo(f"fingerprint: {descriptor.fingerprint.hex()}")


@main.group()
def node() -> None:
    """Set up, run, drain and repair a storage node."""


@node.command("init")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="the node's data directory",
)
def node_init(data_dir: Path) -> None:
    """Create the node's key pair (once) and print its public key for a passport."""
    key_path = data_dir / NODE_KEY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if key_path.exists():
            identity = load_identity(key_path)
            click.echo(f"node key already exists: {key_path}")
        else:
            identity = NodeIdentity.generate()
            save_identity(key_path, identity)
            click.echo(f"node key created: {key_path}")
        (data_dir / NODE_PUBLIC_KEY_FILE).write_text(identity.public_key.hex() + "\n")
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write to {data_dir}: {error.strerror}") from None
    click.echo(f"node id:    {identity.node_id.hex()}")
    click.echo(f"public key: {identity.public_key.hex()}")
    click.echo(f"next: ballast passport issue {data_dir / NODE_PUBLIC_KEY_FILE} --network ... ")


@main.group()
def passport() -> None:
    """Issue passports that let nodes join a network."""


@passport.command("issue")
@click.argument("node_key")
@click.option(
    "--network", "network_file", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--owner-key", "owner_key", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option("--role", type=click.Choice(sorted(ROLES)), default="storage", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def passport_issue(
    node_key: str, network_file: Path, owner_key: Path, role: str, out: Path
) -> None:
    """Sign a passport for NODE_KEY (hex public key, or a node.pub file)."""
    public_key = _read_public_key(node_key)
    try:
        descriptor = load_network(network_file)
        owner = load_identity(owner_key)
        issued = Passport.issue(owner, descriptor, public_key, role)
        save_passport(out, issued)
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write passport {out}: {error.strerror}") from None
    click.echo(f"passport for node {issued.node_id.hex()} ({role}) in {descriptor.name!r}: {out}")


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _serve(service: Service, on_ready: Callable[[Any], None] | None = None) -> None:
    """Run ``service`` until a signal; expected start-up failures become one error line."""
    failure: str | None = None
    keep_buffers_resident()
    try:
        trio.run(run_until_signalled, service, on_ready)
    except* (NodeStartError, ConfigError) as group:
        failure = str(first_error(group))
    if failure is not None:
        raise _fail(failure)


@node.command("run")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info")
def node_run(config_file: Path, log_format: str, log_level: str) -> None:
    """Run one node (one per machine) from a configuration file, until Ctrl-C/SIGTERM."""
    configure_logging(level=log_level, log_format=log_format)
    try:
        config = load_config(config_file)
    except ConfigError as error:
        raise _fail(str(error)) from None
    node_service = ServingNode(config)
    try:
        node_service.node.credentials  # noqa: B018 - load and check them before anything starts
    except NodeStartError as error:
        raise _fail(str(error)) from None
    _serve(node_service.run)


DEFAULT_ADMIN = "127.0.0.1:9100"
DEFAULT_DATA = Path.home() / ".local" / "share" / "ballast"


def _print_endpoints(endpoints: Endpoints, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(endpoints.to_json(), sort_keys=True), nl=True)
        sys.stdout.flush()
        return
    env = (
        f"AWS_ACCESS_KEY_ID={endpoints.access_key} "
        f"AWS_SECRET_ACCESS_KEY={endpoints.secret_key} AWS_DEFAULT_REGION={endpoints.region}"
    )
    url = f"http://{endpoints.s3}"
    click.echo("")
    click.echo(f"Ballast is up: {len(endpoints.nodes)} nodes, data in {endpoints.data_dir}")
    click.echo(f"  S3 endpoint:  {url}")
    click.echo(f"  access key:   {endpoints.access_key}")
    click.echo(f"  secret key:   {endpoints.secret_key}")
    if endpoints.admin is not None:
        at = f"--admin {endpoints.admin}"
        click.echo(f"  status:       ballast status {at}")
        click.echo(f"  S3 keys:      ballast s3 key create --name NAME {at}")
        click.echo(f"  buckets:      ballast bucket create NAME --redundancy 3 {at}")
    click.echo("Try:")
    click.echo(f"  {env} aws --endpoint-url {url} s3 mb s3://demo")
    click.echo(f"  {env} aws --endpoint-url {url} s3 cp README.md s3://demo/")
    click.echo(f"  {env} aws --endpoint-url {url} s3 ls s3://demo/")
    click.echo("Press Ctrl-C to stop.")
    sys.stdout.flush()


@main.command("up")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
)
@click.option("--nodes", type=click.IntRange(1, 32), default=3, show_default=True)
@click.option("--s3", "s3_listen", default="127.0.0.1:9000", show_default=True)
@click.option("--admin", "admin_listen", default=DEFAULT_ADMIN, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object when ready")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning")
def up(
    data_dir: Path,
    nodes: int,
    s3_listen: str,
    admin_listen: str,
    as_json: bool,
    log_format: str,
    log_level: str,
) -> None:
    """Start a local multi-node cluster with an S3 endpoint, in the foreground."""
    configure_logging(level=log_level, log_format=log_format)
    try:
        s3_address = parse_address(s3_listen)
        admin_address = parse_address(admin_listen) if admin_listen else None
    except ConfigError as error:
        raise click.BadParameter(str(error)) from None
    try:
        cluster = prepare_local_cluster(data_dir, nodes=nodes)
    except LocalClusterError as error:
        raise _fail(str(error)) from None
    deployment = LocalDeployment(cluster, s3=s3_address, admin=admin_address)
    _serve(deployment.run, lambda endpoints: _print_endpoints(endpoints, as_json))


def _human_bytes(count: object) -> str:
    if not isinstance(count, int | float):
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _admin_client(admin: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> AdminClient:
    """An admin client for ``--admin HOST:PORT`` (default :data:`DEFAULT_ADMIN`)."""
    try:
        return AdminClient(parse_address(admin or DEFAULT_ADMIN), timeout=timeout)
    except ConfigError as error:
        raise _fail(f"--admin: {error}") from None


def fetch_status(admin: Address, *, timeout: float = 10.0) -> dict[str, Any]:
    """GET a node's ``/status`` document."""
    try:
        return AdminClient(admin, timeout=timeout).status()
    except AdminClientError as error:
        raise _fail(str(error)) from None


def _echo_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True))


_STATE_STYLE = {"alive": "green", "suspected": "yellow", "evicted": "red"}


def _use_percent(member: dict[str, Any]) -> str:
    used, capacity = member.get("used_bytes"), member.get("capacity_bytes")
    if isinstance(used, int) and isinstance(capacity, int) and capacity > 0:
        return f"{100 * used / capacity:.1f}%"
    return "-"


def _console() -> Any:
    """A rich console; when output is not a terminal, wide enough not to wrap tables."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _uptime(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def _print_status(document: dict[str, Any]) -> None:
    """The status document as a table of members and a few summary lines."""
    from rich import box
    from rich.table import Table

    console = _console()
    here = document.get("node", {})
    members = [m for m in document.get("members", []) if isinstance(m, dict)]
    alive = sum(1 for m in members if m.get("state") == "alive")
    table = Table(
        title=f"network {here.get('network', '?')!r}: {alive}/{len(members)} members alive",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for column in (
        "capacity",
        "used",
        "use%",
        "blocks",
        "registers",
        "under target",
        "to move",
        "repair rate",
        "uptime",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for member in members:
        node_id = str(member.get("id", ""))
        state = str(member.get("state", "?"))
        marker = " *" if node_id == here.get("id") else ""
        draining = " [cyan](draining)[/]" if member.get("draining") is True else ""
        repair = _repair_figures(member) or {}
        rate = repair.get("repair_rate")
        table.add_row(
            node_id[:12] + marker,
            str(member.get("address", "")),
            f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]{draining}",
            _human_bytes(member.get("capacity_bytes")),
            _human_bytes(member.get("used_bytes")),
            _use_percent(member),
            str(member.get("blocks", "-")),
            str(member.get("registers", "-")),
            str(repair.get("under_target", "-")),
            _human_bytes(repair.get("bytes_to_move")),
            f"{_human_bytes(rate)}/s" if isinstance(rate, int | float) else "-",
            _uptime(member.get("uptime_s")),
        )
    console.print(table)
    console.print("* the node that answered")
    console.print(_repair_line(summarize_repair(document)), highlight=False)
    service = document.get("service", {})
    if isinstance(service, dict) and service:
        console.print(
            f"block service here: {service.get('blocks_stored', 0)} blocks stored, "
            f"{service.get('blocks_served', 0)} served, "
            f"{service.get('paxos_requests', 0)} consensus messages"
        )
    gateway = document.get("gateway")
    if isinstance(gateway, dict):
        s3 = gateway.get("s3", {})
        kv = gateway.get("kv_client", {})
        if isinstance(s3, dict) and s3:
            console.print(
                f"S3: {s3.get('requests', 0)} requests "
                f"({s3.get('responses_2xx', 0)} ok, {s3.get('responses_4xx', 0)} 4xx, "
                f"{s3.get('responses_5xx', 0)} 5xx), {s3.get('in_flight', 0)} in flight"
            )
        if isinstance(kv, dict) and kv:
            console.print(
                f"KV client: {kv.get('chunks_put', 0)} chunks written, "
                f"{kv.get('chunks_got', 0)} read, {kv.get('register_ops', 0)} register ops, "
                f"{kv.get('unavailable', 0)} quorum failures"
            )


_timeout_type = click.FloatRange(min=0, min_open=True)


@main.command("status")
@click.option("--admin", default=None, help=f"a node's admin address (default {DEFAULT_ADMIN})")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the status document as JSON")
@click.option(
    "--wait-healthy",
    is_flag=True,
    help="first wait, with a progress bar, until nothing is under target and no member is "
    "suspected",
)
@click.option(
    "--timeout",
    type=_timeout_type,
    default=None,
    metavar="SECONDS",
    help="with --wait-healthy: give up (exit status 1) after SECONDS (default: no limit)",
)
def status(
    admin: str | None,
    config_file: Path | None,
    as_json: bool,
    wait_healthy: bool,
    timeout: float | None,
) -> None:
    """Show the cluster's members, their state, capacity, use and repair backlog."""
    if timeout is not None and not wait_healthy:
        raise _fail("--timeout applies only with --wait-healthy")
    try:
        if config_file is not None:
            address = load_config(config_file).admin_listen
            if address is None:
                raise _fail(f"{config_file} has no [admin] listen address")
        else:
            address = parse_address(admin or DEFAULT_ADMIN)
    except ConfigError as error:
        raise _fail(str(error)) from None
    started = time.monotonic()
    document = _wait_healthy(address, timeout) if wait_healthy else fetch_status(address)
    if as_json:
        _echo_json(document)
        return
    _print_status(document)
    if wait_healthy:
        click.echo(
            f"healthy after {time.monotonic() - started:.0f} s: "
            "nothing under target, no member suspected"
        )


# -- day-2 operations against a running node ----------------------------------------------

_admin_option = click.option(
    "--admin",
    default=DEFAULT_ADMIN,
    show_default=True,
    help="the admin address of the node hosting the S3 gateway",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON, not a table")

BUCKET_ACLS = ("private", "public-read", "public-read-write", "authenticated-read")


def _call(operation: Callable[[], Any]) -> Any:
    """Run one admin request; its failure becomes the command's one error line."""
    try:
        return operation()
    except AdminClientError as error:
        raise _fail(str(error)) from None


def _print_rows(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _when(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return str(seconds)
    import datetime

    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


@main.group("s3")
def s3_group() -> None:
    """Manage the S3 gateway of a running node."""


@s3_group.group("key")
def s3_key() -> None:
    """Create, list and delete S3 access keys."""


@s3_key.command("create")
@click.option("--name", default=None, help="a label for the key (default: the access key)")
@_admin_option
@_json_option
def s3_key_create(name: str | None, admin: str, as_json: bool) -> None:
    """Create an access key and print its secret (shown only this once)."""
    client = _admin_client(admin)
    answer = _call(lambda: client.create_key(name))
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"access key: {answer.get('access_key')}")
    click.echo(f"secret key: {answer.get('secret_key')}")
    click.echo(f"name:       {answer.get('name')}")
    click.echo("The secret is not stored anywhere you can read it again: keep it now.")


@s3_key.command("list")
@_admin_option
@_json_option
def s3_key_list(admin: str, as_json: bool) -> None:
    """List the access keys (never their secrets)."""
    client = _admin_client(admin)
    keys = _call(client.list_keys)
    if as_json:
        _echo_json({"keys": keys})
        return
    _print_rows(
        f"{len(keys)} S3 access key(s)",
        ["access key", "name", "created"],
        [[str(k.get("access_key")), str(k.get("name")), _when(k.get("created"))] for k in keys],
    )


@s3_key.command("delete")
@click.argument("access_key")
@_admin_option
@_json_option
def s3_key_delete(access_key: str, admin: str, as_json: bool) -> None:
    """Delete ACCESS_KEY (gateways may accept it for a few more seconds: their cache TTL)."""
    client = _admin_client(admin)
    answer = _call(lambda: client.delete_key(access_key))
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"deleted access key {access_key}")


@main.group("bucket")
def bucket() -> None:
    """Create, list and delete buckets on a running node's S3 gateway."""


def _check_redundancy(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(Redundancy.parse(text))
    except InvalidArgument as error:
        raise _fail(f"bad --redundancy: {error}") from None


@bucket.command("create")
@click.argument("name")
@click.option(
    "--redundancy",
    default=None,
    help="replicas (3) or data+parity (4+2); default: the gateway's default",
)
@click.option("--acl", default="private", show_default=True, help="|".join(BUCKET_ACLS))
@click.option("--owner", default=None, help="the owner recorded on the bucket")
@_admin_option
@_json_option
def bucket_create(
    name: str, redundancy: str | None, acl: str, owner: str | None, admin: str, as_json: bool
) -> None:
    """Create bucket NAME with a redundancy policy."""
    policy = _check_redundancy(redundancy)
    if acl not in BUCKET_ACLS:
        raise _fail(f"--acl {acl!r}: choose one of {', '.join(BUCKET_ACLS)}")
    client = _admin_client(admin)
    answer = _call(lambda: client.create_bucket(name, redundancy=policy, acl=acl, owner=owner))
    if as_json:
        _echo_json(answer)
        return
    click.echo(
        f"bucket {answer.get('name')!r} created "
        f"(redundancy {answer.get('redundancy')}, acl {answer.get('acl')})"
    )


@bucket.command("list")
@_admin_option
@_json_option
def bucket_list(admin: str, as_json: bool) -> None:
    """List the buckets with their redundancy and ACL."""
    client = _admin_client(admin)
    buckets = _call(client.list_buckets)
    if as_json:
        _echo_json({"buckets": buckets})
        return
    _print_rows(
        f"{len(buckets)} bucket(s)",
        ["name", "redundancy", "acl", "owner", "created"],
        [
            [str(b.get(f)) for f in ("name", "redundancy", "acl", "owner")]
            + [str(b.get("created", ""))[:19].replace("T", " ") + "Z"]
            for b in buckets
        ],
    )


@bucket.command("delete")
@click.argument("name")
@_admin_option
@_json_option
def bucket_delete(name: str, admin: str, as_json: bool) -> None:
    """Delete the empty bucket NAME."""
    client = _admin_client(admin)
    answer = _call(lambda: client.delete_bucket(name))
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"deleted bucket {name!r}")


# -- repair, drain and scrubbing ----------------------------------------------------------

#: Seconds between two progress requests while a command waits.
POLL_INTERVAL = 1.0

_node_admin_option = click.option(
    "--admin",
    default=DEFAULT_ADMIN,
    show_default=True,
    help="the node's admin address (it accepts these operations from loopback only)",
)


def _count(value: object) -> int:
    """A count from a status document; anything that is not a count reads as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _member_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    members = document.get("members")
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _repair_figures(member: dict[str, Any]) -> dict[str, Any] | None:
    """A member's repair statistics, or None when it did not report them."""
    figures = member.get("repair")
    return figures if isinstance(figures, dict) else None


@dataclasses.dataclass(frozen=True)
class RepairSummary:
    """The repair backlog of a cluster, summed over the members of a ``/status`` document.

    Attributes:
        under_target: blocks and registers below their redundancy (each counted once: only its
            responsible holder counts it).
        bytes_to_move: bytes the members' last passes still had to copy or rebuild.
        suspected: members suspected of having failed.
        silent: live members that reported no repair figures (their backlog is unknown).
        draining: ``(address, blocks and registers left)`` of each draining member.
        stale: live members whose figures predate the last change of the member list.
    """

    under_target: int = 0
    bytes_to_move: int = 0
    suspected: int = 0
    silent: int = 0
    draining: tuple[tuple[str, int], ...] = ()
    stale: int = 0

    @property
    def healthy(self) -> bool:
        """Nothing under target, every live member accounted for, none suspected."""
        return not (self.under_target or self.suspected or self.silent or self.stale)


def summarize_repair(document: dict[str, Any]) -> RepairSummary:
    """Sum the members' repair figures in a ``/status`` document."""
    under_target = bytes_to_move = suspected = silent = 0
    draining: list[tuple[str, int]] = []
    for member in _member_rows(document):
        state = member.get("state")
        if state == "suspected":
            suspected += 1
        elif state != "alive":
            continue
        figures = _repair_figures(member)
        if figures is None:
            silent += state == "alive"
            continue
        under_target += _count(figures.get("under_target"))
        bytes_to_move += _count(figures.get("bytes_to_move"))
        if member.get("draining") is True:
            address = str(member.get("address", "?"))
            draining.append((address, _count(figures.get("drain_remaining"))))
    return RepairSummary(under_target, bytes_to_move, suspected, silent, tuple(draining))


class HealthWatch:
    """Judges successive ``/status`` documents of one cluster while waiting for it to heal.

    Each member's figures describe its last complete repair pass, so right after the member
    list changes (an eviction, a join, a drain starting) they still describe the old list: an
    evicted member's blocks are not yet counted as under target. When the list changes, the
    watch therefore counts a live member as stale until its pass counter moves on.
    """

    def __init__(self) -> None:
        self._view: frozenset[tuple[str, str, bool]] | None = None
        self._baseline: dict[str, int] = {}

    def observe(self, document: dict[str, Any]) -> RepairSummary:
        """Summarize ``document``, counting the members whose figures are stale."""
        members = _member_rows(document)
        view = frozenset(
            (str(m.get("id")), str(m.get("state")), m.get("draining") is True) for m in members
        )
        passes: dict[str, int] = {}
        for member in members:
            figures = _repair_figures(member)
            if figures is not None and isinstance(figures.get("passes"), int):
                passes[str(member.get("id"))] = figures["passes"]
        if self._view is not None and view != self._view:
            self._baseline = passes
        self._view = view
        stale = sum(
            1
            for m in members
            if m.get("state") == "alive"
            and str(m.get("id")) in self._baseline
            and passes.get(str(m.get("id"))) == self._baseline[str(m.get("id"))]
        )
        return dataclasses.replace(summarize_repair(document), stale=stale)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _backlog(summary: RepairSummary) -> str:
    """The backlog in a few words, for a progress bar or an error line."""
    parts = [f"{summary.under_target} under target"]
    if summary.bytes_to_move:
        parts.append(f"{_human_bytes(summary.bytes_to_move)} to move")
    if summary.suspected:
        parts.append(f"{_plural(summary.suspected, 'member')} suspected")
    if summary.silent:
        parts.append(f"{_plural(summary.silent, 'member')} not answering")
    if summary.stale:
        parts.append(f"{_plural(summary.stale, 'member')} yet to finish a repair pass")
    return ", ".join(parts)


def _repair_line(summary: RepairSummary) -> str:
    """The status table's summary of the cluster's repair work."""
    line = (
        f"repair: {summary.under_target} blocks and registers under target, "
        f"{_human_bytes(summary.bytes_to_move)} to move; "
    )
    if summary.draining:
        drains = ", ".join(
            f"{address} ({left} left)" if left else f"{address} (done)"
            for address, left in summary.draining
        )
        line += f"draining: {drains}"
    else:
        line += "no drain in progress"
    if summary.silent:
        line += f" ({_plural(summary.silent, 'member')} did not answer: figures incomplete)"
    return line


def _progress_console() -> Any:
    """The console progress bars draw on: stderr, so that stdout stays parseable."""
    from rich.console import Console

    return Console(stderr=True)


class _Countdown:
    """A progress bar that counts a backlog down to zero from the largest value it has seen
    (without a progress display, it only remembers the figures)."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._total = 0

    def update(self, remaining: int, label: str) -> None:
        """Show ``remaining`` (and ``label`` beside the bar)."""
        self._total = max(self._total, remaining, 1)
        if self._progress is not None:
            self._progress.update(
                self._task,
                total=self._total,
                completed=self._total - remaining,
                label=label,
                refresh=True,
            )


@contextmanager
def _countdown(description: str) -> Iterator[_Countdown]:
    """A transient progress bar on stderr, erased when done so that the command's summary
    line takes its place; nothing is drawn when stderr is not a terminal."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = _progress_console()
    if not console.is_terminal:
        yield _Countdown()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        yield _Countdown(progress, progress.add_task(description, total=1, label=""))


def _sleep_until_next_poll(deadline: float | None) -> None:
    pause = POLL_INTERVAL
    if deadline is not None:
        pause = min(pause, max(0.0, deadline - time.monotonic()))
    time.sleep(pause)


def _wait_healthy(address: Address, timeout: float | None) -> dict[str, Any]:
    """Poll ``/status`` until the cluster is healthy; return the last document."""
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = HealthWatch()
    document = fetch_status(address)
    summary = watch.observe(document)
    try:
        with _countdown("repairing") as bar:
            while True:
                bar.update(summary.under_target, _backlog(summary))
                if summary.healthy:
                    return document
                if deadline is not None and time.monotonic() >= deadline:
                    raise _fail(f"not healthy after {timeout:g} s: {_backlog(summary)}")
                _sleep_until_next_poll(deadline)
                document = fetch_status(address)
                summary = watch.observe(document)
    except KeyboardInterrupt:
        raise _fail(f"stopped waiting: {_backlog(summary)}") from None


@dataclasses.dataclass(frozen=True)
class DrainProgress:
    """A node's drain document (``/admin/node/drain``), checked."""

    draining: bool
    blocks: int
    registers: int
    remaining: int
    failures: int

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> DrainProgress:
        """Read the fields the commands rely on.

        Raises:
            click.ClickException: a field is missing or is not what a node sends.
        """

        def unexpected() -> click.ClickException:
            text = json.dumps(document, sort_keys=True)
            return _fail(f"the node answered an unexpected drain document: {text[:200]}")

        def count(key: str) -> int:
            value = document.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            raise unexpected()

        draining = document.get("draining")
        if not isinstance(draining, bool):
            raise unexpected()
        figures = document.get("repair")
        failures = _count(figures.get("failures")) if isinstance(figures, dict) else 0
        return cls(draining, count("blocks"), count("registers"), count("remaining"), failures)

    def label(self) -> str:
        """What is left, for the progress bar."""
        text = f"{self.remaining} blocks and registers left"
        return text + (f", {_plural(self.failures, 'failure')}" if self.failures else "")


def _wait_drained(
    client: AdminClient, document: dict[str, Any], timeout: float | None
) -> dict[str, Any]:
    """Poll the node's drain until it holds nothing; return the last drain document."""
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = DrainProgress.from_document(document)
    try:
        with _countdown(f"draining {client.address}") as bar:
            while True:
                if not progress.draining:
                    raise _fail(
                        f"the drain of {client.address} was cancelled; the node holds "
                        f"{progress.blocks} blocks and {progress.registers} registers"
                    )
                bar.update(progress.remaining, progress.label())
                if progress.remaining == 0:
                    return document
                if deadline is not None and time.monotonic() >= deadline:
                    raise _fail(
                        f"the drain of {client.address} is not done after {timeout:g} s: "
                        f"{progress.label()} (it goes on; follow it with ballast status)"
                    )
                _sleep_until_next_poll(deadline)
                document = _call(client.drain_progress)
                progress = DrainProgress.from_document(document)
    except KeyboardInterrupt:
        raise _fail(
            f"stopped waiting with {progress.remaining} blocks and registers left; the node "
            f"keeps draining (to stop it: ballast node drain --cancel --admin {client.address})"
        ) from None


@node.command("drain")
@_node_admin_option
@click.option("--wait", is_flag=True, help="show progress until the node holds nothing")
@click.option("--cancel", is_flag=True, help="stop draining: the node takes new data again")
@click.option(
    "--timeout",
    type=_timeout_type,
    default=None,
    metavar="SECONDS",
    help="with --wait: give up (exit status 1) after SECONDS; the drain goes on",
)
@_json_option
def node_drain(admin: str, wait: bool, cancel: bool, timeout: float | None, as_json: bool) -> None:
    """Move every block and register off a node, so that it can be stopped and removed.

    The node stops taking new data at once and hands what it holds to the other members; the
    setting survives restarts until --cancel.
    """
    if cancel and wait:
        raise _fail("--cancel and --wait cannot be combined")
    if timeout is not None and not wait:
        raise _fail("--timeout applies only with --wait")
    client = _admin_client(admin)
    started = time.monotonic()
    document = _call(lambda: client.set_draining(not cancel))
    first = DrainProgress.from_document(document)
    if wait:
        document = _wait_drained(client, document, timeout)
    if as_json:
        _echo_json(document)
    elif cancel:
        click.echo(
            f"drain cancelled: the node takes new data again "
            f"(it holds {first.blocks} blocks and {first.registers} registers)"
        )
    elif first.remaining == 0:
        click.echo("drain complete: the node holds nothing and can be removed")
    elif wait:
        click.echo(
            f"drain complete in {time.monotonic() - started:.0f} s: {first.blocks} blocks and "
            f"{first.registers} registers moved off; the node holds nothing and can be removed"
        )
    else:
        click.echo(
            f"draining: {first.blocks} blocks and {first.registers} registers to move off; "
            f"follow it with: ballast node drain --wait --admin {client.address}"
        )


def _checked(document: dict[str, Any], key: str, kind: type) -> dict[str, Any]:
    """``document``'s repair figures, after checking ``key`` holds a ``kind``.

    Raises:
        click.ClickException: the document is not what a node sends.
    """
    value, figures = document.get(key), document.get("repair")
    well_formed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not (well_formed and isinstance(figures, dict)):
        text = json.dumps(document, sort_keys=True)
        raise _fail(f"the node answered an unexpected document: {text[:200]}")
    return figures


@node.command("repair")
@_node_admin_option
@click.option(
    "--timeout",
    type=_timeout_type,
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="how long to wait for the pass to finish",
)
@_json_option
def node_repair(admin: str, timeout: float, as_json: bool) -> None:
    """Run one repair pass on a node now (nodes also run them by themselves)."""
    client = _admin_client(admin, timeout=timeout)
    document = _call(client.repair)
    figures = _checked(document, "found_work", bool)
    if as_json:
        _echo_json(document)
        return
    outcome = "it copied, rebuilt or moved data" if document["found_work"] else "nothing to do"
    click.echo(
        f"repair pass done: {outcome}; {_count(figures.get('under_target'))} blocks and "
        f"registers were under target, {_human_bytes(_count(figures.get('bytes_to_move')))} "
        "to move"
    )
    click.echo(
        f"since the node started: {_count(figures.get('copies_made'))} copies made, "
        f"{_count(figures.get('fragments_rebuilt'))} fragments rebuilt, "
        f"{_count(figures.get('registers_moved'))} registers moved, "
        f"{_count(figures.get('copies_released'))} copies released, "
        f"{_count(figures.get('tombstones_collected'))} tombstones collected, "
        f"{_plural(_count(figures.get('failures')), 'failure')}"
    )


@node.command("scrub")
@_node_admin_option
@click.option(
    "--timeout",
    type=_timeout_type,
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="how long to wait: a scrub reads everything at the node's [repair] scrub_rate",
)
@_json_option
def node_scrub(admin: str, timeout: float, as_json: bool) -> None:
    """Verify every record a node holds now, replacing corrupt copies from other holders."""
    client = _admin_client(admin, timeout=timeout)
    document = _call(client.scrub)
    figures = _checked(document, "corrupt", int)
    if as_json:
        _echo_json(document)
        return
    corrupt = _count(document["corrupt"])
    line = f"scrub done: {_plural(corrupt, 'corrupt record')} found"
    if corrupt:
        line += "; corrupt copies are replaced from other holders (the node logs any it cannot)"
    click.echo(line)
    click.echo(
        f"since the node started: {_plural(_count(figures.get('scrub_passes')), 'scrub')}, "
        f"{_human_bytes(_count(figures.get('scrubbed_bytes')))} verified, "
        f"{_count(figures.get('corrupt_found'))} corrupt found, "
        f"{_count(figures.get('corrupt_repaired'))} healed"
    )


if __name__ == "__main__":
    main()
