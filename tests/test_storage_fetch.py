"""Publish on one kubo, fetch through the other over bitswap, verify; tampering, resume, the cache
(also shared by several processes, on a disk that fills up, with files that change after verification)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import storage.cache
from storage.blocks import KuboBlocks, plan_file
from storage.cache import DAG_SUFFIX, ModelCache
from storage.cid import Cid, dag_pb_cid, raw_cid
from storage.daemon import KuboDaemon, free_port
from storage.dagpb import PBLink, encode_node, encode_unixfs_file
from storage.errors import CacheFullError, DagError, IntegrityError, KuboError, StorageError
from storage.fetch import PARTIAL_SUFFIX, FetchInProgressError, fetch_file
from storage.kubo import KuboClient
from storage.publish import PublishedFile, publish
from storage.unixfs import CHUNK_SIZE, FileDag, Leaf
from tests.storage_fixtures import (  # noqa: F401 - fixtures
    AfterLeaves,
    CacheWorker,
    cache_worker_fixture,
    fill_disk,
    random_file,
    small_disk_fixture,
    tamper,
)

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


def interrupted(kubo: KuboClient, limit: int) -> AfterLeaves:
    """A real kubo source whose connection 'drops' after `limit` leaves."""

    async def drop() -> None:
        raise KuboError("cat", "connection reset (simulated)")

    return AfterLeaves(kubo, limit, drop)


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
    # The daemons live for the whole session: blocks an earlier test fetched (a node serving this
    # model) are collected first, so this fetch has to get them from the peer.
    async with httpx.AsyncClient(timeout=120) as http:
        (await http.post(f"{b.api_url}/api/v0/repo/gc")).raise_for_status()
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
            await fetch_file(interrupted(kb, limit=4), published.cid, dest, published.sha256)
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
    assert await reopened.verify_pending() == {f.cid: True}  # in the background, not in the constructor
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
            await cache.fetch(interrupted(kb, limit=4), x.cid, x.sha256, x.size)
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


# -- the cache shared by processes, changed on disk, on a full disk, started without records ----------


async def test_cache_twoProcessesFetchingOneModel_neverWriteOnePartialFile(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, cache_worker: Callable[..., CacheWorker]
) -> None:
    """Two processes fetch one CID into one cache directory: the second waits for the first and then
    has a hit, and the verified name holds exactly the model. Before, both appended to one partial
    file, and a file of the wrong size was renamed to the verified name."""
    f = await _publish_random(kubo_pair, tmp_path / "m", 6 * MIB, seed=50)
    root = tmp_path / "cache"
    args = (str(root), str(64 * MIB), kubo_pair[1].api_url, str(f.cid), f.sha256)
    first = cache_worker("fetch", *args, "--pause-after", "2")
    assert first.expect(lambda line: line == "paused") == "paused"
    second = cache_worker("fetch", *args)
    # The second must wait for the first; the old code instead fetched into the same partial file.
    second.expect(lambda line: "event=cache_fetch_waiting" in line or line == "done")
    first.send("go")
    assert (first.finish(), second.finish()) == (0, 0), (first.seen, second.seen)
    assert any("event=cache_fetch_waiting" in line for line in second.seen), second.seen
    data = (root / str(f.cid)).read_bytes()
    assert len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256
    assert not (root / f"{f.cid}{PARTIAL_SUFFIX}").exists()


async def test_cache_modelInUseByAnotherProcess_isNeverEvicted(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, cache_worker: Callable[..., CacheWorker]
) -> None:
    x = await _publish_random(kubo_pair, tmp_path / "x", 4 * MIB, seed=51)
    y = await _publish_random(kubo_pair, tmp_path / "y", 4 * MIB, seed=52)
    root = tmp_path / "cache"
    cache = ModelCache(root, 6 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        await cache.fetch(KuboBlocks(kb), x.cid, x.sha256, x.size)
        holder = cache_worker("hold", str(root), str(6 * MIB), str(x.cid))
        assert holder.expect(lambda line: line in ("held", "done")) == "held", holder.seen
        with pytest.raises(CacheFullError, match="in use") as info:
            await cache.fetch(KuboBlocks(kb), y.cid, y.sha256, y.size)
        assert cache.path(x.cid).read_bytes() == (tmp_path / "x").read_bytes()
        assert info.value.in_use == (x.cid,) and info.value.needed == y.size
        assert holder.finish() == 0, holder.seen  # released: now it may go
        await cache.fetch(KuboBlocks(kb), y.cid, y.sha256, y.size)
    assert [e.cid for e in cache.entries()] == [y.cid]


async def test_cache_downloadInFlightInAnotherProcess_isNotDeleted_andHitsGoOn(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, cache_worker: Callable[..., CacheWorker]
) -> None:
    """Another process's download counts at its full size and its partial file is not an orphan;
    its long transfer does not block this process's cache hits."""
    a = await _publish_random(kubo_pair, tmp_path / "a", 6 * MIB, seed=53)
    b = await _publish_random(kubo_pair, tmp_path / "b", 3 * MIB, seed=54)
    c = await _publish_random(kubo_pair, tmp_path / "c", 5 * MIB, seed=55)
    root, limit = tmp_path / "cache", int(9.5 * MIB)
    cache = ModelCache(root, limit)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        await cache.fetch(KuboBlocks(kb), b.cid, b.sha256, b.size)
        fetcher = cache_worker(
            "fetch", str(root), str(limit), kubo_pair[1].api_url, str(a.cid), a.sha256, "--pause-after", "2"
        )
        assert fetcher.expect(lambda line: line == "paused") == "paused", fetcher.seen
        assert await cache.fetch(KuboBlocks(kb), b.cid, b.sha256) == cache.path(b.cid)  # a hit meanwhile
        with cache.use(b.cid):
            with pytest.raises(CacheFullError, match="being fetched") as info:
                await cache.fetch(KuboBlocks(kb), c.cid, c.sha256, c.size)
            assert info.value.fetching == (a.cid,)
            with pytest.raises(StorageError, match="being fetched"):
                cache.evict(a.cid)
        assert (root / f"{a.cid}{PARTIAL_SUFFIX}").exists()
        fetcher.send("go")
        assert fetcher.finish() == 0, fetcher.seen
    assert cache.path(a.cid).read_bytes() == (tmp_path / "a").read_bytes()


async def test_cache_hit_fileChangedOnDisk_isReverifiedEvictedAndFetchedAgain(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = await _publish_random(kubo_pair, tmp_path / "m", 3 * MIB, seed=56)
    cache = ModelCache(tmp_path / "cache", 16 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        path = await cache.fetch(KuboBlocks(kb), f.cid, f.sha256, f.size)
        tamper(path, MIB + 5)  # a flipped bit on the disk, after verification
        with caplog.at_level(logging.INFO, logger="storage.cache"):
            again = await cache.fetch(KuboBlocks(kb), f.cid, f.sha256, f.size)
    assert again.read_bytes() == (tmp_path / "m").read_bytes()
    assert any("event=cache_corrupt" in r.getMessage() for r in caplog.records)
    assert cache.pending() == [] and f.cid in cache.blocks.roots()


async def test_cache_acquire_byteFlippedWithItsMtimeRestored_isRefusedAndEvicted(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    f = await _publish_random(kubo_pair, tmp_path / "m", 3 * MIB, seed=57)
    cache = ModelCache(tmp_path / "cache", 16 * MIB)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        path = await cache.fetch(KuboBlocks(kb), f.cid, f.sha256, f.size)
    st = path.stat()
    tamper(path, 7)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as verified: only ctime shows it
    with pytest.raises(IntegrityError, match="changed on disk") as info:
        cache.acquire(f.cid)
    assert info.value.expected == f"CID {f.cid}, sha256 {f.sha256}"
    assert not cache.has(f.cid) and f.cid not in cache.blocks.roots()


async def test_cache_reopened_truncatedFile_isNeitherServedNorHandedOut(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    f = await _publish_random(kubo_pair, tmp_path / "m", 3 * MIB, seed=58)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        path = await ModelCache(tmp_path / "cache", 16 * MIB).fetch(KuboBlocks(kb), f.cid, f.sha256)
    os.truncate(path, f.size - 1)  # the node was down; the disk lost the file's tail
    reopened = ModelCache(tmp_path / "cache", 16 * MIB)
    assert f.cid not in reopened.blocks.roots()
    assert [(e.cid, e.verified) for e in reopened.entries()] == [(f.cid, False)]
    with pytest.raises(IntegrityError, match="fetch it again"):
        reopened.acquire(f.cid)
    assert not reopened.has(f.cid)


class NoDownload(KuboBlocks):
    """A source that must not be asked for any leaf: the file is already here."""

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        raise AssertionError("a cached file was downloaded again")
        yield  # pragma: no cover - makes this an async generator


async def test_cache_lostDagRecord_isVerifiedOnFirstUse_notWhileConstructing(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Construction reads no model bytes (100 GB of models would hold a node's start for minutes):
    the file is marked unverified and not served, and the first fetch() re-hashes it, with progress,
    without downloading it again. `hash_file` is wrapped only to count its calls."""
    f = await _publish_random(kubo_pair, tmp_path / "m", 4 * MIB, seed=59)
    root = tmp_path / "cache"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        await ModelCache(root, 16 * MIB).fetch(KuboBlocks(kb), f.cid, f.sha256)
        (root / f"{f.cid}{DAG_SUFFIX}").unlink()
        hashed: list[Path] = []
        real_hash_file = storage.cache.hash_file

        def counted(path: Path, *args: object, **kwargs: object) -> object:
            hashed.append(Path(path))
            return real_hash_file(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(storage.cache, "hash_file", counted)
        reopened = ModelCache(root, 16 * MIB)
        assert hashed == [], "construction hashed a model file"
        assert reopened.pending() == [f.cid] and f.cid not in reopened.blocks.roots()
        seen: list[tuple[int, int]] = []
        path = await reopened.fetch(
            NoDownload(kb), f.cid, f.sha256, f.size, progress=lambda d, t: seen.append((d, t))
        )
    assert hashed == [path] and seen[-1] == (f.size, f.size)
    assert reopened.pending() == [] and f.cid in reopened.blocks.roots()
    assert (root / f"{f.cid}{DAG_SUFFIX}").exists()


async def test_cache_diskTooSmall_isRefusedBeforeDownloading_andOrphanPartialsMakeRoom(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, small_disk: Path
) -> None:
    """A real 8 MiB disk under a 64 MiB cache limit: free space decides, before anything is written."""
    x = await _publish_random(kubo_pair, tmp_path / "x", 3 * MIB + 1, seed=60)
    y = await _publish_random(kubo_pair, tmp_path / "y", 6 * MIB, seed=61)
    z = await _publish_random(kubo_pair, tmp_path / "z", 9 * MIB, seed=62)
    root = small_disk / "cache"
    cache = ModelCache(root, 64 * MIB, min_free_bytes=256 << 10)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(KuboError, match="simulated"):
            await cache.fetch(interrupted(kb, limit=2), x.cid, x.sha256, x.size)
        # y fits the disk only once the interrupted download nobody resumes is gone
        path = await cache.fetch(KuboBlocks(kb), y.cid, y.sha256, y.size)
        assert path.read_bytes() == (tmp_path / "y").read_bytes()
        assert not (root / f"{x.cid}{PARTIAL_SUFFIX}").exists()
        with pytest.raises(CacheFullError, match="free disk space") as info:
            await cache.fetch(KuboBlocks(kb), z.cid, z.sha256, z.size)
    assert info.value.where == "disk" and info.value.needed == z.size and info.value.free < z.size
    assert not (root / f"{z.cid}{PARTIAL_SUFFIX}").exists(), "refused before writing"
    assert cache.has(y.cid), "nothing is evicted when the model cannot fit anyway"


def fills_the_disk(kubo: KuboClient, filler: Path) -> AfterLeaves:
    """A real kubo source; after its first leaf another program fills the disk under the fetch."""

    async def fill() -> None:
        fill_disk(filler)

    return AfterLeaves(kubo, 1, fill)


async def test_cache_diskFillingUpDuringAFetch_raisesCacheFull_andDeletesOnlyOrphanPartials(
    kubo_pair: tuple[KuboDaemon, KuboDaemon],
    tmp_path: Path,
    small_disk: Path,
    cache_worker: Callable[..., CacheWorker],
) -> None:
    """A real ENOSPC (an 8 MiB tmpfs, filled by another writer mid-fetch): the fetch fails with
    CacheFullError carrying the numbers, interrupted downloads nobody writes are deleted, another
    process's download in flight and this fetch's own partial file are kept, and once there is room
    again the next fetch resumes."""
    o = await _publish_random(kubo_pair, tmp_path / "o", 2 * MIB + 1, seed=63)
    c = await _publish_random(kubo_pair, tmp_path / "c", 2 * MIB, seed=64)
    m = await _publish_random(kubo_pair, tmp_path / "m", 3 * MIB, seed=65)
    root, filler = small_disk / "cache", small_disk / "filler"
    cache = ModelCache(root, 64 * MIB, min_free_bytes=0)
    api = kubo_pair[1].api_url
    async with KuboClient(api) as kb:
        with pytest.raises(KuboError, match="simulated"):
            await cache.fetch(interrupted(kb, limit=2), o.cid, o.sha256, o.size)
        other = cache_worker(
            "fetch",
            str(root),
            str(64 * MIB),
            api,
            str(c.cid),
            c.sha256,
            "--pause-after",
            "1",
            "--min-free",
            "0",
        )
        assert other.expect(lambda line: line == "paused") == "paused", other.seen
        with pytest.raises(CacheFullError, match="Free disk space") as info:
            await cache.fetch(fills_the_disk(kb, filler), m.cid, m.sha256, m.size)
        kept = (root / f"{m.cid}{PARTIAL_SUFFIX}").stat().st_size
        assert info.value.where == "disk" and info.value.needed == m.size - kept
        assert info.value.free == shutil.disk_usage(small_disk).free
        assert not (root / f"{o.cid}{PARTIAL_SUFFIX}").exists(), "the orphan went"
        assert (root / f"{c.cid}{PARTIAL_SUFFIX}").exists(), "another process's download stayed"
        filler.unlink()  # the operator frees space
        other.send("go")
        assert other.finish() == 0, other.seen
        fetched = await cache.fetch(KuboBlocks(kb), m.cid, m.sha256, m.size)
    assert fetched.read_bytes() == (tmp_path / "m").read_bytes()
    assert cache.path(c.cid).read_bytes() == (tmp_path / "c").read_bytes()


async def test_fetch_twoFetchesIntoOnePartialFile_theSecondIsRefused(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    """Without a cache to make them take turns, a second writer is refused, not appended."""
    f = await _publish_random(kubo_pair, tmp_path / "src.bin", 4 * MIB, seed=66)
    dest = tmp_path / "model.gguf"
    async with KuboClient(kubo_pair[1].api_url) as kb:
        results = await asyncio.gather(
            fetch_file(Slow(kb, delay=0.01), f.cid, dest, f.sha256),
            fetch_file(Slow(kb, delay=0.01), f.cid, dest, f.sha256),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], FetchInProgressError), results
    assert refused[0].partial == dest.with_name(dest.name + PARTIAL_SUFFIX)
    assert dest.read_bytes() == (tmp_path / "src.bin").read_bytes()


class AppendsBehindTheFetch(KuboBlocks):
    """A real kubo source; after the last leaf something that ignores locks appends to the file."""

    def __init__(self, kubo: KuboClient, partial: Path) -> None:
        super().__init__(kubo)
        self.partial = partial

    async def leaves(self, dag: FileDag, start: int) -> AsyncIterator[tuple[Leaf, bytes]]:
        async for item in super().leaves(dag, start):
            yield item
        with self.partial.open("ab") as stray:
            stray.write(b"x" * 10)


async def test_fetch_fileOnDiskLargerThanTheDag_isNeverRenamedToTheVerifiedName(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    """The hashes cover the bytes the fetch wrote, not what else the file holds: the size on disk
    must be the DAG's before the rename."""
    f = await _publish_random(kubo_pair, tmp_path / "src.bin", 2 * MIB + 3, seed=67)
    dest = tmp_path / "model.gguf"
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    async with KuboClient(kubo_pair[1].api_url) as kb:
        with pytest.raises(IntegrityError, match="on disk") as info:
            await fetch_file(AppendsBehindTheFetch(kb, partial), f.cid, dest, f.sha256)
    assert info.value.actual == f"{f.size + 10} bytes"
    assert not dest.exists() and not partial.exists()
