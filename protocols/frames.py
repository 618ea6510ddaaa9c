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
  request's ``id`` when one was readable. The header's fields are checked by
  ``protocols.v1.request_header``.
* ``decode_reply(frames)`` is the client's side of the same checks (``v1.reply_header``).

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

from protocols.v1 import (
    VERSION,
    ArraySpec,
    ErrorCode,
    ProtocolError,
    ReplyHeader,
    RequestHeader,
    reply_header,
    request_header,
)

# Element types an array frame may carry. Anything else (objects, strings, structured or
# big-endian types) is refused with ``bad_array``.
ALLOWED_DTYPES = frozenset(
    ["float16", "float32", "float64", "int8", "int16", "int32", "int64",
     "uint8", "uint16", "uint32", "uint64", "bool"]
)
MAX_HEADER_BYTES = 64 * 1024

Buffer = bytes | memoryview


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


def _read_arrays(specs: Sequence[ArraySpec], frames: Sequence[Any],
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


def decode_request(frames: Sequence[Any]) -> tuple[RequestHeader, dict[str, np.ndarray]]:
    """Check a request (frames after the routing envelope) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message: expected a header frame")
    header = request_header(_load_header(frames[0]))
    return header, _read_arrays(header.arrays, frames, header.id)


def decode_reply(frames: Sequence[Any]) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
    """Check a reply (frames after any empty delimiter) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty reply")
    header = reply_header(_load_header(frames[0]))
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
