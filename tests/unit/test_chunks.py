"""Immutable chunks: sealing, addressing, and self-verifying erasure-coded fragments."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import chunks
from storage.errors import Corrupt, InvalidArgument
from storage.ids import BlockAddress

PATTERN = b"ballast test pattern " * 100


def test_seal_round_trip_and_no_plaintext_in_ciphertext() -> None:
    sealed = chunks.seal(PATTERN)
    assert b"ballast test pattern" not in sealed.ciphertext
    assert chunks.unseal(sealed.ciphertext, sealed.key) == PATTERN


def test_sealing_twice_gives_different_ciphertexts_and_addresses() -> None:
    a, b = chunks.seal(PATTERN), chunks.seal(PATTERN)
    assert a.ciphertext != b.ciphertext
    assert chunks.chunk_address(a.ciphertext) != chunks.chunk_address(b.ciphertext)


def test_unseal_with_wrong_key_or_tampered_bytes_is_corrupt() -> None:
    sealed = chunks.seal(PATTERN)
    with pytest.raises(Corrupt):
        chunks.unseal(sealed.ciphertext, bytes(32))
    tampered = bytearray(sealed.ciphertext)
    tampered[40] ^= 1
    with pytest.raises(Corrupt):
        chunks.unseal(bytes(tampered), sealed.key)


@pytest.mark.parametrize("key", [b"", b"short", bytes(33)])
def test_bad_key_length_is_invalid_argument(key: bytes) -> None:
    with pytest.raises(InvalidArgument):
        chunks.seal(b"x", key)
    with pytest.raises(InvalidArgument):
        chunks.unseal(b"x" * 64, key)


def test_replica_verification() -> None:
    sealed = chunks.seal(PATTERN)
    address = chunks.chunk_address(sealed.ciphertext)
    chunks.verify_replica(address, sealed.ciphertext)
    tampered = bytearray(sealed.ciphertext)
    tampered[-1] ^= 0x01  # always a different byte (replacing it could be a no-op)
    with pytest.raises(Corrupt):
        chunks.verify_replica(address, bytes(tampered))


def test_every_four_of_six_fragments_rebuild_the_chunk() -> None:
    sealed = chunks.seal(PATTERN)
    encoded = chunks.encode_fragments(sealed.ciphertext, 4, 2)
    manifest = chunks.verify_manifest(encoded.address, encoded.manifest.to_bytes())
    for subset in itertools.combinations(range(6), 4):
        got = chunks.decode_fragments(manifest, {i: encoded.fragments[i] for i in subset})
        assert got == sealed.ciphertext
    assert chunks.unseal(got, sealed.key) == PATTERN


def test_altered_fragment_is_identified() -> None:
    encoded = chunks.encode_fragments(chunks.seal(PATTERN).ciphertext, 4, 2)
    bad = bytearray(encoded.fragments[2])
    bad[0] ^= 0xFF
    with pytest.raises(Corrupt, match="fragment 2"):
        chunks.verify_fragment(encoded.manifest, 2, bytes(bad))
    with pytest.raises(Corrupt):
        chunks.decode_fragments(
            encoded.manifest,
            {
                0: encoded.fragments[0],
                1: encoded.fragments[1],
                2: bytes(bad),
                3: encoded.fragments[3],
            },
        )


def test_altered_manifest_does_not_match_the_address() -> None:
    encoded = chunks.encode_fragments(b"some ciphertext bytes", 3, 2)
    forged = chunks.Manifest(
        data=3, parity=2, size=encoded.manifest.size, fragment_hashes=(bytes(32),) * 5
    )
    with pytest.raises(Corrupt, match="manifest does not match"):
        chunks.verify_manifest(encoded.address, forged.to_bytes())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        b"\x95\x01\x04\x02\x0a\x90",
        b"\x95\x02\x01\x01\x00\x91\xc4\x00",
    ],
)
def test_malformed_manifest_is_corrupt(raw: bytes) -> None:
    with pytest.raises(Corrupt):
        chunks.Manifest.from_bytes(raw)


def test_rebuild_lost_fragments_for_repair() -> None:
    encoded = chunks.encode_fragments(chunks.seal(PATTERN).ciphertext, 4, 2)
    survivors = {i: encoded.fragments[i] for i in (1, 3, 4, 5)}
    rebuilt = chunks.rebuild_fragments(encoded.manifest, survivors, [0, 2])
    assert rebuilt == {0: encoded.fragments[0], 2: encoded.fragments[2]}


def test_too_few_fragments_is_invalid_argument() -> None:
    encoded = chunks.encode_fragments(b"abcdefgh", 4, 2)
    with pytest.raises(InvalidArgument):
        chunks.decode_fragments(encoded.manifest, {0: encoded.fragments[0]})


def test_manifest_address_and_chunk_address_are_domain_separated() -> None:
    encoded = chunks.encode_fragments(b"x", 1, 0)
    raw = encoded.manifest.to_bytes()
    assert chunks.chunk_address(raw) != encoded.address
    assert isinstance(encoded.address, bytes)
    assert len(BlockAddress(encoded.address)) == 32


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    data=st.integers(1, 8),
    parity=st.integers(0, 4),
    seed=st.randoms(use_true_random=False),
)
def test_any_k_fragments_decode(payload: bytes, data: int, parity: int, seed: object) -> None:
    import random

    assert isinstance(seed, random.Random)
    encoded = chunks.encode_fragments(payload, data, parity)
    manifest = chunks.Manifest.from_bytes(encoded.manifest.to_bytes())
    assert manifest == encoded.manifest
    keep = seed.sample(range(data + parity), data)
    got = chunks.decode_fragments(manifest, {i: encoded.fragments[i] for i in keep})
    assert got == payload


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_manifest_only_raises_corrupt(raw: bytes) -> None:
    with contextlib.suppress(Corrupt):
        chunks.Manifest.from_bytes(raw)
