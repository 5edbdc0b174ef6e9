"""The duty cycle of repair passes spaces out only passes that found nothing to do.

A pass that found an under-replicated block but whose copy timed out (a target briefly
unreachable, not suspected, so no membership event) is long only because of the RPC timeout:
the next attempt comes after ``scan_interval``, not after 19 times the pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dht.errors import RpcTimeout
from dht.membership import Member, MembershipEvent, MemberState
from storage.ids import BlockAddress
from storage.repair import HOLDINGS, RepairConfig, RepairService
from storage.silo import Silo
from tests.fake_network import make_contact

OWN = make_contact(0)
PEER = make_contact(1)


class TwoMembers:
    own = OWN
    draining = False

    def all_members(self) -> list[Member]:
        return [
            Member(OWN, MemberState.ALIVE, 0, 0.0, 0.0, False),
            Member(PEER, MemberState.ALIVE, 0, 0.0, 0.0, False),
        ]

    def set_draining(self, draining: bool) -> None:
        pass

    def subscribe(self, max_buffer_size: int = 1024) -> trio.MemoryReceiveChannel[MembershipEvent]:
        return trio.open_memory_channel[MembershipEvent](max_buffer_size)[1]


class FlakyPeer:
    """The peer holds nothing; its first kv.put times out, later ones succeed."""

    def __init__(self) -> None:
        self.puts: list[float] = []
        self.failed_at: float | None = None
        self.retried = trio.Event()

    async def call(self, contact: Any, method: str, args: Any, *, timeout: float) -> Any:
        if method == HOLDINGS:
            return {
                "blocks": [[] for _ in args["blocks"]],
                "registers": [None for _ in args["registers"]],
                "draining": False,
            }
        assert method == "kv.put"
        self.puts.append(trio.current_time())
        if len(self.puts) == 2:
            self.retried.set()
        if len(self.puts) == 1:
            await trio.sleep(timeout)
            self.failed_at = trio.current_time()
            raise RpcTimeout("timed out")
        return None


async def test_a_pass_that_found_work_but_failed_is_retried_after_scan_interval(
    tmp_path: Path,
) -> None:
    async with await Silo.open(tmp_path / "silo", capacity_bytes=1 << 24) as silo:
        await silo.put_block(BlockAddress(bytes(31) + b"\x01"), b"whole", replicas=2)
        peer = FlakyPeer()
        config = RepairConfig(scan_interval=0.3, rpc_timeout=0.5, settle_delay=0.0)
        repair = RepairService(silo, peer, TwoMembers(), None, default_replicas=2, config=config)
        async with trio.open_nursery() as nursery:
            await nursery.start(repair.run)
            with trio.move_on_after(4.0):
                await peer.retried.wait()
            nursery.cancel_scope.cancel()
        stats = repair.statistics()
        assert stats.failures >= 1  # the first copy did fail
        assert len(peer.puts) >= 2, "not retried within 4 s of a failed 0.5 s pass"
