"""The hand-written header checks and framings of the hot path agree with the pydantic models
and the general encoder they stand in for: same acceptance, same error, same bytes."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest

from protocols.frames import (
    ProtocolError,
    decode_reply,
    decode_request,
    encode,
    encode_forward,
    forward_reply,
    ok_reply,
)
from protocols.v1 import ReplyHeader, RequestHeader

F4 = np.float32


def _request() -> dict:
    return {"v": 1, "id": "abc", "op": "forward", "system": "s",
            "arrays": [{"name": "x", "dtype": "float32", "shape": [2, 3]},
                       {"name": "theta", "dtype": "float32", "shape": [3]}]}


def _reply() -> dict:
    return {"v": 1, "id": "abc", "ok": True, "seq": 4, "elapsed_s": 0.5,
            "arrays": [{"name": "y", "dtype": "float32", "shape": [2, 3]}]}


def _error_reply() -> dict:
    return {"v": 1, "id": "abc", "ok": False,
            "error": {"code": "busy", "message": "m", "retryable": True}}


#: Values that break strict typing one way or another.
ODD = [None, True, False, 0, 1, -1, 1.0, "", "x", "1", [], {}, [1], {"a": 1}, "a" * 65, 2**70]


def _mutations(base: dict) -> list[dict]:
    """``base`` with one field removed, added or replaced by an odd value, at every depth."""
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            for key in list(node):
                for value in ODD:
                    out.append(([*path, key], "set", value))
                out.append(([*path, key], "del", None))
                walk(node[key], [*path, key])
            out.append(([*path, "extra"], "set", 1))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                for value in ODD:
                    out.append(([*path, i], "set", value))
                walk(item, [*path, i])
            out.append(([*path, len(node)], "append", 0))

    walk(base, [])
    headers = []
    for path, action, value in out:
        h = copy.deepcopy(base)
        node = h
        for p in path[:-1]:
            node = node[p]
        if action == "set":
            node[path[-1]] = value
        elif action == "del":
            del node[path[-1]]
        else:
            node.append(value)
        headers.append(h)
    return headers


def _frames(header: dict) -> list[bytes]:
    specs = header.get("arrays") if isinstance(header.get("arrays"), list) else []
    arrays = []
    for spec in specs:
        try:
            arrays.append(bytes(4 * int(np.prod(spec["shape"]))))
        except Exception:  # noqa: BLE001 - a mutated spec: any frame will do
            arrays.append(b"")
    return [json.dumps(header).encode(), *arrays]


def _outcome(fn, frames):
    try:
        header, arrays = fn(frames)
    except ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    return ("ok", header.id, header.arrays, {k: a.shape for k, a in arrays.items()})


@pytest.mark.parametrize("base", [_request()])
def test_request_check_agrees_with_the_model(base, monkeypatch):
    import protocols.frames as frames

    for header in [base, *_mutations(base)]:
        fast = _outcome(decode_request, _frames(header))
        monkeypatch.setattr(frames, "_check_request", lambda raw: None)  # pydantic only
        slow = _outcome(decode_request, _frames(header))
        monkeypatch.undo()
        assert fast == slow, header
        if fast[0] == "ok":
            RequestHeader.model_validate(header)  # the model accepts what the check accepts


@pytest.mark.parametrize("base", [_reply(), _error_reply()])
def test_reply_check_agrees_with_the_model(base, monkeypatch):
    import protocols.frames as frames

    for header in [base, *_mutations(base)]:
        fast = _outcome(decode_reply, _frames(header))
        monkeypatch.setattr(frames, "_check_reply", lambda raw: None)
        slow = _outcome(decode_reply, _frames(header))
        monkeypatch.undo()
        assert fast == slow, header
        if fast[0] == "ok":
            model = ReplyHeader.model_validate(header)
            got, _ = decode_reply(_frames(header))
            assert got.ok == model.ok and got.v == model.v and got.id == model.id
            assert (got.error is None) == (model.error is None)
            if model.error is not None:
                assert (got.error.code, got.error.message, got.error.retryable) == (
                    model.error.code, model.error.message, model.error.retryable)
            assert got.model_extra == model.model_extra
            assert got.model_dump(exclude={"arrays"}) == model.model_dump(exclude={"arrays"})


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
