"""The daemon against the protocol page, through raw pyzmq: every operation, every error code
provoked by a real malformed request, and the daemon still serving afterwards."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from tests.daemon.raw import RawClient, forward_header

F4 = np.float32


@pytest.fixture()
def raw(rig):
    client = RawClient(rig.endpoint)
    yield client
    client.close()


def error_of(raw: RawClient, frames: list[bytes] | None = None, header: dict | None = None,
             arrays: list[np.ndarray] = ()) -> dict:
    if frames is not None:
        raw.send_frames(frames)
    else:
        raw.send(header, list(arrays))
    reply, out = raw.recv()
    assert reply["ok"] is False and reply["v"] == 1 and out == []
    assert set(reply["error"]) == {"code", "message", "retryable"}
    assert reply["error"]["message"]
    return reply


def still_serving(raw: RawClient) -> None:
    x = np.full((2, 4), 0.25, F4)
    theta = np.full(4, 0.125, F4)
    reply, (y,) = raw.request("forward", [("x", x), ("theta", theta)], system="fast")
    assert reply["ok"] is True
    np.testing.assert_array_equal(y, 2.0 * (x + theta))


def test_hello(raw):
    reply, out = raw.request("hello")
    assert reply["ok"] is True and out == []
    assert reply["server"] == "labd" and isinstance(reply["version"], str)
    assert 1 in reply["protocols"]
    assert sorted(reply["systems"]) == ["fast", "slow"]


def test_describe(raw):
    reply, _ = raw.request("describe", system="fast")
    s = reply["system"]
    assert s["name"] == "fast" and s["kind"] == "loopback"
    assert (s["input_dim"], s["param_dim"], s["output_dim"]) == (4, 4, 4)
    assert s["input_range"] == [-1.0, 1.0] and s["param_range"] == [-1.0, 1.0]
    assert s["max_batch"] == 8 and s["simulated"] is True


def test_forward_shared_and_per_row_theta(raw):
    x = np.linspace(-0.5, 0.5, 12, dtype=F4).reshape(3, 4)
    theta = np.full(4, 0.25, F4)
    reply, (y,) = raw.request("forward", [("x", x), ("theta", theta)], system="fast")
    assert reply["ok"] and reply["arrays"] == [{"name": "y", "dtype": "float32", "shape": [3, 4]}]
    assert isinstance(reply["seq"], int) and reply["elapsed_s"] >= 0
    np.testing.assert_allclose(y, 2.0 * (x + theta))
    rows = np.linspace(-0.3, 0.3, 12, dtype=F4).reshape(3, 4)
    reply2, (y2,) = raw.request("forward", [("x", x), ("theta", rows)], system="fast")
    np.testing.assert_allclose(y2, 2.0 * (x + rows))
    assert reply2["seq"] == reply["seq"] + 3  # rows are numbered consecutively


def test_batch_larger_than_max_batch_is_chunked(raw):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 4)).astype(F4)  # max_batch is 8
    theta = np.full(4, -0.25, F4)
    reply, (y,) = raw.request("forward", [("x", x), ("theta", theta)], system="fast")
    assert reply["ok"] and y.shape == (50, 4)
    np.testing.assert_allclose(y, 2.0 * (x + theta), rtol=1e-6)


def test_status(raw):
    reply, _ = raw.request("status")
    assert reply["ok"] and reply["uptime_s"] >= 0
    for name in ("fast", "slow"):
        s = reply["systems"][name]
        assert s["state"] in ("ready", "busy", "fault")
        assert all(isinstance(s[k], int) for k in ("queued", "served", "errors"))


X_OK = np.zeros((2, 4), F4)
T_OK = np.zeros(4, F4)


@pytest.mark.parametrize("frames,code", [
    ([b"{not json"], "bad_request"),
    ([b"\xff\xfe"], "bad_request"),
    ([b"[1, 2]"], "bad_request"),
    ([b'{"v": 1, "op": "hello"}'], "bad_request"),                      # no id
    ([b'{"v": 1, "id": 5, "op": "hello"}'], "bad_request"),             # id not a string
    ([b'{"v": 1, "id": "' + b"x" * 65 + b'", "op": "hello"}'], "bad_request"),  # id too long
    ([b'{"v": "1", "id": "a", "op": "hello"}'], "bad_request"),        # v not an int
    ([b'{"v": 2, "id": "a", "op": "hello"}'], "unsupported_version"),
    ([b'{"v": 1, "id": "a", "op": "launch"}'], "unknown_op"),
    ([b'{"v": 1, "id": "a", "op": "describe", "system": "laser"}'], "unknown_system"),
    ([b'{"v": 1, "id": "a", "op": "describe"}'], "bad_request"),       # no system
    ([], "bad_request"),                                                 # no header frame
])
def test_malformed_headers(raw, frames, code):
    if not frames:
        reply = error_of(raw, frames=[])
        assert reply["id"] == ""
    else:
        reply = error_of(raw, frames=frames)
    assert reply["error"]["code"] == code
    assert reply["error"]["retryable"] is False
    if code in ("unsupported_version", "unknown_op", "unknown_system"):
        assert reply["id"] == "a"
    still_serving(raw)


def test_wrong_frame_count(raw):
    header = forward_header("fast", X_OK, T_OK)
    reply = error_of(raw, header=header, arrays=[X_OK])  # theta frame missing
    assert reply["error"]["code"] == "bad_request" and reply["id"] == "r1"
    reply = error_of(raw, header=header, arrays=[X_OK, T_OK, T_OK])  # one too many
    assert reply["error"]["code"] == "bad_request"
    still_serving(raw)


@pytest.mark.parametrize("x,theta", [
    (np.zeros((2, 4), np.float64), T_OK),            # wrong dtype
    (np.zeros((2, 4), np.int32), T_OK),              # wrong dtype
    (np.zeros((2, 5), F4), T_OK),                    # wrong shape (input_dim)
    (np.zeros((2, 2, 2), F4), T_OK),                 # wrong rank
    (X_OK, np.zeros(3, F4)),                         # wrong param_dim
    (X_OK, np.zeros((3, 4), F4)),                    # per-row theta with the wrong B
    (np.zeros((0, 4), F4), T_OK),                    # empty batch
])
def test_bad_arrays(raw, x, theta):
    reply = error_of(raw, header=forward_header("fast", x, theta), arrays=[x, theta])
    assert reply["error"]["code"] == "bad_array" and reply["id"] == "r1"
    still_serving(raw)


def test_byte_length_and_dtype_lies(raw):
    header = forward_header("fast", X_OK, T_OK)
    reply = error_of(raw, frames=[json.dumps(header).encode(), X_OK.tobytes()[:-1],
                                  T_OK.tobytes()])
    assert reply["error"]["code"] == "bad_array"
    header["arrays"][0]["dtype"] = "object"
    reply = error_of(raw, header=header, arrays=[X_OK, T_OK])
    assert reply["error"]["code"] == "bad_array"
    header["arrays"][0]["dtype"] = ">f4"
    reply = error_of(raw, header=header, arrays=[X_OK, T_OK])
    assert reply["error"]["code"] == "bad_array"
    still_serving(raw)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1.5, -1.01])
def test_out_of_range(raw, value):
    x = X_OK.copy()
    x[1, 2] = value
    reply = error_of(raw, header=forward_header("fast", x, T_OK), arrays=[x, T_OK])
    assert reply["error"]["code"] == "out_of_range"
    theta = T_OK.copy()
    theta[0] = value
    reply = error_of(raw, header=forward_header("fast", X_OK, theta), arrays=[X_OK, theta])
    assert reply["error"]["code"] == "out_of_range"
    still_serving(raw)


def test_too_large(raw):
    x = np.zeros((5000, 4), F4)  # 80 KB, over the test rig's 64 KiB limit
    reply = error_of(raw, header=forward_header("fast", x, T_OK), arrays=[x, T_OK])
    assert reply["error"]["code"] == "too_large" and reply["id"] == "r1"
    still_serving(raw)


def test_busy_when_queue_is_full(rig):
    """The slow system (20 ms/shot, queue of 4): a burst of 12 requests overflows its queue."""
    raw = RawClient(rig.endpoint)
    x = np.zeros((1, 4), F4)
    for i in range(12):
        raw.send(forward_header("slow", x, T_OK, rid=f"b{i}"), [x, T_OK])
    replies = [raw.recv()[0] for _ in range(12)]
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies]
    assert "busy" in codes and "ok" in codes, codes
    assert all(r["error"]["retryable"] for r in replies if not r["ok"])
    assert sorted(r["id"] for r in replies) == sorted(f"b{i}" for i in range(12))
    raw.close()


def test_duplicate_id_is_not_measured_twice(raw):
    x = np.full((3, 4), 0.5, F4)
    header = forward_header("fast", x, T_OK, rid="same-id")
    raw.send(header, [x, T_OK])
    first, (y1,) = raw.recv()
    raw.send(header, [x, T_OK])
    second, (y2,) = raw.recv()
    assert first["ok"] and second["ok"]
    assert second["seq"] == first["seq"]  # the same measurement, not a new one
    np.testing.assert_array_equal(y1, y2)
    reply, _ = raw.request("forward", [("x", x), ("theta", T_OK)], system="fast")
    assert reply["seq"] == first["seq"] + 3


def test_duplicate_id_while_in_flight_gets_one_reply(rig):
    raw = RawClient(rig.endpoint)
    x = np.zeros((5, 4), F4)  # 5 shots x 20 ms on the slow system
    header = forward_header("slow", x, T_OK, rid="retry-me")
    raw.send(header, [x, T_OK])
    raw.send(header, [x, T_OK])
    reply, _ = raw.recv()
    assert reply["ok"] and reply["id"] == "retry-me"
    assert not raw.sock.poll(300), "a second reply to the same id"
    raw.close()


def test_req_socket_client(rig):
    raw = RawClient(rig.endpoint, kind=zmq.REQ)
    reply, _ = raw.request("hello")
    assert reply["ok"] and reply["server"] == "labd"
    raw.close()


def test_dealer_with_several_requests_in_flight(rig):
    raw = RawClient(rig.endpoint)
    rng = np.random.default_rng(1)
    sent = {}
    for i in range(20):
        x = rng.uniform(-0.4, 0.4, (3, 4)).astype(F4)
        system = "slow" if i % 5 == 0 else "fast"
        sent[f"q{i}"] = x
        raw.send(forward_header(system, x, T_OK, rid=f"q{i}"), [x, T_OK])
    got = {}
    for _ in range(20):
        reply, arrays = raw.recv()
        assert reply["ok"], reply
        got[reply["id"]] = arrays[0]
    assert set(got) == set(sent)
    for rid, x in sent.items():
        gain = 1.0 if int(rid[1:]) % 5 == 0 else 2.0
        np.testing.assert_allclose(got[rid], gain * x)
    raw.close()


def test_slow_system_does_not_delay_another(rig):
    slow, fast = RawClient(rig.endpoint), RawClient(rig.endpoint)
    x = np.zeros((25, 4), F4)  # 25 shots x 20 ms = 0.5 s
    slow.send(forward_header("slow", x, T_OK, rid="long"), [x, T_OK])
    time.sleep(0.05)
    started = time.perf_counter()
    for _ in range(10):
        reply, _ = fast.request("forward", [("x", X_OK), ("theta", T_OK)], system="fast")
        assert reply["ok"]
        reply, _ = fast.request("status")
        assert reply["systems"]["slow"]["state"] == "busy"
    took = time.perf_counter() - started
    assert took < 0.3, f"fast system took {took:.3f} s while the slow one was measuring"
    reply, _ = slow.recv()
    assert reply["ok"] and reply["elapsed_s"] >= 0.45
    slow.close()
    fast.close()
