"""The sans-IO secure frame codec, with byte strings only."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dht import framing
from dht.errors import LocalProtocolError, RemoteProtocolError
from dht.framing import (
    END_OF_STREAM,
    FRAME_OVERHEAD,
    LENGTH_BYTES,
    MAX_CLOSE_REASON,
    MAX_FRAME_PAYLOAD,
    NEED_DATA,
    STREAM_HEADER_BYTES,
    FrameDecoder,
    FrameEncoder,
)

KEY = bytes(range(32))


def pair(**kwargs: int) -> tuple[FrameEncoder, FrameDecoder]:
    encoder = FrameEncoder(KEY)
    return encoder, FrameDecoder(KEY, encoder.header, **kwargs)


def drain(decoder: FrameDecoder) -> list[bytes]:
    out: list[bytes] = []
    while True:
        message = decoder.next_message()
        if message is NEED_DATA:
            return out
        assert isinstance(message, memoryview)
        out.append(bytes(message))


def frames(wire: bytes) -> list[tuple[int, bytes]]:
    """Split wire bytes into (length, ciphertext) frames."""
    out, pos = [], 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">I", wire, pos)
        out.append((length, wire[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def test_frame_layout_is_length_prefix_then_ciphertext() -> None:
    encoder = FrameEncoder(KEY)
    assert len(encoder.header) == STREAM_HEADER_BYTES
    wire = encoder.encode_bytes(b"hello")
    assert wire[:4] == (5 + FRAME_OVERHEAD).to_bytes(4, "big")
    assert len(wire) == LENGTH_BYTES + 5 + FRAME_OVERHEAD == FrameEncoder.wire_size(5)
    assert b"hello" not in wire
    empty = encoder.encode_bytes(b"")
    assert empty[:4] == FRAME_OVERHEAD.to_bytes(4, "big")
    assert len(empty) == 4 + FRAME_OVERHEAD


def test_round_trip_batches_and_empty_messages() -> None:
    encoder, decoder = pair()
    batch: list[bytes | bytearray | memoryview] = [
        b"a",
        b"",
        b"xyz" * 1000,
        bytearray(b"ba"),
        memoryview(b"mv"),
    ]
    decoder.receive_data(encoder.encode_bytes(*batch))
    assert drain(decoder) == [bytes(m) for m in batch]
    stats = decoder.statistics()
    assert (stats.messages, stats.frames) == (5, 5)
    assert encoder.statistics().messages == 5


def test_large_message_is_split_into_1_mib_frames() -> None:
    encoder, decoder = pair()
    message = bytes(range(256)) * (14 * 1024)  # 3.5 MiB
    wire = encoder.encode_bytes(message)
    sizes = [length - FRAME_OVERHEAD for length, _ in frames(wire)]
    assert sizes == [MAX_FRAME_PAYLOAD] * 3 + [len(message) - 3 * MAX_FRAME_PAYLOAD]
    assert len(wire) == FrameEncoder.wire_size(len(message))
    decoder.receive_data(wire)
    assert drain(decoder) == [message]


def test_multi_part_messages_are_one_message_with_frames_at_part_boundaries() -> None:
    encoder, decoder = pair()
    big = memoryview(b"\x05" * (MAX_FRAME_PAYLOAD + 7))
    message: list[bytes | memoryview] = [b"head", big, b"", b"tail"]
    wire = encoder.encode_bytes(message, [b""], (b"x", b"y"))
    expected = FrameEncoder.message_wire_size(message) + FrameEncoder.message_wire_size([b""])
    assert len(wire) == expected + FrameEncoder.message_wire_size((b"x", b"y"))
    assert [length - FRAME_OVERHEAD for length, _ in frames(wire)] == [
        4,
        MAX_FRAME_PAYLOAD,
        7,
        4,
        0,
        1,
        1,
    ]
    decoder.receive_data(wire)
    assert drain(decoder) == [b"head" + bytes(big) + b"tail", b"", b"xy"]


def test_byte_at_a_time_and_partial_frames_need_data() -> None:
    encoder, decoder = pair()
    wire = encoder.encode_bytes(b"one", b"two")
    got: list[bytes] = []
    for i in range(len(wire)):
        decoder.receive_data(wire[i : i + 1])
        got += drain(decoder)
    assert got == [b"one", b"two"]
    assert decoder.buffered == 0


def test_receive_into_buffer_path() -> None:
    encoder, decoder = pair()
    message = b"\x07" * (MAX_FRAME_PAYLOAD + 12345)
    wire = encoder.encode_bytes(b"small", message, b"tail")
    pos, got = 0, []
    while pos < len(wire):
        buf = decoder.get_buffer()
        n = min(len(buf), 70000, len(wire) - pos)
        assert n > 0
        buf[:n] = wire[pos : pos + n]
        decoder.buffer_filled(n)
        pos += n
        got += drain(decoder)
    assert got == [b"small", message, b"tail"]


def test_frames_are_chacha20_poly1305_with_counter_nonces_under_the_header_bound_key() -> None:
    """The wire format, rebuilt independently: key, nonce layout and associated data."""
    encoder = FrameEncoder(KEY)
    wire = encoder.encode_bytes(b"first", b"second")
    key = hashlib.blake2b(
        encoder.header, key=KEY, digest_size=32, person=b"ballast-frames"
    ).digest()
    cipher = ChaCha20Poly1305(key)
    expected = b""
    for counter, (chunk, tag) in enumerate(((b"first", 1), (b"second", 1))):
        head = struct.pack(">IB", len(chunk) + FRAME_OVERHEAD, tag)
        nonce = counter.to_bytes(8, "little") + bytes(4)
        expected += head + cipher.encrypt(nonce, chunk, head)
    assert wire == expected
    other = FrameEncoder(KEY)
    assert other.header != encoder.header
    assert other.encode_bytes(b"first") != wire[: len(wire) - len(b"second") - 22]


def test_tampered_tag_byte_is_refused() -> None:
    """The tag travels in the clear but is authenticated: a message cannot be cut short."""
    encoder, decoder = pair()
    wire = bytearray(encoder.encode_bytes(b"x" * (MAX_FRAME_PAYLOAD + 10)))
    assert wire[4] == framing._TAG_MESSAGE
    wire[4] = framing._TAG_PUSH
    decoder.receive_data(bytes(wire))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        decoder.next_message()


def test_tampered_frame_is_refused_and_decoder_stays_failed() -> None:
    encoder, decoder = pair()
    wire = bytearray(encoder.encode_bytes(b"payload"))
    wire[10] ^= 0x40
    decoder.receive_data(bytes(wire))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        decoder.next_message()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.next_message()


def test_tampered_length_prefix_is_refused() -> None:
    encoder, decoder = pair()
    wire = encoder.encode_bytes(b"payload", b"next")
    length = int.from_bytes(wire[:4], "big")
    forged = (length - 1).to_bytes(4, "big") + wire[4:]
    decoder.receive_data(forged)
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_replayed_frame_is_refused() -> None:
    encoder, decoder = pair()
    first = encoder.encode_bytes(b"transfer 100")
    decoder.receive_data(first)
    assert drain(decoder) == [b"transfer 100"]
    decoder.receive_data(first)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        decoder.next_message()


def test_reordered_and_dropped_frames_are_refused() -> None:
    encoder, decoder = pair()
    encoder.encode_bytes(b"a")  # never delivered
    decoder.receive_data(encoder.encode_bytes(b"b"))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    encoder2, decoder2 = pair()
    parts = frames(encoder2.encode_bytes(b"x" * (2 * MAX_FRAME_PAYLOAD + 1)))
    # drop the middle frame of a three-frame message
    decoder2.receive_data(b"".join(len(c).to_bytes(4, "big") + c for _, c in parts[::2]))
    with pytest.raises(RemoteProtocolError):
        decoder2.next_message()


def test_wrong_key_or_header_is_refused() -> None:
    encoder = FrameEncoder(KEY)
    wire = encoder.encode_bytes(b"secret")
    decoder = FrameDecoder(bytes(32), encoder.header)
    decoder.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    with pytest.raises(RemoteProtocolError, match="header"):
        FrameDecoder(KEY, b"short")
    with pytest.raises(LocalProtocolError):
        FrameEncoder(b"short")


@pytest.mark.parametrize("length", [0, FRAME_OVERHEAD - 1, MAX_FRAME_PAYLOAD + FRAME_OVERHEAD + 1])
def test_frame_length_out_of_bounds_is_refused(length: int) -> None:
    _, decoder = pair()
    decoder.receive_data(length.to_bytes(4, "big") + b"\x00" * 64)
    with pytest.raises(RemoteProtocolError, match="out of bounds"):
        decoder.next_message()


def test_message_size_limit_is_enforced_before_buffering_more() -> None:
    encoder, decoder = pair(max_message_size=MAX_FRAME_PAYLOAD + 10)
    decoder.receive_data(encoder.encode_bytes(b"x" * (MAX_FRAME_PAYLOAD + 10)))
    assert len(drain(decoder)[0]) == MAX_FRAME_PAYLOAD + 10
    decoder.receive_data(encoder.encode_bytes(b"x" * (MAX_FRAME_PAYLOAD + 11)))
    with pytest.raises(RemoteProtocolError, match="longer than the limit"):
        decoder.next_message()


def test_final_frame_ends_the_stream_and_nothing_may_follow() -> None:
    encoder, decoder = pair()
    decoder.receive_data(encoder.encode_bytes(b"last words") + encoder.close())
    assert bytes(decoder.next_message()) == b"last words"  # type: ignore[arg-type]
    assert decoder.next_message() is END_OF_STREAM
    assert decoder.ended
    with pytest.raises(LocalProtocolError):
        encoder.encode(b"more")
    encoder2, decoder2 = pair()
    decoder2.receive_data(encoder2.close() + b"\x00\x00\x00\x11")
    with pytest.raises(RemoteProtocolError, match="after the end"):
        decoder2.next_message()


def raw_frames(encoder: FrameEncoder, *chunks: tuple[bytes, int]) -> bytes:
    """Encrypt (chunk, tag) pairs as frames, tags chosen freely (to forge odd streams)."""
    wire = b""
    for chunk, tag in chunks:
        end = encoder._push(memoryview(chunk), 0, len(chunk), tag, 0)
        wire += bytes(encoder._out.view[:end])
    return wire


def test_final_frame_may_carry_a_short_refusal_reason() -> None:
    encoder, decoder = pair()
    decoder.receive_data(encoder.encode_bytes(b"last") + encoder.close(b"role"))
    assert bytes(decoder.next_message()) == b"last"  # type: ignore[arg-type]
    assert decoder.next_message() is END_OF_STREAM
    assert decoder.close_reason == b"role"
    with pytest.raises(LocalProtocolError, match="at most"):
        FrameEncoder(KEY).close(b"x" * (MAX_CLOSE_REASON + 1))
    final, more = framing._TAG_FINAL, framing._TAG_MESSAGE
    too_long = b"x" * (MAX_CLOSE_REASON + 1)
    for forged in ([(too_long, final)], [(b"part of a message", more), (b"role", final)]):
        encoder, decoder = pair()
        decoder.receive_data(raw_frames(encoder, *forged))
        with pytest.raises(RemoteProtocolError, match="unexpected frame tag"):
            decoder.next_message()


def test_truncated_stream_only_needs_data() -> None:
    encoder, decoder = pair()
    wire = encoder.encode_bytes(b"complete", b"x" * 5000)
    decoder.receive_data(wire[:-1])
    assert drain(decoder) == [b"complete"]
    assert decoder.next_message() is NEED_DATA
