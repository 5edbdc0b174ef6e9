"""Redundancy policies and quorum arithmetic.

Policy is data: a volume says ``Redundancy(replicas=3)`` or ``Redundancy(data=4, parity=2)``
and every quorum size used by the key-value layer is derived from it by the one-line pure
functions below, so the arithmetic lives in one place and is tested exhaustively.

* Replicas (``r`` full copies): a write is acknowledged once a majority has it on disk;
  a read of an immutable (content-addressed, self-verifying) block needs one good copy.
* Reed-Solomon fragments (``k`` data + ``m`` parity on ``k+m`` distinct nodes, any ``k``
  rebuild the chunk): a write is acknowledged once ``k+1`` fragments are on disk (capped at
  ``k+m``), so one more failure still leaves a decodable chunk while repair fills the rest;
  a read needs ``k`` fragments.

Mutable blocks are always replicated and run CASPaxos over their replica set, whose quorum
is :func:`majority` of the set (see ``storage.paxos``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.errors import InvalidArgument

MAX_REPLICAS = 16
MAX_DATA = 32
MAX_PARITY = 16

_REPLICAS_RE = re.compile(r"[1-9][0-9]*")
_ERASURE_RE = re.compile(r"([1-9][0-9]*)\+([1-9][0-9]*)")


def majority(n: int) -> int:
    """Return the smallest number of members of a group of ``n`` that outnumbers the rest."""
    return n // 2 + 1


def replica_write_quorum(replicas: int) -> int:
    """Return how many of ``replicas`` full copies must be durable before a write returns."""
    return majority(replicas)


def fragment_write_quorum(data: int, parity: int) -> int:
    """Return how many of ``data+parity`` fragments must be durable before a write returns."""
    return min(data + 1, data + parity)


def fragment_read_quorum(data: int) -> int:
    """Return how many fragments a reader needs to rebuild a chunk split into ``data``."""
    return data


def quorum_reached(needed: int, answered: int) -> bool:
    """Return whether ``answered`` successful replies satisfy a quorum of ``needed``."""
    return answered >= needed


def quorum_impossible(needed: int, of: int, failed: int) -> bool:
    """Return whether ``failed`` of ``of`` members failing rules out ever reaching ``needed``."""
    return of - failed < needed


def tolerated_failures(needed: int, of: int) -> int:
    """Return how many of ``of`` members may fail while a quorum of ``needed`` remains."""
    return of - needed


@dataclass(frozen=True)
class Quorum:
    """A quorum requirement: ``needed`` successful replies out of ``of`` members asked."""

    needed: int
    of: int

    def __post_init__(self) -> None:
        if not 0 < self.needed <= self.of:
            raise InvalidArgument(f"quorum of {self.needed} out of {self.of} is impossible")

    @classmethod
    def majority_of(cls, n: int) -> Quorum:
        """Return the majority quorum of a group of ``n``."""
        return cls(majority(n), n)

    def reached(self, answered: int) -> bool:
        """Return whether ``answered`` successful replies satisfy this quorum."""
        return quorum_reached(self.needed, answered)

    def impossible(self, failed: int) -> bool:
        """Return whether ``failed`` failures rule out ever reaching this quorum."""
        return quorum_impossible(self.needed, self.of, failed)

    @property
    def tolerated_failures(self) -> int:
        """How many members may fail while the quorum stays reachable."""
        return tolerated_failures(self.needed, self.of)


@dataclass(frozen=True)
class Redundancy:
    """How a block is kept redundant: ``r`` replicas, or ``k+m`` Reed-Solomon fragments.

    Build it as ``Redundancy(replicas=3)`` or ``Redundancy(data=4, parity=2)``; the two
    forms are exclusive. ``parse("3")`` / ``parse("4+2")`` read the CLI spelling and
    ``str()`` writes it back.

    Raises:
        InvalidArgument: the fields mix both forms, or a count is out of range
            (``1 <= r <= 16``; ``1 <= k <= 32``; ``1 <= m <= 16``).
    """

    replicas: int | None = None
    data: int | None = None
    parity: int | None = None

    def __post_init__(self) -> None:
        if self.replicas is not None:
            if self.data is not None or self.parity is not None:
                raise InvalidArgument("give either replicas or data+parity, not both")
            _check_range("replicas", self.replicas, 1, MAX_REPLICAS)
        elif self.data is not None and self.parity is not None:
            _check_range("data", self.data, 1, MAX_DATA)
            _check_range("parity", self.parity, 1, MAX_PARITY)
        else:
            raise InvalidArgument("give replicas, or both data and parity")

    def as_dict(self) -> dict[str, int]:
        """The plain form a network descriptor carries: ``{"replicas": r}`` or
        ``{"data": k, "parity": m}``; ``Redundancy(**form)`` reads it back."""
        fields = {"replicas": self.replicas, "data": self.data, "parity": self.parity}
        return {name: value for name, value in fields.items() if value is not None}

    @classmethod
    def parse(cls, text: str) -> Redundancy:
        """Parse the CLI spelling: ``"3"`` (replicas) or ``"4+2"`` (data+parity).

        Raises:
            InvalidArgument: the text is neither form or a count is out of range.
        """
        text = text.strip()
        if _REPLICAS_RE.fullmatch(text):
            return cls(replicas=int(text))
        match = _ERASURE_RE.fullmatch(text)
        if match:
            return cls(data=int(match.group(1)), parity=int(match.group(2)))
        raise InvalidArgument(f"redundancy must look like '3' or '4+2', not {text!r}")

    def __str__(self) -> str:
        """Return the CLI spelling, the inverse of :meth:`parse`."""
        if self.replicas is not None:
            return str(self.replicas)
        return f"{self.data}+{self.parity}"

    def format(self) -> str:
        """Return the CLI spelling (same as ``str()``)."""
        return str(self)

    @property
    def is_erasure_coded(self) -> bool:
        """Whether blocks are split into Reed-Solomon fragments rather than copied."""
        return self.replicas is None

    @property
    def nodes_needed(self) -> int:
        """How many distinct nodes hold one block: ``r`` or ``k+m``."""
        if self.replicas is not None:
            return self.replicas
        return self._k + self._m

    @property
    def write_quorum(self) -> int:
        """How many nodes must have a block on disk before a write returns."""
        if self.replicas is not None:
            return replica_write_quorum(self.replicas)
        return fragment_write_quorum(self._k, self._m)

    @property
    def read_quorum(self) -> int:
        """How many nodes a reader of an immutable block needs: one copy, or ``k`` fragments."""
        if self.replicas is not None:
            return 1
        return fragment_read_quorum(self._k)

    @property
    def tolerated_failures(self) -> int:
        """How many holders of a block may be lost with the block still readable."""
        return self.nodes_needed - self.read_quorum

    @property
    def overhead(self) -> float:
        """Bytes stored per byte of payload: ``r`` or ``(k+m)/k``."""
        if self.replicas is not None:
            return float(self.replicas)
        return (self._k + self._m) / self._k

    def write(self) -> Quorum:
        """Return the write quorum as a :class:`Quorum` over :attr:`nodes_needed`."""
        return Quorum(self.write_quorum, self.nodes_needed)

    def read(self) -> Quorum:
        """Return the immutable-block read quorum as a :class:`Quorum`."""
        return Quorum(self.read_quorum, self.nodes_needed)

    @property
    def _k(self) -> int:
        assert self.data is not None
        return self.data

    @property
    def _m(self) -> int:
        assert self.parity is not None
        return self.parity


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer in [{low}, {high}], not {value!r}")
