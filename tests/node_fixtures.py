"""A real node HTTP server for the serving tests: uvicorn on a free loopback port in a thread with
its own event loop, real worker processes running llama.cpp, over a served set the test gives
(the chain-to-model path has its own tests; the daemon end to end runs in test_node_daemon)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node.app import build_stack
from node.config import HostedModel, ServingLimits
from node.local import local_servable
from node.models import ServableModel
from protocol.server import HttpServer
from protocol.service import run_services
from storage.daemon import free_port
from tests.gguf_models import scale_eos, write_tiny_llama

T = TypeVar("T")


def servable(path: Path, name: str, model_id: int = 1, **settings: Any) -> ServableModel:
    """A served model for a local GGUF file, as the model manager would hand it over."""
    return local_servable(
        path, name, HostedModel(name=name, **{"threads": 2, "n_ctx": 512, **settings}), model_id
    )


class NodeServer:
    """The node's app with its workers, served for real; `run(coro)` runs on the server's loop."""

    def __init__(self, models: list[ServableModel], limits: ServingLimits | None = None) -> None:
        self.limits = limits or ServingLimits()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._models = {m.name: m for m in models}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="node-server", daemon=True)
        self._thread.start()
        if not self._started.wait(60) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the node server did not start: {self._error!r}")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self.stop_event = asyncio.Event()
        stack = build_stack(self.limits, "test-node")
        self.workers, self.serving, self.metrics = stack.workers, stack.serving, stack.metrics
        self.http = HttpServer(
            stack.app, "127.0.0.1", self.port, max_connections=self.limits.max_connections, grace_s=5
        )
        self.workers.update(self._models)
        asyncio.get_running_loop().call_later(0, self._started.set)
        await run_services([self.workers, self.http], self.stop_event)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return self.run(call())

    def stop(self) -> None:
        if self._thread.is_alive() and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self.stop_event.set())
        self._thread.join(60)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama (0.5 MB) with a chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=1, context=1024)


@pytest.fixture(scope="session")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its </s> row zeroed: at temperature 0 it always runs to max_tokens."""
    path = write_tiny_llama(tmp_path_factory.mktemp("models") / "endless.gguf", seed=1, context=1024)
    return scale_eos(path, 0.0)


@pytest.fixture
def node_server(tiny_model: Path) -> Iterator[NodeServer]:
    server = NodeServer([servable(tiny_model, "tiny")])
    try:
        yield server
    finally:
        server.stop()
