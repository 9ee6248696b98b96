"""The router end to end: `python -m router` in front of three paid nodes (`python -m node`), real
Anvil, kubo and llama.cpp. The official openai client works against it unchanged, requests spread
over the hosts and are paid per node, receipts settle on chain for every host used, a killed node
is failed over, and a stream that breaks after its first tokens ends with an error event."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal

import httpx
import openai
import pytest

from chain.tx import TxSender
from router.config import build_router_config
from router.sdk import MeshClient, MeshError, ModelRegistry, ModelResponse
from scripts import ask
from scripts.common import UsageError
from storage.daemon import free_port
from tests.router_fixtures import (
    ASK_PAYER_INDEX,
    MODEL,
    OPERATORS,
    PAYER,
    SDK_PAYER,
    SDK_PAYER_INDEX,
    Mesh,
    RouterProcess,
)

OPERATOR_ACCOUNTS = {account.address: account for account in OPERATORS}


def ledgers(m: Mesh) -> dict[str, dict[str, str]]:
    return m.router.health()["payer"]["ledgers"]


def test_openaiClient_worksUnchangedAndEveryHostUsedIsPaidAndSettled(mesh: Mesh) -> None:
    client = mesh.router.client()
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {MODEL}
    info = listed[MODEL].model_dump()
    assert info["context_window"] == 512 and len(info["available_hosts"]) == 3

    answer = client.completions.create(model=MODEL, prompt="def fix", max_tokens=8, temperature=0)
    assert answer.usage.completion_tokens >= 1 and answer.choices[0].text
    served = answer.model_extra["llm_mesh"]
    assert served["model"] == MODEL and served["node"] in mesh.nodes and int(served["cost"]) > 0

    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_body={"task_type": "fix"},
    )
    assert chat.model == MODEL  # the fix task's preferred model has no host: the hosted one served
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="def add", max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and 1 <= sum(1 for c in chunks if c.choices and c.choices[0].text) <= 8
    final = next(c for c in chunks if c.model_extra.get("llm_mesh"))  # the summary rides in the final chunk
    assert final.model_extra["llm_mesh"]["completion_tokens"] == usage.completion_tokens

    # Concurrent requests spread over the hosts (load is part of the score).
    def ask(i: int) -> str:
        a = mesh.router.client().completions.create(model=MODEL, prompt=f"x{i}", max_tokens=64, temperature=0)
        return a.model_extra["llm_mesh"]["node"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        used = set(pool.map(ask, range(12)))
    assert len(used) >= 2, used

    # Every node used ends up holding the payer's newest countersigned receipt, and settles it.
    mesh.router.until(
        lambda: all(entry["delivered"] for entry in ledgers(mesh).values()), what="receipts delivered"
    )
    owed = {node: int(entry["amount"]) for node, entry in ledgers(mesh).items()}
    assert set(owed) >= used and all(amount > 0 for amount in owed.values())
    for node in mesh.nodes.values():
        assert node.stop() == 0  # a graceful stop settles what is unpaid
    settlement = mesh.net.market.contract("Settlement")
    for operator, amount in owed.items():
        paid, _tokens = settlement.functions.channelOf(PAYER.address, operator).call()
        assert paid == amount, operator
        assert settlement.functions.earnings(operator).call() == settlement.functions.split(amount).call()[0]


def test_errors_keepOpenAIsShape(mesh: Mesh) -> None:
    client = mesh.router.client()
    with pytest.raises(openai.NotFoundError, match="'nope' is not approved on this network"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="task_type must be a printable name"):
        client.completions.create(model="auto", prompt="x", max_tokens=2, extra_body={"task_type": "a\x00b"})
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=-1)
    response = httpx.post(mesh.router.url + "/v1/completions", content=b"{", timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_aKilledNode_isFailedOverTransparentlyAndBackedOff(mesh: Mesh) -> None:
    client = mesh.router.client()
    first = client.completions.create(model=MODEL, prompt="def fix", max_tokens=4).model_extra["llm_mesh"][
        "node"
    ]
    mesh.kill(first)  # the router has not noticed yet: its next choice is likely this node again
    for _ in range(4):
        answer = client.completions.create(model=MODEL, prompt="def fix", max_tokens=4)
        assert answer.model_extra["llm_mesh"]["node"] != first
    stream = client.completions.create(model=MODEL, prompt="def add", max_tokens=4, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)
    assert first not in mesh.router.alive()


def test_aStreamThatBreaksAfterItsFirstTokens_endsWithAnErrorEvent(mesh: Mesh) -> None:
    client = mesh.router.client()
    stream = client.completions.create(
        model=MODEL, prompt="def fix", max_tokens=2000, temperature=0, stream=True
    )
    received = 0
    with pytest.raises(openai.APIError, match="broke off after") as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                received += 1
            if received == 1:
                node = chunk.model_extra["llm_mesh"]["node"] if chunk.model_extra.get("llm_mesh") else None
                operator = node or _serving(mesh)
                worker = _worker_pid(mesh, operator)
                os.kill(worker, signal.SIGSTOP)  # no more tokens, then the node dies
                mesh.kill(operator)
    assert received >= 1
    assert "only those are paid for" in str(caught.value)


def test_aClientThatLeavesMidStream_endsTheNodesRequestAtOnce(mesh: Mesh) -> None:
    """The node's worker is stopped after the first token, so the stream can only end by the
    client leaving: the router must notice that itself, end its request to the node (inflight 0)
    and take the cut request's bill for what arrived."""
    body = {"model": MODEL, "prompt": "def fix", "max_tokens": 2000, "temperature": 0, "stream": True}
    worker, logged = None, len(mesh.router.log.read_bytes())  # the log of earlier tests is not ours
    with httpx.stream("POST", mesh.router.url + "/v1/completions", json=body, timeout=60) as response:
        operator = response.headers["x-llm-mesh-node"]
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                worker = _worker_pid(mesh, operator)
                os.kill(worker, signal.SIGSTOP)
                break
    assert worker is not None
    try:
        mesh.router.until(
            lambda: mesh.router.health()["nodes"][operator]["inflight"] == 0, 10, "the router to let go"
        )
    finally:
        os.kill(worker, signal.SIGCONT)
    client = mesh.router.client()
    for _ in range(3):  # the next requests carry the cut one's bill; none may be refused
        assert client.completions.create(model=MODEL, prompt="def add", max_tokens=4).choices[0].text
    assert b"receipt_refused" not in mesh.router.log.read_bytes()[logged:]


def test_aGetOnACompletionRoute_is405InOpenAIsShape(mesh: Mesh) -> None:
    response = httpx.get(mesh.router.url + "/v1/chat/completions", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def _serving(mesh: Mesh) -> str:
    """The node with a request in flight, as the router sees it."""
    nodes = mesh.router.health()["nodes"]
    return next(op for op, n in nodes.items() if n["inflight"])


def _worker_pid(mesh: Mesh, operator: str) -> int:
    health = httpx.get(mesh.nodes[operator].url + "/health", timeout=5).json()
    return int(health["models"][MODEL]["pid"])


def test_sdk_inProcessAndThroughARunningRouter_answerAlike(mesh: Mesh, tmp_path) -> None:
    payer = SDK_PAYER  # its own payer: one payer's ledger belongs to one router at a time
    chain = {
        "rpc_url": mesh.net.rpc_url,
        "deployment": mesh.net.deployment_file,
        "dev_account": SDK_PAYER_INDEX,
    }
    config = build_router_config(None, chain=chain, state_dir=tmp_path / "sdk", probe_interval_s=0.5)
    with MeshClient(config=config) as local, MeshClient(mesh.router.url) as remote:
        for client in (local, remote):
            answer = client.complete_sync("def fix", model_name=MODEL, max_tokens=8)
            assert answer.node in mesh.nodes and answer.model == MODEL
            assert answer.completion_tokens >= 1 and answer.cost > 0 and answer.text

            stream = client.stream("def add", task_type="fix", max_tokens=8)
            text = "".join(stream)
            assert stream.response is not None and stream.response.text == text and stream.response.cost > 0

            async def collect(client=client) -> tuple[str, ModelResponse]:
                stream = client.stream("def sub", max_tokens=8)
                pieces = [piece async for piece in stream]
                return "".join(pieces), stream.response

            text, response = asyncio.run(collect())
            assert response.text == text and response.completion_tokens >= 1

            info = ModelRegistry(client).get_model_info(MODEL)
            assert len(info["available_hosts"]) == 3 and info["context_window"] == 512
            with pytest.raises(MeshError, match="'nope' is not approved") as caught:
                asyncio.run(client.complete("x", model_name="nope"))
            assert caught.value.status == 404
    owed = mesh.net.market.contract("Settlement").functions.escrowOf(payer.address).call()
    assert owed[0] == 10**18  # nothing settled yet: the nodes hold the receipts


def test_askScript_printsTheAnswerWhoServedItTokensAndCost(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    assert ask.main(["def fix", "--task", "fix", "--max-tokens", "8", "--router", mesh.router.url]) == 0
    out = capsys.readouterr().out
    served = re.search(
        r"served by node (0x[0-9a-fA-F]{40}) with tiny-coder: \d+ prompt \+ (\d+) completion", out
    )
    assert served and served.group(1) in mesh.nodes and 1 <= int(served.group(2)) <= 8
    assert re.search(r"cost 0\.0000\d+ MESH", out)

    monkeypatch.setenv("LLM_MESH_ROUTER_STATE_DIR", str(tmp_path / "ask"))
    chain = ["--rpc-url", mesh.net.rpc_url, "--deployment", str(mesh.net.deployment_file)]
    account = ["--dev-account", str(ASK_PAYER_INDEX)]
    assert ask.main(["def add", "--model", MODEL, "--max-tokens", "4", *account, *chain]) == 0
    assert "served by node 0x" in capsys.readouterr().out
    with pytest.raises(UsageError, match="pay with --keystore FILE or --dev-account N"):
        ask.main(["x", *chain])


def test_chainChanges_reachRoutingWithoutARestart(mesh: Mesh) -> None:
    """A slash, a moved endpoint and an unbond each change where requests go, as soon as the
    router's chain view sees the event (Anvil: no confirmations)."""
    a, b, c = mesh.nodes
    nodes = mesh.net.nodes
    client = mesh.router.client()

    def served(n: int = 3) -> set[str]:
        return {
            client.completions.create(model=MODEL, prompt="def fix", max_tokens=2).model_extra["llm_mesh"][
                "node"
            ]
            for _ in range(n)
        }

    stake = nodes.functions.minStake().call()
    token, sender = mesh.net.market.contract("NetworkToken"), TxSender(mesh.net.w3, OPERATOR_ACCOUNTS[a])
    mesh.net.admin.send(token.functions.mint(a, stake))
    sender.send(token.functions.approve(nodes.address, stake))
    sender.send(nodes.functions.stake(stake))  # twice the minimum: still active after the slash
    mesh.net.admin.send(nodes.functions.slash(a, stake // 10, "test"))
    mesh.router.until(lambda: mesh.router.health()["nodes"][a]["slashes"] == 1, what="the slash")
    assert a not in served()  # trust falls to a quarter: the clean hosts win

    moved = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    TxSender(mesh.net.w3, OPERATOR_ACCOUNTS[b]).send(nodes.functions.updateEndpoint(moved))
    mesh.router.until(
        lambda: (n := mesh.router.health()["nodes"][b])["endpoint"] == moved and not n["alive"],
        what="b's new endpoint probed",
    )
    assert served() == {c}

    TxSender(mesh.net.w3, OPERATOR_ACCOUNTS[c]).send(nodes.functions.requestUnbond(stake))
    mesh.router.until(lambda: not mesh.router.health()["nodes"][c]["active"], what="c's unbond")
    assert served() == {a}  # slashed, but the only host left with its stake


def test_aRouterKilledMidStream_restartsWithItsLedgerAndSignsTheCutRequestsBill(mesh: Mesh) -> None:
    """kill -9 of the router while a stream runs: the node bills what it sent in its next receipt,
    and the restarted router, which knows that request's auth from its ledger file, countersigns it
    instead of refusing a request it would otherwise have forgotten."""
    only, *others = mesh.nodes
    for operator in others:
        assert mesh.nodes[operator].stop() == 0
    mesh.router.until(lambda: mesh.router.alive() == {only}, what="one node left")
    body = {"model": MODEL, "prompt": "def fix", "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream("POST", mesh.router.url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                mesh.router.proc.kill()  # kill -9 with the stream running
                break
    mesh.router.proc.wait(10)
    home = mesh.router.log.parent
    mesh.router = RouterProcess(mesh.net, home)
    mesh.router.until(lambda: mesh.router.alive() == {only}, what="the restarted router")
    answer = mesh.router.client().completions.create(model=MODEL, prompt="def add", max_tokens=4)
    served = answer.model_extra["llm_mesh"]
    assert served["node"] == only and int(served["cost"]) > 0  # its receipt (with the cut bill) was signed
    ledger = ledgers(mesh)[only]
    assert int(ledger["tokens"]) > answer.usage.completion_tokens  # the cut request's tokens are in it
    assert mesh.router.health()["nodes"][only]["last_error"] is None
    assert "receipt_refused" not in (home / "router.log").read_text()
