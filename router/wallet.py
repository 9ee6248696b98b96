"""The router's wallet: the payer side of the payment protocol (protocol.payer) for every node it
uses, plus the escrow watch.

Each attempt at a node gets its own signed auth, capped at the model's on-chain price (a host
that asks more is refused by the payer library, never paid). The node's receipt that comes back
with the answer is checked and countersigned; the countersigned receipt rides with the next
request to that node. A receipt that does not add up is refused (ReceiptRefused) and the router
stops using that node for a while. When the payer's spendable escrow falls under `low_escrow`
the wallet logs a warning once per crossing, and /health shows it. With a `LedgerStore` the
ledgers persist (router.ledger), so a restart forgets no request it authorised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain.logs import kv as _kv
from chain.receipts import SignedReceipt, checksum_address
from chain.units import format_token
from protocol.payer import Payer, ReceiptRefused
from protocol.payment import RECEIPT_HEADER, Billing, PaymentFormatError
from router.ledger import LedgerStore

log = logging.getLogger(__name__)


@dataclass
class Unsent:
    """A countersigned receipt the node has not acknowledged yet."""

    node: str
    endpoint: str
    receipt: SignedReceipt
    since: float


@dataclass
class Paid:
    """What one answered request cost, for the response and the logs."""

    node: str
    tokens: int
    amount: int
    cumulative_amount: int


class Wallet:
    """Signs auths and countersigns receipts for one payer."""

    def __init__(
        self,
        payer: Payer,
        *,
        spendable: Callable[[], int | None] | None = None,
        low_escrow: int = 0,
        in_flight_slack: int = 4,
        store: LedgerStore | None = None,
    ) -> None:
        """`spendable`: the payer's escrow balance minus what is unlocking, from the chain view
        (None: unknown); `low_escrow`: warn below this many token base units; `in_flight_slack`:
        tokens a cut stream may be billed beyond what arrived; `store`: where the ledgers persist
        (router.ledger; None: memory only)."""
        self.in_flight_slack = in_flight_slack
        self.store = store
        self.payer = payer
        self.address = payer.address
        self._spendable = spendable or (lambda: None)
        self.low_escrow = low_escrow
        self._warned = False
        self._unsent: dict[str, Unsent] = {}
        self._unsaved: set[str] = set()  # nodes whose ledger changed since it was last written

    def authorize(
        self, node: str, model_id: int, max_tokens: int, price_per_1k: int
    ) -> tuple[int, dict[str, str]]:
        """(nonce, headers) for one attempt at `node` (with the newest countersigned receipt)."""
        nonce, headers = self.payer.authorize(node, model_id, max_tokens, price_per_1k)
        if self.store is not None:  # before the request leaves: its receipt may outlive this process
            ledger = self.payer.ledger(node)
            self.store.save_auth(ledger.node, ledger.auths[nonce])
        self.carried(node, headers)
        return nonce, headers

    def answered(self, node: str, endpoint: str, nonce: int, billing: Any, completion_tokens: int) -> Paid:
        """Check and countersign the receipt of an answered request; ReceiptRefused when it does
        not add up (a missing or malformed one included). The countersigned receipt rides with
        the next request to the node, or `unsent()` hands it to a flush. The node's ledger is
        written by the next `save()`."""
        try:
            decoded = Billing.decode(billing)
        except PaymentFormatError as exc:
            raise ReceiptRefused(f"the node's receipt is malformed: {exc}") from None
        try:
            signed = self.payer.accept(node, nonce, decoded, completion_tokens)
        finally:
            self._unsaved.add(node)  # written by save(): the caller may answer its client first
        self._unsent[signed.receipt.node] = Unsent(node, endpoint, signed, time.monotonic())
        self._check_escrow()
        return Paid(node, decoded.request.tokens, decoded.request.amount, signed.receipt.cumulative_amount)

    def save(self) -> None:
        """Write the ledgers `answered` changed (each node's in one transaction)."""
        while self._unsaved:
            node = self._unsaved.pop()
            if self.store is not None:
                self.store.save_ledger(self.payer.ledger(node))

    def unsent(self, idle_s: float) -> list[Unsent]:
        """Countersigned receipts no request carried to their node for `idle_s` seconds."""
        now = time.monotonic()
        return [u for u in self._unsent.values() if now - u.since >= idle_s]

    def delivered(self, unsent: Unsent) -> None:
        """The node stored `unsent` (POST /v1/receipts answered 200)."""
        node = unsent.receipt.receipt.node
        if self._unsent.get(node) is unsent:
            del self._unsent[node]

    def carried(self, node: str, headers: dict[str, str]) -> None:
        """A request to `node` is carrying the newest countersigned receipt (in `headers`)."""
        if RECEIPT_HEADER in headers:
            self._unsent.pop(checksum_address(node), None)

    def ledgers(self) -> dict[str, dict[str, str]]:
        """Per node: what this payer countersigned so far (tokens, amount) and whether the node has it."""
        out = {}
        for node, ledger in self.payer.ledgers().items():
            tokens, amount = ledger.cumulative
            out[node] = {"tokens": str(tokens), "amount": str(amount), "delivered": node not in self._unsent}
        return out

    def broke_off(self, node: str, nonce: int, chunks: int, text_bytes: int) -> None:
        """A request that ended without its answer after `chunks` text chunks of `text_bytes`
        bytes: it may be billed for what they hold and at most `in_flight_slack` more tokens
        (written by the node, cut on the way); protocol.payer.Payer.broke_off."""
        self.payer.broke_off(node, nonce, chunks, self.in_flight_slack, text_bytes)
        ledger = self.payer.ledger(node)
        if self.store is not None and nonce in ledger.auths:
            self.store.save_auth(ledger.node, ledger.auths[nonce])

    def spendable(self) -> int | None:
        return self._spendable()

    def _check_escrow(self) -> None:
        left = self._spendable()
        if left is None:
            return
        low = left < self.low_escrow
        if low and not self._warned:
            log.warning(
                _kv(
                    "wallet.escrow_low",
                    payer=self.address,
                    spendable=format_token(left),
                    threshold=format_token(self.low_escrow),
                    fix="deposit more (scripts/deposit.py)",
                )
            )
        self._warned = low
