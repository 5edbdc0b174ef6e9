"""The repair service's RPC and settings, on a real silo (no cluster)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

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


def test_long_idle_passes_are_spaced_to_the_duty_cycle() -> None:
    config = RepairConfig(scan_interval=30.0, max_duty=0.05)
    assert config.idle_wait(0.9) == 30.0  # short passes: every scan_interval
    assert config.idle_wait(45.0) == pytest.approx(855.0)  # 45 s of pass per 900 s


async def test_the_pass_loop_waits_after_a_long_pass(
    service: tuple[RepairService, Silo, Registry], autojump_clock: trio.testing.MockClock
) -> None:
    """Passes of 10 s finding nothing, with a 30 s interval and a 5% duty cycle: the next
    pass starts 190 s after the end of the last one, not 30 s."""
    repair, silo, _ = service
    repair.config = RepairConfig(scan_interval=30.0, max_duty=0.05)
    starts: list[float] = []

    async def not_draining(_name: str) -> None:
        return None  # no silo thread: the clock would jump while waiting for one

    silo.get_setting = not_draining  # type: ignore[method-assign,assignment]

    async def ten_second_pass() -> bool:
        starts.append(trio.current_time())
        await trio.sleep(10.0)
        repair._idle_pass_seconds = 10.0
        return False

    repair.repair_now = ten_second_pass  # type: ignore[method-assign]
    with trio.move_on_after(500.0):
        await repair.run()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 2
    assert gaps == pytest.approx([200.0] * len(gaps))


@pytest.mark.parametrize(
    "settings",
    [
        {"scan_interval": 0},
        {"bandwidth": -1},
        {"parallel": 0},
        {"window": -1},
        {"page": 0},
        {"max_duty": 0},
        {"max_duty": 1.5},
    ],
)
def test_config_is_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RepairConfig(**settings)
