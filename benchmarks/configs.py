"""The loopback system the transport, monitor and store benchmarks serve, as TOML."""

from __future__ import annotations

LOOPBACK = """
[systems.{name}]
kind = "loopback"
input_dim = {dim}
param_dim = {dim}
output_dim = {dim}
input_range = [-1.0, 1.0]
param_range = [-1.0, 1.0]
inline = true
encoding = {{ layout = "add" }}
bench = {{ seed = 0, timing = "fast" }}
drive = {{ driver = "sim.dac" }}
detector = {{ driver = "sim.adc" }}
{more}"""


def loopback(name: str, dim: int, more: str = "") -> str:
    """The table ``[systems.NAME]``: an inline loopback (``y = x + theta`` through the
    simulated DAC and ADC, fast timing) with ``dim`` inputs, parameters and outputs;
    ``more``: further ``key = value`` lines of the table."""
    return LOOPBACK.format(name=name, dim=dim, more=more)
