"""Payment benchmark: what admission and receipts add to a request, what settling costs in gas, and
the chain calls in the request path, measured side by side in one run.

A real Anvil with the contracts deployed, a model approved on chain at 0.001 MESH per 1K tokens, a
registered node (dev account 1) and four payers (dev accounts 4-7) with escrow. The node side runs
in its own process (`--serve`, client and server never share a GIL): two stacks over the same tiny
GGUF model (one llama.cpp thread each: the tiny model needs no more, and the client keeps a core),
one with payment off and one with payment on (node.payments over a real SQLite receipt store, the
escrow view loaded from the chain, the settler). The client alternates a free and a paid
request (8 tokens, temperature 0), cycling over the payers, each paid request carrying the payer's
countersigned receipt for the one before, as the payer library does.

- latency: p50/p99 of the paid request vs the free one, timed from sending to the whole answer;
  goal < 1 ms added at p50. Beside it, the node side's own split (admission, the wait for the
  nonce's write before the first output, billing with the signed receipt) and the payer's work
  (signing the auth, checking and countersigning the receipt), which is outside the timed span.
- RPC calls the node side made while the requests ran (its web3 provider counts them): goal 0.
- gas per request settled: after 1,000 paid requests per payer, the node settles every payer's
  best receipt; the settle transaction's gasUsed / paid requests; goal <= 100. The amounts each
  payer's channel shows paid must equal what its ledger countersigned.

The per-payer rate limit is raised for the run (the client sends as fast as the node answers);
everything else is the node's default payment settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from web3 import Web3

from chain.accounts import dev_account
from chain.deployment import Deployment, contract_at, load_deployment
from chain.receipts import Domain
from chain.rpc import connect
from chain.tx import TxSender
from protocol.payer import Payer
from protocol.payment import Billing, encode_signed_receipt
from storage.cid import raw_cid
from storage.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent

REQUESTS_PER_PAYER, WARMUP, TOKENS = 1_000, 20, 8
PRICE = 10**15  # per 1K tokens: 0.001 MESH
DEPOSIT = "1"  # MESH of escrow per payer
OPERATOR, PAYERS = 1, (4, 5, 6, 7)
MODEL = "tiny-coder"
LATENCY_GOAL_MS, GAS_GOAL = 1.0, 100


# ---------------------------------------------------------------- the node side (its own process)


class Counted:
    """Counts the JSON-RPC calls a web3 provider makes."""

    def __init__(self, w3: Web3) -> None:
        self.calls = 0
        inner = w3.provider.make_request

        def counted(method: Any, params: Any) -> Any:
            self.calls += 1
            return inner(method, params)

        w3.provider.make_request = counted  # type: ignore[method-assign]


class TimedGate:
    """The daemon's payment hooks, timing admission and billing (ms) on the node side."""

    def __init__(self) -> None:
        from node.payments import PaymentGate

        self.gate = PaymentGate()
        self.spent: dict[str, list[float]] = {"admit": [], "store wait": [], "finish": []}

    @property
    def target(self) -> Any:
        return self.gate.target

    @target.setter
    def target(self, payments: Any) -> None:
        self.gate.target = payments

    async def _timed(self, what: str, call: Any) -> Any:
        start = time.perf_counter()
        try:
            return await call
        finally:
            self.spent[what].append((time.perf_counter() - start) * 1000)

    async def admit(self, ctx: Any) -> Any:
        durable = await self._timed("admit", self.gate.admit(ctx))
        return self._timed("store wait", durable)  # how long serving waits for the nonce's write

    async def finish(self, ctx: Any, tokens: int) -> Any:
        return await self._timed("finish", self.gate.finish(ctx, tokens))

    async def release(self, ctx: Any, tokens: int) -> None:
        await self.gate.release(ctx, tokens)

    async def take_receipt(self, raw: Any) -> Any:
        return await self.gate.take_receipt(raw)


def serve(args: argparse.Namespace) -> None:
    """Both stacks until stdin closes; answers `rpc`, `spent` and `settle` lines on stdout."""
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    # Imported here: the client process never loads the node (or llama.cpp).
    from chain.escrow import EscrowView
    from node.app import build_stack
    from node.config import HostedModel, PaymentSettings, ServingLimits
    from node.local import local_servable
    from node.payments import Payments
    from node.receipts import ReceiptStore
    from node.settler import Settler
    from protocol.server import HttpServer
    from protocol.service import run_services

    w3 = connect(args.rpc_url)
    deployment = load_deployment(Path(args.deployment), w3)
    account = dev_account(OPERATOR)
    settlement = contract_at(w3, deployment, "Settlement")
    escrow = EscrowView(settlement, account.address, start_block=deployment.block_number)
    escrow.load(w3.eth.block_number)
    settings = PaymentSettings(rate_per_s=100_000, rate_burst=1_000_000)
    store = ReceiptStore(Path(args.store))
    payments = Payments(account, Domain(w3.eth.chain_id, settlement.address), escrow, store, settings)
    settler = Settler(payments, escrow, settlement, TxSender(w3, account), settings)
    await settler.start()
    gate = TimedGate()
    gate.target = payments

    served = HostedModel(name=MODEL, threads=1, slots=4, n_ctx=512, eager=True)
    model = local_servable(Path(args.model), MODEL, served, model_id=args.model_id)
    model = dataclasses.replace(model, price_per_1k=PRICE)
    limits = ServingLimits(memory_budget_gb=1)
    free, paid = build_stack(limits, "free"), build_stack(limits, "paid", payments=gate)
    services: list[Any] = []
    for stack, port in ((free, args.free_port), (paid, args.paid_port)):
        stack.workers.update({MODEL: model})
        services += [stack.workers, HttpServer(stack.app, "127.0.0.1", port, max_connections=16)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    counter = Counted(w3)
    threading.Thread(target=_commands, args=(loop, stop, counter, settler, gate), daemon=True).start()
    await run_services(services, stop)
    store.close()


def _commands(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, counter: Counted, settler: Any, gate: TimedGate
) -> None:
    for line in sys.stdin:
        if line.strip() == "rpc":
            print(json.dumps({"rpc": counter.calls}), flush=True)
        elif line.strip() == "spent":
            print(json.dumps(gate.spent), flush=True)
            gate.spent = {what: [] for what in gate.spent}
        elif line.strip() == "settle":
            settled = asyncio.run_coroutine_threadsafe(settler.settle(everything=True), loop).result()
            print(json.dumps({"settled": settled}), flush=True)
    loop.call_soon_threadsafe(stop.set)


# ---------------------------------------------------------------- the chain


def setup_chain(w3: Web3, deployment: Deployment, deployment_file: Path, model: Path) -> int:
    """Approve the model at PRICE, register the node with its stake, give every payer escrow (with
    the operator's and the payer's own scripts where they exist); the model id."""
    from scripts import approve_model, deposit
    from scripts.devnet import fund

    fund(w3, deployment)  # MESH for every dev account
    chain = ["--rpc-url", str(w3.provider.endpoint_uri), "--deployment", str(deployment_file)]
    admin = TxSender(w3, dev_account(0))
    models, nodes = contract_at(w3, deployment, "ModelRegistry"), contract_at(w3, deployment, "NodeRegistry")
    data = model.read_bytes()
    # Proposed directly: publish_model.py would add the file to kubo, which this run does not need.
    spec = (
        MODEL,
        str(raw_cid(data)),
        hashlib.sha256(data).digest(),
        len(data),
        "F32",
        512,
        PRICE,
        ["python"],
    )
    receipt = admin.send(models.functions.propose(spec))
    model_id = models.events.ModelProposed().process_receipt(receipt)[0]["args"]["modelId"]
    with contextlib.redirect_stdout(io.StringIO()):
        approve_model.main([*chain, "--dev-account", "0", "--model-id", str(model_id)])
        for index in PAYERS:
            deposit.main([*chain, "--dev-account", str(index), "--amount", DEPOSIT])
    # Registered directly: register_node.py reads the operator's node config for what this run sets.
    operator = TxSender(w3, dev_account(OPERATOR))
    stake = nodes.functions.minStake().call()
    operator.send(contract_at(w3, deployment, "NetworkToken").functions.approve(nodes.address, stake))
    operator.send(nodes.functions.stake(stake))
    operator.send(nodes.functions.register("bench-node", "http://127.0.0.1:1", "{}", [model_id]))
    return model_id


# ---------------------------------------------------------------- the client


class NodeProcess:
    """`--serve` in a child process: both stacks, and its stdin/stdout command lines."""

    def __init__(self, rpc_url: str, deployment: Path, model: Path, model_id: int, work: Path) -> None:
        self.free_url, self.paid_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
        command = [
            sys.executable,
            "-m",
            "bench.payment_bench",
            "--serve",
            f"--rpc-url={rpc_url}",
            f"--deployment={deployment}",
            f"--model={model}",
            f"--model-id={model_id}",
            f"--store={work / 'payments.sqlite'}",
            f"--free-port={self.free_url.rsplit(':', 1)[1]}",
            f"--paid-port={self.paid_url.rsplit(':', 1)[1]}",
        ]
        self.log = (work / "node.log").open("wb")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def wait_ready(self, client: httpx.Client, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"bench: the node side exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if all(MODEL in client.get(url + "/health").text for url in (self.free_url, self.paid_url)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        sys.exit(f"bench: the node side did not serve within {timeout:g} s; see {self.log.name}")

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Timings:
    free: list[float] = field(default_factory=list)  # ms per request
    paid: list[float] = field(default_factory=list)
    payer: list[float] = field(default_factory=list)  # the payer library's work per paid request
    node: dict[str, list[float]] = field(default_factory=dict)  # node side: admit, finish (ms)
    paid_tokens: int = 0


BODY = {"model": MODEL, "prompt": "def fix", "max_tokens": TOKENS, "temperature": 0}


def timed_post(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    response = client.post(url + "/v1/completions", json=BODY, headers=headers)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        sys.exit(f"bench: {url} answered {response.status_code}: {response.text[:300]}")
    return elapsed, response.json()


def paid_request(
    client: httpx.Client, url: str, payer: Payer, node: str, model_id: int, t: Timings | None
) -> None:
    start = time.perf_counter()
    nonce, headers = payer.authorize(node, model_id, TOKENS, PRICE)
    signing = time.perf_counter() - start
    elapsed, answer = timed_post(client, url, headers)
    start = time.perf_counter()
    tokens = answer["usage"]["completion_tokens"]
    payer.accept(node, nonce, Billing.decode(answer["llm_mesh"]), tokens)
    checking = time.perf_counter() - start
    if t is not None:
        t.paid.append(elapsed)
        t.payer.append((signing + checking) * 1000)
        t.paid_tokens += tokens


def run_requests(
    node: NodeProcess,
    client: httpx.Client,
    payers: list[Payer],
    model_id: int,
    rounds: int,
    t: Timings | None,
) -> None:
    operator = dev_account(OPERATOR).address
    for _ in range(rounds):
        for payer in payers:
            elapsed, _ = timed_post(client, node.free_url, {})
            if t is not None:
                t.free.append(elapsed)
            paid_request(client, node.paid_url, payer, operator, model_id, t)


def settle_gas(w3: Web3, settlement: str, node: str, since: int) -> tuple[int, int]:
    """(settle transactions, gas) the node sent to Settlement after block `since`."""
    txs = gas = 0
    for number in range(since + 1, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"] == node and tx["to"] == settlement:
                txs += 1
                gas += w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"]
    return txs, gas


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(args: argparse.Namespace) -> int:
    from scripts.devnet import ensure_deployed, start_anvil, stop
    from tests.gguf_models import write_tiny_llama

    with tempfile.TemporaryDirectory(prefix="payment-bench-") as tmp:
        work = Path(tmp)
        anvil, w3 = start_anvil(work / "anvil", free_port())
        node: NodeProcess | None = None
        try:
            deployment = ensure_deployed(w3, work / "deployment.json")
            model = write_tiny_llama(work / "tiny.gguf", seed=5, name=MODEL)
            model_id = setup_chain(w3, deployment, work / "deployment.json", model)
            node = NodeProcess(str(w3.provider.endpoint_uri), work / "deployment.json", model, model_id, work)
            return measure(w3, deployment, node, model_id, args.requests)
        finally:
            if node is not None:
                node.stop()
            stop(anvil)


def measure(w3: Web3, deployment: Deployment, node: NodeProcess, model_id: int, requests: int) -> int:
    domain = Domain(w3.eth.chain_id, deployment.settlement)
    payers = [Payer(dev_account(i), domain) for i in PAYERS]
    operator = dev_account(OPERATOR).address
    with httpx.Client(timeout=60) as client:
        node.wait_ready(client)
        run_requests(node, client, payers, model_id, WARMUP, None)
        t = Timings()
        rpc_before = node.ask("rpc")["rpc"]
        node.ask("spent")  # the warm-up's
        run_requests(node, client, payers, model_id, requests, t)
        rpc_calls = node.ask("rpc")["rpc"] - rpc_before
        t.node = node.ask("spent")
        for payer in payers:  # the last countersigned receipt goes back too
            last = payer.ledger(operator).last
            client.post(node.paid_url + "/v1/receipts", json=encode_signed_receipt(last)).raise_for_status()
    head = w3.eth.block_number
    settled = node.ask("settle")["settled"]
    txs, gas = settle_gas(w3, deployment.settlement, operator, head)
    settlement = contract_at(w3, deployment, "Settlement")
    exact = all(
        tuple(settlement.functions.channelOf(p.address, operator).call())
        == p.ledger(operator).cumulative[::-1]
        for p in payers
    )
    report(t, rpc_calls, settled, txs, gas, exact, len(payers) * (requests + WARMUP))
    return 0


def line(label: str, spans: list[float], note: str = "") -> None:
    print(f"{label:30}{statistics.median(spans):>9.2f}{percentile(spans, 99):>9.2f}   {note}".rstrip())


def report(
    t: Timings, rpc_calls: int, settled: int, txs: int, gas: int, exact: bool, paid_requests: int
) -> None:
    added = statistics.median(t.paid) - statistics.median(t.free)
    per_request = gas / paid_requests
    print(f"\npayment benchmark: {len(t.paid)} paid and {len(t.free)} free requests of {TOKENS} tokens")
    print(f"{'':30}{'p50 ms':>9}{'p99 ms':>9}")
    line("payment off", t.free)
    line("payment on", t.paid)
    goal = f"goal < {LATENCY_GOAL_MS:g} ms at p50: {verdict(added < LATENCY_GOAL_MS)}"
    print(f"{'added by payment (p50)':30}{added:>9.2f}{'':9}   {goal}")
    for what, spans in t.node.items():
        line(f"  node side: {what}", spans)
    line("payer library (client side)", t.payer, "signs the auth, checks and countersigns; not timed above")
    print(f"chain RPC calls in the request path: {rpc_calls}   goal 0: {verdict(rpc_calls == 0)}")
    print(
        f"settled: {settled} receipts in {txs} transaction(s), {gas} gas for {paid_requests} paid requests"
        f" = {per_request:.1f} gas/request   goal <= {GAS_GOAL}: {verdict(per_request <= GAS_GOAL)}"
    )
    print(f"channels paid exactly what the payers countersigned: {verdict(exact)}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_PAYER, help="paid requests per payer")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for name in ("rpc-url", "deployment", "model", "store"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("model-id", "free-port", "paid-port"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    if options.serve:
        serve(options)
    else:
        sys.exit(main(options))
