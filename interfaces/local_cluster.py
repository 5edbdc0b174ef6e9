"""The embedded default: a complete local deployment in one data directory.

Layout of the data directory (created on first use, reused afterwards)::

    owner.key         the network owner's key (issues the passports below)
    local.network     the network descriptor
    gateway.key       the key that owns the S3 gateway's registers (buckets, objects, S3 keys)
    cluster.json      the nodes and the loopback ports they keep across restarts
    node-1/ ...       one directory per node: node.key, network, passport, silo/

Restarting with the same directory keeps every node's identity, port and data.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dht.errors import CredentialError
from dht.identity import (
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

from .config import NodeConfig
from .gateway_key import GatewayKey, load_gateway_key, save_gateway_key

NETWORK_NAME = "local"
STATE_FILE = "cluster.json"
STATE_VERSION = 1
MAX_LOCAL_NODES = 32


class LocalClusterError(Exception):
    """The data directory cannot hold a local cluster (unwritable, damaged, inconsistent)."""


@dataclass(frozen=True)
class LocalCluster:
    """A prepared local deployment: node configurations and the gateway's key."""

    data_dir: Path
    network: NetworkDescriptor
    nodes: tuple[NodeConfig, ...]
    gateway_key: GatewayKey


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LocalClusterError(f"cannot read {path}: {error}") from None
    if (
        not isinstance(state, dict)
        or state.get("version") != STATE_VERSION
        or not isinstance(state.get("nodes"), list)
        or not all(
            isinstance(n, dict) and isinstance(n.get("port"), int) and isinstance(n.get("dir"), str)
            for n in state["nodes"]
        )
    ):
        raise LocalClusterError(f"{path} is not a Ballast cluster file (remove it to start over)")
    return state


def _default_redundancy(nodes: int) -> dict[str, int]:
    return {"replicas": min(3, nodes)}


def prepare_local_cluster(
    data_dir: Path, *, nodes: int = 3, capacity_bytes: int | None = None
) -> LocalCluster:
    """Create (or reuse) the network, node keys, passports and ports under ``data_dir``.

    Asking for more nodes than the directory holds adds nodes; asking for fewer runs the first
    ``nodes`` of them (their data stays on disk).

    Raises:
        LocalClusterError: the directory is unwritable, damaged, or holds foreign credentials.
    """
    if not 1 <= nodes <= MAX_LOCAL_NODES:
        raise LocalClusterError(f"--nodes must be between 1 and {MAX_LOCAL_NODES}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise LocalClusterError(
            f"data directory {data_dir} is not writable: {error.strerror}"
        ) from None
    try:
        return _prepare(data_dir, nodes, capacity_bytes)
    except CredentialError as error:
        raise LocalClusterError(f"{data_dir}: {error}") from None
    except OSError as error:
        raise LocalClusterError(f"{data_dir}: {error.strerror or error}") from None


def _prepare(data_dir: Path, nodes: int, capacity_bytes: int | None) -> LocalCluster:
    owner_path = data_dir / "owner.key"
    network_path = data_dir / f"{NETWORK_NAME}.network"
    gateway_path = data_dir / "gateway.key"
    state_path = data_dir / STATE_FILE
    if owner_path.exists():
        owner = load_identity(owner_path)
        network = load_network(network_path)
        if network.owner_public_key != owner.public_key:
            raise LocalClusterError(f"{network_path} was not created by {owner_path}")
    else:
        owner = NodeIdentity.generate()
        network = NetworkDescriptor.create(owner, NETWORK_NAME, _default_redundancy(nodes))
        save_identity(owner_path, owner)
        save_network(network_path, network)
    if gateway_path.exists():
        gateway_key = load_gateway_key(gateway_path)
    else:
        gateway_key = GatewayKey.generate()
        save_gateway_key(gateway_path, gateway_key)

    state: dict[str, Any] = (
        _read_state(state_path)
        if state_path.exists()
        else {"version": STATE_VERSION, "network": NETWORK_NAME, "nodes": []}
    )
    entries: list[dict[str, Any]] = state["nodes"]
    while len(entries) < nodes:
        entries.append({"dir": f"node-{len(entries) + 1}", "port": _free_port()})
    state_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    chosen = entries[:nodes]
    if capacity_bytes is None:
        capacity_bytes = max(1 << 30, int(shutil.disk_usage(data_dir).free * 0.9) // nodes)
    addresses = [Address("127.0.0.1", entry["port"]) for entry in chosen]
    configs = []
    for index, (entry, address) in enumerate(zip(chosen, addresses, strict=True)):
        node_dir = data_dir / entry["dir"]
        node_dir.mkdir(exist_ok=True)
        # The nodes start in order: each joins through the ones already running, so none
        # waits on (or warns about) a peer that is not up yet.
        config = NodeConfig(
            data_dir=node_dir,
            listen=address,
            capacity_bytes=capacity_bytes,
            bootstrap=tuple(addresses[:index]),
            eviction_delay=30.0,
        )
        if not config.key_file.exists():
            identity = NodeIdentity.generate()
            save_identity(config.key_file, identity)
        else:
            identity = load_identity(config.key_file)
        if not config.passport_file.exists():
            save_passport(
                config.passport_file, Passport.issue(owner, network, identity.public_key, "storage")
            )
        if not config.network_file.exists():
            save_network(config.network_file, network)
        configs.append(config)
    return LocalCluster(data_dir, network, tuple(configs), gateway_key)
