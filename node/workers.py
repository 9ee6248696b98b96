"""One worker process per loaded model, as the node's HTTP side sees them.

Each model runs in its own process (node/worker.py), so a crash, an abort or a hostile file takes
down only that model: its in-flight requests end with a clear error, the process is restarted with
backoff while the model is still served, and /health shows what happened. Models load on their
first request (or at start when the config says `eager`) and the least recently used idle ones are
unloaded when a new one would pass the memory budget (file size + KV cache estimate).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from node import worker as worker_main
from node.messages import (
    Cancel,
    Event,
    Fatal,
    Finished,
    Ready,
    Refused,
    Stop,
    Submit,
    Unframer,
    WorkerSpec,
    frame,
)
from node.queue import FairGate, WaitBudget
from protocol.errors import ApiError
from protocol.service import Service

log = logging.getLogger("node.workers")
_spawn = multiprocessing.get_context("spawn")


class Servable(Protocol):
    """What the workers need of a served model (node.models.ServableModel)."""

    name: str
    model_id: int
    size: int
    path: Any
    settings: Any  # node.config.HostedModel
    header: Any  # storage.gguf.GgufHeader


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """Put in a job's queue when its worker died before the request finished."""

    message: str


class WorkerProcess(asyncio.Protocol):
    """A running worker: submit requests, receive their events, stop or kill it. It is the
    protocol of its socket, read by the event loop itself (node.messages says why), so a step's
    events reach their requests' queues with no thread in between. Made by
    `await WorkerProcess.start(...)`."""

    def __init__(
        self, name: str, spec: WorkerSpec, on_exit: Callable[[WorkerProcess], None], theirs: socket.socket
    ) -> None:
        self.name = name
        self.spec = spec
        self.ready: Ready | None = None
        self.started_at = time.monotonic()
        self._on_exit = on_exit
        self._jobs: dict[int, asyncio.Queue[Event | WorkerLost]] = {}
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[Ready] = self._loop.create_future()
        self._reaped: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._unframer = Unframer()
        self._fatal: str | None = None
        self._reaping: asyncio.Task[None] | None = None  # held: a task nobody references may vanish
        self._stopping = False
        self.exit_reason: str | None = None
        self._process = _spawn.Process(target=worker_main.main, args=(spec, theirs), name=f"worker:{name}")
        self._process.start()

    @classmethod
    async def start(
        cls, name: str, spec: WorkerSpec, on_exit: Callable[[WorkerProcess], None]
    ) -> WorkerProcess:
        """Spawn the worker and connect the node's end of its socket to this event loop."""
        ours, theirs = socket.socketpair()
        worker = None
        try:
            with theirs:  # the child holds its own copy once started
                worker = cls(name, spec, on_exit, theirs)
            await worker._loop.connect_accepted_socket(lambda: worker, ours)
        except BaseException:
            ours.close()
            if worker is not None:
                worker.kill()
            raise
        return worker

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self.exit_reason is None

    @property
    def busy(self) -> int:
        return len(self._jobs)

    async def wait_ready(self, timeout: float) -> Ready:
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise ApiError(
                503, f"model {self.name} did not load within {timeout:g} s", code="model_loading"
            ) from None

    def submit(self, message: Submit) -> asyncio.Queue[Event | WorkerLost]:
        """Send a request; its events arrive in the returned queue, ending with Finished/Refused."""
        queue: asyncio.Queue[Event | WorkerLost] = asyncio.Queue()
        if not self.alive:
            queue.put_nowait(WorkerLost(self._lost_message()))
            return queue
        self._jobs[message.req_id] = queue
        self._send(message)
        return queue

    def cancel(self, req_id: int) -> None:
        """Free the request's slot in the worker (its queue then gets Finished(cancelled))."""
        if req_id in self._jobs and self.alive:
            self._send(Cancel(req_id))

    def forget(self, req_id: int) -> None:
        self._jobs.pop(req_id, None)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not within `timeout`."""
        self._stopping = True
        if self._process.is_alive():
            self._send(Stop())
            await asyncio.to_thread(self._process.join, timeout)
        if self._process.is_alive():
            self.kill()
            await asyncio.to_thread(self._process.join, 5)
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reaped), 5)

    def kill(self) -> None:
        self._stopping = True
        if self._process.is_alive() and self._process.pid:
            with suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)

    def rss_bytes(self) -> int | None:
        """Resident memory of the worker process (Linux /proc), None when unknown."""
        try:
            with open(f"/proc/{self._process.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _send(self, message: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame(message))
        # Otherwise the worker is gone or going: _reap reports it to every request.

    # -- the socket (asyncio.Protocol) ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self._reaping = asyncio.create_task(self._reap())

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._unframer.feed(data)
        except Exception as exc:  # a corrupt stream: this worker cannot be trusted any more
            self._fatal = f"its socket carried a bad message ({exc})"
            self.kill()
            return
        for message in messages:
            if isinstance(message, Fatal):
                self._fatal = message.message
            else:
                self._deliver(message)

    async def _reap(self) -> None:
        """The worker's end closed: wait for its exit code, then end its requests."""
        await asyncio.to_thread(self._process.join, 5)
        self._exited(self._fatal)
        self._reaped.set_result(None)

    def _deliver(self, message: object) -> None:
        if isinstance(message, Ready):
            self.ready = message
            if not self._ready.done():
                self._ready.set_result(message)
            return
        for event in message.events:
            queue = self._jobs.get(event.req_id)
            if queue is not None:
                queue.put_nowait(event)
                if isinstance(event, Finished | Refused):
                    del self._jobs[event.req_id]

    def _exited(self, fatal: str | None) -> None:
        code = self._process.exitcode
        if fatal:
            self.exit_reason = f"model {self.name} failed: {fatal}"
        elif code is not None and code < 0:
            self.exit_reason = f"model {self.name}'s worker was killed by signal {-code}"
        else:
            self.exit_reason = f"model {self.name}'s worker exited with code {code}"
        if self._stopping and not fatal:
            self.exit_reason = f"model {self.name}'s worker was stopped"
        if self._transport is not None:
            self._transport.close()
        if not self._ready.done():
            self._ready.set_exception(ApiError(503, self.exit_reason, code="model_failed"))
            self._ready.exception()  # retrieved: a load nobody awaits must not warn
        message = self._lost_message()
        for queue in self._jobs.values():
            queue.put_nowait(WorkerLost(message))
        self._jobs.clear()
        self._on_exit(self)

    def _lost_message(self) -> str:
        return f"{self.exit_reason}; the request was stopped, retry it"


def kv_bytes_per_token(header: Any) -> int:
    """The KV cache's size per token from the GGUF header (f16 K and V in every layer)."""
    meta = header.metadata
    arch = meta.get("general.architecture", "")

    def get(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return value if isinstance(value, int) and value > 0 else default

    heads = get("attention.head_count", 1)
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = get("embedding_length", 4096) // max(heads, 1)
    key, value = get("attention.key_length", head_dim), get("attention.value_length", head_dim)
    return get("block_count", 32) * kv_heads * (key + value) * 2


def memory_estimate(model: Servable) -> int:
    """File size (the weights are mapped) + the KV cache of every slot and the reference path."""
    s = model.settings
    tokens = s.n_ctx * s.slots + min(s.n_ctx, 512)
    return int(model.size) + tokens * kv_bytes_per_token(model.header)


@dataclass
class Entry:
    """A served model and its worker state."""

    model: Servable
    gate: FairGate
    worker: WorkerProcess | None = None
    loading: asyncio.Task[WorkerProcess] | None = None
    retiring: bool = False
    inflight: int = 0
    restarts: int = 0
    failures: int = 0  # consecutive early exits, for the restart backoff
    last_error: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    restart: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        if self.worker is not None and self.worker.alive and self.worker.ready:
            return "ready"
        if self.loading is not None or self.restart is not None:
            return "loading" if self.restarts == 0 else "restarting"
        return "failed" if self.last_error and self.failures else "unloaded"


class Workers(Service):
    """The served models and their workers."""

    name = "workers"

    def __init__(
        self,
        *,
        memory_budget: int,
        queue_size: int,
        load_timeout: float = 300.0,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
        retry_after: float = 1.0,
    ) -> None:
        self.memory_budget = memory_budget
        self.budget = WaitBudget(queue_size)
        self.load_timeout = load_timeout
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.retry_after = retry_after
        self.entries: dict[str, Entry] = {}
        self.ready_info: Ready | None = None
        self._on_restart: list[Callable[[str], None]] = []
        self._unloading: set[asyncio.Task[None]] = set()  # workers being stopped after an unload

    # --- the served set -----------------------------------------------------------------------

    def update(self, served: dict[str, Servable]) -> None:
        """Take a new served set (call on the event loop): new models become servable (eager ones
        load now), gone or replaced ones stop taking requests and unload when idle."""
        for name, entry in list(self.entries.items()):
            model = served.get(name)
            if model is None or model.model_id != entry.model.model_id or model.path != entry.model.path:
                self._retire(name, entry)
        for name, model in served.items():
            if name not in self.entries:
                gate = FairGate(model.settings.slots, self.budget, self.retry_after)
                self.entries[name] = Entry(model=model, gate=gate)
                log.info("event=model_servable model=%s model_id=%s", name, model.model_id)
                if model.settings.eager:
                    self._load(self.entries[name])

    def _retire(self, name: str, entry: Entry) -> None:
        log.info(
            "event=model_retiring model=%s model_id=%s inflight=%d",
            name,
            entry.model.model_id,
            entry.inflight,
        )
        entry.retiring = True
        del self.entries[name]
        if entry.restart is not None:
            entry.restart.cancel()
        if entry.inflight == 0:
            self._unload(entry)

    def on_restart(self, callback: Callable[[str], None]) -> None:
        self._on_restart.append(callback)

    # --- requests -----------------------------------------------------------------------------

    def model(self, name: str) -> Servable | None:
        entry = self.entries.get(name)
        return entry.model if entry is not None else None

    @asynccontextmanager
    async def lease(self, name: str, client: str, deadline: float) -> AsyncIterator[WorkerProcess]:
        """A slot of `name`'s worker for one request, loading the model if needed (fair queue)."""
        entry = self.entries.get(name)
        if entry is None:
            raise self.not_found(name)
        async with entry.gate.slot(client, max(0.0, deadline - time.monotonic())):
            entry.inflight += 1
            try:
                worker = await self._ready_worker(entry, deadline)
                entry.last_used = time.monotonic()
                yield worker
            finally:
                entry.inflight -= 1
                entry.last_used = time.monotonic()
                if entry.retiring and entry.inflight == 0:
                    self._unload(entry)

    def not_found(self, name: str) -> ApiError:
        served = ", ".join(sorted(self.entries)) or "none"
        return ApiError(
            404,
            f"model {name!r} is not served by this node (served: {served}); GET /v1/models lists them",
            param="model",
            code="model_not_found",
        )

    async def _ready_worker(self, entry: Entry, deadline: float) -> WorkerProcess:
        while True:
            if entry.worker is not None and entry.worker.alive and entry.worker.ready:
                return entry.worker
            if entry.restart is not None:  # in backoff after a crash: load now, a request waits
                entry.restart.cancel()
                entry.restart = None
            task = entry.loading or self._load(entry)
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ApiError(
                    503, f"model {entry.model.name} is still loading; retry shortly", code="model_loading"
                ) from None

    # --- loading and unloading ----------------------------------------------------------------

    def _load(self, entry: Entry) -> asyncio.Task[WorkerProcess]:
        entry.loading = asyncio.create_task(self._start_worker(entry), name=f"load:{entry.model.name}")
        entry.loading.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return entry.loading

    async def _start_worker(self, entry: Entry) -> WorkerProcess:
        model = entry.model
        try:
            self._make_room(entry)
            s = model.settings
            spec = WorkerSpec(
                model_path=str(model.path),
                n_ctx=s.n_ctx,
                threads=s.threads,
                gpu_layers=s.gpu_layers,
                slots=s.slots,
                reference_ctx=min(s.n_ctx, 512),
                burst_window_s=s.burst_window_ms / 1000,
            )
            started = time.monotonic()
            log.info(
                "event=model_loading model=%s model_id=%s path=%s", model.name, model.model_id, model.path
            )
            worker = await WorkerProcess.start(model.name, spec, lambda w: self._exited(entry, w))
            entry.worker = worker
            ready = await worker.wait_ready(self.load_timeout)
            self.ready_info = ready
            entry.last_error = None
            log.info(
                "event=model_loaded model=%s pid=%s seconds=%.2f rss_bytes=%s",
                model.name,
                worker.pid,
                time.monotonic() - started,
                worker.rss_bytes(),
            )
            return worker
        except ApiError as exc:
            entry.last_error = exc.message
            raise
        finally:
            entry.loading = None

    def _make_room(self, entry: Entry) -> None:
        need = memory_estimate(entry.model)
        if need > self.memory_budget:
            raise ApiError(
                503,
                f"model {entry.model.name} needs ~{need >> 20} MiB, more than the node's memory budget "
                f"({self.memory_budget >> 20} MiB, serving.memory_budget_gb)",
                code="memory_budget",
                retry=False,
            )
        loaded = [
            e for e in self.entries.values() if e is not entry and e.worker is not None and e.worker.alive
        ]
        used = sum(memory_estimate(e.model) for e in loaded)
        for idle in sorted((e for e in loaded if e.inflight == 0), key=lambda e: e.last_used):
            if used + need <= self.memory_budget:
                break
            log.info("event=model_unloading reason=memory_budget model=%s", idle.model.name)
            used -= memory_estimate(idle.model)
            self._unload(idle)
        if used + need > self.memory_budget:
            raise ApiError(
                503,
                f"the node's memory budget is taken by models serving requests; retry model "
                f"{entry.model.name} later",
                code="memory_budget",
                retry_after=self.retry_after * 5,
            )

    def _unload(self, entry: Entry) -> None:
        worker, entry.worker = entry.worker, None
        if worker is not None:
            log.info("event=model_unloaded model=%s pid=%s", entry.model.name, worker.pid)
            task = asyncio.get_running_loop().create_task(worker.stop())
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

    def _exited(self, entry: Entry, worker: WorkerProcess) -> None:
        if entry.worker is not worker:  # an unload we asked for
            return
        entry.worker = None
        entry.last_error = worker.exit_reason
        early = time.monotonic() - worker.started_at < self.stable_after
        entry.failures = entry.failures + 1 if early else 1
        log.error(
            "event=worker_exited model=%s pid=%s reason=%r", entry.model.name, worker.pid, worker.exit_reason
        )
        if entry.retiring or self.entries.get(entry.model.name) is not entry or worker.ready is None:
            return  # a model that never loaded is retried by the next request, not in a loop
        delay = min(self.max_backoff, 2.0 ** (entry.failures - 1) - 1)
        entry.restarts += 1
        for callback in self._on_restart:
            callback(entry.model.name)
        log.info(
            "event=worker_restarting model=%s delay_s=%.1f restarts=%d",
            entry.model.name,
            delay,
            entry.restarts,
        )
        entry.restart = asyncio.get_running_loop().call_later(delay, self._restart, entry)

    def _restart(self, entry: Entry) -> None:
        entry.restart = None
        if not entry.retiring and entry.loading is None:
            self._load(entry)

    # --- service ------------------------------------------------------------------------------

    async def stop(self) -> None:
        entries = list(self.entries.values())
        self.entries.clear()
        for entry in entries:
            if entry.restart is not None:
                entry.restart.cancel()
            if entry.loading is not None:
                entry.loading.cancel()
        stops = [e.worker.stop() for e in entries if e.worker is not None]
        await asyncio.gather(*stops, *self._unloading, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """Per-model state for /health (never waits on a worker)."""
        models = {}
        for name, entry in self.entries.items():
            worker = entry.worker
            models[name] = {
                "model_id": entry.model.model_id,
                "state": entry.state,
                "pid": worker.pid if worker is not None else None,
                "slots": entry.gate.capacity,
                "busy": entry.gate.active,
                "queued": entry.gate.queued,
                "restarts": entry.restarts,
                "last_error": entry.last_error,
                "rss_bytes": worker.rss_bytes() if worker is not None else None,
                "memory_estimate_bytes": memory_estimate(entry.model),
            }
        return models
