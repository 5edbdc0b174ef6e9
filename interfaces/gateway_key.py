"""The key that owns a gateway's registers: it signs their values and encrypts their payloads.

Every node that serves the same S3 namespace holds the same gateway key (the embedded default
creates one; a multi-machine deployment copies it to the nodes that serve S3). Storage nodes
never see it: they verify signatures against the public half embedded in each register.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgpack
import nacl.utils

from dht.errors import CredentialError
from dht.identity import NodeIdentity, read_credential_file, write_private_file

FORMAT = "ballast-gateway-key"
VERSION = 1
DATA_KEY_BYTES = 32


@dataclass(frozen=True)
class GatewayKey:
    """A signing identity plus a symmetric key for register payloads."""

    signing: NodeIdentity
    data_key: bytes

    @classmethod
    def generate(cls) -> GatewayKey:
        """A fresh random gateway key."""
        return cls(NodeIdentity.generate(), nacl.utils.random(DATA_KEY_BYTES))


def save_gateway_key(path: str | os.PathLike[str], key: GatewayKey) -> None:
    """Write ``key`` to ``path`` atomically with mode 0600."""
    data = msgpack.packb(
        {"format": FORMAT, "version": VERSION, "seed": key.signing.seed, "data_key": key.data_key},
        use_bin_type=True,
    )
    write_private_file(path, bytes(data))


def load_gateway_key(path: str | os.PathLike[str]) -> GatewayKey:
    """Read a gateway key file.

    Raises:
        CredentialError: unreadable, readable by others, malformed or of another format.
    """
    name = os.fspath(path)
    raw = read_credential_file(path, "gateway key", secret=True)
    try:
        fields = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        fields = None
    if (
        not isinstance(fields, dict)
        or fields.get("format") != FORMAT
        or fields.get("version") != VERSION
        or not isinstance(fields.get("seed"), bytes)
        or len(fields["seed"]) != 32
        or not isinstance(fields.get("data_key"), bytes)
        or len(fields["data_key"]) != DATA_KEY_BYTES
    ):
        raise CredentialError(f"{name!r} is not a valid gateway key file")
    return GatewayKey(NodeIdentity.from_seed(fields["seed"]), fields["data_key"])
