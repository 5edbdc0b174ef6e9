"""Range header evaluation (RFC 9110 §14 as S3 applies it)."""

from __future__ import annotations

import pytest

from interfaces.s3.errors import S3Error
from interfaces.s3.ranges import ByteRange, parse_copy_source_range, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=0-0", 1, (0, 0)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=99-99", 100, (99, 99)),
        ("bytes = 1 - 2 ", 100, (1, 2)),
        (" bytes=5-6", 100, (5, 6)),
    ],
)
def test_satisfiable(header: str, size: int, expected: tuple[int, int]) -> None:
    r = parse_range(header, size)
    assert r is not None
    assert (r.start, r.end) == expected
    assert r.length == expected[1] - expected[0] + 1
    assert r.content_range == f"bytes {expected[0]}-{expected[1]}/{size}"


@pytest.mark.parametrize(
    ("header", "size"),
    [
        (None, 10),
        ("bytes=0-1,3-4", 10),  # several ranges: S3 serves the whole object
        ("bytes=5-2", 10),  # last < first: invalid spec, ignored
        ("items=0-1", 10),
        ("bytes=", 10),
        ("bytes=-", 10),
        ("bytes=a-b", 10),
        ("bytes 0-1", 10),
        ("bytes=-5", 0),  # suffix of an empty object
        ("bytes=" + "9" * 40 + "-", 10),
    ],
)
def test_ignored(header: str | None, size: int) -> None:
    assert parse_range(header, size) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(S3Error) as info:
        parse_range(header, size)
    assert (info.value.code, info.value.status) == ("InvalidRange", 416)
    assert info.value.extra["ActualObjectSize"] == str(size)


def test_copy_source_range() -> None:
    assert parse_copy_source_range("bytes=0-9", 10) == ByteRange(0, 9, 10)
    with pytest.raises(S3Error, match="InvalidRange"):
        parse_copy_source_range("bytes=0-10", 10)
    for bad in ("bytes=0-", "bytes=-5", "0-9", "bytes=1-2,3-4"):
        with pytest.raises(S3Error, match="InvalidArgument"):
            parse_copy_source_range(bad, 10)
