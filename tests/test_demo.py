"""`make demo`'s script end to end: the whole network on this machine with the real Gemma model
(Anvil, kubo, three staked nodes, the router, a paying user), exit 0, the split summing exactly to
what the user paid, and no process of it left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


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


def test_demo_runsTheWholeNetworkSettlesExactlyAndLeavesNothingRunning(tmp_path: Path, gemma_model) -> None:
    work = tmp_path / "demo"
    before = processes()
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--work", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "split sums exactly to what the user paid: yes" in out
    for task in ("fix", "refactor", "debug"):
        assert f"--- {task}:" in out
    parts = (
        "node operators (30%)",
        "developers (25%)",
        "HYSA vault (20%)",
        "infrastructure (15%)",
        "R&D (10%)",
    )
    assert all(part in out for part in parts)
    started = {pid: cmd for pid, cmd in processes().items() if pid not in before and cmd}
    ours = ("-m node", "-m router", "anvil", "ipfs", "multiprocessing")
    leftovers = {pid: cmd for pid, cmd in started.items() if any(word in cmd for word in ours)}
    assert leftovers == {}, f"processes left behind: {leftovers}"
