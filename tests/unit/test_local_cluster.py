"""The embedded default's data directory: created once, reused, and refused when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dht.errors import CredentialError
from dht.identity import load_identity, load_passport
from interfaces.gateway_key import GatewayKey, load_gateway_key, save_gateway_key
from interfaces.local_cluster import LocalClusterError, prepare_local_cluster


def test_first_run_creates_everything(tmp_path: Path) -> None:
    cluster = prepare_local_cluster(tmp_path / "data", nodes=3, capacity_bytes=1 << 30)
    assert len(cluster.nodes) == 3
    assert dict(cluster.network.redundancy) == {"replicas": 3}
    ports = {config.listen.port for config in cluster.nodes}
    assert len(ports) == 3
    for config in cluster.nodes:
        identity = load_identity(config.key_file)
        load_passport(config.passport_file, cluster.network, identity)
        assert config.listen not in config.bootstrap
    # Each node joins through the nodes started before it.
    assert [len(config.bootstrap) for config in cluster.nodes] == [0, 1, 2]


def test_restart_keeps_identities_and_ports(tmp_path: Path) -> None:
    first = prepare_local_cluster(tmp_path, nodes=3, capacity_bytes=1 << 30)
    again = prepare_local_cluster(tmp_path, nodes=3, capacity_bytes=1 << 30)
    assert [c.listen for c in first.nodes] == [c.listen for c in again.nodes]
    assert first.network == again.network
    assert first.gateway_key.data_key == again.gateway_key.data_key
    assert [load_identity(c.key_file).public_key for c in first.nodes] == [
        load_identity(c.key_file).public_key for c in again.nodes
    ]


def test_growing_the_cluster_adds_nodes(tmp_path: Path) -> None:
    prepare_local_cluster(tmp_path, nodes=2, capacity_bytes=1 << 30)
    grown = prepare_local_cluster(tmp_path, nodes=4, capacity_bytes=1 << 30)
    assert [c.data_dir.name for c in grown.nodes] == ["node-1", "node-2", "node-3", "node-4"]


@pytest.mark.parametrize("nodes", [0, -1, 33])
def test_node_count_is_checked(tmp_path: Path, nodes: int) -> None:
    with pytest.raises(LocalClusterError, match="--nodes"):
        prepare_local_cluster(tmp_path, nodes=nodes)


def test_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LocalClusterError, match="not writable"):
        prepare_local_cluster(blocker / "data")


def test_damaged_state_file(tmp_path: Path) -> None:
    prepare_local_cluster(tmp_path, nodes=1, capacity_bytes=1 << 30)
    (tmp_path / "cluster.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(LocalClusterError, match="not a Ballast cluster file"):
        prepare_local_cluster(tmp_path, nodes=1)


def test_foreign_network_file(tmp_path: Path) -> None:
    prepare_local_cluster(tmp_path, nodes=1, capacity_bytes=1 << 30)
    other = tmp_path / "other"
    prepare_local_cluster(other, nodes=1, capacity_bytes=1 << 30)
    (tmp_path / "local.network").write_bytes((other / "local.network").read_bytes())
    with pytest.raises(LocalClusterError, match="was not created by"):
        prepare_local_cluster(tmp_path, nodes=1)


def test_gateway_key_round_trip_and_refusals(tmp_path: Path) -> None:
    key = GatewayKey.generate()
    path = tmp_path / "gateway.key"
    save_gateway_key(path, key)
    loaded = load_gateway_key(path)
    assert loaded.data_key == key.data_key
    assert loaded.signing.public_key == key.signing.public_key
    path.chmod(0o644)
    with pytest.raises(CredentialError, match="readable by others"):
        load_gateway_key(path)
    path.chmod(0o600)
    path.write_bytes(b"\x81\xa6format\xa3bad")
    with pytest.raises(CredentialError, match="not a valid gateway key"):
        load_gateway_key(path)
    with pytest.raises(CredentialError, match="cannot read"):
        load_gateway_key(tmp_path / "absent")
