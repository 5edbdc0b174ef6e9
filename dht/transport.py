"""The secure channel on trio: a thin loop around :mod:`dht.handshake` and :mod:`dht.framing`.

Theory of operation
-------------------
:func:`establish` runs the handshake over any ``trio.abc.Stream`` (TCP in production, memory
streams in tests) and returns a :class:`SecureStream` that sends and receives whole
messages. On any protocol error or refusal the underlying stream is closed, the event is
logged with the peer's address, and nothing the peer sent reaches the caller. When this
side refuses the peer, it first sends the refusal the handshake produced (the failed check,
not the details) and lingers until the peer closes or a second passes.

A :class:`SecureStream` has one sending and one receiving task at a time (the frame cipher
state of each direction is sequential). Rules of its hot path:

* *No copies.* A batch of messages is encrypted into the encoder's buffer and sent from
  there with one ``send_all``; a TCP socket receives straight into the decoder's buffer
  (``recv_into``), which decrypts from there into the message it returns.
* *Crypto on the loop, big batches in a thread.* A batch of up to
  :data:`CRYPTO_THREAD_THRESHOLD` bytes is encrypted on the event loop (a few ms at most);
  a larger one in a worker thread (libsodium releases the GIL), so that a huge message
  does not stall the loop. Frames are decrypted on the loop as they arrive: the decoder
  holds at most two frames of at most 1 MiB, so one step decrypts at most ~2 MiB between
  two socket reads, each of which is a trio checkpoint. Measured on two cores with both
  ends on one machine, handing 1 MiB batches or frames to worker threads cost more CPU
  (thread wake-ups, GIL hand-offs, data crossing cores) than it saved: 15-20% less
  throughput than encrypting and decrypting on the loop.
* *Cancellation.* Cancelling a receive loses nothing (the decoder keeps partial frames and
  messages). Cancelling a send once its first frame is encrypted breaks the sending
  direction: the peer's view would lag ours, so nothing more is sent (see :meth:`send_final`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .errors import HandshakeRefused, ProtocolError, RemoteProtocolError
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
from .handshake import (
    MAX_HANDSHAKE_MESSAGE,
    Handshake,
    HandshakeComplete,
    PeerInfo,
    refusal_message,
)
from .identity import NetworkDescriptor, NodeIdentity, Passport
from .ids import Address, NodeId

logger = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: How long a refusal may take to send before the connection is closed anyway.
_REFUSAL_SECONDS = 1.0
#: Most bytes read and dropped from a refused peer while waiting for it to close.
_REFUSAL_DRAIN_BYTES = 1 << 20
#: Batches at least this large are encrypted in a worker thread (see the module docstring).
CRYPTO_THREAD_THRESHOLD = 4 << 20


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
        """Encrypt ``messages`` and send them together.

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
        await trio.lowlevel.checkpoint_if_cancelled()  # nothing is encrypted yet: no harm
        # From the first encrypted frame until the last byte is sent, an interruption leaves
        # the peer's view of the stream behind ours: nothing may follow it (see send_final)
        self._sending = True
        if sum(message_size(m) for m in messages) >= CRYPTO_THREAD_THRESHOLD:
            # libsodium releases the GIL: the loop stays responsive meanwhile
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

        The view is valid until the next call; decode or copy it first. Cancellation loses
        nothing: a partly received message is kept for the next call.

        Raises:
            HandshakeRefused: the peer refused us once our side of the handshake was done
                (its final frame says why).
            RemoteProtocolError: a frame failed to authenticate or broke the framing rules.
            trio.BrokenResourceError: the connection broke or the peer vanished mid-stream.
            trio.ClosedResourceError: this stream was closed.
        """
        decoder = self._decoder
        while True:
            message = decoder.next_message()
            if isinstance(message, memoryview):
                return message
            if message is END_OF_STREAM:
                if decoder.close_reason:
                    # the peer refused us after our handshake had completed (see dht.handshake)
                    reason = decoder.close_reason.decode("ascii", "replace")
                    raise HandshakeRefused(f"{self.remote}: {refusal_message(reason)}")
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
    hs: Handshake | None = None
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
        if hs is not None:
            await _send_refusal(stream, hs.data_to_send())
        raise
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def _send_refusal(stream: trio.abc.Stream, refusal: bytes) -> None:
    """Tell a refused peer why (best effort, briefly) before the connection is closed.

    After the refusal comes a lingering close: the peer may have frames in flight (an
    initiator sends as soon as its side of the handshake is done), and closing a socket
    with unread data makes the kernel send a reset, which can overtake the refusal. So
    our direction is shut and what the peer sends is read and dropped until it closes.
    """
    if not refusal:
        return  # garbage or a broken connection: nothing to tell
    with trio.move_on_after(_REFUSAL_SECONDS):
        try:
            await stream.send_all(refusal)
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < _REFUSAL_DRAIN_BYTES:
                data = await stream.receive_some(MAX_HANDSHAKE_MESSAGE)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer is gone already
