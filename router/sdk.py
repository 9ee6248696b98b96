"""The Python SDK: ask the network from code, in process or through a running router.

    from router.sdk import get_model_response, model_registry

    answer = await get_model_response(prompt="def fibonacci(n):", task_type="fix")
    print(answer.text, answer.model, answer.node, answer.completion_tokens, answer.cost_mesh)
    model_registry.get_model_info("gemma-3-270m")["available_hosts"]

`MeshClient(base_url=...)` talks to a running router (`python -m router`); `MeshClient()` without
one runs the router itself in this process: its chain view, health prober, host choice, failover
and wallet, from the same code the daemon runs (router.service), so `pip install`, an RPC URL, the
deployment file and a keystore are all a Python user needs. Both ways the requests and answers are
the router's HTTP ones (OpenAI's shape plus `llm_mesh`), read by one parser here.

The module-level functions use one default client: a router at $LLM_MESH_ROUTER_URL, else the
router in process, configured like the daemon (LLM_MESH_ROUTER_* variables) with
$LLM_MESH_RPC_URL / $LLM_MESH_DEPLOYMENT (what `make devnet` exports) for the chain.

Each client runs its own event loop in a thread, so the async functions work from any loop and
their `_sync` twins from plain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from chain.units import format_token
from protocol.errors import ApiError
from router.config import RouterConfig, build_router_config

ROUTER_URL_ENV = "LLM_MESH_ROUTER_URL"
_T = TypeVar("_T")


class MeshError(Exception):
    """The network refused or failed the request: `status` and `code` as in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class ModelResponse:
    """One answer: its text, who served it and what it cost (token base units)."""

    text: str
    model: str
    node: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: int
    failed_over: list[str] = field(default_factory=list)

    @property
    def cost_mesh(self) -> str:
        return format_token(self.cost)


def _request(
    prompt: str,
    model_name: str | None,
    task_type: str | None,
    max_tokens: int,
    temperature: float,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model_name or "auto",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if task_type:
        body["task_type"] = task_type
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _response(answer: dict[str, Any]) -> ModelResponse:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return _result(message.get("content") or choice.get("text") or "", choice.get("finish_reason"), answer)


def _result(
    text: str, finish: str | None, answer: dict[str, Any], usage: dict[str, Any] | None = None
) -> ModelResponse:
    served = answer.get("llm_mesh") or {}
    usage = usage or answer.get("usage") or {}
    return ModelResponse(
        text=text,
        model=served.get("model") or answer.get("model", ""),
        node=served.get("node", ""),
        finish_reason=finish,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cost=int(served.get("cost") or 0),
        failed_over=list(served.get("failed_over") or ()),
    )


def _error(status: int, body: Any) -> MeshError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return MeshError(status, str(error.get("message")), error.get("code"))
    return MeshError(status, f"the router answered HTTP {status}")


class _Remote:
    """A running router, over HTTP."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def start(self) -> None:
        return None

    async def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post("/v1/chat/completions", json=body)
        data = response.json()
        if response.status_code != 200:
            raise _error(response.status_code, data)
        return data

    async def events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise _error(response.status_code, json.loads(await response.aread()))
            async for chunk in response.aiter_bytes():
                yield chunk

    async def models(self) -> list[dict[str, Any]]:
        response = await self._client.get("/v1/models")
        return response.json()["data"]

    async def close(self) -> None:
        await self._client.aclose()


class _InProcess:
    """The router's library in this process: chain view + router service, no HTTP server."""

    def __init__(self, config: RouterConfig) -> None:
        from router.service import build_router  # only the in-process way needs the chain side

        self._chain, self._service = build_router(config)
        self._runs: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._chain.start()
        await self._service.start()
        self._runs = [asyncio.ensure_future(self._chain.run()), asyncio.ensure_future(self._service.run())]

    async def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        router = self._service.router
        try:
            _served, answer = await router.complete(router.prepare("chat", body))
        except ApiError as exc:
            raise MeshError(exc.status, exc.message, exc.code) from None
        return answer

    async def events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        router = self._service.router
        try:
            prepared = router.prepare("chat", body)
            opened = await router.open_stream(prepared)
        except ApiError as exc:
            raise MeshError(exc.status, exc.message, exc.code) from None
        async with contextlib.aclosing(router.events(prepared, opened)) as events:
            async for chunk in events:
                yield chunk

    async def models(self) -> list[dict[str, Any]]:
        return self._service.router.models()

    async def close(self) -> None:
        await self._service.stop()
        await self._chain.stop()
        for task in self._runs:
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)


async def _parse_stream(chunks: AsyncIterator[bytes], into: ResponseStream) -> AsyncIterator[str]:
    """Text pieces of an SSE stream; `into.response` is set at its end."""
    buffer, text, finish, final, usage = b"", [], None, {}, None
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            if not raw.startswith(b"data:"):
                continue
            data = raw[5:].strip()
            if data == b"[DONE]":
                into.response = _result("".join(text), finish, final, usage)
                return
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
                raise MeshError(502, str(error.get("message")), error.get("code"))
            if event.get("usage") and not event.get("choices"):
                usage = event["usage"]
            if "llm_mesh" in event:
                final = event
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
                if piece:
                    text.append(piece)
                    yield piece
    raise MeshError(502, "the stream ended without [DONE]", "stream_incomplete")


class ResponseStream:
    """Text pieces as they arrive (`async for` or, from plain code, `for`); `response` holds the
    whole answer with its usage and cost once the stream ended."""

    def __init__(self, client: MeshClient, body: dict[str, Any]) -> None:
        self._client, self._body = client, body
        self.response: ModelResponse | None = None

    def _pieces(self) -> AsyncIterator[str]:
        return _parse_stream(self._client._backend.events(self._body), self)

    async def __aiter__(self) -> AsyncIterator[str]:
        pieces = self._pieces()
        while (piece := await self._client._call(_next(pieces))) is not None:
            yield piece

    def __iter__(self) -> Iterator[str]:
        pieces = self._pieces()
        while (piece := self._client._submit(_next(pieces)).result()) is not None:
            yield piece


async def _next(pieces: AsyncIterator[str]) -> str | None:
    """The next piece on the client's loop; None at the end (an exception would not cross loops
    as a plain end of iteration)."""
    return await anext(pieces, None)


class MeshClient:
    """One way into the network (see the module doc)."""

    def __init__(
        self, base_url: str | None = None, *, config: RouterConfig | None = None, timeout: float = 300.0
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-mesh-sdk", daemon=True)
        self._thread.start()
        try:
            self._backend = self._submit(self._make(base_url, config, timeout)).result()
        except BaseException:
            self._stop_loop()
            raise

    async def _make(self, base_url: str | None, config: RouterConfig | None, timeout: float) -> Any:
        backend: Any = (
            _Remote(base_url, timeout) if base_url else _InProcess(config or build_router_config(None))
        )
        await backend.start()
        return backend

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wrap_future(self._submit(coro))

    async def complete(
        self,
        prompt: str,
        *,
        model_name: str | None = None,
        task_type: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.2,
    ) -> ModelResponse:
        """One chat answer to `prompt` (the model by name, or chosen for the task)."""
        body = _request(prompt, model_name, task_type, max_tokens, temperature, stream=False)
        return _response(await self._call(self._backend.answer(body)))

    def complete_sync(self, prompt: str, **options: Any) -> ModelResponse:
        """`complete` for code without an event loop (the same options)."""
        return self._submit(self.complete(prompt, **options)).result()

    def stream(
        self,
        prompt: str,
        *,
        model_name: str | None = None,
        task_type: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.2,
    ) -> ResponseStream:
        """The answer as it is written."""
        return ResponseStream(
            self, _request(prompt, model_name, task_type, max_tokens, temperature, stream=True)
        )

    def models(self) -> list[dict[str, Any]]:
        """The network's approved models with hosts, price, context window and specialties."""
        return self._submit(self._backend.models()).result()

    def close(self) -> None:
        try:
            self._submit(self._backend.close()).result(60)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: MeshClient | None = None
_default_lock = threading.Lock()


def default_client() -> MeshClient:
    """The client the module-level functions use (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MeshClient(os.environ.get(ROUTER_URL_ENV) or None)
        return _default


async def get_model_response(
    model_name: str | None = None, prompt: str = "", task_type: str | None = None, **kw: Any
) -> ModelResponse:
    """Ask the network: `model_name` (or None to let `task_type` choose), `prompt`, and the
    options of `MeshClient.complete` (max_tokens, temperature)."""
    return await default_client().complete(prompt, model_name=model_name, task_type=task_type, **kw)


def get_model_response_sync(
    model_name: str | None = None, prompt: str = "", task_type: str | None = None, **kw: Any
) -> ModelResponse:
    """`get_model_response` for code without an event loop."""
    return default_client().complete_sync(prompt, model_name=model_name, task_type=task_type, **kw)


def stream_model_response(
    model_name: str | None = None, prompt: str = "", task_type: str | None = None, **kw: Any
) -> ResponseStream:
    """The answer as it is written: `async for piece in ...` (or `for`), then `.response`."""
    return default_client().stream(prompt, model_name=model_name, task_type=task_type, **kw)


class ModelRegistry:
    """The network's models as the chain lists them, with their live hosts."""

    def __init__(self, client: MeshClient | None = None) -> None:
        self._client = client

    def get_model_info(self, name: str | None = None) -> dict[str, Any]:
        """Every model by name (`available_hosts`, `price_per_1k`, `context_window`,
        `specialties`, ...), or the one named; KeyError names the known ones."""
        models = {m["id"]: m for m in (self._client or default_client()).models()}
        if name is None:
            return models
        if name not in models:
            raise KeyError(f"no approved model {name!r}; known: {', '.join(sorted(models)) or 'none'}")
        return models[name]


model_registry = ModelRegistry()
