"""A linearizability checker for register histories (Wing & Gong, with Lowe's memoisation).

Theory of operation
===================

A history is a set of operations, each with an invocation time and either a return time
and an output, or no return (the client timed out: the operation may or may not have
taken effect, at any time after its invocation). The history is linearizable if every
operation can be given a point between its invocation and its return at which it takes
effect atomically, in an order the sequential model accepts, where operations without a
return may be given a point anywhere after their invocation, or none at all.

The search is Wing & Gong's (1993) as improved by Lowe ("Testing for linearizability",
2017) and used by Knossos and Porcupine: events (calls and returns) sit in a doubly linked
list in time order; the search walks it, tentatively linearizing any operation whose call
it meets if the model accepts it in the current state ("lifting" the call and its return
out of the list), and backtracks when it meets the return of an operation not yet
linearized. A cache of (set of linearized operations as a bitset, model state)
configurations already explored prunes the exponential blow-up: two paths reaching the
same configuration have the same future. Histories are split per key first (P-compositionality,
Horn & Kroening 2015): a history is linearizable iff each key's sub-history is.

Operations without a return are what makes real histories hard (every subset of them may
or may not have happened), so three measures keep the search small, none of which gives up
completeness: each level of the search tries operations with a known outcome before those
without; identical pending unknown-outcome operations (same kind and input) are
interchangeable once invoked, so one of each kind is tried per level; and a model's
optional ``prune`` drops or merges unknown-outcome writes whose value no read returned.
What remains exponential is refuting (not confirming) a history with many
unknown-outcome operations that are *not* interchangeable; ``max_steps`` bounds that,
returning an inconclusive result.

Conventions: at equal timestamps calls are ordered before returns, i.e. touching intervals
count as concurrent (the permissive reading). Reads without a return constrain nothing
and are dropped. An operation without a return is never *required*: the search succeeds
once every operation with a return is linearized.

Two sequential models are provided: :class:`RegisterModel` (read / write / compare-and-set
on values) and :class:`VersionedRegisterModel` (the same with the version counter the
storage layer exposes; compare-and-set compares versions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

__all__ = [
    "CheckResult",
    "Model",
    "Operation",
    "RegisterModel",
    "VersionedRegisterModel",
    "check_history",
    "check_partition",
]

S = TypeVar("S", bound=Hashable)

READ = "read"
WRITE = "write"
CAS = "cas"
DELETE = "delete"


@dataclass(frozen=True)
class Operation:
    """One client operation on one key.

    Attributes:
        client: who issued it (for explanations only).
        key: the register it touched; histories are checked per key.
        kind: ``"read"``, ``"write"``, ``"cas"`` (and ``"delete"`` for the versioned
            model); the model decides what a kind means.
        input: write: the value; cas: ``(expected, new)``; read: ignored.
        output: read: the value seen; cas: ``True``/``False``; write: ignored (or, for
            :class:`VersionedRegisterModel`, the new version if known).
        invoke: when the client sent it.
        returned: when the client got the answer; ``None`` if it never did (unknown outcome).
    """

    client: Hashable
    key: Hashable
    kind: str
    input: Any = None
    output: Any = None
    invoke: float = 0.0
    returned: float | None = None

    def __post_init__(self) -> None:
        if self.returned is not None and self.returned < self.invoke:
            raise ValueError("an operation cannot return before it is invoked")

    @property
    def completed(self) -> bool:
        """Whether the outcome is known."""
        return self.returned is not None

    def __str__(self) -> str:
        end = "?" if self.returned is None else f"{self.returned:g}"
        out = "" if self.kind == WRITE or self.returned is None else f" -> {self.output!r}"
        return (
            f"client {self.client!r} {self.kind}({self.input!r}){out} "
            f"[{self.invoke:g}, {end}] on key {self.key!r}"
        )


class Model(Protocol[S]):
    """A sequential specification: an initial state and a step function."""

    def initial(self) -> S:
        """Return the state before any operation."""
        ...

    def step(self, state: S, op: Operation) -> tuple[bool, S]:
        """Return whether ``op`` may happen in ``state`` (with its output) and the next state.

        For an operation without a return the output is unknown: accept it only where it
        would take effect. A model may also define ``prune(ops) -> list[Operation]`` to
        drop operations without a return that provably need not be linearized.
        """
        ...


class _Unobserved:
    """The one stand-in value for every write no read ever returned."""

    def __repr__(self) -> str:
        return "<unobserved>"


UNOBSERVED: Any = _Unobserved()


def _unobserved(op: Operation) -> Operation:
    if op.kind == WRITE:
        return replace(op, input=UNOBSERVED)
    return replace(op, input=(op.input[0], UNOBSERVED))


@dataclass(frozen=True)
class RegisterModel:
    """A register of plain values: read, write, compare-and-set ``(expected, new)``."""

    start: Any = None

    def initial(self) -> Any:
        """Return the initial value (``None`` unless configured)."""
        return self.start

    def step(self, state: Any, op: Operation) -> tuple[bool, Any]:
        """Apply ``op`` to the value ``state``."""
        if op.kind == READ:
            return op.output == state, state
        if op.kind == WRITE:
            return True, op.input
        if op.kind != CAS:
            raise ValueError(f"unknown operation kind {op.kind!r}")
        expected, new = op.input
        if op.returned is None or op.output:
            return state == expected, new
        return state != expected, state

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        """Drop operations without a return whose effect no other operation can observe.

        Each of them may be assumed not to have happened, which keeps the search from
        trying every subset of them (they never have to be linearized). An unknown write
        or cas of value ``v`` is unobservable when no read returned ``v`` and no cas
        expected ``v``; a *failed* cas could be explained by any value, so with one in the
        history nothing is dropped.
        """
        observed: list[Any] = [o.output for o in ops if o.kind == READ and o.completed]
        observed += [o.input[0] for o in ops if o.kind == CAS]
        observed.append(self.start)

        def visible(o: Operation) -> bool:
            if o.completed or o.kind == READ:
                return True
            written = o.input if o.kind == WRITE else o.input[1]
            return any(written == seen for seen in observed)

        if any(o.kind == CAS and o.completed and not o.output for o in ops):
            # A failed cas is explained by any value other than the expected one, so an
            # unobservable write may matter; it is still interchangeable with any other.
            return [o if visible(o) else _unobserved(o) for o in ops]
        return [o for o in ops if visible(o)]


@dataclass(frozen=True)
class VersionedRegisterModel:
    """A register with a version counter: state ``(version, value)``, starting at ``(0, None)``.

    read outputs ``(version, value)``; write takes the value (output: the new version, or
    ``None`` if not recorded); cas takes ``(expected_version, new_value)`` and outputs
    whether it applied; delete sets the value to ``None`` with the next version unless
    it is already ``None`` (as ``storage.paxos.Delete`` does).
    """

    def initial(self) -> tuple[int, Any]:
        """Return ``(0, None)``: never written."""
        return (0, None)

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        """Replace the values of unknown-outcome writes that no read returned by one marker.

        Such values only ever show through the version number, so the writes are
        interchangeable; with one marker value the search sees them as identical (and
        tries one of a group of identical pending operations, not each of them).
        """
        observed = [o.output[1] for o in ops if o.kind == READ and o.completed]

        def visible(o: Operation) -> bool:
            if o.completed or o.kind not in (WRITE, CAS):
                return True
            written = o.input if o.kind == WRITE else o.input[1]
            return any(written == seen for seen in observed)

        return [o if visible(o) else _unobserved(o) for o in ops]

    def step(self, state: tuple[int, Any], op: Operation) -> tuple[bool, tuple[int, Any]]:
        """Apply ``op`` to ``state``."""
        version, _ = state
        if op.kind == READ:
            return tuple(op.output) == state, state
        if op.kind == WRITE:
            ok = op.returned is None or op.output is None or op.output == version + 1
            return ok, (version + 1, op.input)
        if op.kind == DELETE:
            # Deleting an absent or already deleted register changes nothing.
            return True, state if state[1] is None else (version + 1, None)
        if op.kind != CAS:
            raise ValueError(f"unknown operation kind {op.kind!r}")
        expected, new = op.input
        if op.returned is None or op.output:
            return version == expected, (version + 1, new)
        return version != expected, state


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a history.

    Attributes:
        ok: ``True`` linearizable; ``False`` not; ``None`` the step budget ran out.
        key: the first key found not linearizable (``None`` if ok).
        explanation: a human-readable account; for a failure, the longest linearizable
            prefix found and the operation that could not be placed after it.
        linearized: for a failure, that longest prefix, in linearization order.
        culprit: the operation whose return could not be reached.
    """

    ok: bool | None
    key: Hashable | None = None
    explanation: str = ""
    linearized: tuple[Operation, ...] = ()
    culprit: Operation | None = None

    def __bool__(self) -> bool:
        return self.ok is True


def check_history(
    ops: Sequence[Operation],
    model: Model[Any] | None = None,
    *,
    max_steps: int | None = None,
) -> CheckResult:
    """Check a multi-key history, key by key; return the first failure or success.

    Args:
        ops: the operations, in any order.
        model: the sequential specification (default :class:`RegisterModel`).
        max_steps: give up (``ok=None``) after this many search steps per key.
    """
    model = model if model is not None else RegisterModel()
    by_key: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    inconclusive: CheckResult | None = None
    for key_ops in by_key.values():
        result = check_partition(key_ops, model, max_steps=max_steps)
        if result.ok is False:
            return result
        if result.ok is None and inconclusive is None:
            inconclusive = result
    if inconclusive is not None:
        return inconclusive
    return CheckResult(True, None, f"linearizable: {len(ops)} operations on {len(by_key)} keys")


def check_partition(
    ops: Sequence[Operation],
    model: Model[Any],
    *,
    max_steps: int | None = None,
) -> CheckResult:
    """Check the history of one key with the memoised Wing & Gong search."""
    key = ops[0].key if ops else None
    ops = [op for op in ops if op.completed or op.kind != READ]
    prune = getattr(model, "prune", None)
    if prune is not None:
        ops = prune(ops)
    n = len(ops)
    # Events: (time, 0 for call / 1 for return, op index). Calls first at equal times.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if op.returned is not None:
            events.append((op.returned, 1, i))
    events.sort()
    size = len(events)
    head = size  # sentinel
    nil = -1
    nxt = [nil] * (size + 1)  # index ``size`` is the head sentinel
    prv = [nil] * (size + 1)
    last = head
    for pos in range(size):
        nxt[last] = pos
        prv[pos] = last
        last = pos
    is_call = [e[1] == 0 for e in events]
    op_of = [e[2] for e in events]
    ret_of = [nil] * n
    call_of = [nil] * n
    for pos, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_of[i] = pos
        else:
            ret_of[i] = pos

    def unlink(pos: int) -> None:
        p, q = prv[pos], nxt[pos]
        nxt[p] = q
        if q != nil:
            prv[q] = p

    def relink(pos: int) -> None:
        p, q = prv[pos], nxt[pos]
        nxt[p] = pos
        if q != nil:
            prv[q] = pos

    def lift(call: int) -> None:
        unlink(call)
        ret = ret_of[op_of[call]]
        if ret != nil:
            unlink(ret)

    def unlift(call: int) -> None:
        ret = ret_of[op_of[call]]
        if ret != nil:
            relink(ret)
        relink(call)

    remaining = sum(1 for op in ops if op.completed)
    state: Any = model.initial()
    linearized = 0
    seen: set[tuple[int, Any]] = set()
    entry = nxt[head]
    steps = 0
    best_depth = -1
    best_stack: list[int] = []
    best_state: Any = state
    culprit: int | None = None

    # Each level tries the operations with a known outcome first (pass 0) and only then
    # those without (pass 1): an unknown operation is never needed for its own sake, and
    # trying it eagerly makes the search walk subsets of the unknown operations.
    # Unknown-outcome operations with the same kind and input are interchangeable once
    # invoked (nothing bounds them afterwards), so each level tries one of each class.
    def klass(i: int) -> Hashable:
        o = ops[i]
        try:
            hash(o.input)
        except TypeError:
            return ("op", i)
        return ("same", o.kind, o.input)

    classes = [klass(i) for i in range(n)]
    stack: list[tuple[int, Any, int, set[Hashable]]] = []  # (call, state before, pass, tried)
    phase = 0
    tried: set[Hashable] = set()
    while remaining > 0:
        steps += 1
        if max_steps is not None and steps > max_steps:
            return CheckResult(
                None, key, f"gave up after {max_steps} search steps on {n} operations"
            )
        if entry != nil and is_call[entry]:
            i = op_of[entry]
            if ops[i].completed != (phase == 0) or (phase == 1 and classes[i] in tried):
                entry = nxt[entry]
                continue
            if phase == 1:
                tried.add(classes[i])
            ok, new_state = model.step(state, ops[i])
            if ok:
                bits = linearized | (1 << i)
                config = (bits, new_state)
                if config not in seen:
                    seen.add(config)
                    stack.append((entry, state, phase, tried))
                    state = new_state
                    linearized = bits
                    if ops[i].completed:
                        remaining -= 1
                    lift(entry)
                    entry = nxt[head]
                    phase = 0
                    tried = set()
                    continue
            entry = nxt[entry]
            continue
        # The return of an operation not yet linearized (or the end): this pass is over.
        if phase == 0:
            phase = 1
            tried = set()
            entry = nxt[head]
            continue
        if len(stack) > best_depth and entry != nil:
            best_depth = len(stack)
            best_stack = [op_of[c] for c, _, _, _ in stack]
            best_state = state
            culprit = op_of[entry]
        if not stack:
            break
        entry, state, phase, tried = stack.pop()
        j = op_of[entry]
        linearized &= ~(1 << j)
        if ops[j].completed:
            remaining += 1
        unlift(entry)
        entry = nxt[entry]

    if remaining == 0:
        return CheckResult(True, key, f"linearizable: {n} operations on key {key!r}")
    prefix = tuple(ops[j] for j in best_stack)
    bad = ops[culprit] if culprit is not None else None
    lines = [
        f"not linearizable on key {key!r}: after linearizing {len(prefix)} of {n} "
        f"operations (model state {best_state!r}), no order places",
        f"  {bad}",
        "before it returns. Longest linearizable prefix (last 10):",
        *(f"  {op}" for op in prefix[-10:]),
    ]
    return CheckResult(False, key, "\n".join(lines), prefix, bad)
