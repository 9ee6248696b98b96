"""The model manager: from the config's models and the chain's approvals to verified files to serve.

The desired set is the config's `models` that the chain approves: by name, the newest approved
version; with a pinned `model_id`, that version, which must exist, carry the entry's name and be
Approved (anything else is refused with a log line that says what to fix). For each desired model
the manager fetches the file through the ModelCache (which verifies CID and sha256 before the file
is exposed; progress is logged every 10%), acquires it so it cannot be evicted, and checks its GGUF
header with `storage.gguf.read_header`: a crafted header (an absurd count or length) is refused
before anything loads the file, the file is evicted and the model is not served; the node goes on.

Whenever the served set changes, `on_change(served)` gets the whole new set: model name ->
ServableModel. A model approved while the node runs is added; a deprecated one is removed at once;
a newer approved version of a name replaces the older one as soon as it is verified (the older one
is served until then). A file the set no longer holds is released in the cache only after
`on_change` returned, so the caller can unload it when its in-flight requests end. Fetch failures
are logged and retried with backoff; they never stop the service.

The chain is told what the node serves: after the first round of fetches and after every change of
the served set (or of this node's registration), the hosted model ids on chain are compared with
the served ones and `setHostedModels` is sent when they differ, signed with the node's account
(`chain.keystore` + `chain.password_file` in the config). The transaction runs in a thread of its
own, never in the serving path; failures are logged and retried with backoff. A node that is not
registered gets a warning naming scripts/register_node.py instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from chain.accounts import load_account
from chain.chainview import ChainView
from chain.logs import kv as _kv
from chain.redact import redact
from chain.registry import APPROVED, RegistrySnapshot
from chain.tx import TxSender
from chain.views import node_info, status_name
from node.config import HostedModel, NodeConfig
from protocol.service import Service
from storage.blocks import BlockSource, KuboBlocks
from storage.blockstore import FileBlockStore
from storage.cache import ModelCache
from storage.errors import StorageError
from storage.gguf import GgufError, GgufHeader, HeaderLimits, read_header
from storage.kubo import DEFAULT_API, KuboClient

log = logging.getLogger(__name__)

KUBO_API_ENV = "LLM_MESH_KUBO_API"
OnChange = Callable[[dict[str, "ServableModel"]], Awaitable[None] | None]


@dataclass(frozen=True)
class ServableModel:
    """A verified model file the node may hand to llama.cpp, with what the chain says about it.

    `path` stays acquired in the ModelCache (never evicted) while the model is in the served set.
    """

    model_id: int
    name: str
    path: Path
    size: int
    sha256: str
    context_window: int
    price_per_1k: int
    quantization: str
    specialties: tuple[str, ...]
    settings: HostedModel
    header: GgufHeader
    cid: str = ""
    version: int = 0


@dataclass(frozen=True)
class _Wanted:
    """One desired model: the chain's version and the config entry serving it."""

    model_id: int
    info: Any  # chain.views.ModelInfo
    settings: HostedModel


class _FetchProgress:
    """A Progress callback that logs one line per 10% of a fetch."""

    def __init__(self, name: str, model_id: int) -> None:
        self.name, self.model_id = name, model_id
        self._decile = 0

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        decile = min(10, 10 * done // total)
        if decile > self._decile:
            self._decile = decile
            log.info(
                _kv(
                    "models.fetch_progress",
                    model=self.name,
                    model_id=self.model_id,
                    percent=decile * 10,
                    bytes=done,
                    total=total,
                )
            )


class ModelManager(Service):
    """Keeps the served set equal to what the config asks for and the chain approves."""

    name = "models"

    def __init__(
        self,
        config: NodeConfig,
        chain: ChainView,
        on_change: OnChange,
        *,
        cache: ModelCache | None = None,
        source: BlockSource | None = None,
        blocks: FileBlockStore | None = None,
        kubo_api: str | None = None,
        account: LocalAccount | None = None,
        header_limits: HeaderLimits | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 300.0,
        tx_initial_backoff: float = 2.0,
        tx_max_backoff: float = 300.0,
        tx_receipt_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        """`chain` must be started before this service (it is listed before it).
        `on_change(served)` may be a function or a coroutine function; an exception from it fails
        the service. `cache`: the ModelCache to fetch through (default: one on the config's
        `cache_dir` and `cache_limit_gb`, serving its files as trustless-gateway blocks through
        `blocks`). `source`: where blocks come from (default: the kubo RPC API at `kubo_api`, else
        $LLM_MESH_KUBO_API, else kubo's default). What the manager makes it also closes; what it is
        given belongs to the caller. `account` overrides the config's keystore (tests, embedding).
        `initial_backoff` / `max_backoff`: the waits between attempts of a failed fetch;
        `tx_initial_backoff` / `tx_max_backoff`: between attempts of the hosted-models transaction;
        `tx_receipt_timeout`: how long one is awaited; `stop_timeout`: how long `stop()` waits for
        one that is being sent."""
        self.config = config
        self.chain = chain
        self.on_change = on_change
        self._given_cache, self._given_source = cache, source
        self._blocks = blocks
        self._kubo_api = kubo_api or os.environ.get(KUBO_API_ENV) or DEFAULT_API
        self._cache: ModelCache | None = cache
        self._source: BlockSource | None = source
        self._kubo: KuboClient | None = None
        self.header_limits = header_limits or HeaderLimits()
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self.tx_initial_backoff, self.tx_max_backoff = tx_initial_backoff, tx_max_backoff
        self.tx_receipt_timeout = tx_receipt_timeout
        self.stop_timeout = stop_timeout
        self._account = account
        self._sender: TxSender | None = None
        self._served: dict[str, ServableModel] = {}
        self._ready: list[ServableModel] = []  # verified by a fetch task, not yet in the served set
        self._fetching: dict[int, asyncio.Task[None]] = {}
        self._attempts: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}
        self._refused: dict[int, str] = {}  # model id -> why its file is never served
        self._notes: dict[str, tuple[str, ...]] = {}  # name -> the last reason logged for it
        self._initial: set[int] | None = None  # ids of the first round still without an outcome
        self._hosted_armed = False  # the first round is over: hosted ids may be synced
        self._last_node: Any = None
        self._unregistered_warned = False
        self._wake = asyncio.Event()
        self._hosted_wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._hosted_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- what callers read

    @property
    def cache(self) -> ModelCache:
        """The model cache in use (after `start()` when the manager makes its own)."""
        if self._cache is None:
            raise RuntimeError("ModelManager.start() has not run")
        return self._cache

    @property
    def source(self) -> BlockSource:
        """Where model blocks come from (after `start()` when the manager makes its own)."""
        if self._source is None:
            raise RuntimeError("ModelManager.start() has not run")
        return self._source

    @property
    def served(self) -> dict[str, ServableModel]:
        """The served set now (a copy): model name -> ServableModel."""
        return dict(self._served)

    @property
    def refused(self) -> dict[int, str]:
        """Model ids whose file was refused (a bad GGUF header), with the reason."""
        return dict(self._refused)

    @property
    def started(self) -> bool:
        """True between a successful `start()` and `stop()`."""
        return self._unsubscribe is not None

    @property
    def operator(self) -> str | None:
        """The node's account address, None when the config names no keystore."""
        return self._account.address if self._account is not None else None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the node's account (KeystoreError when the keystore or password is wrong), open
        the cache and the block source, and subscribe to the chain view."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._hosted_wake = asyncio.Event()
        keystore = self.config.chain.keystore
        if self._account is None and keystore is not None:
            password_file = self.config.chain.password_file
            self._account = await asyncio.to_thread(
                load_account, keystore=keystore, password_file=password_file, dev_index=None
            )
        # Opened after everything that can refuse to start: a failed start() gets no stop().
        if self._cache is None:
            limit = int(self.config.cache_limit_gb * (1 << 30))
            self._cache = await asyncio.to_thread(ModelCache, self.config.cache_dir, limit, self._blocks)
        if self._source is None:
            self._kubo = KuboClient(self._kubo_api)
            self._source = KuboBlocks(self._kubo)
        if self._account is None:
            log.warning(
                _kv(
                    "models.no_account",
                    detail="the hosted models on chain are not updated: set chain.keystore and "
                    "chain.password_file in the node config",
                )
            )
        else:
            self._sender = TxSender(self.chain.w3, self._account, receipt_timeout=self.tx_receipt_timeout)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="models-tx")
        self._unsubscribe = self.chain.add_listener(self._on_registry_change)
        self._wake.set()
        log.info(
            _kv(
                "models.started",
                configured=",".join(m.name for m in self.config.models) or "-",
                operator=self.operator or "-",
            )
        )

    async def run(self) -> None:
        """Reconcile whenever the chain changes, a fetch ends or a retry is due."""
        loop = asyncio.get_running_loop()
        if self._sender is not None:
            self._hosted_task = asyncio.create_task(self._hosted_loop(), name="models:hosted")
        try:
            while True:
                due = [at for mid, at in self._retry_at.items() if mid not in self._fetching]
                timeout = max(0.0, min(due) - loop.time()) if due else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                await self._reconcile()
        finally:
            await self._cancel_tasks()

    async def stop(self) -> None:
        """Stop fetching and syncing, and release every file held for the served set."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._cancel_tasks()
        for model in [*self._served.values(), *self._ready]:
            if self._cache is not None:
                self._cache.release(model.cid)
        self._served.clear()
        self._ready.clear()
        if self._executor is not None:
            # A transaction already sent is waited for (briefly): leaving it to finish behind the
            # daemon's back would make the last log lines lie about what the node did.
            executor, self._executor = self._executor, None
            done = asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
            try:
                await asyncio.wait_for(done, self.stop_timeout)
            except TimeoutError:
                log.warning(_kv("models.tx_still_running", waited=self.stop_timeout))
        if self._kubo is not None:
            await self._kubo.aclose()
            self._kubo, self._source = None, self._given_source
        if self._cache is not None and self._cache is not self._given_cache:
            self._cache.close()
            self._cache = self._given_cache
        log.info(_kv("models.stopped"))

    async def _cancel_tasks(self) -> None:
        tasks = [*self._fetching.values()]
        if self._hosted_task is not None:
            tasks.append(self._hosted_task)
            self._hosted_task = None
        self._fetching.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_registry_change(self, snapshot: RegistrySnapshot) -> None:
        """On the chain view's thread: wake the reconcile loop."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the service is gone
            loop.call_soon_threadsafe(self._wake.set)

    # ---------------------------------------------------------------- the desired set

    def _note(self, name: str, event: str | None, level: int = logging.INFO, **fields: Any) -> None:
        """Log why `name` is (not) wanted, once per distinct reason."""
        key = (event or "", *(f"{k}={v}" for k, v in fields.items()))
        if self._notes.get(name) == key:
            return
        self._notes[name] = key
        if event is not None:
            log.log(level, _kv(event, model=name, **fields))

    def _desired(self, snapshot: RegistrySnapshot) -> dict[str, _Wanted]:
        wanted: dict[str, _Wanted] = {}
        for hosted in self.config.models:
            name = hosted.name
            if hosted.model_id is None:
                model_id = snapshot.latest_approved(name)
                if model_id is None:
                    versions = snapshot.versions(name)
                    self._note(
                        name,
                        "models.not_approved",
                        versions=",".join(map(str, versions)) or "-",
                        detail="no approved version on chain yet: it is served once a curator approves one"
                        if versions
                        else "no model of this name on chain: publish_model.py proposes it",
                    )
                    continue
                info = snapshot.model(model_id)
            else:
                model_id = hosted.model_id
                info = snapshot.model(model_id)
                problem = None
                if info is None:
                    problem = (
                        f"model {model_id} does not exist on chain (ids run to {len(snapshot.models)}): "
                        "fix models[].model_id in the node config, or remove it to serve the newest "
                        "approved version"
                    )
                elif info.name != name:
                    problem = (
                        f"model {model_id} is {info.name!r}, not {name!r}: fix models[].model_id in the "
                        "node config (status.py lists the ids)"
                    )
                elif info.status != APPROVED:
                    problem = f"model {model_id} is {status_name(info.status)}, not Approved"
                if problem is not None:
                    self._note(
                        name, "models.pinned_refused", logging.ERROR, model_id=model_id, reason=problem
                    )
                    continue
            self._note(name, None)
            wanted[name] = _Wanted(model_id, info, hosted)
        return wanted

    # ---------------------------------------------------------------- reconciling

    async def _reconcile(self) -> None:
        snapshot = self.chain.registry.snapshot()
        wanted = self._desired(snapshot)
        wanted_ids = {w.model_id for w in wanted.values()}
        before = {name: m.model_id for name, m in self._served.items()}
        released: list[ServableModel] = []

        for name, current in list(self._served.items()):
            want = wanted.get(name)
            if want is not None and want.model_id == current.model_id:
                continue
            info = snapshot.model(current.model_id)
            if want is not None and info is not None and info.status == APPROVED:
                continue  # a newer version is on its way: serve this one until it is verified
            reason = "not_approved" if info is None or info.status != APPROVED else "not_wanted"
            log.info(_kv("models.removed", model=name, model_id=current.model_id, reason=reason))
            released.append(self._served.pop(name))

        for mid in [mid for mid in self._retry_at if mid not in wanted_ids]:
            del self._retry_at[mid]  # no longer wanted: no retry is due
        for mid, task in list(self._fetching.items()):
            if mid not in wanted_ids:
                log.info(_kv("models.fetch_cancelled", model_id=mid, reason="no longer wanted"))
                task.cancel()
                del self._fetching[mid]

        ready, self._ready = self._ready, []
        for model in ready:
            want = wanted.get(model.name)
            if want is None or want.model_id != model.model_id:
                released.append(model)  # verified too late: the chain moved on meanwhile
                continue
            old = self._served.get(model.name)
            if old is not None:
                log.info(_kv("models.replaced", model=model.name, old_id=old.model_id, new_id=model.model_id))
                released.append(old)
            self._served[model.name] = model

        now = asyncio.get_running_loop().time()
        for want in wanted.values():
            mid = want.model_id
            current = self._served.get(want.settings.name)
            if current is not None and current.model_id == mid:
                continue
            if mid in self._fetching or mid in self._refused or self._retry_at.get(mid, 0.0) > now:
                continue
            self._fetching[mid] = asyncio.create_task(self._fetch(want), name=f"models:fetch:{mid}")

        if self._initial is None:
            self._initial = set(self._fetching)
        self._initial &= set(self._fetching)
        if not self._initial and not self._hosted_armed:
            self._hosted_armed = True
            self._hosted_wake.set()
        node = snapshot.node(self.operator) if self.operator else None
        if node != self._last_node:
            self._last_node = node
            if self._hosted_armed:
                self._hosted_wake.set()

        if {name: m.model_id for name, m in self._served.items()} != before:
            await self._publish(released)
        else:
            for model in released:
                self.cache.release(model.cid)

    async def _publish(self, released: list[ServableModel]) -> None:
        """Hand the new served set over, then release what left it."""
        served = dict(self._served)
        log.info(
            _kv(
                "models.served",
                models=",".join(f"{n}:{m.model_id}" for n, m in sorted(served.items())) or "-",
            )
        )
        try:
            result = self.on_change(served)
            if inspect.isawaitable(result):
                await result
        finally:
            for model in released:
                self.cache.release(model.cid)
        if self._hosted_armed:
            self._hosted_wake.set()

    # ---------------------------------------------------------------- fetching

    async def _fetch(self, want: _Wanted) -> None:
        info, mid, name = want.info, want.model_id, want.settings.name
        attempt = self._attempts.get(mid, 0) + 1
        sha256 = bytes(info.sha256_digest).hex()
        acquired = False
        handed_over = False
        log.info(
            _kv(
                "models.fetch_started",
                model=name,
                model_id=mid,
                cid=info.cid,
                bytes=info.size_bytes,
                attempt=attempt,
            )
        )
        try:
            path = await self.cache.fetch(
                self.source, info.cid, sha256, info.size_bytes, progress=_FetchProgress(name, mid)
            )
            path = self.cache.acquire(info.cid)  # just verified: a stat and a lock, no re-hash
            acquired = True
            try:
                header = await asyncio.to_thread(read_header, path, self.header_limits)
            except GgufError as exc:
                self.cache.release(info.cid)
                acquired = False
                self._refuse(want, exc)
                return
            self._ready.append(
                ServableModel(
                    model_id=mid,
                    name=name,
                    path=path,
                    size=info.size_bytes,
                    sha256=sha256,
                    context_window=info.context_window,
                    price_per_1k=info.price_per_1k,
                    quantization=info.quantization,
                    specialties=tuple(info.specialties),
                    settings=want.settings,
                    header=header,
                    cid=info.cid,
                    version=info.version,
                )
            )
            handed_over = True
            self._attempts.pop(mid, None)
            self._retry_at.pop(mid, None)
            log.info(
                _kv(
                    "models.verified",
                    model=name,
                    model_id=mid,
                    cid=info.cid,
                    sha256=sha256,
                    bytes=info.size_bytes,
                    architecture=header.architecture or "-",
                    tensors=header.tensor_count,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of one fetch is retried; none stops the node
            delay = min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 32))
            self._attempts[mid] = attempt
            self._retry_at[mid] = asyncio.get_running_loop().time() + delay
            log.warning(
                _kv(
                    "models.fetch_failed",
                    model=name,
                    model_id=mid,
                    cid=info.cid,
                    attempt=attempt,
                    retry_in=f"{delay:.2f}",
                    error=type(exc).__name__,
                    detail=redact(str(exc))[:300],
                )
            )
        finally:
            if acquired and not handed_over:
                self.cache.release(info.cid)
            if self._fetching.get(mid) is asyncio.current_task():
                del self._fetching[mid]
            self._wake.set()

    def _refuse(self, want: _Wanted, exc: GgufError) -> None:
        """A file that must never reach llama.cpp (already released): remember why, evict it."""
        info = want.info
        self._refused[want.model_id] = exc.problem
        self._attempts.pop(want.model_id, None)
        self._retry_at.pop(want.model_id, None)
        log.error(
            _kv(
                "models.refused",
                model=want.settings.name,
                model_id=want.model_id,
                cid=info.cid,
                reason=exc.problem,
                offset=exc.offset,
                detail="its GGUF header is invalid or crafted: the file is not loaded and the model is "
                "not served; a curator should deprecate it (the rest of the node goes on)",
            )
        )
        try:
            self.cache.evict(info.cid)
        except StorageError as evict_error:
            log.warning(_kv("models.evict_failed", cid=info.cid, detail=str(evict_error)[:300]))

    # ---------------------------------------------------------------- hosted models on chain

    def _hosted_ids(self) -> list[int]:
        """The served ids, in the config's order."""
        return [self._served[m.name].model_id for m in self.config.models if m.name in self._served]

    async def _hosted_loop(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            await self._hosted_wake.wait()
            self._hosted_wake.clear()
            ids = self._hosted_ids()
            try:
                await loop.run_in_executor(self._executor, self._sync_hosted, ids)
                failures = 0
            except Exception as exc:  # retried; serving never waits for the chain
                failures += 1
                delay = min(self.tx_max_backoff, self.tx_initial_backoff * 2 ** min(failures - 1, 32))
                log.warning(
                    _kv(
                        "models.hosted_update_failed",
                        model_ids=",".join(map(str, ids)) or "-",
                        attempt=failures,
                        retry_in=f"{delay:.2f}",
                        error=type(exc).__name__,
                        detail=redact(str(exc))[:300],
                    )
                )
                await asyncio.sleep(delay)
                self._hosted_wake.set()

    def _sync_hosted(self, ids: list[int]) -> None:
        """In the transaction thread: make the chain's hosted ids equal `ids` (read at the head)."""
        assert self._sender is not None
        nodes = self.chain.contract("NodeRegistry")
        operator = self._sender.address
        node = node_info(nodes, operator)
        if not node.registered:
            if not self._unregistered_warned:
                self._unregistered_warned = True
                log.warning(
                    _kv(
                        "models.node_not_registered",
                        operator=operator,
                        model_ids=",".join(map(str, ids)) or "-",
                        detail="this account has no registered node, so the chain does not list what it "
                        "serves: run scripts/register_node.py (the hosted models follow)",
                    )
                )
            return
        self._unregistered_warned = False
        if sorted(node.hosted_models) == sorted(ids):
            return
        receipt = self._sender.send(nodes.functions.setHostedModels(ids))
        log.info(
            _kv(
                "models.hosted_updated",
                operator=operator,
                model_ids=",".join(map(str, ids)) or "-",
                previous=",".join(map(str, node.hosted_models)) or "-",
                tx=receipt["transactionHash"].to_0x_hex(),
                block=receipt["blockNumber"],
            )
        )
