"""Unit tests of the native CRC-32, CRC-32C and CRC-64/NVME: check values, every kernel against
the reference (``zlib.crc32`` for CRC-32, the pure-Python loops for the others), chaining,
large inputs, the GIL and bad arguments."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from interfaces.s3.etag import (
    crc32c_update,
    crc32c_update_pure,
    crc64nvme_update,
    crc64nvme_update_pure,
    new_checksum,
)
from native import _checksums
from tests.native_env import assert_gil_released, run_with_portable_env

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    Crc = Callable[[ReadableBuffer, int], int]

CRC32_MAX = 2**32 - 1
CRC64_MAX = 2**64 - 1
CHECK = b"123456789"


ALGORITHMS = ("crc32", "crc32c", "crc64nvme")
AUTO: dict[str, Crc] = {
    "crc32": native.crc32,
    "crc32c": native.crc32c,
    "crc64nvme": native.crc64nvme,
}
AUTO_KERNEL: dict[str, Callable[[], str]] = {
    "crc32": native.crc32_kernel,
    "crc32c": native.crc32c_kernel,
    "crc64nvme": native.crc64nvme_kernel,
}
KERNELS: dict[str, tuple[str, ...]] = {
    "crc32": _checksums.crc32_kernels(),
    "crc32c": _checksums.crc32c_kernels(),
    "crc64nvme": _checksums.crc64nvme_kernels(),
}
WITH: dict[str, Callable[[str, ReadableBuffer, int], int]] = {
    "crc32": _checksums.crc32_with,
    "crc32c": _checksums.crc32c_with,
    "crc64nvme": _checksums.crc64nvme_with,
}


def _kernel_fn(algorithm: str, kernel: str) -> Crc:
    """The native ``algorithm`` computed by one named kernel."""
    with_kernel = WITH[algorithm]
    return lambda data, crc: with_kernel(kernel, data, crc)


# (algorithm, kernel) for every kernel this CPU runs, plus "auto" for the public function.
NATIVE: dict[tuple[str, str], Crc] = {
    **{(alg, "auto"): AUTO[alg] for alg in ALGORITHMS},
    **{(alg, k): _kernel_fn(alg, k) for alg in ALGORITHMS for k in KERNELS[alg]},
}
PURE: dict[str, Callable[[bytes, int], int]] = {
    "crc32": zlib.crc32,
    "crc32c": crc32c_update_pure,
    "crc64nvme": crc64nvme_update_pure,
}
MAX = {"crc32": CRC32_MAX, "crc32c": CRC32_MAX, "crc64nvme": CRC64_MAX}
CHECK_VALUES = {"crc32": 0xCBF43926, "crc32c": 0xE3069283, "crc64nvme": 0xAE8B14860A799888}
IDS = [f"{alg}-{kernel}" for alg, kernel in NATIVE]


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


# ---- check values ------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
def test_check_values(algorithm: str, kernel: str) -> None:
    fn = NATIVE[algorithm, kernel]
    expected = CHECK_VALUES[algorithm]
    assert fn(CHECK, 0) == expected
    assert fn(b"", 0) == 0
    assert fn(b"", 0x1234) == 0x1234
    assert PURE[algorithm](CHECK, 0) == expected


@pytest.mark.parametrize("kernel", _checksums.crc32c_kernels())
def test_crc32c_rfc3720_vectors(kernel: str) -> None:
    fn = NATIVE["crc32c", kernel]
    assert fn(bytes(32), 0) == 0x8A9136AA
    assert fn(b"\xff" * 32, 0) == 0x62A8AB43
    assert fn(bytes(range(32)), 0) == 0x46DD794E
    assert fn(bytes(range(31, -1, -1)), 0) == 0x113FDB5C


@pytest.mark.parametrize("kernel", _checksums.crc32_kernels())
def test_crc32_known_vectors(kernel: str) -> None:
    fn = NATIVE["crc32", kernel]
    assert fn(b"a", 0) == 0xE8B7BE43
    assert fn(b"The quick brown fox jumps over the lazy dog", 0) == 0x414FA339
    assert fn(bytes(32), 0) == 0x190A55AD
    assert fn(b"\xff" * 32, 0) == 0xFF6CAB0B


def test_default_crc_is_zero() -> None:
    assert native.crc32(CHECK) == native.crc32(CHECK, 0)
    assert native.crc32c(CHECK) == native.crc32c(CHECK, 0)
    assert native.crc64nvme(CHECK) == native.crc64nvme(CHECK, 0)


# ---- against the pure-Python reference ---------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(max_size=100),
    seed=st.integers(min_value=0, max_value=CRC64_MAX),
)
def test_short_inputs_match_reference(algorithm: str, data: bytes, seed: int) -> None:
    crc = seed & MAX[algorithm]
    expected = PURE[algorithm](data, crc)
    for (alg, _kernel), fn in NATIVE.items():
        if alg == algorithm:
            assert fn(data, crc) == expected


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(min_size=0, max_size=7000),
    start=st.integers(min_value=0, max_value=15),
    cut=st.integers(min_value=0, max_value=15),
    seed=st.integers(min_value=0, max_value=CRC64_MAX),
)
def test_unaligned_views_match_reference(
    algorithm: str, data: bytes, start: int, cut: int, seed: int
) -> None:
    view = memoryview(bytearray(data))[start : max(start, len(data) - cut)]
    crc = seed & MAX[algorithm]
    expected = PURE[algorithm](bytes(view), crc)
    for (alg, _kernel), fn in NATIVE.items():
        if alg == algorithm:
            assert fn(view, crc) == expected


@settings(max_examples=100, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    a=st.binary(max_size=5000),
    b=st.binary(max_size=5000),
)
def test_chaining_equals_concatenation(algorithm: str, a: bytes, b: bytes) -> None:
    for (alg, _kernel), fn in NATIVE.items():
        if alg == algorithm:
            assert fn(b, fn(a, 0)) == fn(a + b, 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kernels_agree_at_every_length_around_the_block_sizes(algorithm: str) -> None:
    """Every length 0..7000 (three-stripe, folding and tail paths) at a few offsets."""
    data = payload(7100, seed=1)
    fns = [fn for (alg, _kernel), fn in NATIVE.items() if alg == algorithm]
    for size in range(7001):
        for offset in (0, 3) if size % 7 else (0, 1, 5, 8):
            view = memoryview(data)[offset : offset + size]
            results = {fn(view, 0x5A5A5A5A) for fn in fns}
            assert len(results) == 1, (size, offset)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_large_input_matches_reference_on_samples(algorithm: str) -> None:
    """8 MiB: every kernel and chunked chaining agree; 4 x 64 KiB windows match the reference."""
    data = payload(8 << 20, seed=2)
    fns = [fn for (alg, _kernel), fn in NATIVE.items() if alg == algorithm]
    full = {fn(data, 0) for fn in fns}
    assert len(full) == 1
    crc = 0
    for start in range(0, len(data), 999_983):
        crc = fns[0](memoryview(data)[start : start + 999_983], crc)
    assert {crc} == full
    rng = random.Random(3)
    for _ in range(4):
        start = rng.randrange(len(data) - (64 << 10))
        window = data[start : start + (64 << 10) + rng.randrange(8)]
        expected = PURE[algorithm](window, 0)
        assert {fn(window, 0) for fn in fns} == {expected}


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=300_000),
    start=st.integers(min_value=0, max_value=63),
    cut=st.integers(min_value=0, max_value=300_000),
    seed=st.integers(min_value=0, max_value=2**32),
    crc=st.integers(min_value=0, max_value=CRC32_MAX),
)
def test_crc32_matches_zlib_on_long_unaligned_chained_inputs(
    size: int, start: int, cut: int, seed: int, crc: int
) -> None:
    """Every CRC-32 kernel equals zlib.crc32 whole and split at any point, at any alignment."""
    view = memoryview(payload(start + size, seed))[start:]
    cut = min(cut, size)
    expected = zlib.crc32(view, crc)
    for kernel in (*_checksums.crc32_kernels(), "auto"):
        fn = NATIVE["crc32", kernel]
        assert fn(view, crc) == expected
        assert fn(view[cut:], fn(view[:cut], crc)) == expected


@settings(max_examples=100, deadline=None)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000), crc=st.integers(0, CRC32_MAX))
def test_crc32_and_zlib_continue_each_other(a: bytes, b: bytes, crc: int) -> None:
    """A CRC started by one continues in the other: stored zlib values stay valid."""
    assert native.crc32(b, zlib.crc32(a, crc)) == zlib.crc32(a + b, crc)
    assert zlib.crc32(b, native.crc32(a, crc)) == zlib.crc32(a + b, crc)


def test_s3_helpers_use_the_native_kernels() -> None:
    data = payload(10_000, seed=4)
    assert crc32c_update(data, 7) == native.crc32c(data, 7) == crc32c_update_pure(data, 7)
    assert crc64nvme_update(data, 7) == native.crc64nvme(data, 7) == crc64nvme_update_pure(data, 7)
    hasher = new_checksum("CRC64NVME")
    hasher.update(memoryview(data)[:1234])
    hasher.update(bytearray(data[1234:]))
    assert hasher.digest() == native.crc64nvme(data).to_bytes(8, "big")
    crc32 = new_checksum("CRC32")
    crc32.update(memoryview(data)[:4321])
    crc32.update(bytearray(data[4321:9000]))
    crc32.update(data[9000:])
    assert crc32.digest() == zlib.crc32(data).to_bytes(4, "big")


# ---- buffers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
def test_any_contiguous_buffer_is_taken_as_bytes(algorithm: str, kernel: str) -> None:
    fn = NATIVE[algorithm, kernel]
    data = payload(4099, seed=5)
    expected = fn(data, 0)
    assert fn(bytearray(data), 0) == expected
    assert fn(memoryview(data), 0) == expected
    assert fn(memoryview(bytearray(data)).toreadonly(), 0) == expected
    padded = data + b"\0"  # 4100 bytes: a whole number of 4-byte items
    assert fn(memoryview(padded).cast("I"), 0) == fn(padded, 0)
    assert fn(memoryview(b""), 0) == 0
    assert fn(bytearray(), 0) == 0


def test_crc32c_differs_from_zlib_crc32() -> None:
    """A guard against wiring the wrong polynomial: CRC-32C differs from zlib's CRC-32."""
    assert native.crc32c(CHECK) != zlib.crc32(CHECK)


# ---- kernel choice -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kernel_names(algorithm: str) -> None:
    kernels = KERNELS[algorithm]
    assert kernels[-1] == "portable"
    portable = os.environ.get(native.PORTABLE_ENV, "") not in ("", "0")
    assert AUTO_KERNEL[algorithm]() == ("portable" if portable else kernels[0])
    fast = {"crc32": "pclmul", "crc32c": "sse4.2", "crc64nvme": "pclmul"}[algorithm]
    assert set(kernels) <= {fast, "portable"}


def test_crc32_and_crc64nvme_share_the_pclmul_detection() -> None:
    assert ("pclmul" in _checksums.crc32_kernels()) == ("pclmul" in _checksums.crc64nvme_kernels())


@pytest.mark.parametrize("fn", list(WITH.values()))
def test_unknown_kernel_is_rejected(fn: Callable[[str, bytes], int]) -> None:
    with pytest.raises(ValueError, match="kernel 'avx9' is not one of"):
        fn("avx9", b"")


_CHILD = """
import json, random, zlib, native
from interfaces.s3.etag import crc32c_update_pure, crc64nvme_update_pure
data = random.Random(6).randbytes(20_000)
ok = native.crc32(data, 9) == zlib.crc32(data, 9)
ok = ok and native.crc32c(data, 9) == crc32c_update_pure(data, 9)
ok = ok and native.crc64nvme(data, 9) == crc64nvme_update_pure(data, 9)
print(json.dumps({"crc32": native.crc32_kernel(), "crc32c": native.crc32c_kernel(),
                  "crc64nvme": native.crc64nvme_kernel(), "ok": ok}))
"""


@pytest.mark.parametrize("env_value", ["1", "0", None])
def test_environment_variable_selects_portable_kernels(env_value: str | None) -> None:
    report = run_with_portable_env(_CHILD, env_value)
    if env_value == "1":
        assert report == {alg: "portable" for alg in ALGORITHMS} | {"ok": True}
    else:
        assert report == {alg: KERNELS[alg][0] for alg in ALGORITHMS} | {"ok": True}


# ---- the GIL -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["crc32", "crc64nvme"])
def test_gil_is_released_during_a_long_checksum(algorithm: str) -> None:
    """Another thread keeps running Python while a long (portable) checksum runs."""
    data = payload(64 << 20, seed=7)
    assert_gil_released(lambda: WITH[algorithm]("portable", data, 0), "checksum")


# ---- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
@pytest.mark.parametrize("data", ["text", 12, None, [1, 2, 3]])
def test_non_buffers_are_rejected(algorithm: str, kernel: str, data: object) -> None:
    with pytest.raises(TypeError, match="bytes-like object"):
        NATIVE[algorithm, kernel](data, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
def test_non_contiguous_buffers_are_rejected(algorithm: str, kernel: str) -> None:
    strided = memoryview(bytearray(100))[::2]
    with pytest.raises(TypeError, match="C-contiguous"):
        NATIVE[algorithm, kernel](strided, 0)


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
def test_crc_out_of_range_is_rejected(algorithm: str, kernel: str) -> None:
    fn = NATIVE[algorithm, kernel]
    assert fn(CHECK, MAX[algorithm]) == PURE[algorithm](CHECK, MAX[algorithm])
    for bad in (-1, MAX[algorithm] + 1, 2**200):
        with pytest.raises(ValueError, match=r"crc must be in 0\.\."):
            fn(CHECK, bad)


@pytest.mark.parametrize(("algorithm", "kernel"), NATIVE, ids=IDS)
@pytest.mark.parametrize("crc", [1.0, "1", None, True, b"\x01"])
def test_crc_of_the_wrong_type_is_rejected(algorithm: str, kernel: str, crc: object) -> None:
    with pytest.raises(TypeError, match="crc must be an int"):
        NATIVE[algorithm, kernel](CHECK, crc)  # type: ignore[arg-type]
