"""Fixtures that start real processes (Anvil) on free loopback ports and always stop them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from web3 import Web3

from scripts.devnet import ROOT, find_tool

__all__ = ["ROOT", "free_port", "tool"]


def tool(name: str) -> str:
    """Path of a project tool (forge, anvil) installed by `make setup`."""
    try:
        return find_tool(name)
    except SystemExit as exc:
        pytest.fail(str(exc))


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
        start_new_session=True,
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


@dataclass
class Marketplace:
    """The contracts deployed on Anvil by `admin` (Anvil's account 0)."""

    w3: Web3
    deployment: Any
    admin: Any

    def contract(self, name: str) -> Any:
        """A web3 contract object for one deployed contract, by artifact name."""
        from chain.artifacts import load_artifact

        field = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        return self.w3.eth.contract(address=getattr(self.deployment, field), abi=load_artifact(name).abi)


@pytest.fixture
def marketplace(chain_snapshot: Web3) -> Marketplace:
    """Every contract deployed with default parameters; reverted after the test."""
    from chain.accounts import dev_account
    from chain.deploy import deploy_all

    admin = dev_account(0)
    return Marketplace(w3=chain_snapshot, deployment=deploy_all(chain_snapshot, admin), admin=admin)


@pytest.fixture
def automine_off(chain_snapshot: Web3) -> Iterator[Web3]:
    """Anvil with automine disabled for the test; re-enabled and pending transactions mined after."""
    chain_snapshot.provider.make_request("evm_setAutomine", [False])
    try:
        yield chain_snapshot
    finally:
        chain_snapshot.provider.make_request("evm_setAutomine", [True])
        chain_snapshot.provider.make_request("evm_mine", [])


# Fixtures defined beside: a marketplace with kubo daemons (market_fixtures), a real node server over
# tiny models (node_fixtures), real kubo daemons, a gateway server and the real model (storage_fixtures),
# three paid nodes behind the router (router_fixtures).
from tests.market_fixtures import daemon_factory, net  # noqa: E402, F401
from tests.node_fixtures import endless_model, node_server, tiny_model  # noqa: E402, F401
from tests.router_fixtures import mesh  # noqa: E402, F401
from tests.storage_fixtures import anyio_backend, gemma_model, gemma_sha256, kubo_bin, kubo_pair  # noqa: E402, F401
