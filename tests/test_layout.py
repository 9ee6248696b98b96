"""The packages import only downward: chain and storage nothing of ours, node and router only chain and
storage, scripts anything; nothing imports scripts (DESIGN.md, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

OURS = {"chain", "storage", "node", "router", "scripts"}
ALLOWED = {
    "chain": set(),
    "storage": set(),
    "node": {"chain", "storage"},
    "router": {"chain", "storage"},
    "scripts": {"chain", "storage", "node", "router"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that `path` imports (absolute imports only; relative ones stay
    inside the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & OURS
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_importsOnlyDownward(package: str) -> None:
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"imports against the layout: {wrong}"


def test_importedPackages_seesBothImportForms(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import chain.tx\nfrom storage.cid import Cid\nfrom . import sibling\nimport os\n")
    assert imported_packages(source) == {"chain", "storage"}
