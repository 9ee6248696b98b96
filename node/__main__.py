"""The node daemon: `python -m node --config node.json` (or `llm-mesh-node`).

Services start in order (chain view, payments, model manager, workers, HTTP) and stop in reverse
(so the settler settles after the last stream ended); SIGTERM and
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

from eth_account.signers.local import LocalAccount

from chain.accounts import load_account
from chain.errors import ChainError
from node.app import build_stack
from node.chainview import NodeChainView
from node.config import ConfigError, NodeConfig, default_config_path, load_config
from node.models import ModelManager
from node.settler import PaymentService
from protocol.server import HttpServer
from protocol.service import ServiceError, run_services
from storage.blockstore import FileBlockStore

log = logging.getLogger("node")


def listen_address(config: NodeConfig) -> tuple[str, int]:
    """Where to listen: `listen` ("host:port") when set, else the endpoint's host and port."""
    if config.listen:
        host, _, port = config.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    parts = urlsplit(config.endpoint)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def node_account(config: NodeConfig) -> LocalAccount | None:
    """The node's account from its keystore; payment needs one (ConfigError says so)."""
    keystore = config.chain.keystore
    if keystore is None:
        if config.payments.enabled:
            raise ConfigError(
                "payments are on but the config names no keystore: set chain.keystore and "
                "chain.password_file (configure_node.py --keystore ...), or payments.enabled false to "
                "serve without payment"
            )
        return None
    try:
        return load_account(keystore=keystore, password_file=config.chain.password_file, dev_index=None)
    except ChainError as exc:
        raise ConfigError(str(exc)) from exc


def build_services(config: NodeConfig, config_path: Path) -> list:
    """The daemon's services in start order."""
    account = node_account(config)
    blocks = FileBlockStore()
    chain = NodeChainView(
        config,
        config_path,
        confirmations=config.chain.confirmations,
        poll_interval=config.chain.poll_interval_s,
        node_address=account.address if account is not None else None,
    )
    payment = None
    if config.payments.enabled and account is not None:
        payment = PaymentService(chain, account, chain.state_dir, config.payments)
    stack = build_stack(config.serving, config.node_id, blocks, payment.hooks if payment else None)
    if payment is not None:
        stack.metrics.watch_payments(payment.stats)
    models = ModelManager(
        config,
        chain,
        on_change=stack.workers.update,
        blocks=blocks,
        kubo_api=config.ipfs_api,
        account=account,
    )
    host, port = listen_address(config)
    http = HttpServer(stack.app, host, port, max_connections=config.serving.max_connections)
    services = [chain, models, stack.workers, http]
    return services if payment is None else [chain, payment, *services[1:]]


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
    except ConfigError as exc:
        sys.exit(f"llm-mesh-node: {exc}")
    except ServiceError as exc:
        log.error("event=node_stopped reason=%r", str(exc))
        sys.exit(f"llm-mesh-node: {exc}")
    log.info("event=node_stopped reason=signal")


if __name__ == "__main__":
    cli()
