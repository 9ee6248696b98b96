"""Sending transactions: gas estimation with a cap, EIP-1559 fees, safe nonces, decoded reverts.

`TxSender(w3, account).send(contract.functions.stake(amount))` estimates gas (a revert there is
decoded and raised before anything is sent), signs locally, picks a nonce, waits for the receipt and,
if the transaction reverted on chain, replays it to decode the custom error.

Nonces. Senders of one key on one machine (threads, processes) take an OS file lock per chain and
address (under `nonce_lock_dir`) from choosing the nonce until the node has accepted the transaction,
and choose it from the node's pending count: they never send the same nonce at the same time. That
matters because a node may accept a second transaction with a nonce that is being mined (Anvil takes
any higher fee as a replacement, even while the first is going into a block) and then drop it without
a word. Senders on other machines can still collide: a node refusal ("nonce too low", ...) is retried
with a fresh nonce, and a receipt wait longer than `stall_timeout` checks whether the transaction is
stranded: its nonce taken by another transaction (it is sent again, with a new nonce), dropped by the
node (broadcast again), or queued behind a nonce nobody sent (the gap is filled with empty transfers).

Fees. A transaction signed with a fee cap below the current base fee (a base-fee spike) can never be
mined, and nodes drop it and refuse the same bytes again. The stall check then signs the same nonce
and call again with fees that cover the new base fee and beat the old ones by the replacement margin
(12.5%), up to the sender's `max_fee_per_gas`; every hash sent for the call is watched, since any one
of them may be the one mined.

Outages. While a receipt is awaited, connection errors do not end the wait: the sender keeps polling
until `receipt_timeout`, then raises TxTimeout with the hash, because the transaction may well be
mined meanwhile and sending the call again could pay twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not a POSIX system: no cross-process nonce lock
    fcntl = None  # type: ignore[assignment]

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxData, TxReceipt

from chain.artifacts import load_artifact
from chain.errors import ChainError, GasCapExceeded, TxTimeout
from chain.redact import redact
from chain.revert import RevertError, decode_revert

log = logging.getLogger(__name__)

# What nodes answer when the nonce was taken by another transaction from the same key.
NONCE_CONFLICTS = (
    "nonce too low",
    "already known",
    "replacement transaction underpriced",
    "known transaction",
    "nonce has already been used",
)
_PLACEHOLDER_FIELDS = {"gas": 1, "maxFeePerGas": 1, "maxPriorityFeePerGas": 1, "nonce": 0}
_FEE_FIELDS = ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")
_TRANSFER_GAS = 21_000
# Per chain id and address, one lock file: senders of a key on this machine take turns choosing nonces.
_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_NONCE_LOCK_DIR = _CACHE_DIR / "llm-mesh" / "nonce-locks"


@dataclass(frozen=True)
class _Sent:
    """A transaction the node accepted: every signed field (nonce and fees included) and its hash,
    and the hashes of the same call and nonce it replaced with higher fees (any may be mined)."""

    tx: dict[str, Any]
    tx_hash: str
    earlier: tuple[str, ...] = ()

    @property
    def hashes(self) -> tuple[str, ...]:
        return (self.tx_hash, *self.earlier)

    @property
    def nonce(self) -> int:
        return self.tx["nonce"]


class TxSender:
    """Signs and sends transactions for one account; safe to share between threads and processes."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        *,
        gas_cap: int = 8_000_000,
        gas_margin: float = 1.25,
        receipt_timeout: float = 120.0,
        poll_interval: float = 0.1,
        max_nonce_retries: int = 3,
        nonce_retry_backoff: float = 0.1,
        stall_timeout: float = 10.0,
        nonce_lock_dir: str | os.PathLike[str] | None = DEFAULT_NONCE_LOCK_DIR,
        nonce_lock_timeout: float = 60.0,
        max_fee_per_gas: int = 1_000 * 10**9,
    ) -> None:
        """`nonce_retry_backoff` is the base of the random, doubling wait between nonce retries.

        `stall_timeout`: while a receipt is awaited, every this many seconds check whether the
        transaction is stranded (its nonce taken, dropped by the node, behind a nonce gap) and repair
        it. `nonce_lock_dir`: where the per-key lock files live (None: no cross-process lock; the
        nonce then comes from a counter of this sender, resynchronised on conflicts).
        `nonce_lock_timeout`: how long to wait for another process holding the lock.
        `max_fee_per_gas`: the most (wei per gas) a repriced transaction may offer after a base-fee
        spike; past it the sender waits for the base fee to fall instead.
        """
        if gas_margin < 1:
            raise ChainError(f"gas_margin must be at least 1 (got {gas_margin})")
        self.w3 = w3
        self.account = account
        self.gas_cap = gas_cap
        self.gas_margin = gas_margin
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.max_nonce_retries = max_nonce_retries
        self.nonce_retry_backoff = nonce_retry_backoff
        self.stall_timeout = stall_timeout
        self.nonce_lock_dir = None if nonce_lock_dir is None or fcntl is None else Path(nonce_lock_dir)
        self.nonce_lock_timeout = nonce_lock_timeout
        self.max_fee_per_gas = max_fee_per_gas
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None
        if nonce_lock_dir is not None and fcntl is None:
            log.warning("nonce_lock_unavailable reason=no_fcntl address=%s", account.address)

    @property
    def address(self) -> str:
        """The sending account's checksum address."""
        return self.account.address

    @property
    def chain_id(self) -> int:
        """The chain id transactions are signed for (read once from the node)."""
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    @property
    def nonce_lock_path(self) -> Path | None:
        """The lock file shared by every sender of this key and chain on this machine (None: no lock)."""
        if self.nonce_lock_dir is None:
            return None
        return self.nonce_lock_dir / f"{self.chain_id}-{self.address.lower()}.lock"

    # --- the public API --------------------------------------------------------------------------------

    def send(
        self, call: ContractFunction | ContractConstructor, *, value: int = 0, gas: int | None = None
    ) -> TxReceipt:
        """Send a bound contract call or constructor and return its successful receipt.

        Raises RevertError (during estimation, nothing sent; or on chain, decoded by replay),
        GasCapExceeded, TxTimeout, or ChainError for what the node refuses. An explicit `gas`
        skips estimation (still capped).
        """
        return self._send_tx(self._base_transaction(call, value), gas)

    def send_value(self, to: str, value: int) -> TxReceipt:
        """Send `value` wei of the native currency to `to` (gas estimated: `to` may be a contract)."""
        return self._send_tx({"from": self.address, "to": to, "value": value, "data": "0x"}, None)

    def deploy(self, name: str, *args: Any) -> Contract:
        """Deploy a contract from its committed artifact and return it at its new address."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args))
        address = receipt["contractAddress"]
        log.info(
            "contract_deployed name=%s address=%s tx=%s",
            name,
            address,
            receipt["transactionHash"].to_0x_hex(),
        )
        return self.w3.eth.contract(address=address, abi=artifact.abi)

    def _send_tx(self, tx: dict[str, Any], gas: int | None) -> TxReceipt:
        limit = self._gas_limit(tx) if gas is None else self._check_cap(gas, "the explicit gas limit")
        sent = self._sign_and_send({**tx, "gas": limit, **self._fees(), "chainId": self.chain_id})
        receipt = self._wait(sent)
        if receipt["status"] != 1:
            raise self._on_chain_revert(tx, limit, receipt)
        return receipt

    # --- building ---------------------------------------------------------------------------------------

    def _base_transaction(self, call: ContractFunction | ContractConstructor, value: int) -> dict[str, Any]:
        """from / to / data / value of the call, without asking the node anything."""
        built = call.build_transaction(
            {"from": self.address, "value": value, "chainId": self.chain_id, **_PLACEHOLDER_FIELDS}
        )
        tx = {"from": self.address, "data": built["data"], "value": value}
        if built.get("to"):
            tx["to"] = built["to"]
        return tx

    def _gas_limit(self, tx: dict[str, Any]) -> int:
        """Estimate (decoding a revert), check the cap, add the margin (never above the cap)."""
        try:
            estimate = self.w3.eth.estimate_gas(tx)
        except ContractLogicError as exc:
            raise _revert_from(exc, tx) from exc
        except Web3RPCError as exc:
            raise _node_refused(exc, self.address) from exc
        self._check_cap(estimate, "the estimate")
        return min(int(estimate * self.gas_margin), self.gas_cap)

    def _check_cap(self, gas: int, what: str) -> int:
        if gas > self.gas_cap:
            raise GasCapExceeded(
                f"transaction needs {gas} gas ({what}), above the cap of {self.gas_cap}: "
                "split the work (smaller batches) or raise gas_cap"
            )
        return gas

    def _fees(self) -> dict[str, int]:
        """EIP-1559 fees: twice the latest base fee plus the node's suggested tip."""
        base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:  # a pre-London chain
            return {"gasPrice": self.w3.eth.gas_price}
        tip = self.w3.eth.max_priority_fee
        return {"maxFeePerGas": 2 * base_fee + tip, "maxPriorityFeePerGas": tip}

    # --- nonces and sending ---------------------------------------------------------------------------

    def _chain_nonce(self) -> int:
        return self.w3.eth.get_transaction_count(self.address, "pending")

    @contextlib.contextmanager
    def _nonce_lock(self) -> Iterator[None]:
        """Hold this key's lock file (shared with other threads and processes); a no-op without one.

        Every acquisition opens the file anew: flock locks belong to the open file, so two senders in
        one process exclude each other too. Closing the file releases the lock, also if we die.
        """
        path, fd = self.nonce_lock_path, None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # e.g. a read-only home: go on unlocked, the stall checks still repair
                log.warning("nonce_lock_unavailable path=%s error=%r: sending without it", path, str(exc))
        if fd is None:
            yield
            return
        try:
            deadline, delay = time.monotonic() + self.nonce_lock_timeout, 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ChainError(
                            f"could not take the nonce lock {path} within {self.nonce_lock_timeout:g} s: "
                            f"another process sending for {self.address} holds it; is it stuck?"
                        ) from None
                    time.sleep(delay)
                    delay = min(2 * delay, 0.02)
            yield
        finally:
            os.close(fd)

    def _next_nonce(self) -> int:
        """The nonce to send with (called holding both locks).

        With the lock file, the node's pending count: it already counts every transaction a sender
        of this machine got accepted, and nobody here sends until we are done. Without it, this
        sender's own counter (read from the node first and after a conflict).
        """
        if self.nonce_lock_dir is not None:
            return self._chain_nonce()
        if self._nonce is None:
            self._nonce = self._chain_nonce()
        return self._nonce

    def _sign_and_send(self, tx: dict[str, Any]) -> _Sent:
        """Send with the next nonce; on a nonce conflict choose again (after a random wait) and retry."""
        for attempt in range(self.max_nonce_retries + 1):
            sent = self._try_next_nonce(tx, attempt)
            if sent is not None:
                return sent
            # Another sender with this key took the nonce; wait a random while so we stop colliding.
            time.sleep(random.uniform(0, self.nonce_retry_backoff * 2**attempt))
        raise ChainError(
            f"no free nonce for {self.address} after {self.max_nonce_retries} retries: another process "
            "keeps sending with this key; give each process its own key or raise max_nonce_retries"
        )

    def _try_next_nonce(self, tx: dict[str, Any], attempt: int) -> _Sent | None:
        """Send with the next nonce under the locks; None (and a resync later) if it was taken."""
        with self._lock, self._nonce_lock():
            nonce = self._next_nonce()
            self._nonce = None  # unless the node accepts it below: resync after a failed send
            try:
                tx_hash = self._send_raw({**tx, "nonce": nonce})
            except Web3RPCError as exc:
                if not _is_nonce_conflict(exc):
                    raise _node_refused(exc, self.address) from exc
                log.info("nonce_conflict address=%s nonce=%d attempt=%d", self.address, nonce, attempt + 1)
                return None
            self._nonce = nonce + 1
        log.info("tx_sent address=%s nonce=%d gas=%d hash=%s", self.address, nonce, tx["gas"], tx_hash)
        return _Sent({**tx, "nonce": nonce}, tx_hash)

    def _send_raw(self, tx: dict[str, Any]) -> str:
        """Sign and broadcast; if the node did not answer, or refused, find out whether it has this very
        transaction already. The HTTP provider retries a send whose answer was lost, and the node then
        answers the retry with "nonce too low", "already known" or "already imported" about our own
        transaction: taken for a conflict, that would send the call a second time."""
        signed = self.account.sign_transaction(tx)
        tx_hash = signed.hash.to_0x_hex()
        try:
            return self.w3.eth.send_raw_transaction(signed.raw_transaction).to_0x_hex()
        # A refusal, or a timeout or dropped connection (requests' errors are OSErrors).
        except (Web3RPCError, OSError) as exc:
            if self._known(tx_hash):
                log.info("tx_send_failed_but_known hash=%s error=%r", tx_hash, redact(str(exc)))
                return tx_hash
            if isinstance(exc, Web3RPCError):
                raise  # the caller tells a nonce conflict from a refusal
            raise ChainError(
                f"sending transaction {tx_hash} (nonce {tx['nonce']}) got no answer from the node "
                f"({redact(str(exc))}); "
                "it may still be mined: look it up by hash before sending it again"
            ) from exc

    # --- waiting, and repairing a stranded transaction ------------------------------------------------

    def _wait(self, sent: _Sent) -> TxReceipt:
        """Poll for the receipt; every `stall_timeout` s without one, check that it is not stranded.

        A connection error (an RPC outage) does not end the wait: the transaction may be mined while
        the node is out of reach, so the sender keeps polling until the deadline.
        """
        start = time.monotonic()
        deadline, next_check = start + self.receipt_timeout, start + self.stall_timeout
        suspicion: str | None = None  # what the last stall check found, to confirm before acting
        unreachable: str | None = None  # the last connection error, while the node is out of reach
        while True:
            try:
                receipt = self._mined_receipt(sent)
                if receipt is not None:
                    return receipt
                if time.monotonic() >= next_check:
                    sent, suspicion = self._check_stalled(sent, suspicion)
                    next_check = time.monotonic() + self.stall_timeout
                if unreachable is not None:
                    log.info("tx_wait_rpc_back hash=%s", sent.tx_hash)
                unreachable = None
            except OSError as exc:  # requests' connection errors and timeouts are OSErrors
                if unreachable is None:
                    log.warning(
                        "tx_wait_rpc_unreachable hash=%s nonce=%d error=%r: still waiting, it may be mined",
                        sent.tx_hash, sent.nonce, redact(str(exc)),
                    )  # fmt: skip
                unreachable = redact(str(exc))
            if time.monotonic() >= deadline:
                reason = f"the node was unreachable at the end: {unreachable}" if unreachable else ""
                if not reason and self._underpriced_beyond_cap(sent):
                    reason = f"the base fee is above the fee cap of {self.max_fee_per_gas} wei per gas"
                raise TxTimeout(
                    sent.tx_hash, self.receipt_timeout, nonce=sent.nonce, earlier=sent.earlier, reason=reason
                )
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def _mined_receipt(self, sent: _Sent) -> TxReceipt | None:
        """The receipt of whichever hash of this call was mined, if one was."""
        for tx_hash in sent.hashes:
            receipt = self._receipt(tx_hash)
            if receipt is not None:
                log.info(
                    "tx_mined hash=%s status=%d block=%d gas_used=%d",
                    tx_hash, receipt["status"], receipt["blockNumber"], receipt["gasUsed"],
                )  # fmt: skip
                return receipt
        return None

    def _check_stalled(self, sent: _Sent, suspicion: str | None) -> tuple[_Sent, str | None]:
        """Why is `sent` not mined yet? Repair what cannot repair itself; return what to wait for.

        Acting on "taken" (sending the call again) or "gap" (sending empty transfers) needs the same
        finding at two checks in a row, so a node that answers from slightly stale state, or another
        sender that is just slow, does not make us act twice.
        """
        latest = self.w3.eth.get_transaction_count(self.address, "latest")
        known = self._lookup(sent.tx_hash)
        if known is not None and known.get("blockNumber") is not None:
            return sent, None  # mined: the next receipt poll returns it
        if latest > sent.nonce:  # another transaction with our nonce was mined: ours never will be
            if self._mined_receipt(sent) is not None:  # unless it was one of our own replacements
                return sent, None
            if suspicion != "taken":
                log.warning(
                    "tx_nonce_taken hash=%s nonce=%d chain_nonce=%d: checking again in %g s",
                    sent.tx_hash, sent.nonce, latest, self.stall_timeout,
                )  # fmt: skip
                return sent, "taken"
            log.warning(
                "tx_resend hash=%s nonce=%d: another transaction with this nonce was mined, so this one "
                "never will be; sending the call again with a new nonce",
                sent.tx_hash, sent.nonce,
            )  # fmt: skip
            unsigned = {k: v for k, v in sent.tx.items() if k != "nonce" and k not in _FEE_FIELDS}
            return self._sign_and_send({**unsigned, **self._fees()}), None
        repriced = self._reprice_if_underpriced(sent)
        if repriced is not None:
            return repriced, None
        pending = self._chain_nonce() if latest < sent.nonce else latest
        if known is None and pending <= sent.nonce:  # the node forgot it and nobody replaced it
            self._rebroadcast(sent)
        if pending > sent.nonce or latest == sent.nonce:
            log.info(
                "tx_stalled hash=%s nonce=%d chain_nonce=%d pending_nonce=%d known=%s",
                sent.tx_hash, sent.nonce, latest, pending, known is not None,
            )  # fmt: skip
            return sent, None
        # Nonces pending..nonce-1 are missing: nothing we queued can be mined until they are used.
        if suspicion != "gap":
            log.warning(
                "tx_nonce_gap hash=%s nonce=%d first_missing=%d: checking again in %g s",
                sent.tx_hash, sent.nonce, pending, self.stall_timeout,
            )  # fmt: skip
            return sent, "gap"
        self._fill_gap(sent.nonce)
        return sent, None

    def _base_fee(self) -> int | None:
        return self.w3.eth.get_block("latest").get("baseFeePerGas")

    def _underpriced_beyond_cap(self, sent: _Sent) -> bool:
        """Whether the call can only be mined at fees above the sender's cap (for the timeout message)."""
        try:
            base_fee = self._base_fee()
        except OSError:
            return False
        return base_fee is not None and "maxFeePerGas" in sent.tx and base_fee > self.max_fee_per_gas

    def _reprice_if_underpriced(self, sent: _Sent) -> _Sent | None:
        """After a base-fee spike, sign the same call and nonce again with fees that can be mined.

        The new fees cover twice the current base fee plus the tip, and beat the old ones by 12.5%
        (nodes accept a replacement only above a margin; geth's is 10%), never above the cap.
        """
        base_fee = self._base_fee()
        old_max = sent.tx.get("maxFeePerGas")
        if base_fee is None or old_max is None or old_max >= base_fee:
            return None
        fees = self._fees()
        tip = max(fees["maxPriorityFeePerGas"], _bumped(sent.tx["maxPriorityFeePerGas"]))
        max_fee = max(fees["maxFeePerGas"], _bumped(old_max), tip)
        if max_fee > self.max_fee_per_gas:
            log.warning(
                "tx_underpriced hash=%s nonce=%d base_fee=%d needed_max_fee=%d cap=%d: waiting for the base "
                "fee to fall (raise max_fee_per_gas to pay more)",
                sent.tx_hash, sent.nonce, base_fee, max_fee, self.max_fee_per_gas,
            )  # fmt: skip
            return None
        tx = {**sent.tx, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip}
        try:
            with self._lock, self._nonce_lock():
                tx_hash = self._send_raw(tx)
        except Web3RPCError as exc:  # e.g. one of our hashes was mined meanwhile: the next poll sees it
            log.info("tx_reprice_refused hash=%s nonce=%d error=%r", sent.tx_hash, sent.nonce, str(exc))
            return None
        log.warning(
            "tx_repriced hash=%s new_hash=%s nonce=%d base_fee=%d max_fee=%d->%d tip=%d",
            sent.tx_hash, tx_hash, sent.nonce, base_fee, old_max, max_fee, tip,
        )  # fmt: skip
        return _Sent(tx, tx_hash, sent.hashes)

    def _fill_gap(self, below: int) -> None:
        """Use every nonce missing below `below` with an empty transfer to ourselves."""
        fees = self._fees()
        with self._lock, self._nonce_lock():
            for nonce in range(self._chain_nonce(), below):
                filler = {"to": self.address, "value": 0, "gas": _TRANSFER_GAS, **fees}
                try:
                    tx_hash = self._send_raw({**filler, "chainId": self.chain_id, "nonce": nonce})
                except Web3RPCError as exc:  # someone used it meanwhile: fine
                    log.info("gap_fill_skipped address=%s nonce=%d error=%r", self.address, nonce, str(exc))
                    continue
                log.warning("gap_filled address=%s nonce=%d hash=%s", self.address, nonce, tx_hash)

    def _rebroadcast(self, sent: _Sent) -> None:
        """Hand the node the very same signed transaction again (same hash: it cannot run twice)."""
        try:
            self._send_raw(sent.tx)
        except Web3RPCError as exc:
            log.info("rebroadcast_refused hash=%s error=%r", sent.tx_hash, str(exc))
            return
        log.warning("tx_rebroadcast hash=%s nonce=%d: the node had dropped it", sent.tx_hash, sent.nonce)

    def _receipt(self, tx_hash: str) -> TxReceipt | None:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _known(self, tx_hash: str) -> bool:
        """Whether the node has this transaction (pending or mined); False when it cannot say."""
        try:
            return self._lookup(tx_hash) is not None
        except (OSError, Web3RPCError):
            return False

    def _lookup(self, tx_hash: str) -> TxData | None:
        try:
            return self.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return None

    # --- reverts on chain --------------------------------------------------------------------------------

    def _on_chain_revert(self, tx: dict[str, Any], gas: int, receipt: TxReceipt) -> RevertError:
        """Decode why a mined transaction failed: out of gas, or replay it to get the revert data."""
        tx_hash = receipt["transactionHash"].to_0x_hex()
        if receipt["gasUsed"] >= gas:
            err = RevertError("OutOfGas", {"gasUsed": receipt["gasUsed"], "gasLimit": gas}, b"", b"")
        else:
            err = self._replay(tx, gas, receipt["blockNumber"])
        err.tx_hash = tx_hash
        return err

    def _replay(self, tx: dict[str, Any], gas: int, block: int) -> RevertError:
        """eth_call the transaction on the state after its block (then before it) to get the revert."""
        for at in (block, block - 1):
            try:
                self.w3.eth.call({**tx, "gas": gas}, block_identifier=at)
            except ContractLogicError as exc:
                return _revert_from(exc, tx)
            except Web3RPCError as exc:  # not a revert (e.g. the node dropped that state): try the next
                log.info("replay_failed block=%d error=%r", at, str(exc))
        return RevertError("UnknownError", {}, b"", b"")


def _revert_data(exc: ContractLogicError) -> str:
    """The revert data web3 attached to the error ('0x' when the node gave none)."""
    data = exc.data
    if isinstance(data, dict):  # some nodes nest it: {"message": ..., "data": "0x..."}
        data = data.get("data")
    return data if isinstance(data, str) and data.startswith(("0x", "Reverted ")) else "0x"


def _revert_from(exc: ContractLogicError, tx: dict[str, Any]) -> RevertError:
    err = decode_revert(_revert_data(exc))
    if err.name == "UnknownError" and not err.data and exc.message:
        log.info("revert_without_data to=%s node_message=%r", tx.get("to"), exc.message)
    return err


def _bumped(fee: int) -> int:
    """A fee 12.5% (and at least 1 wei) higher: enough for a node to take it as a replacement."""
    return fee + fee // 8 + 1


def _is_nonce_conflict(exc: Web3RPCError) -> bool:
    text = str(exc).lower()
    return any(pattern in text for pattern in NONCE_CONFLICTS)


def _node_refused(exc: Web3RPCError, address: str) -> ChainError:
    text = str(exc)
    if "insufficient funds" in text.lower():
        return ChainError(f"{address} has too little ETH to pay for gas: fund it ({text})")
    return ChainError(f"the node refused the transaction from {address}: {text}")
