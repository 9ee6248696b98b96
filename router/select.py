"""Choosing hosts: (task, model, request size) + the chain's picture + live health -> ranked hosts.

The model: the one the request names, else the one its task prefers (router.tasks) when that has
a live host, else every approved model whose context window fits the request. The hosts: the
registered nodes that declare the model on chain, hold at least the minimum stake, are alive in
the health book and do not report the model as failed. Each (host, model) pair is scored with
router.scoring; the answer is best first, and failover walks down it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from chain.registry import RegistrySnapshot
from router.health import HealthBook
from router.scoring import HostFacts, score
from router.tasks import TaskTable


@dataclass(frozen=True)
class Candidate:
    """One host for one model, with its score."""

    operator: str
    endpoint: str
    model_id: int
    model: str
    price_per_1k: int
    context_window: int
    score: float


class NoHost(Exception):  # noqa: N818 - what the router has to say
    """No host can take the request; `status` 404 for a model the network lacks, else 503."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def rank(
    snapshot: RegistrySnapshot,
    book: HealthBook,
    table: TaskTable,
    *,
    task: str,
    model: str | None,
    needed_tokens: int,
    min_stake: int,
    wall_now: float | None = None,
) -> list[Candidate]:
    """Every host that can take the request, best first; NoHost when there is none."""
    approved = snapshot.approved()
    if model is not None:
        if model not in approved:
            known = ", ".join(sorted(approved)) or "none yet"
            raise NoHost(f"model {model!r} is not approved on this network; approved: {known}", 404)
        return _ranked(snapshot, approved, book, table, task, [model], 0, min_stake, wall_now) or _none_alive(
            model
        )
    preferred = table.preferred(task)
    if preferred in approved:
        hosts = _ranked(
            snapshot, approved, book, table, task, [preferred], needed_tokens, min_stake, wall_now
        )
        if hosts:
            return hosts
    hosts = _ranked(
        snapshot, approved, book, table, task, sorted(approved), needed_tokens, min_stake, wall_now
    )
    if not hosts:
        raise NoHost(
            f"no live host serves a model for task {task!r} with {needed_tokens} tokens of context "
            f"(approved models: {', '.join(sorted(approved)) or 'none'}); retry later",
            503,
        )
    return hosts


def _none_alive(model: str) -> list[Candidate]:
    raise NoHost(f"no live host serves model {model!r} right now; retry later", 503)


def _ranked(
    snapshot: RegistrySnapshot,
    approved: dict[str, int],
    book: HealthBook,
    table: TaskTable,
    task: str,
    names: list[str],
    needed_tokens: int,
    min_stake: int,
    wall_now: float | None,
) -> list[Candidate]:
    infos = {name: snapshot.models[approved[name]] for name in names}
    fitting = {n: m for n, m in infos.items() if m.context_window >= needed_tokens}
    if not fitting:
        return []
    cheapest = min(m.price_per_1k for m in fitting.values())
    now, wall = book.clock(), time.time() if wall_now is None else wall_now
    out = []
    for name, info in fitting.items():
        model_id = approved[name]
        for operator in snapshot.hosts_of(model_id):
            node = snapshot.nodes[operator]
            health = book.get(operator)
            # Untracked: an endpoint the router cannot call, or a node registered a moment ago.
            if health is None or health.endpoint != node.endpoint:
                continue
            if node.stake < min_stake or name in health.failed_models:
                continue
            counters = snapshot.reputation_of(operator)
            facts = HostFacts(
                alive=health.alive(now),
                health=health.success,
                receipts_settled=counters.receipts_settled if counters else 0,
                slash_count=counters.slash_count if counters else 0,
                registered_days=(wall - node.registered_at) / 86_400,
                stake=node.stake,
                min_stake=min_stake,
                price_per_1k=info.price_per_1k,
                cheapest_price_per_1k=cheapest,
                latency_s=health.latency_s,
                load=health.load,
                specialty=table.matches(task, info.specialties),
            )
            value = score(facts)
            if value > 0:
                out.append(
                    Candidate(
                        operator, node.endpoint, model_id, name, info.price_per_1k, info.context_window, value
                    )
                )
    return sorted(out, key=lambda c: (-c.score, c.operator))
