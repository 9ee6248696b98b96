"""The model worker process against the real llama.cpp, on tiny random-weight models.

Every test starts its own worker (spawn context, as the node does) and stops it in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from llama_cpp import Llama

from node import worker
from node.messages import (
    Cancel,
    Channel,
    Fatal,
    Finished,
    LogprobEntry,
    Piece,
    Ready,
    Refused,
    Sampling,
    Started,
    Steps,
    Stop,
    Submit,
    Unframer,
    WorkerSpec,
    frame,
)
from node.workers import WorkerProcess
from tests.gguf_models import scale_eos, write_tiny_llama

TIMEOUT = 60.0  # seconds any single answer from the worker may take
PROMPTS = ("def fix the bug", "print the code", "return (x)", "the code: print(the bug) and return")


@dataclass
class Result:
    """Everything one request produced."""

    started: Started | None = None
    refused: Refused | None = None
    finished: Finished | None = None
    text: str = ""
    logprobs: list[LogprobEntry] = field(default_factory=list)
    pieces: int = 0

    @property
    def done(self) -> bool:
        return self.finished is not None or self.refused is not None

    @property
    def raw(self) -> bytes:
        """The sampled tokens' bytes (needs logprobs)."""
        return b"".join(entry[2] for entry in self.logprobs)


class WorkerProc:
    """A worker process and the node's end of its socket."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        ours, child = socket.socketpair()
        self.conn = Channel(ours)
        self.proc = ctx.Process(target=worker.main, args=(spec, child), daemon=True)
        self.proc.start()
        child.close()
        self.results: dict[int, Result] = {}
        self.steps = 0  # Steps messages read

    def recv(self) -> object:
        if not self.conn.poll(TIMEOUT):
            raise TimeoutError(f"the worker sent nothing for {TIMEOUT} s")
        return self.conn.recv()

    def ready(self) -> Ready:
        msg = self.recv()
        assert isinstance(msg, Ready), msg
        return msg

    def submit(self, req_id: int, prompt: str, **sampling: object) -> None:
        special = bool(sampling.pop("special", False))
        reference = bool(sampling.pop("reference", False))
        self.results[req_id] = Result()
        self.conn.send(Submit(req_id, prompt, Sampling(**sampling), special=special, reference=reference))

    def pump(self) -> Steps:
        """Read one Steps message into `results`."""
        msg = self.recv()
        assert isinstance(msg, Steps), msg
        self.steps += 1
        for event in msg.events:
            r = self.results[event.req_id]
            assert not r.done, f"event after the end of request {event.req_id}: {event}"
            if isinstance(event, Started):
                r.started = event
            elif isinstance(event, Refused):
                r.refused = event
            elif isinstance(event, Finished):
                r.finished = event
            else:
                assert r.started is not None
                r.pieces += 1
                r.text += event.text
                r.logprobs.extend(event.logprobs or ())
        return msg

    def wait(self, *req_ids: int) -> list[Result]:
        while not all(self.results[i].done for i in req_ids):
            self.pump()
        return [self.results[i] for i in req_ids]

    def run(self, req_id: int, prompt: str, **sampling: object) -> Result:
        self.submit(req_id, prompt, **sampling)
        return self.wait(req_id)[0]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(Stop())
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()


@contextlib.contextmanager
def running(spec: WorkerSpec) -> Iterator[WorkerProc]:
    w = WorkerProc(spec)
    try:
        w.ready()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=1, context=512)


@pytest.fixture(scope="module")
def eos_prone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose EOS logit is scaled up, so greedy generation ends early on EOS."""
    path = write_tiny_llama(tmp_path_factory.mktemp("models") / "eos.gguf", seed=2, context=512)
    return scale_eos(path, 6.0)


def spec_for(path: Path, **kw: object) -> WorkerSpec:
    base: dict[str, object] = dict(
        n_ctx=512, threads=2, slots=4, n_batch=64, prefill_chunk=16, reference_ctx=256
    )
    base.update(kw)
    return WorkerSpec(model_path=str(path), **base)  # type: ignore[arg-type]


def greedy(max_tokens: int, **kw: object) -> dict[str, object]:
    return dict(max_tokens=max_tokens, temperature=0.0, **kw)


# -- tests -----------------------------------------------------------------------------------------


def test_ready_describesTheModel(tiny: Path) -> None:
    w = WorkerProc(spec_for(tiny, slots=3, n_ctx=256, reference_ctx=128))
    try:
        ready = w.ready()
        assert (ready.n_ctx, ready.n_ctx_train, ready.n_vocab) == (256, 512, 269)
        assert (ready.slots, ready.reference_ctx) == (3, 128)
        assert (ready.bos_text, ready.eos_text) == ("<s>", "</s>")
        assert ready.llama_cpp_version == "0.3.36"
        assert "CPU" in ready.system_info
    finally:
        w.stop()
    assert w.proc.exitcode == 0


def test_greedy_matchesInProcessLlama(tiny: Path) -> None:
    """The worker's greedy text is llama-cpp-python's. llama-cpp-python samples a few tokens past
    max_tokens while a UTF-8 character is incomplete and drops invalid bytes, so the worker runs for
    the number of tokens it reports and its U+FFFD replacements are removed before comparing."""
    llm = Llama(str(tiny), n_ctx=512, seed=0, logits_all=False, verbose=False)
    with running(spec_for(tiny)) as w:
        for i, prompt in enumerate(PROMPTS):
            want = llm.create_completion(prompt, max_tokens=48, temperature=0)
            n = want["usage"]["completion_tokens"]
            got = w.run(i, prompt, **greedy(n))
            assert got.finished is not None and got.started is not None
            assert got.finished.prompt_tokens == want["usage"]["prompt_tokens"] == got.started.prompt_tokens
            assert got.finished.completion_tokens == n
            assert got.finished.finish == "length"
            assert got.text.replace("\ufffd", "") == want["choices"][0]["text"]
            # The same request again, with logprobs: the same text, and the raw bytes behind it.
            again = w.run(100 + i, prompt, **greedy(n, logprobs=0))
            assert again.text == got.text
            assert again.raw.decode("utf-8", "replace") == got.text


def test_concurrent_fourRequestsMatchTheirSingleRuns(tiny: Path) -> None:
    """Four requests in one batch finish with exact counts, each with the text it has alone. On
    this tiny model the greedy tokens agree; the logprobs of a batched run are not bit-identical to
    a single run (llama.cpp's kernels depend on the batch), only close."""
    with running(spec_for(tiny)) as w:
        alone = [w.run(i, p, **greedy(120, logprobs=2)) for i, p in enumerate(PROMPTS)]
        for i, p in enumerate(PROMPTS):
            w.submit(10 + i, p, **greedy(120, logprobs=2))
        steps = w.steps
        together = w.wait(*(10 + i for i in range(len(PROMPTS))))
        steps = w.steps - steps
        for a, t in zip(alone, together, strict=True):
            assert t.finished is not None and a.finished is not None
            assert (t.finished.finish, t.finished.completion_tokens) == ("length", 120)
            assert t.finished.prompt_tokens == a.finished.prompt_tokens
            assert t.text == a.text
            assert [e[2] for e in t.logprobs] == [e[2] for e in a.logprobs]
            diff = np.abs(np.array([e[1] for e in t.logprobs]) - np.array([e[1] for e in a.logprobs]))
            assert diff.max() < 0.05
        # They really shared steps: one Steps message per step carries every request's piece.
        assert steps < sum(r.pieces for r in together) / 2


def test_burst_toAnIdleWorker_isPrefilledInOneStep(tiny: Path) -> None:
    """Requests arriving close together at an idle worker start in the same step: the first Steps
    message starts them all and carries each one's first token (logprobs make every token a
    Piece). Without the window the first request is stepped alone before the next one arrives."""
    spec = spec_for(tiny, n_batch=256, prefill_chunk=128)

    def first_step(window: float) -> set[int]:
        with running(dataclasses.replace(spec, burst_window_s=window)) as w:
            for i, p in enumerate(PROMPTS):
                w.submit(i, p, **greedy(4, logprobs=0))
                time.sleep(0.01)  # a burst spread over 40 ms, as requests arriving from clients
            first = w.pump()
            started = {e.req_id for e in first.events if isinstance(e, Started)}
            if window:
                assert {e.req_id for e in first.events if isinstance(e, Piece)} == started
            w.wait(*range(len(PROMPTS)))
            return started

    assert first_step(0.05) == set(range(len(PROMPTS)))
    assert first_step(0.0) == {0}


def test_stream_interleavesWhileLongPromptPrefills(tiny: Path) -> None:
    """A running stream keeps getting a token every step while another prompt prefills."""
    with running(spec_for(tiny, slots=2, prefill_chunk=4)) as w:
        # logprobs make every token a Piece: without them a step that samples half of a UTF-8
        # character sends no text for request 1, which is right but not what this test measures.
        w.submit(1, "def", **greedy(300, logprobs=0))
        while not w.results[1].pieces:
            w.pump()
        w.submit(2, "the code " * 20, **greedy(5))  # ~260 tokens: 65 prefill steps
        while not (w.results[2].started or w.results[2].done):
            w.pump()
        assert w.results[2].started is not None
        before = w.results[1].pieces
        while not w.results[2].pieces:
            msg = w.pump()
            if not w.results[1].done:
                assert any(isinstance(e, Piece) and e.req_id == 1 for e in msg.events)
        assert w.results[1].pieces > before
        w.wait(1, 2)


def test_stream_goesOnWhileALongPromptIsTokenized(tmp_path: Path) -> None:
    """100 KB of "a " takes this vocabulary's tokenizer over half a second (slower than linear):
    the running stream gets tokens meanwhile, then the prompt is refused for its token count."""
    endless = scale_eos(write_tiny_llama(tmp_path / "endless.gguf", seed=1, context=16384), 0.0)
    with running(spec_for(endless, n_ctx=16384, slots=3, reference_ctx=0)) as w:
        w.submit(1, "def", **greedy(16000, logprobs=0))
        while not w.results[1].pieces:
            w.pump()
        w.submit(2, "a " * 50_000, **greedy(1))
        w.submit(3, "x", **greedy(1))  # its Started marks when the worker had read both
        during = 0  # request 1's tokens after 3 started and before 2 was answered
        while not w.results[2].done:
            events = w.pump().events
            if w.results[3].started is not None and not any(e.req_id in (2, 3) for e in events):
                during += sum(isinstance(e, Piece) and e.req_id == 1 for e in events)
        refused = w.results[2].refused
        assert refused is not None and refused.param == "prompt" and "tokens" in refused.message
        # Tokenized in the loop, 2 would be answered before 3 started, with no step between.
        assert during > 0
        w.conn.send(Cancel(1))
        assert w.wait(1)[0].finished is not None


def test_cancel_duringDecode_freesTheSlot(tiny: Path) -> None:
    with running(spec_for(tiny, slots=1)) as w:
        w.submit(1, "def", **greedy(500))
        w.submit(2, "print", **greedy(3))  # waits: the only slot is taken
        while not w.results[1].pieces:
            w.pump()
        assert w.results[2].started is None
        w.conn.send(Cancel(1))
        first, second = w.wait(1, 2)
        assert first.finished is not None and first.finished.finish == "cancelled"
        assert 1 <= first.finished.completion_tokens < 500
        assert second.started is not None and second.finished is not None
        assert (second.finished.finish, second.finished.completion_tokens) == ("length", 3)
        # The freed sequence decodes from a clean KV cache: the same text as in a fresh worker.
        assert w.run(3, "def", **greedy(20)).text == w.run(4, "def", **greedy(20)).text


def test_cancel_duringPrefill_freesTheSlot(tiny: Path) -> None:
    with running(spec_for(tiny, slots=1, prefill_chunk=1)) as w:
        w.submit(1, "the code " * 30, **greedy(10))  # ~390 tokens, one per step
        w.conn.send(Cancel(1))  # arrives while hundreds of prefill steps remain
        (cancelled,) = w.wait(1)
        assert cancelled.started is not None and cancelled.finished is not None
        assert (cancelled.finished.finish, cancelled.finished.completion_tokens) == ("cancelled", 0)
        assert cancelled.finished.prompt_tokens == cancelled.started.prompt_tokens
        after = w.run(2, "def", **greedy(4))
        assert after.finished is not None and after.finished.finish == "length"
        # A Cancel for a request that already ended is ignored.
        w.conn.send(Cancel(2))
        assert w.run(3, "def", **greedy(4)).text == after.text


def test_stopString_endsTheRequestBeforeIt(tiny: Path) -> None:
    with running(spec_for(tiny)) as w:
        full = w.run(1, "print the code", **greedy(200, logprobs=0))
        text = full.text
        start = next(
            i
            for i in range(len(text) // 3, len(text) - 3)
            if "\ufffd" not in text[i : i + 3] and text[i] not in text[:i]
        )
        stop = text[start : start + 3]
        got = w.run(2, "print the code", **greedy(200, stops=("no such stop", stop)))
        assert got.finished is not None and got.finished.finish == "stop"
        assert got.text == text[:start]
        # The count includes the token that completed the stop string.
        tokens = [e[2] for e in full.logprobs]
        n = next(
            k for k in range(1, len(tokens) + 1) if stop in b"".join(tokens[:k]).decode("utf-8", "replace")
        )
        assert got.finished.completion_tokens == n


def test_logprobs_shapeAndGreedyTokenIsTheMax(tiny: Path) -> None:
    with running(spec_for(tiny)) as w:
        got = w.run(1, "def fix the bug", **greedy(30, logprobs=5))
        assert got.finished is not None
        assert len(got.logprobs) == got.finished.completion_tokens == 30
        for text, logprob, raw, top in got.logprobs:
            assert len(top) == 5
            values = [t[1] for t in top]
            assert values == sorted(values, reverse=True)
            assert logprob == values[0] and raw == top[0][2]
            assert text == raw.decode("utf-8", "replace")
            assert all(v <= 0.0 for v in values)
            assert sum(np.exp(values)) <= 1.0 + 1e-9
        sampled = w.run(2, "def fix the bug", max_tokens=30, temperature=0.9, seed=7, logprobs=0)
        assert len(sampled.logprobs) == 30 and all(e[3] == () for e in sampled.logprobs)
        # A fixed seed repeats; another seed (almost surely) does not.
        assert w.run(3, "def fix the bug", max_tokens=30, temperature=0.9, seed=7).text == sampled.text
        assert w.run(4, "def fix the bug", max_tokens=30, temperature=0.9, seed=8).text != sampled.text


def test_reference_identicalTwiceAlsoWhileOthersStream(tiny: Path) -> None:
    with running(spec_for(tiny)) as w:
        ask = dict(reference=True, **greedy(40, logprobs=5))
        first = w.run(1, "def fix the bug", **ask)
        for i in range(3):
            w.submit(10 + i, PROMPTS[i], **greedy(400))
        for r in (10, 11, 12):
            while w.results[r].started is None:
                w.pump()
        second = w.run(2, "def fix the bug", **ask)
        assert not all(w.results[r].done for r in (10, 11, 12))  # they were streaming meanwhile
        w.submit(3, "def fix the bug", **ask)
        w.submit(4, "def fix the bug", **ask)  # queued behind 3 inside the worker
        third, fourth = w.wait(3, 4)
        w.wait(10, 11, 12)
        assert first.finished is not None and first.finished.completion_tokens == 40
        for other in (second, third, fourth):
            assert other.finished == Finished(
                other.finished.req_id, "length", first.finished.prompt_tokens, 40
            )
            assert other.text == first.text
            assert other.logprobs == first.logprobs  # floats compared exactly


def test_eos_finishesWithStopAndIsCounted(eos_prone: Path) -> None:
    with running(spec_for(eos_prone)) as w:
        results = [w.run(i, p, **greedy(200, logprobs=0)) for i, p in enumerate(PROMPTS)]
        stopped = [r for r in results if r.finished is not None and r.finished.finish == "stop"]
        assert stopped, "the EOS-prone model never sampled EOS"
        for r in stopped:
            assert r.finished is not None
            # EOS is counted but not output: one logprobs entry per token before it.
            assert r.finished.completion_tokens == len(r.logprobs) + 1
            assert "</s>" not in r.text


def test_special_promptParsesBosOnce(tiny: Path) -> None:
    with running(spec_for(tiny)) as w:
        plain = w.run(1, "def", **greedy(1))
        special = w.run(2, "<s>def", special=True, **greedy(1))
        literal = w.run(3, "<s>def", **greedy(1))
        assert plain.started is not None and special.started is not None and literal.started is not None
        assert special.started.prompt_tokens == plain.started.prompt_tokens
        assert literal.started.prompt_tokens > plain.started.prompt_tokens
        assert special.text == plain.text


def test_refused_whenPromptDoesNotFit(tiny: Path) -> None:
    with running(spec_for(tiny, n_ctx=64, reference_ctx=32)) as w:
        ok = w.run(1, "def", **greedy(8))
        assert ok.started is not None
        n = ok.started.prompt_tokens
        exact = w.run(2, "def", **greedy(64 - n))
        assert exact.finished is not None and exact.finished.completion_tokens == 64 - n
        over = w.run(3, "def", **greedy(65 - n))
        assert over.refused is not None and over.refused.param == "prompt" and over.started is None
        long = w.run(4, "the code " * 30, **greedy(1))
        assert long.refused is not None and long.refused.param == "prompt"
        ref = w.run(5, "def", reference=True, **greedy(33 - n))
        assert ref.refused is not None and ref.refused.param == "prompt"
        assert w.run(6, "def", reference=True, **greedy(32 - n)).finished is not None
        bad = w.run(7, "def", **greedy(0))
        assert bad.refused is not None and bad.refused.param == "max_tokens"
        # An empty prompt is BOS alone on this vocabulary: it runs.
        empty = w.run(8, "", **greedy(2))
        assert empty.started is not None and empty.started.prompt_tokens == 1
        # Far more bytes than 64 tokens can hold: refused before tokenizing (this 1 MB takes this
        # vocabulary's tokenizer minutes, far past the TIMEOUT the answer must come within).
        huge = w.run(9, "a " * 500_000, **greedy(1))
        assert huge.refused is not None and huge.refused.param == "prompt"
        assert "1000000 bytes" in huge.refused.message


def test_refused_referenceWhenThePathIsOff(tiny: Path) -> None:
    with running(spec_for(tiny, reference_ctx=0)) as w:
        got = w.run(1, "def", reference=True, **greedy(4))
        assert got.refused is not None and got.refused.param == "reference"
        assert w.run(2, "def", **greedy(4)).finished is not None


def test_stop_whileStreaming_exitsZero(tiny: Path) -> None:
    w = WorkerProc(spec_for(tiny))
    try:
        w.ready()
        w.submit(1, "def", **greedy(400))
        w.submit(2, "the code", **greedy(400))
        while not w.results[2].pieces:
            w.pump()
        w.conn.send(Stop())
        w.proc.join(TIMEOUT)
        assert w.proc.exitcode == 0
    finally:
        w.stop()


@pytest.mark.parametrize("content", [b"this is not a gguf file\n" * 100, None])
def test_fatal_whenTheFileIsNoModel(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.gguf"
    if content is not None:
        path.write_bytes(content)
    w = WorkerProc(spec_for(path))
    try:
        msg = w.recv()
        assert isinstance(msg, Fatal)
        assert str(path) in msg.message
        w.proc.join(TIMEOUT)
        assert w.proc.exitcode not in (0, None)
    finally:
        w.stop()


# -- the socket between the node and a worker -------------------------------------------------------


def test_unframer_wholeMessagesHoweverTheBytesAreSplit() -> None:
    messages = [Cancel(1), Submit(2, "x" * 70_000, Sampling(max_tokens=3)), Stop()]
    data = b"".join(frame(m) for m in messages)
    for size in (1, 3, 4096, len(data)):
        unframer, out = Unframer(), []
        for i in range(0, len(data), size):
            out += unframer.feed(data[i : i + size])
        assert out == messages


def test_unframer_refusesAnAbsurdLength() -> None:
    with pytest.raises(ValueError, match="corrupt"):
        Unframer().feed(b"\xff\xff\xff\xff" + b"x" * 10)


def test_channel_recvRaisesEOFErrorOnceThePeerClosed() -> None:
    a, b = socket.socketpair()
    ours = Channel(a)
    try:
        b.sendall(frame(Cancel(7)))
        b.close()
        assert ours.poll(1) and ours.recv() == Cancel(7)
        with pytest.raises(EOFError):
            ours.recv()
    finally:
        ours.close()


def test_workerProcess_aLongPromptToAStoppedWorkerNeverBlocksTheLoop(tiny: Path) -> None:
    # 4 MB is far more than the socket buffer: a blocking write would wait for the worker to read,
    # and a stopped worker never does. The timer only ends the test if that regression comes back.
    async def scenario() -> list[object]:
        worker = await WorkerProcess.start("tiny", spec_for(tiny), lambda w: None)
        try:
            await worker.wait_ready(TIMEOUT)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGSTOP)
            rescue = threading.Timer(TIMEOUT, os.kill, (worker.pid, signal.SIGCONT))
            rescue.start()
            try:
                queue = worker.submit(Submit(1, "a " * 2_000_000, Sampling(max_tokens=0)))
                assert rescue.is_alive(), "submit blocked until the worker was woken"
                assert worker._transport is not None and worker._transport.get_write_buffer_size() > 0
            finally:
                rescue.cancel()
                os.kill(worker.pid, signal.SIGCONT)
            return [await asyncio.wait_for(queue.get(), TIMEOUT)]
        finally:
            await worker.stop()

    (event,) = asyncio.run(scenario())
    assert isinstance(event, Refused) and event.param == "max_tokens"  # refused at once: no tokenizing
