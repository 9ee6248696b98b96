"""The chain package's exceptions: one root (ChainError) with a message that says what to fix,
and subclasses that carry the data a caller acts on (CONVENTIONS item 16)."""

from __future__ import annotations

from typing import Any


class ChainError(Exception):
    """Anything the chain package cannot do, with a message that says what to fix."""


class TxTimeout(ChainError):  # noqa: N818 - the public name scripts use
    """A sent transaction was not mined in time; it may still be mined later.

    `tx_hash` is the last hash sent for the call (`earlier` holds hashes it replaced with higher
    fees, any of which may still be mined), `nonce` its nonce, `waited` the seconds waited and
    `reason` what stood in the way, when known (the node unreachable, the fee cap).
    """

    def __init__(
        self,
        tx_hash: str,
        waited: float,
        *,
        nonce: int | None = None,
        earlier: tuple[str, ...] = (),
        reason: str = "",
    ) -> None:
        self.tx_hash, self.waited, self.nonce = tx_hash, waited, nonce
        self.earlier, self.reason = earlier, reason
        nonce_text = "" if nonce is None else f" (nonce {nonce})"
        also = f"; it replaced {', '.join(earlier)}" if earlier else ""
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"transaction {tx_hash}{nonce_text} was not mined within {waited:g} s{because}{also}; it may "
            "still be mined: look it up by hash before sending it again"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_tx_timeout, (self.tx_hash, self.waited, self.nonce, self.earlier, self.reason))


def _rebuild_tx_timeout(
    tx_hash: str, waited: float, nonce: int | None, earlier: tuple[str, ...], reason: str
) -> TxTimeout:
    return TxTimeout(tx_hash, waited, nonce=nonce, earlier=earlier, reason=reason)


class GasCapExceeded(ChainError):  # noqa: N818 - the public name scripts use
    """A transaction needs more gas than the sender's cap allows; it was not sent."""


class KeystoreError(ChainError):
    """A keystore, password or account choice is missing, wrong or unreadable."""


class WrongNetwork(ChainError):  # noqa: N818 - the public name scripts use
    """The RPC endpoint is on another chain than the one expected."""
