"""CASPaxos core: acceptor decisions, proposer rounds, one round trip, moves, signatures, GC."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable

import msgpack
import pytest

from dht.ids import NodeId
from storage.errors import Conflict, Corrupt, PermissionDenied, Unavailable
from storage.paxos import (
    AbortReplicaChange,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    BeginReplicaChange,
    Change,
    CompareAndSet,
    Config,
    Decided,
    Delete,
    Edit,
    FinishReplicaChange,
    Outcome,
    Preempted,
    Prepare,
    Promise,
    Proposer,
    Read,
    Refused,
    RegisterValue,
    Reject,
    RejectReason,
    Reply,
    Request,
    Round,
    Send,
    Write,
    collection_order,
    decode_message,
    encode_message,
    trust_all_values,
)
from tests.paxos_sim import SimAcceptor, sign_with, verifier

NODES = tuple(NodeId(bytes([ord("A") + i]) * 20) for i in range(5))
A, B, C, D, E = NODES
ABC = (A, B, C)
CDE = (C, D, E)
SECRET = b"owner-secret"
SIGN = sign_with(SECRET)


def cluster(nodes: Iterable[NodeId] = (A, B, C, D, E)) -> dict[NodeId, SimAcceptor]:
    """Acceptors that verify the owner's (simulated) signature."""
    return {n: SimAcceptor(n, verifier(SECRET)) for n in nodes}


def drive(
    rnd: Round,
    nodes: dict[NodeId, SimAcceptor],
    *,
    down: Iterable[NodeId] = (),
    log: list[Send] | None = None,
    drain: bool = False,
) -> Outcome | None:
    """Deliver every message in FIFO order; acceptors in ``down`` never answer.

    Stops at the outcome unless ``drain`` (then every message sent is delivered).
    """
    dead = set(down)
    queue = deque(rnd.start())
    while queue and (drain or rnd.outcome is None):
        send = queue.popleft()
        if log is not None:
            log.append(send)
        if send.to in dead:
            continue
        reply = nodes[send.to].handle(send.message)
        assert reply is not None
        queue.extend(rnd.receive(send.to, reply))
    return rnd.outcome


def run(
    proposer: Proposer,
    change: Change,
    nodes: dict[NodeId, SimAcceptor],
    hint: tuple[NodeId, ...] = ABC,
    *,
    retries: int = 3,
    down: Iterable[NodeId] = (),
    log: list[Send] | None = None,
    drain: bool = False,
) -> Outcome | None:
    """Begin a round and drive it, retrying (as the KV client does) when preempted."""
    return run_round(
        proposer, change, nodes, hint, retries=retries, down=down, log=log, drain=drain
    ).outcome


def run_round(
    proposer: Proposer,
    change: Change,
    nodes: dict[NodeId, SimAcceptor],
    hint: tuple[NodeId, ...] = ABC,
    *,
    retries: int = 3,
    down: Iterable[NodeId] = (),
    log: list[Send] | None = None,
    drain: bool = False,
) -> Round:
    """Like :func:`run`, returning the last round."""
    for _ in range(retries + 1):
        rnd = proposer.begin(change, hint)
        if not isinstance(drive(rnd, nodes, down=down, log=log, drain=drain), Preempted):
            break
    return rnd


def decided(outcome: Outcome | None) -> Decided:
    """Assert the outcome is a decision and return it."""
    assert isinstance(outcome, Decided), outcome
    return outcome


def value(payload: bytes | None = b"x", version: int = 1, **kw: object) -> RegisterValue:
    """A signed register value on A, B, C."""
    return SIGN(RegisterValue(version, ABC, payload, **kw))  # type: ignore[arg-type]


# --- ballots, values, state, codec ---------------------------------------------------------


def test_ballots_are_totally_ordered_counter_first() -> None:
    ballots = [Ballot(c, p) for c in range(3) for p in (b"a", b"b")]
    assert sorted(reversed(ballots)) == ballots
    assert Ballot(1, b"z") < Ballot(2, b"a")
    assert Ballot(1, b"a").next() == Ballot(2, b"a")
    for x, y in itertools.product(ballots, repeat=2):
        assert (x < y) + (x == y) + (x > y) == 1


@pytest.mark.parametrize("bad", [(-1, b"a"), (1.5, b"a"), (True, b"a"), (1, "a")])
def test_ballot_validation(bad: tuple[object, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        Ballot(*bad)  # type: ignore[arg-type]


def test_register_value_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        RegisterValue(1, (), b"x")
    with pytest.raises(ValueError, match="duplicate"):
        RegisterValue(1, (A, A), b"x")
    with pytest.raises(ValueError, match="version"):
        RegisterValue(-1, ABC, b"x")
    assert RegisterValue(1, ABC, None).is_tombstone


def test_signed_bytes_cover_data_not_replica_sets() -> None:
    v = RegisterValue(3, ABC, b"x", writer=b"w")
    assert (
        v.signed_bytes()
        == RegisterValue(3, CDE, b"x", writer=b"w", next_replica_set=ABC).signed_bytes()
    )
    assert v.signed_bytes() != RegisterValue(4, ABC, b"x", writer=b"w").signed_bytes()
    assert v.signed_bytes() != RegisterValue(3, ABC, b"y", writer=b"w").signed_bytes()
    assert v.signed_bytes() != RegisterValue(3, ABC, None, writer=b"w").signed_bytes()
    assert v.signed_bytes() != RegisterValue(3, ABC, b"x", writer=b"v").signed_bytes()


def test_acceptor_state_round_trips() -> None:
    states = [
        AcceptorState(),
        AcceptorState(promised=Ballot(3, b"p")),
        AcceptorState(Ballot(4, b"p"), Ballot(3, b"q"), value(b"x", 2)),
        AcceptorState(Ballot(4, b"p"), Ballot(4, b"p"), value(None, 5, next_replica_set=CDE)),
    ]
    for state in states:
        assert AcceptorState.from_bytes(state.to_bytes()) == state


def test_acceptor_state_golden_bytes() -> None:
    # The silo stores these bytes: changing the format needs a new STATE_FORMAT.
    state = AcceptorState(Ballot(2, b"p"), Ballot(1, b"p"), RegisterValue(1, (A,), b"x"))
    assert msgpack.unpackb(state.to_bytes()) == [
        1,
        [2, b"p"],
        [1, b"p"],
        [1, [A], b"x", b"", b"", None],
    ]


def test_acceptor_state_invariants() -> None:
    with pytest.raises(ValueError, match="above its promise"):
        AcceptorState(Ballot(1, b"p"), Ballot(2, b"p"), value())
    with pytest.raises(ValueError, match="together"):
        AcceptorState(Ballot(1, b"p"), Ballot(1, b"p"), None)
    with pytest.raises(ValueError, match="above its promise"):
        AcceptorState(None, Ballot(1, b"p"), value())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([2, None, None, None]),
        msgpack.packb([1, None, None]),
        msgpack.packb([1, [1, b"p"], [2, b"p"], [1, [A], b"x", b"", b"", None]]),
        msgpack.packb([1, [1], None, None]),
        msgpack.packb([1, None, None, [1, [], b"x", b"", b"", None]]),
        msgpack.packb([1, None, None, None]) + b"trailing",
    ],
)
def test_acceptor_state_rejects_garbage(data: bytes) -> None:
    with pytest.raises(Corrupt):
        AcceptorState.from_bytes(data)


def test_messages_round_trip() -> None:
    b = Ballot(7, b"prop")
    messages: list[Request | Reply] = [
        Prepare(b),
        Accept(b, value(), False),
        Accept(b, value(None, 3, next_replica_set=CDE), True),
        Promise(b, None, None),
        Promise(b, Ballot(6, b"x"), value()),
        Accepted(b, None),
        Accepted(b, b.next()),
        Reject(b, Ballot(9, b"z")),
        Reject(b, None, RejectReason.FORBIDDEN),
    ]
    for message in messages:
        assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93",
        msgpack.packb([9, 1]),
        msgpack.packb([1]),
        msgpack.packb([2, [1, b"p"], [], 1]),
        msgpack.packb([5, [1, b"p"], None, "bogus"]),
        msgpack.packb("x"),
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(Corrupt):
        decode_message(data)


# --- acceptor ------------------------------------------------------------------------------


ACC = Acceptor(verify=trust_all_values)
B1, B2, B3 = Ballot(1, b"p"), Ballot(2, b"p"), Ballot(3, b"p")


def test_prepare_promises_and_reports_accepted() -> None:
    state, promise = ACC.on_prepare(AcceptorState(), B2)
    assert promise == Promise(B2, None, None)
    assert state.promised == B2
    state, accepted = ACC.on_accept(state, B2, value())
    assert accepted == Accepted(B2, None)
    state, promise = ACC.on_prepare(state, B3)
    assert promise == Promise(B3, B2, value())
    assert state == AcceptorState(B3, B2, value())


def test_prepare_below_promise_is_rejected_with_the_promise() -> None:
    state, _ = ACC.on_prepare(AcceptorState(), B2)
    new, reply = ACC.on_prepare(state, B1)
    assert new is state
    assert reply == Reject(B1, B2, RejectReason.PREEMPTED)


def test_duplicate_prepare_is_answered_again() -> None:
    state, first = ACC.on_prepare(AcceptorState(), B2)
    again, second = ACC.on_prepare(state, B2)
    assert again is state
    assert first == second


def test_accept_below_promise_is_rejected() -> None:
    state, _ = ACC.on_prepare(AcceptorState(), B3)
    new, reply = ACC.on_accept(state, B2, value())
    assert new is state
    assert reply == Reject(B2, B3)


def test_accept_with_promise_next_promises_the_next_ballot() -> None:
    state, reply = ACC.on_accept(AcceptorState(), B1, value(), promise_next=True)
    assert reply == Accepted(B1, B2)
    assert state == AcceptorState(B2, B1, value())
    # A competitor between b and next(b) is refused; the duplicate accept too.
    between = Ballot(1, b"zz")
    assert B1 < between < B2
    assert ACC.on_prepare(state, between)[1] == Reject(between, B2)
    assert ACC.on_accept(state, B1, value(), promise_next=True)[1] == Reject(B1, B2)
    # Only the owner of next(b) gets through.
    assert isinstance(ACC.on_accept(state, B2, value(b"y", 2))[1], Accepted)


def test_acceptor_refuses_forged_values_whatever_the_ballot() -> None:
    acc = Acceptor(verify=verifier(SECRET))
    good = value()
    forged = sign_with(b"someone-else")(RegisterValue(1, ABC, b"x"))
    tampered = RegisterValue(1, ABC, b"evil", good.writer, good.signature)
    unsigned = RegisterValue(1, ABC, b"x")
    state = AcceptorState(B1, B1, good)
    for bad in (forged, tampered, unsigned):
        new, reply = acc.on_accept(state, B3, bad)
        assert new is state
        assert reply == Reject(B3, B1, RejectReason.FORBIDDEN)
    assert isinstance(acc.on_accept(state, B3, good)[1], Accepted)


def test_handle_dispatches() -> None:
    state, reply = ACC.handle(AcceptorState(), Prepare(B1))
    assert isinstance(reply, Promise)
    state, reply = ACC.handle(state, Accept(B1, value(), True))
    assert reply == Accepted(B1, B2)


# --- change functions ----------------------------------------------------------------------


def test_change_functions() -> None:
    v = RegisterValue(2, ABC, b"old")
    assert Write(b"n").apply(None, ABC).value == RegisterValue(1, ABC, b"n")
    assert Write(b"n").apply(v, CDE).value == RegisterValue(3, ABC, b"n")
    assert Read().apply(v, ABC).value is v
    assert CompareAndSet(2, b"n").apply(v, ABC).value == RegisterValue(3, ABC, b"n")
    lost = CompareAndSet(1, b"n").apply(v, ABC)
    assert lost.value is v
    assert lost.conflict
    assert CompareAndSet(0, b"n").apply(None, ABC).value == RegisterValue(1, ABC, b"n")
    assert CompareAndSet(1, b"n").apply(None, ABC).conflict
    assert Edit(lambda cur: (cur.payload or b"") + b"!" if cur else b"new").apply(v, ABC).value == (
        RegisterValue(3, ABC, b"old!")
    )
    assert Edit(lambda cur: b"old").apply(v, ABC).value is v  # no change, no new version
    assert Edit(lambda cur: None).apply(None, ABC).value is None
    assert Delete().apply(v, ABC).value == RegisterValue(3, ABC, None)
    tomb = RegisterValue(3, ABC, None)
    assert Delete().apply(tomb, ABC).value is tomb
    assert Delete().apply(None, ABC).value is None
    assert Write(b"again").apply(tomb, ABC).value == RegisterValue(4, ABC, b"again")


def test_replica_change_functions() -> None:
    v = RegisterValue(2, ABC, b"x")
    joint = BeginReplicaChange(CDE).apply(v, ABC).value
    assert joint == RegisterValue(2, ABC, b"x", next_replica_set=CDE)
    assert joint.config == Config((ABC, CDE))
    assert BeginReplicaChange(CDE).apply(joint, ABC) == type(
        BeginReplicaChange(CDE).apply(joint, ABC)
    )(joint)
    assert BeginReplicaChange((A, B, D)).apply(joint, ABC).conflict
    assert BeginReplicaChange((C, B, A)).apply(v, ABC).value is v
    assert BeginReplicaChange(CDE).apply(None, ABC).conflict
    done = FinishReplicaChange(CDE).apply(joint, ABC).value
    assert done == RegisterValue(2, CDE, b"x")
    assert FinishReplicaChange(CDE).apply(done, ABC).value is done  # idempotent
    assert not FinishReplicaChange(CDE).apply(done, ABC).conflict
    assert FinishReplicaChange((A, B, D)).apply(joint, ABC).conflict
    assert FinishReplicaChange(CDE).apply(v, ABC).conflict
    assert AbortReplicaChange().apply(joint, ABC).value == v
    assert AbortReplicaChange().apply(v, ABC).value is v


def test_config_quorums() -> None:
    single = Config((ABC,))
    assert single.satisfied_by({A, B})
    assert not single.satisfied_by({A, D, E})
    assert single.quorum_size() == 2
    assert single.impossible({A, B})
    assert not single.impossible({A, D})
    joint = Config((ABC, CDE))
    assert not joint.satisfied_by({A, B})
    assert joint.satisfied_by({B, C, D})
    assert joint.satisfied_by({A, B, D, E})
    assert joint.quorum_size() == 3
    assert joint.impossible({D, E})
    assert not joint.impossible({A, E})
    assert Config.of(ABC, (C, B, A)) == single
    assert Config((ABC, CDE)) == Config((CDE, ABC))
    disjoint = Config.of(ABC, (D, E, NodeId(b"F" * 20)))
    assert disjoint.quorum_size() == 4
    # Every two quorums of a joint configuration intersect in each of its sets.
    members = sorted(joint.members)
    quorums = [
        set(q)
        for size in range(1, len(members) + 1)
        for q in itertools.combinations(members, size)
        if joint.satisfied_by(q)
    ]
    for q1, q2 in itertools.product(quorums, repeat=2):
        assert q1 & q2 & set(ABC)
        assert q1 & q2 & set(CDE)


# --- proposer rounds -----------------------------------------------------------------------


def test_write_then_read() -> None:
    nodes = cluster()
    p = Proposer(b"p1")
    first = decided(run(p, Write(b"hello", sign=SIGN), nodes))
    assert first.value is not None
    assert first.value.payload == b"hello"
    assert first.value.version == 1
    assert first.value.replica_set == ABC
    assert first.previous is None
    assert not first.conflict
    read = decided(run(Proposer(b"p2"), Read(), nodes))
    assert read.value == first.value
    assert read.ballot is not None
    assert first.ballot is not None
    assert read.ballot > first.ballot
    assert {n for n in ABC if nodes[n].state.value == first.value} >= {A, B}
    assert nodes[D].state == AcceptorState()  # outside the replica set: never asked


def test_read_of_empty_register_writes_nothing() -> None:
    nodes = cluster()
    log: list[Send] = []
    out = decided(run(Proposer(b"p"), Read(), nodes, log=log))
    assert out.value is None
    assert out.ballot is None
    assert all(isinstance(s.message, Prepare) for s in log)


def test_survives_a_minority_down_and_reports_unavailable_without_quorum() -> None:
    nodes = cluster()
    assert isinstance(run(Proposer(b"p"), Write(b"x", sign=SIGN), nodes, down={C}), Decided)
    q = Proposer(b"q", pipelining=False)
    decided(run(q, Read(), nodes))
    rnd = run_round(q, Read(), nodes, down={B, C})
    assert rnd.outcome is None
    error = rnd.unavailable()
    assert isinstance(error, Unavailable)
    assert (error.needed, error.reached) == (2, 1)
    assert rnd.done


def test_cas_conflict_returns_current_and_writes_it_back() -> None:
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"a", sign=SIGN), nodes))
    log: list[Send] = []
    out = decided(run(Proposer(b"q"), CompareAndSet(5, b"b", sign=SIGN), nodes, log=log))
    assert out.conflict
    assert out.value is not None
    assert out.value.payload == b"a"
    with pytest.raises(Conflict) as excinfo:
        out.raise_for_conflict()
    assert excinfo.value.current == out.value
    # The reported value is made chosen (written back), else the answer might not be linearizable.
    assert any(isinstance(s.message, Accept) and s.message.value == out.value for s in log)
    ok = decided(run(Proposer(b"q"), CompareAndSet(1, b"b", sign=SIGN), nodes))
    assert not ok.conflict
    assert ok.raise_for_conflict() == ok.value
    assert ok.value is not None
    assert (ok.value.version, ok.value.payload) == (2, b"b")


def test_edit_and_delete() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    decided(run(p, Write(b"1", sign=SIGN), nodes))
    out = decided(
        run(
            p,
            Edit(lambda cur: b"%d" % (int(cur.payload or 0) + 1) if cur else b"0", sign=SIGN),
            nodes,
        )
    )
    assert out.value is not None
    assert out.value.payload == b"2"
    gone = decided(run(p, Delete(sign=SIGN), nodes))
    assert gone.value is not None
    assert gone.value.is_tombstone
    assert gone.value.version == 3
    again = decided(run(p, Delete(sign=SIGN), nodes))
    assert again.value == gone.value


def test_unsigned_or_forged_proposals_are_refused_by_every_acceptor() -> None:
    nodes = cluster()
    decided(run(Proposer(b"owner"), Write(b"genuine", sign=SIGN), nodes))
    before = {n: a.disk for n, a in nodes.items()}
    forgers: list[Callable[[RegisterValue], RegisterValue]] = [
        lambda v: v,  # unsigned
        sign_with(b"stolen-guess"),
        lambda v: RegisterValue(
            v.version, v.replica_set, b"evil", b"owner", SIGN(v).signature[::-1]
        ),
    ]
    for forge in forgers:
        log: list[Send] = []
        out = run(Proposer(b"mallory"), Write(b"evil", sign=forge), nodes, log=log, drain=True)
        assert isinstance(out, Refused)
        assert isinstance(out.error(), PermissionDenied)
        # Every acceptor was asked to accept, refused, and none changed its accepted value.
        assert {s.to for s in log if isinstance(s.message, Accept)} == set(ABC)
    for n, a in nodes.items():
        assert a.state.value == AcceptorState.from_bytes(before[n]).value
    assert decided(run(Proposer(b"r"), Read(), nodes)).value.payload == b"genuine"  # type: ignore[union-attr]


def test_stale_and_duplicate_replies_are_ignored() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    rnd = p.begin(Write(b"x", sign=SIGN), ABC)
    sends = rnd.start()
    replies = [(s.to, nodes[s.to].handle(s.message)) for s in sends]
    out: list[Send] = []
    for to, reply in replies:
        assert reply is not None
        out += rnd.receive(to, reply)
        out += rnd.receive(to, reply)  # duplicate
    assert rnd.receive(D, Promise(rnd.ballot, None, None)) == []  # never asked
    assert rnd.receive(A, Promise(Ballot(99, b"other"), None, None)) == []  # other ballot
    accepts = [s for s in out if isinstance(s.message, Accept)]
    assert len(accepts) == 3  # moved to phase 2 once
    for s in accepts:
        reply = nodes[s.to].handle(s.message)
        assert reply is not None
        rnd.receive(s.to, reply)
        # A late reject for the same ballot from an acceptor that already accepted changes nothing.
        rnd.receive(s.to, Reject(s.message.ballot, Ballot(50, b"z")))
    assert isinstance(rnd.outcome, Decided)
    assert rnd.receive(A, Accepted(rnd.ballot)) == []


def test_competing_proposers_one_is_preempted_then_retries_above() -> None:
    nodes = cluster()
    p, q = Proposer(b"p"), Proposer(b"q")
    rp = p.begin(Write(b"p", sign=SIGN), ABC)
    prepares = rp.start()
    # q runs a whole round in between p's phases, with a higher ballot.
    decided(run(q, Write(b"q", sign=SIGN), nodes))
    replies = [(s.to, nodes[s.to].handle(s.message)) for s in prepares]
    for to, reply in replies:
        assert reply is not None
        rp.receive(to, reply)
    assert isinstance(rp.outcome, Preempted)
    assert rp.outcome.promised is not None
    assert rp.outcome.promised.proposer == b"q"
    retry = p.begin(Write(b"p", sign=SIGN), ABC)
    assert retry.ballot > rp.outcome.promised
    out = decided(drive(retry, nodes))
    assert out.previous is not None
    assert out.previous.payload == b"q"
    assert out.value is not None
    assert out.value.version == 2


def test_proposer_never_reuses_a_ballot() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    seen: list[Ballot] = []
    for i in range(20):
        rnd = p.begin(Write(b"%d" % i, sign=SIGN), ABC)
        seen.append(rnd.ballot)
        if i % 3 == 0:
            rnd.unavailable()  # time out without sending
            continue
        drive(rnd, nodes)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


# --- one round trip (CASPaxos §2.2.1) ------------------------------------------------------


def test_second_round_skips_prepare() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    first = decided(run(p, Write(b"1", sign=SIGN), nodes))
    assert p.has_fast_path
    log: list[Send] = []
    rnd = p.begin(Write(b"2", sign=SIGN), ABC)
    assert rnd.is_fast
    out = decided(drive(rnd, nodes, log=log))
    assert all(isinstance(s.message, Accept) for s in log)
    assert first.ballot is not None
    assert out.ballot == first.ballot.next()
    assert out.value is not None
    assert (out.value.version, out.value.payload) == (2, b"2")
    # Reads also go in one round trip, and are written back.
    log = []
    read = decided(run(p, Read(), nodes, log=log))
    assert read.value == out.value
    assert len(log) >= 2
    assert all(isinstance(s.message, Accept) for s in log)


def test_fast_round_is_preempted_by_any_higher_prepare() -> None:
    nodes = cluster()
    p, q = Proposer(b"p"), Proposer(b"q")
    decided(run(p, Write(b"1", sign=SIGN), nodes))
    # q prepares above next(b) on a majority and writes.
    decided(run(q, Write(b"q", sign=SIGN), nodes))
    rnd = p.begin(Write(b"2", sign=SIGN), ABC)
    assert rnd.is_fast
    assert isinstance(drive(rnd, nodes), Preempted)
    assert not p.has_fast_path
    out = decided(run(p, Write(b"2", sign=SIGN), nodes))
    assert out.previous is not None
    assert out.previous.payload == b"q"


def test_competitor_between_b_and_next_b_cannot_steal_the_fast_slot() -> None:
    nodes = cluster()
    p = Proposer(b"m")
    first = decided(run(p, Write(b"1", sign=SIGN), nodes))
    assert first.ballot is not None
    # A proposer whose next ballot falls strictly between b and next(b).
    q = Proposer(b"z")
    q.observe(Ballot(first.ballot.counter - 1, b"z"))
    rq = q.begin(Write(b"q", sign=SIGN), ABC)
    assert first.ballot < rq.ballot < first.ballot.next()
    assert isinstance(drive(rq, nodes), Preempted)
    assert decided(run(p, Write(b"2", sign=SIGN), nodes)).previous == first.value


def test_fast_path_with_partial_promise_quorum_is_not_used() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    decided(run(p, Write(b"1", sign=SIGN), nodes, down={B, C}) or Decided(None, None, None))
    assert not p.has_fast_path  # no quorum of promises was gathered


def test_pipelining_can_be_disabled() -> None:
    nodes = cluster()
    p = Proposer(b"p", pipelining=False)
    decided(run(p, Write(b"1", sign=SIGN), nodes))
    assert not p.has_fast_path
    assert all(a.state.promised == a.state.accepted_ballot for a in nodes.values() if a.state.value)


def test_fast_path_exhaustive_interleavings_keep_one_history() -> None:
    """Two proposers, each doing write-then-fast-write; every delivery order, one history.

    The acceptors see the four rounds' messages in every interleaving of the two
    proposers' steps (a step = run one round to completion or preemption); whatever the
    order, the decided values form one chain of versions with no lost acknowledged write.
    """
    for order in set(itertools.permutations("ppqq")):
        nodes = cluster()
        props = {"p": Proposer(b"p"), "q": Proposer(b"q")}
        acked: list[RegisterValue] = []
        for who in order:
            out = run(props[who], Write(who.encode(), sign=SIGN), nodes)
            if isinstance(out, Decided):
                assert out.value is not None
                acked.append(out.value)
        versions = [v.version for v in acked]
        assert versions == sorted(versions)
        assert len(set(versions)) == len(versions)
        final = decided(run(Proposer(b"r"), Read(), nodes)).value
        assert final is not None
        assert final.version >= max(versions)


# --- replica-set changes (joint consensus) -------------------------------------------------


def test_move_to_a_new_replica_set() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    decided(run(p, Write(b"data", sign=SIGN), nodes))
    joint = decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes)).value
    assert joint is not None
    assert joint.next_replica_set == CDE
    log: list[Send] = []
    done = decided(run(Proposer(b"m2"), FinishReplicaChange(CDE), nodes, log=log)).value
    assert done is not None
    assert done.replica_set == CDE
    assert done.next_replica_set is None
    assert (done.version, done.payload) == (1, b"data")
    # Two steps: the joint value is written back (making it chosen) before the new
    # configuration is proposed, at the next ballot of the same proposer.
    accepts = [s.message for s in log if isinstance(s.message, Accept)]
    first_new = next(i for i, m in enumerate(accepts) if m.value.next_replica_set is None)
    assert all(m.value == joint and m.promise_next for m in accepts[:first_new])
    assert accepts[first_new].ballot == accepts[0].ballot.next()
    # The new set alone now decides; the old set's nodes that left are not needed.
    out = decided(run(Proposer(b"w"), Write(b"moved", sign=SIGN), nodes, hint=CDE, down={A, B}))
    assert out.value is not None
    assert out.value.replica_set == CDE


def test_stale_hint_finds_the_new_replica_set() -> None:
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"v1", sign=SIGN), nodes))
    decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes))
    decided(run(Proposer(b"m"), FinishReplicaChange(CDE), nodes))
    decided(run(Proposer(b"w"), Write(b"v2", sign=SIGN), nodes, hint=CDE))
    log: list[Send] = []
    out = decided(run(Proposer(b"stale"), Read(), nodes, hint=ABC, log=log))
    assert out.value is not None
    assert out.value.payload == b"v2"
    assert {s.to for s in log if isinstance(s.message, Prepare)} >= {D, E}


def test_after_a_move_the_old_set_alone_cannot_decide() -> None:
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"v1", sign=SIGN), nodes))
    decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes))
    decided(run(Proposer(b"m"), FinishReplicaChange(CDE), nodes))
    rnd = run_round(Proposer(b"stale"), Write(b"split-brain", sign=SIGN), nodes, down={C, D, E})
    assert rnd.outcome is None  # A, B point to C, D, E: the round must wait for them
    assert rnd.unavailable().needed == 2


def test_joint_value_needs_both_quorums() -> None:
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"v1", sign=SIGN), nodes))
    # The new set is unreachable: the move cannot even start being decided.
    assert run(Proposer(b"m"), BeginReplicaChange(CDE), nodes, down={D, E}) is None
    # Once joint, the old majority alone cannot write either.
    decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes))
    assert run(Proposer(b"w"), Write(b"x", sign=SIGN), nodes, down={C, D}) is None
    assert (
        decided(run(Proposer(b"w"), Write(b"x", sign=SIGN), nodes, down={A, D})).value is not None
    )


def test_finish_writes_nothing_new_until_joint_value_is_chosen() -> None:
    """The unsafe half-move: a new-configuration value must never precede a chosen joint one."""
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"v1", sign=SIGN), nodes))
    decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes))
    # The old side is busy with a higher ballot: the write-back step is refused there.
    for n in (A, B):
        nodes[n].handle(Prepare(Ballot(1000, b"other")))
    log: list[Send] = []
    out = run(Proposer(b"f"), FinishReplicaChange(CDE), nodes, log=log, retries=0, drain=True)
    assert isinstance(out, Preempted)
    assert all(
        s.message.value.next_replica_set is not None for s in log if isinstance(s.message, Accept)
    )


def test_abort_a_move() -> None:
    nodes = cluster()
    decided(run(Proposer(b"p"), Write(b"v1", sign=SIGN), nodes))
    decided(run(Proposer(b"m"), BeginReplicaChange(CDE), nodes))
    back = decided(run(Proposer(b"m"), AbortReplicaChange(), nodes)).value
    assert back is not None
    assert back.replica_set == ABC
    assert not back.is_moving
    out = decided(run(Proposer(b"w"), Write(b"x", sign=SIGN), nodes, down={D, E}))
    assert out.value is not None
    assert out.value.payload == b"x"


def test_fast_path_across_a_move() -> None:
    nodes = cluster()
    p = Proposer(b"p")
    decided(run(p, Write(b"v1", sign=SIGN), nodes))
    joint = decided(run(p, BeginReplicaChange(CDE), nodes)).value
    assert joint is not None
    assert p.has_fast_path
    log: list[Send] = []
    done = decided(run(p, FinishReplicaChange(CDE), nodes, log=log, drain=True)).value
    assert done is not None
    assert done.replica_set == CDE
    # The cached joint value is known chosen: a single accept step, to both sets.
    assert all(isinstance(s.message, Accept) for s in log)
    assert {s.to for s in log} == {A, B, C, D, E}


# --- tombstones and garbage collection -----------------------------------------------------


def test_collection_order_rule() -> None:
    tomb = RegisterValue(3, ABC, None)
    everywhere = {A: B2, B: B2, C: B2, D: None, E: None}
    assert collection_order(tomb, B2, everywhere, last=A) == (D, E, B, C, A)
    # Holders of older values forget first, then the empty ones raise their floor.
    assert collection_order(tomb, B2, {A: B2, B: B2, C: None, D: B1}, last=B) == (D, C, A, B)
    assert collection_order(tomb, B2, {A: B2, B: B1, C: B1}, last=A) is None  # not decided
    assert collection_order(tomb, B2, {A: B2, B: B2, C: B3}, last=A) is None  # lives again
    assert collection_order(RegisterValue(3, ABC, b"x"), B2, everywhere) is None
    moving = RegisterValue(3, ABC, None, next_replica_set=CDE)
    assert collection_order(moving, B2, everywhere) is None


def test_collect_keeps_the_promise_floor() -> None:
    tomb = value(None, 2)
    state = AcceptorState(B3, B2, tomb)
    assert Acceptor.collect(state, B2) == AcceptorState(promised=B3)
    assert Acceptor.collect(state, B1) is None  # it holds something newer
    live = AcceptorState(B3, B2, value())
    assert Acceptor.collect(live, B2) is None  # never drops live data
    # A straggler's older value is superseded by the tombstone: it goes, the floor rises.
    assert Acceptor.collect(AcceptorState(B1, B1, value()), B2) == AcceptorState(promised=B2)
    assert Acceptor.collect(AcceptorState(), B2) == AcceptorState(promised=B2)


def collected(state: AcceptorState, ballot: Ballot) -> bytes:
    """The durable bytes an acceptor keeps after collecting at ``ballot``."""
    left = Acceptor.collect(state, ballot)
    assert left is not None
    return left.to_bytes()


def test_gc_following_the_rule_never_resurrects() -> None:
    nodes = cluster()
    decided(run(Proposer(b"w"), Write(b"secret", sign=SIGN), nodes))
    # A slow proposer read the live value and is about to write it back.
    slow = Proposer(b"a-slow")
    decided(run(slow, Read(), nodes))  # learn the current ballots
    slow.forget()
    rnd = slow.begin(Read(), ABC)
    pending: list[Send] = []
    for s in rnd.start():
        reply = nodes[s.to].handle(s.message)
        assert reply is not None
        pending += rnd.receive(s.to, reply)
    stale_accepts = [s for s in pending if isinstance(s.message, Accept)]
    assert stale_accepts
    deleter = run_round(Proposer(b"z-deleter"), Delete(sign=SIGN), nodes, drain=True)
    gone = decided(deleter.outcome)
    assert gone.value is not None
    assert gone.ballot is not None
    assert len(gone.accepted_by) == 2  # the decision needed only a majority...
    snapshot = {n: nodes[n].state.accepted_ballot for n in ABC}
    assert collection_order(gone.value, gone.ballot, snapshot) is not None
    for n in ABC:
        nodes[n].disk = collected(nodes[n].state, gone.ballot)
        assert nodes[n].state.value is None
    # The slow write-back arrives after collection: the kept promise refuses it.
    for s in stale_accepts:
        assert isinstance(nodes[s.to].handle(s.message), Reject)
    assert decided(run(Proposer(b"r"), Read(), nodes)).value is None


def test_gc_breaking_the_rule_resurrects_deleted_data() -> None:
    """Why stragglers go first: collecting while a replica kept the old value brings it back."""
    nodes = cluster()
    decided(run(Proposer(b"w"), Write(b"secret", sign=SIGN), nodes, drain=True))
    assert nodes[C].state.value is not None
    gone = decided(run(Proposer(b"d"), Delete(sign=SIGN), nodes, down={C}))
    assert gone.value is not None
    assert gone.ballot is not None
    snapshot = {n: nodes[n].state.accepted_ballot for n in ABC}
    assert collection_order(gone.value, gone.ballot, snapshot) == (C, A, B)
    for n in (A, B):  # collect, but not the straggler C first
        nodes[n].disk = collected(nodes[n].state, gone.ballot)
    out = decided(run(Proposer(b"r"), Read(), nodes, down={A}))
    assert out.value is not None
    assert out.value.payload == b"secret"


def test_half_written_move_cannot_fork_the_register() -> None:
    """The interleaving the two-step move exists for.

    A joint value J (old ABC + new CDE) reached only C, D, E: it is not chosen. A finisher
    F reads J and would write the new configuration (CDE only). Meanwhile a proposer S
    with the old hint writes w on A, B, which is a legitimate decision of ABC. A reader
    R holding the new hint CDE must still see w. Were F to write the CDE-only value to
    D, E before J is chosen, R would find it with a CDE quorum and lose w.
    """
    nodes = cluster()
    decided(run(Proposer(b"w"), Write(b"v1", sign=SIGN), nodes, drain=True))

    def step(rnd: Round, sends: list[Send], to: set[NodeId]) -> list[Send]:
        out: list[Send] = []
        for s in sends:
            if s.to in to:
                reply = nodes[s.to].handle(s.message)
                assert reply is not None
                out += rnd.receive(s.to, reply)
        return out

    m = Proposer(b"m")
    m.observe(Ballot(10, b""))
    rm = m.begin(BeginReplicaChange(CDE), ABC)
    sends = step(rm, rm.start(), {A, B, C})
    while sends:  # everything but J is delivered; J lands on C, D, E only
        joint = [x for x in sends if isinstance(x.message, Accept) and x.message.value.is_moving]
        rest = [x for x in sends if x not in joint]
        sends = step(rm, rest, {A, B, C}) + step(rm, joint, {C, D, E})
    assert rm.outcome is None
    assert [nodes[n].state.value.is_moving for n in NODES] == [False, False, True, True, True]  # type: ignore[union-attr]

    f = Proposer(b"f")
    f.observe(Ballot(20, b""))
    rf = f.begin(FinishReplicaChange(CDE), ABC)
    prepares = rf.start()
    extra = step(rf, [x for x in prepares if x.to == C], {C})  # J at C: ask D, E too
    assert {x.to for x in extra} == {D, E}
    assert step(rf, extra, {D, E}) == []  # a CDE majority, but no ABC majority yet
    f_accepts = step(rf, [x for x in prepares if x.to == A], {A})
    assert {x.to for x in f_accepts} == {A, B, C, D, E}
    step(rf, f_accepts, {C, D, E})  # F's accepts reach only C, D, E

    s_ = Proposer(b"s")
    s_.observe(Ballot(30, b""))
    rs = s_.begin(Write(b"w", sign=SIGN), ABC)
    step(rs, step(rs, rs.start(), {A, B}), {A, B})
    acked = decided(rs.outcome)
    assert acked.value is not None
    assert acked.value.payload == b"w"

    # F's remaining accepts to A, B arrive late and are refused; F cannot finish.
    step(rf, [x for x in f_accepts if x.to in (A, B)], {A, B})
    assert not isinstance(rf.outcome, Decided)

    r = Proposer(b"r")
    r.observe(Ballot(40, b""))
    seen = decided(drive(r.begin(Read(), CDE), nodes))
    assert seen.value is not None
    assert seen.value.payload == b"w"


def test_gc_that_forgets_the_straggler_first_never_resurrects() -> None:
    """The collector's order: a holder of an older value forgets it before the tombstone goes."""
    nodes = cluster()
    decided(run(Proposer(b"w"), Write(b"secret", sign=SIGN), nodes, drain=True))
    gone = decided(run(Proposer(b"d"), Delete(sign=SIGN), nodes, down={C}))
    assert gone.ballot is not None
    for n in (C, A, B):
        nodes[n].disk = collected(nodes[n].state, gone.ballot)
    for down in ABC:
        assert decided(run(Proposer(b"r" + down), Read(), nodes, down={down})).value is None
