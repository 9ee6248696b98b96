"""The router's ASGI app: OpenAI-compatible routes over the Router held in app.state.

`/v1/completions` and `/v1/chat/completions` (streamed or not), `/v1/models` (the network's
approved models with their hosts, price and context window) and `/health` (the nodes as the
router sees them, and the payer's escrow). Errors are in OpenAI's shape, so the official client
raises the matching class; every answer says which node and model served in `llm_mesh` and in the
`x-llm-mesh-node` / `x-llm-mesh-model` headers.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp

from protocol import sse
from protocol.errors import ApiError
from protocol.http import add_error_handlers
from protocol.limits import BodyLimit
from router.gateway import Router
from router.upstream import Served

routes = APIRouter()


@routes.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, "completions")


@routes.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, "chat")


@routes.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.router.models()}


@routes.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return request.app.state.router.health()


async def _serve(request: Request, endpoint: str) -> Response:
    router: Router = request.app.state.router
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    prepared = router.prepare(endpoint, data)
    if prepared.stream:
        opened = await router.open_stream(prepared)
        headers = {**sse.HEADERS, **_served(opened.served)}
        return StreamingResponse(router.upstream.events(opened), media_type=sse.CONTENT_TYPE, headers=headers)
    served, answer = await router.complete(prepared)
    return JSONResponse(answer, headers=_served(served))


def _served(served: Served) -> dict[str, str]:
    return {"x-llm-mesh-node": served.candidate.operator, "x-llm-mesh-model": served.candidate.model}


def create_app(router: Router, *, max_body_bytes: int) -> ASGIApp:
    app = FastAPI(title="llm-mesh router", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router
    app.include_router(routes)
    add_error_handlers(app)
    return BodyLimit(app, max_body_bytes)
