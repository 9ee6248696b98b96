"""Declare that this node hosts a model: on chain (NodeRegistry) and in the node config.

Idempotent: a model already hosted is left as it is (its llama.cpp settings are updated).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chain.views import latest_approved
from node.config import build_config, load_config, save_config
from scripts.common import UsageError, connect, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model name as registered, e.g. gemma-3-270m")
    p.add_argument(
        "--gpu-layers", type=int, default=0, help="layers to offload to the GPU (-1 all, 0 CPU only)"
    )
    p.add_argument("--n-ctx", type=int, default=4096, help="context length to serve (default 4096)")
    p.add_argument("--threads", type=int, default=4, help="CPU threads per model (default 4)")
    p.add_argument("--config", type=Path, default=Path("node.json"), help="node config (default node.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    session = connect(args)
    model_id = latest_approved(session.models, args.model)
    node = session.node()
    if not node.registered:
        raise UsageError("this account has no registered node: run register_node.py first")
    entry = {"name": args.model, "model_id": model_id, "gpu_layers": args.gpu_layers}
    entry |= {"n_ctx": args.n_ctx, "threads": args.threads}
    models = [m.model_dump() for m in config.models if m.name != args.model] + [entry]
    updated = build_config(**{**config.model_dump(), "models": models})  # refuses before anything is sent
    hosted = list(node.hosted_models)
    if model_id not in hosted:
        session.send(session.nodes.functions.setHostedModels([*hosted, model_id]))
        print(f"on chain: now hosting {args.model} (model {model_id})")
    else:
        print(f"on chain: already hosting {args.model} (model {model_id})")
    save_config(updated, args.config)
    print(f"config: {args.config} serves {args.model} with gpu_layers={args.gpu_layers} n_ctx={args.n_ctx}")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
