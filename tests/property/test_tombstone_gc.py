"""Tombstone collection on a lossy, reordering, duplicating network: deleted data stays deleted.

Each seeded schedule runs writes, CAS, reads, deletes and replica-set moves with message
loss, duplication, reordering and crashes (as in ``test_paxos_stateful``), sets aside a
random half of the messages still in flight (late messages from old rounds: the threat the
promise floor exists for), deletes the register, and then collects the tombstone the way
``storage.repair`` does: a snapshot of every acceptor's accepted ballot,
:func:`storage.paxos.collection_order`, then :meth:`storage.paxos.Acceptor.collect` on each
acceptor in that order, stopping at the first refusal, while the late messages are
re-injected and delivered in between. Afterwards clients only read, on the same faulty
network. Checked whenever a collection completed:

* no acceptor ever again holds a value of the old life (a non-tombstone value whose version
  is not above the tombstone's: a new life started from nothing has fresh payloads and
  begins at version 1, and is told apart by its payload);
* a final read returns nothing, or such a new value;
* one value per ballot, chosen values never regress (the simulator's own checks).

The plan itself (undecided, moving and living-again registers refused) has unit tests in
``tests/unit/test_paxos.py``. Collecting without the promise floor, collecting the tombstone's
holders before the holders of older values, or collecting an undecided tombstone each make
some of these seeds fail.
"""

from __future__ import annotations

import itertools
import random

import pytest

from dht.ids import NodeId
from storage.paxos import Acceptor, Ballot, RegisterValue, collection_order
from tests.paxos_sim import Cluster, Envelope, random_schedule

NODES = tuple(NodeId(bytes([ord("A") + i]) * 20) for i in range(5))
CREATION_SET = NODES[:3]
TARGETS = [tuple(c) for c in itertools.combinations(NODES, 3)]
CLIENTS = 3
BEFORE = ["write", "write", "cas", "read", "quick_read", "delete", "delete", "begin_move"]
BEFORE += ["finish_move"]
AFTER = ["read", "quick_read"]


def snapshot(cluster: Cluster) -> tuple[RegisterValue, Ballot, dict[NodeId, Ballot | None]] | None:
    """What the collector learns from the holdings query: the highest accepted value and
    every acceptor's accepted ballot (None when nothing was ever accepted)."""
    accepted = {n: a.state.accepted_ballot for n, a in cluster.nodes.items()}
    ballots = [b for b in accepted.values() if b is not None]
    if not ballots:
        return None
    top = max(ballots)
    holder = next(n for n, b in accepted.items() if b == top)
    value = cluster.nodes[holder].state.value
    assert value is not None
    return value, top, accepted


def old_life_values(cluster: Cluster, tombstone: RegisterValue, old: set[bytes]) -> list[str]:
    """Acceptors holding a value of the register's life before ``tombstone``."""
    bad = []
    for node, acceptor in cluster.nodes.items():
        value = acceptor.state.value
        if value is None or value.is_tombstone:
            continue
        if value.version <= tombstone.version and (value.version > 1 or value.payload in old):
            bad.append(f"{node[:1]!r} holds {value} after collecting {tombstone}")
    return bad


def deliver_some(cluster: Cluster, rng: random.Random, late: list[Envelope]) -> None:
    """Re-inject a few late messages and deliver a random burst."""
    for _ in range(rng.randrange(0, 3)):
        if late:
            cluster.network.append(late.pop(rng.randrange(len(late))))
    for _ in range(rng.randrange(0, 6)):
        if cluster.network:
            cluster.deliver(rng.randrange(len(cluster.network)))


def run_seed(seed: int) -> bool:
    """One schedule; return whether a collection completed (and was checked)."""
    rng = random.Random(seed)
    cluster = Cluster(NODES, CREATION_SET, CLIENTS, pipelining=seed % 2 == 0)
    random_schedule(cluster, rng, 120, BEFORE, TARGETS)
    late = [e for e in cluster.network if rng.random() < 0.5]
    cluster.network = [e for e in cluster.network if e not in late]
    # The other clients' operations go on; from now on clients only start reads.
    cluster.timeout(0)
    cluster.begin(0, "delete")
    if rng.random() < 0.7:
        cluster.deliver_all()
    else:
        deliver_some(cluster, rng, [])
    seen = snapshot(cluster)
    if seen is None:
        return False
    tombstone, ballot, accepted = seen
    order = collection_order(tombstone, ballot, accepted)
    if order is None:
        return False
    old = {
        value.payload
        for b, (value, _) in cluster.accept_log.items()
        if b < ballot and value.payload is not None
    }
    completed = True
    for node in order:
        deliver_some(cluster, rng, late)
        acceptor = cluster.nodes[node]
        left = Acceptor.collect(acceptor.state, ballot)
        if left is None:
            completed = False  # the register lived again meanwhile: the rest keep it
            break
        acceptor.disk = left.to_bytes()
    cluster.network.extend(late)
    if completed:
        assert not old_life_values(cluster, tombstone, old)
    random_schedule(cluster, rng, 80, AFTER, TARGETS)
    cluster.deliver_all()
    assert not cluster.violations, cluster.violations
    assert not cluster.regressions(), cluster.regressions()
    if completed:
        assert not old_life_values(cluster, tombstone, old)
    final = cluster.final_read(CREATION_SET).value
    if final is not None and not final.is_tombstone:
        old_life = final.version <= tombstone.version and (
            final.version > 1 or final.payload in old
        )
        assert not old_life, f"read {final} after collecting {tombstone}"
    return completed


@pytest.mark.parametrize("block", range(4))
def test_collected_tombstones_never_bring_old_data_back(block: int) -> None:
    """Many seeded schedules; most end with a completed collection, all are checked."""
    seeds = range(block * 500, (block + 1) * 500)
    completed = 0
    for seed in seeds:
        try:
            completed += run_seed(seed)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
    assert completed >= len(seeds) // 5, f"only {completed} schedules reached a collection"
