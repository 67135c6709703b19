"""`verifiers/` stands on its own: nothing in it imports the engine (the engine passes in what a verifier
needs, such as a judge's `generate`, and translates `VerifierError`)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def engine_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else [f"(relative) {node.module}"]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {n}" for n in names if "engine" in n.split(".")]
    return found


def test_no_module_under_verifiers_imports_the_engine() -> None:
    modules = sorted((REPO / "verifiers").rglob("*.py"))
    assert len(modules) >= 7  # the scan sees the package (checks, judges, harness, sandbox, pool, ...)
    assert [found for path in modules for found in engine_imports(path)] == []


def test_the_scan_finds_an_engine_import(tmp_path: Path) -> None:
    module = tmp_path / "planted.py"
    module.write_text(
        "def f():\n    from synthkiln.engine.errors import SynthkilnError\n    import synthkiln.engine\n"
    )
    assert engine_imports(module) == [
        "planted.py:2 synthkiln.engine.errors",
        "planted.py:2 synthkiln.engine.errors.SynthkilnError",
        "planted.py:3 synthkiln.engine",
    ]
