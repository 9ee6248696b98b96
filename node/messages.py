"""What the node's HTTP side and a model's worker process say to each other over their pipe.

Plain frozen dataclasses (pickled by multiprocessing), with no imports of ours: the worker process
imports only these, the slot scheduler and llama_cpp. The parent sends `Submit`, `Cancel` and `Stop`;
the worker answers `Ready` once after loading (or `Fatal`), then one `Steps` message per decode step
carrying every event of that step for every sequence, so IPC cost grows with steps, not tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
