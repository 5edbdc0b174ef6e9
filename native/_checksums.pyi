"""Type stub of the compiled CRC-32, CRC-32C and CRC-64/NVME checksums (native/_checksums.pyx)."""

from typing import Final

from _typeshed import ReadableBuffer

CRC32_MAX: Final[int]
CRC64_MAX: Final[int]

def crc32(data: ReadableBuffer, crc: int = 0) -> int:
    """Return the CRC-32 of ``data`` continuing from ``crc`` (0 to start): ``zlib.crc32``."""

def crc32c(data: ReadableBuffer, crc: int = 0) -> int:
    """Return the CRC-32C of ``data`` continuing from ``crc`` (0 to start)."""

def crc64nvme(data: ReadableBuffer, crc: int = 0) -> int:
    """Return the CRC-64/NVME of ``data`` continuing from ``crc`` (0 to start)."""

def crc32_kernel() -> str:
    """Return the kernel :func:`crc32` uses: ``"pclmul"`` or ``"portable"``."""

def crc32c_kernel() -> str:
    """Return the kernel :func:`crc32c` uses: ``"sse4.2"`` or ``"portable"``."""

def crc64nvme_kernel() -> str:
    """Return the kernel :func:`crc64nvme` uses: ``"pclmul"`` or ``"portable"``."""

def crc32_kernels() -> tuple[str, ...]:
    """Return the CRC-32 kernels this CPU and build can run, fastest first."""

def crc32c_kernels() -> tuple[str, ...]:
    """Return the CRC-32C kernels this CPU and build can run, fastest first."""

def crc64nvme_kernels() -> tuple[str, ...]:
    """Return the CRC-64/NVME kernels this CPU and build can run, fastest first."""

def crc32_with(kernel: str, data: ReadableBuffer, crc: int = 0) -> int:
    """Return :func:`crc32` of ``data`` computed by the named ``kernel``."""

def crc32c_with(kernel: str, data: ReadableBuffer, crc: int = 0) -> int:
    """Return :func:`crc32c` of ``data`` computed by the named ``kernel``."""

def crc64nvme_with(kernel: str, data: ReadableBuffer, crc: int = 0) -> int:
    """Return :func:`crc64nvme` of ``data`` computed by the named ``kernel``."""
