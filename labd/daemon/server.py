"""The labd server loop: one ROUTER control socket, one worker thread per physical system.

Contract (protocol v1, see ``protocols/v1.py``):

* The server thread owns the ROUTER socket (and the optional PUB event socket). It receives
  every request, checks it completely (framing, header, system, shapes, ranges) and answers
  ``hello``, ``describe``, ``status`` and every error itself, so a slow system never delays
  them. A checked ``forward`` goes to its system's worker queue (``busy`` when full); systems
  marked ``inline`` (instantaneous ones such as the loopback) are measured on this thread.
* Requests for one system are measured one at a time in arrival order; different systems run
  concurrently. Replies come back from the workers through an inproc PULL socket.
* A forward request is identified by (client, ``id``). A repeat of an ``id`` whose measurement
  succeeded gets the cached reply again (failures are not cached: a retry measures); a repeat
  of one still being measured is dropped (the client gets the one reply when it is ready).
  With a store, the cache starts filled with the last recorded measurements, so a retry across
  a crash and restart is answered from the record. Nothing is measured or recorded twice.
* A watchdog abandons an instrument call that hangs past the system's ``timeout_s``: the
  request is answered ``instrument_fault`` (retryable), the system is marked ``fault``, and a
  fresh worker with freshly opened instruments takes over its queue. The daemon never freezes.
* Every forward is counted in its system's ``SystemStats`` (``labd.daemon.metrics``); the
  ``monitor`` operation answers them with each system's state and queue (read-only, like
  ``status``).
* Clean shutdown (``stop()``, wired to SIGINT/SIGTERM): no new requests are read; queued
  requests are answered ``busy`` (retryable); the jobs in hand finish; drivers close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

import zmq

from labd import __version__
from labd.config import DaemonConfig
from labd.daemon.auth import AllowList, Authenticator, is_loopback, load_server_keys
from labd.daemon.metrics import SystemStats
from labd.daemon.recording import SequenceCounter, package_versions
from labd.daemon.system import PhysicalSystem, SystemFault, build_systems
from labd.daemon.worker import Job, SystemWorker, finish_job, measure_job
from labd.store.reader import StoreReader
from labd.store.writer import Store
from protocols.frames import Buffer, decode_request, error_reply, ok_reply
from protocols.transport import recv_frames, send_frames
from protocols.v1 import (
    SUPPORTED_VERSIONS,
    VERSION,
    ErrorCode,
    ProtocolError,
    RequestHeader,
    peek_id,
)

log = logging.getLogger("labd.server")

PIPE_ENDPOINT = "inproc://labd-replies"
POLL_MS = 100
POLLIN = int(zmq.POLLIN)
#: Frames larger than this many times the configured message limit are dropped by ZeroMQ itself
#: (the peer is disconnected); smaller oversized requests get a ``too_large`` reply.
HARD_LIMIT_FACTOR = 4


def _bytes(frame: Any) -> bytes:
    """A received ``zmq.Frame``'s bytes, or a buffer's."""
    return frame.bytes if type(frame) is zmq.Frame else bytes(frame)


class InsecureBind(Exception):
    """A non-loopback endpoint without CURVE, and the configuration did not say insecure."""


class ReplyCache:
    """The last replies to forward requests, by (client, id), bounded in count and bytes."""

    def __init__(self, entries: int, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._replies: OrderedDict[tuple[str, str], tuple[list[Any], int]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> list[Any] | None:
        hit = self._replies.get(key)
        return None if hit is None else hit[0]

    def put(self, key: tuple[str, str], frames: list[Any]) -> None:
        if self._entries == 0:
            return
        size = sum(map(len, frames))
        self._replies[key] = (frames, size)
        self._bytes += size
        while self._replies and (len(self._replies) > self._entries
                                 or self._bytes > self._max_bytes):
            _, (_, dropped) = self._replies.popitem(last=False)
            self._bytes -= dropped


class Daemon:
    def __init__(self, config: DaemonConfig, store: Store | None = None,
                 systems: dict[str, PhysicalSystem] | None = None) -> None:
        """``systems``: ``build_systems(config)``'s, when the caller built them already."""
        self.config = config
        self.store = store
        self.started = time.monotonic()
        self.context = zmq.Context()
        self._stop = threading.Event()
        self.sequence = SequenceCounter(store.next_seq() if store else 0)
        self.systems = build_systems(config) if systems is None else systems
        self.workers: dict[str, SystemWorker] = {}
        self.inline: set[str] = set()  # systems measured on the server thread
        self.stats = {name: SystemStats() for name in self.systems}
        self.refused: dict[str, int] = {}  # error replies of the server thread, by code
        self.started_at = time.time()
        self._inflight: set[tuple[str, str]] = set()
        self._cache = ReplyCache(config.server.reply_cache)
        self._server_keys: tuple[bytes, bytes] | None = None
        self._authenticator: Authenticator | None = None
        self.router: zmq.Socket | None = None
        self.events: zmq.Socket | None = None
        self._pipe: zmq.Socket | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def _secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server when the configuration asks for it."""
        if self._server_keys is not None:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self._server_keys

    def bind(self) -> None:
        """Bind the sockets and start the workers.

        Raises ``zmq.ZMQError`` if a port is taken, ``InsecureBind`` for a non-loopback endpoint
        without CURVE (unless the configuration says ``insecure``).
        """
        server, security = self.config.server, self.config.security
        for endpoint in (server.control, server.events):
            if endpoint and not is_loopback(endpoint) and not security.curve \
                    and not security.insecure:
                raise InsecureBind(
                    f"refusing to bind {endpoint} without CURVE keys: anyone on the network "
                    f"could drive the instruments. Configure [security] (see `labd keys`), "
                    f"bind 127.0.0.1, or pass --insecure")
        if security.curve:
            self._server_keys = load_server_keys(security.server_key)
            self._authenticator = Authenticator(self.context, AllowList(security.clients))
            self._authenticator.start()
        self.router = self.context.socket(zmq.ROUTER)
        self._secure(self.router)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.setsockopt(zmq.MAXMSGSIZE, HARD_LIMIT_FACTOR * server.max_message_bytes)
        self.router.setsockopt(zmq.SNDHWM, 10000)
        self.router.setsockopt(zmq.RCVHWM, 10000)
        self.router.bind(server.control)
        if server.events:
            self.events = self.context.socket(zmq.PUB)
            self._secure(self.events)
            self.events.setsockopt(zmq.LINGER, 0)
            self.events.bind(server.events)
        self._pipe = self.context.socket(zmq.PULL)
        self._pipe.bind(PIPE_ENDPOINT)
        if self.store is not None:
            self.store.start_run(self.config.model_dump(mode="json"),
                                 {n: s.describe() for n, s in self.systems.items()},
                                 package_versions())
            with StoreReader(self.store.path) as recorded:  # retries across a restart
                for r in recorded.last(server.reply_cache):
                    self._cache.put((r.client, r.request_id), ok_reply(
                        r.request_id, {"seq": r.seq, "elapsed_s": r.elapsed_s}, [("y", r.y)]))
        for name, system in self.systems.items():
            if system.config.inline:
                system.open()
                self.inline.add(name)
            else:
                jobs: queue.Queue = queue.Queue(system.config.queue_depth or server.queue_depth)
                self._start_worker(system, jobs)
        log.info("serving %s on %s", ", ".join(self.systems), server.control)

    def _start_worker(self, system: PhysicalSystem, jobs: queue.Queue,
                      faulted: bool = False) -> None:
        worker = SystemWorker(system, self.context, PIPE_ENDPOINT, self.sequence,
                              self.store, jobs, self.stats[system.name])
        worker.faulted = faulted
        self.systems[system.name] = system
        self.workers[system.name] = worker
        worker.start()

    def _watchdog(self) -> None:
        """Abandon instrument calls that hang past their system's ``timeout_s``."""
        now = time.monotonic()
        for name, worker in list(self.workers.items()):
            if not worker.overdue(now):
                continue
            job, pending = worker.abandon()
            if pending is not None:  # the previous job's reply, measured and recorded
                self._deliver(pending)
            if job is None:
                continue
            timeout = worker.system.config.timeout_s
            message = (f"{name}: an instrument call hung for more than {timeout:g} s; it was "
                       f"abandoned and the instruments are being reopened")
            log.error("%s", message)
            self._inflight.discard((job.client, job.request_id))
            self.stats[name].fault(job.client)
            self._send(job.envelope, error_reply(job.request_id, ErrorCode.INSTRUMENT_FAULT,
                                                 message, retryable=True))
            self._publish("fault", {"system": name, "message": message, "retryable": True})
            fresh = PhysicalSystem.from_config(name, worker.system.config)
            self._start_worker(fresh, worker.jobs, True)

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    def serve(self) -> None:
        """Run until ``stop()``; then shut down cleanly."""
        assert self.router is not None and self._pipe is not None
        if not self.workers:
            self._serve_inline()
        else:
            self._serve_with_workers()
        self._shutdown()

    def _serve_with_workers(self) -> None:
        assert self.router is not None and self._pipe is not None
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._pipe, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            self._watchdog()
            if self._pipe in ready:
                self._drain_pipe()
            if self.router in ready:
                self._read_requests()

    def _serve_inline(self) -> None:
        """The loop of a daemon whose systems are all inline: no worker replies to wait for
        and no calls to watch, so a blocking receive (with a timeout, to notice ``stop()``)
        takes the place of polling two sockets."""
        assert self.router is not None
        self.router.setsockopt(zmq.RCVTIMEO, POLL_MS)
        while not self._stop.is_set():
            try:
                frames = recv_frames(self.router)
            except zmq.Again:
                continue
            self._on_request(frames)
            if self.router.get(zmq.EVENTS) & POLLIN:
                self._read_requests()

    def _read_requests(self) -> None:
        """Answer what is queued on the router, up to 64 messages, asking the socket whether
        more wait instead of provoking (and catching) zmq.Again after the last one."""
        assert self.router is not None
        for _ in range(64):
            self._on_request(recv_frames(self.router))
            if not self.router.get(zmq.EVENTS) & POLLIN:
                return

    def _shutdown(self) -> None:
        log.info("shutting down: finishing requests in hand")
        for worker in self.workers.values():
            worker.stop()
        deadline = time.monotonic() + max(
            (w.system.config.timeout_s for w in self.workers.values()), default=1.0)
        while any(w.is_alive() for w in self.workers.values()) and time.monotonic() < deadline:
            if self._pipe.poll(POLL_MS):
                self._drain_pipe()
        self._drain_pipe()
        for name, system in self.systems.items():
            if name in self.inline:
                system.close()
        if self.store is not None:
            self.store.close()
        for sock in (self.router, self.events, self._pipe):
            if sock is not None:
                sock.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.term()
        log.info("stopped")

    # -- replies from workers -----------------------------------------------------------------

    def _drain_pipe(self) -> None:
        assert self._pipe is not None and self.router is not None
        while True:
            try:
                msg = self._pipe.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if msg[0].bytes == b"event":
                self._publish(msg[1].bytes.decode(), json.loads(msg[2].bytes))
            else:
                self._deliver(msg)

    def _deliver(self, msg: list[Any]) -> None:
        """Send a worker's reply (a ``pipe_message``, as frames or buffers) to its client."""
        kind, client, request_id, n_env = (_bytes(f) for f in msg[:4])
        n = int(n_env)
        envelope = [_bytes(f) for f in msg[4:4 + n]]
        frames = msg[4 + n:]
        key = (client.decode(), request_id.decode())
        self._inflight.discard(key)
        if kind == b"forward":
            self._cache.put(key, frames)
        self._send(envelope, frames)

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.send_multipart([topic.encode(), json.dumps(
                {"v": VERSION, "time": time.time(), **body}).encode()])

    def _send(self, envelope: list[bytes], frames: list[Any]) -> None:
        assert self.router is not None
        try:
            send_frames(self.router, [*envelope, *frames])
        except zmq.ZMQError as exc:  # the client went away; nothing to deliver to
            log.debug("reply not delivered: %s", exc)

    # -- requests -----------------------------------------------------------------------------

    def _client_name(self, frames: list[zmq.Frame]) -> str:
        """The client's key name under CURVE, else its routing identity in hex."""
        if self._authenticator is not None and len(frames) > 1:
            return frames[1].get("User-Id")
        return frames[0].bytes.hex()

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        if len(frames) > 1 and len(frames[1]) == 0:  # REQ, or a DEALER that sends a delimiter
            envelope, body = [ident, b""], frames[2:]
        else:
            envelope, body = [ident], frames[1:]
        try:
            reply = self._handle(envelope, self._client_name(frames), body)
        except ProtocolError as exc:
            code = str(exc.code)
            self.refused[code] = self.refused.get(code, 0) + 1
            reply = error_reply(exc.request_id, exc.code, exc.message, exc.retryable)
        except Exception as exc:
            log.exception("internal error on a request")
            rid = ""
            with contextlib.suppress(ValueError):
                rid = peek_id(json.loads(body[0].bytes)) if body else ""
            reply = error_reply(rid, ErrorCode.BAD_REQUEST, f"internal error: {exc}")
        if reply is not None:
            self._send(envelope, reply)

    def _handle(self, envelope: list[bytes], client: str,
                body: list[zmq.Frame]) -> list[Buffer] | None:
        size = sum(map(len, body))
        limit = self.config.server.max_message_bytes
        if size > limit:
            rid = ""
            if body and len(body[0]) <= 65536:
                with contextlib.suppress(ValueError):
                    rid = peek_id(json.loads(body[0].bytes))
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is "
                                f"{limit} bytes (split the batch)", rid)
        header, arrays = decode_request(body)
        rid = header.id
        op = header.op
        if op == "hello":
            return ok_reply(rid, {"server": "labd", "version": __version__,
                                  "protocols": list(SUPPORTED_VERSIONS),
                                  "systems": list(self.systems),
                                  "max_message_bytes": limit})
        if op == "status":
            return ok_reply(rid, self.status())
        if op == "monitor":
            return self._monitor(rid, header, client)
        if op in ("describe", "forward"):
            system = self._system(header)
            allowed = system.config.clients
            if allowed is not None and client not in allowed:
                log.warning("client %s refused %s on %s", client, op, system.name)
                if op == "forward":
                    self.stats[system.name].answered("unauthorized", client)
                raise ProtocolError(ErrorCode.UNAUTHORIZED, f"client {client!r} may not use "
                                    f"system {system.name!r}", rid)
            if op == "describe":
                return ok_reply(rid, {"system": system.describe()})
            try:
                return self._forward(envelope, client, header, system, arrays)
            except ProtocolError as exc:
                self.stats[system.name].answered(str(exc.code), client)
                raise
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown operation {op!r}; this daemon "
                            f"answers hello, describe, forward, status, monitor", rid)

    def _system(self, header: RequestHeader) -> PhysicalSystem:
        name = header.fields.get("system")
        if not isinstance(name, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"{header.op} needs the field 'system' (string)", header.id)
        try:
            return self.systems[name]
        except KeyError:
            raise ProtocolError(ErrorCode.UNKNOWN_SYSTEM,
                                f"no system {name!r}; this daemon has {list(self.systems)}",
                                header.id) from None

    def _forward(self, envelope: list[bytes], client: str, header: RequestHeader,
                 system: PhysicalSystem, arrays: dict[str, Any]) -> list[Buffer] | None:
        rid = header.id
        if len(arrays) != 2 or "x" not in arrays or "theta" not in arrays:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"forward needs exactly the arrays 'x' and 'theta', got "
                                f"{sorted(arrays)}", rid)
        x, theta = arrays["x"], arrays["theta"]
        try:
            system.check(x, theta)
        except ProtocolError as exc:
            exc.request_id = rid
            raise
        key = (client, rid)  # the key's name under CURVE: a forged routing id gains nothing
        cached = self._cache.get(key)
        if cached is not None:
            log.info("repeated id %r from %s: answered from the cache", rid, client)
            self.stats[system.name].answered("cached", client)
            return cached
        if key in self._inflight:
            log.info("repeated id %r from %s while in flight: dropped", rid, client)
            return None
        job = Job(envelope=envelope, client=client, request_id=rid, x=x,
                  theta=theta, received=time.time())
        if system.name in self.inline:
            stats = self.stats[system.name]
            result = measure_job(system, job)
            frames = finish_job(system, job, result, self.sequence, self.store, stats)
            if isinstance(result, SystemFault):
                system.close()
                try:
                    system.open()
                    stats.reconnects += 1
                except Exception:  # a failed reopen shows as a fault on the next request
                    log.exception("%s: cannot reopen the instruments", system.name)
            else:
                self._cache.put(key, frames)
            return frames
        try:
            self.workers[system.name].submit(job)
        except queue.Full:
            raise ProtocolError(ErrorCode.BUSY, f"system {system.name!r} has "
                                f"{self.workers[system.name].jobs.maxsize} requests waiting; "
                                f"retry later", rid, retryable=True) from None
        self._inflight.add(key)
        return None

    def status(self) -> dict[str, Any]:
        systems: dict[str, Any] = {}
        for name in self.systems:
            stats = self.stats[name]
            state, queued = "ready", 0
            if name not in self.inline:
                w = self.workers[name]
                state, queued = w.state(), w.jobs.qsize()
            systems[name] = {"state": state, "queued": queued, "served": stats.served,
                             "errors": stats.faults}
        return {"uptime_s": round(time.monotonic() - self.started, 3), "systems": systems,
                "next_seq": self.sequence.next}

    def _monitor(self, rid: str, header: RequestHeader, client: str) -> list[Buffer]:
        """The ``monitor`` reply: ``status`` with every system's counters added, the store's
        backlog, refusals; with ``last: true``, the first row of each system's last
        measurement as arrays ``NAME/x``, ``NAME/theta``, ``NAME/y`` (of the systems this
        client may use)."""
        now = time.time()
        reply = self.status()
        arrays: list[tuple[str, Any]] = []
        for name, fields in reply["systems"].items():
            system, stats = self.systems[name], self.stats[name]
            depth = 0 if name in self.inline else self.workers[name].jobs.maxsize
            fields.update(stats.to_json(now), kind=system.config.kind, queue_depth=depth)
            allowed = system.config.clients
            if header.fields.get("last") is True and (allowed is None or client in allowed):
                arrays += stats.last_arrays(name)
        store = None
        if self.store is not None:
            store = {"path": str(self.store.path.absolute()),
                     "backlog_bytes": self.store.backlog()}
        reply.update(version=__version__, host=socket.gethostname(), started=self.started_at,
                     store=store, refused=dict(self.refused))
        return ok_reply(rid, reply, arrays)
