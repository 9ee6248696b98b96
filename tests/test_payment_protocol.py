"""The shared payment pieces: typed EIP-712 objects against Settlement.sol, the pricing rule, the
HTTP encoding and the payer library's refusal of every inflated receipt."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from eth_account import Account
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import eip712
from chain.artifacts import load_artifact
from chain.deploy import deploy_all
from chain.pricing import request_cost
from chain.receipts import Domain, RequestAuth, SignatureError, SignedReceipt, UsageReceipt, recover
from protocol.payer import Payer, ReceiptRefused
from protocol.payment import (
    AUTH_HEADER,
    RECEIPT_HEADER,
    Billing,
    Item,
    PaymentFormatError,
    decode_auth,
    decode_signed_receipt,
    encode_auth,
    encode_signed_receipt,
    sign_auth,
)

ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
UINT = st.integers(min_value=0, max_value=2**256 - 1)
ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: Account.from_key(keccak(b)).address)
PAYER = Account.from_key(keccak(b"payer"))
NODE = Account.from_key(keccak(b"node"))
DOMAIN = Domain(31337, "0x" + "ab" * 20)
PRICE = 2_000_000_000_000_000  # 0.002 MESH per 1K tokens


@pytest.fixture(scope="module")
def settlement(anvil):
    deployment = deploy_all(anvil, Account.from_key(ANVIL_KEY))
    return anvil.eth.contract(address=deployment.settlement, abi=load_artifact("Settlement").abi)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("per1k", "per_1k")


@pytest.mark.parametrize("cls", [RequestAuth, UsageReceipt])
def test_fields_follow_the_solidity_struct(cls):
    abi = [_snake(name) for name, _ in eip712.struct_fields(cls.STRUCT)]
    assert [f.name for f in dataclasses.fields(cls)] == abi
    assert cls.type_hash() == eip712.type_hash(cls.STRUCT)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payer=ADDRESSES, node=ADDRESSES, a=UINT, b=UINT, c=UINT, d=UINT, e=UINT)
def test_digests_match_the_contract(settlement, payer, node, a, b, c, d, e):
    domain = Domain(settlement.w3.eth.chain_id, settlement.address)
    receipt = UsageReceipt(payer, node, a, b, c, d)
    assert receipt.digest(domain) == settlement.functions.hashReceipt(receipt.as_tuple()).call()
    auth = RequestAuth(payer, node, a, b, c, d, e)
    assert auth.digest(domain) == settlement.functions.hashRequestAuth(auth.as_tuple()).call()
    # The same digest as the generic EIP-712 encoding a wallet would sign.
    message = dict(zip([n for n, _ in eip712.struct_fields("UsageReceipt")], receipt.as_tuple(), strict=True))
    assert receipt.digest(domain) == eip712.digest(
        "UsageReceipt", message, domain.chain_id, domain.settlement
    )


def test_a_python_signature_recovers_in_solidity(settlement):
    domain = Domain(settlement.w3.eth.chain_id, settlement.address)
    auth = RequestAuth(PAYER.address, NODE.address, 1, 256, PRICE, 7, 2**40)
    sig = auth.sign(PAYER, domain)
    assert settlement.functions.recoverRequestSigner(auth.as_tuple(), sig.as_tuple()).call() == PAYER.address
    assert auth.signer(sig, domain) == PAYER.address


def test_another_domain_never_recovers_the_signer():
    auth = RequestAuth(PAYER.address, NODE.address, 1, 256, PRICE, 7, 2**40)
    sig = auth.sign(PAYER, DOMAIN)
    for other in (Domain(1, DOMAIN.settlement), Domain(31337, "0x" + "cd" * 20)):
        assert auth.signer(sig, other) != PAYER.address


def test_malleable_and_malformed_signatures_are_refused():
    auth = RequestAuth(PAYER.address, NODE.address, 1, 256, PRICE, 7, 2**40)
    sig = auth.sign(PAYER, DOMAIN)
    high_s = eip712.SECP256K1_N - int.from_bytes(sig.s, "big")
    flipped = dataclasses.replace(sig, s=high_s.to_bytes(32, "big"), v=55 - sig.v)
    with pytest.raises(SignatureError, match="malleable"):
        recover(auth.digest(DOMAIN), flipped)
    with pytest.raises(SignatureError):
        recover(auth.digest(DOMAIN), dataclasses.replace(sig, v=29))


def test_struct_values_must_be_uint256():
    with pytest.raises(Exception, match="uint256"):
        RequestAuth(PAYER.address, NODE.address, -1, 1, 1, 1, 1)
    with pytest.raises(Exception, match="uint256"):
        UsageReceipt(PAYER.address, NODE.address, 1, 2**256, 1, 1)


@given(tokens=st.integers(0, 10**9), price=st.integers(0, 10**24))
def test_request_cost_rounds_up_once_per_request(tokens, price):
    cost = request_cost(tokens, price)
    assert cost * 1000 >= tokens * price > (cost - 1) * 1000 or cost == 0 == tokens * price


def test_request_cost_examples():
    assert request_cost(1000, PRICE) == PRICE
    assert request_cost(1, 1) == 1  # a fraction of a base unit is billed as one
    assert request_cost(0, PRICE) == 0
    with pytest.raises(ValueError):
        request_cost(-1, PRICE)


# ---------------------------------------------------------------- the wire


def test_auth_header_round_trips_with_its_domain():
    auth = RequestAuth(PAYER.address, NODE.address, 3, 64, PRICE, 2**127 + 5, 1_900_000_000)
    signed = sign_auth(auth, PAYER, DOMAIN)
    text = encode_auth(signed)
    data = json.loads(text)
    assert data["nonce"] == str(2**127 + 5)  # big numbers travel as decimal strings
    back = decode_auth(text)
    assert back == signed and back.chain_id == 31337 and back.settlement == DOMAIN.settlement


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"nonce": "-1"}, "nonce"),
        ({"nonce": 1.5}, "nonce"),
        ({"payer": "0x12"}, "payer"),
        ({"signature": "0x00"}, "signature"),
        ({"max_tokens": str(2**256)}, "max_tokens"),
        ({"deadline": True}, "deadline"),
    ],
)
def test_bad_auth_headers_name_the_field(change, complaint):
    signed = sign_auth(RequestAuth(PAYER.address, NODE.address, 3, 64, PRICE, 9, 10), PAYER, DOMAIN)
    data = {**json.loads(encode_auth(signed)), **change}
    with pytest.raises(PaymentFormatError, match=complaint):
        decode_auth(json.dumps(data))


def test_not_json_and_oversize_headers_are_refused():
    with pytest.raises(PaymentFormatError, match="JSON"):
        decode_auth("{nope")
    with pytest.raises(PaymentFormatError, match="larger"):
        decode_auth("x" * 5000)


# ---------------------------------------------------------------- the payer library


class FakeNode:
    """The node's billing arithmetic, written out in the test (the real node is tested elsewhere):
    it lets each test tamper with one field of an otherwise honest receipt."""

    def __init__(self) -> None:
        self.base: SignedReceipt | None = None
        self.items: list[Item] = []

    def bill(self, nonce: int, tokens: int, price: int = PRICE, **tamper) -> Billing:
        item = Item(nonce, 1, tokens, price, request_cost(tokens, price))
        self.items.append(item)
        base = self.base.receipt if self.base else None
        receipt = UsageReceipt(
            PAYER.address,
            NODE.address,
            1,
            (base.cumulative_tokens if base else 0) + sum(i.tokens for i in self.items),
            (base.cumulative_amount if base else 0) + sum(i.amount for i in self.items),
            2_000_000_000,
        )
        receipt = dataclasses.replace(receipt, **tamper.pop("receipt", {}))
        items = tuple(tamper.pop("items", self.items))
        return Billing(item, receipt, receipt.sign(tamper.pop("signer", NODE), DOMAIN), self.base, items)

    def countersigned(self, signed: SignedReceipt) -> None:
        covered = [i for i in self.items]
        self.base, self.items = signed, [i for i in self.items if i not in covered]


def payer(**kw) -> Payer:
    return Payer(PAYER, DOMAIN, price_of=lambda model_id: PRICE, clock=lambda: 1_800_000_000, **kw)


def test_an_honest_receipt_is_countersigned_and_carried_next_time():
    p, node = payer(), FakeNode()
    nonce, headers = p.authorize(NODE.address, 1, 64, PRICE)
    assert set(headers) == {AUTH_HEADER}
    signed = p.accept(NODE.address, nonce, node.bill(nonce, 40), usage_tokens=40)
    assert signed.receipt.signer(signed.payer_sig, DOMAIN) == PAYER.address
    assert signed.receipt.cumulative_amount == request_cost(40, PRICE)
    node.countersigned(signed)
    nonce2, headers = p.authorize(NODE.address, 1, 64, PRICE)
    assert decode_signed_receipt(headers[RECEIPT_HEADER]) == signed
    second = p.accept(NODE.address, nonce2, node.bill(nonce2, 64), usage_tokens=64)
    assert second.receipt.cumulative_tokens == 104


def test_a_request_cut_short_is_billed_within_its_auth_in_the_next_receipt():
    p, node = payer(), FakeNode()
    broken, _ = p.authorize(NODE.address, 1, 64, PRICE)
    p.streamed(NODE.address, broken, 10)
    node.bill(broken, 12)  # the node produced 12, 10 arrived before the connection broke
    nonce, _ = p.authorize(NODE.address, 1, 64, PRICE)
    signed = p.accept(NODE.address, nonce, node.bill(nonce, 5), usage_tokens=5)
    assert signed.receipt.cumulative_tokens == 17


@pytest.mark.parametrize(("billed", "accepted"), [(20, True), (22, True), (23, False), (9, False)])
def test_a_stream_that_broke_off_is_billed_by_the_text_that_arrived(billed, accepted):
    # 10 chunks holding 18 bytes of text (characters spelt in byte tokens): at least 10 tokens,
    # at most 18 + the slack of 4 written by the node but cut on the way.
    p, node = payer(), FakeNode()
    broken, _ = p.authorize(NODE.address, 1, 64, PRICE)
    p.broke_off(NODE.address, broken, 10, slack=4, text_bytes=18)
    node.bill(broken, billed)
    nonce, _ = p.authorize(NODE.address, 1, 64, PRICE)
    billing = node.bill(nonce, 5)
    if accepted:
        assert p.accept(NODE.address, nonce, billing, usage_tokens=5).receipt.cumulative_tokens == billed + 5
    else:
        with pytest.raises(ReceiptRefused, match=r"10\.\.22 arrived"):
            p.accept(NODE.address, nonce, billing, usage_tokens=5)


@pytest.mark.parametrize(
    ("tamper", "usage", "complaint"),
    [
        ({"receipt": {"cumulative_amount": 10**30}}, 40, "add up"),
        ({"receipt": {"cumulative_tokens": 41}}, 40, "add up"),
        ({}, 39, "billed 40 tokens"),  # more tokens than the response reported
        ({"price": PRICE + 1}, 40, "chain says"),
        ({"price": 3 * PRICE}, 40, "above its cap"),
        ({"signer": PAYER}, 40, "node's signature"),
        ({"receipt": {"node": PAYER.address}}, 40, "not this payer and node"),
        ({"receipt": {"expiry": 1_800_000_001}}, 40, "expires too soon"),
    ],
)
def test_inflated_or_foreign_receipts_are_refused(tamper, usage, complaint):
    p, node = payer(), FakeNode()
    nonce, _ = p.authorize(NODE.address, 1, 64, 2 * PRICE)
    price = tamper.pop("price", PRICE)
    billing = node.bill(nonce, 40, price, **tamper)
    with pytest.raises(ReceiptRefused, match=complaint):
        p.accept(NODE.address, nonce, billing, usage_tokens=usage)
    assert p.ledger(NODE.address).last is None  # nothing was signed


def test_an_item_for_a_request_never_authorised_is_refused():
    p, node = payer(), FakeNode()
    nonce, _ = p.authorize(NODE.address, 1, 64, PRICE)
    node.bill(12345, 10)  # a request this payer never made
    with pytest.raises(ReceiptRefused, match="never authorised"):
        p.accept(NODE.address, nonce, node.bill(nonce, 40), usage_tokens=40)


def test_a_cut_short_request_billed_above_its_max_tokens_is_refused():
    p, node = payer(), FakeNode()
    broken, _ = p.authorize(NODE.address, 1, 16, PRICE)
    node.bill(broken, 17)
    nonce, _ = p.authorize(NODE.address, 1, 64, PRICE)
    with pytest.raises(ReceiptRefused, match=r"0\.\.16"):
        p.accept(NODE.address, nonce, node.bill(nonce, 4), usage_tokens=4)


def test_a_receipt_on_an_older_base_rebilling_what_came_after_is_accepted():
    """Two requests at once: the second receipt is built before the first countersigned one
    reached the node, so it bills the first request again on the older base: the right total."""
    p, node = payer(), FakeNode()
    first, _ = p.authorize(NODE.address, 1, 64, PRICE)
    second, _ = p.authorize(NODE.address, 1, 64, PRICE)
    one = p.accept(NODE.address, first, node.bill(first, 40), usage_tokens=40)
    both = p.accept(NODE.address, second, node.bill(second, 4), usage_tokens=4)  # base: none yet
    assert both.receipt.cumulative_tokens == 44 > one.receipt.cumulative_tokens
    assert p.ledger(NODE.address).last == both


def test_a_request_billed_twice_or_again_over_its_base_is_refused():
    p, node = payer(), FakeNode()
    first, _ = p.authorize(NODE.address, 1, 64, PRICE)
    signed = p.accept(NODE.address, first, node.bill(first, 10), usage_tokens=10)
    node.countersigned(signed)
    second, _ = p.authorize(NODE.address, 1, 64, PRICE)
    node.items.append(Item(first, 1, 10, PRICE, request_cost(10, PRICE)))  # already in the base
    with pytest.raises(ReceiptRefused, match=f"request {first} is already in the receipt's base"):
        p.accept(NODE.address, second, node.bill(second, 5), usage_tokens=5)
    third, _ = p.authorize(NODE.address, 1, 64, PRICE)
    node.items = []
    billing = node.bill(third, 5)
    twice = dataclasses.replace(billing, items=(billing.request, billing.request))
    with pytest.raises(ReceiptRefused, match="more than once"):
        p.accept(NODE.address, third, twice, usage_tokens=5)
    assert p.ledger(NODE.address).last == signed


def test_an_answer_reporting_more_tokens_than_its_auth_allows_is_refused():
    p, node = payer(), FakeNode()
    nonce, _ = p.authorize(NODE.address, 1, 16, PRICE)
    with pytest.raises(ReceiptRefused, match=r"billed 1000000000 tokens; 1000000000\.\.16"):
        p.accept(NODE.address, nonce, node.bill(nonce, 10**9), usage_tokens=10**9)


def test_signed_receipt_json_round_trips():
    receipt = UsageReceipt(PAYER.address, NODE.address, 1, 5, 10, 2_000_000_000)
    signed = SignedReceipt(receipt, receipt.sign(PAYER, DOMAIN), receipt.sign(NODE, DOMAIN))
    assert decode_signed_receipt(encode_signed_receipt(signed)) == signed


def test_a_rejected_payer_signature_hints_at_another_chain_or_contract():
    from eth_abi import encode

    from chain.revert import decode_revert, selector_table

    selector = next(s for s, (_, e) in selector_table().items() if e["name"] == "InvalidPayerSignature")
    error = decode_revert(selector + encode(["address"], [PAYER.address]))
    assert error.name == "InvalidPayerSignature"
    assert "another chain id or Settlement address" in str(error)
