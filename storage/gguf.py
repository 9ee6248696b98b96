"""A bounded check of a GGUF file's header, read without loading the file.

llama.cpp trusts the counts and lengths in a GGUF header and allocates for them; a crafted file with
a valid magic and an absurd tensor count or string length makes it allocate or read far past the
file. This reader walks the header (magic, version, tensor and key/value counts, every key/value
pair, every tensor description) and refuses the file the moment any count, length, type or offset
cannot fit the file it is in, before a byte of weights is read. We write it ourselves because the
`gguf` package's reader memory-maps the file and builds arrays from those same untrusted counts.

Format (little-endian): b"GGUF", u32 version (2 or 3), u64 tensor count, u64 key/value count, the
key/value pairs (string key, u32 value type, value), the tensor infos (string name, u32 dims, u64 per
dim, u32 ggml type, u64 offset into the data section), then padding to the alignment and the data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# Fixed-size value types: GGUF type code -> struct format.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GgufError(StorageError):
    """The file is not a GGUF model llama.cpp can safely be handed; `offset` is where reading stopped."""

    def __init__(self, path: Path, offset: int, problem: str) -> None:
        self.path, self.offset, self.problem = path, offset, problem
        super().__init__(
            f"{path} is not a valid GGUF model file ({problem}, at byte {offset}): publish and host only "
            "GGUF files written by llama.cpp's tools or the gguf package"
        )


@dataclass(frozen=True)
class HeaderLimits:
    """Bounds a header must keep besides fitting its file (defaults far above any real model)."""

    max_tensors: int = 65_536
    max_kv: int = 65_536
    max_string_bytes: int = 16 << 20  # a chat template or a merges entry; not a model's worth of text
    max_array_items: int = 16 << 20  # vocabularies are ~256K entries
    max_ggml_type: int = 64  # ggml's type codes are below this


@dataclass(frozen=True)
class GgufHeader:
    """What the check read: enough to know what the file claims to be."""

    version: int
    tensor_count: int
    metadata: dict[str, object]  # scalar and string values; arrays as their item count
    data_offset: int  # where the tensor data starts (after the header and its alignment padding)
    file_size: int

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None


class _Reader:
    """Reads from the header, refusing any read that would pass the end of the file."""

    def __init__(self, stream: BinaryIO, path: Path, size: int) -> None:
        self.stream, self.path, self.size, self.offset = stream, path, size, 0

    def fail(self, problem: str) -> GgufError:
        return GgufError(self.path, self.offset, problem)

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.offset:
            raise self.fail(f"{what} needs {n} bytes but the file has {self.size - self.offset} left")
        data = self.stream.read(n)
        if len(data) != n:
            raise self.fail(f"{what} was cut short: the file changed while it was read")
        self.offset += n
        return data

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, maximum: int, item_bytes: int) -> int:
        """A u64 count that must stay under `maximum` and fit the rest of the file at `item_bytes` each."""
        n = int(self.scalar("Q", what))
        if n > maximum:
            raise self.fail(f"{what} is {n}, above the limit of {maximum}")
        if n * item_bytes > self.size - self.offset:
            raise self.fail(f"{what} is {n}, more than the {self.size - self.offset} bytes left can hold")
        return n

    def string(self, what: str, limits: HeaderLimits) -> str:
        n = self.count(f"the length of {what}", limits.max_string_bytes, 1)
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def _min_bytes(value_type: int) -> int:
    """The fewest bytes one value of this type takes (a string's length prefix alone is 8)."""
    if value_type in _SCALARS:
        return struct.calcsize(_SCALARS[value_type])
    return 8 if value_type == _STRING else 12  # an array: item type + count


def _value(r: _Reader, value_type: int, key: str, limits: HeaderLimits, depth: int = 0) -> object:
    if value_type in _SCALARS:
        return r.scalar(_SCALARS[value_type], f"the value of {key}")
    if value_type == _STRING:
        return r.string(f"the value of {key}", limits)
    if value_type != _ARRAY:
        raise r.fail(f"{key} has unknown value type {value_type}")
    if depth > 0:
        raise r.fail(f"{key} nests arrays, which GGUF models do not use")
    item_type = int(r.scalar("I", f"the item type of {key}"))
    if item_type not in _SCALARS and item_type != _STRING:
        raise r.fail(f"{key} is an array of unknown or nested type {item_type}")
    n = r.count(f"the item count of {key}", limits.max_array_items, _min_bytes(item_type))
    if item_type in _SCALARS:
        r.take(n * struct.calcsize(_SCALARS[item_type]), f"the items of {key}")
    else:
        for i in range(n):
            r.string(f"item {i} of {key}", limits)
    return n


def _tensor_info(r: _Reader, index: int, limits: HeaderLimits) -> tuple[str, int]:
    """Check one tensor description; return its name and its data offset."""
    name = r.string(f"the name of tensor {index}", limits)
    dims = int(r.scalar("I", f"the dimension count of tensor {name}"))
    if not 1 <= dims <= MAX_DIMS:
        raise r.fail(f"tensor {name} has {dims} dimensions (1 to {MAX_DIMS} allowed)")
    elements = 1
    for d in range(dims):
        extent = int(r.scalar("Q", f"dimension {d} of tensor {name}"))
        if extent == 0 or extent > r.size:
            raise r.fail(
                f"tensor {name} has dimension {d} = {extent}, impossible in a file of {r.size} bytes"
            )
        elements *= extent
    ggml_type = int(r.scalar("I", f"the type of tensor {name}"))
    if ggml_type >= limits.max_ggml_type:
        raise r.fail(f"tensor {name} has unknown ggml type {ggml_type}")
    offset = int(r.scalar("Q", f"the data offset of tensor {name}"))
    # The tightest real quantisation packs a weight into under 2 bits: anything claiming more elements
    # than 8 per byte of the whole file cannot be there.
    if elements > 8 * r.size or offset >= r.size:
        raise r.fail(f"tensor {name} claims {elements} elements at offset {offset}, past the file's end")
    return name, offset


def read_header(path: str | Path, limits: HeaderLimits | None = None) -> GgufHeader:
    """Check `path`'s GGUF header against its size and `limits`; raise GgufError on the first problem.

    Reads only the header (a few MB at most for a real model's vocabulary), never the tensor data.
    """
    path, limits = Path(path), limits or HeaderLimits()
    try:
        size = path.stat().st_size
        stream = path.open("rb")
    except OSError as exc:
        raise GgufError(path, 0, f"cannot be read: {exc.strerror or exc}") from exc
    with stream:
        r = _Reader(stream, path, size)
        if r.take(min(4, size), "the magic") != MAGIC:
            r.offset = 0
            raise r.fail("it does not start with the GGUF magic: it is not a GGUF file")
        version = int(r.scalar("I", "the version"))
        if version not in SUPPORTED_VERSIONS:
            raise r.fail(f"GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
        tensors = r.count("the tensor count", limits.max_tensors, 8 + 4 + 8 + 4 + 8)
        kv = r.count("the key/value count", limits.max_kv, 8 + 4 + 1)
        metadata: dict[str, object] = {}
        for i in range(kv):
            key = r.string(f"key {i}", limits)
            value_type = int(r.scalar("I", f"the value type of {key}"))
            metadata[key] = _value(r, value_type, key, limits)
        names = set()
        for i in range(tensors):
            name, _ = _tensor_info(r, i, limits)
            if name in names:
                raise r.fail(f"tensor {name} is described twice")
            names.add(name)
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 16:
            raise r.fail(f"general.alignment is {alignment!r}, not a power of two up to 65536")
        if alignment & (alignment - 1):
            raise r.fail(f"general.alignment is {alignment}, not a power of two")
        data_offset = -(-r.offset // alignment) * alignment
        if tensors and data_offset >= size:
            raise r.fail(f"the tensor data would start at byte {data_offset}, past the file's end")
        return GgufHeader(version, tensors, metadata, data_offset, size)
