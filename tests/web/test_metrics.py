"""``/metrics`` scraped and parsed with prometheus_client's parser; the ``monitor`` operation."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labd.client import InstrumentFault, LabClient, OutOfRange
from labd.daemon.process import LocalDaemon, free_port
from tests.web.conftest import WebMonitor, wait_for

F4 = np.float32


def scrape(web: WebMonitor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    status, text = web.get("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_the_forwards_sent(rig):
    rng = np.random.default_rng(0)
    sent = {"fast": [], "slow": []}
    with LabClient(rig.endpoint) as client:
        for system, dim, n in (("fast", 8, 25), ("slow", 4, 6)):
            for i in range(n):
                rows = 1 + i % 5
                x = rng.uniform(-0.5, 0.5, (rows, dim)).astype(F4)
                sent[system].append(client.measure(system, x, np.zeros(dim, F4)).elapsed_s)
        for _ in range(3):
            with pytest.raises(OutOfRange):
                client.measure("fast", np.full((1, 8), 5.0, F4), np.zeros(8, F4))
    with LabClient(rig.endpoint, retries=0) as client:
        faults = ok = 0
        for _ in range(30):
            try:
                client.measure("flaky", np.full((2, 3), 0.1, F4), np.zeros(3, F4))
                ok += 1
            except InstrumentFault:
                faults += 1
    with WebMonitor(rig.endpoint) as web:
        m = wait_for(lambda: (m := scrape(web))[("labd_up", ())] == 1.0 and m)

    def value(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert value("labd_up") == 1.0
    for system in ("fast", "slow"):
        n = len(sent[system])
        assert value("labd_requests_total", system=system, outcome="ok") == n
        assert value("labd_shots_total", system=system) == sum(1 + i % 5 for i in range(n))
        assert value("labd_request_duration_seconds_count", system=system) == n
        assert value("labd_instrument_duration_seconds_count", system=system) == n
        assert value("labd_request_duration_seconds_bucket", system=system, le="+Inf") == n
        assert value("labd_instrument_duration_seconds_sum", system=system) == pytest.approx(
            sum(sent[system]), rel=1e-9)
        assert value("labd_instrument_seconds_total", system=system) == pytest.approx(
            sum(sent[system]), rel=1e-9)
        assert value("labd_queue_depth", system=system) == 0
        assert value("labd_system_state", system=system, state="ready") == 1
    # slow measures 20 ms per shot: its requests took at least that, in the daemon too
    assert value("labd_request_duration_seconds_bucket", system="slow", le="0.01") == 0
    assert value("labd_queue_capacity", system="slow") == 8
    assert value("labd_requests_total", system="fast", outcome="out_of_range") == 3
    assert value("labd_refused_requests_total", code="out_of_range") == 3
    assert faults > 0 and ok > 0
    assert value("labd_requests_total", system="flaky", outcome="ok") == ok
    assert value("labd_requests_total", system="flaky", outcome="instrument_fault") == faults
    assert value("labd_faults_total", system="flaky") == faults
    assert value("labd_reconnects_total", system="flaky") >= 1
    assert value("labd_store_rows") == sum(1 + i % 5 for s in sent.values()
                                           for i in range(len(s))) + 2 * ok
    assert value("labd_store_backlog_bytes") >= 0


def test_metrics_follow_the_daemon_down_and_back(rig_path):
    port = free_port()
    with LocalDaemon(config=rig_path, port=port) as daemon, WebMonitor(daemon.endpoint) as web:
        with LabClient(daemon.endpoint) as client:
            client.measure("fast", np.zeros((2, 8), F4), np.zeros(8, F4))
        first = scrape(web)
        assert first[("labd_up", ())] == 1.0
        assert first[("labd_shots_total", (("system", "fast"),))] == 2
        daemon.stop()
        down = wait_for(lambda: (m := scrape(web))[("labd_up", ())] == 0.0 and m)
        assert not any(name == "labd_shots_total" for name, _ in down)  # no stale counters
        with LocalDaemon(config=rig_path, port=port):
            back = wait_for(lambda: (m := scrape(web))[("labd_up", ())] == 1.0 and m,
                            timeout_s=60)
            assert back[("labd_shots_total", (("system", "fast"),))] == 0  # a new daemon
            assert back[("labd_start_time_seconds", ())] > first[("labd_start_time_seconds",
                                                                    ())]


def test_monitor_operation_answers_the_last_measurement(rig):
    x = np.linspace(-0.5, 0.5, 24, dtype=F4).reshape(3, 8)
    theta = np.full(8, 0.25, F4)
    with LabClient(rig.endpoint) as client:
        header, arrays = client.call("monitor")
        assert arrays == {} and header.fields["systems"]["fast"]["last"] is None
        result = client.measure("fast", x, theta)
        header, arrays = client.call("monitor", {"last": True})
    fast = header.fields["systems"]["fast"]
    assert fast["last"]["seq"] == result.seq and fast["last"]["rows"] == 3
    assert fast["served"] == fast["requests"]["ok"] == 1 and fast["shots"] == 3
    assert fast["kind"] == "loopback" and fast["queue_depth"] > 0
    assert set(fast["clients"]) == {fast["last"]["client"]}
    np.testing.assert_array_equal(arrays["fast/x"], x[0])
    np.testing.assert_array_equal(arrays["fast/theta"], theta)
    np.testing.assert_array_equal(arrays["fast/y"], result.y[0])
    assert "slow/x" not in arrays  # nothing measured there yet
    assert header.fields["store"]["path"].endswith("store.sqlite")
