"""Compiled contracts (ABI + bytecode), committed under chain/artifacts by `make contracts`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from chain.errors import ChainError

ARTIFACT_DIR = Path(__file__).parent / "artifacts"
CONTRACT_NAMES = ("NetworkToken", "ModelRegistry", "NodeRegistry", "Settlement", "HysaVault")


@dataclass(frozen=True)
class Artifact:
    """One deployable contract."""

    name: str
    abi: list[dict]
    bytecode: str
    deployed_bytecode: str
    compiler: str

    def abi_entry(self, kind: str, name: str) -> dict:
        """The ABI entry of the given kind ('function', 'error', 'event') and name."""
        for entry in self.abi:
            if entry.get("type") == kind and entry.get("name") == name:
                return entry
        raise ChainError(
            f"{self.name} has no {kind} named {name}: are the artifacts current (make contracts)?"
        )


@cache
def load_artifact(name: str) -> Artifact:
    """Load a committed artifact by contract name."""
    if name not in CONTRACT_NAMES:
        raise ChainError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    path = ARTIFACT_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ChainError(f"{path} is missing: run `make contracts` to generate the artifacts") from exc
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        compiler=data["compiler"],
    )
