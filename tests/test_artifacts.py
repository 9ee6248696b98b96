"""The committed artifacts must be exactly what the current sources compile to."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from chain.artifacts import ARTIFACT_DIR, CONTRACT_NAMES, load_artifact
from tests.conftest import ROOT, tool
from tools.export_artifacts import artifact, render


@pytest.fixture(scope="module")
def fresh_out(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("forge")
    env = {**os.environ, "FOUNDRY_OUT": str(out / "out"), "FOUNDRY_CACHE_PATH": str(out / "cache")}
    build = subprocess.run(
        [tool("forge"), "build", "--skip", "./contracts/test/**"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out / "out"


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_committedArtifact_matchesFreshCompile(fresh_out, name: str) -> None:
    committed = (ARTIFACT_DIR / f"{name}.json").read_text()
    assert committed == render(artifact(fresh_out, name)), f"{name} artifact is stale: run `make contracts`"


def test_loadArtifact_givesAbiAndBytecode() -> None:
    settlement = load_artifact("Settlement")
    # CBOR metadata at the end: "solc" followed by the version bytes 0.8.37 (0x000825).
    assert settlement.bytecode.endswith("64736f6c63430008250033")
    assert settlement.abi_entry("function", "settle")["inputs"][0]["type"] == "tuple[]"
    assert json.loads((ARTIFACT_DIR / "Settlement.json").read_text())["compiler"].startswith("0.8.37")
