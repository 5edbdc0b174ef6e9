"""Helpers for PostObject tests: build and sign forms, post them to an in-memory S3App."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from interfaces.s3.app import S3App
from interfaces.s3.credentials import CredentialStore
from interfaces.s3.sigv4 import derive_signing_key, sign
from storage.errors import NotFound
from storage.objects import ObjectStore
from tests.fake_blockstore import FakeBlockStore

BOUNDARY = "xYzZY-boundary"
REGION = "us-east-1"
BUCKET = "forms"


def encode_form(
    fields: Sequence[tuple[str, str | bytes]],
    file: bytes | None,
    *,
    boundary: str = BOUNDARY,
    filename: str = "f.bin",
    file_type: str | None = None,
    after: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A ``multipart/form-data`` body: ``fields``, then the file (if any), then ``after``."""
    out = bytearray()

    def part(disposition: str, value: bytes, content_type: str | None = None) -> None:
        out.extend(f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode())
        if content_type is not None:
            out.extend(f"Content-Type: {content_type}\r\n".encode())
        out.extend(b"\r\n" + value + b"\r\n")

    for name, value in fields:
        part(f'name="{name}"', value.encode() if isinstance(value, str) else value)
    if file is not None:
        part(f'name="file"; filename="{filename}"', file, file_type)
    for name, value in after:
        part(f'name="{name}"', value.encode())
    out.extend(f"--{boundary}--\r\n".encode())
    return bytes(out)


def policy_text(conditions: list[Any], *, expires_in: float = 3600.0) -> str:
    """A base64 policy document expiring ``expires_in`` seconds from now."""
    expiration = (datetime.now(UTC) + timedelta(seconds=expires_in)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    document = {"expiration": expiration, "conditions": conditions}
    return base64.b64encode(json.dumps(document).encode()).decode()


def signed_fields(
    access_key: str,
    secret: str,
    conditions: list[Any],
    *,
    fields: Sequence[tuple[str, str]] = (),
    expires_in: float = 3600.0,
    region: str = REGION,
) -> list[tuple[str, str]]:
    """``fields`` plus a SigV4-signed policy made of ``conditions`` and the credential fields
    (which the policy names, as the SDKs do)."""
    now = datetime.now(UTC)
    date = now.strftime("%Y%m%d")
    credential = f"{access_key}/{date}/{region}/s3/aws4_request"
    auth = [
        ("x-amz-algorithm", "AWS4-HMAC-SHA256"),
        ("x-amz-credential", credential),
        ("x-amz-date", now.strftime("%Y%m%dT%H%M%SZ")),
    ]
    policy = policy_text([*conditions, *({k: v} for k, v in auth)], expires_in=expires_in)
    signature = sign(derive_signing_key(secret, date, region), policy)
    return [*fields, *auth, ("policy", policy), ("x-amz-signature", signature)]


@dataclass
class FormServer:
    """An S3App on an in-memory block store with one key and one bucket."""

    app: S3App
    objects: ObjectStore
    access_key: str
    secret: str

    async def post(
        self, body: bytes, chunks: Sequence[int] = (), *, content_type: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` to the bucket, cut into ASGI messages at the offsets ``chunks``."""
        cuts = sorted({c for c in chunks if 0 < c < len(body)})
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
            for i, p in enumerate(pieces)
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(dict(message))

        ctype = content_type or f"multipart/form-data; boundary={BOUNDARY}"
        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/{BUCKET}",
            "raw_path": f"/{BUCKET}".encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    async def read(self, key: str) -> bytes | None:
        """The stored object ``key``, or ``None``."""
        try:
            reader = await self.objects.open_object(BUCKET, key)
        except NotFound:
            return None
        out = bytearray()

        async def sink(data: bytes) -> None:
            out.extend(data)

        await reader.send_to(sink)
        return bytes(out)


async def form_server() -> FormServer:
    """A fresh :class:`FormServer`."""
    store = FakeBlockStore()
    objects = ObjectStore(store)
    credentials = CredentialStore(store)
    access_key, secret = await credentials.create_key("forms")
    await objects.create_bucket(BUCKET, owner=access_key)
    return FormServer(S3App(objects, credentials, region=REGION), objects, access_key, secret)
