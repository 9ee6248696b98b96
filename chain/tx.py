"""Sending transactions: gas estimation with a cap, EIP-1559 fees, safe nonces, decoded reverts.

`TxSender(w3, account).send(contract.functions.stake(amount))` estimates gas (a revert there is
decoded and raised before anything is sent), signs locally, keeps its own nonce counter (shared by
threads, resynchronised from the chain when another process uses the same key), waits for the
receipt and, if the transaction reverted on chain, replays it to decode the custom error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import TxReceipt

from chain.artifacts import load_artifact
from chain.errors import ChainError, GasCapExceeded, RevertError, TxTimeout, decode_revert

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


class TxSender:
    """Signs and sends transactions for one account; safe to share between threads."""

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
    ) -> None:
        """`nonce_retry_backoff` is the base of the random, doubling wait between nonce retries."""
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
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

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

    # --- the public API --------------------------------------------------------------------------------

    def send(
        self, call: ContractFunction | ContractConstructor, *, value: int = 0, gas: int | None = None
    ) -> TxReceipt:
        """Send a bound contract call or constructor and return its successful receipt.

        Raises RevertError (during estimation, nothing sent; or on chain, decoded by replay),
        GasCapExceeded, TxTimeout, or ChainError for what the node refuses. An explicit `gas`
        skips estimation (still capped).
        """
        tx = self._base_transaction(call, value)
        limit = self._gas_limit(tx) if gas is None else self._check_cap(gas, "the explicit gas limit")
        tx_hash = self._sign_and_send({**tx, "gas": limit, **self._fees(), "chainId": self.chain_id})
        receipt = self._wait(tx_hash)
        if receipt["status"] != 1:
            raise self._on_chain_revert(tx, limit, receipt)
        return receipt

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

    def _sign_and_send(self, tx: dict[str, Any]) -> str:
        """Send with the next local nonce; on a nonce conflict resync from the chain and retry."""
        for attempt in range(self.max_nonce_retries + 1):
            tx_hash = self._try_next_nonce(tx, attempt)
            if tx_hash is not None:
                return tx_hash
            # Another sender with this key took the nonce; wait a random while so we stop colliding.
            time.sleep(random.uniform(0, self.nonce_retry_backoff * 2**attempt))
        raise ChainError(
            f"no free nonce for {self.address} after {self.max_nonce_retries} retries: another process "
            "keeps sending with this key; give each process its own key or raise max_nonce_retries"
        )

    def _try_next_nonce(self, tx: dict[str, Any], attempt: int) -> str | None:
        """Send with the local nonce under the lock; None (and a resync later) if it was taken."""
        with self._lock:
            if self._nonce is None:
                self._nonce = self._chain_nonce()
            nonce = self._nonce
            try:
                tx_hash = self._send_raw({**tx, "nonce": nonce})
            except Web3RPCError as exc:
                if not _is_nonce_conflict(exc):
                    raise _node_refused(exc, self.address) from exc
                self._nonce = None
                log.info("nonce_conflict address=%s nonce=%d attempt=%d", self.address, nonce, attempt + 1)
                return None
            self._nonce = nonce + 1
        log.info("tx_sent address=%s nonce=%d gas=%d hash=%s", self.address, nonce, tx["gas"], tx_hash)
        return tx_hash

    def _send_raw(self, tx: dict[str, Any]) -> str:
        signed = self.account.sign_transaction(tx)
        return self.w3.eth.send_raw_transaction(signed.raw_transaction).to_0x_hex()

    def _wait(self, tx_hash: str) -> TxReceipt:
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_interval
            )
        except TimeExhausted as exc:
            raise TxTimeout(
                f"transaction {tx_hash} was not mined within {self.receipt_timeout:g} s; it may still be "
                "mined: look it up by hash before sending it again"
            ) from exc
        log.info(
            "tx_mined hash=%s status=%d block=%d gas_used=%d",
            tx_hash, receipt["status"], receipt["blockNumber"], receipt["gasUsed"],
        )  # fmt: skip
        return receipt

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


def _is_nonce_conflict(exc: Web3RPCError) -> bool:
    text = str(exc).lower()
    return any(pattern in text for pattern in NONCE_CONFLICTS)


def _node_refused(exc: Web3RPCError, address: str) -> ChainError:
    text = str(exc)
    if "insufficient funds" in text.lower():
        return ChainError(f"{address} has too little ETH to pay for gas: fund it ({text})")
    return ChainError(f"the node refused the transaction from {address}: {text}")
