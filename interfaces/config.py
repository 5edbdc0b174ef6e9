"""A node's configuration file (TOML), parsed into typed, validated settings.

Example::

    [node]
    data_dir = "/var/lib/ballast"        # required: keys, passport, network and the silo live here
    listen = "0.0.0.0:4100"              # where peers reach this node
    advertise = "10.0.0.5:4100"          # the address peers are told (default: listen)
    capacity = "100GiB"                  # refuse new blocks beyond this
    bootstrap = ["10.0.0.6:4100"]        # any known members

    [membership]
    eviction_delay = "30s"               # how long a silent member stays suspected before eviction

    [repair]
    interval = "30s"                     # time between repair passes when nothing changes
    bandwidth = "64MiB"                  # most bytes per second sent for repair and moves
    scrub_interval = "24h"               # time between checksum scrubs of the whole silo
    scrub_rate = "8MiB"                  # most bytes per second a scrub reads
    tombstone_grace = "1h"               # a deleted register is forgotten this long after

    [admin]
    listen = "127.0.0.1:9100"            # /metrics (Prometheus) and /status (JSON)

    [s3]
    listen = "127.0.0.1:9000"            # optional: serve the S3 API from this node
    gateway_key = "/etc/ballast/gateway.key"   # default: data_dir/gateway.key
    incomplete_upload_expiry = "24h"     # multipart uploads unfinished this long are aborted
    lifecycle_interval = "1h"            # time between two applications of lifecycle rules
    region = "us-east-1"                 # the region clients sign for (default us-east-1)
    domains = ["s3.example.com"]         # BUCKET.s3.example.com is virtual-host addressing

Every mistake (unknown key, wrong type, bad address or size) raises :class:`ConfigError` naming
the file and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dht.ids import Address

T = TypeVar("T", int, float)


class ConfigError(Exception):
    """A configuration file or value is missing, malformed or inconsistent."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_REGION = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def parse_size(text: str | int) -> int:
    """Parse ``"100GiB"``, ``"512MB"``, ``"1T"`` or a plain byte count."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return text
    if not isinstance(text, str):
        raise ConfigError(f"size must be a string like '100GiB', not {text!r}")
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"cannot read size {text!r} (expected e.g. '100GiB', '512MB')")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    binary = "I" in unit
    letter = unit[:1] if unit not in ("B", "") else ""
    factor = 1024 ** "KMGTP".index(letter) * 1024 if binary and letter else _UNITS[letter]
    return int(number * factor)


def parse_duration(text: str | int | float) -> float:
    """Parse ``"30s"``, ``"500ms"``, ``"5m"``, ``"1h"`` or a number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"duration must be a finite, non-negative number: {text}")
        return float(text)
    if not isinstance(text, str):
        raise ConfigError(f"duration must be a string like '30s', not {text!r}")
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"cannot read duration {text!r} (expected e.g. '30s', '500ms')")
    seconds = float(match.group(1)) * _SECONDS[match.group(2) or ""]
    if not math.isfinite(seconds):
        raise ConfigError(f"duration {text!r} is too long")
    return seconds


def parse_region(text: object) -> str:
    """Check an S3 region name (``us-east-1``: lowercase letters, digits and dashes)."""
    if not isinstance(text, str) or not _REGION.match(text):
        raise ConfigError(f"a region is like 'us-east-1' (a-z, 0-9, '-'), not {text!r}")
    return text


def parse_domains(value: object) -> tuple[str, ...]:
    """Check a list of DNS names under which buckets are virtual-hosted (lowercased)."""
    if not isinstance(value, list):
        raise ConfigError(f"must be a list of domain names, not {value!r}")
    domains: list[str] = []
    for item in value:
        name = item.lower().rstrip(".") if isinstance(item, str) else ""
        labels = name.split(".")
        if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise ConfigError(f"{item!r} is not a domain name")
        domains.append(name)
    return tuple(domains)


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """Parse ``host:port`` (``[v6]:port`` for IPv6)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"an address is a 'host:port' string, not {text!r}")
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(f"address {text!r} has no port")
        return Address(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address {text!r} has an invalid port")
    if not host:
        raise ConfigError(f"address {text!r} has no host")
    return Address(host, int(port_text))


DEFAULT_LISTEN = Address("127.0.0.1", 4100)
#: Multipart uploads left unfinished this long (seconds) are aborted, as MinIO does.
DEFAULT_UPLOAD_EXPIRY = 24 * 3600.0
#: Time (seconds) between two applications of the buckets' lifecycle rules.
DEFAULT_LIFECYCLE_INTERVAL = 3600.0
#: The S3 region a gateway answers for unless configured (the one SDKs default to).
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class NodeConfig:
    """Everything one ``ballast node run`` needs."""

    data_dir: Path
    listen: Address = DEFAULT_LISTEN
    advertise: Address | None = None
    capacity_bytes: int = 100 * 1024**3
    bootstrap: tuple[Address, ...] = ()
    eviction_delay: float = 30.0
    repair_interval: float = 30.0
    repair_bandwidth: int = 64 * 1024**2
    scrub_interval: float = 24 * 3600.0
    scrub_rate: int = 8 * 1024**2
    tombstone_grace: float = 3600.0
    admin_listen: Address | None = None
    s3_listen: Address | None = None
    s3_gateway_key: Path | None = None
    s3_incomplete_upload_expiry: float = DEFAULT_UPLOAD_EXPIRY
    s3_lifecycle_interval: float = DEFAULT_LIFECYCLE_INTERVAL
    s3_region: str = DEFAULT_REGION
    s3_domains: tuple[str, ...] = ()

    @property
    def key_file(self) -> Path:
        """The node's secret key."""
        return self.data_dir / "node.key"

    @property
    def passport_file(self) -> Path:
        """The passport the network owner issued to this node."""
        return self.data_dir / "passport"

    @property
    def network_file(self) -> Path:
        """The network descriptor."""
        return self.data_dir / "network"

    @property
    def gateway_key_file(self) -> Path:
        """The key owning the S3 gateway's registers (same file on every S3 node)."""
        return self.s3_gateway_key or self.data_dir / "gateway.key"

    @property
    def silo_dir(self) -> Path:
        """Where blocks and consensus state are stored."""
        return self.data_dir / "silo"


_ALLOWED = {
    "node": {"data_dir", "listen", "advertise", "capacity", "bootstrap"},
    "membership": {"eviction_delay"},
    "repair": {"interval", "bandwidth", "scrub_interval", "scrub_rate", "tombstone_grace"},
    "admin": {"listen"},
    "s3": {
        "listen",
        "gateway_key",
        "incomplete_upload_expiry",
        "lifecycle_interval",
        "region",
        "domains",
    },
}


def _table(document: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    unknown = set(table) - _ALLOWED[name]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    return table


def parse_config(document: dict[str, Any], *, source: str = "<config>") -> NodeConfig:
    """Validate a parsed TOML document and build a :class:`NodeConfig`."""
    unknown_tables = set(document) - set(_ALLOWED)
    if unknown_tables:
        raise ConfigError(f"{source}: unknown table(s): {', '.join(sorted(unknown_tables))}")
    node = _table(document, "node", source)
    membership = _table(document, "membership", source)
    admin = _table(document, "admin", source)
    s3 = _table(document, "s3", source)
    repair = _table(document, "repair", source)

    def where(table: str, key: str) -> str:
        return f"{source}: [{table}] {key}"

    if "data_dir" not in node:
        raise ConfigError(f"{source}: [node] data_dir is required")
    if not isinstance(node["data_dir"], str) or not node["data_dir"]:
        raise ConfigError(f"{where('node', 'data_dir')} must be a path string")
    try:
        bootstrap_list = node.get("bootstrap", [])
        if not isinstance(bootstrap_list, list):
            raise ConfigError("must be a list of 'host:port' strings")
        bootstrap = tuple(parse_address(item) for item in bootstrap_list)
    except ConfigError as error:
        raise ConfigError(f"{where('node', 'bootstrap')}: {error}") from None
    tables = {"node": node, "membership": membership, "admin": admin, "s3": s3, "repair": repair}
    values: dict[str, Any] = {}
    for table, key, parser, target in (
        ("node", "listen", parse_address, "listen"),
        ("node", "advertise", parse_address, "advertise"),
        ("node", "capacity", parse_size, "capacity_bytes"),
        ("membership", "eviction_delay", parse_duration, "eviction_delay"),
        ("repair", "interval", _positive(parse_duration), "repair_interval"),
        ("repair", "bandwidth", _positive(parse_size), "repair_bandwidth"),
        ("repair", "scrub_interval", _positive(parse_duration), "scrub_interval"),
        ("repair", "scrub_rate", _positive(parse_size), "scrub_rate"),
        ("repair", "tombstone_grace", _positive(parse_duration), "tombstone_grace"),
        ("admin", "listen", parse_address, "admin_listen"),
        ("s3", "listen", parse_address, "s3_listen"),
        (
            "s3",
            "incomplete_upload_expiry",
            _positive(parse_duration),
            "s3_incomplete_upload_expiry",
        ),
        ("s3", "lifecycle_interval", _positive(parse_duration), "s3_lifecycle_interval"),
        ("s3", "region", parse_region, "s3_region"),
        ("s3", "domains", parse_domains, "s3_domains"),
    ):
        if key in tables[table]:
            try:
                values[target] = parser(tables[table][key])
            except ConfigError as error:
                raise ConfigError(f"{where(table, key)}: {error}") from None
    if "gateway_key" in s3:
        if not isinstance(s3["gateway_key"], str) or not s3["gateway_key"]:
            raise ConfigError(f"{where('s3', 'gateway_key')} must be a path string")
        values["s3_gateway_key"] = Path(s3["gateway_key"])
    return NodeConfig(data_dir=Path(node["data_dir"]), bootstrap=bootstrap, **values)


def _positive(parser: Callable[[Any], T]) -> Callable[[Any], T]:
    """``parser``, refusing zero (a rate or interval of zero would stall or spin)."""

    def parse(text: Any) -> T:
        value = parser(text)
        if not value:
            raise ConfigError(f"must be more than zero, not {text!r}")
        return value

    return parse


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node configuration file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read config file {source}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid UTF-8") from None
    return parse_config(document, source=source)
