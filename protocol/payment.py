"""How payment travels over HTTP between a payer (router, SDK, script) and a node.

Request headers (JSON values; uint256 numbers as decimal strings, since JSON readers lose precision
past 2^53; plain integers are accepted too):
- `x-llm-mesh-auth`: the RequestAuth's fields, its `signature` (0x + 65 bytes: r, s, v) and the
  `chain_id` + `settlement` the payer signed for, so a node on another chain can say exactly that.
- `x-llm-mesh-receipt` (optional): the newest receipt the payer countersigned for this node, with
  `payer_signature` and `node_signature`. `POST /v1/receipts` takes the same object as its body.

Responses carry `llm_mesh` (the JSON body's top level; in a stream, the final chunk's):
`{"request": item, "receipt": {..., "node_signature"}, "base": countersigned receipt | null,
"items": [item, ...]}`: the node's next cumulative receipt, signed by the node, is `base` plus the
`items` (the requests billed since `base`, oldest first, this one last); an item is
`{"nonce", "model_id", "tokens", "price_per_1k", "amount"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chain.eip712 import Signature
from chain.errors import ChainError
from chain.receipts import Domain, RequestAuth, SignedReceipt, UsageReceipt

AUTH_HEADER = "x-llm-mesh-auth"
RECEIPT_HEADER = "x-llm-mesh-receipt"
RESPONSE_FIELD = "llm_mesh"
MAX_HEADER_BYTES = 4096


class PaymentFormatError(ValueError):
    """A payment header or field that does not parse; the message names what is wrong."""


@dataclass(frozen=True)
class SignedAuth:
    """A RequestAuth with the payer's signature and the domain the payer says it signed for."""

    auth: RequestAuth
    signature: Signature
    chain_id: int | None = None
    settlement: str | None = None


@dataclass(frozen=True)
class Item:
    """One billed request inside a receipt: its auth nonce, tokens, price and cost."""

    nonce: int
    model_id: int
    tokens: int
    price_per_1k: int
    amount: int


def _num(value: Any) -> str:
    return str(int(value))


def _int(data: dict[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PaymentFormatError(f"{where}.{key} must be an integer (a decimal string), got {value!r}")
    try:
        number = int(value, 10) if isinstance(value, str) else value
    except ValueError:
        raise PaymentFormatError(f"{where}.{key} must be a decimal integer, got {value!r}") from None
    if not 0 <= number < 1 << 256:
        raise PaymentFormatError(f"{where}.{key} is out of the uint256 range")
    return number


def _address(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or len(value) != 42 or not value.startswith("0x"):
        raise PaymentFormatError(f"{where}.{key} must be a 0x address of 40 hex digits, got {value!r}")
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        raise PaymentFormatError(f"{where}.{key} is not hex: {value!r}") from None
    return value


def signature_hex(signature: Signature) -> str:
    return "0x" + signature.to_bytes().hex()


def _signature(data: dict[str, Any], key: str, where: str) -> Signature:
    value = data.get(key)
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 132:
        raise PaymentFormatError(f"{where}.{key} must be 0x + 65 bytes (r, s, v) in hex")
    try:
        return Signature.from_bytes(bytes.fromhex(value[2:]))
    except (ValueError, ChainError):
        raise PaymentFormatError(f"{where}.{key} is not a hex signature") from None


def _object(raw: str | bytes | dict[str, Any], where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_HEADER_BYTES:
        raise PaymentFormatError(f"{where} is larger than {MAX_HEADER_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PaymentFormatError(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PaymentFormatError(f"{where} must be a JSON object")
    return data


# ---------------------------------------------------------------- auths


def encode_auth(signed: SignedAuth) -> str:
    a = signed.auth
    data = {
        "payer": a.payer,
        "node": a.node,
        "model_id": _num(a.model_id),
        "max_tokens": _num(a.max_tokens),
        "max_price_per_1k": _num(a.max_price_per_1k),
        "nonce": _num(a.nonce),
        "deadline": _num(a.deadline),
        "signature": signature_hex(signed.signature),
    }
    if signed.chain_id is not None:
        data["chain_id"] = _num(signed.chain_id)
    if signed.settlement is not None:
        data["settlement"] = signed.settlement
    return json.dumps(data, separators=(",", ":"))


def decode_auth(raw: str | bytes | dict[str, Any]) -> SignedAuth:
    where = AUTH_HEADER
    data = _object(raw, where)
    try:
        auth = RequestAuth(
            payer=_address(data, "payer", where),
            node=_address(data, "node", where),
            model_id=_int(data, "model_id", where),
            max_tokens=_int(data, "max_tokens", where),
            max_price_per_1k=_int(data, "max_price_per_1k", where),
            nonce=_int(data, "nonce", where),
            deadline=_int(data, "deadline", where),
        )
    except ChainError as exc:
        raise PaymentFormatError(str(exc)) from None
    chain_id = _int(data, "chain_id", where) if "chain_id" in data else None
    settlement = _address(data, "settlement", where) if "settlement" in data else None
    return SignedAuth(auth, _signature(data, "signature", where), chain_id, settlement)


def sign_auth(auth: RequestAuth, account: Any, domain: Domain) -> SignedAuth:
    return SignedAuth(auth, auth.sign(account, domain), domain.chain_id, domain.settlement)


# ---------------------------------------------------------------- receipts


def receipt_fields(r: UsageReceipt) -> dict[str, str]:
    return {
        "payer": r.payer,
        "node": r.node,
        "model_id": _num(r.model_id),
        "cumulative_tokens": _num(r.cumulative_tokens),
        "cumulative_amount": _num(r.cumulative_amount),
        "expiry": _num(r.expiry),
    }


def decode_receipt(data: dict[str, Any], where: str) -> UsageReceipt:
    try:
        return UsageReceipt(
            payer=_address(data, "payer", where),
            node=_address(data, "node", where),
            model_id=_int(data, "model_id", where),
            cumulative_tokens=_int(data, "cumulative_tokens", where),
            cumulative_amount=_int(data, "cumulative_amount", where),
            expiry=_int(data, "expiry", where),
        )
    except ChainError as exc:
        raise PaymentFormatError(str(exc)) from None


def encode_signed_receipt(signed: SignedReceipt) -> dict[str, str]:
    return {
        **receipt_fields(signed.receipt),
        "payer_signature": signature_hex(signed.payer_sig),
        "node_signature": signature_hex(signed.node_sig),
    }


def decode_signed_receipt(raw: str | bytes | dict[str, Any], where: str = RECEIPT_HEADER) -> SignedReceipt:
    data = _object(raw, where)
    return SignedReceipt(
        decode_receipt(data, where),
        _signature(data, "payer_signature", where),
        _signature(data, "node_signature", where),
    )


def encode_item(item: Item) -> dict[str, str]:
    return {
        "nonce": _num(item.nonce),
        "model_id": _num(item.model_id),
        "tokens": _num(item.tokens),
        "price_per_1k": _num(item.price_per_1k),
        "amount": _num(item.amount),
    }


def decode_item(data: Any, where: str) -> Item:
    if not isinstance(data, dict):
        raise PaymentFormatError(f"{where} must be an object")
    return Item(*(_int(data, k, where) for k in ("nonce", "model_id", "tokens", "price_per_1k", "amount")))


@dataclass(frozen=True)
class Billing:
    """What a node returns with a response: its signed next receipt, the base and the items."""

    request: Item
    receipt: UsageReceipt
    node_sig: Signature
    base: SignedReceipt | None
    items: tuple[Item, ...]

    def encode(self) -> dict[str, Any]:
        return {
            "request": encode_item(self.request),
            "receipt": {**receipt_fields(self.receipt), "node_signature": signature_hex(self.node_sig)},
            "base": encode_signed_receipt(self.base) if self.base is not None else None,
            "items": [encode_item(i) for i in self.items],
        }

    @classmethod
    def decode(cls, data: Any) -> Billing:
        where = RESPONSE_FIELD
        if not isinstance(data, dict):
            raise PaymentFormatError(f"{where} must be an object")
        receipt = data.get("receipt")
        items = data.get("items")
        if not isinstance(receipt, dict) or not isinstance(items, list) or not items:
            raise PaymentFormatError(f"{where} needs a receipt object and a non-empty items list")
        base = data.get("base")
        return cls(
            request=decode_item(data.get("request"), f"{where}.request"),
            receipt=decode_receipt(receipt, f"{where}.receipt"),
            node_sig=_signature(receipt, "node_signature", f"{where}.receipt"),
            base=decode_signed_receipt(base, f"{where}.base") if base is not None else None,
            items=tuple(decode_item(i, f"{where}.items[{n}]") for n, i in enumerate(items)),
        )
