"""The GGUF header check: real models pass, crafted and foreign files are refused before any load."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from storage.gguf import GgufError, HeaderLimits, read_header
from tests.gguf_models import write_tiny_llama


def _string(text: bytes, claimed: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if claimed is None else claimed) + text


def _header(
    *, version: int = 3, tensors: int = 0, kvs: list[bytes] | None = None, kv_count: int | None = None
):
    kvs = kvs or []
    count = len(kvs) if kv_count is None else kv_count
    return b"GGUF" + struct.pack("<IQQ", version, tensors, count) + b"".join(kvs)


def _kv_string(key: bytes, value: bytes, claimed: int | None = None) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value, claimed)


def _write(tmp_path: Path, content: bytes, padding: int = 1024) -> Path:
    path = tmp_path / "crafted.gguf"
    path.write_bytes(content + bytes(padding))
    return path


def test_readHeader_acceptsATinyModelWrittenByTheGgufPackage(tmp_path: Path) -> None:
    header = read_header(write_tiny_llama(tmp_path / "tiny.gguf"))
    assert (header.version, header.tensor_count, header.architecture) == (3, 21, "llama")
    assert header.metadata["llama.block_count"] == 2
    assert header.metadata["tokenizer.ggml.tokens"] == 3 + 256 + 10  # arrays as their item count
    assert header.data_offset % 32 == 0 and header.data_offset < header.file_size


def test_readHeader_acceptsTheRealGemmaModel(gemma_model: Path) -> None:
    header = read_header(gemma_model)
    assert header.architecture == "gemma3"
    assert header.tensor_count > 100
    assert header.metadata["tokenizer.ggml.tokens"] > 200_000


def test_readHeader_refusesAPlainTextFile(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("these are not weights\n")
    with pytest.raises(GgufError, match="does not start with the GGUF magic") as info:
        read_header(path)
    assert info.value.offset == 0 and "publish and host only GGUF files" in str(info.value)


def test_readHeader_refusesAnEmptyFileAndAMissingOne(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GgufError, match="GGUF magic"):
        read_header(empty)
    with pytest.raises(GgufError, match="cannot be read"):
        read_header(tmp_path / "absent.gguf")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_header(version=1), "version 1 is not supported"),
        (_header(tensors=2**63), "the tensor count is 9223372036854775808, above the limit"),
        (_header(tensors=60_000), "the tensor count is 60000, more than the"),
        (_header(kv_count=2**40), "the key/value count is 1099511627776, above the limit"),
        (_header(kvs=[_kv_string(b"general.name", b"x", claimed=2**40)]), "the length of the value of"),
        (_header(kvs=[_kv_string(b"general.name", b"x", claimed=5000)]), "more than the"),
        (_header(kvs=[_string(b"k") + struct.pack("<I", 99)]), "unknown value type 99"),
        (
            _header(kvs=[_string(b"tokens") + struct.pack("<IIQ", 9, 8, 2**34)]),
            "the item count of tokens is 17179869184, above the limit",
        ),
        (
            _header(kvs=[_string(b"nested") + struct.pack("<II", 9, 9)]),
            "array of unknown or nested type 9",
        ),
        (_header(kvs=[_kv_string(b"general.name", b"\xff\xfe")]), "is not UTF-8"),
        (
            _header(kvs=[_string(b"general.alignment") + struct.pack("<II", 4, 48)]),
            "general.alignment is 48, not a power of two",
        ),
    ],
)
def test_readHeader_refusesCraftedHeadersBeforeAnyLoad(tmp_path: Path, content: bytes, problem: str) -> None:
    with pytest.raises(GgufError, match=problem.replace("(", r"\(")):
        read_header(_write(tmp_path, content))


def _tensor(name: bytes, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


@pytest.mark.parametrize(
    ("tensor", "problem"),
    [
        (_tensor(b"w", [64] * 5), "has 5 dimensions"),
        (_tensor(b"w", [0]), "dimension 0 = 0"),
        (_tensor(b"w", [2**40]), "impossible in a file of"),
        (_tensor(b"w", [4000, 4000]), "claims 16000000 elements"),
        (_tensor(b"w", [64], ggml_type=1000), "unknown ggml type 1000"),
        (_tensor(b"w", [64], offset=2**40), "past the file's end"),
    ],
)
def test_readHeader_refusesImpossibleTensors(tmp_path: Path, tensor: bytes, problem: str) -> None:
    with pytest.raises(GgufError, match=problem):
        read_header(_write(tmp_path, _header(tensors=1) + tensor, padding=4096))


def test_readHeader_refusesATensorDescribedTwice(tmp_path: Path) -> None:
    content = _header(tensors=2) + _tensor(b"w", [64]) + _tensor(b"w", [64])
    with pytest.raises(GgufError, match="described twice"):
        read_header(_write(tmp_path, content, padding=4096))


def test_readHeader_refusesARealModelCutShort(tmp_path: Path) -> None:
    whole = write_tiny_llama(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:2000])  # inside the vocabulary
    with pytest.raises(GgufError, match="bytes left"):
        read_header(cut)


def test_readHeader_limitsAreConstructorArguments(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    with pytest.raises(GgufError, match="the tensor count is 21, above the limit of 20"):
        read_header(path, HeaderLimits(max_tensors=20))
