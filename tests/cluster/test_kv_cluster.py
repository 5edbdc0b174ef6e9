"""The key-value layer on real nodes: loopback TCP, secure RPC, overlays and silos in one run.

Chunks (replicated and erasure-coded) under node loss, on-disk corruption and a node that
serves altered bytes; registers (CASPaxos) under contention, node loss, forged proposals and
a restart of every node; and a check that no plaintext ever reaches a node's disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from dht.contracts import Handler
from dht.errors import RemoteError
from dht.identity import NodeIdentity
from dht.ids import Contact, NodeId
from dht.overlay import Overlay
from dht.rpc import RpcNode
from storage.api import ChunkRef
from storage.chunks import chunk_address, seal
from storage.errors import Conflict, Corrupt, NotFound, Unavailable
from storage.ids import BlockAddress
from storage.kv_client import KVClient
from storage.paxos import (
    Accept,
    AcceptorState,
    Ballot,
    BeginReplicaChange,
    RegisterValue,
    Reject,
    RejectReason,
    decode_message,
    encode_message,
)
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import register_address, sign_register_value, writer_field
from storage.silo_files import HEADER
from tests.cluster.conftest import Cluster, ClusterFactory, ClusterNode

REPLICATED = Redundancy(replicas=3)
CODED = Redundancy(data=4, parity=2)
SIZES = (0, 1, (1 << 20) + 1, 4 << 20)


def _stream(size: int, seed: int) -> bytes:
    """Deterministic test data of ``size`` bytes."""
    block = bytes((i * 131 + seed * 17) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def holder(
    cluster: Cluster, address: bytes, reader: int, rank: int = 0, *, replicas: int = 0
) -> ClusterNode:
    """The node a reader on node ``reader`` asks first (``rank`` 0) for ``address``.

    For a replicated chunk (``replicas`` holders) the reader asks its own node first when
    that node is one of the holders; erasure-coded fragments are asked in distance order.
    """
    overlay = cluster.nodes[reader].overlay
    assert overlay is not None
    order = overlay.closest_nodes(address, max(rank + 1, replicas))
    own = cluster.nodes[reader].identity.node_id
    holders = [c.node_id for c in order[:replicas]]
    if own in holders:
        order = [order[holders.index(own)], *(c for c in order if c.node_id != own)]
    contact = order[rank]
    return next(n for n in cluster.nodes if n.identity.node_id == contact.node_id)


async def wait_background(client: KVClient) -> None:
    """Wait until the client's straggler copies are settled."""
    with trio.fail_after(10):
        while client.statistics().background_tasks:  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.01)


# --- chunks ---------------------------------------------------------------------------------


async def test_chunks_round_trip_replicated_and_erasure_coded(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(6)
    writer = await cluster.client(0)
    reader = await cluster.client(3)
    refs: list[tuple[ChunkRef, bytes]] = []
    for policy in (REPLICATED, CODED):
        for size in SIZES:
            data = _stream(size, size % 7)
            ref = await writer.put_chunk(data, redundancy=policy)
            assert (ref.size, ref.redundancy) == (size, policy)
            refs.append((ref, data))
    for ref, data in refs:
        assert await reader.get_chunk(ref) == data
        assert await writer.get_chunk(ref) == data
    await wait_background(writer)
    stats = writer.statistics()
    assert stats.copies_stored == 4 * 3 + 4 * 6  # every copy placed, stragglers included
    assert stats.copies_failed == 0

    # Deleting: gone everywhere, and deleting again is fine.
    ref, _ = refs[2]
    await writer.delete_chunk(ref)
    await writer.delete_chunk(ref)
    with pytest.raises(NotFound):
        await reader.get_chunk(ref)
    ref, _ = refs[6]
    await writer.delete_chunk(ref)
    with pytest.raises(NotFound):
        await reader.get_chunk(ref)


async def test_erasure_coded_chunks_survive_two_lost_nodes_but_never_return_wrong_data(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(6)
    client = await cluster.client(0)
    stored = []
    for size in SIZES:
        for policy in (CODED, REPLICATED):
            data = _stream(size, 3)
            stored.append((await client.put_chunk(data, redundancy=policy), data))
    await wait_background(client)
    await cluster.stop(2)
    await cluster.stop(5)
    for ref, data in stored:
        assert await client.get_chunk(ref) == data
    # With 4 nodes left a 4+2 write cannot reach its quorum of 5 durable fragments.
    with pytest.raises(Unavailable) as refused:
        await client.put_chunk(b"more", redundancy=CODED)
    assert (refused.value.needed, refused.value.reached) == (5, 4)

    await cluster.stop(4)
    for ref, _ in stored:
        if not ref.redundancy.is_erasure_coded:
            continue
        with pytest.raises(Unavailable) as missing:
            await client.get_chunk(ref)
        assert (missing.value.needed, missing.value.reached) == (4, 3)


def _flip_file_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _block_files(node: ClusterNode, address: bytes) -> list[Path]:
    return sorted((node.directory / "blocks").rglob(address.hex() + "*"))


async def test_corrupt_copies_on_disk_are_detected_and_another_copy_served(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(6)
    client = await cluster.client(0)
    big = _stream((1 << 20) + 1, 5)
    small = b"a small chunk kept in SQLite"
    big_ref = await client.put_chunk(big, redundancy=REPLICATED)
    small_ref = await client.put_chunk(small, redundancy=REPLICATED)
    coded_ref = await client.put_chunk(big, redundancy=CODED)
    await wait_background(client)

    # A flipped byte in the block file of the holder the reader asks first.
    first = holder(cluster, big_ref.address, reader=0, replicas=3)
    (path,) = _block_files(first, big_ref.address)
    _flip_file_byte(path, HEADER.size + 1000)
    # A flipped byte in the SQLite row of a small block on its first holder.
    small_first = holder(cluster, small_ref.address, reader=0, replicas=3)
    with sqlite3.connect(small_first.directory / "silo.sqlite3", timeout=10) as db:
        (payload,) = db.execute(
            "SELECT payload FROM blocks WHERE address = ? AND fragment = -1",
            (small_ref.address,),
        ).fetchone()
        damaged = bytes([payload[0] ^ 0x01]) + payload[1:]
        db.execute(
            "UPDATE blocks SET payload = ? WHERE address = ? AND fragment = -1",
            (damaged, small_ref.address),
        )
    db.close()
    # A flipped byte in the fragment file of the node holding data fragment 0.
    coded_first = holder(cluster, coded_ref.address, reader=0)
    (fragment_path,) = _block_files(coded_first, coded_ref.address)
    _flip_file_byte(fragment_path, HEADER.size + 5000)

    assert await client.get_chunk(big_ref) == big
    assert await client.get_chunk(small_ref) == small
    assert await client.get_chunk(coded_ref) == big
    assert client.statistics().damaged_copies == 3
    damaged_nodes = {n.index: n for n in (first, small_first, coded_first)}
    for node in damaged_nodes.values():
        assert node.silo is not None
        assert node.service is not None
        assert node.silo.statistics().corrupt_detections >= 1
        assert node.service.statistics().corrupt_reads >= 1


class FaultyRegistry:
    """Registers a node's handlers on its RpcNode, with faults a test can switch on.

    ``enabled``: flip a byte in every ``kv.get`` reply (a node serving altered bytes);
    ``get_delay``: answer ``kv.get`` only after that many seconds (a slow node);
    ``hang``: methods that never answer (a node stuck mid-request).
    """

    def __init__(self, rpc: RpcNode) -> None:
        self.rpc = rpc
        self.enabled = False
        self.tampered = 0
        self.get_delay = 0.0
        self.hang: set[str] = set()

    def register(self, method: str, handler: Handler) -> None:
        async def faulty(caller: Contact, args: Any) -> Any:
            if method in self.hang:
                await trio.sleep_forever()
            if method == "kv.get" and self.get_delay:
                await trio.sleep(self.get_delay)
            result = await handler(caller, args)
            if method == "kv.get" and self.enabled and isinstance(result, dict):
                for key in ("payload", "fragment"):
                    if key in result and len(result[key]):
                        altered = bytearray(result[key])
                        altered[len(altered) // 2] ^= 0x55
                        result[key] = bytes(altered)
                        self.tampered += 1
            return result

        self.rpc.register(method, faulty)


def faulty_cluster(registries: dict[int, FaultyRegistry]) -> Callable[[int, RpcNode], Any]:
    """A ``registry_wrapper`` that records each node's :class:`FaultyRegistry`."""

    def wrap(index: int, rpc: RpcNode) -> FaultyRegistry:
        registries[index] = FaultyRegistry(rpc)
        return registries[index]

    return wrap


async def test_a_node_serving_altered_bytes_is_detected_by_the_reader(
    cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registries: dict[int, FaultyRegistry] = {}
    cluster = await cluster_factory(6, registry_wrapper=faulty_cluster(registries))
    client = await cluster.client(0)
    data = _stream(300_000, 9)
    replicated = await client.put_chunk(data, redundancy=REPLICATED)
    coded = await client.put_chunk(data, redundancy=CODED)
    small = await client.put_chunk(b"tiny", redundancy=REPLICATED)
    await wait_background(client)
    # One lying node at a time: the first holder the reader asks for each chunk.
    for ref, expected in ((replicated, data), (coded, data), (small, b"tiny")):
        liar = holder(cluster, ref.address, reader=0, replicas=ref.redundancy.replicas or 0)
        registries[liar.index].enabled = True
        before = client.statistics().corrupt_replies
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="storage.kv_client"):
            assert await client.get_chunk(ref) == expected
        registries[liar.index].enabled = False
        assert client.statistics().corrupt_replies == before + 1
        assert registries[liar.index].tampered >= 1
        assert liar.identity.node_id.hex() in caplog.text


async def test_replicas_with_blake2b_addresses_are_still_stored_and_read(
    cluster_factory: ClusterFactory,
) -> None:
    """Chunks written before BLAKE3 (BLAKE2b-256 addresses) are accepted by holders, e.g. when
    repair copies them, and read back; other bytes under such an address are refused."""
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    data = _stream(300_000, 5)
    sealed = seal(data)
    ciphertext = bytes(sealed.ciphertext)
    legacy = BlockAddress(hashlib.blake2b(b"ballast-chunk\0" + ciphertext, digest_size=32).digest())
    for index, node in enumerate(cluster.nodes):
        sender = cluster.nodes[(index + 1) % len(cluster.nodes)].rpc
        assert sender is not None
        args = {"address": legacy, "payload": ciphertext, "replicas": 3}
        assert await sender.call(node.contact, "kv.put", args, timeout=5) == {"stored": True}
    altered = bytearray(ciphertext)
    altered[7] ^= 0x01
    sender = cluster.nodes[0].rpc
    assert sender is not None
    args = {"address": legacy, "payload": bytes(altered), "replicas": 3}
    with pytest.raises(RemoteError) as refused:
        await sender.call(cluster.nodes[1].contact, "kv.put", args, timeout=5)
    assert refused.value.code == "invalid"
    ref = ChunkRef(address=legacy, key=sealed.key, size=len(data), redundancy=REPLICATED)
    assert await client.get_chunk(ref) == data


async def test_a_wrong_key_is_the_references_fault_not_the_holders(
    cluster_factory: ClusterFactory,
) -> None:
    """Replicas are authenticated by unsealing; one that does not open is then hashed: bytes
    that match the address mean the reference is wrong (Corrupt, no holder blamed)."""
    cluster = await cluster_factory(4)
    client = await cluster.client(0)
    data = _stream(300_000, 3)
    ref = await client.put_chunk(data, redundancy=REPLICATED)
    await wait_background(client)
    wrong = dataclasses.replace(ref, key=bytes(32))
    before = client.statistics()
    with pytest.raises(Corrupt):
        await client.get_chunk(wrong)
    after = client.statistics()
    assert after.corrupt_replies == before.corrupt_replies
    assert after.hedged_requests == before.hedged_requests
    assert await client.get_chunk(ref) == data


async def test_reads_hedge_around_a_slow_holder(cluster_factory: ClusterFactory) -> None:
    registries: dict[int, FaultyRegistry] = {}
    cluster = await cluster_factory(6, registry_wrapper=faulty_cluster(registries))
    client = await cluster.client(0)
    data = _stream(200_000, 4)
    refs = [await client.put_chunk(data, redundancy=p) for p in (REPLICATED, CODED)]
    await wait_background(client)
    for ref in refs:
        slow = holder(cluster, ref.address, reader=0, replicas=ref.redundancy.replicas or 0)
        registries[slow.index].get_delay = 3.0
        before = client.statistics().hedged_requests
        start = trio.current_time()
        assert await client.get_chunk(ref) == data
        assert trio.current_time() - start < 1.5  # did not wait for the slow holder
        assert client.statistics().hedged_requests > before
        registries[slow.index].get_delay = 0.0


async def test_operations_time_out_as_unavailable_when_nodes_hang(
    cluster_factory: ClusterFactory,
) -> None:
    registries: dict[int, FaultyRegistry] = {}
    cluster = await cluster_factory(3, registry_wrapper=faulty_cluster(registries))
    client = await cluster.client(0, timeout=1.0)
    await client.compare_and_set(b"k", None, b"v")
    for index in (1, 2):
        registries[index].hang = {"kv.paxos", "kv.put", "kv.get"}
    start = trio.current_time()
    with pytest.raises(Unavailable):
        await client.read(b"k")
    with pytest.raises(Unavailable) as put:
        await client.put_chunk(b"data", redundancy=REPLICATED)
    assert (put.value.needed, put.value.reached) == (2, 1)
    assert trio.current_time() - start < 4.0
    for index in (1, 2):
        registries[index].hang = set()
    assert (await client.read(b"k")).value == b"v"


async def test_a_full_node_refuses_writes_and_the_client_places_elsewhere(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(4, capacities={3: 4096})
    client = await cluster.client(0)
    full = cluster.nodes[3].identity.node_id
    overlay = cluster.nodes[0].overlay
    assert overlay is not None
    refs: list[tuple[ChunkRef, bytes]] = []
    targeted = 0
    # Addresses are random (each chunk has a fresh key): write until at least one chunk
    # was aimed at the full node (3 of 4 nodes are targets, so that takes a few at most).
    while len(refs) < 6 or (targeted == 0 and len(refs) < 40):
        data = _stream(20_000, len(refs))
        ref = await client.put_chunk(data, redundancy=REPLICATED)
        refs.append((ref, data))
        targeted += full in [c.node_id for c in overlay.closest_nodes(ref.address, 3)]
    await wait_background(client)
    assert targeted > 0
    stats = client.statistics()
    assert stats.spare_placements == targeted
    assert stats.copies_stored == len(refs) * 3
    service = cluster.nodes[3].service
    assert service is not None
    assert service.statistics().no_space == targeted
    for ref, data in refs:
        assert await client.get_chunk(ref) == data


async def test_bad_requests_are_refused_as_invalid(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(2)
    caller = cluster.nodes[0].rpc
    assert caller is not None
    target = cluster.nodes[1].contact
    payload = b"x" * 100
    bad: list[tuple[str, Any]] = [
        ("kv.put", "not a map"),
        ("kv.put", {"address": b"short", "payload": payload}),
        ("kv.put", {"address": chunk_address(payload), "payload": "text"}),
        ("kv.put", {"address": chunk_address(b"other"), "payload": payload}),
        ("kv.put", {"address": chunk_address(payload), "payload": payload, "fragment": "x"}),
        ("kv.put", {"address": os.urandom(32), "payload": payload, "fragment": 1}),
        (
            "kv.put",
            {"address": os.urandom(32), "payload": payload, "fragment": 1, "manifest": b"\x01"},
        ),
        ("kv.get", {"address": os.urandom(32), "fragment": 0, "skip": "no"}),
        ("kv.paxos", {"address": os.urandom(32), "message": b"garbage"}),
        ("kv.paxos", {"address": os.urandom(32), "message": msgpack.packb([4, [1, b"p"], None])}),
        ("kv.delete", {"address": 7}),
    ]
    for method, args in bad:
        with pytest.raises(RemoteError) as refused:
            await caller.call(target, method, args, timeout=5)
        assert refused.value.code == "invalid", (method, args)
    with pytest.raises(RemoteError) as missing:
        await caller.call(target, "kv.get", {"address": os.urandom(32)}, timeout=5)
    assert missing.value.code == "not_found"
    # Garbage consensus messages: refused as invalid (or, when they happen to parse as a
    # request, answered), never an internal error.
    rng = random.Random(7)
    codes: list[str] = []
    for _ in range(100):
        message = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        args = {"address": os.urandom(32), "message": message}
        try:
            await caller.call(target, "kv.paxos", args, timeout=5)
        except RemoteError as error:
            codes.append(error.code)
    assert set(codes) == {"invalid"}
    garbage = len(codes)
    service = cluster.nodes[1].service
    assert service is not None
    assert service.statistics().invalid_requests == len(bad) + garbage
    # The node carries on serving.
    good = {"address": chunk_address(payload), "payload": payload}
    await caller.call(target, "kv.put", good, timeout=5)
    reply = await caller.call(target, "kv.get", {"address": chunk_address(payload)}, timeout=5)
    assert reply == {"payload": payload}


# --- registers ------------------------------------------------------------------------------


async def test_register_create_read_cas_edit_delete(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    other = await cluster.client(1)
    with pytest.raises(NotFound):
        await client.read(b"r")
    created = await client.compare_and_set(b"r", None, b"one")
    assert created is not None
    assert (created.value, created.version) == (b"one", 1)
    seen = await other.read(b"r")
    assert (seen.value, seen.version) == (b"one", 1)

    with pytest.raises(Conflict) as lost:
        await other.compare_and_set(b"r", None, b"again")
    assert lost.value.current == seen
    with pytest.raises(Conflict) as stale:
        await other.compare_and_set(b"r", 7, b"two")
    assert stale.value.current == seen
    second = await other.compare_and_set(b"r", 1, b"two")
    assert second is not None
    assert (second.value, second.version) == (b"two", 2)

    edited = await client.edit(b"r", lambda v: (v or b"") + b"+")
    assert edited is not None
    assert (edited.value, edited.version) == (b"two+", 3)
    unchanged = await client.edit(b"r", lambda v: v)
    assert unchanged == edited  # an edit that changes nothing writes no new version

    class Abort(Exception):
        pass

    def refuse(value: bytes | None) -> bytes | None:
        raise Abort

    with pytest.raises(Abort):
        await other.edit(b"r", refuse)
    assert await client.read(b"r") == edited

    await other.delete(b"r")
    with pytest.raises(NotFound):
        await client.read(b"r")
    await client.delete(b"r")  # deleting a deleted register is fine
    with pytest.raises(Conflict) as gone:
        await client.compare_and_set(b"r", 3, b"x")
    assert gone.value.current is None
    again = await client.compare_and_set(b"r", None, b"reborn")
    assert again is not None
    assert again.value == b"reborn"
    assert again.version > 3
    assert await client.edit(b"fresh", lambda v: None) is None
    fresh = await client.edit(b"fresh", lambda v: b"made" if v is None else v + b"!")
    assert fresh is not None
    assert (fresh.value, fresh.version) == (b"made", 1)

    # Registers belong to their owner key: another owner sees nothing of them.
    stranger = await cluster.client(2, keys=type(cluster.keys).generate())
    with pytest.raises(NotFound):
        await stranger.read(b"r")


async def test_concurrent_increments_from_five_clients_are_exact(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(3)
    clients = [await cluster.client(i % 3, timeout=20.0) for i in range(5)]

    def increment(value: bytes | None) -> bytes:
        return str(int(value or b"0") + 1).encode()

    async def worker(client: KVClient) -> None:
        for _ in range(20):
            await client.edit(b"counter", increment)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(worker, client)
    elapsed = trio.current_time() - start
    final = await clients[0].read(b"counter")
    assert final.value == b"100"
    assert final.version == 100
    preemptions = sum(c.statistics().preemptions for c in clients)
    logging.getLogger(__name__).info(
        "100 contended increments in %.2f s, %d preemptions", elapsed, preemptions
    )


async def test_registers_survive_a_stopped_replica_and_fail_cleanly_without_a_majority(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0, timeout=3.0)
    await client.compare_and_set(b"k", None, b"v1")
    await cluster.stop(2)
    assert (await client.read(b"k")).value == b"v1"
    edited = await client.edit(b"k", lambda v: b"v2")
    assert edited is not None
    assert edited.version == 2
    await cluster.stop(1)
    with pytest.raises(Unavailable):
        await client.read(b"k")
    with pytest.raises(Unavailable):
        await client.edit(b"k", lambda v: b"v3")
    await cluster.restart(1)
    await cluster.restart(2)
    await cluster.wait_converged()
    late = await cluster.client(2)
    current = await late.read(b"k")
    # The failed edit may or may not have been applied (an Unavailable is ambiguous).
    assert current.value in (b"v2", b"v3")


async def test_forged_register_updates_are_refused_by_every_acceptor(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    await client.compare_and_set(b"victim", None, b"genuine")
    owner = cluster.keys.signing.public_key
    address = register_address(owner, b"victim")
    overlay = cluster.nodes[0].overlay
    assert overlay is not None
    acceptors = overlay.closest_nodes(address, 3)
    replicas = tuple(c.node_id for c in acceptors)
    mallory = NodeIdentity.generate()
    base = RegisterValue(version=50, replica_set=replicas, payload=b"forged")
    owner_writer = writer_field(owner, b"victim")
    wrong_key = RegisterValue(
        version=50,
        replica_set=replicas,
        payload=b"forged",
        writer=owner_writer,
        signature=mallory.sign(
            RegisterValue(50, replicas, b"forged", writer=owner_writer).signed_bytes()
        ),
    )
    unsigned = RegisterValue(version=50, replica_set=replicas, payload=b"x", writer=owner_writer)
    own_name = sign_register_value(mallory, b"victim", base)  # valid, but not this address
    caller = cluster.nodes[1].rpc
    assert caller is not None
    for forged in (wrong_key, unsigned, own_name):
        message = encode_message(Accept(Ballot(10**6, b"mallory"), forged, False))
        for acceptor in acceptors:
            result = await caller.call(
                acceptor, "kv.paxos", {"address": address, "message": message}, timeout=5
            )
            reply = decode_message(result["message"])
            assert isinstance(reply, Reject)
            assert reply.reason is RejectReason.FORBIDDEN
    for node in cluster.nodes:
        assert node.service is not None
        assert node.service.statistics().paxos_forbidden == 3
    current = await client.read(b"victim")
    assert (current.value, current.version) == (b"genuine", 1)


async def test_acknowledged_writes_survive_restarting_every_node(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    values = {f"reg{i}".encode(): f"value {i}".encode() * (i + 1) for i in range(8)}
    for name, value in values.items():
        await client.compare_and_set(name, None, value)
    await client.edit(b"reg0", lambda v: b"edited")
    values[b"reg0"] = b"edited"
    chunks = []
    for size, policy in (((1 << 20) + 1, REPLICATED), (5000, Redundancy(data=2, parity=1))):
        data = _stream(size, 11)
        chunks.append((await client.put_chunk(data, redundancy=policy), data))
    await wait_background(client)
    for node in list(cluster.nodes):
        await cluster.stop(node.index)
    for node in cluster.nodes:
        await cluster.restart(node.index)
    await cluster.wait_converged()
    reader = await cluster.client(1)
    for name, value in values.items():
        assert (await reader.read(name)).value == value
    for ref, data in chunks:
        assert await reader.get_chunk(ref) == data
    after = await reader.edit(b"reg1", lambda v: (v or b"") + b"!")
    assert after is not None
    assert after.version == 2


# --- confidentiality ------------------------------------------------------------------------


async def test_no_plaintext_reaches_any_node_disk(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(6)
    client = await cluster.client(0)
    secret = b"BALLAST-SECRET-PATTERN-0123456789"
    big = secret * ((300_000 // len(secret)) + 1)
    for policy in (REPLICATED, CODED):
        await client.put_chunk(big, redundancy=policy)
        await client.put_chunk(secret, redundancy=policy)
    await client.compare_and_set(b"register", None, secret)
    await client.edit(b"register", lambda v: (v or b"") + secret)
    await wait_background(client)
    for node in list(cluster.nodes):
        await cluster.stop(node.index)  # closes the silos: WAL contents stay on disk too
    files = [p for p in cluster.root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("silo.sqlite3") for p in files)
    assert len([p for p in files if "blocks" in p.parts]) >= 3
    for path in files:
        content = path.read_bytes()
        assert secret[:16] not in content, path


# --- registers seen through different member views -------------------------------------------


class PartialView:
    """A placement that has not heard of some members yet (a gateway whose list lags)."""

    def __init__(self, overlay: Overlay, hidden: set[NodeId]) -> None:
        self._overlay = overlay
        self._hidden = hidden
        self._inner = OverlayPlacement(overlay)

    def closest(self, key: bytes, n: int) -> list[Contact]:
        """The ``n`` nearest members this view knows."""
        nearest = self._overlay.closest_nodes(key, n + len(self._hidden))
        return [c for c in nearest if c.node_id not in self._hidden][:n]

    def contact(self, node_id: NodeId) -> Contact | None:
        """A known member's contact."""
        return None if node_id in self._hidden else self._inner.contact(node_id)


def node_of(cluster: Cluster, node_id: NodeId) -> ClusterNode:
    """The cluster node with id ``node_id``."""
    return next(n for n in cluster.nodes if n.identity.node_id == node_id)


async def lagging_client(cluster: Cluster, index: int, hidden: set[NodeId]) -> KVClient:
    """A client on node ``index`` whose placement does not know the ``hidden`` members."""
    node = cluster.nodes[index]
    assert node.rpc is not None
    assert node.overlay is not None
    assert node.nursery is not None
    client = KVClient(
        node.rpc,
        PartialView(node.overlay, hidden),
        keys=cluster.keys,
        default_redundancy=REPLICATED,
        timeout=5.0,
    )
    await node.nursery.start(client.run)
    return client


def ranked_members(cluster: Cluster, name: bytes) -> list[NodeId]:
    """Every member, nearest to register ``name``'s address first."""
    address = register_address(cluster.keys.signing.public_key, name)
    overlay = cluster.nodes[0].overlay
    assert overlay is not None
    return [c.node_id for c in overlay.closest_nodes(address, len(cluster.nodes))]


async def test_clients_with_different_member_views_never_fork_a_register(
    cluster_factory: ClusterFactory,
) -> None:
    registries: dict[int, FaultyRegistry] = {}
    cluster = await cluster_factory(5, registry_wrapper=faulty_cluster(registries))
    name = b"one history"
    ranked = ranked_members(cluster, name)
    # A gateway that has not heard of the two members nearest to the register yet creates
    # it on the three it knows: ranked[2:5].
    lagging = await lagging_client(cluster, 0, set(ranked[:2]))
    created = await lagging.compare_and_set(name, None, b"first")
    assert created is not None
    # The creation set's member that an up-to-date client shares with it stalls, so the
    # up-to-date client's own nearest three, ranked[0:3], can only answer "empty".
    registries[node_of(cluster, ranked[2]).index].hang = {"kv.paxos"}
    current = await cluster.client(1)
    seen = await current.read(name)
    assert (seen.value, seen.version) == (b"first", 1)
    with pytest.raises(Conflict) as lost:
        await current.compare_and_set(name, None, b"second")
    assert lost.value.current == seen
    registries[node_of(cluster, ranked[2]).index].hang = set()
    assert await lagging.read(name) == seen


# --- moving registers (repair, rebalancing, drain) ---------------------------------------------


async def held(cluster: Cluster, node_id: NodeId, address: bytes) -> RegisterValue | None:
    """The value node ``node_id`` has accepted for ``address`` (from its silo)."""
    silo = node_of(cluster, node_id).silo
    assert silo is not None
    record = await silo.load_paxos(BlockAddress(address))
    if record is None or record.value is None:
        return None
    return AcceptorState.from_bytes(record.value).value


async def test_move_register_to_a_disjoint_set_keeps_every_write(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(6)
    name = b"moving"
    address = register_address(cluster.keys.signing.public_key, name)
    ranked = ranked_members(cluster, name)
    old, new = tuple(ranked[:3]), tuple(ranked[3:])
    writer = await cluster.client(node_of(cluster, old[0]).index)
    stale = await cluster.client(node_of(cluster, old[1]).index)
    mover = await cluster.client(node_of(cluster, new[0]).index)  # outlives the old set
    await writer.compare_and_set(name, None, b"v1")
    assert (await stale.read(name)).value == b"v1"  # caches the old set

    await cluster.stop(node_of(cluster, old[2]).index)  # misses the move
    moved = await mover.move_register(address, new, hint=old)
    assert moved is not None
    assert (set(moved.replica_set), moved.next_replica_set) == (set(new), None)
    assert moved.version == 1
    # The members that left hold the final value (they point at the new set), the one
    # that was down once a later call for the same move finds it up.
    assert [await held(cluster, n, address) for n in old[:2]] == [moved, moved]
    await cluster.restart(node_of(cluster, old[2]).index)
    await cluster.wait_converged()
    assert await held(cluster, old[2], address) != moved
    assert await mover.move_register(address, new, hint=old) == moved
    assert await held(cluster, old[2], address) == moved
    # The old set's members still answer, and point every stale client at the new set.
    edited = await stale.edit(name, lambda v: (v or b"") + b"+v2")
    assert edited is not None
    assert (edited.value, edited.version) == (b"v1+v2", 2)
    assert (await writer.read(name)).value == b"v1+v2"
    # Moving again to where it is changes nothing; an absent register has nothing to move.
    again = await mover.move_register(address, new, hint=new)
    assert again is not None
    assert again.version == 2
    absent = register_address(cluster.keys.signing.public_key, b"never written")
    assert await mover.move_register(absent, new, hint=old) is None
    assert await mover.sync_register(absent, hint=old) is None
    # With the whole old set gone, the new set alone serves the register.
    for node_id in old:
        await cluster.stop(node_of(cluster, node_id).index)
    assert mover.statistics().registers_moved == 3
    assert (await mover.read(name)).value == b"v1+v2"
    final = await mover.edit(name, lambda v: (v or b"") + b"+v3")
    assert final is not None
    assert final.version == 3


async def test_move_register_while_other_clients_write(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(6)
    name = b"busy counter"
    address = register_address(cluster.keys.signing.public_key, name)
    ranked = ranked_members(cluster, name)
    sets = [tuple(ranked[:3]), tuple(ranked[2:5]), tuple(ranked[3:6]), tuple(ranked[:3])]
    writers = [await cluster.client(i % 6, timeout=30.0) for i in range(4)]
    mover = await cluster.client(5, timeout=30.0)
    stale = await cluster.client(4, timeout=30.0)
    await writers[0].compare_and_set(name, None, b"0")
    assert (await stale.read(name)).value == b"0"  # caches the creation set

    def increment(value: bytes | None) -> bytes:
        return str(int(value or b"0") + 1).encode()

    acknowledged = 0

    async def write(client: KVClient) -> None:
        nonlocal acknowledged
        for _ in range(15):
            await client.edit(name, increment)
            acknowledged += 1

    async def move() -> None:
        for previous, target in itertools.pairwise(sets):
            await trio.sleep(0.05)
            moved = await mover.move_register(address, target, hint=previous)
            assert moved is not None
            assert set(moved.replica_set) == set(target)

    async with trio.open_nursery() as nursery:
        for client in writers:
            nursery.start_soon(write, client)
        nursery.start_soon(move)
    assert acknowledged == 60
    final = await stale.read(name)
    assert final.value == b"60"
    synced = await mover.sync_register(address, hint=sets[1])
    assert synced is not None
    assert set(synced.replica_set) == set(sets[-1])
    assert mover.statistics().unsynced_acceptors == 0


async def test_move_register_resumes_or_replaces_a_half_done_move_and_moves_tombstones(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(6)
    name = b"half moved"
    address = register_address(cluster.keys.signing.public_key, name)
    ranked = ranked_members(cluster, name)
    home, elsewhere, target = tuple(ranked[:3]), tuple(ranked[3:]), tuple(ranked[1:4])
    client = await cluster.client(0)
    await client.compare_and_set(name, None, b"data")
    # A mover that stopped after the first step leaves the register in its joint state.
    begun = await client._consensus(address, BeginReplicaChange(elsewhere), size=3, hint=home)
    assert begun.value is not None
    assert begun.value.next_replica_set == elsewhere
    replaced = await client.move_register(address, target, hint=home)
    assert replaced is not None
    assert (set(replaced.replica_set), replaced.next_replica_set) == (set(target), None)
    # Resumed: the move under way is the one asked for.
    await client._consensus(address, BeginReplicaChange(elsewhere), size=3, hint=target)
    resumed = await client.move_register(address, elsewhere, hint=target)
    assert resumed is not None
    assert (set(resumed.replica_set), resumed.next_replica_set) == (set(elsewhere), None)
    # Deleted registers move too (their tombstone must stay where readers look).
    await client.delete(name)
    moved = await client.move_register(address, home, hint=elsewhere)
    assert moved is not None
    assert moved.is_tombstone
    assert set(moved.replica_set) == set(home)
    with pytest.raises(NotFound):
        await (await cluster.client(3)).read(name)


async def test_sync_register_brings_a_lagging_acceptor_up_to_date(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = await cluster_factory(3)
    name = b"lagging"
    address = register_address(cluster.keys.signing.public_key, name)
    replicas = tuple(ranked_members(cluster, name))
    client = await cluster.client(0, timeout=3.0)
    lagging = next(n for n in cluster.nodes if n.index != 0)
    await cluster.stop(lagging.index)
    await client.compare_and_set(name, None, b"written while a member was down")
    # Down: the write-back cannot reach it; the value is still returned.
    value = await client.sync_register(address, hint=replicas)
    assert value is not None
    assert client.statistics().unsynced_acceptors == 1
    await cluster.restart(lagging.index)
    await cluster.wait_converged()
    assert lagging.silo is not None
    assert await lagging.silo.load_paxos(address) is None
    synced = await client.sync_register(address, hint=replicas)
    assert synced == value
    record = await lagging.silo.load_paxos(address)
    assert record is not None
    assert record.value is not None
    assert AcceptorState.from_bytes(record.value).value == value
    assert client.statistics().unsynced_acceptors == 1


def replace_with(value: bytes, current: bytes | None) -> bytes:
    """An edit that writes ``value`` whatever the register held."""
    return value


async def test_operations_in_flight_together_share_rpcs(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    names = [b"many %d" % i for i in range(16)]

    async def write(name: bytes) -> None:
        for value in (b"0", b"1", b"2"):
            await client.edit(name, functools.partial(replace_with, value))

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(write, name)
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(client.read, name)
    for name in names:
        assert (await client.read(name)).value == b"2"
    stats = client.statistics()
    assert stats.consensus_calls * 2 < stats.consensus_messages
    service = cluster.nodes[1].service
    assert service is not None
    assert service.statistics().invalid_requests == 0


async def test_reads_of_a_settled_register_write_nothing(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(3)
    client = await cluster.client(0)
    await client.compare_and_set(b"quiet", None, b"v")

    def writes() -> int:
        return sum(n.service.statistics().paxos_state_writes for n in cluster.nodes if n.service)

    with trio.fail_after(5):  # let the write's last accept land
        while True:
            before = writes()
            await trio.sleep(0.2)
            if writes() == before:
                break
    quick = client.statistics().quick_reads
    for _ in range(5):
        assert (await client.read(b"quiet")).value == b"v"
    assert writes() == before
    assert client.statistics().quick_reads == quick + 5
    # A client that never saw the register decides it by a (probing) round first.
    other = await cluster.client(1)
    assert (await other.read(b"quiet")).value == b"v"
    assert other.statistics().quick_reads == 0
    assert other.statistics().probes >= 1
