"""The storage package's exceptions: one root, each message says what to fix."""

from __future__ import annotations


class StorageError(Exception):
    """Anything the storage package cannot do, with a message that says what to fix."""


class CidError(StorageError, ValueError):
    """A CID, multihash or block is malformed or uses a codec/hash this package does not handle."""


class DagError(StorageError):
    """A dag-pb/UnixFS block cannot be decoded or is not a UnixFS file."""


class IntegrityError(StorageError):
    """Bytes do not hash to what was expected; the offending file or block has been discarded."""

    def __init__(self, what: str, expected: str, actual: str, hint: str = "") -> None:
        self.what, self.expected, self.actual = what, expected, actual
        message = f"{what}: expected {expected}, got {actual}"
        super().__init__(f"{message}; {hint}" if hint else message)


class KuboError(StorageError):
    """The kubo RPC API answered with an error."""

    def __init__(self, command: str, message: str, status: int | None = None) -> None:
        self.command, self.status = command, status
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"kubo {command} failed{where}: {message}")


class KuboUnavailableError(KuboError):
    """The kubo RPC API does not answer at all (daemon down, wrong address, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        StorageError.__init__(
            self,
            f"kubo RPC API at {url} is not answering ({reason}): start it with `ipfs daemon` "
            "(`make setup` installs kubo) or point the client at the right address",
        )
        self.command, self.status = "connect", None


class GatewayError(StorageError):
    """No trustless gateway could deliver a block (all peers failed or refused)."""


class CacheFullError(StorageError):
    """No room for a model, under the cache limit (`where="cache"`) or on the disk (`where="disk"`).

    `needed` is what the model still needs, `free` what it could get even after evicting every model
    not in use; `disk_free` is the filesystem's free space, `in_use` / `fetching` the models (CIDs)
    that could not be evicted because they are in use or being fetched."""

    def __init__(
        self,
        message: str,
        *,
        needed: int,
        free: int,
        limit: int,
        where: str,
        disk_free: int | None = None,
        in_use: tuple[object, ...] = (),
        fetching: tuple[object, ...] = (),
    ) -> None:
        super().__init__(message)
        self.needed, self.free, self.limit, self.where = needed, free, limit, where
        self.disk_free, self.in_use, self.fetching = disk_free, in_use, fetching
