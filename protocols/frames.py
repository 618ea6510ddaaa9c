"""Framing of protocol v1: a JSON header frame followed by raw array frames.

Contract:

* ``encode(header, arrays)`` returns the frames to send: the header (with its ``arrays`` list
  filled in from the arrays given) as UTF-8 JSON, then each array's bytes, C-order little-endian.
  Array frames are the arrays' own buffers when they are already contiguous little-endian
  (zero-copy when sent with ``copy=False``).
* ``decode_request(frames)`` parses and checks a request strictly before anything else sees it:
  JSON object, protocol version, header fields, frame count, dtypes, shapes and byte lengths.
  It returns the header and the arrays as read-only numpy views on the received buffers (no
  copy). Any failure raises ``ProtocolError`` carrying the protocol's error code and the
  request's ``id`` when one was readable.
* ``decode_reply(frames)`` is the client's side of the same checks.

Nothing here pickles: arrays travel as their raw bytes and are described by the header alone.
Received headers are parsed with ``orjson`` (strict RFC 8259 JSON: ``NaN`` or ``Infinity``
literals are not JSON and are refused as such).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from itertools import islice
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

import numpy as np
import orjson
import zmq
from pydantic import ValidationError

from protocols.v1 import (
    SUPPORTED_VERSIONS,
    VERSION,
    ErrorCode,
    ReplyHeader,
    RequestHeader,
)

# Element types an array frame may carry. Anything else (objects, strings, structured or
# big-endian types) is refused with ``bad_array``.
ALLOWED_DTYPES = frozenset(
    ["float16", "float32", "float64", "int8", "int16", "int32", "int64",
     "uint8", "uint16", "uint32", "uint64", "bool"]
)
MAX_HEADER_BYTES = 64 * 1024

Buffer = bytes | memoryview


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; ``code`` is the error code to answer."""

    def __init__(self, code: ErrorCode, message: str, request_id: str = "",
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = retryable


def _buffer(frame: Any) -> memoryview:
    """The bytes of a received frame (``bytes`` or ``zmq.Frame``) as a memoryview, no copy."""
    buf = getattr(frame, "buffer", None)
    return buf if buf is not None else memoryview(frame)


#: Accepted header dtype strings and the little-endian dtype each names (filled on first use:
#: ``np.dtype(str)`` and ``dtype.name`` cost microseconds per call on the hot path).
_PARSED: dict[str, np.dtype] = {}
#: Header name of each dtype sent (``"float32"``...).
_NAMES: dict[np.dtype, str] = {}


def parse_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a header dtype string (``"float32"``, ``"<f4"``,
    ``"f4"``...).

    Raises ``ValueError`` for types the protocol does not carry.
    """
    dt = _PARSED.get(name)
    if dt is not None:
        return dt
    try:
        dt = np.dtype(name)
    except TypeError as exc:
        raise ValueError(f"unknown dtype {name!r}") from exc
    if dt.name not in ALLOWED_DTYPES or dt.byteorder == ">":
        raise ValueError(f"dtype {name!r} is not carried by protocol v1 "
                         f"(use one of {sorted(ALLOWED_DTYPES)}, little-endian)")
    dt = dt.newbyteorder("<")
    if len(_PARSED) < 256:  # bounded: a client cannot grow it without limit
        _PARSED[name] = dt
    return dt


def _dtype_name(dt: np.dtype) -> str:
    name = _NAMES.get(dt)
    if name is None:
        name = _NAMES[dt] = dt.name
    return name


def _as_le_contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself when it is a C-contiguous little-endian ndarray, else a converted copy."""
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


_LITTLE = np.little_endian


#: One encoder for every header (``json.dumps`` with options builds a new one per call).
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(header: dict[str, Any], arrays: Iterable[tuple[str, np.ndarray]] = ()) -> list[Buffer]:
    """Frames of a message: the JSON header, then each array's raw bytes."""
    specs: list[dict[str, Any]] = []
    buffers: list[Buffer] = []
    for name, array in arrays:
        a = _as_le_contiguous(array)
        specs.append({"name": name, "dtype": _dtype_name(a.dtype), "shape": list(a.shape)})
        buffers.append(memoryview(a).cast("B") if a.size else b"")
    if specs:
        header = {**header, "arrays": specs}
    return [_dumps(header).encode(), *buffers]


# The two messages of every measurement, framed without the general JSON encoder: the same
# bytes as ``encode`` (compact separators, ASCII escapes, the same key order), a fifth of its
# cost. tests/protocols checks they agree.

def _spec_json(name: str, a: np.ndarray) -> str:
    return (f'{{"name":"{name}","dtype":"{_dtype_name(a.dtype)}","shape":['
            f'{",".join(map(str, a.shape))}]}}')


def _frame(a: np.ndarray) -> Buffer:
    return memoryview(a).cast("B") if a.size else b""


#: The header text after the ``id`` of forward requests, by system, dtypes and shapes: a
#: client sends the same few again and again (bounded: a caller cannot grow it without limit).
_FORWARD_TAILS: dict[tuple[Any, ...], bytes] = {}
_FORWARD_HEAD = f'{{"v":{VERSION},"id":'.encode()


def encode_forward(request_id: str, system: str, x: np.ndarray, theta: np.ndarray,
                   delimiter: bool = False) -> list[Buffer]:
    """The frames of a ``forward`` request: ``encode({"v", "id", "op": "forward", "system"},
    [("x", x), ("theta", theta)])``, after an empty delimiter frame if ``delimiter``."""
    x, theta = _as_le_contiguous(x), _as_le_contiguous(theta)
    key = (system, x.dtype, x.shape, theta.dtype, theta.shape)
    tail = _FORWARD_TAILS.get(key)
    if tail is None:
        tail = (f',"op":"forward","system":{_json_str(system)},"arrays":['
                f'{_spec_json("x", x)},{_spec_json("theta", theta)}]}}').encode()
        if len(_FORWARD_TAILS) < 1024:
            _FORWARD_TAILS[key] = tail
    head = _FORWARD_HEAD + _json_str(request_id).encode() + tail
    if delimiter:
        return [b"", head, _frame(x), _frame(theta)]
    return [head, _frame(x), _frame(theta)]


def forward_reply(request_id: str, seq: int, elapsed_s: float, y: np.ndarray) -> list[Buffer]:
    """The frames of a successful ``forward`` reply: ``ok_reply(request_id, {"seq",
    "elapsed_s"}, [("y", y)])``."""
    if type(seq) is not int or type(elapsed_s) is not float or not math.isfinite(elapsed_s):
        return ok_reply(request_id, {"seq": seq, "elapsed_s": elapsed_s}, [("y", y)])
    y = _as_le_contiguous(y)
    head = (f'{{"v":{VERSION},"id":{_json_str(request_id)},"ok":true,"seq":{seq},'
            f'"elapsed_s":{float.__repr__(elapsed_s)},"arrays":[{_spec_json("y", y)}]}}')
    return [head.encode(), _frame(y)]


def _read_arrays(specs: Sequence[Spec], frames: Sequence[Any],
                 request_id: str) -> dict[str, np.ndarray]:
    """The arrays of ``frames[1:]`` (``frames[0]`` is the header) as ``specs`` describe them."""
    if len(frames) - 1 != len(specs):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"header names {len(specs)} array(s) but {len(frames) - 1} array "
                            f"frame(s) followed", request_id)
    out: dict[str, np.ndarray] = {}
    for frame, (name, dtype, shape) in zip(islice(frames, 1, None), specs, strict=True):
        if name in out:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"array {name!r} named twice",
                                request_id)
        dt = _PARSED.get(dtype)
        if dt is None:
            try:
                dt = parse_dtype(dtype)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.BAD_ARRAY, f"array {name!r}: {exc}",
                                    request_id) from None
        if type(frame) is zmq.Frame:  # (a received frame's own buffer: no memoryview made)
            buf, size = frame, len(frame)
        else:
            buf = _buffer(frame)
            size = buf.nbytes
        expected = dt.itemsize
        for n in shape:
            expected *= n
        if size != expected:
            raise ProtocolError(ErrorCode.BAD_ARRAY,
                                f"array {name!r}: shape {shape} of {dt.name} needs "
                                f"{expected} bytes, frame has {size}", request_id)
        # a view of the frame's bytes, shaped at once, then read-only (half the cost of
        # frombuffer and reshape on the frame's memoryview)
        a = np.ndarray(shape, dt, buf)
        a.flags.writeable = False
        out[name] = a
    return out


def peek_id(header: Any) -> str:
    """The request ``id`` to echo: the header's ``id`` if it is a usable string, else ``""``."""
    rid = header.get("id") if isinstance(header, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 else ""


def _load_header(frame: Any) -> dict[str, Any]:
    data = frame.bytes if type(frame) is zmq.Frame else bytes(_buffer(frame))
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"header is {len(data)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header is not UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"header must be a JSON object, got {type(header).__name__}")
    return header


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "header"
    return f"{where}: {err['msg']}"


# ---------------------------------------------------------------------------------------------
# Headers as the hot path sees them. pydantic's ``model_validate`` of ``RequestHeader`` /
# ``ReplyHeader`` costs ~10-20 us per message, more than the rest of the framing; the checks
# below accept exactly the headers those models accept (strict types, no coercion, the same
# bounds), and anything they do not accept goes through the pydantic model, which raises the
# precise error (so error messages are pydantic's, as before). tests/protocols checks the two
# agree on valid and mutated headers.

#: One array frame's description: (name, dtype string, shape).
Spec = tuple[str, str, list[int]]
_ABSENT = object()


class Request:
    """A checked request header: ``v``, ``id``, ``op``, ``arrays`` (``Spec`` tuples) and
    ``fields``, the header object itself (so ``fields["system"]`` is the operation's field)."""

    __slots__ = ("arrays", "fields", "id", "op", "v")

    def __init__(self, v: int, rid: str, op: str, arrays: list[Spec],
                 fields: dict[str, Any]) -> None:
        self.v, self.id, self.op, self.arrays, self.fields = v, rid, op, arrays, fields

    @property
    def model_extra(self) -> dict[str, Any]:
        """The fields besides the common ones (as pydantic's ``model_extra``)."""
        return {k: v for k, v in self.fields.items() if k not in _REQUEST_KEYS}


class ErrorInfo:
    __slots__ = ("code", "message", "retryable")

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        self.code, self.message, self.retryable = code, message, retryable


class Reply:
    """A checked reply header: ``v``, ``id``, ``ok``, ``error`` (``ErrorInfo`` or None),
    ``arrays`` and ``fields``, the header object itself."""

    __slots__ = ("arrays", "error", "fields", "id", "ok", "v")

    def __init__(self, v: int, rid: str, ok: bool, error: ErrorInfo | None,
                 arrays: list[Spec], fields: dict[str, Any]) -> None:
        self.v, self.id, self.ok, self.error, self.arrays, self.fields = \
            v, rid, ok, error, arrays, fields

    @property
    def model_extra(self) -> dict[str, Any]:
        """The operation's fields (everything but v, id, ok, error, arrays)."""
        return {k: v for k, v in self.fields.items() if k not in _REPLY_KEYS}

    def model_dump(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The header as a dict, without the keys in ``exclude`` (defaults filled in)."""
        out = {"v": self.v, "id": self.id, "ok": self.ok,
               "error": None if self.error is None else {
                   "code": self.error.code, "message": self.error.message,
                   "retryable": self.error.retryable},
               "arrays": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self.arrays],
               **self.model_extra}
        return {k: v for k, v in out.items() if k not in exclude}


_REQUEST_KEYS = frozenset(RequestHeader.model_fields)
_REPLY_KEYS = frozenset(ReplyHeader.model_fields)


def _specs(arrays: Any, max_length: int | None) -> list[Spec] | None:
    """The array specs of a header's ``arrays`` value, or None unless ``ArraySpec`` surely
    accepts every one (the caller then lets pydantic decide and word the error)."""
    if type(arrays) is not list or (max_length is not None and len(arrays) > max_length):
        return None
    out: list[Spec] = []
    for spec in arrays:
        if type(spec) is not dict or len(spec) != 3:  # extra="forbid": exactly these three
            return None
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if type(name) is not str or type(dtype) is not str or type(shape) is not list \
                or len(shape) > 8:
            return None
        for n in shape:
            if type(n) is not int or n < 0:
                return None
        out.append((name, dtype, shape))
    return out


def _check_request(raw: dict[str, Any]) -> Request | None:
    """``raw`` as a ``Request`` when ``RequestHeader`` surely accepts it, else None."""
    v, rid, op = raw.get("v"), raw.get("id"), raw.get("op")
    if type(v) is not int or type(rid) is not str or not 0 < len(rid) <= 64 \
            or type(op) is not str:
        return None
    arrays = raw.get("arrays", _ABSENT)
    specs = [] if arrays is _ABSENT else _specs(arrays, 16)
    return None if specs is None else Request(v, rid, op, specs, raw)


def _check_reply(raw: dict[str, Any]) -> Reply | None:
    """``raw`` as a ``Reply`` when ``ReplyHeader`` surely accepts it, else None."""
    v, rid, ok = raw.get("v", VERSION), raw.get("id", ""), raw.get("ok")
    if type(v) is not int or type(rid) is not str or type(ok) is not bool:
        return None
    error = raw.get("error")
    info = None
    if error is not None:
        if type(error) is not dict:
            return None
        code, message = error.get("code"), error.get("message")
        retryable = error.get("retryable", False)
        if type(code) is not str or type(message) is not str or type(retryable) is not bool \
                or len(error) != 2 + ("retryable" in error):
            return None
        info = ErrorInfo(code, message, retryable)
    arrays = raw.get("arrays", _ABSENT)
    specs = [] if arrays is _ABSENT else _specs(arrays, None)
    return None if specs is None else Reply(v, rid, ok, info, specs, raw)


def _request_of(model: RequestHeader, raw: dict[str, Any]) -> Request:
    return Request(model.v, model.id, model.op,
                   [(a.name, a.dtype, list(a.shape)) for a in model.arrays], raw)


def _reply_of(model: ReplyHeader, raw: dict[str, Any]) -> Reply:
    err = model.error
    return Reply(model.v, model.id, model.ok,
                 None if err is None else ErrorInfo(err.code, err.message, err.retryable),
                 [(a.name, a.dtype, list(a.shape)) for a in model.arrays], raw)


def decode_request(frames: Sequence[Any]) -> tuple[Request, dict[str, np.ndarray]]:
    """Check a request (frames after the routing envelope) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message: expected a header frame")
    raw = _load_header(frames[0])
    header = _check_request(raw)
    if header is None or header.v not in SUPPORTED_VERSIONS:
        rid = peek_id(raw)
        version = raw.get("v")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "header field 'v' (int) is missing or "
                                "not an integer", rid)
        if version not in SUPPORTED_VERSIONS:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"protocol version {version} is not spoken here; supported: "
                                f"{list(SUPPORTED_VERSIONS)}", rid)
        try:
            header = _request_of(RequestHeader.model_validate(raw), raw)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, _first_error(exc), rid) from None
    return header, _read_arrays(header.arrays, frames, header.id)


def decode_reply(frames: Sequence[Any]) -> tuple[Reply, dict[str, np.ndarray]]:
    """Check a reply (frames after any empty delimiter) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty reply")
    raw = _load_header(frames[0])
    header = _check_reply(raw)
    if header is None:
        try:
            header = _reply_of(ReplyHeader.model_validate(raw), raw)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed reply: {_first_error(exc)}",
                                peek_id(raw)) from None
    if header.v != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"reply speaks version {header.v}")
    return header, _read_arrays(header.arrays, frames, header.id)


def error_reply(request_id: str, code: ErrorCode, message: str,
                retryable: bool = False) -> list[Buffer]:
    """The frames of an error reply."""
    return encode({"v": VERSION, "id": request_id, "ok": False,
                   "error": {"code": str(code), "message": message, "retryable": retryable}})


def ok_reply(request_id: str, fields: dict[str, Any],
             arrays: Iterable[tuple[str, np.ndarray]] = ()) -> list[Buffer]:
    """The frames of a successful reply with the operation's fields and arrays."""
    return encode({"v": VERSION, "id": request_id, "ok": True, **fields}, arrays)
