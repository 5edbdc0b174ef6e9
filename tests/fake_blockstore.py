"""An in-memory :class:`storage.api.BlockStore` for tests only.

It honours the protocol exactly as the logics see it:

* chunks are immutable, addressed by a hash, readable only with the returned ``ChunkRef``;
  ``get_chunk`` of a released chunk raises ``NotFound``; ``delete_chunk`` is idempotent;
* registers are linearizable (trivially: one process), ``read`` of an absent or deleted
  register raises ``NotFound``; ``edit`` applies a function of the current value (an exception
  from it aborts the change and propagates, nothing is written); ``compare_and_set`` raises
  ``Conflict(current)`` when the version differs.

Test hooks:

* **faults**: :meth:`FakeBlockStore.fail` schedules ``Unavailable`` for matching operations,
  either *before* the operation (nothing happened) or *after* it (it took effect, yet the
  caller sees an error — the ambiguous outcome a real quorum write can have);
  :meth:`FakeBlockStore.random_faults` does the same with a seeded probability.
* **interleaving**: every operation passes through at least one trio checkpoint, and with
  ``jitter`` a seeded random number of extra ones, so concurrent tasks interleave between
  the read and the write of another task's operation.
* **replayed edits**: with ``replay_edits=True`` every edit function is called twice (the
  first result discarded), as a CASPaxos proposer may do when it retries a round; code whose
  edit functions have side effects beyond their last call breaks visibly.
* **counters**: ``reads`` counts register reads per name; ``ops`` counts calls per method.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from storage.api import ChunkRef, Edit, Versioned
from storage.errors import Conflict, NotFound, Unavailable
from storage.ids import BlockAddress
from storage.policy import Redundancy

#: Operation names accepted by :meth:`FakeBlockStore.fail`.
OPS = ("put_chunk", "get_chunk", "delete_chunk", "read", "edit", "compare_and_set")


@dataclass
class _Fault:
    op: str | None
    match: Callable[[bytes], bool] | None
    after: bool
    skip: int
    times: int


@dataclass
class _RandomFaults:
    probability: float
    ops: tuple[str, ...]
    after_ratio: float
    rng: random.Random


@dataclass
class _Register:
    value: bytes | None
    version: int


@dataclass
class FakeBlockStore:
    """An in-memory block store with fault injection (see the module docstring)."""

    default_redundancy: Redundancy = field(default_factory=lambda: Redundancy(replicas=3))
    replay_edits: bool = False
    jitter: random.Random | None = None
    chunks: dict[BlockAddress, tuple[bytes, Redundancy]] = field(default_factory=dict)
    registers: dict[bytes, _Register] = field(default_factory=dict)
    reads: Counter[bytes] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    _faults: list[_Fault] = field(default_factory=list)
    _random: _RandomFaults | None = None

    # -- fault injection ---------------------------------------------------------------------

    def fail(
        self,
        op: str | None = None,
        *,
        times: int = 1,
        after: bool = False,
        skip: int = 0,
        match: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Make the next ``times`` matching operations raise ``Unavailable``.

        Args:
            op: one of :data:`OPS`, or ``None`` for any operation.
            times: how many matching operations fail.
            after: apply the operation first, then raise (ambiguous outcome).
            skip: let this many matching operations succeed first.
            match: only operations whose register name (or chunk address) satisfies this.
        """
        if op is not None and op not in OPS:
            raise ValueError(f"unknown operation {op!r}")
        self._faults.append(_Fault(op, match, after, skip, times))

    def random_faults(
        self,
        probability: float,
        rng: random.Random,
        *,
        ops: tuple[str, ...] = OPS,
        after_ratio: float = 0.5,
    ) -> None:
        """Fail each operation in ``ops`` with ``probability`` (``after`` with ``after_ratio``)."""
        self._random = _RandomFaults(probability, ops, after_ratio, rng)

    def clear_faults(self) -> None:
        """Remove every scheduled and random fault."""
        self._faults.clear()
        self._random = None

    def _fault_for(self, op: str, name: bytes) -> bool | None:
        """Whether this call fails: ``None`` no, ``False`` before applying, ``True`` after."""
        for fault in self._faults:
            if fault.op not in (None, op) or (fault.match is not None and not fault.match(name)):
                continue
            if fault.skip:
                fault.skip -= 1
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault.after
        rnd = self._random
        if rnd is not None and op in rnd.ops and rnd.rng.random() < rnd.probability:
            return rnd.rng.random() < rnd.after_ratio
        return None

    async def _enter(self, op: str, name: bytes) -> bool | None:
        self.ops[op] += 1
        await trio.lowlevel.checkpoint()
        if self.jitter is not None:
            for _ in range(self.jitter.randrange(3)):
                await trio.lowlevel.checkpoint()
        fault = self._fault_for(op, name)
        if fault is False:
            raise Unavailable(2, 1, f"injected fault before {op}")
        return fault

    @staticmethod
    def _exit(op: str, fault: bool | None) -> None:
        if fault:
            raise Unavailable(2, 1, f"injected fault after {op}")

    # -- chunks ------------------------------------------------------------------------------

    async def put_chunk(
        self, plaintext: bytes | memoryview, *, redundancy: Redundancy | None = None
    ) -> ChunkRef:
        """Store a copy of ``plaintext`` under a fresh address."""
        data = bytes(plaintext)
        key = os.urandom(32)
        address = BlockAddress(hashlib.blake2b(key + data, digest_size=32).digest())
        fault = await self._enter("put_chunk", address)
        policy = redundancy or self.default_redundancy
        self.chunks[address] = (data, policy)
        self._exit("put_chunk", fault)
        return ChunkRef(address=address, key=key, size=len(data), redundancy=policy)

    async def get_chunk(self, ref: ChunkRef) -> bytes:
        """Return the chunk's plaintext, ``NotFound`` if it was released."""
        fault = await self._enter("get_chunk", ref.address)
        stored = self.chunks.get(ref.address)
        self._exit("get_chunk", fault)
        if stored is None:
            raise NotFound(f"chunk {ref.address.hex()[:16]} not found")
        return stored[0]

    async def delete_chunk(self, ref: ChunkRef) -> None:
        """Release a chunk; absent chunks are fine."""
        fault = await self._enter("delete_chunk", ref.address)
        self.chunks.pop(ref.address, None)
        self._exit("delete_chunk", fault)

    # -- registers ---------------------------------------------------------------------------

    async def read(self, name: bytes) -> Versioned:
        """Return the register's value and version, ``NotFound`` if absent."""
        self.reads[name] += 1
        fault = await self._enter("read", name)
        reg = self.registers.get(name)
        self._exit("read", fault)
        if reg is None or reg.value is None:
            raise NotFound(f"register {name!r} not found")
        return Versioned(reg.value, reg.version)

    async def edit(
        self, name: bytes, edit: Edit, *, redundancy: Redundancy | None = None
    ) -> Versioned | None:
        """Apply ``edit`` to the current value atomically (no checkpoint in between)."""
        fault = await self._enter("edit", name)
        reg = self.registers.get(name)
        current = reg.value if reg is not None else None
        if self.replay_edits:
            edit(current)
        new = edit(current)
        version = (reg.version if reg is not None else 0) + 1
        self.registers[name] = _Register(new, version)
        self._exit("edit", fault)
        return None if new is None else Versioned(new, version)

    async def compare_and_set(
        self, name: bytes, expected_version: int | None, value: bytes | None
    ) -> Versioned | None:
        """Write ``value`` only if the register's version is ``expected_version``."""
        fault = await self._enter("compare_and_set", name)
        reg = self.registers.get(name)
        current = None
        if reg is not None and reg.value is not None:
            current = Versioned(reg.value, reg.version)
        if expected_version is None:
            ok = current is None
        else:
            ok = current is not None and current.version == expected_version
        if not ok:
            raise Conflict(current)
        version = (reg.version if reg is not None else 0) + 1
        self.registers[name] = _Register(value, version)
        self._exit("compare_and_set", fault)
        return None if value is None else Versioned(value, version)

    # -- inspection --------------------------------------------------------------------------

    def live_registers(self) -> dict[bytes, bytes]:
        """Every register that currently holds a value."""
        return {n: r.value for n, r in self.registers.items() if r.value is not None}
