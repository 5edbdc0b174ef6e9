"""The storage layer's error vocabulary, translated once at each interface's edge."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised by ``storage``."""


class NotFound(StorageError):
    """The block, object or entry does not exist (or was deleted)."""


class Conflict(StorageError):
    """A compare-and-set lost: the register holds ``current``, not what the caller expected."""

    def __init__(self, current: object, message: str = "") -> None:
        super().__init__(message or "conflicting update")
        self.current = current


class Unavailable(StorageError):
    """Too few replicas answered: ``needed`` were required, ``reached`` responded."""

    def __init__(self, needed: int, reached: int, message: str = "") -> None:
        super().__init__(message or f"quorum not reached: needed {needed}, reached {reached}")
        self.needed = needed
        self.reached = reached


class PermissionDenied(StorageError):
    """The caller's key may not perform this operation, or a signature does not verify."""


class Corrupt(StorageError):
    """Stored or received bytes failed their checksum or hash; they are never served."""


class NoSpace(StorageError):
    """The node is at its capacity limit and refuses new writes."""


class InvalidArgument(StorageError):
    """A caller passed a value the storage layer cannot accept (bad size, policy, name)."""
