"""Continuous batching without llama.cpp: which tokens go into the next llama batch, and the text.

`SlotScheduler` keeps up to `slots` sequences (one request each, one llama.cpp sequence id each) and
plans one step at a time: every decoding sequence's pending token first (so a running stream never
waits behind a long prompt), then chunks of waiting prompts in arrival order, at most
`prefill_chunk` tokens of one sequence and `n_batch` tokens in all. The last prompt token of a
sequence asks for logits; from then on the sequence decodes one sampled token per step.

`TextStream` turns one sequence's token bytes into text a client may see: complete UTF-8 only, and
nothing that could still turn out to be the start of a stop string.
"""

from __future__ import annotations

import codecs
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Phase = Literal["prefill", "decoding"]


class NoFreeSlotError(Exception):
    """`SlotScheduler.add` was called with every slot taken."""

    def __init__(self, slots: int) -> None:
        super().__init__(f"all {slots} slots are taken; wait for a request to finish")
        self.slots = slots


@dataclass(slots=True)
class SequenceState:
    """One request in a slot. `pos` is the position of the next token to decode."""

    req_id: int
    seq_id: int
    prompt: tuple[int, ...]
    prefilled: int = 0  # prompt tokens planned so far
    pos: int = 0
    pending: int | None = None  # the sampled token to decode next (decoding phase)

    @property
    def phase(self) -> Phase:
        return "decoding" if self.prefilled == len(self.prompt) else "prefill"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive tokens of one sequence in the batch, from batch index `index` and position `pos`.
    `logits`: the chunk's last token wants logits (a decoding token, or a prompt's last token)."""

    req_id: int
    seq_id: int
    index: int
    pos: int
    tokens: tuple[int, ...]
    logits: bool

    @property
    def output_index(self) -> int:
        """Batch index of the chunk's last token (whose logits are sampled when `logits`)."""
        return self.index + len(self.tokens) - 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What one llama_decode gets: `chunks` in batch order, `n_tokens` tokens in all."""

    chunks: tuple[Chunk, ...]
    n_tokens: int

    def outputs(self) -> Iterator[Chunk]:
        """The chunks whose last token is sampled after this step."""
        return (c for c in self.chunks if c.logits)


class SlotScheduler:
    """Slots, sequence ids and positions of the sequences one llama.cpp context decodes together."""

    def __init__(self, slots: int, n_batch: int, prefill_chunk: int) -> None:
        if slots < 1 or n_batch < 1 or prefill_chunk < 1:
            raise ValueError(
                f"slots {slots}, n_batch {n_batch} and prefill_chunk {prefill_chunk} must be >= 1"
            )
        if slots > n_batch:
            raise ValueError(f"slots {slots} exceed n_batch {n_batch}: every decoding token must fit a step")
        self.slots = slots
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk
        self._free_ids = list(range(slots))  # a heap: the lowest free id is reused first
        self._seqs: dict[int, SequenceState] = {}  # by req_id, in arrival order (dicts keep it)

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, req_id: object) -> bool:
        return req_id in self._seqs

    @property
    def free_slots(self) -> int:
        return self.slots - len(self._seqs)

    def sequences(self) -> tuple[SequenceState, ...]:
        """The sequences in slots, in arrival order."""
        return tuple(self._seqs.values())

    def get(self, req_id: int) -> SequenceState:
        return self._seqs[req_id]

    def add(self, req_id: int, prompt: Sequence[int]) -> SequenceState:
        """Give `req_id` a slot and a sequence id; its prompt is prefilled by the next plans."""
        if req_id in self._seqs:
            raise ValueError(f"request {req_id} already has a slot")
        if not prompt:
            raise ValueError(f"request {req_id} has an empty prompt")
        if not self._free_ids:
            raise NoFreeSlotError(self.slots)
        seq = SequenceState(req_id, heapq.heappop(self._free_ids), tuple(prompt))
        self._seqs[req_id] = seq
        return seq

    def remove(self, req_id: int) -> SequenceState | None:
        """Free the request's slot and sequence id (None if it had none)."""
        seq = self._seqs.pop(req_id, None)
        if seq is not None:
            heapq.heappush(self._free_ids, seq.seq_id)
        return seq

    def accept(self, req_id: int, token: int) -> None:
        """The token sampled for a decoding sequence: the next plan decodes it."""
        seq = self._seqs[req_id]
        if seq.prefilled != len(seq.prompt):
            raise ValueError(f"request {req_id} is still prefilling")
        seq.pending = token

    def plan(self) -> Plan:
        """The next step's batch; advances positions as if the batch was decoded."""
        chunks: list[Chunk] = []
        n = 0
        prefilling: list[SequenceState] = []
        for seq in self._seqs.values():
            if seq.prefilled < len(seq.prompt):
                prefilling.append(seq)
            elif seq.pending is not None:
                chunks.append(Chunk(seq.req_id, seq.seq_id, n, seq.pos, (seq.pending,), True))
                seq.pending = None
                seq.pos += 1
                n += 1
        for seq in prefilling:
            budget = self.n_batch - n
            if budget <= 0:
                break
            start = seq.prefilled
            take = min(self.prefill_chunk, budget, len(seq.prompt) - start)
            seq.prefilled = start + take
            last = seq.prefilled == len(seq.prompt)
            chunks.append(Chunk(seq.req_id, seq.seq_id, n, seq.pos, seq.prompt[start : start + take], last))
            seq.pos += take
            n += take
        return Plan(tuple(chunks), n)


class TextStream:
    """One sequence's output text: feed token bytes, get text that is complete UTF-8 and cannot be
    the start of a stop string. A matched stop string ends the stream (it is not output)."""

    __slots__ = ("_decoder", "_held", "_max_hold", "_prefixes", "_stops", "stop")

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops = tuple(s for s in dict.fromkeys(stops) if s)
        # Every proper prefix of a stop string: a text ending in one of these is held back.
        self._prefixes = frozenset(s[:k] for s in self._stops for k in range(1, len(s)))
        self._max_hold = max((len(s) - 1 for s in self._stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stop: str | None = None  # the stop string that ended the stream

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    def feed(self, data: bytes) -> str:
        """Text released by `data` (possibly empty). After a stop string matched, always ''."""
        if self.stop is not None:
            return ""
        text = self._decoder.decode(data)
        if not self._stops:
            return text
        return self._release(self._held + text, final=False)

    def flush(self) -> str:
        """The end of the sequence: release held text; an unfinished UTF-8 sequence becomes U+FFFD."""
        if self.stop is not None:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return self._release(text, final=True) if self._stops else text

    def _release(self, text: str, *, final: bool) -> str:
        # The stop string that completes first wins (the longest when several end together), so
        # the outcome does not depend on how the bytes were split into tokens.
        found, found_end = -1, 0
        for s in self._stops:
            i = text.find(s)
            if i != -1 and (found == -1 or (i + len(s), i) < (found_end, found)):
                found, found_end, self.stop = i, i + len(s), s
        if found != -1:
            self._held = ""
            return text[:found]
        if final:
            return text
        hold = 0
        for k in range(min(len(text), self._max_hold), 0, -1):
            if text[-k:] in self._prefixes:
                hold = k
                break
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]
