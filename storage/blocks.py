"""Where blocks come from: a kubo daemon or other nodes' trustless gateways; and the file DAG walk.

A BlockSource gives single blocks (`get_block`) and a file's raw leaves in order (`leaves`). Nothing a
source returns is trusted: `get_verified` checks every block against its CID, `plan_file` walks a
file's interior nodes that way, and the fetcher checks every leaf.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from storage.cid import DAG_PB, RAW, Cid
from storage.dagpb import UNIXFS_FILE, UNIXFS_RAW, decode_node
from storage.errors import DagError, GatewayError, IntegrityError, KuboError, StorageError
from storage.kubo import KuboClient
from storage.unixfs import FileDag, Leaf

RAW_CONTENT_TYPE = "application/vnd.ipld.raw"
MAX_BLOCK = 2 * 1024 * 1024 + 1024  # kubo refuses blocks over 2 MiB; a little slack for framing
_F = TypeVar("_F", bound=Callable[..., Any])


class BlockSource(Protocol):
    """Anything that hands out blocks by CID; callers verify what it returns."""

    name: str

    async def get_block(self, cid: Cid) -> bytes:
        """The block's bytes (unverified)."""
        ...

    def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes | bytearray]]:
        """The file's leaves from index `start` on, in order, each with its bytes (unverified)."""
        ...


def checks_its_leaves(method: _F) -> _F:
    """Mark a `leaves` method that hashes every leaf it yields against the leaf's CID itself (to fail
    over to another peer); the fetcher then skips its own second hash of the same bytes. A subclass that
    overrides `leaves` loses the mark, so anything that rewrites bytes after the check is re-hashed."""
    method.checks_leaves = True  # type: ignore[attr-defined]
    return method


def leaves_are_checked(source: BlockSource) -> bool:
    """True when `source`'s own `leaves` method checked each leaf against its CID (see above)."""
    return bool(getattr(type(source).leaves, "checks_leaves", False))


async def get_verified(source: BlockSource, cid: Cid) -> bytes:
    """A block whose bytes hash to `cid`, or IntegrityError naming both hashes."""
    block = await source.get_block(cid)
    if not cid.matches(block):
        raise IntegrityError(
            f"block {cid} from {source.name}",
            cid.digest.hex(),
            _sha256_hex(block),
            "the source sent wrong bytes",
        )
    return block


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def plan_file(source: BlockSource, root: Cid) -> FileDag:
    """Walk a UnixFS file's interior nodes (each verified) into its leaf table.

    Supported: raw leaves under dag-pb interior nodes, as `ipfs add --raw-leaves` makes them. A DAG
    that keeps file bytes inside dag-pb nodes is refused with a message saying how to re-publish.
    """
    if root.codec == RAW:
        return FileDag(root, -1, [Leaf(root, 0, -1)])  # one raw block: its size is known once fetched
    dag = FileDag(root, 0)
    await _walk(source, root, None, dag)
    return dag


async def _walk(source: BlockSource, cid: Cid, size: int | None, dag: FileDag) -> None:
    if cid.codec == RAW:
        if size is None:
            raise DagError(f"raw block {cid} has no size in its parent")
        if size > MAX_BLOCK:  # a hostile DAG must not make a reader allocate what it claims
            raise DagError(f"raw block {cid} claims {size} bytes; blocks are at most {MAX_BLOCK} bytes")
        dag.leaves.append(Leaf(cid, dag.size, size))
        dag.size += size
        return
    if cid.codec != DAG_PB:
        raise DagError(f"{cid} uses codec {cid.codec_name}: a UnixFS file has only dag-pb and raw blocks")
    block = await get_verified(source, cid)
    node = decode_node(block)
    fs = node.unixfs
    if fs is None or fs.type not in (UNIXFS_FILE, UNIXFS_RAW):
        raise DagError(f"{cid} is not a UnixFS file node (is it a directory? fetch the file's own CID)")
    if fs.data:
        raise DagError(
            f"{cid} keeps file bytes inside dag-pb nodes: the network needs raw leaves; publish with "
            "`ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576` (storage.publish does)"
        )
    if len(fs.blocksizes) != len(node.links):
        raise DagError(f"{cid} has {len(node.links)} links but {len(fs.blocksizes)} blocksizes")
    dag.nodes[cid] = block
    for link, child_size in zip(node.links, fs.blocksizes, strict=True):
        await _walk(source, link.cid, child_size, dag)


class KuboBlocks:
    """Blocks from a kubo daemon: single blocks with `block/get`, file bytes streamed with `cat`."""

    def __init__(self, kubo: KuboClient) -> None:
        self.kubo = kubo
        self.name = f"kubo at {kubo.api_url}"

    async def get_block(self, cid: Cid) -> bytes:
        """One block via block/get (kubo fetches it from peers when it lacks it)."""
        return await self.kubo.block_get(cid)

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes | bytearray]]:
        """One streamed read from the first wanted leaf's offset, cut into leaves; kubo prefetches ahead."""
        todo = dag.leaves[start:]
        if not todo:
            return
        if todo[0].size < 0:  # a single raw block of unknown size
            yield todo[0], await self.kubo.block_get(todo[0].cid)
            return
        stream = await self.kubo.open_cat(dag.root, offset=todo[0].offset)
        try:
            for leaf in todo:
                data = await stream.read(leaf.size)
                if len(data) < leaf.size:
                    raise KuboError(
                        "cat", f"stream of {dag.root} ended at byte {leaf.offset + len(data)} of {dag.size}"
                    )
                yield leaf, data
        finally:
            stream.close()


class GatewayBlocks:
    """Blocks from other nodes' trustless gateways (`GET /ipfs/{cid}?format=raw`), with failover.

    Leaves are requested `parallel` at a time, spread over the endpoints; a peer that fails or sends
    bytes that do not match the CID is skipped for that block and the next one is asked. Requests run
    in worker threads on kept-alive stdlib connections (httpx's parsing would cost more CPU than the
    hashing on a small machine), and each block is hashed in the thread that fetched it, so the fetcher
    need not hash it again.
    """

    def __init__(self, endpoints: Sequence[str], parallel: int = 4, timeout: float = 30.0) -> None:
        if not endpoints:
            raise StorageError("no gateway endpoints to fetch from: configure kubo or give peers' URLs")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        for url in self.endpoints:
            if urlsplit(url).scheme != "http" or not urlsplit(url).hostname:
                raise StorageError(f"gateway endpoint {url!r} must look like http://host:port")
        self.parallel = max(1, parallel)
        self.timeout = timeout
        self.name = f"gateways {', '.join(self.endpoints)}"
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._turn = 0

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        for conn in self._all:
            conn.close()
        self._all.clear()

    def _conn(self, endpoint: str) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        if endpoint not in conns:
            parts = urlsplit(endpoint)
            conns[endpoint] = http.client.HTTPConnection(
                parts.hostname or "", parts.port or 80, timeout=self.timeout
            )
            self._all.append(conns[endpoint])
        return conns[endpoint]

    def _get_sync(self, endpoint: str, cid: Cid) -> bytearray:
        conn = self._conn(endpoint)
        try:
            conn.request("GET", f"/ipfs/{cid}?format=raw", headers={"Accept": RAW_CONTENT_TYPE})
            response = conn.getresponse()
            if response.status != 200:
                conn.close()  # not drained: a peer's error body could be any size
                raise GatewayError(f"HTTP {response.status}")
            body = _read_body(response)
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        except GatewayError:
            if not response.isclosed():
                conn.close()
            raise
        return body

    def _get_verified_sync(self, cid: Cid, start: int) -> bytearray:
        """In a worker thread: ask each endpoint in turn from `start`, hash what arrives, return the
        first block that matches `cid` (hashing here keeps the event loop free and uses both cores)."""
        failures = []
        for i in range(len(self.endpoints)):
            endpoint = self.endpoints[(start + i) % len(self.endpoints)]
            try:
                block = self._get_sync(endpoint, cid)
            except (OSError, http.client.HTTPException, GatewayError) as exc:
                failures.append(f"{endpoint}: {type(exc).__name__} {exc}".strip())
                continue
            if cid.matches(block):
                return block
            failures.append(f"{endpoint}: sent bytes that do not hash to the CID")
        raise GatewayError(f"no gateway delivered block {cid}: " + "; ".join(failures))

    async def get_block(self, cid: Cid) -> bytes:
        """The first block that matches `cid`, trying each endpoint in turn from a rotating start."""
        self._turn += 1
        return bytes(await asyncio.to_thread(self._get_verified_sync, cid, self._turn))

    @checks_its_leaves
    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytearray]]:
        """Leaves in order, `parallel` requests in flight, each already checked against its CID."""
        todo = deque(dag.leaves[start:])
        running: deque[tuple[Leaf, asyncio.Future[bytearray]]] = deque()
        try:
            while todo or running:
                while todo and len(running) < self.parallel:
                    leaf = todo.popleft()
                    self._turn += 1
                    future = asyncio.ensure_future(
                        asyncio.to_thread(self._get_verified_sync, leaf.cid, self._turn)
                    )
                    running.append((leaf, future))
                leaf, future = running.popleft()
                yield leaf, await future
        finally:
            for _, future in running:
                future.cancel()


def _read_body(response: http.client.HTTPResponse) -> bytearray:
    """A block body read straight into one buffer (no copies); GatewayError when it is too big."""
    length = response.getheader("Content-Length")
    if length is None or not length.isdigit():
        body = response.read(MAX_BLOCK + 1)
        if len(body) > MAX_BLOCK:
            raise GatewayError(f"block larger than {MAX_BLOCK} bytes")
        if not response.isclosed():
            response.read()
        return bytearray(body)
    if int(length) > MAX_BLOCK:
        raise GatewayError(f"block larger than {MAX_BLOCK} bytes")
    buf = bytearray(int(length))
    view, filled = memoryview(buf), 0
    while filled < len(buf):
        got = response.readinto(view[filled:])
        if not got:
            raise http.client.IncompleteRead(bytes(buf[:filled]), len(buf) - filled)
        filled += got
    return buf
