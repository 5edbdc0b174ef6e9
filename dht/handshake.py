"""Sans-IO mutual authentication of a new connection (h11 style: bytes in, events out).

Theory of operation
-------------------
The side that dialled is the *initiator*, the other the *responder*. Three messages::

    initiator -> responder   HELLO_I = [b"ballast-hello", 2, network fingerprint, eph_pk_i, nonce_i]
    responder -> initiator   HELLO_R (same shape, eph_pk_r, nonce_r), then AUTH_R
    initiator -> responder   AUTH_I
    AUTH = [b"ballast-auth", node public key, passport, listen host, listen port,
            stream header, signature]

Each handshake message is a u32 big-endian length (at most :data:`MAX_HANDSHAKE_MESSAGE`)
followed by a msgpack array. ``eph_pk`` is a fresh X25519 (``crypto_kx``) key and ``nonce``
32 fresh random bytes, both new for every connection.

The AUTH signature is made with the sender's Ed25519 node key over::

    [b"ballast-handshake-v1", side ("initiator" | "responder"), transcript,
     node public key, passport, listen host, listen port, stream header]

where ``transcript = BLAKE2b-256(HELLO_I || HELLO_R)`` (the exact bytes on the wire). Because
the transcript contains *both* sides' fresh nonces and ephemeral keys, a signature is valid
for exactly one connection: replaying an AUTH into another handshake, reflecting it back to
its sender (the side label differs) or substituting an ephemeral key (a man in the middle)
all fail verification.

What each side checks before it trusts the peer (else :class:`HandshakeRefused`):

* the peer's HELLO names the same network (fingerprint of the signed descriptor);
* the passport parses, names this network, is signed by the network owner's key, is issued
  to the node public key in the AUTH, and its role is one this side accepts;
* the AUTH signature verifies under that node key over this connection's transcript;
* when the caller dialled a known node id, the peer's key hashes to that id.

Malformed input (bad length, bad msgpack, wrong shapes, wrong magic or version) raises
:class:`RemoteProtocolError`; after any error the handshake is dead and raises again.

A side that refuses the peer tells it why before closing, with one of the fixed reasons in
:data:`REFUSAL_REASONS` (never the details, which stay in the refusing side's log)::

    REFUSE = [b"ballast-refuse", 2, reason]

sent as a handshake message whenever the peer is still waiting for one: the responder
refusing HELLO_I, the initiator refusing HELLO_R or AUTH_R. When the responder refuses
AUTH_I the initiator has already completed (it may be sending frames), so the responder
instead ends its frame stream with a ``TAG_FINAL`` frame whose chunk is the reason (see
:mod:`dht.framing`), which the initiator reads, authenticated, as the first frame of the
responder's stream. A REFUSE is not authenticated, and need not be: anyone on the path can
cut the connection anyway, and a refusal only turns that into an error that says why. Its
reason must be one of the known ones, so nothing a peer chooses reaches the logs.

Session keys come from ``crypto_kx`` on the ephemeral keys (forward secrecy: node keys only
sign). Each side then starts the frame stream of its sending direction (see
:mod:`dht.framing`) with its ``tx`` key and a random stream header, which it sends inside
its (signed) AUTH. The initiator may send encrypted
frames right after AUTH_I; the responder only decodes them once AUTH_I has verified, and
bytes that arrive after AUTH_I are handed to the frame decoder, never to the application
before that.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import nacl.bindings as sodium

from .errors import CredentialError, HandshakeRefused, LocalProtocolError, RemoteProtocolError
from .framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    STREAM_HEADER_BYTES,
    FrameDecoder,
    FrameEncoder,
    Signal,
)
from .identity import NetworkDescriptor, NodeIdentity, Passport, verify_signature
from .ids import Address, Contact, NodeId, node_id_from_public_key

#: 2: frames are ChaCha20-Poly1305 with counter nonces (version 1 framed with secretstream).
PROTOCOL_VERSION = 2
#: Longest handshake message accepted (a passport is ~200 bytes).
MAX_HANDSHAKE_MESSAGE = 4096
NONCE_BYTES = 32
KX_PUBLIC_KEY_BYTES = sodium.crypto_kx_PUBLIC_KEY_BYTES
_HELLO_MAGIC = b"ballast-hello"
_AUTH_MAGIC = b"ballast-auth"
_REFUSE_MAGIC = b"ballast-refuse"
_SIGNATURE_LABEL = b"ballast-handshake-v1"
_LENGTH_BYTES = 4

#: What a refusal tells the peer: which check it failed (the details are only logged).
REFUSAL_REASONS = frozenset({"network", "passport", "role", "signature", "node-id"})


def refusal_message(reason: str) -> str:
    """Return the error text for a refusal by the peer with ``reason`` (one of the known ones).

    Raises:
        RemoteProtocolError: ``reason`` is not one of :data:`REFUSAL_REASONS`.
    """
    if reason not in REFUSAL_REASONS:
        raise RemoteProtocolError("malformed refusal (unknown reason)")
    return f"the peer refused the handshake ({reason})"


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end of an authenticated connection."""

    node_id: NodeId
    public_key: bytes
    listen_address: Address
    role: str
    passport: Passport

    @property
    def contact(self) -> Contact:
        """The peer as a :class:`~dht.ids.Contact` (its declared listen address)."""
        return Contact(self.node_id, self.listen_address, self.public_key)


@dataclass(frozen=True)
class HandshakeComplete:
    """The peer is authenticated; frames may now flow.

    ``decoder`` has already been fed whatever bytes arrived after the handshake.
    """

    peer: PeerInfo
    encoder: FrameEncoder
    decoder: FrameDecoder


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(_LENGTH_BYTES, "big") + body


class Handshake:
    """One side of the handshake of one connection.

    Use: send :meth:`data_to_send`; feed received bytes to :meth:`receive_data`; call
    :meth:`next_event` until it returns :class:`HandshakeComplete` (then send
    :meth:`data_to_send` once more) or :data:`~dht.framing.NEED_DATA`.

    Args:
        identity: this node's key pair.
        passport: this node's passport for ``network``.
        network: the network both sides must belong to.
        initiator: True on the side that dialled.
        listen_address: where this node accepts connections (told to the peer).
        expected_node_id: if set, the peer must have this node id.
        accepted_roles: passport roles accepted from the peer (default: any valid role).
        max_message_size: passed to the frame decoder.
        ephemeral_seed, nonce: fixed values for deterministic tests only.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        passport: Passport,
        network: NetworkDescriptor,
        *,
        initiator: bool,
        listen_address: Address,
        expected_node_id: NodeId | None = None,
        accepted_roles: frozenset[str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ephemeral_seed: bytes | None = None,
        nonce: bytes | None = None,
    ) -> None:
        """Prepare a handshake; the initiator's HELLO is queued at once."""
        try:
            passport.verify(network, identity.public_key)
        except CredentialError as e:
            raise LocalProtocolError(f"our own passport is not valid: {e}") from e
        self._identity = identity
        self._passport_bytes = passport.to_bytes()
        self._network = network
        self._fingerprint = network.fingerprint
        self.initiator = initiator
        self._listen = listen_address
        self._expected = expected_node_id or None
        self._roles = accepted_roles
        self._max_message_size = max_message_size
        if ephemeral_seed is None:
            self._kx_pk, self._kx_sk = sodium.crypto_kx_keypair()
        else:
            self._kx_pk, self._kx_sk = sodium.crypto_kx_seed_keypair(ephemeral_seed)
        self._nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        self._hello = _frame(
            msgpack.packb(
                [_HELLO_MAGIC, PROTOCOL_VERSION, self._fingerprint, self._kx_pk, self._nonce],
                use_bin_type=True,
            )
        )
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        # initiator: want HELLO_R then AUTH_R; responder: want HELLO_I then AUTH_I
        self._state: Literal["hello", "auth", "done", "failed"] = "hello"
        self._transcript = b""
        self._rx_key = self._tx_key = b""
        self._peer_header = b""
        self._encoder: FrameEncoder | None = None
        self._refusal: HandshakeRefused | None = None
        if initiator:
            self._outbuf += self._hello

    # -- I/O-free interface -----------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes that must be sent to the peer now.

        After :meth:`next_event` raised :class:`HandshakeRefused` because this side refused
        the peer, these are the refusal that tells the peer why (send it, then close).
        """
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer."""
        if self._state == "failed":
            raise RemoteProtocolError("handshake already failed")
        if self._state == "done":
            raise LocalProtocolError("handshake complete: feed the frame decoder instead")
        self._inbuf += data

    def next_event(self) -> HandshakeComplete | Literal[Signal.NEED_DATA]:
        """Advance with the bytes received so far.

        Raises:
            RemoteProtocolError: the peer sent something malformed.
            HandshakeRefused: the peer failed to authenticate or has no valid passport.
        """
        if self._state == "failed":
            raise RemoteProtocolError("handshake already failed")
        if self._state == "done":
            raise LocalProtocolError("handshake already complete")
        try:
            return self._advance()
        except RemoteProtocolError as e:
            self._state = "failed"
            if e is not self._refusal:
                self._outbuf.clear()  # garbage, or the peer refused us: nothing more to say
            raise

    # -- internals ----------------------------------------------------------------------

    def _take_message(self) -> tuple[bytes, list[Any]] | None:
        """Pop one length-prefixed msgpack array from the input, or None if incomplete."""
        if len(self._inbuf) < _LENGTH_BYTES:
            return None
        length = int.from_bytes(self._inbuf[:_LENGTH_BYTES], "big")
        if length == 0 or length > MAX_HANDSHAKE_MESSAGE:
            raise RemoteProtocolError(
                f"handshake message length {length} out of bounds (not a Ballast peer?)"
            )
        if len(self._inbuf) < _LENGTH_BYTES + length:
            return None
        raw = bytes(self._inbuf[: _LENGTH_BYTES + length])
        del self._inbuf[: _LENGTH_BYTES + length]
        try:
            body = msgpack.unpackb(raw[_LENGTH_BYTES:], raw=False, use_list=True)
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise RemoteProtocolError(f"malformed handshake message ({type(e).__name__})") from None
        if not isinstance(body, list):
            raise RemoteProtocolError("malformed handshake message (not an array)")
        return raw, body

    def _advance(self) -> HandshakeComplete | Literal[Signal.NEED_DATA]:
        while True:
            taken = self._take_message()
            if taken is None:
                return NEED_DATA
            raw, body = taken
            if body and body[0] == _REFUSE_MAGIC:
                self._on_refuse(body)
            if self._state == "hello":
                self._on_hello(raw, body)
                if not self.initiator:
                    self._outbuf += self._hello
                    self._outbuf += self._auth_message()
                self._state = "auth"
            else:
                peer = self._on_auth(body)
                if self.initiator:
                    self._outbuf += self._auth_message()
                return self._complete(peer)

    def _on_hello(self, raw: bytes, body: list[Any]) -> None:
        if len(body) != 5 or body[0] != _HELLO_MAGIC:
            raise RemoteProtocolError("expected a Ballast HELLO (not a Ballast peer?)")
        _, version, fingerprint, kx_pk, nonce = body
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version!r}")
        if not (_is_bytes(fingerprint, 32) and _is_bytes(kx_pk, KX_PUBLIC_KEY_BYTES)):
            raise RemoteProtocolError("malformed HELLO")
        if not _is_bytes(nonce, NONCE_BYTES):
            raise RemoteProtocolError("malformed HELLO nonce")
        if fingerprint != self._fingerprint:
            raise self._refuse(
                "network", f"peer belongs to another network than {self._network.name!r}"
            )
        if kx_pk == self._kx_pk or nonce == self._nonce:
            raise RemoteProtocolError("peer echoed our own HELLO (reflection)")
        hellos = self._hello + raw if self.initiator else raw + self._hello
        self._transcript = hashlib.blake2b(hellos, digest_size=32).digest()
        try:
            if self.initiator:
                self._rx_key, self._tx_key = sodium.crypto_kx_client_session_keys(
                    self._kx_pk, self._kx_sk, kx_pk
                )
            else:
                self._rx_key, self._tx_key = sodium.crypto_kx_server_session_keys(
                    self._kx_pk, self._kx_sk, kx_pk
                )
        except Exception as e:  # pynacl raises its own error types on degenerate keys
            raise RemoteProtocolError(f"bad ephemeral key ({type(e).__name__})") from None
        self._encoder = FrameEncoder(self._tx_key)

    def _signed_bytes(
        self, side: str, public_key: bytes, passport: bytes, host: str, port: int, header: bytes
    ) -> bytes:
        return bytes(
            msgpack.packb(
                [
                    _SIGNATURE_LABEL,
                    side,
                    self._transcript,
                    public_key,
                    passport,
                    host,
                    port,
                    header,
                ],
                use_bin_type=True,
            )
        )

    def _auth_message(self) -> bytes:
        assert self._encoder is not None
        side = "initiator" if self.initiator else "responder"
        header = self._encoder.header
        host, port = self._listen.host, self._listen.port
        pk = self._identity.public_key
        signature = self._identity.sign(
            self._signed_bytes(side, pk, self._passport_bytes, host, port, header)
        )
        body = [_AUTH_MAGIC, pk, self._passport_bytes, host, port, header, signature]
        return _frame(msgpack.packb(body, use_bin_type=True))

    def _on_auth(self, body: list[Any]) -> PeerInfo:
        if len(body) != 7 or body[0] != _AUTH_MAGIC:
            raise RemoteProtocolError("expected a Ballast AUTH")
        _, public_key, passport_bytes, host, port, header, signature = body
        if not (
            _is_bytes(public_key, 32)
            and isinstance(passport_bytes, bytes)
            and isinstance(host, str)
            and type(port) is int
            and 0 <= port <= 65535
            and _is_bytes(header, STREAM_HEADER_BYTES)
            and _is_bytes(signature, 64)
        ):
            raise RemoteProtocolError("malformed AUTH")
        try:
            passport = Passport.from_bytes(passport_bytes, self._network)
            passport.verify(self._network, public_key)
        except CredentialError as e:
            raise self._refuse("passport", f"peer has no valid passport: {e}") from None
        if self._roles is not None and passport.role not in self._roles:
            raise self._refuse("role", f"peer's role {passport.role!r} is not accepted here")
        side = "responder" if self.initiator else "initiator"
        signed = self._signed_bytes(side, public_key, passport_bytes, host, port, header)
        if not verify_signature(public_key, signed, signature):
            raise self._refuse(
                "signature", "peer's handshake signature is invalid (forged or replayed)"
            )
        node_id = node_id_from_public_key(public_key)
        if self._expected is not None and node_id != self._expected:
            raise self._refuse(
                "node-id",
                f"expected node {self._expected.hex()}, found {node_id.hex()} at that address",
            )
        self._peer_header = header
        return PeerInfo(node_id, public_key, Address(host, port), passport.role, passport)

    def _refuse(self, reason: str, detail: str) -> HandshakeRefused:
        """Queue the refusal the peer is told (``reason``); return the error to raise here."""
        assert reason in REFUSAL_REASONS
        if self._state == "auth" and not self.initiator:
            # the initiator completed when it sent AUTH_I: it now reads frames, so the
            # refusal ends our frame stream (authenticated: the initiator verified AUTH_R)
            assert self._encoder is not None
            self._outbuf += self._encoder.close(reason.encode())
        else:
            body = [_REFUSE_MAGIC, PROTOCOL_VERSION, reason]
            self._outbuf += _frame(msgpack.packb(body, use_bin_type=True))
        self._refusal = HandshakeRefused(detail)
        return self._refusal

    def _on_refuse(self, body: list[Any]) -> None:
        if len(body) != 3 or type(body[1]) is not int or body[1] != PROTOCOL_VERSION:
            raise RemoteProtocolError("malformed refusal")
        if not isinstance(body[2], str):
            raise RemoteProtocolError("malformed refusal")
        raise HandshakeRefused(refusal_message(body[2]))

    def _complete(self, peer: PeerInfo) -> HandshakeComplete:
        assert self._encoder is not None
        decoder = FrameDecoder(
            self._rx_key, self._peer_header, max_message_size=self._max_message_size
        )
        if self._inbuf:
            decoder.receive_data(bytes(self._inbuf))
            self._inbuf.clear()
        self._state = "done"
        self._kx_sk = b""
        return HandshakeComplete(peer, self._encoder, decoder)


def _is_bytes(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size
