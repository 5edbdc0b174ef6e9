"""The ``ballast`` command's basic contract: version, help, and the native-kernel report."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

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
