"""The slot scheduler and the text stream, without llama.cpp."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.batching import NoFreeSlotError, Plan, SlotScheduler, TextStream


def _run(
    sched: SlotScheduler, plan: Plan, decoded: dict[int, list[tuple[int, int]]], next_token: int
) -> None:
    """Record what the plan decodes per request and feed a token back to each sampled sequence."""
    for c in plan.chunks:
        decoded.setdefault(c.req_id, []).extend((c.pos + k, t) for k, t in enumerate(c.tokens))
    for c in plan.outputs():
        sched.accept(c.req_id, next_token)


# -- scheduler -------------------------------------------------------------------------------------


def test_plan_decodingTokensFirstThenPrefillInArrivalOrder() -> None:
    sched = SlotScheduler(slots=3, n_batch=8, prefill_chunk=4)
    sched.add(1, [10, 11])
    plan = sched.plan()
    assert [(c.req_id, c.tokens, c.logits) for c in plan.chunks] == [(1, (10, 11), True)]
    sched.accept(1, 99)
    sched.add(2, list(range(20, 30)))
    sched.add(3, [30, 31, 32])
    plan = sched.plan()
    assert [(c.req_id, c.index, c.pos, c.tokens, c.logits) for c in plan.chunks] == [
        (1, 0, 2, (99,), True),
        (2, 1, 0, (20, 21, 22, 23), False),
        (3, 5, 0, (30, 31, 32), True),
    ]
    assert plan.n_tokens == 8
    assert [c.output_index for c in plan.outputs()] == [0, 7]


def test_plan_batchBudgetSplitsPrefill() -> None:
    sched = SlotScheduler(slots=2, n_batch=5, prefill_chunk=100)
    sched.add(1, list(range(12)))
    sizes = []
    while sched.get(1).phase == "prefill":
        sizes.append(sched.plan().n_tokens)
    assert sizes == [5, 5, 2]
    assert sched.get(1).pos == 12


def test_add_fullSlotsRaise_removeFreesTheSeqIdForReuse() -> None:
    sched = SlotScheduler(slots=2, n_batch=4, prefill_chunk=4)
    a = sched.add(1, [1])
    b = sched.add(2, [1])
    assert {a.seq_id, b.seq_id} == {0, 1}
    with pytest.raises(NoFreeSlotError) as err:
        sched.add(3, [1])
    assert err.value.slots == 2
    assert sched.remove(1) is a
    assert sched.remove(1) is None
    assert sched.add(3, [5]).seq_id == a.seq_id
    assert 3 in sched and 1 not in sched


def test_add_refusesEmptyPromptAndDuplicates() -> None:
    sched = SlotScheduler(slots=2, n_batch=4, prefill_chunk=4)
    with pytest.raises(ValueError, match="empty"):
        sched.add(1, [])
    sched.add(1, [3])
    with pytest.raises(ValueError, match="already"):
        sched.add(1, [3])


def test_scheduler_refusesMoreSlotsThanBatch() -> None:
    with pytest.raises(ValueError, match="exceed n_batch"):
        SlotScheduler(slots=8, n_batch=4, prefill_chunk=4)


def test_plan_removedDuringPrefillIsNeverPlannedAgain() -> None:
    sched = SlotScheduler(slots=2, n_batch=4, prefill_chunk=2)
    sched.add(1, list(range(10)))
    sched.plan()
    sched.remove(1)
    assert sched.plan().n_tokens == 0


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(1, 6),
    extra_batch=st.integers(0, 40),
    prefill_chunk=st.integers(1, 30),
    prompts=st.lists(st.integers(1, 60), min_size=1, max_size=12),
    decode_steps=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_plan_properties(
    slots: int, extra_batch: int, prefill_chunk: int, prompts: list[int], decode_steps: int, seed: int
) -> None:
    """Budgets hold, decoding tokens lead every batch, every prompt token is decoded exactly once,
    in order, at consecutive positions, and each sequence decodes once per step after its prompt."""
    rng = random.Random(seed)
    n_batch = slots + extra_batch
    sched = SlotScheduler(slots, n_batch, prefill_chunk)
    queue = list(enumerate(prompts))
    expected = {rid: [rid * 1000 + k for k in range(n)] for rid, n in queue}
    decoded: dict[int, list[tuple[int, int]]] = {}
    steps_left = {rid: decode_steps for rid, _ in queue}
    for _ in range(10_000):
        while queue and sched.free_slots and rng.random() < 0.7:
            rid, _ = queue.pop(0)
            sched.add(rid, expected[rid])
        if not queue and not len(sched):
            break
        decoding_before = {s.req_id for s in sched.sequences() if s.phase == "decoding"}
        plan = sched.plan()
        assert plan.n_tokens == sum(len(c.tokens) for c in plan.chunks) <= n_batch
        seen: set[int] = set()
        index = 0
        for c in plan.chunks:
            assert c.index == index
            index += len(c.tokens)
            assert c.req_id not in seen
            seen.add(c.req_id)
            assert len(c.tokens) <= max(prefill_chunk, 1)
        # The decoding sequences come first, one token each, all of them.
        lead = [c.req_id for c in plan.chunks[: len(decoding_before)]]
        assert set(lead) == decoding_before
        assert all(len(c.tokens) == 1 and c.logits for c in plan.chunks[: len(decoding_before)])
        for c in plan.chunks[len(decoding_before) :]:
            assert c.logits == (sched.get(c.req_id).phase == "decoding")
        _run(sched, plan, decoded, next_token=-1)
        for c in plan.outputs():
            steps_left[c.req_id] -= 1
            if steps_left[c.req_id] == 0:
                sched.remove(c.req_id)
    assert not queue and not len(sched)
    for rid, prompt in expected.items():
        got = decoded[rid]
        assert [p for p, _ in got] == list(range(len(got)))
        assert [t for _, t in got[: len(prompt)]] == prompt
        assert [t for _, t in got[len(prompt) :]] == [-1] * (decode_steps - 1)


@settings(max_examples=50, deadline=None)
@given(prompt=st.integers(1, 3000), others=st.integers(1, 3))
def test_plan_runningStreamsNeverStarve(prompt: int, others: int) -> None:
    """A long prompt arriving next to running streams never costs them a step."""
    sched = SlotScheduler(slots=others + 1, n_batch=64, prefill_chunk=16)
    for rid in range(others):
        sched.add(rid, [1])
    _run(sched, sched.plan(), {}, next_token=7)
    sched.add(99, [2] * prompt)
    while sched.get(99).phase == "prefill":
        plan = sched.plan()
        assert {c.req_id for c in plan.chunks if c.logits} >= set(range(others))
        _run(sched, plan, {}, next_token=7)


# -- text stream ----------------------------------------------------------------------------------


def _stream(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[str, str | None]:
    stream = TextStream(stops)
    out = []
    for p in pieces:
        out.append(stream.feed(p))
        if stream.stopped:
            break
    out.append(stream.flush())
    return "".join(out), stream.stop


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_stream_holdsPartialMultibyteUntilComplete() -> None:
    stream = TextStream()
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:2]) == ""
    assert stream.feed(euro[2:] + b"x") == "€x"
    assert stream.feed(b"\xe2\x82") == ""
    assert stream.flush() == "\ufffd"


def test_stream_stopStringSplitAcrossTokens() -> None:
    stream = TextStream(["</code>"])
    assert stream.feed(b"print(1)<") == "print(1)"
    assert stream.feed(b"/co") == ""
    assert stream.feed(b"de> and more") == ""
    assert stream.stopped and stream.stop == "</code>"
    assert stream.feed(b"late") == "" and stream.flush() == ""


def test_stream_heldTextThatIsNoStopIsReleased() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"a ST") == "a "
    assert stream.feed(b"x") == "STx"
    assert stream.feed(b" S") == " "
    assert stream.flush() == "S"
    assert not stream.stopped


def test_stream_firstCompletedStopWins() -> None:
    assert _stream([b"abcd"], ("abcd", "c")) == ("ab", "c")
    assert _stream([b"ab", b"c", b"d"], ("abcd", "c")) == ("ab", "c")
    assert _stream([b"xabc"], ("bc", "abc")) == ("x", "abc")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=12))
def test_stream_utf8SplitAnywhereGivesTheSameText(data: bytes, cuts: list[int]) -> None:
    assert _stream(_split(data, cuts)) == (data.decode("utf-8", "replace"), None)


_alphabet = st.sampled_from(["a", "b", "<", "/", ">", "é", "€", "😀", "\n"])


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(_alphabet, max_size=30).map("".join),
    stops=st.lists(st.lists(_alphabet, min_size=1, max_size=4).map("".join), max_size=3),
    cuts=st.lists(st.integers(0, 200), max_size=15),
)
def test_stream_stopStringsSplitAnywhere(text: str, stops: list[str], cuts: list[int]) -> None:
    """Split anywhere (inside characters too), the output is the text up to the first point where
    a stop string is complete, minus that stop string; without a match, all of it."""
    data = text.encode()
    out, stop = _stream(_split(data, cuts), tuple(stops))
    ends = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
    if ends:
        end, neg, s = min(ends)
        assert (out, stop) == (text[: end + neg], s)
    else:
        assert (out, stop) == (text, None)
