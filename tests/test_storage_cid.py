"""CIDs, dag-pb, the balanced DAG builder and CAR, without a daemon (kubo comparisons live in
test_storage_kubo.py)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.car import CarError, CarReader, car_header, car_section, read_car
from storage.cid import DAG_PB, RAW, Cid, decode_varint, encode_varint, raw_cid
from storage.dagpb import PBLink, decode_node, encode_node, encode_unixfs_file
from storage.errors import CidError, DagError, IntegrityError, StorageError
from storage.fetch import check_sha256, verify_file
from storage.unixfs import DagBuilder, hash_bytes, hash_file

EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # sha256 of no bytes, raw codec


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_roundTrips(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded) == (value, len(encoded))


def test_cid_parse_roundTripsV0AndV1() -> None:
    for text in (EMPTY_RAW, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "bafkqaaa"):
        cid = Cid.parse(text)
        assert str(cid) == text
        assert Cid.from_bytes(bytes(cid), v0=cid.version == 0) == cid
    assert Cid.parse(EMPTY_RAW).codec == RAW
    assert Cid.parse("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG").codec == DAG_PB


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA", "base32"),
        ("bafy!!!", "base32"),
        ("", "not a CID"),
        (
            "b" + base64.b32encode(b"\x01\x55\xa0\xe4\x02\x20" + bytes(32)).decode().lower().rstrip("="),
            "sha2-256",
        ),
    ],
)
def test_cid_parse_rejectsBadInputWithAHint(text: str, hint: str) -> None:
    with pytest.raises(CidError, match=hint):
        Cid.parse(text)


def test_rawCid_ofNoBytes_isTheKnownEmptyBlockCid() -> None:
    assert str(raw_cid(b"")) == EMPTY_RAW
    assert str(hash_bytes(b"").cid) == EMPTY_RAW


def test_dagPb_encodeDecode_roundTrips() -> None:
    leaves = [raw_cid(bytes([i])) for i in range(3)]
    data = encode_unixfs_file(6, [1, 2, 3])
    block = encode_node([PBLink(c, i + 1) for i, c in enumerate(leaves)], data)
    node = decode_node(block)
    assert [link.cid for link in node.links] == leaves
    assert [link.tsize for link in node.links] == [1, 2, 3]
    assert node.unixfs is not None
    assert (node.unixfs.type, node.unixfs.filesize, node.unixfs.blocksizes) == (2, 6, (1, 2, 3))
    assert block.index(b"\x12") < block.index(b"\x0a")  # links are written before data


def test_dagPb_decode_rejectsGarbage() -> None:
    with pytest.raises((DagError, CidError)):
        decode_node(b"\x12\x05\x0a\x03abc")


def _shape(n_leaves: int, max_links: int) -> list[int]:
    """How many interior nodes each level gets when `n_leaves` are built with `max_links`."""
    builder = DagBuilder(max_links=max_links, keep_dag=True)
    for i in range(n_leaves):
        builder.add_leaf(hashlib.sha256(bytes([i % 256, i // 256])).digest(), 1)
    root = builder.finish()
    counts: dict[int, int] = {}

    def depth(cid: Cid) -> int:
        if cid.codec == RAW:
            return 0
        level = 1 + max(depth(link.cid) for link in decode_node(builder.nodes[cid]).links)
        counts[level] = counts.get(level, 0) + 1
        return level

    depth(root)
    return [counts[k] for k in sorted(counts)]


@pytest.mark.parametrize(
    ("leaves", "shape"),
    [(1, []), (2, [1]), (3, [1]), (4, [2, 1]), (9, [3, 1]), (10, [4, 2, 1]), (28, [10, 4, 2, 1])],
)
def test_dagBuilder_fillsLevelsLeftToRightLikeKubo(leaves: int, shape: list[int]) -> None:
    """With 3 links per node: a full level gets a new root above it; partial subtrees keep full height."""
    assert _shape(leaves, 3) == shape


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=3000), chunk=st.sampled_from([1, 7, 64, 256]))
def test_hashFile_equalsHashBytes_forAnySizeAndChunking(
    tmp_path_factory: pytest.TempPathFactory, size: int, chunk: int
) -> None:
    data = hashlib.shake_256(f"{size}".encode()).digest(size) if size else b""
    path = tmp_path_factory.mktemp("h") / "f.bin"
    path.write_bytes(data)
    streamed = hash_file(path, keep_dag=True, chunk_size=chunk, chunks_per_read=3)
    in_memory = hash_bytes(data, keep_dag=True, chunk_size=chunk)
    assert streamed.cid == in_memory.cid
    assert streamed.sha256 == hashlib.sha256(data).hexdigest() == in_memory.sha256
    assert streamed.size == size
    assert streamed.dag is not None
    assert b"".join(data[leaf.offset : leaf.offset + leaf.size] for leaf in streamed.dag.leaves) == data
    assert all(
        leaf.cid == raw_cid(data[leaf.offset : leaf.offset + leaf.size]) for leaf in streamed.dag.leaves
    )


def test_hashFile_reportsProgressToTheEnd(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (5 * 1024 * 1024 + 3))
    seen: list[tuple[int, int]] = []
    hash_file(path, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5 * 1024 * 1024 + 3, 5 * 1024 * 1024 + 3)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_verifyFile_namesBothHashesOnMismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"model bytes")
    good = hash_bytes(b"model bytes")
    assert verify_file(path, good.cid, good.sha256).cid == good.cid
    wrong_sha = "ab" * 32
    with pytest.raises(IntegrityError) as info:
        verify_file(path, good.cid, wrong_sha)
    assert wrong_sha in str(info.value) and good.sha256 in str(info.value)
    other = hash_bytes(b"other bytes")
    with pytest.raises(IntegrityError, match=str(other.cid)):
        verify_file(path, other.cid, good.sha256)


def test_checkSha256_acceptsHexAnd0xAndRejectsTheRest() -> None:
    digest = hashlib.sha256(b"").hexdigest()
    assert check_sha256("0x" + digest.upper()) == digest
    with pytest.raises(StorageError, match="64 hex digits"):
        check_sha256("a5fd3b62")


def test_car_writeRead_roundTripsAndStreamsInPieces() -> None:
    blocks = [(raw_cid(bytes([i]) * i), bytes([i]) * i) for i in range(1, 6)]
    car = car_header([blocks[0][0]]) + b"".join(car_section(c, b) for c, b in blocks)
    roots, sections = read_car(car)
    assert roots == [blocks[0][0]] and sections == blocks
    reader, got = CarReader(), []
    for i in range(0, len(car), 3):
        got += reader.feed(car[i : i + 3])
    reader.close()
    assert got == blocks


def test_car_truncatedStream_isAnError() -> None:
    car = car_header([raw_cid(b"a")]) + car_section(raw_cid(b"a"), b"a")
    with pytest.raises(CarError, match="ended early"):
        read_car(car[:-1])
