"""Connecting to a JSON-RPC endpoint, with an error that says how to fix an unreachable one."""

from __future__ import annotations

from web3 import Web3

from chain.errors import ChainError
from chain.redact import redact


def connect(rpc_url: str, *, timeout: float = 30.0) -> Web3:
    """A Web3 on `rpc_url`, checked to answer (its chain id is read once)."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - a reachability probe
    except Exception as exc:
        raise ChainError(
            f"cannot reach the RPC at {redact(rpc_url)}: start `make devnet` or pass --rpc-url "
            f"({redact(str(exc))})"
        ) from exc
    return w3
