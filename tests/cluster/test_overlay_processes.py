"""Five ``ballast node run`` processes, one per network namespace, with partitions and crashes.

Everything a user would do is done with the real command line: ``ballast network create``,
``ballast node init`` and ``ballast passport issue`` make the credentials in ``tmp_path``,
and every node is ``python -m interfaces.cli node run --config FILE`` inside its own
namespace of a :class:`tests.netns.NetnsLab`, listening on its namespace address. The test
process watches the cluster from the root namespace through each node's admin endpoint
(``GET /status``) and reads the nodes' JSON logs for the moments of suspicion and eviction.

The tests share one cluster (module fixture) and run in file order; each leaves it with all
five nodes up and alive everywhere.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from dht.identity import load_identity
from dht.membership import MembershipConfig
from tests.netns import NetnsLab

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NETWORK = "ballast-test"
NODES = 5
#: Host of the lab that runs the stranger (a node of another network).
STRANGER = NODES + 1
RPC_PORT = 4100
ADMIN_PORT = 9100
EVICTION_DELAY = 3.0
#: The node process's failure detection: ``node run`` takes the ``MembershipConfig``
#: defaults (a ping every second, 0.5 s timeout, suspected after 3 missed pings) with the
#: configured eviction delay.
MEMBERSHIP = MembershipConfig(eviction_delay=EVICTION_DELAY)
PING_INTERVAL = MEMBERSHIP.ping_interval
DETECTION_TIME = MEMBERSHIP.detection_time
#: Scheduling slack for five Python processes (plus the test) sharing two cores.
SLACK = 2.0


def _cli(*args: str | Path) -> str:
    """Run ``python -m interfaces.cli ARGS`` in the root namespace; return its output."""
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"ballast {' '.join(map(str, args))} failed: {done.stderr}"
    return done.stdout


def _cli_parallel(commands: Sequence[Sequence[str | Path]]) -> None:
    """Run several CLI commands at once (each is a separate process)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        for _ in pool.map(lambda argv: _cli(*argv), commands):
            pass


@dataclass
class NodeProcess:
    """One ``ballast node run`` process and its files."""

    host: int
    data_dir: Path
    config: Path
    log: Path
    node_id: str
    admin: str
    process: subprocess.Popen[str] | None = None
    log_file: IO[str] | None = None
    starts: list[float] = field(default_factory=list)

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log record the process wrote so far (all its lives)."""
        records = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by kill -9
        return records


class ProcessCluster:
    """The lab, the node processes and how the test observes them."""

    def __init__(self, lab: NetnsLab, root: Path) -> None:
        self.lab = lab
        self.root = root
        self.nodes: dict[int, NodeProcess] = {}

    # -- set-up -------------------------------------------------------------------------

    def make_credentials(self) -> None:
        """Create both networks and every node's key and passport with the real CLI."""
        home, foreign = self.root / "network", self.root / "other-network"
        _cli_parallel(
            [
                ["network", "create", NETWORK, "--dir", home],
                ["network", "create", NETWORK, "--dir", foreign],
            ]
        )
        hosts = range(1, STRANGER + 1)
        _cli_parallel([["node", "init", "--data", self.root / f"node{i}"] for i in hosts])
        issues: list[list[str | Path]] = []
        for i in hosts:
            # The stranger's network has the same name but another owner.
            directory = foreign if i == STRANGER else home
            data_dir = self.root / f"node{i}"
            shutil.copy(directory / f"{NETWORK}.network", data_dir / "network")
            issues.append(
                [
                    "passport",
                    "issue",
                    data_dir / "node.pub",
                    "--network",
                    directory / f"{NETWORK}.network",
                    "--owner-key",
                    directory / "owner.key",
                    "--out",
                    data_dir / "passport",
                ]
            )
        _cli_parallel(issues)
        for i in hosts:
            self._describe(i)

    def _describe(self, i: int) -> None:
        data_dir = self.root / f"node{i}"
        address = f"{self.lab.host(i)}:{RPC_PORT}"
        bootstrap = [f"{self.lab.host(j)}:{RPC_PORT}" for j in range(1, NODES + 1) if j != i]
        admin = f"{self.lab.host(i)}:{ADMIN_PORT}"
        config = self.root / f"node{i}.toml"
        config.write_text(
            "[node]\n"
            f'data_dir = "{data_dir}"\n'
            f'listen = "{address}"\n'
            'capacity = "1GiB"\n'
            f"bootstrap = {json.dumps(bootstrap)}\n"
            "\n[membership]\n"
            f'eviction_delay = "{EVICTION_DELAY}s"\n'
            "\n[admin]\n"
            f'listen = "{admin}"\n',
            encoding="utf-8",
        )
        node_id = load_identity(data_dir / "node.key").node_id.hex()
        self.nodes[i] = NodeProcess(i, data_dir, config, self.root / f"node{i}.log", node_id, admin)

    # -- processes ----------------------------------------------------------------------

    def start(self, i: int) -> None:
        """Start node ``i`` in its namespace (its log appends to ``node<i>.log``)."""
        node = self.nodes[i]
        assert node.process is None, f"node {i} is already running"
        node.log_file = open(node.log, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop
        node.starts.append(time.time())
        node.process = self.lab.popen(
            i,
            [
                sys.executable,
                "-m",
                "interfaces.cli",
                "node",
                "run",
                "--config",
                str(node.config),
                "--log-format",
                "json",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, hosts: Sequence[int], limit: float = 60.0) -> None:
        """Wait until each node's admin endpoint answers (the node is serving)."""

        def healthy() -> bool:
            for i in hosts:
                process = self.nodes[i].process
                assert process is not None, f"node {i} is not running"
                assert process.poll() is None, f"node {i} exited: {self.tail(i)}"
            return all(self._get(i, "/health", timeout=1.0) is not None for i in hosts)

        wait_for(healthy, limit, f"admin endpoints of {list(hosts)} answer")

    def kill9(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        node = self.nodes[i]
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        self._closed(node)

    def stop(self, i: int, timeout: float = 15.0) -> int | None:
        """SIGTERM node ``i`` and wait for it (SIGKILL after ``timeout``); return its status."""
        node = self.nodes[i]
        if node.process is None:
            return None
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("node %d ignored SIGTERM for %.0f s: killing it", i, timeout)
                node.process.kill()
                node.process.wait()
        status = node.process.returncode
        self._closed(node)
        return status

    @staticmethod
    def _closed(node: NodeProcess) -> None:
        node.process = None
        if node.log_file is not None:
            node.log_file.close()
            node.log_file = None

    def tail(self, i: int, lines: int = 15) -> str:
        """The end of node ``i``'s log, for assertion messages."""
        text = self.nodes[i].log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- observation --------------------------------------------------------------------

    def _get(self, i: int, path: str, timeout: float = 10.0) -> dict[str, Any] | None:
        url = f"http://{self.nodes[i].admin}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                document = json.load(response)
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def views(self, hosts: Sequence[int]) -> dict[int, dict[str, tuple[str, int]] | None]:
        """Each node's member list from its ``/status``: id -> (state, incarnation)."""

        def view(i: int) -> dict[str, tuple[str, int]] | None:
            document = self._get(i, "/status")
            if document is None:
                return None
            return {m["id"]: (m["state"], m["incarnation"]) for m in document["members"]}

        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            return dict(zip(hosts, pool.map(view, hosts), strict=True))

    def ids(self, hosts: Sequence[int]) -> set[str]:
        """The node ids of ``hosts``."""
        return {self.nodes[i].node_id for i in hosts}

    def sees_exactly(self, observers: Sequence[int], members: Sequence[int]) -> bool:
        """Whether each observer lists exactly ``members``, all alive."""
        expected = self.ids(members)
        for view in self.views(observers).values():
            if view is None or set(view) != expected:
                return False
            if any(state != "alive" for state, _ in view.values()):
                return False
        return True

    def converged(self, hosts: Sequence[int]) -> bool:
        """Whether all ``hosts`` hold the same list of exactly themselves, all alive."""
        views = list(self.views(hosts).values())
        return (
            views[0] is not None
            and set(views[0]) == self.ids(hosts)
            and all(state == "alive" for state, _ in views[0].values())
            and all(view == views[0] for view in views)
        )

    def state_changes(self, observer: int, victim: int, since: float) -> dict[str, float]:
        """When ``observer`` logged ``victim`` becoming suspected/evicted/alive after ``since``.

        Returns:
            The first time (epoch seconds) of each new state seen in the log.
        """
        short = self.nodes[victim].node_id[:12]
        firsts: dict[str, float] = {}
        for record in self.nodes[observer].log_records():
            message = str(record.get("message", ""))
            if record.get("component") != "dht.membership" or record["time"] < since:
                continue
            if not message.startswith(f"member {short} ") or " -> " not in message:
                continue
            state = message.split(" -> ", 1)[1].split()[0]
            firsts.setdefault(state, float(record["time"]))
        return firsts


def wait_for(condition: Callable[[], bool], limit: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took.

    Raises:
        AssertionError: not true within ``limit`` seconds.
    """
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < limit, f"not reached within {limit:.0f} s: {what}"
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """Five converged node processes (hosts 1..5) and a prepared stranger (host 6)."""
    root = tmp_path_factory.mktemp("overlay-processes")
    with NetnsLab(STRANGER) as lab:
        cluster = ProcessCluster(lab, root)
        try:
            cluster.make_credentials()
            began = time.monotonic()
            cluster.start(1)  # a first node up makes every other join at its first attempt
            cluster.wait_healthy([1])
            for i in range(2, NODES + 1):
                cluster.start(i)
            everyone = list(range(1, NODES + 1))
            cluster.wait_healthy(everyone)
            wait_for(
                lambda: cluster.sees_exactly(everyone, everyone), 60, "five nodes see five alive"
            )
            print(f"\nfive node processes up and converged in {time.monotonic() - began:.1f} s")
            yield cluster
        finally:
            statuses = {i: cluster.stop(i) for i in list(cluster.nodes)}
            logger.info("node exit statuses: %s", statuses)


ALL = list(range(1, NODES + 1))


def detection_times(
    cluster: ProcessCluster, pairs: Sequence[tuple[int, int]], since: float
) -> tuple[list[float], list[float]]:
    """Seconds after ``since`` at which each observer suspected and evicted each victim.

    An observer may adopt an eviction second-hand (gossip from a node that suspected
    earlier) before its own suspicion has aged, or even before suspecting at all; its
    suspicion time is then the eviction's. What must hold is that no victim is evicted
    anywhere before the eviction delay has passed since the first suspicion of it.

    Returns:
        Suspicion times and eviction times, one per ``(observer, victim)`` pair.
    """
    suspected, evicted = [], []
    first: dict[int, dict[str, float]] = {}
    for observer, victim in pairs:
        changes = cluster.state_changes(observer, victim, since)
        assert "evicted" in changes, f"node {observer} never evicted node {victim}: {changes}"
        suspicion = min(changes.get("suspected", math.inf), changes["evicted"])
        seen = first.setdefault(victim, {"suspected": math.inf, "evicted": math.inf})
        seen["suspected"] = min(seen["suspected"], suspicion)
        seen["evicted"] = min(seen["evicted"], changes["evicted"])
        suspected.append(suspicion - since)
        evicted.append(changes["evicted"] - since)
    for victim, seen in first.items():
        # Log times are wall-clock with ms resolution; the delay runs on trio's clock.
        assert seen["evicted"] - seen["suspected"] >= EVICTION_DELAY - 0.05, (victim, seen)
    return suspected, evicted


def test_five_processes_join_one_network(cluster: ProcessCluster) -> None:
    """Every node lists the five nodes alive, and the nodes agree on the whole list."""
    wait_for(lambda: cluster.converged(ALL), 30, "identical member lists")
    for i in ALL:
        process = cluster.nodes[i].process
        assert process is not None
        assert process.poll() is None, cluster.tail(i)


def test_partition_evicts_the_other_side_then_heals(cluster: ProcessCluster) -> None:
    """Partition {1,2}|{3,4,5}: each side evicts the other; after healing all five converge."""
    left, right = [1, 2], [3, 4, 5]
    cut = time.time()
    cluster.lab.partition(left, right)
    split = wait_for(
        lambda: cluster.sees_exactly(left, left) and cluster.sees_exactly(right, right),
        DETECTION_TIME + EVICTION_DELAY + PING_INTERVAL + 30,
        "each side of the partition evicted the other",
    )
    pairs = [(o, v) for side, other in ((left, right), (right, left)) for o in side for v in other]
    suspected, evicted = detection_times(cluster, pairs, cut)
    print(
        f"\npartition {{1,2}}|{{3,4,5}}: every cross pair suspected within {max(suspected):.2f} s "
        f"(bound {DETECTION_TIME} s), evicted within {max(evicted):.2f} s "
        f"(eviction delay {EVICTION_DELAY} s); sides observed split after {split:.1f} s"
    )
    assert max(suspected) <= DETECTION_TIME + SLACK
    assert max(evicted) <= DETECTION_TIME + EVICTION_DELAY + PING_INTERVAL + SLACK

    cluster.lab.heal()
    healed = wait_for(lambda: cluster.converged(ALL), 60, "member lists converge after healing")
    print(f"healed: all five member lists identical and all alive after {healed:.1f} s")


def test_a_node_of_another_network_is_refused(cluster: ProcessCluster) -> None:
    """A node with a passport of another network (same name, other owner) is refused by all."""
    stranger = cluster.nodes[STRANGER]
    began = time.time()
    cluster.start(STRANGER)
    cluster.wait_healthy([STRANGER])
    address = cluster.lab.host(STRANGER)

    def refusals(i: int) -> list[str]:
        return [
            str(record["message"])
            for record in cluster.nodes[i].log_records()
            if record["time"] >= began
            and record.get("component") == "dht.transport"
            and f"handshake with {address}:" in str(record.get("message"))
            and "another network" in str(record.get("message"))
        ]

    def refused_by(i: int) -> bool:
        return bool(refusals(i))

    def never_admitted() -> bool:
        views = cluster.views(ALL)
        for i, view in views.items():
            assert view is None or stranger.node_id not in view, f"node {i} admitted it"
        return all(refused_by(i) for i in ALL)

    wait_for(never_admitted, 30, "all five nodes logged the stranger's refused handshake")
    # It keeps retrying; a few more seconds change nothing.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        never_admitted()
        time.sleep(0.5)
    assert cluster.sees_exactly(ALL, ALL)
    own = cluster.views([STRANGER])[STRANGER]
    assert own is not None
    assert set(own) == {stranger.node_id}, own
    messages = [str(r.get("message")) for r in stranger.log_records()]
    handshakes = [m for m in messages if m.startswith("handshake with ") and "failed" in m]
    assert {f"{cluster.lab.host(i)}:{RPC_PORT}" for i in ALL} <= {
        m.split()[2] for m in handshakes
    }, messages
    assert any(m.startswith("join failed") for m in messages), messages
    print(
        f"\nstranger refused: node 1 logged {refusals(1)[0]!r}; the stranger logged "
        f"{len(handshakes)} failed handshakes, e.g. {handshakes[0]!r}"
    )
    assert cluster.stop(STRANGER) == 0


def test_killed_node_is_evicted_and_readmitted_after_restart(cluster: ProcessCluster) -> None:
    """kill -9 one node: the others suspect, then evict it; restarted, it is alive again."""
    victim, others = NODES, list(range(1, NODES))
    killed = time.time()
    cluster.kill9(victim)
    gone = wait_for(
        lambda: cluster.sees_exactly(others, others),
        DETECTION_TIME + EVICTION_DELAY + PING_INTERVAL + 30,
        "the killed node is evicted everywhere",
    )
    suspected, evicted = detection_times(cluster, [(o, victim) for o in others], killed)
    print(
        f"\nkill -9 node {victim}: suspected by all within {max(suspected):.2f} s "
        f"(bound {DETECTION_TIME} s), evicted by all within {max(evicted):.2f} s; "
        f"observed gone after {gone:.1f} s"
    )
    assert max(suspected) <= DETECTION_TIME + SLACK
    assert max(evicted) <= DETECTION_TIME + EVICTION_DELAY + PING_INTERVAL + SLACK

    restarted = time.monotonic()
    cluster.start(victim)
    back = wait_for(lambda: cluster.converged(ALL), 60, "the restarted node is re-admitted")
    print(f"restarted with the same data dir: alive everywhere after {back:.1f} s")
    assert time.monotonic() - restarted < 60
    for observer in others:
        assert "alive" in cluster.state_changes(observer, victim, killed), observer


def test_nodes_stop_cleanly_on_sigterm(cluster: ProcessCluster) -> None:
    """SIGTERM stops every node with exit status 0 (run last: it ends the cluster)."""
    running = [i for i in ALL if cluster.nodes[i].process is not None]
    assert running, "no node left running"
    statuses = {i: cluster.stop(i) for i in running}
    assert statuses == dict.fromkeys(running, 0), {i: cluster.tail(i) for i in running}


_PROBE = """
import socket, sys
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, {port}), timeout=0.5).close()
        print(address, "ok")
    except OSError:
        print(address, "no")
"""


def test_netns_lab_partitions_and_isolation() -> None:
    """The harness itself: a second lab (next to the module's) cuts and heals as documented."""
    port = 7000
    with NetnsLab(3) as lab:
        listeners = [
            lab.popen(
                i,
                [
                    sys.executable,
                    "-c",
                    "import socket, time\n"
                    f"s = socket.create_server(({lab.host(i)!r}, {port}))\n"
                    "print('ready', flush=True)\n"
                    "time.sleep(600)\n",
                ],
                stdout=subprocess.PIPE,
            )
            for i in (1, 2, 3)
        ]
        for listener in listeners:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "ready"
        addresses = {i: lab.host(i) for i in (1, 2, 3)}

        def reach() -> dict[tuple[str, int], bool]:
            """Who reaches whom: ``(source, destination host)`` -> connected."""
            seen: dict[tuple[str, int], bool] = {}
            for i in (1, 2, 3):
                others = [a for j, a in addresses.items() if j != i]
                done = lab.run(i, [sys.executable, "-c", _PROBE.format(port=port), *others])
                assert done.returncode == 0, done.stderr
                for line in done.stdout.split("\n"):
                    if line:
                        address, verdict = line.split()
                        seen[(str(i), _host_of(addresses, address))] = verdict == "ok"
            for j, address in addresses.items():
                try:
                    with socket.create_connection((address, port), timeout=0.5):
                        seen[("root", j)] = True
                except OSError:
                    seen[("root", j)] = False
            return seen

        everything = reach()
        assert all(everything.values()), everything
        lab.partition([1], [2, 3])
        cut = reach()
        assert cut == {
            **everything,
            ("1", 2): False,
            ("1", 3): False,
            ("2", 1): False,
            ("3", 1): False,
        }, cut
        lab.heal()
        assert reach() == everything
        lab.isolate(2)
        alone = reach()
        assert alone == {
            **everything,
            ("1", 2): False,
            ("3", 2): False,
            ("2", 1): False,
            ("2", 3): False,
            ("root", 2): False,
        }, alone
        assert lab.statistics().processes_running == 3
    assert all(listener.returncode is not None for listener in listeners)


def _host_of(addresses: dict[int, str], address: str) -> int:
    """The host number of ``address``."""
    return next(i for i, a in addresses.items() if a == address)
