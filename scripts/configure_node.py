"""Write the node configuration, checked against the network's minimum specs.

Below the minimum prints a warning (small models run on modest machines); impossible values
are refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from node.config import GPU_VRAM_GB, ConfigError, NodeConfig, build_config, load_config, save_config
from scripts.common import DEFAULT_DEPLOYMENT, DEFAULT_RPC, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--gpu-specs", default="none", help=f"GPU model: {', '.join(sorted(GPU_VRAM_GB))}")
    p.add_argument("--vram", type=int, help="GPU memory in GB (default: the GPU model's)")
    p.add_argument("--ram", type=int, required=True, help="system memory in GB")
    p.add_argument("--storage", type=int, required=True, help="disk for model files in GB")
    p.add_argument(
        "--cpu-cores", type=int, default=os.cpu_count() or 1, help="CPU cores (default: this machine's)"
    )
    p.add_argument("--bandwidth", type=int, default=100, help="network bandwidth in Mbps (default 100)")
    p.add_argument("--node-id", help="unique node name (default: keep the config's, or the host name)")
    p.add_argument("--endpoint", help="public base URL of the node API (default http://127.0.0.1:8080)")
    p.add_argument("--rpc-url", default=os.environ.get("LLM_MESH_RPC_URL", DEFAULT_RPC))
    p.add_argument(
        "--deployment", type=Path, default=Path(os.environ.get("LLM_MESH_DEPLOYMENT", DEFAULT_DEPLOYMENT))
    )
    p.add_argument("--keystore", type=Path, help="the node's keystore file")
    p.add_argument("--password-file", type=Path, help="file holding the keystore password")
    p.add_argument(
        "--config", type=Path, default=Path("node.json"), help="where to write (default node.json)"
    )
    return p


def _previous(path: Path) -> NodeConfig | None:
    """The existing config to keep node id, endpoint and models from; an invalid one is replaced."""
    if not path.exists():
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"warning: replacing {path}, which no longer validates: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _previous(args.config)
    gpu = args.gpu_specs.lower().replace(" ", "").replace("-", "")
    hardware = {
        "gpu": gpu,
        "vram_gb": args.vram if args.vram is not None else GPU_VRAM_GB.get(gpu, 0),
        "cpu_cores": args.cpu_cores,
        "ram_gb": args.ram,
        "storage_gb": args.storage,
        "bandwidth_mbps": args.bandwidth,
    }
    chain = {
        "rpc_url": args.rpc_url,
        "deployment": args.deployment,
        "keystore": args.keystore,
        "password_file": args.password_file,
    }
    config = build_config(
        node_id=args.node_id or (previous.node_id if previous else os.uname().nodename.split(".")[0]),
        endpoint=args.endpoint or (previous.endpoint if previous else "http://127.0.0.1:8080"),
        hardware=hardware,
        models=[m.model_dump() for m in previous.models] if previous else [],
        chain=chain,
        cache_limit_gb=min(100.0, float(args.storage)),
    )
    for shortfall in config.hardware.below_minimum():
        print(f"warning: {shortfall} (see the node requirements in README)", file=sys.stderr)
    save_config(config, args.config)
    print(f"wrote {args.config}: node {config.node_id}, {config.hardware.profile()}")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
