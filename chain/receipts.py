"""`RequestAuth` and `UsageReceipt`: Settlement's EIP-712 structs as typed, signable objects.

A payer signs a RequestAuth for every request (nobody else can spend its escrow) and countersigns
the node's cumulative UsageReceipts; the node signs receipts too. Both sign under one `Domain`
(chain id + Settlement address), so a signature made for another chain or contract never recovers
to the signer here.

Digests are computed straight from the type hashes: every field of both structs is a static
32-byte word, so `hashStruct` is keccak(typeHash || words) and no EIP-712 document is built per
request. The type strings come from the Settlement ABI (chain.eip712), and a test checks these
digests against the contract's `hashReceipt` / `hashRequestAuth`.

Every paid request signs and recovers a few times on each side, so this is on the request path:
signing and recovery call libsecp256k1 (coincurve) directly, ~50 and ~120 us, where eth-account's
LocalAccount takes ~370 and ~170 us through its layers; checksummed addresses, ~50 us each, are
cached (a node sees the same few payers over and over).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from functools import cache, cached_property, lru_cache
from typing import Any, ClassVar

import coincurve
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from chain.eip712 import DOMAIN_NAME, DOMAIN_VERSION, SECP256K1_N, Signature, encode_type
from chain.errors import ChainError

_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_UINT256_MAX = (1 << 256) - 1


class SignatureError(ChainError):
    """A signature that is malformed, malleable (high s) or recovers to nobody."""


@lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """`to_checksum_address`, cached (ValueError for what is not an address)."""
    return to_checksum_address(address)


@lru_cache(maxsize=16)
def _private_key(secret: bytes) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(secret)


def sign_digest(account: LocalAccount, digest: bytes) -> Signature:
    """Sign a 32-byte digest: libsecp256k1 gives low s, and v is its recovery id + 27, as
    Settlement recovers it."""
    raw = _private_key(bytes(account.key)).sign_recoverable(digest, hasher=None)
    return Signature(v=raw[64] + 27, r=raw[:32], s=raw[32:64])


def _word(value: int | str) -> bytes:
    if isinstance(value, str):  # an address
        return bytes(12) + bytes.fromhex(value[2:])
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class Domain:
    """Where signatures are valid: one chain id and one Settlement contract."""

    chain_id: int
    settlement: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "settlement", checksum_address(self.settlement))

    @cached_property
    def separator(self) -> bytes:
        return keccak(
            _DOMAIN_TYPEHASH
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + _word(self.chain_id)
            + _word(self.settlement)
        )

    def digest(self, struct_hash: bytes) -> bytes:
        return keccak(b"\x19\x01" + self.separator + struct_hash)

    def describe(self) -> str:
        return f"chain {self.chain_id}, Settlement {self.settlement}"


class _Struct:
    """Shared by both structs: hash, sign and recover under a Domain."""

    STRUCT: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.type == "str":
                object.__setattr__(self, f.name, checksum_address(value))
            elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT256_MAX:
                raise ChainError(f"{self.STRUCT}.{f.name} must be a uint256, got {value!r}")

    @classmethod
    def type_hash(cls) -> bytes:
        return _type_hash(cls.STRUCT)

    @cached_property
    def _struct_hash(self) -> bytes:
        names = _field_names(type(self))
        return keccak(self.type_hash() + b"".join(_word(getattr(self, name)) for name in names))

    def struct_hash(self) -> bytes:
        """keccak(typeHash || fields), computed once per object (each is signed and checked
        several times along a request)."""
        return self._struct_hash

    def digest(self, domain: Domain) -> bytes:
        return domain.digest(self.struct_hash())

    def sign(self, account: LocalAccount, domain: Domain) -> Signature:
        """Sign with a local account (low s, v in {27, 28}, as Settlement recovers it)."""
        return sign_digest(account, self.digest(domain))

    def signer(self, signature: Signature, domain: Domain) -> str:
        """The address that signed this under `domain`; SignatureError when nobody did."""
        return recover(self.digest(domain), signature)

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple a contract call takes."""
        return astuple(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class RequestAuth(_Struct):
    """A payer's permission for one request to one node, with its price cap."""

    STRUCT: ClassVar[str] = "RequestAuth"
    payer: str
    node: str
    model_id: int
    max_tokens: int
    max_price_per_1k: int
    nonce: int
    deadline: int


@dataclass(frozen=True)
class UsageReceipt(_Struct):
    """What a payer owes a node in total (cumulative per payer/node pair)."""

    STRUCT: ClassVar[str] = "UsageReceipt"
    payer: str
    node: str
    model_id: int
    cumulative_tokens: int
    cumulative_amount: int
    expiry: int


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt with the payer's and the node's signatures, as Settlement.settle takes it."""

    receipt: UsageReceipt
    payer_sig: Signature
    node_sig: Signature

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.receipt.as_tuple(), self.payer_sig.as_tuple(), self.node_sig.as_tuple())


def recover(digest: bytes, signature: Signature) -> str:
    """The signer of a 32-byte digest; refuses what Solidity's ECDSA.tryRecover refuses."""
    r, s = int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big")
    if signature.v not in (27, 28) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        raise SignatureError("malformed or malleable signature (v must be 27/28, s in the lower half)")
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            signature.r + signature.s + bytes([signature.v - 27]), digest, hasher=None
        )
    except ValueError as exc:
        raise SignatureError(f"the signature recovers to no key: {exc}") from None
    return _address_of(key.format(compressed=False))


@lru_cache(maxsize=4096)
def _address_of(public_key: bytes) -> str:
    """The checksummed address of an uncompressed public key (cached: the same payers sign)."""
    return to_checksum_address(keccak(public_key[1:])[-20:])


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@cache
def _type_hash(struct: str) -> bytes:
    return keccak(text=encode_type(struct))
