"""The parts of a multipart upload, kept in registers of :data:`PARTS_PER_GROUP` parts each.

Theory of operation
-------------------
An upload's register (:class:`~storage.object_records.UploadRecord`) says what the upload
is (key, headers, owner), which *groups* of parts it uses, and whether a completion claimed
it. Part ``n`` lives in the group register ``<upload register>/p/<(n - 1) // 100>``, so an
UploadPart rewrites at most 100 part records. (With every part in the upload register, a
10,000-part upload rewrote a register growing to ~4 MB 10,000 times.)

A group is *open*, or *closed at* a claim epoch. The upload register counts claims (its
``claim_epoch`` goes up by one with every completion claim, retries included). Whoever is
about to use or release the parts — a completion (at its claim's epoch), an abort, a bucket
deletion or the clean-up after a completion (at :data:`FINAL`, above every epoch) — first
closes every group the upload register names, and the closing edit hands it the group's
parts: from then on they cannot change under it.

The rules, and why no part is lost or leaked:

1. A part is written only into an open group, or creates its group register (open); a
   closed group refuses the write (:class:`GroupClosed`), and the writer releases its data.
2. Before its first part in a group, UploadPart names the group in the upload register, in
   an edit that requires the upload to exist and be unclaimed. So the group list a claim, an
   abort or a deletion takes from the upload register names every group that can hold a
   part.
3. A group remembers the highest epoch that closed (or reopened) it, its *floor*: a closer
   at or below the floor, or below the epoch the group is closed at, is refused and stops
   (an attempt superseded by a retry, or a completion overtaken by an abort) — also after
   the group was reopened. A group closed at an earlier epoch stays as it is: the later
   closer reads it and relies on it (only ``FINAL`` takes a group over). A closer creates
   no register: a group written only after a completion read it holds parts the completion
   did not use, and the clean-up after it releases them.
4. After writing, UploadPart reads the upload register again. If the upload is gone
   (aborted, completed, its bucket deleted), the write may have come after the clean-up
   read the groups: the writer *withdraws* its part — only from a group that is still open,
   and only if the part there is still its own — and releases it. A closed group belongs to
   a clean-up, which releases what it read; the clean-up deletes only the groups it closed
   (an open one is left to its writer's withdrawal).
5. The part a successful write replaced is released by the writer: whoever uses parts
   closes the group first, so it reads the new part, never the replaced one.
6. A completion refused for sure withdraws its claim from the upload register — only if the
   claim there is still its own epoch — and only then reopens the groups closed at exactly
   its epoch and not read by a later closer since (the floor is still its epoch). So a group
   another attempt relies on is never reopened under it: an earlier attempt's groups stay
   closed (a later attempt may be using them), a later attempt holds the claim (so this one
   cannot withdraw it), and a completion that claims between the withdrawal and the reopen
   raised the floor of every group it read. The price: when two attempts overlap and both
   are refused, the earlier one's groups stay closed, and part uploads into them are
   refused until a completion or an abort ends the upload.

Group operations on many groups run :data:`GROUP_CONCURRENCY` at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from .api import BlockStore
from .errors import Corrupt, NotFound
from .object_records import FORMAT_VERSION, PartRecord

#: Part numbers per group register (part ``n`` is in group ``(n - 1) // PARTS_PER_GROUP``).
PARTS_PER_GROUP = 100
#: Groups closed, read or destroyed at once.
GROUP_CONCURRENCY = 8
#: The epoch of clean-ups (abort, deletion, after a completion): above every claim's, and
#: nothing reopens it.
FINAL = 1 << 62


class GroupClosed(Exception):
    """The group is closed: the upload is being completed (``final`` false), or is gone."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class _NoChange(Exception):
    pass


def group_of(part_number: int) -> int:
    """The group holding part ``part_number`` (1..10000)."""
    return (part_number - 1) // PARTS_PER_GROUP


@dataclass(frozen=True)
class PartGroup:
    """One group register: its parts by number, the epoch it was closed at (if any), and
    the highest epoch that closed or reopened it (rule 3)."""

    parts: Mapping[int, PartRecord] = field(default_factory=dict)
    closed_at: int | None = None
    floor: int = 0

    def pack(self) -> bytes:
        """Encode for the group register."""
        obj: dict[str, object] = {
            "v": FORMAT_VERSION,
            "p": {n: p.pack() for n, p in self.parts.items()},
        }
        if self.closed_at is not None:
            obj["c"] = self.closed_at
        if self.floor:
            obj["f"] = self.floor
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def unpack(cls, data: bytes) -> PartGroup:
        """Decode a group register; raises ``Corrupt`` if malformed."""
        try:
            obj: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
                raise ValueError
            closed = obj.get("c")
            return cls(
                parts={int(n): PartRecord.unpack(p) for n, p in obj.get("p", {}).items()},
                closed_at=None if closed is None else int(closed),
                floor=int(obj.get("f", 0)),
            )
        except (
            ValueError,
            TypeError,
            AttributeError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
        ):
            raise Corrupt("malformed part group") from None


class UploadParts:
    """The group registers of one upload (see the module docstring for the rules)."""

    def __init__(self, store: BlockStore, upload_name: bytes) -> None:
        self._store = store
        self._upload_name = upload_name

    def group_name(self, group: int) -> bytes:
        """The register of ``group``."""
        return self._upload_name + b"/p/" + str(group).encode()

    async def write(self, number: int, part: PartRecord) -> PartRecord | None:
        """Store ``part`` as part ``number``; return the part it replaced.

        Raises:
            GroupClosed: the group is closed (nothing was written).
        """
        replaced: list[PartRecord | None] = [None]

        def put(current: bytes | None) -> bytes:
            group = PartGroup() if current is None else PartGroup.unpack(current)
            if group.closed_at is not None:
                raise GroupClosed(
                    f"part {number} cannot change: the upload is completed or being completed",
                    final=group.closed_at >= FINAL,
                )
            replaced[0] = group.parts.get(number)
            return PartGroup({**group.parts, number: part}, floor=group.floor).pack()

        await self._store.edit(self.group_name(group_of(number)), put)
        return replaced[0]

    async def withdraw(self, number: int, part: PartRecord) -> bool:
        """Remove part ``number`` if its group is open and it is still ``part`` (the register
        goes when it is left empty); return whether it was removed (then release it)."""

        def remove(current: bytes | None) -> bytes | None:
            if current is None:
                raise _NoChange
            group = PartGroup.unpack(current)
            if group.closed_at is not None or group.parts.get(number) != part:
                raise _NoChange
            rest = {n: p for n, p in group.parts.items() if n != number}
            return PartGroup(rest, floor=group.floor).pack() if rest else None

        try:
            await self._store.edit(self.group_name(group_of(number)), remove)
        except _NoChange:
            return False
        return True

    async def close(self, groups: Iterable[int], epoch: int) -> dict[int, PartRecord]:
        """Close ``groups`` at ``epoch`` (a group closed at an earlier one stays so, except
        for ``FINAL``); return the parts they hold (now frozen).

        Raises:
            GroupClosed: a group is closed at a later epoch (or ``FINAL``).
        """
        found: dict[int, PartRecord] = {}

        async def close_one(group: int) -> None:
            seen: dict[int, PartRecord] = {}

            def shut(current: bytes | None) -> bytes:
                seen.clear()
                if current is None:
                    raise _NoChange
                state = PartGroup.unpack(current)
                if epoch >= FINAL:  # a clean-up takes every group over
                    seen.update(state.parts)
                    if state.closed_at == FINAL:
                        raise _NoChange
                    return PartGroup(state.parts, FINAL, FINAL).pack()
                if state.closed_at != epoch and (
                    state.floor >= epoch
                    or (state.closed_at is not None and state.closed_at > epoch)
                ):
                    raise GroupClosed(
                        "a later completion or a clean-up holds the upload",
                        final=state.floor >= FINAL,
                    )
                seen.update(state.parts)
                if state.closed_at is None:
                    return PartGroup(state.parts, epoch, epoch).pack()
                if state.floor >= epoch:
                    raise _NoChange  # closed by this very epoch already
                # Closed at an earlier epoch, which may rely on it: it stays so.
                return PartGroup(state.parts, state.closed_at, epoch).pack()

            with contextlib.suppress(_NoChange):
                await self._store.edit(self.group_name(group), shut)
            found.update(seen)

        await self._each(groups, close_one)
        return found

    async def reopen(self, groups: Iterable[int], epoch: int) -> None:
        """Open again the ``groups`` closed at exactly ``epoch`` that no later closer read
        (never ``FINAL``)."""

        async def reopen_one(group: int) -> None:
            def open_(current: bytes | None) -> bytes:
                if current is None:
                    raise _NoChange
                state = PartGroup.unpack(current)
                if state.closed_at != epoch or state.floor != epoch or epoch >= FINAL:
                    raise _NoChange  # not its own, or a later closer relies on it
                return PartGroup(state.parts, floor=state.floor).pack()

            with contextlib.suppress(_NoChange):
                await self._store.edit(self.group_name(group), open_)

        await self._each(groups, reopen_one)

    async def read(self, groups: Iterable[int]) -> dict[int, PartRecord]:
        """The parts ``groups`` hold now (they may change right after)."""
        found: dict[int, PartRecord] = {}

        async def read_one(group: int) -> None:
            try:
                versioned = await self._store.read(self.group_name(group))
            except NotFound:
                return
            found.update(PartGroup.unpack(versioned.value).parts)

        await self._each(groups, read_one)
        return found

    async def destroy(self, groups: Iterable[int]) -> None:
        """Delete the ``groups`` registers a clean-up closed (at ``FINAL``) and released; an
        open one is left to the writer who will withdraw its part (rule 4)."""

        async def destroy_one(group: int) -> None:
            def gone(current: bytes | None) -> None:
                if current is None or PartGroup.unpack(current).closed_at != FINAL:
                    raise _NoChange
                return None

            with contextlib.suppress(_NoChange):
                await self._store.edit(self.group_name(group), gone)

        await self._each(groups, destroy_one)

    @staticmethod
    async def _each(groups: Iterable[int], op: Callable[[int], Awaitable[None]]) -> None:
        """Run ``op`` on every group, a few at a time; raise the first error (unwrapped, so
        callers see the store's typed errors) once all are done."""
        limiter = trio.CapacityLimiter(GROUP_CONCURRENCY)
        errors: list[Exception] = []

        async def limited(group: int) -> None:
            async with limiter:
                try:
                    await op(group)
                except Exception as error:
                    errors.append(error)

        async with trio.open_nursery() as nursery:
            for group in sorted(set(groups)):
                nursery.start_soon(limited, group)
        if errors:
            raise errors[0]
