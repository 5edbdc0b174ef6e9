"""Typed identifiers of the overlay: node ids and network addresses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NewType

NODE_ID_BYTES = 20  # 160 bits: the kademlia package breaks on wider ids
NodeId = NewType("NodeId", bytes)


def node_id_from_public_key(public_key: bytes) -> NodeId:
    """Return the node id for an Ed25519 public key: BLAKE2b-160 of the key."""
    return NodeId(hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest())


def key_to_node_space(key: bytes) -> NodeId:
    """Map any key (a 32-byte block address, say) onto the 160-bit node-id space."""
    if len(key) >= NODE_ID_BYTES:
        return NodeId(bytes(key[:NODE_ID_BYTES]))
    return NodeId(hashlib.blake2b(key, digest_size=NODE_ID_BYTES).digest())


def distance(a: bytes, b: bytes) -> int:
    """Kademlia XOR distance between two ids of equal length."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@dataclass(frozen=True, order=True)
class Address:
    """A TCP endpoint where a node listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Contact:
    """A node as the overlay knows it: its id, its public key and where it listens."""

    node_id: NodeId
    address: Address
    public_key: bytes = b""
