"""Iterative FIND_NODE on the fake network, under trio's MockClock (no real waiting)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from dht.errors import RemoteError
from dht.ids import NODE_ID_BYTES, Contact, distance
from dht.lookup import FIND_NODE, LookupConfig, NodeLookup
from dht.routing import RoutingTable
from tests.fake_network import FakeEndpoint, FakeNetwork, make_contact

logger = logging.getLogger(__name__)


@dataclass
class _Node:
    contact: Contact
    endpoint: FakeEndpoint
    routing: RoutingTable
    lookup: NodeLookup
    unresponsive: list[Contact] = field(default_factory=list)


def _build(
    network: FakeNetwork,
    n: int,
    *,
    ksize: int,
    seed: int,
    config: LookupConfig | None = None,
    serve: bool = True,
) -> list[_Node]:
    """``n`` nodes whose routing tables saw every other node (what fits stays)."""
    rng = random.Random(seed)
    contacts = [make_contact(i, rng) for i in range(n)]
    nodes = []
    for contact in contacts:
        endpoint = network.endpoint(contact)
        routing = RoutingTable(contact, ksize=ksize)
        unresponsive: list[Contact] = []

        def gone(
            c: Contact, routing: RoutingTable = routing, log: list[Contact] = unresponsive
        ) -> None:
            log.append(c)
            routing.remove(c.node_id)

        def alive(c: Contact, routing: RoutingTable = routing) -> None:
            routing.add(c)

        lookup = NodeLookup(
            contact,
            routing,
            endpoint,
            config=config or LookupConfig(k=ksize, request_timeout=1.0),
            on_alive=alive,
            on_unresponsive=gone,
        )
        if serve:
            endpoint.register(FIND_NODE, lookup.handle_find_node)
        nodes.append(_Node(contact, endpoint, routing, lookup, unresponsive))
    for node in nodes:
        others = [c for c in contacts if c != node.contact]
        rng.shuffle(others)
        for other in others:
            node.routing.add(other)
    return nodes


def _brute_force(target: bytes, contacts: Sequence[Contact], k: int) -> list[Contact]:
    return sorted(contacts, key=lambda c: distance(c.node_id, target))[:k]


async def test_lookups_find_the_exact_k_closest(autojump_clock: trio.testing.MockClock) -> None:
    network = FakeNetwork(latency=0.005)
    nodes = _build(network, 120, ksize=4, seed=1)
    rng = random.Random(2)
    rounds = []
    for _ in range(60):
        origin = rng.choice(nodes)
        target = rng.randbytes(NODE_ID_BYTES)
        result = await origin.lookup.find_node(target)
        others = [n.contact for n in nodes if n is not origin]
        assert list(result.contacts) == _brute_force(target, others, 4)
        assert result.failed == 0
        rounds.append(result.rounds)
    stats = [n.lookup.statistics() for n in nodes]
    assert sum(s.lookups for s in stats) == 60
    assert sum(s.rounds_total for s in stats) == sum(rounds)
    assert max(s.rounds_max for s in stats) == max(rounds)
    logger.info("120 nodes, k=4: rounds mean %.2f max %d", sum(rounds) / 60, max(rounds))
    assert 1 < sum(rounds) / len(rounds) < 8
    assert network.handler_errors == []


async def test_a_round_sends_alpha_requests_in_parallel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    latency = 0.01
    network = FakeNetwork(latency=latency)
    nodes = _build(network, 80, ksize=3, seed=3)
    inflight = peak = 0
    call_times = []
    original = nodes[0].endpoint.call

    async def counting(contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        nonlocal inflight, peak
        call_times.append(trio.current_time())
        inflight += 1
        peak = max(peak, inflight)
        try:
            return await original(contact, method, args, timeout=timeout)
        finally:
            inflight -= 1

    nodes[0].endpoint.call = counting  # type: ignore[method-assign]
    start = trio.current_time()
    result = await nodes[0].lookup.find_node(random.Random(4).randbytes(NODE_ID_BYTES))
    elapsed = trio.current_time() - start
    # Every round costs one round trip, however many requests it holds.
    assert elapsed == pytest.approx(result.rounds * 2 * latency)
    assert call_times[:3] == [start] * 3
    assert peak == 3  # alpha = k = 3: even the "ask everyone" rounds hold at most k
    assert result.queried == len(call_times)


async def test_dead_contacts_are_dropped_and_results_stay_exact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(latency=0.002)
    nodes = _build(network, 100, ksize=4, seed=5)
    rng = random.Random(6)
    dead = rng.sample(nodes[1:], 15)
    for index, node in enumerate(dead):
        network.kill(node.contact.node_id, blackhole=index % 2 == 0)
    alive = [n for n in nodes if n not in dead]
    origin = nodes[0]
    timeout = origin.lookup.config.request_timeout
    for _ in range(30):
        target = rng.randbytes(NODE_ID_BYTES)
        start = trio.current_time()
        result = await origin.lookup.find_node(target)
        # A round lasts one round trip, or one request timeout if someone in it is dead.
        assert trio.current_time() - start <= result.rounds * (timeout + 0.01)
        others = [n.contact for n in alive if n is not origin]
        assert list(result.contacts) == _brute_force(target, others, 4)
    dead_ids = {n.contact.node_id for n in dead}
    assert origin.unresponsive
    assert {c.node_id for c in origin.unresponsive} <= dead_ids
    for c in origin.unresponsive:
        assert c.node_id not in origin.routing
    assert origin.lookup.statistics().failures == len(origin.unresponsive)


async def test_bad_replies_and_errors_do_not_derail_a_lookup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    nodes = _build(network, 40, ksize=4, seed=7, serve=False)
    liars = set()
    for index, node in enumerate(nodes):
        if index % 5 == 1:
            liars.add(node.contact.node_id)

            async def garbage(caller: Contact, args: Any) -> Any:
                return {"contacts": [[b"x", "h", 1, b""]]}

            async def refuse(caller: Contact, args: Any) -> Any:
                raise RemoteError("busy")

            node.endpoint.register(FIND_NODE, garbage if index % 2 else refuse)
        else:
            node.endpoint.register(FIND_NODE, node.lookup.handle_find_node)
    rng = random.Random(8)
    origin = nodes[0]
    exact = 0
    for _ in range(20):
        target = rng.randbytes(NODE_ID_BYTES)
        result = await origin.lookup.find_node(target)
        assert not liars & {c.node_id for c in result.contacts}
        honest = [n.contact for n in nodes[1:] if n.contact.node_id not in liars]
        # Liars are skipped and the honest nodes found are the closest ones, without gaps.
        # With a fifth of the nodes lying and k = 4, a target whose neighbourhood is mostly
        # liars can leave fewer than k honest answers (inherent to Kademlia).
        found = list(result.contacts)
        assert len(found) >= 2
        assert found == _brute_force(target, honest, len(found))
        exact += len(found) == 4
    assert exact >= 15
    assert origin.lookup.statistics().bad_replies > 0
    assert origin.lookup.statistics().failures == 0
    assert network.handler_errors == []


async def test_lookup_without_contacts_returns_nothing() -> None:
    network = FakeNetwork()
    (node,) = _build(network, 1, ksize=4, seed=9)
    result = await node.lookup.find_node(bytes(NODE_ID_BYTES))
    assert result.contacts == ()
    assert result.rounds == 0
    with pytest.raises(ValueError, match="20 bytes"):
        await node.lookup.find_node(b"short")


async def test_cancelling_a_lookup_cancels_its_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    config = LookupConfig(k=4, request_timeout=100.0)
    nodes = _build(network, 20, ksize=4, seed=10, config=config)
    for node in nodes[1:]:
        network.kill(node.contact.node_id, blackhole=True)
    start = trio.current_time()
    with trio.move_on_after(5) as scope:
        await nodes[0].lookup.find_node(bytes(NODE_ID_BYTES))
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(5)


async def test_find_node_handler_validates_and_excludes_the_caller() -> None:
    network = FakeNetwork()
    nodes = _build(network, 30, ksize=20, seed=11)
    server, caller = nodes[0], nodes[1]
    reply = await server.lookup.handle_find_node(
        caller.contact, {"target": caller.contact.node_id, "k": 5}
    )
    ids = [c[0] for c in reply["contacts"]]
    assert len(ids) == 5
    assert caller.contact.node_id not in ids
    assert server.lookup.statistics().served == 1
    bad_requests: list[Any] = [
        None,
        [],
        {"target": b"x"},
        {"target": bytes(20), "k": 0},
        {"target": bytes(20), "k": True},
        {"target": "s"},
    ]
    for bad in bad_requests:
        with pytest.raises(RemoteError) as info:
            await server.lookup.handle_find_node(caller.contact, bad)
        assert info.value.code == "bad_request"
    # Through the network, msgpack and all.
    got = await caller.endpoint.call(
        server.contact, FIND_NODE, {"target": bytes(20), "k": 3}, timeout=1
    )
    assert len(got["contacts"]) == 3


def test_lookup_config_is_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        LookupConfig(alpha=0)
    with pytest.raises(ValueError, match="positive"):
        LookupConfig(request_timeout=0)
