"""Who may write a register, and how its value is bound to its address and kept secret.

A register (mutable block) is named by its owner: ``address = BLAKE2b-256(domain, owner public
key, name)``. Every value a proposer puts forward carries, in its ``writer`` field, the msgpack
array ``[owner public key, name]`` and, in ``signature``, the owner's Ed25519 signature over
:meth:`storage.paxos.RegisterValue.signed_bytes` (version, payload and writer). An acceptor
(and a reader) therefore checks two things with nothing but the address and the value
(:func:`verify_register_value`): the writer names exactly this address, and the owner signed
this version and payload. Nobody else can produce a value an acceptor accepts.

Payloads are sealed with the owner's ``data_key`` (SecretBox, XSalsa20-Poly1305) before they
are proposed, so acceptors never see plaintext. The register *name* is not secret: it is part
of the signed writer field (acceptors need it to bind the owner key to the address).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

import msgpack
import nacl.exceptions
import nacl.secret
import nacl.utils

from dht.identity import NodeIdentity, verify_signature

from .errors import Corrupt, InvalidArgument
from .ids import BLOCK_ADDRESS_BYTES, BlockAddress
from .paxos import RegisterValue

__all__ = [
    "DATA_KEY_BYTES",
    "MAX_NAME_BYTES",
    "ClientKeys",
    "open_payload",
    "parse_writer",
    "register_address",
    "seal_payload",
    "sign_register_value",
    "verify_register_value",
    "writer_field",
]

DATA_KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
#: Longest register name accepted (names travel in every signed value).
MAX_NAME_BYTES = 1024
_PUBLIC_KEY_BYTES = 32
_ADDRESS_DOMAIN = b"ballast-register-address-v1\0"


@dataclass(frozen=True)
class ClientKeys:
    """The keys of a client that owns registers.

    Attributes:
        signing: the owner key pair; its public key is part of every register address and
            it signs every value written.
        data_key: the 32-byte SecretBox key that encrypts register payloads.

    Raises:
        InvalidArgument: ``data_key`` is not 32 bytes.
    """

    signing: NodeIdentity
    data_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data_key, bytes) or len(self.data_key) != DATA_KEY_BYTES:
            raise InvalidArgument(f"a register data key is {DATA_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> ClientKeys:
        """Return fresh random keys (a new owner: it sees none of another owner's registers)."""
        return cls(NodeIdentity.generate(), nacl.utils.random(DATA_KEY_BYTES))

    def __repr__(self) -> str:
        return f"ClientKeys(owner={self.signing.public_key.hex()[:16]}…)"


def _check_name(name: object) -> bytes:
    if not isinstance(name, bytes) or len(name) > MAX_NAME_BYTES:
        raise InvalidArgument(f"a register name is bytes of at most {MAX_NAME_BYTES} bytes")
    return name


def register_address(owner_public_key: bytes, name: bytes) -> BlockAddress:
    """Return the address of register ``name`` of ``owner_public_key`` (BLAKE2b-256).

    The owner key and the name are length-prefixed (msgpack), so no two (key, name) pairs
    hash the same input.

    Raises:
        InvalidArgument: the key is not 32 bytes or the name is not bytes / too long.
    """
    if not isinstance(owner_public_key, bytes) or len(owner_public_key) != _PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"an owner public key is {_PUBLIC_KEY_BYTES} bytes")
    digest = hashlib.blake2b(_ADDRESS_DOMAIN, digest_size=BLOCK_ADDRESS_BYTES)
    digest.update(msgpack.packb([owner_public_key, _check_name(name)], use_bin_type=True))
    return BlockAddress(digest.digest())


def writer_field(owner_public_key: bytes, name: bytes) -> bytes:
    """Return the ``writer`` field of a value: msgpack ``[owner public key, name]``."""
    return bytes(msgpack.packb([owner_public_key, _check_name(name)], use_bin_type=True))


def parse_writer(writer: bytes) -> tuple[bytes, bytes] | None:
    """Return ``(owner public key, name)`` from a writer field, or None if malformed."""
    try:
        fields: Any = msgpack.unpackb(writer, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (
        not isinstance(fields, list)
        or len(fields) != 2
        or not all(isinstance(f, bytes) for f in fields)
        or len(fields[0]) != _PUBLIC_KEY_BYTES
        or len(fields[1]) > MAX_NAME_BYTES
    ):
        return None
    return fields[0], fields[1]


def sign_register_value(signing: NodeIdentity, name: bytes, value: RegisterValue) -> RegisterValue:
    """Return ``value`` with its writer set to (``signing``'s key, ``name``) and signed."""
    with_writer = dataclass_replace(
        value, writer=writer_field(signing.public_key, name), signature=b""
    )
    return dataclass_replace(with_writer, signature=signing.sign(with_writer.signed_bytes()))


def verify_register_value(address: BlockAddress, value: RegisterValue) -> bool:
    """Return whether ``value`` may be stored at ``address``.

    True only if the writer field names an owner key and name that hash to ``address`` and
    the signature is that owner's Ed25519 signature over ``value.signed_bytes()``.
    """
    parsed = parse_writer(value.writer)
    if parsed is None:
        return False
    owner, name = parsed
    if register_address(owner, name) != address:
        return False
    return verify_signature(owner, value.signed_bytes(), value.signature)


def seal_payload(data_key: bytes, plaintext: bytes) -> bytes:
    """Encrypt a register payload with the owner's data key (random nonce)."""
    return bytes(nacl.secret.SecretBox(data_key).encrypt(plaintext))


def open_payload(data_key: bytes, ciphertext: bytes) -> bytes:
    """Decrypt a register payload.

    Raises:
        Corrupt: the ciphertext does not authenticate under ``data_key``.
    """
    try:
        return bytes(nacl.secret.SecretBox(data_key).decrypt(ciphertext))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise Corrupt("register payload does not authenticate under the data key") from exc
