"""The model cache: verified files by CID, a size limit and a free-disk floor, LRU eviction that never
touches a model in use or being fetched, shared safely by several processes on one directory.

Layout under the cache root:
- `<cid>`: the verified file, handed to llama.cpp. Its mtime is its last use.
- `<cid>.dag.json`: its DAG, so the node can serve it as a trustless gateway without re-hashing.
- `<cid>.verified.json`: the verification record: the sha256 and the file's size, mtime_ns, ctime_ns
  and inode as the cache last saw them (after verifying it, or after its own touch on use). A file
  whose stat differs changed behind the cache's back and is re-hashed before anyone gets it.
- `<cid>.partial`: a fetch in progress or interrupted; the next fetch resumes it.
- `.locks/cache.lock`: flock()ed around bookkeeping only (sizes, eviction, reservations, records),
  never around a download or a hash, so one process's long download never blocks another's hits.
- `.locks/<cid>.fetch`: flock()ed for the whole fetch or re-verification of that CID, so two
  processes never write one file and the second waits for the first and then gets a cache hit. It
  holds the holder's pid and the bytes its fetch reserved, which other processes count as used.
- `.locks/<cid>.use`: a shared flock per acquire(); eviction takes it exclusively without waiting,
  so a model in use by any process is never evicted.

Why per-CID locks plus a directory lock rather than one lock: a directory lock held for a download
would serialise every process behind the slowest transfer; per-CID locks alone cannot make "is
there room?" and "reserve it" one step across processes. flock() locks belong to an open file, so
they also order two caches in one process, and the kernel drops them when a process dies: a crashed
fetch leaves a partial file that is an orphan the moment its process is gone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.blocks import BlockSource
from storage.blockstore import FileBlockStore
from storage.cid import Cid, as_cid
from storage.errors import CacheFullError, CidError, IntegrityError, StorageError
from storage.fetch import PARTIAL_SUFFIX, Fetched, check_sha256, fetch_file
from storage.unixfs import FileDag, FileHashes, Leaf, Progress, hash_file

log = logging.getLogger(__name__)

DAG_SUFFIX = ".dag.json"
RECORD_SUFFIX = ".verified.json"
LOCK_DIR = ".locks"
FETCH_LOCK_SUFFIX = ".fetch"
USE_LOCK_SUFFIX = ".use"
_SIDECARS = (PARTIAL_SUFFIX, DAG_SUFFIX, RECORD_SUFFIX, ".tmp")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# The log dialect of chain.logs.kv, copied: storage imports nothing of ours (DESIGN.md, Layout).
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _kv(event: str, **fields: Any) -> str:
    """A structured log line: `event=name key=value ...`, values with spaces JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or _NEEDS_QUOTES.search(text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached model file. `in_use`: acquires by this cache, or 1 when only another process holds
    it. `verified`: its stat matches the verification record (else it is re-hashed on first use)."""

    cid: Cid
    path: Path
    size: int
    last_used: float
    in_use: int
    verified: bool = True


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What the verification record pins: any write, truncation or replacement changes one of these
    (ctime cannot be set back by a program, so a byte flipped with its mtime restored still shows)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _touch(path: Path) -> None:
    """Record a use: the precise clock, not the kernel's coarse file time, so close uses still order."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one step, so a crash or a full disk never leaves half a record."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lock_file(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path` (created if missing), or None when someone holds it.

    A lock file may be unlinked by whoever evicts its CID; a lock taken on the unlinked inode guards
    nothing, so it is dropped and taken again on the file now at `path` (bounded: each retry needs
    another eviction in between)."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise StorageError(
        f"the lock file {path} keeps being replaced: is another program deleting {path.parent}?"
    )


def _write_plan(fd: int, planned: int) -> None:
    """Tell other processes who holds a fetch lock and how many bytes its fetch will occupy."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {planned}\n".encode(), 0)


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
    """Verified model files by CID under `root`, at most `max_bytes` in total, leaving at least
    `min_free_bytes` free on the disk.

    `lock_timeout` bounds how long a fetch waits for another process fetching the same CID, polling
    its lock every `lock_poll` seconds. Construction reads no model bytes: a file without a matching
    verification record is re-hashed on first use (`fetch`, `acquire`) or by `verify_pending()`.
    """

    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        serve: FileBlockStore | None = None,
        min_free_bytes: int = 1 << 30,
        lock_timeout: float = 6 * 3600.0,
        lock_poll: float = 0.05,
    ) -> None:
        if max_bytes <= 0:
            raise StorageError(f"cache size limit must be positive, not {max_bytes}")
        if min_free_bytes < 0:
            raise StorageError(f"min_free_bytes must be 0 or more, not {min_free_bytes}")
        self.root = Path(root)
        self.max_bytes, self.min_free_bytes = max_bytes, min_free_bytes
        self.lock_timeout, self.lock_poll = lock_timeout, lock_poll
        self.blocks = serve if serve is not None else FileBlockStore()
        (self.root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(
            self.root / LOCK_DIR / "cache.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        # The flock is per open file, so threads of this process share it: the RLock orders them and
        # the depth count lets bookkeeping nest (make_room inside a fetch's reservation).
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._leases: dict[Cid, list[int]] = {}  # one shared-locked fd per acquire()
        self._locks: dict[Cid, asyncio.Lock] = {}
        self._busy_here: set[Cid] = set()  # CIDs this cache is fetching or verifying now
        self._served: set[Cid] = set()
        with self._dir_lock():
            for entry in self._entries():
                reason = self._unverified_reason(entry.cid)
                if reason is None and self._serve_recorded(entry.cid):
                    continue
                log.info(_kv("cache_unverified", cid=entry.cid, reason=reason or "no DAG record"))

    # -- paths and locks -------------------------------------------------------------------------

    def path(self, cid: Cid | str) -> Path:
        """Where the verified file for `cid` lives (whether or not it is there)."""
        return self.root / str(as_cid(cid))

    def _side(self, cid: Cid, suffix: str) -> Path:
        return self.root / f"{cid}{suffix}"

    def _lock_path(self, cid: Cid, suffix: str) -> Path:
        return self.root / LOCK_DIR / f"{cid}{suffix}"

    @contextmanager
    def _dir_lock(self) -> Iterator[None]:
        """Hold the directory lock (re-entrant within this cache). Only short bookkeeping runs under
        it: no download, no hash, no await."""
        with self._thread_lock:
            if self._depth == 0:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._dir_fd, fcntl.LOCK_UN)

    def _holder(self, cid: Cid) -> tuple[int | None, int]:
        """(pid, reserved bytes) written by whoever holds the CID's fetch lock."""
        try:
            words = self._lock_path(cid, FETCH_LOCK_SUFFIX).read_text().split()
            return int(words[0]), int(words[1])
        except (OSError, ValueError, IndexError):
            return None, 0  # just taken, not written yet

    def _fetches(self) -> dict[Cid, int]:
        """Fetches and verifications in progress in any process (this one too): cid -> reserved bytes.
        Idle lock files of CIDs with nothing on disk are removed on the way."""
        out: dict[Cid, int] = {}
        for lock in (self.root / LOCK_DIR).glob(f"*{FETCH_LOCK_SUFFIX}"):
            try:
                cid = Cid.parse(lock.name.removesuffix(FETCH_LOCK_SUFFIX))
            except CidError:
                continue
            fd = _lock_file(lock)
            if fd is None:
                out[cid] = self._holder(cid)[1]
                continue
            if not self.path(cid).exists() and not self._side(cid, PARTIAL_SUFFIX).exists():
                lock.unlink(missing_ok=True)
            os.close(fd)
        return out

    def _in_use(self, cid: Cid) -> int:
        """Acquires of `cid` by this cache, or 1 when only another process holds it."""
        local = len(self._leases.get(cid, ()))
        if local:
            return local
        lock = self._lock_path(cid, USE_LOCK_SUFFIX)
        if not lock.exists():
            return 0
        fd = _lock_file(lock)
        if fd is None:
            return 1
        os.close(fd)
        return 0

    @asynccontextmanager
    async def _fetch_lock(self, cid: Cid) -> AsyncIterator[int]:
        """Hold the CID's fetch lock: first among this cache's tasks, then across processes, polling
        the other holder's lock (a flock wait in a thread could not be cancelled at shutdown)."""
        async with self._locks.setdefault(cid, asyncio.Lock()):
            lock = self._lock_path(cid, FETCH_LOCK_SUFFIX)
            deadline = time.monotonic() + self.lock_timeout
            fd = _lock_file(lock)
            if fd is None:
                pid = self._holder(cid)[0]
                log.info(_kv("cache_fetch_waiting", cid=cid, holder_pid=pid, root=self.root))
            while fd is None:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"waited {self.lock_timeout:.0f} s for process {self._holder(cid)[0]} to finish "
                        f"fetching or verifying {cid} in {self.root}: if it is stuck, stop it (its lock "
                        "goes with it) or raise lock_timeout"
                    )
                await asyncio.sleep(self.lock_poll)
                fd = _lock_file(lock)
            try:
                with self._dir_lock():
                    _write_plan(fd, 0)  # nothing reserved yet, but our partial file is now ours
                self._busy_here.add(cid)
                yield fd
            finally:
                self._busy_here.discard(cid)
                os.close(fd)

    # -- what is there ---------------------------------------------------------------------------

    def has(self, cid: Cid | str) -> bool:
        """True when the file is in the cache (it may still await re-verification: see entries())."""
        return self.path(cid).is_file()

    def entries(self) -> list[CacheEntry]:
        """The complete files, least recently used first."""
        with self._dir_lock():
            return self._entries()

    def _entries(self) -> list[CacheEntry]:
        out = []
        for path in self.root.iterdir():
            if not path.is_file() or path.name.endswith(_SIDECARS):
                continue
            try:
                cid = Cid.parse(path.name)
            except CidError:
                continue
            st = path.stat()
            # Verified means servable too: a lost DAG record is rebuilt by the same re-hash.
            verified = self._unverified_reason(cid) is None and self._serve_recorded(cid)
            out.append(CacheEntry(cid, path, st.st_size, st.st_mtime, self._in_use(cid), verified))
        return sorted(out, key=lambda e: e.last_used)

    def pending(self) -> list[Cid]:
        """Cached files that will be re-hashed before they are handed out (no or a stale record)."""
        return [e.cid for e in self.entries() if not e.verified]

    def used_bytes(self) -> int:
        """Bytes taken by complete and partial files and their records, with every fetch in progress
        (in any process) counted at its full size."""
        with self._dir_lock():
            return self._used(self._fetches())

    def _used(self, fetches: dict[Cid, int]) -> int:
        total = 0
        for path in self.root.iterdir():
            if not path.is_file():
                continue
            if path.name.endswith(PARTIAL_SUFFIX) and self._partial_cid(path) in fetches:
                continue  # counted below, as the larger of what is there and what will be
            total += path.stat().st_size
        for cid, planned in fetches.items():
            total += max(planned, self._partial_size(cid))
        return total

    def _partial_size(self, cid: Cid) -> int:
        try:
            return self._side(cid, PARTIAL_SUFFIX).stat().st_size
        except FileNotFoundError:
            return 0

    def _partial_cid(self, path: Path) -> Cid | None:
        try:
            return Cid.parse(path.name.removesuffix(PARTIAL_SUFFIX))
        except CidError:
            return None

    def _footprint(self, cid: Cid) -> int:
        """Bytes evicting the model `cid` frees: its file and records (its partial file is separate)."""
        paths = (self._side(cid, suffix) for suffix in ("", DAG_SUFFIX, RECORD_SUFFIX))
        return sum(p.stat().st_size for p in paths if p.is_file())

    def _orphan_partials(self, fetches: dict[Cid, int]) -> list[tuple[float, Cid, int]]:
        """Interrupted downloads nobody is fetching now, in any process: (last write, cid, bytes)."""
        out = []
        for path in self.root.glob(f"*{PARTIAL_SUFFIX}"):
            cid = self._partial_cid(path)
            if cid is not None and cid not in fetches:
                st = path.stat()
                out.append((st.st_mtime, cid, st.st_size))
        return out

    def _disk(self, fetches: dict[Cid, int]) -> tuple[int, int]:
        """(free bytes on the disk, bytes a new fetch may use): free space less what fetches in
        progress will still write and less the headroom."""
        free = shutil.disk_usage(self.root).free
        promised = sum(max(0, planned - self._partial_size(cid)) for cid, planned in fetches.items())
        return free, free - promised - self.min_free_bytes

    # -- verification record ---------------------------------------------------------------------

    def _read_record(self, cid: Cid) -> tuple[_Stamp, str] | None:
        try:
            raw = json.loads(self._side(cid, RECORD_SUFFIX).read_text())
            if raw["cid"] != str(cid):
                return None
            stamp = _Stamp(int(raw["size"]), int(raw["mtime_ns"]), int(raw["ctime_ns"]), int(raw["ino"]))
            return stamp, str(raw["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_record(self, cid: Cid, sha256: str) -> None:
        stamp = _Stamp.of(self.path(cid).stat())
        record = {"cid": str(cid), "sha256": sha256, **dataclasses.asdict(stamp)}
        _write_atomic(self._side(cid, RECORD_SUFFIX), json.dumps(record))

    def _unverified_reason(self, cid: Cid, sha256: str | None = None) -> str | None:
        """None when the file is as it was verified (and has `sha256`, when given); else why not."""
        record = self._read_record(cid)
        if record is None:
            return "no verification record"
        try:
            now = _Stamp.of(self.path(cid).stat())
        except FileNotFoundError:
            return "file missing"
        stamp, recorded_sha = record
        if now.size != stamp.size:
            return f"size changed from {stamp.size} to {now.size} bytes"
        if now != stamp:
            return "modified after verification"
        if sha256 is not None and recorded_sha != sha256:
            return f"verified for sha256 {recorded_sha}, asked for {sha256}"
        return None

    def _serve_recorded(self, cid: Cid) -> bool:
        """Serve a verified file from its DAG record; False when the record is missing or unusable."""
        if cid in self._served:
            return True
        try:
            dag = dag_from_json(self._side(cid, DAG_SUFFIX).read_text())
        except (OSError, ValueError, KeyError, TypeError, StorageError):
            return False
        if dag.root != cid or dag.size != self.path(cid).stat().st_size:
            return False
        self.blocks.add(self.path(cid), dag)
        self._served.add(cid)
        return True

    def _touch_if_verified(self, cid: Cid, sha256: str | None) -> bool:
        """Under the directory lock: if the file is as verified, record this use and say True. The
        check comes first so that a touch never launders a change into the record."""
        if self._unverified_reason(cid, sha256) is not None or not self._serve_recorded(cid):
            return False
        record = self._read_record(cid)
        assert record is not None
        _touch(self.path(cid))
        try:
            self._write_record(cid, record[1])
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            # The file was verified an instant ago, so this hit is sound; a full disk only makes the
            # record stale, which costs one re-hash at the next use, never an unverified load.
            log.warning(_kv("cache_record_stale", cid=cid, reason="disk full"))
        return True

    def _hash(self, cid: Cid, progress: Progress | None) -> tuple[_Stamp, FileHashes] | None:
        """Re-hash a cached file (no lock but the CID's fetch lock: this is the slow part)."""
        path = self.path(cid)
        try:
            before = _Stamp.of(path.stat())
        except FileNotFoundError:
            return None
        log.info(_kv("cache_verify_started", cid=cid, bytes=before.size))
        return before, hash_file(path, keep_dag=True, progress=progress)

    def _settle(
        self, cid: Cid, hashed: tuple[_Stamp, FileHashes] | None, sha256: str | None
    ) -> IntegrityError | None:
        """Record a re-hash that matched, or evict the file and return the error that says why not."""
        with self._dir_lock():
            path = self.path(cid)
            if hashed is None or not path.is_file():
                return IntegrityError(
                    f"cached file {path}", "a file", "nothing", "it vanished: fetch it again"
                )
            before, got = hashed
            after = _Stamp.of(path.stat())
            want_sha = sha256 or (self._read_record(cid) or (None, got.sha256))[1]
            if got.cid == cid and got.sha256 == want_sha and after == before and got.dag is not None:
                _write_atomic(self._side(cid, DAG_SUFFIX), dag_to_json(got.dag))
                self._write_record(cid, got.sha256)
                self.blocks.remove(cid)
                self.blocks.add(path, got.dag)
                self._served.add(cid)
                log.info(_kv("cache_verified", cid=cid, bytes=got.size))
                return None
            changed = "it changed while being verified" if after != before else "it changed on disk"
            error = IntegrityError(
                f"cached file {path}",
                f"CID {cid}, sha256 {want_sha}",
                f"CID {got.cid}, sha256 {got.sha256} ({after.size} bytes)",
                f"{changed} after it was verified (a disk fault, or another program wrote to it); "
                "it was evicted: fetch it again, and check the disk if this repeats",
            )
            log.warning(_kv("cache_corrupt", cid=cid, expected=cid, actual=got.cid, bytes=after.size))
            self._remove(cid)  # in use or not: nobody may load these bytes again
            return error

    async def _ensure_verified(self, cid: Cid, sha256: str, progress: Progress | None) -> bool:
        """With the CID's fetch lock held: True when the cached file is verified (re-hashing it if its
        stat changed) and its use recorded; False when there is none or it was corrupt and evicted."""
        for _ in range(2):  # a re-hash, then the check that records the use
            if not self.path(cid).is_file():
                return False
            with self._dir_lock():
                if self._touch_if_verified(cid, sha256):
                    return True
            hashed = await asyncio.to_thread(self._hash, cid, progress)
            if self._settle(cid, hashed, sha256) is not None:
                return False
        with self._dir_lock():
            self._remove(cid)  # verified, then changed again at once: not to be trusted
        return False

    async def verify_pending(self, progress: Callable[[Cid], Progress] | None = None) -> dict[Cid, bool]:
        """Re-hash every file awaiting verification (run it in the background at start; `progress`
        gives a callback per file, e.g. `lambda cid: ProgressBar(f"verify {cid}")`). Returns
        cid -> verified; a corrupt file is evicted and logged (`event=cache_corrupt`)."""
        out = {}
        for cid in self.pending():
            async with self._fetch_lock(cid):
                out[cid] = await self._ensure_verified_any(cid, progress(cid) if progress else None)
        return out

    async def _ensure_verified_any(self, cid: Cid, progress: Progress | None) -> bool:
        if not self.path(cid).is_file():
            return False
        with self._dir_lock():
            if self._unverified_reason(cid) is None and self._serve_recorded(cid):
                return True
        hashed = await asyncio.to_thread(self._hash, cid, progress)
        return self._settle(cid, hashed, None) is None

    # -- use -------------------------------------------------------------------------------------

    @contextmanager
    def use(self, cid: Cid | str, progress: Progress | None = None) -> Iterator[Path]:
        """Hold a model while it is loaded: it is not evicted until the block exits."""
        path = self.acquire(cid, progress)
        try:
            yield path
        finally:
            self.release(cid)

    def acquire(self, cid: Cid | str, progress: Progress | None = None) -> Path:
        """Mark a cached model in use (seen by every process on the directory) and as just used;
        return its path. A file changed since it was verified is re-hashed first (blocking, with
        `progress`); IntegrityError (the file evicted) when it no longer matches its CID."""
        cid = as_cid(cid)
        for _ in range(2):  # a re-hash, then the check that takes the lease
            with self._dir_lock():
                path = self.path(cid)
                if not path.is_file():
                    raise StorageError(f"{cid} is not in the cache at {self.root}: fetch it first")
                if self._touch_if_verified(cid, None):
                    fd = os.open(self._lock_path(cid, USE_LOCK_SUFFIX), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
                    try:
                        # Exclusive holders (eviction, probes) hold the directory lock we now hold.
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BaseException:
                        os.close(fd)
                        raise
                    self._leases.setdefault(cid, []).append(fd)
                    return path
            self._verify_now(cid, progress)
        raise StorageError(f"{path} keeps changing while it is verified: is another program writing it?")

    def _verify_now(self, cid: Cid, progress: Progress | None) -> None:
        """acquire()'s re-hash; refuses rather than waits when a fetch or verification is running."""
        if cid in self._busy_here:
            raise StorageError(f"{cid} is being fetched or verified by this cache: await that fetch() first")
        fd = _lock_file(self._lock_path(cid, FETCH_LOCK_SUFFIX))
        if fd is None:
            pid = self._holder(cid)[0]
            raise StorageError(
                f"{cid} is being fetched or verified by process {pid}: acquire it when that ends"
            )
        try:
            self._busy_here.add(cid)
            error = self._settle(cid, self._hash(cid, progress), None)
        finally:
            self._busy_here.discard(cid)
            os.close(fd)
        if error is not None:
            raise error

    def release(self, cid: Cid | str) -> None:
        """Undo one acquire()."""
        cid = as_cid(cid)
        with self._thread_lock:
            fds = self._leases.get(cid)
            if not fds:
                return
            os.close(fds.pop())  # drops that shared lock
            if not fds:
                del self._leases[cid]

    def close(self) -> None:
        """Release every acquire and the directory lock file (the cache is unusable afterwards)."""
        with self._thread_lock:
            for fds in self._leases.values():
                for fd in fds:
                    os.close(fd)
            self._leases.clear()
            os.close(self._dir_fd)

    # -- eviction --------------------------------------------------------------------------------

    def make_room(self, needed: int, keep: Cid | None = None) -> list[Cid]:
        """Evict least recently used models not in use and interrupted downloads nobody is resuming
        (in any process) until `needed` more bytes fit under the limit and on the disk; return the
        evicted. Nothing is evicted when that cannot succeed. `keep` is never evicted."""
        with self._dir_lock():
            return self._make_room(needed, keep)

    def _make_room(self, needed: int, keep: Cid | None) -> list[Cid]:
        if needed > self.max_bytes:
            raise CacheFullError(
                f"a model of {needed} bytes cannot fit a cache limited to {self.max_bytes} bytes: "
                "raise the limit",
                needed=needed,
                free=self.max_bytes,
                limit=self.max_bytes,
                where="cache",
            )
        evicted: list[Cid] = []
        if needed <= 0:
            return evicted  # a resume that has every byte already: nothing more to hold
        for _ in range(3):  # again only if a candidate was taken by another process meanwhile
            fetches = self._fetches()
            cache_free = self.max_bytes - self._used(fetches)
            disk_free, disk_room = self._disk(fetches)
            if cache_free >= needed and disk_room >= needed:
                return evicted
            entries = self._entries()
            candidates = [(e.last_used, e.cid, self._footprint(e.cid), "model") for e in entries]
            candidates = [c for c in candidates if c[1] not in fetches and not self._in_use(c[1])]
            candidates += [(t, cid, size, "partial") for t, cid, size in self._orphan_partials(fetches)]
            chosen, gained = [], 0
            for _, cid, size, kind in sorted(candidates):
                if cache_free + gained >= needed and disk_room + gained >= needed:
                    break
                if cid != keep:
                    chosen.append((cid, kind))
                    gained += size
            if cache_free + gained < needed:
                in_use = tuple(e.cid for e in entries if e.in_use)
                busy = ", ".join(f"{e.cid} ({e.size} bytes)" for e in entries if e.in_use)
                fetching = ", ".join(f"{cid} ({size} bytes)" for cid, size in fetches.items() if cid != keep)
                raise CacheFullError(
                    f"need {needed} bytes but only {cache_free + gained} of {self.max_bytes} can be "
                    f"freed; in use: {busy or 'none'}; being fetched: {fetching or 'none'}. "
                    "Unload a model, wait for the fetches or raise the cache limit",
                    needed=needed,
                    free=cache_free + gained,
                    limit=self.max_bytes,
                    where="cache",
                    disk_free=disk_free,
                    in_use=in_use,
                    fetching=tuple(c for c in fetches if c != keep),
                )
            if disk_room + gained < needed:
                raise CacheFullError(
                    f"need {needed} bytes on the disk holding {self.root} but only {disk_room + gained} "
                    f"can be had ({disk_free} free, {self.min_free_bytes} kept free, fetches in progress "
                    f"still to write the rest, {gained} from evicting every model not in use): free disk "
                    "space, lower the cache limit or min_free_bytes, or move the cache to a larger disk",
                    needed=needed,
                    free=max(disk_room + gained, 0),
                    limit=self.max_bytes,
                    where="disk",
                    disk_free=disk_free,
                )
            complete = True
            for cid, kind in chosen:
                done = self._evict_partial(cid) if kind == "partial" else self._try_evict(cid, partial=False)
                if done:
                    evicted.append(cid)
                complete = complete and done
            if complete:
                return evicted
        return evicted

    def _try_evict(self, cid: Cid, partial: bool) -> bool:
        """Under the directory lock: evict `cid` if no process is fetching, verifying or using it."""
        fetch_fd = _lock_file(self._lock_path(cid, FETCH_LOCK_SUFFIX))
        if fetch_fd is None:
            return False
        try:
            use_fd = None if self._leases.get(cid) else _lock_file(self._lock_path(cid, USE_LOCK_SUFFIX))
            if use_fd is None:
                return False
            try:
                self._remove(cid, partial=partial)
                self._lock_path(cid, USE_LOCK_SUFFIX).unlink(missing_ok=True)
            finally:
                os.close(use_fd)
            if partial or not self._side(cid, PARTIAL_SUFFIX).exists():
                self._lock_path(cid, FETCH_LOCK_SUFFIX).unlink(missing_ok=True)
            return True
        finally:
            os.close(fetch_fd)

    def _evict_partial(self, cid: Cid) -> bool:
        """Under the directory lock: delete an interrupted download if no process is fetching it."""
        fd = _lock_file(self._lock_path(cid, FETCH_LOCK_SUFFIX))
        if fd is None:
            return False
        try:
            partial = self._side(cid, PARTIAL_SUFFIX)
            size = partial.stat().st_size if partial.exists() else 0
            partial.unlink(missing_ok=True)
            log.info(_kv("cache_partial_evicted", cid=cid, bytes=size))
            if not self.path(cid).exists():
                self._lock_path(cid, FETCH_LOCK_SUFFIX).unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def _remove(self, cid: Cid, partial: bool = True) -> None:
        """Delete a model's files and stop serving it (the caller checked who may still need it)."""
        self.blocks.remove(cid)
        self._served.discard(cid)
        size = self.path(cid).stat().st_size if self.path(cid).is_file() else 0
        for suffix in ("", DAG_SUFFIX, RECORD_SUFFIX) + ((PARTIAL_SUFFIX,) if partial else ()):
            self._side(cid, suffix).unlink(missing_ok=True)
        log.info(_kv("cache_evicted", cid=cid, bytes=size))

    def evict(self, cid: Cid | str) -> None:
        """Delete a model that no process is using, fetching or verifying, with its records and any
        partial download."""
        cid = as_cid(cid)
        with self._dir_lock():
            if self._in_use(cid):
                raise StorageError(f"{cid} is in use and cannot be evicted")
            if cid in self._fetches():
                pid = self._holder(cid)[0]
                raise StorageError(f"{cid} is being fetched (process {pid}) and cannot be evicted now")
            if not self._try_evict(cid, partial=True):
                raise StorageError(f"{cid} became busy and cannot be evicted now: try again")

    # -- fetch -----------------------------------------------------------------------------------

    async def fetch(
        self,
        source: BlockSource,
        cid: Cid | str,
        sha256: str,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """The verified file for `cid`: from the cache (re-hashed first if it changed on disk since
        it was verified; evicted and fetched again if it no longer matches), or fetched (resuming),
        verified and then exposed. A fetch of the same CID in another process is waited for."""
        cid, want = as_cid(cid), check_sha256(sha256)
        try:
            async with self._fetch_lock(cid) as fd:
                if await self._ensure_verified(cid, want, progress):
                    return self.path(cid)
                return await self._download(source, cid, want, size, progress, fd)
        except OSError as exc:  # a full disk outside the transfer (lock file, records)
            if exc.errno not in _DISK_FULL:
                raise
            raise self._disk_full(cid, 0) from exc

    async def _download(
        self, source: BlockSource, cid: Cid, sha256: str, size: int | None, progress: Progress | None, fd: int
    ) -> Path:
        partial = self._side(cid, PARTIAL_SUFFIX)
        planned = 0

        def room(dag: FileDag) -> None:
            # Room and reservation in one step under the directory lock, so two processes cannot both
            # see the same free bytes. Our partial file counts as what it holds; the rest must fit.
            nonlocal planned
            with self._dir_lock():
                have = partial.stat().st_size if partial.exists() else 0
                self._make_room(max(dag.size, 0) - have, keep=cid)
                planned = max(dag.size, 0)
                _write_plan(fd, planned)

        try:
            fetched: Fetched = await fetch_file(
                source, cid, self.path(cid), sha256, size, progress, on_plan=room
            )
            with self._dir_lock():
                _write_atomic(self._side(cid, DAG_SUFFIX), dag_to_json(fetched.dag))
                _touch(fetched.path)
                self._write_record(cid, fetched.sha256)
                self.blocks.remove(cid)
                self.blocks.add(fetched.path, fetched.dag)
                self._served.add(cid)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise self._disk_full(cid, planned) from exc
        log.info(_kv("cache_fetched", cid=cid, bytes=fetched.size, resumed_from=fetched.resumed_from))
        return fetched.path

    def _disk_full(self, cid: Cid, planned: int) -> CacheFullError:
        """The disk filled up under a fetch (something else wrote to it, or the estimate was off):
        delete interrupted downloads no process is writing, keep ours for resuming, and say so."""
        with self._dir_lock():
            fetches = self._fetches()
            removed = [c for _, c, _ in self._orphan_partials(fetches) if c != cid and self._evict_partial(c)]
            have = self._partial_size(cid)
            needed = max(planned - have, 0) + self.min_free_bytes
            free = shutil.disk_usage(self.root).free
        log.warning(
            _kv(
                "cache_disk_full", cid=cid, needed=needed, free=free, partials_removed=len(removed), kept=have
            )
        )
        return CacheFullError(
            f"the disk holding {self.root} filled up while fetching {cid}: {needed} more bytes needed "
            f"(with {self.min_free_bytes} kept free), {free} free after deleting {len(removed)} interrupted "
            f"downloads. Free disk space or lower the cache limit below what the disk can hold, then fetch "
            f"again: the {have} bytes already fetched are kept and resumed",
            needed=needed,
            free=free,
            limit=self.max_bytes,
            where="disk",
            disk_free=free,
        )
