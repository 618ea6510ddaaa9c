"""Subcommands of ``labd``: one module each, with ``register(subparsers)``."""
