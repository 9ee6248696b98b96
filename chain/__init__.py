"""The Python face of the llm-mesh contracts: artifacts, EIP-712 types, accounts, transactions."""

from chain.artifacts import CONTRACT_NAMES, Artifact, load_artifact
from chain.errors import ChainError, GasCapExceeded, KeystoreError, TxTimeout, WrongNetwork
from chain.revert import RevertError, decode_revert

__all__ = [
    "CONTRACT_NAMES",
    "Artifact",
    "ChainError",
    "GasCapExceeded",
    "KeystoreError",
    "RevertError",
    "TxTimeout",
    "WrongNetwork",
    "decode_revert",
    "load_artifact",
]
