"""One request's path: validate → admit → queue for a slot → stream tokens → usage.

Routes hand a body here and get back a JSON answer or an event stream. Payment plugs in through
three hooks (node.payments): `admit` runs before a request is queued (refuse with an ApiError)
and may hand back an awaitable that must complete before the request's first output (its durable
write, which so overlaps the wait for a slot and the prefill); `finish` after it answered, with
its exact completion tokens, and may add fields to the final answer (a receipt); `release` when
it ended without an answer, with the tokens that were sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.config import ServingLimits
from node.messages import Finished, Piece, Refused, Sampling, Started, Submit
from node.metrics import Metrics
from node.templates import ChatTemplate, ChatTemplateError, template_source
from node.workers import WorkerLost, WorkerProcess, Workers
from protocol import sse
from protocol.errors import ApiError
from protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Envelope,
    TokenLogprob,
    Usage,
    parse_request,
)

log = logging.getLogger("node.serving")
_ids = itertools.count(1)


@dataclass
class RequestContext:
    """What the hooks and logs know about one request."""

    request_id: str
    endpoint: str  # "completions" | "chat"
    client: str
    model: str
    body: CompletionRequest | ChatCompletionRequest
    headers: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    # Set before admission: the served model's registry id and price, the completion tokens allowed.
    model_id: int = 0
    price_per_1k: int = 0
    max_tokens: int = 0
    payment: Any = None  # what admission decided (node.payments.Admitted), until billed


class PaymentHooks(Protocol):
    async def admit(self, ctx: RequestContext) -> Awaitable[Any] | None: ...

    async def finish(self, ctx: RequestContext, tokens: int) -> dict[str, Any] | None: ...

    async def release(self, ctx: RequestContext, tokens: int) -> None: ...


class FreeAccess:
    """No payment (node.local, tests): every well-formed request is admitted and nothing billed."""

    async def admit(self, ctx: RequestContext) -> Awaitable[Any] | None:
        return None

    async def finish(self, ctx: RequestContext, tokens: int) -> dict[str, Any] | None:
        return None

    async def release(self, ctx: RequestContext, tokens: int) -> None:
        return None


_CANCELLED = WorkerLost("the request was cancelled")


class Job:
    """A submitted request: its worker, its event queue and the way to cancel it."""

    def __init__(self, worker: WorkerProcess, message: Submit, token_timeout: float, deadline: float) -> None:
        self.worker, self.req_id = worker, message.req_id
        self.token_timeout, self.deadline = token_timeout, deadline
        self.queue = worker.submit(message)
        self.done = False

    async def next(self) -> Started | Refused | Piece | Finished:
        timeout = min(self.token_timeout, self.deadline - time.monotonic())
        try:
            # asyncio.timeout, not wait_for: wait_for wraps every get in a task of its own, and
            # this runs once per token of every stream.
            async with asyncio.timeout(max(timeout, 0.0)):
                event = await self.queue.get()
        except TimeoutError:
            self.cancel()
            why = "the request timed out" if timeout < self.token_timeout else "no token came in time"
            raise ApiError(504, f"{why}; retry with a smaller max_tokens or later", code="timeout") from None
        if event is _CANCELLED:
            raise ApiError(499, "the client closed the request", code="client_closed")
        if isinstance(event, WorkerLost):
            self.done = True
            raise ApiError(503, event.message, code="worker_lost")
        if isinstance(event, Finished | Refused):
            self.done = True
        return event

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.worker.cancel(self.req_id)
            self.worker.forget(self.req_id)
            self.queue.put_nowait(_CANCELLED)  # wakes a reader waiting for the next token


class Serving:
    """The serving object routes call (kept in app.state)."""

    def __init__(
        self,
        workers: Workers,
        limits: ServingLimits,
        metrics: Metrics,
        *,
        payments: PaymentHooks | None = None,
    ) -> None:
        self.workers, self.limits, self.metrics = workers, limits, metrics
        self.payments: PaymentHooks = payments or FreeAccess()
        self._templates: dict[tuple[str, str], ChatTemplate] = {}

    async def prepare(
        self, endpoint: str, body: bytes, client: str, headers: dict[str, str]
    ) -> tuple[RequestContext, Stream]:
        """Validate, admit, wait for a slot and start decoding: errors up to here are plain HTTP
        errors; after it the stream's own events carry them."""
        kind = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        request = parse_request(kind, body)
        ctx = RequestContext(f"req-{next(_ids)}", endpoint, client, request.model, request, headers)
        try:
            return ctx, await self._start(ctx)
        except ApiError as exc:
            self._count_error(ctx, exc)
            raise

    async def _start(self, ctx: RequestContext) -> Stream:
        request = ctx.body
        model = self.workers.model(request.model)
        if model is None:
            raise self.workers.not_found(request.model)
        sampling = self._sampling(request)
        ctx.model_id, ctx.max_tokens = model.model_id, sampling.max_tokens
        ctx.price_per_1k = getattr(model, "price_per_1k", 0)
        durable = await self.payments.admit(ctx)
        deadline = ctx.started + self.limits.request_timeout_s
        stack = AsyncExitStack()
        stack.push_async_callback(lambda: self.payments.release(ctx, 0))  # unless billed before
        try:
            worker = await stack.enter_async_context(self.workers.lease(request.model, ctx.client, deadline))
            prompt, special = await self._prompt(request, worker)
            message = Submit(next(_ids), prompt, sampling, special=special, reference=request.reference)
            job = Job(worker, message, self.limits.token_timeout_s, deadline)
            stack.callback(job.cancel)
            started = await job.next()
            if isinstance(started, Refused):
                param = "messages" if ctx.endpoint == "chat" and started.param == "prompt" else started.param
                raise ApiError(400, started.message, param=param, code="context_length_exceeded")
            assert isinstance(started, Started), started
            if durable is not None:
                await durable
        except BaseException:
            await stack.aclose()
            raise
        return Stream(self, ctx, job, started.prompt_tokens, stack)

    def _sampling(self, request: CompletionRequest | ChatCompletionRequest) -> Sampling:
        wanted = request.max_tokens
        if wanted is None:
            wanted = self.limits.default_max_tokens
        if wanted > self.limits.max_tokens_cap:
            param = (
                "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
            )
            raise ApiError(
                400,
                f"{param} {wanted} is above this node's cap of {self.limits.max_tokens_cap}",
                param=param,
                code="max_tokens_too_large",
            )
        return Sampling(
            max_tokens=wanted,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
            stops=tuple(request.stops),
            logprobs=request.top_logprobs_wanted,
        )

    async def _prompt(
        self, request: CompletionRequest | ChatCompletionRequest, worker: WorkerProcess
    ) -> tuple[str, bool]:
        if isinstance(request, CompletionRequest):
            return request.text, False
        ready = worker.ready
        assert ready is not None
        key = (worker.spec.model_path, worker.name)
        template = self._templates.get(key)
        if template is None:
            model = self.workers.model(request.model)
            source = template_source(model.header.metadata) if model is not None else None
            try:
                template = ChatTemplate(source, ready.bos_text, ready.eos_text)
            except ChatTemplateError as exc:
                raise ApiError(400, str(exc), param="messages", code="chat_template") from None
            self._templates[key] = template
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        try:  # in a thread: a hostile template spends up to its time limit there, not on the loop
            return await asyncio.to_thread(template.render, messages, True), True
        except ChatTemplateError as exc:
            raise ApiError(400, str(exc), param="messages", code="chat_template") from None

    def _count_error(self, ctx: RequestContext, exc: ApiError) -> None:
        self.metrics.errors.labels(ctx.model, exc.code or str(exc.status)).inc()
        self.metrics.requests.labels(ctx.model, ctx.endpoint, str(exc.status)).inc()
        log.info(
            "event=request_refused request_id=%s model=%s client=%s status=%d code=%s",
            ctx.request_id,
            ctx.model,
            ctx.client,
            exc.status,
            exc.code,
        )


class Stream:
    """A started request: iterate `pieces()` (or await `collect()`), then `close()`."""

    def __init__(
        self, serving: Serving, ctx: RequestContext, job: Job, prompt_tokens: int, stack: AsyncExitStack
    ):
        self.serving, self.ctx, self.job = serving, ctx, job
        self.prompt_tokens = prompt_tokens
        self._stack = stack
        self.finished: Finished | None = None
        self.sent_tokens = 0  # completion tokens of the text the client was sent

    async def _release(self) -> None:
        await self.serving.payments.release(self.ctx, self.sent_tokens)

    def cancel(self) -> None:
        """The client went away: free the slot now (the worker drops the sequence)."""
        self.job.cancel()

    async def close(self) -> None:
        """Free the slot; a request that ended without its answer is billed for what was sent."""
        try:
            await self._release()
        finally:
            await self._stack.aclose()

    async def pieces(self) -> AsyncIterator[Piece]:
        """The request's text as it is decoded; `finished` is set once it ended."""
        metrics, ctx = self.serving.metrics, self.ctx
        while True:
            event = await self.job.next()
            if isinstance(event, Piece):
                if ctx.first_token is None:
                    ctx.first_token = time.monotonic()
                    metrics.ttft.labels(ctx.model).observe(ctx.first_token - ctx.started)
                yield event
            elif isinstance(event, Finished):
                self.finished = event
                self._record(event)
                return

    def _record(self, done: Finished) -> None:
        metrics, ctx = self.serving.metrics, self.ctx
        metrics.tokens.labels(ctx.model, "prompt").inc(done.prompt_tokens)
        metrics.tokens.labels(ctx.model, "completion").inc(done.completion_tokens)
        now = time.monotonic()
        if ctx.first_token is not None and done.completion_tokens > 1 and now > ctx.first_token:
            metrics.rate.labels(ctx.model).observe((done.completion_tokens - 1) / (now - ctx.first_token))
        metrics.requests.labels(ctx.model, ctx.endpoint, "200").inc()
        log.info(
            "event=request_done request_id=%s model=%s client=%s finish=%s prompt_tokens=%d "
            "completion_tokens=%d seconds=%.3f",
            ctx.request_id,
            ctx.model,
            ctx.client,
            done.finish,
            done.prompt_tokens,
            done.completion_tokens,
            now - ctx.started,
        )

    def usage(self) -> Usage:
        assert self.finished is not None
        return Usage(self.finished.prompt_tokens, self.finished.completion_tokens)

    async def collect(self) -> dict[str, Any]:
        """The whole answer as one JSON response."""
        envelope = Envelope(self.ctx.model, chat=self.ctx.endpoint == "chat")
        text: list[str] = []
        logprobs: list[TokenLogprob] | None = [] if self.ctx.body.top_logprobs_wanted is not None else None
        async for piece in self.pieces():
            text.append(piece.text)
            if logprobs is not None and piece.logprobs:
                logprobs.extend(_logprobs(piece.logprobs))
        answer = envelope.response("".join(text), _finish(self.finished), self.usage(), logprobs)
        self.sent_tokens = self.finished.completion_tokens if self.finished else 0
        extra = await self.serving.payments.finish(self.ctx, self.sent_tokens)
        return {**answer, **(extra or {})}

    async def events(self) -> AsyncIterator[bytes]:
        """The answer as SSE events: chunks, the finish, the usage chunk if asked, [DONE]. An error
        after the first event becomes an error event (the stream is never silently cut)."""
        envelope = Envelope(self.ctx.model, chat=self.ctx.endpoint == "chat")
        want_logprobs = self.ctx.body.top_logprobs_wanted is not None
        first = True
        try:
            async for piece in self.pieces():
                logprobs = _logprobs(piece.logprobs) if want_logprobs and piece.logprobs else None
                if logprobs or (first and piece.text):
                    yield sse.event(envelope.chunk(piece.text, logprobs=logprobs, first=first))
                elif piece.text:
                    yield envelope.text_event(piece.text)
                else:
                    continue
                first = False
                self.sent_tokens = piece.tokens
            final = envelope.chunk("", _finish(self.finished), first=first)
            assert self.finished is not None
            self.sent_tokens = self.finished.completion_tokens
            extra = await self.serving.payments.finish(self.ctx, self.sent_tokens)
            yield sse.event({**final, **(extra or {})})
            if self.ctx.body.include_usage:
                yield sse.event(envelope.usage_chunk(self.usage()))
            yield sse.DONE
        except ApiError as exc:
            self.serving._count_error(self.ctx, exc)
            yield sse.error_event(exc)


def _finish(done: Finished | None) -> str:
    assert done is not None
    return "length" if done.finish == "length" else "stop"


def _logprobs(entries: tuple[Any, ...]) -> list[TokenLogprob]:
    return [
        TokenLogprob(token, logprob, raw, tuple(tuple(t) for t in top))  # type: ignore[arg-type]
        for token, logprob, raw, top in entries
    ]
