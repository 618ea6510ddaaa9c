"""Helpers of the plugin tests: configuration text, a fake installed distribution, the CLI."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from labd.cli import main


def system(name: str = "lab", drive: str = '{ driver = "sim.dac" }',
           detector: str = '{ driver = "sim.adc" }', bench: str = "{ seed = 0 }",
           extra: str = "", kind: str = "loopback") -> str:
    """One ``[systems.NAME]`` table: a 4-channel loopback unless told otherwise."""
    lines = [f"[systems.{name}]", f'kind = "{kind}"', "input_dim = 4", "param_dim = 4",
             "output_dim = 4", "input_range = [-1.0, 1.0]", "param_range = [-1.0, 1.0]",
             'encoding = { layout = "add" }', f"drive = {drive}", f"detector = {detector}"]
    if bench:
        lines.append(f"bench = {bench}")
    return "\n".join(lines) + "\n" + textwrap.dedent(extra) + "\n"


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write(text, name="rig.toml")``: the text as a file in the test's folder."""

    def make(text: str, name: str = "rig.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return make


@pytest.fixture
def labd(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """``labd(*argv)``: run the command in this process; (exit code, stdout + stderr)."""

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out + out.err

    return run


@pytest.fixture
def distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``distribution(name, version, entry_points, modules)``: an installed distribution as pip
    leaves one (``NAME-VERSION.dist-info`` with ``METADATA`` and ``entry_points.txt``, and its
    modules), in a folder put on ``sys.path`` for this test."""
    site = tmp_path / "site"

    def install(name: str, version: str, entry_points: str, modules: dict[str, str]) -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        for module, text in modules.items():
            path = site / module
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        if str(site) not in sys.path:
            monkeypatch.syspath_prepend(str(site))
        return site

    return install
