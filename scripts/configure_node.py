"""Write the node configuration, checked against the network's minimum specs.

The first run creates it (`--ram` and `--storage` are needed then); a later run changes only what
it is given and keeps everything else (keystore, password file, GPU, bandwidth, cores, models).
Below the minimum prints a warning (small models run on modest machines); impossible values are
refused. Relative paths given here are stored as absolute ones, so every script finds them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from node.config import (
    DEFAULT_ENDPOINT,
    GPU_VRAM_GB,
    ConfigError,
    NodeConfig,
    build_config,
    load_config,
    save_config,
)
from scripts.common import DEFAULT_DEPLOYMENT, DEFAULT_RPC, UsageError, add_config_argument, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--gpu-specs", help=f"GPU model: {', '.join(sorted(GPU_VRAM_GB))} (default none)")
    p.add_argument("--vram", type=int, help="GPU memory in GB (default: the GPU model's)")
    p.add_argument("--ram", type=int, help="system memory in GB (needed for a new config)")
    p.add_argument("--storage", type=int, help="disk for model files in GB (needed for a new config)")
    p.add_argument("--cpu-cores", type=int, help="CPU cores (default: this machine's)")
    p.add_argument("--bandwidth", type=int, help="network bandwidth in Mbps (default 100)")
    p.add_argument("--node-id", help="unique node name (default: the host name)")
    p.add_argument("--endpoint", help=f"public base URL of the node API (default {DEFAULT_ENDPOINT})")
    p.add_argument("--rpc-url", help=f"JSON-RPC endpoint (default $LLM_MESH_RPC_URL, else {DEFAULT_RPC})")
    p.add_argument(
        "--deployment",
        type=Path,
        help=f"deployment file (default $LLM_MESH_DEPLOYMENT, else {DEFAULT_DEPLOYMENT})",
    )
    p.add_argument("--keystore", type=Path, help="the node's keystore file")
    p.add_argument("--password-file", type=Path, help="file holding the keystore password")
    add_config_argument(p)
    return p


def _previous(path: Path) -> NodeConfig | None:
    """The existing config, whose values a re-run keeps; an invalid one is replaced."""
    if not path.exists():
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"warning: replacing {path}, which no longer validates: {exc}", file=sys.stderr)
        return None


def _given(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser().resolve()


def _hardware(args: argparse.Namespace, before: dict[str, Any] | None) -> dict[str, Any]:
    if before is None and (args.ram is None or args.storage is None):
        raise UsageError("a new node config needs --ram GB and --storage GB (the rest has defaults)")
    before = before or {"gpu": "none", "vram_gb": 0, "cpu_cores": os.cpu_count() or 1, "bandwidth_mbps": 100}
    gpu = (
        before["gpu"] if args.gpu_specs is None else args.gpu_specs.lower().replace(" ", "").replace("-", "")
    )
    vram = (
        args.vram
        if args.vram is not None
        else before["vram_gb"]
        if args.gpu_specs is None
        else GPU_VRAM_GB.get(gpu, 0)
    )
    return {
        "gpu": gpu,
        "vram_gb": vram,
        "cpu_cores": _given(args.cpu_cores, before["cpu_cores"]),
        "ram_gb": _given(args.ram, before.get("ram_gb")),
        "storage_gb": _given(args.storage, before.get("storage_gb")),
        "bandwidth_mbps": _given(args.bandwidth, before["bandwidth_mbps"]),
    }


def _chain(args: argparse.Namespace, before: dict[str, Any] | None) -> dict[str, Any]:
    before = before or {
        "rpc_url": os.environ.get("LLM_MESH_RPC_URL", DEFAULT_RPC),
        "deployment": Path(os.environ.get("LLM_MESH_DEPLOYMENT", DEFAULT_DEPLOYMENT)),
        "keystore": None,
        "password_file": None,
    }
    return {
        "rpc_url": _given(args.rpc_url, before["rpc_url"]),
        "deployment": _absolute(_given(args.deployment, before["deployment"])),
        "keystore": _absolute(_given(args.keystore, before["keystore"])),
        "password_file": _absolute(_given(args.password_file, before["password_file"])),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _previous(args.config)
    before = previous.model_dump() if previous else None
    hardware = _hardware(args, before["hardware"] if before else None)
    config = build_config(
        node_id=args.node_id or (previous.node_id if previous else os.uname().nodename.split(".")[0]),
        endpoint=args.endpoint or (previous.endpoint if previous else DEFAULT_ENDPOINT),
        hardware=hardware,
        models=before["models"] if before else [],
        chain=_chain(args, before["chain"] if before else None),
        cache_dir=previous.cache_dir if previous else (args.config.parent / "models").resolve(),
        cache_limit_gb=min(previous.cache_limit_gb if previous else 100.0, float(hardware["storage_gb"])),
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
