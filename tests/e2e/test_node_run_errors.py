"""``ballast node run`` refuses bad set-ups with one clear error line and a non-zero status."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "interfaces.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _one_error_line(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in done.stderr


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """A node directory with a key, network and passport, plus its config file."""
    assert _run("network", "create", "t", "--dir", "net", cwd=tmp_path).returncode == 0
    data = tmp_path / "node"
    assert _run("node", "init", "--data", str(data), cwd=tmp_path).returncode == 0
    issued = _run(
        "passport", "issue", str(data / "node.pub"), "--network", "net/t.network",
        "--owner-key", "net/owner.key", "--out", str(data / "passport"), cwd=tmp_path,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    (data / "network").write_bytes((tmp_path / "net" / "t.network").read_bytes())
    return data


def _config(data: Path, listen: str = "127.0.0.1:0") -> Path:
    path = data / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{data}"\nlisten = "{listen}"\n')
    return path


def test_missing_passport(node_dir: Path) -> None:
    (node_dir / "passport").unlink()
    done = _run("node", "run", "--config", str(_config(node_dir)), cwd=node_dir)
    _one_error_line(done, "missing passport")


def test_passport_of_another_node(node_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert _run("node", "init", "--data", str(other), cwd=tmp_path).returncode == 0
    (node_dir / "node.key").write_bytes((other / "node.key").read_bytes())
    done = _run("node", "run", "--config", str(_config(node_dir)), cwd=node_dir)
    _one_error_line(done, "another node key")


def test_bad_config_file(node_dir: Path) -> None:
    path = node_dir / "node.toml"
    path.write_text('[node]\ndata_dir = "x"\nlisten = "nowhere"\n')
    _one_error_line(_run("node", "run", "--config", str(path), cwd=node_dir), "[node] listen")


def test_conflicting_port(node_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run("node", "run", "--config", str(_config(node_dir, f"127.0.0.1:{port}")),
                    cwd=node_dir)  # fmt: skip
    _one_error_line(done, f"127.0.0.1:{port}")
