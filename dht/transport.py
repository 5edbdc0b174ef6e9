"""The secure channel on trio: a thin loop around :mod:`dht.handshake` and :mod:`dht.framing`.

:func:`establish` runs the handshake over any ``trio.abc.Stream`` (TCP in production, memory
streams in tests) and returns a :class:`SecureStream` that sends and receives whole
messages. On any protocol error or refusal the underlying stream is closed, the event is
logged with the peer's address, and nothing the peer sent reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .errors import ProtocolError, RemoteProtocolError
from .framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    END_OF_STREAM,
    NEED_DATA,
    CodecStatistics,
    FrameDecoder,
    FrameEncoder,
    Message,
    message_size,
)
from .handshake import MAX_HANDSHAKE_MESSAGE, Handshake, HandshakeComplete, PeerInfo
from .identity import NetworkDescriptor, NodeIdentity, Passport
from .ids import Address, NodeId

logger = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Batches and buffered input at least this large are en/decrypted in a worker thread.
CRYPTO_THREAD_THRESHOLD = 256 * 1024


def describe_remote(stream: trio.abc.Stream) -> str:
    """Return ``host:port`` of the other end of a socket stream, or a placeholder."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            name = sock.getpeername()
        except OSError:
            return "<disconnected>"
        if isinstance(name, tuple) and len(name) >= 2:
            return str(Address(str(name[0]), int(name[1])))
        return str(name)
    return f"<{type(stream).__name__}>"


@dataclass(frozen=True)
class SecureStreamStatistics:
    """Counters of one secure stream."""

    sent: CodecStatistics
    received: CodecStatistics


class SecureStream:
    """An authenticated, encrypted message stream to one peer.

    Sending is for one task at a time (the RPC layer has a single writer task) and so is
    receiving; the two may run concurrently.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: PeerInfo,
        encoder: FrameEncoder,
        decoder: FrameDecoder,
        *,
        remote: str = "",
    ) -> None:
        """Wrap an already authenticated stream (see :func:`establish`)."""
        self.stream = stream
        self.peer = peer
        self.remote = remote or describe_remote(stream)
        self._encoder = encoder
        self._decoder = decoder
        sock = getattr(stream, "socket", None)
        self._recv_into = getattr(sock, "recv_into", None) if sock is not None else None
        self._closed = False
        self._final_sent = False
        self._sending = False

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Encrypt ``messages`` and send them with one ``send_all``.

        A message is a buffer or a sequence of buffers sent as one message without joining
        them (see :data:`dht.framing.Message`).

        Cancellation mid-send leaves the stream broken (as trio's ``send_all``); the RPC layer
        then closes the connection.

        Raises:
            trio.BrokenResourceError: the connection broke.
            trio.ClosedResourceError: this stream was closed.
        """
        if self._closed or self._final_sent:
            raise trio.ClosedResourceError("secure stream is closed")
        if not messages:
            return
        # From the first encrypted frame until send_all returns, an interruption leaves the
        # peer's view of the stream behind ours: nothing may be sent after it (see send_final)
        self._sending = True
        if sum(message_size(m) for m in messages) >= CRYPTO_THREAD_THRESHOLD:
            # libsodium releases the GIL: encrypting big batches in a worker thread lets
            # the loop (and the peer's decryption, when in-process) use another core
            data = await trio.to_thread.run_sync(self._encoder.encode, *messages)
        else:
            data = self._encoder.encode(*messages)
        await self.stream.send_all(data)
        self._sending = False  # not reset if cancelled or broken: the stream is unusable then

    async def send_message(self, message: Message) -> None:
        """Encrypt and send one message (see :meth:`send_messages`)."""
        await self.send_messages((message,))

    async def receive_message(self) -> memoryview | None:
        """Return the next message, or None once the peer has ended the stream cleanly.

        The view is valid until the next call; decode or copy it first.

        Raises:
            RemoteProtocolError: a frame failed to authenticate or broke the framing rules.
            trio.BrokenResourceError: the connection broke or the peer vanished mid-stream.
        """
        decoder = self._decoder
        while True:
            if decoder.ready_bytes() >= CRYPTO_THREAD_THRESHOLD:
                message = await trio.to_thread.run_sync(decoder.next_message)
            else:
                message = decoder.next_message()
            if isinstance(message, memoryview):
                return message
            if message is END_OF_STREAM:
                return None
            assert message is NEED_DATA
            if self._recv_into is not None:
                try:
                    n = await self._recv_into(decoder.get_buffer())
                except OSError as e:
                    raise trio.BrokenResourceError(f"connection to {self.remote} broke") from e
                if n == 0:
                    raise trio.BrokenResourceError(f"{self.remote} closed the connection")
                decoder.buffer_filled(n)
            else:
                data = await self.stream.receive_some()
                if not data:
                    raise trio.BrokenResourceError(f"{self.remote} closed the connection")
                decoder.receive_data(data)

    async def send_final(self) -> None:
        """End our direction cleanly (the peer's :meth:`receive_message` returns None).

        Nothing can be sent afterwards; receiving goes on until the peer ends its direction.
        """
        if not self._final_sent and not self._closed:
            self._final_sent = True
            if self._sending:
                # a send was cut short: a frame is half written, nothing can follow it
                raise trio.BrokenResourceError("secure stream broken by an interrupted send")
            self._sending = True
            await self.stream.send_all(self._encoder.close())
            self._sending = False

    async def aclose(self) -> None:
        """Send the final frame if not sent yet (best effort, briefly) and close the stream."""
        if self._closed:
            return
        try:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await self.send_final()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # the peer is gone already (or a send was cut short): nothing to tell it
        finally:
            self._closed = True
            await trio.aclose_forcefully(self.stream)

    def statistics(self) -> SecureStreamStatistics:
        """Return the sent and received counters."""
        return SecureStreamStatistics(self._encoder.statistics(), self._decoder.statistics())


async def establish(
    stream: trio.abc.Stream,
    identity: NodeIdentity,
    passport: Passport,
    network: NetworkDescriptor,
    *,
    initiator: bool,
    listen_address: Address,
    expected_node_id: NodeId | None = None,
    accepted_roles: frozenset[str] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> SecureStream:
    """Authenticate the peer on ``stream`` and return the secure message stream.

    Cancellation or any failure closes ``stream``.

    Raises:
        HandshakeRefused: the peer has no valid passport, is in another network, is not
            ``expected_node_id`` or could not prove its key.
        RemoteProtocolError: the peer sent garbage, closed the connection or took longer
            than ``timeout`` seconds.
    """
    remote = describe_remote(stream)
    ok = False
    try:
        hs = Handshake(
            identity,
            passport,
            network,
            initiator=initiator,
            listen_address=listen_address,
            expected_node_id=expected_node_id,
            accepted_roles=accepted_roles,
            max_message_size=max_message_size,
        )
        with trio.fail_after(timeout):
            out = hs.data_to_send()
            if out:
                await stream.send_all(out)
            while True:
                event = hs.next_event()
                out = hs.data_to_send()
                if out:
                    await stream.send_all(out)
                if isinstance(event, HandshakeComplete):
                    ok = True
                    return SecureStream(
                        stream, event.peer, event.encoder, event.decoder, remote=remote
                    )
                data = await stream.receive_some(MAX_HANDSHAKE_MESSAGE)
                if not data:
                    raise RemoteProtocolError("peer closed the connection during the handshake")
                hs.receive_data(data)
    except trio.TooSlowError:
        logger.warning("handshake with %s timed out after %.1f s", remote, timeout)
        raise RemoteProtocolError(f"handshake with {remote} timed out") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        logger.info("connection to %s broke during the handshake: %s", remote, e)
        raise RemoteProtocolError(f"connection to {remote} broke during the handshake") from e
    except ProtocolError as e:
        logger.warning("handshake with %s failed: %s", remote, e)
        raise
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)
