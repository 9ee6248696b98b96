"""The operator and user scripts, end to end, against a real devnet (Anvil started by devnet.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chain.accounts import ANVIL_DEV_KEYS, dev_account
from chain.artifacts import load_artifact
from storage.unixfs import hash_bytes
from tests.conftest import ROOT, free_port
from tests.gguf_models import write_tiny_llama

ANVIL_ADDRESS_9 = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"
GEMMA_SHA = "a5fd3b62" + "00" * 28  # shape only: the registry stores what the publisher declares
# Any valid CID: publish_model refuses what is not one.
GEMMA_CID = "bafkreianjy5ovfqupusqg2wtofnnbktvhfe6vzwy4wf2xijfareegjqdiq"
PUBLISH_ARGS = [
    "--dev-account",
    "2",
    "--name",
    "m",
    "--sha256",
    GEMMA_SHA,
    "--size",
    "9",
    "--price-per-1k",
    "1",
]


class Devnet:
    """A running `scripts/devnet.py` and the environment the scripts need to reach it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.output = ""

    @property
    def kubo_api(self) -> str:
        """The RPC URL of the devnet's kubo, as its summary prints it."""
        return re.search(r"IPFS \(kubo\)  API (http://127\.0\.0\.1:\d+)", self.output).group(1)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LLM_MESH_RPC_URL": f"http://127.0.0.1:{self.port}",
            "LLM_MESH_DEPLOYMENT": str(self.state_dir / "deployment.json"),
            "LLM_MESH_KUBO_API": self.kubo_api if self.output else "",
        }

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "scripts.devnet",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops it"):
                self.output = "".join(lines)
                return
        raise RuntimeError("devnet did not come up:\n" + "".join(lines))

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def devnet(tmp_path_factory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet"))
    net.start()
    try:
        yield net
    finally:
        if net.proc and net.proc.poll() is None:
            net.stop()


def script(devnet: Devnet, name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"scripts.{name}", *args],
        cwd=cwd or ROOT,
        env={**devnet.env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one clear line, no traceback
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def operator_files(devnet: Devnet, tmp_path_factory) -> dict[str, Path]:
    """A keystore for dev account 1 (funded by the devnet) and its password file."""
    home = tmp_path_factory.mktemp("operator")
    (home / "password").write_text("correct horse battery\n")
    (home / "password").chmod(0o600)  # a password file only its owner reads
    (home / "key").write_text(ANVIL_DEV_KEYS[1])
    keystore = home / "node-keystore.json"
    out = ok(
        script(
            devnet,
            "new_keystore",
            str(keystore),
            "--password-file",
            str(home / "password"),
            "--import-key-file",
            str(home / "key"),
        )
    )
    assert out.split()[0].lower().startswith("0x70997970")
    return {"home": home, "keystore": keystore, "password": home / "password", "config": home / "node.json"}


def test_devnet_printsSummaryAndWritesDeployment(devnet: Devnet) -> None:
    deployment = json.loads((devnet.state_dir / "deployment.json").read_text())
    assert deployment["chain_id"] == 31337
    assert f"http://127.0.0.1:{devnet.port}" in devnet.output
    assert deployment["settlement"] in devnet.output
    assert "100,000 MESH" in devnet.output
    # Its kubo answers on loopback, with its repository in the state directory, and the env line names it.
    api = devnet.kubo_api
    assert httpx.post(f"{api}/api/v0/id", timeout=10).status_code == 200
    assert (devnet.state_dir / "kubo" / "config").exists()
    assert f"LLM_MESH_KUBO_API={api}" in (devnet.state_dir / "env").read_text()


def test_operatorFlow_fromNothingToHostedModel(devnet: Devnet, operator_files: dict[str, Path]) -> None:
    account = [
        "--keystore",
        str(operator_files["keystore"]),
        "--password-file",
        str(operator_files["password"]),
    ]
    config = ["--config", str(operator_files["config"])]
    out = ok(
        script(
            devnet,
            "configure_node",
            *config,
            "--gpu-specs",
            "rtx4090",
            "--ram",
            "64",
            "--storage",
            "2000",
            "--node-id",
            "my-awesome-node",
            "--endpoint",
            "http://127.0.0.1:18080",
        )
    )
    assert "rtx4090" in out
    out = ok(script(devnet, "register_node", *account, *config, "--stake", "1500"))
    assert "staked 1,500 MESH" in out and "registered my-awesome-node" in out and "active     True" in out
    again = ok(script(devnet, "register_node", *account, *config, "--stake", "1500"))
    assert "staked" not in again and "registered" not in again  # idempotent

    publish = ok(
        script(
            devnet,
            "publish_model",
            "--dev-account",
            "2",
            "--name",
            "gemma-3-270m",
            "--cid",
            GEMMA_CID,
            "--sha256",
            GEMMA_SHA,
            "--size",
            "253000000",
            "--context",
            "32768",
            "--price-per-1k",
            "0.002",
            "--specialties",
            "python,debugging",
        )
    )
    assert "proposed gemma-3-270m v1 as model 1" in publish
    fails(script(devnet, "host_model", *account, *config, "--model", "gemma-3-270m"), "none is approved yet")
    ok(script(devnet, "approve_model", "--dev-account", "0", "--model-id", "1"))
    # A config the node would refuse is refused before the chain hears of it.
    fails(
        script(devnet, "host_model", *account, *config, "--model", "gemma-3-270m", "--n-ctx", "10"), "n_ctx"
    )
    host = ("--model", "gemma-3-270m", "--n-ctx", "8192", "--burst-window-ms", "0.5")
    out = ok(script(devnet, "host_model", *account, *config, *host))
    assert "now hosting gemma-3-270m (model 1)" in out
    saved = json.loads(operator_files["config"].read_text())
    # Defaults from the declared hardware: a GPU takes every layer, threads are the declared cores.
    cores = os.cpu_count()
    assert saved["models"] == [
        {
            "name": "gemma-3-270m",
            "model_id": 1,
            "gpu_layers": -1,
            "n_ctx": 8192,
            "threads": cores,
            "slots": 4,
            "burst_window_ms": 0.5,
            "eager": False,
        }
    ]

    status = ok(script(devnet, "status"))
    assert "my-awesome-node" in status and "1,500 MESH" in status and "gemma-3-270m" in status
    assert "approved" in status and "0.002 MESH" in status


def test_operatorConfig_isOneStory(devnet: Devnet, operator_files: dict[str, Path], tmp_path: Path) -> None:
    """The config names the account, so no script asks for --keystore again; a re-run changes only
    what it is given; relative paths are relative to the config file, so the scripts work from any
    directory."""
    home = tmp_path / "node-home"
    home.mkdir()
    keystore, password = home / "keystore.json", home / "password"
    keystore.write_bytes(operator_files["keystore"].read_bytes())
    keystore.chmod(0o600)
    password.write_bytes(operator_files["password"].read_bytes())
    password.chmod(0o600)
    config = home / "node.json"
    first = ["--gpu-specs", "rtx4090", "--ram", "64", "--storage", "2000", "--bandwidth", "500"]
    ok(script(devnet, "configure_node", "--config", str(config), *first, "--node-id", "my-awesome-node"))
    # Relative paths in the file, as an operator would write them by hand.
    document = json.loads(config.read_text())
    document["chain"] |= {"keystore": "keystore.json", "password_file": "password"}
    config.write_text(json.dumps(document))
    again = ok(script(devnet, "configure_node", "--config", str(config), "--cpu-cores", "3"))
    assert '"cpu_cores":3' in again and '"gpu":"rtx4090"' in again and '"bandwidth_mbps":500' in again
    saved = json.loads(config.read_text())
    assert saved["chain"]["keystore"] == str(keystore) and saved["chain"]["password_file"] == str(password)
    assert saved["hardware"]["ram_gb"] == 64 and saved["node_id"] == "my-awesome-node"

    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    env_config = ["--config", str(config)]
    out = ok(script(devnet, "register_node", *env_config, "--stake", "1500", cwd=elsewhere))
    assert "node my-awesome-node (0x70997970" in out  # the account came from the config
    out = ok(
        script(devnet, "host_model", *env_config, "--model", "gemma-3-270m", "--threads", "1", cwd=elsewhere)
    )
    assert "threads=1" in out and "gpu_layers=-1" in out
    fresh = script(devnet, "configure_node", "--config", str(tmp_path / "new.json"), "--gpu-specs", "none")
    assert fresh.returncode == 2 and "needs --ram GB and --storage GB" in fresh.stderr


def test_readmeOperatorPath_worksAsWritten(devnet: Devnet, tmp_path: Path) -> None:
    """The README's operator commands, with its defaults: config and keystore in ~/.llm-mesh, no
    --config, no account flags, no --keystore after setup-node.sh."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "pw.txt").write_text("a-good-password\n")
    (tmp_path / "pw.txt").chmod(0o600)
    env = {**devnet.env, "HOME": str(home), "PYTHONPATH": str(ROOT)}

    def run_here(*cmd: str) -> str:
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    out = run_here(str(ROOT / "scripts" / "setup-node.sh"), "--password-file", "pw.txt")
    address = out.split("the node account is ", 1)[1].split(".", 1)[0]
    assert (home / ".llm-mesh" / "node.json").exists() and "--config" not in out
    python = [sys.executable, "-m"]
    run_here(*python, "scripts.faucet", "--dev-account", "0", "--to", address, "--amount", "2000")
    run_here(*python, "scripts.configure_node", "--gpu-specs", "rtx4090", "--ram", "64", "--storage", "2000",
             "--node-id", "readme-node", "--endpoint", "http://203.0.113.7:8090")  # fmt: skip
    out = run_here(*python, "scripts.register_node", "--stake", "1000")
    assert "registered readme-node" in out and address.lower() in out.lower()
    facts = hash_bytes(b"the readme operator path model")
    out = run_here(*python, "scripts.publish_model", "--dev-account", "2", "--name", "readme-model",
                   "--cid", str(facts.cid), "--sha256", facts.sha256, "--size", str(facts.size),
                   "--context", "2048", "--price-per-1k", "0.002")  # fmt: skip
    model_id = out.split(" as model ", 1)[1].split()[0]
    run_here(*python, "scripts.approve_model", "--dev-account", "0", "--model-id", model_id)
    out = run_here(*python, "scripts.host_model", "--model", "readme-model")
    assert "now hosting readme-model" in out and "gpu_layers=-1" in out


def test_userFlow_fundsEscrowAndWithdrawsAfterDelay(devnet: Devnet) -> None:
    user = ["--dev-account", "3"]
    out = ok(script(devnet, "deposit", *user, "--amount", "250"))
    assert "escrow now 250 MESH" in out
    out = ok(script(devnet, "withdraw", *user, "--request", "100"))
    assert "unlock of 100 MESH requested" in out
    fails(script(devnet, "withdraw", *user), "the unlock delay ends at")
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(devnet.env["LLM_MESH_RPC_URL"]))
    w3.provider.make_request("evm_increaseTime", [24 * 3600])
    w3.provider.make_request("evm_mine", [])
    result = script(devnet, "withdraw", *user)
    out = ok(result)
    assert "withdrew 100 MESH" in out and "escrow now 150 MESH" in out
    assert "Warning" not in result.stderr, result.stderr  # the token's Transfer log is not an error
    status = ok(script(devnet, "status"))
    assert "150 MESH" in status


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        (
            "register_node",
            ["--dev-account", "4", "--node-id", "n4", "--endpoint", "http://x:1", "--stake", "10"],
            "below the minimum stake",
        ),
        ("host_model", ["--dev-account", "1", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        ("deposit", ["--dev-account", "5", "--amount", "1000000"], "insufficient balance"),
        ("deposit", ["--dev-account", "5", "--amount", "-3"], "positive number"),
        ("configure_node", ["--gpu-specs", "gtx9999", "--ram", "64", "--storage", "100"], "unknown GPU"),
        ("configure_node", ["--ram", "0", "--storage", "100"], "ram_gb"),
        ("withdraw_stake", ["--dev-account", "6"], "nothing is unbonding"),
        ("deposit", ["--dev-account", "5", "--amount", "1000.000000000000000000000000000001"], "18 decimals"),
        ("faucet", ["--dev-account", "0", "--to", ANVIL_ADDRESS_9, "--amount", "1e80"], "larger than any"),
        (
            "faucet",
            ["--dev-account", "0", "--to", ANVIL_ADDRESS_9, "--amount", "1", "--gas-funds", "1e60"],
            "ether",
        ),
        ("approve_model", ["--dev-account", "0", "--model-id", "0"], "no model 0"),
        ("approve_model", ["--dev-account", "0", "--model-id", "-1"], "no model -1"),
        ("deposit", ["--dev-account", "5", "--amount", "1", "--for", "0xnotanaddress"], "not an address"),
        ("deposit", ["--dev-account", "5", "--amount", "1", "--for", "0x" + "00" * 20], "zero address"),
        ("status", ["--payer", "0xbad"], "not an address"),
        (
            "publish_model",
            [*PUBLISH_ARGS, "--cid", "not-a-cid", "--context", "2048"],
            "is not an IPFS CID",
        ),
        (
            "publish_model",
            [*PUBLISH_ARGS, "--cid", GEMMA_CID, "--context", "5000000000"],
            "--context 1 to 2^32-1",
        ),
        (
            "register_node",
            ["--dev-account", "4", "--node-id", "n4", "--endpoint", "not a url", "--stake", "2000"],
            "must be an http:// or https:// URL with a host",
        ),
        ("configure_node", ["--ram", "64", "--storage", "100", "--endpoint", "http:///"], "with a host"),
        ("configure_node", ["--ram", "64", "--storage", "100", "--rpc-url", "notaurl"], "chain.rpc_url"),
        (
            "configure_node",
            ["--ram", "64", "--storage", "9", "--gpu-specs", "rtx4090", "--vram", "0"],
            "has memory",
        ),
        ("withdraw", ["--dev-account", "5", "--request", ""], "is not a number"),
        (
            "new_keystore",
            [str(Path("/nonexistent/k.json")), "--import-key-file", "/nonexistent/key"],
            "cannot read",
        ),
    ],
)
def test_badInput_oneClearLineAndNonZeroExit(devnet: Devnet, tmp_path: Path, name, args, message) -> None:
    if name in ("host_model", "configure_node"):
        args = [*args, "--config", str(tmp_path / "node.json")]
    if name == "new_keystore":
        (tmp_path / "pw").write_text("long-enough-password\n")
        (tmp_path / "pw").chmod(0o600)  # a password file only its owner reads
        args = [*args, "--password-file", str(tmp_path / "pw")]
    if name == "host_model":
        ok(
            script(
                devnet,
                "configure_node",
                "--ram",
                "64",
                "--storage",
                "100",
                "--config",
                str(tmp_path / "node.json"),
            )
        )
    fails(script(devnet, name, *args), message)


def test_wrongNetwork_refused(devnet: Devnet, tmp_path: Path) -> None:
    other = json.loads((devnet.state_dir / "deployment.json").read_text()) | {"chain_id": 1}
    (tmp_path / "mainnet.json").write_text(json.dumps(other))
    fails(script(devnet, "status", "--deployment", str(tmp_path / "mainnet.json")), "is for chain 1")


def test_lockedKeystore_refused(devnet: Devnet, operator_files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not the password\n")
    (tmp_path / "wrong").chmod(0o600)  # a password file only its owner reads
    result = script(
        devnet,
        "deposit",
        "--keystore",
        str(operator_files["keystore"]),
        "--password-file",
        str(tmp_path / "wrong"),
        "--amount",
        "1",
    )
    fails(result, "wrong password")


def test_devnet_restartResumesTheSameChain(devnet: Devnet, operator_files: dict[str, Path]) -> None:
    before = json.loads((devnet.state_dir / "deployment.json").read_text())
    assert devnet.stop() == 0
    devnet.start()
    after = json.loads((devnet.state_dir / "deployment.json").read_text())
    assert after == before
    status = ok(script(devnet, "status"))
    assert "my-awesome-node" in status  # state survived the restart


def test_status_pipedIntoAReaderThatLeaves_exitsQuietly(devnet: Devnet) -> None:
    """`status | head`: the reader may be gone before status writes (here `true` leaves at once,
    while status is still reading the chain), and the write then fails with a broken pipe."""
    result = subprocess.run(
        f"{sys.executable} -m scripts.status | true; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=ROOT,
        env={**devnet.env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_setupNode_createsKeystoreAndConfigIdempotently(tmp_path: Path) -> None:
    from chain.accounts import load_keystore
    from node.config import load_config

    (tmp_path / "pw").write_text("a-good-password\n")
    (tmp_path / "pw").chmod(0o600)  # a password file only its owner reads
    cmd = [
        str(ROOT / "scripts" / "setup-node.sh"),
        "--dir",
        str(tmp_path / "home"),
        "--password-file",
        str(tmp_path / "pw"),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    keystore = tmp_path / "home" / "node-keystore.json"
    assert keystore.stat().st_mode & 0o777 == 0o600
    address = load_keystore(keystore, "a-good-password").address
    config = load_config(tmp_path / "home" / "node.json")
    assert config.chain.keystore == keystore
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "keystore exists" in second.stdout
    assert load_keystore(keystore, "a-good-password").address == address  # not replaced


def test_publishModel_addsToTheDevnetsKuboAndProposesWithKubosCid(devnet: Devnet, tmp_path: Path) -> None:
    """PATH mode on `make devnet`: the file goes to the devnet's kubo (found through LLM_MESH_KUBO_API),
    the CID on chain is the one kubo reports, and the pinned file survives a devnet restart."""
    import hashlib

    model = write_tiny_llama(tmp_path / "tiny.gguf")
    args = ["--dev-account", "2", "--name", "tiny-model", "--context", "2048", "--price-per-1k", "0.001"]
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    refused = script(devnet, "publish_model", str(text), *args)
    assert refused.returncode == 1 and "not start with the GGUF magic" in refused.stderr
    assert "pinned" not in refused.stdout  # refused before anything was added or proposed
    out = ok(script(devnet, "publish_model", str(model), *args, "--specialties", "python"))
    cid = out.split(" as ", 1)[1].split()[0]
    kubo_cid = httpx.post(
        f"{devnet.kubo_api}/api/v0/add",
        params={"cid-version": 1, "raw-leaves": "true", "chunker": "size-1048576", "only-hash": "true"},
        files={"file": model.read_bytes()},
    )
    assert kubo_cid.json()["Hash"] == cid
    status = ok(script(devnet, "status"))
    assert "tiny-model" in status and cid in status
    again = ok(script(devnet, "publish_model", str(model), *args, "--specialties", "python"))
    assert "is already model" in again
    assert hashlib.sha256(model.read_bytes()).hexdigest() in out

    assert devnet.stop() == 0
    devnet.start()
    pins = httpx.post(f"{devnet.kubo_api}/api/v0/pin/ls", params={"arg": cid}, timeout=10).json()
    assert cid in pins["Keys"]
    cat = httpx.post(f"{devnet.kubo_api}/api/v0/cat", params={"arg": cid}, timeout=30)
    assert cat.content == model.read_bytes()


def test_faucet_fundsAFreshKeystoreThatThenRegisters(devnet: Devnet, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("fresh-operator-pw\n")
    (tmp_path / "pw").chmod(0o600)  # a password file only its owner reads
    keystore = tmp_path / "fresh.json"
    address = ok(
        script(devnet, "new_keystore", str(keystore), "--password-file", str(tmp_path / "pw"))
    ).split()[0]
    account = ["--keystore", str(keystore), "--password-file", str(tmp_path / "pw")]
    register = ["--node-id", "fresh-node", "--endpoint", "http://127.0.0.1:18081", "--stake", "1200"]
    fails(script(devnet, "register_node", *account, *register), "insufficient balance")

    fails(script(devnet, "faucet", "--dev-account", "1", "--to", address, "--amount", "5"), "cannot mint")
    fails(script(devnet, "faucet", "--dev-account", "0", "--to", "0x1234", "--amount", "5"), "not an address")
    out = ok(script(devnet, "faucet", "--dev-account", "0", "--to", address, "--amount", "1500"))
    assert "minted 1,500 MESH" in out and "1 ether for gas" in out
    again = ok(script(devnet, "faucet", "--dev-account", "0", "--to", address, "--amount", "1"))
    assert "holds 1,501 MESH" in again and "ether" not in again  # gas already there: nothing sent

    out = ok(script(devnet, "register_node", *account, *register))
    assert "staked 1,200 MESH" in out and "registered fresh-node" in out


def _answers(url: str) -> bool:
    try:
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=2)
    except httpx.TransportError:
        return False
    return True


@pytest.mark.parametrize(
    "signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["term", "int-twice"]
)
def test_devnet_stopSignals_stopAnvilAndKuboToo(tmp_path: Path, signals: list[int]) -> None:
    """SIGTERM, or a second Ctrl-C during shutdown, must not leave Anvil or kubo running."""
    net = Devnet(tmp_path / "devnet")
    net.start()
    anvil_url, kubo_url = f"http://127.0.0.1:{net.port}", f"{net.kubo_api}/api/v0/id"
    assert _answers(anvil_url) and _answers(kubo_url)
    for sig in signals:
        net.proc.send_signal(sig)
        time.sleep(0.05)
    assert net.proc.wait(timeout=60) == 0
    net.proc.stdout.close()
    assert not _answers(anvil_url) and not _answers(kubo_url)


def test_parseAmount_isExactForEveryDigit() -> None:
    from scripts.common import UsageError, parse_amount

    assert parse_amount("99999999999.999999999999999999") == 99999999999999999999999999999  # not rounded up
    assert parse_amount("0.000000000000000001") == 1 and parse_amount("2e3") == 2000 * 10**18
    assert parse_amount("1.500000000000000000000") == 15 * 10**17  # trailing zeros are not decimals
    for bad in ("1000.000000000000000000000000000001", "1e80", "1e999999999", "0", "-1", "nan", "1,5"):
        with pytest.raises(UsageError):
            parse_amount(bad)


def test_registerNode_refusesBeforeStakingWhatRegisteringWouldRefuse(devnet: Devnet) -> None:
    """A taken node id, or stake that is unbonding, must be refused before any token moves."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(devnet.env["LLM_MESH_RPC_URL"]))
    deployment = json.loads((devnet.state_dir / "deployment.json").read_text())
    nodes = w3.eth.contract(address=deployment["node_registry"], abi=load_artifact("NodeRegistry").abi)
    endpoint = ["--endpoint", "http://127.0.0.1:18090"]
    ok(
        script(
            devnet,
            "register_node",
            "--dev-account",
            "7",
            "--node-id",
            "taken-id",
            *endpoint,
            "--stake",
            "1500",
        )
    )
    eight = dev_account(8).address
    before = nodes.functions.getNode(eight).call()[4]
    taken = ["--dev-account", "8", "--node-id", "taken-id", *endpoint, "--stake", "1500"]
    fails(script(devnet, "register_node", *taken), "belongs to")
    assert nodes.functions.getNode(eight).call()[4] == before  # nothing staked

    ok(script(devnet, "unbond", "--dev-account", "7", "--amount", "400"))
    again = ["--dev-account", "7", "--node-id", "taken-id", *endpoint, "--stake", "1500"]
    fails(script(devnet, "register_node", *again), "unbond.py --cancel")
    ok(script(devnet, "unbond", "--dev-account", "7", "--cancel"))
    assert "staked" not in ok(script(devnet, "register_node", *again))  # back at 1,500: nothing to add


def test_configureNode_replacesAConfigThatNoLongerValidates(devnet: Devnet, tmp_path: Path) -> None:
    config = tmp_path / "node.json"
    config.write_text('{"node_id": "old", "endpoint": "http:", "hardware": {"cpu_cores": 2}}')
    result = script(devnet, "configure_node", "--config", str(config), "--ram", "64", "--storage", "100")
    assert "wrote" in ok(result) and "no longer validates" in result.stderr
    assert json.loads(config.read_text())["endpoint"] == "http://127.0.0.1:8090"  # not kubo's 8080
