"""Run a local llm-mesh network: Anvil with state kept in a directory, the contracts deployed, test
accounts funded with MESH, a deployment file for every other command, and a kubo (IPFS) daemon with
its own repository there, on loopback and connected to no public peer. Ctrl-C stops both; the next
start resumes the same chain and the same IPFS content.

DEV ONLY: the accounts are Anvil's well-known test keys.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from web3 import Web3

from chain.accounts import ANVIL_DEV_KEYS, dev_account
from chain.deploy import deploy_all
from chain.deployment import Deployment, contract_at, load_deployment, save_deployment
from chain.tx import TxSender
from chain.units import format_token
from scripts.common import run
from storage.daemon import KuboDaemon
from storage.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent
FUNDING = 100_000 * 10**18
CHAIN_ID = 31337


def find_tool(name: str) -> str:
    """The native forge/anvil binary installed by `make setup`, else one on PATH. The npm package's
    bin is a Node wrapper that forwards SIGINT/SIGTERM but not SIGKILL, so a killed wrapper would
    leave its binary running; the native binary is started directly."""
    native = sorted((ROOT / "node_modules" / "@foundry-rs").glob(f"{name}-*/bin/{name}"))
    if native:
        return str(native[0])
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: {name} is not installed: run `make setup`")
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def pick_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_anvil(state_dir: Path, port: int, block_time: float | None = None) -> tuple[subprocess.Popen, Web3]:
    """Start Anvil on loopback, loading and periodically saving its state in `state_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        find_tool("anvil"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(CHAIN_ID),
        "--state",
        str(state_dir / "anvil-state.json"),
        "--state-interval",
        "5",
        "--silent",
    ]
    if block_time:
        cmd += ["--block-time", str(block_time)]
    log = open(state_dir / "anvil.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"error: anvil exited with code {proc.returncode}; see {state_dir / 'anvil.log'}"
            )
        try:
            w3.eth.chain_id  # noqa: B018 - readiness probe
            return proc, w3
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("error: anvil did not start within 30 s")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT lets Anvil dump its state before exiting."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_deployed(w3: Web3, path: Path) -> Deployment:
    """Reuse the deployment in `path` if its contracts are on this chain, else deploy afresh."""
    if path.exists():
        existing = load_deployment(path, w3)
        if w3.eth.get_code(existing.settlement):
            return existing
    deployment = deploy_all(w3, dev_account(0))
    save_deployment(deployment, path)
    return deployment


def fund(w3: Web3, deployment: Deployment, amount: int = FUNDING) -> list[str]:
    """Mint MESH to every dev account that holds less than `amount`."""
    token = contract_at(w3, deployment, "NetworkToken")
    sender = TxSender(w3, dev_account(0))
    funded = []
    for index in range(len(ANVIL_DEV_KEYS)):
        address = dev_account(index).address
        missing = amount - token.functions.balanceOf(address).call()
        if missing > 0:
            sender.send(token.functions.mint(address, missing))
        funded.append(address)
    return funded


def start_kubo(state_dir: Path) -> KuboDaemon:
    """kubo with its repository in `state_dir/kubo`, API on 5001 (or a free port) and loopback only."""
    daemon = KuboDaemon(state_dir / "kubo", api_port=pick_port(5001), gateway_port=pick_port(8080))
    try:
        return daemon.start()
    except StorageError as exc:
        raise SystemExit(f"error: {exc} (or run without IPFS: --no-kubo)") from None


def env_line(url: str, deployment_path: Path, kubo: KuboDaemon | None) -> str:
    """The environment the scripts read, as one `export` line."""
    line = f"export LLM_MESH_RPC_URL={url} LLM_MESH_DEPLOYMENT={deployment_path}"
    return line + (f" LLM_MESH_KUBO_API={kubo.api_url}" if kubo else "")


def summary(url: str, deployment_path: Path, deployment: Deployment, accounts: list[str], w3: Web3) -> str:
    token = contract_at(w3, deployment, "NetworkToken")
    lines = [
        "llm-mesh devnet is up (DEV ONLY: Anvil's well-known keys)",
        f"  RPC URL     {url}   (chain id {deployment.chain_id})",
        f"  deployment  {deployment_path}",
    ]
    lines += [
        f"  {name:15} {value}"
        for name, value in deployment.to_dict().items()
        if name.endswith(("token", "registry", "settlement", "vault"))
    ]
    lines.append("  accounts (use --dev-account N with the scripts):")
    lines += [
        f"    [{i}] {a}  {format_token(token.functions.balanceOf(a).call())}" for i, a in enumerate(accounts)
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument(
        "--state-dir", type=Path, default=Path(".devnet"), help="where chain state lives (.devnet)"
    )
    p.add_argument("--port", type=int, default=8545, help="preferred RPC port (a free one if taken)")
    p.add_argument("--block-time", type=float, help="mine every N seconds instead of on each transaction")
    p.add_argument("--no-kubo", action="store_true", help="do not start the IPFS (kubo) daemon")
    return p


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a service manager, `timeout`, `kill`) stops the devnet like Ctrl-C: Anvil and kubo
    run in their own sessions and would otherwise outlive us."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    port = pick_port(args.port)
    proc, w3 = start_anvil(args.state_dir, port, args.block_time)
    kubo: KuboDaemon | None = None
    try:
        kubo = None if args.no_kubo else start_kubo(args.state_dir)
        # Absolute: `.devnet/env` and the node config must work from any working directory.
        deployment_path = (args.state_dir / "deployment.json").resolve()
        deployment = ensure_deployed(w3, deployment_path)
        accounts = fund(w3, deployment)
        url = f"http://127.0.0.1:{port}"
        (args.state_dir / "env").write_text(env_line(url, deployment_path, kubo) + "\n")
        print(summary(url, deployment_path, deployment, accounts, w3), flush=True)
        if kubo is not None:
            print(f"  IPFS (kubo)  API {kubo.api_url}  gateway http://127.0.0.1:{kubo.gateway_port}")
        print(f"  {env_line(url, deployment_path, kubo)}")
        print("Ctrl-C stops it; the next start resumes the same chain and IPFS content.", flush=True)
        while proc.poll() is None:
            time.sleep(0.5)
        print(
            f"anvil exited with code {proc.returncode}; see {args.state_dir / 'anvil.log'}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        # A second Ctrl-C (or a SIGTERM) must not cut the shutdown short and orphan Anvil or kubo.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if kubo is not None:
            kubo.stop()
        stop(proc)


def cli() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
