"""An in-memory network of RemoteCaller/HandlerRegistry endpoints, for tests only.

Every node gets a :class:`FakeEndpoint` that implements ``dht.contracts.RemoteCaller`` and
``dht.contracts.HandlerRegistry``. Calls go through msgpack both ways (so only shapes the
real RPC can carry get through), take a configurable latency each way, and obey faults:

* ``kill(node)``: the node neither calls nor answers; callers get ``PeerUnreachable``
  (connection refused) or, with ``blackhole=True``, ``RpcTimeout`` after their timeout.
* ``partition(group_a, group_b, ...)``: calls between different groups are lost (timeout);
  nodes named in no group form one more group of their own.
* ``drop_rate``: each request and each reply is lost with this probability (timeout).
* ``delay(node, seconds)``: extra latency on every message to or from ``node``.

A contact with an empty node id reaches whichever node listens at its address, as
``dht.rpc`` allows for bootstrap contacts.

Use it with ``trio.testing.MockClock(autojump_threshold=0)`` so timeouts take no real time.
Handler exceptions other than ``RemoteError`` are recorded in ``handler_errors`` (tests
should assert it stays empty) and surface to the caller as ``RemoteError("internal")``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from dht.contracts import Handler
from dht.errors import PeerUnreachable, RemoteError, RpcTimeout
from dht.ids import Address, Contact, NodeId, node_id_from_public_key


def make_contact(index: int, rng: random.Random | None = None) -> Contact:
    """A contact whose id is the hash of a (random, fake) 32-byte public key."""
    rng = rng or random.Random(index)
    public_key = rng.randbytes(32)
    return Contact(
        node_id_from_public_key(public_key), Address("10.0.0.1", 1000 + index), public_key
    )


@dataclass(frozen=True)
class FakeNetworkStatistics:
    """Message counters of a :class:`FakeNetwork`."""

    calls: int
    delivered: int
    refused: int
    lost: int


def _roundtrip(value: Any) -> Any:
    """Pass ``value`` through msgpack, as the real RPC would."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


class FakeNetwork:
    """A simulated network of nodes; see the module docstring.

    Args:
        latency: one-way delay of every message, in seconds.
        drop_rate: probability that a request or a reply is lost.
        seed: seed of the randomness used for drops.
    """

    def __init__(self, *, latency: float = 0.001, drop_rate: float = 0.0, seed: int = 0) -> None:
        self.latency = latency
        self.drop_rate = drop_rate
        self._rng = random.Random(seed)
        self._endpoints: dict[bytes, FakeEndpoint] = {}
        self._dead: dict[bytes, bool] = {}  # node id -> blackhole?
        self._group: dict[bytes, int] = {}
        self._delay: dict[bytes, float] = {}
        self.handler_errors: list[Exception] = []
        self._calls = self._delivered = self._refused = self._lost = 0

    def endpoint(self, contact: Contact) -> FakeEndpoint:
        """Attach a node; return its endpoint (caller and handler registry in one)."""
        key = bytes(contact.node_id)
        if key in self._endpoints:
            raise ValueError("node already attached")
        endpoint = FakeEndpoint(self, contact)
        self._endpoints[key] = endpoint
        return endpoint

    def detach(self, node_id: NodeId) -> None:
        """Remove a node's endpoint (its handlers go with it), as when a process exits."""
        self._endpoints.pop(bytes(node_id), None)

    def kill(self, node_id: NodeId, *, blackhole: bool = False) -> None:
        """Stop ``node_id`` from sending and answering."""
        self._dead[bytes(node_id)] = blackhole

    def revive(self, node_id: NodeId) -> None:
        """Undo :meth:`kill`."""
        self._dead.pop(bytes(node_id), None)

    def is_alive(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` is attached and not killed."""
        return bytes(node_id) in self._endpoints and bytes(node_id) not in self._dead

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network: only nodes of the same group (or of none) can talk."""
        self._group = {}
        for index, group in enumerate(groups, start=1):
            for node_id in group:
                self._group[bytes(node_id)] = index

    def heal(self) -> None:
        """Remove every partition."""
        self._group = {}

    def delay(self, node_id: NodeId, seconds: float) -> None:
        """Add ``seconds`` to every message to or from ``node_id``."""
        self._delay[bytes(node_id)] = seconds

    def _reachable(self, a: bytes, b: bytes) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def _one_way(self, a: bytes, b: bytes) -> float:
        return self.latency + self._delay.get(a, 0.0) + self._delay.get(b, 0.0)

    def _lost_now(self) -> bool:
        return self.drop_rate > 0 and self._rng.random() < self.drop_rate

    async def _call(
        self, source: Contact, target: Contact, method: str, args: Any, timeout: float
    ) -> Any:
        self._calls += 1
        src, dst = bytes(source.node_id), bytes(target.node_id)
        if not dst:  # an address-only contact (bootstrap): whoever listens there
            dst = next(
                (k for k, e in self._endpoints.items() if e.contact.address == target.address),
                b"?",
            )
        payload = _roundtrip(args)
        with trio.move_on_after(timeout):
            if src in self._dead:
                self._refused += 1
                raise PeerUnreachable(f"{source.address} is down")
            await trio.sleep(self._one_way(src, dst))
            endpoint = self._endpoints.get(dst)
            if endpoint is None or (dst in self._dead and not self._dead[dst]):
                self._refused += 1
                raise PeerUnreachable(f"connection to {target.address} refused")
            if dst in self._dead or not self._reachable(src, dst) or self._lost_now():
                self._lost += 1
                await trio.sleep_forever()
            handler = endpoint.handlers.get(method)
            if handler is None:
                raise RemoteError("no_such_method", method)
            try:
                result = _roundtrip(await handler(source, payload))
            except RemoteError as exc:
                raise RemoteError(exc.code, exc.message, _roundtrip(exc.detail)) from None
            except Exception as exc:
                self.handler_errors.append(exc)
                raise RemoteError("internal", repr(exc)) from None
            await trio.sleep(self._one_way(dst, src))
            if dst in self._dead or not self._reachable(src, dst) or self._lost_now():
                self._lost += 1
                await trio.sleep_forever()
            self._delivered += 1
            return result
        raise RpcTimeout(f"{method} to {target.address} timed out after {timeout}s")

    def statistics(self) -> FakeNetworkStatistics:
        """Message counters."""
        return FakeNetworkStatistics(self._calls, self._delivered, self._refused, self._lost)


class FakeEndpoint:
    """One node's view of a :class:`FakeNetwork`: a RemoteCaller and a HandlerRegistry."""

    def __init__(self, network: FakeNetwork, contact: Contact) -> None:
        self.network = network
        self.contact = contact
        self.handlers: dict[str, Handler] = {}

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler``; registering a name twice is an error."""
        if method in self.handlers:
            raise ValueError(f"{method!r} already registered")
        self.handlers[method] = handler

    async def call(self, contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        """Call ``method`` on ``contact`` through the network (see :class:`FakeNetwork`)."""
        return await self.network._call(self.contact, contact, method, args, timeout)


async def start_service(
    nursery: trio.Nursery, run: Callable[..., Awaitable[None]]
) -> trio.CancelScope:
    """Start ``run`` (a ``run(*, task_status)`` service) in its own cancel scope.

    Returns once the service called ``task_status.started()``; cancelling the returned scope
    stops the service alone, as killing its process would.
    """

    async def wrapper(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(run)
                task_status.started(scope)

    scope: trio.CancelScope = await nursery.start(wrapper)
    return scope
