"""SecureStream over real connected sockets (receiving straight into the decoder) and its edges."""

from __future__ import annotations

import pytest
import trio

from dht import transport
from dht.framing import Message
from dht.ids import Address
from dht.transport import SecureStream, establish
from tests.dht_strategies import make_member, make_network

ADDRESS = Address("127.0.0.1", 7000)


async def socket_pair() -> tuple[SecureStream, SecureStream]:
    """Return two authenticated ends of a connected (unix) stream socket pair."""
    owner, network = make_network()
    a, b = make_member(owner, network), make_member(owner, network)
    left_sock, right_sock = trio.socket.socketpair()
    ends: dict[str, SecureStream] = {}

    async def side(name: str, sock: trio.socket.SocketType, initiator: bool) -> None:
        member = a if initiator else b
        ends[name] = await establish(
            trio.SocketStream(sock),
            member.identity,
            member.passport,
            member.network,
            initiator=initiator,
            listen_address=ADDRESS,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "left", left_sock, True)
        nursery.start_soon(side, "right", right_sock, False)
    return ends["left"], ends["right"]


async def send_until_it_fails(stream: SecureStream) -> None:
    """Send 1 MiB messages until an error (the first may land in the socket buffers)."""
    for _ in range(1000):
        await stream.send_message(bytes(1 << 20))
    raise AssertionError("sending never failed")


async def receive_bytes(stream: SecureStream) -> bytes | None:
    message = await stream.receive_message()
    return None if message is None else bytes(message)


async def test_messages_of_every_size_cross_both_ways_at_once() -> None:
    left, right = await socket_pair()
    assert left._recv_into is not None  # the socket receives into the decoder's buffer
    huge = bytes(range(256)) * (5 * 4096)  # 5 MiB: encrypted in a worker thread
    assert len(huge) >= transport.CRYPTO_THREAD_THRESHOLD
    batches: list[list[Message]] = [
        [b"a"],
        [b"", b"bc"],
        [bytes(300_000)],
        [huge, b"after"],
        [[b"x" * 70_000, huge]],  # one message in two parts
    ]
    expected = [b"a", b"", b"bc", bytes(300_000), huge, b"after", b"x" * 70_000 + huge]

    async def send(stream: SecureStream) -> None:
        for batch in batches:
            await stream.send_messages(batch)
        await stream.send_final()

    async def receive(stream: SecureStream, got: list[bytes]) -> None:
        while (message := await receive_bytes(stream)) is not None:
            got.append(message)

    got_left: list[bytes] = []
    got_right: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, left)
        nursery.start_soon(send, right)
        nursery.start_soon(receive, left, got_left)
        nursery.start_soon(receive, right, got_right)
    assert got_left == got_right == expected
    assert left.statistics().sent.messages == len(expected)
    await left.aclose()
    await right.aclose()


async def test_cancelled_receive_keeps_the_partial_message() -> None:
    left, right = await socket_pair()
    big = bytes(range(256)) * (3 << 12)  # 3 MiB: three frames
    wire = left._encoder.encode_bytes(big, b"next")
    cut = len(wire) // 2  # in the middle of the second frame
    first_half_sent = trio.Event()
    go_on = trio.Event()

    async def sender() -> None:
        await left.stream.send_all(wire[:cut])
        first_half_sent.set()
        await go_on.wait()
        await left.stream.send_all(wire[cut:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(right.receive_message)  # decrypts a frame, then waits
                await first_half_sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert right._decoder.statistics().frames == 1
        go_on.set()
        assert await receive_bytes(right) == big  # nothing was lost
        assert await receive_bytes(right) == b"next"
    await left.aclose()
    await right.aclose()


async def test_peer_vanishing_mid_message_breaks_the_stream() -> None:
    left, right = await socket_pair()
    frames = left._encoder.encode_bytes(b"y" * 100_000)
    await left.stream.send_all(frames[:-10])  # a frame cut short, then the peer is gone
    await trio.aclose_forcefully(left.stream)
    with pytest.raises(trio.BrokenResourceError, match="closed the connection"):
        await right.receive_message()
    with pytest.raises(trio.BrokenResourceError):
        await send_until_it_fails(right)
    await right.aclose()


async def test_closing_wakes_a_blocked_receiver_and_later_calls_fail() -> None:
    left, right = await socket_pair()

    async def blocked() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await right.receive_message()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await right.send_message(b"late")
    assert await left.receive_message() is None  # aclose ended right's direction cleanly
    await left.aclose()


async def test_a_blocked_sender_is_woken_by_close() -> None:
    left, right = await socket_pair()

    async def blocked() -> None:
        # nobody reads: the socket buffers fill up, then the send waits until the close
        with pytest.raises(trio.ClosedResourceError):
            await send_until_it_fails(left)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(left.stream)
    await right.aclose()
