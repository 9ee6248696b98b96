"""The node's chain view: chain.chainview's registries and escrows, run as one of the daemon's
services, with its watcher state in the node's data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chain.chainview import ChainView
from node.config import NodeConfig
from protocol.service import Service


def default_state_dir(config: NodeConfig, config_path: Path | None = None) -> Path:
    """Where the watcher state lives unless told otherwise: `state/` in the node's data directory
    (the config file's directory, `~/.llm-mesh/state/` with the default config; without one, the
    model cache's parent)."""
    data_dir = Path(config_path).parent if config_path is not None else config.cache_dir.parent
    return data_dir / "state"


class NodeChainView(ChainView, Service):
    """The chain view of the node configured by `config` (loaded from `config_path`)."""

    name = "chainview"

    def __init__(
        self, config: NodeConfig, config_path: Path | None = None, *, state_dir: Path | None = None, **kw: Any
    ) -> None:
        """`state_dir` overrides `default_state_dir`; the rest is chain.chainview.ChainView's."""
        state = Path(state_dir) if state_dir is not None else default_state_dir(config, config_path)
        super().__init__(config.chain.rpc_url, config.chain.deployment, state, **kw)
        self.config = config
