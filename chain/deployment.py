"""The deployment file: where the contracts live on one chain. Every component reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from chain.artifacts import load_artifact
from chain.errors import ChainError, WrongNetwork
from chain.files import write_atomic

# Contract name -> Deployment field.
CONTRACT_FIELDS = {
    "NetworkToken": "network_token",
    "ModelRegistry": "model_registry",
    "NodeRegistry": "node_registry",
    "Settlement": "settlement",
    "HysaVault": "hysa_vault",
}


@dataclass(frozen=True)
class Deployment:
    """Addresses of one deployment, the chain it is on and the block it started at."""

    chain_id: int
    block_number: int
    network_token: str
    model_registry: str
    node_registry: str
    settlement: str
    hysa_vault: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def address_of(self, contract: str) -> str:
        return getattr(self, CONTRACT_FIELDS[contract])


def save_deployment(deployment: Deployment, path: Path) -> None:
    """Write the file atomically: a crash leaves the old one. Public addresses, read by every
    component (perhaps as other users), so the file is world-readable."""
    write_atomic(path, json.dumps(deployment.to_dict(), indent=2, sort_keys=True) + "\n", mode=0o644)


def load_deployment(path: Path, w3: Web3 | None = None) -> Deployment:
    """Read a deployment file; with `w3`, refuse it when it belongs to another chain."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ChainError(
            f"no deployment file at {path}: deploy with scripts/deploy.py (or start `make devnet`), "
            "or pass --deployment"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ChainError(f"deployment file {path} is not valid JSON ({exc}); redeploy or restore it") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ChainError(f"deployment file {path} holds {kind}, not an object; redeploy or restore it")
    names = {f.name for f in fields(Deployment)}
    missing = sorted(names - set(data))
    if missing:
        raise ChainError(f"deployment file {path} lacks {', '.join(missing)}; redeploy or restore it")
    deployment = Deployment(**{k: data[k] for k in names})
    if w3 is not None:
        check_network(deployment, w3, path)
    return deployment


def check_network(deployment: Deployment, w3: Web3, path: Path | str = "the deployment file") -> None:
    """Raise WrongNetwork when the RPC's chain id differs from the deployment's."""
    chain_id = w3.eth.chain_id
    if chain_id != deployment.chain_id:
        raise WrongNetwork(
            f"{path} is for chain {deployment.chain_id} but the RPC is chain {chain_id}: "
            "point --rpc-url at the right network or use that network's deployment file"
        )


def contract_at(w3: Web3, deployment: Deployment, name: str) -> Contract:
    """A web3 contract object for one of the deployment's contracts."""
    return w3.eth.contract(address=deployment.address_of(name), abi=load_artifact(name).abi)
