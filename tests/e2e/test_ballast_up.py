"""``ballast up`` as a user runs it: a subprocess that serves S3, stops on SIGTERM, and restarts
with its data intact."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

READY_TIMEOUT = 60.0


@contextmanager
def ballast_up(data: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start ``ballast up --json`` and yield the process and its endpoints document."""
    process = subprocess.Popen(
        [sys.executable, "-m", "interfaces.cli", "up", "--json", "--data", str(data),
         "--s3", "127.0.0.1:0", "--admin", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        line = ""
        while time.monotonic() < deadline and not line:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        if not line:
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"ballast up did not report ready; stderr:\n{err}")
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def _s3(endpoints: dict[str, Any]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoints["s3_endpoint"],
        aws_access_key_id=endpoints["access_key"],
        aws_secret_access_key=endpoints["secret_key"],
        region_name=endpoints["region"],
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def test_up_serves_s3_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "ballast"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with ballast_up(data) as (process, endpoints):
        assert len(endpoints["nodes"]) == 3
        client = _s3(endpoints)
        client.create_bucket(Bucket="photos")
        client.put_object(Bucket="photos", Key="a/b c+d.bin", Body=payload)
        assert client.get_object(Bucket="photos", Key="a/b c+d.bin")["Body"].read() == payload
        client.close()
        code, err = _stop(process)
        assert code == 0, err
    with ballast_up(data) as (process, endpoints):
        client = _s3(endpoints)
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["photos"]
        assert client.get_object(Bucket="photos", Key="a/b c+d.bin")["Body"].read() == payload
        client.close()
        code, err = _stop(process)
        assert code == 0, err


def test_busy_port_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "interfaces.cli", "up", "--data", str(tmp_path / "d"),
             "--s3", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in done.stderr


def test_unwritable_data_directory_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "up", "--data", str(blocker / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error:")
    assert "not writable" in done.stderr
    assert "Traceback" not in done.stderr


def test_nodes_stop_when_up_is_killed(tmp_path: Path) -> None:
    """Each node runs in a process of its own; killing ``ballast up`` outright (no chance to
    stop them) still stops them, so the same data directory starts again at once."""
    data = tmp_path / "ballast"
    with ballast_up(data) as (process, endpoints):
        client = _s3(endpoints)
        client.create_bucket(Bucket="kept")
        client.put_object(Bucket="kept", Key="k", Body=b"acknowledged")
        client.close()
        process.kill()
        process.communicate(timeout=30)
    with ballast_up(data) as (process, endpoints):
        client = _s3(endpoints)
        assert client.get_object(Bucket="kept", Key="k")["Body"].read() == b"acknowledged"
        client.close()
        code, err = _stop(process)
        assert code == 0, err
