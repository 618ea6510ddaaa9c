"""The hand-framed forward messages of the hot path are the general encoder's bytes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from protocols.frames import encode, encode_forward, forward_reply, ok_reply

F4 = np.float32


@pytest.mark.parametrize("rid", ["abc", "é\"\\\n\u2028", "0123456789abcdef-1f"])
@pytest.mark.parametrize("shapes", [((1, 12), (12,)), ((16, 4), (16, 4)), ((0, 3), (3,))])
def test_forward_framings_are_the_general_encoders_bytes(rid, shapes):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, shapes[0]).astype(F4)
    theta = rng.uniform(-1, 1, shapes[1]).astype(F4)
    fast = encode_forward(rid, "sys\u00e9", x, theta)
    slow = encode({"v": 1, "id": rid, "op": "forward", "system": "sys\u00e9"},
                  [("x", x), ("theta", theta)])
    assert [bytes(f) for f in fast] == [bytes(f) for f in slow]
    for elapsed in (0.0, 1e-7, 0.123456789, random.random(), 12345.5):
        fast = forward_reply(rid, 2**40 + 3, elapsed, x)
        slow = ok_reply(rid, {"seq": 2**40 + 3, "elapsed_s": elapsed}, [("y", x)])
        assert [bytes(f) for f in fast] == [bytes(f) for f in slow]


def test_forward_reply_of_unusual_values_falls_back_to_the_encoder():
    y = np.zeros((1, 2), F4)
    frames = forward_reply("a", 1, np.float64(0.5), y)
    assert json.loads(frames[0])["elapsed_s"] == 0.5
    with pytest.raises(ValueError):
        forward_reply("a", 1, float("nan"), y)
