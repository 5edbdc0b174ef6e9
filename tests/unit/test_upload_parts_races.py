"""Interleavings of part uploads, completions, retries, aborts and bucket deletions around
the part groups (storage.upload_parts), and uploads started before parts had groups."""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.lowlevel

from storage import objects
from storage.errors import (
    Conflict,
    InvalidPart,
    NoSuchUpload,
    NotFound,
    PreconditionFailed,
    StorageError,
)
from storage.object_records import PartRecord, StoredChunk
from storage.objects import ObjectStore, ReleaseLater
from tests.fake_blockstore import FakeBlockStore
from tests.unit.test_objects import PART, body, fetch, make_store, md5, payload, referenced

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")


def _group_0(name: bytes) -> bool:
    return name.endswith(b"/p/0")


def _is_upload_register(name: bytes) -> bool:
    return name.startswith(b"s3/up/") and b"/p/" not in name


async def _legacy_parts(fake: FakeBlockStore, parts: dict[int, bytes]) -> None:
    """Give the only upload ``parts`` (number -> data) as written before parts had groups:
    in its register, under ``"p"``."""
    (name,) = [n for n in fake.live_registers() if n.startswith(b"s3/up/")]
    obj = msgpack.unpackb(fake.registers[name].value, raw=False, strict_map_key=False)
    obj.pop("g", None)
    packed = {}
    for number, data in parts.items():
        ref = await fake.put_chunk(data)
        chunk = StoredChunk(ref, len(data))
        packed[number] = PartRecord(hashlib.md5(data).digest(), len(data), 1, (chunk,)).pack()
    obj["p"] = packed
    fake.registers[name].value = msgpack.packb(obj, use_bin_type=True)


async def _two_part_upload(
    *, existing: bool = False
) -> tuple[FakeBlockStore, ObjectStore, str, list[tuple[int, str]]]:
    """A store with an upload of two parts (a whole one and a short last one) at ``mp`` in
    ``bkt`` (``existing``: an object is there already); returns its id and part list."""
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    if existing:
        await store.put_object("bkt", "mp", body(b"existing"))
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(100, 2)))
    return fake, store, upload, [(1, p1.etag), (2, p2.etag)]


class Hold:
    def __init__(self, who: str, match: Callable[[bytes], bool], skip: int) -> None:
        self.who, self.match, self.skip = who, match, skip
        self.armed = True
        self.reached, self.go = trio.Event(), trio.Event()

    def release(self) -> None:
        self.go.set()


class Holds:
    """Pause the n-th edit (or commit) a named task makes on a matching register."""

    def __init__(self, fake: FakeBlockStore, store: ObjectStore) -> None:
        self.rules: list[Hold] = []
        real_edit = fake.edit
        real_commit = store._commit_object
        real_record = store._record_chunks

        async def edit(name: bytes, fn: Any, **kw: Any) -> Any:
            await self._maybe_wait(name)
            return await real_edit(name, fn, **kw)

        async def commit(*args: Any, **kw: Any) -> Any:
            await self._maybe_wait(b"<commit>")
            return await real_commit(*args, **kw)

        async def record(*args: Any, **kw: Any) -> Any:
            await self._maybe_wait(b"<record>")
            return await real_record(*args, **kw)

        fake.edit = edit  # type: ignore[method-assign,assignment]
        store._commit_object = commit  # type: ignore[method-assign]
        store._record_chunks = record  # type: ignore[method-assign]

    async def _maybe_wait(self, name: bytes) -> None:
        for r in self.rules:
            if r.armed and r.who == WHO.get() and r.match(name):
                if r.skip:
                    r.skip -= 1
                    return
                r.armed = False
                r.reached.set()
                await r.go.wait()
                return

    def edit(self, who: str, match: Callable[[bytes], bool], skip: int = 0) -> Hold:
        rule = Hold(who, match, skip)
        self.rules.append(rule)
        return rule

    def commit(self, who: str) -> Hold:
        return self.edit(who, lambda n: n == b"<commit>")

    def record(self, who: str) -> Hold:
        """Pause ``who`` once it read its parts, before it records the object's chunks."""
        return self.edit(who, lambda n: n == b"<record>")


async def run_as(who: str, results: dict[str, Any], fn: Any, *args: Any, **kw: Any) -> None:
    WHO.set(who)
    try:
        results[who] = await fn(*args, **kw)
    except (StorageError, NotFound) as exc:
        results[who] = exc
    finally:
        results.setdefault("done", set()).add(who)


async def until_done(results: dict[str, Any], who: str) -> None:
    while who not in results.get("done", set()):
        await trio.lowlevel.checkpoint()


def group_regs(fake: FakeBlockStore) -> list[bytes]:
    return sorted(n for n in fake.live_registers() if b"/p/" in n)


# ---------------------------------------------------------------------------------------------
# A first attempt (A) closing after its retry (B) closed the groups is refused: it neither
# takes the groups over nor reopens them, so a slow duplicate UploadPart cannot replace (and
# release) the part B commits.


async def test_an_attempt_closing_after_its_retry_leaves_the_groups_to_it() -> None:
    fake, store, upload, wanted = await _two_part_upload(existing=True)
    holds = Holds(fake, store)
    w_write = holds.edit("W", _group_0)
    a_close = holds.edit("A", _group_0)
    b_commit = holds.commit("B")
    res: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        # W: the client's duplicate (SDK-retried) UploadPart of part 2, same bytes, still in
        # flight at the server; it checked the upload before any claim.
        nursery.start_soon(
            run_as, "W", res, store.upload_part, "bkt", "mp", upload, 2, body(payload(100, 2))
        )
        await w_write.reached.wait()
        nursery.start_soon(
            lambda: run_as(
                "A",
                res,
                store.complete_multipart_upload,
                "bkt",
                "mp",
                upload,
                wanted,
                if_none_match="*",
            )
        )
        await a_close.reached.wait()  # A claimed (tA), about to close group 0
        nursery.start_soon(
            lambda: run_as(
                "B",
                res,
                store.complete_multipart_upload,
                "bkt",
                "mp",
                upload,
                wanted,
                if_none_match="*",
            )
        )
        await b_commit.reached.wait()  # B claimed (tB, retry), closed group 0, read parts
        a_close.release()  # A takes group 0 over (tA), is refused, reopens it
        await until_done(res, "A")
        w_write.release()  # W replaces part 2 in the reopened group, releases the old one
        await until_done(res, "W")
        await store.delete_object("bkt", "mp")
        b_commit.release()
    assert isinstance(res["A"], (PreconditionFailed, Conflict))
    assert isinstance(res["W"], NoSuchUpload) or res["W"].etag == wanted[1][1]
    assert res["B"].etag.endswith("-2")  # B: committed
    chunks = await (await store.open_object("bkt", "mp")).chunks()
    missing = [c for c in chunks if c.ref.address not in fake.chunks]
    assert not missing, f"committed object references {len(missing)} released chunk(s)"


# ---------------------------------------------------------------------------------------------
# A retry (B) refused while the first attempt (A) is about to commit: B must not reopen the
# groups A closed, or a part upload replaces (and releases) a part A's object is made of.


async def test_a_refused_retry_leaves_the_first_attempts_groups_closed() -> None:
    fake, store, upload, wanted = await _two_part_upload()
    holds = Holds(fake, store)
    a_commit = holds.commit("A")
    res: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_as(
                "A",
                res,
                store.complete_multipart_upload,
                "bkt",
                "mp",
                upload,
                wanted,
                if_none_match="*",
            )
        )
        await a_commit.reached.wait()  # A claimed (epoch 1), closed group 0, read the parts
        await store.put_object("bkt", "mp", body(b"someone else's"))
        with pytest.raises(PreconditionFailed):  # B: a retry of A, refused for sure
            await store.complete_multipart_upload("bkt", "mp", upload, wanted, if_none_match="*")
        with pytest.raises(NoSuchUpload):  # group 0 is still A's
            await store.upload_part("bkt", "mp", upload, 2, body(payload(100, 9)))
        await store.delete_object("bkt", "mp")
        a_commit.release()
    assert isinstance(res["A"], objects.ObjectInfo), res["A"]
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


# ---------------------------------------------------------------------------------------------
# A late first write creates its group between a clean-up's close (the group was absent) and
# its destroy: destroy leaves the open group, and the writer withdraws and releases its part.


@pytest.mark.parametrize("cleanup", ["abort", "delete_bucket"])
async def test_a_part_written_between_close_and_destroy_is_withdrawn(cleanup: str) -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    holds = Holds(fake, store)
    is_g1 = lambda n: n.endswith(b"/p/1")  # noqa: E731
    w_write = holds.edit("W", is_g1)
    w_withdraw = holds.edit("W", is_g1)
    x_destroy = holds.edit("X", is_g1, skip=1)  # X's 1st edit of group 1 is its close
    res: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_as, "W", res, store.upload_part, "bkt", "mp", upload, 101, body(payload(PART, 101))
        )
        await w_write.reached.wait()  # W named group 1 in the upload, about to write it
        if cleanup == "abort":
            nursery.start_soon(run_as, "X", res, store.abort_multipart_upload, "bkt", "mp", upload)
        else:
            nursery.start_soon(run_as, "X", res, store.delete_bucket, "bkt")
        await x_destroy.reached.wait()  # closed group 1 (absent: nothing), about to destroy
        w_write.release()
        await w_withdraw.reached.wait()  # W wrote (created group 1 open), saw upload gone
        x_destroy.release()
        await until_done(res, "X")
        w_withdraw.release()
    assert isinstance(res["W"], NoSuchUpload)
    assert not [n for n in fake.live_registers() if n.startswith(b"s3/up/")]
    buckets = ["bkt"] if cleanup == "abort" else []
    leaked = set(fake.chunks) - await referenced(store, buckets)
    assert not leaked, f"{len(leaked)} chunk(s) of the withdrawn part leaked"


# ---------------------------------------------------------------------------------------------
# A completion whose close runs after a bucket deletion collected the upload creates no group
# register and answers NoSuchUpload.


async def test_a_completion_after_the_bucket_deletion_is_no_such_upload() -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    holds = Holds(fake, store)
    a_close = holds.edit("A", _group_0)
    res: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_as(
                "A", res, store.complete_multipart_upload, "bkt", "mp", upload, [(1, p1.etag)]
            )
        )
        await a_close.reached.wait()
        await store.delete_bucket("bkt")
        assert not group_regs(fake)
        a_close.release()
    assert isinstance(res["A"], NoSuchUpload), f"completion answered {res['A']!r}"
    assert not group_regs(fake), "group registers left behind"


# ---------------------------------------------------------------------------------------------
# An upload register written before parts had groups (parts inline under "p") keeps them:
# ListParts shows them and an abort releases them.


async def test_an_upload_from_before_groups_keeps_its_parts() -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    data = payload(PART, 1)
    await _legacy_parts(fake, {1: data})
    page = await store.list_parts("bkt", "mp", upload)
    assert [(p.part_number, p.etag) for p in page.parts] == [(1, md5(data))]
    await store.abort_multipart_upload("bkt", "mp", upload)
    assert not fake.chunks, "the pre-upgrade part's chunks leaked"


# ---------------------------------------------------------------------------------------------
# A legacy part N completed while a re-upload of N lands in a group absent at the completion's
# close: the clean-up keeps what the object owns (by address, not by part number) and
# releases the rest, the late part included.


async def test_a_late_reupload_of_a_completed_legacy_part() -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    upload = await store.create_multipart_upload("bkt", "mp")
    data = payload(PART, 1)
    await _legacy_parts(fake, {1: data})
    etag = hashlib.md5(data).hexdigest()
    holds = Holds(fake, store)
    w_write = holds.edit("W", _group_0)
    c_commit = holds.commit("C")
    res: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_as, "W", res, store.upload_part, "bkt", "mp", upload, 1, body(data))
        await w_write.reached.wait()  # W named group 0, is slow to write it
        nursery.start_soon(
            lambda: run_as(
                "C", res, store.complete_multipart_upload, "bkt", "mp", upload, [(1, etag)]
            )
        )
        await c_commit.reached.wait()  # C closed {0} (absent) and chose the legacy part
        w_write.release()
        await until_done(res, "W")
        c_commit.release()
    assert res["C"].etag.endswith("-1"), res
    assert await fetch(store, "bkt", "mp") == data
    assert set(fake.chunks) == await referenced(store, ["bkt"])  # nothing lost, nothing leaked
    assert not [n for n in fake.live_registers() if n.startswith(b"s3/up/")]


# ---------------------------------------------------------------------------------------------
# A retry (epoch 2) whose list no longer matches gives its claim back and reopens the group
# it closed; the first attempt (epoch 1), slower, must not close that group afterwards (it
# would commit with nothing holding its parts): the group's floor refuses it.


@pytest.mark.parametrize("reupload", [True, False])
async def test_an_attempt_overtaken_by_a_refused_retry_stops(reupload: bool) -> None:
    fake, store, up, wanted = await _two_part_upload()
    holds = Holds(fake, store)

    w1_write = holds.edit("W1", _group_0)
    a0_close = holds.edit("A0", _group_0)
    a1_close = holds.edit("A1", _group_0)
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_as, "W1", res, store.upload_part, "bkt", "mp", up, 2, body(payload(100, 9))
        )
        await w1_write.reached.wait()  # W1 checked the upload (unclaimed)
        nursery.start_soon(lambda: run_as("A0", res, complete, "bkt", "mp", up, wanted))
        await a0_close.reached.wait()  # A0 claimed (epoch 1)
        nursery.start_soon(lambda: run_as("A1", res, complete, "bkt", "mp", up, wanted))
        await a1_close.reached.wait()  # the client's retry A1 claimed (epoch 2)
        w1_write.release()
        await until_done(res, "W1")  # part 2 replaced (other bytes)
        a1_close.release()
        await until_done(res, "A1")  # InvalidPart: gives the claim back, reopens group 0
        if reupload:  # the client uploads part 2 again, with its first bytes
            await store.upload_part("bkt", "mp", up, 2, body(payload(100, 2)))
        a0_close.release()
        await until_done(res, "A0")
    assert isinstance(res["A1"], InvalidPart)
    assert isinstance(res["A0"], Conflict), res["A0"]
    await store.upload_part("bkt", "mp", up, 3, body(payload(10, 3)))  # the upload goes on
    p2 = await store.upload_part("bkt", "mp", up, 2, body(payload(PART, 2)))
    p3 = await store.upload_part("bkt", "mp", up, 3, body(payload(10, 3)))
    await complete("bkt", "mp", up, [wanted[0], (2, p2.etag), (3, p3.etag)])
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(PART, 2) + payload(10, 3)
    assert set(fake.chunks) == await referenced(store, ["bkt"])
    assert not [n for n in fake.live_registers() if n.startswith(b"s3/up/")]


# ---------------------------------------------------------------------------------------------
# A refused completion gives its claim back, then reopens its groups; a new completion that
# claimed in between read those groups (raising their floor): they must stay closed.


async def test_a_reopen_never_opens_a_group_a_newer_claim_read() -> None:
    fake, store, up, wanted = await _two_part_upload(existing=True)
    holds = Holds(fake, store)

    w_write = holds.edit("W", _group_0)  # a slow UploadPart of part 2
    a_reopen = holds.edit("A", _group_0, skip=1)  # A's first edit of group 0 closes it
    c_commit = holds.commit("C")
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_as, "W", res, store.upload_part, "bkt", "mp", up, 2, body(payload(100, 9))
        )
        await w_write.reached.wait()  # W read the upload unclaimed
        nursery.start_soon(
            lambda: run_as("A", res, complete, "bkt", "mp", up, wanted, if_none_match="*")
        )
        await a_reopen.reached.wait()  # A: closed at 1, refused, gave the claim back
        nursery.start_soon(lambda: run_as("C", res, complete, "bkt", "mp", up, wanted))
        await c_commit.reached.wait()  # C: claimed (epoch 2), read group 0 (closed at 1)
        a_reopen.release()
        await until_done(res, "A")
        w_write.release()
        await until_done(res, "W")  # group 0 is still closed: refused
        c_commit.release()
        await until_done(res, "C")
    assert isinstance(res["A"], PreconditionFailed)
    assert isinstance(res["W"], NoSuchUpload), res["W"]
    assert not isinstance(res["C"], Exception), res["C"]
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


# ---------------------------------------------------------------------------------------------
# ListParts of an upload with legacy parts pages right (no part skipped, the grouped version
# of a re-uploaded legacy part shown).


async def _all_pages(store: ObjectStore, up: str, max_parts: int) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    marker = 0
    for _ in range(50):
        page = await store.list_parts(
            "bkt", "mp", up, part_number_marker=marker, max_parts=max_parts
        )
        seen += [(p.part_number, p.etag) for p in page.parts]
        if not page.is_truncated:
            return seen
        assert page.next_part_number_marker is not None
        marker = page.next_part_number_marker
    raise AssertionError("no end")


async def test_list_parts_pages_over_legacy_and_grouped_parts() -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    up = await store.create_multipart_upload("bkt", "mp")
    await _legacy_parts(fake, {n: payload(10, n) for n in (150, 250, 350)})
    await store.upload_part("bkt", "mp", up, 1, body(payload(10, 1)))
    await store.upload_part("bkt", "mp", up, 101, body(payload(10, 101)))
    new = await store.upload_part("bkt", "mp", up, 150, body(payload(20, 150)))  # re-upload
    full = await _all_pages(store, up, 1000)
    assert [n for n, _ in full] == [1, 101, 150, 250, 350]
    assert (150, new.etag) in full
    assert await _all_pages(store, up, 3) == full
    assert await _all_pages(store, up, 1) == full


# ---------------------------------------------------------------------------------------------
# A retried completion that checks the parts while the first attempt completes and cleans up
# answers NoSuchUpload (the upload is completed), not InvalidPart.


async def test_a_retry_racing_the_first_attempts_clean_up_is_no_such_upload() -> None:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    up = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", up, 1, body(payload(PART, 1)))
    wanted = [(1, p1.etag)]
    reached, go = trio.Event(), trio.Event()
    real_read = fake.read

    async def read(name: bytes) -> Any:
        if WHO.get() == "B" and name.endswith(b"/p/0") and not reached.is_set():
            reached.set()
            await go.wait()
        return await real_read(name)

    fake.read = read  # type: ignore[method-assign]
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_as("B", res, complete, "bkt", "mp", up, wanted))
        await reached.wait()  # B read the upload register, not the group yet
        await run_as("A", res, complete, "bkt", "mp", up, wanted)  # completes and cleans up
        go.set()
        await until_done(res, "B")
    assert not isinstance(res["A"], Exception), res["A"]
    assert isinstance(res["B"], NoSuchUpload), res["B"]
    assert await fetch(store, "bkt", "mp") == payload(PART, 1)


# ---------------------------------------------------------------------------------------------
# The object a completion committed is deleted (or replaced) before that completion cleaned
# up: its data stays while the upload register is there, so a retry that commits the same
# parts again finds them; whoever cleans up last releases what no object holds.


@pytest.mark.parametrize("retry", [True, False])
async def test_an_object_dropped_before_its_completion_cleaned_up(retry: bool) -> None:
    fake, store, up, wanted = await _two_part_upload()
    holds = Holds(fake, store)
    a_finish = holds.edit("A", _is_upload_register, skip=1)
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_as("A", res, complete, "bkt", "mp", up, wanted))
        await a_finish.reached.wait()  # A committed, is about to retire (slow)
        await store.delete_object("bkt", "mp")  # someone deletes the new object
        if retry:
            await run_as("B", res, complete, "bkt", "mp", up, wanted)  # the client's retry
        a_finish.release()
        await until_done(res, "A")
    if retry:
        assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    else:
        assert not (await store.list_objects("bkt")).objects
    assert set(fake.chunks) == await referenced(store, ["bkt"])  # nothing lost or leaked
    assert not [n for n in fake.live_registers() if n.startswith(b"s3/up/")]


# ---------------------------------------------------------------------------------------------
# An object a completion committed is dropped (delete, DeleteObjects, PUT over it) before that
# completion cleaned up, and the client's retry commits the same parts again and cleans up
# before the drop's release runs: the release must keep what the retry's object holds.


async def _drop(store: ObjectStore, how: str, later: ReleaseLater | None) -> None:
    if how == "delete":
        await store.delete_object("bkt", "mp", release_later=later)
    elif how == "delete_objects":
        await store.delete_objects("bkt", ["mp"], release_later=later)
    else:
        await store.put_object("bkt", "mp", body(b"other"), release_later=later)


@pytest.mark.parametrize("how", ["delete", "delete_objects", "put"])
@pytest.mark.parametrize("deferred", [True, False])
async def test_a_drop_released_after_a_retry_recommitted(how: str, deferred: bool) -> None:
    fake, store, up, wanted = await _two_part_upload()
    holds = Holds(fake, store)
    a_finish = holds.edit("A", _is_upload_register, skip=1)  # A's clean-up, after its claim
    reached, go = trio.Event(), trio.Event()
    real_read = fake.read

    async def read(name: bytes) -> Any:
        if WHO.get() == "D" and _is_upload_register(name) and not reached.is_set():
            reached.set()  # D dropped the object, is about to check the upload
            await go.wait()
        return await real_read(name)

    fake.read = read  # type: ignore[method-assign]
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    later = ReleaseLater() if deferred else None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_as("A", res, complete, "bkt", "mp", up, wanted))
        await a_finish.reached.wait()  # A committed, has not cleaned up
        if deferred:
            await _drop(store, how, later)  # answered; its release has not run
        else:
            nursery.start_soon(lambda: run_as("D", res, _drop, store, how, None))
            await reached.wait()
        await run_as("B", res, complete, "bkt", "mp", up, wanted)  # commits again, cleans up
        assert not isinstance(res["B"], Exception), res["B"]
        go.set()
        a_finish.release()
        await until_done(res, "A")
        if deferred:
            assert later is not None
            await store.release(later)
        else:
            await until_done(res, "D")
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


# ---------------------------------------------------------------------------------------------
# An attempt that read its parts, then stalled while its retry completed, cleaned up, and the
# new object was deleted (its parts released): it must not commit an object of released data.


async def test_an_attempt_stalled_past_its_retry_and_a_delete_commits_nothing() -> None:
    fake, store, up, wanted = await _two_part_upload()
    holds = Holds(fake, store)
    a_record = holds.record("A")
    res: dict[str, Any] = {}
    complete = store.complete_multipart_upload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_as("A", res, complete, "bkt", "mp", up, wanted))
        await a_record.reached.wait()  # A claimed, closed the groups and read its parts
        await run_as("B", res, complete, "bkt", "mp", up, wanted)  # the retry: done
        assert not isinstance(res["B"], Exception), res["B"]
        await store.delete_object("bkt", "mp")  # releases the parts
        a_record.release()
        await until_done(res, "A")
    assert isinstance(res["A"], NoSuchUpload), res["A"]
    assert not (await store.list_objects("bkt")).objects
    assert set(fake.chunks) == await referenced(store, ["bkt"])  # no object names lost data
    assert not [n for n in fake.live_registers() if n.startswith(b"s3/up/")]
