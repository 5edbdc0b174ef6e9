"""``ballast node drain|repair|scrub`` and ``ballast status --wait-healthy`` against a fake
admin endpoint (a real HTTP server on loopback answering scripted documents), and the pure
logic that judges a cluster's health from status documents.

The same commands against a real deployment: ``tests/e2e/test_operator.py``.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from interfaces import cli
from interfaces.cli import HealthWatch, RepairSummary, main, summarize_repair
from interfaces.metrics import node_registry, render
from storage.repair import RepairStatistics

#: One scripted answer: HTTP status and raw body (a dict is sent as JSON).
Answer = tuple[int, bytes | dict[str, Any]]


@dataclass
class FakeAdmin:
    """Answers each ``(method, path)`` with its scripted answers in turn (the last repeats)
    and records every request as ``(method, path, JSON body or None)``."""

    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def address(self) -> str:
        """The ``--admin`` value that reaches this endpoint."""
        return f"127.0.0.1:{self.port}"

    def script(self, method: str, path: str, *answers: Answer) -> None:
        """Set the answers to ``method path``."""
        self.answers[(method, path)] = list(answers)

    def answer(self, method: str, path: str, body: bytes) -> Answer:
        """The next answer to a request (404 when nothing is scripted)."""
        self.requests.append((method, path, json.loads(body) if body else None))
        queue = self.answers.get((method, path))
        if not queue:
            return 404, {"error": f"no such endpoint {path}"}
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(fake: FakeAdmin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = fake.answer(self.command, self.path, self.rfile.read(length))
            raw = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    return Handler


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdmin]:
    """A fake node admin endpoint; the CLI polls it without pausing."""
    monkeypatch.setattr(cli, "POLL_INTERVAL", 0.0)
    fake = FakeAdmin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _one_error_line(result: Result) -> str:
    """The command failed with exactly one ``Error: ...`` line and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def _figures(**values: Any) -> dict[str, Any]:
    """A RepairStatistics document, zero but for ``values``."""
    document: dict[str, Any] = {name: 0 for name in RepairStatistics.__dataclass_fields__}
    document.update(draining=False, repair_rate=0.0, last_pass_seconds=0.0, repair_seconds=0.0)
    document.update(values)
    return document


def _drain(remaining: int, *, draining: bool = True, blocks: int = 0, **repair: Any) -> Answer:
    registers = remaining - blocks if remaining else 0
    return 200, {
        "draining": draining,
        "blocks": blocks,
        "registers": registers,
        "remaining": remaining if draining else 0,
        "repair": _figures(draining=draining, drain_remaining=remaining, **repair),
    }


# -- ballast node drain ---------------------------------------------------------------------


def test_drain_starts_and_returns(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(10, blocks=6))
    result = _run("node", "drain", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    assert admin.requests == [("POST", "/admin/node/drain", {"draining": True})]
    assert result.output == (
        "draining: 6 blocks and 4 registers to move off; follow it with: "
        f"ballast node drain --wait --admin {admin.address}\n"
    )


def test_drain_wait_counts_down_then_summarizes(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(10, blocks=6))
    admin.script("GET", "/admin/node/drain", _drain(7, blocks=4), _drain(2), _drain(0))
    result = _run("node", "drain", "--wait", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    assert [r[0] for r in admin.requests] == ["POST", "GET", "GET", "GET"]
    (line,) = result.output.splitlines()
    assert line.startswith("drain complete in 0 s: 6 blocks and 4 registers moved off;")


def test_drain_wait_draws_a_progress_bar(admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(cli, "_progress_console", lambda: terminal)
    admin.script("POST", "/admin/node/drain", _drain(10, blocks=6))
    admin.script("GET", "/admin/node/drain", _drain(5, failures=2), _drain(0))
    result = _run("node", "drain", "--wait", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    drawn = screen.getvalue()
    assert f"draining {admin.address}" in drawn
    assert "blocks and registers left" in drawn
    assert "2 failures" in drawn
    assert "drain complete" in result.output


def test_drain_wait_json_prints_the_last_document(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(3, blocks=3))
    admin.script("GET", "/admin/node/drain", _drain(0, blocks=0, copies_made=3))
    result = _run("node", "drain", "--wait", "--json", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["draining"], document["remaining"]) == (True, 0)
    assert document["repair"]["copies_made"] == 3


def test_drain_of_an_empty_node(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(0))
    for extra in ((), ("--wait",)):
        result = _run("node", "drain", *extra, "--admin", admin.address)
        assert result.exit_code == 0, result.output
        assert result.output == "drain complete: the node holds nothing and can be removed\n"


def test_drain_cancel(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(9, draining=False, blocks=5))
    result = _run("node", "drain", "--cancel", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    assert admin.requests == [("POST", "/admin/node/drain", {"draining": False})]
    assert "drain cancelled: the node takes new data again" in result.output


def test_drain_wait_times_out(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(5))
    admin.script("GET", "/admin/node/drain", _drain(5))
    result = _run("node", "drain", "--wait", "--timeout", "0.2", "--admin", admin.address)
    line = _one_error_line(result)
    assert "is not done after 0.2 s: 5 blocks and registers left" in line


def test_drain_cancelled_elsewhere_while_waiting(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(5))
    admin.script("GET", "/admin/node/drain", _drain(0, draining=False))
    line = _one_error_line(_run("node", "drain", "--wait", "--admin", admin.address))
    assert "was cancelled" in line


def test_drain_failing_while_waiting(admin: FakeAdmin) -> None:
    admin.script("POST", "/admin/node/drain", _drain(5))
    admin.script("GET", "/admin/node/drain", (500, {"error": "the silo is closed"}))
    line = _one_error_line(_run("node", "drain", "--wait", "--admin", admin.address))
    assert line == "Error: the silo is closed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cancel", "--wait"], "--cancel and --wait cannot be combined"),
        (["--timeout", "5"], "--timeout applies only with --wait"),
    ],
)
def test_drain_bad_options(admin: FakeAdmin, args: list[str], message: str) -> None:
    line = _one_error_line(_run("node", "drain", *args, "--admin", admin.address))
    assert message in line
    assert admin.requests == []


# -- ballast node repair / scrub --------------------------------------------------------------


def test_repair(admin: FakeAdmin) -> None:
    figures = _figures(under_target=3, bytes_to_move=2048, copies_made=7, failures=1)
    admin.script("POST", "/admin/node/repair", (200, {"found_work": True, "repair": figures}))
    result = _run("node", "repair", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    assert admin.requests == [("POST", "/admin/node/repair", {})]
    first, second = result.output.splitlines()
    assert first == (
        "repair pass done: it copied, rebuilt or moved data; "
        "3 blocks and registers were under target, 2.0 KiB to move"
    )
    assert "7 copies made" in second
    assert "1 failure" in second
    result = _run("node", "repair", "--json", "--admin", admin.address)
    assert json.loads(result.stdout)["repair"]["copies_made"] == 7


def test_scrub(admin: FakeAdmin) -> None:
    figures = _figures(scrub_passes=2, scrubbed_bytes=3 << 20, corrupt_found=2, corrupt_repaired=1)
    admin.script("POST", "/admin/node/scrub", (200, {"corrupt": 2, "repair": figures}))
    result = _run("node", "scrub", "--timeout", "5", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert first.startswith("scrub done: 2 corrupt records found; corrupt copies are replaced")
    assert second == (
        "since the node started: 2 scrubs, 3.0 MiB verified, 2 corrupt found, 1 healed"
    )


# -- error paths: each is one line and exit status 1 ----------------------------------------

COMMANDS = {
    "drain": (["node", "drain"], ("POST", "/admin/node/drain")),
    "drain --wait": (["node", "drain", "--wait"], ("POST", "/admin/node/drain")),
    "drain --cancel": (["node", "drain", "--cancel"], ("POST", "/admin/node/drain")),
    "repair": (["node", "repair"], ("POST", "/admin/node/repair")),
    "scrub": (["node", "scrub"], ("POST", "/admin/node/scrub")),
    "status --wait-healthy": (["status", "--wait-healthy"], ("GET", "/status")),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unreachable_admin_is_one_error_line(command: str, closed_port: int) -> None:
    args, _ = COMMANDS[command]
    line = _one_error_line(_run(*args, "--admin", f"127.0.0.1:{closed_port}"))
    assert "cannot reach the node's admin endpoint" in line
    assert f"127.0.0.1:{closed_port}" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((200, b"<html>not json</html>"), "answered HTTP 200 without a JSON object"),
        ((200, b"[1, 2]"), "answered HTTP 200 without a JSON object"),
        ((403, {"error": "admin operations are allowed from loopback"}), "allowed from loopback"),
        ((404, {"error": "no such node operation"}), "no such node operation"),
        ((500, {"error": "the silo is closed"}), "the silo is closed"),
        ((502, b"Bad Gateway"), "answered HTTP 502 without a JSON object"),
        ((503, {}), "HTTP 503"),
    ],
)
def test_admin_errors_are_one_error_line(
    admin: FakeAdmin, command: str, answer: Answer, message: str
) -> None:
    args, (method, path) = COMMANDS[command]
    admin.script(method, path, answer)
    line = _one_error_line(_run(*args, "--admin", admin.address))
    assert message in line


@pytest.mark.parametrize("command", ["drain", "drain --wait", "repair", "scrub"])
@pytest.mark.parametrize(
    "document",
    [
        {},
        {"draining": "yes", "blocks": 1, "registers": 0, "remaining": 1},
        {"draining": True, "blocks": -1, "registers": 0, "remaining": 1},
        {"found_work": 1, "corrupt": True, "repair": []},
    ],
)
def test_unexpected_documents_are_one_error_line(
    admin: FakeAdmin, command: str, document: dict[str, Any]
) -> None:
    args, (method, path) = COMMANDS[command]
    admin.script(method, path, (200, document))
    line = _one_error_line(_run(*args, "--admin", admin.address))
    assert "the node answered an unexpected" in line


@pytest.mark.parametrize("path", [["node", "drain"], ["node", "repair"], ["node", "scrub"]])
def test_help(path: list[str]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "--admin" in result.output


# -- ballast status: repair columns, summary and --wait-healthy -------------------------------


def _member(
    address: str, state: str = "alive", *, draining: bool = False, **repair: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {"id": address.replace(".", "").replace(":", "") * 3, "state": state}
    row["address"] = address
    if repair.pop("silent", False):
        return row
    row.update(draining=draining, blocks=4, registers=2, capacity_bytes=1 << 30, used_bytes=0)
    row["repair"] = _figures(draining=draining, **repair)
    return row


def _status(*members: dict[str, Any]) -> Answer:
    return 200, {"node": {"id": members[0]["id"], "network": "prod"}, "members": list(members)}


def test_status_shows_repair_columns_and_summary(admin: FakeAdmin) -> None:
    admin.script(
        "GET",
        "/status",
        _status(
            _member("10.0.0.1:4100", draining=True, under_target=2, drain_remaining=8),
            _member("10.0.0.2:4100", under_target=5, bytes_to_move=1 << 20, repair_rate=2048.0),
            _member("10.0.0.3:4100", "suspected", silent=True),
            _member("10.0.0.4:4100", "evicted", silent=True),
        ),
    )
    result = _run("status", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    rows = {
        match[0]: line
        for line in result.output.splitlines()
        if line.startswith("  ") and (match := re.search(r"10\.0\.0\.\d:4100", line))
    }
    assert "alive (draining)" in rows["10.0.0.1:4100"]
    assert "1.0 MiB" in rows["10.0.0.2:4100"]
    assert "2.0 KiB/s" in rows["10.0.0.2:4100"]
    assert "under target" in result.output
    assert (
        "repair: 7 blocks and registers under target, 1.0 MiB to move; "
        "draining: 10.0.0.1:4100 (8 left)"
    ) in result.output
    result = _run("status", "--json", "--admin", admin.address)
    assert json.loads(result.stdout)["members"][0]["repair"]["drain_remaining"] == 8


def test_status_wait_healthy(admin: FakeAdmin) -> None:
    admin.script(
        "GET",
        "/status",
        _status(_member("10.0.0.1:4100", passes=1), _member("10.0.0.2:4100", "suspected")),
        _status(_member("10.0.0.1:4100", passes=1), _member("10.0.0.2:4100", "evicted")),
        _status(_member("10.0.0.1:4100", passes=2, under_target=4)),
        _status(_member("10.0.0.1:4100", passes=3)),
    )
    result = _run("status", "--wait-healthy", "--admin", admin.address)
    assert result.exit_code == 0, result.output
    assert len(admin.requests) == 4
    assert "healthy after 0 s: nothing under target, no member suspected" in result.output
    assert "1/1 members alive" in result.output


def test_status_wait_healthy_times_out(admin: FakeAdmin) -> None:
    admin.script("GET", "/status", _status(_member("10.0.0.1:4100", under_target=3)))
    result = _run("status", "--wait-healthy", "--timeout", "0.2", "--admin", admin.address)
    assert "not healthy after 0.2 s: 3 under target" in _one_error_line(result)


def test_status_timeout_needs_wait_healthy(admin: FakeAdmin) -> None:
    line = _one_error_line(_run("status", "--timeout", "3", "--admin", admin.address))
    assert "--timeout applies only with --wait-healthy" in line


# -- the pure parts -------------------------------------------------------------------------


def _document(*members: dict[str, Any]) -> dict[str, Any]:
    return _status(*members)[1]  # type: ignore[return-value]


def test_summarize_repair() -> None:
    summary = summarize_repair(
        _document(
            _member("a:1", under_target=2, bytes_to_move=10),
            _member("b:1", draining=True, under_target=1, drain_remaining=6),
            _member("c:1", draining=True),
            _member("d:1", "suspected", under_target=1),
            _member("e:1", "suspected", silent=True),
            _member("f:1", silent=True),
            _member("g:1", "evicted", under_target=100),
        )
    )
    assert summary == RepairSummary(
        under_target=4,
        bytes_to_move=10,
        suspected=2,
        silent=1,
        draining=(("b:1", 6), ("c:1", 0)),
    )
    assert not summary.healthy
    assert summarize_repair({}).healthy
    assert summarize_repair({"members": "garbage"}) == RepairSummary()


def test_health_watch_waits_for_a_pass_after_a_member_change() -> None:
    watch = HealthWatch()
    assert watch.observe(_document(_member("a:1", passes=5), _member("b:1", passes=5))).healthy
    # b is evicted: a's figures still describe a pass that counted b as a target.
    evicted = watch.observe(_document(_member("a:1", passes=5), _member("b:1", "evicted")))
    assert (evicted.stale, evicted.healthy) == (1, False)
    assert watch.observe(_document(_member("a:1", passes=5), _member("b:1", "evicted"))).stale
    after = watch.observe(_document(_member("a:1", passes=6), _member("b:1", "evicted")))
    assert (after.stale, after.healthy) == (0, True)
    # A restarted member counts again from zero: a changed counter is a new pass too.
    watch.observe(_document(_member("a:1", passes=6), _member("c:1", passes=9)))
    restarted = watch.observe(_document(_member("a:1", passes=7), _member("c:1", passes=1)))
    assert restarted.healthy


# -- metrics --------------------------------------------------------------------------------


def test_repair_statistics_are_exported_with_bools_and_floats() -> None:
    snapshot = RepairStatistics(**_figures(draining=True, repair_rate=1.5, under_target=3))
    text = render(node_registry("n1", [("repair", lambda: snapshot)])).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["ballast_repair_draining"].samples[0].value == 1.0
    assert families["ballast_repair_repair_rate"].samples[0].value == 1.5
    assert families["ballast_repair_under_target"].samples[0].value == 3.0
    assert families["ballast_repair_under_target"].samples[0].labels == {"node": "n1"}
