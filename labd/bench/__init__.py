"""Benchmarks, run by ``labd bench NAME``. Each module ``labd.bench.NAME`` defines

* ``DESCRIPTION``: one line for ``labd bench --help``;
* ``add_arguments(parser)``: its options;
* ``main(args) -> dict``: runs it and returns its figures (JSON-serialisable), which the
  command prints and, with ``--json PATH``, writes to a file.
"""
