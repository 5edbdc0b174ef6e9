"""aws-chunked decoding: the S3 reference's chunked-upload example, trailers, botocore."""

from __future__ import annotations

import hashlib
import io

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum  # type: ignore[import-untyped]

from interfaces.s3.chunked import (
    NEED_DATA,
    ChunkedDecoder,
    Data,
    EndOfMessage,
    Trailers,
    decoder_for_request,
    stored_content_encoding,
)
from interfaces.s3.errors import S3Error
from interfaces.s3.etag import checksum_b64, checksum_from_headers, new_checksum
from interfaces.s3.headers import Headers
from interfaces.s3.sigv4 import (
    EMPTY_SHA256,
    AuthMethod,
    AuthResult,
    PayloadKind,
    SigningContext,
    derive_signing_key,
    sign,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIG1 = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
SIG2 = "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
SIG3 = "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
CTX = SigningContext(
    derive_signing_key(SECRET, "20130524", "us-east-1"),
    "20130524T000000Z",
    "20130524/us-east-1/s3/aws4_request",
    SEED,
)
DOC_BODY = (
    b"10000;chunk-signature=" + SIG1.encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=" + SIG2.encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=" + SIG3.encode() + b"\r\n\r\n"
)


def drain(decoder: ChunkedDecoder, body: bytes, step: int | None = None) -> list[object]:
    events: list[object] = []
    pieces = [body] if step is None else [body[i : i + step] for i in range(0, len(body), step)]
    for piece in [*pieces, b""]:
        decoder.receive_data(piece)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, EndOfMessage):
                return events
    return events


def data_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def test_doc_example_decodes() -> None:
    assert len(DOC_BODY) == 66824  # the example's Content-Length
    events = drain(ChunkedDecoder(signing=CTX, decoded_length=66560), DOC_BODY)
    assert data_of(events) == b"a" * 66560
    assert isinstance(events[-1], EndOfMessage)
    assert [len(e.data) for e in events if isinstance(e, Data)] == [65536, 1024]


def test_doc_example_byte_by_byte_small_steps() -> None:
    decoder = ChunkedDecoder(signing=CTX, decoded_length=66560)
    events = drain(decoder, DOC_BODY, step=997)
    assert data_of(events) == b"a" * 66560
    assert decoder.decoded_bytes == 66560


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (DOC_BODY.replace(b"a" * 1024, b"b" + b"a" * 1023), "SignatureDoesNotMatch"),
        (DOC_BODY.replace(SIG3.encode(), b"0" * 64), "SignatureDoesNotMatch"),
        (DOC_BODY[:-2], "IncompleteBody"),
        (DOC_BODY[:1000], "IncompleteBody"),
        (DOC_BODY + b"x", "IncompleteBody"),
        (DOC_BODY.replace(b";chunk-signature=", b";chunk-sig=", 1), "IncompleteBody"),
        (DOC_BODY.replace(b"10000;", b"zz;", 1), "IncompleteBody"),
    ],
)
def test_doc_example_corruptions(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as info:
        drain(ChunkedDecoder(signing=CTX), body)
    assert info.value.code == code


def test_no_data_released_before_chunk_verified() -> None:
    decoder = ChunkedDecoder(signing=CTX)
    decoder.receive_data(DOC_BODY[:60000])
    assert decoder.next_event() is NEED_DATA


def test_decoded_length_mismatch() -> None:
    with pytest.raises(S3Error, match="IncompleteBody"):
        drain(ChunkedDecoder(signing=CTX, decoded_length=66561), DOC_BODY)
    with pytest.raises(S3Error, match="IncompleteBody"):
        drain(ChunkedDecoder(signing=CTX, decoded_length=100), DOC_BODY)


def test_chunk_too_large() -> None:
    with pytest.raises(S3Error, match="EntityTooLarge"):
        drain(ChunkedDecoder(signing=CTX, max_chunk_size=1024), DOC_BODY)


def signed_body(chunks: list[bytes], trailers: list[tuple[str, str]] | None) -> bytes:
    out = bytearray()
    prev = CTX.seed_signature
    for data in [*chunks, b""]:
        prev = sign(
            CTX.signing_key,
            f"AWS4-HMAC-SHA256-PAYLOAD\n{CTX.amz_date}\n{CTX.scope}\n{prev}\n{EMPTY_SHA256}\n"
            f"{hashlib.sha256(data).hexdigest()}",
        )
        out += f"{len(data):x};chunk-signature={prev}\r\n".encode() + data
        if data:
            out += b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    canonical = "".join(f"{k}:{v}\n" for k, v in trailers)
    trailer_sig = sign(
        CTX.signing_key,
        f"AWS4-HMAC-SHA256-TRAILER\n{CTX.amz_date}\n{CTX.scope}\n{prev}\n"
        f"{hashlib.sha256(canonical.encode()).hexdigest()}",
    )
    for k, v in trailers:
        out += f"{k}:{v}\r\n".encode()
    out += f"x-amz-trailer-signature:{trailer_sig}\r\n\r\n".encode()
    return bytes(out)


def test_signed_trailer() -> None:
    data = b"hello world" * 1000
    crc = checksum_b64("CRC32C", data)
    body = signed_body([data[:8192], data[8192:]], [("x-amz-checksum-crc32c", crc)])
    decoder = ChunkedDecoder(
        signing=CTX,
        trailer=True,
        expected_trailers=["x-amz-checksum-crc32c"],
        decoded_length=len(data),
    )
    events = drain(decoder, body, step=100)
    assert data_of(events) == data
    trailers = next(e for e in events if isinstance(e, Trailers))
    assert trailers.get("X-Amz-Checksum-CRC32C") == crc
    claim = checksum_from_headers(trailers.headers)
    assert claim is not None
    hasher = new_checksum(claim.algorithm)
    hasher.update(data)
    claim.verify(hasher.digest())


def test_signed_trailer_tampered() -> None:
    body = signed_body([b"abc"], [("x-amz-checksum-crc32", "AAAAAA==")])
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        drain(ChunkedDecoder(signing=CTX, trailer=True), body.replace(b"AAAAAA==", b"AAAAAQ=="))
    unsigned = body.split(b"x-amz-trailer-signature")[0] + b"\r\n"
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        drain(ChunkedDecoder(signing=CTX, trailer=True), unsigned)


def test_unannounced_trailer_refused() -> None:
    body = signed_body([b"abc"], [("x-amz-checksum-crc32", "AAAAAA==")])
    with pytest.raises(S3Error, match="InvalidRequest"):
        drain(
            ChunkedDecoder(signing=CTX, trailer=True, expected_trailers=["x-amz-checksum-sha1"]),
            body,
        )


@pytest.mark.parametrize("size", [0, 1, 1000, 70000])
def test_botocore_unsigned_trailer(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    wrapper = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=16384,
    )
    body = wrapper.read()
    decoder = ChunkedDecoder(
        signing=None,
        trailer=True,
        expected_trailers=["x-amz-checksum-crc32"],
        decoded_length=size,
    )
    events = drain(decoder, body, step=333)
    assert data_of(events) == data
    trailers = next(e for e in events if isinstance(e, Trailers))
    assert trailers.get("x-amz-checksum-crc32") == checksum_b64("CRC32", data)


def test_unsigned_trailer_missing_final_blank_line_tolerated() -> None:
    body = b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n"
    events = drain(ChunkedDecoder(signing=None, trailer=True), body)
    assert data_of(events) == b"abc"
    assert isinstance(events[-1], EndOfMessage)


def test_unsigned_streams_without_buffering() -> None:
    decoder = ChunkedDecoder(signing=None, trailer=True)
    decoder.receive_data(b"10000\r\n" + b"x" * 10)
    event = decoder.next_event()
    assert event == Data(b"x" * 10)
    assert decoder.next_event() is NEED_DATA


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Data(b"x").data = b"y"  # type: ignore[misc]


def _auth(payload: PayloadKind, signing: SigningContext | None = CTX) -> AuthResult:
    return AuthResult("AK", AuthMethod.HEADER, payload, None, signing, "us-east-1")


def test_decoder_for_request() -> None:
    headers = Headers([("x-amz-decoded-content-length", "66560")])
    assert decoder_for_request(_auth(PayloadKind.SHA256, None), headers) is None
    decoder = decoder_for_request(_auth(PayloadKind.STREAMING_SIGNED), headers)
    assert decoder is not None
    assert data_of(drain(decoder, DOC_BODY)) == b"a" * 66560
    with pytest.raises(S3Error) as info:
        decoder_for_request(_auth(PayloadKind.STREAMING_SIGNED), Headers())
    assert (info.value.code, info.value.status) == ("MissingContentLength", 411)
    trailer = Headers(
        [("x-amz-decoded-content-length", "3"), ("x-amz-trailer", "x-amz-checksum-crc32")]
    )
    with pytest.raises(S3Error, match="InvalidRequest"):
        decoder_for_request(_auth(PayloadKind.STREAMING_SIGNED), trailer)
    decoder = decoder_for_request(_auth(PayloadKind.STREAMING_UNSIGNED_TRAILER, None), trailer)
    assert decoder is not None
    with pytest.raises(S3Error, match="IncompleteBody"):  # announced trailer missing
        drain(decoder, b"3\r\nabc\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (None, None),
        ("aws-chunked", None),
        ("aws-chunked,gzip", "gzip"),
        ("gzip, aws-chunked", "gzip"),
        ("br", "br"),
    ],
)
def test_stored_content_encoding(value: str | None, stored: str | None) -> None:
    assert stored_content_encoding(value) == stored


def test_errors_are_sticky() -> None:
    decoder = ChunkedDecoder(signing=None)
    decoder.receive_data(b"zz\r\n")
    with pytest.raises(S3Error, match="IncompleteBody"):
        decoder.next_event()
    with pytest.raises(S3Error, match="IncompleteBody"):
        decoder.next_event()
