"""The node daemon: `python -m node --config node.json` (or `llm-mesh-node`).

Services start in order (chain view, model manager, workers, HTTP) and stop in reverse; SIGTERM and
Ctrl-C stop it gracefully (running streams finish within the grace period); a service that fails
stops the daemon with its reason and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from node.app import build_stack
from node.chainview import ChainView
from node.config import ConfigError, NodeConfig, default_config_path, load_config
from node.models import ModelManager
from node.server import HttpServer
from node.service import ServiceError, run_services
from storage.blockstore import FileBlockStore

log = logging.getLogger("node")


def listen_address(config: NodeConfig) -> tuple[str, int]:
    """Where to listen: `listen` ("host:port") when set, else the endpoint's host and port."""
    if config.listen:
        host, _, port = config.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    parts = urlsplit(config.endpoint)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def build_services(config: NodeConfig, config_path: Path) -> list:
    """The daemon's services in start order."""
    blocks = FileBlockStore()
    stack = build_stack(config.serving, config.node_id, blocks)
    chain = ChainView(
        config,
        config_path,
        confirmations=config.chain.confirmations,
        poll_interval=config.chain.poll_interval_s,
    )
    models = ModelManager(
        config, chain, on_change=stack.workers.update, blocks=blocks, kubo_api=config.ipfs_api
    )
    host, port = listen_address(config)
    http = HttpServer(stack.app, host, port, max_connections=config.serving.max_connections)
    return [chain, models, stack.workers, http]


async def serve(config: NodeConfig, config_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_services(build_services(config, config_path), stop)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llm-mesh-node", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=None, help=f"node config (default {default_config_path()})"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        sys.exit(f"llm-mesh-node: {exc}")
    try:
        asyncio.run(serve(config, path))
    except ServiceError as exc:
        log.error("event=node_stopped reason=%r", str(exc))
        sys.exit(f"llm-mesh-node: {exc}")
    log.info("event=node_stopped reason=signal")


if __name__ == "__main__":
    cli()
