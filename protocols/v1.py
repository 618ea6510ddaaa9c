"""labd wire protocol, version 1: constants, error codes and the message headers.

The contract, in this project's words (the page it implements is ``wire-protocol-v1.md``):

* Transport is ZeroMQ. The daemon binds one ROUTER socket (the control endpoint, default
  ``tcp://127.0.0.1:5555``); clients connect with DEALER (several requests may be in flight)
  or REQ. A DEALER client sends an empty delimiter frame before the header, as REQ does.
* Every request and every reply is a multipart message: frame 0 is a UTF-8 JSON object (the
  header), frames 1..n are the raw bytes of each array named in ``header["arrays"]``, in order,
  C-order little-endian, exactly ``prod(shape) * itemsize`` bytes each (see ``frames.py``).
* A request header has ``v`` (an integer, 1), ``id`` (a string of 1-64 characters, echoed in the
  reply), ``op`` (a string) and ``arrays`` (may be omitted; at most 16), and the operation's
  fields: ``hello``, ``describe`` (``system``), ``forward`` (``system``), ``status``, and
  ``monitor`` (``last``, optional; an addition to the contract, see ``README.md``).
* A reply header has ``v`` (default 1), ``id`` (default ``""``: the request's, empty when none
  was readable), ``ok`` (true or false), ``error`` (``null`` or ``{code, message, retryable}``,
  ``retryable`` false when omitted) and ``arrays``, and the operation's fields.
* An array description is exactly ``{"name": string, "dtype": string, "shape": [...]}``, the
  shape at most 8 integers >= 0.

``request_header`` and ``reply_header`` are the one statement of these rules in code: they take
a parsed header and return it checked, or raise ``ProtocolError`` naming the broken rule. Types
are JSON's, exactly: ``true`` is not an integer, ``1.0`` is not an integer, ``"1"`` is not a
number. A header may carry fields it does not know (a later minor revision may add some); an
array description or an error may not. Array frames themselves are checked in ``frames.py``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

VERSION = 1
SUPPORTED_VERSIONS = (1,)
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_EVENT_ENDPOINT = "tcp://127.0.0.1:5556"
MAX_ID_CHARS = 64
MAX_ARRAYS = 16  # per request
MAX_RANK = 8


class ErrorCode(StrEnum):
    """Every error a daemon may answer, with the situation that produces it."""

    BAD_REQUEST = "bad_request"  # header not a JSON object, missing or mistyped field, frame count
    UNSUPPORTED_VERSION = "unsupported_version"  # ``v`` is not a version the daemon speaks
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_SYSTEM = "unknown_system"
    BAD_ARRAY = "bad_array"  # dtype, shape or byte length disagree with the header or system
    OUT_OF_RANGE = "out_of_range"  # a value outside the system's range, or NaN/inf
    TOO_LARGE = "too_large"  # the message exceeds the configured size limit
    BUSY = "busy"  # the system's queue is full; always retryable
    INSTRUMENT_FAULT = "instrument_fault"  # the instrument failed or timed out
    UNAUTHORIZED = "unauthorized"  # the client may not use this operation or system


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; ``code`` is the error code to answer."""

    def __init__(self, code: ErrorCode, message: str, request_id: str = "",
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = retryable


#: One array frame's description: (name, dtype string, shape).
ArraySpec = tuple[str, str, list[int]]

REPLY_FIELDS = frozenset({"v", "id", "ok", "error", "arrays"})


class RequestHeader:
    """A checked request header: ``v``, ``id``, ``op``, ``arrays`` (``ArraySpec`` tuples) and
    ``fields``, the received header itself (``fields["system"]`` is an operation's field)."""

    __slots__ = ("arrays", "fields", "id", "op", "v")

    def __init__(self, v: int, rid: str, op: str, arrays: list[ArraySpec],
                 fields: dict[str, Any]) -> None:
        self.v, self.id, self.op, self.arrays, self.fields = v, rid, op, arrays, fields


class ErrorInfo:
    """A failed reply's ``error``: the ``ErrorCode`` value (a client must tolerate codes it does
    not know), a message for people, and whether sending the request again may succeed."""

    __slots__ = ("code", "message", "retryable")

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        self.code, self.message, self.retryable = code, message, retryable


class ReplyHeader:
    """A checked reply header: ``v``, ``id``, ``ok``, ``error`` (``ErrorInfo`` or None),
    ``arrays`` (``ArraySpec`` tuples) and ``fields``, the received header itself."""

    __slots__ = ("arrays", "error", "fields", "id", "ok", "v")

    def __init__(self, v: int, rid: str, ok: bool, error: ErrorInfo | None,
                 arrays: list[ArraySpec], fields: dict[str, Any]) -> None:
        self.v, self.id, self.ok, self.error, self.arrays, self.fields = \
            v, rid, ok, error, arrays, fields

    @property
    def op_fields(self) -> dict[str, Any]:
        """The operation's fields: a new dict of all but ``v``, ``id``, ``ok``, ``error``,
        ``arrays``."""
        return {k: v for k, v in self.fields.items() if k not in REPLY_FIELDS}


def peek_id(header: Any) -> str:
    """The request ``id`` to echo: the header's ``id`` if it is a usable string, else ``""``."""
    rid = header.get("id") if isinstance(header, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS else ""


_ABSENT = object()


def _shown(value: Any) -> str:
    """``value`` as the JSON it came as, cut to 60 characters (for error messages)."""
    if value is _ABSENT:
        return "nothing"
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _malformed(kind: str, raw: dict[str, Any], field: str, rule: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"malformed {kind} header: field {field!r} must "
                         f"be {rule}, got {_shown(raw.get(field, _ABSENT))}", peek_id(raw))


def _array_specs(arrays: Any, max_count: int | None, kind: str, raw: dict[str, Any]
                 ) -> list[ArraySpec]:
    """A header's ``arrays`` value as ``ArraySpec`` tuples (``raw``: the header, ``kind``:
    request or reply, for the error)."""
    if type(arrays) is not list or (max_count is not None and len(arrays) > max_count):
        raise _malformed(kind, raw, "arrays", "a list of array descriptions"
                         + ("" if max_count is None else f", at most {max_count}"))
    specs: list[ArraySpec] = []
    for spec in arrays:
        if type(spec) is dict and len(spec) == 3:  # exactly the three fields
            name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
            if type(name) is str and type(dtype) is str and type(shape) is list \
                    and len(shape) <= MAX_RANK:
                for n in shape:
                    if type(n) is not int or n < 0:
                        break
                else:
                    specs.append((name, dtype, shape))
                    continue
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f'malformed {kind} header: arrays[{arrays.index(spec)}] must be {{"name": string, '
            f'"dtype": string, "shape": at most {MAX_RANK} integers >= 0}} and nothing else, '
            f'got {_shown(spec)}', peek_id(raw))  # (an equal spec before it failed first)
    return specs


def _error_info(raw: dict[str, Any], error: Any) -> ErrorInfo:
    """A reply's ``error`` object as ``ErrorInfo``."""
    if type(error) is dict and len(error) == 2 + ("retryable" in error):
        code, message = error.get("code"), error.get("message")
        retryable = error.get("retryable", False)
        if type(code) is str and type(message) is str and type(retryable) is bool:
            return ErrorInfo(code, message, retryable)
    raise _malformed("reply", raw, "error", 'null or {"code": string, "message": string, '
                     '"retryable": true or false (default false)} and nothing else')


def request_header(raw: dict[str, Any]) -> RequestHeader:
    """``raw``, a received header (a JSON object), checked as a request.

    ``ProtocolError``: ``unsupported_version`` when ``v`` is an integer other than 1, else
    ``bad_request`` naming the first field that breaks the rules (in the order v, id, op,
    arrays), with the request's ``id`` when it was readable.
    """
    v = raw.get("v")
    if type(v) is not int:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header field 'v' (int) is missing or not "
                            "an integer", peek_id(raw))
    if v not in SUPPORTED_VERSIONS:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {v} is not "
                            f"spoken here; supported: {list(SUPPORTED_VERSIONS)}", peek_id(raw))
    rid, op = raw.get("id"), raw.get("op")
    if type(rid) is not str or not 0 < len(rid) <= MAX_ID_CHARS:
        raise _malformed("request", raw, "id", f"a string of 1-{MAX_ID_CHARS} characters")
    if type(op) is not str:
        raise _malformed("request", raw, "op", "a string")
    arrays = raw.get("arrays", _ABSENT)
    specs = [] if arrays is _ABSENT else _array_specs(arrays, MAX_ARRAYS, "request", raw)
    return RequestHeader(v, rid, op, specs, raw)


def reply_header(raw: dict[str, Any]) -> ReplyHeader:
    """``raw``, a received header (a JSON object), checked as a reply.

    ``ProtocolError``: ``bad_request`` naming the first field that breaks the rules (in the
    order v, id, ok, error, arrays), else ``unsupported_version`` when ``v`` is not 1.
    """
    v, rid, ok = raw.get("v", VERSION), raw.get("id", ""), raw.get("ok")
    if type(v) is not int:
        raise _malformed("reply", raw, "v", "an integer")
    if type(rid) is not str:
        raise _malformed("reply", raw, "id", "a string")
    if type(ok) is not bool:
        raise _malformed("reply", raw, "ok", "true or false")
    error = raw.get("error")
    info = None if error is None else _error_info(raw, error)
    arrays = raw.get("arrays", _ABSENT)
    specs = [] if arrays is _ABSENT else _array_specs(arrays, None, "reply", raw)
    if v != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"reply speaks version {v}")
    return ReplyHeader(v, rid, ok, info, specs, raw)
