"""The block service's consensus methods, driven directly (no network): single and batched
messages, errors per batch item, read-only inspections and the acceptor-state cache."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from dht.contracts import Handler
from dht.errors import RemoteError
from dht.ids import Address, Contact, NodeId
from storage.errors import NotFound
from storage.ids import BlockAddress
from storage.kv_service import MAX_PAXOS_BATCH, BlockService
from storage.paxos import (
    Accept,
    Accepted,
    AcceptorState,
    Ballot,
    Inspect,
    Prepare,
    Promise,
    RegisterValue,
    Reject,
    RejectReason,
    Report,
    decode_message,
    encode_message,
)
from storage.registers import ClientKeys, register_address, sign_register_value
from storage.silo import AcceptorRecord, Silo

CALLER = Contact(NodeId(b"c" * 20), Address("127.0.0.1", 1), b"k" * 32)
REPLICAS = (NodeId(b"a" * 20), NodeId(b"b" * 20), NodeId(b"d" * 20))
KEYS = ClientKeys.generate()


class Registry:
    """Collects the handlers a service registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def register(self, method: str, handler: Handler) -> None:
        """Keep ``handler`` for ``method``."""
        self.handlers[method] = handler


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[BlockService, Registry, Silo]]:
    async with await Silo.open(tmp_path / "silo", capacity_bytes=1 << 30) as silo:
        registry = Registry()
        yield BlockService(silo, registry), registry, silo


def signed(name: bytes, version: int) -> RegisterValue:
    """A value of register ``name`` signed by the owner."""
    return sign_register_value(KEYS.signing, name, RegisterValue(version, REPLICAS, b"x" * 50))


async def paxos(registry: Registry, address: bytes, message: Any) -> Any:
    """Send one consensus message; return the decoded reply."""
    result = await registry.handlers["kv.paxos"](
        CALLER, {"address": address, "message": encode_message(message)}
    )
    return decode_message(result["message"])


async def test_a_batch_is_answered_item_by_item(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    service, registry, silo = node
    names = [b"r%d" % i for i in range(5)]
    addresses = [register_address(KEYS.signing.public_key, n) for n in names]
    ballot = Ballot(1, b"p")
    batch: list[Any] = [
        [a, encode_message(Accept(ballot, signed(n, 1), True))]
        for a, n in zip(addresses, names, strict=True)
    ]
    batch.append([addresses[0], encode_message(Inspect())])
    batch.append([addresses[1], b"garbage"])
    batch.append([b"short", encode_message(Prepare(ballot))])
    batch.append("not an item")
    forged = sign_register_value(ClientKeys.generate().signing, names[2], signed(names[2], 2))
    batch.append([addresses[2], encode_message(Accept(Ballot(5, b"p"), forged))])
    result = await registry.handlers["kv.paxos_batch"](CALLER, {"batch": batch})
    replies = result["batch"]
    assert len(replies) == len(batch)
    for raw in replies[:5]:
        reply = decode_message(raw)
        assert isinstance(reply, Accepted)
        assert reply.promised_next == ballot.next()
    report = decode_message(replies[5])
    assert isinstance(report, Report)  # before or after the accept: either is durable
    assert replies[6][0] == replies[7][0] == replies[8][0] == "invalid"
    refused = decode_message(replies[9])
    assert isinstance(refused, Reject)
    assert refused.reason is RejectReason.FORBIDDEN
    stats = service.statistics()
    assert stats.invalid_requests == 3
    assert stats.paxos_forbidden == 1
    assert silo.statistics().acceptor_records == 5


@pytest.mark.parametrize("batch", [[], "x", [[b"a" * 32, b""]] * (MAX_PAXOS_BATCH + 1)])
async def test_malformed_batches_are_refused_whole(
    node: tuple[BlockService, Registry, Silo], batch: Any
) -> None:
    _, registry, _ = node
    with pytest.raises(RemoteError) as refused:
        await registry.handlers["kv.paxos_batch"](CALLER, {"batch": batch})
    assert refused.value.code == "invalid"


async def test_inspect_reports_durable_state_and_writes_nothing(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    service, registry, silo = node
    address = register_address(KEYS.signing.public_key, b"r")
    empty = await paxos(registry, address, Inspect())
    assert empty == Report(None, None, None)
    assert silo.statistics().acceptor_records == 0
    value = signed(b"r", 1)
    assert isinstance(await paxos(registry, address, Accept(Ballot(3, b"p"), value)), Accepted)
    writes = service.statistics().paxos_state_writes
    report = await paxos(registry, address, Inspect())
    assert report == Report(Ballot(3, b"p"), Ballot(3, b"p"), value)
    assert service.statistics().paxos_state_writes == writes
    assert service.statistics().paxos_inspections == 2


async def test_the_state_cache_follows_the_silo(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    _, registry, silo = node
    address = register_address(KEYS.signing.public_key, b"cached")
    value = signed(b"cached", 1)
    await paxos(registry, address, Accept(Ballot(2, b"p"), value))
    promised = await paxos(registry, address, Prepare(Ballot(4, b"q")))
    assert promised == Promise(Ballot(4, b"q"), Ballot(2, b"p"), value)
    record = await silo.load_paxos(address)
    assert record is not None
    assert record.value is not None
    assert AcceptorState.from_bytes(record.value) == AcceptorState(
        Ballot(4, b"q"), Ballot(2, b"p"), value
    )
    # A lower ballot is refused from the cached promise, as from the record.
    assert isinstance(await paxos(registry, address, Prepare(Ballot(3, b"z"))), Reject)
    # A new service on the same silo (a restart) answers the same from the record.
    fresh = Registry()
    BlockService(silo, fresh)
    assert await paxos(fresh, address, Inspect()) == Report(Ballot(4, b"q"), Ballot(2, b"p"), value)
    # A large state is read from the silo every time, never kept.
    big_name = b"big"
    big_address = register_address(KEYS.signing.public_key, big_name)
    big = sign_register_value(
        KEYS.signing, big_name, RegisterValue(1, REPLICAS, os.urandom(200_000))
    )
    await paxos(registry, big_address, Accept(Ballot(1, b"p"), big))
    assert (await paxos(registry, big_address, Inspect())).value == big


class GatedSilo:
    """A silo whose acceptor saves and loads can be held at a gate (to order races)."""

    def __init__(self, silo: Silo) -> None:
        self.silo = silo
        self.save_gate: trio.Event | None = None
        self.load_gate: trio.Event | None = None
        self.saved = trio.Event()

    async def save_paxos(self, address: BlockAddress, record: AcceptorRecord) -> None:
        """Wait at the save gate, then save."""
        if self.save_gate is not None:
            await self.save_gate.wait()
        await self.silo.save_paxos(address, record)
        self.saved.set()

    async def load_paxos(self, address: BlockAddress) -> AcceptorRecord | None:
        """Read now, but return only once the load gate opens (a slow read)."""
        record = await self.silo.load_paxos(address)
        if self.load_gate is not None:
            await self.load_gate.wait()
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.silo, name)


async def test_an_inspection_racing_a_save_never_leaves_an_older_state_cached(
    tmp_path: Path,
) -> None:
    async with await Silo.open(tmp_path / "silo", capacity_bytes=1 << 30) as real:
        silo = GatedSilo(real)
        registry = Registry()
        BlockService(cast(Silo, silo), registry)
        address = register_address(KEYS.signing.public_key, b"raced")
        first, second = signed(b"raced", 1), signed(b"raced", 2)
        await paxos(registry, address, Accept(Ballot(1, b"p"), first))
        silo.save_gate, silo.load_gate = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            # The accept drops the cached state and waits to save; the inspection then
            # reads the record as it still is, and answers only after the save.
            nursery.start_soon(paxos, registry, address, Accept(Ballot(2, b"p"), second))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(paxos, registry, address, Inspect())
            await trio.testing.wait_all_tasks_blocked()
            silo.saved = trio.Event()
            silo.save_gate.set()
            await silo.saved.wait()
            await trio.testing.wait_all_tasks_blocked()  # the accept has answered
            silo.load_gate.set()
        silo.save_gate = silo.load_gate = None
        promised = await paxos(registry, address, Prepare(Ballot(5, b"q")))
        assert promised == Promise(Ballot(5, b"q"), Ballot(2, b"p"), second)


def tombstone(name: bytes, version: int) -> RegisterValue:
    """A signed tombstone of register ``name``."""
    return sign_register_value(KEYS.signing, name, RegisterValue(version, REPLICAS, None))


async def collect(
    registry: Registry, address: bytes, ballot: Ballot, *, promise_only: bool = False
) -> Any:
    """Ask the service to collect the tombstone of ``address`` accepted at ``ballot``."""
    return await registry.handlers["kv.collect"](
        CALLER, {"address": address, "ballot": ballot.to_wire(), "promise_only": promise_only}
    )


async def test_a_collected_tombstone_leaves_a_promise_floor_that_survives_a_restart(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    service, registry, silo = node
    name = b"gone"
    address = register_address(KEYS.signing.public_key, name)
    assert isinstance(
        await paxos(registry, address, Accept(Ballot(1, b"p"), signed(name, 1))), Accepted
    )
    assert isinstance(
        await paxos(registry, address, Accept(Ballot(4, b"p"), tombstone(name, 2))), Accepted
    )
    assert await collect(registry, address, Ballot(4, b"p")) == {"collected": True}
    assert await silo.load_paxos(address) is None
    assert service.statistics().tombstones_collected == 1
    # A proposer that prepared before the tombstone cannot get the old value accepted again.
    late = await paxos(registry, address, Accept(Ballot(3, b"q"), signed(name, 1)))
    assert isinstance(late, Reject)
    assert late.promised == Ballot(4, b"p")
    assert await silo.load_paxos(address) is None
    # The floor is node-wide and durable: a new service on the same silo keeps it.
    registry = Registry()
    BlockService(silo, registry)
    other = register_address(KEYS.signing.public_key, b"never-seen")
    assert isinstance(await paxos(registry, other, Prepare(Ballot(2, b"q"))), Reject)
    report = await paxos(registry, address, Inspect())
    assert report == Report(Ballot(4, b"p"), None, None)
    fresh = await paxos(registry, address, Prepare(Ballot(5, b"q")))
    assert fresh == Promise(Ballot(5, b"q"), None, None)


async def test_collect_keeps_a_register_that_lives_again_or_another_value(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    service, registry, silo = node
    name = b"back"
    address = register_address(KEYS.signing.public_key, name)
    await paxos(registry, address, Accept(Ballot(2, b"p"), tombstone(name, 2)))
    await paxos(registry, address, Accept(Ballot(3, b"p"), signed(name, 3)))
    assert await collect(registry, address, Ballot(2, b"p")) == {"collected": False}
    assert await collect(registry, address, Ballot(3, b"p")) == {"collected": False}
    assert await silo.load_paxos(address) is not None
    assert service.statistics().tombstones_collected == 0


async def test_collect_drops_an_older_value_of_a_retired_holder(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    _, registry, silo = node
    name = b"stale"
    address = register_address(KEYS.signing.public_key, name)
    await paxos(registry, address, Accept(Ballot(1, b"p"), signed(name, 1)))
    assert await collect(registry, address, Ballot(5, b"p")) == {"collected": True}
    assert await silo.load_paxos(address) is None
    at_floor = await paxos(registry, address, Accept(Ballot(5, b"p"), signed(name, 1)))
    assert isinstance(at_floor, Accepted)  # at the floor itself: the decided ballot's own value
    assert isinstance(
        await paxos(registry, address, Accept(Ballot(4, b"q"), signed(name, 1))), Reject
    )


@pytest.mark.parametrize("ballot", [None, "x", [1], [1, 2, 3], [1, None], [-1, b"p"]])
async def test_collect_refuses_a_bad_ballot(
    node: tuple[BlockService, Registry, Silo], ballot: Any
) -> None:
    _, registry, _ = node
    address = register_address(KEYS.signing.public_key, b"r")
    with pytest.raises(RemoteError) as raised:
        await registry.handlers["kv.collect"](CALLER, {"address": address, "ballot": ballot})
    assert raised.value.code == "invalid"


async def test_collect_on_an_empty_acceptor_raises_its_floor(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    """A member holding nothing is told too: a late accept of an old value cannot land."""
    _, registry, silo = node
    name = b"elsewhere"
    address = register_address(KEYS.signing.public_key, name)
    assert await collect(registry, address, Ballot(6, b"p")) == {"collected": True}
    assert await silo.load_paxos(address) is None
    late = await paxos(registry, address, Accept(Ballot(5, b"q"), signed(name, 1)))
    assert isinstance(late, Reject)
    assert await collect(registry, address, Ballot(3, b"p")) == {"collected": True}
    assert isinstance(await paxos(registry, address, Prepare(Ballot(6, b"q"))), Promise)


async def test_lone_promises_equal_to_the_floor_are_still_dropped(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    _, registry, silo = node
    first, second = (register_address(KEYS.signing.public_key, n) for n in (b"x", b"y"))
    for address in (first, second):
        assert isinstance(await paxos(registry, address, Prepare(Ballot(1, b"g"))), Promise)
    assert await collect(registry, first, Ballot(1, b"g")) == {"collected": True}
    assert await collect(registry, second, Ballot(1, b"g")) == {"collected": True}
    assert await silo.load_paxos(second) is None


async def test_a_promise_at_the_floor_is_saved_as_the_records_own(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    _, registry, silo = node
    gone, other = (register_address(KEYS.signing.public_key, n) for n in (b"gone", b"other"))
    await paxos(registry, gone, Prepare(Ballot(7, b"p")))
    await collect(registry, gone, Ballot(7, b"p"))
    assert isinstance(await paxos(registry, other, Prepare(Ballot(7, b"p"))), Promise)
    record = await silo.load_paxos(other)  # durable even if the floor were not
    assert record is not None
    assert record.value is not None
    assert AcceptorState.from_bytes(record.value).promised == Ballot(7, b"p")


async def test_a_promise_only_collect_never_drops_an_accepted_value(
    node: tuple[BlockService, Registry, Silo],
) -> None:
    _, registry, silo = node
    name = b"accepted"
    address = register_address(KEYS.signing.public_key, name)
    await paxos(registry, address, Accept(Ballot(3, b"p"), tombstone(name, 2)))
    reply = await collect(registry, address, Ballot(3, b"p"), promise_only=True)
    assert reply == {"collected": False}
    assert await silo.load_paxos(address) is not None


class OwnRegistry(Registry):
    """A registry that, like ``RpcNode``, knows the id of the node it serves."""

    def __init__(self, node_id: NodeId) -> None:
        super().__init__()
        self.node_id = node_id


async def test_only_this_nodes_own_puts_skip_the_address_check(tmp_path: Path) -> None:
    """A replica put by the node's own client (in-process) is not hashed again; from any
    other caller, bytes that do not hash to their address are refused and not stored."""
    own = Contact(NodeId(b"o" * 20), Address("127.0.0.1", 2), b"o" * 32)
    payload = os.urandom(70_000)
    wrong = BlockAddress(bytes(32))
    async with await Silo.open(tmp_path / "silo", capacity_bytes=1 << 30) as silo:
        registry = OwnRegistry(own.node_id)
        BlockService(silo, registry)
        put = registry.handlers["kv.put"]
        with pytest.raises(RemoteError) as refused:
            await put(CALLER, {"address": wrong, "payload": payload, "replicas": 3})
        assert refused.value.code == "invalid"
        with pytest.raises(NotFound):
            await silo.get_block(wrong)
        assert await put(own, {"address": wrong, "payload": payload, "replicas": 3}) == {
            "stored": True
        }
        assert await silo.get_block(wrong) == payload
