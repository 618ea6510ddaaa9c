"""The header rules of ``protocols/v1.py`` against the protocol page, restated here on its own
as pydantic models: on a valid header and on every mutation of it (a field removed, added or
replaced by an oddly typed value, at every depth) the check accepts exactly what the models
accept, answers the error code the page gives, echoes the id when it was readable, and its
message names the field the models name first."""

from __future__ import annotations

import copy
import json
from typing import Annotated

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from protocols.v1 import ProtocolError, peek_id, reply_header, request_header

# -- the page's rules, independently ---------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class PageArray(_Closed):
    name: StrictStr
    dtype: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(max_length=8)


class PageError(_Closed):
    code: StrictStr
    message: StrictStr
    retryable: StrictBool = False


class PageRequest(_Open):
    v: StrictInt
    id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    op: StrictStr
    arrays: list[PageArray] = Field(default_factory=list, max_length=16)


class PageReply(_Open):
    v: StrictInt = 1
    id: StrictStr = ""
    ok: StrictBool
    error: PageError | None = None
    arrays: list[PageArray] = Field(default_factory=list)


# -- headers to try --------------------------------------------------------------------------


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
ODD = [None, True, False, 0, 1, -1, 2, 1.0, "", "x", "1", [], {}, [1], {"a": 1}, "a" * 65,
       2**70]


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


def _as_read(header: dict) -> dict:
    """``header`` as the daemon reads it (JSON integers beyond 64 bits become floats)."""
    return orjson.loads(json.dumps(header))


def _named(message: str, loc: tuple) -> bool:
    """Whether ``message`` names the place ``loc`` of a pydantic error (its field, or the
    array description at fault)."""
    if loc[0] == "arrays" and len(loc) > 1:
        return f"arrays[{loc[1]}]" in message
    return f"field {loc[0]!r}" in message


def _verdict(model: type[BaseModel], header: dict) -> tuple | None:
    """None when the page's model accepts ``header``, else its first error's place."""
    try:
        model.model_validate(header)
    except ValidationError as exc:
        return exc.errors()[0]["loc"]
    return None


# -- the checks ------------------------------------------------------------------------------


def test_request_check_accepts_what_the_page_accepts():
    headers = [_request(), *_mutations(_request())]
    assert len(headers) > 250
    for header in map(_as_read, headers):
        v = header.get("v")
        loc = _verdict(PageRequest, header)
        try:
            got = request_header(header)
        except ProtocolError as exc:
            assert exc.request_id == peek_id(header), header
            if type(v) is int and v != 1:
                assert exc.code == "unsupported_version", header
                continue
            assert loc is not None and exc.code == "bad_request", header
            assert _named(exc.message, loc) if loc[0] != "v" else "'v'" in exc.message, \
                (header, exc.message, loc)
            continue
        assert loc is None and v == 1, header
        model = PageRequest.model_validate(header)
        assert (got.v, got.id, got.op) == (model.v, model.id, model.op)
        assert got.arrays == [(a.name, a.dtype, a.shape) for a in model.arrays]
        assert got.fields is header


@pytest.mark.parametrize("base", [_reply(), _error_reply()])
def test_reply_check_accepts_what_the_page_accepts(base):
    for header in map(_as_read, [base, *_mutations(base)]):
        loc = _verdict(PageReply, header)
        try:
            got = reply_header(header)
        except ProtocolError as exc:
            if loc is None:  # a well-formed reply in another version
                assert exc.code == "unsupported_version" and header.get("v", 1) != 1, header
                continue
            assert exc.code == "bad_request" and exc.request_id == peek_id(header), header
            assert _named(exc.message, loc), (header, exc.message, loc)
            continue
        assert loc is None, header
        model = PageReply.model_validate(header)
        assert (got.v, got.id, got.ok) == (model.v, model.id, model.ok) == (1, model.id, got.ok)
        assert (got.error is None) == (model.error is None)
        if model.error is not None:
            assert (got.error.code, got.error.message, got.error.retryable) == (
                model.error.code, model.error.message, model.error.retryable)
        assert got.arrays == [(a.name, a.dtype, a.shape) for a in model.arrays]
        assert got.op_fields == model.model_extra and got.fields is header


@pytest.mark.parametrize("header,words", [
    ({"v": 1, "op": "hello"}, ["field 'id'", "1-64 characters", "got nothing"]),
    ({"v": 1, "id": "a" * 65, "op": "hello"}, ["field 'id'", "1-64 characters"]),
    ({"v": 1, "id": "a", "op": 3}, ["field 'op'", "a string", "got 3"]),
    ({"v": 1, "id": "a", "op": "forward", "arrays": {}}, ["field 'arrays'", "at most 16"]),
    ({"v": 1, "id": "a", "op": "forward",
      "arrays": [{"name": "x", "dtype": "f4", "shape": [-1]}]}, ["arrays[0]", "integers >= 0"]),
    ({"v": True, "id": "a", "op": "hello"}, ["'v'", "integer"]),
])
def test_request_errors_say_which_field_and_what_it_must_be(header, words):
    with pytest.raises(ProtocolError) as caught:
        request_header(header)
    assert caught.value.code == "bad_request"
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_at_most_sixteen_arrays_in_a_request():
    spec = {"name": "x", "dtype": "float32", "shape": [1]}
    header = {"v": 1, "id": "a", "op": "forward", "arrays": [spec] * 16}
    assert len(request_header(header).arrays) == 16
    with pytest.raises(ProtocolError) as caught:
        request_header({**header, "arrays": [spec] * 17})
    assert caught.value.code == "bad_request" and "at most 16" in caught.value.message
