"""The settlement loop: the best countersigned receipt per payer goes to Settlement.settle in batches.

When: every `settle_interval_s` for everything unpaid; at once when the unpaid total reaches
`settle_amount`, when `settle_batch` payers are waiting, when a payer asks to unlock its escrow
(its receipts land before the unlock delay ends), when admission finds a payer near its cap
(Payments.on_due), and at graceful shutdown.

What landed is read from the transaction's own ReceiptSettled / ReceiptRejected events. A rejection
whose cause can change (InsufficientEscrow, NodeNotPayable, ReputationOverflow) is retried once the
payer's escrow changed; one that can never pay (expired, bad signature, unbillable model) is
dropped with its reason; StaleReceipt means the chain already paid as much, so it is settled.

Crashes. Before a transaction is sent, an attempt (its payers and the account's next nonce) is
stored durably; it is removed once the outcome is recorded. At start, an attempt left over means a
transaction may still be in flight: the settler waits until the account has no pending transaction,
then reads `channelOf` for every open receipt and marks what the chain paid. So a receipt is never
submitted while an earlier submission of it can still land, and the contract itself pays a
cumulative receipt's amount at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.contract import Contract
from web3.logs import DISCARD

from chain.errors import ChainError
from chain.escrow import EscrowView
from chain.logs import kv as _kv
from chain.receipts import Domain, SignedReceipt
from chain.revert import RevertError, decode_revert
from chain.tx import TxSender
from chain.watcher import ChainEvent
from node.config import PaymentSettings
from node.payments import PaymentGate, Payments
from node.receipts import DROPPED, SETTLED, ReceiptStore
from protocol.service import Service

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0  # expired nonces are forgotten this often
RETRYABLE = {"InsufficientEscrow", "NodeNotPayable", "ReputationOverflow"}


@dataclass
class Outcome:
    settled: list[str]
    rejected: dict[str, str]  # payer -> error name
    # payer -> its escrow balance as of the rejecting transaction's block: a retry waits for more.
    # Read at that block, not later: a top-up landing meanwhile would otherwise become the bar.
    balances: dict[str, int] = field(default_factory=dict)


class Settler(Service):
    name = "settler"

    def __init__(
        self,
        payments: Payments,
        escrow: EscrowView,
        settlement: Contract,
        sender: TxSender,
        settings: PaymentSettings,
        *,
        pending_timeout_s: float = 300.0,
    ) -> None:
        self.payments, self.escrow, self.settlement, self.sender = payments, escrow, settlement, sender
        self.settings = settings
        self.pending_timeout_s = pending_timeout_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._due: set[str] = set()
        self._retry_above: dict[str, int] = {}  # payer -> escrow balance a retry waits to exceed
        self._loop: asyncio.AbstractEventLoop | None = None
        self.settled_total = 0  # receipts that landed
        self.rejected_total = 0

    # ---------------------------------------------------------------- triggers (any thread)

    def due(self, payer: str) -> None:
        """Settle `payer` soon (admission near the cap, an unlock request)."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._mark_due, payer)

    def _mark_due(self, payer: str) -> None:
        self._due.add(payer)
        self._wake.set()

    def on_event(self, event: ChainEvent) -> None:
        """Escrow listener (watcher thread): an unlock request makes the payer due."""
        if event.event == "EscrowUnlockRequested":
            self.due(event.args["payer"])
        elif event.event == "EscrowDeposited" and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)  # a retry may now pay

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.payments.on_due = self.due
        self.escrow.add_listener(self.on_event)
        await asyncio.to_thread(self._reconcile)

    async def run(self) -> None:
        interval = self.settings.settle_interval_s
        last = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                wait = min(PRUNE_EVERY_S, max(0.0, last + interval - time.monotonic()))
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            if self._stopping:
                return
            self.payments.prune_nonces()
            timed = time.monotonic() >= last + interval
            if timed:
                last = time.monotonic()
            await self.settle(everything=timed)

    async def stop(self) -> None:
        """Settle everything unpaid before the node goes (graceful shutdown)."""
        self._stopping = True
        self._wake.set()
        try:
            await self.settle(everything=True)
        except ChainError as exc:
            log.warning(_kv("settler.shutdown_settle_failed", error=str(exc)[:300]))

    # ---------------------------------------------------------------- settling

    def unpaid(self) -> dict[str, SignedReceipt]:
        """Open receipts the chain has not paid in full, by payer."""
        out = {}
        for payer, signed in self.payments.best_receipts().items():
            escrow = self.escrow.payer(payer)
            paid = escrow.paid_amount if escrow is not None else 0
            if signed.receipt.cumulative_amount > paid:
                out[payer] = signed
        return out

    def _wanted(self, everything: bool) -> list[str]:
        unpaid = self.unpaid()
        ready = [p for p in unpaid if self._retry_ready(p)]
        total = sum(unpaid[p].receipt.cumulative_amount for p in ready)
        if (
            everything
            or total >= self.settings.settle_amount_units()
            or len(ready) >= self.settings.settle_batch
        ):
            return ready
        urgent = {p for p in ready if p in self._due}
        urgent |= {p for p in ready if (e := self.escrow.payer(p)) is not None and e.unlock_ready_at}
        return [p for p in ready if p in urgent]

    def _retry_ready(self, payer: str) -> bool:
        above = self._retry_above.get(payer)
        if above is None:
            return True
        escrow = self.escrow.payer(payer)
        return escrow is not None and escrow.balance > above

    async def settle(self, *, everything: bool = False) -> int:
        """Submit what is due now in batches; returns how many receipts landed."""
        payers = self._wanted(everything)
        landed = 0
        size = self.settings.settle_batch
        for start in range(0, len(payers), size):
            landed += await self._settle_batch(payers[start : start + size])
        self._due.difference_update(payers)
        return landed

    async def _settle_batch(self, payers: list[str]) -> int:
        unpaid = self.unpaid()
        batch = [unpaid[p] for p in payers if p in unpaid]
        if not batch:
            return 0
        store = self.payments.store
        nonce = await asyncio.to_thread(
            self.sender.w3.eth.get_transaction_count, self.sender.address, "pending"
        )
        attempt = await store.write(store.add_attempt([s.receipt.payer for s in batch], nonce))
        try:
            outcome = await asyncio.to_thread(self._send, batch)
        except RevertError as exc:  # refused at estimation: nothing was sent
            log.warning(_kv("settler.refused", error=exc.name, detail=str(exc)[:300]))
            await store.write(store.end_attempt(attempt))
            return 0
        except ChainError as exc:  # a timeout: the transaction may still land; reconcile at start
            log.error(_kv("settler.unsure", error=type(exc).__name__, detail=str(exc)[:300]))
            return 0
        await self._record(batch, outcome)
        await store.write(store.end_attempt(attempt))
        return len(outcome.settled)

    def _send(self, batch: list[SignedReceipt]) -> Outcome:
        call = self.settlement.functions.settle([s.as_tuple() for s in batch])
        receipt = self.sender.send(call)
        outcome = Outcome([], {})
        for entry in self.settlement.events.ReceiptSettled().process_receipt(receipt, errors=DISCARD):
            outcome.settled.append(entry["args"]["payer"])
        for entry in self.settlement.events.ReceiptRejected().process_receipt(receipt, errors=DISCARD):
            outcome.rejected[entry["args"]["payer"]] = decode_revert(entry["args"]["reason"]).name
        for payer in outcome.rejected:
            outcome.balances[payer] = self.escrow.balance_at(payer, receipt["blockNumber"])
        gas = receipt["gasUsed"]
        log.info(
            _kv(
                "settler.settled",
                tx=receipt["transactionHash"].to_0x_hex(),
                receipts=len(batch),
                settled=len(outcome.settled),
                rejected=len(outcome.rejected),
                gas=gas,
            )
        )
        for payer in {*outcome.settled, *outcome.rejected}:
            self.escrow.refresh(payer)  # the view must not wait for the watcher to see the payment
        return outcome

    async def _record(self, batch: list[SignedReceipt], outcome: Outcome) -> None:
        for signed in batch:
            payer = signed.receipt.payer
            if payer in outcome.settled:
                self.settled_total += 1
                self._retry_above.pop(payer, None)
                await self._mark(signed, SETTLED, "")
            elif payer in outcome.rejected:
                self.rejected_total += 1
                reason = outcome.rejected[payer]
                log.warning(_kv("settler.rejected", payer=payer, reason=reason))
                if reason == "StaleReceipt":
                    await self._mark(signed, SETTLED, reason)
                elif reason in RETRYABLE:
                    self._retry_above[payer] = outcome.balances.get(payer, 0)
                else:
                    await self._mark(signed, DROPPED, reason)

    async def _mark(self, signed: SignedReceipt, state: str, detail: str) -> None:
        """Record a receipt's outcome, unless a newer receipt of the payer replaced it meanwhile."""
        acct = self.payments.accounts.get(signed.receipt.payer)
        if acct is None or acct.receipt is None or acct.receipt.signed != signed:
            return
        store = self.payments.store
        await store.write(store.set_state(signed.receipt.payer, state, detail))
        acct.receipt.state, acct.receipt.detail = state, detail

    # ---------------------------------------------------------------- start: store vs chain

    def _reconcile(self) -> None:
        """Wait out a transaction left in flight, then mark what the chain already paid."""
        store = self.payments.store
        attempts = store.load().attempts
        if attempts:
            self._wait_no_pending()
        settled = 0
        for payer, signed in self.payments.best_receipts().items():
            escrow = self.escrow.refresh(payer)
            if escrow.paid_amount >= signed.receipt.cumulative_amount:
                store.submit(store.set_state(payer, SETTLED, "reconciled")).result()
                acct = self.payments.accounts[payer]
                assert acct.receipt is not None
                acct.receipt.state = SETTLED
                settled += 1
        for attempt_id, _, _ in attempts:
            store.submit(store.end_attempt(attempt_id)).result()
        log.info(_kv("settler.reconciled", attempts=len(attempts), settled=settled, open=len(self.unpaid())))

    def _wait_no_pending(self) -> None:
        w3, address = self.sender.w3, self.sender.address
        deadline = time.monotonic() + self.pending_timeout_s
        while w3.eth.get_transaction_count(address, "pending") > w3.eth.get_transaction_count(
            address, "latest"
        ):
            if time.monotonic() > deadline:
                raise ChainError(
                    f"a settle transaction from {address} is still pending after "
                    f"{self.pending_timeout_s:g} s; "
                    "start the node again once it was mined or dropped"
                )
            time.sleep(0.5)


class PaymentService(Service):
    """Payment for the daemon: once the chain view started, opens the receipt store, builds the
    admission (Payments) that serving's hooks delegate to, and runs the settler."""

    name = "payments"

    def __init__(self, chain: Any, account: LocalAccount, state_dir: Path, settings: PaymentSettings) -> None:
        self.chain, self.account, self.state_dir, self.settings = chain, account, state_dir, settings
        self.hooks = PaymentGate()
        self.settler: Settler | None = None
        self._store: ReceiptStore | None = None

    async def start(self) -> None:
        chain = self.chain
        domain = Domain(chain.w3.eth.chain_id, chain.deployment.settlement)
        name = f"payments-{domain.chain_id}-{domain.settlement.lower()}.sqlite"
        self._store = ReceiptStore(self.state_dir / name)
        payments = Payments(self.account, domain, chain.escrow, self._store, self.settings)
        sender = TxSender(chain.w3, self.account)
        self.settler = Settler(payments, chain.escrow, chain.contract("Settlement"), sender, self.settings)
        await self.settler.start()
        self.hooks.target = payments

    async def run(self) -> None:
        assert self.settler is not None
        await self.settler.run()

    def stats(self) -> dict[str, int]:
        """For /metrics and /health: receipts stored, settled and rejected, and what is owed (in
        token base units); empty until payment started."""
        settler, payments = self.settler, self.hooks.target
        if settler is None or payments is None:
            return {}
        owed = sum(payments.owed(payer) for payer in list(payments.accounts))
        return {
            "stored": payments.receipts_stored,
            "settled": settler.settled_total,
            "rejected": settler.rejected_total,
            "unsettled": owed,
        }

    async def stop(self) -> None:
        if self.settler is not None:
            await self.settler.stop()
        if self._store is not None:
            self._store.close()
