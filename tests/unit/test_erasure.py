"""Unit tests of the native Reed-Solomon module: API, both kernels, golden vectors, bad input."""

from __future__ import annotations

import array
import hashlib
import itertools
import os
import pickle
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import native
from tests import rs_reference as ref
from tests.native_env import assert_gil_released, run_with_portable_env

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

KERNELS = native.available_kernels()


@pytest.fixture(params=["avx2", "portable"])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each kernel forced; AVX2 is skipped on CPUs without it."""
    name: str = request.param
    if name not in KERNELS:
        pytest.skip(f"this CPU cannot run the {name} kernel")
    previous = native.select_kernel(name)
    try:
        yield name
    finally:
        native.select_kernel(previous)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def all_fragments(data: bytes, k: int, m: int) -> list[bytes]:
    data_fragments, parity = native.encode(data, k, m)
    return [bytes(f) for f in data_fragments + parity]


# ---- arithmetic and golden vectors -------------------------------------------------------


def test_field_arithmetic_golden_values() -> None:
    assert ref.mul(2, 0x80) == 0x1D  # x^8 = x^4 + x^3 + x^2 + 1 under 0x11d
    assert ref.inv(2) == 0x8E
    assert all(ref.mul(a, ref.inv(a)) == 1 for a in range(1, 256))
    assert len({ref.EXP[i] for i in range(255)}) == 255  # 2 generates the whole group


@pytest.mark.parametrize(("k", "m"), [(1, 1), (4, 2), (10, 4), (32, 16)])
def test_generator_matches_reference(k: int, m: int) -> None:
    codec = native.ReedSolomon(k, m)
    for index in range(k + m):
        assert list(codec.generator_row(index)) == ref.generator_row(k, index)


# sha256[:32] of the parity fragment payloads produced by ISA-L's Cauchy code
# (pyeclib 1.8.0, ec_type="isa_l_rs_cauchy", fragment headers stripped): the same
# generator matrix, so the same bytes.
ISA_L_CAUCHY = {
    (4, 2, 256): ["131dd94f29c722f14f5f59a4756c5acb", "e354698f405d635c7cde610d68e7e74c"],
    (10, 4, 1280): [
        "4487bea8232f6a08c61903d048e8c2c3",
        "680538abe8c50a0ab38252ee054c3111",
        "6b1aceda3fbaa74c50097aabd8cbd7d8",
        "076b2fea81670836ea8b06cc2d727d49",
    ],
}


@pytest.mark.parametrize(("k", "m", "size"), list(ISA_L_CAUCHY))
def test_parity_matches_isa_l_cauchy_golden_vectors(kernel: str, k: int, m: int, size: int) -> None:
    data = bytes((i * 37 + 11) & 255 for i in range(size))
    _, parity = native.encode(data, k, m)
    assert [hashlib.sha256(p).hexdigest()[:32] for p in parity] == ISA_L_CAUCHY[(k, m, size)]


# ---- round trips with both kernels -------------------------------------------------------


GEOMETRIES = [(1, 0), (1, 3), (2, 1), (3, 2), (4, 2), (8, 3), (10, 4), (16, 16), (32, 16)]
SIZES = [0, 1, 7, 63, 64, 65, 1000, 4096 + 3, 70_001]


@pytest.mark.parametrize(("k", "m"), GEOMETRIES)
def test_encode_matches_reference(kernel: str, k: int, m: int) -> None:
    for size in SIZES:
        data = payload(size, size)
        assert all_fragments(data, k, m) == ref.encode(data, k, m), size


@pytest.mark.parametrize(("k", "m"), [(3, 2), (4, 2), (10, 4), (5, 5)])
def test_every_k_subset_decodes(kernel: str, k: int, m: int) -> None:
    size = 64 * k * 3 + 5  # vector loop plus scalar tail, padding in the last fragment
    data = payload(size, k)
    fragments = all_fragments(data, k, m)
    for chosen in itertools.combinations(range(k + m), k):
        given = {i: fragments[i] for i in chosen}
        assert native.decode(given, k, m, size) == data, chosen


def test_decode_matches_reference_decoder(kernel: str) -> None:
    k, m, size = 6, 3, 1000
    data = payload(size)
    fragments = all_fragments(data, k, m)
    given = {i: fragments[i] for i in (0, 2, 6, 7, 8, 5)}
    assert ref.decode(given, k, m, size) == data
    assert native.decode(given, k, m, size) == data


def test_large_multi_block_kernels_agree() -> None:
    """Several cache blocks, odd fragment size: both kernels and the reference agree."""
    k, m, size = 10, 4, 1_000_003
    data = payload(size, 1)
    expected = ref.encode(data, k, m)
    results = {}
    for name in KERNELS:
        previous = native.select_kernel(name)
        try:
            results[name] = all_fragments(data, k, m)
            given = {i: results[name][i] for i in range(4, 14)}
            assert native.decode(given, k, m, size) == data
        finally:
            native.select_kernel(previous)
    for name in KERNELS:
        assert results[name] == expected, name


def test_more_than_k_fragments_uses_any_k(kernel: str) -> None:
    k, m, size = 4, 3, 999
    data = payload(size)
    fragments = all_fragments(data, k, m)
    assert native.decode(dict(enumerate(fragments)), k, m, size) == data
    assert native.decode({i: fragments[i] for i in (1, 3, 4, 5, 6)}, k, m, size) == data


def test_zero_parity_and_empty_data(kernel: str) -> None:
    data_fragments, parity = native.encode(b"", 5, 3)
    assert [len(f) for f in data_fragments] == [0] * 5
    assert [len(p) for p in parity] == [0] * 3
    assert bytes(native.decode({i: b"" for i in range(3, 8)}, 5, 3, 0)) == b""
    data_fragments, parity = native.encode(b"abcdef", 3, 0)
    assert parity == []
    assert bytes(native.decode(dict(enumerate(data_fragments)), 3, 0, 6)) == b"abcdef"


def test_fewer_bytes_than_fragments(kernel: str) -> None:
    """Tiny inputs leave whole trailing data fragments made of padding."""
    k, m = 10, 4
    for size in (1, 5, 11, 19):
        data = payload(size, size)
        fragments = all_fragments(data, k, m)
        assert fragments == ref.encode(data, k, m)
        given = {i: fragments[i] for i in range(4, 14)}
        assert native.decode(given, k, m, size) == data


# ---- kernel selection --------------------------------------------------------------------


def test_each_kernel_really_runs() -> None:
    """The statistics show each forced kernel doing the work (vector loop for AVX2)."""
    data = payload(10 * 640 + 3)
    for name in KERNELS:
        previous = native.select_kernel(name)
        try:
            assert native.kernel_name() == name
            before = native.kernel_statistics()
            native.encode(data, 10, 4)
            after = native.kernel_statistics()
        finally:
            native.select_kernel(previous)
        grew = {key for key in after if after[key] > before[key]}
        if name == "avx2":
            assert after["avx2"] - before["avx2"] == 4 * 640
            assert after["avx2_tail"] - before["avx2_tail"] == 4 * 1
            assert "portable" not in grew
        else:
            assert grew == {"portable"}
            assert after["portable"] - before["portable"] == 4 * 641


def test_automatic_kernel_is_the_fastest_available() -> None:
    previous = native.select_kernel(None)
    try:
        expected = (
            "portable" if os.environ.get(native.PORTABLE_ENV, "") not in ("", "0") else KERNELS[0]
        )
        assert native.kernel_name() == expected
    finally:
        native.select_kernel(previous)


def test_select_kernel_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown kernel"):
        native.select_kernel("sse9")
    if "avx2" not in KERNELS:
        with pytest.raises(ValueError, match="not supported"):
            native.select_kernel("avx2")


_CHILD = """
import json, native
from tests import rs_reference as ref
data = bytes((i * 7 + 3) & 255 for i in range(5000))
before = native.kernel_statistics()
d, p = native.encode(data, 5, 3)
ok = [bytes(f) for f in d + p] == ref.encode(data, 5, 3)
ok = ok and native.decode({i: (d + p)[i] for i in range(3, 8)}, 5, 3, 5000) == data
after = native.kernel_statistics()
print(json.dumps({"kernel": native.kernel_name(), "ok": ok,
                  "grew": sorted(key for key in after if after[key] > before[key])}))
"""


@pytest.mark.parametrize("env_value", ["1", None])
def test_environment_variable_selects_portable_kernel(env_value: str | None) -> None:
    report = run_with_portable_env(_CHILD, env_value)
    assert report["ok"]
    if env_value == "1":
        assert report == {"kernel": "portable", "ok": True, "grew": ["portable"]}
    else:
        assert report["kernel"] == KERNELS[0]
        assert "portable" not in report["grew"] or KERNELS == ("portable",)


# ---- zero-copy API -----------------------------------------------------------------------


def test_data_fragments_are_views_of_the_input() -> None:
    data = bytearray(payload(4000))
    data_fragments, parity = native.encode(data, 4, 2)  # 4000 / 4: no padding
    assert all(f.obj is data for f in data_fragments)
    assert parity[0].obj is parity[1].obj  # one buffer for all parity
    assert parity[0].obj is not data
    assert not parity[0].readonly


def test_padded_tail_fragment_is_a_zero_padded_copy() -> None:
    data = payload(10)
    data_fragments, parity = native.encode(data, 4, 2)  # fragment size 3
    assert [f.obj is data for f in data_fragments] == [True, True, True, False]
    assert bytes(data_fragments[3]) == data[9:] + b"\0\0"
    assert data_fragments[3].obj is parity[0].obj


def test_split_matches_encode() -> None:
    data = payload(1001)
    assert [bytes(f) for f in native.split(data, 7)] == ref.split(data, 7)


def test_any_buffer_format_is_taken_as_bytes() -> None:
    values = array.array("H", range(500))
    raw = values.tobytes()
    data_fragments, parity = native.encode(values, 4, 2)
    assert [bytes(f) for f in data_fragments + parity] == ref.encode(raw, 4, 2)
    given: dict[int, ReadableBuffer] = {
        0: array.array("H", bytes(data_fragments[0])),
        1: data_fragments[1],
        4: memoryview(bytes(parity[0])),
        5: parity[1],
    }
    assert native.decode(given, 4, 2, len(raw)) == raw


def test_encode_into_one_buffer_and_a_list(kernel: str) -> None:
    k, m, size = 5, 3, 1234
    data = payload(size)
    frag = native.fragment_size(size, k)
    expected = ref.encode(data, k, m)[k:]
    out = bytearray(m * frag + 10)
    assert native.encode_into(data, k, m, out) == frag
    assert [bytes(out[i * frag : (i + 1) * frag]) for i in range(m)] == expected
    assert out[m * frag :] == bytearray(10)  # bytes past the fragments are left alone
    buffers = [bytearray(frag) for _ in range(m)]
    assert native.encode_into(data, k, m, buffers) == frag
    assert [bytes(b) for b in buffers] == expected
    views = [memoryview(bytearray(frag + 1)) for _ in range(m)]
    native.encode_into(data, k, m, views)
    assert [bytes(v[:frag]) for v in views] == expected


def test_decode_into_writes_exactly_size_bytes(kernel: str) -> None:
    k, m, size = 4, 2, 1001
    data = payload(size)
    fragments = all_fragments(data, k, m)
    out = bytearray(b"\xaa" * (size + 7))
    native.decode_into({i: fragments[i] for i in (1, 3, 4, 5)}, k, m, size, out)
    assert out[:size] == data
    assert out[size:] == b"\xaa" * 7


def test_decode_accepts_pairs_and_returns_exact_length() -> None:
    data = payload(333)
    fragments = all_fragments(data, 3, 2)
    result = native.decode([(4, fragments[4]), (0, fragments[0]), (3, fragments[3])], 3, 2, 333)
    assert isinstance(result, memoryview)
    assert len(result) == 333
    assert result == data


def test_decode_rebuilds_missing_parity_in_the_same_pass(kernel: str) -> None:
    k, m, size = 6, 4, 5000
    data = payload(size)
    fragments = all_fragments(data, k, m)
    given = {i: fragments[i] for i in (0, 2, 3, 7, 8, 9)}
    result, parity = native.decode(given, k, m, size, rebuild_parity=True)
    assert result == data
    assert sorted(parity) == [6]
    assert parity[6] == fragments[6]
    result, parity = native.decode(dict(enumerate(fragments)), k, m, size, rebuild_parity=True)
    assert result == data
    assert parity == {}


def test_reconstruct_returns_wanted_fragments(kernel: str) -> None:
    k, m, size = 5, 3, 2222
    data = payload(size)
    fragments = all_fragments(data, k, m)
    given = {i: fragments[i] for i in (1, 2, 5, 6, 7)}
    rebuilt = native.reconstruct(given, k, m, [0, 3, 4, 5, 0])
    assert sorted(rebuilt) == [0, 3, 4, 5]
    assert all(rebuilt[i] == fragments[i] for i in rebuilt)
    assert rebuilt[5].obj is given[5]  # a wanted fragment that was given is not copied
    assert native.reconstruct(given, k, m, []) == {}


def test_codec_object() -> None:
    codec = native.ReedSolomon(10, 4)
    assert (codec.k, codec.m, codec.n) == (10, 4, 14)
    assert repr(codec) == "ReedSolomon(k=10, m=4)"
    assert codec == native.ReedSolomon(10, 4) != native.ReedSolomon(10, 3)
    assert hash(codec) == hash(native.ReedSolomon(10, 4))
    assert pickle.loads(pickle.dumps(codec)) == codec
    assert codec.fragment_size(101) == 11
    assert native.fragment_size(100, 10) == 10
    assert native.codec(10, 4) is native.codec(10, 4)
    with pytest.raises(AttributeError):
        codec.k = 3  # type: ignore[misc]


def test_gil_is_released_during_encode() -> None:
    """Another thread keeps running Python while a long encode runs."""
    data = payload(16 << 20)
    previous = native.select_kernel("portable")  # the slow kernel makes a long call
    try:
        assert_gil_released(lambda: native.encode(data, 10, 4), "encode")
    finally:
        native.select_kernel(previous)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "m", "error", "match"),
    [
        (0, 1, ValueError, "k must be in 1..32"),
        (33, 1, ValueError, "k must be in 1..32"),
        (4, -1, ValueError, "m must be in 0..16"),
        (4, 17, ValueError, "m must be in 0..16"),
        (250, 10, ValueError, r"k \+ m must be <= 256"),
        (4.0, 2, TypeError, "k must be an int"),
        (4, "2", TypeError, "m must be an int"),
        (True, 2, TypeError, "k must be an int"),
    ],
)
def test_bad_geometry(k: object, m: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        native.ReedSolomon(k, m)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        native.encode(b"data", k, m)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", ["text", 12, None, [1, 2, 3]])
def test_encode_rejects_non_buffers(data: object) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        native.encode(data, 4, 2)  # type: ignore[arg-type]


def test_non_contiguous_buffers_are_rejected() -> None:
    strided = memoryview(bytearray(100))[::2]
    with pytest.raises(TypeError, match="C-contiguous"):
        native.encode(strided, 4, 2)
    with pytest.raises(TypeError, match="C-contiguous"):
        native.decode([(0, strided[:5]), (1, memoryview(b"12345"))], 2, 0, 10)


def test_encode_into_bad_outputs() -> None:
    data = payload(100)  # fragment size 25 with k=4
    with pytest.raises(TypeError, match="writable"):
        native.encode_into(data, 4, 2, bytes(50))
    with pytest.raises(TypeError, match="writable"):
        native.encode_into(data, 4, 2, [bytearray(25), b"x" * 25])
    with pytest.raises(ValueError, match="need 50"):
        native.encode_into(data, 4, 2, bytearray(49))
    with pytest.raises(ValueError, match="holds 24 bytes"):
        native.encode_into(data, 4, 2, [bytearray(25), bytearray(24)])
    with pytest.raises(ValueError, match="expected m=2"):
        native.encode_into(data, 4, 2, [bytearray(25)])
    with pytest.raises(TypeError, match="sequence"):
        native.encode_into(data, 4, 2, 5)  # type: ignore[arg-type]
    shared = bytearray(40)
    with pytest.raises(ValueError, match="overlaps parity_out"):
        native.encode_into(data, 4, 2, [memoryview(shared)[:25], memoryview(shared)[10:35]])
    whole = bytearray(200)
    with pytest.raises(ValueError, match="overlaps the data"):
        native.encode_into(memoryview(whole)[:100], 4, 2, memoryview(whole)[90:])


def test_decode_bad_fragments() -> None:
    k, m, size = 4, 2, 100
    fragments = all_fragments(payload(size), k, m)
    good = {i: fragments[i] for i in range(2, 6)}
    cases: list[tuple[object, type[Exception], str]] = [
        ({i: fragments[i] for i in range(3)}, ValueError, "need at least k=4 fragments, got 3"),
        (good | {1: fragments[1][:-1]}, ValueError, "fragment 1 has 24 bytes, expected 25"),
        (good | {6: fragments[0]}, ValueError, r"index 6 out of range 0..5"),
        (good | {-1: fragments[0]}, ValueError, "index -1 out of range"),
        ([*good.items(), (2, fragments[2])], ValueError, "duplicate fragment index 2"),
        (good | {"0": fragments[0]}, TypeError, "index must be an int"),
        (
            {0: fragments[0], 1: "not bytes", 2: fragments[2], 3: fragments[3]},
            TypeError,
            "fragment 1 must be a bytes-like",
        ),
        (fragments[0], TypeError, "not be a buffer"),
        (42, TypeError, "mapping"),
        ([(0, fragments[0], 1)], TypeError, "pair"),
    ]
    for given, error, match in cases:
        with pytest.raises(error, match=match):
            native.decode(given, k, m, size)  # type: ignore[call-overload]
        out = bytearray(size)
        with pytest.raises(error, match=match):
            native.decode_into(given, k, m, size, out)  # type: ignore[arg-type]


def test_decode_bad_size() -> None:
    fragments = {i: b"x" * 25 for i in range(4)}
    with pytest.raises(ValueError, match="size must be >= 0"):
        native.decode(fragments, 4, 2, -1)
    with pytest.raises(ValueError, match="larger than any buffer"):
        native.decode(fragments, 4, 2, 2**70)
    with pytest.raises(TypeError, match="size must be an int"):
        native.decode(fragments, 4, 2, 100.0)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="expected 26"):  # size 101 needs 26-byte fragments
        native.decode(fragments, 4, 2, 101)


def test_decode_into_bad_outputs() -> None:
    k, m, size = 4, 2, 100
    fragments = all_fragments(payload(size), k, m)
    given = {i: fragments[i] for i in range(2, 6)}
    with pytest.raises(TypeError, match="writable"):
        native.decode_into(given, k, m, size, bytes(size))
    with pytest.raises(TypeError, match="bytes-like"):
        native.decode_into(given, k, m, size, [0] * size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out holds 99 bytes"):
        native.decode_into(given, k, m, size, bytearray(99))
    shared = bytearray(200)
    view = memoryview(shared)
    view[:25] = fragments[2]
    with pytest.raises(ValueError, match="overlaps fragment 2"):
        native.decode_into(given | {2: view[:25]}, k, m, size, view[20:120])


def test_reconstruct_bad_input() -> None:
    k, m = 4, 2
    fragments = all_fragments(payload(100), k, m)
    given = {i: fragments[i] for i in range(2, 6)}
    with pytest.raises(ValueError, match="same size"):
        native.reconstruct(given | {5: fragments[5][:-1]}, k, m, [0])
    with pytest.raises(ValueError, match="wanted index 6 out of range"):
        native.reconstruct(given, k, m, [6])
    with pytest.raises(TypeError, match="wanted index must be an int"):
        native.reconstruct(given, k, m, ["0"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="need at least k=4"):
        native.reconstruct({0: fragments[0]}, k, m, [1])
