"""Register addresses, signatures and payload sealing (storage.registers), without a network."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack
import pytest

from dht.identity import NodeIdentity
from dht.ids import NodeId
from storage.errors import Corrupt, InvalidArgument
from storage.paxos import RegisterValue
from storage.registers import (
    MAX_NAME_BYTES,
    ClientKeys,
    open_payload,
    parse_writer,
    register_address,
    seal_payload,
    sign_register_value,
    verify_register_value,
    writer_field,
)

OWNER = NodeIdentity.from_seed(b"\x01" * 32)
MALLORY = NodeIdentity.from_seed(b"\x02" * 32)
REPLICAS = (NodeId(b"a" * 20), NodeId(b"b" * 20), NodeId(b"c" * 20))


def value(payload: bytes | None = b"ciphertext", version: int = 1) -> RegisterValue:
    return RegisterValue(version=version, replica_set=REPLICAS, payload=payload)


def test_address_is_blake2b_256_of_a_domain_and_the_length_prefixed_owner_and_name() -> None:
    address = register_address(OWNER.public_key, b"root")
    expected = hashlib.blake2b(
        b"ballast-register-address-v1\0"
        + msgpack.packb([OWNER.public_key, b"root"], use_bin_type=True),
        digest_size=32,
    ).digest()
    assert address == expected
    assert len(address) == 32
    assert register_address(OWNER.public_key, b"root") == address  # deterministic
    assert register_address(OWNER.public_key, b"root2") != address
    assert register_address(MALLORY.public_key, b"root") != address
    assert register_address(OWNER.public_key, b"") != register_address(OWNER.public_key, b"\0")


def test_address_refuses_bad_keys_and_names() -> None:
    with pytest.raises(InvalidArgument):
        register_address(b"short", b"name")
    with pytest.raises(InvalidArgument):
        register_address(OWNER.public_key, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        register_address(OWNER.public_key, b"x" * (MAX_NAME_BYTES + 1))


def test_writer_field_round_trips_and_garbage_parses_to_none() -> None:
    writer = writer_field(OWNER.public_key, b"name")
    assert parse_writer(writer) == (OWNER.public_key, b"name")
    for garbage in (
        b"",
        b"\xc1",
        msgpack.packb([OWNER.public_key]),
        msgpack.packb([b"short", b"name"]),
        msgpack.packb([OWNER.public_key, "text"]),
        msgpack.packb({"a": 1}),
        msgpack.packb([OWNER.public_key, b"x" * (MAX_NAME_BYTES + 1)]),
    ):
        assert parse_writer(garbage) is None


def test_a_signed_value_verifies_at_its_address_only() -> None:
    signed = sign_register_value(OWNER, b"name", value())
    address = register_address(OWNER.public_key, b"name")
    assert signed.writer == writer_field(OWNER.public_key, b"name")
    assert verify_register_value(address, signed)
    assert not verify_register_value(register_address(OWNER.public_key, b"other"), signed)
    tombstone = sign_register_value(OWNER, b"name", value(None, version=2))
    assert verify_register_value(address, tombstone)


def test_tampering_with_any_signed_field_breaks_the_signature() -> None:
    address = register_address(OWNER.public_key, b"name")
    signed = sign_register_value(OWNER, b"name", value())
    tampered = [
        replace(signed, payload=b"ciphertexT"),
        replace(signed, payload=None),
        replace(signed, version=2),
        replace(signed, writer=writer_field(OWNER.public_key, b"namE")),
        replace(signed, signature=bytes(64)),
        replace(signed, signature=signed.signature[:-1] + bytes([signed.signature[-1] ^ 1])),
        replace(signed, signature=b""),
        replace(signed, writer=b"garbage"),
    ]
    for bad in tampered:
        assert not verify_register_value(address, bad), bad
    # The replica sets are not signed: moving a block is the storage nodes' decision.
    moved = replace(signed, replica_set=REPLICAS[:2], next_replica_set=REPLICAS[1:])
    assert verify_register_value(address, moved)


def test_another_key_cannot_write_the_owners_register() -> None:
    address = register_address(OWNER.public_key, b"name")
    # Mallory signs with her key but claims the owner's writer field...
    claimed = replace(value(), writer=writer_field(OWNER.public_key, b"name"))
    forged = replace(claimed, signature=MALLORY.sign(claimed.signed_bytes()))
    assert not verify_register_value(address, forged)
    # ...or signs honestly as herself: valid, but for her own register's address only.
    honest = sign_register_value(MALLORY, b"name", value())
    assert not verify_register_value(address, honest)
    assert verify_register_value(register_address(MALLORY.public_key, b"name"), honest)


def test_payloads_are_sealed_with_the_data_key() -> None:
    keys = ClientKeys.generate()
    sealed = seal_payload(keys.data_key, b"plaintext")
    assert b"plaintext" not in sealed
    assert seal_payload(keys.data_key, b"plaintext") != sealed  # fresh nonce each time
    assert open_payload(keys.data_key, sealed) == b"plaintext"
    with pytest.raises(Corrupt):
        open_payload(ClientKeys.generate().data_key, sealed)
    with pytest.raises(Corrupt):
        open_payload(keys.data_key, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(Corrupt):
        open_payload(keys.data_key, b"short")


def test_client_keys_check_the_data_key() -> None:
    with pytest.raises(InvalidArgument):
        ClientKeys(OWNER, b"short")
    keys = ClientKeys(OWNER, b"k" * 32)
    assert keys.signing is OWNER
    assert "k" * 32 not in repr(keys)
