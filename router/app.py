"""The router's ASGI app: OpenAI-compatible routes over the Router.

`/v1/completions` and `/v1/chat/completions` (streamed or not), `/v1/models` (the network's
approved models with their hosts, price and context window) and `/health` (the nodes as the
router sees them, and the payer's escrow). Errors are in OpenAI's shape, so the official client
raises the matching class; every answer says which node and model served in `llm_mesh` and in the
`x-llm-mesh-node` / `x-llm-mesh-model` headers.

The two completion routes, which every request takes, are answered by `RouterApp` itself; the
rest (models, health, unknown paths and methods) by FastAPI. FastAPI's routing, request object
and middleware cost ~55 us a request here, and what the router adds to a node's answer is the
measure users judge it by (README, Router).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chain.logs import kv as _kv
from protocol import sse
from protocol.errors import ApiError
from protocol.http import add_error_handlers, disconnected, error_response
from protocol.limits import BodyLimit
from router.gateway import Router
from router.upstream import Served

log = logging.getLogger(__name__)

COMPLETIONS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}

routes = APIRouter()


@routes.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.router.models()}


@routes.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return request.app.state.router.health()


class RouterApp:
    """Completions answered directly; everything else by the FastAPI app `rest`."""

    def __init__(self, router: Router, rest: ASGIApp) -> None:
        self.router, self.rest = router, rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = COMPLETIONS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.rest(scope, receive, send)
            return
        if scope["method"] != "POST":
            error = ApiError(405, f"{scope['path']} takes POST", code="method_not_allowed", retry=False)
            await error_response(error, {"Allow": "POST"})(scope, receive, send)
            return
        body = await _body(receive)
        if body is None:  # the client went away, or the body limit has answered 413
            return
        try:
            prepared = self.router.prepare(endpoint, _json(body))
            if prepared.stream:
                opened = await self.router.open_stream(prepared)
            else:
                served, answer = await self.router.complete(prepared, finish_later=True)
        except ApiError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except Exception:
            log.exception(_kv("router.request_failed", endpoint=endpoint))
            await error_response(ApiError(500, "the router failed on this request; retry it"))(
                scope, receive, send
            )
            return
        if prepared.stream:
            await _relay(self.router.events(prepared, opened), _served(opened.served), receive, send)
            return
        await JSONResponse(answer, headers=_served(served))(scope, receive, send)
        await asyncio.sleep(0)  # the answer's write leaves first (the server sends it on the next turn)
        self.router.finish(prepared, served)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None


async def _relay(events: AsyncIterator[bytes], served: dict[str, str], receive: Receive, send: Send) -> None:
    """Send an SSE stream; a client that goes away stops it at once (and with it the node's request:
    `events` is closed). Starlette's StreamingResponse does the same with a task group, ~90 us a
    stream here; this takes one task."""
    task = asyncio.current_task()
    assert task is not None
    finished = False

    def client_gone(_: Any) -> None:
        if not finished:
            task.cancel()

    gone = asyncio.ensure_future(disconnected(receive))
    gone.add_done_callback(client_gone)
    headers = [(b"content-type", sse.CONTENT_TYPE.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**sse.HEADERS, **served}.items()]
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Let the chunk leave now: the server sends what was written once the loop turns, and
            # reading the next event does not turn it when the node's next events are buffered
            # already (a fast node's whole answer, its receipt check included, would go out at once).
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone.done():
            raise  # cancelled from outside (the server is shutting down)
        task.uncancel()
    finally:
        finished = True
        gone.cancel()
        await events.aclose()  # type: ignore[attr-defined]


async def _body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _served(served: Served) -> dict[str, str]:
    return {"x-llm-mesh-node": served.candidate.operator, "x-llm-mesh-model": served.candidate.model}


def create_app(router: Router, *, max_body_bytes: int) -> ASGIApp:
    rest = FastAPI(title="llm-mesh router", docs_url=None, redoc_url=None, openapi_url=None)
    rest.state.router = router
    rest.include_router(routes)
    add_error_handlers(rest)
    return BodyLimit(RouterApp(router, rest), max_body_bytes)
