"""Repair planning, simulated: every holder plans from the same holdings, all plans apply.

Properties (hypothesis explores holdings, placements and unanswered nodes):

* **Never loses data**: after any round of plans (copies, rebuilds, releases, applied
  concurrently as independent nodes would), every fragment index / the replica that existed
  somewhere still exists somewhere.
* **Converges**: when every node answers, a few rounds bring the block to the placement rule:
  the targets hold it at full redundancy and no other node holds anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from dht.ids import Contact, NodeId
from storage.ids import BlockAddress
from storage.repair_plan import BlockPlan, plan_fragments, plan_replicas, targets
from tests.fake_network import make_contact

NODES = [make_contact(i) for i in range(12)]
ADDRESS = BlockAddress(bytes(range(32)))


def _apply(plans: Mapping[NodeId, BlockPlan], held: dict[NodeId, set[int | None]]) -> None:
    """Apply plans made from one snapshot: copies and rebuilds first, then releases."""
    done: dict[NodeId, set[object]] = {n: set() for n in plans}
    for node, plan in plans.items():
        for copy in plan.copies:
            held[copy.target.node_id].add(copy.fragment)
            done[node].add(copy)
        for rebuild in plan.rebuilds:
            held[rebuild.target.node_id].add(rebuild.fragment)
    for node, plan in plans.items():
        for key, needs in plan.release.items():
            if needs <= done[node]:
                held[node].discard(key)


@st.composite
def fragment_cases(draw: st.DrawFn) -> tuple[int, int, list[Contact], dict[NodeId, set[int]]]:
    data = draw(st.integers(1, 4))
    parity = draw(st.integers(0, 3))
    count = draw(st.integers(2, len(NODES)))
    eligible = NODES[:count]
    others = NODES[count:]  # drained, or not eligible any more
    total = data + parity
    held: dict[NodeId, set[int]] = {c.node_id: set() for c in NODES}
    # At least ``data`` distinct indexes exist somewhere (the block is recoverable).
    present = draw(st.sets(st.integers(0, total - 1), min_size=data, max_size=total))
    for index in present:
        for holder in draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=2)):
            held[holder.node_id].add(index)
    del others
    return data, parity, eligible, held


@settings(max_examples=300, deadline=None)
@given(fragment_cases(), st.sets(st.integers(0, len(NODES) - 1), max_size=3))
def test_fragment_plans_never_lose_an_index_and_converge(
    case: tuple[int, int, list[Contact], dict[NodeId, set[int]]], silent: set[int]
) -> None:
    data, parity, eligible, fragments = case
    total = data + parity
    held: dict[NodeId, set[int | None]] = {n: set(i) for n, i in fragments.items()}
    target_set = targets(ADDRESS, eligible, total)
    quiet = {NODES[i].node_id for i in silent}
    for round_ in range(8):
        anywhere = {i for keys in held.values() for i in keys if i is not None}
        plans = {}
        for node in NODES:
            local = {i for i in held[node.node_id] if i is not None}
            if not local:
                continue
            answers = {
                other.node_id: frozenset(i for i in held[other.node_id] if i is not None)
                for other in NODES
                if other.node_id != node.node_id
                and (round_ >= 3 or other.node_id not in quiet)  # some rounds lose answers
            }
            plans[node.node_id] = plan_fragments(
                ADDRESS, node, local, data, parity, target_set, answers, NODES
            )
        _apply(plans, held)
        after = {i for keys in held.values() for i in keys if i is not None}
        assert anywhere <= after, f"round {round_} lost indexes {anywhere - after}"
    target_ids = {t.node_id for t in target_set}
    on_targets = {i for n in target_ids for i in held[n] if i is not None}
    assert on_targets == set(range(total))
    assert all(held[t.node_id] for t in target_set)
    assert not any(held[n.node_id] for n in NODES if n.node_id not in target_ids)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, len(NODES)),
    st.sets(st.integers(0, len(NODES) - 1), min_size=1),
    st.sets(st.integers(0, len(NODES) - 1), max_size=3),
)
def test_replica_plans_never_lose_the_block_and_converge(
    replicas: int, eligible_count: int, holders: set[int], silent: set[int]
) -> None:
    eligible = NODES[:eligible_count]
    target_set = targets(ADDRESS, eligible, replicas)
    held: dict[NodeId, set[int | None]] = {
        c.node_id: ({None} if i in holders else set()) for i, c in enumerate(NODES)
    }
    quiet = {NODES[i].node_id for i in silent}
    for round_ in range(6):
        plans = {}
        for node in NODES:
            if None not in held[node.node_id]:
                continue
            answers = {
                other.node_id: None in held[other.node_id]
                for other in NODES
                if other.node_id != node.node_id and (round_ >= 3 or other.node_id not in quiet)
            }
            plans[node.node_id] = plan_replicas(ADDRESS, node, target_set, answers, NODES)
        _apply(plans, held)
        assert any(None in keys for keys in held.values()), f"round {round_} lost the block"
    target_ids = {t.node_id for t in target_set}
    assert all(None in held[n] for n in target_ids)
    assert not any(held[n.node_id] for n in NODES if n.node_id not in target_ids)
