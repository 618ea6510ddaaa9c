"""Imports point down: protocols < drivers < labd (issue 15 point 3). Drivers, and the plugin
packages built on them, know nothing of the daemon, the store or the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports (absolute imports, wherever they sit in it)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_drivers_protocols_and_the_example_plugin_import_nothing_of_labd():
    below = {"protocols": {"labd", "drivers"}, "drivers": {"labd"},
             "examples/duffing-chain/src": {"labd"}}
    offenders = []
    for folder, forbidden in below.items():
        files = sorted((ROOT / folder).rglob("*.py"))
        assert files, folder
        for path in files:
            wrong = imported(path) & forbidden
            if wrong:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert offenders == []
