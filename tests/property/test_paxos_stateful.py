"""CASPaxos on a lossy, reordering, duplicating network, driven by hypothesis.

Five acceptors, a block created on three of them, three clients with their own
proposers (one-round-trip optimisation on or off). Rules start operations (write, CAS,
read, quick read, delete, forged writes, replica-set moves), deliver / drop / duplicate
messages in any order, crash-restart acceptors (durable state kept) and clients (new
incarnation), and time clients out. Checked:

* never two different values accepted at one ballot (hence never two decided);
* chosen values never regress (ordered by ballot, versions only grow, one payload each);
* no forged value is ever accepted;
* at teardown, every client operation plus a final read by a proposer holding the
  *creation* replica set (a stale hint after moves) forms a linearizable history.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dht.ids import NodeId
from storage.linearizability import VersionedRegisterModel, check_history
from tests.paxos_sim import Cluster, random_schedule

NODES = tuple(NodeId(bytes([ord("A") + i]) * 20) for i in range(5))
CREATION_SET = NODES[:3]
TARGETS = [tuple(c) for c in itertools.combinations(NODES, 3)]
CLIENTS = 3
KINDS = [
    "write",
    "write",
    "cas",
    "cas",
    "read",
    "quick_read",
    "delete",
    "forged",
    "begin_move",
    "finish_move",
    "abort_move",
]


class CASPaxosMachine(RuleBasedStateMachine):
    """The model-free state machine: the invariants are the specification."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster(NODES, CREATION_SET, CLIENTS)

    @initialize(pipelining=st.booleans())
    def setup(self, pipelining: bool) -> None:
        """Pick whether proposers piggyback the next prepare on accepts."""
        self.cluster = Cluster(NODES, CREATION_SET, CLIENTS, pipelining=pipelining)

    @rule(
        client=st.integers(0, CLIENTS - 1),
        kind=st.sampled_from(KINDS),
        move_to=st.sampled_from(TARGETS),
    )
    def start(self, client: int, kind: str, move_to: tuple[NodeId, ...]) -> None:
        """Start an operation on an idle client."""
        self.cluster.begin(client, kind, move_to)

    @precondition(lambda self: bool(self.cluster.network))
    @rule(picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=16))
    def deliver(self, picks: list[int]) -> None:
        """Deliver one or a burst of in-flight messages, in any order."""
        for i in picks:
            if not self.cluster.network:
                return
            self.cluster.deliver(i % len(self.cluster.network))

    @precondition(lambda self: bool(self.cluster.network))
    @rule(
        action=st.sampled_from(["deliver", "deliver", "drop", "duplicate"]),
        i=st.integers(0, 10_000),
    )
    def network(self, action: str, i: int) -> None:
        """Deliver (mostly), lose or duplicate one message."""
        i %= len(self.cluster.network)
        if action == "duplicate":
            self.cluster.duplicate(i)
        elif action == "drop":
            self.cluster.drop(i)
        else:
            self.cluster.deliver(i)

    @rule(
        fault=st.sampled_from(["acceptor", "client", "timeout", "stale_hint"]),
        node=st.sampled_from(NODES),
        client=st.integers(0, CLIENTS - 1),
        pick=st.integers(0, 100),
    )
    def node_fault(self, fault: str, node: NodeId, client: int, pick: int) -> None:
        """Crash-restart an acceptor (durable state kept, inbox lost) or a client (new
        proposer incarnation), time a client out, or give it an old replica-set hint."""
        if fault == "acceptor":
            self.cluster.crash_restart(node)
        elif fault == "client":
            self.cluster.restart_client(client)
        elif fault == "timeout":
            self.cluster.timeout(client)
        else:
            self.cluster.stale_hint(client, pick)

    @invariant()
    def safety(self) -> None:
        """One value per ballot, chosen values never regress, nothing forged accepted."""
        assert not self.cluster.violations, self.cluster.violations
        assert not self.cluster.regressions()
        for value, _ in self.cluster.accept_log.values():
            assert value.writer == b"owner"
            assert b"not-the-owner" not in (value.payload or b"")

    def teardown(self) -> None:
        """Read once more with the creation set as hint, then check linearizability."""
        check_final(self.cluster)


def check_final(cluster: Cluster) -> None:
    """End a run: a final read from the creation hint, then every check."""
    for client in range(len(cluster.clients)):
        cluster.timeout(client)  # still running: outcome unknown, may yet take effect
    final = cluster.final_read(CREATION_SET)
    assert not cluster.violations, cluster.violations
    assert not cluster.regressions(), cluster.regressions()
    # The final read returns the latest chosen value (a later ballot than any other).
    if cluster.chosen:
        latest = max(cluster.chosen.items())[1]
        assert final.value is not None
        assert (final.value.version, final.value.payload) == (latest.version, latest.payload)
    result = check_history(cluster.history, VersionedRegisterModel(), max_steps=2_000_000)
    assert result.ok is True, result.explanation


CASPaxosMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCASPaxos = CASPaxosMachine.TestCase


@pytest.mark.parametrize("block", range(4))
def test_seeded_random_schedules(block: int) -> None:
    """A cheap complement to hypothesis: many long seeded random schedules.

    Hypothesis explores (and shrinks) well, but favours short simple runs; long runs with
    many overlapping operations and moves are where subtle bugs live. Every seed is
    reproducible: ``random_schedule(Cluster(...), random.Random(seed), ...)``.
    """
    for seed in range(block * 150, (block + 1) * 150):
        rng = random.Random(seed)
        cluster = Cluster(NODES, CREATION_SET, CLIENTS, pipelining=seed % 2 == 0)
        random_schedule(cluster, rng, 150, [*KINDS, "begin_move", "finish_move"], TARGETS)
        try:
            check_final(cluster)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
