"""EIP-712 types shared with Settlement.sol: `UsageReceipt` and `RequestAuth`.

The field lists are read from the Settlement ABI (the Solidity structs), so Python and Solidity
have one definition; a test checks the type hashes against the contract's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from chain.artifacts import load_artifact
from chain.errors import ChainError

DOMAIN_NAME = "llm-mesh Settlement"
DOMAIN_VERSION = "1"
# The Settlement view that takes each struct: its ABI input carries the struct's fields in order.
_STRUCT_SOURCES = {"UsageReceipt": "hashReceipt", "RequestAuth": "hashRequestAuth"}
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class Signature:
    """An ECDSA signature as Settlement takes it: (v, r, s) with low s."""

    v: int
    r: bytes
    s: bytes

    def as_tuple(self) -> tuple[int, bytes, bytes]:
        return (self.v, self.r, self.s)

    def to_bytes(self) -> bytes:
        """The 65-byte r || s || v form most wallets print."""
        return self.r + self.s + bytes([self.v])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Signature:
        if len(raw) != 65:
            raise ChainError(f"a signature is 65 bytes (r, s, v), got {len(raw)}")
        v = raw[64] if raw[64] >= 27 else raw[64] + 27
        return cls(v=v, r=raw[:32], s=raw[32:64])


@cache
def struct_fields(struct: str) -> tuple[tuple[str, str], ...]:
    """(name, type) of each field of a Settlement struct, in declaration order."""
    if struct not in _STRUCT_SOURCES:
        raise ChainError(f"unknown EIP-712 struct {struct!r}; known: {', '.join(_STRUCT_SOURCES)}")
    entry = load_artifact("Settlement").abi_entry("function", _STRUCT_SOURCES[struct])
    return tuple((c["name"], c["type"]) for c in entry["inputs"][0]["components"])


def encode_type(struct: str) -> str:
    """The EIP-712 `encodeType` string, e.g. `UsageReceipt(address payer,...)`."""
    return f"{struct}({','.join(f'{t} {n}' for n, t in struct_fields(struct))})"


def type_hash(struct: str) -> bytes:
    return keccak(text=encode_type(struct))


def domain(chain_id: int, verifying_contract: str) -> dict[str, Any]:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(verifying_contract),
    }


def typed_data(
    struct: str, message: dict[str, Any], chain_id: int, verifying_contract: str
) -> dict[str, Any]:
    """The full EIP-712 document (what a wallet's eth_signTypedData_v4 takes)."""
    fields = struct_fields(struct)
    missing = [n for n, _ in fields if n not in message]
    extra = sorted(set(message) - {n for n, _ in fields})
    if missing or extra:
        raise ChainError(f"{struct} fields do not match: missing {missing}, unexpected {extra}")
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            struct: [{"name": n, "type": t} for n, t in fields],
        },
        "primaryType": struct,
        "domain": domain(chain_id, verifying_contract),
        "message": dict(message),
    }


def digest(struct: str, message: dict[str, Any], chain_id: int, verifying_contract: str) -> bytes:
    """The 32-byte hash that is signed (`\\x19\\x01 || domainSeparator || hashStruct`)."""
    signable = encode_typed_data(full_message=typed_data(struct, message, chain_id, verifying_contract))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign(
    private_key: bytes | str, struct: str, message: dict[str, Any], chain_id: int, verifying_contract: str
) -> Signature:
    """Sign a struct; eth-account produces low-s signatures with v in {27, 28}."""
    signed = Account.unsafe_sign_hash(digest(struct, message, chain_id, verifying_contract), private_key)
    return Signature(v=signed.v, r=signed.r.to_bytes(32, "big"), s=signed.s.to_bytes(32, "big"))


def recover(
    struct: str, message: dict[str, Any], signature: Signature, chain_id: int, verifying_contract: str
) -> str:
    """The signer's address; raises ChainError for a malleable (high-s) signature, as Solidity does."""
    if int.from_bytes(signature.s, "big") > SECP256K1_N // 2:
        raise ChainError("signature has a high s value (malleable); re-sign with a standard wallet")
    h = digest(struct, message, chain_id, verifying_contract)
    return Account._recover_hash(
        h, vrs=(signature.v, int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big"))
    )
