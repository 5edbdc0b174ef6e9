# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""CRC-32, CRC-32C and CRC-64/NVME: the compiled checksums re-exported by :mod:`native`.

The kernels live in crc_kernels.c (theory of operation at its top). This layer validates
the arguments, holds the Python buffer while the GIL is released, and picks each CRC's
kernel at import: the CPU's best (PCLMULQDQ folding for CRC-32 and CRC-64/NVME, SSE4.2
``crc32`` for CRC-32C) or the portable slicing-by-8 one, which ``BALLAST_NATIVE_PORTABLE=1``
forces (as for Reed-Solomon). ``crc32_with``, ``crc32c_with`` and ``crc64nvme_with`` run a
named kernel, so tests and benchmarks can compare them.
"""

from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from native._buffers cimport automatic_kernel, get_buffer

from native._reed_solomon import PORTABLE_ENV


cdef extern from "crc_kernels.h" nogil:
    enum:
        CRC32_KERNEL_PORTABLE
        CRC32_KERNEL_PCLMUL
        CRC32C_KERNEL_PORTABLE
        CRC32C_KERNEL_SSE42
        CRC64NVME_KERNEL_PORTABLE
        CRC64NVME_KERNEL_PCLMUL

    void crc_init()
    int crc32_pclmul_available()
    int crc32c_sse42_available()
    int crc64nvme_pclmul_available()
    uint32_t crc32_run(int kernel, uint32_t crc, const uint8_t *data, size_t len)
    uint32_t crc32c_run(int kernel, uint32_t crc, const uint8_t *data, size_t len)
    uint64_t crc64nvme_run(int kernel, uint64_t crc, const uint8_t *data, size_t len)


ctypedef uint32_t (*crc32_runner)(int kernel, uint32_t crc, const uint8_t *data,
                                 size_t len) noexcept nogil


cdef enum:
    NOGIL_MIN_BYTES = 4096  # below this, releasing the GIL costs more than it frees

CRC32_MAX = 0xFFFFFFFF
CRC64_MAX = 0xFFFFFFFFFFFFFFFF

crc_init()

cdef dict _CRC32_IDS = {"pclmul": CRC32_KERNEL_PCLMUL, "portable": CRC32_KERNEL_PORTABLE}
cdef dict _CRC32C_IDS = {"sse4.2": CRC32C_KERNEL_SSE42, "portable": CRC32C_KERNEL_PORTABLE}
cdef dict _CRC64NVME_IDS = {"pclmul": CRC64NVME_KERNEL_PCLMUL, "portable": CRC64NVME_KERNEL_PORTABLE}


def crc32_kernels():
    """Return the CRC-32 kernels this CPU and build can run, fastest first."""
    return ("pclmul", "portable") if crc32_pclmul_available() else ("portable",)


def crc32c_kernels():
    """Return the CRC-32C kernels this CPU and build can run, fastest first."""
    return ("sse4.2", "portable") if crc32c_sse42_available() else ("portable",)


def crc64nvme_kernels():
    """Return the CRC-64/NVME kernels this CPU and build can run, fastest first."""
    return ("pclmul", "portable") if crc64nvme_pclmul_available() else ("portable",)


cdef str _crc32_name = automatic_kernel(crc32_kernels(), PORTABLE_ENV)
cdef str _crc32c_name = automatic_kernel(crc32c_kernels(), PORTABLE_ENV)
cdef str _crc64nvme_name = automatic_kernel(crc64nvme_kernels(), PORTABLE_ENV)
cdef int _crc32_kernel = _CRC32_IDS[_crc32_name]
cdef int _crc32c_kernel = _CRC32C_IDS[_crc32c_name]
cdef int _crc64nvme_kernel = _CRC64NVME_IDS[_crc64nvme_name]


cdef object _check_crc(object crc, object limit):
    """Return ``crc`` after checking its type and range."""
    if isinstance(crc, bool) or not isinstance(crc, int):
        raise TypeError(f"crc must be an int, not {type(crc).__name__}")
    if not 0 <= crc <= limit:
        raise ValueError(f"crc must be in 0..{limit:#x}, got {crc}")
    return crc


cdef int _check_kernel(str algorithm, object kernel, tuple available) except -1:
    if kernel not in available:
        raise ValueError(f"{algorithm} kernel {kernel!r} is not one of {available}")
    return 0


cdef uint32_t _crc32_any(crc32_runner run, int kernel, object data, uint32_t crc) except? 0:
    """A 32-bit CRC of ``data`` from ``crc`` by ``run`` (``crc32_run`` or ``crc32c_run``)."""
    cdef Py_buffer view
    get_buffer(data, &view, False, "data")
    cdef const uint8_t *ptr = <const uint8_t *>view.buf
    cdef size_t size = <size_t>view.len
    try:
        if size >= NOGIL_MIN_BYTES:
            with nogil:
                crc = run(kernel, crc, ptr, size)
        else:
            crc = run(kernel, crc, ptr, size)
    finally:
        PyBuffer_Release(&view)
    return crc


cdef uint64_t _crc64nvme(int kernel, object data, uint64_t crc) except? 0:
    cdef Py_buffer view
    get_buffer(data, &view, False, "data")
    cdef const uint8_t *ptr = <const uint8_t *>view.buf
    cdef size_t size = <size_t>view.len
    try:
        if size >= NOGIL_MIN_BYTES:
            with nogil:
                crc = crc64nvme_run(kernel, crc, ptr, size)
        else:
            crc = crc64nvme_run(kernel, crc, ptr, size)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32(data, crc=0):
    """Return the CRC-32 of ``data`` continuing from ``crc`` (0 to start): ``zlib.crc32``.

    The same values as ``zlib.crc32(data, crc)`` (reflected polynomial 0xEDB88320):
    ``crc32(b, crc32(a)) == crc32(a + b)``. ``data`` is any C-contiguous buffer. The GIL is
    released while 4 KiB or more are checksummed.

    Raises:
        TypeError: ``data`` is not a C-contiguous buffer or ``crc`` is not an int.
        ValueError: ``crc`` is outside ``0..2**32-1``.
    """
    return _crc32_any(crc32_run, _crc32_kernel, data, _check_crc(crc, CRC32_MAX))


def crc32c(data, crc=0):
    """Return the CRC-32C of ``data`` continuing from ``crc`` (0 to start).

    ``crc`` is the finished CRC of the bytes before ``data``, as with ``zlib.crc32``:
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``. ``data`` is any C-contiguous buffer. The GIL
    is released while 4 KiB or more are checksummed.

    Raises:
        TypeError: ``data`` is not a C-contiguous buffer or ``crc`` is not an int.
        ValueError: ``crc`` is outside ``0..2**32-1``.
    """
    return _crc32_any(crc32c_run, _crc32c_kernel, data, _check_crc(crc, CRC32_MAX))


def crc64nvme(data, crc=0):
    """Return the CRC-64/NVME of ``data`` continuing from ``crc`` (0 to start).

    Same conventions as :func:`crc32c`, with ``crc`` in ``0..2**64-1``.

    Raises:
        TypeError: ``data`` is not a C-contiguous buffer or ``crc`` is not an int.
        ValueError: ``crc`` is outside ``0..2**64-1``.
    """
    return _crc64nvme(_crc64nvme_kernel, data, _check_crc(crc, CRC64_MAX))


def crc32_kernel():
    """Return the kernel :func:`crc32` uses: ``"pclmul"`` or ``"portable"``.

    Chosen like :func:`crc32c_kernel`.
    """
    return _crc32_name


def crc32c_kernel():
    """Return the kernel :func:`crc32c` uses: ``"sse4.2"`` or ``"portable"``.

    Chosen at import from the CPU's flags; ``BALLAST_NATIVE_PORTABLE=1`` in the environment
    forces the portable kernel.
    """
    return _crc32c_name


def crc64nvme_kernel():
    """Return the kernel :func:`crc64nvme` uses: ``"pclmul"`` or ``"portable"``.

    Chosen like :func:`crc32c_kernel`.
    """
    return _crc64nvme_name


def crc32_with(kernel, data, crc=0):
    """Return :func:`crc32` of ``data`` computed by the named ``kernel`` (for cross-checks).

    Raises:
        ValueError: ``kernel`` is not in :func:`crc32_kernels`; otherwise as :func:`crc32`.
    """
    _check_kernel("CRC-32", kernel, crc32_kernels())
    return _crc32_any(crc32_run, _CRC32_IDS[kernel], data, _check_crc(crc, CRC32_MAX))


def crc32c_with(kernel, data, crc=0):
    """Return :func:`crc32c` of ``data`` computed by the named ``kernel`` (for cross-checks).

    Raises:
        ValueError: ``kernel`` is not in :func:`crc32c_kernels`; otherwise as :func:`crc32c`.
    """
    _check_kernel("CRC-32C", kernel, crc32c_kernels())
    return _crc32_any(crc32c_run, _CRC32C_IDS[kernel], data, _check_crc(crc, CRC32_MAX))


def crc64nvme_with(kernel, data, crc=0):
    """Return :func:`crc64nvme` of ``data`` computed by the named ``kernel`` (for cross-checks).

    Raises:
        ValueError: ``kernel`` is not in :func:`crc64nvme_kernels`; otherwise as
            :func:`crc64nvme`.
    """
    _check_kernel("CRC-64/NVME", kernel, crc64nvme_kernels())
    return _crc64nvme(_CRC64NVME_IDS[kernel], data, _check_crc(crc, CRC64_MAX))
