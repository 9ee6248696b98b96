"""The packages import only downward: chain and storage nothing of ours, protocol only chain,
node and router only chain, storage and protocol, scripts anything; nothing imports scripts
(DESIGN.md, Layout). Inside a package, no two modules import each other, directly or round a
longer circle (imports inside functions count too: a late import hides a circle, it does not
remove it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

OURS = {"chain", "storage", "protocol", "node", "router", "scripts"}
ALLOWED = {
    "chain": set(),
    "storage": set(),
    "protocol": {"chain"},
    "node": {"chain", "storage", "protocol"},
    "router": {"chain", "storage", "protocol"},
    "scripts": {"chain", "storage", "protocol", "node", "router"},
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


def module_imports(path: Path, package: str, name: str | None = None) -> set[str]:
    """The modules of `package` that the module at `path` (named `name`) imports, anywhere in it."""
    name = name or _module_name(path, package)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = ".".join(name.split(".")[: -node.level])
                module = f"{base}.{node.module}" if node.module else base
                found |= {f"{module}.{a.name}" for a in node.names} | {module}
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    modules = set(_package_modules(package))
    return {m for m in found if m in modules} - {name}


def _module_name(path: Path, package: str) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules(package: str) -> dict[str, Path]:
    return {_module_name(p, package): p for p in sorted((ROOT / package).rglob("*.py"))}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (module -> modules it imports), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (circle := visit(target, [*path, target])):
                return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module, [module])):
            return circle
    return None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_hasNoImportCircleInside(package: str) -> None:
    # A package's __init__ re-exports its modules; only circles among the modules themselves count.
    graph = {
        name: {m for m in module_imports(path, package) if m != package}
        for name, path in _package_modules(package).items()
        if name != package
    }
    assert find_circle(graph) is None, f"import circle in {package}: {' -> '.join(find_circle(graph))}"


def test_findCircle_seesDirectAndLongerCircles() -> None:
    assert find_circle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_moduleImports_seesLateAndRelativeImports(tmp_path: Path) -> None:
    late = tmp_path / "late.py"
    late.write_text("def f():\n    from chain.artifacts import load_artifact\n")
    assert module_imports(late, "chain", "chain.late") == {"chain.artifacts"}
    relative = tmp_path / "rel.py"
    relative.write_text("from . import artifacts\nfrom .errors import ChainError\n")
    assert module_imports(relative, "chain", "chain.rel") == {"chain", "chain.artifacts", "chain.errors"}


@pytest.mark.parametrize(
    "script", sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem != "__init__")
)
def test_scripts_doNotImportTheWebFramework(script: str) -> None:
    """A CLI starts fast and works without the server stack: FastAPI is the gateway's, not storage's."""
    code = (
        f"import sys, scripts.{script}; print(sorted(m for m in ('fastapi', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
