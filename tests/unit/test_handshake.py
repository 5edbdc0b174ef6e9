"""The sans-IO handshake with byte strings, and its trio wrapper over memory streams."""

from __future__ import annotations

import logging

import msgpack
import pytest
import trio
import trio.testing

from dht.errors import HandshakeRefused, LocalProtocolError, RemoteProtocolError
from dht.framing import END_OF_STREAM, NEED_DATA
from dht.handshake import (
    MAX_HANDSHAKE_MESSAGE,
    REFUSAL_REASONS,
    Handshake,
    HandshakeComplete,
    refusal_message,
)
from dht.identity import Passport
from dht.ids import Address
from dht.transport import SecureStream, establish
from tests.dht_strategies import Member, make_member, make_network, seeded

ADDR_I = Address("10.0.0.1", 7001)
ADDR_R = Address("10.0.0.2", 7002)

GOLDEN_FINGERPRINT = "0c979d0d8ddfd0ae1988f5be9857c8b8043f55d8bd7466e93d48001bd9d4c6e9"
GOLDEN_HELLO = (
    "00000077"  # length
    "95c40d62616c6c6173742d68656c6c6f02"  # [b"ballast-hello", 2,
    "c420" + GOLDEN_FINGERPRINT + "c420"  # fingerprint,
    "85788f6e8c1818fd4314b841a87ffb91af60d95aa98338496cd17ba1cbf1532b"  # eph_pk,
    "c420" + "04" * 32  # nonce]
)
GOLDEN_REFUSE_NETWORK = (
    "0000001a"  # length
    "93c40e62616c6c6173742d726566757365"  # [b"ballast-refuse",
    "02a76e6574776f726b"  # 2, "network"]
)


def members() -> tuple[Member, Member]:
    owner, network = make_network()
    return make_member(owner, network), make_member(owner, network, role="client")


def handshakes(a: Member, b: Member, **responder_kwargs: object) -> tuple[Handshake, Handshake]:
    initiator = Handshake(a.identity, a.passport, a.network, initiator=True, listen_address=ADDR_I)
    responder = Handshake(
        b.identity,
        b.passport,
        b.network,
        initiator=False,
        listen_address=ADDR_R,
        **responder_kwargs,  # type: ignore[arg-type]
    )
    return initiator, responder


def pump(initiator: Handshake, responder: Handshake) -> tuple[HandshakeComplete, HandshakeComplete]:
    """Run both sides to completion over an in-memory 'wire'."""
    responder.receive_data(initiator.data_to_send())
    assert responder.next_event() is NEED_DATA
    initiator.receive_data(responder.data_to_send())
    done_i = initiator.next_event()
    assert isinstance(done_i, HandshakeComplete)
    responder.receive_data(initiator.data_to_send())
    done_r = responder.next_event()
    assert isinstance(done_r, HandshakeComplete)
    return done_i, done_r


def test_golden_hello_vector() -> None:
    owner, network = make_network("golden", owner=seeded(1))
    member = make_member(owner, network, identity=seeded(2))
    assert network.fingerprint.hex() == GOLDEN_FINGERPRINT
    hs = Handshake(
        member.identity,
        member.passport,
        network,
        initiator=True,
        listen_address=Address("127.0.0.1", 7000),
        ephemeral_seed=bytes([3]) * 32,
        nonce=bytes([4]) * 32,
    )
    assert hs.data_to_send().hex() == GOLDEN_HELLO
    assert hs.data_to_send() == b""  # handed out once


def test_mutual_authentication_and_keys_agree() -> None:
    a, b = members()
    done_i, done_r = pump(*handshakes(a, b))
    assert done_i.peer.node_id == b.identity.node_id
    assert done_i.peer.listen_address == ADDR_R
    assert done_i.peer.role == "client"
    assert done_r.peer.node_id == a.identity.node_id
    assert done_r.peer.contact.address == ADDR_I
    assert done_r.peer.contact.public_key == a.identity.public_key
    done_r.decoder.receive_data(done_i.encoder.encode_bytes(b"to responder"))
    assert bytes(done_r.decoder.next_message()) == b"to responder"  # type: ignore[arg-type]
    done_i.decoder.receive_data(done_r.encoder.encode_bytes(b"to initiator"))
    assert bytes(done_i.decoder.next_message()) == b"to initiator"  # type: ignore[arg-type]


def test_frames_pipelined_after_auth_reach_the_decoder_only_after_it() -> None:
    a, b = members()
    initiator, responder = handshakes(a, b)
    responder.receive_data(initiator.data_to_send())
    assert responder.next_event() is NEED_DATA
    initiator.receive_data(responder.data_to_send())
    done_i = initiator.next_event()
    assert isinstance(done_i, HandshakeComplete)
    auth = initiator.data_to_send()
    wire = auth + done_i.encoder.encode_bytes(b"early")
    for i in range(len(auth) - 1):  # one byte at a time, all but the last of AUTH
        responder.receive_data(wire[i : i + 1])
        assert responder.next_event() is NEED_DATA
    responder.receive_data(wire[len(auth) - 1 :])  # end of AUTH and the whole frame at once
    done_r = responder.next_event()
    assert isinstance(done_r, HandshakeComplete)
    assert bytes(done_r.decoder.next_message()) == b"early"  # type: ignore[arg-type]


def test_member_of_a_same_named_network_of_another_owner_is_refused() -> None:
    owner, network = make_network("shared-name")
    member = make_member(owner, network)
    rogue_owner, rogue_network = make_network("shared-name")
    stranger = make_member(rogue_owner, rogue_network)
    # it cannot even pretend: its passport does not verify against our descriptor
    with pytest.raises(LocalProtocolError):
        Handshake(
            stranger.identity, stranger.passport, network, initiator=True, listen_address=ADDR_I
        )
    # with its own descriptor, the network fingerprint in HELLO differs
    stranger_hs, responder = handshakes(stranger, member)
    responder.receive_data(stranger_hs.data_to_send())
    with pytest.raises(HandshakeRefused, match="another network"):
        responder.next_event()


def test_auth_with_a_passport_for_another_network_is_refused() -> None:
    owner, network = make_network()
    a, b = make_member(owner, network), make_member(owner, network)
    initiator, responder = handshakes(a, b)
    # the initiator shows a passport for another network (same key, other owner)
    rogue_owner, rogue_network = make_network("elsewhere")
    initiator._passport_bytes = Passport.issue(
        rogue_owner, rogue_network, a.identity.public_key, "storage"
    ).to_bytes()
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    initiator.next_event()
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(HandshakeRefused, match="no valid passport"):
        responder.next_event()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        responder.next_event()


def test_someone_elses_passport_is_refused() -> None:
    owner, network = make_network()
    a, b, c = (make_member(owner, network) for _ in range(3))
    initiator, responder = handshakes(a, b)
    initiator._passport_bytes = c.passport.to_bytes()  # a valid passport, of another node
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    initiator.next_event()
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(HandshakeRefused, match="another node key"):
        responder.next_event()


def _auth_of(wire: bytes) -> tuple[bytes, list[object]]:
    """Return (hello bytes, decoded AUTH) from a responder's first flight."""
    hello_len = 4 + int.from_bytes(wire[:4], "big")
    return wire[:hello_len], msgpack.unpackb(wire[hello_len + 4 :])


def test_wrong_signature_is_refused() -> None:
    a, b = members()
    initiator, responder = handshakes(a, b)
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    hello, auth = _auth_of(responder.data_to_send())
    assert isinstance(auth[6], bytes)
    sig = bytearray(auth[6])
    sig[0] ^= 1
    auth[6] = bytes(sig)
    body = msgpack.packb(auth)
    initiator.receive_data(hello + len(body).to_bytes(4, "big") + body)
    with pytest.raises(HandshakeRefused, match="signature is invalid"):
        initiator.next_event()


def test_changed_listen_address_breaks_the_signature() -> None:
    a, b = members()
    initiator, responder = handshakes(a, b)
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    hello, auth = _auth_of(responder.data_to_send())
    auth[4] = 9999  # the signed listen port
    body = msgpack.packb(auth)
    initiator.receive_data(hello + len(body).to_bytes(4, "big") + body)
    with pytest.raises(HandshakeRefused, match="signature"):
        initiator.next_event()


def test_replayed_auth_from_an_earlier_session_is_refused() -> None:
    a, b = members()
    # a first, recorded session
    first_i, first_r = handshakes(a, b)
    first_r.receive_data(first_i.data_to_send())
    first_r.next_event()
    _, recorded_auth = _auth_of(first_r.data_to_send())
    # an attacker (without b's key) replays b's recorded AUTH in a new session with a
    second_i, second_r = handshakes(a, b)
    second_r.receive_data(second_i.data_to_send())
    second_r.next_event()
    hello, _ = _auth_of(second_r.data_to_send())
    body = msgpack.packb(recorded_auth)
    second_i.receive_data(hello + len(body).to_bytes(4, "big") + body)
    with pytest.raises(HandshakeRefused, match="forged or replayed"):
        second_i.next_event()


def test_reflected_hello_is_refused() -> None:
    a, _ = members()
    initiator = Handshake(a.identity, a.passport, a.network, initiator=True, listen_address=ADDR_I)
    initiator.receive_data(initiator.data_to_send())
    with pytest.raises(RemoteProtocolError, match="reflection"):
        initiator.next_event()


def test_expected_node_id_and_accepted_roles_are_enforced() -> None:
    a, b = members()
    initiator = Handshake(
        a.identity,
        a.passport,
        a.network,
        initiator=True,
        listen_address=ADDR_I,
        expected_node_id=a.identity.node_id,  # wrong on purpose: b answers
    )
    responder = Handshake(b.identity, b.passport, b.network, initiator=False, listen_address=ADDR_R)
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(HandshakeRefused, match="expected node"):
        initiator.next_event()
    # b is a "client": a node that only accepts storage nodes refuses it
    initiator, responder = handshakes(b, a, accepted_roles=frozenset({"storage"}))
    with pytest.raises(HandshakeRefused, match="role 'client'"):
        pump(initiator, responder)


# -- a refused peer is told why -------------------------------------------------------


def test_golden_refuse_vector_and_the_initiator_learns_it_is_in_another_network() -> None:
    owner, network = make_network("shared-name")
    member = make_member(owner, network)
    rogue_owner, rogue_network = make_network("shared-name")
    stranger = make_member(rogue_owner, rogue_network)
    stranger_hs, responder = handshakes(stranger, member)
    responder.receive_data(stranger_hs.data_to_send())
    with pytest.raises(HandshakeRefused, match="another network than 'shared-name'"):
        responder.next_event()  # the details stay here...
    refusal = responder.data_to_send()
    assert refusal.hex() == GOLDEN_REFUSE_NETWORK  # ...the peer gets the fixed reason only
    stranger_hs.receive_data(refusal)
    with pytest.raises(HandshakeRefused, match=r"refused the handshake \(network\)"):
        stranger_hs.next_event()
    assert stranger_hs.data_to_send() == b""  # nothing is said back to a refusal


def test_responder_learns_why_the_initiator_refused_its_auth() -> None:
    a, b = members()
    initiator = Handshake(
        a.identity,
        a.passport,
        a.network,
        initiator=True,
        listen_address=ADDR_I,
        expected_node_id=a.identity.node_id,  # wrong on purpose: b answers
    )
    responder = Handshake(b.identity, b.passport, b.network, initiator=False, listen_address=ADDR_R)
    responder.receive_data(initiator.data_to_send())
    assert responder.next_event() is NEED_DATA
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(HandshakeRefused, match="expected node"):
        initiator.next_event()
    responder.receive_data(initiator.data_to_send())  # a REFUSE instead of AUTH_I
    with pytest.raises(HandshakeRefused, match=r"refused the handshake \(node-id\)"):
        responder.next_event()


def test_refusal_of_auth_i_ends_the_responders_stream_with_the_reason() -> None:
    a, b = members()  # b is a "client"; a accepts storage nodes only
    initiator, responder = handshakes(b, a, accepted_roles=frozenset({"storage"}))
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    done = initiator.next_event()
    assert isinstance(done, HandshakeComplete)  # the initiator cannot know yet
    responder.receive_data(initiator.data_to_send() + done.encoder.encode_bytes(b"request"))
    with pytest.raises(HandshakeRefused, match="role 'client'"):
        responder.next_event()
    done.decoder.receive_data(responder.data_to_send())  # an authenticated final frame
    assert done.decoder.next_message() is END_OF_STREAM
    assert done.decoder.close_reason == b"role"


def test_garbage_gets_no_refusal_and_refusals_carry_known_reasons_only() -> None:
    a, b = members()
    _, responder = handshakes(a, b)
    responder.receive_data(b"\x00\x00\x00\x02\x91\x01")
    with pytest.raises(RemoteProtocolError):
        responder.next_event()
    assert responder.data_to_send() == b""
    for body in (
        [b"ballast-refuse", 2, "because I said so"],
        [b"ballast-refuse", 2, b"network"],
        [b"ballast-refuse", 1, "network"],
        [b"ballast-refuse", 2],
    ):
        hs = Handshake(a.identity, a.passport, a.network, initiator=True, listen_address=ADDR_I)
        packed = msgpack.packb(body)
        hs.receive_data(len(packed).to_bytes(4, "big") + packed)
        with pytest.raises(RemoteProtocolError, match="malformed refusal") as caught:
            hs.next_event()
        assert not isinstance(caught.value, HandshakeRefused)
    assert {refusal_message(r) for r in REFUSAL_REASONS}  # every reason has a message


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x00\x00\x00",
        (MAX_HANDSHAKE_MESSAGE + 1).to_bytes(4, "big"),
        b"\x00\x00\x00\x03\xc1\xc1\xc1",
        b"\x00\x00\x00\x01\x01",
        b"\x00\x00\x00\x02\x91\x01",
        b"\x00\x00\x00\x0f" + msgpack.packb([b"ballast-hello", 2, b"", b"", b""]),
    ],
)
def test_garbage_is_a_remote_protocol_error(wire: bytes) -> None:
    _, b = members()
    responder = Handshake(b.identity, b.passport, b.network, initiator=False, listen_address=ADDR_R)
    responder.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        responder.next_event()


def test_truncated_input_only_needs_data() -> None:
    a, b = members()
    initiator, responder = handshakes(a, b)
    hello = initiator.data_to_send()
    responder.receive_data(hello[:-1])
    assert responder.next_event() is NEED_DATA
    assert responder.data_to_send() == b""


def test_own_invalid_passport_is_a_local_error() -> None:
    a, b = members()
    with pytest.raises(LocalProtocolError, match="own passport"):
        Handshake(a.identity, b.passport, a.network, initiator=True, listen_address=ADDR_I)


# -- the trio wrapper, over memory streams ------------------------------------------------


async def _establish_pair(a: Member, b: Member) -> tuple[SecureStream, SecureStream]:
    left, right = trio.testing.memory_stream_pair()
    results: dict[str, SecureStream] = {}

    async def side(name: str, m: Member, stream: trio.abc.Stream, initiator: bool) -> None:
        results[name] = await establish(
            stream,
            m.identity,
            m.passport,
            m.network,
            initiator=initiator,
            listen_address=ADDR_I if initiator else ADDR_R,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "i", a, left, True)
        nursery.start_soon(side, "r", b, right, False)
    return results["i"], results["r"]


async def test_establish_over_memory_streams_and_exchange_messages() -> None:
    a, b = members()
    left, right = await _establish_pair(a, b)
    assert left.peer.node_id == b.identity.node_id
    assert right.peer.node_id == a.identity.node_id
    big = bytes(range(256)) * 12_000  # ~3 MiB: several frames
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_messages, [b"one", big, b"three"])
        assert bytes(await right.receive_message()) == b"one"  # type: ignore[arg-type]
        assert bytes(await right.receive_message()) == big  # type: ignore[arg-type]
        assert bytes(await right.receive_message()) == b"three"  # type: ignore[arg-type]
    await left.send_final()
    assert await right.receive_message() is None
    assert left.statistics().sent.messages == 3
    await right.aclose()
    await left.aclose()


async def test_stranger_is_refused_closed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    owner, network = make_network()
    member = make_member(owner, network)
    rogue_owner, rogue_network = make_network()  # another network with the same name
    stranger = make_member(rogue_owner, rogue_network)
    left, right = trio.testing.memory_stream_pair()
    caplog.set_level(logging.WARNING, "dht.transport")

    async def stranger_side() -> None:
        with pytest.raises(HandshakeRefused, match=r"refused the handshake \(network\)"):
            await establish(
                left,
                stranger.identity,
                stranger.passport,
                stranger.network,
                initiator=True,
                listen_address=ADDR_I,
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stranger_side)
        with pytest.raises(HandshakeRefused):
            await establish(
                right,
                member.identity,
                member.passport,
                network,
                initiator=False,
                listen_address=ADDR_R,
            )
    assert "handshake with <StapledStream> failed" in caplog.text
    with pytest.raises(trio.ClosedResourceError):
        await right.send_all(b"x")  # the wrapper closed the stream


async def test_peer_refused_after_its_handshake_completed_learns_why() -> None:
    a, b = members()  # b is a "client"; a accepts storage nodes only
    left, right = trio.testing.memory_stream_pair()
    streams: list[SecureStream] = []

    async def initiator_side() -> None:
        secure = await establish(
            left, b.identity, b.passport, b.network, initiator=True, listen_address=ADDR_I
        )
        streams.append(secure)
        await secure.send_message(b"request sent before the verdict")
        with pytest.raises(HandshakeRefused, match=r"refused the handshake \(role\)"):
            await secure.receive_message()
        await secure.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(initiator_side)
        with pytest.raises(HandshakeRefused, match="role 'client'"):
            await establish(
                right,
                a.identity,
                a.passport,
                a.network,
                initiator=False,
                listen_address=ADDR_R,
                accepted_roles=frozenset({"storage"}),
            )
    assert len(streams) == 1


async def test_handshake_timeout_with_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    _, b = members()
    left, right = trio.testing.memory_stream_pair()
    started = trio.current_time()
    with pytest.raises(RemoteProtocolError, match="timed out"):
        await establish(
            right,
            b.identity,
            b.passport,
            b.network,
            initiator=False,
            listen_address=ADDR_R,
            timeout=30,
        )
    assert trio.current_time() - started == pytest.approx(30)
    await left.aclose()


async def test_tampered_frame_on_the_wire_is_not_delivered() -> None:
    a, b = members()
    # a "wire" we can tamper with: lockstep streams with a middle task
    left, right = await _establish_pair(a, b)
    encoded = left._encoder.encode_bytes(b"genuine")
    tampered = bytearray(encoded)
    tampered[-1] ^= 1
    right._decoder.receive_data(bytes(tampered))
    with pytest.raises(RemoteProtocolError):
        await right.receive_message()
    await left.aclose()
    await right.aclose()
