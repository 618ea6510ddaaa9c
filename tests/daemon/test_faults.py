"""Instrument faults against a real daemon: injected failures, the watchdog, events, retries."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from labd.client import InstrumentFault, LabClient
from labd.daemon.process import LocalDaemon
from tests.configs import loopback
from tests.daemon.raw import RawClient, forward_header

F4 = np.float32


def system(name: str, timeout_s: float, faults: dict) -> str:
    """A 3-dimensional loopback whose ADC fails as ``faults`` says."""
    return loopback(name, 3, timeout_s=timeout_s, bench={"seed": 1},
                    detector={"driver": "sim.adc", "faults": faults})


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    config = tmp_path_factory.mktemp("faults") / "faulty.toml"
    config.write_text(
        system("flaky", 5, {"disconnect": 0.1, "garbage": 0.1, "slow": 0.1, "slow_s": 0.005})
        + system("hangs", 0.3, {"timeout": 1.0, "hang_s": 2.0})
        + system("good", 5, {}))
    with LocalDaemon(config=config) as daemon:
        yield daemon


X = np.full((2, 3), 0.25, F4)
T = np.full(3, 0.125, F4)


def test_injected_faults_are_answered_and_the_daemon_recovers(faulty):
    raw = RawClient(faulty.endpoint)
    outcomes = {"ok": 0, "instrument_fault": 0}
    for i in range(200):
        raw.send(forward_header("flaky", X, T, rid=f"f{i}"), [X, T])
        reply, arrays = raw.recv()
        assert reply["id"] == f"f{i}"
        if reply["ok"]:
            np.testing.assert_allclose(arrays[0], X + T)
            outcomes["ok"] += 1
        else:
            assert reply["error"]["code"] == "instrument_fault"
            assert reply["error"]["retryable"] is True
            outcomes["instrument_fault"] += 1
    assert outcomes["ok"] > 100 and outcomes["instrument_fault"] > 10, outcomes
    status, _ = raw.request("status")
    flaky = status["systems"]["flaky"]
    assert flaky["served"] == outcomes["ok"]
    assert flaky["errors"] == outcomes["instrument_fault"]
    raw.close()


def test_client_retries_ride_through_faults(faulty):
    with LabClient(faulty.endpoint, timeout_s=10, retries=8) as client:
        for _ in range(50):
            np.testing.assert_allclose(client.forward("flaky", X, T), X + T)


def test_result_with_retry_sends_a_submitted_request_again(faulty):
    """``result(rid, retry=True)`` sends a submitted request that failed retryably again with
    its id (40 in flight, collected in reverse order, so most replies arrive before their
    ``result`` call), each measured successfully once; ``result(rid)`` raises instead."""
    with LabClient(faulty.endpoint, timeout_s=10, retries=8) as client:
        before = client.status()["systems"]["flaky"]
        xs = [np.full((2, 3), 0.01 * i, F4) for i in range(40)]
        ids = [client.submit("flaky", x, T) for x in xs]
        for rid, x in reversed(list(zip(ids, xs, strict=True))):
            result = client.result(rid, retry=True)
            np.testing.assert_allclose(result.y, x + T)
            assert result.elapsed_s >= 0
        after = client.status()["systems"]["flaky"]
        assert after["served"] == before["served"] + 40
        assert after["errors"] > before["errors"], "no fault was injected"
        assert not client._submitted and not client._pending  # nothing kept after result()
        failed = 0
        for _ in range(60):
            try:
                client.result(client.submit("flaky", X, T))
            except InstrumentFault as exc:
                assert exc.retryable
                failed += 1
        assert failed > 0
        with pytest.raises(KeyError):
            client.result("never-submitted", retry=True)


def test_watchdog_abandons_a_hung_call_without_freezing_the_daemon(faulty):
    hung, other = RawClient(faulty.endpoint), RawClient(faulty.endpoint)
    events = zmq.Context.instance().socket(zmq.SUB)
    events.setsockopt(zmq.SUBSCRIBE, b"fault")
    events.connect(faulty.events_endpoint)
    time.sleep(0.2)  # let the subscription reach the publisher
    started = time.monotonic()
    hung.send(forward_header("hangs", X, T, rid="stuck"), [X, T])
    time.sleep(0.05)
    reply, _ = other.request("forward", [("x", X), ("theta", T)], system="good")
    assert reply["ok"] and time.monotonic() - started < 0.25  # not frozen while it hangs
    reply, _ = hung.recv(timeout_ms=5000)
    waited = time.monotonic() - started
    assert reply["id"] == "stuck" and reply["ok"] is False
    assert reply["error"]["code"] == "instrument_fault" and reply["error"]["retryable"]
    assert "hung" in reply["error"]["message"]
    assert 0.3 <= waited < 1.5, waited  # the watchdog fired, well before the 2 s hang ended
    status, _ = other.request("status")
    assert status["systems"]["hangs"]["errors"] >= 1
    assert status["systems"]["hangs"]["state"] in ("fault", "ready")
    assert events.poll(2000), "no fault event published"
    topic, body = events.recv_multipart()
    event = json.loads(body)
    assert topic == b"fault" and event["system"] in ("hangs", "flaky") and event["v"] == 1
    time.sleep(2.0)  # the abandoned call returns now: its result must not be delivered
    assert not hung.sock.poll(100)
    for sock in (hung, other):
        sock.close()
    events.close()


def test_fault_error_is_typed_for_the_client(faulty):
    with LabClient(faulty.endpoint, timeout_s=5, retries=0) as client, \
            pytest.raises(InstrumentFault) as err:
        client.forward("hangs", X, T)
    assert err.value.retryable


def test_a_reply_waiting_for_the_next_shots_is_delivered_when_they_hang(tmp_path):
    """The worker hands a finished request's reply to the server while the next queued
    request's shots run. When that next request hangs in the drive before its shots (seed 11:
    the drive's first output succeeds, its second hangs), the watchdog delivers the waiting
    reply with the fault, instead of losing a measured and recorded result."""
    config = tmp_path / "drive_hangs.toml"
    config.write_text(loopback(
        "slowdrive", 3, timeout_s=0.5, bench={"seed": 1, "timing": "realtime", "shot_s": 0.1},
        drive={"driver": "sim.dac", "faults": {"timeout": 0.5, "hang_s": 3.0, "seed": 11}}))
    with LocalDaemon(config=config) as daemon:
        raw = RawClient(daemon.endpoint)
        started = time.monotonic()
        raw.send(forward_header("slowdrive", X, T, rid="first"), [X, T])
        raw.send(forward_header("slowdrive", X, T, rid="second"), [X, T])  # queued behind
        first, arrays = raw.recv(timeout_ms=5000)
        first_s = time.monotonic() - started
        second, _ = raw.recv(timeout_ms=5000)
        second_s = time.monotonic() - started
        raw.close()
    assert first["id"] == "first" and first["ok"], first
    np.testing.assert_allclose(arrays[0], X + T)
    assert second["id"] == "second" and second["error"]["code"] == "instrument_fault"
    # the first reply came with the watchdog (2 shots of 0.1 s, then 0.5 s), not after the
    # 3 s hang, and the second's fault with it
    assert first_s < 2.0 and second_s < 2.0, (first_s, second_s)
