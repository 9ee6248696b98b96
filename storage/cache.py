"""The model cache: verified files by CID, a size limit, LRU eviction that never touches models in use.

Layout under the cache root: `<cid>` (the verified file, handed to llama.cpp), `<cid>.dag.json` (its
DAG, so the node can serve it as a trustless gateway without re-hashing), `<cid>.partial` (a fetch
in progress or interrupted; the next fetch resumes it). A file's mtime is its last use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from storage.blocks import BlockSource
from storage.cid import Cid, as_cid
from storage.errors import CacheFullError, CidError, StorageError
from storage.fetch import PARTIAL_SUFFIX, Fetched, fetch_file
from storage.gateway import FileBlockStore
from storage.unixfs import FileDag, Leaf, Progress, hash_file

DAG_SUFFIX = ".dag.json"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached model file."""

    cid: Cid
    path: Path
    size: int
    last_used: float
    in_use: int


def _touch(path: Path) -> None:
    """Record a use: the precise clock, not the kernel's coarse file time, so close uses still order."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def dag_to_json(dag: FileDag) -> str:
    """Serialise a FileDag (interior blocks base64, leaves as [cid, offset, size])."""
    return json.dumps(
        {
            "root": str(dag.root),
            "size": dag.size,
            "leaves": [[str(leaf.cid), leaf.offset, leaf.size] for leaf in dag.leaves],
            "nodes": {str(cid): base64.b64encode(block).decode() for cid, block in dag.nodes.items()},
        }
    )


def dag_from_json(text: str) -> FileDag:
    """Inverse of dag_to_json; interior blocks are re-checked against their CIDs."""
    raw = json.loads(text)
    nodes = {Cid.parse(c): base64.b64decode(b) for c, b in raw["nodes"].items()}
    for cid, block in nodes.items():
        if not cid.matches(block):
            raise StorageError(f"DAG record holds a corrupt block {cid}")
    leaves = [Leaf(Cid.parse(c), offset, size) for c, offset, size in raw["leaves"]]
    return FileDag(Cid.parse(raw["root"]), raw["size"], leaves, nodes)


class ModelCache:
    """Verified model files by CID under `root`, at most `max_bytes` in total."""

    def __init__(self, root: str | Path, max_bytes: int, serve: FileBlockStore | None = None) -> None:
        if max_bytes <= 0:
            raise StorageError(f"cache size limit must be positive, not {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.blocks = serve if serve is not None else FileBlockStore()
        self._leases: dict[Cid, int] = {}
        self._locks: dict[Cid, asyncio.Lock] = {}
        # Fetches in progress and the bytes each will occupy: counted as used from the moment the fetch
        # knows its size, so concurrent fetches cannot together overfill the cache.
        self._reserved: dict[Cid, int] = {}
        for entry in self.entries():
            self._serve(entry.cid)

    def path(self, cid: Cid | str) -> Path:
        """Where the verified file for `cid` lives (whether or not it is there)."""
        return self.root / str(as_cid(cid))

    def has(self, cid: Cid | str) -> bool:
        """True when the verified file is in the cache."""
        return self.path(cid).is_file()

    def entries(self) -> list[CacheEntry]:
        """The complete files, least recently used first."""
        out = []
        for path in self.root.iterdir():
            if not path.is_file() or path.name.endswith((PARTIAL_SUFFIX, DAG_SUFFIX)):
                continue
            try:
                cid = Cid.parse(path.name)
            except CidError:
                continue
            st = path.stat()
            out.append(CacheEntry(cid, path, st.st_size, st.st_mtime, self._leases.get(cid, 0)))
        return sorted(out, key=lambda e: e.last_used)

    def used_bytes(self) -> int:
        """Bytes taken by complete and partial files and their DAG records, with every fetch in
        progress counted at its full size."""
        total = 0
        for path in self.root.iterdir():
            if not path.is_file():
                continue
            size = path.stat().st_size
            if path.name.endswith(PARTIAL_SUFFIX) and self._partial_cid(path) in self._reserved:
                continue  # counted below, as the larger of what is there and what will be
            total += size
        for cid, planned in self._reserved.items():
            partial = self.root / f"{cid}{PARTIAL_SUFFIX}"
            total += max(planned, partial.stat().st_size if partial.is_file() else 0)
        return total

    def _partial_cid(self, path: Path) -> Cid | None:
        try:
            return Cid.parse(path.name.removesuffix(PARTIAL_SUFFIX))
        except CidError:
            return None

    def _footprint(self, cid: Cid) -> int:
        """Bytes evicting `cid` frees: its file, DAG record and any partial download."""
        paths = (self.root / f"{cid}{suffix}" for suffix in ("", DAG_SUFFIX, PARTIAL_SUFFIX))
        return sum(p.stat().st_size for p in paths if p.is_file())

    def _orphan_partials(self) -> list[tuple[float, Cid]]:
        """Interrupted downloads nobody is fetching now, as (last write, cid)."""
        out = []
        for path in self.root.glob(f"*{PARTIAL_SUFFIX}"):
            cid = self._partial_cid(path)
            if cid is not None and cid not in self._reserved and not self.path(cid).exists():
                out.append((path.stat().st_mtime, cid))
        return out

    def _serve(self, cid: Cid) -> None:
        """Register a cached file with the gateway block store (rebuilding its DAG record if lost)."""
        sidecar = self.root / f"{cid}{DAG_SUFFIX}"
        try:
            dag = dag_from_json(sidecar.read_text())
        except (OSError, ValueError, KeyError, StorageError):
            hashes = hash_file(self.path(cid), keep_dag=True)
            if hashes.cid != cid or hashes.dag is None:
                return  # not built with the network's parameters: still usable, just not served
            dag = hashes.dag
            sidecar.write_text(dag_to_json(dag))
        self.blocks.add(self.path(cid), dag)

    @contextmanager
    def use(self, cid: Cid | str) -> Iterator[Path]:
        """Hold a model while it is loaded: it is not evicted until the block exits."""
        path = self.acquire(cid)
        try:
            yield path
        finally:
            self.release(cid)

    def acquire(self, cid: Cid | str) -> Path:
        """Mark a cached model in use (counted) and as just used; return its path."""
        cid = as_cid(cid)
        path = self.path(cid)
        if not path.is_file():
            raise StorageError(f"{cid} is not in the cache at {self.root}: fetch it first")
        self._leases[cid] = self._leases.get(cid, 0) + 1
        _touch(path)
        return path

    def release(self, cid: Cid | str) -> None:
        """Undo one acquire()."""
        cid = as_cid(cid)
        count = self._leases.get(cid, 0) - 1
        if count > 0:
            self._leases[cid] = count
        else:
            self._leases.pop(cid, None)

    def make_room(self, needed: int, keep: Cid | None = None) -> list[Cid]:
        """Evict least recently used models not in use (and interrupted downloads nobody is resuming)
        until `needed` more bytes fit; return the evicted. `keep` is never evicted."""
        if needed > self.max_bytes:
            raise CacheFullError(
                f"a model of {needed} bytes cannot fit a cache limited to {self.max_bytes} bytes: "
                "raise the limit"
            )
        evicted = []
        free = self.max_bytes - self.used_bytes()
        candidates = [(e.last_used, e.cid) for e in self.entries() if not e.in_use]
        for _, cid in sorted(candidates + self._orphan_partials()):
            if free >= needed:
                break
            if cid == keep or cid in self._reserved:
                continue
            free += self._footprint(cid)
            self.evict(cid)
            evicted.append(cid)
        if free < needed:
            busy = ", ".join(f"{e.cid} ({e.size} bytes)" for e in self.entries() if e.in_use)
            fetching = ", ".join(f"{cid} ({size} bytes)" for cid, size in self._reserved.items())
            raise CacheFullError(
                f"need {needed} bytes but only {free} of {self.max_bytes} can be freed; "
                f"in use: {busy or 'none'}; being fetched: {fetching or 'none'}. "
                "Unload a model, wait for the fetches or raise the cache limit"
            )
        return evicted

    def evict(self, cid: Cid | str) -> None:
        """Delete a model that is neither in use nor being fetched, with its DAG record and any partial
        download."""
        cid = as_cid(cid)
        if self._leases.get(cid):
            raise StorageError(f"{cid} is in use and cannot be evicted")
        if cid in self._reserved:
            raise StorageError(f"{cid} is being fetched and cannot be evicted now")
        self.blocks.remove(cid)
        for suffix in ("", DAG_SUFFIX, PARTIAL_SUFFIX):
            (self.root / f"{cid}{suffix}").unlink(missing_ok=True)

    async def fetch(
        self,
        source: BlockSource,
        cid: Cid | str,
        sha256: str,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """The verified file for `cid`: from the cache, or fetched (resuming), verified and then exposed."""
        cid = as_cid(cid)
        lock = self._locks.setdefault(cid, asyncio.Lock())
        async with lock:
            if self.has(cid):
                _touch(self.path(cid))
                return self.path(cid)

            def room(dag: FileDag) -> None:
                # Reserved at 0, our partial file counts as what it holds; the rest must fit.
                partial = self.root / f"{cid}{PARTIAL_SUFFIX}"
                have = partial.stat().st_size if partial.exists() else 0
                self.make_room(max(dag.size, 0) - have, keep=cid)
                self._reserved[cid] = max(dag.size, 0)

            self._reserved[cid] = 0  # from now on nobody evicts its partial download
            try:
                fetched: Fetched = await fetch_file(
                    source, cid, self.path(cid), sha256, size, progress, on_plan=room
                )
                (self.root / f"{cid}{DAG_SUFFIX}").write_text(dag_to_json(fetched.dag))
            finally:
                self._reserved.pop(cid, None)
            self.blocks.add(fetched.path, fetched.dag)
            _touch(fetched.path)
            return fetched.path
