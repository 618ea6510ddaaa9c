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
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from protocols.v1 import (
    SUPPORTED_VERSIONS,
    VERSION,
    ArraySpec,
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
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), *buffers]


def _read_arrays(specs: Sequence[ArraySpec], frames: Sequence[Any],
                 request_id: str) -> dict[str, np.ndarray]:
    if len(frames) != len(specs):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"header names {len(specs)} array(s) but {len(frames)} array "
                            f"frame(s) followed", request_id)
    out: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames, strict=True):
        if spec.name in out:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"array {spec.name!r} named twice",
                                request_id)
        try:
            dt = parse_dtype(spec.dtype)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_ARRAY, f"array {spec.name!r}: {exc}",
                                request_id) from None
        buf = _buffer(frame)
        expected = math.prod(spec.shape) * dt.itemsize
        if buf.nbytes != expected:
            raise ProtocolError(ErrorCode.BAD_ARRAY,
                                f"array {spec.name!r}: shape {spec.shape} of {dt.name} needs "
                                f"{expected} bytes, frame has {buf.nbytes}", request_id)
        a = np.frombuffer(buf, dtype=dt).reshape(spec.shape)
        a.flags.writeable = False
        out[spec.name] = a
    return out


def peek_id(header: Any) -> str:
    """The request ``id`` to echo: the header's ``id`` if it is a usable string, else ``""``."""
    rid = header.get("id") if isinstance(header, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 else ""


def _load_header(frame: Any) -> dict[str, Any]:
    buf = _buffer(frame)
    if buf.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"header is {buf.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(buf).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"header must be a JSON object, got {type(header).__name__}")
    return header


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "header"
    return f"{where}: {err['msg']}"


def decode_request(frames: Sequence[Any]) -> tuple[RequestHeader, dict[str, np.ndarray]]:
    """Check a request (frames after the routing envelope) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message: expected a header frame")
    raw = _load_header(frames[0])
    rid = peek_id(raw)
    version = raw.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header field 'v' (int) is missing or not an "
                            "integer", rid)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"protocol version {version} is not spoken here; supported: "
                            f"{list(SUPPORTED_VERSIONS)}", rid)
    try:
        header = RequestHeader.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, _first_error(exc), rid) from None
    return header, _read_arrays(header.arrays, frames[1:], rid)


def decode_reply(frames: Sequence[Any]) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
    """Check a reply (frames after any empty delimiter) and return its header and arrays."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty reply")
    raw = _load_header(frames[0])
    try:
        header = ReplyHeader.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed reply: {_first_error(exc)}",
                            peek_id(raw)) from None
    if header.v != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"reply speaks version {header.v}")
    return header, _read_arrays(header.arrays, frames[1:], header.id)


def error_reply(request_id: str, code: ErrorCode, message: str,
                retryable: bool = False) -> list[Buffer]:
    """The frames of an error reply."""
    return encode({"v": VERSION, "id": request_id, "ok": False,
                   "error": {"code": str(code), "message": message, "retryable": retryable}})


def ok_reply(request_id: str, fields: dict[str, Any],
             arrays: Iterable[tuple[str, np.ndarray]] = ()) -> list[Buffer]:
    """The frames of a successful reply with the operation's fields and arrays."""
    return encode({"v": VERSION, "id": request_id, "ok": True, **fields}, arrays)
