"""Typed identifiers of the key-value layer."""

from __future__ import annotations

from typing import NewType

#: Every block, mutable or immutable, is addressed by 32 bytes.
BLOCK_ADDRESS_BYTES = 32

#: The 32-byte address of a block: a 256-bit hash of the stored payload for immutable blocks
#: (see :mod:`storage.chunks`), derived from the owner key and a name or salt for mutable ones.
BlockAddress = NewType("BlockAddress", bytes)
