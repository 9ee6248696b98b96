"""The router daemon: `python -m router` (or `llm-mesh-router`), an OpenAI-compatible gateway to
the network.

Services start in order (chain view, the router itself: health prober and wallet, HTTP) and stop
in reverse; SIGTERM and Ctrl-C stop it gracefully; a service that fails stops it with its reason
and exit code 1. Options on the command line override the config file (`--config`), which the
environment (LLM_MESH_ROUTER_*) overrides in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from protocol.server import HttpServer
from protocol.service import ServiceError, run_services
from router.app import create_app
from router.config import RouterConfig, RouterConfigError, build_router_config
from router.service import build_router

log = logging.getLogger("router")


def build_services(config: RouterConfig) -> list[Any]:
    """The daemon's services in start order."""
    chain, service = build_router(config)
    app = create_app(service.router, max_body_bytes=config.max_body_bytes)
    http = HttpServer(app, config.host, config.port, max_connections=256, parser="httptools")
    return [chain, service, http]


async def serve(config: RouterConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_services(build_services(config), stop)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="llm-mesh-router", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, help="router config JSON (router/config.sample.json)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8100)")
    parser.add_argument("--rpc-url", help="the chain's JSON-RPC URL")
    parser.add_argument("--deployment", type=Path, help="the deployment file (make devnet writes one)")
    parser.add_argument("--keystore", type=Path, help="the payer's keystore")
    parser.add_argument("--password-file", type=Path, help="file holding the keystore password")
    parser.add_argument("--dev-account", type=int, help="pay with Anvil account N (a local devnet only)")
    parser.add_argument("--no-payments", action="store_true", help="for nodes that serve without payment")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    chain = {
        key: value
        for key, value in {
            "rpc_url": args.rpc_url,
            "deployment": args.deployment,
            "keystore": args.keystore,
            "password_file": args.password_file,
            "dev_account": args.dev_account,
        }.items()
        if value is not None
    }
    values: dict[str, Any] = {
        k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None
    }
    if chain:
        values["chain"] = chain
    if args.no_payments:
        values["payments"] = False
    return args, values


def cli(argv: list[str] | None = None) -> None:
    args, values = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the prober: a line per probe is noise
    try:
        config = build_router_config(args.config, **values)
        asyncio.run(serve(config))
    except RouterConfigError as exc:
        sys.exit(f"llm-mesh-router: {exc}")
    except ServiceError as exc:
        log.error("event=router_stopped reason=%r", str(exc))
        sys.exit(f"llm-mesh-router: {exc}")
    log.info("event=router_stopped reason=signal")


if __name__ == "__main__":
    cli()
