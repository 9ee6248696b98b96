"""A small network for router tests: one approved tiny model, three staked paid nodes serving it
(each its own `python -m node` process and operator), a funded payer, and the router
(`python -m router`) as a process paying with that payer's account."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chain.accounts import dev_account
from storage.daemon import free_port
from tests.conftest import ROOT
from tests.gguf_models import write_tiny_llama
from tests.market_fixtures import Daemon, Net, ServerProcess, fund

PAYER_INDEX = 4
PAYER = dev_account(PAYER_INDEX)
# Payers that pay without the fixture's router (the SDK in process, ask.py): one account per router.
SDK_PAYER_INDEX, ASK_PAYER_INDEX = 7, 8
SDK_PAYER, ASK_PAYER = dev_account(SDK_PAYER_INDEX), dev_account(ASK_PAYER_INDEX)
OPERATORS = (dev_account(1), dev_account(5), dev_account(6))
DEPOSIT = 10**18  # 1 MESH
MODEL = "tiny-coder"


class RouterProcess(ServerProcess):
    """The router daemon as a child process, its log in a file."""

    name = "the router"

    def __init__(self, net: Net, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "router.log"
        args = ["--rpc-url", net.rpc_url, "--deployment", str(net.deployment_file), "--port", str(self.port)]
        environment = {
            **os.environ,
            "LLM_MESH_ROUTER_STATE_DIR": str(home / "state"),
            "LLM_MESH_ROUTER_PROBE_INTERVAL_S": "0.5",
            "LLM_MESH_ROUTER_RECEIPT_IDLE_S": "0.5",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "--dev-account", str(PAYER_INDEX), *args, *extra],
            cwd=ROOT,
            env=environment,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=5).json()

    def alive(self) -> set[str]:
        return {op for op, n in self.health()["nodes"].items() if n["alive"]}


@dataclass
class Mesh:
    net: Net
    model_id: int
    nodes: dict[str, Daemon]  # operator address -> its node
    router: RouterProcess

    def kill(self, operator: str) -> None:
        """kill -9 a node and its worker processes."""
        node = self.nodes[operator]
        workers = _children(node.proc.pid)
        node.proc.kill()
        node.proc.wait(10)
        for pid in workers:
            with _gone():
                os.kill(pid, signal.SIGKILL)


class _gone:  # noqa: N801 - a tiny context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is ProcessLookupError


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def mesh(net: Net, daemon_factory, tmp_path: Path) -> Iterator[Mesh]:
    for payer in (PAYER, SDK_PAYER, ASK_PAYER):  # before the nodes start: they load every escrow then
        fund(net, payer, DEPOSIT)
    model = write_tiny_llama(tmp_path / "tiny-coder.gguf", seed=5, name=MODEL, context=4096)
    model_id = asyncio.run(net.publish(MODEL, model))
    nodes: dict[str, Daemon] = {}
    for i, operator in enumerate(OPERATORS):
        port = free_port()
        net.register(operator, [model_id], node_id=f"node-{i}", endpoint=f"http://127.0.0.1:{port}")
        nodes[operator.address] = daemon_factory(
            [{"name": MODEL, "threads": 1, "n_ctx": 4096, "slots": 2, "eager": True}],
            port=port,
            operator=operator,
            home=tmp_path / f"node-{i}",
            node_id=f"node-{i}",
            payments={"settle_interval_s": 3600},
        )
    for node in nodes.values():
        node.until(lambda node=node: MODEL in node.models(), what="the node to serve")
    m = Mesh(net, model_id, nodes, RouterProcess(net, tmp_path / "router"))
    try:
        m.router.until(lambda: m.router.alive() == set(nodes), what="the router to see three live nodes")
        yield m
    finally:
        m.router.stop()  # the one running now (a test may have restarted it)
