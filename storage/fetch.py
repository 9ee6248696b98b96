"""Verified, resumable file fetch: every leaf checked against the CID's DAG, the whole file against
the on-chain sha256, written under a temporary name and renamed only once both match.

The DAG walk (`plan_file`) proves which leaf bytes the CID stands for; the writer hashes each leaf
and the whole file in two threads while writing in order (a source whose own `leaves` already matched
each leaf to its CID, as the gateway fetcher does for failover, is not hashed twice). An interrupted
fetch leaves `<dest>.partial`; the next fetch re-checks its leaves from disk, keeps the good prefix
and continues from there. The partial file is flock()ed for the whole fetch, so a second process
fetching into the same place is refused instead of appending to it, and the file on disk must be
exactly the DAG's size before it is renamed.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.blocks import BlockSource, leaves_are_checked, plan_file
from storage.cid import Cid, as_cid
from storage.errors import IntegrityError, StorageError
from storage.unixfs import FileDag, FileHashes, Leaf, Progress, hash_file

PARTIAL_SUFFIX = ".partial"
# A leaf on its way to disk: the leaf, its bytes, its CID check (None: the source checked it), the
# whole-file hash update and the write.
_Queued = tuple[Leaf, bytes | bytearray, "Future[bool] | None", "Future[None]", "Future[None]"]


@dataclass(frozen=True, slots=True)
class Fetched:
    """A verified file: where it is, its CID, sha256, size and DAG (for serving it as a gateway)."""

    path: Path
    cid: Cid
    sha256: str
    size: int
    dag: FileDag
    resumed_from: int = 0


class FetchInProgressError(StorageError):
    """Another process (or another fetch in this one) is writing the same partial file."""

    def __init__(self, partial: Path) -> None:
        self.partial = partial
        super().__init__(
            f"another fetch is already writing {partial}: wait for it to finish, or fetch through a "
            "ModelCache on that directory, which makes processes take turns"
        )


def _lock_partial(partial: Path) -> int:
    """Create `partial` if needed and hold an exclusive flock on it (the returned fd); refuse at once
    when another writer holds it, since two writers appending to one file corrupt it."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FetchInProgressError(partial) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_sha256(value: str) -> str:
    """Normalise a hex sha256 (optionally 0x-prefixed); raise StorageError saying what is wrong."""
    text = value.lower().removeprefix("0x")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise StorageError(f"{value!r} is not a sha256: expected 64 hex digits (as `sha256sum` prints)")
    return text


# Leaves a fetch holds in memory at most while they are hashed and written: its memory bound.
FETCH_WINDOW = 16


class _Writer:
    """Writes leaves in file order while checking them: the leaf hashes, the whole-file sha256 and the
    writes each run in their own thread over the same buffers, and a fourth thread flushes to disk
    every `sync_every` bytes so that the final fsync does not wait for the whole file's writeback."""

    def __init__(
        self,
        path: Path,
        root: Cid,
        whole: Any,
        window: int = FETCH_WINDOW,
        sync_every: int = 32 << 20,
        leaves_checked: bool = False,
    ) -> None:
        self._file = path.open("ab")
        self._root, self._whole, self._window, self._sync_every = root, whole, window, sync_every
        self._leaves_checked = leaves_checked
        self._hash = ThreadPoolExecutor(1, "fetch-sha256")
        self._leaf = ThreadPoolExecutor(1, "fetch-leaf")
        self._disk = ThreadPoolExecutor(1, "fetch-write")
        self._flusher = ThreadPoolExecutor(1, "fetch-flush")
        self._flushing: Future[None] | None = None
        self._pending: deque[_Queued] = deque()
        self._unsynced = 0
        self.written = path.stat().st_size

    def _write(self, data: bytes | bytearray) -> None:
        self._file.write(data)
        self._unsynced += len(data)
        if self._unsynced >= self._sync_every and (self._flushing is None or self._flushing.done()):
            if self._flushing is not None:
                # Linux reports a writeback error once: a failed background sync must fail the fetch,
                # or the final fsync could succeed over lost pages and the file be exposed.
                self._flushing.result()
            self._file.flush()
            self._flushing = self._flusher.submit(os.fdatasync, self._file.fileno())
            self._unsynced = 0

    async def add(self, leaf: Leaf, data: bytes | bytearray) -> None:
        """Queue a leaf; waits when `window` leaves are still being hashed or written. A leaf the
        source already matched to its CID (`leaves_checked`) is not hashed a second time."""
        intact = None if self._leaves_checked else self._leaf.submit(leaf.cid.matches, data)
        self._pending.append(
            (
                leaf,
                data,
                intact,
                self._hash.submit(self._whole.update, data),
                self._disk.submit(self._write, data),
            )
        )
        if len(self._pending) > self._window:
            await self._settle()

    async def _settle(self) -> None:
        leaf, data, intact, hashed, written = self._pending.popleft()
        matches = True if intact is None else await asyncio.wrap_future(intact)
        await asyncio.wrap_future(hashed)
        await asyncio.wrap_future(written)
        length = len(data)
        if not matches:
            raise IntegrityError(
                f"leaf {leaf.cid} at byte {leaf.offset} of {self._root}",
                f"sha256 {leaf.cid.digest.hex()}",
                f"sha256 {hashlib.sha256(data).hexdigest()}",
                "the source sent tampered or corrupt bytes; the partial file was deleted",
            )
        if leaf.size >= 0 and length != leaf.size:
            raise IntegrityError(
                f"leaf {leaf.cid} at byte {leaf.offset} of {self._root}",
                f"{leaf.size} bytes (in its parent)",
                f"{length} bytes",
                "the DAG and the block disagree; the partial file was deleted",
            )
        self.written += length

    async def finish(self) -> str:
        """Wait for everything, fsync, return the whole-file sha256."""
        while self._pending:
            await self._settle()
        await asyncio.to_thread(self._sync)
        return str(self._whole.hexdigest())

    def _sync(self) -> None:
        if self._flushing is not None:
            self._flushing.result()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Stop the threads and close the file (pending work is dropped)."""
        for pool in (self._hash, self._leaf, self._disk, self._flusher):
            pool.shutdown(wait=True, cancel_futures=True)
        self._file.close()


def _good_prefix(partial: Path, dag: FileDag) -> tuple[int, Any]:
    """How many leaves of an interrupted download are intact, and the sha256 state after them."""
    whole, count = hashlib.sha256(), 0
    have = partial.stat().st_size
    with partial.open("rb") as f:
        for leaf in dag.leaves:
            if leaf.size < 0 or leaf.offset + leaf.size > have:
                break
            data = f.read(leaf.size)
            if not leaf.cid.matches(data):
                break
            whole.update(data)
            count += 1
    end = dag.leaves[count - 1].offset + dag.leaves[count - 1].size if count else 0
    os.truncate(partial, end)
    return count, whole


async def fetch_file(
    source: BlockSource,
    cid: Cid | str,
    dest: str | Path,
    sha256: str,
    size: int | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[FileDag], None] | None = None,
) -> Fetched:
    """Fetch `cid` to `dest`, verified against the CID and `sha256` (and `size` when given).

    Writes `<dest>.partial` and renames it to `dest` only after both hashes match; on a mismatch the
    partial file is deleted and IntegrityError names both hashes. Other failures keep the partial
    file, and the next call resumes from its last intact leaf.
    """
    root, want, dest = as_cid(cid), check_sha256(sha256), Path(dest)
    dag = await plan_file(source, root)
    if size is not None and dag.size >= 0 and dag.size != size:
        raise IntegrityError(f"size of {root}", f"{size} bytes (on chain)", f"{dag.size} bytes (in the DAG)")
    if on_plan is not None:
        on_plan(dag)
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    partial.parent.mkdir(parents=True, exist_ok=True)
    guard = _lock_partial(partial)
    try:
        return await _fetch_locked(source, root, dest, partial, dag, want, size, progress)
    finally:
        os.close(guard)  # after the rename: the lock then sits on the verified file, and goes with it


async def _fetch_locked(
    source: BlockSource,
    root: Cid,
    dest: Path,
    partial: Path,
    dag: FileDag,
    want: str,
    size: int | None,
    progress: Progress | None,
) -> Fetched:
    """fetch_file's transfer, with the partial file's lock held."""
    start, whole = await asyncio.to_thread(_good_prefix, partial, dag)
    writer = _Writer(partial, root, whole, leaves_checked=leaves_are_checked(source))
    resumed_from = writer.written
    try:
        async with aclosing(source.leaves(dag, start)) as leaves:
            async for leaf, data in leaves:
                if leaf.size < 0:  # a single raw block: now its size is known
                    leaf = dag.leaves[0] = Leaf(leaf.cid, 0, len(data))
                    dag.size = len(data)
                await writer.add(leaf, data)
                if progress is not None:
                    progress(writer.written, dag.size)
        actual = await writer.finish()
        if progress is not None:
            progress(writer.written, dag.size)
    except IntegrityError:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    except Exception:
        await _keep_what_arrived(writer, partial)
        raise
    finally:
        writer.close()
    if actual != want or (size is not None and dag.size != size):
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 of {root} ({dag.size} bytes)", f"{want} (on chain)", actual, "the file was deleted"
        )
    # The hashes cover the bytes this fetch wrote, not the file: anything else that wrote to it (a
    # second writer, a stray truncation) shows as a size that is not the DAG's.
    on_disk = os.stat(partial).st_size
    if on_disk != dag.size:
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"size of {partial} on disk",
            f"{dag.size} bytes (the DAG of {root})",
            f"{on_disk} bytes",
            "something else wrote to the partial file; it was deleted, fetch again",
        )
    os.replace(partial, dest)
    _fsync_dir(dest.parent)
    return Fetched(dest, root, actual, dag.size, dag, resumed_from)


async def _keep_what_arrived(writer: _Writer, partial: Path) -> None:
    """After a transfer error: check and write the leaves already received, so a resume skips them.

    A tampered leaf among them still deletes the partial file and raises IntegrityError."""
    try:
        await writer.finish()
    except IntegrityError:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    except Exception:
        return  # the transfer error the caller is raising is the one to report


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_file(
    path: str | Path, cid: Cid | str, sha256: str, progress: Progress | None = None
) -> FileHashes:
    """Check a local file against its CID and sha256 in one parallel pass; IntegrityError names both."""
    root, want = as_cid(cid), check_sha256(sha256)
    got = hash_file(path, keep_dag=True, progress=progress)
    if got.cid != root:
        raise IntegrityError(f"CID of {path}", str(root), str(got.cid))
    if got.sha256 != want:
        raise IntegrityError(f"sha256 of {path}", want, got.sha256)
    return got
