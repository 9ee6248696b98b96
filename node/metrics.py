"""The node's Prometheus metrics, in a registry of their own (one per app, so tests and several
nodes in one process never share counters). Gauges that describe the present (queue depth, busy
slots, loaded models) are read from the workers when scraped, so /metrics never waits on a model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chain.units import TOKEN_DECIMALS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class _LiveGauges(Collector):
    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        models = self._health()
        queued = GaugeMetricFamily("llm_mesh_queue_depth", "Requests waiting for a slot", labels=["model"])
        busy = GaugeMetricFamily("llm_mesh_slots_busy", "Slots decoding a request", labels=["model"])
        slots = GaugeMetricFamily("llm_mesh_slots", "Slots of a model", labels=["model"])
        loaded = GaugeMetricFamily(
            "llm_mesh_model_loaded", "1 when the model's worker is ready", labels=["model"]
        )
        rss = GaugeMetricFamily("llm_mesh_worker_rss_bytes", "Worker resident memory", labels=["model"])
        for name, m in models.items():
            queued.add_metric([name], m["queued"])
            busy.add_metric([name], m["busy"])
            slots.add_metric([name], m["slots"])
            loaded.add_metric([name], 1 if m["state"] == "ready" else 0)
            if m["rss_bytes"] is not None:
                rss.add_metric([name], m["rss_bytes"])
        yield from (queued, busy, slots, loaded, rss)


class _PaymentGauges(Collector):
    """Receipts and unsettled amounts, read from the payment service when scraped."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        if not stats:  # payment not started (or off)
            return
        yield GaugeMetricFamily(
            "llm_mesh_receipts_stored", "Countersigned receipts stored", value=stats["stored"]
        )
        yield GaugeMetricFamily(
            "llm_mesh_receipts_settled", "Receipts that landed on chain", value=stats["settled"]
        )
        yield GaugeMetricFamily(
            "llm_mesh_receipts_rejected", "Receipts Settlement rejected", value=stats["rejected"]
        )
        yield GaugeMetricFamily(
            "llm_mesh_unsettled_mesh",
            "Owed to this node and not paid yet, in MESH",
            value=stats["unsettled"] / 10**TOKEN_DECIMALS,
        )


class Metrics:
    """Counters and histograms the serving path updates."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llm_mesh_requests", "Requests answered", ["model", "endpoint", "status"], registry=r
        )
        self.tokens = Counter("llm_mesh_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.errors = Counter(
            "llm_mesh_errors", "Requests that ended in an error", ["model", "code"], registry=r
        )
        self.ttft = Histogram(
            "llm_mesh_ttft_seconds", "Time to first token", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.rate = Histogram(
            "llm_mesh_tokens_per_second",
            "Decode speed of one request (completion tokens / time after the first token)",
            ["model"],
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "llm_mesh_worker_restarts", "Worker processes restarted", ["model"], registry=r
        )
        r.register(_LiveGauges(health))
        self.payment_stats: Callable[[], dict[str, int]] = dict  # empty: payment off

    def watch_payments(self, stats: Callable[[], dict[str, int]]) -> None:
        """Report the payment service's receipt counts and unsettled amount (here and in /health)."""
        self.payment_stats = stats
        self.registry.register(_PaymentGauges(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
