"""``labd train``, ``labd twin collect|fit``, ``labd reproduce`` and ``labd demo``: the trainer's
commands, defined in ``labd.train.cli``."""

from __future__ import annotations

import argparse

from labd.train import cli


def register(sub: argparse._SubParsersAction) -> None:
    cli.register(sub)
