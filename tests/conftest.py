"""Fixtures that start real processes (Anvil) on free loopback ports and always stop them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

ROOT = Path(__file__).resolve().parent.parent
NODE_BIN = ROOT / "node_modules" / ".bin"


def tool(name: str) -> str:
    """Path of a project tool (forge, anvil) installed by `make setup`."""
    path = NODE_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make setup`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_rpc(w3: Web3, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anvil exited with code {proc.returncode}")
        try:
            w3.eth.chain_id  # noqa: B018 - a readiness probe
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("anvil did not answer within 30 s")


@pytest.fixture(scope="session")
def anvil() -> Iterator[Web3]:
    """A real Anvil node for the whole session; tests isolate themselves with `chain_snapshot`."""
    port = free_port()
    proc = subprocess.Popen(
        [tool("anvil"), "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", "31337"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
    try:
        _wait_for_rpc(w3, proc)
        yield w3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def chain_snapshot(anvil: Web3) -> Iterator[Web3]:
    """Anvil with state reverted after the test."""
    snapshot = anvil.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield anvil
    finally:
        anvil.provider.make_request("evm_revert", [snapshot])
