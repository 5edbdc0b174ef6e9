"""The gateway's operator API: S3 keys and buckets as JSON over the node's admin listener.

A node that hosts an S3 gateway (``ballast up`` does, on its first node) hands a
:class:`GatewayAdmin` to :attr:`interfaces.node.Node.gateway`; the node's admin HTTP app
forwards ``/admin/...`` requests to :meth:`GatewayAdmin.handle`, and folds
:meth:`GatewayAdmin.status` and the gateway's metrics into ``/status`` and ``/metrics``.

Routes (bodies and answers are JSON; every error is ``{"error": "one line"}``)::

    GET    /admin/s3-keys            -> 200 {"keys": [{access_key, name, created}]}
    POST   /admin/s3-keys {"name"}   -> 201 {access_key, secret_key, name}
    DELETE /admin/s3-keys/KEY        -> 200 {"deleted": KEY} | 404
    GET    /admin/buckets            -> 200 {"buckets": [{name, owner, created, redundancy, acl}]}
    POST   /admin/buckets {"name", "redundancy", "acl", "owner"}
                                     -> 201 {bucket} | 400 | 409
    DELETE /admin/buckets/NAME       -> 200 {"deleted": NAME} | 404 | 409

Storage errors map onto HTTP statuses in one table (:data:`STATUS`), at this edge only.
The request logic is plain async code over the object and credential stores, so it is tested
with an in-memory block store and no HTTP at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from storage import errors as storage_errors
from storage.objects import BucketInfo, ObjectStore
from storage.policy import Redundancy

from .metrics import LabelledCounter
from .s3.app import S3App
from .s3.credentials import CredentialStore
from .s3.names import bucket_name_problem

logger = logging.getLogger(__name__)

#: Owner recorded on buckets created through the admin API (S3 keys share one account).
ADMIN_OWNER = "ballast-admin"
MAX_BODY_BYTES = 64 * 1024

#: Storage errors as HTTP statuses, most specific first.
STATUS: tuple[tuple[type[storage_errors.StorageError], int], ...] = (
    (storage_errors.NotFound, 404),
    (storage_errors.AlreadyExists, 409),
    (storage_errors.BucketNotEmpty, 409),
    (storage_errors.InvalidArgument, 400),
    (storage_errors.Unavailable, 503),
    (storage_errors.PermissionDenied, 403),
)

Answer = tuple[int, dict[str, Any]]


class AdminError(Exception):
    """A request the admin API refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _plain(value: Any) -> Any:
    """Statistics snapshots and their contents as JSON-friendly data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def bucket_json(info: BucketInfo) -> dict[str, Any]:
    """One bucket as the admin API lists it."""
    return {
        "name": info.name,
        "owner": info.owner,
        "created": info.created.isoformat(),
        "redundancy": str(info.redundancy),
        "acl": info.acl,
    }


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AdminError(400, "the request body is not JSON") from None
    if not isinstance(document, dict):
        raise AdminError(400, "the request body must be a JSON object")
    return document


def _string_field(document: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise AdminError(400, f"{name!r} is required")
        return None
    if not isinstance(value, str):
        raise AdminError(400, f"{name!r} must be a string")
    return value


class GatewayAdmin:
    """The admin operations of one S3 gateway (see the module docstring).

    Args:
        objects: the buckets.
        credentials: the S3 access keys.
        nodes_available: how many nodes can hold data now (the members not evicted); a
            bucket whose redundancy needs more distinct nodes is refused.
        s3: the S3 front end, for its request counters (optional).
        kv_statistics: the key-value client's ``statistics`` (optional).
        sweeper_statistics: the stale-upload sweeper's ``statistics`` (optional).
        lifecycle_statistics: the lifecycle worker's ``statistics`` (optional).
    """

    def __init__(
        self,
        objects: ObjectStore,
        credentials: CredentialStore,
        *,
        nodes_available: Callable[[], int],
        s3: S3App | None = None,
        kv_statistics: Callable[[], object] | None = None,
        sweeper_statistics: Callable[[], object] | None = None,
        lifecycle_statistics: Callable[[], object] | None = None,
    ) -> None:
        self.objects = objects
        self.credentials = credentials
        self.nodes_available = nodes_available
        self.s3 = s3
        self.kv_statistics = kv_statistics
        self.sweeper_statistics = sweeper_statistics
        self.lifecycle_statistics = lifecycle_statistics

    # -- HTTP edge ----------------------------------------------------------------------

    async def handle(self, method: str, path: str, body: bytes) -> Answer:
        """Answer one ``/admin/...`` request with ``(status, JSON document)``.

        Never raises for a refused request: storage errors and bad input become an error
        document with the matching status (``trio.Cancelled`` propagates).
        """
        try:
            return await self._route(method, path, body)
        except AdminError as error:
            return error.status, {"error": str(error)}
        except storage_errors.StorageError as error:
            status = next((code for kind, code in STATUS if isinstance(error, kind)), 500)
            if status == 500:
                logger.warning("admin %s %s failed: %r", method, path, error)
            return status, {"error": str(error) or type(error).__name__}

    async def _route(self, method: str, path: str, body: bytes) -> Answer:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 2 or parts[0] != "admin" or len(parts) > 3:
            raise AdminError(404, f"no such endpoint {path}")
        collection, item = parts[1], parts[2] if len(parts) == 3 else None
        table: dict[tuple[str, str, bool], Callable[[], Any]] = {
            ("s3-keys", "GET", False): self.list_keys,
            ("s3-keys", "POST", False): lambda: self.create_key(_json_body(body)),
            ("s3-keys", "DELETE", True): lambda: self.delete_key(item or ""),
            ("buckets", "GET", False): self.list_buckets,
            ("buckets", "POST", False): lambda: self.create_bucket(_json_body(body)),
            ("buckets", "DELETE", True): lambda: self.delete_bucket(item or ""),
        }
        if collection not in ("s3-keys", "buckets"):
            raise AdminError(404, f"no such endpoint {path}")
        operation = table.get((collection, method, item is not None))
        if operation is None:
            raise AdminError(405, f"{method} is not allowed on {path}")
        answer: Answer = await operation()
        return answer

    # -- operations ---------------------------------------------------------------------

    async def list_keys(self) -> Answer:
        """Every access key (never a secret)."""
        keys = await self.credentials.list_keys()
        return 200, {
            "keys": [
                {"access_key": k.access_key, "name": k.name, "created": k.created} for k in keys
            ]
        }

    async def create_key(self, document: dict[str, Any]) -> Answer:
        """Create an access key; the answer is the only place its secret ever appears."""
        name = _string_field(document, "name")
        access_key, secret = await self.credentials.create_key(name)
        return 201, {"access_key": access_key, "secret_key": secret, "name": name or access_key}

    async def delete_key(self, access_key: str) -> Answer:
        """Delete an access key (requests signed with it fail once caches expire)."""
        if not await self.credentials.delete_key(access_key):
            raise AdminError(404, f"no access key {access_key!r}")
        return 200, {"deleted": access_key}

    async def list_buckets(self) -> Answer:
        """Every bucket with its policy."""
        buckets = await self.objects.list_buckets()
        return 200, {"buckets": [bucket_json(b) for b in buckets]}

    async def create_bucket(self, document: dict[str, Any]) -> Answer:
        """Create a bucket whose redundancy the cluster can hold now."""
        name = _string_field(document, "name", required=True)
        assert name is not None
        problem = bucket_name_problem(name)
        if problem is not None:  # S3 clients must be able to address it
            raise AdminError(400, f"invalid bucket name {name!r}: {problem}")
        acl = _string_field(document, "acl") or "private"
        owner = _string_field(document, "owner") or ADMIN_OWNER
        text = _string_field(document, "redundancy")
        redundancy = None if text is None else Redundancy.parse(text)
        wanted = redundancy or self.objects.default_redundancy
        available = self.nodes_available()
        if wanted.nodes_needed > available:
            raise AdminError(
                400,
                f"redundancy {wanted} needs {wanted.nodes_needed} distinct nodes, "
                f"but the cluster has {available}",
            )
        try:
            info = await self.objects.create_bucket(
                name, owner=owner, acl=acl, redundancy=redundancy
            )
        except storage_errors.AlreadyExists:
            raise AdminError(409, f"bucket {name!r} already exists") from None
        return 201, bucket_json(info)

    async def delete_bucket(self, name: str) -> Answer:
        """Delete an empty bucket."""
        try:
            await self.objects.delete_bucket(name)
        except storage_errors.NotFound:
            raise AdminError(404, f"no bucket {name!r}") from None
        except storage_errors.BucketNotEmpty:
            raise AdminError(409, f"bucket {name!r} is not empty") from None
        return 200, {"deleted": name}

    # -- observability ------------------------------------------------------------------

    def metric_sources(self) -> list[tuple[str, Callable[[], object]]]:
        """The gateway's statistics for ``/metrics`` (component name, snapshot getter)."""
        sources: list[tuple[str, Callable[[], object]]] = [("objects", self.objects.statistics)]
        if self.s3 is not None:
            sources.append(("s3", self.s3.statistics))
        if self.kv_statistics is not None:
            sources.append(("kv_client", self.kv_statistics))
        if self.sweeper_statistics is not None:
            sources.append(("upload_sweeper", self.sweeper_statistics))
        if self.lifecycle_statistics is not None:
            sources.append(("lifecycle", self.lifecycle_statistics))
        return sources

    def metric_counters(self) -> list[LabelledCounter]:
        """Labelled counters: S3 requests by operation and status class."""
        if self.s3 is None:
            return []
        s3 = self.s3

        def counts() -> dict[tuple[str, ...], float]:
            return {labels: float(n) for labels, n in s3.operation_counts().items()}

        return [
            LabelledCounter(
                "ballast_s3_operation_requests",
                "S3 requests answered, by operation and status class",
                ("operation", "status"),
                counts,
            )
        ]

    def status(self) -> dict[str, Any]:
        """The gateway's counters for ``/status``."""
        document: dict[str, Any] = {"objects": _plain(self.objects.statistics())}
        if self.s3 is not None:
            document["s3"] = _plain(self.s3.statistics())
            document["s3_operations"] = {
                f"{operation} {status}": count
                for (operation, status), count in sorted(self.s3.operation_counts().items())
            }
        if self.kv_statistics is not None:
            document["kv_client"] = _plain(self.kv_statistics())
        return document
