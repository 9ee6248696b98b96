"""The OpenAI shapes: requests refused with a 400 naming the field, responses and stream chunks the
official openai client parses, errors it maps to the right exception class."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from protocol import ApiError, ChatCompletionRequest, CompletionRequest, TokenLogprob, Usage, parse_request
from protocol.openai import Envelope
from protocol.sse import DONE, error_event, event


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "tiny", **fields}).encode()


def test_parseRequest_readsACompletionWithDefaults() -> None:
    request = parse_request(CompletionRequest, _body(prompt=["def f():"], stop="\n\n", stream=True))
    assert (request.text, request.max_tokens, request.temperature, request.stops) == (
        "def f():",
        16,
        1.0,
        ["\n\n"],
    )
    assert request.stream and not request.include_usage and request.top_logprobs_wanted is None


def test_parseRequest_readsAChatAndPrefersMaxCompletionTokens() -> None:
    body = _body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=5,
        max_completion_tokens=9,
        logprobs=True,
        top_logprobs=3,
        stream_options={"include_usage": True},
        stream=True,
        some_future_option={"ignored": True},
    )
    request = parse_request(ChatCompletionRequest, body)
    assert request.messages[0].text == "hi"
    assert (request.max_tokens, request.top_logprobs_wanted, request.include_usage) == (9, 3, True)


@pytest.mark.parametrize(
    ("kind", "fields", "param"),
    [
        (CompletionRequest, {"prompt": "x", "temperature": -0.1}, "temperature"),
        (CompletionRequest, {"prompt": "x", "temperature": "hot"}, "temperature"),
        (CompletionRequest, {"prompt": "x", "top_p": 0}, "top_p"),
        (CompletionRequest, {"prompt": "x", "min_p": 1.5}, "min_p"),
        (CompletionRequest, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (CompletionRequest, {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        (CompletionRequest, {"prompt": "x", "n": 2}, "n"),
        (CompletionRequest, {"prompt": "x", "logprobs": 6}, "logprobs"),
        (CompletionRequest, {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (CompletionRequest, {"prompt": "x", "stop": [""]}, "stop"),
        (CompletionRequest, {"prompt": "x", "seed": -1}, "seed"),
        (CompletionRequest, {"prompt": ["a", "b"]}, "prompt"),
        (CompletionRequest, {}, "prompt"),
        (ChatCompletionRequest, {"messages": []}, "messages"),
        (ChatCompletionRequest, {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, None),
    ],
)
def test_parseRequest_refusesWithA400NamingTheField(kind, fields, param) -> None:
    with pytest.raises(ApiError) as info:
        parse_request(kind, _body(**fields))
    err = info.value
    assert err.status == 400 and err.param == param and err.code == "invalid_value"
    assert err.headers() == {"x-should-retry": "false"}
    if param:
        assert err.message.startswith(f"{param}: ")


def test_parseRequest_refusesNaNAndInfinity() -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        body = b'{"model": "tiny", "prompt": "x", "temperature": ' + value.encode() + b"}"
        with pytest.raises(ApiError) as info:
            parse_request(CompletionRequest, body)
        assert info.value.param == "temperature"


def test_parseRequest_refusesWhatIsNotAJsonObject() -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(ApiError, match="JSON") as info:
            parse_request(CompletionRequest, body)
        assert info.value.status == 400


LOGPROBS = [
    TokenLogprob("def", -0.25, b"def", (("def", -0.25, b"def"), ("class", -1.5, b"class"))),
    TokenLogprob(" f", float("-inf"), b" f", ()),
]


def test_responses_parseAsTheOpenaiClientsTypes() -> None:
    usage = Usage(prompt_tokens=7, completion_tokens=2)
    completion = Completion.model_validate(
        Envelope("tiny", chat=False).response("def f", "length", usage, LOGPROBS)
    )
    assert completion.choices[0].text == "def f" and completion.usage.total_tokens == 9
    assert completion.choices[0].logprobs.text_offset == [0, 3]
    assert completion.choices[0].logprobs.token_logprobs[1] == -9999.0  # JSON has no -inf
    chat = ChatCompletion.model_validate(
        Envelope("tiny", chat=True).response("def f", "stop", usage, LOGPROBS)
    )
    assert chat.choices[0].message.content == "def f" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].logprobs.content[0].top_logprobs[1].token == "class"


def test_chunks_parseAsTheOpenaiClientsTypes() -> None:
    envelope = Envelope("tiny", chat=True)
    first = ChatCompletionChunk.model_validate(envelope.chunk("def", first=True))
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == "def"
    last = ChatCompletionChunk.model_validate(envelope.chunk("", "stop"))
    assert last.choices[0].finish_reason == "stop" and last.id == first.id
    usage = ChatCompletionChunk.model_validate(envelope.usage_chunk(Usage(3, 4)))
    assert usage.choices == [] and usage.usage.completion_tokens == 4


TEXTS = ["def", 'a "quoted" \\ path\n\ttab', "é ✓ 🙂", "\ue000 mark", "\x00\x1f", " "]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_textEvent_isTheSameBytesAsTheChunkEncodedWhole(chat, text) -> None:
    envelope = Envelope('tiny "model" ✓', chat=chat)
    assert envelope.text_event(text) == event(envelope.chunk(text))
    assert envelope.text_event("x") == event(envelope.chunk("x"))  # the cached frame, reused
    odd = Envelope("tiny \ue000", chat=chat)  # a name holding the frame's placeholder
    assert odd.text_event(text) == event(odd.chunk(text))


def test_sse_framesEventsAndTheEnd() -> None:
    assert event({"a": "é\n"}) == 'data: {"a":"é\\n"}\n\n'.encode()
    assert DONE == b"data: [DONE]\n\n"
    err = ApiError(503, "the worker restarted")
    assert json.loads(error_event(err)[len(b"data: ") :]) == err.body()


@contextlib.contextmanager
def _answering(status: int, err: ApiError) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback that answers every POST with `err`; yields its URL and the
    paths it was asked for."""
    calls: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(self.path)
            payload = json.dumps(err.body()).encode()
            self.send_response(status)
            for name, value in {**err.headers(), "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (413, openai.APIStatusError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
    ],
)
def test_errors_mapToTheOpenaiClientsClassesAndRetryOnlyWhenUseful(status, exception) -> None:
    err = ApiError(
        status, "refused for a reason", param="temperature", retry_after=0 if err_retries(status) else None
    )
    with _answering(status, err) as (url, calls):
        client = openai.OpenAI(api_key="unused", base_url=url, max_retries=1)
        with pytest.raises(exception) as info:
            client.completions.create(model="tiny", prompt="x")
    assert info.value.status_code == status and info.value.body["param"] == "temperature"
    assert len(calls) == (2 if err.retry else 1)  # x-should-retry: false stops the client's own retry


def err_retries(status: int) -> bool:
    return status == 429 or status >= 500
