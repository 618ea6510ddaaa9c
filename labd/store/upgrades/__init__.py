"""Upgrade steps of the store's layout, one module each; none yet (every store has the initial
layout of ``labd.store.database``).

Module ``vN`` (``v2``, ``v3``, ...) defines ``upgrade(conn)``: it brings a version N - 1 file
to version N inside the transaction ``database.prepare`` opened and commits (must not commit
itself). ``STEPS`` maps N to it, from 2 on without a gap. A published step never changes.
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
