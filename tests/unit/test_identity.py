"""Node keys, network descriptors, passports and their files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import msgpack
import pytest

from dht.errors import CredentialError
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
from tests.dht_strategies import CREATED_AT, make_member, make_network, seeded

# RFC 8032, section 7.1, TEST 1: secret key and public key.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_identity_matches_rfc8032_and_node_id_is_blake2b_160() -> None:
    identity = NodeIdentity.from_seed(RFC8032_SEED)
    assert identity.public_key == RFC8032_PUBLIC
    assert identity.node_id == hashlib.blake2b(RFC8032_PUBLIC, digest_size=20).digest()
    assert identity.seed == RFC8032_SEED
    assert identity.sign(b"") == bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_bad_seed_is_a_credential_error() -> None:
    with pytest.raises(CredentialError, match="32 bytes"):
        NodeIdentity.from_seed(b"short")


def test_network_descriptor_is_signed_and_verifiable() -> None:
    owner, network = make_network("prod")
    assert network.owner_public_key == owner.public_key
    assert network.redundancy == {"replicas": 3}
    network.verify()
    assert NetworkDescriptor.from_bytes(network.to_bytes()) == network
    ec = NetworkDescriptor.create(owner, "ec", {"data": 4, "parity": 2}, created_at=CREATED_AT)
    assert NetworkDescriptor.from_bytes(ec.to_bytes()).redundancy == {"data": 4, "parity": 2}


def test_deterministic_descriptor_fingerprint() -> None:
    _, a = make_network("golden", owner=seeded(1))
    _, b = make_network("golden", owner=seeded(1))
    assert a.to_bytes() == b.to_bytes()
    assert a.fingerprint == b.fingerprint
    _, other = make_network("golden2", owner=seeded(1))
    assert other.fingerprint != a.fingerprint


@pytest.mark.parametrize(
    "policy",
    [{}, {"replicas": 0}, {"replicas": 2, "data": 1}, {"data": 0, "parity": 1}, {"replicas": "3"}],
)
def test_bad_redundancy_policy_is_refused(policy: dict[str, object]) -> None:
    owner = NodeIdentity.generate()
    with pytest.raises(CredentialError):
        NetworkDescriptor.create(owner, "n", policy)  # type: ignore[arg-type]


def test_tampered_descriptor_is_refused() -> None:
    _, network = make_network()
    fields = msgpack.unpackb(network.to_bytes())
    fields["redundancy"] = {"replicas": 1}
    with pytest.raises(CredentialError, match="bad owner signature"):
        NetworkDescriptor.from_bytes(msgpack.packb(fields))


def test_passport_admits_its_node_in_its_network_only() -> None:
    owner, network = make_network("alpha")
    member = make_member(owner, network, role="client")
    member.passport.verify(network, member.identity.public_key)
    assert member.passport.node_id == member.identity.node_id
    assert Passport.from_bytes(member.passport.to_bytes(), network) == member.passport

    # same name, other owner: the signature does not verify
    _, impostor_network = make_network("alpha")
    with pytest.raises(CredentialError, match="bad owner signature"):
        member.passport.verify(impostor_network)
    # other name
    _, beta = make_network("beta", owner=owner)
    with pytest.raises(CredentialError, match="not 'beta'"):
        member.passport.verify(beta)
    # other node
    with pytest.raises(CredentialError, match="another node key"):
        member.passport.verify(network, NodeIdentity.generate().public_key)


def test_tampered_passport_role_is_refused() -> None:
    owner, network = make_network()
    member = make_member(owner, network, role="client")
    fields = msgpack.unpackb(member.passport.to_bytes())
    fields["role"] = "admin"
    with pytest.raises(CredentialError, match="bad owner signature"):
        Passport.from_bytes(msgpack.packb(fields), network)


def test_only_the_owner_issues_passports_with_known_roles() -> None:
    owner, network = make_network()
    node = NodeIdentity.generate()
    with pytest.raises(CredentialError, match="only the owner"):
        Passport.issue(node, network, node.public_key, "storage")
    with pytest.raises(CredentialError, match="unknown role"):
        Passport.issue(owner, network, node.public_key, "emperor")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_round_trip_with_mode_0600_and_no_leftovers(tmp_path: Path) -> None:
    owner, network = make_network()
    member = make_member(owner, network)
    save_identity(tmp_path / "node.key", member.identity)
    save_network(tmp_path / "network", network)
    save_passport(tmp_path / "passport", member.passport)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network", "node.key", "passport"]
    for name in ("node.key", "network", "passport"):
        assert _mode(tmp_path / name) == 0o600
    identity = load_identity(tmp_path / "node.key")
    assert identity.public_key == member.identity.public_key
    assert load_network(tmp_path / "network") == network
    assert load_passport(tmp_path / "passport", network, identity) == member.passport
    # overwriting is atomic and keeps the mode
    save_identity(tmp_path / "node.key", owner)
    assert load_identity(tmp_path / "node.key").public_key == owner.public_key
    assert _mode(tmp_path / "node.key") == 0o600


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    save_identity(tmp_path / "node.key", NodeIdentity.generate())
    os.chmod(tmp_path / "node.key", 0o644)
    with pytest.raises(CredentialError, match="chmod 600"):
        load_identity(tmp_path / "node.key")


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_files_are_refused(tmp_path: Path, cut: int) -> None:
    owner, network = make_network()
    member = make_member(owner, network)
    save_identity(tmp_path / "node.key", member.identity)
    save_passport(tmp_path / "passport", member.passport)
    save_network(tmp_path / "network", network)
    for name in ("node.key", "passport", "network"):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data[:cut])
    with pytest.raises(CredentialError, match="node key file"):
        load_identity(tmp_path / "node.key")
    with pytest.raises(CredentialError, match="passport file"):
        load_passport(tmp_path / "passport", network)
    with pytest.raises(CredentialError, match="network file"):
        load_network(tmp_path / "network")


def test_tampered_passport_file_and_wrong_network_are_refused(tmp_path: Path) -> None:
    owner, network = make_network()
    member = make_member(owner, network)
    path = tmp_path / "passport"
    save_passport(path, member.passport)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # last byte of the signature
    path.write_bytes(bytes(data))
    with pytest.raises(CredentialError, match="bad owner signature"):
        load_passport(path, network)
    save_passport(path, member.passport)
    _, other = make_network("other")
    with pytest.raises(CredentialError, match="network"):
        load_passport(path, other)
    with pytest.raises(CredentialError, match="another node key"):
        load_passport(path, network, NodeIdentity.generate())


def test_wrong_kind_missing_and_mismatched_files_are_refused(tmp_path: Path) -> None:
    owner, network = make_network()
    save_network(tmp_path / "network", network)
    os.chmod(tmp_path / "network", 0o600)
    with pytest.raises(CredentialError, match="not a ballast-node-key file"):
        load_identity(tmp_path / "network")
    with pytest.raises(CredentialError, match="cannot read"):
        load_identity(tmp_path / "missing")
    mismatched = msgpack.packb(
        {
            "format": "ballast-node-key",
            "version": 1,
            "seed": bytes(32),
            "public_key": owner.public_key,
        }
    )
    (tmp_path / "bad.key").write_bytes(mismatched)
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(CredentialError, match="does not match"):
        load_identity(tmp_path / "bad.key")
    (tmp_path / "v2").write_bytes(msgpack.packb({"format": "ballast-network", "version": 2}))
    with pytest.raises(CredentialError, match="unsupported version"):
        load_network(tmp_path / "v2")
