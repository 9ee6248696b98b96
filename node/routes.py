"""The node's HTTP routes: thin, over the objects in app.state (serving, workers, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from node.serving import Stream
from protocol import sse
from protocol.errors import ApiError
from protocol.http import disconnected

router = APIRouter()
T = TypeVar("T")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, "completions")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, "chat")


@router.post("/v1/receipts")
async def receipts(request: Request) -> dict[str, Any]:
    """A countersigned receipt, stored durably before this answer acknowledges it."""
    payments = request.app.state.payments
    if not hasattr(payments, "take_receipt"):
        raise ApiError(404, "this node serves without payment and takes no receipts", code="not_found")
    stored = await payments.take_receipt(await request.body())
    r = stored.signed.receipt
    return {
        "stored": True,
        "payer": r.payer,
        "cumulative_tokens": str(r.cumulative_tokens),
        "cumulative_amount": str(r.cumulative_amount),
    }


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = request.app.state
    data = []
    for name, entry in state.workers.entries.items():
        m = entry.model
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": state.node_id,
                "model_id": m.model_id,
                "context_window": m.settings.n_ctx,
                "price_per_1k": str(getattr(m, "price_per_1k", 0)),
                "state": entry.state,
            }
        )
    return {"object": "list", "data": data}


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    state = request.app.state
    models = state.workers.health()
    failed = [name for name, m in models.items() if m["state"] == "failed"]
    answer = {
        "status": "degraded" if failed else "ok",
        "node_id": state.node_id,
        "models": models,
        "queue": {"waiting": state.workers.budget.waiting, "limit": state.workers.budget.limit},
        "llama_cpp": state.build,
    }
    paid = state.metrics.payment_stats()
    if paid:  # amounts as decimal strings of token base units, like every amount on the wire
        answer["payments"] = {**paid, "unsettled": str(paid["unsettled"])}
    return answer


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


async def _serve(request: Request, endpoint: str) -> Response:
    serving = request.app.state.serving
    body = await request.body()
    client = request.client.host if request.client else "unknown"
    ctx, stream = await _unless_gone(request, serving.prepare(endpoint, body, client, dict(request.headers)))
    if ctx.body.stream:
        return EventStream(stream)
    answer = asyncio.ensure_future(stream.collect())
    gone = asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():  # the client left: free the slot, nobody reads the answer
            stream.cancel()
            answer.cancel()
            return Response(status_code=499)
        return JSONResponse(answer.result())
    finally:
        gone.cancel()
        await stream.close()


class EventStream(StreamingResponse):
    """An SSE answer whose slot is freed the moment the client disconnects, also before the
    first token (while the prompt is still being decoded), and always released at the end."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(stream.events(), media_type=sse.CONTENT_TYPE, headers=sse.HEADERS)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(disconnected(receive))
        watcher.add_done_callback(lambda t: t.cancelled() or self.stream.cancel())
        try:
            await super().__call__(scope, receive, send)
        finally:
            watcher.cancel()
            await self.stream.close()


async def _unless_gone(request: Request, preparing: Awaitable[T]) -> T:
    """Await `preparing` (queueing, loading, prefill) unless the client leaves first: then it is
    cancelled, which gives up its place in the queue or frees its slot in the worker."""
    work = asyncio.ensure_future(preparing)
    gone = asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise ApiError(499, "the client closed the request", code="client_closed")
        return work.result()
    finally:
        gone.cancel()
