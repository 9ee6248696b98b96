"""OpenAI-compatible requests and responses for `/v1/completions` and `/v1/chat/completions`.

Requests are validated here, so every side refuses the same things with the same message: a wrong
type, a NaN, a value out of range or an unsupported option is a 400 that names the field. Fields
OpenAI defines that we do not use are accepted and ignored (as OpenAI-compatible servers do), so
existing tools work by changing the base URL. Limits that depend on a node (its max_tokens cap, the
model's context) are checked by the node. Responses are built from the few facts a worker produces
(text, token logprobs, finish reason, usage) in the shapes the openai client parses.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol import sse
from protocol.errors import ApiError

MAX_STOP = 4
MAX_STOP_BYTES = 256
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions
MAX_TOP_LOGPROBS = 20  # and for chat

FinishReason = Literal["stop", "length"]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Request(BaseModel):
    """Sampling and streaming options both endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=False, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000)  # llama.cpp's option, 0 = off
    min_p: Probability = 0.0  # llama.cpp's option, 0 = off
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = Field(default=None, max_length=256)
    # llm-mesh's extension: decode alone with the prompt in one ubatch, so the logits are those of
    # a single-sequence run of the same llama.cpp build (what verification canaries compare).
    reference: bool = False

    @field_validator("model", "user")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        for stop in stops:
            if not stop or len(stop.encode()) > MAX_STOP_BYTES:
                raise ValueError(f"each stop sequence must be 1 to {MAX_STOP_BYTES} bytes")
        return stops

    @property
    def stops(self) -> list[str]:
        """The stop sequences as a list (the validator normalised `stop`)."""
        return self.stop or []  # type: ignore[return-value]

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("one prompt per request (a list must hold exactly one string)")
            value = value[0]
        return value

    @property
    def text(self) -> str:
        return self.prompt  # type: ignore[return-value]  # normalised to one string

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; else how many alternatives per token (0: only the chosen token)."""
        return self.logprobs


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        """The message as plain text (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _limits(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_completion_tokens is not None:  # the newer name wins, as in OpenAI's API
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


Request = TypeVar("Request", bound=_Request)


def parse_request(kind: type[Request], body: bytes) -> Request:
    """Validate a JSON body as `kind`, or raise a 400 ApiError naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    return validate_request(kind, data)


def validate_request(kind: type[Request], data: Any) -> Request:
    """Validate a parsed JSON body as `kind`, or raise a 400 ApiError naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise ApiError(
            400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
        ) from None


# --- responses ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    raw: bytes = b""
    top: tuple[tuple[str, float, bytes], ...] = ()

    def chat(self) -> dict[str, Any]:
        """As an entry of a chat choice's `logprobs.content`."""
        return {
            "token": self.token,
            "logprob": _finite(self.logprob),
            "bytes": list(self.raw or self.token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": _finite(lp), "bytes": list(b or t.encode())} for t, lp, b in self.top
            ],
        }


def _finite(logprob: float) -> float:
    # JSON has no -inf; OpenAI reports impossible tokens at -9999.0.
    return logprob if math.isfinite(logprob) else -9999.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Exact token counts of one request, as the worker counted them; what payment bills."""

    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


# Stands for the text while a text chunk's frame is encoded: a private-use character, which JSON
# keeps as it is (ensure_ascii off).
_MARK = "\ue000"


@dataclass
class Envelope:
    """The fields every response and chunk of one request shares."""

    model: str
    chat: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    _text_frame: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def _base(self, kind: str) -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}

    def response(
        self, text: str, finish: FinishReason, usage: Usage, logprobs: list[TokenLogprob] | None = None
    ) -> dict[str, Any]:
        """The whole (non-streamed) answer."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": _chat_logprobs(logprobs),
                "finish_reason": finish,
            }
            return {**self._base("chat.completion"), "choices": [choice], "usage": usage.as_dict()}
        choice = {
            "index": 0,
            "text": text,
            "logprobs": _completion_logprobs(logprobs),
            "finish_reason": finish,
        }
        return {**self._base("text_completion"), "choices": [choice], "usage": usage.as_dict()}

    def chunk(
        self,
        text: str,
        finish: FinishReason | None = None,
        logprobs: list[TokenLogprob] | None = None,
        *,
        first: bool = False,
    ) -> dict[str, Any]:
        """One streamed piece: new text (and its tokens' logprobs), or the finish reason."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": _chat_logprobs(logprobs),
                "finish_reason": finish,
            }
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {
            "index": 0,
            "text": text,
            "logprobs": _completion_logprobs(logprobs),
            "finish_reason": finish,
        }
        return {**self._base("text_completion"), "choices": [choice]}

    def text_event(self, text: str) -> bytes:
        """The SSE event of a chunk carrying only new text (not a chat stream's first, which names
        the role): the bytes of `sse.event(self.chunk(text))`, with everything but the text encoded
        once per stream instead of once per token (a stream is one such event per token)."""
        if self._text_frame is None:
            framed = sse.event(self.chunk(_MARK))
            mark = json.dumps(_MARK, ensure_ascii=False).encode()
            if framed.count(mark) != 1:  # a model name holding the mark: encode every chunk whole
                return sse.event(self.chunk(text))
            head, _, tail = framed.partition(mark)
            self._text_frame = (head, tail)
        head, tail = self._text_frame
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(kind), "choices": [], "usage": usage.as_dict()}


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    return None if logprobs is None else {"content": [t.chat() for t in logprobs]}


def _completion_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [_finite(t.logprob) for t in logprobs],
        "top_logprobs": [{tok: _finite(lp) for tok, lp, _ in t.top} for t in logprobs],
        "text_offset": offsets,
    }
