"""A small async client for the kubo RPC API (`/api/v0/...`) on httpx.

Only what the network needs: add (CIDv1, raw leaves, 1 MiB chunks, pin), pin, cat/get streaming,
block get, dag export as CAR, id, swarm connect/peers, repo stat, version. Every failure becomes a
KuboError with the command and kubo's own message, or KuboUnavailableError when nothing answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import anyio
import httpx

from storage.cid import Cid, as_cid
from storage.errors import KuboError, KuboUnavailableError
from storage.unixfs import CHUNK_SIZE, Progress

DEFAULT_API = "http://127.0.0.1:5001"


@dataclass(frozen=True, slots=True)
class AddResult:
    """What `add` stored: the root CID, the file's size and the name kubo reported."""

    cid: Cid
    size: int
    name: str


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """`ipfs id`: the peer id, its listen addresses and agent version."""

    peer_id: str
    addresses: tuple[str, ...]
    agent_version: str


@dataclass(frozen=True, slots=True)
class RepoStat:
    """`ipfs repo stat`: bytes used and allowed, block count, path and repo version."""

    repo_size: int
    storage_max: int
    num_objects: int
    repo_path: str
    version: str


class ByteStream:
    """A file's bytes from kubo, read by a worker thread with the stdlib HTTP client.

    Bulk transfer bypasses httpx on purpose: its pure-Python stream parsing costs more CPU than kubo
    spends serving the file, and on two cores that halves the throughput.
    """

    def __init__(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, source: str
    ) -> None:
        self._conn, self._response, self.source = conn, response, source

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, filled = memoryview(buf), 0
        while filled < n:
            got = self._response.readinto(view[filled:])
            if not got:
                break
            filled += got
        view.release()  # a bytearray with a live view cannot be shortened
        if filled < n:
            del buf[filled:]
        return buf

    async def read(self, n: int) -> bytearray:
        """Exactly `n` bytes, or fewer only where the file (or the connection) ends."""
        try:
            return await asyncio.to_thread(self._read, n)
        except (OSError, http.client.HTTPException) as exc:
            raise KuboError("cat", f"stream from {self.source} broke: {type(exc).__name__} {exc}") from None

    def close(self) -> None:
        """Drop the connection."""
        self._conn.close()


def _multiaddr_url(addr: str) -> str | None:
    """`/ip4/127.0.0.1/tcp/8080` -> `http://127.0.0.1:8080` (None for what is not plain TCP)."""
    match = re.fullmatch(r"/(ip4|ip6|dns|dns4|dns6)/([^/]+)/tcp/(\d+)", addr)
    if not match:
        return None
    host = f"[{match.group(2)}]" if match.group(1) == "ip6" else match.group(2)
    return f"http://{host}:{match.group(3)}"


def _bool(value: bool) -> str:
    return "true" if value else "false"


class KuboClient:
    """Async kubo RPC client; use `async with KuboClient(url) as kubo:` or call `aclose()`."""

    def __init__(
        self,
        api_url: str = DEFAULT_API,
        gateway_url: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.chunk_size = chunk_size
        self._http = httpx.AsyncClient(
            base_url=f"{self.api_url}/api/v0/",
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    @asynccontextmanager
    async def _stream(
        self, command: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """POST a command and yield the streaming response, errors mapped to KuboError."""
        try:
            async with self._http.stream("POST", command, params=params, **kwargs) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise KuboError(command, _error_message(response), response.status_code)
                yield response
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise KuboUnavailableError(self.api_url, type(exc).__name__) from None
            raise KuboError(command, f"{type(exc).__name__}: {exc or 'connection broken'}") from None

    async def _call(self, command: str, params: dict[str, Any] | None = None) -> Any:
        """POST a command and decode its (last) JSON answer."""
        async with self._stream(command, params) as response:
            body = await response.aread()
        lines = [line for line in body.splitlines() if line.strip()]
        if not lines:
            return {}
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            raise KuboError(command, f"answer is not JSON: {body[:200]!r}") from None

    async def version(self) -> str:
        """The daemon's kubo version, e.g. `0.39.0`."""
        return str((await self._call("version"))["Version"])

    async def id(self) -> PeerInfo:
        """The daemon's peer id and listen addresses."""
        answer = await self._call("id")
        return PeerInfo(answer["ID"], tuple(answer.get("Addresses") or ()), answer.get("AgentVersion", ""))

    async def add(self, path: str | Path, pin: bool = True, progress: Progress | None = None) -> AddResult:
        """Add a file as CIDv1, raw leaves, 1 MiB chunks (the network's CIDs), pinned by default."""
        path = Path(path)
        size = path.stat().st_size
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        params = {
            "cid-version": 1,
            "raw-leaves": "true",
            "chunker": f"size-{self.chunk_size}",
            "pin": _bool(pin),
            "progress": _bool(progress is not None),
        }
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        body = _multipart_body(path, head, tail, self.chunk_size)
        result: dict[str, Any] = {}
        async with self._stream("add", params, content=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "Hash" in event:
                    result = event
                elif progress is not None and "Bytes" in event:
                    progress(int(event["Bytes"]), size)
        if "Hash" not in result:
            raise KuboError("add", f"no CID in the answer for {path}")
        return AddResult(Cid.parse(result["Hash"]), int(result.get("Size", size)), result.get("Name", ""))

    async def pin_add(self, cid: Cid | str) -> None:
        """Pin a DAG recursively (fetches missing blocks from peers first)."""
        await self._call("pin/add", {"arg": str(as_cid(cid)), "recursive": "true"})

    async def pin_rm(self, cid: Cid | str) -> None:
        """Unpin a DAG so kubo's GC may drop it."""
        await self._call("pin/rm", {"arg": str(as_cid(cid))})

    async def pins(self) -> set[Cid]:
        """The recursively pinned roots."""
        answer = await self._call("pin/ls", {"type": "recursive"})
        return {Cid.parse(key) for key in answer.get("Keys", {})}

    async def cat(self, cid: Cid | str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream a UnixFS file's bytes from `offset` (for resuming), `length` bytes at most."""
        params: dict[str, Any] = {"arg": str(as_cid(cid)), "offset": offset}
        if length is not None:
            params["length"] = length
        async with self._stream("cat", params) as response:
            async for chunk in response.aiter_raw(self.chunk_size):
                yield chunk

    async def find_gateway(self) -> str | None:
        """The daemon's own HTTP gateway URL (from `Addresses.Gateway`), or None if it has none."""
        if self.gateway_url is None:
            value = (await self._call("config", {"arg": "Addresses.Gateway"})).get("Value")
            addrs = value if isinstance(value, list) else [value] if value else []
            urls = [url for url in map(_multiaddr_url, addrs) if url]
            self.gateway_url = urls[0] if urls else ""
        return self.gateway_url or None

    def _open(self, base: str, method: str, target: str, headers: dict[str, str]) -> ByteStream:
        parts = urlsplit(base)
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout
        )
        try:
            conn.request(method, target, headers=headers)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise KuboUnavailableError(base, f"{type(exc).__name__} {exc}") from None
        if response.status not in (200, 206):
            message = response.read(2000).decode(errors="replace").strip()
            conn.close()
            raise KuboError(f"{method} {target.split('?')[0]}", message, response.status)
        return ByteStream(conn, response, base)

    async def open_cat(self, cid: Cid | str, offset: int = 0) -> ByteStream:
        """A file's bytes from `offset` on, read in a thread: from the daemon's gateway when it has
        one (several times faster than RPC `cat`), else from RPC `cat`. The caller verifies them."""
        root = str(as_cid(cid))
        gateway = await self.find_gateway()
        if gateway:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                stream = await asyncio.to_thread(self._open, gateway, "GET", f"/ipfs/{root}", headers)
            except KuboError:
                pass  # the gateway may be disabled or refuse: the RPC API still serves the bytes
            else:
                if offset == 0 or stream._response.status == 206:
                    return stream
                stream.close()
        target = f"/api/v0/cat?arg={quote(root)}&offset={offset}"
        return await asyncio.to_thread(self._open, self.api_url, "POST", target, {})

    async def get(self, cid: Cid | str) -> AsyncIterator[bytes]:
        """Stream `ipfs get` output: a tar archive holding the file under its CID."""
        async with self._stream("get", {"arg": str(as_cid(cid)), "archive": "true"}) as response:
            async for chunk in response.aiter_raw(self.chunk_size):
                yield chunk

    async def dag_export(self, cid: Cid | str) -> AsyncIterator[bytes]:
        """Stream the DAG under `cid` as a CAR v1 (depth-first, no duplicates)."""
        async with self._stream("dag/export", {"arg": str(as_cid(cid))}) as response:
            async for chunk in response.aiter_raw(self.chunk_size):
                yield chunk

    async def block_get(self, cid: Cid | str) -> bytes:
        """One block's bytes, from the local store or from peers (the caller verifies them)."""
        async with self._stream("block/get", {"arg": str(as_cid(cid))}) as response:
            return await response.aread()

    async def swarm_connect(self, multiaddr: str) -> None:
        """Connect to a peer, e.g. `/ip4/127.0.0.1/tcp/4001/p2p/12D3...`."""
        await self._call("swarm/connect", {"arg": multiaddr})

    async def swarm_peers(self) -> set[str]:
        """Peer ids of the connected peers."""
        answer = await self._call("swarm/peers")
        return {peer["Peer"] for peer in answer.get("Peers") or ()}

    async def repo_stat(self) -> RepoStat:
        """Repository size, limit and object count."""
        a = await self._call("repo/stat")
        return RepoStat(
            int(a["RepoSize"]), int(a["StorageMax"]), int(a["NumObjects"]), a["RepoPath"], a["Version"]
        )


def _error_message(response: httpx.Response) -> str:
    """kubo's error text: JSON {"Message": ...} or plain text."""
    try:
        return str(response.json().get("Message", response.text))
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason_phrase


async def _multipart_body(path: Path, head: bytes, tail: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    """Stream one file as a multipart body without blocking the event loop on disk reads."""
    yield head
    fd = await anyio.to_thread.run_sync(os.open, str(path), os.O_RDONLY)
    try:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, chunk_size):
            yield chunk
    finally:
        os.close(fd)
    yield tail
