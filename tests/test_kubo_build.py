"""tools/kubo/build.sh: `make` runs it again whenever the cached binary is older than the checkout, with
its own output directory on PATH; it must keep a working link every time (never a link to itself)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from storage.daemon import find_ipfs
from tests.conftest import ROOT

BUILD = ROOT / "tools" / "kubo" / "build.sh"


def run_build(target: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run([str(BUILD), str(target)], env=env, capture_output=True, text=True, timeout=60)


def ipfs_version(binary: Path) -> str:
    return subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30).stdout


def test_build_runTwiceWithItsOwnDirOnPath_keepsAWorkingLink(tmp_path: Path) -> None:
    installed = Path(find_ipfs()).resolve()  # what `make setup` linked: the cached build or an install
    target = tmp_path / "bin" / "ipfs"
    # The first run finds the installed kubo (or the cache); the second also sees its own link on PATH.
    path = f"{target.parent}:{installed.parent}:{os.environ['PATH']}"
    for _ in range(2):
        out = run_build(target, path)
        assert out.returncode == 0, out.stderr
        assert target.is_symlink()
        assert target.resolve() != target
        assert ipfs_version(target).startswith("ipfs version ")


def test_build_relativeTarget_isRecognisedOnPathAsItsOwnLink(tmp_path: Path) -> None:
    installed = Path(find_ipfs()).resolve()
    (tmp_path / "bin").mkdir()
    os.symlink(installed, tmp_path / "bin" / "ipfs")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{installed.parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        [str(BUILD), "bin/ipfs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bin" / "ipfs").resolve() != (tmp_path / "bin" / "ipfs").absolute()
    assert ipfs_version(tmp_path / "bin" / "ipfs").startswith("ipfs version ")
