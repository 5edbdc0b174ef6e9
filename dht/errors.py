"""The overlay's error vocabulary: one small hierarchy, translated at the layers above."""

from __future__ import annotations


class DhtError(Exception):
    """Base of every error raised by ``dht``."""


class CredentialError(DhtError):
    """A key, passport or network descriptor is malformed, tampered with or does not match."""


class ProtocolError(DhtError):
    """A protocol was broken; the connection it happened on is closed."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (garbage, tampering, replay)."""


class HandshakeRefused(RemoteProtocolError):
    """The peer could not prove its identity or has no valid passport for this network."""


class RpcError(DhtError):
    """A remote call did not produce a result."""


class PeerUnreachable(RpcError):
    """No connection to the peer could be established or it broke during the call."""


class RpcTimeout(RpcError):
    """The peer did not answer within the call's timeout; the call may or may not have run."""


class RemoteError(RpcError):
    """The peer ran the call and answered with a typed error.

    ``code`` is a short stable string (for example ``"not_found"``) that the layer above maps
    back to its own exception type; ``detail`` is free-form and may carry structured data.
    """

    def __init__(self, code: str, message: str = "", detail: object = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.detail = detail
