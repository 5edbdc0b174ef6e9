"""The RPC layer over real loopback TCP."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from dht.contracts import HandlerRegistry, RemoteCaller
from dht.errors import PeerUnreachable, RemoteError, RpcTimeout
from dht.identity import NetworkDescriptor, NodeIdentity
from dht.ids import Address, Contact, NodeId
from dht.rpc import RpcNode
from dht.transport import establish
from tests.dht_strategies import Member, make_member, make_network


def node(m: Member, **kwargs: Any) -> RpcNode:
    return RpcNode(m.identity, m.passport, m.network, **kwargs)


@asynccontextmanager
async def running(*nodes: RpcNode) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        yield
        for n in nodes:
            await n.aclose()


def cluster(count: int, **kwargs: Any) -> tuple[NodeIdentity, NetworkDescriptor, list[RpcNode]]:
    owner, network = make_network()
    return owner, network, [node(make_member(owner, network), **kwargs) for _ in range(count)]


async def echo(caller: Contact, args: Any) -> Any:
    return args


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (state of another node, which offers no event to wait on)."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


def test_rpc_node_implements_the_contracts() -> None:
    _, _, (a,) = cluster(1)
    caller: RemoteCaller = a
    registry: HandlerRegistry = a
    assert caller is a
    assert registry is a


async def test_call_round_trips_msgpack_and_bytes_and_sees_the_caller() -> None:
    _, _, (a, b) = cluster(2)
    seen: list[Contact] = []

    async def whoami(caller: Contact, args: Any) -> Any:
        seen.append(caller)
        return {"args": args, "blob": b"\x00\xff" * 10}

    b.register("whoami", whoami)
    with pytest.raises(ValueError, match="already registered"):
        b.register("whoami", whoami)
    async with running(a, b):
        result = await a.call(b.contact, "whoami", [1, "two", b"three", None], timeout=5)
        assert result == {"args": [1, "two", b"three", None], "blob": b"\x00\xff" * 10}
        assert seen == [a.contact]  # authenticated id, key and declared listen address
        stats = a.statistics()
        assert (stats.calls_succeeded, stats.connections_dialled) == (1, 1)
        assert b.statistics().requests_served == 1


async def test_large_payloads_pass_intact() -> None:
    _, _, (a, b) = cluster(2)
    b.register("echo", echo)
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
    async with running(a, b):
        assert await a.call(b.contact, "echo", payload, timeout=10) == payload
        # large binaries nested in arguments travel uncopied but arrive as plain bytes
        view = memoryview(payload)[1:300_001]
        nested = {"address": b"\x01" * 32, "chunks": [view, b"small", 7], "blob": view}
        got = await a.call(b.contact, "echo", nested, timeout=10)
        assert got == {
            "address": b"\x01" * 32,
            "chunks": [bytes(view), b"small", 7],
            "blob": bytes(view),
        }
        assert type(got["blob"]) is bytes


async def test_many_concurrent_calls_share_one_connection() -> None:
    _, _, (a, b) = cluster(2, max_in_flight=8)
    active = 0
    peak = 0

    async def slow_echo(caller: Contact, args: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.001)
        active -= 1
        return args

    b.register("echo", slow_echo)
    results: list[Any] = []
    async with running(a, b):

        async def one(i: int) -> None:
            results.append(await a.call(b.contact, "echo", i, timeout=10))

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
        assert sorted(results) == list(range(300))
        assert (len(a.connections()), len(b.connections())) == (1, 1)
        assert 1 < peak <= 8  # back-pressure: never more than max_in_flight at once
        assert a.connections()[0].messages_sent == 300


async def test_timeout_raises_rpc_timeout_and_connection_stays_usable() -> None:
    _, _, (a, b) = cluster(2)
    finished = trio.Event()

    async def sleepy(caller: Contact, args: Any) -> Any:
        try:
            await trio.sleep(args)
        finally:
            finished.set()
        return "late"

    b.register("sleepy", sleepy)
    b.register("echo", echo)
    async with running(a, b):
        with pytest.raises(RpcTimeout):
            await a.call(b.contact, "sleepy", 10, timeout=0.2)
        # the timeout travelled with the request: the handler was cancelled as well
        with trio.fail_after(2):
            await finished.wait()
        assert await a.call(b.contact, "echo", "ok", timeout=5) == "ok"
        assert a.statistics().calls_timed_out == 1


async def test_remote_errors_are_typed_and_handler_crashes_are_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, (a, b) = cluster(2)

    async def not_found(caller: Contact, args: Any) -> Any:
        raise RemoteError("not_found", "no such block", {"address": b"\x01" * 32})

    async def crash(caller: Contact, args: Any) -> Any:
        raise ZeroDivisionError("oops")

    b.register("get", not_found)
    b.register("crash", crash)
    b.register("echo", echo)
    async with running(a, b):
        with pytest.raises(RemoteError) as info:
            await a.call(b.contact, "get", None, timeout=5)
        assert (info.value.code, info.value.message) == ("not_found", "no such block")
        assert info.value.detail == {"address": b"\x01" * 32}
        with caplog.at_level(logging.ERROR, "dht.rpc"), pytest.raises(RemoteError) as info:
            await a.call(b.contact, "crash", None, timeout=5)
        assert info.value.code == "internal"
        assert "oops" not in info.value.message  # details stay in the server's log
        assert "ZeroDivisionError" in caplog.text
        with pytest.raises(RemoteError) as info:
            await a.call(b.contact, "nope", None, timeout=5)
        assert info.value.code == "no_such_method"
        assert await a.call(b.contact, "echo", 1, timeout=5) == 1  # the server carries on
        assert b.statistics().handler_errors == 1


async def test_cancelled_call_sends_nothing_more_and_reply_is_dropped() -> None:
    _, _, (a, b) = cluster(2)
    release = trio.Event()
    started = trio.Event()

    async def blocked(caller: Contact, args: Any) -> Any:
        started.set()
        await release.wait()
        return "too late"

    b.register("blocked", blocked)
    b.register("echo", echo)
    async with running(a, b):
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(a.call, b.contact, "blocked", None, timeout=30)
                )
                await started.wait()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert a.statistics().calls_in_flight == 0
        release.set()  # the late reply arrives and is discarded
        assert await a.call(b.contact, "echo", "next", timeout=5) == "next"
        assert len(a.connections()) == 1


async def test_reconnect_after_peer_restart() -> None:
    owner, network = make_network()
    member_b = make_member(owner, network)
    a = node(make_member(owner, network))
    b = node(member_b)
    b.register("echo", echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        port = (await nursery.start(b.run)).port
        contact = b.contact
        assert await a.call(contact, "echo", 1, timeout=5) == 1
        await b.aclose()
        with pytest.raises(PeerUnreachable):
            await a.call(contact, "echo", 2, timeout=5)
        restarted = node(member_b, listen_port=port)
        restarted.register("echo", echo)
        await nursery.start(restarted.run)
        assert await a.call(contact, "echo", 3, timeout=5) == 3
        assert a.statistics().connections_dialled == 2
        await restarted.aclose()
        await a.aclose()


async def test_stranger_is_refused_and_never_reaches_a_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, (a,) = cluster(1)
    rogue_owner, rogue_network = make_network()  # same name "testnet", other owner
    stranger = node(make_member(rogue_owner, rogue_network))
    calls: list[Contact] = []

    async def record(caller: Contact, args: Any) -> Any:
        calls.append(caller)
        return "secret"

    a.register("record", record)
    caplog.set_level(logging.WARNING, "dht.transport")
    async with running(a, stranger):
        with pytest.raises(PeerUnreachable):
            await stranger.call(a.contact, "record", None, timeout=5)
        await wait_until(lambda: a.statistics().handshakes_failed == 1)
    assert calls == []
    assert "127.0.0.1:" in caplog.text
    assert "another network" in caplog.text
    assert "refused the handshake (network)" in caplog.text  # what the stranger was told


async def test_node_refusing_a_role_tells_the_caller_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner, network = make_network()
    storage = node(make_member(owner, network), accepted_roles=frozenset({"storage"}))
    client = node(make_member(owner, network, role="client"))
    storage.register("echo", echo)
    caplog.set_level(logging.WARNING, "dht")
    async with running(storage, client):
        # the client completes its side of the handshake, then reads the refusal
        with pytest.raises(PeerUnreachable, match=r"refused the handshake \(role\)"):
            await client.call(storage.contact, "echo", 1, timeout=5)
        await wait_until(lambda: storage.statistics().handshakes_failed == 1)
        assert client.statistics().handshakes_failed == 1
        assert storage.statistics().requests_served == 0
    assert "role 'client' is not accepted here" in caplog.text  # the details, on our side
    assert f"connection to {storage.contact.address} refused" in caplog.text


async def test_wrong_node_at_address_is_unreachable() -> None:
    _, _, (a, b) = cluster(2)
    b.register("echo", echo)
    async with running(a, b):
        impostor = Contact(NodeId(b"\x01" * 20), b.contact.address)
        with pytest.raises(PeerUnreachable, match="expected node"):
            await a.call(impostor, "echo", 1, timeout=5)
        # bootstrap by address only: any member of the network is accepted
        assert await a.call(Contact(NodeId(b""), b.contact.address), "echo", 2, timeout=5) == 2


async def test_nobody_listening_is_unreachable() -> None:
    _, _, (a,) = cluster(1)
    async with running(a):
        dead = Contact(NodeId(b"\x02" * 20), Address("127.0.0.1", 1))
        with pytest.raises(PeerUnreachable):
            await a.call(dead, "echo", 1, timeout=5)
        assert a.statistics().calls_unreachable == 1


async def test_simultaneous_dials_converge_on_one_connection() -> None:
    _, _, (a, b) = cluster(2)
    a.register("echo", echo)
    b.register("echo", echo)
    async with running(a, b):
        results: list[Any] = []

        async def call(x: RpcNode, y: RpcNode, value: int) -> None:
            results.append(await x.call(y.contact, "echo", value, timeout=5))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(call, a, b, i)
                nursery.start_soon(call, b, a, 100 + i)
        assert sorted(results) == sorted([*range(20), *range(100, 120)])
        # both dialled at once (two connections), then drained one of them
        assert a.statistics().connections_dialled == b.statistics().connections_dialled == 1
        await wait_until(lambda: len(a.connections()) == 1 and len(b.connections()) == 1)
        # and the survivor is the same TCP connection seen from both ends
        assert a.connections()[0].initiated_by_us != b.connections()[0].initiated_by_us
        assert await a.call(b.contact, "echo", "after", timeout=5) == "after"


async def test_call_to_self_runs_locally() -> None:
    _, _, (a,) = cluster(1)
    a.register("echo", echo)
    async with running(a):
        assert await a.call(a.contact, "echo", (1, b"x"), timeout=5) == [1, b"x"]
        with pytest.raises(RemoteError, match="no_such_method"):
            await a.call(a.contact, "missing", None, timeout=5)
    assert a.connections() == []


async def test_call_to_self_hands_large_binaries_over_with_wire_semantics() -> None:
    _, _, (a,) = cluster(1)
    seen: list[Any] = []

    async def keep(caller: Contact, args: Any) -> Any:
        seen.append(args)
        return {"payload": args["blob"], "n": 1}

    a.register("keep", keep)
    big = bytes(range(256)) * 1024  # 256 KiB
    mutable = bytearray(big)
    ext = msgpack.ExtType(0x5B, b"not one of ours")
    async with running(a):
        got = await a.call(
            a.contact, "keep", {"blob": big, "more": (mutable, ext, b"s")}, timeout=5
        )
    (args,) = seen
    assert args == {"blob": big, "more": [big, ext, b"s"]}
    assert args["blob"] is big  # immutable: shared, not copied
    assert type(args["more"][0]) is bytes  # a mutable buffer arrives as a copy
    mutable[0] ^= 0xFF
    assert args["more"][0] == big
    assert got == {"payload": big, "n": 1}
    assert type(got["payload"]) is bytes


async def test_call_before_run_is_unreachable() -> None:
    _, _, (a, b) = cluster(2)
    with pytest.raises(PeerUnreachable, match="not running"):
        await a.call(Contact(b.node_id, Address("127.0.0.1", 1)), "echo", 1, timeout=1)


async def _linked(a: RpcNode, b: RpcNode) -> None:
    """Connect two running nodes through an in-memory stream instead of TCP."""
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(a.connect_stream, left, initiator=True))
        nursery.start_soon(functools.partial(b.connect_stream, right, initiator=False))


async def test_timeouts_in_virtual_time_over_memory_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, _, (a, b) = cluster(2)
    cancelled: list[float] = []

    async def sleepy(caller: Contact, seconds: Any) -> Any:
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise
        return seconds

    b.register("sleepy", sleepy)
    async with running(a, b):
        await _linked(a, b)
        assert a.connections()[0].remote == "<StapledStream>"
        start = trio.current_time()
        with pytest.raises(RpcTimeout):
            await a.call(b.contact, "sleepy", 1000, timeout=30)
        assert trio.current_time() - start == pytest.approx(30, abs=0.01)
        # the deadline travelled with the request: the handler was cancelled then too
        assert cancelled
        assert cancelled[0] - start == pytest.approx(30, abs=0.01)

        # calls with different deadlines, in flight together, each end at its own
        ended: dict[float, float] = {}

        async def timed(timeout: float) -> None:
            begin = trio.current_time()
            with pytest.raises(RpcTimeout):
                await a.call(b.contact, "sleepy", 1000, timeout=timeout)
            ended[timeout] = trio.current_time() - begin

        async with trio.open_nursery() as nursery:
            for timeout in (50.0, 10.0, 30.0, 5.0):
                nursery.start_soon(timed, timeout)
        assert ended == pytest.approx({50.0: 50.0, 10.0: 10.0, 30.0: 30.0, 5.0: 5.0}, abs=0.01)
        assert await a.call(b.contact, "sleepy", 2, timeout=30) == 2
        assert a.statistics().calls_timed_out == 5
        assert a.statistics().connections_dialled == 0  # everything went over the memory link


@pytest.mark.parametrize("attack", ["tamper", "replay"])
async def test_tampered_or_replayed_frames_close_the_connection(
    attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, (a, b) = cluster(2)
    handled: list[Any] = []

    async def record(caller: Contact, args: Any) -> Any:
        handled.append(args)
        return args

    b.register("record", record)
    a_side, relay_a = trio.testing.memory_stream_pair()
    relay_b, b_side = trio.testing.memory_stream_pair()
    armed = False
    seen: list[bytes] = []

    async def relay(src: trio.abc.Stream, dst: trio.abc.Stream, attack_here: bool) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await relay_once(src, dst, attack_here)

    async def relay_once(src: trio.abc.Stream, dst: trio.abc.Stream, attack_here: bool) -> None:
        nonlocal armed
        while data := await src.receive_some():
            if attack_here and armed:
                # flip the last bit, or replay the previous chunk (whole frames) first
                flipped = data[:-1] + bytes([data[-1] ^ 1])
                data = flipped if attack == "tamper" else seen[-1] + data
                armed = False
            seen.append(bytes(data))
            await dst.send_all(data)
        await dst.aclose()

    caplog.set_level(logging.WARNING, "dht.rpc")
    async with running(a, b), trio.open_nursery() as nursery:
        nursery.start_soon(relay, relay_a, relay_b, True)
        nursery.start_soon(relay, relay_b, relay_a, False)
        async with trio.open_nursery() as link:
            link.start_soon(functools.partial(a.connect_stream, a_side, initiator=True))
            link.start_soon(functools.partial(b.connect_stream, b_side, initiator=False))
        assert await a.call(b.contact, "record", "genuine", timeout=5) == "genuine"
        armed = True
        with pytest.raises(PeerUnreachable):
            await a.call(b.contact, "record", "attacked", timeout=5)
        nursery.cancel_scope.cancel()
    assert handled == ["genuine"]  # nothing of the attacked stream reached the handler
    assert "closing connection to <StapledStream>: frame failed authentication" in caplog.text
    assert b.statistics().protocol_errors == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",
        msgpack.packb({"kind": 0}),
        msgpack.packb([]),
        msgpack.packb([9]),
        msgpack.packb([1, [1], None]),
        msgpack.packb([0, "id", "echo", None, 1000]),
        msgpack.packb([0, 1, "echo", None, float("nan")]),
        msgpack.packb([0, 1, b"echo", None, 1000]),
    ],
)
async def test_authenticated_peer_sending_garbage_is_disconnected(garbage: bytes) -> None:
    owner, network, (b,) = cluster(1)
    b.register("echo", echo)
    member = make_member(owner, network)
    async with running(b):
        left, right = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(b.connect_stream, right, initiator=False))
            peer = await establish(
                left,
                member.identity,
                member.passport,
                network,
                initiator=True,
                listen_address=Address("127.0.0.1", 1),
            )
        await peer.send_message(garbage)
        assert await peer.receive_message() is None  # b ended the stream
        await wait_until(lambda: b.statistics().protocol_errors == 1)
        assert b.connections() == []
        await peer.aclose()
