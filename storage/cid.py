"""CIDs (v0 and v1), multihashes and the multibase encodings IPFS uses, written out by hand.

Only what models on IPFS need: sha2-256 (and identity) multihashes, the raw (0x55) and dag-pb
(0x70) codecs, base32 lower (`b...`) for CIDv1 and base58btc for CIDv0 (`Qm...`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from storage.errors import CidError

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
IDENTITY = 0x00
CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 varint, as used by multiformats and protobuf."""
    if value < 0:
        raise CidError(f"varint cannot encode a negative number ({value})")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Read an unsigned varint at `pos`; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise CidError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CidError("varint longer than 9 bytes")


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        index = _B58.find(char)
        if index < 0:
            raise CidError(f"{char!r} is not a base58btc character")
        number = number * 58 + index
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


@dataclass(frozen=True, slots=True)
class Cid:
    """A content identifier: version, codec and a sha2-256 or identity multihash."""

    version: int
    codec: int
    hash_code: int
    digest: bytes

    @classmethod
    def v1(cls, codec: int, digest: bytes) -> Cid:
        """A CIDv1 over a sha2-256 digest."""
        return cls(1, codec, SHA2_256, digest)

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse `Qm...` (v0) or a base32 `b...` (v1) string; raise CidError naming the problem."""
        text = text.strip()
        if len(text) == 46 and text.startswith("Qm"):
            return cls.from_bytes(_b58decode(text), v0=True)
        if not text.startswith("b") or len(text) < 2:
            raise CidError(
                f"{text!r} is not a CID this network uses: expected CIDv1 in base32 ('b...', "
                "as `ipfs add --cid-version=1` prints) or CIDv0 ('Qm...')"
            )
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise CidError(f"{text!r} is not valid base32: {exc}") from None
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview, v0: bool = False) -> Cid:
        """Decode binary CID bytes (a bare multihash when `v0`); the whole input must be used."""
        cid, end = cls.read(raw, 0, v0=v0)
        if end != len(raw):
            raise CidError(f"{len(raw) - end} trailing bytes after the CID")
        return cid

    @classmethod
    def read(cls, raw: bytes | memoryview, pos: int, v0: bool = False) -> tuple[Cid, int]:
        """Decode a binary CID starting at `pos`; return it and the position after it."""
        if v0 or raw[pos : pos + 2] == b"\x12\x20":
            version, codec = 0, DAG_PB
        else:
            version, pos = decode_varint(raw, pos)
            if version != 1:
                raise CidError(f"CID version {version} is not supported (only 0 and 1)")
            codec, pos = decode_varint(raw, pos)
        hash_code, pos = decode_varint(raw, pos)
        length, pos = decode_varint(raw, pos)
        if hash_code not in (SHA2_256, IDENTITY) or (hash_code == SHA2_256 and length != 32):
            raise CidError(f"multihash 0x{hash_code:x}/{length} is not supported (only sha2-256)")
        digest = bytes(raw[pos : pos + length])
        if len(digest) != length:
            raise CidError("truncated multihash digest")
        return cls(version, codec, hash_code, digest), pos + length

    @property
    def multihash(self) -> bytes:
        """The multihash: hash code, digest length, digest."""
        return encode_varint(self.hash_code) + encode_varint(len(self.digest)) + self.digest

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return _b58encode(self.multihash)
        return "b" + base64.b32encode(bytes(self)).decode().lower().rstrip("=")

    def __repr__(self) -> str:
        return f"Cid({self})"

    @property
    def codec_name(self) -> str:
        """`raw`, `dag-pb` or the codec number in hex."""
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")

    def matches(self, block: bytes | memoryview) -> bool:
        """True when `block` hashes to this CID's multihash."""
        if self.hash_code == IDENTITY:
            return bytes(block) == self.digest
        return hashlib.sha256(block).digest() == self.digest


def raw_cid(data: bytes | memoryview) -> Cid:
    """CIDv1 of a raw block (a raw leaf)."""
    return Cid.v1(RAW, hashlib.sha256(data).digest())


def dag_pb_cid(block: bytes) -> Cid:
    """CIDv1 of an encoded dag-pb block."""
    return Cid.v1(DAG_PB, hashlib.sha256(block).digest())


def as_cid(value: Cid | str) -> Cid:
    """Accept a Cid or its string form."""
    return value if isinstance(value, Cid) else Cid.parse(value)
