"""HashLane: digests computed in a worker thread equal the digests of the whole stream."""

from __future__ import annotations

import hashlib
import threading
import time
import zlib

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.hash_lane import HASH_THREADS, HashLane


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)


class _Recorder:
    """Remembers which thread hashed each piece and in what order."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.threads: set[int] = set()

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self.pieces.append(bytes(data))
        self.threads.add(threading.get_ident())


class _Boom(Exception):
    pass


class _Failing:
    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        raise _Boom("hasher failed")


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=9000), max_size=40),
    batch=st.sampled_from([1, 1000, 4096, 1 << 20]),
    limit=st.sampled_from([1, 5000, 1 << 24]),
)
def test_digests_match_hashing_the_whole_stream(sizes: list[int], batch: int, limit: int) -> None:
    """Any split of the stream, any batch and limit: the same MD5, SHA-256 and CRC-32."""
    pieces = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    whole = b"".join(pieces)

    async def main() -> tuple[bytes, bytes, int]:
        md5, sha, crc = hashlib.md5(usedforsecurity=False), hashlib.sha256(), _Crc32()
        lane = HashLane([md5, sha, crc], batch_bytes=batch, limit_bytes=limit)
        for i, piece in enumerate(pieces):
            await lane.update(memoryview(piece) if i % 2 else piece)
            if i % 7 == 3:
                await trio.lowlevel.checkpoint()  # let workers finish and restart
        await lane.finish()
        return md5.digest(), sha.digest(), crc.value

    md5, sha, crc = trio.run(main)
    assert md5 == hashlib.md5(whole, usedforsecurity=False).digest()
    assert sha == hashlib.sha256(whole).digest()
    assert crc == zlib.crc32(whole)


def test_large_streams_are_hashed_in_order_off_the_event_loop() -> None:
    recorder = _Recorder()
    pieces = [bytes([i]) * 70_000 for i in range(40)]

    async def main() -> int:
        lane = HashLane([recorder], batch_bytes=200_000, limit_bytes=1_000_000)
        for piece in pieces:
            await lane.update(piece)
        await lane.finish()
        return threading.get_ident()

    loop_thread = trio.run(main)
    assert recorder.pieces == pieces
    assert recorder.threads - {loop_thread}, "no piece was hashed in a worker thread"


def test_a_small_stream_is_hashed_inline_at_finish() -> None:
    recorder = _Recorder()

    async def main() -> int:
        lane = HashLane([recorder])
        await lane.update(b"x" * 4096)
        assert recorder.pieces == []  # nothing hashed before finish: no thread for 4 KiB
        await lane.finish()
        return threading.get_ident()

    loop_thread = trio.run(main)
    assert recorder.pieces == [b"x" * 4096]
    assert recorder.threads == {loop_thread}


def test_back_pressure_bounds_what_waits_to_be_hashed() -> None:
    """``update`` returns only when fewer than ``limit_bytes`` wait (plus the new piece)."""
    seen: list[int] = []

    async def main() -> None:
        lane = HashLane([hashlib.sha256()], batch_bytes=10_000, limit_bytes=50_000)
        for _ in range(200):
            await lane.update(b"y" * 10_000)
            seen.append(lane._queued)
        await lane.finish()
        assert lane._queued == 0

    trio.run(main)
    assert max(seen) <= 60_000


def test_a_failing_hasher_surfaces_in_finish() -> None:
    async def main() -> None:
        lane = HashLane([_Failing()], batch_bytes=10, limit_bytes=100)
        await lane.update(b"z" * 50)  # starts the worker, which fails

        async def feed_then_finish() -> None:
            for _ in range(100):
                await lane.update(b"z" * 50)  # the worker's error stops further feeding
            await lane.finish()

        with pytest.raises(_Boom):
            await feed_then_finish()

    trio.run(main)


def test_a_failing_hasher_inline_surfaces_in_finish() -> None:
    async def main() -> None:
        lane = HashLane([_Failing()])
        await lane.update(b"z")
        with pytest.raises(_Boom):
            await lane.finish()

    trio.run(main)


def test_workers_of_all_lanes_together_are_bounded() -> None:
    """However many lanes are busy, at most HASH_THREADS workers hash at once."""
    lock = threading.Lock()
    active = peak = 0

    class Slow:
        def update(self, data: bytes | bytearray | memoryview, /) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.002)
            with lock:
                active -= 1

    async def feed(lane: HashLane) -> None:
        for _ in range(20):
            await lane.update(b"w" * 100)
        await lane.finish()

    async def main() -> None:
        lanes = [HashLane([Slow()], batch_bytes=100, limit_bytes=300) for _ in range(12)]
        async with trio.open_nursery() as nursery:
            for lane in lanes:
                nursery.start_soon(feed, lane)

    trio.run(main)
    assert 2 <= peak <= HASH_THREADS
