"""Test configurations as TOML text, built in one place.

``loopback("fast", 4, max_batch=8)`` is the table ``[systems.fast]`` of a loopback system
(``y = gain * (x + theta)`` through the simulated DAC and ADC); ``table("server",
queue_depth=64)`` any other table. Concatenate them and write the text to a file.
"""

from __future__ import annotations

import json
from typing import Any

#: What every test loopback has unless a test says otherwise.
LOOPBACK: dict[str, Any] = {
    "encoding": {"layout": "add"},
    "bench": {"seed": 0},
    "drive": {"driver": "sim.dac"},
    "detector": {"driver": "sim.adc"},
}


def toml_value(value: Any) -> str:
    """``value`` (bool, int, float, str, list or dict) as TOML; a dict as an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        return f"[{', '.join(map(toml_value, value))}]"
    if isinstance(value, dict):
        inner = ", ".join(f"{key} = {toml_value(v)}" for key, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}: {value!r}")


def table(name: str, **fields: Any) -> str:
    """The TOML table ``[name]``, one ``key = value`` line per field."""
    lines = [f"[{name}]", *(f"{key} = {toml_value(v)}" for key, v in fields.items())]
    return "\n" + "\n".join(lines) + "\n"


def loopback(name: str, dim: int, **fields: Any) -> str:
    """The table ``[systems.NAME]`` of a loopback with ``dim`` inputs, parameters and outputs
    and ``LOOPBACK``'s defaults; ``fields`` add to those or replace them (an inline table
    whole)."""
    dims = {"input_dim": dim, "param_dim": dim, "output_dim": dim}
    return table(f"systems.{name}", **{"kind": "loopback", **dims, **LOOPBACK, **fields})
