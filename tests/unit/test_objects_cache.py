"""The object store's fast paths: cached bucket configurations, GET prefetch, group commit.

Two :class:`ObjectStore` objects on one fake block store play two gateways: what one caches,
the other may change underneath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from storage.errors import NoSuchBucket, NoSuchKey, NotFound, PreconditionFailed, Unavailable
from storage.object_records import CorsRule
from storage.objects import GET_PREFETCH, REGISTRY, ObjectStore
from storage.policy import Redundancy
from tests.fake_blockstore import FakeBlockStore

CHUNK = 1024


def gateway(fake: FakeBlockStore, **kwargs: float) -> ObjectStore:
    return ObjectStore(fake, chunk_size=CHUNK, **kwargs)  # type: ignore[arg-type]


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def fetch(store: ObjectStore, bucket: str, key: str) -> bytes:
    got: list[bytes] = []

    async def sink(data: bytes) -> None:
        got.append(data)

    await (await store.open_object(bucket, key)).send_to(sink)
    return b"".join(got)


# -- cached bucket configurations -------------------------------------------------------------


async def test_object_operations_reuse_the_bucket_configuration() -> None:
    fake = FakeBlockStore()
    store = gateway(fake)
    await store.create_bucket("b", owner="o")
    fake.reads.clear()
    for i in range(10):
        await store.put_object("b", f"k{i}", body(b"x" * 100))
        assert await fetch(store, "b", f"k{i}") == b"x" * 100
        await store.head_object("b", f"k{i}")
    await store.list_objects("b")
    await store.delete_object("b", "k0")
    assert fake.reads[REGISTRY] == 0
    await store.head_bucket("b")  # bucket-level operations read the registry
    assert fake.reads[REGISTRY] == 1


async def test_cache_expires() -> None:
    fake = FakeBlockStore()
    store = gateway(fake, bucket_cache_seconds=0.05)
    await store.create_bucket("b", owner="o")
    fake.reads.clear()
    await store.put_object("b", "k", body(b"x"))
    await trio.sleep(0.06)
    await store.head_object("b", "k")
    assert fake.reads[REGISTRY] == 1
    uncached = gateway(fake, bucket_cache_seconds=0.0)
    for _ in range(3):
        await uncached.head_object("b", "k")
    assert fake.reads[REGISTRY] == 4


async def test_no_write_lands_in_a_bucket_deleted_by_another_gateway() -> None:
    fake = FakeBlockStore()
    a, b = gateway(fake), gateway(fake)
    await a.create_bucket("gone", owner="o")
    await b.put_object("gone", "k", body(b"x" * 3000))  # b caches the bucket
    await b.delete_object("gone", "k")
    assert not fake.chunks
    await a.delete_bucket("gone")
    with pytest.raises(NoSuchBucket):
        await b.put_object("gone", "k2", body(b"y" * 3000))
    assert not fake.chunks  # the chunks stored before the refusal were released
    with pytest.raises(NoSuchBucket):
        await b.head_object("gone", "k2")
    with pytest.raises(NoSuchBucket):
        await b.list_objects("gone")
    with pytest.raises(NoSuchBucket):
        await b.delete_object("gone", "k2")
    with pytest.raises(NoSuchBucket):
        await a.head_bucket("gone")


async def test_a_write_racing_a_deletion_waits_for_it_then_fails() -> None:
    fake = FakeBlockStore()
    a, b = gateway(fake), gateway(fake)
    await a.create_bucket("racy", owner="o")
    await b.put_object("racy", "k", body(b"x"))
    await b.delete_object("racy", "k")
    index = await a.bucket_index("racy")
    await index.seal()  # a deletion in progress: sealed, still registered

    async def finish_deletion() -> None:
        await trio.sleep(0.2)
        await a.delete_bucket("racy")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_deletion)
        with pytest.raises(NoSuchBucket):
            await b.put_object("racy", "k", body(b"z" * 2000))
    assert not fake.chunks


async def test_a_recreated_bucket_is_found_through_a_stale_cache() -> None:
    fake = FakeBlockStore()
    a, b = gateway(fake), gateway(fake)
    await a.create_bucket("again", owner="o")
    await b.put_object("again", "old", body(b"1"))
    await b.delete_object("again", "old")
    await a.delete_bucket("again")
    await a.create_bucket("again", owner="o")  # a new incarnation: b's cache names the old
    info = await b.put_object("again", "k", body(b"n" * 2500))  # chunked
    assert info.size == 2500
    assert await fetch(a, "again", "k") == b"n" * 2500
    await a.put_object("again", "from-a", body(b"a"))
    assert await fetch(b, "again", "from-a") == b"a"
    assert [o.key for o in (await b.list_objects("again")).objects] == ["from-a", "k"]
    outcomes = await b.delete_objects("again", ["k", "from-a"])
    assert [o.error for o in outcomes] == [None, None]
    assert (await a.list_objects("again")).objects == []


async def test_recreated_with_another_policy_refuses_chunks_stored_under_the_old_one() -> None:
    fake = FakeBlockStore()
    a, b = gateway(fake), gateway(fake)
    await a.create_bucket("p", owner="o", redundancy=Redundancy(replicas=3))
    with pytest.raises(NoSuchKey):
        await b.head_object("p", "k")  # b caches the replicated incarnation
    await a.delete_bucket("p")
    await a.create_bucket("p", owner="o", redundancy=Redundancy(data=2, parity=1))
    with pytest.raises(NoSuchBucket):
        await b.put_object("p", "k", body(b"q" * 3000))
    assert not fake.chunks
    await b.put_object("p", "k", body(b"q" * 3000))  # the refusal refreshed the cache
    assert {policy for _data, policy in fake.chunks.values()} == {Redundancy(data=2, parity=1)}


# -- GET prefetch -------------------------------------------------------------------------------


class _SlowChunks(FakeBlockStore):
    """Chunk reads take a while and are counted while in flight."""

    in_flight = 0
    most_in_flight = 0

    async def get_chunk(self, ref):  # type: ignore[no-untyped-def]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(0.01)
            return await super().get_chunk(ref)
        finally:
            self.in_flight -= 1


async def test_get_fetches_a_bounded_window_ahead_in_order() -> None:
    fake = _SlowChunks()
    store = gateway(fake)
    await store.create_bucket("b", owner="o")
    data = bytes(range(256)) * 40  # 10 chunks
    await store.put_object("b", "k", body(data))
    reader = await store.open_object("b", "k")
    got: list[bytes] = []

    async def slow_sink(piece: bytes) -> None:
        await trio.sleep(0.02)
        got.append(piece)

    assert await reader.send_to(slow_sink) == len(data)
    assert b"".join(got) == data
    assert fake.most_in_flight == GET_PREFETCH  # fetched ahead, never more
    got.clear()
    assert await reader.send_to(slow_sink, 1500, 6500) == 5001
    assert b"".join(got) == data[1500:6501]


async def test_get_sends_what_precedes_a_failed_chunk_then_raises_its_error() -> None:
    fake = _SlowChunks()
    store = gateway(fake)
    await store.create_bucket("b", owner="o")
    data = b"d" * (6 * CHUNK)
    await store.put_object("b", "k", body(data))
    reader = await store.open_object("b", "k")
    chunks = await reader.chunks()
    fake.fail("get_chunk", match=lambda address: address == chunks[3].ref.address)
    got: list[bytes] = []

    async def sink(piece: bytes) -> None:
        got.append(piece)

    with pytest.raises(Unavailable):
        await reader.send_to(sink)
    assert b"".join(got) == data[: 3 * CHUNK]
    del fake.chunks[chunks[0].ref.address]
    with pytest.raises(NotFound):
        await reader.send_to(sink)


# -- group commit through the store -------------------------------------------------------------


async def test_concurrent_conditional_puts_have_one_winner_per_key() -> None:
    fake = FakeBlockStore(replay_edits=True)
    store = gateway(fake)
    await store.create_bucket("b", owner="o")
    wins: dict[str, int] = {}

    async def put(key: str, n: int) -> None:
        try:
            await store.put_object("b", key, body(b"%d" % n), if_none_match="*")
        except PreconditionFailed:
            return
        wins[key] = n

    async with trio.open_nursery() as nursery:
        for n in range(4):
            for key in ("a", "b", "c"):
                nursery.start_soon(put, key, n)
    assert set(wins) == {"a", "b", "c"}
    for key, n in wins.items():
        assert await fetch(store, "b", key) == b"%d" % n
    assert len(fake.chunks) == 3  # the losers' chunks were released


# -- PUT pipeline failures ----------------------------------------------------------------------


class _SlowPuts(FakeBlockStore):
    """Chunk writes land at once but are acknowledged late (a quorum being awaited), so
    several are under way when something fails; one abandoned then would be leaked."""

    async def put_chunk(self, plaintext, *, redundancy=None):  # type: ignore[no-untyped-def]
        ref = await super().put_chunk(plaintext, redundancy=redundancy)
        await trio.sleep(0.02)
        return ref


async def test_a_body_failing_mid_pipeline_leaves_no_chunk_behind() -> None:
    fake = _SlowPuts()
    store = gateway(fake)
    await store.create_bucket("b", owner="o")

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"p" * CHUNK  # several chunks go out at once...
        raise ValueError("the client's checksum does not match")  # ...then the body fails

    with pytest.raises(ValueError, match="checksum"):
        await store.put_object("b", "k", broken())
    assert fake.ops["put_chunk"] >= 2
    assert not fake.chunks  # the stores under way finished, then were released
    with pytest.raises(NoSuchKey):
        await store.head_object("b", "k")


async def test_a_failed_chunk_store_stops_the_body_and_releases_the_others() -> None:
    fake = _SlowPuts()
    store = gateway(fake)
    await store.create_bucket("b", owner="o")
    fake.fail("put_chunk", skip=2)
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"e" * CHUNK

    with pytest.raises(Unavailable):
        await store.put_object("b", "k", endless())
    assert pulled < 20
    assert not fake.chunks


async def test_cors_rules_come_from_the_cached_configuration() -> None:
    fake = FakeBlockStore()
    a, b = gateway(fake, bucket_cache_seconds=0.05), gateway(fake, bucket_cache_seconds=0.05)
    await a.create_bucket("b", owner="o")
    assert (await a.head_bucket("b")).cors is None
    rules = (CorsRule(("*",), ("GET",)), CorsRule(("http://a",), ("PUT",), ("x-*",), (), "r", 5))
    assert await b.cors_rules("b") is None  # b caches the bucket without rules
    await a.set_bucket_cors("b", rules)
    assert (await a.head_bucket("b")).cors == rules  # bucket-level reads are fresh
    fake.reads.clear()
    for _ in range(5):
        assert await a.cors_rules("b") == rules
        assert await b.cors_rules("b") is None  # up to bucket_cache_seconds old
    assert fake.reads[REGISTRY] == 0
    await trio.sleep(0.06)
    assert await b.cors_rules("b") == rules
    await a.set_bucket_cors("b", None)
    assert await a.cors_rules("b") is None
    assert (await a.head_bucket("b")).cors is None
    with pytest.raises(NoSuchBucket):
        await a.cors_rules("missing")
    with pytest.raises(NoSuchBucket):
        await a.set_bucket_cors("missing", rules)
