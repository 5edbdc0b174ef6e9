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


class Contention(Conflict):
    """Concurrent changes kept getting in the way: the operation gave up without applying.

    Unlike a plain :class:`Conflict` (a condition the caller set did not hold), this is
    transient: the same request may succeed when retried.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(None, message or "too much contention; retry later")


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


# -- object logic (storage.objects): buckets, objects, multipart uploads ------------------------


class NoSuchBucket(NotFound):
    """The bucket does not exist (or was deleted)."""


class NoSuchKey(NotFound):
    """The bucket exists but holds no object under this key."""


class NoSuchUpload(NotFound):
    """The multipart upload does not exist: never created, aborted, or already completed."""


class AlreadyExists(StorageError):
    """The thing being created exists already; ``owner`` is who owns it (may be ``None``)."""

    def __init__(self, owner: str | None, message: str = "") -> None:
        super().__init__(message or "already exists")
        self.owner = owner


class BucketAlreadyExists(AlreadyExists):
    """The bucket name is taken by another owner."""


class BucketAlreadyOwnedByYou(AlreadyExists):
    """The bucket exists and the caller already owns it."""


class BucketNotEmpty(StorageError):
    """The bucket still holds objects, so it cannot be deleted."""


class PreconditionFailed(StorageError):
    """A conditional write's ``If-Match`` / ``If-None-Match`` did not hold."""


class InvalidRange(StorageError):
    """A requested byte range starts beyond the end of an object of ``size`` bytes."""

    def __init__(self, size: int, message: str = "") -> None:
        super().__init__(message or f"range not satisfiable for an object of {size} bytes")
        self.size = size


class InvalidPart(StorageError):
    """A listed multipart part was never uploaded, or its ETag does not match."""


class InvalidPartOrder(StorageError):
    """The parts of a multipart completion are not in strictly ascending order."""


class EntityTooSmall(StorageError):
    """A multipart part other than the last is smaller than the minimum part size."""


class KeyTooLong(InvalidArgument):
    """An object key is longer than 1024 bytes of UTF-8."""


class BadDigest(StorageError):
    """The body's MD5 differs from the ``Content-MD5`` the client sent."""
