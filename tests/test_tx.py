"""TxSender against a real Anvil: estimation, gas cap, nonces under concurrency, timeouts, reverts."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from chain.accounts import dev_account
from chain.errors import ChainError, GasCapExceeded, TxTimeout
from chain.redact import redact
from chain.revert import RevertError
from chain.tx import TxSender
from tests.conftest import ROOT, free_port
from tests.rpc_relay import Behaviour, Forward, RpcRelay

ETHER = 10**18

# A process that sends `count` transfers with Anvil's account 0 once told to go on stdin, then prints
# the nonces it used and how many nonce conflicts the node reported to it.
SENDER_PROCESS = """
import json, logging, sys
from web3 import Web3
from chain.accounts import dev_account
from chain.artifacts import load_artifact
from chain.tx import TxSender

url, token, recipient, lock_dir, count = sys.argv[1:6]
conflicts = []
class Conflicts(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("nonce_conflict"):
            conflicts.append(record.getMessage())
logging.getLogger("chain.tx").addHandler(Conflicts())
logging.getLogger("chain.tx").setLevel(logging.INFO)
w3 = Web3(Web3.HTTPProvider(url))
contract = w3.eth.contract(address=token, abi=load_artifact("NetworkToken").abi)
sender = TxSender(w3, dev_account(0), nonce_lock_dir=lock_dir)
sender.chain_id
print("ready", flush=True)
sys.stdin.readline()
nonces = []
for _ in range(int(count)):
    receipt = sender.send(contract.functions.transfer(recipient, 10**18))
    nonces.append(w3.eth.get_transaction(receipt["transactionHash"])["nonce"])
print(json.dumps({"nonces": nonces, "conflicts": len(conflicts)}), flush=True)
"""


def nonce_of(w3: Web3, address: str) -> int:
    return w3.eth.get_transaction_count(address, "pending")


@pytest.fixture
def token(chain_snapshot: Web3) -> Contract:
    """A fresh NetworkToken owned by Anvil's account 0, which holds 1,000 MESH."""
    sender = TxSender(chain_snapshot, dev_account(0))
    contract = sender.deploy("NetworkToken", sender.address)
    sender.send(contract.functions.mint(sender.address, 1_000 * ETHER))
    return contract


def test_send_returnsSuccessfulEip1559Receipt(chain_snapshot, token) -> None:
    w3, sender = chain_snapshot, TxSender(chain_snapshot, dev_account(0))
    bob = dev_account(1).address
    receipt = sender.send(token.functions.transfer(bob, 5 * ETHER))
    tx = w3.eth.get_transaction(receipt["transactionHash"])
    assert receipt["status"] == 1
    assert token.functions.balanceOf(bob).call() == 5 * ETHER
    assert tx["type"] == 2 and tx["maxFeePerGas"] >= tx["maxPriorityFeePerGas"]
    assert receipt["gasUsed"] < tx["gas"] <= receipt["gasUsed"] * 1.25 + 1


def test_deploy_returnsContractAtNewAddress(chain_snapshot) -> None:
    sender = TxSender(chain_snapshot, dev_account(0))
    token = sender.deploy("NetworkToken", sender.address)
    assert chain_snapshot.eth.get_code(token.address) != b""
    assert token.functions.owner().call() == sender.address


def test_send_raisesDecodedRevertFromEstimateWithoutSending(chain_snapshot, token) -> None:
    w3, poor = chain_snapshot, dev_account(2)
    before = nonce_of(w3, poor.address)
    with pytest.raises(RevertError) as info:
        TxSender(w3, poor).send(token.functions.transfer(dev_account(1).address, 3 * ETHER))
    err = info.value
    assert err.name == "ERC20InsufficientBalance"
    assert err.args == {"sender": poor.address, "balance": 0, "needed": 3 * ETHER}
    assert err.tx_hash is None
    assert "balance=0 MESH, needed=3 MESH" in str(err)
    assert nonce_of(w3, poor.address) == before


def test_send_refusesEstimateAboveGasCap(chain_snapshot) -> None:
    w3, admin = chain_snapshot, dev_account(0)
    before = nonce_of(w3, admin.address)
    with pytest.raises(GasCapExceeded) as info:
        TxSender(w3, admin, gas_cap=100_000).deploy("NetworkToken", admin.address)
    estimate = int(str(info.value).split(" gas")[0].rsplit(" ", 1)[1])
    assert estimate > 100_000
    assert "100000" in str(info.value)
    assert nonce_of(w3, admin.address) == before


def test_send_refusesExplicitGasAboveCap(chain_snapshot, token) -> None:
    sender = TxSender(chain_snapshot, dev_account(0), gas_cap=60_000)
    with pytest.raises(GasCapExceeded, match=r"70000 gas .* cap of 60000"):
        sender.send(token.functions.transfer(dev_account(1).address, 1), gas=70_000)


def test_send_concurrentSendersWithSameKeyAllLand(chain_snapshot, token) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    start = nonce_of(w3, owner.address)
    per_thread, receipts, failures = 8, [], []
    lock = threading.Lock()

    def run(sender: TxSender, recipient: str) -> None:
        try:
            for _ in range(per_thread):
                receipt = sender.send(token.functions.transfer(recipient, ETHER))
                with lock:
                    receipts.append(receipt)
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)

    recipients = [dev_account(i).address for i in (1, 2)]
    threads = [threading.Thread(target=run, args=(TxSender(w3, owner), r)) for r in recipients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    nonces = [w3.eth.get_transaction(r["transactionHash"])["nonce"] for r in receipts]
    assert sorted(nonces) == list(range(start, start + 2 * per_thread))
    assert all(r["status"] == 1 for r in receipts)
    assert [token.functions.balanceOf(r).call() for r in recipients] == [per_thread * ETHER] * 2


def test_send_sharedSenderAcrossThreadsUsesUniqueNonces(chain_snapshot, token) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    sender, start = TxSender(w3, owner), nonce_of(w3, owner.address)
    bob = dev_account(1).address
    threads = [
        threading.Thread(target=sender.send, args=(token.functions.transfer(bob, ETHER),)) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert nonce_of(w3, owner.address) == start + 6
    assert token.functions.balanceOf(bob).call() == 6 * ETHER


def test_send_newSenderContinuesAfterOthersSent(chain_snapshot, token) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    bob = dev_account(1).address
    first = TxSender(w3, owner)
    for _ in range(3):
        first.send(token.functions.transfer(bob, ETHER))
    restarted = TxSender(w3, owner)  # a new process with the same key
    receipt = restarted.send(token.functions.transfer(bob, ETHER))
    assert w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == nonce_of(w3, owner.address) - 1
    # The first sender's counter is now stale: it resyncs from the chain instead of failing.
    first.send(token.functions.transfer(bob, ETHER))
    assert token.functions.balanceOf(bob).call() == 5 * ETHER


def test_send_timesOutWhenNotMinedAndNamesTheHash(token, automine_off) -> None:
    # `token` comes first: it is deployed while Anvil still mines.
    w3 = automine_off
    sender = TxSender(w3, dev_account(0), receipt_timeout=0.5, poll_interval=0.05)
    with pytest.raises(
        TxTimeout, match=r"transaction 0x[0-9a-f]{64} \(nonce \d+\) was not mined within 0.5 s; it may still"
    ) as info:
        sender.send(token.functions.transfer(dev_account(1).address, ETHER))
    assert info.value.waited == 0.5 and info.value.nonce is not None and info.value.earlier == ()


def test_send_timeoutLeavesTransactionToBeMinedLater(token, automine_off) -> None:
    w3 = automine_off
    sender = TxSender(w3, dev_account(0), receipt_timeout=0.3, poll_interval=0.05)
    with pytest.raises(TxTimeout) as info:
        sender.send(token.functions.transfer(dev_account(1).address, ETHER))
    tx_hash = info.value.tx_hash
    w3.provider.make_request("evm_mine", [])
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1


def test_send_decodesRevertMinedOnChain(chain_snapshot) -> None:
    w3, admin = chain_snapshot, dev_account(0)
    sender = TxSender(w3, admin)
    token = sender.deploy("NetworkToken", admin.address)
    stranger = dev_account(3)
    with pytest.raises(RevertError) as info:  # explicit gas: no estimate, so it is mined and fails
        TxSender(w3, stranger).send(token.functions.mint(stranger.address, ETHER), gas=100_000)
    err = info.value
    assert (err.name, err.args) == ("OwnableUnauthorizedAccount", {"account": stranger.address})
    assert err.tx_hash is not None and err.tx_hash in str(err)
    assert w3.eth.get_transaction_receipt(err.tx_hash)["status"] == 0


def test_send_decodesRevertCausedByStateChangeBeforeMining(chain_snapshot, token, monkeypatch) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    payer, spender = dev_account(4), dev_account(5)
    owner_sender = TxSender(w3, owner)
    owner_sender.send(token.functions.transfer(payer.address, 10 * ETHER))
    payer_sender = TxSender(w3, payer)
    payer_sender.send(token.functions.approve(spender.address, 10 * ETHER))

    estimate = payer_sender._gas_limit

    def estimate_then_drain(tx: dict) -> int:
        gas = estimate(tx)  # the payer still holds 10 MESH here
        TxSender(w3, spender).send(token.functions.transferFrom(payer.address, spender.address, 10 * ETHER))
        return gas

    monkeypatch.setattr(payer_sender, "_gas_limit", estimate_then_drain)
    with pytest.raises(RevertError) as info:
        payer_sender.send(token.functions.transfer(owner.address, 10 * ETHER))
    assert info.value.name == "ERC20InsufficientBalance"
    assert info.value.args == {"sender": payer.address, "balance": 0, "needed": 10 * ETHER}
    assert w3.eth.get_transaction_receipt(info.value.tx_hash)["status"] == 0


def test_send_reportsOutOfGas(chain_snapshot, token) -> None:
    sender = TxSender(chain_snapshot, dev_account(0))
    with pytest.raises(RevertError) as info:
        sender.send(token.functions.transfer(dev_account(1).address, ETHER), gas=25_000)
    assert info.value.name == "OutOfGas"
    assert info.value.args == {"gasUsed": 25_000, "gasLimit": 25_000}
    assert "ran out of gas" in str(info.value)


def test_send_explainsMissingGasMoney(chain_snapshot, token, tmp_path) -> None:
    broke = Account.create()
    with pytest.raises(ChainError, match="too little ETH to pay for gas"):
        sender = TxSender(chain_snapshot, broke, nonce_lock_dir=tmp_path)  # a lock file per run otherwise
        sender.send(token.functions.approve(dev_account(1).address, 1))


def test_send_resyncsWhenAnotherSenderTookTheNonce(chain_snapshot, token) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    bob = dev_account(1).address
    mine, other = TxSender(w3, owner), TxSender(w3, owner)
    mine.send(token.functions.transfer(bob, ETHER))
    other.send(token.functions.transfer(bob, ETHER))  # takes the nonce `mine` expects next
    receipt = mine.send(token.functions.transfer(bob, ETHER), value=0)
    assert receipt["status"] == 1
    assert token.functions.balanceOf(bob).call() == 3 * ETHER


def test_send_givesUpAfterMaxNonceRetries(chain_snapshot, token, monkeypatch) -> None:
    sender = TxSender(chain_snapshot, dev_account(0), max_nonce_retries=2, nonce_retry_backoff=0)
    monkeypatch.setattr(sender, "_chain_nonce", lambda: 0)  # always a nonce that is long used
    with pytest.raises(ChainError, match=r"no free nonce .* after 2 retries"):
        sender.send(token.functions.transfer(dev_account(1).address, ETHER))


def test_send_sendersInTwoProcessesWithSameKeyTakeTurns(chain_snapshot, token, tmp_path) -> None:
    # The lock file makes senders of one key on one machine choose nonces in turn, so the node never
    # sees the same nonce twice: no conflicts (and none of Anvil's silent drops of a same-nonce twin).
    w3, owner, per_process = chain_snapshot, dev_account(0), 8
    start = nonce_of(w3, owner.address)
    recipients = [dev_account(i).address for i in (1, 2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER_PROCESS, w3.provider.endpoint_uri, token.address, recipient,
             str(tmp_path), str(per_process)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for recipient in recipients
    ]  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:  # both start sending at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    nonces = sorted(n for r in results for n in r["nonces"])
    assert nonces == list(range(start, start + 2 * per_process))
    assert [r["conflicts"] for r in results] == [0, 0]
    assert [token.functions.balanceOf(r).call() for r in recipients] == [per_process * ETHER] * 2


def test_send_waitsForNonceLockHeldByAnotherProcess(chain_snapshot, token, tmp_path) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    sender = TxSender(w3, owner, nonce_lock_dir=tmp_path, nonce_lock_timeout=0.3)
    before = nonce_of(w3, owner.address)
    with open(sender.nonce_lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ChainError, match=r"could not take the nonce lock .* within 0.3 s"):
            sender.send(token.functions.transfer(dev_account(1).address, ETHER))
        assert nonce_of(w3, owner.address) == before
    sender.send(token.functions.transfer(dev_account(1).address, ETHER))  # released: it goes through
    assert nonce_of(w3, owner.address) == before + 1


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _send_in_thread(sender: TxSender, call) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["receipt"] = sender.send(call)
        except Exception as exc:  # reported by the caller's assertion
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_send_resendsWhenAnotherTransactionTookItsNonce(token, automine_off) -> None:
    # What happened under load: another sender's transaction with the same nonce and a higher fee was
    # accepted as a replacement, ours was dropped without a word, and we waited for it forever.
    w3, owner = automine_off, dev_account(0)
    bob = dev_account(1).address
    nonce = nonce_of(w3, owner.address)
    sender = TxSender(w3, owner, stall_timeout=0.2, poll_interval=0.02, receipt_timeout=30)
    thread, outcome = _send_in_thread(sender, token.functions.transfer(bob, ETHER))
    _wait_until(lambda: nonce_of(w3, owner.address) == nonce + 1)
    ours = w3.provider.make_request("txpool_content", [])["result"]["pending"][owner.address.lower()]
    ours = ours[str(nonce)]
    rival = {"to": owner.address, "value": 0, "gas": 21_000, "nonce": nonce, "chainId": w3.eth.chain_id}
    rival |= {"maxFeePerGas": 2 * int(ours["maxFeePerGas"], 16), "maxPriorityFeePerGas": 2 * 10**9}
    w3.eth.send_raw_transaction(owner.sign_transaction(rival).raw_transaction)
    w3.provider.make_request("evm_mine", [])  # the rival is mined with our nonce
    w3.provider.make_request("evm_setAutomine", [True])
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    receipt = outcome["receipt"]
    assert receipt["status"] == 1
    assert w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == nonce + 1
    assert receipt["transactionHash"].to_0x_hex() != ours["hash"]
    assert token.functions.balanceOf(bob).call() == ETHER  # sent again, executed once


def test_send_rebroadcastsTransactionTheNodeDropped(token, automine_off) -> None:
    w3, owner = automine_off, dev_account(0)
    nonce = nonce_of(w3, owner.address)
    sender = TxSender(w3, owner, stall_timeout=0.2, poll_interval=0.02, receipt_timeout=30)
    thread, outcome = _send_in_thread(sender, token.functions.transfer(dev_account(1).address, ETHER))
    _wait_until(lambda: nonce_of(w3, owner.address) == nonce + 1)
    pool = w3.provider.make_request("txpool_content", [])["result"]["pending"][owner.address.lower()]
    tx_hash = pool[str(nonce)]["hash"]
    w3.provider.make_request("anvil_dropTransaction", [tx_hash])
    assert nonce_of(w3, owner.address) == nonce
    _wait_until(lambda: nonce_of(w3, owner.address) == nonce + 1)  # the sender handed it back
    w3.provider.make_request("evm_mine", [])
    thread.join(timeout=30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["receipt"]["transactionHash"].to_0x_hex() == tx_hash
    assert outcome["receipt"]["status"] == 1


def test_send_fillsNonceGapNobodySent(chain_snapshot, token, monkeypatch) -> None:
    w3, owner = chain_snapshot, dev_account(0)
    bob = dev_account(1).address
    gap = nonce_of(w3, owner.address)
    sender = TxSender(w3, owner, stall_timeout=0.2, poll_interval=0.02, receipt_timeout=30)
    real, skipped = sender._chain_nonce, []

    def skip_one_nonce() -> int:  # as if a sender elsewhere took `gap` and never sent it
        if not skipped:
            skipped.append(True)
            return real() + 1
        return real()

    monkeypatch.setattr(sender, "_chain_nonce", skip_one_nonce)
    receipt = sender.send(token.functions.transfer(bob, ETHER))
    assert receipt["status"] == 1
    assert w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == gap + 1
    mined = [w3.eth.get_block(receipt["blockNumber"] - k, full_transactions=True) for k in (0, 1)]
    filler = next(tx for block in mined for tx in block["transactions"] if tx["nonce"] == gap)
    assert (filler["from"], filler["to"], filler["value"], filler["input"]) == (owner.address,) * 2 + (0, b"")
    assert token.functions.balanceOf(bob).call() == ETHER


def _holding_first_send(hold: float, answers: list[dict]) -> Behaviour:
    """Forward everything, but hold back the answer to the first eth_sendRawTransaction past the
    client's timeout: the node got the transaction, the client never heard so, and web3's provider
    retries the send. Every answer to a send is kept in `answers`."""

    def behaviour(request: dict, forward: Forward) -> dict:
        answer = forward(request)
        if request.get("method") == "eth_sendRawTransaction":
            answers.append(answer)
            if len(answers) == 1:
                time.sleep(hold)
        return answer

    return behaviour


@pytest.fixture
def relay(chain_snapshot: Web3) -> Iterator[RpcRelay]:
    """A loopback relay in front of the test Anvil that plays a hosted provider's faults."""
    relay = RpcRelay(chain_snapshot.provider.endpoint_uri).start()
    yield relay
    relay.down.clear()
    relay.stop()


def test_send_answerLostAndSendRetried_sendsTheCallOnce(chain_snapshot: Web3, relay, tmp_path) -> None:
    """The retry is answered "nonce too low" about our own transaction: it must not count as a
    conflict that sends the transfer a second time."""
    sends: list[dict] = []
    relay.behaviour = _holding_first_send(2.0, sends)
    w3 = Web3(Web3.HTTPProvider(relay.url, request_kwargs={"timeout": 1}))  # default retries
    sender = TxSender(w3, dev_account(0), nonce_lock_dir=tmp_path)
    recipient = Account.create().address
    before = chain_snapshot.eth.get_transaction_count(sender.address)
    sender.send_value(recipient, ETHER)
    assert len(sends) >= 2, "the provider did not retry: the fault was not reproduced"
    assert "error" in sends[1]  # the node's answer to the retry
    assert chain_snapshot.eth.get_balance(recipient) == ETHER
    assert chain_snapshot.eth.get_transaction_count(sender.address) == before + 1


def test_redact_keepsHostAndCutsKeysFromUrls() -> None:
    requests_error = (
        "HTTPSConnectionPool(host='rpc.example.org', port=443): Max retries exceeded with url: "
        "/v3/SECRET_KEY (Caused by NewConnectionError)"
    )
    assert "SECRET_KEY" not in redact(requests_error) and "rpc.example.org" in redact(requests_error)
    text = redact("cannot reach https://user:pw@rpc.example.org:8545/v3/KEY?token=abc now")
    assert text == "cannot reach https://rpc.example.org:8545/… now"
    assert redact("http://127.0.0.1:8545") == "http://127.0.0.1:8545"


def test_send_nodeUnreachable_errorDoesNotLeakTheUrlsKey(tmp_path) -> None:
    port = free_port()
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}/v3/SECRET_KEY", exception_retry_configuration=None))
    sender = TxSender(w3, dev_account(0), nonce_lock_dir=tmp_path)
    sender._chain_id = 31337  # skip the chain id call, so the failure happens in the send itself
    with pytest.raises(ChainError) as info:
        transfer = {"to": sender.address, "value": 0, "gas": 21000, "gasPrice": 1, "nonce": 0}
        sender._send_raw({**transfer, "chainId": 31337})
    assert "SECRET_KEY" not in str(info.value)


def _via(relay: RpcRelay, contract: Contract) -> tuple[Web3, Contract]:
    w3 = Web3(Web3.HTTPProvider(relay.url, request_kwargs={"timeout": 2}))
    return w3, w3.eth.contract(address=contract.address, abi=contract.abi)


def test_wait_rpcOutage_keepsPollingAndReturnsTheReceiptOnce(token, automine_off, relay, tmp_path) -> None:
    """An RPC outage (the relay drops every connection) while the receipt is awaited, and the
    transaction is mined meanwhile: before, the raw ConnectionError reached the caller, whose natural
    retry paid twice. Now the sender polls through the outage and returns the one receipt."""
    anvil, owner = automine_off, dev_account(0)
    w3, via = _via(relay, token)
    sender = TxSender(w3, owner, receipt_timeout=60, poll_interval=0.02, nonce_lock_dir=tmp_path)
    bob = Account.create().address
    nonce = nonce_of(anvil, owner.address)
    thread, outcome = _send_in_thread(sender, via.functions.transfer(bob, ETHER))
    _wait_until(lambda: nonce_of(anvil, owner.address) == nonce + 1)
    relay.down.set()
    _wait_until(lambda: relay.dropped >= 20)  # the sender kept polling into the outage
    anvil.provider.make_request("evm_mine", [])  # mined while the node is out of reach
    relay.down.clear()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["receipt"]["status"] == 1
    assert token.functions.balanceOf(bob).call() == ETHER
    assert nonce_of(anvil, owner.address) == nonce + 1  # sent once


def test_wait_rpcDownUntilTheDeadline_raisesTxTimeoutWithTheHash(
    token, automine_off, relay, tmp_path
) -> None:
    anvil, owner = automine_off, dev_account(0)
    w3, via = _via(relay, token)
    sender = TxSender(w3, owner, receipt_timeout=2, poll_interval=0.05, nonce_lock_dir=tmp_path)
    nonce = nonce_of(anvil, owner.address)
    thread, outcome = _send_in_thread(sender, via.functions.transfer(dev_account(1).address, ETHER))
    _wait_until(lambda: nonce_of(anvil, owner.address) == nonce + 1)
    relay.down.set()
    thread.join(timeout=30)
    err = outcome.get("error")
    assert isinstance(err, TxTimeout), err
    pending = anvil.provider.make_request("txpool_content", [])["result"]["pending"][owner.address.lower()]
    assert err.tx_hash == pending[str(nonce)]["hash"] and err.nonce == nonce
    assert "unreachable" in err.reason and "may still be mined" in str(err)
    anvil.provider.make_request("evm_mine", [])
    assert anvil.eth.get_transaction_receipt(err.tx_hash)["status"] == 1  # it was mined after all


@pytest.fixture
def base_fee_restored(automine_off: Web3) -> Iterator[Web3]:
    """Anvil keeps its fee state across snapshot reverts: put the base fee back for later tests."""
    before = automine_off.eth.get_block("latest")["baseFeePerGas"]
    yield automine_off
    automine_off.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(before)])


def _spike_base_fee(w3: Web3, wei: int) -> None:
    """The next block's base fee jumps to `wei` and that block is mined (without our transaction,
    whose fee cap is now too low: Anvil drops it, as nodes do)."""
    w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(wei)])
    w3.provider.make_request("evm_mine", [])


def test_wait_baseFeeSpike_resignsTheSameNonceWithHigherFees(token, base_fee_restored, caplog) -> None:
    """Before: the node dropped the underpriced transaction, refused its rebroadcast, the wait timed
    out and the next send took its nonce, so the payment never happened."""
    w3, owner = base_fee_restored, dev_account(0)
    bob = Account.create().address
    nonce = nonce_of(w3, owner.address)
    sender = TxSender(w3, owner, stall_timeout=0.2, poll_interval=0.02, receipt_timeout=30)
    with caplog.at_level(logging.INFO, logger="chain.tx"):
        thread, outcome = _send_in_thread(sender, token.functions.transfer(bob, ETHER))
        _wait_until(lambda: nonce_of(w3, owner.address) == nonce + 1)
        first = w3.provider.make_request("txpool_content", [])["result"]["pending"][owner.address.lower()]
        first = first[str(nonce)]
        _spike_base_fee(w3, 100 * 10**9)
        assert w3.eth.get_transaction_count(owner.address, "latest") == nonce, "the spike block left it out"

        def repriced() -> bool:
            pool = w3.provider.make_request("txpool_content", [])["result"]["pending"]
            tx = pool.get(owner.address.lower(), {}).get(str(nonce))
            return tx is not None and tx["hash"] != first["hash"]

        _wait_until(repriced, timeout=20)
        w3.provider.make_request("evm_mine", [])
        thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    receipt = outcome["receipt"]
    mined = w3.eth.get_transaction(receipt["transactionHash"])
    assert mined["nonce"] == nonce and receipt["transactionHash"].to_0x_hex() != first["hash"]
    assert mined["maxFeePerGas"] >= 200 * 10**9 > int(first["maxFeePerGas"], 16)
    assert token.functions.balanceOf(bob).call() == ETHER
    assert [r for r in caplog.records if r.getMessage().startswith("tx_repriced")]


def test_wait_baseFeeAboveTheCap_waitsAndSaysSo(token, base_fee_restored) -> None:
    w3, owner = base_fee_restored, dev_account(0)
    sender = TxSender(
        w3, owner, stall_timeout=0.2, poll_interval=0.02, receipt_timeout=1.5, max_fee_per_gas=50 * 10**9
    )
    nonce = nonce_of(w3, owner.address)
    thread, outcome = _send_in_thread(sender, token.functions.transfer(dev_account(1).address, ETHER))
    _wait_until(lambda: nonce_of(w3, owner.address) == nonce + 1)
    _spike_base_fee(w3, 100 * 10**9)
    thread.join(timeout=30)
    err = outcome.get("error")
    assert isinstance(err, TxTimeout), err
    assert "above the fee cap" in err.reason


def test_revert_fromAThirdPartyContract_namesTheSelectorAndSaysItMayBeExternal(chain_snapshot) -> None:
    """A contract of no ABI of ours reverts with custom error 0xdeadbeef: the message used to say
    only "run make contracts"."""
    w3 = chain_snapshot
    runtime = "63deadbeef60e01b60005260046000fd"  # mstore(0, 0xdeadbeef << 224); revert(0, 4)
    init = "6010600c60003960106000f3" + runtime  # codecopy the 16 runtime bytes and return them
    tx_hash = w3.eth.send_transaction({"from": dev_account(0).address, "data": "0x" + init})
    external = w3.eth.get_transaction_receipt(tx_hash)["contractAddress"]
    assert w3.eth.get_code(external).hex() == runtime
    with pytest.raises(RevertError) as info:
        TxSender(w3, dev_account(0)).send_value(external, 0)
    err = info.value
    assert (err.name, err.selector) == ("UnknownError", bytes.fromhex("deadbeef"))
    assert "selector=0xdeadbeef" in str(err) and "external" in str(err)
