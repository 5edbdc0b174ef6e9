"""The ``ballast`` command's basic contract: version, help, and the native-kernel report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dht.identity import load_identity, load_network, load_passport
from interfaces.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("ballast, version ")


def test_unknown_command_is_an_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_native_info_honours_the_portable_switch() -> None:
    """The environment variable forces the portable kernel in a fresh process."""
    env = {**os.environ, "BALLAST_NATIVE_PORTABLE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "native-info"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "erasure-coding kernel: portable" in out


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_network_node_passport_flow(tmp_path: Path) -> None:
    net, node_dir = tmp_path / "net", tmp_path / "n1"
    assert (
        _invoke("network", "create", "demo", "--redundancy", "4+2", "--dir", str(net)).exit_code
        == 0
    )
    assert (net / "owner.key").stat().st_mode & 0o777 == 0o600
    assert _invoke("node", "init", "--data", str(node_dir)).exit_code == 0
    result = _invoke(
        "passport", "issue", str(node_dir / "node.pub"),
        "--network", str(net / "demo.network"),
        "--owner-key", str(net / "owner.key"),
        "--out", str(node_dir / "passport"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    network = load_network(net / "demo.network")
    identity = load_identity(node_dir / "node.key")
    issued = load_passport(node_dir / "passport", network, identity)
    assert issued.role == "storage"
    assert dict(network.redundancy) == {"data": 4, "parity": 2}
    # Re-running init keeps the same key.
    again = _invoke("node", "init", "--data", str(node_dir))
    assert identity.public_key.hex() in again.output


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("net", ["network", "create", "demo", "--dir", "{net}"], "already exists"),
        ("net", ["passport", "issue", "abc", "--network", "{net}/demo.network",
                 "--owner-key", "{net}/owner.key", "--out", "{tmp}/p"], "neither a 64-hex"),
        ("loose", ["passport", "issue", "ab" * 32, "--network", "{net}/demo.network",
                   "--owner-key", "{net}/owner.key", "--out", "{tmp}/p"], "readable by others"),
        ("garbage", ["network", "show", "{net}/demo.network"], "network file"),
        ("net", ["passport", "issue", "ab" * 32, "--network", "{tmp}/missing",
                 "--owner-key", "{net}/owner.key", "--out", "{tmp}/p"], "cannot read"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    net = tmp_path / "net"
    _invoke("network", "create", "demo", "--dir", str(net))
    if setup == "loose":
        (net / "owner.key").chmod(0o644)
    if setup == "garbage":
        (net / "demo.network").write_bytes(b"\x93garbage")
    argv = [a.format(net=net, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert message in lines[0]


def test_bad_redundancy_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["network", "create", "x", "--redundancy", "0+0", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "redundancy" in result.output
