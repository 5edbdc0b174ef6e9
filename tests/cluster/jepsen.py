"""A Jepsen-style harness: real node processes, concurrent clients, a nemesis and a history.

Theory of operation
===================

Jepsen (Kingsbury) tests a distributed system as a black box: real server processes on
real (virtual) networks, clients that record every operation they *invoke* and every
answer they *get back*, a *nemesis* that injects faults meanwhile, and an offline checker
(Knossos, after Wing & Gong and Lowe) that asks whether some total order of the recorded
operations, consistent with real time, explains every answer. This module is that harness
for Ballast's key-value layer:

* **Nodes** (:class:`ProcessCluster`) are separate ``python -m interfaces.cli node run
  --config node.toml`` processes, one per network namespace of a :class:`tests.netns.NetnsLab`,
  listening on ``host(i):4100``. The network and the test's own identity are made with the
  real CLI (``network create``, ``node init``, ``passport issue --role client``); the nodes'
  keys and ``storage`` passports with the library calls the CLI makes (each CLI start costs
  seconds on a loaded machine). A node is killed with SIGKILL and restarted on the same
  data directory and address, or paused with SIGSTOP and resumed with SIGCONT.
* **Clients** (:class:`ClientSide`) live in the test process, in the root namespace: one
  :class:`dht.rpc.RpcNode` (role ``client``), one :class:`dht.member_view.MemberView`
  polling ``dht.members`` (so no node ever lists the test as a member and placement never
  picks it), and several :class:`storage.kv_client.KVClient` on a
  :class:`storage.client_placement.ViewPlacement`, each with its own CASPaxos proposer id.
  Each client is *homed* on one host. The lab's partitions cut node-to-node traffic only
  (the root namespace reaches everyone), and Ballast's clients talk to every acceptor
  directly, so a partition would not separate clients at all; :class:`FaultyCaller`
  therefore also drops (as a blackhole would: the call hangs until its timeout) a client's
  calls to hosts outside its home's side. ``isolate`` is real for everyone: the lab cuts the
  host from the root namespace too.
* **History** (:class:`History`): every register operation is recorded with its invoke
  time, its return time and its outcome, on the test process's single trio clock. A write
  or compare-and-set that fails with ``Unavailable`` (or hangs) has an *unknown* outcome —
  it may have taken effect — and is recorded without a return (``returned=None``), as
  Jepsen's ``:info``; a failed read constrains nothing and is dropped. Values are unique per
  write, so a read names the write it saw.
* **Nemesis** (:class:`Nemesis`): seeded (the seed is printed), it repeatedly picks a fault
  — a partition into random halves, the isolation of one host, SIGKILL of 1..3 nodes
  (a majority included: operations then fail, which is allowed), SIGSTOP of 1..2 nodes, or
  a partition while one node is down — keeps it for a few seconds and then undoes it
  (heal, restart on the same data directory, resume). Every event is logged with its time.
* **Check**: at the end everything is healed, resumed and restarted, the members converge,
  one client reads every register, and the history (final reads included) goes through
  :func:`storage.linearizability.check_history` with
  :class:`~storage.linearizability.VersionedRegisterModel` (read → ``(version, value)``,
  compare-and-set on the version). Linearizability implies "no acknowledged write is lost":
  an acknowledged write must be visible to every later read unless a later linearized
  write replaced it. Immutable chunks written meanwhile must all read back bit-exact.

Nothing here is a mock of Ballast: nodes, transport, overlay, silo and CASPaxos are the
shipped code; only the client-side emulation of partitions sits between the clients and
their RPC node.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trio

from dht.errors import PeerUnreachable, RemoteError, RpcTimeout
from dht.identity import (
    NodeIdentity,
    Passport,
    load_identity,
    load_network,
    load_passport,
    save_identity,
    save_passport,
)
from dht.ids import Address, Contact, NodeId, node_id_from_public_key
from dht.member_view import MemberView
from dht.membership import MemberState, entry_from_wire
from dht.overlay import MEMBERS
from dht.rpc import RpcNode
from storage.api import ChunkRef
from storage.client_placement import ViewPlacement
from storage.errors import Conflict, NotFound, StorageError, Unavailable
from storage.kv_client import KVClient
from storage.linearizability import Operation
from storage.policy import Redundancy
from storage.registers import ClientKeys
from tests.netns import NetnsLab

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NODE_PORT = 4100
ADMIN_PORT = 9100
CLI = [sys.executable, "-m", "interfaces.cli"]


# --- node processes -------------------------------------------------------------------------


@dataclass
class NodeProcess:
    """One storage node process of a :class:`ProcessCluster` (host ``index``, 1-based)."""

    index: int
    host: str
    data_dir: Path
    config: Path
    log: Path
    node_id: bytes = b""
    process: subprocess.Popen[str] | None = None
    paused: bool = False
    starts: int = 0
    retired: bool = False

    @property
    def member(self) -> bool:
        """Whether the node belongs to the cluster: started once and not retired."""
        return self.starts > 0 and not self.retired

    @property
    def address(self) -> Address:
        """Where the node listens."""
        return Address(self.host, NODE_PORT)

    @property
    def running(self) -> bool:
        """Whether the process exists (paused counts as running)."""
        return self.process is not None and self.process.poll() is None


async def _cli(*args: str | os.PathLike[str]) -> None:
    """Run one ``ballast`` CLI command to completion; raise with its output if it fails."""
    argv = [*CLI, *(str(a) for a in args)]
    done = await trio.run_process(
        argv, cwd=REPO, capture_stdout=True, capture_stderr=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[2:])} failed ({done.returncode}): "
            f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )


class ProcessCluster:
    """``n`` storage node processes, started with the real CLI, one per lab host.

    Args:
        lab: the entered lab; host ``i`` runs node ``i``.
        root: a directory for credentials, data directories, configs and logs.
        eviction_delay: the nodes' ``[membership] eviction_delay`` (a TOML duration).
        redundancy: the network's default redundancy (``3`` or ``4+2``).
        initial: how many hosts :func:`start_cluster` starts (the others are spares the
            test can add later); default all.

    Every node serves its admin endpoint on ``127.0.0.1:9100`` inside its namespace
    (admin operations are loopback-only; :meth:`admin` runs a request there).
    """

    def __init__(
        self,
        lab: NetnsLab,
        root: Path,
        *,
        eviction_delay: str = "2s",
        redundancy: str = "3",
        initial: int | None = None,
    ) -> None:
        """Describe the cluster; :meth:`prepare` makes the credentials."""
        self.lab = lab
        self.initial = lab.count if initial is None else initial
        self.root = root
        self.eviction_delay = eviction_delay
        self.redundancy = redundancy
        self.network_file = root / "jepsen.network"
        self.owner_key = root / "owner.key"
        self.client_dir = root / "client"
        self.nodes = [
            NodeProcess(
                index=i,
                host=lab.host(i),
                data_dir=root / f"node{i}",
                config=root / f"node{i}.toml",
                log=root / f"node{i}.log",
            )
            for i in range(1, lab.count + 1)
        ]
        self._logs: list[IO[str]] = []

    def node(self, i: int) -> NodeProcess:
        """Node ``i`` (1-based)."""
        return self.nodes[i - 1]

    def members(self) -> list[NodeProcess]:
        """The nodes that belong to the cluster now (started once, not retired)."""
        return [n for n in self.nodes if n.member]

    def retire(self, i: int) -> None:
        """Kill node ``i`` for good: SIGKILL, its data directory deleted, never restarted."""
        self.kill(i)
        node = self.node(i)
        node.retired = True
        shutil.rmtree(node.data_dir / "silo", ignore_errors=True)

    async def admin(self, i: int, method: str, path: str, body: Any = None) -> Any:
        """Send one request to node ``i``'s admin endpoint (from inside its namespace)."""
        script = (
            "import json, sys, urllib.request\n"
            "method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]\n"
            "data = body.encode() if body else None\n"
            "request = urllib.request.Request(url, data=data, method=method)\n"
            "print(urllib.request.urlopen(request, timeout=10).read().decode())\n"
        )
        argv = [
            sys.executable,
            "-c",
            script,
            method,
            f"http://127.0.0.1:{ADMIN_PORT}{path}",
            "" if body is None else json.dumps(body),
        ]
        done = await trio.to_thread.run_sync(
            functools.partial(self.lab.run, i, argv, check=False, capture_output=True, text=True)
        )
        if done.returncode != 0:
            raise RuntimeError(f"admin {method} {path} on node {i} failed: {done.stderr}")
        return json.loads(done.stdout)

    async def prepare(self) -> None:
        """Create the network, every node key and passport, and the client's.

        The network and the client's ``client`` passport are made with the CLI (``network
        create``, ``node init``, ``passport issue --role client``); the nodes' keys and
        passports with the same library calls the CLI makes, in-process, because a CLI
        start costs seconds on a loaded machine.
        """
        await _cli(
            "network", "create", "jepsen", "--redundancy", self.redundancy, "--dir", self.root
        )
        await _cli("node", "init", "--data", self.client_dir)
        await _cli(
            "passport",
            "issue",
            self.client_dir / "node.pub",
            "--network",
            self.network_file,
            "--owner-key",
            self.owner_key,
            "--role",
            "client",
            "--out",
            self.client_dir / "passport",
        )
        owner = load_identity(self.owner_key)
        network = load_network(self.network_file)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True)
            identity = NodeIdentity.generate()
            save_identity(node.data_dir / "node.key", identity)
            (node.data_dir / "node.pub").write_text(identity.public_key.hex() + "\n")
            save_passport(
                node.data_dir / "passport",
                Passport.issue(owner, network, identity.public_key, "storage"),
            )
        directories = [n.data_dir for n in self.nodes] + [self.client_dir]
        for directory in directories:
            shutil.copyfile(self.network_file, directory / "network")
        for node in self.nodes:
            public = bytes.fromhex((node.data_dir / "node.pub").read_text().strip())
            node.node_id = node_id_from_public_key(public)
            others = [f'"{n.host}:{NODE_PORT}"' for n in self.nodes if n is not node]
            node.config.write_text(
                "[node]\n"
                f'data_dir = "{node.data_dir}"\n'
                f'listen = "{node.host}:{NODE_PORT}"\n'
                f"bootstrap = [{', '.join(others)}]\n"
                'capacity = "4GiB"\n'
                "[membership]\n"
                f'eviction_delay = "{self.eviction_delay}"\n'
                "[repair]\n"
                'interval = "2s"\n'
                "[admin]\n"
                f'listen = "127.0.0.1:{ADMIN_PORT}"\n'
            )

    def start(self, i: int) -> None:
        """Start (or restart, same data directory and address) node ``i``'s process."""
        node = self.node(i)
        assert not node.running, f"node {i} is running"
        log = open(node.log, "a")  # noqa: SIM115 - closed in close(), after the process
        self._logs.append(log)
        node.starts += 1
        log.write(f"--- start #{node.starts}\n")
        log.flush()
        node.process = self.lab.popen(
            i,
            [*CLI, "node", "run", "--config", str(node.config), "--log-level", "info"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        node.paused = False

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (paused or not) and reap it."""
        node = self.node(i)
        if node.process is None:
            return
        node.process.kill()
        node.process.wait()
        node.process = None
        node.paused = False

    def pause(self, i: int) -> None:
        """SIGSTOP node ``i``."""
        node = self.node(i)
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGSTOP)
        node.paused = True

    def resume(self, i: int) -> None:
        """SIGCONT node ``i``."""
        node = self.node(i)
        if node.process is not None and node.paused:
            os.kill(node.process.pid, signal.SIGCONT)
        node.paused = False

    def close(self) -> None:
        """Kill every node process and close the log files."""
        for node in self.nodes:
            self.kill(node.index)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def tail(self, i: int, lines: int = 30) -> str:
        """The last ``lines`` lines of node ``i``'s log."""
        try:
            text = self.node(i).log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise if a node process that should be running has exited."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"node {node.index} exited with {node.process.returncode}:\n"
                    + self.tail(node.index)
                )


# --- the client side ------------------------------------------------------------------------


class NetworkModel:
    """Which hosts a client homed on a host can reach (the emulated part of partitions)."""

    def __init__(self, hosts: dict[str, int]) -> None:
        """``hosts`` maps each node's IP to its host number."""
        self.hosts = hosts
        self.groups: dict[int, int] = {}

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Clients of one group reach only that group's hosts."""
        self.groups = {i: g for g, group in enumerate(groups) for i in group}

    def heal(self) -> None:
        """Every client reaches every host again."""
        self.groups = {}

    def reachable(self, home: int, host: str) -> bool:
        """Whether a client homed on ``home`` reaches the node at ``host``."""
        target = self.hosts.get(host)
        if target is None or home not in self.groups or target not in self.groups:
            return True
        return self.groups[home] == self.groups[target]


class FaultyCaller:
    """A :class:`dht.contracts.RemoteCaller` that drops calls across an emulated partition."""

    def __init__(self, rpc: RpcNode, model: NetworkModel, home: int) -> None:
        """Call through ``rpc`` as a client homed on host ``home``."""
        self._rpc = rpc
        self._model = model
        self.home = home
        self.dropped = 0
        self.node_id = rpc.node_id

    async def call(self, contact: Contact, method: str, args: Any, *, timeout: float) -> Any:
        """Call through the RPC node, or hang until ``timeout`` like a blackholed packet."""
        if not self._model.reachable(self.home, contact.address.host):
            self.dropped += 1
            await trio.sleep(timeout)
            raise RpcTimeout(f"{method} on {contact.address}: partitioned (emulated)")
        return await self._rpc.call(contact, method, args, timeout=timeout)


@dataclass
class ClientSide:
    """The test's RPC node, member view and KV clients (see :func:`open_clients`)."""

    rpc: RpcNode
    view: MemberView
    clients: list[KVClient]
    callers: list[FaultyCaller]
    model: NetworkModel
    keys: ClientKeys


@asynccontextmanager
async def open_clients(
    cluster: ProcessCluster,
    count: int,
    *,
    timeout: float = 2.5,
    default_redundancy: Redundancy | None = None,
) -> AsyncIterator[ClientSide]:
    """Run an RPC node (role ``client``), a member view and ``count`` KV clients.

    Client ``c`` is homed on host ``c % n + 1``. Everything stops when the block exits.
    """
    directory = cluster.client_dir
    identity = load_identity(directory / "node.key")
    network = load_network(directory / "network")
    passport = load_passport(directory / "passport", network, identity)
    rpc = RpcNode(identity, passport, network, listen_host=cluster.lab.gateway)
    bootstrap = [Contact(NodeId(b""), n.address) for n in cluster.nodes]
    view = MemberView(rpc, bootstrap, refresh_interval=0.5, timeout=1.0)
    model = NetworkModel({n.host: n.index for n in cluster.nodes})
    keys = ClientKeys.generate()
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run)
        with trio.fail_after(60):
            await nursery.start(view.run)
        callers = [FaultyCaller(rpc, model, c % len(cluster.nodes) + 1) for c in range(count)]
        clients = [
            KVClient(
                caller,
                ViewPlacement(view),
                keys=keys,
                default_redundancy=default_redundancy or Redundancy(replicas=3),
                timeout=timeout,
                proposer_id=f"jepsen-{c}-".encode() + os.urandom(8),
            )
            for c, caller in enumerate(callers)
        ]
        for client in clients:
            await nursery.start(client.run)
        try:
            yield ClientSide(rpc, view, clients, callers, model, keys)
        finally:
            nursery.cancel_scope.cancel()


async def member_states(rpc: RpcNode, node: NodeProcess, timeout: float = 1.0) -> dict[bytes, str]:
    """Ask ``node`` for its member list (``dht.members``): node id → state."""
    reply = await rpc.call(Contact(NodeId(b""), node.address), MEMBERS, None, timeout=timeout)
    states = {}
    for entry in reply["members"]:
        contact, state, _, _ = entry_from_wire(entry)
        states[bytes(contact.node_id)] = state.value
    return states


async def nodes_listing(cluster: ProcessCluster, side: ClientSide, node_id: bytes) -> list[int]:
    """The nodes whose member list holds ``node_id`` (for a client: must be none)."""
    listing = []
    for node in cluster.members():
        if bytes(node_id) in await member_states(side.rpc, node, timeout=5.0):
            listing.append(node.index)
    return listing


def save_artifacts(cluster: ProcessCluster, history: History, directory: Path) -> Path:
    """Copy the history and the node logs to ``directory`` (kept after pytest's tmp dirs)."""
    directory.mkdir(parents=True, exist_ok=True)
    history.save(directory / "history.jsonl")
    for node in cluster.nodes:
        if node.log.exists():
            shutil.copyfile(node.log, directory / node.log.name)
    return directory


async def wait_converged(cluster: ProcessCluster, side: ClientSide, timeout: float = 60.0) -> float:
    """Wait until every member and the view see every member alive; return the seconds waited."""
    ids = {bytes(n.node_id) for n in cluster.members()}
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            cluster.check_alive()
            converged = True
            for node in cluster.members():
                try:
                    states = await member_states(side.rpc, node)
                except (PeerUnreachable, RpcTimeout, RemoteError):
                    converged = False
                    break
                if any(states.get(i) != MemberState.ALIVE.value for i in ids):
                    converged = False
                    break
            alive = {bytes(m.node_id) for m in side.view.members() if m.state is MemberState.ALIVE}
            if converged and alive >= ids:
                return trio.current_time() - start
            await trio.sleep(0.25)


async def start_cluster(cluster: ProcessCluster, rpc_probe: Callable[[NodeProcess], Any]) -> None:
    """Start node 1, wait until it serves, then the other initial ones (they join through it)."""
    cluster.start(1)
    await wait_serving(cluster, cluster.node(1), rpc_probe)
    for node in cluster.nodes[1 : cluster.initial]:
        cluster.start(node.index)


async def wait_serving(
    cluster: ProcessCluster,
    node: NodeProcess,
    probe: Callable[[NodeProcess], Any],
    timeout: float = 60.0,
) -> None:
    """Wait until ``probe(node)`` (an RPC to it) succeeds."""
    with trio.fail_after(timeout):
        while True:
            cluster.check_alive()
            try:
                await probe(node)
            except (PeerUnreachable, RpcTimeout, RemoteError):
                await trio.sleep(0.2)
                continue
            return


@asynccontextmanager
async def bootstrap_probe(cluster: ProcessCluster) -> AsyncIterator[Callable[[NodeProcess], Any]]:
    """An RPC node (the client's identity) for probing nodes before the clients start."""
    directory = cluster.client_dir
    identity = load_identity(directory / "node.key")
    network = load_network(directory / "network")
    passport = load_passport(directory / "passport", network, identity)
    rpc = RpcNode(identity, passport, network, listen_host=cluster.lab.gateway)
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run)

        async def probe(node: NodeProcess) -> Any:
            return await member_states(rpc, node)

        try:
            yield probe
        finally:
            nursery.cancel_scope.cancel()


# --- the history ----------------------------------------------------------------------------


@dataclass
class Record:
    """One operation as invoked and (maybe) completed; see :class:`History`."""

    client: str
    key: str
    kind: str
    input: Any
    invoke: float
    output: Any = None
    returned: float | None = None
    outcome: str = "pending"  # ok | fail | unknown | dropped
    error: str = ""


@dataclass
class History:
    """Every register operation of a run, on the test process's trio clock."""

    records: list[Record] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def invoke(self, client: str, key: str, kind: str, value: Any) -> Record:
        """Record the invocation of an operation; complete it with :meth:`complete`."""
        record = Record(client, key, kind, value, trio.current_time())
        self.records.append(record)
        return record

    def complete(self, record: Record, outcome: str, output: Any = None, error: str = "") -> None:
        """Record the outcome: ``ok``/``fail`` (with output), ``unknown`` or ``dropped``."""
        record.outcome = outcome
        record.error = error
        if outcome in ("ok", "fail"):
            record.output = output
            record.returned = trio.current_time()

    def operations(self) -> list[Operation]:
        """The history as the checker wants it (dropped reads left out)."""
        ops = []
        for r in self.records:
            if r.outcome == "dropped" or r.outcome == "pending":
                continue
            ops.append(
                Operation(
                    client=r.client,
                    key=r.key,
                    kind=r.kind,
                    input=r.input,
                    output=r.output,
                    invoke=r.invoke,
                    returned=r.returned,
                )
            )
        return ops

    def counts(self) -> dict[str, Counter[str]]:
        """Outcomes per operation kind."""
        result: dict[str, Counter[str]] = {}
        for r in self.records:
            result.setdefault(r.kind, Counter())[r.outcome] += 1
        return result

    def per_key(self) -> Counter[str]:
        """Operations per key (dropped reads included)."""
        return Counter(r.key for r in self.records)

    def save(self, path: Path) -> None:
        """Write the history as JSON lines (one record per line)."""
        with open(path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r.__dict__, default=repr) + "\n")


def written_values(history: History, key: str) -> set[Any]:
    """Values that some write or compare-and-set on ``key`` may have written."""
    values: set[Any] = set()
    for r in history.records:
        if r.key != key or r.outcome in ("dropped", "pending"):
            continue
        if r.kind == "write" and r.outcome in ("ok", "unknown"):
            values.add(r.input)
        if r.kind == "cas" and (r.outcome == "unknown" or (r.outcome == "ok" and r.output)):
            values.add(r.input[1])
    return values


# --- register operations --------------------------------------------------------------------


async def do_read(history: History, client: KVClient, who: str, key: str) -> tuple[int, Any] | None:
    """Read ``key`` and record it; return ``(version, value)`` or None if it failed."""
    record = history.invoke(who, key, "read", None)
    try:
        got = await client.read(key.encode())
    except NotFound:
        history.complete(record, "ok", (0, None))
        return (0, None)
    except Unavailable as exc:
        history.complete(record, "dropped", error=str(exc))
        return None
    except StorageError as exc:
        history.unexpected.append(f"{who} read {key}: {exc!r}")
        history.complete(record, "dropped", error=repr(exc))
        return None
    output = (got.version, got.value.decode())
    history.complete(record, "ok", output)
    return output


def constant(value: bytes) -> Callable[[bytes | None], bytes]:
    """An edit that ignores the old value and writes ``value`` (a blind write)."""

    def edit(_old: bytes | None) -> bytes:
        return value

    return edit


async def do_write(
    history: History, client: KVClient, who: str, key: str, value: str
) -> int | None:
    """Write ``value`` to ``key`` (a blind write: an edit ignoring the old value) and record it.

    The version the write produced is not recorded: a retry that finds its earlier attempt
    chosen reports the register's current version, which may already be a later one.
    """
    record = history.invoke(who, key, "write", value)
    try:
        got = await client.edit(key.encode(), constant(value.encode()))
    except Unavailable as exc:
        history.complete(record, "unknown", error=str(exc))
        return None
    except StorageError as exc:
        history.unexpected.append(f"{who} write {key}={value}: {exc!r}")
        history.complete(record, "unknown", error=repr(exc))
        return None
    history.complete(record, "ok", None)
    return None if got is None else got.version


async def do_cas(
    history: History, client: KVClient, who: str, key: str, expected: int, value: str
) -> bool | None:
    """Compare-and-set ``key`` from version ``expected`` to ``value``; record it."""
    record = history.invoke(who, key, "cas", (expected, value))
    try:
        await client.compare_and_set(key.encode(), expected or None, value.encode())
    except Conflict:
        history.complete(record, "fail", False)
        return False
    except Unavailable as exc:
        history.complete(record, "unknown", error=str(exc))
        return None
    except StorageError as exc:
        history.unexpected.append(f"{who} cas {key} {expected}->{value}: {exc!r}")
        history.complete(record, "unknown", error=repr(exc))
        return None
    history.complete(record, "ok", True)
    return True


async def register_worker(
    history: History,
    client: KVClient,
    who: str,
    keys: Sequence[str],
    until: float,
    rng: random.Random,
    *,
    think: float = 0.02,
) -> None:
    """Random reads (50 %), blind writes (25 %) and CAS (25 %) on ``keys`` until ``until``."""
    versions: dict[str, int] = {}
    seq = 0
    while trio.current_time() < until:
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.5:
            got = await do_read(history, client, who, key)
            if got is not None:
                versions[key] = got[0]
        elif roll < 0.75:
            seq += 1
            version = await do_write(history, client, who, key, f"{who}-{seq}")
            if version is not None:
                versions[key] = version
        else:
            seq += 1
            expected = versions.get(key, 0) + rng.choice((0, 0, 0, 1))
            if await do_cas(history, client, who, key, expected, f"{who}-{seq}"):
                versions[key] = expected + 1
        await trio.sleep(rng.uniform(0, think))


# --- immutable chunks -----------------------------------------------------------------------


def chunk_data(rng: random.Random, size: int) -> bytes:
    """``size`` seeded pseudo-random bytes."""
    return rng.randbytes(size)


@dataclass
class ChunkLog:
    """Chunk writes of a run: what was acknowledged (with its bytes) and what was not."""

    acknowledged: list[tuple[ChunkRef, bytes]] = field(default_factory=list)
    failed: int = 0
    unexpected: list[str] = field(default_factory=list)


async def chunk_worker(
    log: ChunkLog,
    client: KVClient,
    policies: Sequence[Redundancy],
    until: float,
    rng: random.Random,
    *,
    think: float = 0.05,
) -> None:
    """Write chunks of assorted sizes under each policy in turn until ``until``."""
    turn = 0
    while trio.current_time() < until:
        policy = policies[turn % len(policies)]
        turn += 1
        size = rng.choice((0, 1, 1000, 4096, 70_000, 200_000))
        data = chunk_data(rng, size)
        try:
            ref = await client.put_chunk(data, redundancy=policy)
        except Unavailable:
            log.failed += 1
        except StorageError as exc:
            log.unexpected.append(f"put_chunk({size} bytes, {policy}): {exc!r}")
        else:
            log.acknowledged.append((ref, data))
        await trio.sleep(rng.uniform(0, think))


async def verify_chunks(log: ChunkLog, client: KVClient, deadline: float) -> list[str]:
    """Read back every acknowledged chunk; return the problems (empty: all bit-exact)."""
    problems = []
    for ref, data in log.acknowledged:
        while True:
            try:
                got = await client.get_chunk(ref)
            except Unavailable as exc:
                if trio.current_time() < deadline:
                    await trio.sleep(0.2)
                    continue
                problems.append(f"chunk {ref.address.hex()[:16]} ({ref.size} B): {exc!r}")
            except StorageError as exc:
                problems.append(f"chunk {ref.address.hex()[:16]} ({ref.size} B): {exc!r}")
            else:
                if got != data:
                    problems.append(f"chunk {ref.address.hex()[:16]} read back different bytes")
            break
    return problems


# --- the nemesis ----------------------------------------------------------------------------


@dataclass
class NemesisEvent:
    """One thing the nemesis did."""

    at: float
    what: str


class Nemesis:
    """Seeded random faults on a :class:`ProcessCluster` (see the module docstring)."""

    FAULTS = ("partition", "isolate", "kill", "pause", "partition+kill")

    def __init__(
        self, cluster: ProcessCluster, model: NetworkModel, rng: random.Random, origin: float
    ) -> None:
        """Inject faults into ``cluster``; ``model`` mirrors partitions for the clients."""
        self.cluster = cluster
        self.model = model
        self.rng = rng
        self.origin = origin
        self.events: list[NemesisEvent] = []
        self.counts: Counter[str] = Counter()

    def _log(self, what: str) -> None:
        at = trio.current_time() - self.origin
        self.events.append(NemesisEvent(at, what))
        logger.info("nemesis at %.1f s: %s", at, what)

    def _hosts(self) -> list[int]:
        return [n.index for n in self.cluster.members()]

    def partition_halves(self) -> None:
        """Cut the hosts into two random halves (sizes 2/3 for five)."""
        hosts = self._hosts()
        self.rng.shuffle(hosts)
        cut = self.rng.choice((len(hosts) // 2, (len(hosts) + 1) // 2))
        groups = (sorted(hosts[:cut]), sorted(hosts[cut:]))
        self.cluster.lab.partition(*groups)
        self.model.partition(groups)
        self.counts["partition"] += 1
        self._log(f"partition {groups[0]} | {groups[1]}")

    def isolate(self) -> None:
        """Cut one random host off from everyone (the clients included)."""
        i = self.rng.choice(self._hosts())
        self.cluster.lab.isolate(i)
        self.counts["isolate"] += 1
        self._log(f"isolate {i}")

    def heal(self) -> None:
        """Remove every partition and isolation."""
        self.cluster.lab.heal()
        self.model.heal()
        self._log("heal")

    def kill(self, count: int) -> list[int]:
        """SIGKILL ``count`` random running nodes; return them."""
        victims = sorted(self.rng.sample(self._hosts(), count))
        for i in victims:
            self.cluster.kill(i)
        self.counts["kill"] += len(victims)
        self._log(f"kill -9 {victims}")
        return victims

    def restart(self, victims: Sequence[int]) -> None:
        """Start killed nodes again on their data directories."""
        for i in victims:
            self.cluster.start(i)
        self.counts["restart"] += len(victims)
        self._log(f"restart {list(victims)}")

    def pause(self, count: int) -> list[int]:
        """SIGSTOP ``count`` random nodes; return them."""
        victims = sorted(self.rng.sample(self._hosts(), count))
        for i in victims:
            self.cluster.pause(i)
        self.counts["pause"] += len(victims)
        self._log(f"SIGSTOP {victims}")
        return victims

    def resume(self, victims: Sequence[int]) -> None:
        """SIGCONT paused nodes."""
        for i in victims:
            self.cluster.resume(i)
        self._log(f"SIGCONT {list(victims)}")

    async def run(self, until: float) -> None:
        """Inject one fault at a time (held 2-5 s, then undone, 1-2.5 s apart) until ``until``."""
        await trio.sleep(self.rng.uniform(1.0, 2.0))
        while trio.current_time() < until - 3:
            await self.one_fault()
            await trio.sleep(self.rng.uniform(1.0, 2.5))

    async def one_fault(self) -> None:
        """Inject one random fault of :attr:`FAULTS`, hold it 2-5 s, undo it."""
        fault = self.rng.choice(self.FAULTS)
        hold = self.rng.uniform(2.0, 5.0)
        if fault == "partition":
            self.partition_halves()
            await trio.sleep(hold)
            self.heal()
        elif fault == "isolate":
            self.isolate()
            await trio.sleep(hold)
            self.heal()
        elif fault == "kill":
            victims = self.kill(self.rng.choice((1, 1, 2, 3)))
            await trio.sleep(hold)
            self.restart(victims)
        elif fault == "pause":
            victims = self.pause(self.rng.choice((1, 2)))
            await trio.sleep(hold)
            self.resume(victims)
        else:
            victims = self.kill(1)
            self.partition_halves()
            await trio.sleep(hold)
            self.heal()
            self.restart(victims)

    def recover_all(self) -> None:
        """Heal the network, resume paused nodes and start killed ones."""
        self.heal()
        for node in self.cluster.members():
            if node.paused:
                self.resume([node.index])
            if not node.running:
                self.restart([node.index])

    def timeline(self) -> str:
        """The events, one per line."""
        return "\n".join(f"  {e.at:6.1f} s  {e.what}" for e in self.events)


class MembershipNemesis(Nemesis):
    """:class:`Nemesis` faults, alternating with membership changes while clients run.

    The changes, in a seeded order: every spare host *joins* (its node starts and
    bootstraps through the members), one member *drains* (asked through its admin
    endpoint: it moves everything away and takes nothing new), and one member is *lost for
    good* (SIGKILL, data directory deleted, never restarted: it is evicted after the
    eviction delay and repair rebuilds what it held elsewhere).
    """

    def __init__(
        self, cluster: ProcessCluster, model: NetworkModel, rng: random.Random, origin: float
    ) -> None:
        """Plan the membership changes for ``cluster``'s spare hosts."""
        super().__init__(cluster, model, rng, origin)
        spares = [n.index for n in cluster.nodes if n.starts == 0]
        plan = [("join", i) for i in spares] + [("drain", 0), ("retire", 0)]
        rng.shuffle(plan)
        self.plan = plan
        self.drained: list[int] = []
        self.retired: list[int] = []

    async def run(self, until: float) -> None:
        """Alternate a membership change and a transient fault until the plan is done."""
        await trio.sleep(self.rng.uniform(1.0, 2.0))
        change_next = True
        while trio.current_time() < until - 3:
            if change_next and self.plan:
                await self.change(*self.plan.pop(0))
            else:
                await self.one_fault()
            change_next = not change_next
            await trio.sleep(self.rng.uniform(1.0, 2.5))

    def _steady(self) -> list[int]:
        """Members neither draining nor retired (candidates for drain and retire)."""
        return [i for i in self._hosts() if i not in self.drained]

    async def change(self, kind: str, host: int) -> None:
        """Apply one membership change (``host`` is the spare for a join)."""
        if kind == "join":
            self.cluster.start(host)
            self.counts["join"] += 1
            self._log(f"join {host}")
        elif kind == "retire":
            victim = self.rng.choice(self._steady())
            self.cluster.retire(victim)
            self.retired.append(victim)
            self.counts["retire"] += 1
            self._log(f"lose {victim} for good (kill -9, data deleted)")
        else:
            target = self.rng.choice(self._steady())
            await self.drain(target)
            self.drained.append(target)
            self.counts["drain"] += 1
            self._log(f"drain {target}")

    async def drain(self, i: int, timeout: float = 20.0) -> None:
        """Ask node ``i`` to drain (retrying while it starts up)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    await self.cluster.admin(i, "POST", "/admin/node/drain", {"draining": True})
                    return
                except RuntimeError as error:
                    logger.info("nemesis: drain of %d not taken yet: %s", i, error)
                    await trio.sleep(0.5)
