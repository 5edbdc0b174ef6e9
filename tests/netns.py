"""Hosts in Linux network namespaces on one bridge, for multi-process cluster tests.

Theory of operation: a :class:`NetnsLab` creates one bridge in the root namespace (the
"gateway", ``10.200.<n>.1/24``) and, for each host ``i`` (1-based), a network namespace
joined to the bridge by a veth pair, with address ``10.200.<n>.(10 + i)``. The test process
stays in the root namespace and reaches every host over the bridge; programs started with
:meth:`NetnsLab.popen` run inside a host's namespace (``ip netns exec``).

Faults are routing faults: :meth:`NetnsLab.partition` and :meth:`NetnsLab.isolate` add
``blackhole`` routes inside the namespaces, so packets towards a cut-off peer are dropped
at the sender (new connections fail, established ones stall), while the root namespace keeps
reaching every host unless a host is isolated. :meth:`NetnsLab.heal` removes them all.

Names: every object of a lab starts with its prefix, by default ``bl<pid>_<n>`` (the pid in
base 36 and a per-process counter), which is short enough for 15-byte interface names and makes
labs of parallel or aborted runs distinct. On entry the lab deletes the leftovers of labs
whose process is dead (same naming scheme) and picks a ``/24`` that no interface of the root
namespace uses yet, under a file lock so concurrent labs never share a subnet.

Requirements: root and iproute2. Without them the lab fails the test (``pytest.fail``):
a missing prerequisite must show as a failure, never as a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest

__all__ = ["NetnsLab", "NetnsStatistics", "cleanup_stale_labs"]

_LOCK_FILE = "/tmp/ballast-netns.lock"
#: ``bl<pid36>_<counter>`` then ``b`` (bridge), ``h<i>`` (namespace, outer veth), ``n<i>``.
_AUTO_NAME = re.compile(r"^(bl([0-9a-z]+)_[0-9]+)(?:b|[hn][0-9]+)$")
_SUBNET_BASE = "10.200"
_counter = itertools.count()
_MAX_IFNAME = 15


def _base36(value: int) -> str:
    """Return ``value`` (non-negative) written in base 36, lower case."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
        if value == 0:
            return out


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` and return the finished process.

    Raises:
        RuntimeError: ``check`` is true and the command failed (its stderr is included).
    """
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _require_netns() -> None:
    """Fail the calling test unless namespaces can be made here (root, iproute2)."""
    if shutil.which("ip") is None:
        pytest.fail("network namespace tests need iproute2: the `ip` command is missing")
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root (ip netns add, bridges, veths)")


def _pid_alive(pid: int) -> bool:
    """Tell whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    """Return the names of all named network namespaces."""
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    """Return the names of all links of the root namespace."""
    done = _ip("-o", "link", "show", check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL every process still running inside ``namespace``."""
    done = _ip("netns", "pids", namespace, check=False)
    for token in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(token), signal.SIGKILL)


def _delete_prefix(prefix: str) -> None:
    """Delete the namespaces and links of the lab named ``prefix`` (and nothing else)."""
    own = re.compile(rf"^{re.escape(prefix)}(?:b|[hn][0-9]+)$")
    for namespace in _namespaces():
        if own.match(namespace):
            _kill_namespace_processes(namespace)
            _ip("netns", "delete", namespace, check=False)
    for link in _links():
        if own.match(link):
            _ip("link", "delete", link, check=False)


def cleanup_stale_labs() -> list[str]:
    """Delete the leftovers of labs whose creating process is gone.

    Only names of the automatic scheme (``bl<pid36>_<n>...``) are considered, and only
    when that pid no longer exists, so labs of concurrent runs are never touched.

    Returns:
        The prefixes that were cleaned up.
    """
    stale: set[str] = set()
    for name in [*_namespaces(), *_links()]:
        match = _AUTO_NAME.match(name)
        if match is not None and not _pid_alive(int(match.group(2), 36)):
            stale.add(match.group(1))
    for prefix in sorted(stale):
        _delete_prefix(prefix)
    return sorted(stale)


@dataclass(frozen=True)
class NetnsStatistics:
    """A snapshot of a lab: its hosts, running processes and active faults."""

    hosts: int
    subnet: str
    processes_started: int
    processes_running: int
    blackhole_routes: int


class NetnsLab:
    """Hosts in network namespaces on one bridge; the test process (root namespace) reaches all.

    Use as a context manager::

        with NetnsLab(3) as lab:
            proc = lab.popen(1, ["python", "-m", "http.server", "--bind", lab.host(1)])
            lab.partition([1], [2, 3])
            lab.heal()

    Leaving the block kills every process started in the lab (and anything else still
    running in its namespaces), then deletes the namespaces, veths and the bridge, also
    when the block raised.
    """

    def __init__(self, count: int, *, prefix: str | None = None) -> None:
        """Describe a lab of ``count`` hosts; nothing is created before ``__enter__``.

        Args:
            count: number of hosts (1..200).
            prefix: name prefix of the lab's namespaces and links (at most 10 characters);
                by default one derived from the pid and a per-process counter.
        """
        if not 1 <= count <= 200:
            raise ValueError(f"a lab holds 1..200 hosts, not {count}")
        if prefix is None:
            prefix = f"bl{_base36(os.getpid())}_{next(_counter)}"
        if len(prefix) + len("h") + len(str(count)) > _MAX_IFNAME or not re.fullmatch(
            r"[A-Za-z0-9_]+", prefix
        ):
            raise ValueError(f"lab prefix {prefix!r} is too long or has odd characters")
        self.count = count
        self.prefix = prefix
        self._subnet_index: int | None = None
        self._processes: list[subprocess.Popen[str]] = []
        self._blackholes: set[tuple[int, str]] = set()
        self._entered = False

    # -- naming and addresses ----------------------------------------------------------

    def namespace(self, i: int) -> str:
        """Return the name of host ``i``'s network namespace."""
        self._check_host(i)
        return f"{self.prefix}h{i}"

    @property
    def bridge(self) -> str:
        """The name of the lab's bridge in the root namespace."""
        return f"{self.prefix}b"

    @property
    def subnet(self) -> str:
        """The lab's IPv4 subnet in CIDR notation."""
        return f"{_SUBNET_BASE}.{self._index()}.0/24"

    @property
    def gateway(self) -> str:
        """The bridge IP (root namespace side)."""
        return f"{_SUBNET_BASE}.{self._index()}.1"

    def host(self, i: int) -> str:
        """Return the IP address of host ``i`` (1-based)."""
        self._check_host(i)
        return f"{_SUBNET_BASE}.{self._index()}.{10 + i}"

    def _index(self) -> int:
        if self._subnet_index is None:
            raise RuntimeError("the lab has no subnet before it is entered")
        return self._subnet_index

    def _check_host(self, i: int) -> None:
        if not 1 <= i <= self.count:
            raise ValueError(f"host {i} is not in 1..{self.count}")

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        """Create the bridge, namespaces and veths (failing the test if impossible)."""
        _require_netns()
        if self._entered:
            raise RuntimeError("a NetnsLab can be entered only once")
        self._entered = True
        try:
            with open(_LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                cleanup_stale_labs()
                _delete_prefix(self.prefix)
                self._subnet_index = self._free_subnet()
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            for i in range(1, self.count + 1):
                self._add_host(i)
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Kill the lab's processes and delete everything it created."""
        self._teardown()

    def _free_subnet(self) -> int:
        """Pick a ``10.200.<n>.0/24`` that no root-namespace address uses (lock held)."""
        done = _ip("-o", "-4", "addr", "show", check=False)
        used = {int(m.group(1)) for m in re.finditer(r"inet 10\.200\.(\d+)\.", done.stdout)}
        for index in range(1, 255):
            if index not in used:
                return index
        raise RuntimeError("no free /24 left in 10.200.0.0/16 for another lab")

    def _add_host(self, i: int) -> None:
        namespace = self.namespace(i)
        outer, inner = f"{self.prefix}h{i}", f"{self.prefix}n{i}"
        _ip("netns", "add", namespace)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", namespace)
        _ip("link", "set", outer, "master", self.bridge, "up")
        in_ns = ("-n", namespace)
        _ip(*in_ns, "link", "set", "lo", "up")
        _ip(*in_ns, "link", "set", inner, "name", "eth0")
        _ip(*in_ns, "addr", "add", f"{self.host(i)}/24", "dev", "eth0")
        _ip(*in_ns, "link", "set", "eth0", "up")
        _ip(*in_ns, "route", "add", "default", "via", self.gateway)

    def _teardown(self) -> None:
        for process in self._processes:
            self._stop_process(process)
        self._processes.clear()
        self._blackholes.clear()
        _delete_prefix(self.prefix)

    @staticmethod
    def _stop_process(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    # -- processes ---------------------------------------------------------------------

    def _command(self, i: int, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside host ``i``'s namespace; the lab kills it on teardown.

        The process gets its own session (so teardown can kill its whole process group)
        and text-mode pipes unless ``kwargs`` say otherwise; ``kwargs`` go to
        :class:`subprocess.Popen`. The caller should ``wait()`` a process it stops itself.
        """
        if not self._entered:
            raise RuntimeError("enter the lab before starting processes in it")
        kwargs.setdefault("text", True)
        kwargs.setdefault("start_new_session", True)
        process: subprocess.Popen[str] = subprocess.Popen(self._command(i, argv), **kwargs)
        self._processes.append(process)
        return process

    def run(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside host ``i``'s namespace.

        Output is captured as text unless ``kwargs`` redirect it; ``kwargs`` go to
        :func:`subprocess.run` (``check`` defaults to false, as there).
        """
        if not self._entered:
            raise RuntimeError("enter the lab before running commands in it")
        kwargs.setdefault("text", True)
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        return subprocess.run(self._command(i, argv), **kwargs)

    # -- faults ------------------------------------------------------------------------

    def _blackhole(self, i: int, address: str) -> None:
        if (i, address) in self._blackholes:
            return
        _ip("-n", self.namespace(i), "route", "add", "blackhole", f"{address}/32")
        self._blackholes.add((i, address))

    def partition(self, *groups: Sequence[int]) -> None:
        """Cut the hosts into ``groups``: hosts of different groups cannot reach each other.

        Hosts named in no group are left alone. The root namespace still reaches everyone.
        Partitions add up; :meth:`heal` removes them all.
        """
        seen: dict[int, int] = {}
        for number, group in enumerate(groups):
            for i in group:
                self._check_host(i)
                if i in seen:
                    raise ValueError(f"host {i} is in two groups")
                seen[i] = number
        for a, group_a in seen.items():
            for b, group_b in seen.items():
                if group_a != group_b:
                    self._blackhole(a, self.host(b))

    def isolate(self, i: int) -> None:
        """Cut host ``i`` off from everyone, the root namespace included, both ways."""
        self._check_host(i)
        for other in range(1, self.count + 1):
            if other != i:
                self._blackhole(i, self.host(other))
                self._blackhole(other, self.host(i))
        self._blackhole(i, self.gateway)

    def heal(self) -> None:
        """Remove every partition and isolation."""
        for i, address in sorted(self._blackholes):
            _ip("-n", self.namespace(i), "route", "del", "blackhole", f"{address}/32")
        self._blackholes.clear()

    # -- introspection -----------------------------------------------------------------

    def processes(self) -> Iterator[subprocess.Popen[str]]:
        """Iterate over the processes started with :meth:`popen` (running or not)."""
        return iter(list(self._processes))

    def statistics(self) -> NetnsStatistics:
        """Return a snapshot of the lab's hosts, processes and faults."""
        return NetnsStatistics(
            hosts=self.count,
            subnet=self.subnet,
            processes_started=len(self._processes),
            processes_running=sum(1 for p in self._processes if p.poll() is None),
            blackhole_routes=len(self._blackholes),
        )
