"""Multiplexed msgpack RPC over the secure transport.

Theory of operation
-------------------
Every node runs one :class:`RpcNode`: a TCP listener plus at most one live connection per
peer, used in both directions (a connection a peer opened to us also carries our calls to
it). Each secure message is one msgpack array::

    [0, id, method, args, timeout_ms]     request
    [1, id, result]                       success reply
    [2, id, code, message, detail]        error reply (becomes dht.errors.RemoteError)
    [3]                                   GOAWAY: "I start no new calls on this connection"

Request ids are per connection and per direction (each side numbers its own calls), so
replies are matched by id and many calls are in flight at once.

Invariants:

* *One connection per peer pair.* When two connections to the same peer exist (both sides
  dialled at once, or the peer restarted), both sides keep the same one: the newer one if
  the same side opened both, else the one opened by the node with the smaller id. The other
  is *drained*: each side sends GOAWAY on it, starts no new calls on it, still answers the
  calls already sent, and closes it once it has sent and received GOAWAY and has no calls
  of its own in flight and no handler running for it. Since GOAWAY travels in order after
  every request a side sent, no request is lost.
* *Back-pressure.* At most ``max_in_flight`` of our calls are in flight per connection
  (callers wait for a slot) and at most ``max_in_flight`` (+ a little slack) handlers run
  per connection: when that many run, the reader stops reading, TCP fills up and the
  peer's writer blocks. As a well-behaved peer never has more calls in flight than that,
  the reader only stops for a misbehaving one (so replies are never stuck behind
  requests). The writer's queue is a bounded memory channel; messages are bounded by
  ``max_message_size``.
* *Cancellation and timeouts.* A call that is cancelled or times out sends nothing more;
  its reply, if one comes, is dropped. A message in the writer's queue is always sent whole
  (the writer batches everything queued into one ``send_all``). Deadlines of calls waiting
  for replies are kept in a heap served by one timer task per connection (cheaper than a
  cancel scope per call). The remaining timeout travels with the request and bounds the
  handler on the server, which sends no reply once it is exceeded.
* *Large binaries* (``bytes``/``memoryview`` of 64 KiB or more, at most two levels deep in
  the arguments or result) are sent from the caller's buffer without being copied into the
  msgpack output; the receiver gets ``bytes``. Do not modify such a buffer until the call
  returns.
* *Calls to self* run the handler in-process with the wire's semantics: arguments and
  result go through a msgpack round trip (the same types come out, nothing either side
  keeps can be changed by the other), except that large binaries (as above) are not
  encoded: a ``bytes`` one is handed over as it is (it is immutable), a mutable one as one
  ``bytes`` copy of it, instead of the two copies of encoding and decoding.
* *Failure.* A connection that breaks or violates the protocol is closed (logged with the
  peer's address), its pending calls fail with :class:`~dht.errors.PeerUnreachable`, and the
  next call to that peer dials again. A handler that raises ``RemoteError`` is answered with
  that error; any other exception becomes code ``"internal"``, is logged, and the server
  carries on. A peer without a passport for this network never gets past the handshake;
  a refused peer is told which check it failed, and the caller's error says so.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from .contracts import Handler
from .errors import (
    HandshakeRefused,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    RpcError,
    RpcTimeout,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, Buffer, Message, message_size
from .identity import NetworkDescriptor, NodeIdentity, Passport
from .ids import Address, Contact, NodeId
from .transport import DEFAULT_HANDSHAKE_TIMEOUT, SecureStream, describe_remote, establish

logger = logging.getLogger(__name__)

REQUEST, REPLY_OK, REPLY_ERROR, GOAWAY = 0, 1, 2, 3
#: Most bytes the writer batches into one ``send_all``.
_MAX_BATCH_BYTES = 1 << 20  # small enough to pipeline encryption with sending
_GOAWAY_MESSAGE = msgpack.packb([GOAWAY])
#: How long a drained connection waits for the peer's final frame before closing anyway.
_LINGER_SECONDS = 10.0
#: Two connections to one peer adopted within this many seconds are a simultaneous dial;
#: otherwise the peer dialled again because it lost the older one, which is then stale.
_DIAL_RACE_SECONDS = 2.0
#: Extra handler slots beyond ``max_in_flight``: a caller frees its slot on timeout a
#: moment before the handler it started stops, and the reader should not stall then.
_HANDLER_SLACK = 16
#: Inbound handshakes in progress at once; further accepted connections wait their turn.
_MAX_CONCURRENT_HANDSHAKES = 64

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack: Callable[[Any], bytes] = _packer.pack
#: Binaries at least this large are sent from the caller's buffer instead of being copied
#: into the msgpack output (see :func:`_pack_message`).
_BIG_BINARY = 64 * 1024
_BINARY_TYPES = (bytes, bytearray, memoryview)


def _has_big_binary(value: Any, depth: int = 2) -> bool:
    """Whether ``value`` is, or shallowly contains, a large binary (cheap: few levels)."""
    kind = type(value)
    if kind in _BINARY_TYPES:
        return bool(memoryview(value).nbytes >= _BIG_BINARY)
    if depth and _searchable(value):
        if kind is list or kind is tuple:
            return any(_has_big_binary(item, depth - 1) for item in value)
        if kind is dict:
            return any(_has_big_binary(item, depth - 1) for item in value.values())
    return False


def _searchable(value: Any) -> bool:
    """Whether a container is small enough to be searched for large binaries."""
    return type(value) in (list, tuple, dict) and len(value) <= 16


def _pack_parts(value: Any, parts: list[Buffer], head: bytearray) -> None:
    """Append the msgpack encoding of ``value`` to ``head``/``parts`` without copying big bins.

    Small items accumulate in ``head``; a large binary closes ``head`` into ``parts`` after
    its msgpack bin32 header and is then appended itself, uncopied.
    """
    kind = type(value)
    if kind in _BINARY_TYPES:
        view = memoryview(value)
        if view.nbytes >= _BIG_BINARY:
            head += b"\xc6" + view.nbytes.to_bytes(4, "big")
            parts.append(bytes(head))
            head.clear()
            parts.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
            return
    elif kind is list or kind is tuple:
        head += _packer.pack_array_header(len(value))
        for item in value:
            _pack_parts(item, parts, head)
        return
    elif kind is dict:
        head += _packer.pack_map_header(len(value))
        for key, item in value.items():
            _pack_parts(key, parts, head)
            _pack_parts(item, parts, head)
        return
    head += _pack(value)


def _pack_message(message: list[Any]) -> Message:
    """Encode an RPC message; large binaries in it stay where they are (no copy)."""
    if not _has_big_binary(message[-1] if message[0] != REQUEST else message[3]):
        return _pack(message)
    parts: list[Buffer] = []
    head = bytearray()
    _pack_parts(message, parts, head)
    if head:
        parts.append(bytes(head))
    return parts


def _unpack(data: memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


#: msgpack extension code standing for a large binary in a call to self (see ``_local_copy``).
_LOCAL_BINARY_EXT = 0x5B


def _local_copy(value: Any) -> Any:
    """Return what ``value`` becomes after a msgpack round trip, without coding big binaries.

    Large binaries (where :func:`_pack_message` finds them) are taken out before encoding and
    put back by the decoder: ``bytes`` as they are (immutable, so sharing is safe), other
    buffers as a ``bytes`` copy. Each placeholder carries a random tag, so that an extension
    value that happens to be in ``value`` is never mistaken for one.
    """
    if not _has_big_binary(value):
        return msgpack.unpackb(_pack(value), raw=False, strict_map_key=False)
    binaries: list[bytes] = []
    tag = secrets.token_bytes(8)

    def take(item: Any, depth: int) -> Any:
        kind = type(item)
        if kind in _BINARY_TYPES:
            view = memoryview(item)
            if view.nbytes < _BIG_BINARY:
                return item
            binaries.append(item if kind is bytes else view.tobytes())
            return msgpack.ExtType(_LOCAL_BINARY_EXT, tag + (len(binaries) - 1).to_bytes(4, "big"))
        if depth and _searchable(item):
            if kind is dict:
                return {key: take(child, depth - 1) for key, child in item.items()}
            return [take(child, depth - 1) for child in item]
        return item

    def restore(code: int, data: bytes) -> Any:
        if code == _LOCAL_BINARY_EXT and len(data) == 12 and data[:8] == tag:
            return binaries[int.from_bytes(data[8:], "big")]
        return msgpack.ExtType(code, data)

    packed = _pack(take(value, 2))
    return msgpack.unpackb(packed, raw=False, strict_map_key=False, ext_hook=restore)


@dataclass(frozen=True)
class ConnectionStatistics:
    """Counters of one RPC connection."""

    peer: NodeId
    remote: str
    initiated_by_us: bool
    draining: bool
    calls_in_flight: int
    handlers_running: int
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class RpcStatistics:
    """Counters of an :class:`RpcNode`."""

    connections: int
    connections_accepted: int
    connections_dialled: int
    handshakes_failed: int
    calls_started: int
    calls_succeeded: int
    calls_remote_errors: int
    calls_timed_out: int
    calls_unreachable: int
    calls_in_flight: int
    requests_served: int
    handler_errors: int
    protocol_errors: int


class _Retry(Exception):
    """The connection stopped taking new calls before ours was queued; pick another."""


class _PendingCall:
    """Where the reader leaves the outcome of one outgoing call."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: RpcError | None = None


#: Marks a call failed by the connection's timer (the caller raises its own RpcTimeout).
_TIMED_OUT = RpcTimeout("deadline passed")


class _Connection:
    """One secure stream to one peer, with its reader, writer and handler tasks."""

    def __init__(self, node: RpcNode, stream: SecureStream, *, initiated_by_us: bool) -> None:
        self.node = node
        self.stream = stream
        self.peer = stream.peer
        self.contact = stream.peer.contact
        self.initiated_by_us = initiated_by_us
        self._ids = itertools.count(1)
        self.pending: dict[int, _PendingCall] = {}
        self.call_slots = trio.Semaphore(node.max_in_flight)
        self.handler_slots = trio.Semaphore(node.max_in_flight + _HANDLER_SLACK)
        self.adopted_at = trio.current_time()
        self.send_channel, self._receive_channel = trio.open_memory_channel[Message](
            node.max_in_flight * 2
        )
        self.handlers_running = 0
        self.sent_goaway = False
        self.received_goaway = False
        self.closed = False
        self.peer_ended = False
        self._writer_done = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.messages_sent = 0
        self.messages_received = 0
        self._deadlines: list[tuple[float, int]] = []
        self._timer_scope: trio.CancelScope | None = None

    @property
    def usable(self) -> bool:
        """Whether new calls may start on this connection."""
        return not (self.closed or self.sent_goaway or self.received_goaway)

    # -- lifetime -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except Cancelled."""
        reason = "closed"
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._timer)
                    await self._reader(nursery)
                    # The peer ended its stream cleanly: nothing more will come. Let the
                    # writer flush what is queued and end our direction too, then stop.
                    self.peer_ended = True
                    self.send_channel.close()
                    with trio.move_on_after(_LINGER_SECONDS):
                        await self._writer_done.wait()
                    nursery.cancel_scope.cancel()
        except* HandshakeRefused as group:
            # the peer refused us once our side of the handshake was done (dht.handshake)
            reason = f"refused: {_first(group)}"
            self.node._handshakes_failed += 1
            logger.warning("connection to %s refused: %s", self.stream.remote, _first(group))
        except* ProtocolError as group:
            reason = f"protocol error: {_first(group)}"
            self.node._protocol_errors += 1
            logger.warning("closing connection to %s: %s", self.stream.remote, _first(group))
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            if reason == "closed":  # a refusal read before the connection broke explains it
                reason = f"connection lost: {_first(group)}"
            logger.info("connection to %s lost: %s", self.stream.remote, _first(group))
        except* Exception as group:  # a bug of ours: lose this connection, not the node
            reason = "internal error"
            logger.error("connection to %s failed", self.stream.remote, exc_info=group)
        finally:
            self._shutdown(reason)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.node._forget(self)
        self.send_channel.close()
        for call in self.pending.values():
            if not call.done.is_set():
                call.error = PeerUnreachable(f"connection to {self.stream.remote} ended ({reason})")
                call.done.set()
        self.pending.clear()

    def drain(self) -> None:
        """Start no new calls here; close once both sides said GOAWAY and all is answered."""
        if not self.sent_goaway and not self.closed:
            self.sent_goaway = True
            try:
                self.send_channel.send_nowait(_GOAWAY_MESSAGE)
            except trio.WouldBlock:
                self.node._nursery_start(self._send_goaway)
            except trio.ClosedResourceError:
                pass
        self._maybe_finish_drain()

    async def _send_goaway(self) -> None:
        """Queue GOAWAY behind a full queue (FIFO: after every request already waiting)."""
        try:  # noqa: SIM105 - same shape as the reply path
            await self.send_channel.send(_GOAWAY_MESSAGE)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closed meanwhile: the final frame tells the peer instead

    def _maybe_finish_drain(self) -> None:
        if (
            self.sent_goaway
            and self.received_goaway
            and not self.pending
            and self.handlers_running == 0
        ):
            # the writer flushes what is queued (replies, GOAWAY) then ends the stream
            self.send_channel.close()

    # -- writer ---------------------------------------------------------------------

    async def _writer(self) -> None:
        receive = self._receive_channel
        stream = self.stream
        async for first in receive:
            batch = [first]
            size = message_size(first)
            while size < _MAX_BATCH_BYTES:
                try:
                    message = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(message)
                size += message_size(message)
            await stream.send_messages(batch)
            self.messages_sent += len(batch)
        # The queue was closed by a finished drain (or by shutdown): end our direction and
        # give the peer a moment to end its own, which ends the reader and the connection.
        await stream.send_final()
        self._writer_done.set()
        if not self.peer_ended:
            await trio.sleep(_LINGER_SECONDS)
            self.cancel_scope.cancel()

    # -- reader ---------------------------------------------------------------------

    async def _reader(self, nursery: trio.Nursery) -> None:
        stream = self.stream
        pending = self.pending
        while True:
            data = await stream.receive_message()
            if data is None:
                return
            self.messages_received += 1
            try:
                message = _unpack(data)
                kind = message[0]
            except Exception as e:  # msgpack raises several unrelated types on garbage
                raise RemoteProtocolError(f"malformed RPC message ({type(e).__name__})") from e
            if not isinstance(message, list) or (len(message) > 1 and type(message[1]) is not int):
                raise RemoteProtocolError("malformed RPC message (not an array with an int id)")
            if kind == REPLY_OK and len(message) == 3:
                call = pending.pop(message[1], None)
                if call is not None:
                    call.result = message[2]
                    call.done.set()
            elif kind == REQUEST and len(message) == 5:
                _, request_id, method, args, timeout_ms = message
                if not (
                    isinstance(method, str)
                    and type(timeout_ms) in (int, float)
                    and timeout_ms >= 0  # also refuses NaN
                ):
                    raise RemoteProtocolError("malformed RPC request")
                try:
                    self.handler_slots.acquire_nowait()
                except trio.WouldBlock:
                    await self.handler_slots.acquire()  # back-pressure: stop reading
                self.handlers_running += 1
                nursery.start_soon(self._serve, request_id, method, args, timeout_ms)
            elif kind == REPLY_ERROR and len(message) == 5:
                call = pending.pop(message[1], None)
                if call is not None:
                    _, _, code, text, detail = message
                    call.error = RemoteError(str(code), str(text), detail)
                    call.done.set()
            elif kind == GOAWAY and len(message) == 1:
                self.received_goaway = True
                self.node._forget(self)
                self.drain()
            else:
                raise RemoteProtocolError(f"unknown RPC message kind {kind!r}")

    async def _serve(self, request_id: Any, method: str, args: Any, timeout_ms: float) -> None:
        node = self.node
        reply: Message | None = None
        try:
            try:
                handler = node._handlers.get(method)
                if handler is None:
                    reply = _pack([REPLY_ERROR, request_id, "no_such_method", method, None])
                else:
                    with trio.move_on_after(max(0.0, timeout_ms / 1000)):
                        result = await handler(self.contact, args)
                        reply = _pack_message([REPLY_OK, request_id, result])
                node._requests_served += 1
            except RemoteError as e:
                reply = _error_reply(request_id, e)
            except Exception:
                node._handler_errors += 1
                logger.exception(
                    "handler for %r failed (call from %s at %s)",
                    method,
                    self.peer.node_id.hex(),
                    self.stream.remote,
                )
                reply = _pack([REPLY_ERROR, request_id, "internal", "internal error", None])
            if reply is not None:
                try:  # noqa: SIM105 - hot path: cheaper than contextlib.suppress
                    await self._queue(reply)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the connection is gone: the caller sees PeerUnreachable instead
        finally:
            # only now: a drain must not close the writer's queue before the reply is in it
            self.handler_slots.release()
            self.handlers_running -= 1
            if self.sent_goaway:
                self._maybe_finish_drain()

    # -- calls ----------------------------------------------------------------------

    async def call(self, method: str, args: Any, deadline: float) -> Any:
        """Send one request and wait for its reply or ``deadline``.

        The wait for the reply uses the connection's timer rather than a cancel scope per
        call (a cancel scope costs about as much as the rest of a small call); waits that
        only happen under back-pressure use ordinary scopes.

        Raises:
            RpcTimeout: ``deadline`` passed first.
            PeerUnreachable: the connection ended first.
            RemoteError: the peer answered with an error.
        """
        slots = self.call_slots
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(deadline) as waited:
                await slots.acquire()
            if waited.cancelled_caught:
                raise self._timeout(method) from None
        try:
            if not self.usable:
                raise _Retry  # drained or closed while we waited: use the peer's current one
            request_id = next(self._ids)
            timeout_ms = max(0, math.ceil((deadline - trio.current_time()) * 1000))
            message = _pack_message([REQUEST, request_id, method, args, timeout_ms])
            call = _PendingCall()
            self.pending[request_id] = call
            try:
                try:
                    self.send_channel.send_nowait(message)
                except trio.WouldBlock:
                    with trio.move_on_at(deadline) as waited:
                        await self.send_channel.send(message)
                    if waited.cancelled_caught:
                        raise self._timeout(method) from None
                heapq.heappush(self._deadlines, (deadline, request_id))
                timer = self._timer_scope
                if timer is not None and deadline < timer.deadline:
                    timer.deadline = deadline
                await call.done.wait()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise PeerUnreachable(f"connection to {self.stream.remote} is closed") from None
            finally:
                self.pending.pop(request_id, None)
                if self.sent_goaway:
                    self._maybe_finish_drain()
            if call.error is not None:
                if isinstance(call.error, RpcTimeout):
                    raise self._timeout(method)
                raise call.error
            return call.result
        finally:
            slots.release()

    def _timeout(self, method: str) -> RpcTimeout:
        return RpcTimeout(f"{method} on {self.stream.remote}: no answer before the deadline")

    async def _timer(self) -> None:
        """Fail the calls whose deadline passed (one task per connection, see :meth:`call`)."""
        heap = self._deadlines
        pending = self.pending
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, request_id = heapq.heappop(heap)
                call = pending.get(request_id)
                if call is not None and not call.done.is_set():
                    call.error = _TIMED_OUT
                    call.done.set()
            if len(heap) > 2 * len(pending) + 256:  # drop entries of answered calls
                heap[:] = [entry for entry in heap if entry[1] in pending]
                heapq.heapify(heap)

    async def _queue(self, message: Message) -> None:
        """Hand a message to the writer, waiting only when its queue is full."""
        try:
            self.send_channel.send_nowait(message)
        except trio.WouldBlock:
            await self.send_channel.send(message)

    def statistics(self) -> ConnectionStatistics:
        """Return this connection's counters."""
        stats = self.stream.statistics()
        return ConnectionStatistics(
            peer=self.peer.node_id,
            remote=self.stream.remote,
            initiated_by_us=self.initiated_by_us,
            draining=not self.usable,
            calls_in_flight=len(self.pending),
            handlers_running=self.handlers_running,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            bytes_sent=stats.sent.wire_bytes,
            bytes_received=stats.received.wire_bytes,
        )


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    """Return the first leaf exception of a (possibly nested) exception group."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _error_reply(request_id: Any, error: RemoteError) -> bytes:
    try:
        return _pack([REPLY_ERROR, request_id, error.code, error.message, error.detail])
    except (TypeError, ValueError, OverflowError):
        return _pack([REPLY_ERROR, request_id, error.code, error.message, repr(error.detail)])


class RpcNode:
    """A node's RPC endpoint: implements ``RemoteCaller`` and ``HandlerRegistry``.

    Args:
        identity: this node's key pair.
        passport: its passport for ``network``.
        network: the network descriptor.
        listen_host, listen_port: where to listen (port 0 picks a free port).
        advertise: the address told to peers (default: the bound address).
        max_in_flight: per connection, calls in flight and handlers running.
        max_message_size: longest message sent or accepted.
        accepted_roles: passport roles accepted from peers (default: any).
        handshake_timeout: seconds a handshake may take.

    Start it with ``await nursery.start(node.run)``; :meth:`call` needs it running.

    Raises:
        CredentialError: ``passport`` does not admit ``identity`` into ``network``.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        passport: Passport,
        network: NetworkDescriptor,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        advertise: Address | None = None,
        max_in_flight: int = 64,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        accepted_roles: frozenset[str] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        """Configure the node; nothing happens until :meth:`run`."""
        passport.verify(network, identity.public_key)
        self.identity = identity
        self.passport = passport
        self.network = network
        self.node_id = identity.node_id
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._advertise = advertise
        self.address: Address | None = advertise
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.accepted_roles = accepted_roles
        self.handshake_timeout = handshake_timeout
        self._handlers: dict[str, Handler] = {}
        self._connections: dict[NodeId, _Connection] = {}
        self._all_connections: set[_Connection] = set()
        self._dial_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._ran = False
        self._handshake_limiter = trio.CapacityLimiter(_MAX_CONCURRENT_HANDSHAKES)
        self._accepted = self._dialled = self._handshakes_failed = 0
        self._calls_started = self._calls_succeeded = self._calls_remote_errors = 0
        self._calls_timed_out = self._calls_unreachable = 0
        self._requests_served = self._handler_errors = self._protocol_errors = 0

    @property
    def contact(self) -> Contact:
        """This node as peers see it (needs :meth:`run` to have started)."""
        if self.address is None:
            raise RuntimeError("RpcNode.run() has not started yet")
        return Contact(self.node_id, self.address, self.identity.public_key)

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler(caller_contact, args)``.

        Raises:
            ValueError: ``method`` already has a handler.
        """
        if method in self._handlers:
            raise ValueError(f"RPC method {method!r} is already registered")
        self._handlers[method] = handler

    # -- service --------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or :meth:`aclose`; reports the bound Address.

        Cancellation closes every connection; pending calls fail with PeerUnreachable.
        A node runs once: to restart, make a new one (it may reuse the port and the keys).

        Raises:
            RuntimeError: the node already ran.
            OSError: the listening address is unavailable.
        """
        if self._ran:
            raise RuntimeError("an RpcNode runs only once; create a new one to restart")
        self._ran = True
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        sockname = listeners[0].socket.getsockname()
        bound = Address(str(sockname[0]), int(sockname[1]))
        self.address = self._advertise or bound
        try:
            with trio.CancelScope() as scope:
                self._cancel_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for listener in listeners:
                        nursery.start_soon(self._accept_loop, listener)
                    logger.info("RPC node %s listening on %s", self.node_id.hex(), bound)
                    task_status.started(bound)
        finally:
            self._nursery = None
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop serving: close the listener and every connection, and wait until done."""
        if self._cancel_scope is None:
            return
        self._cancel_scope.cancel()
        await self._stopped.wait()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # e.g. EMFILE: back off instead of spinning
                logger.warning("accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            self._nursery_start(self._handle_inbound, stream)

    async def _handle_inbound(self, tcp: trio.SocketStream) -> None:
        established = False
        try:
            async with self._handshake_limiter:  # a flood of idle dials cannot pile up
                secure = await establish(
                    tcp,
                    self.identity,
                    self.passport,
                    self.network,
                    initiator=False,
                    listen_address=self._own_address(),
                    accepted_roles=self.accepted_roles,
                    max_message_size=self.max_message_size,
                    timeout=self.handshake_timeout,
                )
            established = True
        except ProtocolError:
            self._handshakes_failed += 1
            return  # establish closed the stream and logged the refusal with the address
        finally:
            if not established:  # also when cancelled while waiting for the limiter
                await trio.aclose_forcefully(tcp)
        self._accepted += 1
        await self._adopt(secure, initiated_by_us=False).run()

    async def connect_stream(
        self,
        stream: trio.abc.Stream,
        *,
        initiator: bool,
        expected_node_id: NodeId | None = None,
    ) -> Contact:
        """Authenticate the peer on an already open ``stream`` and serve RPC over it.

        For transports other than the node's own TCP dialling and listening (a unix socket,
        or ``trio.testing.memory_stream_pair()`` in tests): after this the connection is used
        like any other, in both directions. Exactly one side passes ``initiator=True``.

        Returns:
            The authenticated peer.

        Raises:
            PeerUnreachable: the handshake failed (refused, garbage, timeout); ``stream`` is
                closed.
        """
        if self._nursery is None:
            raise PeerUnreachable("RpcNode is not running")
        try:
            secure = await establish(
                stream,
                self.identity,
                self.passport,
                self.network,
                initiator=initiator,
                listen_address=self._own_address(),
                expected_node_id=expected_node_id,
                accepted_roles=self.accepted_roles,
                max_message_size=self.max_message_size,
                timeout=self.handshake_timeout,
            )
        except ProtocolError as e:
            self._handshakes_failed += 1
            raise PeerUnreachable(f"handshake failed: {e}") from e
        conn = self._adopt(secure, initiated_by_us=initiator)
        self._nursery.start_soon(conn.run)
        return conn.contact

    def _nursery_start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise PeerUnreachable("RpcNode is not running")
        self._nursery.start_soon(fn, *args)

    def _own_address(self) -> Address:
        return self.address if self.address is not None else Address("", 0)

    # -- connection table -----------------------------------------------------------

    def _adopt(self, secure: SecureStream, *, initiated_by_us: bool) -> _Connection:
        """Register a fresh connection, draining a duplicate so one per peer remains."""
        conn = _Connection(self, secure, initiated_by_us=initiated_by_us)
        self._all_connections.add(conn)
        peer = conn.peer.node_id
        existing = self._connections.get(peer)
        if existing is None or not existing.usable:
            self._connections[peer] = conn
            return conn
        if (
            existing.initiated_by_us == initiated_by_us
            or trio.current_time() - existing.adopted_at > _DIAL_RACE_SECONDS
        ):
            keep, drop = conn, existing  # the peer redialled: the old one is stale
        else:
            ours, theirs = (conn, existing) if initiated_by_us else (existing, conn)
            keep, drop = (ours, theirs) if self.node_id < peer else (theirs, ours)
        self._connections[peer] = keep
        logger.debug("duplicate connection to %s: draining one", peer.hex())
        drop.drain()
        return conn

    def _forget(self, conn: _Connection) -> None:
        if self._connections.get(conn.peer.node_id) is conn:
            del self._connections[conn.peer.node_id]
        if conn.closed:
            self._all_connections.discard(conn)

    async def _connection_to(self, contact: Contact) -> _Connection:
        conn = self._connections.get(contact.node_id) if contact.node_id else None
        if conn is not None and conn.usable:
            return conn
        key = bytes(contact.node_id) or str(contact.address).encode()
        lock = self._dial_locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                conn = self._connections.get(contact.node_id) if contact.node_id else None
                if conn is not None and conn.usable:
                    return conn
                return await self._dial(contact)
        finally:
            if lock.statistics().tasks_waiting == 0 and not lock.locked():
                self._dial_locks.pop(key, None)

    async def _dial(self, contact: Contact) -> _Connection:
        if self._nursery is None:
            raise PeerUnreachable("RpcNode is not running")
        address = contact.address
        try:
            tcp = await trio.open_tcp_stream(address.host, address.port)
        except OSError as e:
            raise PeerUnreachable(f"cannot connect to {address}: {e}") from e
        try:
            secure = await establish(
                tcp,
                self.identity,
                self.passport,
                self.network,
                initiator=True,
                listen_address=self._own_address(),
                expected_node_id=contact.node_id or None,
                accepted_roles=self.accepted_roles,
                max_message_size=self.max_message_size,
                timeout=self.handshake_timeout,
            )
        except ProtocolError as e:
            self._handshakes_failed += 1
            raise PeerUnreachable(f"handshake with {address} failed: {e}") from e
        self._dialled += 1
        conn = self._adopt(secure, initiated_by_us=True)
        self._nursery.start_soon(conn.run)
        return conn

    # -- calls ----------------------------------------------------------------------

    async def call(self, contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        """Call ``method`` on ``contact`` with msgpack-serialisable ``args``; return the result.

        Reuses the connection to that peer (whichever side opened it) or dials one. If
        ``contact.node_id`` is empty the peer at ``contact.address`` is accepted whoever it is
        (bootstrap); otherwise it must prove that id. Cancellation abandons the call: nothing
        more is sent for it and its reply is dropped.

        Raises:
            PeerUnreachable: no connection could be made, or it broke mid-call.
            RpcTimeout: no answer within ``timeout`` seconds (the call may have run).
            RemoteError: the peer answered with a typed error.
            TypeError: ``args`` cannot be serialised with msgpack.
        """
        self._calls_started += 1
        if contact.node_id == self.node_id:
            return await self._call_self(method, args, timeout)
        deadline = trio.current_time() + timeout
        try:
            for _attempt in range(3):
                conn = self._connections.get(contact.node_id) if contact.node_id else None
                if conn is None or not conn.usable:
                    conn = None
                    with trio.move_on_at(deadline):
                        conn = await self._connection_to(contact)
                    if conn is None:
                        raise RpcTimeout(
                            f"{method} on {contact.address}: no connection after {timeout} s"
                        )
                try:
                    result = await conn.call(method, args, deadline)
                except _Retry:
                    continue
                self._calls_succeeded += 1
                return result
            raise PeerUnreachable(f"connections to {contact.address} keep closing")
        except RemoteError:
            self._calls_remote_errors += 1
            raise
        except PeerUnreachable:
            self._calls_unreachable += 1
            raise
        except RpcTimeout:
            self._calls_timed_out += 1
            raise

    async def _call_self(self, method: str, args: Any, timeout: float) -> Any:
        """Run a call addressed to this node in-process, with the same semantics."""
        handler = self._handlers.get(method)
        if handler is None:
            self._calls_remote_errors += 1
            raise RemoteError("no_such_method", method)
        args = _local_copy(args)
        with trio.move_on_after(timeout):
            try:
                result = await handler(self.contact, args)
            except RemoteError:
                self._calls_remote_errors += 1
                raise
            except Exception as e:
                self._handler_errors += 1
                self._calls_remote_errors += 1
                logger.exception("handler for %r failed (local call)", method)
                raise RemoteError("internal", "internal error") from e
            self._calls_succeeded += 1
            return _local_copy(result)
        self._calls_timed_out += 1
        raise RpcTimeout(f"{method} on self timed out after {timeout} s")

    # -- introspection --------------------------------------------------------------

    def connections(self) -> list[ConnectionStatistics]:
        """Return statistics of every open connection (including draining ones)."""
        return [c.statistics() for c in self._all_connections if not c.closed]

    def statistics(self) -> RpcStatistics:
        """Return this node's counters."""
        return RpcStatistics(
            connections=len(self._connections),
            connections_accepted=self._accepted,
            connections_dialled=self._dialled,
            handshakes_failed=self._handshakes_failed,
            calls_started=self._calls_started,
            calls_succeeded=self._calls_succeeded,
            calls_remote_errors=self._calls_remote_errors,
            calls_timed_out=self._calls_timed_out,
            calls_unreachable=self._calls_unreachable,
            calls_in_flight=sum(len(c.pending) for c in self._all_connections),
            requests_served=self._requests_served,
            handler_errors=self._handler_errors,
            protocol_errors=self._protocol_errors,
        )


__all__ = [
    "ConnectionStatistics",
    "RpcNode",
    "RpcStatistics",
    "describe_remote",
]
