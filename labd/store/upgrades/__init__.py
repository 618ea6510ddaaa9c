"""Upgrade steps of the store's layout (``labd.store.database``), one module each; none yet.

Module ``vN`` defines ``upgrade(conn)``, bringing version N - 1 to N inside the transaction
``database.prepare`` commits; ``STEPS`` maps N (from 2, no gap) to it. Steps never change.
"""

from __future__ import annotations

import importlib
import pkgutil
import sqlite3
from collections.abc import Callable


def find_steps(path: list[str], package: str) -> dict[int, Callable[[sqlite3.Connection], None]]:
    steps = {int(m.name[1:]): importlib.import_module(f"{package}.{m.name}").upgrade
             for m in pkgutil.iter_modules(path) if m.name[0] == "v" and m.name[1:].isdigit()}
    if sorted(steps) != list(range(2, 2 + len(steps))):
        raise ImportError(f"{package}: steps {sorted(steps)} do not run from v2 without a gap")
    return steps


STEPS = find_steps(__path__, __name__)
