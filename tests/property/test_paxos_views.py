"""CASPaxos with clients whose member views differ: probing rounds and quick reads.

The set-up of ``test_paxos_stateful.py`` (five acceptors, three clients, a lossy,
reordering, duplicating network, crashes, timeouts, replica-set moves), except that no
client is told where the register lives: each starts *cold* with its own view, so its
first rounds probe every acceptor and a register it creates goes to its own view's three
nearest. Clients forget what they learnt (restarts, evicted caches) and may be handed any
replica set a chosen value named. Reads are full rounds or quick reads. Checked as there:
one value per ballot, chosen values never regress, nothing forged accepted, and the whole
history (with a final probing read) is linearizable.
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
A, B, C, D, E = NODES
#: What each client's view would create the register on: pairwise overlapping by one node.
VIEWS = [(A, B, C), (C, D, E), (A, D, E)]
TARGETS = [tuple(c) for c in itertools.combinations(NODES, 3)]
CLIENTS = 3
KINDS = [
    "write",
    "write",
    "cas",
    "cas",
    "read",
    "quick_read",
    "quick_read",
    "delete",
    "forged",
    "begin_move",
    "finish_move",
    "abort_move",
]


def new_cluster(pipelining: bool) -> Cluster:
    """Five acceptors, three cold clients with the :data:`VIEWS`."""
    return Cluster(NODES, VIEWS[0], CLIENTS, pipelining=pipelining, views=VIEWS)


class DivergentViewsMachine(RuleBasedStateMachine):
    """The invariants are the specification, as in ``test_paxos_stateful.py``."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = new_cluster(True)

    @initialize(pipelining=st.booleans())
    def setup(self, pipelining: bool) -> None:
        """Pick whether proposers piggyback the next prepare on accepts."""
        self.cluster = new_cluster(pipelining)

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
        fault=st.sampled_from(["acceptor", "client", "timeout", "stale_hint", "forget"]),
        node=st.sampled_from(NODES),
        client=st.integers(0, CLIENTS - 1),
        pick=st.integers(0, 100),
    )
    def node_fault(self, fault: str, node: NodeId, client: int, pick: int) -> None:
        """Crash-restart an acceptor or a client, time a client out, hand it a replica set
        a chosen value named, or make it forget what it knew (its next rounds probe)."""
        if fault == "acceptor":
            self.cluster.crash_restart(node)
        elif fault == "client":
            self.cluster.restart_client(client)
        elif fault == "timeout":
            self.cluster.timeout(client)
        elif fault == "stale_hint":
            self.cluster.stale_hint(client, pick)
        else:
            self.cluster.forget(client)

    @invariant()
    def safety(self) -> None:
        """One value per ballot, chosen values never regress, nothing forged accepted."""
        assert not self.cluster.violations, self.cluster.violations
        assert not self.cluster.regressions()
        for value, _ in self.cluster.accept_log.values():
            assert value.writer == b"owner"

    def teardown(self) -> None:
        """Read once more by probing, then check linearizability."""
        check_final(self.cluster)


def check_final(cluster: Cluster) -> None:
    """End a run: a final probing read, then every check."""
    for client in range(len(cluster.clients)):
        cluster.timeout(client)
    final = cluster.final_read(VIEWS[0])
    assert not cluster.violations, cluster.violations
    assert not cluster.regressions(), cluster.regressions()
    if cluster.chosen:
        latest = max(cluster.chosen.items())[1]
        assert final.value is not None
        assert (final.value.version, final.value.payload) == (latest.version, latest.payload)
    result = check_history(cluster.history, VersionedRegisterModel(), max_steps=2_000_000)
    assert result.ok is True, result.explanation


DivergentViewsMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDivergentViews = DivergentViewsMachine.TestCase


@pytest.mark.parametrize("block", range(4))
def test_seeded_random_schedules_with_divergent_views(block: int) -> None:
    """Long seeded random schedules (see ``test_paxos_stateful.py``), cold clients."""
    for seed in range(block * 150, (block + 1) * 150):
        rng = random.Random(seed)
        cluster = new_cluster(seed % 2 == 0)
        random_schedule(cluster, rng, 150, [*KINDS, "begin_move", "finish_move"], TARGETS)
        try:
            check_final(cluster)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc


def test_quick_reads_do_answer() -> None:
    """The schedules above exercise quick reads that conclude, not only fallbacks."""
    total = 0
    for seed in range(40):
        cluster = new_cluster(True)
        random_schedule(cluster, random.Random(seed), 150, ["write", "quick_read"], TARGETS)
        total += cluster.quick_reads
    assert total > 20
