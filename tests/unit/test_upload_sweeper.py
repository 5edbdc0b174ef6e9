"""The upload sweeper: unfinished multipart uploads are aborted after the expiry, others kept."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from storage.errors import InvalidArgument
from storage.objects import ObjectStore
from storage.upload_sweeper import MAX_INTERVAL, UploadSweeper, sweep_interval
from tests.fake_blockstore import FakeBlockStore

HOUR = 3600.0
T0 = 1_700_000_000.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    """A request body of one piece."""
    yield data


async def store_with_uploads(clock: Clock) -> tuple[FakeBlockStore, ObjectStore, str, str]:
    """A bucket with an upload started at T0 (one part stored) and one 10 hours later."""
    fake = FakeBlockStore()
    store = ObjectStore(fake, chunk_size=1024, min_part_size=1024, clock=clock)
    await store.create_bucket("bkt", owner="alice")
    old = await store.create_multipart_upload("bkt", "old/key")
    await store.upload_part("bkt", "old/key", old, 1, one_piece(b"x" * 5000))
    clock.now += 10 * HOUR
    new = await store.create_multipart_upload("bkt", "new key")
    return fake, store, old, new


async def test_uploads_older_than_the_expiry_are_aborted_and_their_parts_released() -> None:
    clock = Clock()
    fake, store, old, new = await store_with_uploads(clock)
    chunks_with_part = len(fake.chunks)
    sweeper = UploadSweeper(store, expiry=24 * HOUR, clock=clock)
    clock.now = T0 + 20 * HOUR
    assert await sweeper.sweep_now() == 0
    clock.now = T0 + 25 * HOUR
    assert await sweeper.sweep_now() == 1
    page = await store.list_multipart_uploads("bkt")
    assert [u.upload_id for u in page.uploads] == [new]
    assert len(fake.chunks) < chunks_with_part
    assert old not in {u.upload_id for u in page.uploads}
    assert sweeper.statistics().uploads_aborted == 1
    assert sweeper.statistics().sweeps == 2


async def test_gateways_sweeping_at_once_abort_each_upload_once() -> None:
    clock = Clock()
    _, store, _, _ = await store_with_uploads(clock)
    clock.now = T0 + 40 * HOUR
    sweepers = [UploadSweeper(store, expiry=24 * HOUR, clock=clock) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for sweeper in sweepers:
            nursery.start_soon(sweeper.sweep_now)
    assert sum(s.statistics().uploads_aborted for s in sweepers) == 2
    assert sum(s.statistics().failures for s in sweepers) == 0
    assert (await store.list_multipart_uploads("bkt")).uploads == []


async def test_a_storage_failure_is_counted_and_the_next_sweep_retries() -> None:
    clock = Clock()
    fake, store, _, _ = await store_with_uploads(clock)
    clock.now = T0 + 40 * HOUR
    sweeper = UploadSweeper(store, expiry=24 * HOUR, clock=clock)
    fake.fail(times=1000)
    assert await sweeper.sweep_now() == 0
    assert sweeper.statistics().failures == 1
    fake.clear_faults()
    assert await sweeper.sweep_now() == 2


@pytest.mark.parametrize("expiry", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_expiry_is_refused(expiry: float) -> None:
    with pytest.raises(InvalidArgument):
        UploadSweeper(ObjectStore(FakeBlockStore()), expiry=expiry)


def test_sweeps_run_a_quarter_of_the_expiry_apart_within_bounds() -> None:
    assert sweep_interval(24 * HOUR) == MAX_INTERVAL
    assert sweep_interval(HOUR) == HOUR / 4
    assert sweep_interval(0.5) == 1.0
