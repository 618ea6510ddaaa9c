"""Property-based fuzzing of a live daemon with malformed multipart messages (hypothesis).

Every message must get exactly one well-formed reply (an error, or a result when the fuzzer
happens to build a valid request), the daemon must never crash, and it must serve correctly
afterwards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from labd.daemon.process import LocalDaemon
from tests.daemon.raw import RawClient

EXAMPLES = 10_000

json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | \
    st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
dtypes = st.sampled_from(["float32", "float64", "<f4", ">f4", "int8", "object", "U4", "f2",
                          "complex64", "", "float32 ", "bool"]) | st.text(max_size=6)
shapes = st.lists(st.integers(-3, 70), max_size=4) | json_values
array_specs = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "theta", "y", ""]) | st.text(max_size=4),
     "dtype": dtypes, "shape": shapes},
    optional={"extra": json_values})
headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 0, 2, "1", None, 1.0, True]),
        "id": st.text(min_size=0, max_size=70) | json_scalars,
        "op": st.sampled_from(["hello", "describe", "forward", "status", "", "Forward",
                               "shutdown"]) | json_scalars,
        "system": st.sampled_from(["fast", "slow", "nope", ""]) | json_scalars,
        "arrays": st.lists(array_specs, max_size=3) | json_values,
        "junk": json_values,
    })
header_frames = (
    headers.map(lambda h: json.dumps(h).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
)
array_frames = st.lists(st.binary(max_size=96), max_size=4)
messages = st.tuples(header_frames, array_frames).map(lambda t: [t[0], *t[1]]) | \
    st.lists(st.binary(max_size=32), max_size=3)


@pytest.fixture(scope="module")
def fuzzed(test_config_path):
    with LocalDaemon(config=test_config_path) as daemon:
        client = RawClient(daemon.endpoint)
        yield daemon, client
        client.close()


def test_ten_thousand_malformed_messages(fuzzed):
    daemon, client = fuzzed
    counts = {"error": 0, "ok": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def one(frames):
        client.send_frames(frames)
        reply, _ = client.recv(timeout_ms=5000)
        assert reply["v"] == 1 and isinstance(reply["id"], str)
        if reply["ok"]:
            counts["ok"] += 1
        else:
            assert set(reply["error"]) == {"code", "message", "retryable"}
            counts["error"] += 1

    one()
    assert counts["error"] + counts["ok"] >= EXAMPLES
    assert daemon.proc.poll() is None, "the daemon died"
    reply, _ = client.request("hello")
    assert reply["ok"] and reply["server"] == "labd"
    x = np.full((2, 4), 0.5, np.float32)
    theta = np.full(4, -0.25, np.float32)
    reply, (y,) = client.request("forward", [("x", x), ("theta", theta)], system="fast")
    np.testing.assert_allclose(y, 2 * (x + theta))
    print(f"fuzz: {counts['error']} error replies, {counts['ok']} valid by chance")
