"""The event watcher against real Anvil processes: confirmations, batches, resume, restarts, reorgs."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.artifacts import load_artifact
from chain.deploy import deploy_all
from chain.errors import ChainError
from chain.watcher import RETRYABLE_ERRORS, ChainEvent, EventWatcher
from tests.conftest import free_port, tool

ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # Anvil's account 0
USER = Web3.to_checksum_address("0x70997970c51812dc3a010c7d01b50e0d4e6ba6c8")  # Anvil's account 1
DEPLOYMENT_FIELDS = {
    "NetworkToken": "network_token",
    "ModelRegistry": "model_registry",
    "NodeRegistry": "node_registry",
    "Settlement": "settlement",
    "HysaVault": "hysa_vault",
}


# ---------------------------------------------------------------- processes


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a readiness predicate until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class AnvilProcess:
    """One Anvil process that a test may stop and start again on the same port."""

    def __init__(self, *, chain_id: int = 31337, state_file: Path | None = None) -> None:
        self.port = free_port()
        self.chain_id = chain_id
        self.state_file = state_file
        self.proc: subprocess.Popen | None = None
        # No provider-level retries: the watcher's own retry loop is what is under test.
        self.w3 = Web3(
            Web3.HTTPProvider(
                f"http://127.0.0.1:{self.port}",
                request_kwargs={"timeout": 10},
                exception_retry_configuration=None,
            )
        )

    def start(self) -> None:
        args = [tool("anvil"), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        args += ["--chain-id", str(self.chain_id)]
        if self.state_file is not None:
            args += ["--state", str(self.state_file)]
        # `anvil` from npm is a node wrapper around the native binary: a session of its own lets
        # stop() kill both, where killing the wrapper alone would orphan a still-serving Anvil.
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True,
        )
        wait_until(self._answers, what=f"anvil on port {self.port}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"anvil exited with code {self.proc.returncode}")
        try:
            return self.w3.eth.chain_id == self.chain_id
        except RETRYABLE_ERRORS:
            return False

    def stop(self) -> None:
        """SIGTERM (the wrapper forwards it; Anvil dumps `--state` on it), then wait; kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def anvil_factory() -> Iterator[Callable[..., AnvilProcess]]:
    """Start Anvil processes for one test; all are stopped at the end."""
    started: list[AnvilProcess] = []

    def start(**kwargs: Any) -> AnvilProcess:
        node = AnvilProcess(**kwargs)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


# ---------------------------------------------------------------- the chain


def transact(w3: Web3, account: LocalAccount, call: Any) -> dict:
    """Sign and send a contract call with eth_account, wait for the receipt, require success."""
    tx = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), timeout=30
    )
    assert receipt["status"] == 1, f"transaction {receipt['transactionHash'].hex()} reverted"
    return receipt


def model_spec(name: str) -> tuple:
    """A valid ModelRegistry.ModelSpec."""
    digest = Web3.keccak(text=name)
    return (name, f"bafy-{name}", digest, 1234, "Q4_K_M", 8192, 10**15, ["python"])


@dataclass
class Devnet:
    """A fresh chain with the contracts deployed."""

    node: AnvilProcess
    deployment: Any  # chain.deploy's Deployment (moving to chain.deployment); fields are stable
    admin: LocalAccount

    @property
    def w3(self) -> Web3:
        return self.node.w3

    def contracts(self, *names: str) -> dict[str, Contract]:
        """web3 contracts by name (all of them when no name is given)."""
        chosen = names or tuple(DEPLOYMENT_FIELDS)
        return {
            name: self.w3.eth.contract(
                address=getattr(self.deployment, DEPLOYMENT_FIELDS[name]), abi=load_artifact(name).abi
            )
            for name in chosen
        }

    def mint(self, amount: int, to: str = USER) -> dict:
        return transact(
            self.w3, self.admin, self.contracts("NetworkToken")["NetworkToken"].functions.mint(to, amount)
        )

    def propose(self, name: str) -> dict:
        registry = self.contracts("ModelRegistry")["ModelRegistry"]
        return transact(self.w3, self.admin, registry.functions.propose(model_spec(name)))

    def mine(self, blocks: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])

    def watcher(self, state_path: Path, **kwargs: Any) -> EventWatcher:
        kwargs.setdefault("start_block", self.deployment.block_number + 1)
        kwargs.setdefault("poll_interval", 0.02)
        kwargs.setdefault("initial_backoff", 0.02)
        kwargs.setdefault("max_backoff", 0.2)
        return EventWatcher(self.w3, self.contracts(), state_path, **kwargs)


def start_devnet(anvil_factory: Callable[..., AnvilProcess], **kwargs: Any) -> Devnet:
    node = anvil_factory(**kwargs)
    admin = Account.from_key(ADMIN_KEY)
    return Devnet(node=node, deployment=deploy_all(node.w3, admin), admin=admin)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Devnet]:
    """One Anvil with the contracts deployed, shared by the tests of this module."""
    node = AnvilProcess()
    try:
        node.start()
        admin = Account.from_key(ADMIN_KEY)
        yield Devnet(node=node, deployment=deploy_all(node.w3, admin), admin=admin)
    finally:
        node.stop()


@pytest.fixture
def devnet(deployed: Devnet) -> Iterator[Devnet]:
    """The shared deployment, reverted (blocks and state) after the test."""
    snapshot = deployed.w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield deployed
    finally:
        assert deployed.w3.provider.make_request("evm_revert", [snapshot])["result"] is True
        assert deployed.w3.eth.block_number == deployed.deployment.block_number


def minted(events: list[ChainEvent]) -> list[int]:
    """The amounts of the token mints among the events (Transfer from the zero address)."""
    return [
        e.args["value"]
        for e in events
        if e.contract == "NetworkToken" and e.event == "Transfer" and int(e.args["from"], 16) == 0
    ]


def positions(events: list[ChainEvent]) -> list[tuple[int, int]]:
    return [(e.block_number, e.log_index) for e in events]


# ---------------------------------------------------------------- delivery


def test_poll_deliversEventsOnceInOrderAfterConfirmations(devnet: Devnet, tmp_path: Path) -> None:
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=2)
    receipt = devnet.mint(1)
    assert watcher.poll() == []
    devnet.mine()
    assert watcher.poll() == []  # one confirmation is not two
    devnet.mine()
    [event] = watcher.poll()
    assert event == ChainEvent(
        contract="NetworkToken",
        event="Transfer",
        args={"from": "0x" + "00" * 20, "to": USER, "value": 1},
        block_number=receipt["blockNumber"],
        block_hash=Web3.to_hex(receipt["blockHash"]),
        tx_hash=Web3.to_hex(receipt["transactionHash"]),
        log_index=0,
    )
    assert watcher.poll() == []
    devnet.mint(2)
    devnet.propose("qwen-coder")
    devnet.mint(3)
    devnet.mine(2)
    events = watcher.poll()
    assert minted(events) == [2, 3]
    assert [e.event for e in events] == ["Transfer", "ModelProposed", "Transfer"]
    assert events[1].args["name"] == "qwen-coder" and events[1].args["publisher"] == devnet.admin.address
    assert positions(events) == sorted(positions(events))
    assert watcher.poll() == []
    assert watcher.last_processed == devnet.w3.eth.block_number - 2


def test_poll_decodesEventsOfEveryWatchedContract(devnet: Devnet, tmp_path: Path) -> None:
    watcher = devnet.watcher(tmp_path / "state.json", start_block=0, confirmations=0)
    events = watcher.poll()
    raw = devnet.w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
    assert len(events) == len(raw)
    assert {e.contract for e in events} == set(DEPLOYMENT_FIELDS)
    assert ("HysaVault", "Deposit") in {(e.contract, e.event) for e in events}
    assert ("Settlement", "RoleGranted") in {(e.contract, e.event) for e in events}
    assert positions(events) == sorted(positions(events))


def test_poll_skipsTopicsItsAbisDoNotKnow(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = devnet.contracts("NetworkToken")["NetworkToken"]
    transfer_only = [e for e in full.abi if e.get("type") != "event" or e["name"] == "Transfer"]
    token = devnet.w3.eth.contract(address=full.address, abi=transfer_only)
    watcher = EventWatcher(
        devnet.w3, {"NetworkToken": token}, tmp_path / "state.json",
        start_block=devnet.w3.eth.block_number + 1, confirmations=0,
    )  # fmt: skip
    user = Account.create()
    devnet.mint(10**18, to=devnet.admin.address)
    transact(devnet.w3, devnet.admin, full.functions.approve(user.address, 5))  # an Approval log
    devnet.mint(7)
    caplog.set_level(logging.DEBUG, logger="chain.watcher")
    events = watcher.poll()
    assert [e.event for e in events] == ["Transfer", "Transfer"]
    assert minted(events) == [10**18, 7]
    assert _records(caplog, "watcher.unknown_log")


def test_poll_deliversEverythingAcrossSmallBatches(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=1, batch_size=3)
    ranges: list[tuple[int, int]] = []
    real_get_logs = devnet.w3.eth.get_logs

    def recording_get_logs(params: dict) -> Any:
        ranges.append((params["fromBlock"], params["toBlock"]))
        assert sorted(params["address"]) == sorted(c.address for c in devnet.contracts().values())
        return real_get_logs(params)

    monkeypatch.setattr(devnet.w3.eth, "get_logs", recording_get_logs)
    amounts = list(range(1, 21))
    for amount in amounts:
        devnet.mint(amount)
        devnet.mine(amount % 4)  # uneven gaps of empty blocks
    devnet.mine()  # confirms the last mint
    events = watcher.poll()
    assert minted(events) == amounts
    head = devnet.w3.eth.block_number
    assert ranges[0][0] == devnet.deployment.block_number + 1 and ranges[-1][1] == head - 1
    assert all(b - a + 1 <= 3 for a, b in ranges)
    assert all(nxt[0] == prev[1] + 1 for prev, nxt in itertools.pairwise(ranges))
    assert json.loads((tmp_path / "state.json").read_text())["last_processed"] == head - 1


# ---------------------------------------------------------------- durable state


def test_watcher_resumesFromPersistedStateWithoutDuplicatesOrGaps(devnet: Devnet, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = devnet.watcher(state, confirmations=1, batch_size=2)
    for amount in (1, 2, 3):
        devnet.mint(amount)
    devnet.mine()
    seen = first.poll()
    for amount in (4, 5):
        devnet.mint(amount)
    devnet.mine()
    # A new process: start_block only applies without a state file, so 0 must not rescan.
    second = devnet.watcher(state, confirmations=1, batch_size=2, start_block=0)
    assert second.last_processed == first.last_processed
    seen += second.poll()
    everything = devnet.watcher(tmp_path / "fresh.json", confirmations=1).poll()
    assert seen == everything
    assert minted(seen) == [1, 2, 3, 4, 5]


def test_run_handlerErrorIsRaisedAndItsBatchIsDeliveredAgain(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    watcher = devnet.watcher(state, confirmations=0, batch_size=1)
    for amount in (1, 2, 3):
        devnet.mint(amount)
    handled: list[int] = []

    def handler(event: ChainEvent) -> None:
        if event.args["value"] == 2:
            raise ValueError("cannot handle 2")
        handled.append(event.args["value"])

    with pytest.raises(ValueError, match="cannot handle 2"):
        watcher.run(handler, threading.Event())
    assert handled == [1]
    assert _records(caplog, "watcher.handler_failed")
    assert minted(devnet.watcher(state, confirmations=0).poll()) == [2, 3]


class SimulatedCrash(BaseException):
    """The process dies here (BaseException: nothing on the way may catch it)."""


def test_stateWrite_crashBeforeRenameKeepsThePreviousState(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    watcher = devnet.watcher(state, confirmations=0)
    devnet.mint(1)
    assert minted(watcher.poll()) == [1]
    before = state.read_bytes()
    devnet.mint(2)

    def crash(fd: int) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(SimulatedCrash):
        watcher.poll()
    monkeypatch.undo()
    assert state.read_bytes() == before
    # Whatever the crash left in the temporary file (here: a torn write) is never read.
    (tmp_path / "state.json.tmp").write_text('{"version": 1, "chain_id": 31')
    resumed = devnet.watcher(state, confirmations=0)
    assert minted(resumed.poll()) == [2]  # the unfinished batch again, nothing older


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffnot json", b'{"version": 1, "chain_id": 31', b"[]", b'{"version": 99}', b'{"version": 1}'],
    ids=["binary", "truncated", "notAnObject", "otherVersion", "missingFields"],
)
def test_stateFile_garbageIsRefusedWithAClearError(devnet: Devnet, tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(content)
    with pytest.raises(ChainError, match=r"unreadable .*delete it to rescan from start_block"):
        devnet.watcher(state)


def test_stateFile_fromAnotherChainIsRefused(
    anvil_factory: Callable[..., AnvilProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    local = start_devnet(anvil_factory)
    devnet_777 = start_devnet(anvil_factory, chain_id=777)
    # Same deployer and nonces: the same contract addresses on both chains.
    assert devnet_777.deployment.network_token == local.deployment.network_token
    local.mint(1)
    local.watcher(state, confirmations=0).poll()
    with pytest.raises(ChainError, match=r"chain id 31337, but the RPC serves chain id 777.*delete it"):
        devnet_777.watcher(state)


def test_stateFile_forOtherContractsIsRefused(devnet: Devnet, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    devnet.mint(1)
    devnet.watcher(state, confirmations=0).poll()
    with pytest.raises(ChainError, match=r"written for contracts .*delete it"):
        EventWatcher(devnet.w3, devnet.contracts("NetworkToken"), state)


def test_watcher_rejectsInvalidSettings(devnet: Devnet, tmp_path: Path) -> None:
    with pytest.raises(ChainError, match=r"batch_size must be >= 1.*history must be >= 1"):
        devnet.watcher(tmp_path / "state.json", batch_size=0, history=0)


def test_watcher_constructsWhileTheRpcIsDownAndPollRaises(tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{free_port()}", exception_retry_configuration=None))
    token = w3.eth.contract(address="0x" + "11" * 20, abi=load_artifact("NetworkToken").abi)
    watcher = EventWatcher(w3, {"NetworkToken": token}, tmp_path / "state.json")
    with pytest.raises(RETRYABLE_ERRORS):
        watcher.poll()
    assert not (tmp_path / "state.json").exists()


# ---------------------------------------------------------------- failures of the chain


def test_run_survivesAnAnvilRestart(
    anvil_factory: Callable[..., AnvilProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chain.watcher")
    devnet = start_devnet(anvil_factory, state_file=tmp_path / "anvil-state.json")
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=0, max_backoff=0.1)
    delivered: queue.Queue[ChainEvent] = queue.Queue()
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, args=(delivered.put, stop), daemon=True)
    loop.start()
    try:
        devnet.mint(1)
        assert delivered.get(timeout=30).args["value"] == 1
        devnet.node.stop()  # Anvil writes --state on SIGTERM
        with pytest.raises(RETRYABLE_ERRORS):
            devnet.watcher(tmp_path / "probe.json").poll()
        wait_until(
            lambda: len(_records(caplog, "watcher.rpc_error")) >= 3, what="retries while anvil is down"
        )
        devnet.node.start()  # same port, chain loaded from --state
        devnet.mint(2)
        assert delivered.get(timeout=30).args["value"] == 2
        wait_until(lambda: bool(_records(caplog, "watcher.recovered")), what="the recovery log line")
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert delivered.empty()  # nothing twice
    delays = [
        float(r.getMessage().split("retry_in=")[1].split()[0]) for r in _records(caplog, "watcher.rpc_error")
    ]
    assert delays == sorted(delays) and max(delays) <= 0.1


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The captured log lines of one structured event."""
    return [r for r in list(caplog.records) if r.getMessage().startswith(f"event={event} ")]


def reorg(devnet: Devnet, depth: int, replacement_amounts: list[int]) -> int:
    """Replace the newest `depth` blocks (anvil_reorg), minting the given amounts in the new ones.

    Returns the fork block: the newest block that stays.
    """
    fork = devnet.w3.eth.block_number - depth
    token = devnet.contracts("NetworkToken")["NetworkToken"]
    nonce = devnet.w3.eth.get_transaction_count(devnet.admin.address, fork)
    replacements = []
    for offset, amount in enumerate(replacement_amounts):
        tx = token.functions.mint(USER, amount).build_transaction(
            {"from": devnet.admin.address, "nonce": nonce + offset, "gas": 200_000}
        )
        raw = Web3.to_hex(devnet.admin.sign_transaction(tx).raw_transaction)
        replacements.append([raw, offset])
    response = devnet.w3.provider.make_request("anvil_reorg", [depth, replacements])
    assert "error" not in response, response
    return fork


def test_poll_reorgCallsOnReorgAtTheForkAndDeliversTheNewBranch(devnet: Devnet, tmp_path: Path) -> None:
    forks: list[int] = []
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=1, on_reorg=forks.append)
    devnet.mint(1)
    devnet.mint(2)  # will be reorged out
    devnet.mint(3)  # will be reorged out
    devnet.mine(1)
    assert minted(watcher.poll()) == [1, 2, 3]
    head = devnet.w3.eth.block_number
    fork = reorg(devnet, depth=3, replacement_amounts=[20, 30])
    assert devnet.w3.eth.block_number == head
    events = watcher.poll()
    assert forks == [fork]
    assert minted(events) == [20, 30]
    assert all(e.block_number > fork for e in events)
    assert all(e.block_hash == Web3.to_hex(devnet.w3.eth.get_block(e.block_number)["hash"]) for e in events)
    assert watcher.poll() == [] and forks == [fork]


def test_poll_reorgWhileABatchIsReadDeliversNothingOfTheOldBranch(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks: list[int] = []
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=0, on_reorg=forks.append)
    devnet.mint(1)
    devnet.mint(2)  # replaced while the watcher reads it
    real_get_logs = devnet.w3.eth.get_logs
    calls = []

    def get_logs_then_reorg(params: dict) -> Any:
        logs = real_get_logs(params)
        if not calls:
            reorg(devnet, depth=1, replacement_amounts=[99])
        calls.append(params)
        return logs

    monkeypatch.setattr(devnet.w3.eth, "get_logs", get_logs_then_reorg)
    assert watcher.poll() == []  # the batch's logs came from a branch that is gone
    assert watcher.last_processed == devnet.deployment.block_number
    assert minted(watcher.poll()) == [1, 99]
    assert forks == []  # nothing had been delivered, so there is nothing to undo


def test_poll_reorgBelowTheConfirmationDepthIsNeverSeen(devnet: Devnet, tmp_path: Path) -> None:
    forks: list[int] = []
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=3, on_reorg=forks.append)
    devnet.mint(1)
    devnet.mine(3)
    assert minted(watcher.poll()) == [1]
    reorg(devnet, depth=3, replacement_amounts=[5])  # blocks not yet confirmed
    devnet.mine(3)
    assert minted(watcher.poll()) == [5]
    assert forks == []


def test_poll_reorgDeeperThanHistoryRollsBackBeforeTheOldestAndWarns(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forks: list[int] = []
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=0, history=3, on_reorg=forks.append)
    devnet.mine(10)
    watcher.poll()
    last = watcher.last_processed
    stored = json.loads((tmp_path / "state.json").read_text())["block_hashes"]
    assert sorted(int(n) for n in stored) == [last - 2, last - 1, last]
    reorg(devnet, depth=6, replacement_amounts=[])
    devnet.mint(9)
    events = watcher.poll()
    assert forks == [last - 3]
    assert _records(caplog, "watcher.deep_reorg")
    assert minted(events) == [9]


def test_poll_chainRevertedBelowTheLastProcessedBlockRewinds(devnet: Devnet, tmp_path: Path) -> None:
    forks: list[int] = []
    start = devnet.deployment.block_number  # so that the block before the snapshot is remembered
    watcher = devnet.watcher(
        tmp_path / "state.json", start_block=start, confirmations=0, on_reorg=forks.append
    )
    snapshot = devnet.w3.provider.make_request("evm_snapshot", [])["result"]
    base = devnet.w3.eth.block_number
    devnet.mint(1)
    devnet.mine(4)
    assert minted(watcher.poll()) == [1]
    assert devnet.w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    devnet.mint(2)  # a shorter branch: head is now below the last processed block
    assert devnet.w3.eth.block_number < watcher.last_processed
    assert minted(watcher.poll()) == [2]
    assert forks == [base]


def test_watcher_rpcDown_logsNoApiKeyOfTheUrl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Hosted RPC URLs carry API keys in their path; the watcher's warnings must not repeat them."""
    url = f"http://127.0.0.1:{free_port()}/v3/SECRET_KEY"
    w3 = Web3(Web3.HTTPProvider(url, exception_retry_configuration=None))
    token = w3.eth.contract(address="0x" + "11" * 20, abi=load_artifact("NetworkToken").abi)
    with caplog.at_level(logging.INFO, logger="chain.watcher"):
        watcher = EventWatcher(w3, {"NetworkToken": token}, tmp_path / "state.json")
        with pytest.raises(RETRYABLE_ERRORS):
            watcher.poll()
    assert "chain_check_deferred" in caplog.text
    assert "SECRET_KEY" not in caplog.text
