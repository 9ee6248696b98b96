"""The solc wrapper forge and slither use: it must look like native solc and compile for real."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT

WRAPPER = ROOT / "tools" / "solc"
PINNED = json.loads((ROOT / "package.json").read_text())["devDependencies"]["solc"]


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(WRAPPER), *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_version_looksLikeNativeSolc() -> None:
    out = run(["--version"])
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "solc, the solidity compiler commandline interface"
    assert lines[1].startswith(f"Version: {PINNED}+commit.")


def test_standardJson_compilesAndReturnsBytecode() -> None:
    source = (
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\n"
        "contract A { function f() external pure returns (uint256) { return 7; } }"
    )
    request = {
        "language": "Solidity",
        "sources": {"A.sol": {"content": source}},
        "settings": {"outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}},
    }
    out = run(["--standard-json"], json.dumps(request))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert not [e for e in result.get("errors", []) if e["severity"] == "error"]
    contract = result["contracts"]["A.sol"]["A"]
    assert contract["abi"][0]["name"] == "f"
    assert len(contract["evm"]["bytecode"]["object"]) > 100


def _compile_with_import(base, import_path: str) -> dict:
    request = {
        "language": "Solidity",
        "sources": {
            "A.sol": {"content": f'pragma solidity ^0.8.0;\nimport "{import_path}";\ncontract A {{}}'}
        },
        "settings": {"outputSelection": {"*": {"*": ["abi"]}}},
    }
    out = run(["--standard-json", "--base-path", str(base)], json.dumps(request))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_standardJson_resolvesImportsInsideBasePath(tmp_path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "B.sol").write_text(
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\ncontract B {}"
    )
    result = _compile_with_import(tmp_path, "lib/B.sol")
    assert "B" in result["contracts"]["lib/B.sol"]


def test_standardJson_refusesImportsOutsideAllowedPaths(tmp_path) -> None:
    outside = tmp_path / "outside.sol"
    outside.write_text("pragma solidity ^0.8.0;\ncontract Secret {}")
    base = tmp_path / "project"
    base.mkdir()
    result = _compile_with_import(base, "../outside.sol")
    errors = [e["formattedMessage"] for e in result["errors"] if e["severity"] == "error"]
    assert "contracts" not in result
    assert any("File not found inside the allowed paths" in e for e in errors), errors


@pytest.mark.parametrize("args", [[], ["--bin", "A.sol"], ["--base-path"]])
def test_unsupportedArguments_exitWithClearError(args: list[str]) -> None:
    out = run(args)
    assert out.returncode == 2
    assert out.stderr.startswith("solc wrapper: ")
