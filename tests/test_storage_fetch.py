"""Publish on one kubo, fetch through the other over bitswap, verify; tampering, resume, the cache."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from storage.blocks import KuboBlocks, plan_file
from storage.cache import DAG_SUFFIX, ModelCache
from storage.cid import Cid, dag_pb_cid, raw_cid
from storage.daemon import KuboDaemon, free_port
from storage.dagpb import PBLink, encode_node, encode_unixfs_file
from storage.errors import CacheFullError, DagError, IntegrityError, KuboError, StorageError
from storage.fetch import PARTIAL_SUFFIX, fetch_file
from storage.kubo import KuboClient
from storage.publish import PublishedFile, publish
from storage.unixfs import CHUNK_SIZE, FileDag, Leaf
from tests.storage_fixtures import random_file

pytestmark = pytest.mark.anyio
MIB = CHUNK_SIZE


class Tampering(KuboBlocks):
    """A real kubo source whose leaf bytes get one byte flipped in leaf number `bad`."""

    def __init__(self, kubo: KuboClient, bad: int) -> None:
        super().__init__(kubo)
        self.bad = bad

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        async for leaf, data in super().leaves(dag, start):
            if dag.leaves.index(leaf) == self.bad:
                data = bytes([data[0] ^ 1]) + data[1:]
            yield leaf, data


class Interrupted(KuboBlocks):
    """A real kubo source whose connection 'drops' after `limit` leaves."""

    def __init__(self, kubo: KuboClient, limit: int) -> None:
        super().__init__(kubo)
        self.limit = limit

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        sent = 0
        async for item in super().leaves(dag, start):
            if sent == self.limit:
                raise KuboError("cat", "connection reset (simulated)")
            sent += 1
            yield item


async def _publish_random(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], path: Path, size: int, seed: int
) -> PublishedFile:
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        return await publish(kubo, random_file(path, size, seed))


async def test_fetch_realModel_publishedOnOneDaemon_fetchedThroughTheOther(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], gemma_model: Path, gemma_sha256: str, tmp_path: Path
) -> None:
    a, b = kubo_pair
    async with KuboClient(a.api_url) as ka:
        published = await publish(ka, gemma_model)
    seen: list[tuple[int, int]] = []
    async with KuboClient(b.api_url) as kb:
        before = (await kb.repo_stat()).repo_size
        cache = ModelCache(tmp_path / "cache", max_bytes=2 * published.size)
        path = await cache.fetch(
            KuboBlocks(kb),
            published.cid,
            gemma_sha256,
            published.size,
            progress=lambda d, t: seen.append((d, t)),
        )
        after = (await kb.repo_stat()).repo_size
    assert after - before > published.size // 2, "the fetching daemon got the blocks from its peer"
    assert path == cache.path(published.cid) and path.stat().st_size == published.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == gemma_sha256
    assert seen[-1] == (published.size, published.size)
    assert not (path.parent / f"{published.cid}{PARTIAL_SUFFIX}").exists()
    assert (path.parent / f"{published.cid}{DAG_SUFFIX}").exists()
    assert await cache.blocks.get(published.cid) is not None  # ready to serve as a gateway


async def test_fetch_tamperedLeaf_isRefusedAndDeleted(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 4 * MIB + 9, seed=11)
    dest = tmp_path / "out" / "model.gguf"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(IntegrityError) as info:
            await fetch_file(Tampering(kb, bad=2), published.cid, dest, published.sha256)
    message = str(info.value)
    assert "leaf" in message and f"byte {2 * MIB}" in message
    assert message.count("sha256 ") == 2  # both hashes are named
    assert not dest.exists() and not dest.with_name(dest.name + PARTIAL_SUFFIX).exists()


async def test_fetch_wrongOnChainSha256_isRefusedAndDeleted(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", MIB + 1, seed=12)
    lie = hashlib.sha256(b"something else").hexdigest()
    dest = tmp_path / "model.gguf"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(IntegrityError) as info:
            await fetch_file(KuboBlocks(kb), published.cid, dest, lie)
    assert lie in str(info.value) and published.sha256 in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + PARTIAL_SUFFIX).exists()


async def test_fetch_wrongOnChainSize_isRefusedBeforeDownloading(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 2 * MIB + 1, seed=13)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(IntegrityError, match=f"{published.size + 1} bytes .on chain."):
            await fetch_file(
                KuboBlocks(kb), published.cid, tmp_path / "m", published.sha256, size=published.size + 1
            )
    assert not (tmp_path / "m.partial").exists()


async def test_fetch_interrupted_resumesFromTheLastGoodLeaf(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 6 * MIB + 5, seed=14)
    dest = tmp_path / "model.gguf"
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(KuboError, match="simulated"):
            await fetch_file(Interrupted(kb, limit=4), published.cid, dest, published.sha256)
        assert not dest.exists() and partial.stat().st_size == 4 * MIB
        fetched = await fetch_file(KuboBlocks(kb), published.cid, dest, published.sha256)
    assert fetched.resumed_from == 4 * MIB
    assert dest.read_bytes() == (tmp_path / "src.bin").read_bytes() and not partial.exists()


async def test_fetch_kuboGatewayDown_fallsBackToRpcCat_andStillResumes(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 3 * MIB + 3, seed=17)
    dest = tmp_path / "model.gguf"
    dest.with_name(dest.name + PARTIAL_SUFFIX).write_bytes((tmp_path / "src.bin").read_bytes()[: MIB + 100])
    dead_gateway = f"http://127.0.0.1:{free_port()}"
    async with KuboClient(kubo_pair[1].api_url, gateway_url=dead_gateway) as kb:
        fetched = await fetch_file(KuboBlocks(kb), published.cid, dest, published.sha256)
    assert fetched.resumed_from == MIB
    assert dest.read_bytes() == (tmp_path / "src.bin").read_bytes()


async def test_fetch_corruptPartial_keepsOnlyTheIntactPrefix(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 5 * MIB, seed=15)
    dest = tmp_path / "model.gguf"
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    source = (tmp_path / "src.bin").read_bytes()
    partial.write_bytes(source[:MIB] + b"\0" * MIB + source[2 * MIB : 3 * MIB + 10])  # leaf 2 rotten
    async with KuboClient(kubo_pair[1].api_url) as kb:
        fetched = await fetch_file(KuboBlocks(kb), published.cid, dest, published.sha256)
    assert fetched.resumed_from == MIB
    assert dest.read_bytes() == source


async def test_fetch_singleChunkFile_isItsOwnRawRoot(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 1000, seed=16)
    assert published.cid.codec == 0x55
    async with KuboClient(kubo_pair[1].api_url) as kb:
        fetched = await fetch_file(KuboBlocks(kb), published.cid, tmp_path / "m", published.sha256, size=1000)
    assert fetched.size == 1000 and (tmp_path / "m").read_bytes() == (tmp_path / "src.bin").read_bytes()


async def test_cache_evictsLeastRecentlyUsed_neverAModelInUse(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    files = [await _publish_random(kubo_pair, tmp_path / f"m{i}", 2 * MIB, seed=20 + i) for i in range(4)]
    cache = ModelCache(tmp_path / "cache", max_bytes=int(6.5 * MIB))
    async with KuboClient(kubo_pair[1].api_url) as kb:
        source = KuboBlocks(kb)
        for f in files[:3]:
            await cache.fetch(source, f.cid, f.sha256, f.size)
        with cache.use(files[0].cid):  # loaded long ago and still serving: least recent, but in use
            os.utime(cache.path(files[0].cid), (1, 1))
            await cache.fetch(source, files[1].cid, files[1].sha256)  # a hit: now most recent
            await cache.fetch(source, files[3].cid, files[3].sha256, files[3].size)
            held = {e.cid for e in cache.entries()}
            assert held == {files[0].cid, files[1].cid, files[3].cid}, (
                "m2 was the least recently used model not in use"
            )
            with (
                cache.use(files[1].cid),
                cache.use(files[3].cid),
                pytest.raises(CacheFullError, match="in use"),
            ):
                await cache.fetch(source, files[2].cid, files[2].sha256, files[2].size)
    assert cache.used_bytes() <= cache.max_bytes
    with pytest.raises(CacheFullError, match="raise the limit"):
        cache.make_room(7 * MIB)
    assert await cache.blocks.get(files[2].cid) is None  # evicted files are no longer served


async def test_cache_reopened_servesItsFilesAndRefusesUnknownOnes(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    f = await _publish_random(kubo_pair, tmp_path / "m", 3 * MIB, seed=30)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        await ModelCache(tmp_path / "cache", 10 * MIB).fetch(KuboBlocks(kb), f.cid, f.sha256)
    (tmp_path / "cache" / f"{f.cid}{DAG_SUFFIX}").unlink()  # lost record: rebuilt by hashing the file
    reopened = ModelCache(tmp_path / "cache", 10 * MIB)
    assert reopened.has(f.cid) and f.cid in reopened.blocks.roots()
    with pytest.raises(StorageError, match="fetch it first"):
        reopened.acquire(Cid.parse("bafkreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm"))


class Slow(KuboBlocks):
    """A real kubo source that takes `delay` seconds per leaf, so a fetch stays in progress."""

    def __init__(self, kubo: KuboClient, delay: float) -> None:
        super().__init__(kubo)
        self.delay = delay

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        async for item in super().leaves(dag, start):
            await asyncio.sleep(self.delay)
            yield item


async def test_cache_interruptedDownload_isEvictedWhenRoomIsNeeded(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    """A partial file nobody resumes must not hold cache space forever."""
    x = await _publish_random(kubo_pair, tmp_path / "x", 6 * MIB, seed=40)
    y = await _publish_random(kubo_pair, tmp_path / "y", 8 * MIB, seed=41)
    cache = ModelCache(tmp_path / "cache", 10 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(KuboError, match="simulated"):
            await cache.fetch(Interrupted(kb, limit=4), x.cid, x.sha256, x.size)
        assert (tmp_path / "cache" / f"{x.cid}{PARTIAL_SUFFIX}").stat().st_size == 4 * MIB
        path = await cache.fetch(KuboBlocks(kb), y.cid, y.sha256, y.size)
    assert path.read_bytes() == (tmp_path / "y").read_bytes()
    assert not (tmp_path / "cache" / f"{x.cid}{PARTIAL_SUFFIX}").exists()
    assert cache.used_bytes() <= cache.max_bytes


async def test_cache_concurrentFetches_neverTogetherExceedTheLimit(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    a = await _publish_random(kubo_pair, tmp_path / "a", 6 * MIB, seed=42)
    b = await _publish_random(kubo_pair, tmp_path / "b", 6 * MIB, seed=43)
    cache = ModelCache(tmp_path / "cache", 10 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        source = Slow(kb, delay=0.01)
        results = await asyncio.gather(
            cache.fetch(source, a.cid, a.sha256, a.size),
            cache.fetch(source, b.cid, b.sha256, b.size),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], CacheFullError), results
    assert "being fetched" in str(refused[0])
    assert len(cache.entries()) == 1 and cache.used_bytes() <= cache.max_bytes


async def test_cache_evict_refusesAModelBeingFetched(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    f = await _publish_random(kubo_pair, tmp_path / "m", 4 * MIB, seed=44)
    cache = ModelCache(tmp_path / "cache", 10 * MIB)
    partial = tmp_path / "cache" / f"{f.cid}{PARTIAL_SUFFIX}"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        fetching = asyncio.create_task(cache.fetch(Slow(kb, delay=0.05), f.cid, f.sha256, f.size))
        while not partial.exists() and not fetching.done():
            await asyncio.sleep(0.01)
        with pytest.raises(StorageError, match="being fetched"):
            cache.evict(f.cid)
        path = await fetching
    assert path.read_bytes() == (tmp_path / "m").read_bytes()


async def test_fetch_failedBackgroundSync_failsAndExposesNothing(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that loses a writeback (EIO) must fail the fetch, even when later background syncs (one
    per 32 MiB, so 70 MiB makes two) succeed. The fault is injected into os.fdatasync: a real EIO on
    writeback cannot be caused here."""
    published = await _publish_random(kubo_pair, tmp_path / "src.bin", 70 * MIB, seed=45)
    real_fdatasync = os.fdatasync

    def failing_once(fd: int) -> None:
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        raise OSError(errno.EIO, "Input/output error (injected)")

    monkeypatch.setattr(os, "fdatasync", failing_once)
    dest = tmp_path / "model.gguf"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(OSError, match="injected"):
            await fetch_file(KuboBlocks(kb), published.cid, dest, published.sha256)
    assert not dest.exists()


async def test_plan_leafClaimingMoreThanABlock_isRefusedBeforeAnyRead(
    kubo_pair: tuple[KuboDaemon, KuboDaemon],
) -> None:
    """A hostile root block (valid for its CID) claims a 64 TiB leaf: refused, nothing allocated."""
    huge = 1 << 46
    root_block = encode_node([PBLink(raw_cid(b"x" * 1024), huge)], encode_unixfs_file(huge, [huge]))
    api = kubo_pair[0].api_url
    put = httpx.post(
        f"{api}/api/v0/block/put", params={"cid-codec": "dag-pb"}, files={"file": root_block}, timeout=10
    )
    root = Cid.parse(put.json()["Key"])
    assert root == dag_pb_cid(root_block)
    async with KuboClient(api) as kubo:
        with pytest.raises(DagError, match="claims 70368744177664 bytes"):
            await plan_file(KuboBlocks(kubo), root)
