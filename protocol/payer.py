"""The payer's side of the payment protocol: sign request auths, check node receipts, countersign.

`Payer.authorize(node, model_id, max_tokens, max_price_per_1k)` signs a RequestAuth (a random
128-bit nonce, a short deadline) and returns the headers to send: the auth and the newest receipt
this payer countersigned for that node. When the answer arrives, `Payer.accept(node, nonce, billing,
usage_tokens, streamed)` checks the node's receipt and countersigns it; anything that does not add up
raises ReceiptRefused and nothing is signed. The checks (what "inflated" means):

- the receipt is for this payer and that node, expires no sooner than `min_expiry_s` from now;
- its base is a receipt this payer countersigned for the node: the newest, an older one (a
  concurrent request's receipt had not reached the node yet; the items then bill again what the
  newer one billed, each request once), or a newer one (a ledger that was lost is adopted from it);
  no item bills a request twice or one its base already holds;
- every item is a request this payer authorised to this node and not billed differently before:
  tokens within the auth's max_tokens, price within its cap (and equal to the on-chain price when
  `price_of` knows it), amount = chain.pricing.request_cost(tokens, price);
- the answered request's item bills exactly the completion tokens its response reported, never
  more than its auth's max_tokens; an item
  of a request whose answer has not arrived bills at least the text chunks that arrived and at
  most its auth's max_tokens, or, once the payer said it broke off (`broke_off`), at most what
  arrived (in bytes of text: a token adds at least one) plus a small slack for tokens in flight;
- cumulative tokens and amount are the base's plus the items' sums, nothing more.

The ledger (per node: the newest countersigned receipt, the auths, what each was billed) lives in
memory; `Payer.ledger(node)` exposes it for persistence by the caller.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from chain.pricing import request_cost
from chain.receipts import Domain, RequestAuth, SignatureError, SignedReceipt, UsageReceipt, checksum_address
from protocol.payment import (
    AUTH_HEADER,
    RECEIPT_HEADER,
    Billing,
    Item,
    encode_auth,
    encode_signed_receipt,
    sign_auth,
)

MAX_OPEN_AUTHS = 1024  # per node; above it, unbilled auths older than an hour are dropped


class ReceiptRefused(Exception):  # noqa: N818 - what happened to the receipt
    """A node receipt this payer will not sign; the message says what did not add up."""


@dataclass
class AuthRecord:
    """One request this payer authorised: its limits, what arrived and what it was billed."""

    auth: RequestAuth
    created: float
    streamed: int = 0  # text chunks (or reported tokens) that arrived
    answered: int | None = None  # completion tokens the finished response reported
    ceiling: int | None = None  # for a request that broke off: the most it may be billed
    billed_in: int | None = None  # cumulative amount of the first countersigned receipt billing it
    billed: Item | None = None


@dataclass
class NodeLedger:
    """What this payer knows about one node."""

    node: str
    last: SignedReceipt | None = None
    auths: dict[int, AuthRecord] = field(default_factory=dict)

    @property
    def cumulative(self) -> tuple[int, int]:
        r = self.last.receipt if self.last is not None else None
        return (r.cumulative_tokens, r.cumulative_amount) if r is not None else (0, 0)


class Payer:
    """A payer's keys, domain and per-node ledgers."""

    def __init__(
        self,
        account: LocalAccount,
        domain: Domain,
        *,
        price_of: Callable[[int], int | None] | None = None,
        auth_ttl_s: int = 120,
        min_expiry_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account, self.domain = account, domain
        self.address = account.address
        self.price_of = price_of
        self.auth_ttl_s, self.min_expiry_s = auth_ttl_s, min_expiry_s
        self.clock = clock
        self._ledgers: dict[str, NodeLedger] = {}

    def ledger(self, node: str) -> NodeLedger:
        node = checksum_address(node)
        return self._ledgers.setdefault(node, NodeLedger(node))

    def ledgers(self) -> dict[str, NodeLedger]:
        """Every node this payer has a ledger with."""
        return dict(self._ledgers)

    def authorize(
        self, node: str, model_id: int, max_tokens: int, max_price_per_1k: int
    ) -> tuple[int, dict[str, str]]:
        """(nonce, headers) for one request to `node`."""
        ledger = self.ledger(node)
        now = self.clock()
        auth = RequestAuth(
            payer=self.address,
            node=ledger.node,
            model_id=model_id,
            max_tokens=max_tokens,
            max_price_per_1k=max_price_per_1k,
            nonce=secrets.randbits(128),
            deadline=int(now) + self.auth_ttl_s,
        )
        if len(ledger.auths) > MAX_OPEN_AUTHS:
            self._forget_unbilled(ledger, now - 3600)
        ledger.auths[auth.nonce] = AuthRecord(auth, now)
        headers = {AUTH_HEADER: encode_auth(sign_auth(auth, self.account, self.domain))}
        if ledger.last is not None:
            headers[RECEIPT_HEADER] = json.dumps(encode_signed_receipt(ledger.last), separators=(",", ":"))
        return auth.nonce, headers

    def streamed(self, node: str, nonce: int, chunks: int) -> None:
        """Record text chunks that arrived (call as they come, or once when a stream broke)."""
        record = self.ledger(node).auths.get(nonce)
        if record is not None:
            record.streamed += chunks

    def broke_off(
        self, node: str, nonce: int, chunks: int, slack: int = 0, text_bytes: int | None = None
    ) -> None:
        """A request that ended without its answer after `chunks` text chunks (holding `text_bytes`
        bytes of UTF-8 text) arrived: it may be billed at least `chunks` tokens and at most
        `max(chunks, text_bytes) + slack` (every token adds at least one byte of text, and a
        chunk can hold several tokens: a character spelt in byte tokens; `slack`: what can be in
        flight when a stream is cut, written by the node but never received)."""
        record = self.ledger(node).auths.get(nonce)
        if record is not None:
            record.streamed = max(record.streamed, chunks)
            arrived = max(record.streamed, text_bytes or 0)
            record.ceiling = max(record.ceiling or 0, arrived + max(0, slack))

    def accept(self, node: str, nonce: int, billing: Billing, usage_tokens: int) -> SignedReceipt:
        """Check the node's receipt for the finished request `nonce` (whose response reported
        `usage_tokens` completion tokens) and countersign it; ReceiptRefused when it is inflated."""
        ledger = self.ledger(node)
        record = ledger.auths.get(nonce)
        if record is None:
            raise ReceiptRefused(f"no request with nonce {nonce} was authorised to {ledger.node}")
        record.answered = usage_tokens
        if billing.request.nonce != nonce:
            raise ReceiptRefused(f"the receipt bills request {billing.request.nonce}, not {nonce}")
        receipt = billing.receipt
        self._check_parties(ledger, receipt, billing)
        nonces = [item.nonce for item in billing.items]
        if len(set(nonces)) != len(nonces):
            raise ReceiptRefused("the receipt bills one request more than once")
        base_tokens, base_amount = self._check_base(ledger, billing.base)
        tokens, amount = base_tokens, base_amount
        for item in billing.items:
            self._check_item(ledger, item, base_amount)
            tokens, amount = tokens + item.tokens, amount + item.amount
        if billing.items[-1] != billing.request:
            raise ReceiptRefused("the answered request must be the receipt's last item")
        if (receipt.cumulative_tokens, receipt.cumulative_amount) != (tokens, amount):
            raise ReceiptRefused(
                f"the receipt claims {receipt.cumulative_tokens} tokens / {receipt.cumulative_amount} "
                f"but its base and items add up to {tokens} / {amount}"
            )
        if amount < ledger.cumulative[1]:
            raise ReceiptRefused("the receipt is below one this payer already countersigned")
        for item in billing.items:
            billed = ledger.auths[item.nonce]
            if billed.billed is None:
                billed.billed, billed.billed_in = item, amount
        signed = SignedReceipt(receipt, receipt.sign(self.account, self.domain), billing.node_sig)
        if ledger.last is None or amount > ledger.cumulative[1]:
            ledger.last = signed
        self._prune(ledger, billing)
        return signed

    # ---------------------------------------------------------------- checks

    def _check_parties(self, ledger: NodeLedger, receipt: UsageReceipt, billing: Billing) -> None:
        if receipt.payer != self.address or receipt.node != ledger.node:
            raise ReceiptRefused(
                f"the receipt is for {receipt.payer} -> {receipt.node}, not this payer and node"
            )
        if receipt.expiry < self.clock() + self.min_expiry_s:
            raise ReceiptRefused(f"the receipt expires too soon to settle ({receipt.expiry})")
        try:
            if receipt.signer(billing.node_sig, self.domain) != ledger.node:
                raise ReceiptRefused("the node's signature on the receipt is not the node's")
        except SignatureError as exc:
            raise ReceiptRefused(f"the node's signature is invalid: {exc}") from None

    def _check_base(self, ledger: NodeLedger, base: SignedReceipt | None) -> tuple[int, int]:
        """The base's cumulative tokens and amount. It may be older than the newest receipt this
        payer countersigned (a concurrent request's receipt had not reached the node yet): its
        items then bill again what the newer one did, which `_check_item` allows exactly once."""
        if base is None:
            return 0, 0
        r = base.receipt
        try:
            # The receipt this payer countersigned last needs no recovery: it is the very object.
            ours = base == ledger.last or (
                r.payer == self.address and r.signer(base.payer_sig, self.domain) == self.address
            )
        except SignatureError:
            ours = False
        if not ours or r.node != ledger.node:
            raise ReceiptRefused("the receipt's base is not one this payer countersigned for this node")
        if r.cumulative_amount > ledger.cumulative[1]:  # a ledger lost here: adopt our own newer signature
            ledger.last = base
        return r.cumulative_tokens, r.cumulative_amount

    def _check_item(self, ledger: NodeLedger, item: Item, base_amount: int) -> None:
        record = ledger.auths.get(item.nonce)
        if record is None:
            raise ReceiptRefused(f"the receipt bills request {item.nonce}, which this payer never authorised")
        auth = record.auth
        if record.billed is not None and record.billed != item:
            raise ReceiptRefused(f"request {item.nonce} was billed differently before")
        if record.billed_in is not None and record.billed_in <= base_amount:
            raise ReceiptRefused(f"request {item.nonce} is already in the receipt's base")
        if item.model_id != auth.model_id:
            raise ReceiptRefused(f"request {item.nonce} was for model {auth.model_id}, not {item.model_id}")
        if item.price_per_1k > auth.max_price_per_1k:
            raise ReceiptRefused(f"request {item.nonce} is priced above its cap of {auth.max_price_per_1k}")
        chain_price = self.price_of(item.model_id) if self.price_of is not None else None
        if chain_price is not None and item.price_per_1k != chain_price:
            raise ReceiptRefused(
                f"request {item.nonce} is priced {item.price_per_1k}, the chain says {chain_price}"
            )
        if item.amount != request_cost(item.tokens, item.price_per_1k):
            raise ReceiptRefused(f"request {item.nonce}: {item.tokens} tokens cannot cost {item.amount}")
        low = record.streamed if record.answered is None else record.answered
        high = auth.max_tokens if record.answered is None else min(record.answered, auth.max_tokens)
        if record.answered is None and record.ceiling is not None:
            high = min(high, record.ceiling)
        if not low <= item.tokens <= high:
            raise ReceiptRefused(
                f"request {item.nonce} is billed {item.tokens} tokens; {low}..{high} arrived or were allowed"
            )

    def _prune(self, ledger: NodeLedger, billing: Billing) -> None:
        """Forget auths the node's base already covers (it never bills them again), and stale
        unbilled ones."""
        base = billing.base.receipt.cumulative_amount if billing.base is not None else -1
        for nonce, record in list(ledger.auths.items()):
            if record.billed_in is not None and record.billed_in <= base:
                del ledger.auths[nonce]
        self._forget_unbilled(ledger, self.clock() - 86_400)

    @staticmethod
    def _forget_unbilled(ledger: NodeLedger, before: float) -> None:
        """Drop auths made before `before` that no receipt billed (attempts that never reached the
        node, or that it never billed): a receipt billing one later is refused."""
        for nonce, record in list(ledger.auths.items()):
            if record.billed is None and record.created < before:
                del ledger.auths[nonce]
