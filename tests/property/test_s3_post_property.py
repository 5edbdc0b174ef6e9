"""PostObject forms: any content, any split, round-trips bit-exact; garbage is a 4xx only."""

from __future__ import annotations

import string

import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from interfaces.s3.errors import S3Error
from interfaces.s3.forms import NEED_DATA, FormEnd, FormParser, PartData, PartEnd, PartStart
from tests.s3_forms import BOUNDARY, encode_form, form_server, signed_fields

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BOUNDARIES = st.text(
    alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=70
)
SPLITS = st.lists(st.integers(min_value=0, max_value=5000), max_size=12)


def tricky(boundary: str) -> st.SearchStrategy[bytes]:
    """Bytes made of pieces that look like delimiters, CRLFs and dashes, and random bytes."""
    delimiter = b"\r\n--" + boundary.encode()
    prefixes = [delimiter[:k] for k in range(1, len(delimiter))]
    piece = st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"--", b"\r\n\r\n", *prefixes]),
        st.sampled_from(prefixes).map(lambda p: p + b"x"),
    )
    return st.lists(piece, max_size=25).map(b"".join).filter(lambda b: delimiter not in b)


def _events(body: bytes, boundary: bytes, cuts: list[int]) -> list[object]:
    parser = FormParser(boundary)
    edges = sorted({c for c in cuts if 0 < c < len(body)})
    pieces = [body[a:b] for a, b in zip([0, *edges], [*edges, len(body)], strict=True)]
    events: list[object] = []
    for piece in [*pieces, b""]:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, FormEnd):
                return events
    raise AssertionError("the input ended without FormEnd or an error")


def _parts(events: list[object]) -> list[tuple[str, str | None, bytes]]:
    parts: list[tuple[str, str | None, bytes]] = []
    current: PartStart | None = None
    data = bytearray()
    for event in events:
        if isinstance(event, PartStart):
            assert current is None
            current, data = event, bytearray()
        elif isinstance(event, PartData):
            assert current is not None
            assert event.data
            data += event.data
        elif isinstance(event, PartEnd):
            assert current is not None
            parts.append((current.name, current.filename, bytes(data)))
            current = None
    assert current is None
    return parts


@FAST
@given(st.data(), BOUNDARIES, SPLITS)
def test_any_form_round_trips_under_any_split(
    data: st.DataObject, boundary: str, cuts: list[int]
) -> None:
    content = tricky(boundary)
    names = st.text(alphabet=string.ascii_letters + "-_$", min_size=1, max_size=10)
    fields = data.draw(st.lists(st.tuples(names, content), max_size=4))
    file = data.draw(content)
    body = encode_form(fields, file, boundary=boundary, after=[("tail", "ignored")])
    parts = _parts(_events(body, boundary.encode(), cuts))
    expected = [(n, None, v) for n, v in fields] + [
        ("file", "f.bin", file),
        ("tail", None, b"ignored"),
    ]
    assert parts == expected


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.binary(max_size=3), st.integers(0, 400), st.integers(0, 5), st.binary(max_size=4)
        ).map(lambda t: _mutate(*t)),
    ),
    SPLITS,
)
def test_garbage_is_malformed_or_parses(body: bytes, cuts: list[int]) -> None:
    code = None
    try:
        events = _events(body, BOUNDARY.encode(), cuts)
    except S3Error as err:
        code = err.code
    else:
        _parts(events)  # well nested, whatever the input
    assert code in (None, "MalformedPOSTRequest")


_VALID = encode_form([("key", "k"), ("acl", "private")], b"\r\n--xYz file \r\n", after=[("a", "b")])


def _mutate(prefix: bytes, at: int, drop: int, insert: bytes) -> bytes:
    body = prefix + _VALID
    at = min(at, len(body))
    return body[:at] + insert + body[at + drop :]


# -- through the S3 app: ASGI messages split anywhere ---------------------------------------


@SLOW
@given(tricky(BOUNDARY), SPLITS)
def test_uploads_are_bit_exact_under_any_asgi_split(file: bytes, cuts: list[int]) -> None:
    async def main() -> None:
        server = await form_server()
        fields = signed_fields(
            server.access_key, server.secret, [{"key": "k"}], fields=[("key", "k")]
        )
        body = encode_form(fields, file, after=[("after", "the file")])
        status, _, answer = await server.post(body, cuts)
        assert (status, answer) == (204, b"")
        assert await server.read("k") == file

    trio.run(main)


@SLOW
@given(st.integers(0, 2000), st.integers(0, 8), st.binary(max_size=6), SPLITS)
def test_damaged_forms_are_refused_or_stored_whole(
    at: int, drop: int, insert: bytes, cuts: list[int]
) -> None:
    assume(drop or insert)

    async def main() -> None:
        server = await form_server()
        fields = signed_fields(
            server.access_key, server.secret, [{"key": "k"}], fields=[("key", "k")]
        )
        body = encode_form(fields, b"0123456789" * 20)
        where = min(at, len(body))
        damaged = body[:where] + insert + body[where + drop :]
        status, _, _ = await server.post(damaged, cuts)
        stored = await server.read("k")
        assert status in (204, 400, 403, 412), status
        assert (stored is not None) == (status == 204)

    trio.run(main)
