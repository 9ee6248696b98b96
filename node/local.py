"""Serve one local GGUF file without the chain: `python -m node.local MODEL.gguf --name NAME`.

The node's own serving stack (workers, serving path, HTTP API, metrics) over a single file, with no
chain, no payment and no receipts: for operators to try their machine before staking, and for
benchmarks. The GGUF header is checked before llama.cpp sees the file. Once the port is bound it
prints `serving NAME at http://HOST:PORT` on stdout (a parent process can wait for that line); the
model loads right away and `/health` says when it is ready. SIGTERM and Ctrl-C stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from node.app import build_stack
from node.config import HostedModel, ServingLimits
from node.models import ServableModel
from node.workers import memory_estimate
from protocol.server import HttpServer
from protocol.service import Service, ServiceError, run_services
from storage.gguf import GgufError, read_header

log = logging.getLogger("node.local")

# llama.cpp's `general.file_type` codes (enum llama_ftype) for the common quantizations.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


def local_servable(path: Path, name: str, settings: HostedModel, model_id: int = 1) -> ServableModel:
    """A served model for a local GGUF file (header checked; raises GgufError), as the model
    manager would hand over a verified download. Nothing is known from a chain: no CID, no price,
    and no sha256 (nothing to compare it with)."""
    header = read_header(path)
    file_type = header.metadata.get("general.file_type")
    quantization = _FILE_TYPES.get(file_type, f"file type {file_type}") if isinstance(file_type, int) else ""
    return ServableModel(
        model_id=model_id,
        name=name,
        path=path,
        size=header.file_size,
        sha256="",
        context_window=settings.n_ctx,
        price_per_1k=0,
        quantization=quantization,
        specialties=(),
        settings=settings,
        header=header,
    )


class _Announce(Service):
    """Prints the serving line once the HTTP server (started before it) has bound its port."""

    name = "announce"

    def __init__(self, model: str, http: HttpServer) -> None:
        self.model, self.http = model, http

    async def start(self) -> None:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        print(f"serving {self.model} at http://{host}:{self.http.port}", flush=True)


async def serve(model: ServableModel, host: str, port: int, limits: ServingLimits | None = None) -> None:
    """Serve `model` until SIGTERM or SIGINT."""
    if limits is None:
        # One model and nothing to evict for it: the budget is what it needs.
        limits = ServingLimits(memory_budget_gb=memory_estimate(model) / (1 << 30) * 1.01)
    stack = build_stack(limits, node_id="local")
    http = HttpServer(stack.app, host, port, max_connections=limits.max_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stack.workers.update({model.name: model})
    await run_services([stack.workers, http, _Announce(model.name, http)], stop)


def cli(argv: list[str] | None = None) -> None:
    defaults = HostedModel(name="-")
    parser = argparse.ArgumentParser(prog="python -m node.local", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", type=Path, help="a GGUF model file")
    parser.add_argument("--name", required=True, help="the model's name in requests (`model` field)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    parser.add_argument(
        "--threads", type=int, default=min(defaults.threads, os.cpu_count() or 1), help="llama.cpp threads"
    )
    parser.add_argument("--slots", type=int, default=defaults.slots, help="requests decoded together")
    parser.add_argument("--n-ctx", type=int, default=defaults.n_ctx, help="tokens per request")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded to a GPU (-1: all)")
    parser.add_argument(
        "--burst-window-ms",
        type=float,
        default=defaults.burst_window_ms,
        help="an idle model waits this long for the rest of a burst (0: off)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = HostedModel(
            name=args.name,
            threads=args.threads,
            slots=args.slots,
            n_ctx=args.n_ctx,
            gpu_layers=args.gpu_layers,
            burst_window_ms=args.burst_window_ms,
            eager=True,
        )
        model = local_servable(args.model, args.name, settings)
    except (GgufError, ValueError) as exc:
        sys.exit(f"node.local: {exc}")
    log.info(
        "event=local_model model=%s path=%s bytes=%d quantization=%s",
        model.name,
        model.path,
        model.size,
        model.quantization,
    )
    try:
        asyncio.run(serve(model, args.host, args.port))
    except ServiceError as exc:
        sys.exit(f"node.local: {exc}")
    log.info("event=node_stopped reason=signal")


if __name__ == "__main__":
    cli()
