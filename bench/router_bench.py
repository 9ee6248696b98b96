"""Router benchmark: what the router adds to a request, and how fast it fails over, measured side by
side in one run.

A real network on loopback, set up with the operators' own scripts as `make demo` does: Anvil with
the contracts, kubo, a tiny GGUF model published and approved, two paid nodes (`python -m node`,
payment on, their per-payer rate limit raised for the run) and the router (`python -m router`)
paying from one account. The client pays the nodes it calls directly from another account with
the payer library, so both paths do the same payment work: signing the auth, checking and
countersigning the receipt (by the client when direct, by the router through it).

- router-added latency: requests alternate between the router and the node the router chose for
  the request before (so both hit the same warm node), 8 tokens, temperature 0. Non-streamed:
  send to whole answer; streamed: send to the first text chunk (TTFT). p50 and p99 of each, and
  the difference; goals < 1 ms at p50 and < 3 ms at p99 (LiteLLM adds 3-4 ms, Bifrost ~0.5 ms).
- failover: the node that served the last request is killed (kill -9 of the daemon and its
  worker, as a machine that dies), and once its processes are gone (on a network a dead node's
  teardown does not run on the backup's CPU; here it shares the nodes' cores) the
  next streamed request's TTFT through the router (it reaches the dead node first, then the
  other) is compared with the router's normal TTFT; goal <= 1.5x. The killed node is started
  again between rounds and serves the router's requests a while (pairs at once) before the next
  kill, as a network's nodes have been serving.

The router runs on its user's machine and the nodes on theirs; here they share one. So that the
nodes' llama.cpp threads (which spin for a while after every request, on every core they have)
do not take the CPU from the router and the client as they could not across a network, the
nodes (and Anvil and kubo) run on half of this machine's cores, each node with half as many
llama.cpp threads (at least one), and the client and the router on the other half (one core each
on two cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.node_bench import proc_stats
from chain.accounts import dev_account
from chain.receipts import Domain
from protocol.payer import Payer
from protocol.payment import Billing
from scripts import deposit
from scripts.demo import Child, Node, operator, publish, start_node
from scripts.devnet import ensure_deployed, fund, start_anvil, start_kubo, stop
from storage.daemon import free_port

MODEL = "tiny-coder"
ROUTER_PAYER, DIRECT_PAYER = 4, 7
TOKENS = 8
NO_BURST = ("--burst-window-ms", "0")
BODY = {"model": MODEL, "prompt": "def fix", "max_tokens": TOKENS, "temperature": 0}
RATE = {"LLM_MESH_NODE_PAYMENTS__RATE_PER_S": "100000", "LLM_MESH_NODE_PAYMENTS__RATE_BURST": "1000000"}


def split_cores() -> tuple[set[int], set[int]]:
    """(the client's and router's cores, the nodes' cores): halves of this process's cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return set(cores), set(cores)
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


@contextlib.contextmanager
def on_cores(cores: set[int]) -> Iterator[None]:
    """Run this thread (and the processes it starts meanwhile: children inherit it) on `cores`."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class Direct:
    """A client that calls one node itself, paying with the payer library."""

    def __init__(self, payer: Payer, client: httpx.Client, model_id: int, price: int) -> None:
        self.payer, self.client, self.model_id, self.price = payer, client, model_id, price

    def request(self, node: Node, stream: bool) -> float:
        """ms from sending to the answer (non-streamed) or the first text chunk (streamed)."""
        start = time.perf_counter()
        nonce, headers = self.payer.authorize(node.address, self.model_id, TOKENS, self.price)
        if not stream:
            answer = self.client.post(node.url + "/v1/completions", json=BODY, headers=headers).json()
            self.payer.accept(
                node.address, nonce, Billing.decode(answer["llm_mesh"]), answer["usage"]["completion_tokens"]
            )
            return (time.perf_counter() - start) * 1000
        body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
        first, events = streamed(self.client, node.url, body, start, headers)
        billing = next(e["llm_mesh"] for e in events if "llm_mesh" in e)
        usage = next(e["usage"] for e in events if e.get("usage") and not e.get("choices"))
        self.payer.accept(node.address, nonce, Billing.decode(billing), usage["completion_tokens"])
        return first


def streamed(
    client: httpx.Client, url: str, body: dict[str, Any], start: float, headers: dict[str, str] | None = None
) -> tuple[float, list[dict[str, Any]]]:
    """A streamed completion: (ms from `start` to its first text chunk, every event)."""
    first, events = None, []
    with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            events.append(event := json.loads(line[6:]))
            if first is None and any(c.get("text") for c in event.get("choices") or ()):
                first = (time.perf_counter() - start) * 1000
    assert first is not None
    return first, events


def via_router(client: httpx.Client, url: str, stream: bool) -> tuple[float, dict[str, Any]]:
    """(ms as in Direct.request, the answer's llm_mesh summary)."""
    start = time.perf_counter()
    if not stream:
        answer = client.post(url + "/v1/completions", json=BODY).json()
        return (time.perf_counter() - start) * 1000, answer["llm_mesh"]
    first, events = streamed(client, url, {**BODY, "stream": True}, start)
    return first, next(e["llm_mesh"] for e in events if "llm_mesh" in e)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(
    client: httpx.Client, router: str, direct: Direct, nodes: dict[str, Node], rounds: int, stream: bool
) -> tuple[list[float], list[float]]:
    """(router ms, direct ms), alternating, the direct call to the node the router just used."""
    routed, straight = [], []
    for i in range(rounds):
        ms, served = via_router(client, router, stream)
        d = direct.request(nodes[served["node"]], stream)
        if i >= rounds // 10:  # the first tenth warms both paths
            routed.append(ms)
            straight.append(d)
    return routed, straight


def failover(
    direct: Direct,
    router: Child,
    router_url: str,
    nodes: dict[str, Node],
    work: Path,
    kubo_api: str,
    rounds: int,
    hosts: set[int],
) -> tuple[list[float], list[float]]:
    """(normal router TTFTs, TTFTs of the first request after the serving node was killed)."""
    normal, after_kill = [], []
    client = direct.client
    for _ in range(rounds):
        samples = [via_router(client, router_url, True) for _ in range(20)]
        normal += [ms for ms, _ in samples[5:]]
        victim = nodes[samples[-1][1]["node"]]
        assert victim.child is not None
        # kill -9 of the node and its worker (one process group): the router learns it only by trying
        os.killpg(victim.child.proc.pid, signal.SIGKILL)
        victim.child.proc.wait(10)
        gone(victim.child.proc.pid)
        ms, served = via_router(client, router_url, True)
        if served.get("failed_over"):
            after_kill.append(ms)
        with on_cores(hosts):
            start_node(victim, work, kubo_api, **RATE)
        victim.child.wait_for(
            victim.url + "/v1/models", lambda m: any(x["id"] == MODEL for x in m["data"]), "serving"
        )
        router.wait_for(
            router_url + "/health", lambda h: all(n["alive"] for n in h["nodes"].values()), "both alive"
        )
        for stream in (False, True):  # a fresh process: load the model, run both paths once
            direct.request(victim, stream)
        warm_both(router_url)
    return normal, after_kill


def gone(group: int, timeout: float = 10.0) -> None:
    """Wait until every process of `group` has exited (Linux /proc; the worker is not our child,
    and an exited one may linger as a zombie until init reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pgrp == group and state != "Z" for state, _, pgrp in proc_stats().values()):
            return
        time.sleep(0.01)
    raise RuntimeError(f"processes of group {group} still running {timeout:g} s after kill -9")


def warm_both(router_url: str, rounds: int = 10) -> None:
    """Pairs of requests at once through the router, so load spreads them over both nodes: a
    restarted node serves the router's payer a while before it is timed as the backup (a network's
    nodes have been serving; a process's first requests pay for its cold paths)."""
    with (
        concurrent.futures.ThreadPoolExecutor(2) as pool,
        httpx.Client(timeout=60) as a,
        httpx.Client(timeout=60) as b,
    ):
        for _ in range(rounds):
            list(pool.map(lambda c: via_router(c, router_url, True), (a, b)))


def row(label: str, routed: list[float], direct: list[float]) -> tuple[float, float]:
    p50, p99 = (
        statistics.median(routed) - statistics.median(direct),
        percentile(routed, 99) - percentile(direct, 99),
    )
    print(
        f"{label:<22} router {statistics.median(routed):7.2f} / {percentile(routed, 99):7.2f}   "
        f"direct {statistics.median(direct):7.2f} / {percentile(direct, 99):7.2f}   "
        f"added {p50:6.2f} / {p99:6.2f}   goal < 1 / < 3: {verdict(p50 < 1 and p99 < 3)}"
    )
    return p50, p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="requests per path and kind")
    parser.add_argument("--kills", type=int, default=5, help="failover rounds")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep its logs")
    args = parser.parse_args(argv)
    from tests.gguf_models import write_tiny_llama

    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="router-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        clients, hosts = split_cores()
        with on_cores(hosts):
            anvil, w3 = start_anvil(work / "chain", free_port())
            kubo = start_kubo(work)
        nodes: list[Node] = []
        router: Child | None = None
        try:
            deployment_file = work / "deployment.json"
            deployment = ensure_deployed(w3, deployment_file)
            fund(w3, deployment)
            os.environ |= {
                "LLM_MESH_RPC_URL": str(w3.provider.endpoint_uri),  # type: ignore[attr-defined]
                "LLM_MESH_DEPLOYMENT": str(deployment_file),
                "LLM_MESH_KUBO_API": kubo.api_url,
            }
            with contextlib.redirect_stdout(io.StringIO()):
                model_id = publish(
                    write_tiny_llama(work / "tiny.gguf", seed=5, name=MODEL), MODEL, w3, deployment
                )
                # No burst window: the requests come one at a time, so it would only add the same
                # wait to both paths' latency and to the failover's normal TTFT.
                host_args = (*NO_BURST, "--threads", str(max(1, len(hosts) // 2)))
                nodes = [operator(work, i, dev, MODEL, host_args) for i, dev in enumerate((1, 5))]
                for payer in (ROUTER_PAYER, DIRECT_PAYER):
                    deposit.main(["--dev-account", str(payer), "--amount", "100"])
            for node in nodes:
                with on_cores(hosts):
                    start_node(node, work, kubo.api_url, **RATE)
                assert node.child is not None
                node.child.wait_for(
                    node.url + "/v1/models", lambda m: any(x["id"] == MODEL for x in m["data"]), "serving"
                )
            os.sched_setaffinity(0, clients)  # this client, and the router it starts next
            port = free_port()
            router_url = f"http://127.0.0.1:{port}"
            env = {
                "LLM_MESH_ROUTER_STATE_DIR": str(work / "router-state"),
                "LLM_MESH_ROUTER_PROBE_INTERVAL_S": "0.5",
            }
            router = Child(
                "router",
                ["-m", "router", "--dev-account", str(ROUTER_PAYER), "--port", str(port)],
                work / "router.log",
                env,
            )
            router.wait_for(
                router_url + "/health",
                lambda h: len(h["nodes"]) == 2 and all(n["alive"] for n in h["nodes"].values()),
                "two live nodes",
            )
            price = 2 * 10**15
            domain = Domain(w3.eth.chain_id, deployment.settlement)
            by_address = {n.address: n for n in nodes}
            print(
                f"router bench: {args.rounds} requests per path and kind, {TOKENS} tokens, {args.kills} kills"
            )
            with httpx.Client(timeout=60) as client:
                direct = Direct(Payer(dev_account(DIRECT_PAYER), domain), client, model_id, price)
                for node in nodes:  # models load on their first request: load both before timing
                    for stream in (False, True):
                        direct.request(node, stream)
                print(f"{'':22} {'p50 / p99 ms':>22}")
                for label, stream in (("non-streamed", False), ("streamed, TTFT", True)):
                    before = cpu_seconds(router.proc.pid)
                    row(label, *latency(client, router_url, direct, by_address, args.rounds, stream))
                    spent = (cpu_seconds(router.proc.pid) - before) / args.rounds * 1000
                    print(
                        f"{'':22} the router's CPU: {spent:.2f} ms a request (its background work included)"
                    )
                normal, killed = failover(
                    direct, router, router_url, by_address, work, kubo.api_url, args.kills, hosts
                )
            if not killed:
                print("failover: no request failed over (the router never chose the killed node)")
                return 1
            ratio = statistics.median(killed) / statistics.median(normal)
            after, before = statistics.median(killed), statistics.median(normal)
            print(
                f"failover TTFT after kill -9  {after:7.2f} ms (median of {len(killed)}) vs normal "
                f"{before:7.2f} ms = {ratio:.2f}x   goal <= 1.5x: {verdict(ratio <= 1.5)}"
            )
            return 0
        finally:
            for child in [router, *(n.child for n in nodes)]:  # a restarted node's newest process
                if child is not None:
                    child.stop()
            kubo.stop()
            stop(anvil)


if __name__ == "__main__":
    sys.exit(main())
