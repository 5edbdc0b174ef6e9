"""The lifecycle worker acts only on the rules a bucket has now: a rule removed, disabled
or narrowed while a scan is under way stops acting at once."""

from __future__ import annotations

from typing import Any

import pytest

from storage.lifecycle import LifecycleFilter, LifecycleRule
from storage.lifecycle_worker import LifecycleWorker
from storage.objects import ListPage
from tests.unit.test_lifecycle_worker import ONE_DAY_EXPIRY, days_rule, keys, new_store, put
from tests.unit.test_upload_sweeper import Clock, one_piece


async def test_rules_removed_after_the_listing_delete_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The owner removes the lifecycle configuration (DeleteBucketLifecycle) while a scan
    is under way (scans of big buckets take long: one listing page, then deletions). The
    objects listed before must not be deleted: no rule expires them any more."""
    clock = Clock()
    store = await new_store(clock, days_rule(prefix=""))
    for key in ("a", "b", "c"):
        await put(store, key)
    clock.now = ONE_DAY_EXPIRY
    listing = store.list_objects

    async def list_then_remove_rules(bucket: str, **kwargs: Any) -> ListPage:
        page = await listing(bucket, **kwargs)
        await store.set_bucket_lifecycle(bucket, None)  # the owner: "stop expiring!"
        return page

    monkeypatch.setattr(store, "list_objects", list_then_remove_rules)
    await LifecycleWorker(store, clock=clock).scan_now()
    assert await keys(store) == ["a", "b", "c"]


async def test_rule_disabled_after_the_listing_deletes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same with the rule switched to Disabled, or its prefix narrowed, between the
    listing and the deletions."""
    clock = Clock()
    store = await new_store(clock, days_rule(prefix=""))
    await put(store, "keep/x")
    clock.now = ONE_DAY_EXPIRY
    listing = store.list_objects

    async def list_then_narrow(bucket: str, **kwargs: Any) -> ListPage:
        page = await listing(bucket, **kwargs)
        await store.set_bucket_lifecycle(bucket, [days_rule(prefix="tmp/")])
        return page

    monkeypatch.setattr(store, "list_objects", list_then_narrow)
    await LifecycleWorker(store, clock=clock).scan_now()
    assert await keys(store) == ["keep/x"]


async def test_abort_rule_removed_after_the_upload_listing_aborts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for AbortIncompleteMultipartUpload: an upload listed under the rules of the
    scan's start is not aborted once the rule is gone (its parts would be released)."""

    clock = Clock()
    rule = LifecycleRule("uploads", True, LifecycleFilter(), abort_upload_days=1)
    store = await new_store(clock, rule)
    upload = await store.create_multipart_upload("bkt", "big")
    await store.upload_part("bkt", "big", upload, 1, one_piece(b"x" * 3000))
    clock.now = ONE_DAY_EXPIRY
    listing = store.list_multipart_uploads

    async def list_then_remove_rules(bucket: str, **kwargs: Any) -> Any:
        page = await listing(bucket, **kwargs)
        await store.set_bucket_lifecycle(bucket, None)
        return page

    monkeypatch.setattr(store, "list_multipart_uploads", list_then_remove_rules)
    await LifecycleWorker(store, clock=clock).scan_now()
    remaining = [u.upload_id for u in (await listing("bkt")).uploads]
    assert remaining == [upload]


async def test_rules_removed_while_an_earlier_bucket_is_scanned_delete_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan lists the buckets once, at its start, then works through them one by one.
    A configuration removed while the scan is still on an earlier bucket is not applied to
    the later one."""
    clock = Clock()
    store = await new_store(clock, days_rule(prefix=""))  # bucket "bkt"
    await store.create_bucket("aaa", owner="alice")  # scanned first (sorted by name)
    await store.set_bucket_lifecycle("aaa", [days_rule(prefix="")])
    await store.put_object("aaa", "x", _piece(b"x"))
    await put(store, "precious")
    clock.now = ONE_DAY_EXPIRY
    listing = store.list_objects

    async def listing_of_aaa_is_slow(bucket: str, **kwargs: Any) -> ListPage:
        if bucket == "aaa":  # meanwhile, bkt's owner removes its rules
            await store.set_bucket_lifecycle("bkt", None)
        return await listing(bucket, **kwargs)

    monkeypatch.setattr(store, "list_objects", listing_of_aaa_is_slow)
    await LifecycleWorker(store, clock=clock).scan_now()
    assert await store.lifecycle_rules("bkt") is None
    assert await keys(store) == ["precious"]


async def _piece(data: bytes) -> Any:
    yield data
