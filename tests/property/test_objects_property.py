"""Hypothesis: listings equal a brute-force model; concurrent writers, crashes and splits
never lose or duplicate an index entry."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator

import msgpack
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.bucket_index import BucketIndex
from storage.errors import (
    Conflict,
    InvalidPart,
    NoSuchUpload,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from storage.object_records import ContentHeaders, ObjectRecord
from storage.objects import ObjectStore
from tests.fake_blockstore import FakeBlockStore

ALPHABET = ["a", "b", "/", " ", "+", "%", "é", "\U0001f600", "ab", "a/"]
keys_st = st.lists(
    st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=5).map("".join),
    max_size=40,
    unique=True,
)
fragment_st = st.lists(st.sampled_from(ALPHABET), max_size=3).map("".join)
RECORD = ObjectRecord(size=1, etag="0" * 32, mtime_ms=0, headers=ContentHeaders()).pack()


def utf8(text: str) -> bytes:
    return text.encode("utf-8")


def model_listing(
    keys: list[str], prefix: str, delimiter: str | None, marker: str, max_keys: int
) -> tuple[list[tuple[str, str]], bool]:
    """Brute force over the sorted key list: ``[("key"|"prefix", text)]`` and truncation."""
    items: list[tuple[str, str]] = []
    for key in sorted(keys, key=utf8):
        if utf8(key) <= utf8(marker) or not key.startswith(prefix):
            continue
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if utf8(common) <= utf8(marker) or ("prefix", common) in items:
                    continue
                items.append(("prefix", common))
                continue
        items.append(("key", key))
    if max_keys == 0:
        return [], False
    return items[:max_keys], len(items) > max_keys


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    keys=keys_st,
    prefix=fragment_st,
    delimiter=st.one_of(st.none(), st.sampled_from(["/", "a", "é", "/a", "+"])),
    marker=fragment_st,
    max_keys=st.integers(0, 12),
)
def test_listing_matches_brute_force(
    keys: list[str], prefix: str, delimiter: str | None, marker: str, max_keys: int
) -> None:
    async def run() -> None:
        fake = FakeBlockStore()
        store = ObjectStore(fake, index_max_entries=4)
        await store.create_bucket("b", owner="o")
        index = await store.bucket_index("b")
        half = len(keys) // 2
        await index.insert_many([(utf8(k), RECORD) for k in keys[:half]])
        for key in keys[half:]:  # the rest one by one, splitting as it goes
            await index.update(utf8(key), lambda _old: RECORD)

        page = await store.list_objects(
            "b", prefix=prefix, delimiter=delimiter, start_after=marker, max_keys=max_keys
        )
        got = [("key", o.key) for o in page.objects] + [("prefix", p) for p in page.common_prefixes]
        expected, truncated = model_listing(keys, prefix, delimiter, marker, max_keys)
        assert sorted(got, key=lambda i: utf8(i[1])) == expected
        assert page.is_truncated == truncated
        if truncated:
            assert page.next_marker == expected[-1][1]
        # Following the markers visits every item once, in order.
        if max_keys:
            everything, _ = model_listing(keys, prefix, delimiter, marker, 10**6)
            seen: list[tuple[str, str]] = []
            position = marker
            while True:
                page = await store.list_objects(
                    "b",
                    prefix=prefix,
                    delimiter=delimiter,
                    start_after=position,
                    max_keys=max_keys,
                )
                batch = [("key", o.key) for o in page.objects]
                batch += [("prefix", p) for p in page.common_prefixes]
                seen += sorted(batch, key=lambda i: utf8(i[1]))
                if not page.is_truncated:
                    break
                assert page.next_marker is not None
                position = page.next_marker
            assert seen == everything

    trio.run(run)


op_st = st.tuples(st.integers(0, 11), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    fault_rate=st.sampled_from([0.0, 0.05, 0.15]),
    max_entries=st.integers(2, 6),
    plans=st.lists(st.lists(op_st, max_size=30), min_size=2, max_size=4),
)
def test_concurrent_writers_with_crashes_never_lose_or_duplicate(
    seed: int, fault_rate: float, max_entries: int, plans: list[list[tuple[int, bool]]]
) -> None:
    async def run() -> None:
        rng = random.Random(seed)
        fake = FakeBlockStore(jitter=random.Random(seed + 1), replay_edits=True)
        setup = BucketIndex(fake, b"t", max_entries=max_entries)
        await setup.create()
        stable = [f"{i:02d}-stable".encode() for i in range(0, 12, 2)]
        for key in stable:
            await setup.update(key, lambda _old: b"s")
        fake.random_faults(fault_rate, rng, ops=("read", "edit"))
        # Per key: True present, False absent, None unknown (an operation failed).
        state: dict[bytes, bool | None] = {}
        problems: list[str] = []

        async def writer(task: int, plan: list[tuple[int, bool]]) -> None:
            own = BucketIndex(fake, b"t", max_entries=max_entries)
            for slot, insert in plan:
                key = f"{slot:02d}-w{task}".encode()  # interleaved with other tasks' keys
                try:
                    await own.update(key, (lambda _old: b"v") if insert else (lambda _old: None))
                except Unavailable:
                    state[key] = None
                else:
                    state[key] = insert

        async def reader() -> None:
            own = BucketIndex(fake, b"t", max_entries=max_entries)
            for _ in range(8):
                try:
                    keys = [k for k, _ in await own.scan()]
                except Unavailable:
                    continue
                if keys != sorted(set(keys)):
                    problems.append(f"duplicate or unsorted: {keys}")
                missing = set(stable) - set(keys)
                if missing:
                    problems.append(f"stable entries vanished: {missing}")

        async with trio.open_nursery() as nursery:
            for task, plan in enumerate(plans):
                nursery.start_soon(writer, task, plan)
            nursery.start_soon(reader)
        fake.clear_faults()
        assert not problems
        final = [k for k, _ in await BucketIndex(fake, b"t", max_entries=max_entries).scan()]
        assert final == sorted(set(final))
        assert set(stable) <= set(final)
        for key, present in state.items():
            if present is not None:
                assert (key in final) == present, key
        assert set(final) <= set(stable) | set(state)
        # Every reachable shard holds only keys of its own range.
        registers = fake.live_registers()
        root = msgpack.unpackb(registers[setup.root_name])
        for bound, shard_id in zip(root["b"], root["i"], strict=True):
            shard = msgpack.unpackb(registers[setup.shard_name(shard_id)])
            assert shard["lo"] == bound
            assert all(
                k >= shard["lo"] and (shard["hi"] is None or k < shard["hi"]) for k in shard["k"]
            )

    trio.run(run)


object_op_st = st.tuples(
    st.sampled_from(["put", "put_new", "delete", "copy", "multipart", "abort", "batch"]),
    st.integers(0, 4),  # key
    st.integers(0, 4),  # other key
    st.integers(0, 3500),  # size
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    faulty=st.booleans(),
    plans=st.lists(st.lists(object_op_st, max_size=12), min_size=1, max_size=3),
)
def test_objects_under_concurrency_and_faults_stay_readable(
    seed: int, faulty: bool, plans: list[list[tuple[str, int, int, int]]]
) -> None:
    """Whatever interleaving and failures: every listed object reads back whole and right;
    without failures, no chunk leaks."""

    async def body(tag: int, size: int) -> AsyncIterator[bytes]:
        data = bytes([tag % 256]) * size
        for i in range(0, size, 600):
            yield data[i : i + 600]

    async def run() -> None:
        rng = random.Random(seed)
        fake = FakeBlockStore(jitter=random.Random(seed + 1), replay_edits=True)
        store = ObjectStore(
            fake, chunk_size=1024, inline_chunks=2, min_part_size=1024, index_max_entries=3
        )
        await store.create_bucket("b", owner="o")
        if faulty:
            fake.random_faults(0.08, rng)
        expected_errors = (Unavailable, NotFound, PreconditionFailed, Conflict, InvalidPart)

        async def worker(task: int, plan: list[tuple[str, int, int, int]]) -> None:
            for step, (op, k, other, size) in enumerate(plan):
                key, other_key = f"k{k}", f"k{other}"
                tag = task * 50 + step
                try:
                    if op == "put":
                        await store.put_object("b", key, body(tag, size))
                    elif op == "put_new":
                        await store.put_object("b", key, body(tag, size), if_none_match="*")
                    elif op == "delete":
                        await store.delete_object("b", key)
                    elif op == "copy":
                        await store.copy_object("b", other_key, "b", key)
                    elif op == "batch":
                        await store.delete_objects("b", [key, other_key])
                    else:
                        upload = await store.create_multipart_upload("b", key)
                        try:
                            sizes = [1024 + size % 700, size % 1500]
                            etags = []
                            for n, part_size in enumerate(sizes, start=1):
                                part = await store.upload_part(
                                    "b", key, upload, n, body(tag + n, part_size)
                                )
                                etags.append((n, part.etag))
                            if op == "multipart":
                                await store.complete_multipart_upload("b", key, upload, etags)
                        finally:
                            with trio.CancelScope(shield=True):
                                for _ in range(3):
                                    try:
                                        await store.abort_multipart_upload("b", key, upload)
                                        break
                                    except NoSuchUpload:
                                        break
                                    except expected_errors:
                                        continue
                except expected_errors:
                    pass

        async with trio.open_nursery() as nursery:
            for task, plan in enumerate(plans):
                nursery.start_soon(worker, task, plan)
        fake.clear_faults()
        referenced: set[bytes] = set()
        page = await store.list_objects("b")
        assert not page.is_truncated
        for info in page.objects:
            reader = await store.open_object("b", info.key)
            data = b"".join([piece async for piece in reader.stream()])
            assert len(data) == info.size
            if info.parts_count is None:
                assert hashlib.md5(data, usedforsecurity=False).hexdigest() == info.etag
            referenced.update(bytes(c.ref.address) for c in await reader.chunks())
            if reader.record.chunk_list is not None:
                referenced.add(bytes(reader.record.chunk_list.ref.address))
        if not faulty:
            assert (await store.list_multipart_uploads("b")).uploads == []
            assert set(fake.chunks) == referenced

    trio.run(run)
