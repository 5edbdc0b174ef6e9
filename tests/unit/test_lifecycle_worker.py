"""The lifecycle worker: expired objects are deleted (only those, only if unchanged), old
incomplete uploads aborted, failures counted and retried."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from storage.errors import InvalidArgument
from storage.lifecycle import (
    Expiration,
    FilterForm,
    LifecycleFilter,
    LifecycleRule,
)
from storage.lifecycle_worker import LifecycleWorker, ScanOutcome, covering_prefixes
from storage.objects import ListPage, ObjectStore
from tests.fake_blockstore import FakeBlockStore
from tests.unit.test_upload_sweeper import T0, Clock, one_piece

DAY = 86_400.0
#: T0 is 2023-11-14 22:13:20 UTC: a one-day rule expires what is written then at
#: 2023-11-16 00:00:00 UTC.
ONE_DAY_EXPIRY = datetime(2023, 11, 16, tzinfo=UTC).timestamp()


async def new_store(clock: Clock, *rules: LifecycleRule) -> ObjectStore:
    """A store with bucket ``bkt`` configured with ``rules``."""
    store = ObjectStore(FakeBlockStore(), chunk_size=1024, min_part_size=1024, clock=clock)
    await store.create_bucket("bkt", owner="alice")
    await store.set_bucket_lifecycle("bkt", rules)
    return store


async def put(
    store: ObjectStore, key: str, data: bytes = b"data", tags: Mapping[str, str] | None = None
) -> None:
    """Write an object to ``bkt``."""
    await store.put_object("bkt", key, one_piece(data), tags=tags)


async def keys(store: ObjectStore) -> list[str]:
    """Every key of ``bkt``."""
    return [o.key for o in (await store.list_objects("bkt")).objects]


def days_rule(days: int = 1, **filter_args: Any) -> LifecycleRule:
    """An enabled rule expiring objects ``days`` after they were written."""
    return LifecycleRule("expire", True, LifecycleFilter(**filter_args), Expiration(days=days))


async def test_objects_expire_at_midnight_after_their_days_under_the_prefix_only() -> None:
    clock = Clock()
    store = await new_store(clock, days_rule(prefix="logs/"))
    await put(store, "logs/old")
    await put(store, "other/old")
    await put(store, "logs")  # the prefix is "logs/", not "logs"
    clock.now = ONE_DAY_EXPIRY - 3600
    await put(store, "logs/new")
    worker = LifecycleWorker(store, clock=clock)
    clock.now = ONE_DAY_EXPIRY - 1
    assert await worker.scan_now() == ScanOutcome(0, 0)
    clock.now = ONE_DAY_EXPIRY
    assert await worker.scan_now() == ScanOutcome(1, 0)
    assert await keys(store) == ["logs", "logs/new", "other/old"]
    clock.now = ONE_DAY_EXPIRY + DAY
    assert await worker.scan_now() == ScanOutcome(1, 0)
    assert await keys(store) == ["logs", "other/old"]
    assert worker.statistics().scans == 3
    assert worker.statistics().objects_expired == 2
    assert worker.statistics().failures == 0


async def test_tag_and_size_filters_are_checked() -> None:
    clock = Clock()
    rule = days_rule(
        prefix="", tags=(("class", "tmp"), ("team", "a")), size_greater_than=10, form=FilterForm.AND
    )
    store = await new_store(clock, rule)
    both = {"class": "tmp", "team": "a"}
    await put(store, "match", b"x" * 20, both)
    await put(store, "more-tags", b"x" * 20, {**both, "extra": "1"})
    await put(store, "wrong-value", b"x" * 20, {"class": "keep", "team": "a"})
    await put(store, "one-tag", b"x" * 20, {"class": "tmp"})
    await put(store, "no-tags", b"x" * 20)
    await put(store, "too-small", b"x" * 10, both)
    clock.now = ONE_DAY_EXPIRY
    outcome = await LifecycleWorker(store, clock=clock).scan_now()
    assert outcome.objects_expired == 2
    assert await keys(store) == ["no-tags", "one-tag", "too-small", "wrong-value"]


async def test_size_upper_bound() -> None:
    clock = Clock()
    store = await new_store(clock, days_rule(size_less_than=5))
    await put(store, "small", b"1234")
    await put(store, "big", b"12345")
    clock.now = ONE_DAY_EXPIRY
    await LifecycleWorker(store, clock=clock).scan_now()
    assert await keys(store) == ["big"]


async def test_disabled_rules_and_actions_that_never_act_do_nothing() -> None:
    clock = Clock()
    rules = (
        LifecycleRule("off", False, LifecycleFilter(), Expiration(days=1), abort_upload_days=1),
        LifecycleRule(
            "marker", True, LifecycleFilter(), Expiration(expired_object_delete_marker=True)
        ),
    )
    store = await new_store(clock, *rules)
    await store.create_bucket("plain", owner="alice")  # no lifecycle configuration at all
    await put(store, "k")
    await store.put_object("plain", "k", one_piece(b"x"))
    upload = await store.create_multipart_upload("bkt", "u")
    clock.now = T0 + 100 * DAY
    worker = LifecycleWorker(store, clock=clock)
    assert await worker.scan_now() == ScanOutcome(0, 0)
    assert await keys(store) == ["k"]
    assert [o.key for o in (await store.list_objects("plain")).objects] == ["k"]
    assert [u.upload_id for u in (await store.list_multipart_uploads("bkt")).uploads] == [upload]


async def test_a_date_rule_expires_objects_from_that_date_whenever_written() -> None:
    clock = Clock()
    date = datetime(2023, 12, 1, tzinfo=UTC)
    rule = LifecycleRule("date", True, LifecycleFilter(prefix="a"), Expiration(date=date))
    store = await new_store(clock, rule)
    await put(store, "a1")
    worker = LifecycleWorker(store, clock=clock)
    clock.now = date.timestamp() - 1
    assert (await worker.scan_now()).objects_expired == 0
    clock.now = date.timestamp() + 10 * DAY
    await put(store, "a2")  # written after the date: expired at once
    await put(store, "b")
    assert (await worker.scan_now()).objects_expired == 2
    assert await keys(store) == ["b"]


async def test_an_object_overwritten_after_the_listing_is_not_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    date = datetime(2023, 12, 1, tzinfo=UTC)
    # A date rule: the new object is as expired as the old one, only its identity differs.
    rule = LifecycleRule("date", True, LifecycleFilter(), Expiration(date=date))
    store = await new_store(clock, rule)
    await put(store, "victim", b"same bytes")
    await put(store, "other")
    clock.now = date.timestamp() + DAY
    listing = store.list_objects
    overwritten: list[datetime] = []

    async def list_then_overwrite(bucket: str, **kwargs: Any) -> ListPage:
        page = await listing(bucket, **kwargs)
        if not overwritten:  # another client writes the key between listing and deletion
            clock.now += 1
            info = await store.put_object(bucket, "victim", one_piece(b"same bytes"))
            overwritten.append(info.last_modified)
        return page

    monkeypatch.setattr(store, "list_objects", list_then_overwrite)
    worker = LifecycleWorker(store, clock=clock)
    assert await worker.scan_now() == ScanOutcome(1, 0)
    info = await store.head_object("bkt", "victim")
    assert info.last_modified == overwritten[0]  # the new object, same ETag, is still there
    assert await keys(store) == ["victim"]
    assert worker.statistics().objects_expired == 1
    # The next scan judges the new object on its own.
    assert await worker.scan_now() == ScanOutcome(1, 0)
    assert await keys(store) == []


async def test_an_object_retagged_after_the_listing_is_not_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    store = await new_store(clock, days_rule(tags=(("tmp", "1"),)))
    await put(store, "k", tags={"tmp": "1"})
    clock.now = ONE_DAY_EXPIRY
    listing = store.list_objects

    async def list_then_retag(bucket: str, **kwargs: Any) -> ListPage:
        page = await listing(bucket, **kwargs)
        await store.set_object_tags(bucket, "k", {"tmp": "0"})
        return page

    monkeypatch.setattr(store, "list_objects", list_then_retag)
    assert await LifecycleWorker(store, clock=clock).scan_now() == ScanOutcome(0, 0)
    assert await keys(store) == ["k"]


async def test_listings_are_paged_and_nested_prefixes_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    rules = (
        LifecycleRule("a", True, LifecycleFilter(prefix="a"), Expiration(days=1)),
        LifecycleRule("ab", True, LifecycleFilter(prefix="ab"), Expiration(days=5)),
        LifecycleRule("c", True, LifecycleFilter(prefix="c"), Expiration(days=1)),
    )
    store = await new_store(clock, *rules)
    for key in ("a1", "a2", "ab1", "ab2", "b", "c1", "c2", "c3"):
        await put(store, key)
    listing = store.list_objects
    prefixes: list[str] = []

    async def small_pages(bucket: str, **kwargs: Any) -> ListPage:
        if kwargs.get("start_after") is None:
            prefixes.append(kwargs["prefix"])
        return await listing(bucket, **{**kwargs, "max_keys": 2})

    monkeypatch.setattr(store, "list_objects", small_pages)
    clock.now = ONE_DAY_EXPIRY
    assert await LifecycleWorker(store, clock=clock).scan_now() == ScanOutcome(7, 0)
    assert prefixes == ["a", "c"]
    assert await listing("bkt") == await listing("bkt", prefix="b")


def test_covering_prefixes() -> None:
    assert covering_prefixes(["ab", "a", "abc", "b", "ac", "b"]) == ["a", "b"]
    assert covering_prefixes(["", "x"]) == [""]
    assert covering_prefixes(["x/", "x", "y/z", "y/"]) == ["x", "y/"]


async def test_incomplete_uploads_of_the_prefix_are_aborted_after_their_days() -> None:
    clock = Clock()
    rule = LifecycleRule("uploads", True, LifecycleFilter(prefix="tmp/"), abort_upload_days=1)
    store = await new_store(clock, rule)
    old = await store.create_multipart_upload("bkt", "tmp/a")
    await store.upload_part("bkt", "tmp/a", old, 1, one_piece(b"x" * 3000))
    other = await store.create_multipart_upload("bkt", "keep/b")
    clock.now = ONE_DAY_EXPIRY - 60
    young = await store.create_multipart_upload("bkt", "tmp/c")
    worker = LifecycleWorker(store, clock=clock)
    clock.now = ONE_DAY_EXPIRY - 1
    assert await worker.scan_now() == ScanOutcome(0, 0)
    clock.now = ONE_DAY_EXPIRY
    assert await worker.scan_now() == ScanOutcome(0, 1)
    remaining = {u.upload_id for u in (await store.list_multipart_uploads("bkt")).uploads}
    assert remaining == {other, young}
    assert worker.statistics().uploads_aborted == 1


async def test_workers_of_several_gateways_act_once() -> None:
    clock = Clock()
    rules = (
        days_rule(),
        LifecycleRule("uploads", True, LifecycleFilter(), abort_upload_days=1),
    )
    store = await new_store(clock, *rules)
    for key in ("a", "b", "c"):
        await put(store, key)
    await store.create_multipart_upload("bkt", "u")
    clock.now = ONE_DAY_EXPIRY
    workers = [LifecycleWorker(store, clock=clock) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(worker.scan_now)
    assert sum(w.statistics().objects_expired for w in workers) == 3
    assert sum(w.statistics().uploads_aborted for w in workers) == 1
    assert sum(w.statistics().failures for w in workers) == 0
    assert await keys(store) == []


async def test_a_storage_failure_is_counted_and_the_next_scan_retries() -> None:
    clock = Clock()
    fake = FakeBlockStore()
    store = ObjectStore(fake, clock=clock, bucket_cache_seconds=0)
    await store.create_bucket("bkt", owner="alice")
    await store.set_bucket_lifecycle("bkt", [days_rule()])
    await store.put_object("bkt", "k", one_piece(b"x"))
    clock.now = ONE_DAY_EXPIRY
    worker = LifecycleWorker(store, clock=clock)
    fake.fail(times=1000)
    assert await worker.scan_now() == ScanOutcome(0, 0)
    assert worker.statistics().failures == 1
    fake.clear_faults()
    assert await worker.scan_now() == ScanOutcome(1, 0)


async def test_a_bucket_deleted_during_the_scan_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    store = await new_store(clock, days_rule())
    stale = await store.list_buckets()
    await store.delete_bucket("bkt")

    async def stale_buckets(**_: Any) -> list[Any]:
        return stale

    monkeypatch.setattr(store, "list_buckets", stale_buckets)
    clock.now = ONE_DAY_EXPIRY
    worker = LifecycleWorker(store, clock=clock)
    assert await worker.scan_now() == ScanOutcome(0, 0)
    assert worker.statistics().failures == 0


async def test_run_scans_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock()
    store = await new_store(clock, days_rule())
    await put(store, "k")
    clock.now = ONE_DAY_EXPIRY
    worker = LifecycleWorker(store, interval=600, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert worker.statistics().scans == 0
        await trio.sleep(601)
        assert worker.statistics().scans == 1
        assert worker.statistics().objects_expired == 1
        await trio.sleep(600)
        assert worker.statistics().scans == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("interval", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_interval_is_refused(interval: float) -> None:
    with pytest.raises(InvalidArgument):
        LifecycleWorker(ObjectStore(FakeBlockStore()), interval=interval)
