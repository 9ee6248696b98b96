"""The event watcher against real Anvil processes: confirmations, batches, resume, restarts, reorgs.

Hosted providers' caps and failures (getLogs limits, truncated answers, lagging backends) are
played by a loopback JSON-RPC relay (tests/rpc_relay.py) in front of the real Anvil.
"""

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
from chain.watcher import (
    RETRYABLE_ERRORS,
    BlockUnavailableError,
    ChainEvent,
    ChainIdentityError,
    EventWatcher,
    LogQueryUnsplittable,
    ReorgTooDeepError,
)
from tests.conftest import free_port, tool
from tests.rpc_relay import Forward, RpcRelay, rpc_error

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
        self.extra_args: list[str] = []  # more anvil options for the next start()
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
        args += self.extra_args
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

    def watcher(self, state_path: Path, *, w3: Web3 | None = None, **kwargs: Any) -> EventWatcher:
        """A watcher of every contract, reading through `w3` (a relay's) or straight from Anvil."""
        kwargs.setdefault("start_block", self.deployment.block_number + 1)
        kwargs.setdefault("poll_interval", 0.02)
        kwargs.setdefault("initial_backoff", 0.02)
        kwargs.setdefault("max_backoff", 0.2)
        kwargs.setdefault("missing_block_backoff", 0.01)
        return EventWatcher(w3 or self.w3, self.contracts(), state_path, **kwargs)


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


@pytest.fixture
def relay_factory() -> Iterator[Callable[[AnvilProcess], RpcRelay]]:
    """Start loopback JSON-RPC relays in front of Anvil processes; all are stopped at the end."""
    started: list[RpcRelay] = []

    def start(node: AnvilProcess) -> RpcRelay:
        relay = RpcRelay(f"http://127.0.0.1:{node.port}")
        started.append(relay)
        return relay.start()

    yield start
    for relay in started:
        relay.stop()


class RunningWatcher:
    """`watcher.run()` in a thread, as the daemons run it; stopped and joined on exit."""

    def __init__(self, watcher: EventWatcher) -> None:
        self.watcher = watcher
        self.delivered: queue.Queue[ChainEvent] = queue.Queue()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run(self.delivered.put, self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunningWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "run() did not stop within 30 s of stop being set"

    def next_events(self, count: int, timeout: float = 30.0) -> list[ChainEvent]:
        """The next `count` delivered events; fails after `timeout` seconds without them."""
        deadline = time.monotonic() + timeout
        events = []
        while len(events) < count:
            remaining = deadline - time.monotonic()
            try:
                events.append(self.delivered.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"run() delivered {len(events)} of {count} events in {timeout} s "
                    f"(ended with {self.error!r})"
                ) from None
        return events

    def ended_with(self, timeout: float = 30.0) -> BaseException:
        """The exception run() ended with; fails if it is still running after `timeout` seconds."""
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            raise AssertionError(f"run() still running after {timeout} s")
        assert self.error is not None, "run() returned without an error"
        return self.error

    def drained(self) -> list[ChainEvent]:
        """What was delivered and not yet taken."""
        events = []
        while not self.delivered.empty():
            events.append(self.delivered.get_nowait())
        return events


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


def test_poll_reorgDeeperThanHistoryStopsWithAClearErrorInsteadOfGuessing(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No stored hash is on the chain: the fork point is unknown, so nothing is guessed or skipped."""
    state = tmp_path / "state.json"
    forks: list[int] = []
    watcher = devnet.watcher(state, confirmations=0, history=3, on_reorg=forks.append)
    devnet.mine(10)
    watcher.poll()
    last = watcher.last_processed
    stored = json.loads(state.read_text())["block_hashes"]
    assert sorted(int(n) for n in stored) == [last - 2, last - 1, last]
    before = state.read_bytes()
    # Six new blocks, each with a mint: three of them lie below the oldest remembered block.
    reorg(devnet, depth=6, replacement_amounts=[10, 20, 30, 40, 50, 60])
    with pytest.raises(ReorgTooDeepError, match=r"deeper than history=3 .*Delete the state file") as info:
        watcher.poll()
    assert (info.value.last_processed, info.value.oldest_known, info.value.history) == (last, last - 2, 3)
    assert forks == [] and state.read_bytes() == before
    assert _records(caplog, "watcher.deep_reorg")
    # The fix the message names: a resync from the deployment block sees the whole new branch.
    state.unlink()
    assert minted(devnet.watcher(state, confirmations=0).poll()) == [10, 20, 30, 40, 50, 60]


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


# ---------------------------------------------------------------- hosted providers' caps and failures


def cap_block_range(limit: int, code: int, message: str, status: int = 200) -> Callable[..., Any]:
    """A provider that refuses eth_getLogs over more than `limit` blocks with the given error."""

    def behaviour(request: dict, forward: Forward) -> Any:
        if request["method"] == "eth_getLogs":
            query = request["params"][0]
            if int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 > limit:
                return status, rpc_error(request, code, message)
        return forward(request)

    return behaviour


def cap_results(limit: int, code: int, message: str, status: int = 200) -> Callable[..., Any]:
    """A provider that refuses an eth_getLogs answer of more than `limit` logs with the given error."""

    def behaviour(request: dict, forward: Forward) -> Any:
        answer = forward(request)
        if request["method"] == "eth_getLogs" and len(answer.get("result", [])) > limit:
            return status, rpc_error(request, code, message, data={"limit": limit})
        return answer

    return behaviour


def getlogs_spans(relay: RpcRelay) -> list[int]:
    """The block counts of the eth_getLogs queries the relay received, in order."""
    return [
        int(q["toBlock"], 16) - int(q["fromBlock"], 16) + 1
        for q in (r["params"][0] for r in relay.requests("eth_getLogs"))
    ]


@pytest.mark.parametrize(
    "provider",
    [
        cap_block_range(50, -32000, "query exceeds max block range 50"),
        cap_block_range(50, -32602, "eth_getLogs is limited to 50 blocks range"),
        cap_block_range(50, -32602, "block range is too wide, max range 50", status=400),
        cap_results(2, -32005, "query returned more than 2 results"),
    ],
    ids=["maxBlockRange", "limitedToBlocks", "rangeTooWideHttp400", "moreThanNResults"],
)
def test_run_getLogsCapErrorSplitsTheRangeAndGrowsItBack(
    devnet: Devnet,
    relay_factory: Callable[[AnvilProcess], RpcRelay],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    provider: Callable[..., Any],
) -> None:
    """A hosted provider's eth_getLogs cap, played by a loopback relay in front of the real Anvil.

    Retrying the refused range forever would deliver nothing; the watcher halves it instead and
    doubles it back after `regrow_after` successes, so it keeps probing for the configured batch.
    Scaled down ten times (a cap of 50 blocks under batches of 200) to keep Anvil's mining quick.
    """
    relay = relay_factory(devnet.node)
    relay.behaviour = provider
    amounts = list(range(1, 13))
    for amount in amounts:
        devnet.mint(amount)
        devnet.mine(19)  # 12 mints over 240 blocks: more than one 200-block batch
    devnet.mine()
    caplog.set_level(logging.INFO, logger="chain.watcher")
    watcher = devnet.watcher(
        tmp_path / "state.json", w3=relay.w3, confirmations=1, batch_size=200, regrow_after=2
    )
    with RunningWatcher(watcher) as running:
        assert minted(running.next_events(len(amounts))) == amounts
        wait_until(lambda: watcher.last_processed == devnet.w3.eth.block_number - 1, what="catch-up")
    assert running.error is None and running.drained() == []
    spans = getlogs_spans(relay)
    assert spans[0] == 200 and 100 in spans
    split = _records(caplog, "watcher.range_split")
    assert split and "reason=provider_cap" in split[0].getMessage()
    # Grown back: after a success at a halved span, a wider query is tried again.
    assert any(b > a for a, b in itertools.pairwise(spans))
    assert not _records(caplog, "watcher.rpc_error")  # a cap is not an outage


def test_poll_singleBlockRefusedByTheProviderRaisesAClearError(
    devnet: Devnet, relay_factory: Callable[[AnvilProcess], RpcRelay], tmp_path: Path
) -> None:
    """A relay in front of Anvil refuses every eth_getLogs answer with more than one log."""
    relay = relay_factory(devnet.node)
    relay.behaviour = cap_results(0, -32005, "query returned more than 0 results")
    devnet.mint(1)
    watcher = devnet.watcher(tmp_path / "state.json", w3=relay.w3, confirmations=0)
    with pytest.raises(
        LogQueryUnsplittable, match=r"block \d+ cannot be read completely .*RPC provider"
    ) as info:
        watcher.poll()
    assert info.value.reason == "provider_cap" and "more than 0 results" in info.value.detail
    assert watcher.last_processed == info.value.block - 1


def truncate_logs(limit: int) -> Callable[..., Any]:
    """A provider that silently cuts every eth_getLogs answer to its first `limit` logs."""

    def behaviour(request: dict, forward: Forward) -> Any:
        answer = forward(request)
        if request["method"] == "eth_getLogs":
            answer["result"] = answer["result"][:limit]
        return answer

    return behaviour


def test_poll_fullGetLogsAnswerIsReadAgainInHalvesNotTrusted(
    devnet: Devnet, relay_factory: Callable[[AnvilProcess], RpcRelay], tmp_path: Path
) -> None:
    """A provider that truncates getLogs answers without an error, played by a loopback relay.

    An answer with max_logs_per_query logs may be cut: its range is split and read again, so no
    event is lost and no range is saved as processed on a truncated answer.
    """
    relay = relay_factory(devnet.node)
    relay.behaviour = truncate_logs(3)
    amounts = [1, 2, 3, 4, 5, 6, 7, 8]
    for amount in amounts:
        devnet.mint(amount)
        devnet.mine(amount % 3)
    state = tmp_path / "state.json"
    watcher = devnet.watcher(state, w3=relay.w3, confirmations=0, max_logs_per_query=3)
    events = watcher.poll()
    assert minted(events) == amounts
    assert events == devnet.watcher(tmp_path / "direct.json", confirmations=0).poll()
    assert json.loads(state.read_text())["last_processed"] == devnet.w3.eth.block_number
    assert min(getlogs_spans(relay)) < max(getlogs_spans(relay))  # it did split


def test_poll_singleBlockAtTheResultBoundRaisesAClearError(devnet: Devnet, tmp_path: Path) -> None:
    per_block: dict[int, int] = {}
    for entry in devnet.w3.eth.get_logs({"fromBlock": 0, "toBlock": devnet.deployment.block_number}):
        per_block[entry["blockNumber"]] = per_block.get(entry["blockNumber"], 0) + 1
    block, count = max(per_block.items(), key=lambda item: item[1])
    assert count >= 2
    watcher = devnet.watcher(
        tmp_path / "state.json", start_block=block, confirmations=0, max_logs_per_query=count
    )
    with pytest.raises(
        LogQueryUnsplittable, match=rf"block {block} .*raise max_logs_per_query above {count}"
    ) as info:
        watcher.poll()
    assert (info.value.block, info.value.reason, info.value.limit) == (block, "result_bound", count)
    assert watcher.last_processed == block - 1


# ---------------------------------------------------------------- another chain behind the same URL


def test_run_devnetResetWithSameChainIdAndAddressesStops(
    anvil_factory: Callable[..., AnvilProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anvil restarted empty on the same port and redeployed: same chain id, same addresses."""
    state = tmp_path / "state.json"
    devnet = start_devnet(anvil_factory)
    genesis_block = devnet.w3.eth.get_block(0)
    genesis = Web3.to_hex(genesis_block["hash"])
    watcher = devnet.watcher(state, confirmations=0)
    with RunningWatcher(watcher) as running:
        devnet.mint(1)
        [event] = running.next_events(1)
        assert minted([event]) == [1]
        wait_until(lambda: watcher.last_processed >= event.block_number, what="the batch persisted")
        assert json.loads(state.read_text())["genesis_hash"] == genesis
        devnet.node.stop()
        # No --state: a new chain. Its genesis hash depends on the genesis timestamp (seconds), so
        # a restart within the same second would give the same one: set it apart explicitly.
        devnet.node.extra_args = ["--timestamp", str(genesis_block["timestamp"] + 3600)]
        devnet.node.start()
        reset = Devnet(node=devnet.node, deployment=deploy_all(devnet.w3, devnet.admin), admin=devnet.admin)
        assert reset.deployment.network_token == devnet.deployment.network_token
        reset.mint(5)
        error = running.ended_with()
    assert isinstance(error, ChainIdentityError), repr(error)
    assert error.expected_chain_id == error.actual_chain_id == 31337
    assert error.expected_genesis == genesis != error.actual_genesis
    assert running.drained() == []  # nothing of the new chain was delivered as ours
    assert _records(caplog, "watcher.stopped")
    # A restarted daemon refuses the state file at once, with the fix in the message.
    with pytest.raises(ChainIdentityError, match=r"genesis block .*reset or replaced.*delete it"):
        reset.watcher(state)


def test_stateFile_withoutGenesisHashIsReadAndRecordsIt(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """State files written before the genesis hash was kept stay readable (the hash is recorded)."""
    state = tmp_path / "state.json"
    devnet.mint(1)
    devnet.watcher(state, confirmations=0).poll()
    document = json.loads(state.read_text())
    del document["genesis_hash"]
    state.write_text(json.dumps(document))
    caplog.set_level(logging.INFO, logger="chain.watcher")
    resumed = devnet.watcher(state, confirmations=0)
    assert _records(caplog, "watcher.genesis_recorded")
    devnet.mint(2)
    assert minted(resumed.poll()) == [2]
    assert json.loads(state.read_text())["genesis_hash"] == Web3.to_hex(devnet.w3.eth.get_block(0)["hash"])


def test_run_rpcComingBackAsAnotherChainIdStops(
    anvil_factory: Callable[..., AnvilProcess], tmp_path: Path
) -> None:
    """Anvil restarted on the same port, from the same --state, but with another --chain-id."""
    devnet = start_devnet(anvil_factory, state_file=tmp_path / "anvil-state.json")
    genesis = devnet.w3.eth.get_block(0)["hash"]
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=0)
    with RunningWatcher(watcher) as running:
        devnet.mint(1)
        assert minted(running.next_events(1)) == [1]
        devnet.node.stop()
        devnet.node.chain_id = 777
        devnet.node.start()
        # Same blocks, same genesis, same contracts: only the chain id tells the chains apart.
        assert devnet.w3.eth.get_block(0)["hash"] == genesis
        devnet.mint(7)
        error = running.ended_with()
    assert isinstance(error, ChainIdentityError), repr(error)
    assert (error.expected_chain_id, error.actual_chain_id) == (31337, 777)
    assert running.drained() == []


def test_poll_chainSwappedBetweenTwoPollsWithoutAnyFailedRequestStops(
    anvil_factory: Callable[..., AnvilProcess], tmp_path: Path
) -> None:
    """The same swap, done while the watcher makes no request at all (between two polls), so no RPC
    error ever tells it to look again: before, the second poll delivered chain 777's event as ours."""
    devnet = start_devnet(anvil_factory, state_file=tmp_path / "anvil-state.json")
    watcher = devnet.watcher(tmp_path / "state.json", confirmations=0)
    devnet.mint(1)
    assert minted(watcher.poll()) == [1]
    devnet.node.stop()
    devnet.node.chain_id = 777
    devnet.node.start()
    devnet.mint(7)
    with pytest.raises(ChainIdentityError) as info:
        watcher.poll()
    assert (info.value.expected_chain_id, info.value.actual_chain_id) == (31337, 777)


# ---------------------------------------------------------------- lagging backends, failing on_reorg


def null_blocks(numbers: set[int], times: int | None) -> Callable[..., Any]:
    """A lagging backend: eth_getBlockByNumber answers null for `numbers`, `times` times (None: always)."""
    served: dict[int, int] = {}

    def behaviour(request: dict, forward: Forward) -> Any:
        if request["method"] == "eth_getBlockByNumber" and request["params"][0].startswith("0x"):
            number = int(request["params"][0], 16)
            if number in numbers and (times is None or served.get(number, 0) < times):
                served[number] = served.get(number, 0) + 1
                return {"jsonrpc": "2.0", "id": request["id"], "result": None}
        return forward(request)

    return behaviour


@pytest.mark.parametrize("which", ["lastProcessed", "newBlock"])
def test_poll_nullBlockFromALaggingBackendIsRetriedNotAReorg(
    devnet: Devnet,
    relay_factory: Callable[[AnvilProcess], RpcRelay],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    which: str,
) -> None:
    """A load-balanced provider's lagging backend, played by a relay: `null` for a block below the head."""
    relay = relay_factory(devnet.node)
    forks: list[int] = []
    caplog.set_level(logging.INFO, logger="chain.watcher")
    watcher = devnet.watcher(tmp_path / "state.json", w3=relay.w3, confirmations=0, on_reorg=forks.append)
    devnet.mint(1)
    assert minted(watcher.poll()) == [1]
    receipt = devnet.mint(2)
    missing = watcher.last_processed if which == "lastProcessed" else receipt["blockNumber"]
    relay.behaviour = null_blocks({missing}, times=1)
    assert minted(watcher.poll()) == [2]  # at once: neither a rewind nor a "chain moved" pass
    assert forks == []
    assert len(_records(caplog, "watcher.block_missing")) == 1
    assert not _records(caplog, "watcher.chain_moved")


def test_poll_blockStillNullAfterTheRetriesRaisesRetryableAndKeepsTheState(
    devnet: Devnet, relay_factory: Callable[[AnvilProcess], RpcRelay], tmp_path: Path
) -> None:
    """A relay in front of Anvil answers null for the last processed block, again and again."""
    relay = relay_factory(devnet.node)
    forks: list[int] = []
    watcher = devnet.watcher(
        tmp_path / "state.json", w3=relay.w3, confirmations=0, on_reorg=forks.append, missing_block_retries=3
    )
    devnet.mint(1)
    assert minted(watcher.poll()) == [1]
    last = watcher.last_processed
    relay.behaviour = null_blocks({last}, times=None)
    devnet.mint(2)
    with pytest.raises(BlockUnavailableError) as info:
        watcher.poll()
    assert isinstance(info.value, RETRYABLE_ERRORS)
    assert (info.value.number, info.value.attempts) == (last, 4)
    assert forks == [] and watcher.last_processed == last
    relay.behaviour = None  # the backend caught up
    assert minted(watcher.poll()) == [2]


@pytest.mark.parametrize("failure", [OSError("disk full"), ValueError("bug in on_reorg")], ids=repr)
def test_run_onReorgFailureIsLoggedOnceAndRaised(
    devnet: Devnet, tmp_path: Path, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    """on_reorg is guarded like the handler: an OSError is not an RPC error to retry forever."""
    calls: list[int] = []

    def on_reorg(fork: int) -> None:
        calls.append(fork)
        raise failure

    state = tmp_path / "state.json"
    watcher = devnet.watcher(state, confirmations=1, on_reorg=on_reorg)
    devnet.mint(1)
    devnet.mint(2)
    devnet.mine()
    assert minted(watcher.poll()) == [1, 2]
    last = watcher.last_processed
    fork = reorg(devnet, depth=2, replacement_amounts=[20])
    caplog.set_level(logging.INFO, logger="chain.watcher")
    with RunningWatcher(watcher) as running:
        error = running.ended_with()
    assert error is failure and calls == [fork]
    [line] = _records(caplog, "watcher.on_reorg_failed")
    assert f"fork_block={fork} " in line.getMessage() and type(failure).__name__ in line.getMessage()
    assert not _records(caplog, "watcher.rpc_error")
    assert watcher.last_processed == last  # not rewound: the next attempt calls on_reorg again
    assert running.drained() == []
    with pytest.raises(type(failure)):
        watcher.poll()  # poll() raises on_reorg's own exception too
    assert calls == [fork, fork] and len(_records(caplog, "watcher.on_reorg_failed")) == 2
