# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""XSalsa20: the compiled stream cipher re-exported by :mod:`native`.

The kernels live in salsa_kernels.c (theory of operation at its top). This layer validates
the arguments, holds the Python buffers while the GIL is released, and picks the kernel at
import: AVX-512 (sixteen blocks per pass) when the CPU has AVX-512F, else the portable
scalar one, which ``BALLAST_NATIVE_PORTABLE=1`` forces (as for Reed-Solomon and the CRCs).
``xsalsa20_xor_with`` runs a named kernel, so tests and benchmarks can compare them.
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from native._buffers cimport automatic_kernel, get_buffer

from native._reed_solomon import PORTABLE_ENV


cdef extern from "salsa_kernels.h" nogil:
    enum:
        XSALSA20_KERNEL_PORTABLE
        XSALSA20_KERNEL_AVX512

    void salsa_init()
    int xsalsa20_avx512_available()
    void xsalsa20_run(int kernel, uint8_t *out, const uint8_t *inp, size_t len,
                      const uint8_t *nonce, const uint8_t *key, uint64_t skip)


cdef enum:
    NOGIL_MIN_BYTES = 4096  # below this, releasing the GIL costs more than it frees
    KEY_BYTES = 32
    NONCE_BYTES = 24

XSALSA20_KEY_BYTES = KEY_BYTES
XSALSA20_NONCE_BYTES = NONCE_BYTES
SKIP_MAX = 0xFFFFFFFFFFFFFFFF

salsa_init()

cdef dict _KERNEL_IDS = {"avx512": XSALSA20_KERNEL_AVX512, "portable": XSALSA20_KERNEL_PORTABLE}


def xsalsa20_kernels():
    """Return the XSalsa20 kernels this CPU and build can run, fastest first."""
    return ("avx512", "portable") if xsalsa20_avx512_available() else ("portable",)


cdef str _kernel_name = automatic_kernel(xsalsa20_kernels(), PORTABLE_ENV)
cdef int _kernel = _KERNEL_IDS[_kernel_name]


cdef int _copy_exact(object obj, uint8_t *dest, Py_ssize_t size, str what) except -1:
    """Copy the ``size`` bytes of the buffer ``obj`` to ``dest``; any other length is an error."""
    cdef Py_buffer view
    get_buffer(obj, &view, False, what)
    try:
        if view.len != size:
            raise ValueError(f"{what} must be {size} bytes long, got {view.len}")
        memcpy(dest, view.buf, <size_t>size)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef uint64_t _check_skip(object skip) except? 0:
    if isinstance(skip, bool) or not isinstance(skip, int):
        raise TypeError(f"skip must be an int, not {type(skip).__name__}")
    if not 0 <= skip <= SKIP_MAX:
        raise ValueError(f"skip must be in 0..{SKIP_MAX:#x}, got {skip}")
    return <uint64_t>skip


cdef int _run(int kernel, uint8_t *dst_ptr, const uint8_t *src_ptr, size_t size,
              object nonce, object key, uint64_t offset) except -1:
    """Check ``nonce`` and ``key`` and run ``kernel`` (without the GIL from 4 KiB on)."""
    cdef uint8_t nonce_bytes[NONCE_BYTES]
    cdef uint8_t key_bytes[KEY_BYTES]
    try:
        _copy_exact(nonce, nonce_bytes, NONCE_BYTES, "nonce")
        _copy_exact(key, key_bytes, KEY_BYTES, "key")
        if size >= NOGIL_MIN_BYTES:
            with nogil:
                xsalsa20_run(kernel, dst_ptr, src_ptr, size, nonce_bytes, key_bytes, offset)
        else:
            xsalsa20_run(kernel, dst_ptr, src_ptr, size, nonce_bytes, key_bytes, offset)
    finally:
        memset(key_bytes, 0, KEY_BYTES)
    return 0


cdef int _xor(int kernel, object source, object target, object nonce, object key,
              object skip) except -1:
    cdef uint64_t offset = _check_skip(skip)
    cdef Py_buffer src
    cdef Py_buffer dst
    cdef const uint8_t *src_ptr
    cdef uint8_t *dst_ptr
    cdef size_t size
    get_buffer(source, &src, False, "source")
    try:
        get_buffer(target, &dst, True, "target")
        try:
            if src.len != dst.len:
                raise ValueError(
                    f"target must be as long as source: {dst.len} bytes != {src.len} bytes"
                )
            src_ptr = <const uint8_t *>src.buf
            dst_ptr = <uint8_t *>dst.buf
            size = <size_t>src.len
            if (size > 0 and src_ptr != dst_ptr
                    and src_ptr < dst_ptr + size and dst_ptr < src_ptr + size):
                raise ValueError(
                    "target must be the source itself or not overlap it (partial overlap)"
                )
            _run(kernel, dst_ptr, src_ptr, size, nonce, key, offset)
        finally:
            PyBuffer_Release(&dst)
    finally:
        PyBuffer_Release(&src)
    return 0


def xsalsa20_xor(source, target, nonce, key, skip=0):
    """Write ``source`` XOR the XSalsa20 keystream of ``nonce`` and ``key`` into ``target``.

    The keystream is libsodium's ``crypto_stream_xsalsa20`` from byte ``skip`` on:
    ``target[i] = source[i] ^ keystream[skip + i]``. ``crypto_secretbox`` takes its
    Poly1305 key from keystream bytes 0..31 (``skip=0`` over 32 zero bytes) and encrypts
    the message with the bytes from 32 on (``skip=32``). ``source`` is any C-contiguous
    buffer; ``target`` a writable C-contiguous buffer of the same length, which may be
    ``source`` itself (in place) but must not otherwise overlap it. ``nonce`` (24 bytes) and
    ``key`` (32 bytes) are any C-contiguous buffers. The GIL is released while 4 KiB or
    more are processed.

    Raises:
        TypeError: a buffer argument is not a C-contiguous buffer, ``target`` is read-only,
            or ``skip`` is not an int.
        ValueError: ``target`` and ``source`` differ in length or partially overlap,
            ``nonce`` is not 24 bytes, ``key`` is not 32 bytes, or ``skip`` is outside
            ``0..2**64-1``.
    """
    _xor(_kernel, source, target, nonce, key, skip)


def xsalsa20_xor_bytes(source, nonce, key, skip=0):
    """Return ``source`` XOR the keystream as a new ``bytes`` object (see :func:`xsalsa20_xor`).

    The result is written straight into the ``bytes`` it returns: no zero-filled buffer to
    write into first, and no copy to make it immutable afterwards (4 MiB of each per chunk).

    Raises:
        TypeError, ValueError: as :func:`xsalsa20_xor` for ``source``, ``nonce``, ``key``
            and ``skip``.
    """
    cdef uint64_t offset = _check_skip(skip)
    cdef Py_buffer src
    cdef bytes out
    get_buffer(source, &src, False, "source")
    try:
        out = PyBytes_FromStringAndSize(NULL, src.len)
        _run(_kernel, <uint8_t *>PyBytes_AS_STRING(out), <const uint8_t *>src.buf,
             <size_t>src.len, nonce, key, offset)
    finally:
        PyBuffer_Release(&src)
    return out


def xsalsa20_kernel():
    """Return the kernel :func:`xsalsa20_xor` uses: ``"avx512"`` or ``"portable"``.

    Chosen at import from the CPU's flags (AVX-512F); ``BALLAST_NATIVE_PORTABLE=1`` in the
    environment forces the portable kernel.
    """
    return _kernel_name


def xsalsa20_xor_with(kernel, source, target, nonce, key, skip=0):
    """Run :func:`xsalsa20_xor` with the named ``kernel`` (for cross-checks and benchmarks).

    Raises:
        ValueError: ``kernel`` is not in :func:`xsalsa20_kernels`; otherwise as
            :func:`xsalsa20_xor`.
    """
    available = xsalsa20_kernels()
    if kernel not in available:
        raise ValueError(f"XSalsa20 kernel {kernel!r} is not one of {available}")
    _xor(_KERNEL_IDS[kernel], source, target, nonce, key, skip)
