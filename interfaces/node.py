"""One Ballast node: silo, secure RPC, overlay, block service, and its admin endpoint.

``Node.run`` assembles the layers in dependency order and tears them down in reverse when
cancelled: the silo is opened first and closed last, so an acknowledged write is always
durable before the process can exit.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry

from dht.contracts import Handler
from dht.errors import CredentialError, PeerUnreachable, RemoteError, RpcTimeout
from dht.identity import (
    NetworkDescriptor,
    NodeIdentity,
    Passport,
    load_identity,
    load_network,
    load_passport,
)
from dht.ids import Address, Contact, NodeId
from dht.membership import MembershipConfig
from dht.overlay import Overlay, OverlayConfig
from dht.rpc import RpcNode
from storage.errors import InvalidArgument, StorageError
from storage.kv_client import KVClient
from storage.kv_service import BlockService
from storage.placement import OverlayPlacement
from storage.policy import Redundancy
from storage.registers import ClientKeys
from storage.repair import RepairConfig, RepairService
from storage.silo import Silo

from .config import NodeConfig
from .http import Receive, Scope, Send, lifespan, send_json, send_response, serve_app
from .metrics import LabelledCounter, node_registry, render

logger = logging.getLogger(__name__)

INFO_METHOD = "node.info"
INFO_TIMEOUT = 2.0
ADMIN_PREFIX = "/admin/"
NODE_ADMIN_PREFIX = "/admin/node/"
MAX_ADMIN_BODY = 64 * 1024


class AdminGateway(Protocol):
    """What a node hosting a gateway (S3 keys, buckets) offers its admin endpoint.

    :class:`interfaces.admin_api.GatewayAdmin` is the implementation.
    """

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one ``/admin/...`` request with ``(HTTP status, JSON document)``."""
        ...

    def metric_sources(self) -> list[tuple[str, Callable[[], object]]]:
        """Statistics getters to export under ``ballast_<component>_...``."""
        ...

    def metric_counters(self) -> list[LabelledCounter]:
        """Labelled counters to export."""
        ...

    def status(self) -> dict[str, Any]:
        """Counters to show under ``"gateway"`` in ``/status``."""
        ...


class NodeStartError(Exception):
    """The node cannot start: missing or invalid credentials, a busy port, an unusable disk."""


@dataclass(frozen=True)
class _Parts:
    """The layers of a running node."""

    silo: Silo
    rpc: RpcNode
    overlay: Overlay
    service: BlockService
    repair: RepairService


@dataclass(frozen=True)
class Credentials:
    """What a node proves itself with."""

    identity: NodeIdentity
    network: NetworkDescriptor
    passport: Passport


def load_credentials(config: NodeConfig) -> Credentials:
    """Load and cross-check the node key, network descriptor and passport.

    Raises:
        NodeStartError: a file is missing, malformed, tampered, or issued to someone else.
    """
    for path, what, hint in (
        (config.key_file, "node key", "run: ballast node init --data DIR"),
        (config.network_file, "network file", "copy the network file into the data directory"),
        (config.passport_file, "passport", "ask the network owner: ballast passport issue"),
    ):
        if not path.exists():
            raise NodeStartError(f"missing {what} {path} ({hint})")
    try:
        identity = load_identity(config.key_file)
        network = load_network(config.network_file)
        passport = load_passport(config.passport_file, network, identity)
    except CredentialError as error:
        raise NodeStartError(str(error)) from None
    return Credentials(identity, network, passport)


class Node:
    """A running storage node.

    Args:
        config: the validated configuration.
        credentials: preloaded credentials (default: loaded from the data directory).
        membership: failure-detection timings (default: from the configuration).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        credentials: Credentials | None = None,
        membership: MembershipConfig | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._membership = membership or MembershipConfig(eviction_delay=config.eviction_delay)
        self._parts: _Parts | None = None
        self.admin_address: Address | None = None
        self.started_at = 0.0
        #: The gateway this node hosts, if any: serves ``/admin/...`` (set by its owner).
        self.gateway: AdminGateway | None = None

    @property
    def credentials(self) -> Credentials:
        """The node's credentials (loaded on first use)."""
        if self._credentials is None:
            self._credentials = load_credentials(self.config)
        return self._credentials

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; report ``self`` once the node serves.

        Raises:
            NodeStartError: credentials, ports or the data directory are unusable.
        """
        credentials = self.credentials
        try:
            silo = await Silo.open(self.config.silo_dir, capacity_bytes=self.config.capacity_bytes)
        except (OSError, StorageError) as error:
            raise NodeStartError(
                f"cannot open data directory {self.config.silo_dir}: {error}"
            ) from None
        try:
            async with trio.open_nursery() as nursery:
                await self._start(nursery, credentials, silo)
                self.started_at = time.time()
                logger.info(
                    "node %s serving on %s (network %r)",
                    credentials.identity.node_id.hex()[:12],
                    self.contact.address,
                    credentials.network.name,
                )
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await silo.aclose()

    async def _start(self, nursery: trio.Nursery, credentials: Credentials, silo: Silo) -> None:
        config = self.config
        rpc = RpcNode(
            credentials.identity,
            credentials.passport,
            credentials.network,
            listen_host=config.listen.host,
            listen_port=config.listen.port,
            advertise=config.advertise,
        )
        try:
            await nursery.start(rpc.run)
        except OSError as error:
            raise NodeStartError(f"cannot listen on {config.listen}: {error.strerror}") from None
        service = BlockService(silo, rpc)
        rpc.register(INFO_METHOD, self._info_handler())
        bootstrap = [Contact(NodeId(b""), address) for address in config.bootstrap]
        overlay = Overlay(
            rpc.contact,
            rpc,
            rpc,
            config=OverlayConfig(membership=self._membership),
            bootstrap=bootstrap,
            incarnation=int(time.time()),
        )
        await nursery.start(overlay.run)
        repair = await self._start_repair(nursery, credentials, silo, rpc, overlay)
        self._parts = _Parts(silo, rpc, overlay, service, repair)
        if config.admin_listen is not None:
            try:
                self.admin_address = await nursery.start(
                    serve_app, self.admin_app, config.admin_listen
                )
            except OSError as error:
                raise NodeStartError(
                    f"cannot listen on {config.admin_listen} (admin): {error.strerror}"
                ) from None

    async def _start_repair(
        self,
        nursery: trio.Nursery,
        credentials: Credentials,
        silo: Silo,
        rpc: RpcNode,
        overlay: Overlay,
    ) -> RepairService:
        """Start the register mover (a key-value client owning no registers) and repair."""
        policy = Redundancy(**credentials.network.redundancy)
        mover = KVClient(
            rpc,
            OverlayPlacement(overlay),
            keys=ClientKeys.generate(),
            default_redundancy=policy,
        )
        await nursery.start(mover.run)
        config = self.config
        repair = RepairService(
            silo,
            rpc,
            overlay.membership,
            mover,
            default_replicas=policy.replicas or 3,
            config=RepairConfig(
                scan_interval=config.repair_interval,
                bandwidth=config.repair_bandwidth,
                scrub_interval=config.scrub_interval,
                scrub_rate=config.scrub_rate,
                tombstone_grace=config.tombstone_grace,
            ),
        )
        repair.register_handlers(rpc)
        await nursery.start(repair.run)
        return repair

    @property
    def parts(self) -> _Parts:
        """The running layers (silo, rpc, overlay, service).

        Raises:
            RuntimeError: the node is not running.
        """
        if self._parts is None:
            raise RuntimeError("the node is not running")
        return self._parts

    @property
    def contact(self) -> Contact:
        """How peers reach this node."""
        return self.parts.rpc.contact

    # -- status -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """This node's own facts: identity, capacity and use, service counters."""
        parts = self.parts
        silo = parts.silo.statistics()
        return {
            "id": self.credentials.identity.node_id.hex(),
            "address": str(parts.rpc.contact.address),
            "network": self.credentials.network.name,
            "capacity_bytes": silo.capacity_bytes,
            "used_bytes": silo.bytes_used,
            "blocks": silo.blocks,
            "registers": silo.acceptor_records,
            "uptime_s": round(time.time() - self.started_at, 1),
            "draining": parts.repair.draining,
            "repair": _plain(parts.repair.statistics()),
        }

    def _info_handler(self) -> Handler:
        async def handle(caller: Contact, args: Any) -> Any:
            del caller, args
            return self.info()

        return handle

    async def cluster_status(self) -> dict[str, Any]:
        """Every member as this node sees it, with each live member's own facts."""
        parts = self.parts
        members = parts.overlay.members()
        facts: dict[str, dict[str, Any]] = {}

        async def ask(contact: Contact) -> None:
            try:
                with trio.fail_after(INFO_TIMEOUT):
                    answer = await parts.rpc.call(contact, INFO_METHOD, None, timeout=INFO_TIMEOUT)
            except (PeerUnreachable, RpcTimeout, RemoteError, trio.TooSlowError) as error:
                logger.info("status: %s did not answer: %s", contact.node_id.hex()[:12], error)
                return
            if isinstance(answer, dict):
                facts[contact.node_id.hex()] = answer

        async with trio.open_nursery() as nursery:
            for member in members:
                if member.state.value != "evicted":
                    nursery.start_soon(ask, member.contact)
        rows = []
        for member in sorted(members, key=lambda m: str(m.contact.address)):
            node_id = member.contact.node_id.hex()
            row: dict[str, Any] = {
                "id": node_id,
                "address": str(member.contact.address),
                "state": member.state.value,
                "incarnation": member.incarnation,
                "draining": member.draining,
            }
            row.update({k: v for k, v in facts.get(node_id, {}).items() if k not in row})
            rows.append(row)
        document = {
            "node": self.info(),
            "members": rows,
            "overlay": _plain(parts.overlay.statistics()),
            "service": _plain(parts.service.statistics()),
        }
        if self.gateway is not None:
            document["gateway"] = self.gateway.status()
        return document

    # -- admin HTTP ---------------------------------------------------------------------

    async def admin_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI app: ``GET /metrics`` (Prometheus), ``GET /status`` (JSON), and the gateway's
        ``/admin/...`` operations (see :mod:`interfaces.admin_api`)."""
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith(ADMIN_PREFIX):
            await self._admin_operation(scope, receive, send)
        elif method not in ("GET", "HEAD"):
            await send_json(send, 405, {"error": "method not allowed"})
        elif path == "/metrics":
            body = render(self._registry())
            await send_response(send, 200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/status":
            await send_json(send, 200, await self.cluster_status())
        elif path == "/health":
            await send_json(send, 200, {"ok": True})
        else:
            await send_json(send, 404, {"error": f"no such endpoint {path}"})

    async def _admin_operation(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``/admin/node/...`` here and forward other ``/admin/...`` to the gateway:
        loopback callers only, since these change the node, credentials and buckets even
        when the admin listener is opened for scraping."""
        client = scope.get("client")
        if not _is_loopback(client[0] if client else None):
            await send_json(send, 403, {"error": "admin operations are allowed from loopback"})
            return
        node_operation = scope["path"].startswith(NODE_ADMIN_PREFIX)
        if not node_operation and self.gateway is None:
            await send_json(
                send,
                404,
                {"error": "this node hosts no S3 gateway (ask the node that serves S3)"},
            )
            return
        try:
            body = await _read_body(receive)
        except _BodyTooLarge:
            await send_json(send, 413, {"error": "request body too large"})
            return
        if body is None:
            return  # the client went away
        if node_operation:
            status, document = await self._node_operation(scope["method"], scope["path"], body)
        else:
            assert self.gateway is not None
            status, document = await self.gateway.handle(scope["method"], scope["path"], body)
        await send_json(send, status, document)

    async def _node_operation(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``/admin/node/drain`` (GET: progress; POST ``{"draining": bool}``: start or stop),
        ``/admin/node/repair`` (POST: run a repair pass now), ``/admin/node/scrub`` (POST:
        verify every record now and heal bad copies; answers when done)."""
        repair = self.parts.repair
        operation = path[len(NODE_ADMIN_PREFIX) :]
        if operation == "drain" and method == "GET":
            return 200, self._drain_document()
        if method != "POST":
            return 405, {"error": f"{method} {path} is not supported"}
        if operation == "drain":
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = None
            if not isinstance(request, dict) or not isinstance(request.get("draining", True), bool):
                logger.warning("admin: bad drain request body %r", body[:200])
                return 400, {"error": 'the body must be {"draining": true|false}'}
            try:
                await repair.set_draining(request.get("draining", True))
            except InvalidArgument as error:
                logger.warning("admin: drain change refused: %s", error)
                return 409, {"error": str(error)}
            return 200, self._drain_document()
        if operation == "repair":
            found_work = await repair.repair_now()
            return 200, {"found_work": found_work, "repair": _plain(repair.statistics())}
        if operation == "scrub":
            bad = await repair.scrub_now()
            return 200, {"corrupt": bad, "repair": _plain(repair.statistics())}
        return 404, {"error": f"no such node operation {path}"}

    def _drain_document(self) -> dict[str, Any]:
        repair = self.parts.repair
        stats = self.parts.silo.statistics()
        return {
            "draining": repair.draining,
            "blocks": stats.blocks,
            "registers": stats.acceptor_records,
            "remaining": stats.blocks + stats.acceptor_records if repair.draining else 0,
            "repair": _plain(repair.statistics()),
        }

    def _registry(self) -> CollectorRegistry:
        parts = self.parts
        sources: list[tuple[str, Callable[[], object]]] = [
            ("silo", parts.silo.statistics),
            ("rpc", parts.rpc.statistics),
            ("overlay", parts.overlay.statistics),
            ("kv", parts.service.statistics),
            ("repair", parts.repair.statistics),
        ]
        counters: list[LabelledCounter] = []
        if self.gateway is not None:
            sources += self.gateway.metric_sources()
            counters += self.gateway.metric_counters()
        return node_registry(self.credentials.identity.node_id.hex()[:12], sources, counters)


class _BodyTooLarge(Exception):
    """An admin request body exceeds :data:`MAX_ADMIN_BODY`."""


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None if the client went away before sending all of it.

    Raises:
        _BodyTooLarge: it exceeds :data:`MAX_ADMIN_BODY`.
    """
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_ADMIN_BODY:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


def _is_loopback(host: str | None) -> bool:
    """Whether an ASGI client host is a loopback address (a unix socket counts as local)."""
    if host is None or host == "":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _plain(snapshot: Any) -> dict[str, Any]:
    """A statistics dataclass as JSON-friendly data (bytes become hex)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    result: dict[str, Any] = convert(asdict(snapshot))
    return result
