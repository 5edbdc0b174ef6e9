"""The repair service's RPC and settings, on a real silo (no cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dht.errors import RemoteError
from dht.membership import Member, MembershipEvent, MemberState
from storage.errors import InvalidArgument
from storage.ids import BlockAddress
from storage.repair import HOLDINGS, MAX_QUERY, RepairConfig, RepairService
from storage.silo import AcceptorRecord, Silo
from tests.fake_network import make_contact

OWN = make_contact(0)


class Members:
    """A member list of one node (this one)."""

    own = OWN

    def __init__(self) -> None:
        self.draining = False

    def all_members(self) -> list[Member]:
        return [Member(OWN, MemberState.ALIVE, 0, 0.0, 0.0, self.draining)]

    def set_draining(self, draining: bool) -> None:
        self.draining = draining

    def subscribe(self, max_buffer_size: int = 1024) -> trio.MemoryReceiveChannel[MembershipEvent]:
        return trio.open_memory_channel[MembershipEvent](max_buffer_size)[1]


class Caller:
    async def call(self, contact: Any, method: str, args: Any, *, timeout: float) -> Any:
        raise AssertionError("a one-node pass calls nobody")


class Registry:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def register(self, method: str, handler: Any) -> None:
        self.handlers[method] = handler


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[RepairService, Silo, Registry]]:
    async with await Silo.open(tmp_path / "silo", capacity_bytes=1 << 24) as silo:
        repair = RepairService(silo, Caller(), Members(), None, default_replicas=3)
        registry = Registry()
        repair.register_handlers(registry)
        yield repair, silo, registry


def addr(n: int) -> BlockAddress:
    return BlockAddress(n.to_bytes(32, "big"))


async def test_holdings_answers_in_query_order(
    service: tuple[RepairService, Silo, Registry],
) -> None:
    _, silo, registry = service
    await silo.put_block(addr(1), b"whole", replicas=2)
    await silo.put_block(addr(2), b"fragment", 3)
    handler = registry.handlers[HOLDINGS]
    reply = await handler(OWN, {"blocks": [addr(2), addr(3), addr(1)], "registers": [addr(4)]})
    assert reply == {"blocks": [[3], [], [-1]], "registers": [None], "draining": False}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"blocks": "x"},
        {"blocks": [b"short"]},
        {"registers": [1, 2]},
        {"blocks": [bytes(32)] * (MAX_QUERY + 1)},
    ],
)
async def test_holdings_refuses_garbage_with_a_typed_error(
    service: tuple[RepairService, Silo, Registry], bad: Any
) -> None:
    _, _, registry = service
    with pytest.raises(RemoteError) as caught:
        await registry.handlers[HOLDINGS](OWN, bad)
    assert caught.value.code == "invalid"


async def test_draining_is_persisted_and_refuses_new_blocks(
    service: tuple[RepairService, Silo, Registry],
) -> None:
    repair, silo, _ = service
    await repair.set_draining(True)
    assert repair.draining
    assert not silo.accepting
    assert await silo.get_setting("repair.draining") == b"1"
    await repair.set_draining(False)
    assert silo.accepting


class Mover:
    """Register moves: none expected on a node whose records name no configuration."""

    async def move_register(self, address: Any, new_set: Any, *, hint: Any) -> Any:
        raise AssertionError("nothing to move")

    async def sync_register(self, address: Any, *, hint: Any) -> Any:
        raise AssertionError("nothing to sync")


async def test_a_drain_that_dropped_consensus_state_cannot_be_cancelled(tmp_path: Path) -> None:
    silo = await Silo.open(tmp_path / "drained", capacity_bytes=1 << 24)
    async with silo:
        repair = RepairService(silo, Caller(), Members(), Mover(), default_replicas=3)
        await drain_drops_then_refuses_to_stop(repair, silo)


async def drain_drops_then_refuses_to_stop(repair: RepairService, silo: Silo) -> None:
    await silo.save_paxos(addr(7), AcceptorRecord(promised=b"ballot 1"))  # promise-only
    await repair.set_draining(True)
    await repair.repair_now()
    assert await silo.load_paxos(addr(7)) is None
    assert repair.statistics().retired_records_dropped == 1
    with pytest.raises(InvalidArgument):
        await repair.set_draining(False)
    assert not silo.accepting


async def test_a_lone_node_pass_keeps_its_blocks(
    service: tuple[RepairService, Silo, Registry],
) -> None:
    repair, silo, _ = service
    await silo.put_block(addr(1), b"whole", replicas=1)
    assert not await repair.repair_now()
    assert await silo.has_block(addr(1))
    stats = repair.statistics()
    assert stats.passes == 1
    assert stats.blocks_examined == 1
    assert stats.under_target == 0


@pytest.mark.parametrize(
    "settings",
    [{"scan_interval": 0}, {"bandwidth": -1}, {"parallel": 0}, {"window": -1}, {"page": 0}],
)
def test_config_is_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RepairConfig(**settings)
