"""An IPFS trustless gateway (the HTTP routes) over the files a node hosts (storage.blockstore).

`GET|HEAD /ipfs/{cid}` with `Accept: application/vnd.ipld.raw` (or `?format=raw`) returns one block;
with `application/vnd.ipld.car` (or `?format=car`) a CAR v1 of the file's DAG in depth-first order
(`dag-scope=block|entity|all`, `entity-bytes=from:to`, `dups=y|n`). Nothing is deserialised: clients
verify every block against its CID. Blocks are read from the model files themselves (raw leaves are
byte ranges) and re-hashed before they are sent, so a corrupt disk is reported rather than served.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from storage.blocks import RAW_CONTENT_TYPE
from storage.blockstore import BlockStore
from storage.car import CAR_CONTENT_TYPE, car_header, car_section
from storage.cid import DAG_PB, IDENTITY, Cid
from storage.dagpb import decode_node
from storage.errors import CidError, DagError, StorageError

IMMUTABLE = "public, max-age=29030400, immutable"


def _negotiate(request: Request) -> str | None:
    """`raw`, `car`, or None; the `format` query parameter wins over Accept."""
    fmt = request.query_params.get("format")
    if fmt:
        return fmt if fmt in ("raw", "car") else "unsupported"
    accept = request.headers.get("accept", "")
    if not accept or accept.strip() == "*/*":
        return None
    if RAW_CONTENT_TYPE in accept:
        return "raw"
    if CAR_CONTENT_TYPE in accept:
        return "car"
    return "unsupported"


def _car_params(request: Request) -> tuple[str, bool, tuple[int, int | None] | None]:
    """dag-scope, dups and entity-bytes of a CAR request; ValueError on bad values."""
    accept = request.headers.get("accept", "")
    dups_match = re.search(r"dups=([yn])", accept)
    dups = request.query_params.get("car-dups") or (dups_match.group(1) if dups_match else "n")
    order = request.query_params.get("car-order") or (re.search(r"order=(\w+)", accept) or [None, "dfs"])[1]
    version = (
        request.query_params.get("car-version") or (re.search(r"version=(\d+)", accept) or [None, "1"])[1]
    )
    if dups not in ("y", "n") or order not in ("dfs", "unk") or version != "1":
        raise ValueError("supported CAR variant: version=1; order=dfs; dups=y or n")
    scope = request.query_params.get("dag-scope", "all")
    if scope not in ("block", "entity", "all"):
        raise ValueError(f"dag-scope must be block, entity or all, not {scope!r}")
    span = None
    if "entity-bytes" in request.query_params:
        span = _entity_bytes(request.query_params["entity-bytes"])
        scope = "entity"
    return scope, dups == "y", span


def _entity_bytes(text: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"(-?\d+):(-?\d+|\*)", text)
    if not match:
        raise ValueError(f"entity-bytes must be from:to (integers, `to` may be *), not {text!r}")
    end = None if match.group(2) == "*" else int(match.group(2))
    return int(match.group(1)), end


def _resolve_span(span: tuple[int, int | None] | None, size: int) -> tuple[int, int]:
    """entity-bytes as an inclusive [first, last] byte range of a file of `size` bytes."""
    if span is None:
        return 0, size - 1
    first, last = span
    first = max(size + first, 0) if first < 0 else first
    last = size - 1 if last is None else (size + last if last < 0 else min(last, size - 1))
    return first, last


async def _dfs(
    store: BlockStore, cid: Cid, first: int, last: int, offset: int, dups: bool, seen: set[Cid]
) -> AsyncIterator[tuple[Cid, bytes]]:
    """Blocks of the DAG under `cid` that cover bytes [first, last], depth-first, in link order."""
    if cid.hash_code == IDENTITY or (cid in seen and not dups):
        return
    block = await store.get(cid)
    if block is None:
        raise StorageError(f"block {cid} is missing from the store")
    seen.add(cid)
    yield cid, block
    if cid.codec != DAG_PB:
        return
    node = decode_node(block)
    sizes = node.unixfs.blocksizes if node.unixfs else ()
    base = offset + (len(node.unixfs.data) if node.unixfs else 0)
    for i, link in enumerate(node.links):
        size = sizes[i] if i < len(sizes) else None
        if size is not None and (base + size - 1 < first or base > last):
            base += size
            continue
        async for item in _dfs(store, link.cid, first, last, base, dups, seen):
            yield item
        base += size or 0


def _file_size(cid: Cid, block: bytes) -> int:
    if cid.codec != DAG_PB:
        return len(block)
    node = decode_node(block)
    return node.unixfs.filesize or 0 if node.unixfs else 0


def gateway_router(store: BlockStore) -> APIRouter:
    """FastAPI routes for `/ipfs/{cid}` (GET and HEAD) serving `store` as a trustless gateway."""
    router = APIRouter()

    @router.api_route("/ipfs/{cid}", methods=["GET", "HEAD"])
    @router.api_route("/ipfs/{cid}/{path:path}", methods=["GET", "HEAD"])
    async def ipfs(cid: str, request: Request, path: str = "") -> Response:
        fmt = _negotiate(request)
        if fmt is None:
            return _error(
                400, "trustless gateway: send Accept: application/vnd.ipld.raw or application/vnd.ipld.car"
            )
        if fmt == "unsupported":
            return _error(406, "only application/vnd.ipld.raw and application/vnd.ipld.car are served here")
        try:
            root = Cid.parse(cid)
        except CidError as exc:
            return _error(400, str(exc))
        if path:
            return _error(
                400, "paths inside a CID are not served: models are single files, ask for the file's CID"
            )
        block = root.digest if root.hash_code == IDENTITY else await store.get(root)
        if block is None:
            return _error(404, f"{root} is not hosted here")
        if fmt == "raw":
            return _raw_response(root, block, request.method == "HEAD")
        try:
            scope, dups, span = _car_params(request)
        except ValueError as exc:
            return _error(400, str(exc))
        return _car_response(store, root, block, scope, dups, span, request.method == "HEAD")

    return router


def _error(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain")


def _common_headers(root: Cid, suffix: str, etag: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{root}.{suffix}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": IMMUTABLE,
        "Etag": f'"{etag}"',
        "Vary": "Accept",
        "X-Ipfs-Roots": str(root),
    }


def _raw_response(root: Cid, block: bytes, head: bool) -> Response:
    headers = _common_headers(root, "bin", f"{root}.raw")
    headers["Content-Length"] = str(len(block))
    return Response(b"" if head else block, media_type=RAW_CONTENT_TYPE, headers=headers)


def _car_response(
    store: BlockStore,
    root: Cid,
    block: bytes,
    scope: str,
    dups: bool,
    span: tuple[int, int | None] | None,
    head: bool,
) -> Response:
    size = _file_size(root, block)
    first, last = _resolve_span(span, size)
    if span is not None and size > 0 and (first > last or first >= size):
        scope = "block"  # an empty or out-of-range request gets the root block, which explains the size
    tag = f"{root}.car.{scope}.{'y' if dups else 'n'}" + (f".{first}-{last}" if span is not None else "")
    headers = _common_headers(root, "car", tag)
    media = f"{CAR_CONTENT_TYPE}; version=1; order=dfs; dups={'y' if dups else 'n'}"
    if head:
        return Response(b"", media_type=media, headers=headers)
    return StreamingResponse(
        _car_stream(store, root, block, scope, dups, first, last), media_type=media, headers=headers
    )


async def _car_stream(
    store: BlockStore, root: Cid, block: bytes, scope: str, dups: bool, first: int, last: int
) -> AsyncIterator[bytes]:
    yield car_header([root])
    if root.hash_code == IDENTITY:
        return
    if scope == "block":
        yield car_section(root, block)
        return
    try:
        async for cid, data in _dfs(store, root, first, last, 0, dups, set()):
            yield car_section(cid, data)
    except (StorageError, DagError):
        return  # the status line is sent already: a truncated CAR is how the client learns of it
