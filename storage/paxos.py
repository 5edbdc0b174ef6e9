"""CASPaxos: the consensus core of mutable blocks, as pure synchronous state machines.

Theory of operation
===================

Every mutable block is a register replicated on a small set of acceptors (its replica
set). A change is a function ``new = f(old)``; each change is one instance of
single-decree Paxos whose proposed value is computed from the value read in phase 1
(Rystsov, "CASPaxos: Replicated State Machines without logs", 2018, §2). Nothing here does
I/O: the caller moves messages, persists acceptor state and measures time.

Roles and messages::

    proposer                          acceptor (state: promised, accepted, value)
    Prepare(b)                  ──▶   b >= promised ? promised := b,
                                                      Promise(b, accepted, value)
                                ◀──                 : Reject(b, promised)
    (quorum of promises: cur := value with the highest accepted ballot; new := f(cur))
    Accept(b, new, promise_next) ──▶  verify(new) and b >= promised ?
                                          accepted := b, value := new,
                                          promised := next(b) if promise_next else b,
                                          Accepted(b, next(b) | None)
                                ◀──     : Reject(b, promised)
    (quorum of Accepted: new is chosen; the change is decided)
    Inspect                     ──▶   Report(promised, accepted, value)   (nothing changes;
                                ◀──                                        the quick read)

Ballots are ``(counter, proposer id)`` compared lexicographically, so they are totally
ordered and two proposers never share one. A proposer id must be unique per proposer
*incarnation* (node id plus a boot nonce, say): a proposer that restarts with the same id and
a forgotten counter could send two different values under one ballot.

Invariants (1, 3 and 4 are checked by ``tests/property/test_paxos_stateful.py``, and with
probing proposers and quick reads by ``tests/property/test_paxos_views.py``):

1. An acceptor's ``accepted_ballot <= promised``; ``promised`` never decreases.
2. An acceptor answers only from state the caller has made durable (the caller persists the
   returned state *before* sending the reply; the functions here are pure).
3. At most one value is ever accepted under a given ballot (one proposer, one accept).
4. Once a value is chosen at ballot ``b``, every value accepted at a higher ballot is
   derived from it (classic Paxos safety), hence decided values never regress and the
   register is linearizable (reads are changes too: the identity function, written back).

One round trip (CASPaxos §2.2.1). Phase 1 does not depend on the change, so an accept can
carry the *next* prepare: with ``promise_next`` an acceptor that accepts ``(b, v)`` also
promises ``next(b) = (b.counter + 1, b.proposer)``. If a quorum did, the proposer holds
exactly what a phase 1 at ``next(b)`` would have returned: each of those acceptors has
accepted ``(b, v)`` and, having promised ``next(b)``, can accept nothing else below it,
while only this proposer can issue ``next(b)``. So the proposer may skip phase 1 next time
and send ``Accept(next(b), f(v))`` straight away. If another proposer prepared in between,
the accept is rejected and the round ends ``Preempted``; the next round runs both phases.
The cache lives only in memory and is dropped whenever the proposer starts any other
round, so ``next(b)`` is used at most once.

Replica set as consensus state (joint consensus). The register value carries its replica
set; during a move it carries two: ``replica_set`` (old) and ``next_replica_set`` (new).
A value's *configuration* needs a majority of every set it names. Rules:

* Phase 1 starts at the caller's hint (the replica set it believes in) and is complete
  only when the promises satisfy the configuration of ``cur``, the highest accepted value
  seen; if ``cur`` names acceptors not yet asked, they are sent the same ``Prepare``
  (a stale hint is thereby corrected round by round). A register never written uses the
  hint: the hint must be the block's creation replica set or one that reaches it, or
  else the proposer must probe (below).
* Phase 2 needs the configuration of ``cur`` *and* that of ``new`` (joint quorum).
* Moves go ``A -> (A, B) -> B`` (or back to ``A`` to abort); a change that alters the
  configuration is written only once ``cur`` is known chosen. In a normal round the proposer
  first writes ``cur`` back at ``b`` with ``promise_next``, then writes ``new`` at
  ``next(b)`` under those promises (the one-round-trip argument above); a round that
  starts from the one-round-trip cache already knows ``cur`` is chosen. This prevents a
  half-written move from leaving the new set with a value the old set never saw: without
  it, an unchosen joint value on the new side, a new-set-only value written from it, and
  an ordinary decision of the old set can fork the register
  (``test_half_written_move_cannot_fork_the_register`` replays that interleaving).
* An acceptor dropped from the set keeps its state (it now points at the new set) for as
  long as proposers may hold a hint naming it; that is what lets a stale proposer find the
  new set. This design is argued informally here and checked by the stateful property test
  (stale proposers, moves, a lossy network); it is not a mechanised proof.

Probing: a proposer that does not know the configuration. The rule "a register never
written uses the hint" is only safe if every proposer's hint reaches the register's
history. A proposer that has never seen a decided value of the register (a client's first
operation on it) takes its hint from placement, the ``R`` members nearest to the address
*in its own member view*, and two views may disagree (a node joined, was evicted, one
gateway lags). Creating on its own nearest ``R`` after hearing "empty" from a majority of
them would then fork the register: the creator's set and the true one may share no
majority. Such a proposer therefore *probes*: it passes ``probe = W``, the nearest
``R + s`` members of its view (``s`` spares), and its creation set ``H`` (its nearest
``R``, ``H ⊆ W``) as the hint. Phase 1 sends the same ``Prepare`` to ``W ∪ H`` and, on
top of the usual rule (promises satisfying ``cur``'s configuration, or a majority of
``H`` when nothing was seen), completes only when at most ``f = |H| - majority(|H|)``
candidates of ``W`` have not promised (the *probe quorum*), whether or not a value was
found. Assumption: views differ by at most ``s`` members near the address, so that every
replica set the register is created with or moved to is contained in every probing
proposer's ``W`` (moves go to the nearest members of the mover's view; a set moved away
from keeps its state and points at the new one, as above). Why it is enough:

* A probe quorum meets every majority of every ``R``-subset ``S ⊆ W``: at most ``f``
  candidates are silent and a majority of ``S`` has more than ``f`` members. So if a
  value was chosen at ballot ``a`` on ``S`` and the probe's ballot is ``b > a``, some
  promiser accepted ``a`` (or later) *before* promising ``b`` and reports it: the prober
  follows it and never creates. If ``b < a`` the usual Paxos argument applies in the other
  direction (a promiser would have refused ``a``). Two creations from different views thus
  cannot both be chosen.
* Why the probe quorum is needed even when a value *is* found: a creation that failed
  half-way may have left an unchosen value ``v2`` (config ``S2``) on a minority, and a
  later creation from another view may then have been chosen on ``H`` without hearing
  from that minority (its probe tolerates ``f`` silent candidates). A proposer that
  stopped at a majority of ``S2`` could adopt ``v2`` at a high ballot and fork the
  register. By the first point every stray value's ballot is below every chosen ballot
  (a probe above a chosen ballot would have found that value and not created), and a
  probe quorum always contains a holder of the latest chosen value (or of a later value
  derived from it), so the highest ballot a prober sees is never a stray's: strays are
  never adopted. A proposer that knows a configuration from a *decided* value (a cache hit)
  keeps the ordinary rule: every majority of that configuration holds a chosen value whose
  ballot is above every stray.

The price: a probing round needs all but ``f`` of ``|W|`` candidates, not a majority of
``R``; it is paid once per proposer and register (the caller then knows the configuration).

Reads without writes (the quick read, :class:`QuickRead`). A read as a round costs a
promise and an accept made durable on a quorum. Instead a reader may ask the acceptors
of a configuration it saw decided for their state (:class:`Inspect`, which changes
nothing) and return ``v`` as soon as a set ``Q`` satisfying ``v.config`` reports the same
accepted ballot ``a`` and value ``v``; otherwise it runs the full round. Why that is
linearizable:

* ``v`` is chosen: ``Q`` accepted ``(a, v)`` and satisfies ``v.config``.
* No operation that completed before the read started saw or wrote a value at a ballot
  above ``a``. Such an operation (a write, or a round's write-back, or a quick read seeing
  a quorum at that ballot) left a quorum of its value's configuration at an accepted ballot
  above ``a``. If that configuration is ``v.config``, that quorum meets ``Q``, and a member
  of both would have reported its higher ballot (accepted ballots only grow, and every
  report is made after the read started). If the configuration changed since ``v``, the
  change went through a value accepted, at a ballot above ``a``, by a quorum of
  ``v.config`` (the joint value, or the write-back that precedes it) before any value
  outside ``v.config`` could be accepted: again a member of ``Q`` would have reported it.
* So ``v`` is at least as new as everything completed before the read, and chosen no
  later than the last report: the read takes effect between the two. Promises do not
  matter: a proposer that prepared a higher ballot but has not had a quorum accept has
  completed nothing, and its write, if it completes, is ordered after the read.

Replies that disagree (a write in flight, a lagging acceptor) or report nothing only cost
the full round. Acceptors answer :class:`Inspect` from durable state like any request.

Signatures. Acceptors refuse any value for which the caller's ``verify`` hook returns
False (``Reject(reason=FORBIDDEN)``), so a forged proposal cannot be chosen. The signature
covers version, payload and writer but not the replica sets: moving a block is decided by
the storage nodes, not by the owner key.

Tombstones and garbage collection. ``Delete`` writes a tombstone (payload ``None``) with
the next version. A tombstone accepted at ballot ``t`` is collected
(:func:`collection_order`) only when

  (a) it is decided (a majority of its stable, non-joint replica set holds it at ``t``):
      a round that prepared without seeing an undecided tombstone could still complete
      with a value computed from the old one, after the tombstone was forgotten;
  (b) no acceptor anywhere holds anything newer (the register did not live again);
  (c) every acceptor still holding an *older* value (lagging, or retired by a move)
      forgets it first: once the tombstone is gone, a straggler's older value would be
      the highest accepted value in some later quorum and the deleted data would come back;
  (d) each acceptor drops what it holds but keeps its promise, raised to at least ``t``
      (:meth:`Acceptor.collect`): otherwise an accept of the old value from a proposer
      that ran phase 1 before ``t`` could still land on an emptied acceptor. A node folds
      the kept promises of collected blocks into one node-wide floor
      (:mod:`storage.kv_service`).

A register written again after collection starts a new life from version 1 (as after an
etcd delete; a proposer that still holds the tombstone in its one-round-trip cache continues
from the tombstone's version instead): versions order the changes of one life. A client
whose cached configuration is no longer where placement puts the register probes
(``storage.kv_client``): after collection, the emptied acceptors of an old configuration
cannot point to the new one.

Sources: Rystsov, "CASPaxos: Replicated State Machines without logs" (2018, arXiv:1802.07000;
§2.2.1 for the one-round-trip optimisation, and its sections on deletion and on cluster
membership change, which here become per-block and joint); Lamport, "Paxos Made Simple"
(2001); Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm" (2014,
joint consensus).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgpack

from dht.ids import NodeId
from storage.errors import Conflict, Corrupt, PermissionDenied, Unavailable
from storage.policy import majority

__all__ = [
    "AbortReplicaChange",
    "Accept",
    "Accepted",
    "Acceptor",
    "AcceptorState",
    "Ballot",
    "BeginReplicaChange",
    "Change",
    "CompareAndSet",
    "Config",
    "Decided",
    "Delete",
    "Edit",
    "FinishReplicaChange",
    "Inspect",
    "Message",
    "Outcome",
    "Preempted",
    "Prepare",
    "Promise",
    "Proposer",
    "QuickRead",
    "Read",
    "Refused",
    "RegisterValue",
    "Reject",
    "RejectReason",
    "Reply",
    "Report",
    "Request",
    "Round",
    "Send",
    "Signer",
    "Transition",
    "Write",
    "collection_order",
    "decode_message",
    "encode_message",
    "higher_ballot",
    "trust_all_values",
]

STATE_FORMAT = 1


# ---------------------------------------------------------------------------------------
# Ballots, values, configurations


@dataclass(frozen=True, order=True)
class Ballot:
    """A proposal number: ``(counter, proposer id)``, totally ordered lexicographically."""

    counter: int
    proposer: bytes

    def __post_init__(self) -> None:
        if isinstance(self.counter, bool) or not isinstance(self.counter, int):
            raise TypeError("ballot counter must be an int")
        if self.counter < 0:
            raise ValueError("ballot counter must be >= 0")
        if not isinstance(self.proposer, bytes):
            raise TypeError("ballot proposer id must be bytes")

    def next(self) -> Ballot:
        """Return the ballot the same proposer uses after this one (the piggybacked promise)."""
        return Ballot(self.counter + 1, self.proposer)

    def to_wire(self) -> list[Any]:
        """Return a msgpack-ready form."""
        return [self.counter, self.proposer]

    @classmethod
    def from_wire(cls, obj: Any) -> Ballot:
        """Rebuild a ballot from :meth:`to_wire`'s form.

        Raises:
            Corrupt: the object is not a ballot.
        """
        try:
            counter, proposer = obj
            return cls(counter, proposer)
        except (TypeError, ValueError) as exc:
            raise Corrupt(f"malformed ballot {obj!r}") from exc

    def __str__(self) -> str:
        return f"{self.counter}.{self.proposer.hex()[:8]}"


def higher_ballot(a: Ballot | None, b: Ballot | None) -> Ballot | None:
    """The higher of two optional ballots (``None`` is below every ballot)."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


#: Replica sets already found well-formed (a few sets recur in every value and round).
_CHECKED_SETS: set[tuple[NodeId, ...]] = set()
_CHECKED_SETS_MAX = 4096


def _check_set(name: str, nodes: tuple[NodeId, ...]) -> None:
    if type(nodes) is tuple and nodes in _CHECKED_SETS:
        return
    if not isinstance(nodes, tuple) or not nodes:
        raise ValueError(f"{name} must be a non-empty tuple of node ids")
    for node in nodes:
        if not isinstance(node, bytes):
            raise TypeError(f"{name} must hold node ids as bytes")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"{name} has duplicate node ids")
    if len(_CHECKED_SETS) >= _CHECKED_SETS_MAX:
        _CHECKED_SETS.clear()
    _CHECKED_SETS.add(nodes)


@dataclass(frozen=True)
class Config:
    """A quorum system: a majority of *every* set in ``sets`` (one set, or two while moving)."""

    sets: tuple[tuple[NodeId, ...], ...]

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("a configuration needs at least one replica set")
        for nodes in self.sets:
            _check_set("replica set", nodes)

    @classmethod
    def of(cls, *sets: Iterable[NodeId]) -> Config:
        """Build a configuration, dropping repeated sets (compared as sets)."""
        out: list[tuple[NodeId, ...]] = []
        for nodes in sets:
            t = tuple(nodes)
            if not any(set(t) == set(o) for o in out):
                out.append(t)
        return cls(tuple(out))

    def joint(self, other: Config) -> Config:
        """Return the configuration that needs both this one's quorums and ``other``'s."""
        return Config.of(*self.sets, *other.sets)

    @functools.cached_property
    def members(self) -> frozenset[NodeId]:
        """Every acceptor named by the configuration."""
        return frozenset(n for nodes in self.sets for n in nodes)

    def satisfied_by(self, nodes: Collection[NodeId]) -> bool:
        """Return whether ``nodes`` contain a majority of every set."""
        got = set(nodes)
        return all(len(got.intersection(s)) >= majority(len(s)) for s in self.sets)

    def impossible(self, failed: Collection[NodeId]) -> bool:
        """Return whether ``failed`` acceptors rule out any quorum of this configuration."""
        bad = set(failed)
        return any(len(bad.intersection(s)) > len(s) - majority(len(s)) for s in self.sets)

    def quorum_size(self) -> int:
        """Return the size of the smallest set of acceptors that satisfies the configuration."""
        if len(self.sets) == 1:
            return majority(len(self.sets[0]))
        if len(self.sets) == 2:
            a, b = (set(s) for s in self.sets)
            need_a, need_b, both = majority(len(a)), majority(len(b)), len(a & b)
            return min(
                x + max(0, need_a - x) + max(0, need_b - x)
                for x in range(both + 1)
                if need_a - x <= len(a - b) and need_b - x <= len(b - a)
            )
        # Not produced by the protocol (at most two sets); a greedy upper bound suffices.
        chosen: set[NodeId] = set()
        while not self.satisfied_by(chosen):
            short = [s for s in self.sets if len(chosen.intersection(s)) < majority(len(s))]
            chosen.add(max(self.members - chosen, key=lambda n: sum(n in s for s in short)))
        return len(chosen)

    def __contains__(self, node: object) -> bool:
        return node in self.members

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return {frozenset(s) for s in self.sets} == {frozenset(s) for s in other.sets}

    def __hash__(self) -> int:
        return hash(frozenset(frozenset(s) for s in self.sets))


@dataclass(frozen=True)
class RegisterValue:
    """The consensus state of a mutable block.

    Attributes:
        version: 1 for the first write, +1 per data change (writes, CAS, edits, deletes);
            replica-set changes keep it. Compare-and-set compares it.
        replica_set: the acceptors that hold the block.
        payload: the (encrypted) block content, or ``None`` for a tombstone.
        writer: opaque writer identity (public key, say), covered by the signature.
        signature: opaque signature over :meth:`signed_bytes`, checked by acceptors.
        next_replica_set: while the block moves, the set it moves to (joint consensus).
    """

    version: int
    replica_set: tuple[NodeId, ...]
    payload: bytes | None
    writer: bytes = b""
    signature: bytes = b""
    next_replica_set: tuple[NodeId, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise TypeError("version must be an int")
        if self.version < 0:
            raise ValueError("version must be >= 0")
        _check_set("replica_set", self.replica_set)
        if self.next_replica_set is not None:
            _check_set("next_replica_set", self.next_replica_set)
        if self.payload is not None and not isinstance(self.payload, bytes):
            raise TypeError("payload must be bytes or None")

    @property
    def is_tombstone(self) -> bool:
        """Whether this value records a deletion."""
        return self.payload is None

    @property
    def is_moving(self) -> bool:
        """Whether a replica-set change is under way (two sets must agree)."""
        return self.next_replica_set is not None

    @functools.cached_property
    def config(self) -> Config:
        """The quorum system that governs this value."""
        if self.next_replica_set is None:
            return Config((self.replica_set,))
        return Config.of(self.replica_set, self.next_replica_set)

    def signed_bytes(self) -> bytes:
        """Return the canonical bytes a writer signs: version, payload and writer."""
        return bytes(
            msgpack.packb([b"ballast-register-v1", self.version, self.payload, self.writer])
        )

    def to_wire(self) -> list[Any]:
        """Return a msgpack-ready form."""
        return [
            self.version,
            list(self.replica_set),
            self.payload,
            self.writer,
            self.signature,
            None if self.next_replica_set is None else list(self.next_replica_set),
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> RegisterValue:
        """Rebuild a value from :meth:`to_wire`'s form.

        Raises:
            Corrupt: the object is not a register value.
        """
        try:
            version, replicas, payload, writer, signature, moving = obj
            return cls(
                version=version,
                replica_set=tuple(NodeId(n) for n in replicas),
                payload=payload,
                writer=writer,
                signature=signature,
                next_replica_set=None if moving is None else tuple(NodeId(n) for n in moving),
            )
        except (TypeError, ValueError) as exc:
            raise Corrupt(f"malformed register value: {exc}") from exc


def trust_all_values(value: RegisterValue) -> bool:
    """A ``verify`` hook that accepts every value: only for tests and unsigned demos."""
    return True


def _ballot_or_none(obj: Any) -> Ballot | None:
    return None if obj is None else Ballot.from_wire(obj)


@dataclass(frozen=True)
class AcceptorState:
    """What one acceptor keeps, durably, for one block.

    ``promised``: no ballot below it will be accepted; ``accepted_ballot``/``value``: the
    last accepted proposal (both ``None`` if nothing was accepted, or after a collected
    tombstone, in which case ``promised`` is kept as a floor).
    """

    promised: Ballot | None = None
    accepted_ballot: Ballot | None = None
    value: RegisterValue | None = None

    def __post_init__(self) -> None:
        if (self.accepted_ballot is None) != (self.value is None):
            raise ValueError("accepted_ballot and value are set together")
        if self.accepted_ballot is not None and (
            self.promised is None or self.accepted_ballot > self.promised
        ):
            raise ValueError("an acceptor never accepts above its promise")

    def to_bytes(self) -> bytes:
        """Serialise for the silo (msgpack, versioned)."""
        return bytes(
            msgpack.packb(
                [
                    STATE_FORMAT,
                    None if self.promised is None else self.promised.to_wire(),
                    None if self.accepted_ballot is None else self.accepted_ballot.to_wire(),
                    None if self.value is None else self.value.to_wire(),
                ]
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AcceptorState:
        """Parse :meth:`to_bytes`' output.

        Raises:
            Corrupt: the bytes are not a serialised acceptor state.
        """
        try:
            fmt, promised, accepted, value = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise Corrupt(f"malformed acceptor state: {exc}") from exc
        if fmt != STATE_FORMAT:
            raise Corrupt(f"unknown acceptor state format {fmt!r}")
        try:
            return cls(
                promised=_ballot_or_none(promised),
                accepted_ballot=_ballot_or_none(accepted),
                value=None if value is None else RegisterValue.from_wire(value),
            )
        except (ValueError, TypeError) as exc:
            raise Corrupt(f"inconsistent acceptor state: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Messages


class RejectReason(enum.Enum):
    """Why an acceptor refused a request."""

    PREEMPTED = "preempted"  # it promised a higher ballot
    FORBIDDEN = "forbidden"  # the value's signature does not verify


@dataclass(frozen=True)
class Prepare:
    """Phase 1a: ask an acceptor to promise ``ballot``."""

    ballot: Ballot


@dataclass(frozen=True)
class Accept:
    """Phase 2a: ask an acceptor to accept ``value`` at ``ballot`` (and maybe promise the next)."""

    ballot: Ballot
    value: RegisterValue
    promise_next: bool = False


@dataclass(frozen=True)
class Promise:
    """Phase 1b: the acceptor promised ``ballot`` and reports what it last accepted."""

    ballot: Ballot
    accepted_ballot: Ballot | None
    value: RegisterValue | None


@dataclass(frozen=True)
class Accepted:
    """Phase 2b: the acceptor accepted at ``ballot``; ``promised_next`` if it also promised it."""

    ballot: Ballot
    promised_next: Ballot | None = None


@dataclass(frozen=True)
class Reject:
    """The acceptor refused the request made at ``ballot``; ``promised`` is its promise."""

    ballot: Ballot
    promised: Ballot | None
    reason: RejectReason = RejectReason.PREEMPTED


@dataclass(frozen=True)
class Inspect:
    """Ask an acceptor what it holds, changing nothing (the quick read)."""


@dataclass(frozen=True)
class Report:
    """An acceptor's state, as :class:`Inspect` asked: nothing was promised for it."""

    promised: Ballot | None
    accepted_ballot: Ballot | None
    value: RegisterValue | None


Request = Prepare | Accept
Reply = Promise | Accepted | Reject
Message = Request | Reply | Inspect | Report
_TAGS: dict[type, int] = {
    Prepare: 1,
    Accept: 2,
    Promise: 3,
    Accepted: 4,
    Reject: 5,
    Inspect: 6,
    Report: 7,
}


def _wire_ballot(b: Ballot | None) -> list[Any] | None:
    return None if b is None else b.to_wire()


def encode_message(message: Message) -> bytes:
    """Serialise a consensus message (msgpack) for the RPC layer."""
    tag = _TAGS[type(message)]
    body: list[Any]
    if isinstance(message, Inspect):
        body = []
    elif isinstance(message, Report):
        body = [
            _wire_ballot(message.promised),
            _wire_ballot(message.accepted_ballot),
            None if message.value is None else message.value.to_wire(),
        ]
    elif isinstance(message, Prepare):
        body = [message.ballot.to_wire()]
    elif isinstance(message, Accept):
        body = [message.ballot.to_wire(), message.value.to_wire(), message.promise_next]
    elif isinstance(message, Promise):
        body = [
            message.ballot.to_wire(),
            _wire_ballot(message.accepted_ballot),
            None if message.value is None else message.value.to_wire(),
        ]
    elif isinstance(message, Accepted):
        body = [message.ballot.to_wire(), _wire_ballot(message.promised_next)]
    else:
        body = [message.ballot.to_wire(), _wire_ballot(message.promised), message.reason.value]
    return bytes(msgpack.packb([tag, *body]))


def decode_message(data: bytes) -> Message:
    """Parse :func:`encode_message`'s output.

    Raises:
        Corrupt: the bytes are not a consensus message.
    """
    try:
        tag, *body = msgpack.unpackb(data)
        if tag == 1:
            (b,) = body
            return Prepare(Ballot.from_wire(b))
        if tag == 2:
            b, v, nxt = body
            if not isinstance(nxt, bool):
                raise TypeError("promise_next must be a bool")
            return Accept(Ballot.from_wire(b), RegisterValue.from_wire(v), nxt)
        if tag == 3:
            b, ab, v = body
            return Promise(
                Ballot.from_wire(b),
                _ballot_or_none(ab),
                None if v is None else RegisterValue.from_wire(v),
            )
        if tag == 4:
            b, nxt = body
            return Accepted(Ballot.from_wire(b), _ballot_or_none(nxt))
        if tag == 5:
            b, p, reason = body
            return Reject(Ballot.from_wire(b), _ballot_or_none(p), RejectReason(reason))
        if tag == 6:
            () = body
            return Inspect()
        if tag == 7:
            p, ab, v = body
            return Report(
                _ballot_or_none(p),
                _ballot_or_none(ab),
                None if v is None else RegisterValue.from_wire(v),
            )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise Corrupt(f"malformed consensus message: {exc}") from exc
    raise Corrupt(f"unknown consensus message tag {tag!r}")


# ---------------------------------------------------------------------------------------
# Acceptor


class Acceptor:
    """The acceptor's decisions: pure functions from (state, request) to (state, reply).

    The caller persists the returned state durably *before* sending the reply (when it
    differs from the old one) and keeps one state per block.

    Args:
        verify: returns whether a proposed value carries a valid signature of a key
            allowed to write the block; values failing it are refused.
    """

    def __init__(self, *, verify: Callable[[RegisterValue], bool]) -> None:
        self._verify = verify

    def on_prepare(
        self, state: AcceptorState, ballot: Ballot
    ) -> tuple[AcceptorState, Promise | Reject]:
        """Handle phase 1a: promise ``ballot`` unless a higher one was promised.

        A repeated ``Prepare`` at the promised ballot is answered again (the network may
        duplicate messages).
        """
        if state.promised is not None and ballot < state.promised:
            return state, Reject(ballot, state.promised)
        new = state if state.promised == ballot else replace(state, promised=ballot)
        return new, Promise(ballot, state.accepted_ballot, state.value)

    def on_accept(
        self,
        state: AcceptorState,
        ballot: Ballot,
        value: RegisterValue,
        *,
        promise_next: bool = False,
    ) -> tuple[AcceptorState, Accepted | Reject]:
        """Handle phase 2a: accept ``value`` at ``ballot`` unless refused.

        Refuses (``FORBIDDEN``) a value whose signature does not verify, and
        (``PREEMPTED``) a ballot below the promise. With ``promise_next`` the acceptor
        also promises ``ballot.next()`` (CASPaxos §2.2.1).
        """
        if not self._verify(value):
            return state, Reject(ballot, state.promised, RejectReason.FORBIDDEN)
        if state.promised is not None and ballot < state.promised:
            return state, Reject(ballot, state.promised)
        promised = ballot.next() if promise_next else ballot
        new = AcceptorState(promised=promised, accepted_ballot=ballot, value=value)
        return new, Accepted(ballot, promised if promise_next else None)

    @staticmethod
    def on_inspect(state: AcceptorState) -> Report:
        """Handle :class:`Inspect`: report the state; nothing changes, nothing is promised."""
        return Report(state.promised, state.accepted_ballot, state.value)

    def handle(self, state: AcceptorState, request: Request) -> tuple[AcceptorState, Reply]:
        """Dispatch a decoded request to :meth:`on_prepare` or :meth:`on_accept`."""
        if isinstance(request, Prepare):
            return self.on_prepare(state, request.ballot)
        return self.on_accept(
            state, request.ballot, request.value, promise_next=request.promise_next
        )

    @staticmethod
    def collect(state: AcceptorState, ballot: Ballot) -> AcceptorState | None:
        """Forget a tombstone decided at ``ballot`` (or an older value it superseded).

        Returns what is left, a promise of at least ``ballot`` and nothing accepted, or
        ``None`` to refuse: the acceptor holds a newer value (the register lives again) or
        another value at ``ballot``. Call only once every holder of the register agrees the
        tombstone is the last word (see the module docstring).
        """
        accepted, value = state.accepted_ballot, state.value
        if accepted is not None and (
            accepted > ballot
            or (
                accepted == ballot
                and not (value is not None and value.is_tombstone and not value.is_moving)
            )
        ):
            return None
        promised = ballot if state.promised is None else max(state.promised, ballot)
        return AcceptorState(promised=promised)


def collection_order(
    tombstone: RegisterValue,
    ballot: Ballot,
    accepted: Mapping[NodeId, Ballot | None],
    *,
    last: NodeId | None = None,
) -> tuple[NodeId, ...] | None:
    """Plan the collection of ``tombstone``, accepted at ``ballot``, from a snapshot.

    ``accepted`` maps every acceptor that may hold state for the block (every member of
    the network) to the ballot it last accepted (None: nothing). Returns the acceptors to
    tell :meth:`Acceptor.collect`, in order: the holders of older values first (once the
    tombstone is gone nothing older may be left to be read), then those holding nothing
    (their promise floor rises, so a late accept of an old value cannot land there either),
    then the tombstone's holders, ``last`` at the very end. Returns None when the tombstone may not
    be collected: it is moving, an acceptor holds something newer (the register lives
    again), or no majority of the replica set holds it (not decided: a round that prepared
    without seeing it could still complete with an older value).
    """
    if not tombstone.is_tombstone or tombstone.is_moving:
        return None
    if any(b is not None and b > ballot for b in accepted.values()):
        return None
    holding = [n for n in tombstone.replica_set if accepted.get(n) == ballot]
    if len(holding) < majority(len(tombstone.replica_set)):
        return None
    older = sorted(n for n, b in accepted.items() if b is not None and b < ballot)
    empty = sorted(n for n, b in accepted.items() if b is None and n != last)
    holders = sorted(n for n, b in accepted.items() if b == ballot and n != last)
    return (*older, *empty, *holders, *(() if last is None else (last,)))


# ---------------------------------------------------------------------------------------
# Changes


Signer = Callable[[RegisterValue], RegisterValue]
"""Fills ``writer`` and ``signature`` of a value the proposer is about to propose."""


def _unsigned(value: RegisterValue) -> RegisterValue:
    return value


@dataclass(frozen=True)
class Transition:
    """What a change function produced: the value to propose and whether a CAS lost.

    ``value`` is ``None`` only for an untouched empty register (nothing to write).
    """

    value: RegisterValue | None
    conflict: bool = False


class Change(Protocol):
    """A change function of CASPaxos: computes the new value from the current one."""

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the transition from ``current``; ``replicas`` seeds a new register."""
        ...


def _data_change(
    current: RegisterValue | None,
    replicas: tuple[NodeId, ...],
    payload: bytes | None,
    sign: Signer,
) -> RegisterValue:
    if current is None:
        return sign(RegisterValue(version=1, replica_set=replicas, payload=payload))
    return sign(replace(current, version=current.version + 1, payload=payload))


@dataclass(frozen=True)
class Read:
    """The identity change: a linearizable read (the value is written back)."""

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return ``current`` unchanged."""
        return Transition(current)


@dataclass(frozen=True)
class Write:
    """Unconditionally replace the payload (version + 1; creates the register if absent)."""

    payload: bytes
    sign: Signer = field(default=_unsigned, compare=False)

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the written value."""
        return Transition(_data_change(current, replicas, self.payload, self.sign))


@dataclass(frozen=True)
class CompareAndSet:
    """Replace the payload only if the version is ``expected_version`` (0: absent)."""

    expected_version: int
    payload: bytes | None
    sign: Signer = field(default=_unsigned, compare=False)

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the new value, or ``current`` with ``conflict`` if the version differs."""
        version = 0 if current is None else current.version
        if version != self.expected_version:
            return Transition(current, conflict=True)
        return Transition(_data_change(current, replicas, self.payload, self.sign))


@dataclass(frozen=True)
class Edit:
    """Replace the payload by ``fn(current)``; ``fn`` returning ``None`` deletes.

    ``fn`` may run several times (once per attempt) and must be pure; an exception it
    raises propagates out of :meth:`Round.receive` and the round is abandoned.
    """

    fn: Callable[[RegisterValue | None], bytes | None]
    sign: Signer = field(default=_unsigned, compare=False)

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the edited value (or ``current`` when the edit changes nothing)."""
        payload = self.fn(current)
        if current is None and payload is None:
            return Transition(None)
        if current is not None and payload == current.payload:
            return Transition(current)
        return Transition(_data_change(current, replicas, payload, self.sign))


@dataclass(frozen=True)
class Delete:
    """Write a tombstone (no-op on an absent or already deleted register)."""

    sign: Signer = field(default=_unsigned, compare=False)

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return a tombstone with the next version, or ``current`` if nothing to delete."""
        if current is None or current.is_tombstone:
            return Transition(current)
        return Transition(_data_change(current, replicas, None, self.sign))


@dataclass(frozen=True)
class BeginReplicaChange:
    """Start moving the block to ``new_set``: the value then needs both sets' quorums."""

    new_set: tuple[NodeId, ...]

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the joint value; conflict if absent or already moving elsewhere."""
        if current is None:
            return Transition(None, conflict=True)
        target = set(self.new_set)
        if current.next_replica_set is not None:
            return Transition(current, conflict=set(current.next_replica_set) != target)
        if set(current.replica_set) == target:
            return Transition(current)
        return Transition(replace(current, next_replica_set=tuple(self.new_set)))


@dataclass(frozen=True)
class FinishReplicaChange:
    """Complete a move to ``new_set``: from then on only its quorum counts."""

    new_set: tuple[NodeId, ...]

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the value on the new set; idempotent; conflict if not moving there."""
        if current is None:
            return Transition(None, conflict=True)
        target = set(self.new_set)
        if current.next_replica_set is None:
            return Transition(current, conflict=set(current.replica_set) != target)
        if set(current.next_replica_set) != target:
            return Transition(current, conflict=True)
        return Transition(
            replace(current, replica_set=current.next_replica_set, next_replica_set=None)
        )


@dataclass(frozen=True)
class AbortReplicaChange:
    """Abandon a move: back to the old set alone (no-op when not moving)."""

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the value without its pending set."""
        if current is None or current.next_replica_set is None:
            return Transition(current)
        return Transition(replace(current, next_replica_set=None))


# ---------------------------------------------------------------------------------------
# Proposer


@dataclass(frozen=True)
class Send:
    """An instruction to the caller: deliver ``message`` to acceptor ``to``."""

    to: NodeId
    message: Request


@dataclass(frozen=True)
class Decided:
    """The change was chosen (or, for a read of a never-written register, nothing to choose).

    Attributes:
        value: the register's value after the change (``None``: empty register).
        previous: the value the change function saw.
        ballot: the ballot ``value`` was chosen at (``None`` when nothing was written).
        conflict: a compare-and-set (or replica change) did not apply; ``value`` is current.
        accepted_by: acceptors known to have accepted ``value`` at ``ballot``.
    """

    value: RegisterValue | None
    previous: RegisterValue | None
    ballot: Ballot | None
    conflict: bool = False
    accepted_by: frozenset[NodeId] = frozenset()

    def raise_for_conflict(self) -> RegisterValue | None:
        """Return :attr:`value`, or raise :class:`Conflict` carrying it if the change lost."""
        if self.conflict:
            raise Conflict(self.value)
        return self.value


@dataclass(frozen=True)
class Preempted:
    """A higher ballot won the acceptors; retry (after a back-off) with a fresh round."""

    ballot: Ballot
    promised: Ballot | None


@dataclass(frozen=True)
class Refused:
    """Acceptors refused the value's signature: the writer may not write this block."""

    ballot: Ballot

    def error(self) -> PermissionDenied:
        """Return the storage error to raise."""
        return PermissionDenied(f"acceptors refused the signature of the proposal at {self.ballot}")


Outcome = Decided | Preempted | Refused


class _Phase(enum.Enum):
    PREPARE = "prepare"
    ACCEPT = "accept"
    DONE = "done"


@dataclass(frozen=True)
class _Cache:
    value: RegisterValue
    ballot: Ballot
    promisers: frozenset[NodeId]


class Proposer:
    """Ballot allocation and the one-round-trip cache of one proposer for one block.

    Args:
        proposer_id: unique per proposer incarnation (see the module docstring).
        pipelining: piggyback the next prepare on every accept (CASPaxos §2.2.1).
    """

    def __init__(self, proposer_id: bytes, *, pipelining: bool = True) -> None:
        self.proposer_id = proposer_id
        self.pipelining = pipelining
        self._last: Ballot | None = None
        self._highest_seen: Ballot | None = None
        self._cache: _Cache | None = None
        self._current: Round | None = None

    @property
    def has_fast_path(self) -> bool:
        """Whether the next round will skip phase 1."""
        return self._cache is not None

    def begin(
        self, change: Change, replicas: Sequence[NodeId], *, probe: Collection[NodeId] = ()
    ) -> Round:
        """Start a round applying ``change``; ``replicas`` is the believed replica set.

        With ``probe`` the proposer does not know the register's configuration:
        ``replicas`` is where it would create the register, and phase 1 also asks the
        ``probe`` acceptors and needs the probe quorum (see the module docstring,
        "Probing"). Any round this proposer started before is abandoned (its replies are
        ignored).
        """
        if self._current is not None:
            self._current._abandon()
        hint = tuple(replicas)
        cache, self._cache = self._cache, None
        if cache is not None:
            rnd = Round(self, change, hint, cache.ballot, fast=cache)
        else:
            rnd = Round(self, change, hint, self._fresh_ballot(), fast=None, probe=probe)
        self._current = rnd
        return rnd

    def forget(self) -> None:
        """Drop the one-round-trip cache (say, after a timeout)."""
        self._cache = None

    def _fresh_ballot(self) -> Ballot:
        counter = max(
            self._last.counter if self._last else 0,
            self._highest_seen.counter if self._highest_seen else 0,
        )
        return self._use(Ballot(counter + 1, self.proposer_id))

    def _use(self, ballot: Ballot) -> Ballot:
        if self._last is not None and ballot <= self._last:
            raise AssertionError("a proposer never reuses a ballot")
        self._last = ballot
        return ballot

    def observe(self, ballot: Ballot | None) -> None:
        """Note a ballot seen elsewhere; the next fresh round starts above it."""
        self._highest_seen = higher_ballot(self._highest_seen, ballot)

    def _finish(self, rnd: Round, cache: _Cache | None) -> None:
        if self._current is rnd:
            self._current = None
            self._cache = cache


class Round:
    """One CASPaxos round, sans-IO: feed replies in, get messages to send out.

    Use :meth:`start` for the first messages, then :meth:`receive` for each reply until
    :attr:`outcome` is set. Timeouts belong to the caller: give up with
    :meth:`unavailable`, which also abandons the round.
    """

    def __init__(
        self,
        proposer: Proposer,
        change: Change,
        hint: tuple[NodeId, ...],
        ballot: Ballot,
        *,
        fast: _Cache | None,
        probe: Collection[NodeId] = (),
    ) -> None:
        _check_set("replicas", hint)
        self._proposer = proposer
        self._change = change
        self._hint = hint
        # Probing: every candidate asked in phase 1, and how many may stay silent.
        self._candidates = frozenset(probe) | frozenset(hint) if probe else frozenset()
        self._tolerance = len(hint) - majority(len(hint))
        self.ballot = ballot
        self.outcome: Outcome | None = None
        self._abandoned = False
        self._fast = fast
        self._promises: dict[NodeId, Promise] = {}
        self._contacted: set[NodeId] = set()
        self._refused: dict[NodeId, Reject] = {}
        self._phase = _Phase.PREPARE
        # Accept phase.
        self._accept_ballot = ballot
        self._accept_value: RegisterValue | None = None
        self._accept_config = Config((hint,))
        self._accepted: dict[NodeId, Accepted] = {}
        self._previous: RegisterValue | None = None
        self._then: Transition | None = None  # second step of a configuration change
        self._conflict = False

    # -- public ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the round has an outcome (or was abandoned)."""
        return self.outcome is not None or self._abandoned

    @property
    def is_fast(self) -> bool:
        """Whether this round skipped phase 1 (one-round-trip optimisation)."""
        return self._fast is not None

    def start(self) -> list[Send]:
        """Return the first messages to send."""
        if self._fast is not None:
            cache = self._fast
            self._phase = _Phase.ACCEPT
            self._promises = {
                n: Promise(self.ballot, cache.ballot, cache.value) for n in cache.promisers
            }
            # The cached value is known chosen: a configuration change needs no write-back.
            return self._propose(cache.value, self._apply(cache.value), known_chosen=True)
        return self._prepare(Config((self._hint,)).members | self._candidates)

    @property
    def is_probing(self) -> bool:
        """Whether phase 1 needs the probe quorum (the proposer did not know the config)."""
        return bool(self._candidates)

    def receive(self, sender: NodeId, reply: Reply) -> list[Send]:
        """Take one acceptor's reply; return further messages to send (maybe none).

        Replies for other ballots, from acceptors not asked, or after the outcome are
        ignored, so duplicated and late messages are harmless.
        """
        if self.done:
            if (
                isinstance(self.outcome, Decided)
                and isinstance(reply, Accepted)
                and reply.ballot == self.outcome.ballot
                and sender in self._accept_config
            ):
                self._accepted[sender] = reply  # late acceptors count for tombstone GC
            return []
        if self._phase is _Phase.PREPARE:
            if reply.ballot != self.ballot or sender not in self._contacted:
                return []
            if isinstance(reply, Promise):
                return self._on_promise(sender, reply)
            if isinstance(reply, Reject):
                return self._on_reject(sender, reply, None)
            return []
        if reply.ballot != self._accept_ballot or sender not in self._accept_config:
            return []
        if isinstance(reply, Accepted):
            return self._on_accepted(sender, reply)
        if isinstance(reply, Reject):
            return self._on_reject(sender, reply, self._accept_config)
        return []

    @property
    def accepted_by(self) -> frozenset[NodeId]:
        """Acceptors known to have accepted the current (or decided) proposal.

        Unlike :attr:`Decided.accepted_by` this keeps growing with replies that arrive
        after the decision.
        """
        return frozenset(self._accepted)

    def unavailable(self) -> Unavailable:
        """Abandon the round after a timeout; return the error describing the missing quorum."""
        if self._phase is _Phase.PREPARE:
            config = self._required_prepare()
            if config.satisfied_by(self._promises) and not self._probe_complete():
                heard = len(self._candidates.intersection(self._promises))
                self._abandon()
                return Unavailable(len(self._candidates) - self._tolerance, heard)
            reached = len(self._promises)
        else:
            config, reached = self._accept_config, len(self._accepted)
        self._abandon()
        return Unavailable(config.quorum_size(), reached)

    # -- phase 1 --------------------------------------------------------------------

    def _prepare(self, nodes: Iterable[NodeId]) -> list[Send]:
        sends = []
        for node in sorted(set(nodes) - self._contacted):
            self._contacted.add(node)
            sends.append(Send(node, Prepare(self.ballot)))
        return sends

    def _current_value(self) -> tuple[Ballot | None, RegisterValue | None]:
        best: Promise | None = None
        for promise in self._promises.values():
            if promise.accepted_ballot is not None and (
                best is None
                or best.accepted_ballot is None
                or promise.accepted_ballot > best.accepted_ballot
            ):
                best = promise
        if best is None:
            return None, None
        return best.accepted_ballot, best.value

    def _required_prepare(self) -> Config:
        _, cur = self._current_value()
        return Config((self._hint,)) if cur is None else cur.config

    def _probe_complete(self) -> bool:
        silent = len(self._candidates) - len(self._candidates.intersection(self._promises))
        return silent <= self._tolerance

    def _prepare_impossible(self) -> bool:
        if self._required_prepare().impossible(self._refused):
            return True
        return len(self._candidates.intersection(self._refused)) > self._tolerance

    def _on_promise(self, sender: NodeId, promise: Promise) -> list[Send]:
        self._promises[sender] = promise
        self._refused.pop(sender, None)
        self._proposer.observe(promise.accepted_ballot)
        required = self._required_prepare()
        if not required.satisfied_by(self._promises):
            # A newer configuration than the hint: ask its acceptors too (same ballot).
            return self._prepare(required.members)
        if not self._probe_complete():
            return []  # a probing proposer waits for all but a tolerated few candidates
        _, cur = self._current_value()
        self._phase = _Phase.ACCEPT
        transition = self._apply(cur)
        if transition.value is None:
            # Untouched empty register: no value is chosen below our ballot, and none can
            # be any more (a quorum promised it), so "empty" is the linearizable answer.
            return self._decide(None, None)
        return self._propose(cur, transition, known_chosen=False)

    # -- phase 2 --------------------------------------------------------------------

    def _apply(self, cur: RegisterValue | None) -> Transition:
        self._previous = cur
        transition = self._change.apply(cur, self._hint if cur is None else cur.replica_set)
        self._conflict = transition.conflict
        return transition

    def _propose(
        self, cur: RegisterValue | None, transition: Transition, *, known_chosen: bool
    ) -> list[Send]:
        new = transition.value
        if new is None:
            return self._decide(None, None)
        base = Config((self._hint,)) if cur is None else cur.config
        if cur is not None and new.config != base and not known_chosen:
            # Make cur chosen first (write it back, collecting promises for next(b)),
            # then write the new configuration at next(b).
            self._then = transition
            return self._send_accept(self.ballot, cur, base, promise_next=True)
        return self._send_accept(
            self._accept_ballot,
            new,
            base.joint(new.config),
            promise_next=self._proposer.pipelining,
        )

    def _send_accept(
        self, ballot: Ballot, value: RegisterValue, config: Config, *, promise_next: bool
    ) -> list[Send]:
        self._accept_ballot = ballot
        self._accept_value = value
        self._accept_config = config
        self._accepted = {}
        self._refused = {}
        return [Send(n, Accept(ballot, value, promise_next)) for n in sorted(config.members)]

    def _on_accepted(self, sender: NodeId, accepted: Accepted) -> list[Send]:
        self._accepted[sender] = accepted
        self._refused.pop(sender, None)
        if not self._accept_config.satisfied_by(self._accepted):
            return []
        value = self._accept_value
        assert value is not None
        if self._then is not None:
            # Step 2 of a configuration change: cur is chosen; our promises for next(b)
            # come from a quorum of cur's configuration.
            transition, self._then = self._then, None
            promisers = {n for n, a in self._accepted.items() if a.promised_next is not None}
            assert value.config.satisfied_by(promisers)
            self._promises = {
                n: Promise(self._accept_ballot.next(), self._accept_ballot, value)
                for n in promisers
            }
            nxt = self._proposer._use(self._accept_ballot.next())
            self._accept_ballot = nxt
            return self._propose(value, transition, known_chosen=True)
        return self._decide(value, self._accept_ballot)

    def _on_reject(self, sender: NodeId, reject: Reject, config: Config | None) -> list[Send]:
        """Count a rejection; ``config`` is the phase-2 configuration (None in phase 1)."""
        self._proposer.observe(reject.promised)
        if sender in (self._promises if self._phase is _Phase.PREPARE else self._accepted):
            return []  # a stale duplicate; this acceptor already said yes
        self._refused[sender] = reject
        if self._prepare_impossible() if config is None else config.impossible(self._refused):
            forbidden = any(r.reason is RejectReason.FORBIDDEN for r in self._refused.values())
            highest = max(
                (r.promised for r in self._refused.values() if r.promised is not None),
                default=None,
            )
            self._finish(
                Refused(self._accept_ballot)
                if forbidden
                else Preempted(self._current_ballot(), highest)
            )
        return []

    def _current_ballot(self) -> Ballot:
        return self.ballot if self._phase is _Phase.PREPARE else self._accept_ballot

    def _decide(self, value: RegisterValue | None, ballot: Ballot | None) -> list[Send]:
        accepted_by = frozenset(self._accepted) if ballot is not None else frozenset()
        cache = None
        if value is not None and ballot is not None and self._proposer.pipelining:
            promisers = frozenset(n for n, a in self._accepted.items() if a.promised_next)
            if value.config.satisfied_by(promisers):
                cache = _Cache(value, ballot.next(), promisers)
        self._finish(Decided(value, self._previous, ballot, self._conflict, accepted_by), cache)
        return []

    def _finish(self, outcome: Outcome, cache: _Cache | None = None) -> None:
        self.outcome = outcome
        self._phase = _Phase.DONE
        if cache is not None:
            # Reserve next(b) now, so no fresh ballot can collide with the cached one.
            self._proposer._use(cache.ballot)
        self._proposer._finish(self, cache)

    def _abandon(self) -> None:
        self._abandoned = True
        self._proposer._finish(self, None)


class QuickRead:
    """A linearizable read that writes nothing, when the acceptors agree (sans-IO).

    Ask the acceptors of the believed configuration for their state (:class:`Inspect`);
    the read is done as soon as a quorum of some reported value's configuration reports
    that very value at the same accepted ballot (see the module docstring, "Reads
    without writes"). Acceptors a reported value names and that were not asked are asked
    too. If that cannot happen (replies disagree, the register is empty, acceptors
    fail), :attr:`settled` becomes true without an :attr:`outcome`, and the caller runs a
    full round (:class:`Read`) instead.
    """

    def __init__(self, replicas: Sequence[NodeId]) -> None:
        """Prepare to ask ``replicas`` (a configuration the caller saw decided)."""
        hint = tuple(replicas)
        _check_set("replicas", hint)
        self._hint = hint
        self._asked: set[NodeId] = set()
        self._answered: set[NodeId] = set()
        self._reports: dict[NodeId, Report] = {}
        self.outcome: Decided | None = None

    @property
    def settled(self) -> bool:
        """Whether the read is over: an outcome, or every acceptor asked has answered."""
        return self.outcome is not None or self._answered >= self._asked

    def start(self) -> list[NodeId]:
        """Return the acceptors to send :class:`Inspect` to first."""
        return self._ask(self._hint)

    def _ask(self, nodes: Iterable[NodeId]) -> list[NodeId]:
        new = sorted(set(nodes) - self._asked)
        self._asked.update(new)
        return new

    def receive(self, sender: NodeId, report: Report | None) -> list[NodeId]:
        """Take one acceptor's report (``None``: it failed); return more acceptors to ask.

        Reports from acceptors not asked, duplicates and reports after the outcome are
        ignored.
        """
        if self.outcome is not None or sender not in self._asked or sender in self._answered:
            return []
        self._answered.add(sender)
        if report is None or report.value is None or report.accepted_ballot is None:
            return []
        self._reports[sender] = report
        value, ballot = report.value, report.accepted_ballot
        agreeing = frozenset(
            n for n, r in self._reports.items() if r.accepted_ballot == ballot and r.value == value
        )
        if value.config.satisfied_by(agreeing):
            self.outcome = Decided(value, value, ballot, accepted_by=agreeing)
            return []
        return self._ask(value.config.members)
