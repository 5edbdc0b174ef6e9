"""Type stub of the compiled XSalsa20 stream cipher (native/_xsalsa20.pyx)."""

from typing import Final

from _typeshed import ReadableBuffer, WriteableBuffer

XSALSA20_KEY_BYTES: Final[int]
XSALSA20_NONCE_BYTES: Final[int]
SKIP_MAX: Final[int]

def xsalsa20_xor(
    source: ReadableBuffer,
    target: WriteableBuffer,
    nonce: ReadableBuffer,
    key: ReadableBuffer,
    skip: int = 0,
) -> None:
    """Write ``source`` XOR the XSalsa20 keystream from byte ``skip`` into ``target``."""

def xsalsa20_xor_bytes(
    source: ReadableBuffer, nonce: ReadableBuffer, key: ReadableBuffer, skip: int = 0
) -> bytes:
    """Return ``source`` XOR the XSalsa20 keystream from byte ``skip``, as new ``bytes``."""

def xsalsa20_kernel() -> str:
    """Return the kernel :func:`xsalsa20_xor` uses: ``"avx512"`` or ``"portable"``."""

def xsalsa20_kernels() -> tuple[str, ...]:
    """Return the XSalsa20 kernels this CPU and build can run, fastest first."""

def xsalsa20_xor_with(
    kernel: str,
    source: ReadableBuffer,
    target: WriteableBuffer,
    nonce: ReadableBuffer,
    key: ReadableBuffer,
    skip: int = 0,
) -> None:
    """Run :func:`xsalsa20_xor` with the named ``kernel`` (for cross-checks)."""
