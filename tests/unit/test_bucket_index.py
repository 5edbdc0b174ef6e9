"""The sharded sorted bucket index: order, splits, crash points, sealing, scale."""

from __future__ import annotations

import random

import msgpack
import pytest
import trio

from storage import bucket_index
from storage.bucket_index import BucketIndex, IndexSealed, _separator
from storage.errors import BucketNotEmpty, Contention, NoSuchBucket, Unavailable
from tests.fake_blockstore import FakeBlockStore


async def make(
    fake: FakeBlockStore | None = None, *, max_entries: int = 8, max_bytes: int = 1 << 20
) -> tuple[FakeBlockStore, BucketIndex]:
    fake = fake or FakeBlockStore()
    index = BucketIndex(fake, b"t", max_entries=max_entries, max_bytes=max_bytes)
    await index.create()
    return fake, index


def shard_layout(fake: FakeBlockStore, index: BucketIndex) -> list[dict[str, object]]:
    """Every shard reachable from the root, decoded, in root order."""
    root = msgpack.unpackb(fake.live_registers()[index.root_name])
    out = []
    for bound, shard_id in zip(root["b"], root["i"], strict=True):
        shard = msgpack.unpackb(fake.live_registers()[index.shard_name(shard_id)])
        assert shard["lo"] == bound
        out.append(shard)
    return out


async def put(index: BucketIndex, key: bytes, value: bytes = b"v") -> None:
    await index.update(key, lambda _old: value)


async def test_insert_get_overwrite_delete() -> None:
    _, index = await make()
    assert await index.get(b"a") is None
    assert await index.update(b"a", lambda old: b"1") == (None, b"1")
    assert await index.update(b"a", lambda old: (old or b"") + b"2") == (b"1", b"12")
    assert await index.get(b"a") == b"12"
    assert await index.update(b"a", lambda old: None) == (b"12", None)
    assert await index.get(b"a") is None
    # Deleting an absent key writes nothing.
    assert await index.update(b"a", lambda old: None) == (None, None)
    assert await index.is_empty()


async def test_condition_inside_edit_aborts_without_writing() -> None:
    _fake, index = await make()
    await put(index, b"k", b"old")

    def refuse(_old: bytes | None) -> bytes:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await index.update(b"k", refuse)
    assert await index.get(b"k") == b"old"


async def test_utf8_byte_order_and_splits_keep_every_entry() -> None:
    fake, index = await make(max_entries=4)
    keys = ["a", "a b", "a+b", "a%20", "é", "z", "\U0001f600", "ﬀ", "A", "~", "a/b/c"]
    keys += [f"n{i}" for i in range(60)]
    random.Random(1).shuffle(keys)
    for key in keys:
        await put(index, key.encode(), key.encode())
    expected = sorted(k.encode() for k in keys)
    assert [k for k, _ in await index.scan()] == expected
    assert sorted(keys, key=lambda k: k.encode()) == [k.decode() for k in expected]
    layout = shard_layout(fake, index)
    assert len(layout) > 5
    for shard in layout:
        assert isinstance(shard["k"], list)
        assert len(shard["k"]) <= 4
        assert shard["k"] == sorted(shard["k"])
        assert all(
            k >= shard["lo"] and (shard["hi"] is None or k < shard["hi"]) for k in shard["k"]
        )
        assert "sp" not in shard
    assert [k for k, _ in await index.scan(b"n3", limit=5)] == [k for k in expected if k >= b"n3"][
        :5
    ]


async def test_split_by_bytes() -> None:
    fake, index = await make(max_entries=1000, max_bytes=2000)
    for i in range(20):
        await put(index, f"{i:02d}".encode(), b"x" * 300)
    layout = shard_layout(fake, index)
    assert len(layout) >= 4
    assert len(await index.scan()) == 20


async def test_single_huge_entry_stays_alone() -> None:
    _, index = await make(max_entries=1000, max_bytes=200)
    await put(index, b"a", b"x" * 1000)
    await put(index, b"b", b"y" * 1000)
    assert [k for k, _ in await index.scan()] == [b"a", b"b"]


def test_separator_is_short_and_between() -> None:
    assert _separator(b"apple", b"banana") == b"b"
    assert _separator(b"key/0001", b"key/0002") == b"key/0002"
    assert _separator(b"ab", b"abc") == b"abc"
    assert _separator(b"a", b"b\xff") == b"b"


@pytest.mark.parametrize("crash_step", ["freeze", "copy", "publish", "trim"])
@pytest.mark.parametrize("after", [False, True])
async def test_crash_between_split_steps_loses_nothing(crash_step: str, after: bool) -> None:
    fake, index = await make(max_entries=4)
    for key in [b"a", b"b", b"c", b"d"]:
        await put(index, key)
    root_name, first = index.root_name, index.shard_name(b"0")
    target = {
        "freeze": ("edit", lambda n: n == first, 1),
        "copy": ("edit", lambda n: n.startswith(b"t/s/") and n != first, 0),
        "publish": ("edit", lambda n: n == root_name, 0),
        "trim": ("edit", lambda n: n == first, 2),
    }[crash_step]
    op, match, skip = target
    # The fifth insert commits (first edit of shard 0), then the split crashes at the step.
    fake.fail(op, match=match, skip=skip, after=after)
    await put(index, b"e")  # the split's failure is logged, not the writer's error
    fake.clear_faults()
    pending = "sp" in msgpack.unpackb(fake.live_registers()[first])
    # The split is left half-done unless the failing step was the first (not applied) or
    # the last (applied).
    assert (
        pending == {"freeze": after, "copy": True, "publish": True, "trim": not after}[crash_step]
    )
    # Readers see every entry exactly once whatever the state.
    reader = BucketIndex(fake, b"t", max_entries=4)
    assert [k for k, _ in await reader.scan()] == [b"a", b"b", b"c", b"d", b"e"]
    # Writers in the frozen range help finish the split; in the other range they just write.
    await put(index, b"a0")
    await put(index, b"zz")
    await put(index, b"d", b"new")
    assert [k for k, _ in await reader.scan()] == [b"a", b"a0", b"b", b"c", b"d", b"e", b"zz"]
    assert await reader.get(b"d") == b"new"
    assert not any("sp" in shard for shard in shard_layout(fake, index))


async def test_reader_with_stale_root_refreshes() -> None:
    fake, writer = await make(max_entries=4)
    reader = BucketIndex(fake, b"t", max_entries=4)
    await put(writer, b"m")
    assert [k for k, _ in await reader.scan()] == [b"m"]  # reader caches a one-shard root
    for i in range(40):
        await put(writer, f"k{i:02d}".encode())
    assert len(await reader.scan()) == 41
    assert await reader.get(b"k39") == b"v"
    await put(reader, b"k40")  # a writer with a stale root is redirected
    assert len(await writer.scan()) == 42


async def test_index_that_keeps_moving_is_contention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving up after the shards moved under every attempt is transient, not a lost CAS."""
    fake, writer = await make(max_entries=4)
    await put(writer, b"m")
    stale = [BucketIndex(fake, b"t", max_entries=4) for _ in range(3)]
    for index in stale:
        await index.scan()  # caches a one-shard root
    for i in range(40):
        await put(writer, f"k{i:02d}".encode())
    monkeypatch.setattr(bucket_index, "_MAX_ATTEMPTS", 1)  # one stale attempt, no retry
    with pytest.raises(Contention, match="kept moving"):
        await put(stale[0], b"k40")
    with pytest.raises(Contention, match="kept moving"):
        await stale[1].read_from(b"k39")
    monkeypatch.setattr(bucket_index, "_MAX_ATTEMPTS", 0)
    with pytest.raises(Contention, match="kept moving"):
        await stale[2].insert_many([(b"k41", b"v")])
    monkeypatch.undo()
    assert await writer.get(b"k40") is None  # nothing was applied
    assert await writer.get(b"k41") is None


async def test_pending_split_with_newer_writes_in_new_shard() -> None:
    """A reader whose root predates the publication must not serve the frozen copy."""
    fake, index = await make(max_entries=4)
    for key in [b"a", b"b", b"c", b"d"]:
        await put(index, key)
    stale = BucketIndex(fake, b"t", max_entries=4)
    await stale.scan()  # caches the one-shard root
    # Crash before the trim: the boundary is published but shard 0 still holds the copy.
    fake.fail("edit", match=lambda n: n == index.shard_name(b"0"), skip=2)
    await put(index, b"e")
    fake.clear_faults()
    fresh = BucketIndex(fake, b"t", max_entries=4)
    upper = [k for k, _ in await fresh.scan() if k >= b"c"]
    assert upper
    # A write to the new shard through a fresh root...
    await fresh.update(upper[0], lambda _old: b"newer")
    # ...is seen by the reader whose root is stale.
    assert await stale.get(upper[0]) == b"newer"
    assert dict(await stale.scan())[upper[0]] == b"newer"


async def test_seal_refuses_writes_and_unseal_restores() -> None:
    _fake, index = await make(max_entries=4)
    for i in range(10):
        await put(index, f"{i}".encode())
    with pytest.raises(BucketNotEmpty):
        await index.seal()
    await put(index, b"still-writable")
    for i in range(10):
        await index.update(f"{i}".encode(), lambda _old: None)
    await index.update(b"still-writable", lambda _old: None)
    assert await index.is_empty()
    await index.seal()
    with pytest.raises(IndexSealed):
        await put(index, b"x")
    with pytest.raises(Contention):  # transient: the deletion may yet be rolled back
        await index.insert_many([(b"x", b"v")])
    await index.unseal()
    await put(index, b"x")
    assert await index.get(b"x") == b"v"


async def test_failed_seal_rolls_back() -> None:
    fake, index = await make(max_entries=4)
    for i in range(12):
        await put(index, f"{i:02d}".encode())
    for i in range(12):
        await index.update(f"{i:02d}".encode(), lambda _old: None)
    assert len(shard_layout(fake, index)) > 2
    fake.fail("edit", skip=1)  # the second shard's seal fails
    with pytest.raises(Unavailable):
        await index.seal()
    assert not any(s.get("x") for s in shard_layout(fake, index))
    await put(index, b"ok")


async def test_destroyed_index_reports_no_such_bucket() -> None:
    fake, index = await make()
    await put(index, b"a")
    await index.destroy()
    assert not fake.live_registers()
    other = BucketIndex(fake, b"t")
    with pytest.raises(NoSuchBucket):
        await other.get(b"a")
    with pytest.raises(NoSuchBucket):
        await put(other, b"a")


async def test_unavailable_propagates_unchanged() -> None:
    fake, index = await make()
    fake.fail("read")
    with pytest.raises(Unavailable):
        await index.get(b"a")
    fake.fail("edit")
    with pytest.raises(Unavailable):
        await put(index, b"a")
    assert await index.get(b"a") is None


async def test_concurrent_writers_during_splits() -> None:
    fake = FakeBlockStore(jitter=random.Random(7), replay_edits=True)
    _, index = await make(fake, max_entries=4)
    stable = [f"s{i:03d}".encode() for i in range(0, 60, 3)]
    for key in stable:
        await put(index, key)
    model: dict[bytes, bool] = {}
    problems: list[str] = []

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        own = BucketIndex(fake, b"t", max_entries=4)
        for _ in range(60):
            key = f"w{seed}-{rng.randrange(40):02d}".encode()
            if rng.random() < 0.7:
                await put(own, key)
                model[key] = True
            else:
                await own.update(key, lambda _old: None)
                model[key] = False

    async def reader() -> None:
        own = BucketIndex(fake, b"t", max_entries=4)
        for _ in range(30):
            keys = [k for k, _ in await own.scan()]
            if keys != sorted(set(keys)):
                problems.append("duplicate or unsorted entries")
            if not set(stable) <= set(keys):
                problems.append("a stable entry vanished")
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for seed in range(4):
            nursery.start_soon(writer, seed)
        nursery.start_soon(reader)
    assert not problems
    expected = sorted(set(stable) | {k for k, present in model.items() if present})
    assert [k for k, _ in await index.scan()] == expected


async def test_hundred_thousand_keys_listing_reads_few_shards() -> None:
    fake, index = await make(max_entries=512, max_bytes=128 * 1024)
    keys = [f"photos/{i % 97:02d}/{i:07d}.jpg".encode() for i in range(100_000)]
    random.Random(3).shuffle(keys)
    for start in range(0, len(keys), 10_000):
        await index.insert_many([(k, b"r" * 40) for k in keys[start : start + 10_000]])
    layout_size = len(shard_layout(fake, index))
    assert layout_size > 150
    reader = BucketIndex(fake, b"t")
    everything = sorted(keys)
    fake.reads.clear()
    page = await reader.scan(everything[50_000], limit=1000)
    assert [k for k, _ in page] == everything[50_000:51_000]
    shard_reads = sum(n for name, n in fake.reads.items() if name != reader.root_name)
    assert fake.reads[reader.root_name] == 1
    assert shard_reads <= 5
    assert len(await reader.scan()) == 100_000


# -- group commit ----------------------------------------------------------------------------


class _SlowStore(FakeBlockStore):
    """A fake whose register operations take a while, so concurrent callers pile up."""

    async def edit(self, name, edit, *, redundancy=None):  # type: ignore[no-untyped-def]
        await trio.sleep(0.01)
        return await super().edit(name, edit, redundancy=redundancy)

    async def read(self, name):  # type: ignore[no-untyped-def]
        await trio.sleep(0.01)
        return await super().read(name)


async def test_concurrent_changes_share_edits_and_fail_alone() -> None:
    fake, index = await make(_SlowStore(replay_edits=True), max_entries=1000)
    await put(index, b"taken", b"old")
    edits_before = fake.ops["edit"]
    results: dict[bytes, object] = {}

    def only_if_absent(value: bytes):  # type: ignore[no-untyped-def]
        def fn(old: bytes | None) -> bytes:
            if old is not None:
                raise ValueError("exists")
            return value

        return fn

    async def write(key: bytes) -> None:
        try:
            results[key] = await index.update(key, only_if_absent(b"new-" + key))
        except ValueError as exc:
            results[key] = exc

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(write, b"k%02d" % i)
        nursery.start_soon(write, b"taken")
    assert fake.ops["edit"] - edits_before < 10  # 21 changes in a few rounds
    assert isinstance(results.pop(b"taken"), ValueError)  # refused alone...
    assert results == {b"k%02d" % i: (None, b"new-k%02d" % i) for i in range(20)}
    assert await index.get(b"taken") == b"old"  # ...and nothing of it written
    assert [k for k, _ in await index.scan()] == sorted([b"taken", *results])


async def test_concurrent_reads_share_rounds_and_see_earlier_writes() -> None:
    fake, index = await make(_SlowStore())
    for i in range(5):
        await put(index, b"k%d" % i, b"%d" % i)
    fake.reads.clear()
    got: dict[int, bytes | None] = {}

    async def read(i: int) -> None:
        got[i] = await index.get(b"k%d" % (i % 5))

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(read, i)
    assert got == {i: b"%d" % (i % 5) for i in range(30)}
    assert sum(fake.reads.values()) < 10
    # A read that begins after a write returned sees it, even with a round in flight.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(index.get, b"k0")  # a round in flight...
        await trio.sleep(0.001)
        await put(index, b"k0", b"changed")  # ...the write returns after it began
        assert await index.get(b"k0") == b"changed"


async def test_mixed_batch_reads_the_committed_shard() -> None:
    _fake, index = await make(_SlowStore())
    await put(index, b"a", b"1")
    seen: list[bytes | None] = []

    async def reader() -> None:
        seen.append(await index.get(b"b"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, index, b"x", b"first round")  # leads the first round
        await trio.sleep(0.001)
        nursery.start_soon(put, index, b"b", b"2")  # both queue for the next one
        nursery.start_soon(reader)
    assert seen == [b"2"]


async def test_cancelled_waiter_is_withdrawn_and_cancelled_leader_still_serves() -> None:
    _fake, index = await make(_SlowStore())
    await put(index, b"a")  # the root is cached from now on
    leader, waiter = trio.CancelScope(), trio.CancelScope()

    async def write_in(scope: trio.CancelScope, key: bytes) -> None:
        with scope:
            await put(index, key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_in, leader, b"leader")  # leads a round...
        await trio.sleep(0.001)  # ...which is in flight now
        nursery.start_soon(write_in, waiter, b"withdrawn")  # these two queue
        nursery.start_soon(put, index, b"follower")
        await trio.sleep(0.001)
        waiter.cancel()  # still queued: withdrawn, never applied
        leader.cancel()  # others may wait on its round: it completes, shielded
    assert await index.get(b"leader") == b"v"
    assert await index.get(b"withdrawn") is None
    assert await index.get(b"follower") == b"v"  # led the next round
