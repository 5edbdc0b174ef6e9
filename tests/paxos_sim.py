"""A deterministic simulated network for CASPaxos: lossy, reordering, duplicating.

The test (or a hypothesis state machine) decides which in-flight message is delivered,
dropped or duplicated next, when acceptors crash and restart (their durable state is kept,
their inbox is lost) and when clients time out or restart. The cluster records every
client operation for the linearizability checker and checks the safety invariants as it
goes (:attr:`Cluster.violations`).

With ``views`` each client has its own member view: it starts *cold* (it knows no
configuration), so its rounds probe (``Proposer.begin(..., probe=...)``) and a register it
creates goes to its own view's set; once a round is decided it uses the decided
configuration, until it restarts or forgets it. Reads may be quick reads
(:class:`storage.paxos.QuickRead`, falling back to a round), as the real client's.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from dht.ids import NodeId
from storage.linearizability import Operation
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
    Decided,
    Delete,
    FinishReplicaChange,
    Inspect,
    Message,
    Prepare,
    Promise,
    Proposer,
    QuickRead,
    Read,
    RegisterValue,
    Reject,
    Reply,
    Report,
    Request,
    Round,
    Send,
    Write,
)

KEY = "block"


def sign_with(secret: bytes) -> Callable[[RegisterValue], RegisterValue]:
    """Return a signer that 'signs' with a keyed BLAKE2b MAC (a stand-in for Ed25519)."""

    def sign(value: RegisterValue) -> RegisterValue:
        value = replace(value, writer=b"owner")
        mac = hashlib.blake2b(value.signed_bytes(), key=secret, digest_size=16).digest()
        return replace(value, signature=mac)

    return sign


def verifier(secret: bytes) -> Callable[[RegisterValue], bool]:
    """Return the acceptors' hook matching :func:`sign_with` for ``secret``."""
    sign = sign_with(secret)

    def verify(value: RegisterValue) -> bool:
        return value.signature == sign(value).signature

    return verify


@dataclass(frozen=True)
class Envelope:
    """A message in flight."""

    src: NodeId
    dst: NodeId
    message: Message


class SimAcceptor:
    """An acceptor node whose 'disk' is the serialised :class:`AcceptorState`."""

    def __init__(self, node: NodeId, verify: Callable[[RegisterValue], bool]) -> None:
        self.node = node
        self.acceptor = Acceptor(verify=verify)
        self.disk = AcceptorState().to_bytes()
        self.up = True

    @property
    def state(self) -> AcceptorState:
        """The durable state, read back from 'disk'."""
        return AcceptorState.from_bytes(self.disk)

    def handle(self, request: Request) -> Reply | None:
        """Process a request; persist before replying; ``None`` if the node is down."""
        if not self.up:
            return None
        state = self.state
        new, reply = self.acceptor.handle(state, request)
        if new != state:
            self.disk = new.to_bytes()
        return reply

    def inspect(self) -> Report | None:
        """Report the durable state (a quick read); ``None`` if the node is down."""
        return Acceptor.on_inspect(self.state) if self.up else None


@dataclass
class _Pending:
    kind: str
    input: object
    invoke: float


class SimClient:
    """A client with its own proposer, one operation at a time."""

    def __init__(
        self,
        index: int,
        hint: tuple[NodeId, ...],
        *,
        pipelining: bool,
        view: tuple[NodeId, ...] | None = None,
    ) -> None:
        self.index = index
        self.address = NodeId(b"client-%d" % index)
        self.incarnation = 0
        self.pipelining = pipelining
        self.proposer = self._new_proposer()
        self.hint = hint
        self.round: Round | None = None
        self.quick: QuickRead | None = None
        self.pending: _Pending | None = None
        #: The set this client's view would create the register on; None: no views.
        self.view = view
        #: Whether it knows no configuration (its rounds probe).
        self.cold = view is not None
        self.last_version = 0
        self.moving_to: tuple[NodeId, ...] | None = None
        self.writes = 0

    def _new_proposer(self) -> Proposer:
        return Proposer(b"p%d.%d" % (self.index, self.incarnation), pipelining=self.pipelining)

    def restart(self) -> None:
        """Lose all memory (new incarnation: fresh proposer id, no cache)."""
        self.incarnation += 1
        self.proposer = self._new_proposer()
        self.round = None
        self.quick = None
        self.pending = None
        self.cold = self.view is not None

    @property
    def busy(self) -> bool:
        """Whether an operation is in progress."""
        return self.round is not None or self.quick is not None


class Cluster:
    """Acceptors, clients and the network between them.

    Args:
        acceptors: every acceptor node (some may start outside the replica set).
        replica_set: the block's creation replica set.
        clients: how many proposing clients.
        secret: the writers' signing secret (acceptors verify with it).
        pipelining: whether proposers use the one-round-trip optimisation.
        views: per client, the set its member view would create the register on (clients
            then start cold and probe ``acceptors``; see the module docstring).
    """

    def __init__(
        self,
        acceptors: Sequence[NodeId],
        replica_set: Sequence[NodeId],
        clients: int,
        *,
        secret: bytes = b"owner-secret",
        pipelining: bool = True,
        views: Sequence[tuple[NodeId, ...]] | None = None,
    ) -> None:
        verify = verifier(secret)
        self.sign = sign_with(secret)
        self.nodes = {n: SimAcceptor(n, verify) for n in acceptors}
        self.replica_set = tuple(replica_set)
        self.probe = tuple(acceptors) if views is not None else ()
        self.clients = [
            SimClient(
                i,
                self.replica_set,
                pipelining=pipelining,
                view=None if views is None else tuple(views[i % len(views)]),
            )
            for i in range(clients)
        ]
        self.by_address = {c.address: c for c in self.clients}
        self.network: list[Envelope] = []
        self.clock = 0.0
        self.history: list[Operation] = []
        self.violations: list[str] = []
        self.accept_log: dict[Ballot, tuple[RegisterValue, set[NodeId]]] = {}
        self.chosen: dict[Ballot, RegisterValue] = {}
        self.decided: dict[Ballot, RegisterValue] = {}
        self.delivered = 0
        self.quick_reads = 0
        self.last_move_target: tuple[NodeId, ...] | None = None

    # -- clients ----------------------------------------------------------------------

    def tick(self) -> float:
        """Advance the logical clock."""
        self.clock += 1.0
        return self.clock

    def begin(self, index: int, kind: str, target: tuple[NodeId, ...] = ()) -> bool:
        """Start an operation on client ``index``; return False if it is busy.

        Kinds: write, cas, read, quick_read (a read trying :class:`QuickRead` first when the
        client knows a configuration), delete, forged (a write signed with the wrong key),
        begin_move / finish_move / abort_move (replica-set changes, to ``target``).
        """
        client = self.clients[index]
        if client.busy:
            return False
        client.writes += 1
        payload = b"c%d.%d.%d" % (index, client.incarnation, client.writes)
        change: Change
        pending_input: object = None
        op_kind = kind
        if kind == "write":
            change, pending_input = Write(payload, sign=self.sign), payload
        elif kind == "forged":
            change, op_kind = Write(payload, sign=sign_with(b"not-the-owner")), "forged"
        elif kind == "cas":
            pending_input = (client.last_version, payload)
            change = CompareAndSet(client.last_version, payload, sign=self.sign)
        elif kind == "delete":
            change = Delete(sign=self.sign)
        elif kind in ("read", "quick_read"):
            change, op_kind = Read(), "read"
            if kind == "quick_read" and not client.cold:
                client.pending = _Pending(op_kind, None, self.tick())
                client.quick = QuickRead(client.hint)
                self._post_inspect(client, client.quick.start())
                return True
        elif kind == "begin_move":
            change, op_kind = BeginReplicaChange(target), "move"
        elif kind == "finish_move":
            # The client's own knowledge, else what the operator last saw start.
            to = client.moving_to or self.last_move_target or target
            change, op_kind = FinishReplicaChange(to), "move"
        elif kind == "abort_move":
            change, op_kind = AbortReplicaChange(), "move"
        else:
            raise ValueError(kind)
        client.pending = _Pending(op_kind, pending_input, self.tick())
        self._begin_round(client, change)
        return True

    def _begin_round(self, client: SimClient, change: Change) -> None:
        if client.cold:
            assert client.view is not None
            client.round = client.proposer.begin(change, client.view, probe=self.probe)
        else:
            client.round = client.proposer.begin(change, client.hint)
        self._post(client.address, client.round.start())

    def _post_inspect(self, client: SimClient, nodes: list[NodeId]) -> None:
        self.network.extend(Envelope(client.address, n, Inspect()) for n in nodes)

    def known_replica_sets(self) -> list[tuple[NodeId, ...]]:
        """Every replica set named by a chosen value (legitimate, if stale, hints).

        With views there is no one creation set: only chosen values' sets count.
        """
        sets = {self.replica_set} if not self.probe else set()
        for value in self.chosen.values():
            sets.add(value.replica_set)
            if value.next_replica_set is not None:
                sets.add(value.next_replica_set)
        return sorted(sets)

    def stale_hint(self, index: int, pick: int) -> None:
        """Make client ``index`` believe in some replica set the block once had."""
        sets = self.known_replica_sets()
        if not sets:
            return
        client = self.clients[index]
        client.hint = sets[pick % len(sets)]
        client.cold = False

    def forget(self, index: int) -> None:
        """Client ``index`` forgets the configuration it knew (its next rounds probe)."""
        client = self.clients[index]
        if client.view is not None:
            client.cold = True

    def timeout(self, index: int) -> None:
        """Client ``index`` gives up on its operation (unknown outcome)."""
        client = self.clients[index]
        if client.round is not None:
            client.round.unavailable()
            self._finish_unknown(client)
        elif client.quick is not None:
            self._finish_unknown(client)

    def restart_client(self, index: int) -> None:
        """Crash and restart client ``index`` (its operation's outcome becomes unknown)."""
        client = self.clients[index]
        if client.busy:
            self._finish_unknown(client)
        client.restart()

    def _finish_unknown(self, client: SimClient) -> None:
        pending = client.pending
        if pending is not None and pending.kind in ("write", "cas", "delete"):
            self.history.append(
                Operation(client.index, KEY, pending.kind, pending.input, None, pending.invoke)
            )
        client.round = None
        client.quick = None
        client.pending = None
        client.proposer.forget()

    def _on_outcome(self, client: SimClient) -> None:
        rnd, pending = client.round, client.pending
        assert rnd is not None
        assert rnd.outcome is not None
        assert pending is not None
        outcome = rnd.outcome
        if not isinstance(outcome, Decided):
            # Preempted/refused: the value may have been accepted somewhere and be adopted
            # later, so the outcome is unknown.
            if pending.kind == "forged":
                client.round = client.pending = None
            else:
                self._finish_unknown(client)
            return
        now = self.tick()
        value = outcome.value
        version = 0 if value is None else value.version
        if value is not None:
            client.hint = value.replica_set
            client.cold = False
            client.moving_to = value.next_replica_set
            if value.next_replica_set is not None:
                self.last_move_target = value.next_replica_set
        client.last_version = version
        if outcome.ballot is not None and value is not None:
            earlier = self.decided.setdefault(outcome.ballot, value)
            if earlier != value:
                self.violations.append(f"two values decided at {outcome.ballot}")
        if pending.kind == "forged":
            self.violations.append(f"a forged write was decided: {value}")
        elif pending.kind == "write":
            self.history.append(
                Operation(client.index, KEY, "write", pending.input, version, pending.invoke, now)
            )
        elif pending.kind == "cas":
            self.history.append(
                Operation(
                    client.index,
                    KEY,
                    "cas",
                    pending.input,
                    not outcome.conflict,
                    pending.invoke,
                    now,
                )
            )
        elif pending.kind == "delete":
            self.history.append(
                Operation(client.index, KEY, "delete", None, None, pending.invoke, now)
            )
        else:  # read, and replica-set changes (identity on the data)
            self._record_read(client, pending, value)
        client.round = None
        client.pending = None

    def _record_read(
        self, client: SimClient, pending: _Pending, value: RegisterValue | None
    ) -> None:
        observed = (0, None) if value is None else (value.version, value.payload)
        self.history.append(
            Operation(client.index, KEY, "read", None, observed, pending.invoke, self.tick())
        )

    def _on_report(self, client: SimClient, src: NodeId, report: Report) -> None:
        quick = client.quick
        assert quick is not None
        self._post_inspect(client, quick.receive(src, report))
        if quick.outcome is not None:
            pending = client.pending
            assert pending is not None
            value = quick.outcome.value
            self.quick_reads += 1
            if value is not None:
                client.hint = value.replica_set
                client.moving_to = value.next_replica_set
            self._record_read(client, pending, value)
            client.quick = client.pending = None
        elif quick.settled:
            client.quick = None  # inconclusive: a full round, as the real client does
            self._begin_round(client, Read())

    # -- network ----------------------------------------------------------------------

    def _post(self, src: NodeId, sends: list[Send]) -> None:
        self.network.extend(Envelope(src, s.to, s.message) for s in sends)

    def deliver(self, i: int) -> None:
        """Deliver (and remove) the ``i``-th in-flight message."""
        env = self.network.pop(i)
        self.delivered += 1
        message = env.message
        if env.dst in self.nodes:
            self._to_acceptor(env)
            return
        client = self.by_address.get(env.dst)
        if client is None:
            return
        if isinstance(message, Report):
            if client.quick is not None:
                self._on_report(client, env.src, message)
            return
        if client.round is None:
            return
        assert isinstance(message, Promise | Accepted | Reject)
        rnd = client.round
        sends = rnd.receive(env.src, message)
        self._post(client.address, sends)
        if rnd.outcome is not None:
            self._on_outcome(client)

    def _to_acceptor(self, env: Envelope) -> None:
        request = env.message
        if isinstance(request, Inspect):
            report = self.nodes[env.dst].inspect()
            if report is not None:
                self.network.append(Envelope(env.dst, env.src, report))
            return
        assert isinstance(request, Prepare | Accept)
        reply = self.nodes[env.dst].handle(request)
        if reply is None:
            return
        if isinstance(reply, Accepted):
            assert isinstance(request, Accept)
            self._record_accept(env.dst, request)
        self.network.append(Envelope(env.dst, env.src, reply))

    def drop(self, i: int) -> None:
        """Lose the ``i``-th in-flight message."""
        self.network.pop(i)

    def duplicate(self, i: int) -> None:
        """Send the ``i``-th in-flight message twice (the copy goes last)."""
        self.network.append(self.network[i])

    def crash_restart(self, node: NodeId) -> None:
        """Crash and restart an acceptor: durable state kept, inbox lost."""
        self.network = [e for e in self.network if e.dst != node]
        acceptor = self.nodes[node]
        acceptor.disk = bytes(acceptor.disk)  # what survives is exactly the bytes on disk

    def deliver_all(self, limit: int = 10_000) -> None:
        """Deliver in FIFO order until the network is quiet (or ``limit`` messages)."""
        for _ in range(limit):
            if not self.network:
                return
            self.deliver(0)

    def _record_accept(self, node: NodeId, request: Accept) -> None:
        value, nodes = self.accept_log.setdefault(request.ballot, (request.value, set()))
        if value != request.value:
            self.violations.append(
                f"two values accepted at ballot {request.ballot}: {value} / {request.value}"
            )
            return
        nodes.add(node)
        if request.ballot not in self.chosen and value.config.satisfied_by(nodes):
            self.chosen[request.ballot] = value

    # -- checks -----------------------------------------------------------------------

    def regressions(self) -> list[str]:
        """Return violations of 'chosen values never regress' (ordered by ballot)."""
        problems = []
        chain = sorted(self.chosen.items())
        for (b1, v1), (b2, v2) in itertools.pairwise(chain):
            if v2.version < v1.version or (v2.version == v1.version and v2.payload != v1.payload):
                problems.append(f"chosen value regressed: {b1}:{v1} then {b2}:{v2}")
        return problems

    def final_read(self, hint: tuple[NodeId, ...], attempts: int = 20) -> Decided:
        """Run a read on a quiet, reliable network from a fresh proposer using ``hint``.

        With views the reader is cold: it probes every acceptor.
        """
        proposer = Proposer(b"final-reader")
        address = NodeId(b"final-reader")
        for _ in range(attempts):
            rnd = proposer.begin(Read(), hint, probe=self.probe)
            invoke = self.tick()
            inbox = [Envelope(address, s.to, s.message) for s in rnd.start()]
            self.network.extend(inbox)
            while self.network and rnd.outcome is None:
                env = self.network.pop(0)
                if env.dst in self.nodes:
                    self._to_acceptor(env)
                elif env.dst == address:
                    assert isinstance(env.message, Promise | Accepted | Reject)
                    sends = rnd.receive(env.src, env.message)
                    self.network.extend(Envelope(address, s.to, s.message) for s in sends)
            if isinstance(rnd.outcome, Decided):
                value = rnd.outcome.value
                self.history.append(
                    Operation(
                        "final",
                        KEY,
                        "read",
                        None,
                        (0, None) if value is None else (value.version, value.payload),
                        invoke,
                        self.tick(),
                    )
                )
                return rnd.outcome
        raise AssertionError("the final read never completed on a reliable network")


def random_schedule(
    cluster: Cluster,
    rng: random.Random,
    steps: int,
    kinds: Sequence[str],
    targets: Sequence[tuple[NodeId, ...]],
) -> None:
    """Drive ``cluster`` through ``steps`` random actions (a seeded, cheap fuzzer).

    Weighted toward starting operations and delivering bursts of messages, with message
    loss, duplication, acceptor and client crashes, timeouts and stale hints mixed in.
    """
    clients = len(cluster.clients)
    for _ in range(steps):
        x = rng.random()
        if x < 0.3:
            cluster.begin(rng.randrange(clients), rng.choice(kinds), rng.choice(targets))
        elif x < 0.8:
            for _ in range(rng.randrange(1, 8)):
                if cluster.network:
                    cluster.deliver(rng.randrange(len(cluster.network)))
        elif x < 0.85 and cluster.network:
            cluster.drop(rng.randrange(len(cluster.network)))
        elif x < 0.88 and cluster.network:
            cluster.duplicate(rng.randrange(len(cluster.network)))
        elif x < 0.92:
            cluster.crash_restart(rng.choice(sorted(cluster.nodes)))
        elif x < 0.95:
            cluster.timeout(rng.randrange(clients))
        elif x < 0.96:
            cluster.stale_hint(rng.randrange(clients), rng.randrange(100))
        elif x < 0.97:
            cluster.forget(rng.randrange(clients))
        else:
            cluster.restart_client(rng.randrange(clients))
        if cluster.violations:
            return
