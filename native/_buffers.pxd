# cython: language_level=3
"""Argument handling shared by the native modules (inline: compiled into each of them)."""

from cpython.buffer cimport (
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)


cdef inline int get_buffer(object obj, Py_buffer *view, bint writable, str what) except -1:
    """Fill ``view`` with the bytes of ``obj``, a C-contiguous (and maybe writable) buffer.

    Anything else raises ``TypeError`` naming the argument (``what``).
    """
    if not PyObject_CheckBuffer(obj):
        raise TypeError(
            f"{what} must be a bytes-like object (buffer protocol), not {type(obj).__name__}"
        )
    cdef int flags = PyBUF_SIMPLE
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, view, flags)
    except BufferError as exc:
        kind = "a writable, C-contiguous" if writable else "a C-contiguous"
        raise TypeError(f"{what} must be {kind} buffer: {exc}") from None
    return 0


cdef inline str automatic_kernel(tuple available, str portable_env):
    """The fastest of ``available``, or ``"portable"`` when ``portable_env`` asks for it."""
    import os

    if os.environ.get(portable_env, "") not in ("", "0"):
        return "portable"
    return available[0]
