"""The monitor: a read-only web page and Prometheus ``/metrics`` of a running daemon.

A separate process (``labd web``, or started by ``labd serve --http``) that is a client of the
daemon: it polls the ``monitor`` operation once a second, whatever the number of viewers, and
reads the store file and run folders itself. Design and its costs: ``docs/monitor.md``.

* ``watch``       ``DaemonWatch``: the daemon polled over the wire, rates, restarts
* ``store``       ``StoreWatch``: size, rows, oldest and newest of the store file, read-only
* ``runs``        ``RunWatch``: training runs' ``metrics.csv`` / ``summary.json`` as they grow
* ``prometheus``  ``DaemonCollector``: ``/metrics`` from the daemon's counters
* ``server``      the HTTP server (routes, token, security headers); ``static/`` the page
"""
