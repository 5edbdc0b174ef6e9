"""Property tests: native Reed-Solomon agrees with the reference and any k fragments decode.

Each example draws a geometry (1 <= k <= 32, 0 <= m <= 16), a size (0, tiny, or large
enough for several 64-byte vector iterations per fragment, rarely a multiple of k) and a
kernel, so both the AVX2 and the portable kernels are exercised on the same properties.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from hypothesis import given, settings
from hypothesis import strategies as st

import native
from tests import rs_reference as ref

KERNELS = native.available_kernels()
# All k-subsets are tried when there are at most this many; otherwise hypothesis draws some.
MAX_SUBSETS = 40

geometries = st.tuples(st.integers(1, 32), st.integers(0, 16))
sizes = st.one_of(st.integers(0, 100), st.integers(0, 20_000), st.integers(0, 300_000))
kernels = st.sampled_from(KERNELS)


@contextmanager
def using(kernel: str) -> Iterator[None]:
    """Force ``kernel`` for the duration of the block."""
    previous = native.select_kernel(kernel)
    try:
        yield
    finally:
        native.select_kernel(previous)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@settings(max_examples=300, deadline=None)
@given(geometry=geometries, size=sizes, seed=st.integers(0, 2**32), kernel=kernels)
def test_encode_agrees_with_reference(
    geometry: tuple[int, int], size: int, seed: int, kernel: str
) -> None:
    k, m = geometry
    data = payload(size, seed)
    with using(kernel):
        data_fragments, parity = native.encode(data, k, m)
    assert [bytes(f) for f in data_fragments + parity] == ref.encode(data, k, m)
    assert all(len(f) == math.ceil(size / k) for f in data_fragments + parity)


@settings(max_examples=200, deadline=None)
@given(geometry=geometries, size=sizes, seed=st.integers(0, 2**32), kernel=kernels, data=st.data())
def test_any_k_fragments_decode(
    geometry: tuple[int, int], size: int, seed: int, kernel: str, data: st.DataObject
) -> None:
    k, m = geometry
    original = payload(size, seed)
    fragments = ref.encode(original, k, m)
    if math.comb(k + m, k) <= MAX_SUBSETS:
        subsets = [list(c) for c in itertools.combinations(range(k + m), k)]
    else:
        subsets = data.draw(
            st.lists(st.permutations(range(k + m)).map(lambda p: p[:k]), min_size=1, max_size=4),
            label="subsets",
        )
    with using(kernel):
        for subset in subsets:
            given = {i: fragments[i] for i in subset}
            assert native.decode(given, k, m, size) == original, subset
            out = bytearray(size + 3)
            native.decode_into(given, k, m, size, out)
            assert out[:size] == original, subset
            missing = sorted(set(range(k + m)) - set(subset))
            rebuilt = native.reconstruct(given, k, m, missing)
            assert {i: bytes(v) for i, v in rebuilt.items()} == {i: fragments[i] for i in missing}


@settings(max_examples=100, deadline=None)
@given(geometry=geometries, size=sizes, seed=st.integers(0, 2**32), data=st.data())
def test_kernels_agree_on_decode_with_rebuilt_parity(
    geometry: tuple[int, int], size: int, seed: int, data: st.DataObject
) -> None:
    k, m = geometry
    original = payload(size, seed)
    fragments = ref.encode(original, k, m)
    keep = data.draw(st.permutations(range(k + m)), label="order")[
        : data.draw(st.integers(k, k + m), label="count")
    ]
    given = {i: fragments[i] for i in keep}
    results = []
    for kernel in KERNELS:
        with using(kernel):
            result, parity = native.decode(given, k, m, size, rebuild_parity=True)
        assert result == original
        assert sorted(parity) == [i for i in range(k, k + m) if i not in given]
        assert all(parity[i] == fragments[i] for i in parity)
        results.append((bytes(result), {i: bytes(v) for i, v in parity.items()}))
    assert all(r == results[0] for r in results)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 8),
    m=st.integers(0, 4),
    size=st.integers(0, 300),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_native_decode_matches_reference_decode(
    k: int, m: int, size: int, seed: int, data: st.DataObject
) -> None:
    original = payload(size, seed)
    fragments = ref.encode(original, k, m)
    subset = data.draw(st.permutations(range(k + m)), label="order")[:k]
    given = {i: fragments[i] for i in subset}
    assert ref.decode(given, k, m, size) == original
    assert native.decode(given, k, m, size) == original


junk = st.one_of(
    st.binary(max_size=40),
    st.builds(bytearray, st.binary(max_size=40)),
    st.builds(lambda b: memoryview(b)[::2], st.binary(max_size=40)),
    st.integers(),
    st.text(max_size=5),
    st.none(),
)
indexes = st.one_of(st.integers(-3, 50), st.text(max_size=2), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(-1, 34),
    m=st.integers(-1, 18),
    size=st.one_of(st.integers(-5, 200), st.floats(), st.none()),
    fragments=st.one_of(
        st.dictionaries(indexes, junk, max_size=12),
        st.lists(st.tuples(indexes, junk), max_size=12),
        junk,
    ),
    out=junk,
)
def test_garbage_raises_only_type_or_value_errors(
    k: int, m: int, size: object, fragments: object, out: object
) -> None:
    """Whatever the arguments, the decoders return or raise TypeError/ValueError; no crash."""
    for call in (
        lambda: native.decode(fragments, k, m, size),  # type: ignore[call-overload]
        lambda: native.decode_into(fragments, k, m, size, out),  # type: ignore[arg-type]
        lambda: native.reconstruct(fragments, k, m, [0, 1]),  # type: ignore[arg-type]
        lambda: native.encode_into(out, k, m, [bytearray(50)] * max(m, 0)),  # type: ignore[arg-type]
    ):
        with suppress(TypeError, ValueError):
            call()
