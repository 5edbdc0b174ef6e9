"""Real S3 clients against ``ballast up`` (three nodes, one process), as a user runs them.

* the AWS CLI: ``aws s3 sync`` of a tree of 2000 small files up to a bucket and back down to
  another directory, then ``diff -r``; a second sync must find nothing to do;
* s3cmd: make a bucket, put, list, get (and a multipart put);
* rclone: make a bucket, copy, list, cat/copy back (and a multipart copy).

Each client is configured through temporary files and environment variables only (no global
configuration is read or written). A missing client fails its test: ``make test`` installs
them (Debian's ``awscli``, ``s3cmd`` and ``rclone``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

READY_TIMEOUT = 60.0
CLIENT_TIMEOUT = 300.0
MiB = 1024 * 1024
#: Files in the tree ``aws s3 sync`` copies up and down.
SYNC_FILES = 2000


@dataclass(frozen=True)
class Endpoint:
    """The S3 endpoint ``ballast up`` printed."""

    url: str
    host: str
    port: int
    access_key: str
    secret_key: str
    region: str


@pytest.fixture(scope="module")
def ballast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """``ballast up --json`` as a subprocess (3 nodes); SIGTERM and a clean exit after."""
    root = tmp_path_factory.mktemp("ballast-up")
    with (root / "stderr.log").open("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli", "up", "--json", "--data", str(root / "data"),
             "--s3", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = ""
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline and not line and process.poll() is None:
                line = process.stdout.readline()
            if not line:
                stderr.seek(0)
                pytest.fail(f"ballast up did not report ready; stderr:\n{stderr.read()[-4000:]}")
            document = json.loads(line)
            url = document["s3_endpoint"]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            yield Endpoint(
                url=url,
                host=host,
                port=int(port),
                access_key=document["access_key"],
                secret_key=document["secret_key"],
                region=document["region"],
            )
            process.terminate()
            process.communicate(timeout=60)
            stderr.seek(0)
            assert process.returncode == 0, stderr.read()[-4000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)


@pytest.fixture
def boto(ballast: Endpoint) -> Iterator[Any]:
    """A boto3 client, to check what the other clients did."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=ballast.url,
        aws_access_key_id=ballast.access_key,
        aws_secret_access_key=ballast.secret_key,
        region_name=ballast.region,
    )
    yield client
    client.close()


def _require(tool: str) -> str:
    """The path of ``tool``; the test fails (never skips) when it is not installed."""
    path = shutil.which(tool)
    assert path, f"{tool} is missing: install Debian's {'awscli' if tool == 'aws' else tool}"
    return path


def _without_aws(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less the ``AWS_*`` variables (an ``AWS_CA_BUNDLE`` breaks rclone on http)."""
    return {k: v for k, v in environ.items() if not k.startswith("AWS_")}


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _tree(root: Path, count: int, seed: int) -> int:
    """Write ``count`` small files (0–6 KiB) in nested directories; return the byte total."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        directory = root / f"d{i % 10}" / f"sub {i % 7}" / ("deep" if i % 3 == 0 else "")
        directory.mkdir(parents=True, exist_ok=True)
        size = 0 if i % 250 == 0 else rng.randrange(1, 6 * 1024)
        name = f"file-{i:04d}{'+é' if i % 97 == 0 else ''}.dat"
        (directory / name).write_bytes(rng.randbytes(size))
        total += size
    return total


def test_aws_cli_sync_two_thousand_files(ballast: Endpoint, boto: Any, tmp_path: Path) -> None:
    """``aws s3 sync`` up and back down: the trees are identical; a re-sync does nothing."""
    aws = _require("aws")
    env = {
        **_without_aws(os.environ),
        "AWS_ACCESS_KEY_ID": ballast.access_key,
        "AWS_SECRET_ACCESS_KEY": ballast.secret_key,
        "AWS_DEFAULT_REGION": ballast.region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    source, target = tmp_path / "source", tmp_path / "target"
    total = _tree(source, SYNC_FILES, seed=7)
    cli = [aws, "--endpoint-url", ballast.url]
    _run([*cli, "s3", "mb", "s3://synced"], env)
    _run([*cli, "s3", "sync", "--only-show-errors", str(source), "s3://synced/tree"], env)
    pages = boto.get_paginator("list_objects_v2").paginate(Bucket="synced", Prefix="tree/")
    listed = [o for page in pages for o in page.get("Contents", [])]
    assert len(listed) == SYNC_FILES
    assert sum(o["Size"] for o in listed) == total
    # Nothing changed locally, so a second sync uploads nothing (sizes and times match).
    assert _run([*cli, "s3", "sync", str(source), "s3://synced/tree"], env).strip() == ""
    _run([*cli, "s3", "sync", "--only-show-errors", "s3://synced/tree", str(target)], env)
    diff = subprocess.run(
        ["diff", "-r", str(source), str(target)], capture_output=True, text=True, check=False
    )
    assert diff.returncode == 0, diff.stdout[-3000:] + diff.stderr[-1000:]
    # No clean-up: the bucket goes with this module's cluster (2000 deletes would take long).


def test_s3cmd_put_list_get(ballast: Endpoint, boto: Any, tmp_path: Path) -> None:
    """s3cmd (its own SigV4 and XML parsing): mb, put (single and multipart), ls, get."""
    s3cmd = _require("s3cmd")
    config = tmp_path / "s3cfg"
    address = f"{ballast.host}:{ballast.port}"
    config.write_text(
        "[default]\n"
        f"access_key = {ballast.access_key}\n"
        f"secret_key = {ballast.secret_key}\n"
        f"host_base = {address}\n"
        f"host_bucket = {address}\n"
        f"bucket_location = {ballast.region}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        "multipart_chunk_size_mb = 5\n"
    )
    env = {**_without_aws(os.environ), "HOME": str(tmp_path)}
    cmd = [s3cmd, "-c", str(config), "--no-progress"]
    small = tmp_path / "small file.txt"
    small.write_bytes(b"hello from s3cmd\n")
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(8).randbytes(12 * MiB + 5))
    _run([*cmd, "mb", "s3://s3cmd-bucket"], env)
    _run([*cmd, "put", str(small), "s3://s3cmd-bucket/docs/small file.txt"], env)
    _run([*cmd, "put", str(big), "s3://s3cmd-bucket/big.bin"], env)
    listing = _run([*cmd, "ls", "--recursive", "s3://s3cmd-bucket"], env)
    assert "s3://s3cmd-bucket/docs/small file.txt" in listing
    assert "s3://s3cmd-bucket/big.bin" in listing
    assert "DIR" in _run([*cmd, "ls", "s3://s3cmd-bucket"], env)
    assert "s3cmd-bucket" in _run([*cmd, "ls"], env)
    _run([*cmd, "get", "s3://s3cmd-bucket/docs/small file.txt", str(tmp_path / "a.txt")], env)
    _run([*cmd, "get", "s3://s3cmd-bucket/big.bin", str(tmp_path / "b.bin")], env)
    assert (tmp_path / "a.txt").read_bytes() == small.read_bytes()
    assert (tmp_path / "b.bin").read_bytes() == big.read_bytes()
    # The 12 MiB file went up in 5 MiB parts: a multipart ETag.
    assert boto.head_object(Bucket="s3cmd-bucket", Key="big.bin")["ETag"].endswith('-3"')
    _run([*cmd, "del", "--recursive", "--force", "s3://s3cmd-bucket"], env)
    _run([*cmd, "rb", "s3://s3cmd-bucket"], env)


def test_rclone_put_list_get(ballast: Endpoint, boto: Any, tmp_path: Path) -> None:
    """rclone (a Go S3 SDK): mkdir, copy (single and multipart), ls, cat, copy back."""
    rclone = _require("rclone")
    config = tmp_path / "rclone.conf"
    config.write_text("")
    env = {
        **_without_aws(os.environ),
        "HOME": str(tmp_path),
        "RCLONE_CONFIG": str(config),
        "RCLONE_CONFIG_BALLAST_TYPE": "s3",
        "RCLONE_CONFIG_BALLAST_PROVIDER": "Other",
        "RCLONE_CONFIG_BALLAST_ENV_AUTH": "false",
        "RCLONE_CONFIG_BALLAST_ACCESS_KEY_ID": ballast.access_key,
        "RCLONE_CONFIG_BALLAST_SECRET_ACCESS_KEY": ballast.secret_key,
        "RCLONE_CONFIG_BALLAST_ENDPOINT": ballast.url,
        "RCLONE_CONFIG_BALLAST_REGION": ballast.region,
        "RCLONE_CONFIG_BALLAST_FORCE_PATH_STYLE": "true",
    }
    cmd = [rclone, "--retries", "1", "--low-level-retries", "1"]
    local = tmp_path / "local"
    (local / "nested").mkdir(parents=True)
    (local / "one.txt").write_bytes(b"hello from rclone\n")
    (local / "nested" / "two.bin").write_bytes(random.Random(9).randbytes(64 * 1024))
    (local / "big.bin").write_bytes(random.Random(10).randbytes(11 * MiB))
    _run([*cmd, "mkdir", "ballast:rclone-bucket"], env)
    _run(
        [*cmd, "copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(local),
         "ballast:rclone-bucket/data"],
        env,
    )  # fmt: skip
    listing = _run([*cmd, "lsf", "--recursive", "ballast:rclone-bucket/data"], env).split()
    assert sorted(listing) == ["big.bin", "nested/", "nested/two.bin", "one.txt"]
    sizes = _run([*cmd, "ls", "ballast:rclone-bucket"], env)
    assert f"{11 * MiB} data/big.bin" in sizes
    assert _run([*cmd, "cat", "ballast:rclone-bucket/data/one.txt"], env) == "hello from rclone\n"
    back = tmp_path / "back"
    _run([*cmd, "copy", "ballast:rclone-bucket/data", str(back)], env)
    diff = subprocess.run(["diff", "-r", str(local), str(back)], capture_output=True, check=False)
    assert diff.returncode == 0, diff.stdout[-3000:]
    assert boto.head_object(Bucket="rclone-bucket", Key="data/big.bin")["ETag"].endswith('-3"')
    # rclone's own integrity check: sizes and (non-multipart) MD5s against the listing.
    _run([*cmd, "check", str(local), "ballast:rclone-bucket/data"], env)
    _run([*cmd, "purge", "ballast:rclone-bucket"], env)
    assert "rclone-bucket" not in [b["Name"] for b in boto.list_buckets()["Buckets"]]
