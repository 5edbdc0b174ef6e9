"""Unit tests of the native XSalsa20 stream cipher: every kernel against libsodium's
``crypto_secretbox`` (its ciphertext is the message XOR keystream bytes 32.., its tag the
Poly1305 of the ciphertext under keystream bytes 0..31) and against a pure-Python Salsa20,
at any offset, length and alignment, in place, under ``BALLAST_NATIVE_PORTABLE``, with the
GIL released, and with bad arguments."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_secretbox

import native
from native import _xsalsa20
from tests.native_env import assert_gil_released, run_with_portable_env

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    Xor = Callable[[ReadableBuffer, WriteableBuffer, ReadableBuffer, ReadableBuffer, int], None]

KERNELS = _xsalsa20.xsalsa20_kernels()


def _kernel_fn(kernel: str) -> Xor:
    """:func:`native.xsalsa20_xor` computed by one named kernel."""
    return lambda source, target, nonce, key, skip: _xsalsa20.xsalsa20_xor_with(
        kernel, source, target, nonce, key, skip
    )


# Every kernel this CPU runs, plus "auto" for the public function.
NATIVE: dict[str, Xor] = {"auto": native.xsalsa20_xor} | {k: _kernel_fn(k) for k in KERNELS}
MULTI_BLOCK_SIZES = (1023, 1024, 1025, 64 * 16 * 3 + 7)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """``a ^ b`` byte by byte (equal lengths)."""
    assert len(a) == len(b)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def run(
    fn: Xor, data: ReadableBuffer, nonce: ReadableBuffer, key: ReadableBuffer, skip: int
) -> bytes:
    """``fn`` into a fresh buffer; return the result."""
    out = bytearray(memoryview(data).nbytes)
    fn(data, out, nonce, key, skip)
    return bytes(out)


# ---- references --------------------------------------------------------------------------


def poly1305_key(nonce: bytes, key: bytes) -> bytes:
    """Keystream bytes 0..31 (secretbox's one-time Poly1305 key), by the native kernel and
    checked against libsodium's tag: a wrong key would not reproduce it."""
    one_time = run(native.xsalsa20_xor, bytes(32), nonce, key, 0)
    probe = b"poly1305 key probe"
    box = crypto_secretbox(probe, nonce, key)
    assert Poly1305.generate_tag(one_time, box[16:]) == box[:16]
    return one_time


def reference_keystream(nonce: bytes, key: bytes, size: int) -> bytes:
    """XSalsa20 keystream bytes 0..size: 0..31 as :func:`poly1305_key`, the rest from
    libsodium's secretbox of zeros."""
    tail = crypto_secretbox(bytes(max(0, size - 32)), nonce, key)[16:]
    return (poly1305_key(nonce, key) + tail)[:size]


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF


_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_QUARTERS = (
    (0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),  # columns
    (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14),  # rows
)  # fmt: skip


def _salsa_rounds(state: list[int]) -> list[int]:
    x = list(state)
    for _ in range(10):
        for a, b, c, d in _QUARTERS:
            x[b] ^= _rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
            x[c] ^= _rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
            x[d] ^= _rotl((x[c] + x[b]) & 0xFFFFFFFF, 13)
            x[a] ^= _rotl((x[d] + x[c]) & 0xFFFFFFFF, 18)
    return x


def _salsa_state(key: bytes, middle: bytes) -> list[int]:
    k = struct.unpack("<8I", key)
    m = struct.unpack("<4I", middle)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *m, _SIGMA[2], *k[4:], _SIGMA[3]]


def pure_keystream_block(nonce: bytes, key: bytes, counter: int) -> bytes:
    """Block ``counter`` of the XSalsa20 keystream, in pure Python (slow, independent)."""
    hs = _salsa_rounds(_salsa_state(key, nonce[:16]))
    subkey = struct.pack("<8I", *(hs[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))
    state = _salsa_state(subkey, nonce[16:24] + struct.pack("<Q", counter))
    mixed = _salsa_rounds(state)
    return struct.pack("<16I", *((a + b) & 0xFFFFFFFF for a, b in zip(mixed, state, strict=True)))


def pure_keystream(nonce: bytes, key: bytes, skip: int, size: int) -> bytes:
    """Keystream bytes ``skip .. skip + size`` (block counter mod 2**64), in pure Python."""
    first, last = skip // 64, (skip + size + 63) // 64
    blocks = b"".join(pure_keystream_block(nonce, key, n % 2**64) for n in range(first, last))
    return blocks[skip % 64 : skip % 64 + size]


# ---- against libsodium -------------------------------------------------------------------


def test_reference_helpers_agree() -> None:
    """The pure-Python Salsa20 and the libsodium-derived keystream are the same stream."""
    rng = random.Random(1)
    key, nonce = rng.randbytes(32), rng.randbytes(24)
    assert pure_keystream(nonce, key, 0, 200) == reference_keystream(nonce, key, 200)


@pytest.mark.parametrize("kernel", NATIVE)
@settings(max_examples=120, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    message=st.one_of(
        st.binary(max_size=3000),
        st.sampled_from(MULTI_BLOCK_SIZES).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    ),
)
def test_secretbox_ciphertext_and_tag_match_libsodium(
    kernel: str, key: bytes, nonce: bytes, message: bytes
) -> None:
    box = crypto_secretbox(message, nonce, key)
    fn = NATIVE[kernel]
    ciphertext = run(fn, message, nonce, key, 32)
    assert ciphertext == box[16:]
    one_time = run(fn, bytes(32), nonce, key, 0)
    assert Poly1305.generate_tag(one_time, ciphertext) == box[:16]


@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    size=st.one_of(st.integers(0, 3000), st.sampled_from(MULTI_BLOCK_SIZES)),
    skip=st.integers(0, 200),
    start=st.integers(0, 15),
    seed=st.integers(0, 2**32),
)
def test_any_skip_and_alignment_match_the_reference(
    key: bytes, nonce: bytes, size: int, skip: int, start: int, seed: int
) -> None:
    """Every kernel, any skip 0..200, source and target views at any alignment."""
    message = payload(size, seed)
    expected = xor_bytes(message, reference_keystream(nonce, key, skip + size)[skip:])
    for fn in NATIVE.values():
        source = memoryview(bytearray(start) + message)[start:]
        target = memoryview(bytearray(size + 16))[(start * 7) % 16 :][:size]
        fn(source, target, nonce, key, skip)
        assert bytes(target) == expected


@pytest.mark.parametrize("kernel", NATIVE)
def test_every_length_up_to_1100(kernel: str) -> None:
    """Each length 0..1100 at a few skips (block-aligned, inside a block, secretbox's)."""
    rng = random.Random(2)
    key, nonce = rng.randbytes(32), rng.randbytes(24)
    message = rng.randbytes(1100)
    stream = reference_keystream(nonce, key, 1100 + 130)
    fn = NATIVE[kernel]
    for skip in (0, 32, 64, 65, 129):
        expected = xor_bytes(message, stream[skip : skip + 1100])
        out = bytearray(1100)
        for size in range(1101):
            view = memoryview(out)[:size]
            fn(message[:size], view, nonce, key, skip)
            assert out[:size] == expected[:size], (skip, size)


@pytest.mark.parametrize("kernel", NATIVE)
def test_large_input_matches_libsodium(kernel: str) -> None:
    """4 MiB + 40 bytes: secretbox's ciphertext and tag, also in two chained pieces."""
    rng = random.Random(3)
    key, nonce = rng.randbytes(32), rng.randbytes(24)
    message = rng.randbytes((4 << 20) + 40)
    box = crypto_secretbox(message, nonce, key)
    fn = NATIVE[kernel]
    out = bytearray(len(message))
    fn(message, out, nonce, key, 32)
    assert out == box[16:]
    cut = 1_234_567
    view = memoryview(out)
    fn(memoryview(message)[:cut], view[:cut], nonce, key, 32)
    fn(memoryview(message)[cut:], view[cut:], nonce, key, 32 + cut)
    assert out == box[16:]
    assert Poly1305.generate_tag(run(fn, bytes(32), nonce, key, 0), bytes(out)) == box[:16]


@pytest.mark.parametrize("kernel", NATIVE)
def test_block_counter_carries_into_its_high_word(kernel: str) -> None:
    """Around block 2**32 (the carry into counter word 9) and 2**64 (wrap), against the
    pure-Python Salsa20."""
    rng = random.Random(4)
    key, nonce = rng.randbytes(32), rng.randbytes(24)
    message = rng.randbytes(64 * 40 + 9)
    fn = NATIVE[kernel]
    for skip in (64 * (2**32 - 20) + 5, 64 * (2**32 - 3), 2**64 - 64 * 7 - 3):
        expected = xor_bytes(message, pure_keystream(nonce, key, skip, len(message)))
        assert run(fn, message, nonce, key, skip) == expected, skip


def test_kernels_agree_on_random_inputs() -> None:
    rng = random.Random(5)
    for _ in range(200):
        key, nonce = rng.randbytes(32), rng.randbytes(24)
        message = rng.randbytes(rng.randrange(5000))
        skip = rng.choice((0, 32, rng.randrange(10_000), rng.randrange(2**64)))
        results = {run(fn, message, nonce, key, skip) for fn in NATIVE.values()}
        assert len(results) == 1


# ---- buffers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", NATIVE)
def test_in_place(kernel: str) -> None:
    rng = random.Random(6)
    key, nonce = rng.randbytes(32), rng.randbytes(24)
    fn = NATIVE[kernel]
    for size in (0, 1, 63, 64, 100, 1024, 5000, 70_001):
        message = rng.randbytes(size)
        expected = crypto_secretbox(message, nonce, key)[16:]
        buffer = bytearray(message)
        fn(buffer, buffer, nonce, key, 32)
        assert buffer == expected
        fn(buffer, buffer, nonce, key, 32)  # XOR twice: back to the message
        assert buffer == message
        view = memoryview(buffer)[3:]
        fn(view, view, nonce, key, 32)
        assert bytes(view) == crypto_secretbox(message[3:], nonce, key)[16:]


@pytest.mark.parametrize("kernel", NATIVE)
def test_any_contiguous_buffer_is_taken_as_bytes(kernel: str) -> None:
    fn = NATIVE[kernel]
    key, nonce = payload(32, 7), payload(24, 8)
    data = payload(4100, 9)
    expected = run(fn, data, nonce, key, 32)
    assert run(fn, bytearray(data), nonce, key, 32) == expected
    assert run(fn, memoryview(data).toreadonly(), nonce, key, 32) == expected
    assert run(fn, memoryview(data).cast("I"), nonce, key, 32) == expected
    assert run(fn, data, bytearray(nonce), memoryview(key), 32) == expected
    words = memoryview(bytearray(4100)).cast("I")
    fn(data, words, nonce, key, 32)
    assert words.tobytes() == expected
    fn(b"", bytearray(), nonce, key, 0)


def test_default_skip_is_zero() -> None:
    key, nonce = payload(32, 10), payload(24, 11)
    out = bytearray(100)
    native.xsalsa20_xor(bytes(100), out, nonce, key)
    assert bytes(out) == reference_keystream(nonce, key, 100)


# ---- kernel choice -----------------------------------------------------------------------


def test_kernel_names() -> None:
    assert KERNELS[-1] == "portable"
    assert set(KERNELS) <= {"avx512", "portable"}
    portable = os.environ.get(native.PORTABLE_ENV, "") not in ("", "0")
    assert native.xsalsa20_kernel() == ("portable" if portable else KERNELS[0])
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        has_avx512f = " avx512f" in cpuinfo.read()
    assert ("avx512" in KERNELS) == has_avx512f


def test_unknown_kernel_is_rejected() -> None:
    with pytest.raises(ValueError, match="kernel 'avx9' is not one of"):
        _xsalsa20.xsalsa20_xor_with("avx9", b"", bytearray(), bytes(24), bytes(32))


_CHILD = """
import json, random, native
from cryptography.hazmat.primitives.poly1305 import Poly1305
from nacl.bindings import crypto_secretbox
rng = random.Random(12)
ok = True
for size in (0, 1, 31, 32, 33, 64, 1023, 1024, 1025, 3079, 5000, (4 << 20) + 40):
    key, nonce, message = rng.randbytes(32), rng.randbytes(24), rng.randbytes(size)
    box = crypto_secretbox(message, nonce, key)
    out = bytearray(size)
    native.xsalsa20_xor(message, out, nonce, key, 32)
    ok = ok and out == box[16:]
    poly = bytearray(32)
    native.xsalsa20_xor(bytes(32), poly, nonce, key, 0)
    ok = ok and Poly1305.generate_tag(bytes(poly), bytes(out)) == box[:16]
    buffer = bytearray(message)
    native.xsalsa20_xor(buffer, buffer, nonce, key, 32)
    ok = ok and buffer == box[16:]
    stream = bytes(poly) + crypto_secretbox(bytes(size + 200), nonce, key)[16:]
    for skip in (1, 7, 31, 63, 64, 100, 199):
        native.xsalsa20_xor(bytes(size), out, nonce, key, skip)
        ok = ok and out == stream[skip : skip + size]
print(json.dumps({"kernel": native.xsalsa20_kernel(), "ok": ok}))
"""


@pytest.mark.parametrize("env_value", ["1", "0", None])
def test_environment_variable_selects_the_portable_kernel(env_value: str | None) -> None:
    report = run_with_portable_env(_CHILD, env_value)
    expected = "portable" if env_value == "1" else KERNELS[0]
    assert report == {"kernel": expected, "ok": True}


# ---- the GIL -----------------------------------------------------------------------------


def test_gil_is_released_during_a_long_encryption() -> None:
    """Another thread keeps running Python while a long (portable) encryption runs."""
    data = bytearray(48 << 20)
    key, nonce = payload(32, 13), payload(24, 14)
    assert_gil_released(
        lambda: _xsalsa20.xsalsa20_xor_with("portable", data, data, nonce, key, 32), "encryption"
    )


# ---- bad arguments -----------------------------------------------------------------------

KEY = bytes(range(32))
NONCE = bytes(range(24))


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2, 3]])
def test_non_buffers_are_rejected(kernel: str, bad: object) -> None:
    fn = NATIVE[kernel]
    with pytest.raises(TypeError, match="source must be a bytes-like object"):
        fn(bad, bytearray(3), NONCE, KEY, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target must be a bytes-like object"):
        fn(b"abc", bad, NONCE, KEY, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nonce must be a bytes-like object"):
        fn(b"abc", bytearray(3), bad, KEY, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a bytes-like object"):
        fn(b"abc", bytearray(3), NONCE, bad, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", NATIVE)
def test_read_only_target_is_rejected(kernel: str) -> None:
    fn = NATIVE[kernel]
    for target in (bytes(3), memoryview(bytearray(3)).toreadonly()):
        with pytest.raises(TypeError, match="target must be a writable, C-contiguous buffer"):
            fn(b"abc", target, NONCE, KEY, 0)
    data = b"abc"
    with pytest.raises(TypeError, match="target must be a writable"):
        fn(data, data, NONCE, KEY, 0)


@pytest.mark.parametrize("kernel", NATIVE)
def test_non_contiguous_buffers_are_rejected(kernel: str) -> None:
    fn = NATIVE[kernel]
    strided = memoryview(bytearray(100))[::2]
    with pytest.raises(TypeError, match="source must be a C-contiguous buffer"):
        fn(strided, bytearray(50), NONCE, KEY, 0)
    with pytest.raises(TypeError, match="target must be a writable, C-contiguous buffer"):
        fn(bytes(50), strided, NONCE, KEY, 0)


@pytest.mark.parametrize("kernel", NATIVE)
def test_length_mismatch_is_rejected(kernel: str) -> None:
    fn = NATIVE[kernel]
    for source, target in ((b"abc", bytearray(4)), (b"abcd", bytearray(3)), (b"", bytearray(1))):
        with pytest.raises(ValueError, match="target must be as long as source"):
            fn(source, target, NONCE, KEY, 0)


@pytest.mark.parametrize("kernel", NATIVE)
def test_partial_overlap_is_rejected(kernel: str) -> None:
    fn = NATIVE[kernel]
    buffer = bytearray(100)
    view = memoryview(buffer)
    with pytest.raises(ValueError, match="must be the source itself or not overlap it"):
        fn(view[:50], view[1:51], NONCE, KEY, 0)
    with pytest.raises(ValueError, match="must be the source itself or not overlap it"):
        fn(view[10:60], view[:50], NONCE, KEY, 0)
    fn(view[:50], view[50:], NONCE, KEY, 0)  # adjacent is fine
    assert bytes(buffer[50:]) == run(fn, bytes(50), NONCE, KEY, 0)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("size", [0, 16, 23, 25, 32])
def test_wrong_nonce_size_is_rejected(kernel: str, size: int) -> None:
    with pytest.raises(ValueError, match=f"nonce must be 24 bytes long, got {size}"):
        NATIVE[kernel](b"abc", bytearray(3), bytes(size), KEY, 0)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("size", [0, 16, 24, 31, 33])
def test_wrong_key_size_is_rejected(kernel: str, size: int) -> None:
    with pytest.raises(ValueError, match=f"key must be 32 bytes long, got {size}"):
        NATIVE[kernel](b"abc", bytearray(3), NONCE, bytes(size), 0)


@pytest.mark.parametrize("kernel", NATIVE)
def test_skip_out_of_range_is_rejected(kernel: str) -> None:
    fn = NATIVE[kernel]
    for bad in (-1, -64, 2**64, 2**200):
        with pytest.raises(ValueError, match=r"skip must be in 0\.\."):
            fn(b"abc", bytearray(3), NONCE, KEY, bad)
    fn(b"abc", bytearray(3), NONCE, KEY, 2**64 - 1)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("skip", [1.0, "1", None, True, b"\x01"])
def test_skip_of_the_wrong_type_is_rejected(kernel: str, skip: object) -> None:
    with pytest.raises(TypeError, match="skip must be an int"):
        NATIVE[kernel](b"abc", bytearray(3), NONCE, KEY, skip)  # type: ignore[arg-type]


def test_target_is_untouched_after_an_error() -> None:
    target = bytearray(b"xyz")
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        native.xsalsa20_xor(b"abc", target, NONCE, bytes(31))
    assert target == b"xyz"


# ---- into a new bytes object -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=5000),
    skip=st.integers(min_value=0, max_value=2**64 - 1),
    nonce=st.binary(min_size=24, max_size=24),
    key=st.binary(min_size=32, max_size=32),
)
def test_xor_bytes_is_xor_into_a_new_bytes(
    data: bytes, skip: int, nonce: bytes, key: bytes
) -> None:
    out = native.xsalsa20_xor_bytes(memoryview(data), nonce, key, skip)
    assert type(out) is bytes
    assert out == run(native.xsalsa20_xor, data, nonce, key, skip)


def test_xor_bytes_of_a_whole_chunk_and_of_nothing() -> None:
    data, nonce, key = payload(4 << 20, 21), payload(24, 22), payload(32, 23)
    out = native.xsalsa20_xor_bytes(data, nonce, key, 32)
    assert out == run(native.xsalsa20_xor, data, nonce, key, 32)
    assert native.xsalsa20_xor_bytes(b"", nonce, key) == b""


def test_xor_bytes_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="source must be a bytes-like object"):
        native.xsalsa20_xor_bytes("text", NONCE, KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonce must be 24 bytes long, got 23"):
        native.xsalsa20_xor_bytes(b"abc", bytes(23), KEY)
    with pytest.raises(ValueError, match="key must be 32 bytes long, got 31"):
        native.xsalsa20_xor_bytes(b"abc", NONCE, bytes(31))
    with pytest.raises(ValueError, match=r"skip must be in 0\.\."):
        native.xsalsa20_xor_bytes(b"abc", NONCE, KEY, -1)
    with pytest.raises(TypeError, match="skip must be an int"):
        native.xsalsa20_xor_bytes(b"abc", NONCE, KEY, 1.5)  # type: ignore[arg-type]
