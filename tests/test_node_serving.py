"""The node's OpenAI-compatible API served for real: uvicorn, worker processes, llama.cpp on tiny models."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from node.config import ServingLimits
from node.workers import memory_estimate
from tests.gguf_models import scale_eos, write_tiny_llama
from tests.node_fixtures import NodeServer, servable


def client(server: NodeServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def health(server: NodeServer) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def test_completion_openaiClient_textAndExactUsage(node_server: NodeServer) -> None:
    answer = client(node_server).completions.create(
        model="tiny", prompt="def fix", max_tokens=12, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12 and answer.usage.completion_tokens >= 1
    assert answer.usage.prompt_tokens >= 2  # BOS + the prompt's tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    again = client(node_server).completions.create(
        model="tiny", prompt="def fix", max_tokens=12, temperature=0
    )
    assert again.choices[0].text == answer.choices[0].text  # greedy and alone: deterministic


def test_chatStream_chunksUsageChunkAndDone(node_server: NodeServer) -> None:
    stream = client(node_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "fix the bug"}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    whole = client(node_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "fix the bug"}], max_tokens=20, temperature=0
    )
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens
    raw = httpx.post(
        node_server.url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
        timeout=30,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")


def test_modelsAndHealth_listTheServedModel(node_server: NodeServer) -> None:
    models = client(node_server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    client(node_server).completions.create(model="tiny", prompt="x", max_tokens=1)
    h = health(node_server)
    assert h["status"] == "ok" and h["models"]["tiny"]["state"] == "ready"
    assert "AVX" in h["llama_cpp"]["system_info"] or h["llama_cpp"]["system_info"]
    metrics = httpx.get(node_server.url + "/metrics", timeout=10).text
    assert 'llm_mesh_requests_total{endpoint="completions",model="tiny",status="200"}' in metrics
    assert "llm_mesh_ttft_seconds_bucket" in metrics and "llm_mesh_queue_depth" in metrics


def test_logprobs_completionsAndChat(node_server: NodeServer) -> None:
    answer = client(node_server).completions.create(
        model="tiny", prompt="def", max_tokens=5, temperature=0, logprobs=3
    )
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == answer.usage.completion_tokens or answer.choices[0].finish_reason == "stop"
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        # Alternatives that decode to the same text (byte tokens of a split character) share a key.
        assert 1 <= len(top) <= 3 and chosen >= max(top.values()) - 1e-6  # greedy: the best
    chat = client(node_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4, logprobs=True, top_logprobs=2
    )
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in chat.choices[0].logprobs.content)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": 9}, "logprobs"),
    ],
)
def test_badSamplingValues_400NamingTheField(node_server: NodeServer, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(node_server).completions.create(model="tiny", prompt="x", max_tokens=4, extra_body=body)
    assert caught.value.body["param"] == param, caught.value.body


def test_nanTemperature_400(node_server: NodeServer) -> None:
    raw = '{"model": "tiny", "prompt": "x", "temperature": NaN}'
    answer = httpx.post(node_server.url + "/v1/completions", content=raw, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "temperature"


def test_unknownModel_404ListsServed(node_server: NodeServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(node_server).completions.create(model="nope", prompt="x", max_tokens=1)
    assert "tiny" in caught.value.message and caught.value.body["code"] == "model_not_found"


def test_promptBeyondContext_400NamingPrompt(node_server: NodeServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(node_server).completions.create(model="tiny", prompt="ab " * 400, max_tokens=10)
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as caught:
        client(node_server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "ab " * 400}], max_tokens=10
        )
    assert caught.value.body["param"] == "messages"


def test_bodyTooLarge_413AlsoChunked(tiny_model: Path) -> None:
    server = NodeServer([servable(tiny_model, "tiny")], ServingLimits(max_body_bytes=4096))
    try:
        big = json.dumps({"model": "tiny", "prompt": "x" * 8000}).encode()
        answer = httpx.post(server.url + "/v1/completions", content=big, timeout=10)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"

        def chunks():
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        answer = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=10)
        assert answer.status_code == 413
        assert answer.headers.get("x-should-retry") == "false"
    finally:
        server.stop()


@contextmanager
def paused(server: NodeServer, model: str) -> Iterator[None]:
    """Stop the model's worker process (SIGSTOP) so the requests it holds stay in flight."""
    pid = health(server)["models"][model]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_queueFull_503RetryAfter_andQueuedRequestsServedInTurn(tiny_model: Path) -> None:
    model = servable(tiny_model, "tiny", slots=1, n_ctx=1024, eager=True)
    server = NodeServer([model], ServingLimits(queue_size=1))
    body = {"model": "tiny", "prompt": "x", "max_tokens": 200, "stream": True, "temperature": 1.0}
    url = server.url + "/v1/completions"
    try:
        wait_for(lambda: health(server)["models"]["tiny"]["state"] == "ready", what="the eager load")
        with ThreadPoolExecutor(2) as pool, paused(server, "tiny"):
            # The worker is stopped: the first request holds the one slot, the second must queue.
            first = pool.submit(httpx.post, url, json=body, timeout=120)
            wait_for(lambda: health(server)["models"]["tiny"]["busy"] == 1, what="the slot taken")
            queued = pool.submit(httpx.post, url, json={**body, "max_tokens": 2}, timeout=120)
            wait_for(lambda: health(server)["queue"]["waiting"] == 1, what="a queued request")
            refused = httpx.post(url, json=body, timeout=10)
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert refused.json()["error"]["code"] == "queue_full"
        for answer in (first.result(120), queued.result(120)):
            events = [line for line in answer.text.splitlines() if line.startswith("data:")]
            assert answer.status_code == 200 and events[-1] == "data: [DONE]"  # served in turn, not cut
            finish = json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
            assert finish in ("stop", "length")
    finally:
        server.stop()


def test_clientDisconnect_freesTheSlotAtOnce(tiny_model: Path) -> None:
    server = NodeServer([servable(tiny_model, "tiny", slots=1, n_ctx=1024)])
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1000, "stream": True}
    caught = 0
    try:
        for _ in range(20):
            with (
                httpx.Client(timeout=120) as c,
                c.stream("POST", server.url + "/v1/completions", json=body) as s,
            ):
                lines = s.iter_lines()  # held: a dropped iterator would close the connection already
                next(line for line in lines if line.startswith("data:"))
                pid = health(server)["models"]["tiny"]["pid"]
                os.kill(pid, signal.SIGSTOP)  # the request cannot finish on its own now...
                in_flight = health(server)["models"]["tiny"]["busy"] == 1  # ...unless it already had
            try:
                # The connection is closed mid-stream: the slot is free although the worker is stopped.
                wait_for(lambda: health(server)["models"]["tiny"]["busy"] == 0, 10, "the slot to be freed")
            finally:
                os.kill(pid, signal.SIGCONT)
            caught += in_flight
            if caught == 3:
                break
        assert caught == 3, "the streams kept finishing before the worker could be stopped"
        quick = client(server).completions.create(model="tiny", prompt="x", max_tokens=2)
        assert quick.usage.completion_tokens >= 1
    finally:
        server.stop()


def test_clientDisconnectBeforeFirstToken_freesTheSlot(tiny_model: Path) -> None:
    """While the prompt is still being decoded (the worker is stopped before it answers), a client
    that gives up frees its slot; the worker drops the sequence once it runs again."""
    server = NodeServer([servable(tiny_model, "tiny", slots=1, eager=True)])
    try:
        wait_for(lambda: health(server)["models"]["tiny"]["state"] == "ready", what="the eager load")
        body = {"model": "tiny", "prompt": "def fix " * 50, "max_tokens": 50, "stream": True}
        with paused(server, "tiny"):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=1))
            wait_for(lambda: health(server)["models"]["tiny"]["busy"] == 0, 10, "the slot to be freed")
        answer = client(server).completions.create(model="tiny", prompt="x", max_tokens=2)
        assert answer.usage.completion_tokens >= 1
    finally:
        server.stop()


def test_workerKilledMidStream_errorEventThenRestarted(tmp_path: Path) -> None:
    # The kill must land while the stream still runs: sampled at temperature 1 the tiny model could
    # end (</s> or max_tokens) before it (seen once in CI). The endless model at temperature 0 must
    # decode 8,000 tokens (about 6 s streamed here), while the kill follows the third chunk within ms.
    endless = scale_eos(write_tiny_llama(tmp_path / "endless.gguf", seed=1, context=8192), 0.0)
    server = NodeServer([servable(endless, "tiny", n_ctx=8192)], ServingLimits(max_tokens_cap=8000))
    try:
        c = client(server)
        c.completions.create(model="tiny", prompt="x", max_tokens=1)
        pid = health(server)["models"]["tiny"]["pid"]
        stream = c.completions.create(model="tiny", prompt="x", max_tokens=8000, stream=True, temperature=0)
        with pytest.raises(openai.APIError) as caught:
            for i, _ in enumerate(stream):
                if i == 2:
                    os.kill(pid, signal.SIGKILL)
        assert "signal 9" in str(caught.value)
        again = wait_for(
            lambda: health(server)["models"]["tiny"]["restarts"] == 1 and health(server), what="a restart"
        )
        answer = c.completions.create(model="tiny", prompt="x", max_tokens=3)
        assert answer.usage.completion_tokens >= 1
        h = health(server)["models"]["tiny"]
        assert h["state"] == "ready" and h["pid"] != pid and again["models"]["tiny"]["last_error"]
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'llm_mesh_worker_restarts_total{model="tiny"} 1.0' in metrics
    finally:
        server.stop()


def test_referencePath_identicalTopLogprobsWhileOthersStream(tiny_model: Path) -> None:
    server = NodeServer([servable(tiny_model, "tiny", slots=4, n_ctx=1024)])
    ask = {"prompt": "def fix the bug", "max_tokens": 8, "temperature": 0, "logprobs": 5}
    try:
        c = client(server)
        alone = c.completions.create(model="tiny", extra_body={"reference": True}, **ask)
        streams = [
            c.completions.create(
                model="tiny", prompt=f"print {i}", max_tokens=800, stream=True, temperature=1.0
            )
            for i in range(3)
        ]
        for s in streams:
            next(iter(s))
        busy = c.completions.create(model="tiny", extra_body={"reference": True}, **ask)
        for s in streams:
            s.close()
        assert busy.choices[0].logprobs.top_logprobs == alone.choices[0].logprobs.top_logprobs
        assert busy.choices[0].logprobs.token_logprobs == alone.choices[0].logprobs.token_logprobs
    finally:
        server.stop()


def test_hostileChatTemplate_inertOr400(tmp_path: Path) -> None:
    hostile = (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    path = write_tiny_llama(tmp_path / "hostile.gguf", seed=2, chat_template=hostile)
    server = NodeServer([servable(path, "hostile")])
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client(server).chat.completions.create(
                model="hostile", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert caught.value.body["code"] == "chat_template" and "/v1/completions" in caught.value.message
        # The model itself still serves plain completions.
        assert client(server).completions.create(model="hostile", prompt="x", max_tokens=2).usage
    finally:
        server.stop()


def test_requestTimeout_504(endless_model: Path) -> None:
    # At temperature 1 the tiny model can sample </s> within the 10 ms (seen once in CI, after 13
    # tokens); the endless model at temperature 0 must decode all 1000 tokens, ~100x the timeout.
    model = servable(endless_model, "tiny", n_ctx=1024, eager=True)
    server = NodeServer([model], ServingLimits(request_timeout_s=0.01))
    try:
        wait_for(lambda: health(server)["models"]["tiny"]["state"] == "ready", what="the eager load")
        answer = httpx.post(
            server.url + "/v1/completions",
            json={"model": "tiny", "prompt": "x", "max_tokens": 1000, "temperature": 0},
            timeout=30,
        )
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "timeout"
        wait_for(lambda: health(server)["models"]["tiny"]["busy"] == 0, 10, "the slot to be freed")
    finally:
        server.stop()


def test_requestLimit_503ButHealthStillAnswers(tiny_model: Path) -> None:
    server = NodeServer([servable(tiny_model, "tiny")], ServingLimits(max_connections=1))
    try:
        # A request whose body is still arriving holds the one place.
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = wait_for(
                lambda: (
                    (r := httpx.post(server.url + "/v1/completions", json={}, timeout=10)).status_code == 503
                    and r
                ),
                what="the limit to refuse",
            )
            assert answer.json()["error"]["code"] == "too_many_requests" and "Retry-After" in answer.headers
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        # The held request's client went away: its place is free again.
        small = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        wait_for(
            lambda: httpx.post(server.url + "/v1/completions", json=small, timeout=10).status_code == 200,
            what="a place again",
        )
    finally:
        server.stop()


def test_idleConnectionsHeldOpen_doNotBlockOthers(node_server: NodeServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", node_server.port)) for _ in range(5)]
    try:
        assert client(node_server).completions.create(model="tiny", prompt="x", max_tokens=2).usage
    finally:
        for s in idle:
            s.close()


def test_acceptedConnections_haveNagleOff(node_server: NodeServer) -> None:
    """A response goes out as headers then body: with Nagle on, the body waits for the client's
    delayed ACK (40 ms per keep-alive request). Checked on the server's own accepted socket."""

    def nodelay() -> list[int]:
        connections = node_server.http._server.server_state.connections
        return [
            c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for c in connections
        ]

    with httpx.Client(base_url=node_server.url, timeout=10) as http:
        assert http.get("/health").status_code == 200
        flags = node_server.call(nodelay)
    assert flags and all(flags), flags


def test_memoryBudget_unloadsTheLeastRecentlyUsedIdleModel(tmp_path: Path) -> None:
    models = [
        servable(write_tiny_llama(tmp_path / f"{n}.gguf", seed=i), n, model_id=i + 1)
        for i, n in enumerate("ab")
    ]
    one = memory_estimate(models[0])
    assert one == memory_estimate(models[1])
    server = NodeServer(models, ServingLimits(memory_budget_gb=1.5 * one / (1 << 30)))  # room for one
    try:
        c = client(server)
        c.completions.create(model="a", prompt="x", max_tokens=2)
        pid_a = health(server)["models"]["a"]["pid"]
        c.completions.create(model="b", prompt="x", max_tokens=2)
        state = health(server)["models"]
        assert state["b"]["state"] == "ready" and state["a"]["state"] == "unloaded"
        wait_for(lambda: not Path(f"/proc/{pid_a}").exists(), 10, "model a's worker to exit")
        assert c.completions.create(model="a", prompt="x", max_tokens=2).usage  # loads again
        assert health(server)["models"]["b"]["state"] == "unloaded"
    finally:
        server.stop()
