"""Copy the deployable contracts' ABI and bytecode from forge's output into chain/artifacts.

The Python side installs without Node or a compiler because these files are committed; a test
compiles afresh and fails when they drift from the sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONTRACTS = ("NetworkToken", "ModelRegistry", "NodeRegistry", "Settlement", "HysaVault")


def artifact(forge_out: Path, name: str) -> dict:
    """Return the committed form of one contract's artifact from forge's output directory."""
    path = forge_out / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make contracts` (forge build) first")
    data = json.loads(path.read_text())
    compiler = data.get("metadata", {}).get("compiler", {}).get("version", "unknown")
    return {
        "contractName": name,
        "sourceName": f"contracts/src/{name}.sol",
        "compiler": compiler,
        "abi": data["abi"],
        "bytecode": data["bytecode"]["object"],
        "deployedBytecode": data["deployedBytecode"]["object"],
    }


def render(entry: dict) -> str:
    return json.dumps(entry, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forge-out", type=Path, default=Path("build/forge/out"))
    parser.add_argument("--dest", type=Path, default=Path("chain/artifacts"))
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in CONTRACTS:
        (args.dest / f"{name}.json").write_text(render(artifact(args.forge_out, name)))
    print(f"wrote {len(CONTRACTS)} artifacts to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
