"""The router's parts assembled: the chain view and the router service (health prober, wallet,
receipt delivery) over it. The daemon (router.__main__) adds the HTTP server; the in-process SDK
(router.sdk) runs the same two without one."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chain.accounts import load_account
from chain.chainview import ChainView
from chain.errors import ChainError
from chain.receipts import Domain
from protocol.payer import Payer
from protocol.service import Service
from router.config import RouterConfig, RouterConfigError
from router.gateway import Router
from router.health import HealthBook, Prober
from router.ledger import LedgerStore
from router.tasks import TaskTable
from router.upstream import Upstream
from router.wallet import Wallet

log = logging.getLogger(__name__)


class RouterService(Service):
    """The router's own work: follow the chain's nodes, probe them, hold the wallet."""

    name = "router"

    def __init__(self, router: Router, prober: Prober, config: RouterConfig) -> None:
        self.router, self.prober, self.config = router, prober, config
        self._stop = asyncio.Event()
        self.store: LedgerStore | None = None

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
        name = f"ledger-{domain.chain_id}-{domain.settlement.lower()}-{account.address.lower()}.sqlite"
        self.store = LedgerStore(self.config.state_dir / name)
        nodes = self.store.load_into(payer)
        log.info("event=wallet_ready payer=%s ledger=%s nodes=%d", account.address, self.store.path, nodes)
        return Wallet(
            payer,
            spendable=spendable,
            low_escrow=self.config.low_escrow_units,
            in_flight_slack=self.config.in_flight_slack,
            store=self.store,
        )

    async def run(self) -> None:
        await asyncio.gather(self.prober.run(self._stop), self._deliver())

    async def _deliver(self) -> None:
        """Hand nodes the countersigned receipts no request carried to them for a while."""
        idle = self.config.receipt_idle_s
        while not self._stop.is_set():
            self.router.upstream.save_ledgers()  # in case a request's own write did not happen
            await self.router.upstream.deliver_receipts(idle)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(1.0, idle))

    async def stop(self) -> None:
        self._stop.set()
        self.router.stop()
        self.router.upstream.save_ledgers()
        await self.router.upstream.deliver_receipts(0)  # what the nodes would otherwise never get
        await self.router.upstream.close()
        await self.prober.close()
        if self.store is not None:
            self.store.close()


def build_router(config: RouterConfig) -> tuple[ChainView, RouterService]:
    """The chain view and the router service over it (start them in this order)."""
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
        request_timeout=config.request_timeout_s,
    )
    router = Router(
        chain,
        book,
        upstream,
        table=TaskTable().with_overrides(config.tasks),
        default_max_tokens=config.default_max_tokens,
    )
    prober = Prober(book, interval=config.probe_interval_s)
    return chain, RouterService(router, prober, config)
