"""Host choice (router.select) over a registry picture built in memory, and the health book's
backoff (router.health): pure, no processes. The same code runs against real nodes in
tests/test_router.py."""

from __future__ import annotations

import asyncio
import http.server
import threading
from types import MappingProxyType

import pytest
from eth_utils import to_checksum_address

from chain.registry import APPROVED, RegistrySnapshot
from chain.views import ModelInfo, NodeInfo, Reputation
from router.health import HealthBook, Prober
from router.select import NoHost, rank
from router.tasks import TaskTable
from tests.conftest import ROOT

MIN_STAKE = 1_000 * 10**18
NOW = 1_800_000_000.0
A, B, C = (to_checksum_address("0x" + c * 40) for c in "abc")


def model(name: str, *, price: int = 10**15, ctx: int = 4096, specialties=(), status: int = APPROVED):
    return ModelInfo(name, "cid", b"", 1, "Q4_K_M", ctx, price, list(specialties), A, status, 1, 0, 0)


def node(hosted: list[int], *, endpoint: str = "http://127.0.0.1:1", stake: int = MIN_STAKE, days=30.0):
    return NodeInfo("n", endpoint, "{}", hosted, stake, 0, 0, int(NOW - days * 86_400), True, 0)


def reputation(settled: int = 10, slashes: int = 0) -> Reputation:
    return Reputation(1000, 10**15, settled, int(NOW), slashes, 0)


def picture(models: dict[int, ModelInfo], nodes: dict[str, NodeInfo], reps: dict | None = None):
    reps = reps if reps is not None else {op: reputation() for op in nodes}
    return RegistrySnapshot(1, 1, MappingProxyType(models), MappingProxyType(nodes), MappingProxyType(reps))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book_for(snapshot: RegistrySnapshot, clock: Clock | None = None) -> HealthBook:
    book = HealthBook(initial_backoff=5, max_backoff=60, clock=clock or Clock())
    book.track({op: n.endpoint for op, n in snapshot.nodes.items()})
    return book


def choose(snapshot, book, *, task="general", model=None, needed=100):
    table = TaskTable()
    return rank(
        snapshot, book, table, task=task, model=model, needed_tokens=needed, min_stake=MIN_STAKE, wall_now=NOW
    )


def test_rank_taskPicksItsPreferredModelElseFallsBackToAHostedOneThatFits() -> None:
    models = {1: model("codellama-7b"), 2: model("gemma", ctx=512), 3: model("big", ctx=8192)}
    snapshot = picture(models, {A: node([1]), B: node([2]), C: node([3])})
    book = book_for(snapshot)
    assert [c.model for c in choose(snapshot, book, task="fix")] == ["codellama-7b"]
    book.failed(A, "connect refused")  # the preferred model's only host is down
    fallback = choose(snapshot, book, task="fix", needed=1000)
    assert [c.model for c in fallback] == ["big"]  # gemma's 512-token context does not fit
    assert {c.model for c in choose(snapshot, book, task="fix", needed=100)} == {"gemma", "big"}


def test_rank_aNamedModelIsTheOnlyChoiceAndAnUnknownOneIs404() -> None:
    snapshot = picture({1: model("gemma"), 2: model("other")}, {A: node([1]), B: node([2])})
    book = book_for(snapshot)
    assert [c.operator for c in choose(snapshot, book, model="gemma")] == [A]
    with pytest.raises(NoHost, match="'nope' is not approved on this network; approved: gemma, other") as e:
        choose(snapshot, book, model="nope")
    assert e.value.status == 404
    book.failed(A, "down")
    with pytest.raises(NoHost, match="no live host serves model 'gemma'") as e:
        choose(snapshot, book, model="gemma")
    assert e.value.status == 503


def test_rank_slashedUnderstakedDeadAndFailedHostsRankLowOrNever() -> None:
    snapshot = picture(
        {1: model("gemma")},
        {A: node([1]), B: node([1]), C: node([1], stake=MIN_STAKE - 1)},
        {A: reputation(slashes=1), B: reputation(), C: reputation()},
    )
    book = book_for(snapshot)
    assert [c.operator for c in choose(snapshot, book)] == [B, A]  # C holds too little stake
    book.get(B).failed_models = frozenset({"gemma"})
    assert [c.operator for c in choose(snapshot, book)] == [A]


def test_rank_specialtyMatchWinsBetweenEqualHosts() -> None:
    models = {1: model("plain"), 2: model("debugger", specialties=["python", "debugging"])}
    snapshot = picture(models, {A: node([1]), B: node([2])})
    ranked = choose(snapshot, book_for(snapshot), task="debug")
    assert [c.model for c in ranked] == ["debugger", "plain"]
    assert ranked[0].score == pytest.approx(ranked[1].score * 1.2)


def test_rank_loadSpreadsRequestsOverEqualHosts() -> None:
    snapshot = picture({1: model("gemma")}, {A: node([1]), B: node([1]), C: node([1])})
    book = book_for(snapshot)
    chosen = []
    for _ in range(9):  # each request stays in flight: the next one sees the load
        best = choose(snapshot, book)[0]
        book.get(best.operator).inflight += 1
        chosen.append(best.operator)
    assert sorted(chosen) == sorted([A, B, C] * 3)


def test_healthBook_backsOffAFailingNodeLongerEachTimeAndASuccessRestoresIt() -> None:
    clock = Clock()
    snapshot = picture({1: model("gemma")}, {A: node([1])})
    book = book_for(snapshot, clock)
    book.failed(A, "timeout")
    assert not book.get(A).alive(clock.now)
    clock.now += 5
    assert book.get(A).alive(clock.now)  # due for another try
    book.failed(A, "timeout")
    clock.now += 5
    assert not book.get(A).alive(clock.now)  # the second wait is 10 s
    clock.now += 5
    assert book.get(A).alive(clock.now)
    book.succeeded(A, ttft_s=0.05)
    assert book.get(A).failures == 0 and book.get(A).latency_s == 0.05
    book.track({A: "http://127.0.0.1:2"})  # a new endpoint on chain starts afresh
    assert book.get(A).endpoint == "http://127.0.0.1:2" and book.get(A).ttft_s is None


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A node whose /health answers what it likes (set `body` on the class)."""

    body = b"[]"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.mark.parametrize(
    ("body", "fails"),
    [
        (b"[]", True),
        (b"not json", True),
        (b'{"queue": 1, "models": []}', False),
        (b'{"queue": {"waiting": -5}}', False),
    ],
)
def test_prober_aHostileHealthAnswerIsAFailureNeverAnException(body: bytes, fails: bool) -> None:
    """Not a JSON object: a failed probe. An object with nonsense fields: read as empty ones."""
    _Hostile.body = body
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        book = HealthBook()
        book.track({A: f"http://127.0.0.1:{server.server_address[1]}", B: "http://[::1"})

        async def probe() -> None:
            prober = Prober(book, timeout=5)
            await prober.probe_all()
            await prober.close()

        asyncio.run(probe())
        hostile = book.get(A)
        assert hostile.failures == int(fails) and hostile.alive(book.clock()) is not fails
        assert hostile.queue == 0 and hostile.failed_models == frozenset()
        assert book.get(B).failures == 1  # an endpoint that is not a URL fails its probe too
    finally:
        server.shutdown()
        server.server_close()


def test_routerSampleConfig_loads() -> None:
    from router.config import build_router_config

    config = build_router_config(ROOT / "router" / "config.sample.json")
    assert config.port == 8100 and config.tasks == {"fix": "codellama-7b"}
    assert config.chain.keystore == ROOT / "router" / "payer-keystore.json"  # relative to the file
    assert config.state_dir.is_absolute() and config.low_escrow_units == 10**18
