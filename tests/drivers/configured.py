"""A system of a labd configuration as the driver tests use it: the config's fields, and its
mapping's (``encode``, ``channels``, ``input_dim``, ``drive_span()``...) at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labd.config import SystemConfig, load_config


class ConfiguredSystem:
    def __init__(self, config: SystemConfig) -> None:
        self.config = config

    def __getattr__(self, name: str) -> Any:
        if hasattr(self.config, name):
            return getattr(self.config, name)
        return getattr(self.config.mapping, name)


def configured(config: str | Path | None, name: str) -> ConfiguredSystem:
    """System ``name`` of ``config`` (None: the embedded default)."""
    return ConfiguredSystem(load_config(config).systems[name])
