"""dag-pb and UnixFS protobuf encoding, by hand (the schemas are tiny).

PBNode {Links(2) repeated PBLink, Data(1) bytes}; links are written before data, as dag-pb requires.
PBLink {Hash(1) bytes, Name(2) string, Tsize(3) uint64}.
UnixFS Data {Type(1), Data(2), filesize(3), blocksizes(4) repeated}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.cid import Cid, decode_varint, encode_varint
from storage.errors import CidError, DagError

UNIXFS_RAW, UNIXFS_DIRECTORY, UNIXFS_FILE = 0, 1, 2
_VARINT, _BYTES = 0, 2


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link: child CID, name (empty for file chunks) and cumulative size of the child DAG."""

    cid: Cid
    tsize: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS Data message of a file node."""

    type: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb node."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None
    unixfs: UnixFSData | None = field(default=None, compare=False)


def _key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _BYTES) + encode_varint(len(value)) + value


def _varint_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + encode_varint(value)


def encode_unixfs_file(filesize: int, blocksizes: list[int] | tuple[int, ...], data: bytes = b"") -> bytes:
    """UnixFS Data for a file node; kubo leaves Data out of interior nodes."""
    out = bytearray(_varint_field(1, UNIXFS_FILE))
    if data:
        out += _bytes_field(2, data)
    out += _varint_field(3, filesize)
    for size in blocksizes:
        out += _varint_field(4, size)
    return bytes(out)


def encode_node(links: list[PBLink] | tuple[PBLink, ...], data: bytes | None) -> bytes:
    """Encode a dag-pb node: all links (Hash, Name, Tsize), then Data."""
    out = bytearray()
    for link in links:
        body = (
            _bytes_field(1, bytes(link.cid))
            + _bytes_field(2, link.name.encode())
            + _varint_field(3, link.tsize)
        )
        out += _bytes_field(2, body)
    if data is not None:
        out += _bytes_field(1, data)
    return bytes(out)


def _fields(buf: bytes | memoryview) -> list[tuple[int, int | memoryview]]:
    """Split a protobuf message into (field number, value) pairs."""
    view, pos, out = memoryview(buf), 0, []
    while pos < len(view):
        key, pos = decode_varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = decode_varint(view, pos)
            out.append((number, value))
        elif wire == _BYTES:
            length, pos = decode_varint(view, pos)
            if pos + length > len(view):
                raise DagError("protobuf field runs past the end of the block")
            out.append((number, view[pos : pos + length]))
            pos += length
        else:
            raise DagError(f"unexpected protobuf wire type {wire} in field {number}")
    return out


def _decode_link(buf: memoryview) -> PBLink:
    cid, name, tsize = None, "", 0
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, memoryview):
            cid = Cid.from_bytes(value)
        elif number == 2 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == 3 and isinstance(value, int):
            tsize = value
    if cid is None:
        raise DagError("dag-pb link without a Hash")
    return PBLink(cid, tsize, name)


def decode_unixfs(buf: bytes | memoryview) -> UnixFSData:
    """Decode a UnixFS Data message (blocksizes packed or not)."""
    kind, data, filesize, sizes = None, b"", None, []
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, memoryview):
            data = bytes(value)
        elif number == 3 and isinstance(value, int):
            filesize = value
        elif number == 4:
            if isinstance(value, int):
                sizes.append(value)
            else:
                pos = 0
                while pos < len(value):
                    size, pos = decode_varint(value, pos)
                    sizes.append(size)
    if kind is None:
        raise DagError("UnixFS Data without a Type")
    return UnixFSData(kind, data, filesize, tuple(sizes))


def decode_node(block: bytes | memoryview) -> PBNode:
    """Decode a dag-pb block, and its UnixFS Data when it has one."""
    links, data = [], None
    try:
        for number, value in _fields(block):
            if number == 2 and isinstance(value, memoryview):
                links.append(_decode_link(value))
            elif number == 1 and isinstance(value, memoryview):
                data = bytes(value)
            else:
                raise DagError(f"unexpected field {number} in a dag-pb node")
        unixfs = decode_unixfs(data) if data is not None else None
    except CidError as exc:
        raise DagError(f"malformed dag-pb block: {exc}") from None
    return PBNode(tuple(links), data, unixfs)
