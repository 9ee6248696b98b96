"""The blocks of the model files a node hosts, by CID, for the trustless gateway and peers.

Interior DAG nodes are kept in memory; raw leaves are byte ranges of the files and are re-hashed on
every read, so a corrupt disk is reported rather than served. No HTTP here: the CLIs and the cache
use this without importing the web framework (storage.gateway adds the routes).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.cid import Cid
from storage.errors import StorageError
from storage.unixfs import FileDag


class BlockStore(Protocol):
    """Blocks by CID for the gateway; None when the block is not here."""

    async def get(self, cid: Cid) -> bytes | None:
        """The block's bytes, checked against its CID."""
        ...


@dataclass(frozen=True, slots=True)
class _Range:
    path: Path
    offset: int
    size: int


class FileBlockStore:
    """The blocks of whole files on disk: interior nodes kept in memory, raw leaves read from the files."""

    def __init__(self) -> None:
        self._nodes: dict[Cid, bytes] = {}
        self._leaves: dict[Cid, _Range] = {}
        self._files: dict[Cid, tuple[Path, FileDag]] = {}

    def add(self, path: str | Path, dag: FileDag) -> None:
        """Serve the blocks of `dag`, whose leaves are ranges of the file at `path`."""
        path = Path(path)
        self._files[dag.root] = (path, dag)
        self._nodes.update(dag.nodes)
        for leaf in dag.leaves:
            self._leaves[leaf.cid] = _Range(path, leaf.offset, leaf.size)

    def remove(self, root: Cid) -> None:
        """Stop serving a file (e.g. evicted from the cache); blocks shared with other files stay."""
        self._files.pop(root, None)
        self._nodes, self._leaves = {}, {}
        for path, dag in self._files.values():
            self.add(path, dag)

    def roots(self) -> list[Cid]:
        """The files served."""
        return list(self._files)

    async def get(self, cid: Cid) -> bytes | None:
        """A block, re-hashed; StorageError if the bytes on disk no longer match."""
        if cid in self._nodes:
            return self._nodes[cid]
        where = self._leaves.get(cid)
        if where is None:
            return None
        data, intact = await asyncio.to_thread(_read_checked, where, cid)
        if not intact:
            raise StorageError(f"block {cid} in {where.path} at byte {where.offset} is corrupt on disk")
        return data


def _read_checked(where: _Range, cid: Cid) -> tuple[bytes, bool]:
    """A leaf's bytes and whether they still hash to `cid`, in one worker-thread hop."""
    fd = os.open(where.path, os.O_RDONLY)
    try:
        data = os.pread(fd, where.size, where.offset)
    finally:
        os.close(fd)
    return data, cid.matches(data)


def serve_files(files: Iterable[tuple[Path, FileDag]]) -> FileBlockStore:
    """A FileBlockStore serving the given (path, dag) pairs."""
    store = FileBlockStore()
    for path, dag in files:
        store.add(path, dag)
    return store
