"""S3 access keys, stored in the cluster as one register.

Keys live in the register ``s3/credentials`` on the :class:`~storage.api.BlockStore`, so
every node serving S3 sees the same keys, and — since the key-value client encrypts register
payloads before they leave it — secrets are encrypted at rest. The register holds a msgpack
map ``{"v": 1, "keys": {ACCESS_KEY: {"secret", "name", "created_ms"}}}``; every change is one
consensus edit (create and delete are "insert/remove this entry" functions of the old value).

Lookups, on the path of every signed request, are served from a copy of the whole map cached
for ``ttl`` seconds (one register read per TTL per process, whatever the keys asked for, so a
flood of unknown keys costs nothing). A key deleted through another process stays usable
here for at most ``ttl`` seconds. When the cluster cannot answer (``Unavailable``) and a stale
copy exists, the stale copy is used rather than failing every request.

Formats follow AWS: access keys are 20 characters, ``BK`` then 18 upper-case letters or
digits; secrets are 40 characters of ``[A-Za-z0-9+/]``.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from storage.api import BlockStore
from storage.errors import Corrupt, InvalidArgument, NotFound, Unavailable

logger = logging.getLogger(__name__)

#: The register holding every key.
REGISTER = b"s3/credentials"
FORMAT_VERSION = 1
ACCESS_KEY_PREFIX = "BK"
ACCESS_KEY_LENGTH = 20
SECRET_LENGTH = 40
_ACCESS_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
_ACCESS_RE = re.compile(r"[A-Z0-9]{16,128}")
_SECRET_RE = re.compile(r"[A-Za-z0-9+/=._~-]{16,128}")
MAX_NAME_LENGTH = 256


@dataclass(frozen=True)
class KeyInfo:
    """One access key as listed (never with its secret)."""

    access_key: str
    name: str
    created: float


def generate_access_key() -> str:
    """A fresh access key id: ``BK`` and 18 random upper-case letters or digits."""
    body = "".join(
        secrets.choice(_ACCESS_ALPHABET) for _ in range(ACCESS_KEY_LENGTH - len(ACCESS_KEY_PREFIX))
    )
    return ACCESS_KEY_PREFIX + body


def generate_secret() -> str:
    """A fresh 40-character secret access key."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def _unpack(data: bytes | None) -> dict[str, dict[str, Any]]:
    if data is None:
        return {}
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise Corrupt("undecodable credential register") from None
    if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
        raise Corrupt("malformed credential register")
    keys = obj.get("keys")
    if not isinstance(keys, dict):
        raise Corrupt("malformed credential register")
    return keys


def _pack(keys: dict[str, dict[str, Any]]) -> bytes:
    return msgpack.packb({"v": FORMAT_VERSION, "keys": keys}, use_bin_type=True)  # type: ignore[no-any-return]


class _Exists(Exception):
    pass


class CredentialStore:
    """Access keys and secrets kept in the cluster (see the module docstring).

    Args:
        store: the block store holding the credential register.
        ttl: how long a lookup may answer from the cached copy of the keys, in seconds.
        clock: a monotonic clock in seconds (for the cache).
        wall_clock: seconds since the epoch (for ``created``).

    Every method may raise ``storage.errors.Unavailable`` (the cluster did not answer) and
    ``Corrupt`` (the register does not decode).
    """

    def __init__(
        self,
        store: BlockStore,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: dict[str, dict[str, Any]] | None = None
        self._cache_expiry = 0.0
        self._lock = trio.Lock()

    async def _read(self) -> dict[str, dict[str, Any]]:
        try:
            versioned = await self._store.read(REGISTER)
        except NotFound:
            return {}
        return _unpack(versioned.value)

    def _remember(self, keys: dict[str, dict[str, Any]]) -> None:
        self._cache = keys
        self._cache_expiry = self._clock() + self._ttl

    def invalidate(self) -> None:
        """Forget the cached keys: the next lookup reads the register."""
        self._cache = None
        self._cache_expiry = 0.0

    async def _keys(self) -> dict[str, dict[str, Any]]:
        if self._cache is not None and self._clock() < self._cache_expiry:
            return self._cache
        async with self._lock:  # one refresh at a time; the others reuse its result
            if self._cache is not None and self._clock() < self._cache_expiry:
                return self._cache
            try:
                keys = await self._read()
            except Unavailable as exc:
                if self._cache is None:
                    raise
                logger.warning("credential register unavailable, using the cached keys: %s", exc)
                # Another ``ttl`` on the old copy before the next attempt: during an outage a
                # read costs the whole RPC timeout, and every request would otherwise pay it
                # (twice: the key's secret, then its owner's name), one after another.
                self._remember(self._cache)
                return self._cache
            self._remember(keys)
            return keys

    async def add_key(self, access_key: str, secret: str, name: str | None = None) -> None:
        """Store a given key pair (imported from a configuration, or fixed for tests).

        Raises:
            InvalidArgument: malformed access key, secret or name, or the key exists.
        """
        if not _ACCESS_RE.fullmatch(access_key):
            raise InvalidArgument("access keys are 16-128 upper-case letters or digits")
        if not _SECRET_RE.fullmatch(secret):
            raise InvalidArgument("secrets are 16-128 characters of [A-Za-z0-9+/=._~-]")
        label = name if name is not None else access_key
        if len(label) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"key names are at most {MAX_NAME_LENGTH} characters")
        entry = {"secret": secret, "name": label, "created_ms": int(self._wall_clock() * 1000)}
        box: dict[str, dict[str, dict[str, Any]]] = {}

        def insert(current: bytes | None) -> bytes:
            keys = _unpack(current)
            if access_key in keys:
                raise _Exists
            keys[access_key] = entry
            box["keys"] = keys
            return _pack(keys)

        try:
            await self._store.edit(REGISTER, insert)
        except _Exists:
            raise InvalidArgument(f"access key {access_key} exists already") from None
        self._remember(box["keys"])
        logger.info("added S3 access key %s (%s)", access_key, label)

    async def create_key(self, name: str | None = None) -> tuple[str, str]:
        """Create a new key pair and return ``(access_key, secret)``.

        Raises:
            InvalidArgument: the name is too long.
        """
        while True:
            access_key, secret = generate_access_key(), generate_secret()
            try:
                await self.add_key(access_key, secret, name)
            except InvalidArgument as exc:
                if "exists already" in str(exc):  # 36**18 keys: never in practice
                    continue
                raise
            return access_key, secret

    async def list_keys(self) -> list[KeyInfo]:
        """Every key, sorted by access key id (secrets are not included)."""
        keys = await self._read()
        self._remember(keys)
        return [
            KeyInfo(ak, str(entry.get("name", ak)), int(entry.get("created_ms", 0)) / 1000)
            for ak, entry in sorted(keys.items())
        ]

    async def delete_key(self, access_key: str) -> bool:
        """Delete a key; return whether it existed."""
        box: dict[str, Any] = {}

        def remove(current: bytes | None) -> bytes | None:
            keys = _unpack(current)
            box["existed"] = keys.pop(access_key, None) is not None
            box["keys"] = keys
            return _pack(keys)

        await self._store.edit(REGISTER, remove)
        self._remember(box["keys"])
        if box["existed"]:
            logger.info("deleted S3 access key %s", access_key)
        return bool(box["existed"])

    async def lookup(self, access_key: str) -> str | None:
        """The secret of ``access_key``, or ``None`` if there is no such key (cached, TTL)."""
        entry = (await self._keys()).get(access_key)
        if entry is None:
            return None
        secret = entry.get("secret")
        return secret if isinstance(secret, str) else None

    async def name_of(self, access_key: str) -> str | None:
        """The display name of ``access_key`` (cached like :meth:`lookup`)."""
        entry = (await self._keys()).get(access_key)
        return None if entry is None else str(entry.get("name", access_key))
