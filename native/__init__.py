"""Native hot loops for Ballast: Reed-Solomon erasure coding over GF(2^8) and checksums.

A systematic ``k + m`` code: the data is split into ``k`` equal data fragments (zero-padded
at the end to ``k * ceil(len / k)`` bytes) and ``m`` parity fragments are computed, so that
any ``k`` of the ``k + m`` fragments rebuild the data (the generator ``[I; C]`` uses a Cauchy
matrix, which makes the code MDS). ``1 <= k <= 32``, ``0 <= m <= 16``, polynomial 0x11d.

The work is done by C kernels with the GIL released: an AVX2 ``vpshufb`` kernel chosen from
the CPU's flags at import, or a portable one. ``BALLAST_NATIVE_PORTABLE=1`` forces the
portable kernel; :func:`kernel_name` tells which one runs.

The API avoids copies: data fragments are views of the input, results are memoryviews of
one freshly allocated block, and ``*_into`` variants write into caller-provided buffers.
Fragments may be given to the decoders as ``{index: buffer}`` or as ``(index, buffer)``
pairs. Every bad argument raises ``TypeError`` (wrong kind of object, read-only output) or
``ValueError`` (sizes, indexes, counts, overlaps) with the reason.

Example::

    data_fragments, parity = native.encode(payload, 10, 4)
    survivors = {i: f for i, f in enumerate(data_fragments + parity) if i not in lost}
    assert native.decode(survivors, 10, 4, len(payload)) == payload

The functions below cache one :class:`ReedSolomon` codec per ``(k, m)``; use the class
directly to keep one yourself.

Checksums: :func:`crc32` (zlib's CRC-32, the same values as ``zlib.crc32``), :func:`crc32c`
(Castagnoli) and :func:`crc64nvme` (CRC-64/NVME) take any C-contiguous buffer and continue
from a previous result like ``zlib.crc32(data, crc)``. CRC-32 and CRC-64/NVME run on
PCLMULQDQ folding and CRC-32C on the SSE4.2 ``crc32`` instruction when the CPU has them,
else all on portable slicing-by-8 tables (also forced by ``BALLAST_NATIVE_PORTABLE=1``);
:func:`crc32_kernel`, :func:`crc32c_kernel` and :func:`crc64nvme_kernel` tell which one
runs.

Encryption: :func:`xsalsa20_xor` XORs a buffer with the XSalsa20 keystream (libsodium's
``crypto_stream_xsalsa20``, the cipher of ``crypto_secretbox``) of a 24-byte nonce and a
32-byte key from any byte offset ``skip``, into a writable buffer, in place, or into a new
``bytes`` (:func:`xsalsa20_xor_bytes`): ``skip=0``
over 32 zero bytes gives secretbox's one-time Poly1305 key, ``skip=32`` its ciphertext. It
runs sixteen blocks at once on AVX-512F when the CPU has it, else on a portable scalar
kernel (also forced by ``BALLAST_NATIVE_PORTABLE=1``); :func:`xsalsa20_kernel` tells which.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, overload

from native._checksums import (
    crc32,
    crc32_kernel,
    crc32c,
    crc32c_kernel,
    crc64nvme,
    crc64nvme_kernel,
)
from native._reed_solomon import (
    MAX_DATA_FRAGMENTS,
    MAX_PARITY_FRAGMENTS,
    PORTABLE_ENV,
    ReedSolomon,
    available_kernels,
    fragment_size,
    kernel_name,
    kernel_statistics,
    select_kernel,
)
from native._xsalsa20 import xsalsa20_kernel, xsalsa20_xor, xsalsa20_xor_bytes

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    Fragments = Mapping[int, ReadableBuffer] | Iterable[tuple[int, ReadableBuffer]]

__all__ = [
    "MAX_DATA_FRAGMENTS",
    "MAX_PARITY_FRAGMENTS",
    "PORTABLE_ENV",
    "ReedSolomon",
    "available_kernels",
    "codec",
    "crc32",
    "crc32_kernel",
    "crc32c",
    "crc32c_kernel",
    "crc64nvme",
    "crc64nvme_kernel",
    "decode",
    "decode_into",
    "encode",
    "encode_into",
    "fragment_size",
    "kernel_name",
    "kernel_statistics",
    "reconstruct",
    "select_kernel",
    "split",
    "xsalsa20_kernel",
    "xsalsa20_xor",
    "xsalsa20_xor_bytes",
]


@functools.lru_cache(maxsize=64, typed=True)
def codec(k: int, m: int) -> ReedSolomon:
    """Return the shared :class:`ReedSolomon` codec for ``k`` data and ``m`` parity fragments.

    Raises:
        TypeError: ``k`` or ``m`` is not an int.
        ValueError: ``k`` or ``m`` is out of range.
    """
    return ReedSolomon(k, m)


def split(data: ReadableBuffer, k: int) -> list[memoryview]:
    """Return the ``k`` data fragments of ``data`` (views of it, padded tail copied)."""
    return codec(k, 0).split(data)


def encode(data: ReadableBuffer, k: int, m: int) -> tuple[list[memoryview], list[memoryview]]:
    """Return ``(data_fragments, parity_fragments)`` of ``data`` for a ``k + m`` code.

    Data fragments are zero-copy views of ``data`` except the zero-padded tail; the ``m``
    parity fragments are views of one fresh buffer. See :meth:`ReedSolomon.encode`.
    """
    return codec(k, m).encode(data)


def encode_into(
    data: ReadableBuffer,
    k: int,
    m: int,
    parity_out: WriteableBuffer | Iterable[WriteableBuffer],
) -> int:
    """Write the ``m`` parity fragments of ``data`` into ``parity_out``; return the fragment size.

    ``parity_out`` is one buffer of ``m * fragment_size`` bytes or ``m`` buffers of
    ``fragment_size`` bytes. See :meth:`ReedSolomon.encode_into`.
    """
    return codec(k, m).encode_into(data, parity_out)


@overload
def decode(
    fragments: Fragments, k: int, m: int, size: int, *, rebuild_parity: Literal[False] = False
) -> memoryview: ...


@overload
def decode(
    fragments: Fragments, k: int, m: int, size: int, *, rebuild_parity: Literal[True]
) -> tuple[memoryview, dict[int, memoryview]]: ...


def decode(
    fragments: Fragments, k: int, m: int, size: int, *, rebuild_parity: bool = False
) -> memoryview | tuple[memoryview, dict[int, memoryview]]:
    """Return the original ``size`` bytes rebuilt from any ``k`` of the ``k + m`` fragments.

    With ``rebuild_parity=True`` return ``(data, {index: fragment})`` with every parity
    fragment that was not given, computed in the same pass. See :meth:`ReedSolomon.decode`.
    """
    if rebuild_parity:
        return codec(k, m).decode(fragments, size, rebuild_parity=True)
    return codec(k, m).decode(fragments, size)


def decode_into(fragments: Fragments, k: int, m: int, size: int, out: WriteableBuffer) -> None:
    """Rebuild the original ``size`` bytes into ``out[:size]``.

    ``out`` must be writable, hold at least ``size`` bytes and not overlap the fragments used.
    See :meth:`ReedSolomon.decode_into`.
    """
    codec(k, m).decode_into(fragments, size, out)


def reconstruct(
    fragments: Fragments, k: int, m: int, wanted: Iterable[int]
) -> dict[int, memoryview]:
    """Return ``{index: fragment}`` for the ``wanted`` indexes, rebuilt from any ``k`` fragments.

    For repair: lost data and parity fragments come back without materialising the data.
    See :meth:`ReedSolomon.reconstruct`.
    """
    return codec(k, m).reconstruct(fragments, wanted)
