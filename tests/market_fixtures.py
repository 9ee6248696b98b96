"""A deployed marketplace on Anvil with two kubo daemons, for the tests that drive models and nodes
through the chain: publish a file to kubo, propose and approve it, register a node, configure one."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.accounts import create_keystore, dev_account
from chain.deployment import Deployment, save_deployment
from chain.tx import TxSender
from chain.views import node_info
from node.config import HostedModel, NodeConfig
from storage.daemon import KuboDaemon, free_port
from storage.kubo import KuboClient
from storage.publish import PublishedFile, publish
from tests.conftest import ROOT, Marketplace
from tests.gguf_models import write_tiny_llama

OPERATOR = dev_account(1)
STRANGER = dev_account(3)  # never registers a node
PASSWORD = "node-operator-password"


# ---------------------------------------------------------------- the chain side of a test


@dataclass
class Net:
    """The deployed contracts, the kubo daemons and what a test needs to act on them."""

    market: Marketplace
    publisher: KuboDaemon  # models are added here
    fetcher: KuboDaemon  # the node fetches through this one
    tmp: Path
    deployment_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.deployment_file = self.tmp / "deployment.json"
        save_deployment(self.deployment, self.deployment_file)
        self.admin = TxSender(self.w3, self.market.admin)

    @property
    def w3(self) -> Web3:
        return self.market.w3

    @property
    def deployment(self) -> Deployment:
        return self.market.deployment

    @property
    def rpc_url(self) -> str:
        return str(self.w3.provider.endpoint_uri)

    @property
    def models(self) -> Any:
        return self.market.contract("ModelRegistry")

    @property
    def nodes(self) -> Any:
        return self.market.contract("NodeRegistry")

    async def add(self, path: Path) -> PublishedFile:
        """Add and pin a file to the publisher's kubo (no GGUF check: that is the node's job)."""
        async with KuboClient(self.publisher.api_url) as kubo:
            return await publish(kubo, path)

    def propose(self, name: str, facts: PublishedFile, *, sha256: str | None = None) -> int:
        spec = (
            name,
            str(facts.cid),
            bytes.fromhex(sha256 or facts.sha256),
            facts.size,
            "F32",
            512,
            10**15,
            ["python", "debugging"],
        )
        receipt = self.admin.send(self.models.functions.propose(spec))
        return self.models.events.ModelProposed().process_receipt(receipt)[0]["args"]["modelId"]

    def approve(self, model_id: int) -> None:
        self.admin.send(self.models.functions.approve(model_id))

    def deprecate(self, model_id: int) -> None:
        self.admin.send(self.models.functions.deprecate(model_id))

    async def publish(self, name: str, path: Path, *, approve: bool = True, sha256: str | None = None) -> int:
        """Add a file to kubo, propose it under `name` (with `sha256` instead of the file's, when
        given) and approve it; returns the model id."""
        facts = await self.add(path)
        model_id = await asyncio.to_thread(self.propose, name, facts, sha256=sha256)
        if approve:
            await asyncio.to_thread(self.approve, model_id)
        return model_id

    def register(
        self,
        operator: LocalAccount,
        hosted: list[int] | None = None,
        node_id: str = "test-node",
        endpoint: str | None = None,
    ) -> None:
        """Mint stake to `operator`, stake it and register a node (at a free, unused loopback
        endpoint unless told one)."""
        token = self.market.contract("NetworkToken")
        stake = self.nodes.functions.minStake().call()
        self.admin.send(token.functions.mint(operator.address, stake))
        sender = TxSender(self.w3, operator)
        sender.send(token.functions.approve(self.nodes.address, stake))
        sender.send(self.nodes.functions.stake(stake))
        endpoint = endpoint or f"http://127.0.0.1:{free_port()}"
        sender.send(self.nodes.functions.register(node_id, endpoint, '{"cpu_cores":2}', hosted or []))

    def hosted_on_chain(self, operator: LocalAccount = OPERATOR) -> list[int]:
        return list(node_info(self.nodes, operator.address).hosted_models)


@pytest.fixture
def net(marketplace: Marketplace, kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path) -> Net:
    return Net(marketplace, kubo_pair[0], kubo_pair[1], tmp_path)


def keystore_files(tmp: Path, account: LocalAccount) -> dict[str, Path]:
    """A keystore of `account` and its password file, as the node config names them."""
    password = tmp / "password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    keystore = tmp / "node-keystore.json"
    if not keystore.exists():  # a restarted daemon reuses its keystore
        create_keystore(keystore, PASSWORD, bytes(account.key))
    return {"keystore": keystore, "password_file": password}


def fund(net: Net, payer: LocalAccount, amount: int = 10**18) -> None:
    """Mint `amount` MESH to `payer` and deposit it into its Settlement escrow."""
    token = net.market.contract("NetworkToken")
    settlement = net.market.contract("Settlement")
    net.admin.send(token.functions.mint(payer.address, amount))
    sender = TxSender(net.w3, payer)
    sender.send(token.functions.approve(settlement.address, amount))
    sender.send(settlement.functions.deposit(amount))


def node_config(net: Net, models: list[HostedModel], **chain: Any) -> NodeConfig:
    return NodeConfig(
        node_id="test-node",
        hardware={"cpu_cores": 2, "ram_gb": 8, "storage_gb": 100},
        models=models,
        chain={"rpc_url": net.rpc_url, "deployment": net.deployment_file, **chain},
        cache_dir=net.tmp / "cache",
        cache_limit_gb=1,
    )


def tiny(tmp: Path, name: str, seed: int) -> Path:
    """A tiny random-weight llama GGUF; another seed gives another file (another CID)."""
    return write_tiny_llama(tmp / f"{name}-{seed}.gguf", seed=seed, name=name)


# ---------------------------------------------------------------- the node daemon as a process


class ServerProcess:
    """One of our daemons as a child process (`proc`), serving at `url`, its log in `log`."""

    name = "the daemon"
    proc: subprocess.Popen
    url: str
    log: Path

    def until(self, check, timeout: float = 60.0, what: str = "condition") -> Any:
        """Poll `check()` until it is truthy (HTTP errors count as not yet); fail at once if the
        process exited, and with its log's tail on a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
                )
            try:
                value = check()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120, **kw)

    def stop(self) -> int:
        """SIGTERM (a graceful stop), SIGKILL if it takes over a minute; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class Daemon(ServerProcess):
    """The node daemon as a child process, its log in a file."""

    def __init__(
        self,
        net: Net,
        models: list[dict],
        port: int | None = None,
        *,
        operator: LocalAccount = OPERATOR,
        home: Path | None = None,
        **extra: object,
    ) -> None:
        """`home`: the node's directory (config, keystore, cache, log; default the test's tmp)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.operator = operator
        home = home or net.tmp
        home.mkdir(parents=True, exist_ok=True)
        config = {
            "node_id": "daemon-test",
            "endpoint": self.url,
            "hardware": {"cpu_cores": 2, "ram_gb": 8, "storage_gb": 100},
            "models": models,
            "chain": {
                "rpc_url": net.rpc_url,
                "deployment": str(net.deployment_file),
                **{k: str(v) for k, v in keystore_files(home, operator).items()},
                "poll_interval_s": 0.2,
            },
            "cache_dir": str(home / "cache"),
            "cache_limit_gb": 1,
            "ipfs_api": net.fetcher.api_url,
            "payments": {"enabled": False},  # serving tests; test_node_payments turns it on
            **extra,
        }
        self.config = home / "node.json"
        self.config.write_text(json.dumps(config))
        self.log = home / "node.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", str(self.config)],
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def models(self) -> list[str]:
        return [m["id"] for m in httpx.get(self.url + "/v1/models", timeout=5).json()["data"]]


@pytest.fixture
def daemon_factory(net: Net) -> Iterator:
    started: list[Daemon] = []

    def start(models: list[dict], port: int | None = None, **extra: Any) -> Daemon:
        started.append(Daemon(net, models, port, **extra))
        return started[-1]

    try:
        yield start
    finally:
        for d in started:
            d.stop()
