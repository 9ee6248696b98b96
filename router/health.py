"""Live health of every node, from probes of its /health and from the router's own requests.

`HealthBook` keeps one `NodeHealth` per operator: a success ratio (an exponentially weighted
average of probe and request outcomes), the latest probe latency, time to first token, the queue
the node reports, the models it says failed, and the router's own requests in flight to it. A
node that fails is backed off (not chosen) for `initial_backoff`, doubling with every failure in a
row up to `max_backoff`; after that it is probed again, and the first success makes it choosable.

`Prober.run()` probes every registered node's endpoint in the background, each at most once per
`interval`, with a short timeout; requests never wait on a probe (they read the book).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from chain.logs import kv as _kv
from chain.redact import redact

log = logging.getLogger(__name__)

EWMA = 0.3  # weight of the newest outcome


@dataclass
class NodeHealth:
    """What the router has seen of one node lately."""

    endpoint: str
    success: float = 1.0  # EWMA of outcomes, 1 = every recent probe and request succeeded
    probe_latency_s: float | None = None
    ttft_s: float | None = None
    queue: int = 0
    failed_models: frozenset[str] = frozenset()
    inflight: int = 0
    failures: int = 0  # in a row
    retry_at: float = 0.0  # monotonic; before it the node is backed off
    last_error: str | None = None
    probed_at: float | None = None

    def alive(self, now: float) -> bool:
        return self.failures == 0 or now >= self.retry_at

    @property
    def latency_s(self) -> float | None:
        return self.ttft_s if self.ttft_s is not None else self.probe_latency_s

    @property
    def load(self) -> int:
        return self.inflight + self.queue


@dataclass
class HealthBook:
    """Operator -> NodeHealth, updated by the prober and by request outcomes (one event loop)."""

    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    clock: Callable[[], float] = time.monotonic
    nodes: dict[str, NodeHealth] = field(default_factory=dict)

    def track(self, endpoints: dict[str, str]) -> None:
        """Follow exactly these operators (-> endpoint); a changed endpoint starts afresh."""
        for operator in set(self.nodes) - set(endpoints):
            del self.nodes[operator]
        for operator, endpoint in endpoints.items():
            known = self.nodes.get(operator)
            if known is None or known.endpoint != endpoint:
                self.nodes[operator] = NodeHealth(endpoint)

    def get(self, operator: str) -> NodeHealth | None:
        return self.nodes.get(operator)

    def succeeded(self, operator: str, *, ttft_s: float | None = None) -> None:
        h = self.nodes.get(operator)
        if h is None:
            return
        h.success = (1 - EWMA) * h.success + EWMA
        h.failures, h.retry_at, h.last_error = 0, 0.0, None
        if ttft_s is not None:
            h.ttft_s = ttft_s if h.ttft_s is None else (1 - EWMA) * h.ttft_s + EWMA * ttft_s

    def failed(self, operator: str, reason: str) -> None:
        h = self.nodes.get(operator)
        if h is None:
            return
        h.success = (1 - EWMA) * h.success
        h.failures += 1
        delay = min(self.max_backoff, self.initial_backoff * 2 ** min(h.failures - 1, 16))
        h.retry_at = self.clock() + delay
        h.last_error = reason
        log.info(_kv("health.node_failed", operator=operator, reason=reason[:200], retry_in=f"{delay:.1f}"))


class Prober:
    """Probes every tracked node's /health in the background."""

    def __init__(
        self,
        book: HealthBook,
        *,
        interval: float = 2.0,
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.book, self.interval, self.timeout = book, interval, timeout
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._probing: set[str] = set()

    async def probe_all(self) -> None:
        """Probe every tracked node that is due, concurrently, and wait for these probes."""
        now = self.book.clock()
        due = [
            op
            for op, h in self.book.nodes.items()
            if op not in self._probing
            and (h.probed_at is None or now - h.probed_at >= self.interval)
            and h.alive(now)
        ]
        await asyncio.gather(*(self.probe(op) for op in due))

    async def probe(self, operator: str) -> None:
        """One probe. Whatever the node answers (or whatever its on-chain endpoint holds), the
        outcome is a success or a failure in the book, never an exception for the prober."""
        h = self.book.get(operator)
        if h is None:
            return
        self._probing.add(operator)
        started = time.monotonic()
        try:
            response = await self._client.get(h.endpoint.rstrip("/") + "/health", timeout=self.timeout)
            response.raise_for_status()
            queue, failed = _health_facts(response.json())
        except Exception as exc:  # a hostile or broken node must not stop the router
            h.probed_at = self.book.clock()
            self.book.failed(operator, f"probe of {redact(h.endpoint)}: {type(exc).__name__}: {exc}")
            return
        finally:
            self._probing.discard(operator)
        h.probed_at = self.book.clock()
        h.probe_latency_s = time.monotonic() - started
        h.queue, h.failed_models = queue, failed
        self.book.succeeded(operator)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until `stop` is set."""
        while not stop.is_set():
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval / 2)

    async def close(self) -> None:
        await self._client.aclose()


def _health_facts(answer: object) -> tuple[int, frozenset[str]]:
    """(queue depth, failed models) from a node's /health answer; ValueError when it is not one."""
    if not isinstance(answer, dict):
        raise ValueError("the /health answer is not a JSON object")
    queue = answer.get("queue")
    waiting = queue.get("waiting") if isinstance(queue, dict) else 0
    models = answer.get("models")
    failed = frozenset(
        str(name)
        for name, m in (models.items() if isinstance(models, dict) else ())
        if isinstance(m, dict) and m.get("state") == "failed"
    )
    return (waiting if isinstance(waiting, int) and 0 <= waiting < 1_000_000 else 0), failed
