"""Node configuration files: every mistake is a ConfigError naming the file and key."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dht.ids import Address
from interfaces.config import (
    ConfigError,
    load_config,
    parse_address,
    parse_duration,
    parse_size,
)

FULL = """
[node]
data_dir = "/var/lib/ballast"
listen = "0.0.0.0:4100"
advertise = "10.0.0.5:4100"
capacity = "2GiB"
bootstrap = ["10.0.0.6:4100", "[fd00::1]:4100"]

[membership]
eviction_delay = "45s"

[repair]
interval = "10s"
bandwidth = "32MiB"
scrub_interval = "12h"
scrub_rate = "4MiB"
tombstone_grace = "2h"

[admin]
listen = "127.0.0.1:9100"

[s3]
listen = "127.0.0.1:9000"
gateway_key = "/etc/ballast/gateway.key"
incomplete_upload_expiry = "48h"
lifecycle_interval = "15m"
region = "eu-west-3"
domains = ["S3.Example.COM.", "localhost"]
"""


def test_full_config(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.data_dir == Path("/var/lib/ballast")
    assert config.listen == Address("0.0.0.0", 4100)
    assert config.advertise == Address("10.0.0.5", 4100)
    assert config.capacity_bytes == 2 * 1024**3
    assert config.bootstrap == (Address("10.0.0.6", 4100), Address("fd00::1", 4100))
    assert config.eviction_delay == 45.0
    assert (config.repair_interval, config.repair_bandwidth) == (10.0, 32 * 1024**2)
    assert (config.scrub_interval, config.scrub_rate) == (12 * 3600.0, 4 * 1024**2)
    assert config.tombstone_grace == 2 * 3600.0
    assert config.s3_incomplete_upload_expiry == 48 * 3600.0
    assert config.s3_lifecycle_interval == 15 * 60.0
    assert config.admin_listen == Address("127.0.0.1", 9100)
    assert config.s3_listen == Address("127.0.0.1", 9000)
    assert config.silo_dir == Path("/var/lib/ballast/silo")
    assert config.gateway_key_file == Path("/etc/ballast/gateway.key")
    assert config.s3_region == "eu-west-3"
    assert config.s3_domains == ("s3.example.com", "localhost")


def test_minimal_config_uses_defaults(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\ndata_dir = "d"\n')
    config = load_config(path)
    assert config.listen == Address("127.0.0.1", 4100)
    assert config.s3_listen is None
    assert config.bootstrap == ()
    assert config.gateway_key_file == Path("d/gateway.key")
    assert config.tombstone_grace == 3600.0
    assert config.s3_incomplete_upload_expiry == 24 * 3600.0
    assert config.s3_lifecycle_interval == 3600.0
    assert (config.s3_region, config.s3_domains) == ("us-east-1", ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "data_dir is required"),
        ("[node]\ndata_dir = 3\n", "data_dir must be a path"),
        ('[node]\ndata_dir = "d"\nlisten = "nope"\n', "[node] listen"),
        ('[node]\ndata_dir = "d"\nlisten = "h:99999"\n', "invalid port"),
        ('[node]\ndata_dir = "d"\ncapacity = "lots"\n', "[node] capacity"),
        ('[node]\ndata_dir = "d"\nbootstrap = "h:1"\n', "[node] bootstrap"),
        ('[node]\ndata_dir = "d"\ncolour = "red"\n', "unknown key(s) in [node]: colour"),
        ('[nodes]\ndata_dir = "d"\n', "unknown table(s): nodes"),
        ('[node]\ndata_dir = "d"\n[membership]\neviction_delay = "soon"\n', "eviction_delay"),
        ('[node]\ndata_dir = "d"\n[repair]\ntombstone_grace = "0s"\n', "tombstone_grace"),
        ('[node]\ndata_dir = "d"\n[s3]\nincomplete_upload_expiry = "x"\n', "incomplete_upload"),
        ('[node]\ndata_dir = "d"\n[s3]\nlifecycle_interval = "0s"\n', "lifecycle_interval"),
        (f'[node]\ndata_dir = "d"\n[s3]\nlifecycle_interval = "{"9" * 400}s"\n', "too long"),
        ("[node\n", "not valid TOML"),
        ("node = 3\n", "[node] must be a table"),
        ('[node]\ndata_dir = "d"\n[s3]\ngateway_key = 5\n', "[s3] gateway_key"),
        ('[node]\ndata_dir = "d"\n[repair]\nbandwidth = "0"\n', "[repair] bandwidth"),
        ('[node]\ndata_dir = "d"\n[repair]\ninterval = 0\n', "[repair] interval"),
        ('[node]\ndata_dir = "d"\n[repair]\nspeed = 1\n', "unknown key(s) in [repair]"),
        ('[node]\ndata_dir = "d"\n[s3]\nregion = "EU West"\n', "[s3] region"),
        ('[node]\ndata_dir = "d"\n[s3]\nregion = 3\n', "[s3] region"),
        ('[node]\ndata_dir = "d"\n[s3]\ndomains = "s3.example.com"\n', "[s3] domains"),
        ('[node]\ndata_dir = "d"\n[s3]\ndomains = ["a..b"]\n', "[s3] domains"),
        ('[node]\ndata_dir = "d"\n[s3]\ndomains = ["-a.com"]\n', "[s3] domains"),
        ('[node]\ndata_dir = "d"\n[s3]\ndomains = [""]\n', "[s3] domains"),
        ('[node]\ndata_dir = "d"\n[s3]\ndomains = [5]\n', "[s3] domains"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError):
        load_config(binary)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("512", 512), ("1KiB", 1024), ("1kb", 1000), ("1.5GiB", 3 * 2**29),
     ("2T", 2 * 10**12), ("7B", 7), (42, 42)],
)  # fmt: skip
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (5, 5.0)]
)
def test_durations(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, -0.5, True])
def test_non_finite_or_negative_durations_are_refused(value: float) -> None:
    with pytest.raises(ConfigError):
        parse_duration(value)


def test_address_default_port() -> None:
    assert parse_address("example", default_port=7) == Address("example", 7)


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.booleans()))
def test_garbage_values_only_raise_config_error(value: object) -> None:
    for parser in (parse_size, parse_duration, parse_address):
        with contextlib.suppress(ConfigError):
            result = parser(value)  # type: ignore[arg-type]
            assert result is not None
