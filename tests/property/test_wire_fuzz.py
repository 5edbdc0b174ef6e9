"""Garbage in, protocol error out: the handshake and frame decoder never fail otherwise.

As h11's fuzz invariant: whatever bytes a peer sends, in whatever pieces, the codecs either
make progress (NEED_DATA, an event, a message) or raise a ``ProtocolError`` subclass; and a
message is only ever delivered if it is exactly one the encoder produced.
"""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht.errors import ProtocolError
from dht.framing import NEED_DATA, FrameDecoder, FrameEncoder
from dht.handshake import Handshake, HandshakeComplete
from dht.ids import Address
from tests.dht_strategies import (
    Member,
    chunk_sizes,
    garbage,
    make_member,
    make_network,
    messages,
    split,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = bytes(range(32))
ADDRESS = Address("127.0.0.1", 7000)


@cache
def pair() -> tuple[Member, Member]:
    owner, network = make_network()
    return make_member(owner, network), make_member(owner, network)


def handshake(member: Member, *, initiator: bool) -> Handshake:
    return Handshake(
        member.identity,
        member.passport,
        member.network,
        initiator=initiator,
        listen_address=ADDRESS,
    )


def feed_handshake(hs: Handshake, chunks: list[bytes]) -> None:
    """Feed chunks; only NEED_DATA, completion or a ProtocolError may come out."""
    try:
        for chunk in chunks:
            hs.receive_data(chunk)
            event = hs.next_event()
            if isinstance(event, HandshakeComplete):
                return
            assert event is NEED_DATA
    except ProtocolError:
        return


@FUZZ
@given(data=garbage, sizes=chunk_sizes, initiator=st.booleans())
def test_garbage_into_the_handshake_is_only_a_protocol_error(
    data: bytes, sizes: list[int], initiator: bool
) -> None:
    a, _ = pair()
    feed_handshake(handshake(a, initiator=initiator), split(data, sizes))


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0), sizes=chunk_sizes
)
def test_truncated_or_corrupted_genuine_handshake_is_only_a_protocol_error(
    cut: int, flip: int, sizes: list[int]
) -> None:
    a, b = pair()
    initiator, responder = handshake(a, initiator=True), handshake(b, initiator=False)
    hello = initiator.data_to_send()
    responder.receive_data(hello)
    assert responder.next_event() is NEED_DATA
    flight = bytearray(responder.data_to_send()[:cut])
    if flight:
        flight[flip % len(flight)] ^= 1 << (flip % 8)
    feed_handshake(initiator, split(bytes(flight), sizes))


@FUZZ
@given(data=garbage, sizes=chunk_sizes)
def test_garbage_into_the_frame_decoder_is_only_a_protocol_error(
    data: bytes, sizes: list[int]
) -> None:
    encoder = FrameEncoder(KEY)
    decoder = FrameDecoder(KEY, encoder.header, max_message_size=4096)
    try:
        for chunk in split(data, sizes):
            decoder.receive_data(chunk)
            while isinstance(decoder.next_message(), memoryview):
                raise AssertionError("garbage decoded into a message")
    except ProtocolError:
        pass


@FUZZ
@given(batch=messages, sizes=chunk_sizes, flip=st.integers(min_value=0), cut=st.integers(0, 10**6))
def test_frames_round_trip_and_corruption_never_yields_a_wrong_message(
    batch: list[bytes], sizes: list[int], flip: int, cut: int
) -> None:
    encoder = FrameEncoder(KEY)
    wire = encoder.encode_bytes(*batch)

    decoder = FrameDecoder(KEY, encoder.header)
    got: list[bytes] = []
    for chunk in split(wire, sizes):
        decoder.receive_data(chunk)
        while isinstance(message := decoder.next_message(), memoryview):
            got.append(bytes(message))
    assert got == batch

    # the same through the zero-copy path (receive straight into the decoder's buffer)
    decoder = FrameDecoder(KEY, encoder.header)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        room = decoder.get_buffer()
        n = min(len(room), sizes[i % len(sizes)] * 37, len(wire) - pos)
        room[:n] = wire[pos : pos + n]
        decoder.buffer_filled(n)
        pos, i = pos + n, i + 1
        while isinstance(message := decoder.next_message(), memoryview):
            got.append(bytes(message))
    assert got == batch

    corrupted = bytearray(wire[: cut % (len(wire) + 1)])
    if corrupted:
        corrupted[flip % len(corrupted)] ^= 1 << (flip % 8)
    decoder = FrameDecoder(KEY, encoder.header)
    got = []
    try:
        for chunk in split(bytes(corrupted), sizes):
            decoder.receive_data(chunk)
            while isinstance(message := decoder.next_message(), memoryview):
                got.append(bytes(message))
    except ProtocolError:
        pass
    assert got == batch[: len(got)]  # a prefix of the genuine messages, nothing else


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(1, 64), st.integers(4096, 300_000)), min_size=1, max_size=20
    ).filter(lambda sizes: sum(sizes) >= 20_000),
    small=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
)
def test_large_messages_through_the_receive_buffer_in_any_pieces(
    sizes: list[int], small: list[int]
) -> None:
    encoder = FrameEncoder(KEY)
    big = bytes(range(256)) * 10_000  # ~2.4 MiB: three frames
    batch = [bytes([n % 251]) * n for n in small] + [big] + [b"after"]
    wire = encoder.encode_bytes(*batch)
    decoder = FrameDecoder(KEY, encoder.header)
    got: list[bytes] = []
    pos, i = 0, 0
    while pos < len(wire):
        room = decoder.get_buffer()
        assert len(room) > 0
        n = min(len(room), sizes[i % len(sizes)], len(wire) - pos)
        room[:n] = wire[pos : pos + n]
        decoder.buffer_filled(n)
        pos, i = pos + n, i + 1
        while isinstance(message := decoder.next_message(), memoryview):
            got.append(bytes(message))
    assert got == batch
