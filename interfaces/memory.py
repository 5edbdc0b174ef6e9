"""Process-wide memory allocator settings for node processes.

A node moves data in multi-MiB buffers (4 MiB chunks, 1 MiB fragments, their ciphertext and
frames). With glibc's defaults each such buffer is a fresh ``mmap`` (or heap memory trimmed
back to the kernel soon after it is freed), so every page of every buffer is faulted in again:
a 4 MiB copy then costs several times what it costs in memory the process already has. Raising
the mmap threshold keeps these buffers on the heap, and raising the trim threshold keeps freed
heap memory for the next one. The cost is resident memory a busy node keeps (bounded by the
trim threshold per allocator arena) — what a storage daemon is for.

Nothing happens where the C library is not glibc (``mallopt`` is missing) or refuses a value.

Once a node serves, :func:`settle_heap` moves everything start-up made (modules, tables,
configuration) out of the cyclic garbage collector's sight: a full collection then scans only
what serving allocates, instead of stopping the event loop for a tenth of a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

logger = logging.getLogger(__name__)

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_buffers_resident", "settle_heap"]

#: Allocations below this come from the heap, not from a fresh mapping (glibc caps it at 32 MiB
#: on 64-bit, which covers every buffer a node uses).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed heap memory is returned to the kernel only beyond this much.
TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_buffers_resident() -> bool:
    """Apply the allocator settings (see the module docstring); return whether they took."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("memory: no mallopt in %s; allocator left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        logger.debug("memory: mallopt refused the thresholds; allocator left as it is")
    return applied


def settle_heap() -> None:
    """Collect once, then exempt every surviving object from later collections (call once
    the process serves: what start-up built lives as long as the process)."""
    gc.collect()
    gc.freeze()
