# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Reed-Solomon erasure coding over GF(2^8): the compiled core re-exported by :mod:`native`.

The arithmetic and the kernels live in rs_kernels.c (see rs_kernels.h for the theory of
operation). This layer validates every argument, holds the Python buffers while the GIL is
released, and lays results out in freshly allocated, 64-byte aligned blocks that the
returned memoryviews keep alive.
"""

import os
from collections.abc import Mapping

cimport cython

from cpython.buffer cimport PyBuffer_FillInfo, PyBuffer_Release, PyObject_CheckBuffer
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset

from native._buffers cimport get_buffer


cdef extern from "rs_kernels.h" nogil:
    enum:
        RS_TABLE_BYTES
        RS_KERNEL_PORTABLE
        RS_KERNEL_AVX2

    ctypedef struct rs_job_t:
        size_t len
        int k
        int rows
        const uint8_t *tables
        const uint8_t **src
        const size_t *src_len
        uint8_t **dst
        const size_t *dst_len
        int ncopy
        const uint8_t **copy_src
        uint8_t **copy_dst
        const size_t *copy_len

    void rs_init()
    void rs_generator_row(int k, int index, uint8_t *row)
    int rs_solve(int k, const int *present, int nwanted, const int *wanted, uint8_t *coeffs)
    void rs_make_tables(int n, const uint8_t *coeffs, uint8_t *out)
    int rs_avx2_available()
    int rs_run(int kernel, const rs_job_t *job)
    void rs_statistics(uint64_t *out)
    void *rs_alloc(size_t size)
    void rs_free(void *ptr)


cdef enum:
    MAX_K = 32
    MAX_M = 16
    MAX_N = 48  # MAX_K + MAX_M: bounds every per-call array below
    FIELD_SIZE = 256

MAX_DATA_FRAGMENTS = MAX_K
MAX_PARITY_FRAGMENTS = MAX_M
PORTABLE_ENV = "BALLAST_NATIVE_PORTABLE"

rs_init()

cdef int _kernel = RS_KERNEL_PORTABLE
cdef dict _KERNEL_IDS = {"portable": RS_KERNEL_PORTABLE, "avx2": RS_KERNEL_AVX2}


cdef int _automatic_kernel():
    if os.environ.get(PORTABLE_ENV, "") not in ("", "0"):
        return RS_KERNEL_PORTABLE
    if rs_avx2_available():
        return RS_KERNEL_AVX2
    return RS_KERNEL_PORTABLE


_kernel = _automatic_kernel()


cdef str _kernel_label(int kernel):
    return "avx2" if kernel == RS_KERNEL_AVX2 else "portable"


def kernel_name():
    """Return the kernel that encodes and decodes now: ``"avx2"`` or ``"portable"``.

    The choice is made at import from the CPU's flags; ``BALLAST_NATIVE_PORTABLE=1`` in the
    environment forces the portable kernel, and :func:`select_kernel` changes it at run time.
    """
    return _kernel_label(_kernel)


def available_kernels():
    """Return the kernels this CPU and build can run, fastest first."""
    if rs_avx2_available():
        return ("avx2", "portable")
    return ("portable",)


def select_kernel(name):
    """Switch every later call to kernel ``name`` and return the previous kernel's name.

    ``None`` restores the automatic choice (the CPU's best, or the portable kernel when
    ``BALLAST_NATIVE_PORTABLE=1``). Calls already running keep the kernel they started with.
    Meant for tests and benchmarks: the setting is process-wide.

    Raises:
        ValueError: ``name`` is unknown, or the CPU cannot run it.
    """
    global _kernel
    previous = _kernel_label(_kernel)
    if name is None:
        _kernel = _automatic_kernel()
        return previous
    if name not in _KERNEL_IDS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {sorted(_KERNEL_IDS)}")
    if name not in available_kernels():
        raise ValueError(f"kernel {name!r} is not supported on this CPU")
    _kernel = _KERNEL_IDS[name]
    return previous


def kernel_statistics():
    """Return the bytes each kernel has produced in this process, by loop.

    Keys: ``"portable"``, ``"avx2"`` (the 64-byte vector loop) and ``"avx2_tail"`` (the
    scalar loop that finishes rows whose length is not a multiple of 64). Tests use it to
    prove which kernel really ran.
    """
    cdef uint64_t counts[3]
    rs_statistics(counts)
    return {"portable": counts[0], "avx2": counts[1], "avx2_tail": counts[2]}


cdef inline size_t _round64(size_t n) noexcept nogil:
    return (n + 63) & ~(<size_t>63)


cdef inline size_t _clamp(Py_ssize_t n, size_t hi) noexcept nogil:
    if n <= 0:
        return 0
    if <size_t>n > hi:
        return hi
    return <size_t>n


def fragment_size(size, k):
    """Return the length of each of the fragments of ``size`` bytes coded with ``k`` data fragments.

    That is ``ceil(size / k)``: the data is zero-padded to ``k`` times this length.
    """
    size = _check_size(size)
    _check_geometry(k, 0)
    return (size + k - 1) // k


cdef object _check_size(object size):
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if size > PY_SSIZE_T_MAX:
        raise ValueError(f"size {size} is larger than any buffer can be")
    return size


cdef _check_geometry(object k, object m):
    for name, value in (("k", k), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if k + m > FIELD_SIZE:
        raise ValueError(f"k + m must be <= {FIELD_SIZE} in GF(2^8), got k={k} m={m}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    if not 0 <= m <= MAX_M:
        raise ValueError(f"m must be in 0..{MAX_M}, got {m}")


cdef class _Block:
    """A 64-byte aligned (2 MiB for large sizes) block of memory exposing the buffer protocol."""

    cdef uint8_t *data
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t size):
        self.data = <uint8_t *>rs_alloc(<size_t>size)
        if self.data == NULL:
            raise MemoryError(f"cannot allocate {size} bytes")
        self.size = size

    def __dealloc__(self):
        rs_free(self.data)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.data, self.size, 0, flags)


cdef class _Views:
    """Buffers held for the duration of one call; released however the call ends."""

    cdef Py_buffer *views
    cdef int count
    cdef int capacity

    def __cinit__(self, int capacity):
        self.views = <Py_buffer *>PyMem_Calloc(max(capacity, 1), sizeof(Py_buffer))
        if self.views == NULL:
            raise MemoryError()
        self.count = 0
        self.capacity = capacity

    def __dealloc__(self):
        cdef int i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])
        PyMem_Free(self.views)

    cdef Py_buffer *get(self, object obj, bint writable, str what) except NULL:
        if self.count >= self.capacity:
            raise RuntimeError("internal error: too many buffers")
        get_buffer(obj, &self.views[self.count], writable, what)
        self.count += 1
        return &self.views[self.count - 1]


cdef inline bint _overlaps(const void *a, size_t alen, const void *b, size_t blen) noexcept:
    cdef const uint8_t *pa = <const uint8_t *>a
    cdef const uint8_t *pb = <const uint8_t *>b
    return alen > 0 and blen > 0 and pa < pb + blen and pb < pa + alen


cdef object _byte_view(object obj):
    view = memoryview(obj)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


cdef list _parse_fragments(object fragments, int n):
    """Return [(index, buffer object)] sorted by index, validating types and indexes."""
    if isinstance(fragments, Mapping):
        items = list(fragments.items())
    elif PyObject_CheckBuffer(fragments) or isinstance(fragments, str):
        raise TypeError("fragments must map fragment indexes to buffers, not be a buffer")
    else:
        try:
            items = list(fragments)
        except TypeError:
            raise TypeError(
                "fragments must be a mapping {index: buffer} or an iterable of "
                f"(index, buffer) pairs, not {type(fragments).__name__}"
            ) from None
    cdef list parsed = []
    seen = set()
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"each fragment must be an (index, buffer) pair, got {item!r:.60}")
        index, buf = item
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"fragment index must be an int, not {type(index).__name__}")
        if not 0 <= index < n:
            raise ValueError(f"fragment index {index} out of range 0..{n - 1}")
        if index in seen:
            raise ValueError(f"duplicate fragment index {index}")
        seen.add(index)
        parsed.append((index, buf))
    parsed.sort(key=_first)
    return parsed


def _first(pair):
    return pair[0]


cdef int _run(rs_job_t *job) except -1:
    cdef int kernel = _kernel
    cdef int rc
    with nogil:
        rc = rs_run(kernel, job)
    if rc != 0:
        raise MemoryError("out of memory for Reed-Solomon scratch space")
    return 0


@cython.final
cdef class ReedSolomon:
    """A systematic Reed-Solomon code with ``k`` data and ``m`` parity fragments.

    Immutable and thread-safe; holds the encoding tables, so build one per geometry and
    reuse it (the module-level functions of :mod:`native` cache them). Every method releases
    the GIL while it computes. Any ``k`` of the ``k + m`` fragments rebuild the data: the
    generator is ``[I; C]`` with the Cauchy matrix ``C[i][j] = 1 / ((k + i) ^ j)`` over
    GF(2^8) with polynomial 0x11d.

    Args:
        k: data fragments, 1..32.
        m: parity fragments, 0..16.

    Raises:
        TypeError: ``k`` or ``m`` is not an int.
        ValueError: ``k`` or ``m`` is out of range, or ``k + m > 256``.
    """

    cdef readonly int k
    cdef readonly int m
    cdef uint8_t *_tables

    def __cinit__(self, k, m):
        _check_geometry(k, m)
        self.k = k
        self.m = m
        self._tables = <uint8_t *>rs_alloc(<size_t>(m * k * RS_TABLE_BYTES))
        if self._tables == NULL:
            raise MemoryError()
        cdef uint8_t coeffs[MAX_M * MAX_K]
        cdef int i
        for i in range(m):
            rs_generator_row(k, k + i, &coeffs[i * k])
        rs_make_tables(m * k, coeffs, self._tables)

    def __dealloc__(self):
        rs_free(self._tables)

    def __repr__(self):
        return f"ReedSolomon(k={self.k}, m={self.m})"

    def __eq__(self, other):
        if not isinstance(other, ReedSolomon):
            return NotImplemented
        return (self.k, self.m) == ((<ReedSolomon>other).k, (<ReedSolomon>other).m)

    def __hash__(self):
        return hash((ReedSolomon, self.k, self.m))

    def __reduce__(self):
        return (ReedSolomon, (self.k, self.m))

    @property
    def n(self):
        """Total number of fragments, ``k + m``."""
        return self.k + self.m

    def fragment_size(self, size):
        """Return the length of every fragment of ``size`` bytes of data: ``ceil(size / k)``."""
        size = _check_size(size)
        return (size + self.k - 1) // self.k

    def generator_row(self, index):
        """Return row ``index`` (0 <= index < k + m) of the generator matrix as ``k`` bytes.

        Fragment ``index`` is the GF(2^8) dot product of this row with the data fragments.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if not 0 <= index < self.k + self.m:
            raise ValueError(f"index {index} out of range 0..{self.k + self.m - 1}")
        cdef uint8_t row[MAX_K]
        rs_generator_row(self.k, index, row)
        return (<char *>row)[:self.k]

    # ---- encoding -------------------------------------------------------------------------

    def split(self, data):
        """Return the ``k`` data fragments of ``data`` without computing parity.

        Fragments that lie wholly inside ``data`` are zero-copy memoryviews of it; the
        zero-padded tail fragment(s) are copies in one fresh buffer.

        Raises:
            TypeError: ``data`` is not a C-contiguous buffer.
        """
        return self._encode(data, False)[0]

    def encode(self, data):
        """Split ``data`` into ``k`` data fragments and compute ``m`` parity fragments.

        Returns:
            ``(data_fragments, parity_fragments)``: two lists of memoryviews, each fragment
            :meth:`fragment_size` bytes. Data fragments that lie wholly inside ``data`` are
            zero-copy views of it (so they change if ``data`` does); the zero-padded tail
            fragment(s) and all parity fragments live in one freshly allocated buffer.

        Raises:
            TypeError: ``data`` is not a C-contiguous buffer.
        """
        return self._encode(data, True)

    cdef tuple _encode(self, object data, bint with_parity):
        cdef int k = self.k, m = self.m if with_parity else 0
        cdef _Views views = _Views(1)
        cdef Py_buffer *d = views.get(data, False, "data")
        cdef size_t n = <size_t>d.len
        cdef size_t frag = (n + k - 1) // k
        cdef size_t stride = _round64(frag)
        cdef int full = k if frag == 0 else <int>(n // frag)
        cdef int npad = k - full
        cdef _Block block = _Block(<Py_ssize_t>(stride * (m + npad)))
        cdef const uint8_t *src[MAX_K]
        cdef size_t src_len[MAX_K]
        cdef uint8_t *dst[MAX_M]
        cdef const uint8_t *copy_src[MAX_K]
        cdef uint8_t *copy_dst[MAX_K]
        cdef size_t copy_len[MAX_K]
        cdef rs_job_t job
        cdef const uint8_t *base = <const uint8_t *>d.buf
        cdef int j, i
        cdef size_t have
        for j in range(k):
            have = _clamp(<Py_ssize_t>(n - j * frag) if j * frag < n else 0, frag)
            src[j] = base + j * frag if have > 0 else base
            src_len[j] = have
        for i in range(m):
            dst[i] = block.data + i * stride
        for i in range(npad):
            j = full + i
            copy_src[i] = src[j]
            copy_dst[i] = block.data + (m + i) * stride
            copy_len[i] = src_len[j]
            memset(copy_dst[i] + src_len[j], 0, frag - src_len[j])
        job.len = frag
        job.k = k
        job.rows = m
        job.tables = self._tables
        job.src = src
        job.src_len = src_len
        job.dst = dst
        job.dst_len = NULL
        job.ncopy = npad
        job.copy_src = copy_src
        job.copy_dst = copy_dst
        job.copy_len = copy_len
        _run(&job)
        whole = _byte_view(data)
        out = memoryview(block)
        fragments = [whole[j * frag:(j + 1) * frag] for j in range(full)]
        fragments.extend(out[(m + i) * stride:(m + i) * stride + frag] for i in range(npad))
        parity = [out[i * stride:i * stride + frag] for i in range(m)]
        return fragments, parity

    def encode_into(self, data, parity_out):
        """Compute the ``m`` parity fragments of ``data`` into caller-provided memory.

        Args:
            data: the bytes to protect (any C-contiguous buffer).
            parity_out: one writable buffer of at least ``m * fragment_size`` bytes
                (parity fragment ``i`` goes to ``[i * fragment_size, (i + 1) * fragment_size)``),
                or a sequence of ``m`` writable buffers of at least ``fragment_size`` bytes
                each (the first ``fragment_size`` bytes of each are written).

        Returns:
            The fragment size. The data fragments are ``split(data)``.

        Raises:
            TypeError: a buffer is missing, read-only or not C-contiguous.
            ValueError: an output is too small, the count of outputs is not ``m``, or an
                output overlaps ``data`` or another output.
        """
        cdef int k = self.k, m = self.m
        cdef _Views views = _Views(1 + m)
        cdef Py_buffer *d = views.get(data, False, "data")
        cdef Py_buffer *p
        cdef size_t n = <size_t>d.len
        cdef size_t frag = (n + k - 1) // k
        cdef const uint8_t *src[MAX_K]
        cdef size_t src_len[MAX_K]
        cdef uint8_t *dst[MAX_M]
        cdef rs_job_t job
        cdef const uint8_t *base = <const uint8_t *>d.buf
        cdef int i, j
        cdef size_t have
        if PyObject_CheckBuffer(parity_out):
            p = views.get(parity_out, True, "parity_out")
            if <size_t>p.len < m * frag:
                raise ValueError(
                    f"parity_out holds {p.len} bytes but {m} parity fragments of {frag} bytes "
                    f"need {m * frag}"
                )
            for i in range(m):
                dst[i] = <uint8_t *>p.buf + i * frag
        else:
            try:
                outs = list(parity_out)
            except TypeError:
                raise TypeError(
                    "parity_out must be a writable buffer or a sequence of them, "
                    f"not {type(parity_out).__name__}"
                ) from None
            if len(outs) != m:
                raise ValueError(f"parity_out has {len(outs)} buffers, expected m={m}")
            for i in range(m):
                p = views.get(outs[i], True, f"parity_out[{i}]")
                if <size_t>p.len < frag:
                    raise ValueError(
                        f"parity_out[{i}] holds {p.len} bytes, a fragment needs {frag}"
                    )
                dst[i] = <uint8_t *>p.buf
                for j in range(i):
                    if _overlaps(dst[i], frag, dst[j], frag):
                        raise ValueError(f"parity_out[{i}] overlaps parity_out[{j}]")
        for i in range(m):
            if _overlaps(dst[i], frag, base, n):
                raise ValueError("parity output overlaps the data")
        for j in range(k):
            have = _clamp(<Py_ssize_t>(n - j * frag) if j * frag < n else 0, frag)
            src[j] = base + j * frag if have > 0 else base
            src_len[j] = have
        job.len = frag
        job.k = k
        job.rows = m
        job.tables = self._tables
        job.src = src
        job.src_len = src_len
        job.dst = dst
        job.dst_len = NULL
        job.ncopy = 0
        job.copy_src = NULL
        job.copy_dst = NULL
        job.copy_len = NULL
        _run(&job)
        return frag

    # ---- decoding -------------------------------------------------------------------------

    def decode(self, fragments, size, *, rebuild_parity=False):
        """Rebuild the original ``size`` bytes from any ``k`` of the ``k + m`` fragments.

        Surviving data fragments are copied into place while the missing ones are computed,
        in one cache-blocked pass. When more than ``k`` fragments are given, the ``k`` with
        the lowest indexes are used (data fragments need no arithmetic); the others are only
        checked for size. Corruption is not detected: verify checksums first.

        Args:
            fragments: ``{index: buffer}`` (or an iterable of ``(index, buffer)`` pairs),
                each buffer exactly ``fragment_size(size)`` bytes.
            size: length of the original data.
            rebuild_parity: also compute the parity fragments absent from ``fragments``.

        Returns:
            A memoryview of exactly ``size`` bytes over a fresh buffer; with
            ``rebuild_parity=True``, ``(data, {index: parity fragment})`` for every parity
            index that was not given.

        Raises:
            TypeError: a fragment is not a C-contiguous buffer, or an index is not an int.
            ValueError: fewer than ``k`` fragments, an index out of range or repeated, or a
                fragment of the wrong size.
        """
        cdef int k = self.k, m = self.m
        size = _check_size(size)
        cdef size_t nbytes = size
        cdef size_t frag = (nbytes + k - 1) // k
        cdef size_t stride = _round64(frag)
        parsed = _parse_fragments(fragments, k + m)
        cdef _Views views = _Views(len(parsed))
        cdef const uint8_t *ptrs[MAX_N]
        cdef int indexes[MAX_N]
        self._collect(parsed, views, frag, True, ptrs, indexes)
        given = {index for index, _ in parsed}
        missing_parity = [i for i in range(k, k + m) if i not in given] if rebuild_parity else []
        cdef int nparity = len(missing_parity)
        cdef size_t data_bytes = _round64(nbytes)
        cdef _Block block = _Block(<Py_ssize_t>(data_bytes + nparity * stride))
        cdef uint8_t *parity_dst[MAX_M]
        cdef int parity_idx[MAX_M]
        cdef int i
        for i in range(nparity):
            parity_idx[i] = missing_parity[i]
            parity_dst[i] = block.data + data_bytes + i * stride
        self._decode(ptrs, indexes, frag, block.data, nbytes, nparity, parity_idx, parity_dst)
        out = memoryview(block)
        data = out[:nbytes]
        if not rebuild_parity:
            return data
        rebuilt = {
            missing_parity[i]: out[data_bytes + i * stride:data_bytes + i * stride + frag]
            for i in range(nparity)
        }
        return data, rebuilt

    def decode_into(self, fragments, size, out):
        """Rebuild the original ``size`` bytes into ``out[:size]``, like :meth:`decode`.

        Args:
            fragments: as for :meth:`decode`.
            size: length of the original data.
            out: a writable buffer of at least ``size`` bytes, not overlapping the fragments
                used; bytes past ``size`` are left alone.

        Raises:
            TypeError: ``out`` is read-only or not a buffer; as for :meth:`decode`.
            ValueError: ``out`` is too small or overlaps a fragment; as for :meth:`decode`.
        """
        cdef int k = self.k, m = self.m
        size = _check_size(size)
        cdef size_t nbytes = size
        cdef size_t frag = (nbytes + k - 1) // k
        parsed = _parse_fragments(fragments, k + m)
        cdef _Views views = _Views(len(parsed) + 1)
        cdef Py_buffer *o = views.get(out, True, "out")
        if <size_t>o.len < nbytes:
            raise ValueError(f"out holds {o.len} bytes, the data needs {nbytes}")
        cdef const uint8_t *ptrs[MAX_N]
        cdef int indexes[MAX_N]
        self._collect(parsed, views, frag, True, ptrs, indexes)
        cdef int j
        for j in range(k):
            if _overlaps(o.buf, nbytes, ptrs[j], frag):
                raise ValueError(f"out overlaps fragment {indexes[j]}")
        self._decode(ptrs, indexes, frag, <uint8_t *>o.buf, nbytes, 0, NULL, NULL)

    def reconstruct(self, fragments, wanted):
        """Return the fragments ``wanted`` (indexes), rebuilt from any ``k`` of the others.

        This is what repair needs: the lost fragments of a stripe, parity included, without
        materialising the data. Wanted fragments that were given are returned as views of
        them; the others are computed into one fresh buffer.

        Args:
            fragments: ``{index: buffer}`` (or ``(index, buffer)`` pairs) of equal sizes.
            wanted: fragment indexes (0 <= index < k + m); repeats are ignored.

        Returns:
            ``{index: memoryview}`` for every wanted index.

        Raises:
            TypeError: a fragment is not a buffer, or an index is not an int.
            ValueError: fewer than ``k`` fragments, an index out of range or repeated among
                ``fragments``, or fragments of unequal sizes.
        """
        cdef int k = self.k, m = self.m
        parsed = _parse_fragments(fragments, k + m)
        want = set()
        for w in wanted:
            if isinstance(w, bool) or not isinstance(w, int):
                raise TypeError(f"wanted index must be an int, not {type(w).__name__}")
            if not 0 <= w < k + m:
                raise ValueError(f"wanted index {w} out of range 0..{k + m - 1}")
            want.add(w)
        cdef _Views views = _Views(len(parsed))
        cdef const uint8_t *ptrs[MAX_N]
        cdef int indexes[MAX_N]
        cdef size_t frag = self._collect(parsed, views, 0, False, ptrs, indexes)
        given = dict(parsed)
        missing = sorted(w for w in want if w not in given)
        cdef int nmissing = len(missing)
        cdef size_t stride = _round64(frag)
        cdef _Block block = _Block(<Py_ssize_t>(stride * nmissing))
        cdef int idx[MAX_N]
        cdef uint8_t *dst[MAX_N]
        cdef int i
        for i in range(nmissing):
            idx[i] = missing[i]
            dst[i] = block.data + i * stride
        self._solve_run(ptrs, indexes, frag, nmissing, idx, dst, NULL, 0, NULL, NULL, NULL)
        result = {w: _byte_view(given[w]) for w in want if w in given}
        buf = memoryview(block)
        for i in range(nmissing):
            result[missing[i]] = buf[i * stride:i * stride + frag]
        return result

    # ---- internals ------------------------------------------------------------------------

    cdef size_t _collect(
        self, list parsed, _Views views, size_t frag, bint exact,
        const uint8_t **ptrs, int *indexes,
    ) except? 0:
        """Acquire every fragment's buffer, check sizes, and fill the k lowest indexes."""
        cdef int k = self.k
        cdef int count = len(parsed)
        cdef int i
        cdef Py_buffer *v
        if count < k:
            raise ValueError(f"need at least k={k} fragments, got {count}")
        for i in range(count):
            index, obj = parsed[i]
            v = views.get(obj, False, f"fragment {index}")
            if not exact and i == 0:
                frag = <size_t>v.len
            if <size_t>v.len != frag:
                if exact:
                    raise ValueError(
                        f"fragment {index} has {v.len} bytes, expected {frag} "
                        f"(fragment size for the given size with k={k})"
                    )
                raise ValueError(
                    f"fragment {index} has {v.len} bytes but fragment {parsed[0][0]} "
                    f"has {frag}: all fragments must have the same size"
                )
            if i < k:
                ptrs[i] = <const uint8_t *>v.buf
                indexes[i] = index
        return frag

    cdef int _decode(
        self, const uint8_t **ptrs, int *indexes, size_t frag, uint8_t *out, size_t nbytes,
        int nparity, int *parity_idx, uint8_t **parity_dst,
    ) except -1:
        """Write the data into out[:nbytes] (and missing parity) from the k chosen fragments."""
        cdef int k = self.k
        cdef int wanted[MAX_N]
        cdef uint8_t *dst[MAX_N]
        cdef size_t dst_len[MAX_N]
        cdef const uint8_t *copy_src[MAX_K]
        cdef uint8_t *copy_dst[MAX_K]
        cdef size_t copy_len[MAX_K]
        cdef int nwanted = 0, ncopy = 0
        cdef int d, i, pos = 0
        cdef size_t length
        for d in range(k):
            length = _clamp(<Py_ssize_t>(nbytes - d * frag) if d * frag < nbytes else 0, frag)
            if pos < k and indexes[pos] == d:
                if length > 0:
                    copy_src[ncopy] = ptrs[pos]
                    copy_dst[ncopy] = out + d * frag
                    copy_len[ncopy] = length
                    ncopy += 1
                pos += 1
            elif length > 0:  # a missing fragment made only of padding needs no work
                wanted[nwanted] = d
                dst[nwanted] = out + d * frag
                dst_len[nwanted] = length
                nwanted += 1
        for i in range(nparity):
            wanted[nwanted] = parity_idx[i]
            dst[nwanted] = parity_dst[i]
            dst_len[nwanted] = frag
            nwanted += 1
        return self._solve_run(
            ptrs, indexes, frag, nwanted, wanted, dst, dst_len, ncopy, copy_src, copy_dst,
            copy_len,
        )

    cdef int _solve_run(
        self, const uint8_t **ptrs, int *indexes, size_t frag, int nwanted, int *wanted,
        uint8_t **dst, size_t *dst_len, int ncopy, const uint8_t **copy_src,
        uint8_t **copy_dst, size_t *copy_len,
    ) except -1:
        cdef int k = self.k
        cdef uint8_t coeffs[MAX_N * MAX_K]
        cdef uint8_t *tables = NULL
        cdef rs_job_t job
        if frag == 0 or (nwanted == 0 and ncopy == 0):
            return 0
        if nwanted > 0:
            if rs_solve(k, indexes, nwanted, wanted, coeffs) != 0:
                raise ValueError("the given fragments are not independent")  # not for Cauchy
            tables = <uint8_t *>rs_alloc(<size_t>(nwanted * k * RS_TABLE_BYTES))
            if tables == NULL:
                raise MemoryError()
            rs_make_tables(nwanted * k, coeffs, tables)
        job.len = frag
        job.k = k
        job.rows = nwanted
        job.tables = tables
        job.src = ptrs
        job.src_len = NULL
        job.dst = dst
        job.dst_len = dst_len
        job.ncopy = ncopy
        job.copy_src = copy_src
        job.copy_dst = copy_dst
        job.copy_len = copy_len
        try:
            _run(&job)
        finally:
            rs_free(tables)
        return 0
