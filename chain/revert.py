"""Revert data decoded into readable, actionable errors.

Every custom error of every committed artifact (ours and OpenZeppelin's) plus Solidity's builtin
`Error(string)` and `Panic(uint256)` is known by its 4-byte selector, so a revert turns into e.g.
`StakeBelowMinimum(stake=500 MESH, minimum=1,000 MESH): stake more with register_node.py --stake`.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak, to_checksum_address

from chain.artifacts import CONTRACT_NAMES, load_artifact
from chain.errors import ChainError
from chain.units import format_duration, format_timestamp, format_token
from chain.views import MODEL_STATUS

BUILTIN = "Solidity"  # the "contract" of Error(string) and Panic(uint256) in the selector table

ERROR_STRING_ENTRY: dict[str, Any] = {
    "type": "error",
    "name": "Error",
    "inputs": [{"name": "message", "type": "string", "internalType": "string"}],
}
PANIC_ENTRY: dict[str, Any] = {
    "type": "error",
    "name": "Panic",
    "inputs": [{"name": "code", "type": "uint256", "internalType": "uint256"}],
}
# https://docs.soliditylang.org/en/latest/control-structures.html#panic-via-assert-and-error-via-require
PANIC_CODES: dict[int, str] = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop() on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory (allocation too large)",
    0x51: "call to an uninitialised function pointer",
}

# What an operator or user does about each error they are likely to hit.
HINTS: dict[str, str] = {
    # Settlement (users and nodes)
    "InsufficientEscrow": "the payer's escrow cannot cover this payment; top it up with deposit.py",
    "UnlockNotReady": "the escrow unlock delay has not passed; withdraw again after readyAt "
    "(and before the window closes)",
    "NoUnlockPending": "request an unlock first (withdraw.py --request AMOUNT), then withdraw after "
    "the delay",
    "NothingToWithdraw": "this account has no earnings yet; earnings arrive when receipts are settled",
    "ReceiptExpired": "the receipt expired before settlement; get a fresh receipt signed by the payer",
    "InvalidPayerSignature": "the payer's signature does not match this receipt under this contract's "
    "EIP-712 domain: a receipt signed for another chain id or Settlement address reads like this, as "
    "does a wrong key; have the payer sign it for this chain and contract (eip712Domain())",
    "InvalidNodeSignature": "the node's signature does not match under this contract's EIP-712 domain "
    "(another chain id or Settlement address, or another key); sign with the node's operator key for "
    "this chain and contract, or submit from the node's address",
    "StaleReceipt": "this receipt pays nothing new (alreadyPaid >= cumulativeAmount); drop it",
    "InconsistentTokens": "the receipt's token count is below what was already settled; drop it",
    "AmountOutOfRange": "the receipt amount is too large to settle; check the price and token count",
    "NodeNotPayable": "the node cannot be paid: it never registered, left more than one unbonding "
    "period ago, or has no stake left; register and stake with register_node.py",
    "ModelNotBillable": "the receipt's model was never approved by a curator; bill an approved model",
    "ReputationOverflow": "the node's reputation counters are full; this receipt cannot be credited",
    "UnlockLapsed": "the unlock was not withdrawn within its window after readyAt; request a new "
    "unlock (withdraw.py --request) and withdraw after the delay",
    "InvalidRequestSignature": "the request signature is malformed or malleable; sign the request again",
    "ZeroAmount": "the amount must be greater than zero",
    "ZeroAddress": "an address argument is the zero address; pass a real address",
    # NodeRegistry (operators)
    "StakeBelowMinimum": "stake more with register_node.py --stake",
    "InsufficientStake": "that is more than is staked; ask for at most the available stake",
    "UnbondingNotReady": "the unbonding period has not ended; withdraw the stake after readyAt",
    "NothingUnbonding": "request an unbond first (unbond.py --amount AMOUNT), then withdraw_stake.py "
    "after the period",
    "AlreadyRegistered": "this operator is already registered; register_node.py updates an existing node",
    "NotRegistered": "register the node first with register_node.py",
    "NodeIdTaken": "another operator owns this node id; choose another with register_node.py --node-id",
    "ModelNotHostable": "host only approved models, each once (approve_model.py approves a proposed one)",
    "TooManyModels": "host fewer models (at most maximum)",
    "InvalidNodeField": "fix the named field (node id, endpoint URL or hardware): non-empty and not too long",
    # ModelRegistry (publishers and curators)
    "UnknownModel": "no model has this id; use the id printed by publish_model.py",
    "WrongModelStatus": "the model is not in the status this action needs (current vs expected)",
    "ModelAlreadyDeprecated": "the model is already deprecated; publish a new version instead",
    "NotPublisherOrCurator": "only the model's publisher or a curator can do this; send from that account",
    "DuplicateCid": "this CID is already registered (as existingId); use that model or publish other bytes",
    "NameOwnedByAnother": "the name belongs to another publisher; choose another name or ask its owner",
    "InvalidModelSpec": "fix the named field of the spec given to publish_model.py (non-empty, not too long)",
    # Admin
    "ParameterOutOfBounds": "choose a value between minimum and maximum",
    "AccessControlUnauthorizedAccount": "the sending account lacks neededRole; send from an account that "
    "holds it, or have an admin grant it (grantRole)",
    "OwnableUnauthorizedAccount": "only the contract owner can do this; send from the owner account",
    # Tokens and vault
    "ERC20InsufficientBalance": "the sender holds too little; get more MESH or send less",
    "ERC20InsufficientAllowance": "approve the spender for at least the needed amount first (or a permit)",
    "ERC2612ExpiredSignature": "the permit's deadline passed; sign a new permit",
    "ERC2612InvalidSigner": "the permit was not signed by the owner; sign it with the owner's key",
    "ERC4626ExceededMaxWithdraw": "withdraw at most max",
    "ERC4626ExceededMaxRedeem": "redeem at most max",
    "ZeroShares": "the deposit is too small to mint a share; deposit more",
    "ReentrancyGuardReentrantCall": "a contract tried to re-enter; call from a plain account",
    # Not custom errors, but reported the same way
    "Panic": "a contract bug or impossible input: report it with the transaction",
    "OutOfGas": "the transaction ran out of gas; send it again with more gas (gas_margin or explicit gas)",
    "UnknownError": "no contract of this project declares this error: the contract that reverted may be "
    "an external one (a token or another protocol; look its selector up there), or, if it is one of "
    "ours, the artifacts are stale (make contracts)",
}

_NO_DATA_HINT = (
    "the contract reverted without a reason (a call to a non-contract, a failed low-level call "
    "or a bare revert); check the addresses and arguments"
)

# Arguments (per error) that are MESH amounts in base units; other errors use the fallback names.
_TOKEN_ARGS: dict[str, frozenset[str]] = {
    "StakeBelowMinimum": frozenset({"stake", "minimum"}),
    "InsufficientStake": frozenset({"requested", "available"}),
    "InsufficientEscrow": frozenset({"needed", "available"}),
    "StaleReceipt": frozenset({"cumulativeAmount", "alreadyPaid"}),
    "AmountOutOfRange": frozenset({"cumulativeAmount"}),
    "ERC20InsufficientBalance": frozenset({"balance", "needed"}),
    "ERC20InsufficientAllowance": frozenset({"allowance", "needed"}),
    "ERC4626ExceededMaxDeposit": frozenset({"assets", "max"}),
    "ERC4626ExceededMaxWithdraw": frozenset({"assets", "max"}),
    "ZeroShares": frozenset({"assets"}),
}
_FALLBACK_TOKEN_ARGS = frozenset(
    {"amount", "stake", "needed", "available", "balance", "allowance", "cumulativeAmount", "alreadyPaid"}
)
_TIMESTAMP_ARGS = frozenset({"readyAt", "nowTimestamp", "expiry", "deadline", "lapsedAt"})
# ParameterOutOfBounds(name, value, minimum, maximum): the unit depends on the parameter.
_TOKEN_PARAMETERS = frozenset({"minStake"})
_DURATION_PARAMETERS = frozenset({"unbondingPeriod", "unlockDelay"})
_ROLE_NAMES = ("CURATOR_ROLE", "SLASHER_ROLE", "SETTLEMENT_ROLE")
_ENUMS: dict[str, tuple[str, ...]] = {
    "enum IModelRegistry.Status": MODEL_STATUS,
}


class RevertError(ChainError):
    """A contract call reverted; `name` and `args` are the decoded custom error.

    `args` holds the raw decoded values (amounts in base units); str() is one readable line with
    amounts in MESH, times in UTC and a hint saying what to do.
    """

    def __init__(
        self,
        name: str,
        args: dict[str, Any],
        selector: bytes,
        data: bytes,
        contract: str | None = None,
        *,
        tx_hash: str | None = None,
    ) -> None:
        super().__init__(name)
        self.name = name
        self._args = dict(args)
        self.selector = selector
        self.data = data
        self.contract = contract
        self.tx_hash = tx_hash

    @property
    def args(self) -> dict[str, Any]:  # type: ignore[override]  # the error's arguments, not a tuple
        """The error's decoded arguments by name (raw values)."""
        return self._args

    @property
    def hint(self) -> str | None:
        """What to do about this error, when known."""
        if self.name == "UnknownError" and not self.data:
            return _NO_DATA_HINT
        return HINTS.get(self.name)

    def __str__(self) -> str:
        text = f"{self.name}({_format_args(self.name, self._args)})"
        if self.name == "UnknownError":
            if self.data:
                text += f" selector=0x{self.selector.hex()} data=0x{self.data.hex()}"
            else:
                text += " without revert data"
        if self.hint:
            text += f": {self.hint}"
        if self.tx_hash:
            text += f" (tx {self.tx_hash})"
        return text

    def __repr__(self) -> str:
        return f"RevertError({self.name!r}, {self._args!r}, contract={self.contract!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_revert_error,
            (self.name, self._args, self.selector, self.data, self.contract, self.tx_hash),
        )


def _rebuild_revert_error(
    name: str, args: dict, selector: bytes, data: bytes, contract: str | None, tx_hash: str | None
) -> RevertError:
    return RevertError(name, args, selector, data, contract, tx_hash=tx_hash)


# --- the selector table ---------------------------------------------------------------------------


def canonical_type(param: dict[str, Any]) -> str:
    """The ABI type of one input as it appears in a signature (tuples expanded)."""
    typ = param["type"]
    if typ.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
        return f"({inner}){typ[len('tuple') :]}"
    return typ


def error_signature(entry: dict[str, Any]) -> str:
    """`Name(type1,type2)` of an ABI error entry."""
    return f"{entry['name']}({','.join(canonical_type(p) for p in entry['inputs'])})"


def error_selector(entry: dict[str, Any]) -> bytes:
    """The 4-byte selector of an ABI error entry: keccak256(signature)[:4]."""
    return keccak(text=error_signature(entry))[:4]


def _artifact_abis() -> list[tuple[str, list[dict[str, Any]]]]:
    """(contract, ABI) of every committed artifact."""

    return [(name, load_artifact(name).abi) for name in CONTRACT_NAMES]


@cache
def _table() -> dict[bytes, tuple[str, dict[str, Any]]]:
    table: dict[bytes, tuple[str, dict[str, Any]]] = {
        error_selector(ERROR_STRING_ENTRY): (BUILTIN, ERROR_STRING_ENTRY),
        error_selector(PANIC_ENTRY): (BUILTIN, PANIC_ENTRY),
    }
    for contract, abi in _artifact_abis():
        for entry in abi:
            if entry.get("type") != "error":
                continue
            selector = error_selector(entry)
            known = table.get(selector)
            if known is None:
                table[selector] = (contract, entry)
            elif error_signature(known[1]) != error_signature(entry):
                raise ChainError(
                    f"selector 0x{selector.hex()} is shared by {error_signature(known[1])} "
                    f"and {error_signature(entry)}: rename one of the errors"
                )
    return table


def selector_table() -> dict[bytes, tuple[str, dict[str, Any]]]:
    """4-byte selector -> (contract, ABI error entry) for every known error.

    The contract is the first artifact that declares the error (several may, e.g. ZeroAmount);
    `Error(string)` and `Panic(uint256)` are listed under "Solidity".
    """
    return dict(_table())


# --- decoding ---------------------------------------------------------------------------------------


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    text = data.strip()
    if text.startswith("Reverted "):  # some nodes prefix the data
        text = text[len("Reverted ") :]
    if text.startswith(("0x", "0X")):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ChainError(f"revert data is not hex: {data[:80]!r}") from exc


def _normalise(value: Any, param: dict[str, Any]) -> Any:
    """Checksum addresses (also inside arrays and tuples); leave everything else raw."""
    typ = param["type"]
    if typ == "address":
        return to_checksum_address(value)
    if typ.startswith("tuple") and not typ.endswith("]"):
        return tuple(_normalise(v, c) for v, c in zip(value, param["components"], strict=True))
    if typ.endswith("]"):
        inner = {**param, "type": typ[: typ.rindex("[")]}
        return [_normalise(v, inner) for v in value]
    return value


def decode_revert(data: bytes | str, contract: str | None = None) -> RevertError:
    """Decode revert data (bytes or 0x-hex) into a RevertError.

    An unknown selector, empty data or undecodable arguments give name "UnknownError" with the
    raw data. `contract`, when given, names the contract that was called (reported as-is).
    """
    raw = _as_bytes(data)
    selector = raw[:4]
    found = _table().get(selector) if len(raw) >= 4 else None
    if found is None:
        return RevertError("UnknownError", {}, selector, raw, contract)
    declared_in, entry = found
    try:
        values = abi_decode([canonical_type(p) for p in entry["inputs"]], raw[4:])
    except (DecodingError, ValueError, OverflowError):
        return RevertError("UnknownError", {}, selector, raw, contract)
    args = {
        p["name"] or f"arg{i}": _normalise(v, p)
        for i, (p, v) in enumerate(zip(entry["inputs"], values, strict=True))
    }
    origin = contract or (None if declared_in == BUILTIN else declared_in)
    return RevertError(entry["name"], args, selector, raw, origin)


@cache
def _role_names() -> dict[bytes, str]:
    roles = {bytes(32): "DEFAULT_ADMIN_ROLE"}
    roles.update({keccak(text=name): name for name in _ROLE_NAMES})
    return roles


@cache
def _params_of(error: str) -> dict[str, dict[str, Any]]:
    """Input name -> ABI input of the (first) known error with this name; empty if unknown."""
    for _, entry in _table().values():
        if entry["name"] == error:
            return {p["name"]: p for p in entry["inputs"]}
    return {}


def _is_token_arg(error: str, arg: str, args: dict[str, Any]) -> bool:
    if error == "ParameterOutOfBounds":
        return args.get("name") in _TOKEN_PARAMETERS and arg in {"value", "minimum", "maximum"}
    return arg in _TOKEN_ARGS.get(error, _FALLBACK_TOKEN_ARGS)


def _format_int(error: str, arg: str, value: int, args: dict[str, Any]) -> str:
    if error == "Panic":
        return f"0x{value:02x} ({PANIC_CODES.get(value, 'unknown panic code')})"
    if _is_token_arg(error, arg, args):
        return format_token(value)
    if error == "ParameterOutOfBounds" and args.get("name") in _DURATION_PARAMETERS:
        return format_duration(value)
    if arg in _TIMESTAMP_ARGS:
        text = format_timestamp(value)
        now = args.get("nowTimestamp")
        if arg != "nowTimestamp" and isinstance(now, int) and value > now:
            text += f" (in {format_duration(value - now)})"
        return text
    return str(value)


def _format_value(error: str, arg: str, value: Any, args: dict[str, Any]) -> str:
    param = _params_of(error).get(arg, {})
    enum_names = _ENUMS.get(param.get("internalType", ""))
    if enum_names and isinstance(value, int) and 0 <= value < len(enum_names):
        return enum_names[value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return _format_int(error, arg, value, args)
    if isinstance(value, bytes):
        role = _role_names().get(value) if arg.lower().endswith("role") else None
        return role or "0x" + value.hex()
    if isinstance(value, str) and param.get("type", "string") == "string":
        return json.dumps(value)
    return str(value)


def _format_args(error: str, args: dict[str, Any]) -> str:
    return ", ".join(f"{arg}={_format_value(error, arg, value, args)}" for arg, value in args.items())
