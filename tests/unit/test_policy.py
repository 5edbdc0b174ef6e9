"""Redundancy policies and quorum arithmetic, tested exhaustively over their whole domain."""

from __future__ import annotations

import itertools

import pytest

from storage.errors import InvalidArgument
from storage.policy import (
    MAX_DATA,
    MAX_PARITY,
    MAX_REPLICAS,
    Quorum,
    Redundancy,
    fragment_read_quorum,
    fragment_write_quorum,
    majority,
    quorum_impossible,
    quorum_reached,
    replica_write_quorum,
    tolerated_failures,
)


def test_majority_small_values() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("n", range(1, 65))
def test_majority_is_the_smallest_intersecting_size(n: int) -> None:
    m = majority(n)
    assert 2 * m > n  # two majorities always share a member
    assert 2 * (m - 1) <= n  # and nothing smaller has that property


def test_replica_write_quorum_is_majority() -> None:
    for r in range(1, MAX_REPLICAS + 1):
        assert replica_write_quorum(r) == majority(r)


def test_fragment_quorums_over_whole_domain() -> None:
    for k, m in itertools.product(range(1, MAX_DATA + 1), range(1, MAX_PARITY + 1)):
        w = fragment_write_quorum(k, m)
        assert w == k + 1  # m >= 1, so k+1 never exceeds k+m
        assert k < w <= k + m
        assert fragment_read_quorum(k) == k


def test_fragment_write_quorum_caps_at_total() -> None:
    assert fragment_write_quorum(4, 0) == 4


def test_quorum_predicates_exhaustive() -> None:
    for of in range(1, 20):
        for needed in range(1, of + 1):
            for answered in range(of + 1):
                assert quorum_reached(needed, answered) == (answered >= needed)
            for failed in range(of + 1):
                assert quorum_impossible(needed, of, failed) == (of - failed < needed)
                # reachable iff at most `tolerated_failures` failed
                assert quorum_impossible(needed, of, failed) == (
                    failed > tolerated_failures(needed, of)
                )


def test_quorum_dataclass() -> None:
    q = Quorum.majority_of(5)
    assert q == Quorum(3, 5)
    assert not q.reached(2)
    assert q.reached(3)
    assert q.tolerated_failures == 2
    assert not q.impossible(2)
    assert q.impossible(3)


@pytest.mark.parametrize(("needed", "of"), [(0, 3), (4, 3), (-1, 1), (1, 0)])
def test_quorum_rejects_impossible_requirements(needed: int, of: int) -> None:
    with pytest.raises(InvalidArgument):
        Quorum(needed, of)


def test_replicas_policy_every_value() -> None:
    for r in range(1, MAX_REPLICAS + 1):
        policy = Redundancy(replicas=r)
        assert not policy.is_erasure_coded
        assert policy.nodes_needed == r
        assert policy.write_quorum == majority(r)
        assert policy.read_quorum == 1
        assert policy.tolerated_failures == r - 1
        assert policy.overhead == float(r)
        assert policy.write() == Quorum(majority(r), r)
        assert policy.read() == Quorum(1, r)
        assert str(policy) == str(r) == policy.format()
        assert Redundancy.parse(str(policy)) == policy


def test_erasure_policy_every_value() -> None:
    for k, m in itertools.product(range(1, MAX_DATA + 1), range(1, MAX_PARITY + 1)):
        policy = Redundancy(data=k, parity=m)
        assert policy.is_erasure_coded
        assert policy.nodes_needed == k + m
        assert policy.write_quorum == k + 1
        assert policy.read_quorum == k
        assert policy.tolerated_failures == m
        assert policy.overhead == pytest.approx((k + m) / k)
        assert policy.write() == Quorum(k + 1, k + m)
        assert str(policy) == f"{k}+{m}"
        assert Redundancy.parse(f"{k}+{m}") == policy
        assert Redundancy.parse(f" {k}+{m}\n") == policy


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"replicas": 0},
        {"replicas": 17},
        {"replicas": -1},
        {"replicas": True},
        {"data": 4},
        {"parity": 2},
        {"data": 0, "parity": 2},
        {"data": 33, "parity": 2},
        {"data": 4, "parity": 0},
        {"data": 4, "parity": 17},
        {"replicas": 3, "data": 4, "parity": 2},
        {"replicas": 3, "parity": 2},
    ],
)
def test_invalid_policies(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        Redundancy(**kwargs)


@pytest.mark.parametrize(
    "text",
    ["", "0", "17", "03", "4+", "+2", "4+0", "33+1", "4+17", "4 + 2", "a", "3.0", "-3", "4+2+1"],
)
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Redundancy.parse(text)


def test_policy_is_frozen_and_hashable() -> None:
    policy = Redundancy(replicas=3)
    with pytest.raises(AttributeError):
        policy.replicas = 4  # type: ignore[misc]
    assert {policy, Redundancy.parse("3")} == {policy}


@pytest.mark.parametrize(
    ("policy", "form"),
    [
        (Redundancy(replicas=3), {"replicas": 3}),
        (Redundancy(data=4, parity=2), {"data": 4, "parity": 2}),
    ],
)
def test_plain_form_round_trips(policy: Redundancy, form: dict[str, int]) -> None:
    assert policy.as_dict() == form
    assert Redundancy(**form) == policy
