"""Declare that this node hosts a model: on chain (NodeRegistry) and in the node config.

Idempotent: a model already hosted is left as it is (its llama.cpp settings are updated).
"""

from __future__ import annotations

import argparse
import sys

from chain.views import latest_approved
from node.config import build_config, save_config
from scripts.common import UsageError, connect, node_config, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, node_config=True)
    p.add_argument("--model", required=True, help="model name as registered, e.g. gemma-3-270m")
    p.add_argument(
        "--gpu-layers",
        type=int,
        help="layers to offload to the GPU (-1 all, 0 CPU only; default: all with a declared GPU, else 0)",
    )
    p.add_argument("--n-ctx", type=int, default=4096, help="context length to serve (default 4096)")
    p.add_argument("--threads", type=int, help="CPU threads per model (default: the declared cores)")
    p.add_argument(
        "--burst-window-ms",
        type=float,
        help="how long an idle model waits for the rest of a burst of requests (default 2; 0: off)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = node_config(args, required=True)
    session = connect(args)
    model_id = latest_approved(session.models, args.model)
    node = session.node()
    if not node.registered:
        raise UsageError("this account has no registered node: run register_node.py first")
    gpu_layers = (
        args.gpu_layers if args.gpu_layers is not None else (0 if config.hardware.gpu == "none" else -1)
    )
    threads = args.threads or config.hardware.cpu_cores
    entry = {"name": args.model, "model_id": model_id, "gpu_layers": gpu_layers}
    entry |= {"n_ctx": args.n_ctx, "threads": threads}
    if args.burst_window_ms is not None:
        entry["burst_window_ms"] = args.burst_window_ms
    models = [m.model_dump() for m in config.models if m.name != args.model] + [entry]
    updated = build_config(**{**config.model_dump(), "models": models})  # refuses before anything is sent
    hosted = list(node.hosted_models)
    if model_id not in hosted:
        session.send(session.nodes.functions.setHostedModels([*hosted, model_id]))
        print(f"on chain: now hosting {args.model} (model {model_id})")
    else:
        print(f"on chain: already hosting {args.model} (model {model_id})")
    save_config(updated, args.config)
    print(
        f"config: {args.config} serves {args.model} with gpu_layers={gpu_layers} n_ctx={args.n_ctx} "
        f"threads={threads}"
    )
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
