"""A view of the chain for the node and the router: the registries and escrows, loaded at start and
kept current by an event watcher (one implementation: both daemons wrap this class as a service).

`ChainView.start()` connects to the RPC URL, reads the deployment file (refused when it is
for another chain or its contracts are not on this one) and loads the whole RegistryView.
`run()` runs an EventWatcher over the ModelRegistry, NodeRegistry and Settlement in a thread of its
own; each event makes the view (chain.registry's, or chain.escrow's for Settlement) re-read the
entry it names, there on the watcher thread, never in a request
path. Consumers subscribe with `add_listener` (called on that thread after every change) or read
`registry.snapshot()` at any time. `stop()` ends the thread within one poll interval or RPC
timeout.

RPC failures are retried with backoff (the watcher's own, and the same for the re-reads); a failure
that retrying cannot fix (another chain behind the RPC URL, a reorg deeper than the watcher's
history, a contract call that reverts) ends `run()` with it, which stops the daemon with the reason.

The watcher's state file lives in `state_dir` (each daemon says where: the node's data directory,
the router's). It is named after the chain id and the ModelRegistry address, so another deployment
gets a file of its own. For this fold it is disposable (the registries are read in full at every
start): a state file for another chain (a devnet reset) or an unreadable one is replaced with a
warning instead of stopping the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError

from chain import rpc
from chain.deployment import Deployment, contract_at, load_deployment
from chain.errors import ChainError
from chain.escrow import SETTLEMENT, EscrowView
from chain.logs import kv as _kv
from chain.redact import redact
from chain.registry import Listener, RegistryView
from chain.watcher import RETRYABLE_ERRORS, ChainEvent, ChainIdentityError, EventWatcher

log = logging.getLogger(__name__)

_T = TypeVar("_T")


DEV_CHAIN_ID = 31337  # Anvil's and Hardhat's: a local chain that mines only when a transaction comes


def dev_confirmations(chain_id: int) -> int:
    """Confirmations when the config does not say: none on a local dev chain (it would wait for
    blocks nobody mines), else 2."""
    return 0 if chain_id == DEV_CHAIN_ID else 2


class ChainView:
    """Registry models, nodes and escrows from the chain, with a service's start / run / stop."""

    name = "chainview"

    def __init__(
        self,
        rpc_url: str,
        deployment: Path,
        state_dir: Path,
        *,
        confirmations: int | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 2_000,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        rpc_timeout: float = 30.0,
        stop_timeout: float = 60.0,
        node_address: str | None = None,
    ) -> None:
        """`deployment`: the deployment file; `state_dir`: where the watcher's state file lives;
        `confirmations`: blocks an event must be
        under the head before it counts (the watcher and the re-reads use the same; None:
        `dev_confirmations` of the RPC's chain id);
        `poll_interval`: seconds between watcher polls; `initial_backoff` / `max_backoff`: the
        retry waits after RPC failures; `rpc_timeout`: per JSON-RPC request; `stop_timeout`: how
        long `stop()` waits for the thread; `node_address`: whose Settlement channels the escrow
        view reads (the node's account; None: escrows only)."""
        self.rpc_url, self.deployment_path = rpc_url, Path(deployment)
        self.state_dir = Path(state_dir)
        self.confirmations = confirmations
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.rpc_timeout = rpc_timeout
        self.stop_timeout = stop_timeout
        self._w3: Web3 | None = None
        self._deployment: Deployment | None = None
        self._registry: RegistryView | None = None
        self._escrow: EscrowView | None = None
        self.node_address = node_address
        self._watcher: EventWatcher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- what consumers use

    @property
    def registry(self) -> RegistryView:
        """The registry fold (after `start()`)."""
        if self._registry is None:
            raise RuntimeError("ChainView.start() has not run")
        return self._registry

    @property
    def escrow(self) -> EscrowView:
        """The escrow fold (after `start()`)."""
        if self._escrow is None:
            raise RuntimeError("ChainView.start() has not run")
        return self._escrow

    @property
    def w3(self) -> Web3:
        """The connection (after `start()`)."""
        if self._w3 is None:
            raise RuntimeError("ChainView.start() has not run")
        return self._w3

    @property
    def deployment(self) -> Deployment:
        """The deployment in use (after `start()`)."""
        if self._deployment is None:
            raise RuntimeError("ChainView.start() has not run")
        return self._deployment

    def contract(self, name: str) -> Contract:
        """A web3 contract of the deployment by artifact name (after `start()`)."""
        return contract_at(self.w3, self.deployment, name)

    @property
    def state_path(self) -> Path:
        """The watcher's state file (after `start()`)."""
        if self._watcher is None:
            raise RuntimeError("ChainView.start() has not run")
        return self._watcher.state_path

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(snapshot)` on the watcher thread after every change; returns the remover."""
        return self.registry.add_listener(listener)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, check the deployment, load the registries; ChainError says what to fix."""
        self._stop.clear()
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        rpc_url = self.rpc_url
        w3 = rpc.connect(rpc_url, timeout=self.rpc_timeout)
        path = self.deployment_path
        deployment = load_deployment(path, w3)
        chain_id = w3.eth.chain_id
        if self.confirmations is None:
            self.confirmations = dev_confirmations(chain_id)
        for name in ("ModelRegistry", "NodeRegistry", "Settlement"):
            address = deployment.address_of(name)
            if not w3.eth.get_code(address):
                raise ChainError(
                    f"no {name} contract at {address} on chain {chain_id} ({redact(rpc_url)}): the "
                    f"deployment file {path} is from another deployment or the chain was reset; "
                    "redeploy (scripts/deploy.py, make devnet) or point chain.deployment in the "
                    "config at this chain's deployment file"
                )
        models = contract_at(w3, deployment, "ModelRegistry")
        nodes = contract_at(w3, deployment, "NodeRegistry")
        registry = RegistryView(models, nodes, confirmations=self.confirmations)
        escrow = EscrowView(
            contract_at(w3, deployment, "Settlement"),
            self.node_address,
            start_block=deployment.block_number,
            confirmations=self.confirmations,
            batch_size=self.batch_size,
        )
        load_block = max(deployment.block_number, w3.eth.block_number - self.confirmations)
        contracts = {**registry.contracts(), **escrow.contracts()}
        watcher = self._make_watcher(w3, contracts, deployment, load_block + 1)
        # A state file from an earlier run may have processed more than the confirmed head (it ran
        # with fewer confirmations): the load must reflect at least what the watcher will skip.
        load_block = max(load_block, min(watcher.last_processed, w3.eth.block_number))
        try:
            registry.load(load_block)
            escrow.load(load_block)
        except ContractLogicError as exc:
            raise ChainError(
                f"reading the registries at {deployment.model_registry} / {deployment.node_registry} "
                f"reverted ({exc}): do the ABIs in chain/artifacts match the deployed contracts "
                "(make contracts, redeploy)?"
            ) from exc
        self._w3, self._deployment, self._registry, self._watcher = w3, deployment, registry, watcher
        self._escrow = escrow
        log.info(
            _kv(
                "chainview.started",
                rpc=redact(rpc_url),
                chain_id=chain_id,
                model_registry=deployment.model_registry,
                node_registry=deployment.node_registry,
                block=load_block,
                confirmations=self.confirmations,
                state=watcher.state_path,
            )
        )

    def _make_watcher(
        self, w3: Web3, contracts: dict[str, Contract], deployment: Deployment, start_block: int
    ) -> EventWatcher:
        name = f"registry-{deployment.chain_id}-{deployment.model_registry.lower()}.json"
        path = self.state_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)

        def make() -> EventWatcher:
            return EventWatcher(
                w3,
                contracts,
                path,
                start_block=start_block,
                confirmations=self.confirmations,
                batch_size=self.batch_size,
                poll_interval=self.poll_interval,
                initial_backoff=self.initial_backoff,
                max_backoff=self.max_backoff,
                on_reorg=self._on_reorg,
            )

        try:
            return make()
        except ChainIdentityError as exc:
            reason = "another_chain"
            detail = str(exc)
        except ChainError as exc:  # unreadable, or written for other contracts
            reason = "unusable"
            detail = str(exc)
        # Nothing is derived from the old file's progress (the registries were just read in full),
        # so following this chain from now on loses nothing.
        log.warning(_kv("chainview.state_replaced", path=path, reason=reason, detail=detail[:300]))
        path.unlink(missing_ok=True)
        return make()

    async def run(self) -> None:
        """Watch until stopped; raises what ended the watcher when retrying cannot fix it."""
        watcher = self._watcher
        if watcher is None:
            raise RuntimeError("ChainView.start() has not run")
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()

        def finish(result: BaseException | None) -> None:
            if not ended.done():
                ended.set_result(result)

        def target() -> None:
            result: BaseException | None = None
            try:
                watcher.run(self._on_event, self._stop)
            except BaseException as exc:  # handed to run() below
                result = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(finish, result)

        self._thread = threading.Thread(target=target, name="chainview-watcher", daemon=True)
        self._thread.start()
        error = await ended
        if error is not None and not self._stop.is_set():
            log.error(_kv("chainview.failed", error=type(error).__name__, detail=redact(str(error))[:500]))
            raise error

    async def stop(self) -> None:
        """Stop the watcher thread and wait for it (at most `stop_timeout`)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(thread.join, self.stop_timeout)
        if thread.is_alive():
            log.warning(_kv("chainview.stop_timeout", seconds=self.stop_timeout))
        else:
            self._thread = None
            log.info(_kv("chainview.stopped"))

    # ---------------------------------------------------------------- on the watcher thread

    def _on_event(self, event: ChainEvent) -> None:
        what = f"{event.contract}.{event.event}"
        if event.contract == SETTLEMENT:
            self._retrying(lambda: self.escrow.apply(event), what)
        else:
            self._retrying(lambda: self.registry.apply(event), what)

    def _on_reorg(self, fork_block: int) -> None:
        self._retrying(lambda: self.registry.reload(fork_block), "reload")
        self._retrying(lambda: self.escrow.load(self.escrow.confirmed_head()), "reload escrows")

    def _retrying(self, read: Callable[[], _T], what: str) -> _T | None:
        """`read()`, retried with backoff on RPC failures until it works or the view stops.

        Stopping gives up quietly: the next start reads the registries in full anyway. Anything
        else (a revert, an undecodable answer) propagates and ends the watcher.
        """
        failures = 0
        while True:
            try:
                return read()
            except RETRYABLE_ERRORS as exc:
                failures += 1
                delay = min(self.max_backoff, self.initial_backoff * 2 ** min(failures - 1, 32))
                log.warning(
                    _kv(
                        "chainview.read_failed",
                        what=what,
                        error=type(exc).__name__,
                        detail=redact(str(exc))[:300],
                        attempt=failures,
                        retry_in=f"{delay:.2f}",
                    )
                )
                if self._stop.wait(delay):
                    return None
