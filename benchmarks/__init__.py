"""labd's benchmarks: run from a checkout as ``python -m benchmarks.NAME [--json PATH]``
(``--help`` for each one's options); not installed with labd, as nanoGPT keeps ``bench.py``
apart from ``train.py``. Each module ``benchmarks.NAME`` defines ``DESCRIPTION``,
``add_arguments(parser)`` and ``main(args) -> dict`` (its figures, JSON-serialisable), run by
``benchmarks.runner.run``. What they measure and their figures: ``docs/performance.md``.
"""
