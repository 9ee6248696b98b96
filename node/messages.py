"""What the node's HTTP side and a model's worker process say to each other over their socket.

Plain frozen dataclasses, pickled and framed by length, with no imports of ours: the worker process
imports only these, the slot scheduler and llama_cpp. The parent sends `Submit`, `Cancel` and `Stop`;
the worker answers `Ready` once after loading (or `Fatal`), then one `Steps` message per decode step
carrying every event of that step for every sequence, so IPC cost grows with steps, not tokens.

The framing is ours (not multiprocessing's Connection) because the two ends differ: the worker
blocks on its end (`Channel`), the node reads its end inside the event loop as bytes arrive
(`Unframer` in an asyncio protocol), so no reader thread wakes per step and a long prompt sent
to a busy worker never blocks the loop.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

_LENGTH = struct.Struct("!I")
MAX_MESSAGE = 1 << 31  # a sanity bound: the node's body limit keeps real messages far below it

# One generated token for `logprobs`: (text, logprob, raw bytes, top alternatives as
# (text, logprob, raw bytes)). Tuples, not classes, keep the per-token pickle small.
TopEntry = tuple[str, float, bytes]
LogprobEntry = tuple[str, float, bytes, tuple[TopEntry, ...]]

# "stop": EOS or a stop string; "length": max_tokens or the context; "cancelled": Cancel arrived.
Finish = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start a worker: the model file and llama.cpp's settings for it."""

    model_path: str
    n_ctx: int = 4096  # tokens one request may use (prompt + completion)
    threads: int = 4
    gpu_layers: int = 0
    slots: int = 4  # sequences decoded together in one batch
    n_batch: int = 512  # tokens per llama_decode call: decoding sequences first, prefill in the rest
    prefill_chunk: int = 256  # prompt tokens of one sequence per step, so running streams keep pace
    # Context of the reference path (a second llama.cpp context on the same weights, one sequence,
    # prompt in one ubatch). 0 turns the path off.
    reference_ctx: int = 512
    flash_attn: bool = False  # fixed, not "auto": it changes logits, and the reference path needs them stable
    burst_window_s: float = 0.002  # HostedModel.burst_window_ms says why


@dataclass(frozen=True, slots=True)
class Sampling:
    """Per-request sampling, already validated by the HTTP side."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stops: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; n: the chosen token and its n best alternatives


@dataclass(frozen=True, slots=True)
class Submit:
    """Start a request. `special`: the prompt is a rendered chat template whose special tokens
    (`<start_of_turn>`, BOS) are parsed as tokens; plain completions parse them as text."""

    req_id: int
    prompt: str
    sampling: Sampling
    special: bool = False
    reference: bool = False  # decode alone on the reference context


@dataclass(frozen=True, slots=True)
class Cancel:
    """Free the request's slot now (the client went away or timed out)."""

    req_id: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit: drop every sequence and end the process."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The model is loaded and the worker takes requests."""

    n_ctx: int  # per request
    n_ctx_train: int
    n_vocab: int
    slots: int
    reference_ctx: int
    bos_text: str  # the BOS and EOS tokens as text, for chat templates
    eos_text: str
    llama_cpp_version: str
    system_info: str  # llama.cpp's build and CPU features (AVX2, ...)


@dataclass(frozen=True, slots=True)
class Fatal:
    """The worker cannot go on (the model did not load, llama_decode failed); it exits after this."""

    message: str


@dataclass(frozen=True, slots=True)
class Started:
    """The prompt was tokenized and fits: the request has a slot."""

    req_id: int
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The request cannot run (its prompt does not fit the context, ...); `param` names the field."""

    req_id: int
    message: str
    param: str | None = None


@dataclass(frozen=True, slots=True)
class Piece:
    """New text of one request (complete UTF-8, stop strings held back until they cannot match)."""

    req_id: int
    text: str
    logprobs: tuple[LogprobEntry, ...] | None = None
    tokens: int = 0  # completion tokens generated so far: what a request cut short is billed


@dataclass(frozen=True, slots=True)
class Finished:
    """The request ended; the counts are exact (what payment bills)."""

    req_id: int
    finish: Finish
    prompt_tokens: int
    completion_tokens: int


Event = Started | Refused | Piece | Finished


@dataclass(frozen=True, slots=True)
class Steps:
    """Every event of one worker step, in order."""

    events: tuple[Event, ...] = field(default_factory=tuple)


# -- framing -------------------------------------------------------------------------------------


def frame(message: object) -> bytes:
    """A message as bytes on the socket: its pickle's length, then the pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Unframer:
    """Bytes in, whole messages out, however the stream was split."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[object]:
        buf = self._buf
        buf += data
        out: list[object] = []
        start = 0
        while len(buf) - start >= _LENGTH.size:
            (n,) = _LENGTH.unpack_from(buf, start)
            if n >= MAX_MESSAGE:
                raise ValueError(f"a message of {n} bytes on the worker socket: the stream is corrupt")
            end = start + _LENGTH.size + n
            if len(buf) < end:
                break
            out.append(pickle.loads(memoryview(buf)[start + _LENGTH.size : end]))
            start = end
        del buf[:start]
        return out


class Channel:
    """A blocking end of the socket (the worker's, and tests standing in for the node), with
    multiprocessing Connection's send / recv / poll; recv raises EOFError once the peer closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._unframer = Unframer()
        self._pending: deque[object] = deque()

    def send(self, message: object) -> None:
        self.sock.sendall(frame(message))

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or the peer's close) is ready within `timeout` seconds (None: wait)."""
        if self._pending:
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])

    def recv(self) -> object:
        while not self._pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("the other end of the worker socket closed")
            self._pending.extend(self._unframer.feed(data))
        return self._pending.popleft()

    def close(self) -> None:
        self.sock.close()
