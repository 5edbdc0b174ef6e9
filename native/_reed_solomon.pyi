"""Type stub of the compiled Reed-Solomon core (native/_reed_solomon.pyx)."""

from collections.abc import Iterable, Mapping
from typing import Final, Literal, overload

from _typeshed import ReadableBuffer, WriteableBuffer

_Fragments = Mapping[int, ReadableBuffer] | Iterable[tuple[int, ReadableBuffer]]

MAX_DATA_FRAGMENTS: Final[int]
MAX_PARITY_FRAGMENTS: Final[int]
PORTABLE_ENV: Final[str]

def kernel_name() -> str:
    """Return the kernel that encodes and decodes now: ``"avx2"`` or ``"portable"``."""

def available_kernels() -> tuple[str, ...]:
    """Return the kernels this CPU and build can run, fastest first."""

def select_kernel(name: str | None) -> str:
    """Switch every later call to kernel ``name`` (None: automatic); return the previous one."""

def kernel_statistics() -> dict[str, int]:
    """Return the bytes each kernel loop has produced in this process."""

def fragment_size(size: int, k: int) -> int:
    """Return ``ceil(size / k)``, the length of every fragment."""

class ReedSolomon:
    """A systematic Reed-Solomon code with ``k`` data and ``m`` parity fragments."""

    @property
    def k(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def n(self) -> int:
        """Total number of fragments, ``k + m``."""

    def __init__(self, k: int, m: int) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def fragment_size(self, size: int) -> int:
        """Return the length of every fragment of ``size`` bytes of data."""

    def generator_row(self, index: int) -> bytes:
        """Return row ``index`` of the generator matrix."""

    def split(self, data: ReadableBuffer) -> list[memoryview]:
        """Return the ``k`` data fragments of ``data``."""

    def encode(self, data: ReadableBuffer) -> tuple[list[memoryview], list[memoryview]]:
        """Return ``(data_fragments, parity_fragments)``."""

    def encode_into(
        self, data: ReadableBuffer, parity_out: WriteableBuffer | Iterable[WriteableBuffer]
    ) -> int:
        """Write the parity fragments into ``parity_out``; return the fragment size."""

    @overload
    def decode(
        self, fragments: _Fragments, size: int, *, rebuild_parity: Literal[False] = False
    ) -> memoryview: ...
    @overload
    def decode(
        self, fragments: _Fragments, size: int, *, rebuild_parity: Literal[True]
    ) -> tuple[memoryview, dict[int, memoryview]]: ...
    def decode_into(self, fragments: _Fragments, size: int, out: WriteableBuffer) -> None:
        """Rebuild the original ``size`` bytes into ``out[:size]``."""

    def reconstruct(self, fragments: _Fragments, wanted: Iterable[int]) -> dict[int, memoryview]:
        """Return ``{index: fragment}`` for the wanted indexes."""
