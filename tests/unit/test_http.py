"""serve_app: hypercorn's trio worker in our loop, reading large bodies in large pieces."""

from __future__ import annotations

import hashlib

import trio
from hypercorn.trio import tcp_server

from dht.ids import Address
from interfaces.http import RECEIVE_BYTES, Receive, Scope, Send, serve_app


async def _digest_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer the SHA-256 of the request body and the largest piece it arrived in."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].removeprefix("lifespan.")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    digest = hashlib.sha256()
    largest = 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        digest.update(body)
        largest = max(largest, len(body))
        if not message.get("more_body", False):
            break
    answer = f"{digest.hexdigest()} {largest}".encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def test_a_large_body_arrives_whole_in_large_reads() -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB
    async with trio.open_nursery() as nursery:
        bound: Address = await nursery.start(serve_app, _digest_app, Address("127.0.0.1", 0))
        assert tcp_server.MAX_RECV == RECEIVE_BYTES
        stream = await trio.open_tcp_stream(bound.host, bound.port)
        head = (
            f"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        await stream.send_all(head + body)
        reply = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                reply += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 "
    digest, _largest = rest.partition(b"\r\n\r\n")[2].split()
    assert digest.decode() == hashlib.sha256(body).hexdigest()
