"""The router as a library: one request in, the best host's answer out.

`Router` holds the chain view, the health book, the task table, the upstream and the wallet. The
HTTP routes (router.app) and the in-process SDK (router.sdk) both call it, so host choice,
failover and payment are one implementation whichever way a user comes in.

A request is an OpenAI completion or chat body, validated with the same models the node uses
(protocol.openai), plus llm-mesh's `task_type` field. Its `model` is a model name on the network,
or `auto` to let the task choose. Without `max_tokens` the router sets `default_max_tokens`,
because each signed auth caps what the node may bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from chain.chainview import ChainView
from chain.logs import kv as _kv
from chain.registry import RegistrySnapshot
from chain.units import format_token
from protocol.endpoints import check_endpoint
from protocol.errors import ApiError
from protocol.openai import ChatCompletionRequest, CompletionRequest, validate_request
from router.health import HealthBook
from router.select import Candidate, NoHost, rank
from router.tasks import BadTask, TaskTable
from router.upstream import OpenStream, Served, Upstream
from router.wallet import Wallet

log = logging.getLogger(__name__)

AUTO = "auto"
PATHS = {"completions": "completions", "chat": "chat/completions"}


@dataclass
class Prepared:
    """A validated request, ready to be sent."""

    endpoint: str  # "completions" | "chat"
    body: dict[str, Any]  # what goes to the node (model set per host)
    task: str
    model: str | None  # None: chosen by task
    stream: bool
    want_usage: bool
    needed_tokens: int


class Router:
    """Chooses hosts and sends requests to them."""

    def __init__(
        self,
        chain: ChainView,
        book: HealthBook,
        upstream: Upstream,
        *,
        table: TaskTable | None = None,
        wallet: Wallet | None = None,
        default_max_tokens: int = 256,
    ) -> None:
        self.chain, self.book, self.upstream = chain, book, upstream
        self.table = table or TaskTable()
        self.wallet = wallet
        self.default_max_tokens = default_max_tokens
        self.min_stake = 0
        self._remove_listener: Any = None

    # ---------------------------------------------------------------- lifecycle

    def use_wallet(self, wallet: Wallet) -> None:
        """Pay with `wallet` from now on (the daemon makes it once the chain view knows the domain)."""
        self.wallet = wallet
        self.upstream.wallet = wallet

    async def start(self) -> None:
        """Follow the chain view's nodes in the health book (call once the view has started)."""
        nodes = self.chain.contract("NodeRegistry")
        self.min_stake = await asyncio.to_thread(lambda: nodes.functions.minStake().call())
        loop = asyncio.get_running_loop()
        self._track(self.chain.registry.snapshot())
        # The view calls listeners on its watcher thread; the book lives on this loop.
        self._remove_listener = self.chain.add_listener(
            lambda snapshot: loop.call_soon_threadsafe(self._track, snapshot)
        )

    def stop(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    def _track(self, snapshot: RegistrySnapshot) -> None:
        self.book.track(
            {op: n.endpoint for op, n in snapshot.registered_nodes().items() if _usable(n.endpoint)}
        )

    # ---------------------------------------------------------------- requests

    def prepare(self, endpoint: str, data: Any) -> Prepared:
        """Validate a request body (a parsed JSON object); 400 ApiError names what is wrong."""
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        data = dict(data)
        task_field = data.pop("task_type", None)
        if task_field is not None and not isinstance(task_field, str):
            raise ApiError(400, "task_type must be a string", param="task_type", code="invalid_value")
        try:
            task = self.table.check(task_field)
        except BadTask as exc:
            raise ApiError(400, str(exc), param="task_type", code="invalid_value") from None
        data.setdefault("model", AUTO)
        kind = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        # The node's own validation, so a bad request reads the same from the router.
        request = validate_request(kind, data)
        # Completions keep OpenAI's default of 16; chat without a limit gets the router's.
        data["max_tokens"] = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
        data.pop("max_completion_tokens", None)
        if isinstance(request, CompletionRequest):
            text = request.text
        else:
            text = "".join(m.text for m in request.messages)
        return Prepared(
            endpoint,
            data,
            task,
            None if request.model == AUTO else request.model,
            request.stream,
            request.include_usage,
            # A rough prompt size (4 bytes a token) for the context check; the node counts exactly.
            math.ceil(len(text.encode()) / 4) + int(data["max_tokens"]),
        )

    def candidates(self, prepared: Prepared) -> list[Candidate]:
        try:
            return rank(
                self.chain.registry.snapshot(),
                self.book,
                self.table,
                task=prepared.task,
                model=prepared.model,
                needed_tokens=prepared.needed_tokens,
                min_stake=self.min_stake,
            )
        except NoHost as exc:
            code = "model_not_found" if exc.status == 404 else "no_host"
            raise ApiError(exc.status, str(exc), param="model", code=code, retry=exc.status != 404) from None

    async def complete(
        self, prepared: Prepared, *, finish_later: bool = False
    ) -> tuple[Served, dict[str, Any]]:
        """A non-streamed answer. `finish_later`: the caller calls `finish` once the answer is on
        its way, so the ledger write and the log line add nothing to the client's wait."""
        path, hosts = PATHS[prepared.endpoint], self.candidates(prepared)
        served, answer = await self.upstream.complete(path, prepared.body, hosts)
        if not finish_later:
            self.finish(prepared, served)
        return served, answer

    def finish(self, prepared: Prepared, served: Served) -> None:
        """After a non-streamed answer: write the payer's ledger and log the request."""
        self.upstream.save_ledgers()
        self._log(prepared, served)

    async def open_stream(self, prepared: Prepared) -> OpenStream:
        """A stream whose first event arrived; relay `events(prepared, opened)` to the client."""
        return await self.upstream.open_stream(
            PATHS[prepared.endpoint], prepared.body, self.candidates(prepared), prepared.want_usage
        )

    async def events(self, prepared: Prepared, opened: OpenStream) -> AsyncIterator[bytes]:
        """The stream's events for the client (router.upstream), and its log line once it ended,
        so the line costs the first token nothing."""
        try:
            async with contextlib.aclosing(self.upstream.events(opened)) as events:
                async for chunk in events:
                    yield chunk
        finally:
            self._log(prepared, opened.served)

    def _log(self, prepared: Prepared, served: Served) -> None:
        log.info(
            _kv(
                "router.routed",
                task=prepared.task,
                model=served.candidate.model,
                node=served.candidate.operator,
                failed_over=len(served.attempts),
            )
        )

    # ---------------------------------------------------------------- what the network offers

    def models(self) -> list[dict[str, Any]]:
        """Every approved model with its live hosts, price, context window and specialties."""
        snapshot = self.chain.registry.snapshot()
        now = self.book.clock()
        out = []
        for name, model_id in sorted(snapshot.approved().items()):
            info = snapshot.models[model_id]
            hosts = []
            for operator in snapshot.hosts_of(model_id):
                node = snapshot.nodes[operator]
                health = self.book.get(operator)
                alive = health is not None and health.alive(now) and name not in health.failed_models
                hosts.append({"node": operator, "endpoint": node.endpoint, "alive": alive})
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "owned_by": info.publisher,
                    "model_id": model_id,
                    "version": info.version,
                    "price_per_1k": str(info.price_per_1k),
                    "price_per_1k_mesh": format_token(info.price_per_1k),
                    "context_window": info.context_window,
                    "specialties": list(info.specialties),
                    "quantization": info.quantization,
                    "hosts": hosts,
                    "available_hosts": [h["endpoint"] for h in hosts if h["alive"]],
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        """The nodes as the router sees them (live health beside what the chain says) and the payer."""
        now = self.book.clock()
        snapshot = self.chain.registry.snapshot()
        nodes = {
            op: {
                **_chain_facts(snapshot, op, self.min_stake),
                "endpoint": h.endpoint,
                "alive": h.alive(now),
                "success": round(h.success, 3),
                "latency_ms": None if h.latency_s is None else round(h.latency_s * 1000, 1),
                "inflight": h.inflight,
                "queue": h.queue,
                "last_error": h.last_error,
            }
            for op, h in self.book.nodes.items()
        }
        answer: dict[str, Any] = {"status": "ok" if any(n["alive"] for n in nodes.values()) else "degraded"}
        answer["nodes"] = nodes
        if self.wallet is not None:
            left = self.wallet.spendable()
            answer["payer"] = {
                "address": self.wallet.address,
                "spendable": None if left is None else str(left),
                "low": left is not None and left < self.wallet.low_escrow,
                "ledgers": self.wallet.ledgers(),
            }
        return answer


def _usable(endpoint: str) -> bool:
    """Whether an on-chain endpoint is an http(s) URL the router can call (anyone can register one)."""
    try:
        check_endpoint(endpoint)
    except ValueError:
        return False
    return True


def _chain_facts(snapshot: RegistrySnapshot, operator: str, min_stake: int) -> dict[str, Any]:
    node, counters = snapshot.node(operator), snapshot.reputation_of(operator)
    if node is None:
        return {}
    return {
        "node_id": node.node_id,
        "stake": str(node.stake),
        "active": node.registered and node.stake >= min_stake,
        "hosted_models": list(node.hosted_models),
        "slashes": counters.slash_count if counters else 0,
        "receipts_settled": counters.receipts_settled if counters else 0,
    }
