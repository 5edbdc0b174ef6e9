"""Wire formats of the object logic: bucket configs, object records, multipart upload state.

Every record is a msgpack map with short string keys and a format version ``"v"``, so a newer
reader can tell the layouts apart; unknown keys are ignored (forward compatible), and a
malformed record raises :class:`storage.errors.Corrupt`, never a bare exception.

* :class:`BucketConfig` lives in the bucket registry register (one map, name -> config).
* :class:`ObjectRecord` is the value of an object's entry in the bucket index. It keeps the
  chunk list inline up to a limit; beyond it the list is stored as one immutable *chunk-list
  chunk* and the record holds only its reference, so index shards stay small.
* :class:`UploadRecord` is the register of one multipart upload; its parts
  (:class:`PartRecord`) are in group registers (:mod:`storage.upload_parts`). A part keeps
  its chunk list inline up to :data:`PART_INLINE_CHUNKS`, beyond that in a chunk-list chunk
  of its own.

Chunk references carry their own plaintext length (``length``): ranged reads compute chunk
offsets from it, independently of what the block store reports as ``ChunkRef.size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from .api import ChunkRef
from .errors import Corrupt, InvalidArgument
from .ids import BlockAddress
from .lifecycle import LifecycleRule, pack_rules, unpack_rules
from .policy import Redundancy

FORMAT_VERSION = 1

#: A part with more chunks than this stores its chunk list in a chunk-list chunk.
PART_INLINE_CHUNKS = 4

#: Canned ACLs S3 accepts (``x-amz-acl``).
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "authenticated-read",
        "aws-exec-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "log-delivery-write",
    }
)


def check_acl(acl: str) -> str:
    """Return ``acl`` if it is a canned ACL S3 knows, else raise ``InvalidArgument``."""
    if acl not in CANNED_ACLS:
        raise InvalidArgument(f"unknown canned ACL {acl!r}")
    return acl


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise Corrupt(f"undecodable {what}") from None
    if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
        raise Corrupt(f"malformed {what}")
    return obj


@dataclass(frozen=True)
class StoredChunk:
    """One chunk of an object or part: how to read it and how many plaintext bytes it holds."""

    ref: ChunkRef
    length: int

    def pack(self) -> list[object]:
        """The compact msgpack form."""
        r = self.ref
        return [bytes(r.address), r.key, r.size, str(r.redundancy), self.length]

    @classmethod
    def unpack(cls, raw: Any) -> StoredChunk:
        """Inverse of :meth:`pack`; raises ``Corrupt`` on a malformed entry."""
        try:
            address, key, size, policy, length = raw
            ref = ChunkRef(
                BlockAddress(bytes(address)), bytes(key), int(size), Redundancy.parse(str(policy))
            )
            return cls(ref, int(length))
        except (TypeError, ValueError, InvalidArgument):
            raise Corrupt("malformed chunk reference") from None


def pack_chunk_list(chunks: Sequence[StoredChunk]) -> bytes:
    """Encode a chunk list as the payload of a chunk-list chunk."""
    return _pack({"v": FORMAT_VERSION, "c": [c.pack() for c in chunks]})


def unpack_chunk_list(data: bytes) -> list[StoredChunk]:
    """Decode a chunk-list chunk; raises ``Corrupt`` if malformed."""
    obj = _unpack(data, "chunk list")
    return [StoredChunk.unpack(c) for c in obj.get("c", [])]


@dataclass(frozen=True)
class ContentHeaders:
    """The standard HTTP headers S3 stores with an object, plus user metadata, ACL and tags
    (the object's tag set, ``key -> value``; records written before tags existed have none)."""

    content_type: str | None = None
    content_encoding: str | None = None
    content_disposition: str | None = None
    content_language: str | None = None
    cache_control: str | None = None
    expires: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    acl: str = "private"
    tags: Mapping[str, str] = field(default_factory=dict)

    def pack(self) -> dict[str, object]:
        """The msgpack map fragment (absent headers are omitted)."""
        out: dict[str, object] = {"acl": self.acl}
        for short, value in (
            ("ct", self.content_type),
            ("ce", self.content_encoding),
            ("cd", self.content_disposition),
            ("cl", self.content_language),
            ("cc", self.cache_control),
            ("ex", self.expires),
        ):
            if value is not None:
                out[short] = value
        if self.metadata:
            out["md"] = dict(self.metadata)
        if self.tags:
            out["tg"] = dict(self.tags)
        return out

    @classmethod
    def unpack(cls, obj: Mapping[str, Any]) -> ContentHeaders:
        """Inverse of :meth:`pack`."""
        return cls(
            content_type=obj.get("ct"),
            content_encoding=obj.get("ce"),
            content_disposition=obj.get("cd"),
            content_language=obj.get("cl"),
            cache_control=obj.get("cc"),
            expires=obj.get("ex"),
            metadata=dict(obj.get("md") or {}),
            acl=str(obj.get("acl", "private")),
            tags=_unpack_tags(obj.get("tg")) or {},
        )


def _unpack_tags(raw: Any) -> dict[str, str] | None:
    """A stored tag set (``None``: none); raises ``ValueError`` unless a map of strings."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError("malformed tag set")
    return dict(raw)


def _run_lengths(values: Sequence[int]) -> list[list[int]]:
    """``[[value, repeats], ...]``: part sizes are mostly one size repeated."""
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def _from_run_lengths(raw: Any) -> tuple[int, ...]:
    """Inverse of :func:`_run_lengths`; raises ``ValueError`` (or ``TypeError``) if malformed."""
    values: list[int] = []
    for value, repeats in raw:
        if int(value) < 0 or not 1 <= int(repeats) <= 10_000 - len(values):
            raise ValueError("malformed part sizes")
        values.extend([int(value)] * int(repeats))
    return tuple(values)


def _checksum(raw: Any) -> tuple[str, bytes]:
    """Decode a stored ``[algorithm, digest]``; raises ``ValueError`` if malformed."""
    algorithm, digest = raw
    if not isinstance(algorithm, str) or not isinstance(digest, bytes) or len(digest) > 64:
        raise ValueError("malformed checksum")
    return algorithm, digest


@dataclass(frozen=True)
class ObjectRecord:
    """An object's index entry: size, ETag, headers and where its bytes are.

    ``checksum`` is the whole object's ``(algorithm, digest)`` (``"CRC32"``...) the client
    sent with it and the server verified, if any.

    Exactly one of ``chunks`` (inline) and ``chunk_list`` (a chunk-list chunk holding
    ``chunk_count`` references) describes the data; an empty object has neither.
    """

    size: int
    etag: str
    mtime_ms: int
    headers: ContentHeaders
    owner: str | None = None
    chunks: tuple[StoredChunk, ...] = ()
    chunk_list: StoredChunk | None = None
    chunk_count: int = 0
    parts_count: int | None = None
    upload_id: str | None = None
    part_sizes: tuple[int, ...] | None = None
    checksum: tuple[str, bytes] | None = None

    def pack(self) -> bytes:
        """Encode for the bucket index."""
        obj: dict[str, object] = {
            "v": FORMAT_VERSION,
            "sz": self.size,
            "et": self.etag,
            "mt": self.mtime_ms,
            **self.headers.pack(),
        }
        if self.owner is not None:
            obj["ow"] = self.owner
        if self.chunk_list is not None:
            obj["cx"] = self.chunk_list.pack()
            obj["n"] = self.chunk_count
        elif self.chunks:
            obj["ch"] = [c.pack() for c in self.chunks]
        if self.parts_count is not None:
            obj["np"] = self.parts_count
        if self.upload_id is not None:
            obj["up"] = self.upload_id
        if self.part_sizes is not None:
            obj["ps"] = _run_lengths(self.part_sizes)
        if self.checksum is not None:
            obj["ck"] = list(self.checksum)
        return _pack(obj)

    @classmethod
    def unpack(cls, data: bytes) -> ObjectRecord:
        """Decode an index entry; raises ``Corrupt`` if malformed."""
        obj = _unpack(data, "object record")
        try:
            cx = obj.get("cx")
            return cls(
                size=int(obj["sz"]),
                etag=str(obj["et"]),
                mtime_ms=int(obj["mt"]),
                headers=ContentHeaders.unpack(obj),
                owner=obj.get("ow"),
                chunks=tuple(StoredChunk.unpack(c) for c in obj.get("ch", ())),
                chunk_list=None if cx is None else StoredChunk.unpack(cx),
                chunk_count=int(obj.get("n", 0)),
                parts_count=obj.get("np"),
                upload_id=obj.get("up"),
                part_sizes=_from_run_lengths(obj["ps"]) if "ps" in obj else None,
                checksum=_checksum(obj["ck"]) if "ck" in obj else None,
            )
        except (KeyError, TypeError, ValueError):
            raise Corrupt("malformed object record") from None

    def part_range(self, number: int) -> tuple[int, int] | None:
        """Byte offsets ``(start, end)`` (inclusive) of part ``number`` (from 1) of a
        completed multipart upload; ``None`` if there is no such part or its sizes were not
        recorded. An empty part has ``end == start - 1``."""
        if self.part_sizes is None or not 1 <= number <= len(self.part_sizes):
            return None
        start = sum(self.part_sizes[: number - 1])
        return start, start + self.part_sizes[number - 1] - 1

    def owned_refs(self) -> list[StoredChunk]:
        """The chunks this record references directly (inline chunks or the chunk list)."""
        if self.chunk_list is not None:
            return [self.chunk_list]
        return list(self.chunks)


def _strings(raw: Any) -> tuple[str, ...]:
    """A stored list of strings; raises ``ValueError`` if it is anything else."""
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError("not a list of strings")
    return tuple(raw)


@dataclass(frozen=True)
class CorsRule:
    """One cross-origin rule of a bucket (a ``CORSRule`` of PutBucketCors), as stored.

    Patterns (origins, allowed headers) may hold one ``*``; the S3 layer validates and
    evaluates them, this record only keeps them.
    """

    allowed_origins: tuple[str, ...]
    allowed_methods: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    id: str | None = None
    max_age_seconds: int | None = None

    def pack(self) -> dict[str, object]:
        """The compact msgpack form (empty lists and absent values are omitted)."""
        out: dict[str, object] = {"o": list(self.allowed_origins), "m": list(self.allowed_methods)}
        if self.allowed_headers:
            out["h"] = list(self.allowed_headers)
        if self.expose_headers:
            out["e"] = list(self.expose_headers)
        if self.id is not None:
            out["id"] = self.id
        if self.max_age_seconds is not None:
            out["ma"] = self.max_age_seconds
        return out

    @classmethod
    def unpack(cls, raw: Any) -> CorsRule:
        """Inverse of :meth:`pack`; raises ``Corrupt`` if malformed."""
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a map")
            rule_id, max_age = raw.get("id"), raw.get("ma")
            if rule_id is not None and not isinstance(rule_id, str):
                raise ValueError("malformed rule id")
            if max_age is not None and (type(max_age) is not int or max_age < 0):
                raise ValueError("malformed max age")
            return cls(
                allowed_origins=_strings(raw["o"]),
                allowed_methods=_strings(raw["m"]),
                allowed_headers=_strings(raw.get("h", [])),
                expose_headers=_strings(raw.get("e", [])),
                id=rule_id,
                max_age_seconds=max_age,
            )
        except (KeyError, TypeError, ValueError):
            raise Corrupt("malformed CORS rule") from None


@dataclass(frozen=True)
class BucketConfig:
    """A bucket's registry entry.

    ``index_id`` names this incarnation's registers: a bucket deleted and created again gets
    a fresh one, so leftovers of the old incarnation can never leak into the new. ``cors`` is
    the bucket's CORS configuration, ``tags`` its tag set and ``lifecycle`` its lifecycle
    rules (``None``: none; entries written before they existed have none).
    """

    name: str
    owner: str
    created_ms: int
    redundancy: Redundancy
    acl: str
    index_id: bytes
    region: str | None = None
    cors: tuple[CorsRule, ...] | None = None
    tags: Mapping[str, str] | None = None
    lifecycle: tuple[LifecycleRule, ...] | None = None

    def pack_entry(self) -> dict[str, object]:
        """The registry map value for this bucket."""
        out: dict[str, object] = {
            "ow": self.owner,
            "mt": self.created_ms,
            "rd": str(self.redundancy),
            "acl": self.acl,
            "id": self.index_id,
        }
        if self.region is not None:
            out["rg"] = self.region
        if self.cors is not None:
            out["cr"] = [rule.pack() for rule in self.cors]
        if self.tags is not None:
            out["tg"] = dict(self.tags)
        if self.lifecycle is not None:
            out["lc"] = pack_rules(self.lifecycle)
        return out

    @classmethod
    def unpack_entry(cls, name: str, obj: Any) -> BucketConfig:
        """Inverse of :meth:`pack_entry`; raises ``Corrupt`` if malformed."""
        try:
            return cls(
                name=name,
                owner=str(obj["ow"]),
                created_ms=int(obj["mt"]),
                redundancy=Redundancy.parse(str(obj["rd"])),
                acl=str(obj["acl"]),
                index_id=bytes(obj["id"]),
                region=obj.get("rg"),
                cors=_unpack_cors(obj.get("cr")),
                tags=_unpack_tags(obj.get("tg")),
                lifecycle=unpack_rules(obj.get("lc")),
            )
        except (KeyError, TypeError, ValueError, InvalidArgument):
            raise Corrupt(f"malformed config of bucket {name!r}") from None


def _unpack_cors(raw: Any) -> tuple[CorsRule, ...] | None:
    """A stored CORS configuration (``None``: the bucket has none)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValueError("malformed CORS configuration")
    return tuple(CorsRule.unpack(rule) for rule in raw)


def pack_registry(buckets: Mapping[str, BucketConfig]) -> bytes:
    """Encode the bucket registry."""
    return _pack({"v": FORMAT_VERSION, "b": {n: c.pack_entry() for n, c in buckets.items()}})


def unpack_registry(data: bytes | None) -> dict[str, BucketConfig]:
    """Decode the bucket registry (``None``: no bucket yet)."""
    if data is None:
        return {}
    obj = _unpack(data, "bucket registry")
    return {str(n): BucketConfig.unpack_entry(str(n), c) for n, c in obj.get("b", {}).items()}


@dataclass(frozen=True)
class PartRecord:
    """One uploaded part: its MD5, size, upload time and chunks (inline or a chunk list)."""

    md5: bytes
    size: int
    mtime_ms: int
    chunks: tuple[StoredChunk, ...] = ()
    chunk_list: StoredChunk | None = None

    @property
    def etag(self) -> str:
        """The part's ETag (hex MD5, unquoted)."""
        return self.md5.hex()

    def owned_refs(self) -> list[StoredChunk]:
        """The chunks this part references directly."""
        if self.chunk_list is not None:
            return [self.chunk_list]
        return list(self.chunks)

    def pack(self) -> list[object]:
        """The compact msgpack form."""
        return [
            self.md5,
            self.size,
            self.mtime_ms,
            [c.pack() for c in self.chunks],
            None if self.chunk_list is None else self.chunk_list.pack(),
        ]

    @classmethod
    def unpack(cls, raw: Any) -> PartRecord:
        """Inverse of :meth:`pack`."""
        try:
            md5, size, mtime, chunks, chunk_list = raw
            return cls(
                md5=bytes(md5),
                size=int(size),
                mtime_ms=int(mtime),
                chunks=tuple(StoredChunk.unpack(c) for c in chunks),
                chunk_list=None if chunk_list is None else StoredChunk.unpack(chunk_list),
            )
        except (TypeError, ValueError):
            raise Corrupt("malformed part record") from None


@dataclass(frozen=True)
class UploadRecord:
    """The register of one multipart upload.

    The parts themselves are in group registers (:mod:`storage.upload_parts`); ``groups``
    are the numbers of the groups the upload uses. ``completing`` is set when a completion
    claims the upload: the ``(part number, etag)`` list it completes with. From then on parts
    cannot change and the upload cannot be aborted; a retried completion with the same list
    proceeds (idempotent), another fails. ``completing_ms`` is when the claim was made (a
    claim far older than any completion takes was left by a completion that died: see
    ``ObjectStore.abort_multipart_upload``). ``claim_epoch`` counts the claims made (retries
    too); a claim closes the groups at its epoch. ``legacy_parts`` are the parts of an upload
    started before parts had registers of their own (kept in this register, never changed: a
    part uploaded again goes to its group, which wins).
    """

    key: str
    upload_id: str
    initiated_ms: int
    headers: ContentHeaders
    owner: str | None = None
    groups: frozenset[int] = frozenset()
    completing: tuple[tuple[int, str], ...] | None = None
    completing_ms: int | None = None
    claim_epoch: int = 0
    legacy_parts: Mapping[int, PartRecord] = field(default_factory=dict)

    def pack(self) -> bytes:
        """Encode for the upload register."""
        obj: dict[str, object] = {
            "v": FORMAT_VERSION,
            "k": self.key,
            "u": self.upload_id,
            "mt": self.initiated_ms,
            "g": sorted(self.groups),
            **self.headers.pack(),
        }
        if self.legacy_parts:
            obj["p"] = {n: p.pack() for n, p in self.legacy_parts.items()}
        if self.owner is not None:
            obj["ow"] = self.owner
        if self.completing is not None:
            obj["cmp"] = [list(x) for x in self.completing]
            if self.completing_ms is not None:
                obj["cmt"] = self.completing_ms
        if self.claim_epoch:
            obj["cep"] = self.claim_epoch
        return _pack(obj)

    @classmethod
    def unpack(cls, data: bytes) -> UploadRecord:
        """Decode an upload register; raises ``Corrupt`` if malformed."""
        obj = _unpack(data, "upload record")
        try:
            cmp = obj.get("cmp")
            cmt = obj.get("cmt")
            return cls(
                key=str(obj["k"]),
                upload_id=str(obj["u"]),
                initiated_ms=int(obj["mt"]),
                headers=ContentHeaders.unpack(obj),
                owner=obj.get("ow"),
                groups=frozenset(int(g) for g in obj.get("g", ())),
                completing=None if cmp is None else tuple((int(n), str(e)) for n, e in cmp),
                completing_ms=None if cmp is None or cmt is None else int(cmt),
                claim_epoch=int(obj.get("cep", 0)),
                legacy_parts={int(n): PartRecord.unpack(p) for n, p in obj.get("p", {}).items()},
            )
        except (KeyError, TypeError, ValueError):
            raise Corrupt("malformed upload record") from None


class UploadEntry(NamedTuple):
    """One line of a bucket's uploads index."""

    key: str
    initiated_ms: int
    upload_id: str
    owner: str | None


def pack_upload_list(entries: Sequence[UploadEntry]) -> bytes:
    """Encode a bucket's uploads index (sorted by key bytes, initiation, upload id)."""
    return _pack({"v": FORMAT_VERSION, "u": [list(e) for e in entries]})


def unpack_upload_list(data: bytes | None) -> list[UploadEntry]:
    """Decode a bucket's uploads index (``None``: no upload)."""
    if data is None:
        return []
    obj = _unpack(data, "uploads index")
    try:
        return [UploadEntry(str(k), int(t), str(u), o) for k, t, u, o in obj.get("u", [])]
    except (TypeError, ValueError):
        raise Corrupt("malformed uploads index") from None
