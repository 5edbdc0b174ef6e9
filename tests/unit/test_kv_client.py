"""The chunk read hedge delay and read order of the networked key-value client (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from dht.ids import Address, Contact, NodeId
from storage.api import ChunkRef
from storage.errors import Unavailable
from storage.ids import BlockAddress
from storage.kv_client import HEDGE_DELAY, HEDGE_DELAY_MAX, KVClient, hedge_delay
from storage.policy import Redundancy
from storage.registers import ClientKeys

MiB = 1024 * 1024


def test_small_answers_hedge_after_the_base_delay() -> None:
    assert hedge_delay(HEDGE_DELAY, 0, 1 / 50e6) == HEDGE_DELAY
    assert hedge_delay(HEDGE_DELAY, 4096, 1 / 50e6) == pytest.approx(HEDGE_DELAY, abs=1e-3)


def test_large_answers_wait_for_twice_their_expected_transfer() -> None:
    # 4 MiB at 50 MB/s take 84 ms: a healthy holder is not duplicated before 2 x that.
    assert hedge_delay(HEDGE_DELAY, 4 * MiB, 1 / 50e6) == pytest.approx(
        HEDGE_DELAY + 2 * 4 * MiB / 50e6
    )
    assert hedge_delay(HEDGE_DELAY, 4 * MiB, 1 / 50e6) > hedge_delay(HEDGE_DELAY, MiB, 1 / 50e6)


def test_a_stalled_holder_is_still_hedged_after_the_maximum() -> None:
    assert hedge_delay(HEDGE_DELAY, 64 * MiB, 1 / 1e6) == HEDGE_DELAY_MAX
    assert HEDGE_DELAY < HEDGE_DELAY_MAX < 1.0


def test_a_base_above_the_maximum_is_kept() -> None:
    assert hedge_delay(2.0, 4 * MiB, 1 / 50e6) == 2.0


class _Caller:
    """A caller that only has an identity (``_local_first`` never calls it)."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id

    async def call(self, contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        raise AssertionError("not called")


class _Placement:
    def closest(self, key: bytes, n: int) -> list[Contact]:
        raise AssertionError("not called")

    def contact(self, node_id: NodeId) -> Contact | None:
        return None


def _contact(i: int) -> Contact:
    return Contact(NodeId(bytes([i]) * 32), Address("127.0.0.1", 9000 + i))


def _client(own: int) -> KVClient:
    return KVClient(
        _Caller(bytes([own]) * 32),
        _Placement(),
        keys=ClientKeys.generate(),
        default_redundancy=Redundancy(replicas=3),
    )


def test_replica_reads_ask_this_node_first_when_it_holds_a_copy() -> None:
    candidates = [_contact(i) for i in range(1, 7)]  # 3 holders, then 3 spares
    assert _client(3)._local_first(candidates, 3) == [
        candidates[2],
        candidates[0],
        candidates[1],
        *candidates[3:],
    ]
    assert _client(1)._local_first(candidates, 3) == candidates
    # Not a holder (a spare, or not a member): the nearest holder is asked first.
    assert _client(5)._local_first(candidates, 3) == candidates
    assert _client(9)._local_first(candidates, 3) == candidates


class _Nearest(_Placement):
    """A placement whose nearest members are fixed."""

    def __init__(self, order: list[Contact]) -> None:
        self.order = order

    def closest(self, key: bytes, n: int) -> list[Contact]:
        return self.order[:n]


def test_a_cached_replica_set_that_placement_moved_away_from_is_probed() -> None:
    nodes = [_contact(i) for i in range(1, 8)]
    ids = tuple(c.node_id for c in nodes)
    client = KVClient(
        _Caller(ids[0]),
        _Nearest(nodes),
        keys=ClientKeys.generate(),
        default_redundancy=Redundancy(replicas=3),
    )
    address = BlockAddress(b"a" * 32)
    entry = client._register(address)
    entry.replicas = (ids[2], ids[0], ids[1])  # where placement still puts it: no probe
    assert client._start_set(address, entry, 3, None) == ((ids[2], ids[0], ids[1]), ())
    # The register was seen on {1, 2, 7}; placement now says {1, 2, 3}. Deleted and collected
    # on its new set, the old one could no longer point there: probe as a cold client.
    entry.replicas = (ids[0], ids[1], ids[6])
    start, probe = client._start_set(address, entry, 3, None)
    assert start == ids[:3]
    assert set(probe) >= {*ids[:5], ids[6]}


def _ref() -> ChunkRef:
    return ChunkRef(BlockAddress(b"c" * 32), bytes(32), 1, Redundancy(replicas=3))


async def test_operations_after_the_client_stopped_are_unavailable() -> None:
    """A task of the same shutdown that runs before seeing its cancellation gets a storage
    error it handles, not a closed nursery; using a client never started is a bug."""
    client = _client(1)
    with pytest.raises(RuntimeError, match="is not running"):
        await client.delete_chunk(_ref())
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(Unavailable, match="has stopped"):
        await client.delete_chunk(_ref())
