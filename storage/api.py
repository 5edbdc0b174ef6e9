"""The contract every logic (files, objects, volumes) and interface uses to reach the cluster.

The networked client implements :class:`BlockStore`; logics are written against the protocol so
their own tests can run on a small fake, while the shipped code always runs on the cluster.

Two kinds of block:

* **Chunks** are immutable. ``put_chunk`` seals the plaintext with a fresh key, stores it with
  the requested redundancy and returns a :class:`ChunkRef` — the only way to read it back (the
  key never leaves the referencing metadata).
* **Registers** are mutable, named blocks: linearizable, changed only through consensus. A
  register's value is opaque bytes, encrypted and signed by the client before it leaves.
  Every change is a function of the current value (CASPaxos), so "insert this entry" is one
  round, not a read-modify-write race.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .ids import BlockAddress
from .policy import Redundancy

#: An edit function: receives the current value (``None`` when the register does not exist or
#: was deleted) and returns the new value, ``None`` to delete it, or raises to abort the change
#: (the exception propagates to the caller and nothing is written).
Edit = Callable[[bytes | None], bytes | None]


@dataclass(frozen=True)
class ChunkRef:
    """Everything needed to read an immutable chunk back."""

    address: BlockAddress
    key: bytes
    size: int
    redundancy: Redundancy


@dataclass(frozen=True)
class Versioned:
    """A register's value with its version (incremented by every accepted change)."""

    value: bytes
    version: int


class BlockStore(Protocol):
    """The cluster as the logics see it. Every method may raise ``storage.errors`` types."""

    async def put_chunk(
        self, plaintext: bytes | memoryview, *, redundancy: Redundancy | None = None
    ) -> ChunkRef:
        """Seal and store an immutable chunk; return once a write quorum has it durably."""
        ...

    async def get_chunk(self, ref: ChunkRef) -> bytes:
        """Read, verify and decrypt a chunk (``NotFound``, ``Unavailable``, ``Corrupt``)."""
        ...

    async def delete_chunk(self, ref: ChunkRef) -> None:
        """Release a chunk; deleting an absent chunk is not an error."""
        ...

    async def read(self, name: bytes) -> Versioned:
        """Linearizable read of register ``name`` (``NotFound`` if absent or deleted)."""
        ...

    async def edit(
        self, name: bytes, edit: Edit, *, redundancy: Redundancy | None = None
    ) -> Versioned | None:
        """Apply ``edit`` atomically; return the new value, or ``None`` if it was deleted."""
        ...

    async def compare_and_set(
        self, name: bytes, expected_version: int | None, value: bytes | None
    ) -> Versioned | None:
        """Write ``value`` (``None`` deletes) only if the version is ``expected_version``.

        ``expected_version=None`` means "only if the register does not exist".
        Raises ``Conflict(current)`` otherwise.
        """
        ...
