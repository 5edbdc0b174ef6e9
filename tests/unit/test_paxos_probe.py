"""Probing rounds (a proposer that knows no configuration) and quick reads, sans-IO."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import pytest

from dht.ids import NodeId
from storage.paxos import (
    Ballot,
    BeginReplicaChange,
    Change,
    CompareAndSet,
    Decided,
    FinishReplicaChange,
    Inspect,
    Outcome,
    Preempted,
    Prepare,
    Proposer,
    QuickRead,
    Read,
    RegisterValue,
    Report,
    Round,
    Send,
    Write,
    decode_message,
    encode_message,
)
from tests.paxos_sim import SimAcceptor, sign_with, verifier

NODES = tuple(NodeId(bytes([ord("A") + i]) * 20) for i in range(5))
A, B, C, D, E = NODES
SECRET = b"owner-secret"
SIGN = sign_with(SECRET)


def cluster() -> dict[NodeId, SimAcceptor]:
    """Five acceptors that verify the owner's (simulated) signature."""
    return {n: SimAcceptor(n, verifier(SECRET)) for n in NODES}


def drive(
    rnd: Round,
    nodes: dict[NodeId, SimAcceptor],
    allow: Callable[[Send], bool] = lambda send: True,
) -> Outcome | None:
    """Deliver in FIFO order until the outcome; messages ``allow`` refuses are lost."""
    queue = deque(rnd.start())
    while queue and rnd.outcome is None:
        send = queue.popleft()
        if not allow(send):
            continue
        reply = nodes[send.to].handle(send.message)
        assert reply is not None
        queue.extend(rnd.receive(send.to, reply))
    return rnd.outcome


def run(
    proposer: Proposer,
    change: Change,
    hint: tuple[NodeId, ...],
    nodes: dict[NodeId, SimAcceptor],
    allow: Callable[[Send], bool] = lambda send: True,
    *,
    probe: Iterable[NodeId] = (),
) -> Outcome | None:
    """Begin rounds of ``change`` until one is not preempted (as the KV client retries)."""
    for _ in range(4):
        rnd = proposer.begin(change, hint, probe=tuple(probe))
        outcome = drive(rnd, nodes, allow)
        if not isinstance(outcome, Preempted):
            return outcome
        proposer.observe(outcome.promised)
    raise AssertionError("preempted again and again")


def only(prepare: Iterable[NodeId], accept: Iterable[NodeId]) -> Callable[[Send], bool]:
    """Let through prepares to ``prepare`` and accepts to ``accept`` only."""
    to_prepare, to_accept = set(prepare), set(accept)

    def allow(send: Send) -> bool:
        wanted = to_prepare if isinstance(send.message, Prepare) else to_accept
        return send.to in wanted

    return allow


def decided(outcome: Outcome | None) -> Decided:
    """Assert the outcome is a decision and return it."""
    assert isinstance(outcome, Decided), outcome
    return outcome


def state_of(nodes: dict[NodeId, SimAcceptor], node: NodeId) -> RegisterValue | None:
    """What ``node`` has accepted."""
    return nodes[node].state.value


def test_a_probe_finds_a_register_created_on_another_view() -> None:
    nodes = cluster()
    # Created from a view whose nearest three are C, D, E (accepted by D and E only).
    creator = Proposer(b"creator")
    made = decided(
        run(creator, Write(b"one", sign=SIGN), (C, D, E), nodes, only(NODES, (D, E)), probe=NODES)
    )
    assert made.value is not None
    assert made.value.replica_set == (C, D, E)
    # Another view's nearest three are A, B, C: a majority of them knows nothing.
    other = Proposer(b"other")
    assert other.begin(Read(), (A, B, C), probe=NODES).is_probing
    outcome = decided(
        run(other, CompareAndSet(0, b"two", sign=SIGN), (A, B, C), nodes, probe=NODES)
    )
    assert outcome.conflict
    assert outcome.value is not None
    assert outcome.value.payload == b"one"
    # Without probing, the same proposer would have created a second history.
    blind = decided(run(Proposer(b"blind"), CompareAndSet(0, b"two", sign=SIGN), (A, B, C), nodes))
    assert not blind.conflict


def test_a_probe_waits_for_all_but_the_tolerated_candidates() -> None:
    nodes = cluster()
    # With two of five candidates silent, a probe for a three-replica register (which
    # tolerates one) cannot conclude that the register is absent.
    rnd = Proposer(b"p").begin(Write(b"x", sign=SIGN), (A, B, C), probe=NODES)
    assert drive(rnd, nodes, only((A, B, C), NODES)) is None
    missing = rnd.unavailable()
    assert (missing.needed, missing.reached) == (4, 3)
    # One silent candidate is fine, and the register is created on the hint.
    made = decided(
        drive(
            Proposer(b"q").begin(Write(b"x", sign=SIGN), (A, B, C), probe=NODES),
            nodes,
            only((A, B, C, D), NODES),
        )
    )
    assert made.value is not None
    assert made.value.replica_set == (A, B, C)


def test_a_probe_never_adopts_a_stray_value_over_a_chosen_one() -> None:
    """A half-done creation leaves a stray value; a later one from another view is chosen.

    A prober that stopped at a majority of the stray value's configuration would adopt it
    and fork the register; the probe quorum makes it see the chosen value.
    """
    nodes = cluster()
    stray = Proposer(b"p1")
    rnd = stray.begin(Write(b"stray", sign=SIGN), (A, B, C), probe=NODES)
    assert drive(rnd, nodes, only(NODES, (A,))) is None  # accepted by A alone
    rnd.unavailable()
    chosen = Proposer(b"p2")
    chosen.observe(rnd.ballot)
    made = decided(
        run(
            chosen,
            Write(b"chosen", sign=SIGN),
            (C, D, E),
            nodes,
            only((B, C, D, E), (D, E)),  # A stays silent (tolerated); D and E accept
            probe=NODES,
        )
    )
    assert made.value is not None
    assert made.previous is None
    assert made.ballot is not None
    stray_value = state_of(nodes, A)
    assert stray_value is not None
    assert stray_value.payload == b"stray"
    # A prober with the stray's view hears A and B first.
    late = Proposer(b"p3")
    late.observe(made.ballot)
    outcome = decided(run(late, Write(b"late", sign=SIGN), (A, B, C), nodes, probe=NODES))
    assert outcome.previous is not None
    assert outcome.previous.payload == b"chosen"
    assert outcome.value is not None
    assert outcome.value.replica_set == (C, D, E)


def test_a_known_configuration_needs_no_probe() -> None:
    nodes = cluster()
    p = Proposer(b"p", pipelining=False)
    decided(drive(p.begin(Write(b"x", sign=SIGN), (A, B, C), probe=NODES), nodes))
    rnd = p.begin(Read(), (A, B, C))
    assert not rnd.is_probing
    assert decided(drive(rnd, nodes, only((A, B), (A, B)))).value is not None


# --- quick reads ----------------------------------------------------------------------------


def run_quick(
    nodes: dict[NodeId, SimAcceptor], hint: tuple[NodeId, ...], down: Iterable[NodeId] = ()
) -> QuickRead:
    """Run a quick read to the end; return it."""
    dead = set(down)
    quick = QuickRead(hint)
    queue = deque(quick.start())
    while queue and not quick.settled:
        node = queue.popleft()
        queue.extend(quick.receive(node, None if node in dead else nodes[node].inspect()))
    return quick


def test_quick_read_returns_a_value_a_quorum_agrees_on_and_writes_nothing() -> None:
    nodes = cluster()
    decided(drive(Proposer(b"p").begin(Write(b"v", sign=SIGN), (A, B, C)), nodes))
    before = {n: nodes[n].disk for n in NODES}
    quick = run_quick(nodes, (A, B, C), down=(C,))
    assert quick.outcome is not None
    assert quick.outcome.value is not None
    assert quick.outcome.value.payload == b"v"
    assert quick.outcome.accepted_by == {A, B}
    assert {n: nodes[n].disk for n in NODES} == before


def test_quick_read_does_not_conclude_on_disagreement_or_emptiness() -> None:
    nodes = cluster()
    assert run_quick(nodes, (A, B, C)).outcome is None  # empty: the full round decides
    decided(drive(Proposer(b"p").begin(Write(b"v1", sign=SIGN), (A, B, C)), nodes))
    # v2 accepted by A only (not chosen): A and B disagree, C is down.
    writer = Proposer(b"w")
    writer.observe(Ballot(10, b""))
    rnd = writer.begin(Write(b"v2", sign=SIGN), (A, B, C))
    assert drive(rnd, nodes, only((A, B, C), (A,))) is None
    quick = run_quick(nodes, (A, B, C), down=(C,))
    assert quick.settled
    assert quick.outcome is None


def test_quick_read_follows_a_moved_register() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    decided(drive(p.begin(Write(b"v", sign=SIGN), (A, B, C)), nodes))
    decided(drive(p.begin(BeginReplicaChange((C, D, E)), (A, B, C)), nodes))
    decided(drive(p.begin(FinishReplicaChange((C, D, E)), (A, B, C)), nodes))
    quick = run_quick(nodes, (A, B, C))
    assert quick.outcome is not None
    assert quick.outcome.value is not None
    assert set(quick.outcome.value.replica_set) == {C, D, E}
    assert quick.outcome.accepted_by >= {D, E} or quick.outcome.accepted_by >= {C, D}


def test_quick_read_ignores_unasked_and_duplicate_reports() -> None:
    nodes = cluster()
    decided(drive(Proposer(b"p").begin(Write(b"v", sign=SIGN), (A, B, C)), nodes))
    quick = QuickRead((A, B, C))
    quick.start()
    report = nodes[A].inspect()
    assert quick.receive(D, nodes[D].inspect()) == []
    quick.receive(A, report)
    quick.receive(A, report)
    assert quick.outcome is None
    quick.receive(B, nodes[B].inspect())
    assert quick.outcome is not None


@pytest.mark.parametrize(
    "message",
    [
        Inspect(),
        Report(None, None, None),
        Report(Ballot(3, b"p"), Ballot(2, b"q"), SIGN(RegisterValue(1, (A, B, C), b"x"))),
    ],
)
def test_inspect_and_report_round_trip(message: Inspect | Report) -> None:
    assert decode_message(encode_message(message)) == message


def test_an_inspection_changes_no_acceptor_state() -> None:
    nodes = cluster()
    decided(drive(Proposer(b"p").begin(Write(b"v", sign=SIGN), (A, B, C)), nodes))
    state = nodes[A].state
    report = nodes[A].inspect()
    assert report == Report(state.promised, state.accepted_ballot, state.value)
    assert nodes[A].state == state
