"""ObjectStore on the fake block store: buckets, objects, listing, multipart, failures."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import trio

import storage.objects as objects_module
from storage.api import ChunkRef
from storage.errors import (
    BadDigest,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    Conflict,
    Corrupt,
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    InvalidRange,
    KeyTooLong,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from storage.ids import BlockAddress
from storage.object_records import (
    ContentHeaders,
    ObjectRecord,
    PartRecord,
    StoredChunk,
    UploadRecord,
)
from storage.objects import (
    ABANDONED_CLAIM_SECONDS,
    PUT_PIPELINE,
    RELEASE_CONCURRENCY,
    ObjectStore,
    ReleaseLater,
    decode_continuation_token,
    encode_continuation_token,
)
from storage.policy import Redundancy
from tests.fake_blockstore import FakeBlockStore

CHUNK = 1024
PART = 2048


def make_store(
    fake: FakeBlockStore | None = None, **kwargs: int
) -> tuple[FakeBlockStore, ObjectStore]:
    fake = fake or FakeBlockStore(replay_edits=True)
    ticks = itertools.count(1_700_000_000)
    options = {"chunk_size": CHUNK, "inline_chunks": 4, "min_part_size": PART}
    options.update(kwargs)
    store = ObjectStore(
        fake,
        chunk_size=options["chunk_size"],
        inline_chunks=options["inline_chunks"],
        min_part_size=options["min_part_size"],
        index_max_entries=8,
        clock=lambda: float(next(ticks)),
    )
    return fake, store


@pytest.fixture
async def env() -> tuple[FakeBlockStore, ObjectStore]:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    return fake, store


async def body(data: bytes, piece: int = 700) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]
        await trio.lowlevel.checkpoint()


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def fetch(store: ObjectStore, bucket: str, key: str) -> bytes:
    _, stream = await store.get_object(bucket, key)
    return await read_all(stream)


async def referenced(store: ObjectStore, buckets: Iterable[str]) -> set[bytes]:
    """Addresses of every chunk the listed buckets' objects reference (incl. chunk lists)."""
    out: set[bytes] = set()
    for bucket in buckets:
        page = await store.list_objects(bucket)
        for info in page.objects:
            reader = await store.open_object(bucket, info.key)
            out.update(bytes(c.ref.address) for c in await reader.chunks())
            record: ObjectRecord = reader.record
            if record.chunk_list is not None:
                out.add(bytes(record.chunk_list.ref.address))
    return out


# -- buckets ------------------------------------------------------------------------------


async def test_bucket_lifecycle() -> None:
    _fake, store = make_store()
    info = await store.create_bucket("photos", owner="alice", acl="public-read")
    assert info.owner == "alice"
    assert info.acl == "public-read"
    assert info.redundancy == Redundancy(replicas=3)
    await store.create_bucket("logs", owner="bob", redundancy=Redundancy(data=4, parity=2))
    assert [b.name for b in await store.list_buckets()] == ["logs", "photos"]
    assert [b.name for b in await store.list_buckets(owner="bob")] == ["logs"]
    assert (await store.head_bucket("logs")).redundancy == Redundancy(data=4, parity=2)
    await store.set_bucket_acl("photos", "private")
    assert (await store.head_bucket("photos")).acl == "private"
    with pytest.raises(InvalidArgument):
        await store.set_bucket_acl("photos", "everyone-please")
    with pytest.raises(NoSuchBucket):
        await store.set_bucket_acl("nope", "private")
    await store.delete_bucket("photos")
    with pytest.raises(NoSuchBucket):
        await store.head_bucket("photos")
    with pytest.raises(NoSuchBucket):
        await store.delete_bucket("photos")
    assert [b.name for b in await store.list_buckets()] == ["logs"]


async def test_create_existing_bucket_distinguishes_owner() -> None:
    _, store = make_store()
    await store.create_bucket("taken", owner="alice")
    with pytest.raises(BucketAlreadyOwnedByYou) as mine:
        await store.create_bucket("taken", owner="alice")
    assert mine.value.owner == "alice"
    with pytest.raises(BucketAlreadyExists) as theirs:
        await store.create_bucket("taken", owner="bob")
    assert theirs.value.owner == "alice"
    with pytest.raises(InvalidArgument):
        await store.create_bucket("", owner="bob")


async def test_delete_bucket_only_when_empty(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    for i in range(20):
        await store.put_object("bkt", f"k{i}", body(b"x"))
    with pytest.raises(BucketNotEmpty):
        await store.delete_bucket("bkt")
    await store.put_object("bkt", "still-works", body(b"y"))
    await store.delete_objects("bkt", [f"k{i}" for i in range(20)] + ["still-works"])
    await store.delete_bucket("bkt")
    assert not fake.chunks
    assert not fake.live_registers() or set(fake.live_registers()) == {b"s3/buckets"}


async def test_recreated_bucket_starts_empty(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _fake, store = env
    await store.put_object("bkt", "a", body(b"1"))
    await store.delete_object("bkt", "a")
    await store.delete_bucket("bkt")
    await store.create_bucket("bkt", owner="bob")
    assert (await store.list_objects("bkt")).objects == []
    assert (await store.head_bucket("bkt")).owner == "bob"


async def test_delete_bucket_aborts_uploads(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "big")
    await store.upload_part("bkt", "big", upload, 1, body(payload(3000)))
    assert fake.chunks
    await store.delete_bucket("bkt")
    assert not fake.chunks
    assert set(fake.live_registers()) == {b"s3/buckets"}


async def test_writer_waits_for_a_failed_deletion(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    index = await store.bucket_index("bkt")
    await index.seal()  # a deletion in progress
    result: list[str] = []

    async def writer() -> None:
        info = await store.put_object("bkt", "k", body(b"data"))
        result.append(info.key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(0.12)
        assert not result
        await index.unseal()  # ... which is rolled back
    assert result == ["k"]


async def test_writer_after_deletion_gets_no_such_bucket(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    _, store = env
    stale = await store.bucket_index("bkt")
    await store.delete_bucket("bkt")
    with pytest.raises(NoSuchBucket):
        await store.put_object("bkt", "k", body(b"data"))
    with pytest.raises(NoSuchBucket):
        await stale.update(b"k", lambda _old: b"x")


async def test_sealed_forever_gives_conflict(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await (await store.bucket_index("bkt")).seal()
    with pytest.raises(Conflict):
        await store.put_object("bkt", "k", body(b"data"))
    assert not fake.chunks  # refused for sure: chunks released


# -- objects ------------------------------------------------------------------------------


async def test_put_get_round_trip_with_metadata(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    data = payload(5000)
    info = await store.put_object(
        "bkt",
        "dir/a file+with%odd chars é",
        body(data),
        content_type="text/plain",
        content_encoding="gzip",
        content_disposition="attachment",
        content_language="fr",
        cache_control="no-cache",
        expires="Thu, 01 Dec 2094 16:00:00 GMT",
        metadata={"color": "blue", "x": "y z"},
        acl="public-read",
        owner="alice",
    )
    assert info.etag == md5(data)
    assert info.size == 5000
    assert info.version_id == "null"
    assert len(fake.chunks) == 6  # ceil(5000 / 1024) data chunks + a chunk list (5 > 4)
    head = await store.head_object("bkt", "dir/a file+with%odd chars é")
    assert head == info
    assert head.metadata == {"color": "blue", "x": "y z"}
    assert (head.content_type, head.content_encoding, head.cache_control) == (
        "text/plain",
        "gzip",
        "no-cache",
    )
    assert head.acl == "public-read"
    assert head.owner == "alice"
    assert await fetch(store, "bkt", "dir/a file+with%odd chars é") == data


async def test_empty_object(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    info = await store.put_object("bkt", "empty", body(b""))
    assert info.size == 0
    assert info.etag == md5(b"")
    assert not fake.chunks
    assert await fetch(store, "bkt", "empty") == b""
    with pytest.raises(InvalidRange):
        await store.get_object("bkt", "empty", range=(0, 0))


async def test_keys_limits(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    longest = "é" * 512  # 1024 bytes of UTF-8
    await store.put_object("bkt", longest, body(b"x"))
    assert (await store.head_object("bkt", longest)).size == 1
    with pytest.raises(KeyTooLong):
        await store.put_object("bkt", longest + "a", body(b"x"))
    with pytest.raises(InvalidArgument):
        await store.put_object("bkt", "", body(b"x"))
    with pytest.raises(InvalidArgument):
        await store.put_object("bkt", "\udc80", body(b"x"))


async def test_body_is_streamed_through_a_bounded_pipeline(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    pulled = 0
    durable = 0
    in_flight = 0
    most_in_flight = 0
    held: list[int] = []  # bytes read from the body but not yet durable, at each store
    original = fake.put_chunk

    async def spy(plaintext: bytes | memoryview, *, redundancy: Redundancy | None = None):  # type: ignore[no-untyped-def]
        nonlocal durable, in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        held.append(pulled * 256 - durable * CHUNK)
        await trio.sleep(0.01)
        try:
            return await original(plaintext, redundancy=redundancy)
        finally:
            in_flight -= 1
            durable += 1

    fake.put_chunk = spy  # type: ignore[method-assign]

    async def counting() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(80):
            pulled += 1
            yield b"z" * 256  # 80 * 256 = 20 chunks of 1024

    await store.put_object("bkt", "s", counting())
    # Stores overlap, but never more than PUT_PIPELINE of them, and the body is read at
    # most one chunk ahead of them.
    assert most_in_flight == PUT_PIPELINE
    assert max(held) <= (PUT_PIPELINE + 1) * CHUNK
    assert await fetch(store, "bkt", "s") == b"z" * 20 * CHUNK


async def test_big_pieces_and_chunk_list(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    data = payload(10 * CHUNK + 17)
    await store.put_object("bkt", "big", body(data, piece=5000))
    reader = await store.open_object("bkt", "big")
    assert reader.record.chunk_list is not None  # 11 refs > inline limit of 4
    assert reader.record.chunk_count == 11
    assert len(fake.chunks) == 12  # 11 data chunks + the chunk list
    assert await fetch(store, "bkt", "big") == data
    _, stream = await store.get_object("bkt", "big", range=(3000, 7000))
    assert await read_all(stream) == data[3000:7001]


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 0), (0, 1023), (1023, 1024), (100, 4999), (4096, None), (4999, 9000), (2048, 3071)],
)
async def test_ranges_fetch_only_overlapping_chunks(
    env: tuple[FakeBlockStore, ObjectStore], start: int, end: int | None
) -> None:
    fake, store = env
    data = payload(5000)
    await store.put_object("bkt", "r", body(data))
    before = fake.ops["get_chunk"]
    _, stream = await store.get_object("bkt", "r", range=(start, end))
    got = await read_all(stream)
    last = 4999 if end is None else min(end, 4999)
    assert got == data[start : last + 1]
    # The overlapping data chunks, plus the chunk-list chunk (5 refs > 4 inline).
    assert fake.ops["get_chunk"] - before == last // CHUNK - start // CHUNK + 1 + 1


async def test_invalid_ranges(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    await store.put_object("bkt", "r", body(payload(100)))
    with pytest.raises(InvalidRange) as exc:
        await store.get_object("bkt", "r", range=(100, 200))
    assert exc.value.size == 100
    with pytest.raises(InvalidArgument):
        await store.get_object("bkt", "r", range=(50, 10))


async def test_missing_bucket_vs_missing_key(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    with pytest.raises(NoSuchKey):
        await store.head_object("bkt", "nothing")
    with pytest.raises(NoSuchBucket):
        await store.head_object("nobucket", "nothing")
    with pytest.raises(NoSuchBucket):
        await store.put_object("nobucket", "k", body(b"x"))
    with pytest.raises(NoSuchBucket):
        await store.list_objects("nobucket")
    assert issubclass(NoSuchKey, NotFound)
    assert issubclass(NoSuchBucket, NotFound)


async def test_overwrite_and_delete_release_chunks(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await store.put_object("bkt", "k", body(payload(3000)))
    assert len(fake.chunks) == 3
    await store.put_object("bkt", "k", body(payload(6000, 1)))  # 6 chunks -> chunk list
    assert len(fake.chunks) == 7
    await store.put_object("bkt", "k", body(payload(10)))
    assert len(fake.chunks) == 1
    assert await fetch(store, "bkt", "k") == payload(10)
    assert await store.delete_object("bkt", "k") is True
    assert not fake.chunks
    assert await store.delete_object("bkt", "k") is False  # idempotent, as S3
    with pytest.raises(NoSuchKey):
        await store.head_object("bkt", "k")


async def test_dropped_chunks_are_released_concurrently_within_a_bound(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    """An overwritten object's chunks are released several at a time, never more than
    ``RELEASE_CONCURRENCY``; one that fails is counted and the others are still released."""
    fake, store = env
    chunks = 3 * RELEASE_CONCURRENCY
    await store.put_object("bkt", "k", body(payload(chunks * CHUNK)))
    old = set(fake.chunks)
    in_flight = peak = 0
    gate = trio.Event()
    delete = fake.delete_chunk

    async def counted_delete(ref: ChunkRef) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if peak == RELEASE_CONCURRENCY:
            gate.set()
        await gate.wait()  # hold every release until the bound is reached
        try:
            await delete(ref)
        finally:
            in_flight -= 1

    fake.delete_chunk = counted_delete  # type: ignore[method-assign]
    fake.fail("delete_chunk", match=lambda address: address in old)
    with trio.fail_after(10):  # one release at a time would never open the gate
        await store.put_object("bkt", "k", body(b"new"))
    assert peak == RELEASE_CONCURRENCY
    stats = store.statistics()
    assert stats.release_failures == 1
    assert stats.chunks_released == len(old) - 1
    assert len(set(fake.chunks) & old) == 1  # the one that failed is left (and logged)


async def test_release_goes_on_past_its_shielded_time(
    env: tuple[FakeBlockStore, ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is not released within the shielded time is released all the same (unshielded);
    the objects are taken up several at a time."""
    fake, store = env
    for key in ("a", "b", "c"):
        await store.put_object("bkt", key, body(payload(3 * CHUNK)))
    monkeypatch.setattr(objects_module, "_CLEANUP_SECONDS", 0.01)
    delete = fake.delete_chunk

    async def slow_delete(ref: ChunkRef) -> None:
        await trio.sleep(0.02)
        await delete(ref)

    fake.delete_chunk = slow_delete  # type: ignore[method-assign]
    later = ReleaseLater()
    outcomes = await store.delete_objects("bkt", ["a", "b", "c"], release_later=later)
    assert [o.error for o in outcomes] == [None, None, None]
    assert len(later) == 3
    assert len(fake.chunks) == 9  # nothing released before the answer
    await store.release(later)
    assert not fake.chunks
    assert len(later) == 0


async def test_delete_objects_batch(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    for key in ("a", "b", "c"):
        await store.put_object("bkt", key, body(b"1"))
    fake.fail("edit", skip=1)  # one index edit fails: the deletions it carried fail
    outcomes = await store.delete_objects("bkt", ["a", "b", "absent", "c"])
    assert [o.key for o in outcomes] == ["a", "b", "absent", "c"]
    failed = [o.key for o in outcomes if o.error is not None]
    assert 1 <= len(failed) < 4
    assert all(isinstance(o.error, Unavailable) for o in outcomes if o.error is not None)
    remaining = [o.key for o in (await store.list_objects("bkt")).objects]
    assert remaining == [k for k in failed if k != "absent"]
    assert len(fake.chunks) == len(remaining)
    with pytest.raises(NoSuchBucket):
        await store.delete_objects("nobucket", ["a"])


async def test_conditional_put(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    first = await store.put_object("bkt", "k", body(b"one"), if_none_match="*")
    with pytest.raises(PreconditionFailed):
        await store.put_object("bkt", "k", body(b"two"), if_none_match="*")
    assert len(fake.chunks) == 1  # the refused write's chunk was released
    with pytest.raises(PreconditionFailed):
        await store.put_object("bkt", "k", body(b"two"), if_match='"0123"')
    with pytest.raises(NoSuchKey):
        await store.put_object("bkt", "absent", body(b"two"), if_match=first.etag)
    with pytest.raises(InvalidArgument):
        await store.put_object("bkt", "k", body(b"two"), if_none_match='"abc"')
    second = await store.put_object("bkt", "k", body(b"two"), if_match=f'"{first.etag}"')
    assert await fetch(store, "bkt", "k") == b"two"
    await store.put_object("bkt", "k", body(b"3"), if_match=f'"x", "{second.etag}"')
    await store.put_object("bkt", "k", body(b"4"), if_match="*")
    assert len(fake.chunks) == 1


async def test_conditional_put_race_has_one_winner(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    fake.jitter = __import__("random").Random(5)
    winners: list[int] = []
    losers: list[int] = []

    async def racer(i: int) -> None:
        try:
            await store.put_object("bkt", "lock", body(bytes([i]) * 10), if_none_match="*")
            winners.append(i)
        except PreconditionFailed:
            losers.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(racer, i)
    assert len(winners) == 1
    assert len(losers) == 5
    assert await fetch(store, "bkt", "lock") == bytes([winners[0]]) * 10
    assert len(fake.chunks) == 1


async def test_content_md5(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    good = hashlib.md5(b"abc", usedforsecurity=False).digest()
    await store.put_object("bkt", "k", body(b"abc"), content_md5=good)
    with pytest.raises(BadDigest):
        await store.put_object("bkt", "k", body(b"abd"), content_md5=good)
    assert await fetch(store, "bkt", "k") == b"abc"
    assert len(fake.chunks) == 1


async def test_failing_body_leaves_nothing(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 3000
        raise ValueError("client went away")

    with pytest.raises(ValueError, match="went away"):
        await store.put_object("bkt", "k", broken())
    assert not fake.chunks
    with pytest.raises(NoSuchKey):
        await store.head_object("bkt", "k")


async def test_cancelled_put_releases_chunks(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 3000
        await trio.sleep_forever()
        yield b""  # pragma: no cover

    with trio.move_on_after(0.05):
        await store.put_object("bkt", "k", slow())
    assert not fake.chunks


async def test_unavailable_propagates(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    fake.fail("put_chunk", skip=1)
    with pytest.raises(Unavailable):
        await store.put_object("bkt", "k", body(payload(3000)))
    assert not fake.chunks  # the stored first chunk was released
    fake.fail("read")
    with pytest.raises(Unavailable):
        await store.head_object("bkt", "k")
    await store.put_object("bkt", "k", body(payload(3000)))
    fake.fail("get_chunk")
    _, stream = await store.get_object("bkt", "k")
    with pytest.raises(Unavailable):
        await read_all(stream)


async def test_ambiguous_commit_never_releases_referenced_chunks(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    index = await store.bucket_index("bkt")
    fake.fail("edit", after=True, match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):
        await store.put_object("bkt", "k", body(payload(3000)))
    # The write did commit: the object must be whole.
    assert await fetch(store, "bkt", "k") == payload(3000)


async def test_copy_object(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await store.create_bucket("ec", owner="alice", redundancy=Redundancy(data=4, parity=2))
    data = payload(3000)
    src = await store.put_object("bkt", "src", body(data), content_type="a/b", metadata={"m": "1"})
    copied = await store.copy_object("bkt", "src", "ec", "dst")
    assert copied.etag == src.etag
    assert copied.content_type == "a/b"
    assert copied.metadata == {"m": "1"}
    reader = await store.open_object("ec", "dst")
    for chunk in await reader.chunks():
        assert fake.chunks[chunk.ref.address][1] == Redundancy(data=4, parity=2)
    replaced = await store.copy_object(
        "bkt", "src", "bkt", "dst2", metadata_directive="REPLACE", content_type="c/d"
    )
    assert replaced.content_type == "c/d"
    assert replaced.metadata == {}
    # Copies own their data: deleting the source leaves them intact.
    await store.delete_object("bkt", "src")
    assert await fetch(store, "ec", "dst") == data
    assert await fetch(store, "bkt", "dst2") == data
    assert set(fake.chunks) == await referenced(store, ["bkt", "ec"])
    with pytest.raises(NoSuchKey):
        await store.copy_object("bkt", "src", "bkt", "x")
    with pytest.raises(InvalidArgument):
        await store.copy_object("bkt", "dst2", "bkt", "x", metadata_directive="MOVE")


async def test_copy_onto_itself_and_conditions(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await store.put_object("bkt", "k", body(payload(2500)), content_type="old")
    info = await store.copy_object(
        "bkt", "k", "bkt", "k", metadata_directive="REPLACE", content_type="new"
    )
    assert info.content_type == "new"
    assert await fetch(store, "bkt", "k") == payload(2500)
    assert set(fake.chunks) == await referenced(store, ["bkt"])

    def refuse(src: object) -> None:
        raise PreconditionFailed("copy-source-if-match")

    with pytest.raises(PreconditionFailed):
        await store.copy_object("bkt", "k", "bkt", "other", source_check=refuse)
    with pytest.raises(PreconditionFailed):
        await store.copy_object("bkt", "k", "bkt", "k", if_none_match="*")
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_set_object_acl(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    await store.put_object("bkt", "k", body(b"1"))
    await store.set_object_acl("bkt", "k", "public-read")
    assert (await store.head_object("bkt", "k")).acl == "public-read"
    with pytest.raises(NoSuchKey):
        await store.set_object_acl("bkt", "nope", "public-read")


# -- listing ------------------------------------------------------------------------------


async def fill(store: ObjectStore, keys: Iterable[str]) -> None:
    for key in keys:
        await store.put_object("bkt", key, body(b"."))


async def test_list_prefix_delimiter_and_pages(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    keys = [
        "a.txt",
        "photos/2006/jan/1.jpg",
        "photos/2006/feb/2.jpg",
        "photos/2007/x.jpg",
        "photos/readme",
        "videos/v.mp4",
        "zeta",
    ]
    await fill(store, keys)
    page = await store.list_objects("bkt", delimiter="/")
    assert [o.key for o in page.objects] == ["a.txt", "zeta"]
    assert page.common_prefixes == ["photos/", "videos/"]
    assert not page.is_truncated
    assert page.next_marker is None
    page = await store.list_objects("bkt", prefix="photos/", delimiter="/")
    assert page.common_prefixes == ["photos/2006/", "photos/2007/"]
    assert [o.key for o in page.objects] == ["photos/readme"]
    page = await store.list_objects("bkt", prefix="photos/2006/")
    assert [o.key for o in page.objects] == ["photos/2006/feb/2.jpg", "photos/2006/jan/1.jpg"]
    # Common prefixes count toward max-keys; the marker of a page can be a prefix.
    first = await store.list_objects("bkt", delimiter="/", max_keys=2)
    assert [o.key for o in first.objects] == ["a.txt"]
    assert first.common_prefixes == ["photos/"]
    assert first.is_truncated
    assert first.next_marker == "photos/"
    second = await store.list_objects("bkt", delimiter="/", start_after=first.next_marker)
    assert second.common_prefixes == ["videos/"]
    assert [o.key for o in second.objects] == ["zeta"]
    token = first.next_continuation_token
    assert token is not None
    assert decode_continuation_token(token) == "photos/"
    third = await store.list_objects("bkt", delimiter="/", continuation_token=token)
    assert third == second


async def test_list_pagination_visits_every_key_once(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    _, store = env
    keys = [f"k{i:03d}" for i in range(57)]
    await fill(store, keys)
    seen: list[str] = []
    marker = None
    while True:
        page = await store.list_objects("bkt", start_after=marker, max_keys=10)
        seen += [o.key for o in page.objects]
        if not page.is_truncated:
            break
        marker = page.next_marker
    assert seen == keys


async def test_list_edge_cases(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    await fill(store, ["a", "b"])
    assert await store.list_objects("bkt", max_keys=0) == (
        await store.list_objects("bkt", prefix="none")
    )
    assert (await store.list_objects("bkt", max_keys=5000)).objects[-1].key == "b"
    with pytest.raises(InvalidArgument):
        await store.list_objects("bkt", max_keys=-1)
    with pytest.raises(InvalidArgument):
        await store.list_objects("bkt", continuation_token="!!!")
    assert decode_continuation_token(encode_continuation_token("é/x y")) == "é/x y"
    versions = await store.list_object_versions("bkt")
    assert [(o.key, o.version_id) for o in versions.objects] == [("a", "null"), ("b", "null")]


async def test_delimiter_listing_skips_whole_prefixes(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    index = await store.bucket_index("bkt")
    record = (await store.put_object("bkt", "seed", body(b"."))).etag
    del record
    raw = (await index.get(b"seed")) or b""
    await index.insert_many(
        [(f"dir{d}/{i:04d}".encode(), raw) for d in range(3) for i in range(400)]
    )
    fake.reads.clear()
    page = await store.list_objects("bkt", delimiter="/")
    assert page.common_prefixes == ["dir0/", "dir1/", "dir2/"]
    shard_reads = sum(n for name, n in fake.reads.items() if b"/s/" in name)
    assert shard_reads <= 8  # out of ~200 shards


# -- multipart ----------------------------------------------------------------------------


async def test_multipart_round_trip(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    upload = await store.create_multipart_upload(
        "bkt", "mp", content_type="video/mp4", metadata={"a": "b"}, owner="alice"
    )
    assert upload.isascii()
    assert "/" not in upload
    assert "+" not in upload
    parts_data = [payload(PART, 1), payload(PART + 100, 2), payload(10, 3)]
    infos = [
        await store.upload_part("bkt", "mp", upload, n + 1, body(d))
        for n, d in enumerate(parts_data)
    ]
    assert [p.etag for p in infos] == [md5(d) for d in parts_data]
    listing = await store.list_parts("bkt", "mp", upload)
    assert [(p.part_number, p.size) for p in listing.parts] == [(1, 2048), (2, 2148), (3, 10)]
    assert listing.owner == "alice"
    assert not listing.is_truncated
    page = await store.list_parts("bkt", "mp", upload, part_number_marker=1, max_parts=1)
    assert [p.part_number for p in page.parts] == [2]
    assert page.is_truncated
    assert page.next_part_number_marker == 2
    chunks_before = len(fake.chunks)
    info = await store.complete_multipart_upload(
        "bkt", "mp", upload, [(n + 1, f'"{p.etag}"') for n, p in enumerate(infos)]
    )
    digest = hashlib.md5(
        b"".join(hashlib.md5(d, usedforsecurity=False).digest() for d in parts_data),
        usedforsecurity=False,
    )
    assert info.etag == f"{digest.hexdigest()}-3"
    assert info.size == sum(map(len, parts_data))
    assert info.parts_count == 3
    assert info.content_type == "video/mp4"
    assert info.metadata == {"a": "b"}
    assert await fetch(store, "bkt", "mp") == b"".join(parts_data)
    # No data was copied: only the object's chunk list is new (7 refs > 4 inline).
    assert len(fake.chunks) == chunks_before + 1
    _, stream = await store.get_object("bkt", "mp", range=(2000, 4200))
    assert await read_all(stream) == b"".join(parts_data)[2000:4201]
    with pytest.raises(NoSuchUpload):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, infos[0].etag)])
    with pytest.raises(NoSuchUpload):
        await store.list_parts("bkt", "mp", upload)
    assert (await store.list_multipart_uploads("bkt")).uploads == []
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_complete_validation(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    small = await store.upload_part("bkt", "mp", upload, 1, body(payload(100)))
    big = await store.upload_part("bkt", "mp", upload, 2, body(payload(PART)))
    last = await store.upload_part("bkt", "mp", upload, 3, body(payload(5)))
    with pytest.raises(InvalidPartOrder):
        await store.complete_multipart_upload("bkt", "mp", upload, [(2, big.etag), (1, small.etag)])
    with pytest.raises(InvalidPartOrder):
        await store.complete_multipart_upload("bkt", "mp", upload, [(2, big.etag), (2, big.etag)])
    with pytest.raises(InvalidPart):
        await store.complete_multipart_upload("bkt", "mp", upload, [(4, big.etag)])
    with pytest.raises(InvalidPart):
        await store.complete_multipart_upload("bkt", "mp", upload, [(2, small.etag)])
    with pytest.raises(EntityTooSmall):
        await store.complete_multipart_upload(
            "bkt", "mp", upload, [(1, small.etag), (3, last.etag)]
        )
    with pytest.raises(InvalidArgument):
        await store.complete_multipart_upload("bkt", "mp", upload, [])
    with pytest.raises(NoSuchUpload):
        await store.complete_multipart_upload("bkt", "other-key", upload, [(2, big.etag)])
    with pytest.raises(InvalidArgument):
        await store.upload_part("bkt", "mp", upload, 10_001, body(b"x"))
    with pytest.raises(InvalidArgument):
        await store.upload_part("bkt", "mp", upload, 0, body(b"x"))
    # Still usable after all those refusals.
    info = await store.complete_multipart_upload(
        "bkt", "mp", upload, [(2, big.etag), (3, last.etag)]
    )
    assert info.size == PART + 5


async def test_unlisted_and_replaced_parts_are_released(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 2)))  # replaces
    await store.upload_part("bkt", "mp", upload, 2, body(payload(PART, 3)))  # not listed
    p3 = await store.upload_part("bkt", "mp", upload, 3, body(payload(7, 4)))
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (3, p3.etag)])
    assert await fetch(store, "bkt", "mp") == payload(PART, 2) + payload(7, 4)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_large_parts_use_part_chunk_lists(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    data = [payload(6 * CHUNK, 1), payload(5 * CHUNK + 1, 2)]
    infos = [
        await store.upload_part("bkt", "mp", upload, i + 1, body(d)) for i, d in enumerate(data)
    ]
    await store.complete_multipart_upload(
        "bkt", "mp", upload, [(i + 1, p.etag) for i, p in enumerate(infos)]
    )
    assert await fetch(store, "bkt", "mp") == b"".join(data)
    assert set(fake.chunks) == await referenced(store, ["bkt"])  # part chunk lists released


async def test_multipart_in_erasure_coded_bucket() -> None:
    """Every chunk of an EC bucket's multipart upload (data, part and object chunk lists)
    is stored 4+2, its reference says 4+2, and the object reads back bit-exact."""
    ec = Redundancy(data=4, parity=2)
    fake, store = make_store()
    await store.create_bucket("ec", owner="alice", redundancy=ec)
    upload = await store.create_multipart_upload("ec", "mp")
    # Part 1 has more than PART_INLINE_CHUNKS chunks (a part chunk list), part 2 fits
    # inline, part 3 is short; together more than inline_chunks (an object chunk list).
    data = [payload(6 * CHUNK + 17, 1), payload(PART + 3, 2), payload(5, 3)]
    infos = []
    for number, part in enumerate(data, start=1):
        infos.append(await store.upload_part("ec", "mp", upload, number, body(part, 333)))
        assert fake.chunks, "the part stored nothing"
        assert {policy for _, policy in fake.chunks.values()} == {ec}, f"after part {number}"
    assert [p.etag for p in infos] == [md5(d) for d in data]
    info = await store.complete_multipart_upload(
        "ec", "mp", upload, [(n, p.etag) for n, p in enumerate(infos, start=1)]
    )
    assert info.size == sum(map(len, data))
    assert info.parts_count == 3
    assert {policy for _, policy in fake.chunks.values()} == {ec}
    reader = await store.open_object("ec", "mp")
    assert reader.record.chunk_list is not None  # the object's own chunk list exists
    assert reader.record.chunk_list.ref.redundancy == ec
    chunks = await reader.chunks()
    assert len(chunks) == 7 + 3 + 1
    assert all(c.ref.redundancy == ec for c in chunks)
    assert all(fake.chunks[c.ref.address][1] == ec for c in chunks)
    whole = b"".join(data)
    got = await fetch(store, "ec", "mp")
    assert hashlib.sha256(got).digest() == hashlib.sha256(whole).digest()
    assert got == whole
    # The part chunk list was released on completion; nothing else is left behind.
    assert set(fake.chunks) == await referenced(store, ["ec"])


async def test_abort(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    await store.upload_part("bkt", "mp", upload, 1, body(payload(3000)))
    await store.abort_multipart_upload("bkt", "mp", upload)
    assert not fake.chunks
    with pytest.raises(NoSuchUpload):
        await store.abort_multipart_upload("bkt", "mp", upload)
    with pytest.raises(NoSuchUpload):
        await store.upload_part("bkt", "mp", upload, 1, body(b"x"))
    with pytest.raises(NoSuchUpload):
        await store.abort_multipart_upload("bkt", "mp", "made-up")
    assert not fake.chunks


async def test_part_racing_an_abort_is_released(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")

    async def aborting_body() -> AsyncIterator[bytes]:
        yield payload(1500)
        await store.abort_multipart_upload("bkt", "mp", upload)
        yield payload(1500)

    with pytest.raises(NoSuchUpload):
        await store.upload_part("bkt", "mp", upload, 1, aborting_body())
    assert not fake.chunks


async def test_upload_part_copy(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    source = payload(6000, 9)
    await store.put_object("bkt", "src", body(source))
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part_copy("bkt", "mp", upload, 1, "bkt", "src", range=(0, 2999))
    p2 = await store.upload_part_copy("bkt", "mp", upload, 2, "bkt", "src")
    assert p1.etag == md5(source[:3000])
    assert p2.size == 6000
    with pytest.raises(InvalidRange):
        await store.upload_part_copy("bkt", "mp", upload, 3, "bkt", "src", range=(10, 6000))
    with pytest.raises(NoSuchKey):
        await store.upload_part_copy("bkt", "mp", upload, 3, "bkt", "nope")
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    assert await fetch(store, "bkt", "mp") == source[:3000] + source
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_conditional_complete(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await store.put_object("bkt", "mp", body(b"existing"))
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(20)))
    with pytest.raises(PreconditionFailed):
        await store.complete_multipart_upload(
            "bkt", "mp", upload, [(1, p1.etag)], if_none_match="*"
        )
    # The upload is still there and can complete without the condition.
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag)])
    assert await fetch(store, "bkt", "mp") == payload(20)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_crashed_completion_is_finished_by_a_retry(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(PART, 2)))
    up_name = store._upload_name(await store._bucket("bkt"), upload)
    # The edit that retires the upload fails after the object was committed.
    fake.fail("edit", match=lambda name: name == up_name, skip=1)
    with pytest.raises(Unavailable):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    with pytest.raises(Conflict):
        await store.abort_multipart_upload("bkt", "mp", upload)  # would free live chunks
    with pytest.raises(Conflict):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag)])
    info = await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    assert info.parts_count == 2
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(PART, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])
    with pytest.raises(NoSuchUpload):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])


async def test_list_multipart_uploads(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    ids: dict[str, list[str]] = {}
    for key in ["b", "a/1", "a/2", "c", "b"]:
        upload = await store.create_multipart_upload("bkt", key, owner="carol")
        ids.setdefault(key, []).append(upload)
    page = await store.list_multipart_uploads("bkt")
    assert [u.key for u in page.uploads] == ["a/1", "a/2", "b", "b", "c"]
    assert {u.owner for u in page.uploads} == {"carol"}
    assert [u.upload_id for u in page.uploads if u.key == "b"] == ids["b"]
    page = await store.list_multipart_uploads("bkt", delimiter="/")
    assert page.common_prefixes == ["a/"]
    assert [u.key for u in page.uploads] == ["b", "b", "c"]
    page = await store.list_multipart_uploads("bkt", prefix="a/")
    assert [u.key for u in page.uploads] == ["a/1", "a/2"]
    page = await store.list_multipart_uploads("bkt", max_uploads=3)
    assert page.is_truncated
    assert page.next_key_marker == "b"
    assert page.next_upload_id_marker == ids["b"][0]
    rest = await store.list_multipart_uploads(
        "bkt", key_marker=page.next_key_marker, upload_id_marker=page.next_upload_id_marker
    )
    assert [(u.key, u.upload_id) for u in rest.uploads] == [("b", ids["b"][1]), ("c", ids["c"][0])]
    after_b = await store.list_multipart_uploads("bkt", key_marker="b")
    assert [u.key for u in after_b.uploads] == ["c"]
    with pytest.raises(NoSuchBucket):
        await store.list_multipart_uploads("nobucket")


async def test_send_to_prefetches_and_serves_ranges(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    data = payload(4 * CHUNK + 300)
    await store.put_object("bkt", "k", body(data))
    reader = await store.open_object("bkt", "k")
    events: list[str] = []
    original = fake.get_chunk

    async def spy(ref):  # type: ignore[no-untyped-def]
        events.append("fetch")
        return await original(ref)

    fake.get_chunk = spy  # type: ignore[method-assign]
    received: list[bytes] = []

    async def sink(piece: bytes) -> None:
        events.append("sink-start")
        await trio.sleep(0.001)
        received.append(piece)
        events.append("sink-end")

    assert await reader.send_to(sink) == len(data)
    assert b"".join(received) == data
    # The next chunk was fetched while the sink was busy with the previous one.
    first_end = events.index("sink-end")
    assert events[:first_end].count("fetch") >= 3  # chunk list, chunk 1, chunk 2
    received.clear()
    assert await reader.send_to(sink, 1000, 2100) == 1101
    assert b"".join(received) == data[1000:2101]
    with pytest.raises(InvalidRange):
        await reader.send_to(sink, len(data))


async def test_send_to_errors_propagate_unwrapped(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    await store.put_object("bkt", "k", body(payload(3 * CHUNK)))
    reader = await store.open_object("bkt", "k")

    async def sink(piece: bytes) -> None:
        await trio.lowlevel.checkpoint()

    fake.fail("get_chunk", skip=1)
    with pytest.raises(Unavailable):
        await reader.send_to(sink)

    async def broken_sink(piece: bytes) -> None:
        raise BrokenPipeError("client went away")

    with pytest.raises(BrokenPipeError):
        await reader.send_to(broken_sink)

    calls = 0

    async def slow_then_broken(piece: bytes) -> None:
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)  # the producer is now blocked handing over the next chunk
        if calls == 2:
            raise BrokenPipeError("client went away")

    with pytest.raises(BrokenPipeError):
        await reader.send_to(slow_then_broken)
    empty = await store.put_object("bkt", "e", body(b""))
    assert empty.size == 0
    assert await (await store.open_object("bkt", "e")).send_to(sink) == 0


async def test_listing_a_page_of_a_100k_bucket_reads_few_shards() -> None:
    fake = FakeBlockStore()
    store = ObjectStore(fake)  # default shard limits: 512 entries / 128 KiB
    await store.create_bucket("big", owner="o")
    index = await store.bucket_index("big")
    record = ObjectRecord(
        size=1, etag="0" * 32, mtime_ms=0, headers=ContentHeaders(), owner="o"
    ).pack()
    keys = [f"logs/{i % 13:02d}/{i:06d} +%é.txt" for i in range(100_000)]
    for start in range(0, len(keys), 20_000):
        await index.insert_many([(k.encode(), record) for k in keys[start : start + 20_000]])
    ordered = sorted(keys, key=lambda k: k.encode())
    fresh = ObjectStore(fake)  # a gateway with nothing cached
    fake.reads.clear()
    page = await fresh.list_objects("big", start_after=ordered[60_000], max_keys=1000)
    assert [o.key for o in page.objects] == ordered[60_001:61_001]
    assert page.is_truncated
    assert page.next_marker == ordered[61_000]
    shard_reads = sum(n for name, n in fake.reads.items() if b"/s/" in name)
    assert shard_reads <= 5, shard_reads
    assert sum(fake.reads.values()) <= shard_reads + 2  # + the registry and the root
    fake.reads.clear()
    page = await fresh.list_objects("big", prefix="logs/07/", delimiter="/", max_keys=3)
    assert len(page.objects) == 3
    assert page.objects[0].key.startswith("logs/07/")
    assert sum(n for name, n in fake.reads.items() if b"/s/" in name) <= 2


async def test_statistics(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    fake, store = env
    await store.put_object("bkt", "k", body(payload(2500)))
    await store.put_object("bkt", "k", body(payload(10)))
    await store.head_object("bkt", "k")
    await store.delete_object("bkt", "k")
    index = await store.bucket_index("bkt")
    fake.fail("edit", after=True, match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):
        await store.put_object("bkt", "k2", body(b"x"))
    stats = store.statistics()
    assert stats.objects_written == 2
    assert stats.objects_opened == 1
    assert stats.objects_deleted == 1
    assert stats.bytes_stored == 2500 + 10 + 1
    assert stats.chunks_stored == 3 + 1 + 1
    assert stats.chunks_released == 4
    assert stats.release_failures == 0
    assert stats.ambiguous_commits == 1


def test_upload_record_keeps_its_claim_time() -> None:
    base = UploadRecord("k", "u1", 5, ContentHeaders())
    claimed = replace(base, completing=((1, "e1"), (2, "e2")), completing_ms=7)
    assert UploadRecord.unpack(claimed.pack()) == claimed
    assert UploadRecord.unpack(base.pack()) == base
    # A claim stored without its time (an older record) reads back without one.
    assert UploadRecord.unpack(replace(claimed, completing_ms=None).pack()).completing_ms is None


def hold_commits(store: ObjectStore) -> tuple[trio.Event, trio.Event]:
    """Make ``store``'s object commits wait: the first event is set when one is about to
    commit, and it goes on once the second is set."""
    committing, go_on = trio.Event(), trio.Event()
    commit = store._commit_object

    async def slow_commit(*args: Any, **kwargs: Any) -> Any:
        committing.set()
        await go_on.wait()
        return await commit(*args, **kwargs)

    store._commit_object = slow_commit  # type: ignore[method-assign]
    return committing, go_on


def _store_with_clock(now: list[float]) -> tuple[FakeBlockStore, ObjectStore]:
    fake = FakeBlockStore(replay_edits=True)
    store = ObjectStore(
        fake, chunk_size=CHUNK, inline_chunks=4, min_part_size=PART, clock=lambda: now[0]
    )
    return fake, store


def _is_upload_register(name: bytes) -> bool:
    return name.startswith(b"s3/up/") and b"/p/" not in name  # not a part group


@pytest.mark.parametrize("committed", [True, False])
async def test_abort_settles_a_completion_claim_left_by_a_dead_completion(
    committed: bool,
) -> None:
    """A completion that died after claiming the upload leaves it claimed: abort refuses
    (Conflict) while the claim could still be live, and settles it once it is older than
    ``ABANDONED_CLAIM_SECONDS``: the clean-up is finished if the object was committed
    (NoSuchUpload: it is complete), else the claim is withdrawn and the upload aborted."""
    now = [1_700_000_000.0]
    fake, store = _store_with_clock(now)
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(100, 2)))
    await store.upload_part("bkt", "mp", upload, 3, body(payload(PART, 3)))  # not listed
    if committed:  # the claim and the commit happen; retiring the upload does not
        fake.fail("edit", skip=1, match=_is_upload_register)
    else:  # the claim happens; the commit (an index edit) never does
        index = await store.bucket_index("bkt")
        fake.fail("edit", match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    with pytest.raises(Conflict):  # the claim might belong to a completion still running
        await store.abort_multipart_upload("bkt", "mp", upload)
    now[0] += ABANDONED_CLAIM_SECONDS + 1
    if committed:
        with pytest.raises(NoSuchUpload):
            await store.abort_multipart_upload("bkt", "mp", upload)
        assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    else:
        await store.abort_multipart_upload("bkt", "mp", upload)
        with pytest.raises(NoSuchKey):
            await store.head_object("bkt", "mp")
    assert not (await store.list_multipart_uploads("bkt")).uploads
    assert set(fake.chunks) == await referenced(store, ["bkt"])  # part 3 (and all) released


async def test_abort_leaves_a_retried_completion_alone() -> None:
    """A completion retried long after the first attempt died renews the claim: an abort
    that comes while the retry runs (claimed, not yet committed) refuses, and releases
    nothing the retry's object needs."""
    now = [1_700_000_000.0]
    fake, store = _store_with_clock(now)
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    parts = [(1, p1.etag)]
    index = await store.bucket_index("bkt")
    fake.fail("edit", match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):  # claimed, never committed: the first attempt "died"
        await store.complete_multipart_upload("bkt", "mp", upload, parts)
    now[0] += ABANDONED_CLAIM_SECONDS + 1
    committing, go_on = hold_commits(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.complete_multipart_upload, "bkt", "mp", upload, parts)
        await committing.wait()
        with pytest.raises(Conflict):
            await store.abort_multipart_upload("bkt", "mp", upload)
        go_on.set()
    assert await fetch(store, "bkt", "mp") == payload(PART, 1)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_a_claim_without_a_time_is_given_one_before_it_can_be_abandoned() -> None:
    now = [1_700_000_000.0]
    fake, store = _store_with_clock(now)
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    index = await store.bucket_index("bkt")
    fake.fail("edit", match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag)])
    name = next(n for n in fake.registers if _is_upload_register(n))

    def without_time(current: bytes | None) -> bytes:
        assert current is not None
        return replace(UploadRecord.unpack(current), completing_ms=None).pack()

    await fake.edit(name, without_time)  # as records written before claims had a time
    now[0] += 2 * ABANDONED_CLAIM_SECONDS  # the upload itself is old
    with pytest.raises(Conflict):  # the claim's time starts now
        await store.abort_multipart_upload("bkt", "mp", upload)
    assert UploadRecord.unpack((await fake.read(name)).value).completing_ms == now[0] * 1000
    with pytest.raises(Conflict):
        await store.abort_multipart_upload("bkt", "mp", upload)
    now[0] += ABANDONED_CLAIM_SECONDS + 1
    await store.abort_multipart_upload("bkt", "mp", upload)
    assert not fake.chunks


async def test_retried_conditional_completion_after_ambiguous_commit(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    """The retry must not mistake the first attempt's own object for a conflict."""
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    index = await store.bucket_index("bkt")
    fake.fail("edit", after=True, match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):  # committed, but the client cannot know
        await store.complete_multipart_upload(
            "bkt", "mp", upload, [(1, p1.etag)], if_none_match="*"
        )
    info = await store.complete_multipart_upload(
        "bkt", "mp", upload, [(1, p1.etag)], if_none_match="*"
    )
    assert info.parts_count == 1
    with pytest.raises(NoSuchUpload):
        await store.abort_multipart_upload("bkt", "mp", upload)
    assert await fetch(store, "bkt", "mp") == payload(PART, 1)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_completion_retried_after_a_failed_commit(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(9, 2)))
    index = await store.bucket_index("bkt")
    fake.fail("edit", match=lambda name: name.startswith(index.shard_name(b"")))
    with pytest.raises(Unavailable):  # not committed
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    with pytest.raises(NoSuchKey):
        await store.head_object("bkt", "mp")
    info = await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    assert info.size == PART + 9
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(9, 2)


def test_object_record_part_sizes_round_trip() -> None:
    base = ObjectRecord(size=0, etag="0" * 32 + "-1", mtime_ms=1, headers=ContentHeaders())
    assert ObjectRecord.unpack(base.pack()).part_sizes is None
    assert base.part_range(1) is None
    sizes = (5 * 2**20,) * 9_999 + (7,)
    record = replace(base, size=sum(sizes), parts_count=len(sizes), part_sizes=sizes)
    packed = record.pack()
    assert msgpack.unpackb(packed)["ps"] == [[5 * 2**20, 9_999], [7, 1]]
    assert len(packed) < 200
    assert ObjectRecord.unpack(packed) == record
    assert record.part_range(1) == (0, 5 * 2**20 - 1)
    assert record.part_range(10_000) == (9_999 * 5 * 2**20, record.size - 1)
    assert record.part_range(0) is None
    assert record.part_range(10_001) is None
    uneven = replace(base, size=12, parts_count=4, part_sizes=(5, 0, 5, 2))
    assert ObjectRecord.unpack(uneven.pack()) == uneven
    assert [uneven.part_range(n) for n in (1, 2, 3, 4)] == [(0, 4), (5, 4), (5, 9), (10, 11)]


@pytest.mark.parametrize(
    "ps",
    [
        7,
        "x",
        [[5]],
        [[5, 1, 1]],
        [["a", 1]],
        [[-1, 1]],
        [[5, 0]],
        [[5, 10_001]],
        [[1, 9_999], [2, 2]],
    ],
)
def test_object_record_with_malformed_part_sizes_is_corrupt(ps: object) -> None:
    record = ObjectRecord(size=5, etag="e", mtime_ms=1, headers=ContentHeaders(), part_sizes=(5,))
    raw = msgpack.unpackb(record.pack())
    raw["ps"] = ps
    with pytest.raises(Corrupt):
        ObjectRecord.unpack(msgpack.packb(raw))


async def test_completed_upload_records_its_part_sizes(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    _fake, store = env
    parts = [payload(PART + 1, 1), payload(PART, 2), payload(3 * CHUNK + 5, 3), payload(20, 4)]
    upload = await store.create_multipart_upload("bkt", "mp")
    listed = []
    for number, data in enumerate(parts, start=1):
        info = await store.upload_part("bkt", "mp", upload, number, body(data))
        listed.append((number, info.etag))
    await store.complete_multipart_upload("bkt", "mp", upload, listed)
    reader = await store.open_object("bkt", "mp")
    assert reader.record.part_sizes == tuple(len(p) for p in parts)
    assert reader.info.parts_count == len(parts)
    for number, data in enumerate(parts, start=1):
        span = reader.record.part_range(number)
        assert span is not None
        assert await read_all(reader.stream(*span)) == data
    await store.put_object("bkt", "plain", body(payload(PART + 1)))
    assert (await store.open_object("bkt", "plain")).record.part_sizes is None


@pytest.mark.parametrize(
    "raw", [["CRC32"], ["CRC32", "x"], [5, b"\x00" * 4], ["SHA256", b"\x00" * 65], "x"]
)
def test_object_record_with_a_malformed_checksum_is_corrupt(raw: object) -> None:
    good = ObjectRecord(4, "e", 1, ContentHeaders(), checksum=("CRC32", b"\x01\x02\x03\x04"))
    assert ObjectRecord.unpack(good.pack()) == good
    obj = msgpack.unpackb(good.pack(), raw=False)
    obj["ck"] = raw
    with pytest.raises(Corrupt):
        ObjectRecord.unpack(msgpack.packb(obj, use_bin_type=True))


async def test_the_checksum_of_a_put_is_kept_and_copied(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    _, store = env
    digest = ("CRC32", b"\x01\x02\x03\x04")
    info = await store.put_object("bkt", "k", body(b"data"), checksum=lambda: digest)
    assert info.checksum == digest
    await store.copy_object("bkt", "k", "bkt", "copy")
    assert (await store.head_object("bkt", "copy")).checksum == digest
    await store.put_object("bkt", "k", body(b"other"))
    assert (await store.head_object("bkt", "k")).checksum is None


# -- tagging --------------------------------------------------------------------------------

TAGS = {"project": "ballast", "empty": "", "é": "€"}


def test_tags_have_a_map_key_of_their_own() -> None:
    ref = ChunkRef(BlockAddress(b"\x01" * 32), b"k" * 32, 10, Redundancy.parse("3"))
    chunk = StoredChunk(ref, 10)
    headers = ContentHeaders(
        content_type="t",
        content_encoding="e",
        content_disposition="d",
        content_language="l",
        cache_control="c",
        expires="x",
        metadata={"m": "1"},
        acl="public-read",
        tags=TAGS,
    )
    record = ObjectRecord(
        10, "e", 1, headers, "alice", (), chunk, 3, 2, "up", (5, 5), ("CRC32", b"1234")
    )
    assert ObjectRecord.unpack(record.pack()) == record
    upload = UploadRecord(
        "k", "u", 1, headers, "alice", frozenset({1}), ((1, "e"),), 2, 3,
        {1: PartRecord(b"m" * 16, 1, 1, (chunk,))},
    )  # fmt: skip
    assert UploadRecord.unpack(upload.pack()) == upload
    assert msgpack.unpackb(record.pack(), raw=False)["tg"] == TAGS


def test_records_without_tags_read_back_with_none() -> None:
    old = ObjectRecord(4, "e", 1, ContentHeaders())
    assert "tg" not in msgpack.unpackb(old.pack(), raw=False)
    assert ObjectRecord.unpack(old.pack()).headers.tags == {}
    obj = msgpack.unpackb(old.pack(), raw=False)
    obj["tg"] = ["not", "a", "map"]
    with pytest.raises(Corrupt):
        ObjectRecord.unpack(msgpack.packb(obj, use_bin_type=True))


async def test_bucket_tags_round_trip(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    assert (await store.head_bucket("bkt")).tags is None
    await store.set_bucket_acl("bkt", "public-read")  # an entry written without tags
    assert (await store.head_bucket("bkt")).tags is None
    await store.set_bucket_tags("bkt", TAGS)
    info = await store.head_bucket("bkt")
    assert (info.tags, info.acl) == (TAGS, "public-read")
    await store.set_bucket_tags("bkt", None)
    assert (await store.head_bucket("bkt")).tags is None
    with pytest.raises(NoSuchBucket):
        await store.set_bucket_tags("nope", TAGS)


async def test_object_tags_round_trip(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    info = await store.put_object("bkt", "k", body(b"data"), tags=TAGS)
    assert info.tags == TAGS
    assert (await store.head_object("bkt", "k")).tags == TAGS
    await store.put_object("bkt", "k", body(b"data"))
    assert (await store.head_object("bkt", "k")).tags == {}


async def test_set_object_tags_keeps_data_and_etag(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    data = payload(5 * CHUNK + 3)
    before = await store.put_object("bkt", "k", body(data), content_type="a/b", tags={"a": "1"})
    chunks = set(fake.chunks)
    await store.set_object_tags("bkt", "k", TAGS)
    after = await store.head_object("bkt", "k")
    assert after.tags == TAGS
    assert (after.etag, after.size, after.content_type) == (before.etag, len(data), "a/b")
    assert await fetch(store, "bkt", "k") == data
    await store.set_object_tags("bkt", "k", {})
    assert (await store.head_object("bkt", "k")).tags == {}
    assert (await store.head_object("bkt", "k")).etag == before.etag
    assert set(fake.chunks) == chunks
    with pytest.raises(NoSuchKey):
        await store.set_object_tags("bkt", "nope", TAGS)
    with pytest.raises(NoSuchBucket):
        await store.set_object_tags("nope", "k", TAGS)


async def test_copy_keeps_or_replaces_tags(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    await store.put_object("bkt", "src", body(b"data"), metadata={"m": "1"}, tags=TAGS)
    copied = await store.copy_object("bkt", "src", "bkt", "copy")
    assert copied.tags == TAGS
    replaced = await store.copy_object(
        "bkt", "src", "bkt", "replaced", tagging_directive="REPLACE", tags={"new": "tag"}
    )
    assert (replaced.tags, replaced.metadata) == ({"new": "tag"}, {"m": "1"})
    cleared = await store.copy_object("bkt", "src", "bkt", "cleared", tagging_directive="REPLACE")
    assert cleared.tags == {}
    both = await store.copy_object(
        "bkt", "src", "bkt", "both", metadata_directive="REPLACE", metadata={"n": "2"}
    )
    assert (both.tags, both.metadata) == (TAGS, {"n": "2"})
    with pytest.raises(InvalidArgument):
        await store.copy_object("bkt", "src", "bkt", "x", tagging_directive="MERGE")


async def test_tags_travel_through_multipart(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    _, store = env
    upload = await store.create_multipart_upload("bkt", "mp", tags=TAGS)
    part = await store.upload_part("bkt", "mp", upload, 1, body(b"x" * 10))
    info = await store.complete_multipart_upload("bkt", "mp", upload, [(1, part.etag)])
    assert info.tags == TAGS
    assert (await store.head_object("bkt", "mp")).tags == TAGS
