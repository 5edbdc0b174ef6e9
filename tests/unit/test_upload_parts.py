"""Multipart parts in group registers: the rules of storage.upload_parts, alone and as the
object store uses them (late writes, completions and aborts racing part uploads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio

from storage.errors import Corrupt, InvalidPart, NoSuchUpload, PreconditionFailed
from storage.object_records import ContentHeaders, PartRecord, UploadRecord
from storage.objects import ObjectStore, ReleaseLater
from storage.upload_parts import (
    FINAL,
    PARTS_PER_GROUP,
    GroupClosed,
    PartGroup,
    UploadParts,
    group_of,
)
from tests.fake_blockstore import FakeBlockStore
from tests.unit.test_objects import (
    PART,
    body,
    fetch,
    hold_commits,
    make_store,
    payload,
    referenced,
)

UPLOAD = b"s3/up/idx/u1"


def part(seed: int) -> PartRecord:
    return PartRecord(bytes([seed]) * 16, seed, 1_700_000_000_000 + seed)


def part_registers(fake: FakeBlockStore) -> list[bytes]:
    return [n for n in fake.live_registers() if b"/p/" in n]


def upload_registers(fake: FakeBlockStore) -> list[bytes]:
    return [n for n in fake.live_registers() if n.startswith(b"s3/up/")]


@pytest.fixture
async def env() -> tuple[FakeBlockStore, ObjectStore]:
    fake, store = make_store()
    await store.create_bucket("bkt", owner="alice")
    return fake, store


class Gate:
    """Holds the next edit of a register matching ``match`` until ``release``."""

    def __init__(self, fake: FakeBlockStore, match: Callable[[bytes], bool]) -> None:
        self.reached, self.go_on = trio.Event(), trio.Event()
        real = fake.edit
        armed = [True]

        async def edit(name: bytes, fn: Any, **kwargs: Any) -> Any:
            if armed[0] and match(name):
                armed[0] = False
                self.reached.set()
                await self.go_on.wait()
            return await real(name, fn, **kwargs)

        fake.edit = edit  # type: ignore[method-assign,assignment]

    def release(self) -> None:
        self.go_on.set()


# -- the group registers alone ------------------------------------------------------------


def test_group_numbers() -> None:
    assert [group_of(n) for n in (1, 100, 101, 10_000)] == [0, 0, 1, 99]
    assert PARTS_PER_GROUP == 100


async def test_write_replace_close_reopen_withdraw_destroy() -> None:
    fake = FakeBlockStore(replay_edits=True)
    parts = UploadParts(fake, UPLOAD)
    assert await parts.write(1, part(1)) is None
    assert await parts.write(1, part(2)) == part(1)
    assert await parts.write(150, part(3)) is None
    assert sorted(fake.live_registers()) == [UPLOAD + b"/p/0", UPLOAD + b"/p/1"]
    assert await parts.close([0, 1, 7], 2) == {1: part(2), 150: part(3)}
    assert UPLOAD + b"/p/7" not in fake.live_registers()  # a closer creates nothing
    with pytest.raises(GroupClosed):
        await parts.write(2, part(4))
    with pytest.raises(GroupClosed) as closed:  # an earlier attempt, superseded
        await parts.close([0], 1)
    assert not closed.value.final
    assert await parts.close([0], 3) == {1: part(2)}  # a later one reads it as it is
    assert not await parts.withdraw(1, part(2))  # a closed group belongs to its closer
    await parts.reopen([0, 1], 3)  # not closed at 3: stays closed (attempt 2 may use it)
    with pytest.raises(GroupClosed):
        await parts.write(151, part(4))
    await parts.reopen([0, 1], 1)
    with pytest.raises(GroupClosed):
        await parts.write(151, part(4))
    await parts.reopen([0, 1], 2)  # group 0 was read at 3 since: stays closed
    assert await parts.write(151, part(4)) is None
    with pytest.raises(GroupClosed):
        await parts.write(2, part(4))
    for group, epoch in ((1, 2), (1, 1)):  # at or below the floor: overtaken
        with pytest.raises(GroupClosed):
            await parts.close([group], epoch)
    assert await parts.close([0], 2) == {1: part(2)}  # its own closure, read again
    assert await parts.read([0, 1]) == {1: part(2), 150: part(3), 151: part(4)}
    await parts.close([0, 1, 7], FINAL)
    with pytest.raises(GroupClosed) as closed:  # a completion cannot take over a clean-up
        await parts.close([0], 4)
    assert closed.value.final
    await parts.reopen([0, 1, 7], 4)  # FINAL is never reopened
    await parts.reopen([0, 1, 7], FINAL)
    with pytest.raises(GroupClosed):
        await parts.write(1, part(6))
    await parts.destroy([0, 1, 7])
    assert not fake.live_registers()
    assert await parts.write(2, part(4)) is None  # a late write recreates its group, open
    assert not await parts.withdraw(2, part(5))  # not the part it wrote
    assert await parts.withdraw(2, part(4))
    assert not fake.live_registers()


async def test_destroy_leaves_an_open_group_to_its_writer() -> None:
    fake = FakeBlockStore(replay_edits=True)
    parts = UploadParts(fake, UPLOAD)
    await parts.write(101, part(1))  # came after the clean-up closed (nothing, then)
    await parts.destroy([1])
    assert await parts.withdraw(101, part(1))
    assert not fake.live_registers()


async def test_withdrawing_the_last_part_deletes_the_group() -> None:
    fake = FakeBlockStore(replay_edits=True)
    parts = UploadParts(fake, UPLOAD)
    await parts.write(5, part(1))
    await parts.write(6, part(2))
    assert await parts.withdraw(5, part(1))
    assert await parts.read([0]) == {6: part(2)}
    assert await parts.withdraw(6, part(2))
    assert not fake.live_registers()


async def test_a_closer_leaves_absent_groups_absent() -> None:
    fake = FakeBlockStore(replay_edits=True)
    parts = UploadParts(fake, UPLOAD)
    assert await parts.close([3], FINAL) == {}
    assert not fake.live_registers()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 99, "p": {}}),
        msgpack.packb({"v": 1, "p": {"x": []}}),
        msgpack.packb({"v": 1, "p": {1: [b"x"]}}),
        msgpack.packb({"v": 1, "p": [], "c": 5}),
        msgpack.packb({"v": 1, "p": {}, "c": "x"}),
    ],
)
def test_a_malformed_group_is_corrupt(raw: bytes) -> None:
    with pytest.raises(Corrupt):
        PartGroup.unpack(raw)


def test_group_round_trip() -> None:
    group = PartGroup({1: part(1), 99: part(2)}, 7)
    assert PartGroup.unpack(group.pack()) == group
    assert PartGroup.unpack(PartGroup().pack()) == PartGroup()


# -- as the object store uses them --------------------------------------------------------


async def test_an_upload_of_many_parts_keeps_every_register_small(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "big")
    count = 2 * PARTS_PER_GROUP + 50
    etags = []
    for n in range(1, count + 1):
        etags.append(
            (n, (await store.upload_part("bkt", "big", upload, n, body(payload(PART, n)))).etag)
        )
    registers = fake.live_registers()
    (upload_name,) = [n for n in upload_registers(fake) if b"/p/" not in n]
    assert len(registers[upload_name]) < 300  # no part in it
    assert sorted(part_registers(fake)) == [upload_name + b"/p/" + g for g in (b"0", b"1", b"2")]
    assert UploadRecord.unpack(registers[upload_name]).groups == {0, 1, 2}
    pages, marker = [], 0
    while True:
        page = await store.list_parts("bkt", "big", upload, part_number_marker=marker, max_parts=90)
        pages.append([p.part_number for p in page.parts])
        if not page.is_truncated:
            break
        assert page.next_part_number_marker is not None
        marker = page.next_part_number_marker
    assert [n for page_numbers in pages for n in page_numbers] == list(range(1, count + 1))
    assert [len(p) for p in pages] == [90, 90, 70]
    info = await store.complete_multipart_upload("bkt", "big", upload, etags)
    assert info.parts_count == count
    assert await fetch(store, "bkt", "big") == b"".join(
        payload(PART, n) for n in range(1, count + 1)
    )
    assert not upload_registers(fake)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


async def test_a_part_written_after_an_abort_cleaned_up_withdraws_itself(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    """UploadPart checked the upload, then its write was delayed past the whole abort (which
    closed, released and deleted the groups): the write recreates its group, finds the upload
    gone, withdraws the part and releases it."""
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    gate = Gate(fake, lambda name: b"/p/" in name)
    outcome: list[BaseException] = []

    async def late_part() -> None:
        try:
            await store.upload_part("bkt", "mp", upload, 2, body(payload(PART, 2)))
        except NoSuchUpload as error:
            outcome.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_part)
        await gate.reached.wait()
        await store.abort_multipart_upload("bkt", "mp", upload)
        assert not upload_registers(fake)
        gate.release()
    assert outcome, "the late part was reported stored in an aborted upload"
    assert not fake.chunks
    assert not upload_registers(fake)


async def test_a_part_written_after_the_completion_closed_the_groups_is_refused(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    """A new version of part 2 arrives while a completion holds the groups closed: the write
    is refused, its data released, and the object has the parts the completion read."""
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(100, 2)))
    committing, go_on = hold_commits(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            store.complete_multipart_upload, "bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)]
        )
        await committing.wait()
        with pytest.raises(NoSuchUpload):
            await store.upload_part("bkt", "mp", upload, 2, body(payload(PART, 9)))
        go_on.set()
    assert await fetch(store, "bkt", "mp") == payload(PART, 1) + payload(100, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])
    assert not upload_registers(fake)


async def test_a_part_replaced_before_the_completion_is_released(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 3)))
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag)])
    assert await fetch(store, "bkt", "mp") == payload(PART, 3)
    assert set(fake.chunks) == await referenced(store, ["bkt"])


@pytest.mark.parametrize("refusal", ["precondition", "invalid part"])
async def test_a_refused_completion_reopens_the_upload(
    env: tuple[FakeBlockStore, ObjectStore], refusal: str
) -> None:
    """After a completion refused for sure, parts can be uploaded again, and the upload
    completes (or aborts) as if the refused attempt never happened."""
    fake, store = env
    await store.put_object("bkt", "mp", body(b"existing"))
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    if refusal == "precondition":
        with pytest.raises(PreconditionFailed):
            await store.complete_multipart_upload(
                "bkt", "mp", upload, [(1, p1.etag)], if_none_match="*"
            )
    else:
        with pytest.raises(InvalidPart):
            await store.complete_multipart_upload("bkt", "mp", upload, [(1, "0" * 32)])
    p2 = await store.upload_part("bkt", "mp", upload, 2, body(payload(50, 2)))
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 4)))
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag), (2, p2.etag)])
    assert await fetch(store, "bkt", "mp") == payload(PART, 4) + payload(50, 2)
    assert set(fake.chunks) == await referenced(store, ["bkt"])
    assert not upload_registers(fake)


async def test_deleting_a_bucket_collects_its_uploads_parts() -> None:
    fake, store = make_store()
    await store.create_bucket("gone", owner="alice")
    upload = await store.create_multipart_upload("gone", "k")
    for n in (1, 2, 150):
        await store.upload_part("gone", "k", upload, n, body(payload(PART, n)))
    await store.delete_bucket("gone")
    assert not fake.chunks
    assert not upload_registers(fake)


async def test_a_wrong_part_list_claims_nothing(env: tuple[FakeBlockStore, ObjectStore]) -> None:
    """The list is checked before the claim: a wrong one leaves the upload as it was, so a
    right one (or an abort) is never blocked by it."""
    fake, store = env
    upload = await store.create_multipart_upload("bkt", "mp")
    p1 = await store.upload_part("bkt", "mp", upload, 1, body(payload(PART, 1)))
    before = dict(fake.live_registers())
    with pytest.raises(InvalidPart):
        await store.complete_multipart_upload("bkt", "mp", upload, [(1, "0" * 32)])
    assert fake.live_registers() == before
    await store.complete_multipart_upload("bkt", "mp", upload, [(1, p1.etag)])
    assert await fetch(store, "bkt", "mp") == payload(PART, 1)


def test_the_claim_epoch_does_not_clobber_a_header() -> None:
    record = UploadRecord(
        "k", "u", 5, ContentHeaders(content_encoding="gzip"), claim_epoch=3, groups=frozenset({2})
    )
    assert UploadRecord.unpack(record.pack()) == record


async def test_abort_and_completion_leave_the_parts_to_release_later(
    env: tuple[FakeBlockStore, ObjectStore],
) -> None:
    """With a ReleaseLater, abort and completion answer once the upload register is gone;
    the parts (and groups) are collected by ``release``."""
    fake, store = env
    aborted = await store.create_multipart_upload("bkt", "a")
    for n in (1, 150):
        await store.upload_part("bkt", "a", aborted, n, body(payload(PART, n)))
    completed = await store.create_multipart_upload("bkt", "c")
    p1 = await store.upload_part("bkt", "c", completed, 1, body(payload(PART, 1)))
    await store.upload_part("bkt", "c", completed, 2, body(payload(PART, 2)))  # not listed
    later = ReleaseLater()
    await store.abort_multipart_upload("bkt", "a", aborted, release_later=later)
    await store.complete_multipart_upload(
        "bkt", "c", completed, [(1, p1.etag)], release_later=later
    )
    assert len(later) == 2
    assert len(part_registers(fake)) == 3  # nothing collected yet
    await store.release(later)
    assert not upload_registers(fake)
    assert set(fake.chunks) == await referenced(store, ["bkt"])
    assert await fetch(store, "bkt", "c") == payload(PART, 1)
