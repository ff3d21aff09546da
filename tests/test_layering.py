"""Imports point down: the web tier never imports ``workers`` (it enqueues tasks by name), and
no two of webapp's packages import each other (edges -> domains -> platform/realtime ->
models). Read from the source, so a new upward import fails here, named."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("platform", "realtime", "presence", "messaging", "delivery", "admin", "api", "sockets")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _package(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "webapp" and parts[1] in PACKAGES:
        return parts[1]
    return None


def _webapp_modules() -> dict[Path, set[str]]:
    return {path: _imports(path) for path in (ROOT / "webapp").rglob("*.py")}


def test_the_web_tier_never_imports_workers():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in _webapp_modules().items()
        for name in names
        if name == "workers" or name.startswith("workers.")
    ]
    assert not offenders, offenders


def test_no_two_packages_import_each_other():
    edges: dict[tuple[str, str], str] = {}
    for path, names in _webapp_modules().items():
        source = _package(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name in names:
            target = _package(name)
            if source and target and source != target:
                edges.setdefault((source, target), f"{path.relative_to(ROOT)} imports {name}")
    mutual = [
        f"{a} <-> {b}: {edges[(a, b)]}; {edges[(b, a)]}"
        for (a, b) in edges
        if (b, a) in edges and a < b
    ]
    assert not mutual, mutual
