"""`make demo`'s script end to end: the whole network on this machine with the real Gemma model
(Anvil, kubo, three staked nodes, the router, a paying user). Run as `make devnet NETWORK=1` runs
it (--keep-running), so the test also asks the running network with the openai client before
Ctrl-C; then: exit 0, the split summing exactly to what the user paid, no process left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.conftest import ROOT

PARTS = ("node operators (30%)", "developers (25%)", "HYSA vault (20%)", "infrastructure (15%)", "R&D (10%)")


def processes() -> dict[int, str]:
    """pid -> command line of every process on the machine (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return out


def test_demo_runsTheWholeNetworkServesWhileUpSettlesExactlyAndLeavesNothing(
    tmp_path: Path, gemma_model
) -> None:
    before = processes()
    demo = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--work", str(tmp_path / "demo"), "--keep-running"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 600
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if up := re.match(r"the network is up: router (http://127\.0\.0\.1:\d+/v1)", line):
                break
            assert time.monotonic() < deadline, "".join(lines)[-4000:]
        else:
            raise AssertionError("the demo ended before the network was up:\n" + "".join(lines)[-4000:])
        client = openai.OpenAI(base_url=up.group(1), api_key="unused", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            extra_body={"task_type": "debug"},
        )
        assert answer.model == "gemma-3-270m" and answer.usage.completion_tokens >= 1
        demo.send_signal(signal.SIGINT)  # Ctrl-C: settle, summarise, stop everything
        rest, _ = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
    out = "".join(lines) + rest
    assert demo.returncode == 0, out[-4000:]
    assert "split sums exactly to what the user paid: yes" in out
    assert all(f"--- {task}:" in out for task in ("fix", "refactor", "debug"))
    assert all(part in out for part in PARTS)
    started = {pid: cmd for pid, cmd in processes().items() if pid not in before and cmd}
    ours = ("-m node", "-m router", "anvil", "ipfs", "multiprocessing")
    leftovers = {pid: cmd for pid, cmd in started.items() if any(word in cmd for word in ours)}
    assert leftovers == {}, f"processes left behind: {leftovers}"
