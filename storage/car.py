"""CAR v1 (content-addressed archives): write and incrementally read, header in minimal DAG-CBOR.

A CAR v1 is varint(len(header)) + header, then sections varint(len(cid) + len(block)) + cid + block.
The header is the DAG-CBOR map {"roots": [CID, ...], "version": 1} (CIDs as tag 42 byte strings with
a leading 0x00). Readers here check nothing about the blocks: callers verify each against its CID.
"""

from __future__ import annotations

from typing import Any

from storage.cid import Cid, decode_varint, encode_varint
from storage.errors import CidError, StorageError

CAR_CONTENT_TYPE = "application/vnd.ipld.car"
MAX_SECTION = 4 * 1024 * 1024  # IPFS blocks are at most 2 MiB (4 MiB with bitswap's margin)


class CarError(StorageError):
    """A CAR stream is malformed or truncated."""


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | extra]) + value.to_bytes(width, "big")
    raise CarError(f"CBOR value {value} is too large")


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return _cbor_head(3, len(raw)) + raw


def car_header(roots: list[Cid]) -> bytes:
    """The length-prefixed CAR v1 header for `roots`."""
    body = bytearray(_cbor_head(5, 2) + _cbor_text("roots") + _cbor_head(4, len(roots)))
    for root in roots:
        link = b"\x00" + bytes(root)
        body += b"\xd8\x2a" + _cbor_head(2, len(link)) + link
    body += _cbor_text("version") + _cbor_head(0, 1)
    return encode_varint(len(body)) + bytes(body)


def car_section(cid: Cid, block: bytes) -> bytes:
    """One length-prefixed CAR section."""
    raw = bytes(cid)
    return encode_varint(len(raw) + len(block)) + raw + block


def _cbor_item(buf: bytes, pos: int) -> tuple[Any, int]:
    """Decode one CBOR item (the subset a CAR header uses)."""
    if pos >= len(buf):
        raise CarError("truncated CAR header")
    major, info = buf[pos] >> 5, buf[pos] & 31
    pos += 1
    if info < 24:
        value = info
    elif info <= 27:
        width = 1 << (info - 24)
        value, pos = int.from_bytes(buf[pos : pos + width], "big"), pos + width
    else:
        raise CarError("indefinite-length CBOR is not valid DAG-CBOR")
    if major == 0:
        return value, pos
    if major in (2, 3):
        raw, pos = buf[pos : pos + value], pos + value
        return (raw if major == 2 else raw.decode()), pos
    if major == 4:
        items = []
        for _ in range(value):
            item, pos = _cbor_item(buf, pos)
            items.append(item)
        return items, pos
    if major == 5:
        mapping = {}
        for _ in range(value):
            key, pos = _cbor_item(buf, pos)
            mapping[key], pos = _cbor_item(buf, pos)
        return mapping, pos
    if major == 6 and value == 42:
        raw, pos = _cbor_item(buf, pos)
        if not isinstance(raw, bytes) or raw[:1] != b"\x00":
            raise CarError("CID tag 42 without a 0x00-prefixed byte string")
        return Cid.from_bytes(raw[1:]), pos
    raise CarError(f"unexpected CBOR major type {major} in a CAR header")


def parse_header(body: bytes) -> list[Cid]:
    """The roots of a CAR v1 header body (without its length prefix)."""
    try:
        header, end = _cbor_item(body, 0)
    except CidError as exc:
        raise CarError(f"bad root CID in CAR header: {exc}") from None
    if end != len(body) or not isinstance(header, dict) or header.get("version") != 1:
        raise CarError(f"not a CAR v1 header: {header!r}")
    roots = header.get("roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, Cid) for r in roots):
        raise CarError("CAR header roots must be a list of CIDs")
    return roots


class CarReader:
    """Incremental CAR v1 parser: `feed()` bytes as they arrive, get back whole (cid, block) sections."""

    def __init__(self, max_section: int = MAX_SECTION) -> None:
        self.roots: list[Cid] | None = None
        self._buf = bytearray()
        self._max = max_section

    def _frame(self) -> bytes | None:
        """Pop one length-prefixed frame from the buffer, or None if it is not complete yet."""
        try:
            length, start = decode_varint(self._buf, 0)
        except CidError:
            if len(self._buf) >= 10:
                raise CarError("bad section length varint in CAR stream") from None
            return None
        if length > self._max:
            raise CarError(f"CAR section of {length} bytes exceeds the {self._max}-byte limit")
        if len(self._buf) < start + length:
            return None
        frame = bytes(self._buf[start : start + length])
        del self._buf[: start + length]
        return frame

    def feed(self, chunk: bytes) -> list[tuple[Cid, bytes]]:
        """Add bytes; return the sections they completed."""
        self._buf += chunk
        out: list[tuple[Cid, bytes]] = []
        while (frame := self._frame()) is not None:
            if self.roots is None:
                self.roots = parse_header(frame)
                continue
            try:
                cid, pos = Cid.read(frame, 0)
            except CidError as exc:
                raise CarError(f"bad CID in CAR section: {exc}") from None
            out.append((cid, frame[pos:]))
        return out

    def close(self) -> None:
        """Raise if the stream ended inside a section or before the header."""
        if self._buf or self.roots is None:
            raise CarError("CAR stream ended early (truncated section or missing header)")


def read_car(data: bytes) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
    """Parse a whole CAR v1 held in memory."""
    reader = CarReader()
    sections = reader.feed(data)
    reader.close()
    return reader.roots or [], sections
