"""Kubo-identical UnixFS file DAGs: `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576`.

Balanced layout as kubo builds it: 1 MiB raw leaves; interior dag-pb nodes of at most 174 links,
filled left to right, a new root level added when the current one is full; a single-chunk file is
its own raw leaf and the empty file is the empty raw block. Streaming and constant memory (one
pending link list per tree level), and `hash_file` runs the leaf hashes and the whole-file sha256 in
two threads over the same buffers (hashlib releases the GIL), so a file's CID and sha256 together
cost about one sha256 pass.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from storage.cid import RAW, Cid, dag_pb_cid
from storage.dagpb import PBLink, encode_node, encode_unixfs_file

CHUNK_SIZE = 1024 * 1024
# hash_file reads CHUNKS_PER_READ chunks at a time into one of READ_BUFFERS buffers: its whole memory.
CHUNKS_PER_READ, READ_BUFFERS = 8, 4
MAX_LINKS = 174
EMPTY_DIGEST = hashlib.sha256(b"").digest()

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total); total is 0 when unknown."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """A raw leaf: its CID and where its bytes sit in the file."""

    cid: Cid
    offset: int
    size: int


@dataclass(slots=True)
class FileDag:
    """The blocks of one file's DAG: interior dag-pb blocks by CID, raw leaves as file ranges."""

    root: Cid
    size: int
    leaves: list[Leaf] = field(default_factory=list)
    nodes: dict[Cid, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileHashes:
    """A file's CID (kubo-identical), sha256 (hex) and size, plus its DAG when asked for."""

    cid: Cid
    sha256: str
    size: int
    dag: FileDag | None = None


@dataclass(slots=True)
class _Entry:
    cid: Cid
    tsize: int  # the child's whole DAG in bytes: what dag-pb links carry as Tsize
    filesize: int  # file bytes below the child: what UnixFS blocksizes carry


class DagBuilder:
    """Builds the balanced DAG from leaf digests fed in file order; `finish()` gives the root CID."""

    def __init__(self, max_links: int = MAX_LINKS, keep_dag: bool = False) -> None:
        if max_links < 2:
            raise ValueError(f"max_links must be at least 2, not {max_links}")
        self.max_links = max_links
        self._levels: list[list[_Entry]] = [[]]
        self._offset = 0
        self._keep = keep_dag
        self.leaves: list[Leaf] = []
        self.nodes: dict[Cid, bytes] = {}

    def add_leaf(self, digest: bytes, size: int) -> None:
        """Append the next raw leaf (sha256 digest of its bytes, its length)."""
        cid = Cid.v1(RAW, digest)
        if self._keep:
            self.leaves.append(Leaf(cid, self._offset, size))
        self._offset += size
        self._levels[0].append(_Entry(cid, size, size))
        level = 0
        while len(self._levels[level]) == self.max_links:
            self._close(level)
            level += 1

    def _close(self, level: int) -> None:
        """Turn the pending links of `level` into one interior node on the level above."""
        entries = self._levels[level]
        sizes = [e.filesize for e in entries]
        data = encode_unixfs_file(sum(sizes), sizes)
        block = encode_node([PBLink(e.cid, e.tsize) for e in entries], data)
        cid = dag_pb_cid(block)
        if self._keep:
            self.nodes[cid] = block
        if level + 1 == len(self._levels):
            self._levels.append([])
        self._levels[level + 1].append(_Entry(cid, len(block) + sum(e.tsize for e in entries), sum(sizes)))
        self._levels[level] = []

    def finish(self) -> Cid:
        """Close the partial nodes bottom-up; the one entry left on top is the root."""
        if self._offset == 0 and not self._levels[0] and len(self._levels) == 1:
            if self._keep:
                self.leaves.append(Leaf(Cid.v1(RAW, EMPTY_DIGEST), 0, 0))
            return Cid.v1(RAW, EMPTY_DIGEST)
        level = 0
        while True:
            above = any(self._levels[level + 1 :])
            if not above and len(self._levels[level]) == 1:
                return self._levels[level][0].cid
            if self._levels[level]:
                self._close(level)
            level += 1

    def dag(self, root: Cid) -> FileDag:
        """The kept blocks (needs keep_dag=True)."""
        return FileDag(root, self._offset, self.leaves, self.nodes)


def _read_full(f: BinaryIO, buf: bytearray) -> int:
    """Fill `buf` unless the file ends first; return the byte count."""
    view, filled = memoryview(buf), 0
    while filled < len(buf):
        n = f.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _leaf_digests(view: memoryview, chunk_size: int) -> list[bytes]:
    return [hashlib.sha256(view[o : o + chunk_size]).digest() for o in range(0, len(view), chunk_size)]


def hash_file(
    path: str | Path,
    keep_dag: bool = False,
    progress: Progress | None = None,
    chunk_size: int = CHUNK_SIZE,
    chunks_per_read: int = CHUNKS_PER_READ,
    in_flight: int = READ_BUFFERS - 1,
) -> FileHashes:
    """CID and sha256 of a file in one read, the two hashes in parallel threads.

    The main thread reads `chunks_per_read` chunks at a time into one of `in_flight + 1` buffers
    while one worker hashes the whole file and another hashes the leaves of earlier buffers.
    """
    builder, whole = DagBuilder(keep_dag=keep_dag), hashlib.sha256()
    total, done = Path(path).stat().st_size, 0
    buffers = [bytearray(chunk_size * chunks_per_read) for _ in range(in_flight + 1)]
    pending: deque[tuple[Future[None], Future[list[bytes]], int]] = deque()

    def drain() -> None:
        whole_done, leaves, n = pending.popleft()
        whole_done.result()
        for i, digest in enumerate(leaves.result()):
            builder.add_leaf(digest, min(chunk_size, n - i * chunk_size))

    with (
        open(path, "rb", buffering=0) as f,
        ThreadPoolExecutor(1, "sha256-file") as file_pool,
        ThreadPoolExecutor(1, "sha256-leaves") as leaf_pool,
    ):
        for turn in itertools.count():
            buf = buffers[turn % len(buffers)]
            n = _read_full(f, buf)
            if n:
                view = memoryview(buf)[:n]
                whole_done = file_pool.submit(whole.update, view)
                pending.append((whole_done, leaf_pool.submit(_leaf_digests, view, chunk_size), n))
                done += n
            if len(pending) == in_flight:
                drain()
            if progress:
                progress(done, total)
            if n < len(buf):
                break
        while pending:
            drain()
    root = builder.finish()
    return FileHashes(root, whole.hexdigest(), done, builder.dag(root) if keep_dag else None)


def hash_bytes(data: bytes, keep_dag: bool = False, chunk_size: int = CHUNK_SIZE) -> FileHashes:
    """CID and sha256 of bytes in memory (tests, small files)."""
    builder = DagBuilder(keep_dag=keep_dag)
    for offset in range(0, len(data), chunk_size):
        chunk = data[offset : offset + chunk_size]
        builder.add_leaf(hashlib.sha256(chunk).digest(), len(chunk))
    root = builder.finish()
    return FileHashes(
        root, hashlib.sha256(data).hexdigest(), len(data), builder.dag(root) if keep_dag else None
    )
