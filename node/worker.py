"""The model's worker process: llama.cpp behind a socket, continuous batching over slots.

`main(spec, sock)` is the child's entry (multiprocessing, spawn context). It loads the model with
llama.cpp's low-level API, answers `Ready` (or `Fatal`), then loops: read every pending message,
let waiting requests into free slots, run one `llama_decode` over the planned batch of the main
context (and one step of the reference context), sample each sequence that has logits with its own
sampler chain, and send everything that happened in one `Steps` message.

The reference context decodes one request at a time, alone, its prompt in one ubatch, so its logits
are those of a single-sequence run of this build, bit for bit, whatever the main context serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import socket
import sys
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llama_cpp
import numpy as np

from node.batching import Plan, SlotScheduler, TextStream
from node.messages import (
    Cancel,
    Channel,
    Event,
    Fatal,
    Finish,
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
    WorkerSpec,
)

# ggml's log levels (ggml.h; llama_cpp/_logger.py lists older values).
_LOG_WARN, _LOG_ERROR, _LOG_CONT = 3, 4, 5
# Prompts up to this size are tokenized in the loop: at most ~15 ms on the slowest text measured
# (code, on Gemma's vocabulary); longer ones on the tokenizer thread, so running streams go on.
INLINE_TOKENIZE_BYTES = 16 << 10
_TOKENIZED_POLL_S = 0.002  # an otherwise idle loop's wait while a long prompt is tokenized
_DECODE_ERRORS = {
    1: "no KV cache slot for the batch",
    2: "aborted",
    -1: "invalid input batch",
}


class WorkerError(Exception):
    """The worker cannot go on; `message` is what the parent gets in `Fatal`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _LlamaLog:
    """llama.cpp's log: recent warnings and errors are kept for `Fatal` messages, errors also go to
    stderr, the rest (load progress, tensor listings) is dropped."""

    def __init__(self, keep: int = 12) -> None:
        self._lines: deque[str] = deque(maxlen=keep)
        self._level = 0
        # ctypes keeps no reference to a callback it hands to C: this attribute does.
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes | None, _user: Any) -> None:
        if level != _LOG_CONT:
            self._level = level
        if self._level < _LOG_WARN or not text:
            return
        line = text.decode("utf-8", "replace").strip()
        if line:
            self._lines.append(line)
            if self._level >= _LOG_ERROR:
                print(f"llama.cpp: {line}", file=sys.stderr, flush=True)

    def recent(self) -> str:
        return " | ".join(self._lines) or "no message from llama.cpp"


class _Request:
    """A request in a slot: its sampler chain (None: greedy, an argmax over the logits), text
    stream and exact token counts."""

    __slots__ = ("logprobs", "max_tokens", "n_completion", "n_prompt", "req_id", "sampler", "stream")

    def __init__(self, req_id: int, n_prompt: int, sampling: Sampling, sampler: Any | None) -> None:
        self.req_id = req_id
        self.n_prompt = n_prompt
        self.n_completion = 0
        self.max_tokens = sampling.max_tokens
        self.logprobs = sampling.logprobs
        self.sampler = sampler
        self.stream = TextStream(sampling.stops)


class _Lane:
    """One llama.cpp context: its batch (allocated once), slot scheduler, requests in slots and
    requests waiting for a slot."""

    def __init__(self, name: str, ctx: Any, n_ctx: int, slots: int, n_batch: int, prefill_chunk: int) -> None:
        self.name = name
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = n_ctx  # tokens one request may use
        self.sched = SlotScheduler(slots, n_batch, prefill_chunk)
        self.requests: dict[int, _Request] = {}
        self.waiting: deque[tuple[Submit, list[int]]] = deque()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        b = self.batch
        self.tokens = np.ctypeslib.as_array(b.token, shape=(n_batch,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(n_batch,))
        self.logits = np.ctypeslib.as_array(b.logits, shape=(n_batch,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(n_batch,))[:] = 1
        self.seq_ids = [b.seq_id[i] for i in range(n_batch)]  # each points at one llama_seq_id

    @property
    def busy(self) -> bool:
        return bool(self.requests or self.waiting)

    def fill(self, plan: Plan) -> None:
        """Write the plan into the batch."""
        tokens, pos, logits, seq_ids = self.tokens, self.pos, self.logits, self.seq_ids
        for c in plan.chunks:
            i, k = c.index, len(c.tokens)
            if k == 1:
                tokens[i] = c.tokens[0]
                pos[i] = c.pos
                logits[i] = c.logits
                seq_ids[i][0] = c.seq_id
            else:
                tokens[i : i + k] = c.tokens
                pos[i : i + k] = np.arange(c.pos, c.pos + k, dtype=np.int32)
                logits[i : i + k - 1] = 0
                logits[i + k - 1] = c.logits
                s = c.seq_id
                for j in range(i, i + k):
                    seq_ids[j][0] = s
        self.batch.n_tokens = plan.n_tokens


class _Worker:
    def __init__(self, spec: WorkerSpec, conn: Channel) -> None:
        self.spec = spec
        self.conn = conn
        self.log = _LlamaLog()
        self._load()
        self._pieces: dict[int, tuple[bytes, bool]] = {}  # token -> (bytes, is end of generation)
        self._piece_buf = ctypes.create_string_buffer(256)
        # Long prompts are tokenized beside the loop (max_piece says why); their requests wait
        # here, by id, until their tokens are ready.
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self.tokenizing: dict[int, tuple[Submit, _Lane, Future[list[int]]]] = {}

    # -- loading -------------------------------------------------------------------------------

    def _load(self) -> None:
        spec = self.spec
        if spec.slots < 1 or spec.n_ctx < 1 or spec.n_batch < spec.slots:
            raise WorkerError(
                f"bad worker settings: slots {spec.slots}, n_ctx {spec.n_ctx}, n_batch {spec.n_batch} "
                "(need slots >= 1 and n_batch >= slots)"
            )
        if spec.slots > llama_cpp.llama_max_parallel_sequences():
            raise WorkerError(
                f"slots {spec.slots} exceed llama.cpp's {llama_cpp.llama_max_parallel_sequences()} sequences"
            )
        if not os.path.isfile(spec.model_path):
            raise WorkerError(f"model file not found: {spec.model_path}")
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = spec.gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(os.fsencode(spec.model_path), mparams)
        if not self.model:
            raise WorkerError(
                f"llama.cpp could not load {spec.model_path} (not a GGUF model it supports?): "
                f"{self.log.recent()}"
            )
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)) and self.bos >= 0

        n_total = spec.n_ctx * spec.slots
        n_batch = min(spec.n_batch, n_total)
        ctx = self._context(n_total, n_batch, spec.slots, "main")
        n_batch = min(n_batch, llama_cpp.llama_n_batch(ctx), llama_cpp.llama_n_ubatch(ctx))
        self.main = _Lane("main", ctx, spec.n_ctx, spec.slots, n_batch, min(spec.prefill_chunk, n_batch))
        self.ref: _Lane | None = None
        if spec.reference_ctx > 0:
            r = spec.reference_ctx
            rctx = self._context(r, r, 1, "reference")
            self.ref = _Lane("reference", rctx, r, 1, r, r)
        self.lanes = (self.main, self.ref) if self.ref is not None else (self.main,)

    @functools.cached_property
    def max_piece(self) -> int:
        """The most bytes of text one token stands for (special tokens' text included). Every token
        of a prompt covers at most this many of its bytes, so a prompt longer than this times the
        tokens it may have cannot fit, and is refused without tokenizing it: llama.cpp's tokenizer
        is slower than linear on some text (216 KB of code: 2.3 s for Gemma, 4x the time of 108 KB),
        so tokenizing a 1 MB prompt only to refuse it would take the streams' CPU for a minute.
        Found on first need (a scan of Gemma's 262,144 tokens takes 0.3 s): a prompt of no more
        bytes than the tokens it may have always passes. Sound for SPM and BPE vocabularies, whose
        pieces spell the text back whole (SPM's "▁" for a space only adds bytes); the others may
        normalize text away, so for them the bound is 0: off."""
        if llama_cpp.llama_vocab_type(self.vocab) not in (
            llama_cpp.LLAMA_VOCAB_TYPE_SPM,
            llama_cpp.LLAMA_VOCAB_TYPE_BPE,
        ):
            return 0
        buf = ctypes.create_string_buffer(1024)
        longest = 1
        for token in range(self.n_vocab):
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            longest = max(longest, abs(n))  # negative: the piece needs -n bytes
        return longest

    def _context(self, n_ctx: int, n_batch: int, n_seq: int, name: str) -> Any:
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = n_batch
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = self.spec.threads
        p.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.spec.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        p.kv_unified = True
        p.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.model, p)
        if not ctx:
            raise WorkerError(
                f"llama.cpp could not create the {name} context (n_ctx {n_ctx}, n_batch {n_batch}, "
                f"sequences {n_seq}; lower n_ctx or slots if memory is short): {self.log.recent()}"
            )
        return ctx

    def ready(self) -> Ready:
        return Ready(
            n_ctx=self.spec.n_ctx,
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(self.model),
            n_vocab=self.n_vocab,
            slots=self.spec.slots,
            reference_ctx=self.spec.reference_ctx,
            bos_text=self._vocab_text(self.bos),
            eos_text=self._vocab_text(self.eos),
            llama_cpp_version=llama_cpp.__version__,
            system_info=(llama_cpp.llama_print_system_info() or b"").decode("utf-8", "replace").strip(),
        )

    def _vocab_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until Stop (or the node's end of the socket closes)."""
        conn = self.conn
        lanes = self.lanes
        while True:
            events: list[Event] = []
            try:
                idle = not any(lane.busy for lane in lanes)
                if idle and not self.tokenizing:
                    if self._handle(conn.recv(), events) or self._gather_burst(events):
                        return
                elif idle:
                    conn.poll(_TOKENIZED_POLL_S)  # a message, or time to look at the tokenizer again
                while conn.poll(0):
                    if self._handle(conn.recv(), events):
                        return
            except EOFError:
                return
            if self.tokenizing:
                self._collect_tokenized(events)
            for lane in lanes:
                if lane.waiting and lane.sched.free_slots:
                    self._admit(lane, events)
                if lane.requests:
                    self._step(lane, events)
            if events:
                conn.send(Steps(tuple(events)))

    def _gather_burst(self, events: list[Event]) -> bool:
        """After a message woke the idle worker: take the requests that follow it closely (a burst)
        before the first step, while slots are free. True means stop."""
        window = self.spec.burst_window_s
        deadline = time.monotonic() + 5 * window
        main = self.main
        while main.sched.free_slots and not main.waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(min(window, left)):
                return False
            if self._handle(self.conn.recv(), events):
                return True
        return False

    def _handle(self, msg: object, events: list[Event]) -> bool:
        """Apply one message; True means stop."""
        if isinstance(msg, Submit):
            self._submit(msg, events)
        elif isinstance(msg, Cancel):
            self._cancel(msg.req_id, events)
        elif isinstance(msg, Stop):
            return True
        else:
            raise WorkerError(f"unexpected message {type(msg).__name__} on the worker's socket")
        return False

    def _submit(self, msg: Submit, events: list[Event]) -> None:
        rid = msg.req_id
        if rid in self.tokenizing or any(
            rid in lane.requests or any(w.req_id == rid for w, _ in lane.waiting) for lane in self.lanes
        ):
            events.append(Refused(rid, f"request id {rid} is already running", None))
            return
        lane = self.main
        if msg.reference:
            if self.ref is None:
                events.append(
                    Refused(rid, "this worker has no reference path (reference_ctx 0)", "reference")
                )
                return
            lane = self.ref
        max_tokens = msg.sampling.max_tokens
        if max_tokens < 1:
            events.append(Refused(rid, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens"))
            return
        room = lane.n_ctx - max_tokens  # BOS left out: the bound stays sound when the text holds it
        data = msg.prompt.encode("utf-8")
        size = len(data)
        if size > room and self.max_piece and size > room * self.max_piece:
            events.append(
                Refused(
                    rid,
                    f"the prompt has {size} bytes: with max_tokens {max_tokens} it would exceed the "
                    f"{lane.name} context of {lane.n_ctx} tokens (a token holds at most {self.max_piece} "
                    "bytes of this model's text)",
                    "prompt",
                )
            )
            return
        if size > INLINE_TOKENIZE_BYTES:
            tokens = self._tokenizer.submit(self._tokenize, data, msg.special)
            self.tokenizing[rid] = (msg, lane, tokens)
            return
        self._queue(msg, lane, self._tokenize(data, msg.special), events)

    def _collect_tokenized(self, events: list[Event]) -> None:
        for rid, (msg, lane, future) in list(self.tokenizing.items()):
            if future.done():
                del self.tokenizing[rid]
                self._queue(msg, lane, future.result(), events)

    def _queue(self, msg: Submit, lane: _Lane, tokens: list[int], events: list[Event]) -> None:
        """A tokenized prompt: refused if it does not fit, else waiting for a slot of its lane."""
        rid, max_tokens = msg.req_id, msg.sampling.max_tokens
        if not tokens:
            events.append(Refused(rid, "the prompt is empty after tokenization", "prompt"))
            return
        if len(tokens) + max_tokens > lane.n_ctx:
            events.append(
                Refused(
                    rid,
                    f"the prompt has {len(tokens)} tokens and max_tokens is {max_tokens}: "
                    f"{len(tokens) + max_tokens} exceed the {lane.name} context of {lane.n_ctx} tokens",
                    "prompt",
                )
            )
            return
        lane.waiting.append((msg, tokens))
        if lane.sched.free_slots:
            self._admit(lane, events)

    def _admit(self, lane: _Lane, events: list[Event]) -> None:
        while lane.waiting and lane.sched.free_slots:
            msg, tokens = lane.waiting.popleft()
            if lane is self.ref:
                llama_cpp.llama_memory_clear(lane.mem, True)
            lane.sched.add(msg.req_id, tokens)
            lane.requests[msg.req_id] = _Request(
                msg.req_id, len(tokens), msg.sampling, self._sampler(msg.sampling)
            )
            events.append(Started(msg.req_id, len(tokens)))

    def _cancel(self, req_id: int, events: list[Event]) -> None:
        if self.tokenizing.pop(req_id, None) is not None:  # its tokens, when ready, are dropped
            events.append(Finished(req_id, "cancelled", 0, 0))
            return
        for lane in self.lanes:
            req = lane.requests.get(req_id)
            if req is not None:
                self._finish(lane, req, "cancelled", events)
                return
            for i, (msg, tokens) in enumerate(lane.waiting):
                if msg.req_id == req_id:
                    del lane.waiting[i]
                    events.append(Finished(req_id, "cancelled", len(tokens), 0))
                    return
        # Unknown: it finished already (a Cancel racing its Finished); nothing to do.

    def _finish(self, lane: _Lane, req: _Request, finish: Finish, events: list[Event]) -> None:
        seq = lane.sched.remove(req.req_id)
        if seq is not None:
            llama_cpp.llama_memory_seq_rm(lane.mem, seq.seq_id, -1, -1)
        del lane.requests[req.req_id]
        if req.sampler is not None:
            llama_cpp.llama_sampler_free(req.sampler)
        events.append(Finished(req.req_id, finish, req.n_prompt, req.n_completion))

    def _step(self, lane: _Lane, events: list[Event]) -> None:
        plan = lane.sched.plan()
        if not plan.n_tokens:
            return
        lane.fill(plan)
        rc = llama_cpp.llama_decode(lane.ctx, lane.batch)
        if rc != 0:
            why = _DECODE_ERRORS.get(rc, "fatal error")
            raise WorkerError(
                f"llama_decode returned {rc} ({why}) on the {lane.name} context for {plan.n_tokens} tokens: "
                f"{self.log.recent()}"
            )
        ctx = lane.ctx
        requests = lane.requests
        sample = llama_cpp.llama_sampler_sample
        pieces = self._pieces
        for c in plan.chunks:
            if not c.logits:
                continue
            req = requests[c.req_id]
            idx = c.output_index
            token = self._argmax(ctx, idx) if req.sampler is None else sample(req.sampler, ctx, idx)
            req.n_completion += 1
            hit = pieces.get(token)
            if hit is None:
                hit = self._piece(token)
            data, eog = hit
            stream = req.stream
            finish: Finish | None = None
            entry = None
            if eog:
                text = stream.flush()
                finish = "stop"
            else:
                if req.logprobs is not None:
                    entry = self._logprobs(ctx, idx, token, req.logprobs)
                text = stream.feed(data)
                if stream.stopped:
                    finish = "stop"
                elif req.n_completion >= req.max_tokens:
                    text += stream.flush()
                    finish = "stop" if stream.stopped else "length"
            if text or entry is not None:
                events.append(Piece(req.req_id, text, None if entry is None else (entry,), req.n_completion))
            if finish is None:
                lane.sched.accept(req.req_id, token)
            else:
                self._finish(lane, req, finish, events)

    # -- llama.cpp helpers ---------------------------------------------------------------------

    def _tokenize(self, data: bytes, special: bool) -> list[int]:
        """UTF-8 text's tokens. Also called on the tokenizer thread: its buffer is its own (ctypes
        lets go of the GIL inside llama_tokenize, which only reads the vocabulary, while
        llama_decode runs)."""
        vocab = self.vocab
        # SPM writes a space as "▁" (3 bytes), which a byte-fallback vocabulary may spell as 3
        # tokens: at most 3 tokens a byte, and the leading space. A short buffer would cost a
        # second tokenization (llama_tokenize reports the size it needed after doing the work).
        size = 3 * len(data) + 4
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, False, special)
        if n < 0:
            if n == -(2**31):
                raise WorkerError("llama_tokenize overflowed")
            buf = (llama_cpp.llama_token * (-n))()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, -n, False, special)
        tokens = buf[:n]
        # BOS as the vocabulary says, once: a rendered chat template may already start with it.
        if self.add_bos and not (special and tokens and tokens[0] == self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def _piece(self, token: int) -> tuple[bytes, bool]:
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        hit = (ctypes.string_at(buf, n), bool(llama_cpp.llama_vocab_is_eog(self.vocab, token)))
        self._pieces[token] = hit
        return hit

    def _token_entry(self, token: int, logprob: float) -> tuple[str, float, bytes]:
        hit = self._pieces.get(token) or self._piece(token)
        return hit[0].decode("utf-8", "replace"), logprob, hit[0]

    def _logprobs(self, ctx: Any, idx: int, token: int, n_top: int) -> LogprobEntry:
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        row = row.astype(np.float64)
        top = row.max()
        row -= top + np.log(np.exp(row - top).sum())  # log-softmax
        alternatives: tuple[tuple[str, float, bytes], ...] = ()
        if n_top > 0:
            k = min(n_top, self.n_vocab)
            ids = np.argpartition(row, -k)[-k:]
            ids = ids[np.argsort(-row[ids], kind="stable")]
            alternatives = tuple(self._token_entry(t, float(row[t])) for t in ids.tolist())
        text, logprob, data = self._token_entry(token, float(row[token]))
        return text, logprob, data, alternatives

    def _argmax(self, ctx: Any, idx: int) -> int:
        """llama.cpp's greedy choice (the first of the highest logits) without its sampler: that
        copies the whole vocabulary into a candidate array first, 1 ms per token on Gemma's
        262,144 tokens, 13% of a step at 8 sequences; numpy's argmax reads the row in 0.05 ms."""
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        return int(row.argmax())

    def _sampler(self, s: Sampling) -> Any | None:
        """A llama.cpp sampler chain for one request (freed when the request ends), or None for
        plain greedy decoding, which `_argmax` does."""
        penalized = bool(s.presence_penalty or s.frequency_penalty)
        if s.temperature <= 0 and not penalized:
            return None
        cp = llama_cpp.llama_sampler_chain_default_params()
        cp.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(cp)

        def add(smpl: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, smpl)  # the chain owns and frees it

        if penalized:
            # Over every generated token (the window is a request's context).
            add(
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab, self.spec.n_ctx, 1.0, s.frequency_penalty, s.presence_penalty
                )
            )
        if s.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = random.getrandbits(32) if s.seed is None else s.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))
        return chain


def main(spec: WorkerSpec, sock: socket.socket) -> None:
    """The worker process: load, send Ready, serve until Stop (or the node's end closes). Sends
    Fatal and exits 1 when the model does not load or llama.cpp fails."""
    conn = Channel(sock)
    try:
        worker = _Worker(spec, conn)
        conn.send(worker.ready())
        worker.run()
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(1)  # the parent is gone: nobody to tell
    except Exception as exc:
        message = exc.message if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, WorkerError):
            traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(Fatal(message))
        sys.exit(1)
