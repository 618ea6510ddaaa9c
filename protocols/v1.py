"""labd wire protocol, version 1: message headers and error codes.

The contract, in this project's words (the page it implements is ``wire-protocol-v1.md``):

* Transport is ZeroMQ. The daemon binds one ROUTER socket (the control endpoint, default
  ``tcp://127.0.0.1:5555``); clients connect with DEALER (several requests may be in flight)
  or REQ. A DEALER client sends an empty delimiter frame before the header, as REQ does.
* Every request and every reply is a multipart message: frame 0 is a UTF-8 JSON object (the
  header), frames 1..n are the raw bytes of each array named in ``header["arrays"]``, in order,
  C-order little-endian, exactly ``prod(shape) * itemsize`` bytes each (see ``frames.py``).
* A reply echoes the request's ``id`` (empty when none was readable) and says ``ok``; when ``ok``
  is false it carries ``error = {code, message, retryable}``.
* Operations: ``hello``, ``describe``, ``forward``, ``status`` (fields below).

The models here validate headers only; array frames are checked in ``frames.py``. Extra fields in
a request are allowed (a later minor revision may add some); the fields an operation needs are
checked strictly (no type coercion: ``"1"`` is not an ``int``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

VERSION = 1
SUPPORTED_VERSIONS = (1,)
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_EVENT_ENDPOINT = "tcp://127.0.0.1:5556"


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


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Open(BaseModel):
    """A header: strict on the fields it names, tolerant of fields it does not know."""

    model_config = ConfigDict(strict=True, extra="allow")


# ---------------------------------------------------------------------------------------------
# Common parts


RequestId = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class ArraySpec(_Strict):
    """One array frame: its name, numpy dtype string (e.g. ``"float32"``) and shape."""

    name: StrictStr
    dtype: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(max_length=8)


class ErrorInfo(_Strict):
    code: StrictStr  # one of ErrorCode; a client must tolerate codes it does not know
    message: StrictStr
    retryable: StrictBool = False


class RequestHeader(_Open):
    """The fields every request has; the operation's own fields ride along as extras."""

    v: StrictInt
    id: RequestId
    op: StrictStr
    arrays: list[ArraySpec] = Field(default_factory=list, max_length=16)


class ReplyHeader(_Open):
    v: StrictInt = VERSION
    id: StrictStr = ""
    ok: StrictBool
    error: ErrorInfo | None = None
    arrays: list[ArraySpec] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Operations: the fields each request carries besides the common ones, and each reply's fields.


class SystemRequest(_Open):
    """Fields of ``describe`` and ``forward``: the system the request is for."""

    system: StrictStr


class HelloReply(_Open):
    server: Literal["labd"] = "labd"
    version: StrictStr
    protocols: list[StrictInt]
    systems: list[StrictStr]


class SystemDescription(_Open):
    """What ``describe`` tells of a system (the spec's required fields; extras allowed).

    Ranges are closed intervals ``[lo, hi]`` that every element of ``x`` (resp. ``theta``) must
    lie in. ``max_batch`` is the largest batch measured in one go; larger ones are chunked.
    """

    name: StrictStr
    kind: StrictStr
    input_dim: StrictInt
    param_dim: StrictInt
    output_dim: StrictInt
    input_range: tuple[float, float]
    param_range: tuple[float, float]
    max_batch: StrictInt
    simulated: StrictBool


class DescribeReply(_Open):
    system: SystemDescription


class ForwardReply(_Open):
    """``seq`` numbers row 0 of ``y``; rows are numbered consecutively. ``elapsed_s`` is the time
    the instrument spent measuring this request (seconds)."""

    seq: StrictInt
    elapsed_s: float


class SystemStatus(_Open):
    state: Literal["ready", "busy", "fault"]
    queued: StrictInt
    served: StrictInt
    errors: StrictInt


class StatusReply(_Open):
    uptime_s: float
    systems: dict[StrictStr, SystemStatus]


OPERATIONS = ("hello", "describe", "forward", "status")
