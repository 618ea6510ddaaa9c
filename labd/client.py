"""``LabClient``: the Python client of a labd daemon (protocol v1).

Contract:

* ``LabClient(endpoint, timeout_s=30.0, retries=3)`` connects a DEALER socket with a stable
  routing identity, so a retried request is recognised by the daemon as the same client's.
* ``hello()``, ``describe(system)``, ``status()`` return the reply's fields as dicts;
  ``forward(system, x, theta)`` returns ``y`` (float32 ``[B, output_dim]``, a read-only view on
  the received frame); ``measure(...)`` also returns ``seq`` and ``elapsed_s``.
* ``submit(...)`` sends a forward without waiting and returns its request id; ``result(id)``
  waits for that reply. Several requests may be in flight; replies are matched by ``id``.
  ``result(id, retry=True)`` retries as ``measure`` does (below): the client keeps each
  submitted request until its ``result`` is taken, to send it again with the same id.
* Errors are raised as ``LabError`` subclasses named after the protocol's codes, carrying
  ``code``, ``message`` and ``retryable``. A request whose reply does not come within
  ``timeout_s`` raises ``ReplyTimeout`` (retryable).
* Retryable errors and lost replies are retried up to ``retries`` times with the *same* request
  ``id``, with a short backoff: the daemon answers a repeated ``id`` from its reply cache, so a
  retry never measures twice. When the connection drops (the daemon restarted), requests in
  flight are sent again once the link is back (checked every 50 ms), without waiting for the
  timeout.
* A daemon that refuses this client's CURVE key raises ``Unauthorized`` (within 50 ms).
* First contact: ``connect_timeout_s`` (default 5 s) after a client first waits for a reply,
  if no daemon has completed a connection's handshake with it yet, the wait raises
  ``Unreachable`` (a ``ReplyTimeout``, not retried) naming the endpoint and what to check;
  ``reach`` asks several daemons at once.
  Once in contact, every request has the full ``timeout_s`` (a daemon that answers but
  measures slowly is not unreachable).
* Arrays given to ``submit``/``forward`` are sent without copying: do not modify them until
  the reply has arrived.
* Message size: the client learns the daemon's ``max_message_bytes`` from ``hello`` (asked
  once, before the first forward) and never sends a request it knows will be refused. A
  forward larger than the limit is *split*: its rows go, in order, as the fewest requests of
  at most ``forward_rows(...)`` rows (sizes differing by one at most, the longer first), sent
  back to back, each with its own id (so each part is measured exactly once, retries included);
  ``result`` returns their ``y`` concatenated in the same order, ``elapsed_s`` summed, ``seq``
  of row 0 and ``parts`` = ``((seq, rows), ...)`` per request: rows are numbered
  consecutively *within* a part only (another client's request may be measured between two
  parts). A forward whose single row (with a shared ``theta``) exceeds the limit raises
  ``TooLarge`` without sending anything. A daemon whose ``hello`` states no limit gets every
  request as it is (an oversized one is answered ``too_large``).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from protocols.frames import decode_reply, encode, encode_forward
from protocols.transport import recv_frames, send_frames
from protocols.v1 import DEFAULT_CONTROL_ENDPOINT, VERSION, ErrorCode, ReplyHeader

#: The ``LabError`` subclass raised for each error code (``protocols.v1.ErrorCode``, and the
#: client's own ``timeout``), filled in as the subclasses are declared.
ERRORS: dict[str, type[LabError]] = {}


class LabError(Exception):
    """An error reply from the daemon (or no reply at all). A subclass states its code in its
    class statement, ``class Busy(LabError, code=ErrorCode.BUSY)``, which enters it in
    ``ERRORS``."""

    code = "error"

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            ERRORS[code] = cls

    def __init__(self, message: str, retryable: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class BadRequest(LabError, code=ErrorCode.BAD_REQUEST):
    """The daemon could not read the request (its header or frames): a bug in the client."""


class UnsupportedVersion(LabError, code=ErrorCode.UNSUPPORTED_VERSION):
    """The daemon does not speak this client's protocol version."""


class UnknownOp(LabError, code=ErrorCode.UNKNOWN_OP):
    """The daemon has no such operation (a daemon older than the client)."""


class UnknownSystem(LabError, code=ErrorCode.UNKNOWN_SYSTEM):
    """The daemon serves no system of that name (``labd status`` lists them)."""


class BadArray(LabError, code=ErrorCode.BAD_ARRAY):
    """An array's dtype, shape or size disagrees with its header or with the system."""


class OutOfRange(LabError, code=ErrorCode.OUT_OF_RANGE):
    """A value outside the system's range, or NaN or inf: refused before anything is driven."""


class TooLarge(LabError, code=ErrorCode.TOO_LARGE):
    """The request exceeds the daemon's ``max_message_bytes``."""


class Busy(LabError, code=ErrorCode.BUSY):
    """The system's queue is full, or the daemon is stopping: always retryable."""


class InstrumentFault(LabError, code=ErrorCode.INSTRUMENT_FAULT):
    """The instrument failed or timed out, or the store could not record the measurement."""


class Unauthorized(LabError, code=ErrorCode.UNAUTHORIZED):
    """This client may not use that operation or system, or the daemon refused its CURVE key."""


class ReplyTimeout(LabError, code="timeout"):
    """No reply within the client's ``timeout_s`` (retryable)."""


class Unreachable(ReplyTimeout, code="unreachable"):
    """No daemon completed a connection with this client within its ``connect_timeout_s``
    (a ``ReplyTimeout`` that is not retried)."""

    def __str__(self) -> str:
        return self.message


#: A client waiting for a reply looks at its connection's events after this long without one
#: (milliseconds): a dropped link's requests are sent again at most this late once it is back.
LINK_CHECK_MS = 50
#: Seconds a client waits for its first contact with a daemon (``Unreachable`` after that).
CONNECT_TIMEOUT_S = 5.0
#: Connection events the client watches: a dropped link, a new one, a refused handshake.
LINK_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
               | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)



#: Upper bound on a forward request's header besides the JSON-escaped system name (bytes):
#: ``v``, an ``id`` of up to 64 characters, ``op`` and two array specs of 20-digit shapes.
FORWARD_HEADER_BYTES = 320


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """``y`` [B, output_dim]; ``seq``: row 0's measurement number; ``elapsed_s``: instrument
    seconds; ``parts``: ``(seq, rows)`` of each request a split forward went as."""

    y: np.ndarray
    seq: int
    elapsed_s: float
    parts: tuple[tuple[int, int], ...] = ()


def forward_rows(limit: int, system: str, input_dim: int, param_dim: int,
                 per_row_theta: bool) -> int:
    """The most rows one forward request on ``system`` may carry within ``limit`` bytes
    (float32 ``x`` of ``input_dim``, ``theta`` of ``param_dim`` shared or per row); 0 when
    not even one fits."""
    header = FORWARD_HEADER_BYTES + len(json.dumps(system))
    row = 4 * (input_dim + (param_dim if per_row_theta else 0))
    free = limit - header - (0 if per_row_theta else 4 * param_dim)
    return max(0, free // max(1, row))


class LabClient:
    def __init__(self, endpoint: str = DEFAULT_CONTROL_ENDPOINT, timeout_s: float = 30.0,
                 retries: int = 3, curve: dict[str, bytes] | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """``curve``: ``{"server_key", "public_key", "secret_key"}`` (Z85) to use CURVE."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.connect_timeout_s = connect_timeout_s
        self._linked = False  # a daemon has completed a handshake with this client
        self._contact_by: float | None = None  # Unreachable after this, until linked
        self._curve = curve
        self._identity = b"labd-" + uuid.uuid4().bytes
        self._context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._pending: dict[str, list[Any]] = {}  # id -> request frames (to send again)
        self._arrived: dict[str, tuple[ReplyHeader, dict[str, np.ndarray]]] = {}
        self._submitted: dict[str, list[Any]] = {}  # id -> submitted frames, until result()
        self._split: dict[str, list[str]] = {}  # id of a split forward -> its parts' ids
        self._limit: int | None = None  # the daemon's max_message_bytes (hello)
        self._limit_asked = False
        # Request ids: 64 random bits per client and a counter (a uuid4 per request costs
        # microseconds; under CURVE several clients share a key name, hence the random part).
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count(1)
        self._connect()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self._identity)
        if self._curve is not None:
            sock.curve_serverkey = self._curve["server_key"]
            sock.curve_publickey = self._curve["public_key"]
            sock.curve_secretkey = self._curve["secret_key"]
        sock.setsockopt(zmq.RCVTIMEO, LINK_CHECK_MS)
        self._monitor = sock.get_monitor_socket(LINK_EVENTS)
        self._link_lost = False
        sock.connect(self.endpoint)
        self._socket = sock

    def _reconnect(self) -> None:
        self.close()
        self._connect()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)
            self._socket = None

    def _on_link_event(self) -> bool:
        """Handle one connection event; True when pending requests were sent again.

        A dropped connection (the daemon restarted, a cable was pulled) loses the requests in
        flight: once the link is back they are sent again with their ids. A refused handshake
        (CURVE key not allowed, or no key where one is needed) raises ``Unauthorized``.
        """
        event = recv_monitor_message(self._monitor)["event"]
        if event == zmq.EVENT_DISCONNECTED:
            self._link_lost = True
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            raise Unauthorized(f"{self.endpoint} refused the connection's security handshake "
                               f"(is this client's key on the daemon's allow-list?)")
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._linked = True
            if not self._link_lost:
                return False
            self._link_lost = False
            for frames in self._pending.values():
                self._socket.send_multipart(frames, copy=False)
            return bool(self._pending)
        return False

    def __enter__(self) -> LabClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def send(self, op: str, fields: dict[str, Any] | None = None,
             arrays: tuple[tuple[str, np.ndarray], ...] = (), request_id: str | None = None
             ) -> str:
        """Send one request without waiting; return its id."""
        if self._socket is None:
            raise RuntimeError("client is closed")
        rid = request_id or self._new_id()
        frames = [b"", *encode({"v": VERSION, "id": rid, "op": op, **(fields or {})}, arrays)]
        return self._send_frames(rid, frames)

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._id_counter):x}"

    def _send_frames(self, rid: str, frames: list[Any]) -> str:
        if self._socket is None:
            raise RuntimeError("client is closed")
        send_frames(self._socket, frames)
        self._pending[rid] = frames
        return rid

    def wait(self, rid: str, timeout_s: float | None = None
             ) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
        """The reply header and arrays of request ``rid``; raises ``LabError`` on error replies
        and ``ReplyTimeout`` when nothing comes within the timeout."""
        hit = self._arrived.pop(rid, None)
        if hit is None:
            hit = self._receive(rid, self.timeout_s if timeout_s is None else timeout_s)
        header, arrays = hit
        if not header.ok:
            err = header.error
            cls = ERRORS.get(str(err.code), LabError)
            raise cls(err.message, err.retryable, str(err.code))
        return header, arrays

    def _receive(self, rid: str, timeout: float) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
        """Receive replies until the one to ``rid`` comes (others wait in ``_arrived`` for
        their own ``wait``). A blocking receive, not a poll of two sockets: the connection's
        events are looked at whenever nothing came for ``LINK_CHECK_MS``."""
        sock = self._socket
        assert sock is not None
        deadline = time.monotonic() + timeout
        if not self._linked and self._contact_by is None:
            self._contact_by = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                if self._link_events():
                    deadline = time.monotonic() + timeout  # sent again: a fresh timeout
                elif not self._linked and time.monotonic() > self._contact_by:
                    raise self._unreachable() from None
                elif time.monotonic() > deadline:
                    raise ReplyTimeout(f"no reply to {rid} from {self.endpoint} within "
                                       f"{timeout:g} s", retryable=True) from None
                continue
            self._linked = True
            header, arrays = decode_reply(frames[1:] if not len(frames[0]) else frames)
            got = header.id
            if self._pending.pop(got, None) is None:
                continue  # a late duplicate of a reply already taken
            if got == rid:
                return header, arrays
            self._arrived[got] = (header, arrays)

    def _unreachable(self) -> Unreachable:
        return Unreachable(
            f"no labd daemon answered at {self.endpoint} within {self.connect_timeout_s:g} s: "
            f"is `labd serve` running there with that port in its --bind (the monitor page's "
            f"port is another), is the port open in the lab PC's firewall, and, for a daemon "
            f"with CURVE keys, is this client's server.key that daemon's?")

    def _link_events(self) -> bool:
        """Handle the connection's waiting events; True when requests were sent again."""
        resent = False
        while self._monitor.poll(0):
            resent = self._on_link_event() or resent
        return resent

    def call(self, op: str, fields: dict[str, Any] | None = None,
             arrays: tuple[tuple[str, np.ndarray], ...] = ()
             ) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
        """Send a request and wait for its reply, retrying retryable failures with the same id."""
        return self._retrying(self.send(op, fields, arrays),
                              lambda rid: self.send(op, fields, arrays, request_id=rid))

    def _retrying(self, rid: str, resend: Any, failed: LabError | None = None
                  ) -> tuple[ReplyHeader, dict[str, np.ndarray]]:
        """Wait for ``rid``, sending it again with ``resend(rid)`` after retryable failures
        (``failed``: how the first attempt failed, when the caller already waited once)."""
        for attempt in range(self.retries + 1):
            if failed is None:
                try:
                    return self.wait(rid)
                except LabError as exc:
                    failed = exc
            if not failed.retryable or attempt == self.retries:
                self._pending.pop(rid, None)
                raise failed
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
            if isinstance(failed, ReplyTimeout):
                self._reconnect()
            resend(rid)
            failed = None
        raise AssertionError("unreachable")

    # -- operations ---------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        header, _ = self.call("hello")
        reply = header.op_fields
        limit = reply.get("max_message_bytes")
        self._limit = limit if isinstance(limit, int) and limit > 0 else None
        self._limit_asked = True
        return reply

    @property
    def max_message_bytes(self) -> int | None:
        """The daemon's request size limit (bytes, all frames but the delimiter), from
        ``hello`` (asked on first use); ``None`` when the daemon does not state one."""
        if not self._limit_asked:
            self.hello()
        return self._limit

    def forward_rows(self, system: str, input_dim: int, param_dim: int,
                     per_row_theta: bool) -> int | None:
        """The most rows one forward request on ``system`` may carry under the daemon's limit
        (module function ``forward_rows``); ``None`` when the daemon states no limit."""
        limit = self.max_message_bytes
        if limit is None:
            return None
        return forward_rows(limit, system, input_dim, param_dim, per_row_theta)

    def describe(self, system: str) -> dict[str, Any]:
        header, _ = self.call("describe", {"system": system})
        return dict(header.op_fields["system"])

    def status(self) -> dict[str, Any]:
        header, _ = self.call("status")
        return header.op_fields

    def measure(self, system: str, x: np.ndarray, theta: np.ndarray) -> ForwardResult:
        """One physical forward pass: ``y``, the first row's ``seq`` and the instrument time
        (retried: ``result(submit(...), retry=True)``)."""
        x, theta = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(theta, np.float32)
        return self.result(self.submit(system, x, theta), retry=True)

    def forward(self, system: str, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """``y = f_physical(x, theta)`` measured on ``system``: float32 ``[B, output_dim]``."""
        return self.measure(system, x, theta).y

    def submit(self, system: str, x: np.ndarray, theta: np.ndarray) -> str:
        """Send a forward request (``send("forward", {"system": system}, (("x", x), ("theta",
        theta)))``, framed directly) without waiting; collect it with ``result(id)``. The
        request is kept until then (for a retry)."""
        rid = self._new_id()
        frames = encode_forward(rid, system, x, theta, delimiter=True)
        limit = self._limit if self._limit_asked else self.max_message_bytes
        if limit is not None and sum(map(len, frames)) > limit:
            return self._submit_split(rid, system, x, theta, limit)
        self._submitted[rid] = frames
        return self._send_frames(rid, frames)

    def _submit_split(self, rid: str, system: str, x: np.ndarray, theta: np.ndarray,
                      limit: int) -> str:
        """Send an oversized forward as parts under ``limit`` (module docstring); ``rid``
        names the whole for ``result``."""
        x, theta = np.ascontiguousarray(x), np.ascontiguousarray(theta)
        per_row = theta.ndim == 2
        most = forward_rows(limit, system, x.shape[1] if x.ndim == 2 else 0,
                            theta.shape[-1] if theta.ndim else 0, per_row)
        if most == 0:
            raise TooLarge(f"one row of a forward on {system!r} does not fit in the daemon's "
                           f"{limit}-byte message limit (raise [server] max_message_bytes)")
        count = -(-x.shape[0] // most)
        base, extra = divmod(x.shape[0], count)  # the first ``extra`` parts one row longer
        bounds = itertools.accumulate((base + (k < extra) for k in range(count)), initial=0)
        parts = []
        for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
            pid = f"{rid}.{k}"
            frames = encode_forward(pid, system, x[start:stop],
                                    theta[start:stop] if per_row else theta, delimiter=True)
            self._submitted[pid] = frames
            parts.append(self._send_frames(pid, frames))
        self._split[rid] = parts
        return rid

    def result(self, rid: str, retry: bool = False) -> ForwardResult:
        """Wait for the reply to ``submit``'s request ``rid``: ``y``, ``seq``, ``elapsed_s``.

        ``retry=False``: an error reply or a timeout raises at once. ``retry=True``: a retryable
        failure (instrument fault, busy, ``ReplyTimeout``) sends the kept request again with
        the same id, up to ``retries`` times with backoff, as ``measure`` does (the daemon
        answers a repeat from its reply cache: never measured twice). Either way the request
        is forgotten once this returns or raises; ``rid`` must come from ``submit`` when
        ``retry`` (``KeyError`` otherwise). A split forward's parts are waited for in order;
        when one fails, the others are forgotten (their replies dropped) and it raises."""
        parts = self._split.pop(rid, None)
        if parts is None:
            return self._result(rid, retry)
        results = []
        try:
            for pid in parts:
                results.append(self._result(pid, retry))
        finally:
            for pid in parts[len(results) + 1:]:
                self._submitted.pop(pid, None)
                self._pending.pop(pid, None)
                self._arrived.pop(pid, None)
        return ForwardResult(y=np.concatenate([r.y for r in results]), seq=results[0].seq,
                             elapsed_s=sum(r.elapsed_s for r in results),
                             parts=tuple((r.seq, r.y.shape[0]) for r in results))

    def _result(self, rid: str, retry: bool) -> ForwardResult:
        frames = self._submitted.pop(rid, None)
        if retry and frames is None:
            raise KeyError(f"{rid!r} is no request of submit() awaiting its result")
        try:
            header, arrays = self.wait(rid)
        except LabError as exc:  # the first attempt failed: retry it when it may succeed
            if not retry:
                raise
            header, arrays = self._retrying(rid, lambda r: self._send_frames(r, frames), exc)
        return _forward_result(header, arrays)


def reach(endpoints: list[str], timeout_s: float = 120.0,
          curve: dict[str, bytes] | None = None) -> list[dict[str, Any]]:
    """Each daemon's ``hello``, all connecting at once: ``Unreachable`` naming the first that
    made no contact within ``CONNECT_TIMEOUT_S`` (``timeout_s``: the wait for a daemon in
    contact)."""
    clients = [LabClient(e, timeout_s=timeout_s, retries=0, curve=curve) for e in endpoints]
    try:
        return [client.hello() for client in clients]
    finally:
        for client in clients:
            client.close()


def curve_keys(server_public_file: str | Path, client_secret_file: str | Path
               ) -> dict[str, bytes]:
    """The ``curve`` argument of ``LabClient`` from certificate files made by ``labd keys``:
    the server's public ``server.key`` and the client's ``NAME.key_secret``."""
    server_public, _ = zmq.auth.load_certificate(str(server_public_file))
    public, secret = zmq.auth.load_certificate(str(client_secret_file))
    if secret is None:
        raise ValueError(f"{client_secret_file} holds no secret key (use the .key_secret file)")
    return {"server_key": server_public, "public_key": public, "secret_key": secret}


def _forward_result(header: ReplyHeader, arrays: dict[str, np.ndarray]) -> ForwardResult:
    fields = header.fields
    y = arrays["y"]
    seq = int(fields["seq"])
    return ForwardResult(y=y, seq=seq, elapsed_s=float(fields["elapsed_s"]),
                         parts=((seq, y.shape[0]),))
