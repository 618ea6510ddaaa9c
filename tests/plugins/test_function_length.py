"""No function in product code (labd/, drivers/, protocols/) is longer than 60 lines
(issue 15): a longer one is doing more than one job."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PRODUCT = ("labd", "drivers", "protocols")
MOST_LINES = 60


def long_functions(source: str, name: str) -> list[str]:
    """``name:line function (N lines)`` for each function or method in ``source``, nested
    ones included, longer than ``MOST_LINES`` from its ``def`` line to its last line."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MOST_LINES:
                found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_product_function_is_longer_than_60_lines():
    files = [path for folder in PRODUCT for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    assert [f for path in files
            for f in long_functions(path.read_text(), str(path.relative_to(ROOT)))] == []


def test_the_check_finds_a_long_method_and_spares_one_of_60_lines():
    def function(keyword: str, name: str, lines: int) -> str:
        return f"    {keyword} {name}(self):\n" + "        pass\n" * (lines - 1)

    source = ("class A:\n" + function("def", "fits", MOST_LINES)
              + function("async def", "too_long", MOST_LINES + 1))
    assert long_functions(source, "a.py") == [f"a.py:{MOST_LINES + 2} too_long (61 lines)"]
