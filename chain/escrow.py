"""The escrow fold: every payer's Settlement escrow (and what it already paid one node), kept current
from Settlement's events, so admission reads memory and never the chain.

`load(block)` finds the payers (every `EscrowDeposited` since the deployment block, in getLogs
ranges of `batch_size` blocks) and reads `escrowOf` and, for the node, `channelOf(payer, node)` as of
`block`. After that `apply(event)` takes the EventWatcher's Settlement events: each one names a payer
(deposits, unlock requests and cancels, withdrawals, settled and rejected receipts of any node), and
the view reads that payer again as of the confirmed head, like chain.registry does for models and
nodes. Readers get an immutable `PayerEscrow`; listeners hear every Settlement event after it was
applied (on the watcher's thread: quick and thread-safe).

What admission may spend is `spendable`: the balance minus everything an unlock request covers,
from the request on, even after the unlock window lapsed. That is stricter than the contract's
`availableOf` (which frees a lapsed unlock again) and needs no clock, which matters on a chain whose
time runs apart from the node's (Anvil's time travel; a node on a skewed clock).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from eth_utils import to_checksum_address
from web3.contract import Contract

from chain.logs import kv as _kv
from chain.watcher import ChainEvent

log = logging.getLogger(__name__)

SETTLEMENT = "Settlement"
EventListener = Callable[[ChainEvent], None]


@dataclass(frozen=True)
class PayerEscrow:
    """One payer's escrow and its channel with the view's node, as of `block`."""

    payer: str
    balance: int
    unlocking: int
    unlock_ready_at: int
    paid_amount: int  # channelOf(payer, node).amount: what this node was already paid
    paid_tokens: int
    block: int

    @property
    def spendable(self) -> int:
        """The balance no unlock request covers (see the module doc)."""
        reserved = min(self.unlocking, self.balance) if self.unlock_ready_at else 0
        return self.balance - reserved


class EscrowView:
    """Settlement escrows by payer, loaded once and kept current from events."""

    def __init__(
        self,
        settlement: Contract,
        node: str | None = None,
        *,
        start_block: int = 0,
        confirmations: int = 0,
        batch_size: int = 2_000,
    ) -> None:
        """`node`: whose channels to read (None: escrows only); `start_block`: where the deposit
        scan begins (the deployment block)."""
        self._settlement = settlement
        self._w3 = settlement.w3
        self._node = to_checksum_address(node) if node else None
        self._start = start_block
        self._confirmations = confirmations
        self._batch = max(1, batch_size)
        self._payers: MappingProxyType[str, PayerEscrow] = MappingProxyType({})
        self._lock = threading.RLock()
        self._listeners: list[EventListener] = []

    def payer(self, address: str) -> PayerEscrow | None:
        """A payer's escrow as last read; None for an address that never deposited."""
        return self._payers.get(address)

    def payers(self) -> MappingProxyType[str, PayerEscrow]:
        return self._payers

    def contracts(self) -> dict[str, Contract]:
        """What to hand an EventWatcher, under the name `apply` expects."""
        return {SETTLEMENT: self._settlement}

    def add_listener(self, listener: EventListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def confirmed_head(self) -> int:
        return max(0, self._w3.eth.block_number - self._confirmations)

    def load(self, block: int) -> None:
        """Find every payer up to `block` and read them as of it; RPC errors propagate."""
        with self._lock:
            payers = self._scan_payers(block)
            self._payers = MappingProxyType({p: self._read(p, block) for p in sorted(payers)})
        log.info(_kv("escrow.loaded", block=block, payers=len(payers)))

    def apply(self, event: ChainEvent) -> bool:
        """Re-read the payer a Settlement event names; True when its escrow changed."""
        if event.contract != SETTLEMENT or "payer" not in event.args:
            return False
        payer = to_checksum_address(event.args["payer"])
        changed = False
        with self._lock:
            old = self._payers.get(payer)
            if old is None or event.block_number > old.block:
                fresh = self._read(payer, max(event.block_number, self.confirmed_head()))
                changed = fresh != old
                if changed:
                    self._payers = MappingProxyType({**self._payers, payer: fresh})
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one consumer's bug must not stop the fold
                log.exception(_kv("escrow.listener_failed", event=event.event))
        return changed

    def refresh(self, payer: str) -> PayerEscrow:
        """Read one payer now (the settler's reconcile at start); RPC errors propagate."""
        payer = to_checksum_address(payer)
        with self._lock:
            fresh = self._read(payer, self.confirmed_head())
            self._payers = MappingProxyType({**self._payers, payer: fresh})
        return fresh

    def balance_at(self, payer: str, block: int) -> int:
        """A payer's escrow balance as of `block` (RPC errors propagate)."""
        balance, _, _ = self._settlement.functions.escrowOf(to_checksum_address(payer)).call(
            block_identifier=block
        )
        return balance

    def _read(self, payer: str, block: int) -> PayerEscrow:
        calls = self._settlement.functions
        balance, unlocking, ready_at = calls.escrowOf(payer).call(block_identifier=block)
        paid_amount = paid_tokens = 0
        if self._node is not None:
            paid_amount, paid_tokens = calls.channelOf(payer, self._node).call(block_identifier=block)
        return PayerEscrow(payer, balance, unlocking, ready_at, paid_amount, paid_tokens, block)

    def _scan_payers(self, last: int) -> set[str]:
        deposited = self._settlement.events.EscrowDeposited
        payers: set[str] = set()
        for first in range(self._start, last + 1, self._batch):
            logs = deposited.get_logs(from_block=first, to_block=min(last, first + self._batch - 1))
            payers.update(to_checksum_address(entry["args"]["payer"]) for entry in logs)
        return payers
