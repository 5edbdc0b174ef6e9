"""A slow, obviously-correct Reed-Solomon coder to check ``native`` against.

Same code as :mod:`native`: GF(2^8) with polynomial 0x11d, systematic generator ``[I; C]``
with the Cauchy matrix ``C[i][j] = 1 / ((k + i) ^ j)``, data zero-padded to ``k`` equal
fragments. Written independently of the C code: log/exp arithmetic, Gauss-Jordan
inversion, and whole-fragment operations built from ``bytes.translate`` (multiply by a
constant) and big-integer XOR (add), so it stays fast enough for property tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

POLYNOMIAL = 0x11D

EXP = [0] * 510
LOG = [0] * 256
_x = 1
for _i in range(255):
    EXP[_i] = EXP[_i + 255] = _x
    LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= POLYNOMIAL


def mul(a: int, b: int) -> int:
    """Multiply two field elements."""
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inv(a: int) -> int:
    """Return the multiplicative inverse of a non-zero field element."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return EXP[255 - LOG[a]]


_MUL_TABLES = [bytes(mul(c, x) for x in range(256)) for c in range(256)]


def scale(c: int, data: bytes) -> bytes:
    """Multiply every byte of ``data`` by ``c``."""
    return data.translate(_MUL_TABLES[c])


def add(a: bytes, b: bytes) -> bytes:
    """Add (XOR) two equally long byte strings."""
    assert len(a) == len(b)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def generator_row(k: int, index: int) -> list[int]:
    """Row ``index`` of the systematic Cauchy generator matrix with ``k`` columns."""
    if index < k:
        return [int(index == j) for j in range(k)]
    return [inv(index ^ j) for j in range(k)]


def invert(matrix: Sequence[Sequence[int]]) -> list[list[int]]:
    """Invert a square matrix over GF(2^8) by Gauss-Jordan elimination."""
    n = len(matrix)
    a = [list(row) for row in matrix]
    b = [[int(r == c) for c in range(n)] for r in range(n)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col]), None)
        if pivot is None:
            raise ValueError("singular matrix")
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        s = inv(a[col][col])
        a[col] = [mul(s, v) for v in a[col]]
        b[col] = [mul(s, v) for v in b[col]]
        for r in range(n):
            f = a[r][col]
            if r != col and f:
                a[r] = [v ^ mul(f, w) for v, w in zip(a[r], a[col], strict=True)]
                b[r] = [v ^ mul(f, w) for v, w in zip(b[r], b[col], strict=True)]
    return b


def combine(coefficients: Sequence[int], fragments: Sequence[bytes], size: int) -> bytes:
    """Return ``sum(c * f)`` over the fragments."""
    acc = bytes(size)
    for c, fragment in zip(coefficients, fragments, strict=True):
        if c:
            acc = add(acc, scale(c, fragment))
    return acc


def fragment_size(size: int, k: int) -> int:
    """Length of each fragment: ``ceil(size / k)``."""
    return -(-size // k)


def split(data: bytes, k: int) -> list[bytes]:
    """The ``k`` data fragments of ``data``, zero-padded at the end."""
    f = fragment_size(len(data), k)
    padded = bytes(data) + bytes(f * k - len(data))
    return [padded[j * f : (j + 1) * f] for j in range(k)]


def encode(data: bytes, k: int, m: int) -> list[bytes]:
    """All ``k + m`` fragments of ``data``: the data fragments then the parity."""
    parts = split(data, k)
    f = fragment_size(len(data), k)
    return parts + [combine(generator_row(k, k + i), parts, f) for i in range(m)]


def reconstruct(fragments: Mapping[int, bytes], k: int, m: int, wanted: int) -> bytes:
    """Rebuild fragment ``wanted`` from (the ``k`` lowest indexes of) ``fragments``."""
    chosen = sorted(fragments)[:k]
    if len(chosen) < k:
        raise ValueError("need k fragments")
    f = len(fragments[chosen[0]])
    inverse = invert([generator_row(k, i) for i in chosen])
    row = generator_row(k, wanted)
    coefficients = [0] * k
    for d in range(k):
        if row[d]:
            for c in range(k):
                coefficients[c] ^= mul(row[d], inverse[d][c])
    return combine(coefficients, [fragments[i] for i in chosen], f)


def decode(fragments: Mapping[int, bytes], k: int, m: int, size: int) -> bytes:
    """Rebuild the original ``size`` bytes from any ``k`` fragments."""
    parts = [fragments[d] if d in fragments else reconstruct(fragments, k, m, d) for d in range(k)]
    return b"".join(parts)[:size]
