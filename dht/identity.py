"""Node identities, network descriptors and passports, and the files that hold them.

A *node identity* is an Ed25519 key pair; the node id is BLAKE2b-160 of the public key.
A *network* is described by a descriptor (name, owner public key, default redundancy policy,
creation time) signed by the owner key. A *passport* is the owner's signature over
(node public key, network name, role): it is what a node shows in the handshake to prove it
may take part in the network.

Every signature covers a domain-separation label and a canonical msgpack encoding, so a
signature made for one kind of object can never be taken for another. Files are msgpack maps
with a ``format`` and a ``version`` field, written atomically (temporary file, rename) with
mode 0600; any file that is truncated, malformed, tampered with or issued for another
network raises :class:`~dht.errors.CredentialError` when loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from .errors import CredentialError
from .ids import NodeId, node_id_from_public_key

logger = logging.getLogger(__name__)

FILE_VERSION = 1
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64
MAX_CREDENTIAL_FILE_BYTES = 64 * 1024
#: Roles a passport may grant. ``storage`` nodes store blocks, ``client`` nodes only call,
#: ``admin`` nodes may also change membership.
ROLES = frozenset({"storage", "client", "admin"})

_NETWORK_LABEL = b"ballast-network-v1"
_PASSPORT_LABEL = b"ballast-passport-v1"


def _canonical(label: bytes, fields: list[Any]) -> bytes:
    """Encode what a signature covers: a label then the fields, as one msgpack array."""
    return bytes(msgpack.packb([label, *fields], use_bin_type=True))


class NodeIdentity:
    """A node's Ed25519 key pair: signs handshakes, and (as an owner key) networks and passports.

    The secret key never leaves this object except through :func:`save_identity`.
    """

    __slots__ = ("_node_id", "_public_key", "_signing_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        """Wrap an existing pynacl signing key."""
        self._signing_key = signing_key
        self._public_key = bytes(signing_key.verify_key)
        self._node_id = node_id_from_public_key(self._public_key)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """Return a fresh random key pair."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """Return the key pair derived from a 32-byte seed (deterministic; for tests and files).

        Raises:
            CredentialError: the seed is not 32 bytes.
        """
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise CredentialError(f"a node key seed must be {SEED_BYTES} bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def node_id(self) -> NodeId:
        """The node id: BLAKE2b-160 of the public key."""
        return self._node_id

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (handle with care)."""
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``message``."""
        return bytes(self._signing_key.sign(message).signature)

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self._node_id.hex()})"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is ``public_key``'s valid Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def _check_redundancy(redundancy: Mapping[str, Any]) -> dict[str, int]:
    """Validate a redundancy policy given as plain data and return a normalised copy."""
    if not isinstance(redundancy, Mapping):
        raise CredentialError("the redundancy policy must be a map")
    policy: dict[str, int] = {}
    for key, value in redundancy.items():
        if not isinstance(key, str) or type(value) is not int or value < 0:
            raise CredentialError(f"bad redundancy policy entry {key!r}: {value!r}")
        policy[key] = value
    if set(policy) == {"replicas"}:
        if policy["replicas"] < 1:
            raise CredentialError("a redundancy policy needs at least one replica")
    elif set(policy) == {"data", "parity"}:
        if policy["data"] < 1:
            raise CredentialError("an erasure-coded policy needs at least one data fragment")
    else:
        raise CredentialError(
            'a redundancy policy is {"replicas": r} or {"data": k, "parity": m}, '
            f"not {sorted(policy)}"
        )
    return policy


@dataclass(frozen=True)
class NetworkDescriptor:
    """A network, as created and signed by its owner.

    ``redundancy`` is the default policy as plain data: ``{"replicas": 3}`` or
    ``{"data": 4, "parity": 2}``; the storage layer turns it into its own policy type.
    """

    name: str
    owner_public_key: bytes
    redundancy: Mapping[str, int] = field(hash=False)
    created_at: float
    signature: bytes

    @classmethod
    def create(
        cls,
        owner: NodeIdentity,
        name: str,
        redundancy: Mapping[str, int],
        *,
        created_at: float | None = None,
    ) -> NetworkDescriptor:
        """Create and sign a descriptor for a new network owned by ``owner``.

        Raises:
            CredentialError: the name or the redundancy policy is invalid.
        """
        if not isinstance(name, str) or not name or len(name) > 255:
            raise CredentialError("a network name is a non-empty string of at most 255 chars")
        policy = _check_redundancy(redundancy)
        when = time.time() if created_at is None else float(created_at)
        unsigned = cls(name, owner.public_key, policy, when, b"")
        return cls(name, owner.public_key, policy, when, owner.sign(unsigned.signed_bytes()))

    def signed_bytes(self) -> bytes:
        """Return the canonical bytes the owner's signature covers."""
        return _canonical(
            _NETWORK_LABEL,
            [self.name, self.owner_public_key, dict(self.redundancy), self.created_at],
        )

    @property
    def fingerprint(self) -> bytes:
        """A 32-byte digest identifying this network (name, owner, policy and signature)."""
        return hashlib.blake2b(
            self.signed_bytes() + self.signature, digest_size=32, person=b"ballast-netfp"
        ).digest()

    def verify(self) -> None:
        """Check the owner's signature.

        Raises:
            CredentialError: the descriptor was not signed by its owner key.
        """
        if not verify_signature(self.owner_public_key, self.signed_bytes(), self.signature):
            raise CredentialError(
                f"network descriptor {self.name!r}: bad owner signature (tampered or forged)"
            )

    def to_bytes(self) -> bytes:
        """Serialise to the versioned msgpack file format."""
        return bytes(
            msgpack.packb(
                {
                    "format": "ballast-network",
                    "version": FILE_VERSION,
                    "name": self.name,
                    "owner": self.owner_public_key,
                    "redundancy": dict(self.redundancy),
                    "created_at": self.created_at,
                    "signature": self.signature,
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> NetworkDescriptor:
        """Parse and verify a descriptor.

        Raises:
            CredentialError: malformed, wrong format or version, or bad signature.
        """
        fields = _unpack_map(data, "ballast-network", "network descriptor")
        name = _field(fields, "name", str, "network descriptor")
        owner = _field(fields, "owner", bytes, "network descriptor", size=PUBLIC_KEY_BYTES)
        created_at = fields.get("created_at")
        if type(created_at) not in (int, float):
            raise CredentialError("network descriptor: field 'created_at' must be a number")
        assert isinstance(created_at, int | float)
        signature = _field(fields, "signature", bytes, "network descriptor", size=SIGNATURE_BYTES)
        redundancy = _check_redundancy(fields.get("redundancy"))  # type: ignore[arg-type]
        descriptor = cls(name, owner, redundancy, float(created_at), signature)
        descriptor.verify()
        return descriptor


@dataclass(frozen=True)
class Passport:
    """The owner's permission for one node key to take part in one network with one role."""

    node_public_key: bytes
    network_name: str
    role: str
    signature: bytes

    @classmethod
    def issue(
        cls, owner: NodeIdentity, network: NetworkDescriptor, node_public_key: bytes, role: str
    ) -> Passport:
        """Sign a passport for ``node_public_key`` in ``network``.

        Raises:
            CredentialError: ``owner`` does not own ``network``, the key or the role is invalid.
        """
        if owner.public_key != network.owner_public_key:
            raise CredentialError(f"only the owner of network {network.name!r} issues passports")
        if len(node_public_key) != PUBLIC_KEY_BYTES:
            raise CredentialError(f"a node public key is {PUBLIC_KEY_BYTES} bytes")
        if role not in ROLES:
            raise CredentialError(f"unknown role {role!r} (expected one of {sorted(ROLES)})")
        unsigned = cls(bytes(node_public_key), network.name, role, b"")
        return cls(
            unsigned.node_public_key, network.name, role, owner.sign(unsigned.signed_bytes())
        )

    @property
    def node_id(self) -> NodeId:
        """The id of the node this passport was issued to."""
        return node_id_from_public_key(self.node_public_key)

    def signed_bytes(self) -> bytes:
        """Return the canonical bytes the owner's signature covers."""
        return _canonical(_PASSPORT_LABEL, [self.node_public_key, self.network_name, self.role])

    def verify(self, network: NetworkDescriptor, node_public_key: bytes | None = None) -> None:
        """Check that this passport admits its node (or ``node_public_key``) into ``network``.

        Raises:
            CredentialError: issued for another network or node, unknown role, or bad signature.
        """
        if self.network_name != network.name:
            raise CredentialError(
                f"passport is for network {self.network_name!r}, not {network.name!r}"
            )
        if node_public_key is not None and bytes(node_public_key) != self.node_public_key:
            raise CredentialError("passport was issued to another node key")
        if self.role not in ROLES:
            raise CredentialError(f"passport has unknown role {self.role!r}")
        if not verify_signature(network.owner_public_key, self.signed_bytes(), self.signature):
            raise CredentialError(
                f"passport for network {network.name!r}: bad owner signature "
                "(tampered, or issued by another owner)"
            )

    def to_bytes(self) -> bytes:
        """Serialise to the versioned msgpack format (also used on the wire in the handshake)."""
        return bytes(
            msgpack.packb(
                {
                    "format": "ballast-passport",
                    "version": FILE_VERSION,
                    "node": self.node_public_key,
                    "network": self.network_name,
                    "role": self.role,
                    "signature": self.signature,
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, network: NetworkDescriptor | None = None) -> Passport:
        """Parse a passport, and verify it against ``network`` when one is given.

        Raises:
            CredentialError: malformed, or (with ``network``) not valid for that network.
        """
        fields = _unpack_map(data, "ballast-passport", "passport")
        passport = cls(
            _field(fields, "node", bytes, "passport", size=PUBLIC_KEY_BYTES),
            _field(fields, "network", str, "passport"),
            _field(fields, "role", str, "passport"),
            _field(fields, "signature", bytes, "passport", size=SIGNATURE_BYTES),
        )
        if network is not None:
            passport.verify(network)
        return passport


def _unpack_map(data: bytes, expected_format: str, what: str) -> dict[str, Any]:
    """Decode a versioned msgpack credential map, or raise CredentialError."""
    if len(data) > MAX_CREDENTIAL_FILE_BYTES:
        raise CredentialError(f"{what}: too large ({len(data)} bytes)")
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CredentialError(f"{what}: malformed or truncated ({e})") from None
    if not isinstance(fields, dict):
        raise CredentialError(f"{what}: malformed (not a map)")
    if fields.get("format") != expected_format:
        raise CredentialError(
            f"{what}: not a {expected_format} file (format={fields.get('format')!r})"
        )
    if fields.get("version") != FILE_VERSION:
        raise CredentialError(f"{what}: unsupported version {fields.get('version')!r}")
    return fields


def _field(fields: dict[str, Any], name: str, kind: type[Any], what: str, *, size: int = 0) -> Any:
    """Return ``fields[name]`` if it has type ``kind`` (and length ``size``), else raise."""
    value: Any = fields.get(name)
    if type(value) is not kind:
        raise CredentialError(f"{what}: field {name!r} missing or not {kind.__name__}")
    if size and len(value) != size:
        raise CredentialError(f"{what}: field {name!r} must be {size} bytes")
    return value


# ----------------------------------------------------------------------------------- files


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    The bytes go to a temporary file in the same directory (created 0600, so the secret is
    never readable by others even briefly), are flushed to disk, then renamed over ``path``:
    a reader sees the old file or the new one, never a torn one. A lost key file cannot be
    rebuilt, hence the fsync here although the silo owns durability for everything else.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_credential_file(path: str | os.PathLike[str], what: str, *, secret: bool) -> bytes:
    """Read a credential file, refusing oversize files and (for secrets) loose permissions.

    Raises:
        CredentialError: unreadable, too large, or (``secret``) readable by group or others.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CredentialError(
                    f"{what} {os.fspath(path)!r} is readable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 on it"
                )
            data = f.read(MAX_CREDENTIAL_FILE_BYTES + 1)
    except OSError as e:
        raise CredentialError(f"cannot read {what} {os.fspath(path)!r}: {e.strerror}") from e
    if len(data) > MAX_CREDENTIAL_FILE_BYTES:
        raise CredentialError(f"{what} {os.fspath(path)!r} is too large")
    return data


def save_identity(path: str | os.PathLike[str], identity: NodeIdentity) -> None:
    """Save a node key pair (its secret seed) to ``path``, atomically, mode 0600."""
    data = msgpack.packb(
        {
            "format": "ballast-node-key",
            "version": FILE_VERSION,
            "seed": identity.seed,
            "public_key": identity.public_key,
        },
        use_bin_type=True,
    )
    write_private_file(path, bytes(data))


def load_identity(path: str | os.PathLike[str]) -> NodeIdentity:
    """Load a node key pair saved by :func:`save_identity`.

    Raises:
        CredentialError: unreadable, readable by group/others, malformed or truncated, or the
            stored public key does not match the seed.
    """
    data = read_credential_file(path, "node key file", secret=True)
    fields = _unpack_map(data, "ballast-node-key", f"node key file {os.fspath(path)!r}")
    seed = _field(fields, "seed", bytes, "node key file", size=SEED_BYTES)
    public_key = _field(fields, "public_key", bytes, "node key file", size=PUBLIC_KEY_BYTES)
    identity = NodeIdentity.from_seed(seed)
    if identity.public_key != public_key:
        raise CredentialError(f"node key file {os.fspath(path)!r}: public key does not match seed")
    return identity


def save_network(path: str | os.PathLike[str], network: NetworkDescriptor) -> None:
    """Save a network descriptor to ``path``, atomically, mode 0600."""
    write_private_file(path, network.to_bytes())


def load_network(path: str | os.PathLike[str]) -> NetworkDescriptor:
    """Load and verify a network descriptor.

    Raises:
        CredentialError: unreadable, malformed, truncated or wrongly signed.
    """
    data = read_credential_file(path, "network file", secret=False)
    try:
        return NetworkDescriptor.from_bytes(data)
    except CredentialError as e:
        raise CredentialError(f"network file {os.fspath(path)!r}: {e}") from None


def save_passport(path: str | os.PathLike[str], passport: Passport) -> None:
    """Save a passport to ``path``, atomically, mode 0600."""
    write_private_file(path, passport.to_bytes())


def load_passport(
    path: str | os.PathLike[str],
    network: NetworkDescriptor,
    identity: NodeIdentity | None = None,
) -> Passport:
    """Load a passport and verify it for ``network`` (and for ``identity``'s key if given).

    Raises:
        CredentialError: unreadable, malformed, truncated, tampered, for another network or
            for another node key.
    """
    data = read_credential_file(path, "passport file", secret=False)
    try:
        passport = Passport.from_bytes(data, network)
        if identity is not None:
            passport.verify(network, identity.public_key)
    except CredentialError as e:
        raise CredentialError(f"passport file {os.fspath(path)!r}: {e}") from None
    return passport
