"""Immutable chunks: sealing, addressing, and self-verifying erasure-coded fragments."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
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


#: A chunk sealed by the first implementation (PyNaCl ``SecretBox(KEY).encrypt(PLAIN, NONCE)``):
#: chunks already on disks are in this format and must stay readable.
GOLDEN_KEY = bytes(range(32))
GOLDEN_NONCE = bytes(range(100, 124))
GOLDEN_PLAINTEXT = b"ballast golden vector: sealed by PyNaCl SecretBox.encrypt (format 1)\n" * 2
GOLDEN_SEALED = bytes.fromhex(
    "6465666768696a6b6c6d6e6f707172737475767778797a7b0ed7b83214084efbf4b501637e47df7f"
    "60d8f5a55bc5bac9d7924ff052ea836e5bc94cc8969c6b68c36d2ef16eababf1883f8d562e74f7c4"
    "a673741065679f0ab9becb7671f4402f77c17b62b4c0f30537ab7d44c25e29e6d5ee6c8660a482ff"
    "30f2e327d19a1876fde9b3070b8384aa9fadc91996f96abe4d1a3ce79c0ff05b0a4ae208b8536e6c"
    "2eef7cda9465f614d86f7f7556ba3d386429"
)


def test_chunks_sealed_by_the_first_implementation_still_unseal() -> None:
    assert chunks.unseal(GOLDEN_SEALED, GOLDEN_KEY) == GOLDEN_PLAINTEXT
    assert chunks.unseal(memoryview(GOLDEN_SEALED), GOLDEN_KEY) == GOLDEN_PLAINTEXT


def test_sealing_writes_the_first_format() -> None:
    sealed = chunks._seal(memoryview(GOLDEN_PLAINTEXT), GOLDEN_KEY, GOLDEN_NONCE)
    assert bytes(sealed) == GOLDEN_SEALED
    assert len(sealed) == len(GOLDEN_PLAINTEXT) + chunks.SEAL_OVERHEAD


def _box(box: Callable[..., None], plaintext: bytes, nonce: bytes, key: bytes) -> bytes:
    out = bytearray(chunks.SEAL_OVERHEAD + len(plaintext))
    out[: chunks.NONCE_BYTES] = nonce
    box(out, memoryview(plaintext), nonce, key)
    return bytes(out)


def test_both_secretbox_implementations_keep_the_first_format() -> None:
    """The native one (XSalsa20 kernel + OpenSSL's Poly1305) is used where vectorised."""
    assert (chunks._box is chunks._box_native) == (native.xsalsa20_kernel() != "portable")
    for box, open_ in (
        (chunks._box_native, chunks._open_native),
        (chunks._box_sodium, chunks._open_sodium),
    ):
        assert _box(box, GOLDEN_PLAINTEXT, GOLDEN_NONCE, GOLDEN_KEY) == GOLDEN_SEALED
        assert open_(memoryview(GOLDEN_SEALED), GOLDEN_KEY) == bytearray(GOLDEN_PLAINTEXT)


@settings(max_examples=300, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    flip=st.integers(min_value=0),
)
def test_native_and_libsodium_secretboxes_agree_byte_for_byte(
    plaintext: bytes, key: bytes, nonce: bytes, flip: int
) -> None:
    sealed = _box(chunks._box_native, plaintext, nonce, key)
    assert sealed == _box(chunks._box_sodium, plaintext, nonce, key)
    opened = chunks._open_native(memoryview(sealed), key)
    assert type(opened) is bytes  # written straight into the bytes unseal returns: no copy
    assert opened == plaintext
    assert chunks._open_sodium(memoryview(sealed), key) == bytearray(plaintext)
    tampered = bytearray(sealed)
    tampered[flip % len(sealed)] ^= 1 << (flip % 8)
    assert chunks._open_native(memoryview(tampered), key) is None
    assert chunks._open_sodium(memoryview(tampered), key) is None
    other_key = bytes([key[0] ^ 1]) + key[1:]
    assert chunks._open_native(memoryview(sealed), other_key) is None


def test_native_secretbox_on_a_whole_chunk() -> None:
    plaintext = bytes(range(256)) * (4 * 4096 + 3)
    nonce, key = bytes(range(24)), bytes(range(1, 33))
    sealed = _box(chunks._box_native, plaintext, nonce, key)
    assert sealed == _box(chunks._box_sodium, plaintext, nonce, key)
    opened = chunks._open_native(memoryview(sealed), key)
    assert type(opened) is bytes  # written straight into the bytes unseal returns: no copy
    assert opened == plaintext


@pytest.mark.parametrize("size", [0, 1, 4096])
def test_seal_any_size_and_buffer_type(size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for given_as in (plaintext, bytearray(plaintext), memoryview(plaintext)):
        sealed = chunks.seal(given_as)
        assert len(sealed.ciphertext) == size + chunks.SEAL_OVERHEAD
        assert chunks.unseal(sealed.ciphertext, sealed.key) == plaintext
        assert chunks.unseal(memoryview(sealed.ciphertext), sealed.key) == plaintext


@pytest.mark.parametrize("size", [0, 1, 2, 4095, 4096, 4097, 1 << 20])
def test_unseal_returns_bytes_and_leaves_the_ciphertext_alone(size: int) -> None:
    plaintext = bytes((i * 7 + 1) % 256 for i in range(min(size, 4097))) * (size // 4097 + 1)
    plaintext = plaintext[:size]
    sealed = chunks.seal(plaintext)
    ciphertext = bytes(sealed.ciphertext)
    first = chunks.unseal(ciphertext, sealed.key)
    assert type(first) is bytes
    assert first == plaintext == chunks.unseal(ciphertext, sealed.key)
    assert ciphertext == bytes(sealed.ciphertext)


@pytest.mark.parametrize("length", [0, 1, chunks.SEAL_OVERHEAD - 1, chunks.SEAL_OVERHEAD])
def test_unseal_of_short_or_empty_box_is_corrupt(length: int) -> None:
    with pytest.raises(Corrupt):
        chunks.unseal(bytes(length), bytes(32))


def test_fragments_are_read_only_views_without_copies() -> None:
    ciphertext = chunks.seal(PATTERN * 50).ciphertext
    encoded = chunks.encode_fragments(ciphertext, 4, 2)
    assert all(f.readonly for f in encoded.fragments)
    # a data fragment is the ciphertext's own memory, not a copy of it
    assert encoded.fragments[0].obj is ciphertext
    assert b"".join(encoded.fragments[:4])[: len(ciphertext)] == ciphertext


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


def test_replica_address_is_blake3_256_of_the_domain_and_the_ciphertext() -> None:
    ciphertext = chunks.seal(PATTERN).ciphertext
    expected = blake3.blake3(b"ballast-chunk\0" + bytes(ciphertext)).digest()
    assert chunks.chunk_address(ciphertext) == expected
    assert chunks.chunk_address(memoryview(ciphertext)) == expected


def test_replicas_addressed_before_blake3_still_verify() -> None:
    """A chunk written with a BLAKE2b-256 address stays readable and repairable."""
    ciphertext = bytes(chunks.seal(PATTERN).ciphertext)
    legacy = BlockAddress(hashlib.blake2b(b"ballast-chunk\0" + ciphertext, digest_size=32).digest())
    assert legacy != chunks.chunk_address(ciphertext)
    assert chunks.is_replica_of(legacy, ciphertext)
    chunks.verify_replica(legacy, ciphertext)
    tampered = bytearray(ciphertext)
    tampered[100] ^= 0x01
    assert not chunks.is_replica_of(legacy, bytes(tampered))
    with pytest.raises(Corrupt):
        chunks.verify_replica(legacy, bytes(tampered))
    # neither hash of other bytes names the chunk
    assert not chunks.is_replica_of(chunks.chunk_address(ciphertext), bytes(tampered))


def test_new_manifests_list_blake3_fragment_hashes() -> None:
    encoded = chunks.encode_fragments(chunks.seal(PATTERN).ciphertext, 4, 2)
    assert encoded.manifest.version == 2
    for fragment, digest in zip(encoded.fragments, encoded.manifest.fragment_hashes, strict=True):
        assert digest == blake3.blake3(fragment).digest()
    decoded = chunks.verify_manifest(encoded.address, encoded.manifest.to_bytes())
    assert decoded == encoded.manifest


def test_version_1_manifests_with_blake2b_fragment_hashes_still_verify_and_rebuild() -> None:
    """Erasure-coded chunks written before BLAKE3 decode and repair as before."""
    ciphertext = chunks.seal(PATTERN).ciphertext
    fragments = chunks.encode_fragments(ciphertext, 4, 2).fragments
    legacy = chunks.Manifest(
        data=4,
        parity=2,
        size=len(ciphertext),
        fragment_hashes=tuple(hashlib.blake2b(f, digest_size=32).digest() for f in fragments),
        version=1,
    )
    manifest = chunks.verify_manifest(legacy.address(), legacy.to_bytes())
    assert manifest.version == 1
    chosen = {i: fragments[i] for i in (1, 2, 4, 5)}
    assert bytes(chunks.decode_verified_fragments(manifest, chosen)) == bytes(ciphertext)
    rebuilt = chunks.rebuild_fragments(manifest, chosen, [0, 3])
    assert rebuilt == {0: bytes(fragments[0]), 3: bytes(fragments[3])}
    # the version decides the hash: the same fragments under a version-2 label do not match
    relabelled = chunks.Manifest(
        data=4, parity=2, size=len(ciphertext), fragment_hashes=legacy.fragment_hashes
    )
    with pytest.raises(Corrupt, match="fragment 0"):
        chunks.verify_fragment(relabelled, 0, fragments[0])


@pytest.mark.parametrize("version", [0, 3, True, 2.0, "2", None])
def test_unknown_manifest_versions_are_corrupt(version: object) -> None:
    raw = msgpack.packb([version, 1, 0, 4, [bytes(32)]], use_bin_type=True)
    with pytest.raises(Corrupt, match="version"):
        chunks.Manifest.from_bytes(raw)


def test_every_four_of_six_fragments_rebuild_the_chunk() -> None:
    sealed = chunks.seal(PATTERN)
    encoded = chunks.encode_fragments(sealed.ciphertext, 4, 2)
    manifest = chunks.verify_manifest(encoded.address, encoded.manifest.to_bytes())
    for subset in itertools.combinations(range(6), 4):
        chosen = {i: encoded.fragments[i] for i in subset}
        got = chunks.decode_fragments(manifest, chosen)
        assert bytes(got) == sealed.ciphertext
        assert chunks.decode_verified_fragments(manifest, chosen) == got
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


_UNSEAL_CYCLE_SCRIPT = """
import gc, os
import trio
from storage import chunks
from storage.errors import Corrupt

sealed = chunks.seal(os.urandom(300_000))
payload = bytes(sealed.ciphertext)

def open_replica(key):  # returns the error, as the client's read path does
    try:
        return chunks.unseal(payload, key)
    except Corrupt as exc:
        return exc

async def read(found):
    opened = open_replica(bytes(32))
    found.append(opened)
    if isinstance(found[0], Corrupt):
        raise found[0]  # found -> exception -> traceback -> this frame -> found

async def main():
    for i in range(200):
        try:
            await read([])
        except Corrupt:
            pass
        if i % 10 == 0:
            gc.collect()

trio.run(main)
print("collected")
"""


def test_a_failed_unseal_in_a_reference_cycle_is_collected_safely() -> None:
    """A wrong key makes ``unseal`` raise; the error, kept in a reference cycle with the
    frames of its traceback, must be collectable. With a buffer export still open in
    ``unseal``'s frame, CPython 3.11's collector clears the memoryview under the export
    ("Exception ignored in tp_clear") and the process later dies of a segmentation fault:
    run in a child process, so that such a crash fails this test alone."""
    done = subprocess.run(
        [sys.executable, "-c", _UNSEAL_CYCLE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "collected" in done.stdout
    assert "tp_clear" not in done.stderr, done.stderr[-2000:]
