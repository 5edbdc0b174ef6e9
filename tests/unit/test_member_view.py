"""MemberView and ViewPlacement on overlays over the in-memory fake network (mock clock)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from dht.errors import RemoteProtocolError
from dht.ids import Contact, NodeId
from dht.member_view import MemberView
from dht.membership import MembershipConfig, MemberState
from dht.overlay import Overlay, OverlayConfig
from storage.client_placement import ViewPlacement
from tests.fake_network import FakeNetwork, make_contact, start_service

FAST = OverlayConfig(
    membership=MembershipConfig(
        ping_interval=0.5,
        ping_timeout=0.4,
        suspect_after=2,
        eviction_delay=2.0,
        gossip_interval=0.25,
        reconnect_interval=1.0,
    )
)


async def test_a_client_sees_the_members_places_like_them_and_never_becomes_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork()
    contacts = [make_contact(i) for i in range(6)]
    client = make_contact(99)
    async with trio.open_nursery() as nursery:
        overlays: list[Overlay] = []
        scopes: list[trio.CancelScope] = []
        for i, contact in enumerate(contacts):
            endpoint = network.endpoint(contact)
            overlay = Overlay(contact, endpoint, endpoint, config=FAST, bootstrap=contacts[:i][-1:])
            overlays.append(overlay)
            scopes.append(await start_service(nursery, overlay.run))
        # Bootstrap by address only: whoever listens there answers.
        view = MemberView(
            network.endpoint(client),
            [Contact(NodeId(b""), contacts[0].address)],
            refresh_interval=0.5,
        )
        view_scope = await start_service(nursery, view.run)
        placement = ViewPlacement(view)
        with trio.fail_after(10):
            while len(view.members()) < 6:
                await view.wait_changed()
        await trio.sleep(3)

        rng = random.Random(1)
        for _ in range(50):
            key = rng.randbytes(32)
            for k in (1, 3, 6, 9):
                assert placement.closest(key, k) == overlays[2].closest_nodes(key, k)
        assert placement.closest(b"x" * 32, 0) == []
        for overlay in overlays:
            assert overlay.membership.get(client.node_id) is None
        assert view.statistics().refreshes >= 5

        # A dead member: suspected, then evicted in the view too; still reachable by id.
        dead = contacts[4]
        network.kill(dead.node_id)
        scopes[4].cancel()
        with trio.fail_after(20):
            while (m := view.get(dead.node_id)) is None or m.state is not MemberState.EVICTED:
                await view.wait_changed()
        assert dead not in placement.closest(dead.node_id, 6)
        assert placement.contact(dead.node_id) == dead
        assert placement.contact(client.node_id) is None
        stats = view.statistics()
        assert (stats.alive, stats.evicted) == (5, 1)

        # Its bootstrap node gone too, the view keeps refreshing from the members it knows.
        network.kill(contacts[0].node_id)
        scopes[0].cancel()
        before = view.statistics().refreshes
        await trio.sleep(3)
        assert view.statistics().refreshes > before
        view_scope.cancel()
        nursery.cancel_scope.cancel()
    assert network.handler_errors == []


def test_merge_keeps_the_newest_entry_and_rejects_garbage_whole() -> None:
    network = FakeNetwork()
    view = MemberView(network.endpoint(make_contact(99)), [])
    a, b = make_contact(1), make_contact(2)

    def wire(contact: Contact, state: str, incarnation: int) -> list[object]:
        return [
            [contact.node_id, contact.address.host, contact.address.port, contact.public_key],
            state,
            incarnation,
        ]

    assert view.merge([wire(a, "alive", 3), wire(b, "suspected", 1)], 0.0)
    assert not view.merge([wire(a, "evicted", 2)], 1.0)  # older incarnation: ignored
    assert view.merge([wire(b, "evicted", 1)], 2.0)
    assert [m.node_id for m in view.members()] == [a.node_id]
    assert view.merge([wire(b, "alive", 2)], 3.0)  # refuted: back
    assert len(view.members()) == 2
    with pytest.raises(RemoteProtocolError):
        view.merge([wire(a, "evicted", 9), ["garbage"]], 4.0)
    a_entry = view.get(a.node_id)
    assert a_entry is not None
    assert a_entry.state is MemberState.ALIVE  # nothing of a malformed list was merged
    with pytest.raises(ValueError, match="positive"):
        MemberView(network.endpoint(make_contact(98)), [], refresh_interval=0)
