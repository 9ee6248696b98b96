"""The paid node end to end: the daemon (`python -m node`) with payment on, against real Anvil, kubo
and llama.cpp. A funded payer's signed requests are served and billed, the payer library checks
and countersigns the receipts, forged / replayed / expired / other-chain / other-node auths are
refused with their reason, and the receipts settle on chain at shutdown with the split exact."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time

import httpx
import pytest

from chain.accounts import dev_account
from chain.pricing import request_cost
from chain.receipts import Domain, RequestAuth, UsageReceipt
from chain.tx import TxSender
from chain.units import format_token
from protocol.payer import Payer
from protocol.payment import AUTH_HEADER, Billing, encode_auth, encode_signed_receipt, sign_auth
from scripts import status
from storage.daemon import free_port
from tests.market_fixtures import OPERATOR, STRANGER, Net, fund, tiny

PAYER = dev_account(4)
DEPOSIT = 10**18  # 1 MESH
PRICE = 10**15  # what Net.propose prices a model at, per 1K tokens


def post(url: str, headers: dict[str, str], **body) -> httpx.Response:
    payload = {"model": "tiny-coder", "prompt": "def fix", "max_tokens": 8, "temperature": 0, **body}
    return httpx.post(url + "/v1/completions", json=payload, headers=headers, timeout=60)


@pytest.fixture
def paid_node(net: Net, daemon_factory):
    return start_paid(net, daemon_factory, settle_interval_s=3600)


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], response.headers.get("x-should-retry", "")


def status_row(net: Net, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The node's row in the payments table of `scripts.status`."""
    capsys.readouterr()
    assert status.main(["--rpc-url", net.rpc_url, "--deployment", str(net.deployment_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("payments"))
    return re.split(r"\s{2,}", lines[start + 2].strip())


def test_paid_requests_are_billed_countersigned_and_settled_with_the_split(
    net: Net, paid_node, capsys: pytest.CaptureFixture[str]
) -> None:
    node, model_id, domain = paid_node
    payer = Payer(PAYER, domain, price_of=lambda m: PRICE)
    operator = OPERATOR.address

    # Without an auth: 401 that says how to pay, and not to retry.
    assert refusal(post(node.url, {})) == (401, "payment_required", "false")

    # A signed request is served and billed exactly; the payer countersigns the receipt.
    nonce, headers = payer.authorize(operator, model_id, 8, PRICE)
    answer = post(node.url, headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    billing = Billing.decode(body["llm_mesh"])
    tokens = body["usage"]["completion_tokens"]
    assert billing.request.tokens == tokens and billing.request.amount == request_cost(tokens, PRICE)
    first = payer.accept(operator, nonce, billing, tokens)

    # The same auth again is a replay.
    assert refusal(post(node.url, headers))[:2] == (401, "nonce_reused")

    # A stream: the receipt rides in the final chunk; the countersigned one travels in the header.
    nonce, headers = payer.authorize(operator, model_id, 8, PRICE)
    with httpx.stream(
        "POST",
        node.url + "/v1/completions",
        json={
            "model": "tiny-coder",
            "prompt": "def add",
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=headers,
        timeout=60,
    ) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data: {")]
    final = next(e for e in events if "llm_mesh" in e)
    usage = next(e for e in events if e.get("usage"))["usage"]
    second = payer.accept(operator, nonce, Billing.decode(final["llm_mesh"]), usage["completion_tokens"])
    assert Billing.decode(final["llm_mesh"]).base == first  # the node stored the carried receipt
    assert second.receipt.cumulative_tokens == tokens + usage["completion_tokens"]

    # POST /v1/receipts stores it durably before answering.
    stored = httpx.post(node.url + "/v1/receipts", json=encode_signed_receipt(second), timeout=10)
    assert stored.status_code == 200 and stored.json()["cumulative_amount"] == str(
        second.receipt.cumulative_amount
    )

    metrics = httpx.get(node.url + "/metrics", timeout=10).text
    assert "llm_mesh_receipts_stored 2.0" in metrics and "llm_mesh_receipts_settled 0.0" in metrics
    amount = second.receipt.cumulative_amount
    # The status script asks the node (at its on-chain endpoint) what it is owed.
    assert status_row(net, capsys) == ["test-node", "0 MESH", format_token(amount), "2", "0", "0"]
    settlement = net.market.contract("Settlement")
    before = settlement.functions.escrowOf(PAYER.address).call()[0]
    assert node.stop() == 0  # graceful shutdown settles what is unpaid
    assert status_row(net, capsys) == ["test-node", format_token(amount), "unreachable", "-", "-", "-"]
    channel = settlement.functions.channelOf(PAYER.address, operator).call()
    assert tuple(channel) == (amount, second.receipt.cumulative_tokens)
    assert settlement.functions.escrowOf(PAYER.address).call()[0] == before - amount
    split = settlement.functions.split(amount).call()
    assert settlement.functions.earnings(operator).call() == split[0]
    assert sum(split) == amount


def test_bad_auths_are_refused_with_their_reason(net: Net, paid_node) -> None:
    node, model_id, domain = paid_node
    operator = OPERATOR.address
    now = int(time.time())

    def headers(auth: RequestAuth, signer=PAYER, sign_domain: Domain = domain) -> dict[str, str]:
        return {AUTH_HEADER: encode_auth(sign_auth(auth, signer, sign_domain))}

    good = RequestAuth(PAYER.address, operator, model_id, 8, PRICE, 1, now + 60)
    other_chain = Domain(1, domain.settlement)
    cases = [
        (headers(good, signer=STRANGER), (401, "bad_signature")),  # forged: not the payer's key
        (headers(good, sign_domain=other_chain), (401, "wrong_chain")),
        (
            headers(RequestAuth(PAYER.address, STRANGER.address, model_id, 8, PRICE, 2, now + 60)),
            (403, "wrong_node"),
        ),
        (
            headers(RequestAuth(PAYER.address, operator, model_id, 8, PRICE, 3, now - 5)),
            (401, "auth_expired"),
        ),
        (
            headers(RequestAuth(PAYER.address, operator, model_id + 1, 8, PRICE, 4, now + 60)),
            (403, "wrong_model"),
        ),
        (
            headers(RequestAuth(PAYER.address, operator, model_id, 4, PRICE, 5, now + 60)),
            (403, "max_tokens_above_auth"),
        ),
        (
            headers(RequestAuth(PAYER.address, operator, model_id, 8, PRICE - 1, 6, now + 60)),
            (402, "price_above_cap"),
        ),
        (
            headers(
                RequestAuth(STRANGER.address, operator, model_id, 8, PRICE, 7, now + 60), signer=STRANGER
            ),
            (402, "no_escrow"),
        ),
    ]
    for sent, expected in cases:
        status, code, retry = refusal(post(node.url, sent))
        assert (status, code) == expected
        assert retry == "false"
    # None of them was billed: the good auth still works.
    assert post(node.url, headers(good)).status_code == 200


def start_paid(net: Net, daemon_factory, funds=((PAYER, DEPOSIT),), **payments):
    """A registered, serving paid node over one tiny model (its on-chain endpoint is the daemon's),
    its payers funded before it starts (so no test races the watcher); (node, model id, domain)."""
    port = free_port()
    net.register(OPERATOR, endpoint=f"http://127.0.0.1:{port}")
    for account, amount in funds:
        fund(net, account, amount)
    model_id = asyncio.run(net.publish("tiny-coder", tiny(net.tmp, "tiny-coder", seed=5)))
    node = daemon_factory([{"name": "tiny-coder", "threads": 2, "n_ctx": 512}], port=port, payments=payments)
    node.until(lambda: "tiny-coder" in node.models(), what="the paid node to serve")
    return node, model_id, Domain(net.w3.eth.chain_id, net.deployment.settlement)


def served(node, payer: Payer, model_id: int, max_tokens: int = 8):
    """One paid request; (response, countersigned receipt or None)."""
    nonce, headers = payer.authorize(OPERATOR.address, model_id, max_tokens, PRICE)
    response = post(node.url, headers, max_tokens=max_tokens)
    if response.status_code != 200:
        return response, None
    billing = Billing.decode(response.json()["llm_mesh"])
    return response, payer.accept(
        OPERATOR.address, nonce, billing, response.json()["usage"]["completion_tokens"]
    )


def stored_receipt(node, payer: Payer, model_id: int):
    """Two paid requests, the second's countersigned receipt sent back and stored; that receipt."""
    assert served(node, payer, model_id)[0].status_code == 200
    _, receipt = served(node, payer, model_id)
    response = httpx.post(node.url + "/v1/receipts", json=encode_signed_receipt(receipt), timeout=10)
    assert response.status_code == 200
    return receipt


def restarted(daemon_factory):
    """The paid node started again on the same config and store, once it serves."""
    again = daemon_factory(
        [{"name": "tiny-coder", "threads": 2, "n_ctx": 512}], payments={"settle_interval_s": 3600}
    )
    again.until(lambda: "tiny-coder" in again.models(), what="the restarted node")
    return again


def test_credit_limit_and_escrow_bound_what_a_payer_may_owe(net: Net, daemon_factory) -> None:
    # One token costs 10^12; the credit limit (8.5 x 10^12) holds one request's worst case (8 x 10^12)
    # but not that plus the first request's usage.
    funds = ((PAYER, 10**16), (STRANGER, 10**13))
    node, model_id, domain = start_paid(
        net, daemon_factory, funds, credit_limit="0.0000085", settle_interval_s=3600
    )
    payer = Payer(PAYER, domain, price_of=lambda m: PRICE)
    first, receipt = served(node, payer, model_id)
    assert first.status_code == 200
    # The payer keeps the receipt to itself: the next request would pass the credit limit.
    _, headers = payer.authorize(OPERATOR.address, model_id, 8, PRICE)
    headers.pop("x-llm-mesh-receipt", None)
    assert refusal(post(node.url, headers))[:2] == (402, "credit_limit")
    # Countersigned and sent back, the unsigned usage is gone and requests are admitted again.
    assert (
        httpx.post(node.url + "/v1/receipts", json=encode_signed_receipt(receipt), timeout=10).status_code
        == 200
    )
    assert served(node, payer, model_id)[0].status_code == 200
    # A request whose worst case passes the escrow is refused whatever the credit limit.
    big = Payer(STRANGER, domain, price_of=lambda m: PRICE)
    assert refusal(served(node, big, model_id, max_tokens=64)[0])[:2] == (402, "insufficient_escrow")


def test_the_owed_cap_makes_the_node_settle_early(net: Net, daemon_factory) -> None:
    # Escrow 10^14, cap 0.25 of it: two 8-token requests pass half the cap, so the node settles
    # without waiting for its hour-long interval, and the payer is served again.
    node, model_id, domain = start_paid(
        net, daemon_factory, ((PAYER, 10**14),), settle_interval_s=3600, rate_per_s=1000, rate_burst=1000
    )
    payer = Payer(PAYER, domain, price_of=lambda m: PRICE)
    settlement = net.market.contract("Settlement")
    codes = []
    for _ in range(6):
        response, _ = served(node, payer, model_id)
        codes.append(
            response.status_code if response.status_code == 200 else response.json()["error"]["code"]
        )
    # Past half its cap the payer is settled early; past the whole cap it is told to wait.
    assert set(codes) <= {200, "settlement_pending"} and codes[0] == 200
    node.until(
        lambda: settlement.functions.channelOf(PAYER.address, OPERATOR.address).call()[0] > 0,
        what="an early settlement",
    )
    node.until(lambda: served(node, payer, model_id)[0].status_code == 200, what="service after settling")


def test_an_unlock_request_makes_the_node_settle_before_the_delay(net: Net, daemon_factory) -> None:
    node, model_id, domain = start_paid(net, daemon_factory, settle_interval_s=3600)
    second = stored_receipt(node, Payer(PAYER, domain, price_of=lambda m: PRICE), model_id)
    settlement = net.market.contract("Settlement")
    TxSender(net.w3, PAYER).send(settlement.functions.requestUnlock(DEPOSIT))
    ready_at = settlement.functions.escrowOf(PAYER.address).call()[2]
    node.until(
        lambda: (
            settlement.functions.channelOf(PAYER.address, OPERATOR.address).call()[0]
            == second.receipt.cumulative_amount
        ),
        what="settlement after the unlock request",
    )
    assert net.w3.eth.get_block("latest")["timestamp"] < ready_at  # well before the delay ended
    # After the delay (Anvil time travel) the payer withdraws what is left: the node was paid first.
    net.w3.provider.make_request("evm_increaseTime", [settlement.functions.unlockDelay().call() + 1])
    net.w3.provider.make_request("evm_mine", [])
    TxSender(net.w3, PAYER).send(settlement.functions.withdraw())
    assert settlement.functions.escrowOf(PAYER.address).call()[0] == 0


def test_the_rate_limit_per_payer_answers_429_with_retry_after(net: Net, daemon_factory) -> None:
    node, model_id, domain = start_paid(net, daemon_factory, rate_per_s=0.01, rate_burst=1)
    payer = Payer(PAYER, domain, price_of=lambda m: PRICE)
    assert served(node, payer, model_id)[0].status_code == 200
    response, _ = served(node, payer, model_id)
    assert refusal(response)[:2] == (429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1


# ---------------------------------------------------------------- kill -9 at the worst moments


def settle_events(net: Net, payer: str) -> tuple[int, int]:
    """(ReceiptSettled, ReceiptRejected) events for `payer` on the whole chain."""
    settlement = net.market.contract("Settlement")
    settled = settlement.events.ReceiptSettled.get_logs(from_block=0, argument_filters={"payer": payer})
    rejected = settlement.events.ReceiptRejected.get_logs(from_block=0, argument_filters={"payer": payer})
    return len(settled), len(rejected)


def settle_in_mempool(w3) -> None:
    """Wait until the node's settle transaction waits in the mempool (blocks mined by hand)."""
    deadline = time.monotonic() + 30
    while w3.eth.get_transaction_count(OPERATOR.address, "pending") == w3.eth.get_transaction_count(
        OPERATOR.address, "latest"
    ):
        assert time.monotonic() < deadline, "the settle transaction never reached the mempool"
        time.sleep(0.01)


def paid_to_node(net: Net) -> int:
    """What Settlement paid the node from PAYER's escrow so far."""
    return net.market.contract("Settlement").functions.channelOf(PAYER.address, OPERATOR.address).call()[0]


def killed(node) -> None:
    node.proc.kill()
    node.proc.wait(10)


def test_kill_9_while_storing_receipts_loses_none_acknowledged(net: Net, daemon_factory) -> None:
    node, model_id, domain = start_paid(net, daemon_factory, settle_interval_s=3600)
    payer = Payer(PAYER, domain, price_of=lambda m: PRICE)
    acknowledged = 0  # the newest carried receipt a response came back with as its base
    stop_after = 6
    for i in range(40):
        if i == stop_after:  # kill while the next request (carrying a receipt) is being stored
            threading.Timer(0.01, killed, [node]).start()
        try:
            response, _ = served(node, payer, model_id)
        except httpx.HTTPError:
            break
        if response.status_code != 200:
            break
        base = Billing.decode(response.json()["llm_mesh"]).base
        if base is not None:
            acknowledged = max(acknowledged, base.receipt.cumulative_amount)
    node.proc.wait(10)
    assert acknowledged > 0
    # Restarted on the same store, the node settles at shutdown what it acknowledged, exactly once.
    assert restarted(daemon_factory).stop() == 0
    settlement = net.market.contract("Settlement")
    paid = settlement.functions.channelOf(PAYER.address, OPERATOR.address).call()[0]
    assert paid >= acknowledged
    assert settlement.functions.escrowOf(PAYER.address).call()[0] == DEPOSIT - paid
    assert settle_events(net, PAYER.address) == (1, 0)


def test_kill_9_with_a_settle_transaction_in_flight_never_submits_it_twice(net: Net, daemon_factory) -> None:
    node, model_id, domain = start_paid(net, daemon_factory, settle_interval_s=3600)
    receipt = stored_receipt(node, Payer(PAYER, domain, price_of=lambda m: PRICE), model_id)
    w3 = net.w3
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        node.proc.send_signal(signal.SIGTERM)  # shutdown settles: the transaction waits in the mempool
        settle_in_mempool(w3)
        killed(node)  # while the node waits for its receipt
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])
    settlement = net.market.contract("Settlement")
    assert (
        settlement.functions.channelOf(PAYER.address, OPERATOR.address).call()[0]
        == receipt.receipt.cumulative_amount
    )
    assert restarted(daemon_factory).stop() == 0
    assert settle_events(net, PAYER.address) == (1, 0)  # reconciled from channelOf: not sent again


def short_escrow(net: Net, daemon_factory):
    """A paid node holding a countersigned receipt the payer's escrow no longer covers: another
    node the payer also used settled first and left half of it; (node, receipt)."""
    node, model_id, domain = start_paid(net, daemon_factory, settle_interval_s=3600)
    receipt = stored_receipt(node, Payer(PAYER, domain, price_of=lambda m: PRICE), model_id)
    net.register(STRANGER, node_id="other-node")
    leave = receipt.receipt.cumulative_amount // 2
    drain = UsageReceipt(PAYER.address, STRANGER.address, model_id, 10**6, DEPOSIT - leave, 2**40)
    signed = (drain.as_tuple(), drain.sign(PAYER, domain).as_tuple(), drain.sign(STRANGER, domain).as_tuple())
    TxSender(net.w3, STRANGER).send(net.market.contract("Settlement").functions.settle([signed]))
    return node, receipt


def test_a_receipt_rejected_for_short_escrow_is_kept_and_settles_after_a_top_up(
    net: Net, daemon_factory
) -> None:
    node, receipt = short_escrow(net, daemon_factory)
    settlement = net.market.contract("Settlement")
    assert node.stop() == 0  # the shutdown settle is rejected (InsufficientEscrow): the receipt is kept
    assert settle_events(net, PAYER.address) == (1, 1)  # the other node's settled, ours rejected
    fund(net, PAYER, 10**16)  # the payer tops up
    assert restarted(daemon_factory).stop() == 0
    paid = settlement.functions.channelOf(PAYER.address, OPERATOR.address).call()[0]
    assert paid == receipt.receipt.cumulative_amount
    assert settle_events(net, PAYER.address) == (2, 1)


def test_a_rejected_receipt_is_retried_in_the_same_run_once_the_payer_tops_up(
    net: Net, daemon_factory
) -> None:
    node, receipt = short_escrow(net, daemon_factory)
    settlement = net.market.contract("Settlement")
    # An unlock request makes the node settle now: rejected, the escrow is short.
    TxSender(net.w3, PAYER).send(settlement.functions.requestUnlock(1))
    node.until(lambda: settle_events(net, PAYER.address) == (1, 1), what="the rejected settle")
    fund(net, PAYER, 10**16)  # the top-up wakes the node, which sends the kept receipt again
    node.until(lambda: paid_to_node(net) == receipt.receipt.cumulative_amount, what="the retried settle")
    # One rejection in all: the node did not resend while the escrow stayed short.
    assert settle_events(net, PAYER.address) == (2, 1)
    assert node.stop() == 0


def test_a_top_up_mined_right_after_the_rejection_still_gets_the_receipt_retried(
    net: Net, daemon_factory
) -> None:
    """The top-up lands in the next block, before the node has read its settle's outcome: the bar
    a retry waits to pass is the balance at the rejection, not the topped-up one (which left the
    receipt waiting for yet another deposit)."""
    node, receipt = short_escrow(net, daemon_factory)
    w3, settlement, token = net.w3, net.market.contract("Settlement"), net.market.contract("NetworkToken")
    top_up = 10**16
    net.admin.send(token.functions.mint(PAYER.address, top_up))
    TxSender(w3, PAYER).send(token.functions.approve(settlement.address, top_up))
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        unlock = settlement.functions.requestUnlock(1).build_transaction(_unmined(w3, PAYER))
        w3.eth.send_raw_transaction(PAYER.sign_transaction(unlock).raw_transaction)
        w3.provider.make_request("evm_mine", [])  # the unlock request: the node sends its settle
        settle_in_mempool(w3)
        deposit = settlement.functions.deposit(top_up).build_transaction(_unmined(w3, PAYER))
        w3.provider.make_request("evm_mine", [])  # the settle, rejected: the escrow is short
        w3.eth.send_raw_transaction(PAYER.sign_transaction(deposit).raw_transaction)
        w3.provider.make_request("evm_mine", [])  # the top-up, ~ms later (the node polls every 0.1 s)
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    node.until(lambda: paid_to_node(net) == receipt.receipt.cumulative_amount, what="the retried settle")
    assert settle_events(net, PAYER.address) == (2, 1)
    assert node.stop() == 0


def _unmined(w3, account) -> dict:
    """Transaction fields for `account` while blocks are mined by hand (nothing waits for them)."""
    return {
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "gas": 300_000,
    }


def test_a_receipt_that_can_never_pay_is_dropped_and_never_sent_again(net: Net, daemon_factory) -> None:
    node, model_id, domain = start_paid(net, daemon_factory, settle_interval_s=3600)
    receipt = stored_receipt(node, Payer(PAYER, domain, price_of=lambda m: PRICE), model_id)
    # Past its expiry (Anvil time travel), the chain refuses the receipt for good.
    now = net.w3.eth.get_block("latest")["timestamp"]
    net.w3.provider.make_request("evm_increaseTime", [receipt.receipt.expiry - now + 60])
    net.w3.provider.make_request("evm_mine", [])
    assert node.stop() == 0  # the shutdown settle is rejected: ReceiptExpired
    assert settle_events(net, PAYER.address) == (0, 1)
    assert "ReceiptExpired" in node.log.read_text()
    assert restarted(daemon_factory).stop() == 0  # restarted, it has nothing left to settle
    assert settle_events(net, PAYER.address) == (0, 1)
    assert (
        net.market.contract("Settlement").functions.channelOf(PAYER.address, OPERATOR.address).call()[0] == 0
    )
