"""Publishing a model file: compute its CID and sha256 ourselves, add and pin it to kubo, agree."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from storage.cid import Cid
from storage.errors import StorageError
from storage.kubo import KuboClient
from storage.unixfs import Progress, hash_file


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """What goes on chain for a model file."""

    cid: Cid
    sha256: str
    size: int


async def publish(kubo: KuboClient, path: str | Path, progress: Progress | None = None) -> PublishedFile:
    """Hash `path` (CID + sha256), add and pin it to kubo, and check kubo computed the same CID."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path} is not a file: give the path of the .gguf to publish")
    local = await asyncio.to_thread(hash_file, path)
    added = await kubo.add(path, pin=True, progress=progress)
    if added.cid != local.cid:
        raise StorageError(
            f"kubo stored {path} as {added.cid} but the network's CID for it is {local.cid}: "
            "the daemon ignored --cid-version=1 --raw-leaves --chunker=size-1048576 (check its version)"
        )
    return PublishedFile(local.cid, local.sha256, local.size)
