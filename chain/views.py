"""Typed views of the contracts' structs: `node.stake`, not `node[4]`.

Each view is a named tuple whose fields are the struct's ABI component names in snake_case, built
from the committed artifact, so a field added to a struct shows up here without a hand-kept list and
code that reads a field by name keeps working when the order changes.
"""

from __future__ import annotations

import re
from collections import namedtuple
from typing import Any

from web3.contract import Contract
from web3.types import BlockIdentifier

from chain.artifacts import load_artifact
from chain.errors import ChainError

MODEL_STATUS = ("None", "Proposed", "Approved", "Deprecated")


def _snake(name: str) -> str:
    """`pricePer1k` -> `price_per_1k`, `sha256Digest` -> `sha256_digest` (digits after a capitalised
    word start a part of their own; digits inside a lower-case word stay in it)."""
    name = re.sub(r"([A-Z][a-z]+)(\d)", r"\1_\2", name)
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _struct_type(contract: str, function: str, type_name: str) -> type:
    """A named tuple type for the struct `function` of `contract` returns."""
    entry = next(
        e for e in load_artifact(contract).abi if e.get("type") == "function" and e.get("name") == function
    )
    return namedtuple(type_name, [_snake(c["name"]) for c in entry["outputs"][0]["components"]])


ModelInfo = _struct_type("ModelRegistry", "getModel", "ModelInfo")
NodeInfo = _struct_type("NodeRegistry", "getNode", "NodeInfo")
Reputation = _struct_type("NodeRegistry", "reputationOf", "Reputation")
Escrow = _struct_type("Settlement", "escrowOf", "Escrow")


def model_info(models: Contract, model_id: int, block: BlockIdentifier = "latest") -> Any:
    """A model version from the ModelRegistry (`.name`, `.cid`, `.price_per_1k`, `.status`, ...),
    as of `block`."""
    return ModelInfo(*models.functions.getModel(model_id).call(block_identifier=block))


def node_info(nodes: Contract, operator: str, block: BlockIdentifier = "latest") -> Any:
    """A node's registration and stake (`.node_id`, `.endpoint`, `.stake`, `.unbonding`, ...), as of
    `block`."""
    return NodeInfo(*nodes.functions.getNode(operator).call(block_identifier=block))


def reputation_of(nodes: Contract, operator: str, block: BlockIdentifier = "latest") -> Any:
    """A node's reputation counters (`.tokens_served`, `.volume_paid`, `.slash_count`, ...), as of
    `block`."""
    return Reputation(*nodes.functions.reputationOf(operator).call(block_identifier=block))


def escrow_of(settlement: Contract, payer: str) -> Any:
    """A payer's escrow (`.balance`, `.unlocking`, `.unlock_ready_at`)."""
    return Escrow(*settlement.functions.escrowOf(payer).call())


class ModelNotFound(ChainError):  # noqa: N818 - named for what the caller looks up
    """No approved version of a model name; `versions` lists the name's ids, `known` every name."""

    def __init__(self, name: str, versions: list[int], known: list[str]) -> None:
        self.name, self.versions, self.known = name, versions, known
        if versions:
            text = f"model {name!r} has versions {versions} but none is approved yet (approve_model.py)"
        else:
            text = f"unknown model {name!r}; registered: {', '.join(known) or 'none'}"
        super().__init__(text)


def latest_approved(models: Contract, name: str) -> int:
    """The newest approved version of a model name (ModelNotFound when there is none)."""
    ids = models.functions.versionsOf(name).call()
    approved = [i for i in ids if models.functions.isApproved(i).call()]
    if approved:
        return approved[-1]
    count = models.functions.modelCount().call()
    known = [] if ids else sorted({model_info(models, i).name for i in range(1, count + 1)})
    raise ModelNotFound(name, ids, known)


def status_name(status: int) -> str:
    """A ModelRegistry status code by name."""
    return MODEL_STATUS[status] if 0 <= status < len(MODEL_STATUS) else f"unknown({status})"
