"""The node's ASGI app: routes over the serving objects held in app.state, errors in OpenAI's shape."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp

from node.config import ServingLimits
from node.metrics import Metrics
from node.routes import router
from node.serving import PaymentHooks, Serving
from node.workers import Workers
from protocol.http import add_error_handlers
from protocol.limits import BodyLimit, RequestLimit
from storage.blockstore import BlockStore
from storage.gateway import gateway_router


def llama_build() -> dict[str, str]:
    """The llama.cpp build every worker runs (this process loads the same library)."""
    import llama_cpp

    return {
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


@dataclass
class Stack:
    """What serves requests: the workers, the serving path, its metrics and the app over them."""

    workers: Workers
    serving: Serving
    metrics: Metrics
    app: ASGIApp


def build_stack(
    limits: ServingLimits,
    node_id: str,
    blocks: BlockStore | None = None,
    payments: PaymentHooks | None = None,
) -> Stack:
    """The serving objects and the app, wired together (the daemon, tests and benchmarks use this)."""
    workers = Workers(memory_budget=int(limits.memory_budget_gb * (1 << 30)), queue_size=limits.queue_size)
    metrics = Metrics(workers.health)
    workers.on_restart(lambda name: metrics.restarts.labels(name).inc())
    serving = Serving(workers, limits, metrics, payments=payments)
    app = create_app(serving, workers, metrics, node_id=node_id, limits=limits, blocks=blocks)
    return Stack(workers, serving, metrics, app)


def create_app(
    serving: Serving,
    workers: Workers,
    metrics: Metrics,
    *,
    node_id: str,
    limits: ServingLimits,
    blocks: BlockStore | None,
) -> ASGIApp:
    """The app inside the request and body limits (protocol.limits; Starlette's own body limit answers a
    declared oversize body in plain text, and clients need OpenAI's error shape)."""
    app = FastAPI(title="llm-mesh node", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving, app.state.workers, app.state.metrics = serving, workers, metrics
    app.state.node_id = node_id
    app.state.payments = serving.payments
    app.state.build = llama_build()
    app.include_router(router)
    if blocks is not None:
        app.include_router(gateway_router(blocks))
    add_error_handlers(app)
    bounded = BodyLimit(app, limits.max_body_bytes)
    return RequestLimit(bounded, limits.max_connections, exempt=("/health", "/metrics"))
