"""The Python face of the llm-mesh contracts: artifacts, EIP-712 types and (later) typed calls."""

from chain.artifacts import CONTRACT_NAMES, Artifact, load_artifact
from chain.errors import ChainError

__all__ = ["CONTRACT_NAMES", "Artifact", "ChainError", "load_artifact"]
