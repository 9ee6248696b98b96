"""The kubo RPC client against real daemons, and our CIDs against kubo's across the edge sizes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from storage.car import CarReader
from storage.cid import Cid
from storage.daemon import KuboDaemon, free_port
from storage.errors import KuboError, KuboUnavailableError
from storage.kubo import KuboClient
from storage.publish import publish
from storage.unixfs import CHUNK_SIZE, MAX_LINKS, hash_file
from tests.storage_fixtures import random_file

pytestmark = pytest.mark.anyio
MIB = CHUNK_SIZE

EDGE_SIZES = {
    "empty": 0,
    "one byte": 1,
    "one chunk less a byte": MIB - 1,
    "exactly one chunk": MIB,
    "one chunk and a byte": MIB + 1,
    "many chunks": 7 * MIB + 12345,
    "one full node": MAX_LINKS * MIB,
    "a full node and a byte": MAX_LINKS * MIB + 1,
}


@pytest.mark.parametrize("size", EDGE_SIZES.values(), ids=EDGE_SIZES.keys())
async def test_cid_equalsKubos_acrossEdgeSizes(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path, size: int
) -> None:
    path = random_file(tmp_path / "f.bin", size, seed=size)
    ours = hash_file(path)
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        theirs = await kubo.add(path, pin=False)
    assert theirs.cid == ours.cid, f"{size} bytes"
    assert theirs.cid.codec == (0x55 if size <= MIB else 0x70)


async def test_cid_equalsKubos_forTheRealModel(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], gemma_model: Path, gemma_sha256: str
) -> None:
    """The 240 MB Gemma GGUF: more than 174 chunks, so a two-level tree."""
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        published = await publish(kubo, gemma_model)
        assert published.cid in await kubo.pins()
    local = hash_file(gemma_model, keep_dag=True)
    assert published.cid == local.cid
    assert published.sha256 == local.sha256 == gemma_sha256
    assert local.dag is not None and len(local.dag.leaves) > MAX_LINKS and len(local.dag.nodes) == 3


async def test_add_reportsProgressAndCatStreamsTheBytesBack(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    path = random_file(tmp_path / "f.bin", 3 * MIB + 17, seed=3)
    seen: list[int] = []
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        added = await kubo.add(path, progress=lambda done, total: seen.append(done))
        assert added.size >= path.stat().st_size
        whole = b"".join([chunk async for chunk in kubo.cat(added.cid)])
        tail = b"".join([chunk async for chunk in kubo.cat(added.cid, offset=MIB + 5, length=100)])
    assert seen and seen[-1] == path.stat().st_size
    assert whole == path.read_bytes()
    assert tail == path.read_bytes()[MIB + 5 : MIB + 105]


async def test_get_streamsATarHoldingTheFile(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    path = random_file(tmp_path / "f.bin", MIB + 3, seed=4)
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        cid = (await kubo.add(path)).cid
        archive = b"".join([chunk async for chunk in kubo.get(cid)])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.getmember(str(cid))
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == path.read_bytes()


async def test_dagExport_isACarOfExactlyOurDag(
    kubo_pair: tuple[KuboDaemon, KuboDaemon], tmp_path: Path
) -> None:
    path = random_file(tmp_path / "f.bin", 5 * MIB + 1, seed=5)
    ours = hash_file(path, keep_dag=True)
    assert ours.dag is not None
    reader = CarReader()
    sections = []
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        await kubo.add(path)
        async for chunk in kubo.dag_export(ours.cid):
            sections += reader.feed(chunk)
    reader.close()
    assert reader.roots == [ours.cid]
    assert all(cid.matches(block) for cid, block in sections)
    assert [cid for cid, _ in sections] == [ours.cid, *(leaf.cid for leaf in ours.dag.leaves)]
    assert sections[0][1] == ours.dag.nodes[ours.cid]


async def test_idSwarmAndRepoStat_describeTheConnectedDaemons(
    kubo_pair: tuple[KuboDaemon, KuboDaemon],
) -> None:
    a, b = kubo_pair
    async with KuboClient(a.api_url) as ka, KuboClient(b.api_url) as kb:
        ida, idb = await ka.id(), await kb.id()
        assert (ida.peer_id, idb.peer_id) == (a.peer_id, b.peer_id)
        assert any(f"/tcp/{a.swarm_port}" in addr for addr in ida.addresses)
        await kb.swarm_connect(a.swarm_address)  # connecting again is harmless
        assert a.peer_id in await kb.swarm_peers()
        assert b.peer_id in await ka.swarm_peers()
        stat = await ka.repo_stat()
        assert stat.repo_path == str(a.repo) and stat.storage_max > 0
        assert (await ka.version()).startswith("0.")


async def test_client_daemonDown_saysHowToFixIt() -> None:
    async with KuboClient(f"http://127.0.0.1:{free_port()}", connect_timeout=2) as kubo:
        with pytest.raises(KuboUnavailableError, match="ipfs daemon"):
            await kubo.id()


async def test_client_errorAnswer_carriesKubosMessage(kubo_pair: tuple[KuboDaemon, KuboDaemon]) -> None:
    never_pinned = Cid.parse("bafkreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm")
    async with KuboClient(kubo_pair[0].api_url) as kubo:
        with pytest.raises(KuboError, match=r"kubo pin/rm failed \(HTTP 500\): .*not pinned") as info:
            await kubo.pin_rm(never_pinned)
    assert not isinstance(info.value, KuboUnavailableError)


async def test_daemon_restartsOnItsOwnRepoAndStops(kubo_bin: str, tmp_path: Path) -> None:
    daemon = KuboDaemon(tmp_path / "repo", kubo_bin)
    with daemon:
        async with KuboClient(daemon.api_url) as kubo:
            cid = (await kubo.add(random_file(tmp_path / "f.bin", 10, seed=1))).cid
    with pytest.raises(KuboUnavailableError):
        async with KuboClient(daemon.api_url, connect_timeout=1) as kubo:
            await kubo.id()
    with daemon:
        async with KuboClient(daemon.api_url) as kubo:
            assert cid in await kubo.pins()
