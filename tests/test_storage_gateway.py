"""The trustless gateway handler behind a real HTTP server, and the gateway fetcher that trusts no peer."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.blocks import GatewayBlocks, KuboBlocks
from storage.blockstore import FileBlockStore
from storage.cache import ModelCache
from storage.car import read_car
from storage.cid import Cid, raw_cid
from storage.daemon import KuboDaemon
from storage.dagpb import decode_node
from storage.errors import GatewayError, IntegrityError
from storage.fetch import fetch_file
from storage.kubo import KuboClient
from storage.publish import publish
from storage.unixfs import CHUNK_SIZE, FileHashes, hash_file
from tests.storage_fixtures import GatewayServer, random_file

pytestmark = pytest.mark.anyio
MIB = CHUNK_SIZE
RAW = {"Accept": "application/vnd.ipld.raw"}
CAR = {"Accept": "application/vnd.ipld.car; version=1; order=dfs; dups=n"}


class LyingStore(FileBlockStore):
    """A real block store that serves wrong bytes for every raw leaf (a malicious peer)."""

    async def get(self, cid: Cid) -> bytes | None:
        block = await super().get(cid)
        if block is not None and cid.codec == 0x55:
            return b"\x00" + block[1:]
        return block


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FileHashes]:
    """A 5 MiB + 3 byte 'model' and its hashes (with DAG)."""
    path = random_file(tmp_path_factory.mktemp("gw") / "model.gguf", 5 * MIB + 3, seed=40)
    return path, hash_file(path, keep_dag=True)


@pytest.fixture(scope="module")
def gateway(model: tuple[Path, FileHashes]) -> Iterator[GatewayServer]:
    """An honest node serving the model."""
    path, hashes = model
    store = FileBlockStore()
    assert hashes.dag is not None
    store.add(path, hashes.dag)
    with GatewayServer(store) as server:
        yield server


@pytest.fixture(scope="module")
def liar(model: tuple[Path, FileHashes]) -> Iterator[GatewayServer]:
    """A malicious node claiming to serve the model."""
    path, hashes = model
    store = LyingStore()
    assert hashes.dag is not None
    store.add(path, hashes.dag)
    with GatewayServer(store) as server:
        yield server


def test_raw_servesTheExactBlockWithTrustlessHeaders(
    gateway: GatewayServer, model: tuple[Path, FileHashes]
) -> None:
    path, hashes = model
    assert hashes.dag is not None
    leaf = hashes.dag.leaves[3]
    response = httpx.get(f"{gateway.url}/ipfs/{leaf.cid}", headers=RAW)
    assert response.status_code == 200
    assert response.content == path.read_bytes()[leaf.offset : leaf.offset + leaf.size]
    assert raw_cid(response.content) == leaf.cid
    assert response.headers["content-type"] == "application/vnd.ipld.raw"
    assert response.headers["content-disposition"] == f'attachment; filename="{leaf.cid}.bin"'
    assert "immutable" in response.headers["cache-control"]
    assert response.headers["x-content-type-options"] == "nosniff"
    root = httpx.get(f"{gateway.url}/ipfs/{hashes.cid}?format=raw")
    assert decode_node(root.content).unixfs is not None and hashes.cid.matches(root.content)


def test_car_isTheWholeDagDepthFirst_andMatchesKubosExport(
    gateway: GatewayServer, model: tuple[Path, FileHashes], kubo_pair: tuple[KuboDaemon, KuboDaemon]
) -> None:
    path, hashes = model
    response = httpx.get(f"{gateway.url}/ipfs/{hashes.cid}", headers=CAR)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    roots, sections = read_car(response.content)
    assert roots == [hashes.cid] and all(cid.matches(block) for cid, block in sections)
    assert b"".join(block for cid, block in sections if cid.codec == 0x55) == path.read_bytes()
    add = httpx.post(
        f"{kubo_pair[0].api_url}/api/v0/add",
        params={"cid-version": 1, "raw-leaves": "true", "chunker": f"size-{MIB}"},
        files={"file": path.open("rb")},
        timeout=60,
    )
    assert add.json()["Hash"] == str(hashes.cid)
    exported = httpx.post(
        f"{kubo_pair[0].api_url}/api/v0/dag/export", params={"arg": str(hashes.cid)}, timeout=60
    )
    assert response.content == exported.content, "byte-identical to `ipfs dag export`"


def test_car_dagScopeAndEntityBytes_sendOnlyWhatIsNeeded(
    gateway: GatewayServer, model: tuple[Path, FileHashes]
) -> None:
    _, hashes = model
    assert hashes.dag is not None
    url = f"{gateway.url}/ipfs/{hashes.cid}"
    _, block_only = read_car(httpx.get(url, params={"format": "car", "dag-scope": "block"}).content)
    assert [cid for cid, _ in block_only] == [hashes.cid]
    _, span = read_car(
        httpx.get(url, params={"format": "car", "entity-bytes": f"{MIB + 10}:{2 * MIB + 5}"}).content
    )
    assert [cid for cid, _ in span] == [hashes.cid, hashes.dag.leaves[1].cid, hashes.dag.leaves[2].cid]
    _, tail = read_car(httpx.get(url, params={"format": "car", "entity-bytes": "-2:*"}).content)
    assert [cid for cid, _ in tail] == [hashes.cid, hashes.dag.leaves[-1].cid]
    head = httpx.head(url, headers=CAR)
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("path", "headers", "status", "says"),
    [
        ("/ipfs/{missing}", RAW, 404, "not hosted here"),
        ("/ipfs/{root}", {}, 400, "application/vnd.ipld.raw"),
        ("/ipfs/{root}", {"Accept": "text/html"}, 406, "only application/vnd.ipld.raw"),
        ("/ipfs/not-a-cid", RAW, 400, "not a CID"),
        ("/ipfs/{root}/some/path", CAR, 400, "paths inside a CID"),
        ("/ipfs/{root}?format=car&dag-scope=everything", {}, 400, "dag-scope"),
        ("/ipfs/{root}?format=car&entity-bytes=1-2", {}, 400, "entity-bytes"),
    ],
)
def test_gateway_badRequests_getAClearStatusAndReason(
    gateway: GatewayServer,
    model: tuple[Path, FileHashes],
    path: str,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    missing = raw_cid(b"not hosted")
    response = httpx.get(gateway.url + path.format(root=model[1].cid, missing=missing), headers=headers)
    assert response.status_code == status
    assert says in response.text


def test_gateway_probeCid_answersRawAndCar(gateway: GatewayServer) -> None:
    raw = httpx.get(f"{gateway.url}/ipfs/bafkqaaa", headers=RAW)
    assert raw.status_code == 200 and raw.content == b""
    roots, sections = read_car(httpx.get(f"{gateway.url}/ipfs/bafkqaaa?format=car").content)
    assert [str(r) for r in roots] == ["bafkqaaa"] and sections == []


def test_store_corruptFileOnDisk_isNotServed(tmp_path: Path) -> None:
    path = random_file(tmp_path / "m.gguf", 2 * MIB + 1, seed=41)
    hashes = hash_file(path, keep_dag=True)
    assert hashes.dag is not None
    store = FileBlockStore()
    store.add(path, hashes.dag)
    with path.open("r+b") as f:
        f.seek(MIB + 7)
        f.write(b"\xff\xfe")
    with GatewayServer(store) as server:
        good = httpx.get(f"{server.url}/ipfs/{hashes.dag.leaves[0].cid}", headers=RAW)
        bad = httpx.get(f"{server.url}/ipfs/{hashes.dag.leaves[1].cid}", headers=RAW)
    assert good.status_code == 200
    assert bad.status_code == 500


async def test_gatewayFetch_withoutKubo_verifiesEveryBlockAndSkipsALiar(
    gateway: GatewayServer, liar: GatewayServer, model: tuple[Path, FileHashes], tmp_path: Path
) -> None:
    path, hashes = model
    source = GatewayBlocks([liar.url, gateway.url], parallel=3)
    try:
        fetched = await fetch_file(source, hashes.cid, tmp_path / "m.gguf", hashes.sha256, size=hashes.size)
    finally:
        await source.aclose()
    assert fetched.path.read_bytes() == path.read_bytes()
    assert hashlib.sha256(fetched.path.read_bytes()).hexdigest() == hashes.sha256


async def test_gatewayFetch_onlyLiars_failsNamingEachPeer(
    liar: GatewayServer, model: tuple[Path, FileHashes], tmp_path: Path
) -> None:
    _, hashes = model
    source = GatewayBlocks([liar.url])
    try:
        with pytest.raises(GatewayError, match="do not hash to the CID"):
            await fetch_file(source, hashes.cid, tmp_path / "m.gguf", hashes.sha256)
    finally:
        await source.aclose()
    assert not (tmp_path / "m.gguf").exists()


async def test_gatewayFetch_fromANodeServingItsKuboFetchedCache(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    """Node B fetches from kubo into its cache and serves it; node C, without kubo, fetches from B."""
    async with KuboClient(kubo_pair[0].api_url) as ka:
        published = await publish(ka, random_file(tmp_path / "src.gguf", 3 * MIB + 77, seed=42))
    b_cache = ModelCache(tmp_path / "b", 64 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        await b_cache.fetch(KuboBlocks(kb), published.cid, published.sha256, published.size)
    with GatewayServer(b_cache.blocks) as b_gateway:
        c_cache = ModelCache(tmp_path / "c", 64 * MIB)
        source = GatewayBlocks([b_gateway.url])
        try:
            path = await c_cache.fetch(source, published.cid, published.sha256, published.size)
        finally:
            await source.aclose()
    assert path.read_bytes() == (tmp_path / "src.gguf").read_bytes()


async def test_gatewayFetch_wrongSha256_isRefused(
    gateway: GatewayServer, model: tuple[Path, FileHashes], tmp_path: Path
) -> None:
    _, hashes = model
    source = GatewayBlocks([gateway.url])
    try:
        with pytest.raises(IntegrityError, match="on chain"):
            await fetch_file(source, hashes.cid, tmp_path / "m.gguf", "00" * 32)
    finally:
        await source.aclose()


class _HugeErrorPeer(http.server.BaseHTTPRequestHandler):
    """A hostile peer: answers 404 with a 1 GiB body it streams until the client hangs up."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):
            for _ in range(1 << 10):
                self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:
        pass


async def test_gatewayFetch_hugeErrorBody_isNotReadIntoMemory() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HugeErrorPeer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    source = GatewayBlocks([f"http://127.0.0.1:{server.server_address[1]}"])
    tracemalloc.start()
    try:
        with pytest.raises(GatewayError, match="HTTP 404"):
            await source.get_block(raw_cid(b"some block"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await source.aclose()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert peak < 16 << 20, f"read {peak} bytes of an error answer"
