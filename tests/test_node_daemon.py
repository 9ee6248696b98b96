"""The node daemon end to end, as an operator runs it: `python -m node --config node.json` against a
real Anvil and kubo. A model approved while it runs is fetched, verified and served (also the real
Gemma model, with its own chat template), hosted ids land on chain, a deprecated model is unloaded,
SIGTERM lets a running stream finish."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest

from chain.views import model_info
from storage.cid import Cid
from tests.conftest import ROOT
from tests.market_fixtures import OPERATOR, Net, tiny


def test_daemon_servesApprovedModel_hostsOnChain_unloadsDeprecated_stopsGracefully(
    net: Net, daemon_factory
) -> None:
    net.register(OPERATOR)
    node = daemon_factory([{"name": "tiny-coder", "threads": 2, "n_ctx": 512}])
    node.until(
        lambda: httpx.get(node.url + "/health", timeout=5).status_code == 200, what="the node to listen"
    )
    assert node.models() == []
    path = tiny(net.tmp, "tiny-coder", seed=11)
    model_id = asyncio.run(net.publish("tiny-coder", path))
    node.until(lambda: node.models() == ["tiny-coder"], what="the approved model to be served")
    answer = node.client().completions.create(model="tiny-coder", prompt="def fix", max_tokens=8)
    assert answer.usage.completion_tokens >= 1
    chat = node.client().chat.completions.create(
        model="tiny-coder", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.usage.prompt_tokens > 3
    node.until(lambda: net.hosted_on_chain() == [model_id], what="hosted ids on chain")
    # The trustless gateway serves the blocks of the model it hosts.
    cid = model_info(net.models, model_id).cid
    block = httpx.get(node.url + f"/ipfs/{cid}", headers={"Accept": "application/vnd.ipld.raw"}, timeout=10)
    assert block.status_code == 200 and Cid.parse(cid).matches(block.content)

    # SIGTERM while a stream runs: the stream finishes, then the daemon exits 0.
    with (
        httpx.Client(timeout=60) as c,
        c.stream(
            "POST",
            node.url + "/v1/completions",
            json={
                "model": "tiny-coder",
                "prompt": "x",
                "max_tokens": 300,
                "stream": True,
                "temperature": 1.0,
            },
        ) as stream,
    ):
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        net.deprecate(model_id)
        node.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    assert node.stop() == 0
    log = node.log.read_text()
    assert "event=service_stopping service=http" in log and "Traceback" not in log


def test_daemon_deprecatedModel_isUnloadedWhileRunning(net: Net, daemon_factory) -> None:
    path = tiny(net.tmp, "tiny-a", seed=12)
    model_id = asyncio.run(net.publish("tiny-a", path))
    node = daemon_factory([{"name": "tiny-a", "threads": 2, "n_ctx": 512, "eager": True}])
    node.until(
        lambda: (
            httpx.get(node.url + "/health", timeout=5).json()["models"].get("tiny-a", {}).get("state")
            == "ready"
        ),
        what="the eager model to load",
    )
    pid = httpx.get(node.url + "/health", timeout=5).json()["models"]["tiny-a"]["pid"]
    net.deprecate(model_id)
    node.until(lambda: node.models() == [], what="the deprecated model to leave the served set")
    with pytest.raises(openai.NotFoundError):
        node.client().completions.create(model="tiny-a", prompt="x", max_tokens=2)
    node.until(lambda: not Path(f"/proc/{pid}").exists(), what="the worker process to exit")
    assert node.stop() == 0


def test_daemon_badConfig_exitsWithTheReason(tmp_path: Path) -> None:
    bad = tmp_path / "node.json"
    bad.write_text('{"node_id": "x"}')
    result = subprocess.run(
        [sys.executable, "-m", "node", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "hardware" in result.stderr and "is invalid" in result.stderr


def test_daemon_portTaken_failsAtStartWithTheReason(net: Net, daemon_factory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = daemon_factory([], listen=f"127.0.0.1:{port}")
        assert node.proc.wait(60) == 1
    assert "cannot listen on 127.0.0.1" in node.log.read_text()


def test_daemon_realGemmaModel_chatWithItsTemplate(net: Net, daemon_factory, gemma_model: Path) -> None:
    node = daemon_factory([{"name": "gemma3-270m", "threads": 2, "n_ctx": 2048, "slots": 2}])
    asyncio.run(net.publish("gemma3-270m", gemma_model))
    node.until(lambda: node.models() == ["gemma3-270m"], timeout=180, what="the real model to be served")
    chat = node.client().chat.completions.create(
        model="gemma3-270m",
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers."}],
        max_tokens=48,
        temperature=0,
    )
    assert chat.choices[0].message.content.strip() and chat.usage.completion_tokens >= 8
    # The prompt was Gemma's turn format (the built-in: the file has no template), special tokens
    # parsed as tokens and one BOS: exactly what llama.cpp's own tokenizer makes of it.
    vocab = llama_cpp.Llama(model_path=str(gemma_model), vocab_only=True, verbose=False)
    expected = "<bos><start_of_turn>user\nWrite a Python function that adds two numbers.<end_of_turn>\n"
    expected += "<start_of_turn>model\n"
    assert chat.usage.prompt_tokens == len(vocab.tokenize(expected.encode(), add_bos=False, special=True))
    # Greedy decoding picks what llama.cpp's own greedy sampler picks, token for token: the
    # reference path (logits of a single-sequence run) against llama-cpp-python in-process.
    prompt = "def add(a, b):\n    "
    llm = llama_cpp.Llama(model_path=str(gemma_model), n_ctx=2048, n_threads=2, verbose=False)
    want = llm.create_completion(prompt, max_tokens=32, temperature=0)
    got = node.client().completions.create(
        model="gemma3-270m", prompt=prompt, max_tokens=32, temperature=0, extra_body={"reference": True}
    )
    assert got.choices[0].text == want["choices"][0]["text"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    health = httpx.get(node.url + "/health", timeout=5).json()
    assert health["models"]["gemma3-270m"]["state"] == "ready"
    rss = health["models"]["gemma3-270m"]["rss_bytes"]
    assert rss and rss < 4 * os.path.getsize(gemma_model)
    assert node.stop() == 0
