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
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from chain.accounts import load_account
from chain.chainview import ChainView
from chain.errors import ChainError
from chain.receipts import Domain
from protocol.payer import Payer
from protocol.server import HttpServer
from protocol.service import Service, ServiceError, run_services
from router.app import create_app
from router.config import RouterConfig, RouterConfigError, build_router_config
from router.gateway import Router
from router.health import HealthBook, Prober
from router.tasks import TaskTable
from router.upstream import Upstream
from router.wallet import Wallet

log = logging.getLogger("router")


class RouterService(Service):
    """The router's own work: follow the chain's nodes, probe them, hold the wallet."""

    name = "router"

    def __init__(self, router: Router, prober: Prober, config: RouterConfig) -> None:
        self.router, self.prober, self.config = router, prober, config
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self.config.payments:
            self.router.use_wallet(await asyncio.to_thread(self._wallet))
        await self.router.start()
        await self.prober.probe_all()  # the first picture of the nodes before any request

    def _wallet(self) -> Wallet:
        c = self.config.chain
        try:
            account = load_account(
                keystore=c.keystore, password_file=c.password_file, dev_index=c.dev_account
            )
        except ChainError as exc:
            raise RouterConfigError(str(exc)) from exc
        chain = self.router.chain
        domain = Domain(chain.w3.eth.chain_id, chain.deployment.settlement)
        registry = chain.registry

        def price_of(model_id: int) -> int | None:
            model = registry.model(model_id)
            return None if model is None else model.price_per_1k

        def spendable() -> int | None:
            escrow = chain.escrow.payer(account.address)
            return None if escrow is None else escrow.spendable

        payer = Payer(account, domain, price_of=price_of)
        log.info("event=wallet_ready payer=%s", account.address)
        return Wallet(
            payer,
            spendable=spendable,
            low_escrow=self.config.low_escrow_units,
            in_flight_slack=self.config.in_flight_slack,
        )

    async def run(self) -> None:
        await asyncio.gather(self.prober.run(self._stop), self._deliver())

    async def _deliver(self) -> None:
        """Hand nodes the countersigned receipts no request carried to them for a while."""
        idle = self.config.receipt_idle_s
        while not self._stop.is_set():
            await self.router.upstream.deliver_receipts(idle)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(1.0, idle))

    async def stop(self) -> None:
        self._stop.set()
        self.router.stop()
        await self.router.upstream.deliver_receipts(0)  # what the nodes would otherwise never get
        await self.router.upstream.close()
        await self.prober.close()


def build_services(config: RouterConfig) -> tuple[list[Any], HttpServer]:
    """The daemon's services in start order, and its HTTP server (for its port)."""
    c = config.chain
    chain = ChainView(
        c.rpc_url,
        c.deployment,
        config.state_dir,
        confirmations=c.confirmations,
        poll_interval=c.poll_interval_s,
    )
    book = HealthBook()
    upstream = Upstream(
        book,
        None,
        attempts=config.attempts,
        connect_timeout=config.connect_timeout_s,
        first_token_timeout=config.first_token_timeout_s,
        token_timeout=config.token_timeout_s,
    )
    router = Router(
        chain,
        book,
        upstream,
        table=TaskTable().with_overrides(config.tasks),
        default_max_tokens=config.default_max_tokens,
    )
    prober = Prober(book, interval=config.probe_interval_s)
    app = create_app(router, max_body_bytes=config.max_body_bytes)
    http = HttpServer(app, config.host, config.port, max_connections=256)
    return [chain, RouterService(router, prober, config), http], http


async def serve(config: RouterConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services, _ = build_services(config)
    await run_services(services, stop)


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
