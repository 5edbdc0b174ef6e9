"""Requests in flight, and releases that wait for a quiet moment (bounded) before they run."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio
import trio.testing

from interfaces.s3.activity import RequestActivity
from interfaces.s3.app import S3App
from interfaces.s3.credentials import CredentialStore
from storage.objects import ObjectStore
from tests.e2e.test_s3_hostile import ACCESS_KEY, NOW, SECRET, _sign
from tests.fake_blockstore import FakeBlockStore


async def _returns_at(activity: RequestActivity, since: float) -> float:
    await activity.wait_until_quiet(since)
    return trio.current_time()


async def test_a_wait_returns_once_no_request_has_run_for_the_quiet_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    activity = RequestActivity(quiet=0.1, longest=2.0)
    activity.started()
    activity.ended()
    begun = trio.current_time()
    assert await _returns_at(activity, begun) - begun == pytest.approx(0.1)


async def test_a_request_in_flight_holds_the_wait_until_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    activity = RequestActivity(quiet=0.1, longest=2.0)
    begun = trio.current_time()
    activity.started()
    returned: list[float] = []

    async def waiter() -> None:
        returned.append(await _returns_at(activity, begun))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.73)
        assert not returned
        activity.ended()
    assert returned[0] - begun == pytest.approx(0.83)


async def test_steady_requests_defer_every_waiter_to_its_own_deadline_and_no_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """More waiters than turns, and a request always in flight or just ended: each waiter
    still returns at its own deadline (answer time + longest), the queued ones included."""
    activity = RequestActivity(quiet=0.1, longest=2.0, waiters=2)
    returned: dict[int, float] = {}
    since: dict[int, float] = {}

    async def waiter(index: int) -> None:
        since[index] = trio.current_time()
        returned[index] = await _returns_at(activity, since[index])

    async def load() -> None:
        while True:
            activity.started()
            await trio.sleep(0.03)
            activity.ended()
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        for index in range(6):
            nursery.start_soon(waiter, index)
            await trio.sleep(0.25)
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert sorted(returned) == list(range(6))
    for index, at in returned.items():
        assert at - since[index] == pytest.approx(2.0)


async def _app() -> tuple[S3App, ObjectStore]:
    """An app on an in-memory store, with a key and the bucket ``bkt``."""
    store = FakeBlockStore()
    objects = ObjectStore(store)
    app = S3App(objects, CredentialStore(store), clock=lambda: NOW)
    await app.credentials.add_key(ACCESS_KEY, SECRET, "activity")
    await objects.create_bucket("bkt", owner=ACCESS_KEY)
    return app, objects


async def _put(
    app: S3App, key: str, body: bytes, answered: trio.Event | None = None, arrive: Any = None
) -> int:
    """PUT ``body`` in-process; ``arrive`` (an Event) holds the body back until it is set."""
    path = f"/bkt/{key}"
    digest = hashlib.sha256(body).hexdigest()
    headers = _sign("PUT", path, "", [("content-length", str(len(body)))], digest)
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        if arrive is not None:
            await arrive.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            if answered is not None:
                answered.set()

    scope = {
        "type": "http",
        "method": "PUT",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }
    await app(scope, receive, send)
    return status[0]


async def test_an_overwrite_releases_the_old_chunks_after_the_requests_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, objects = await _app()
    assert await _put(app, "obj", b"first" * 1000) == 200
    body_arrives = trio.Event()
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_put, app, "slow", b"slow" * 100, None, body_arrives)
        await trio.sleep(0.01)
        assert app.activity.in_flight == 1
        nursery.start_soon(_put, app, "obj", b"second" * 1000, answered)
        await answered.wait()
        answered_at = trio.current_time()
        await trio.sleep(1.0)
        assert objects.statistics().chunks_released == 0  # the slow PUT is still in flight
        body_arrives.set()
    # The overwrite's task ended once the slow PUT had ended and a quiet period passed.
    assert objects.statistics().chunks_released == 1
    assert 1.0 < trio.current_time() - answered_at < 1.5


async def test_under_endless_requests_a_release_runs_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, objects = await _app()
    assert await _put(app, "obj", b"first" * 1000) == 200
    never = trio.Event()
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_put, app, "stuck", b"stuck", None, never)
        await trio.sleep(0.01)
        overwrite_done = trio.Event()

        async def overwrite() -> None:
            await _put(app, "obj", b"second" * 1000, answered)
            overwrite_done.set()

        nursery.start_soon(overwrite)
        await answered.wait()
        answered_at = trio.current_time()
        await overwrite_done.wait()
        assert objects.statistics().chunks_released == 1
        assert trio.current_time() - answered_at == pytest.approx(2.0)
        nursery.cancel_scope.cancel()


async def test_an_overwrite_of_an_empty_object_has_nothing_to_release_and_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An empty object has no chunk: replacing it drops nothing, so its request ends with
    its answer (no quiet period, no waiting turn taken)."""
    app, objects = await _app()
    assert await _put(app, "empty", b"") == 200
    began = trio.current_time()
    assert await _put(app, "empty", b"y" * 100) == 200
    assert objects.statistics().chunks_released == 0
    assert trio.current_time() == began
