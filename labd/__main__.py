"""``python -m labd`` is the ``labd`` command."""

from labd.cli import main

raise SystemExit(main())
