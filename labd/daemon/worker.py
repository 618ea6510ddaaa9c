"""One worker thread per physical system: measures its queued requests one at a time.

Contract:

* ``submit(job)`` queues a checked forward request; it raises ``queue.Full`` when ``queue_depth``
  requests already wait (the server answers ``busy``). Jobs are measured in arrival order.
* For each job the worker measures, takes consecutive sequence numbers for the rows, records
  the measurement (durably, before the reply leaves), and hands the reply frames to the server
  thread through its own PUSH socket (ZeroMQ sockets are not shared between threads).
* When another job is already queued, the reply is handed over while that job's shots run
  (``PhysicalSystem.measure``'s ``meanwhile``), not between the two measurements: handing it
  over wakes the server thread, which then holds the GIL for a while, and the instrument would
  wait for both (~1 ms per request measured here). Replies still leave in arrival order, each
  before the next job's ``read``; a job whose ``arm`` or ``output`` fails hands over the
  pending reply before its own.
* An instrument fault answers ``instrument_fault`` (with the driver's ``retryable``), counts a
  fault in the system's ``SystemStats``, publishes an event, and reopens the instruments with
  exponential backoff before the next job. The worker never dies of a driver exception.
* ``stop()`` fails every job still queued and ends the thread after the job in hand.
* Watchdog: ``overdue(now)`` tells the server thread that an instrument call has run past the
  system's ``timeout_s``; ``abandon()`` then detaches the worker atomically and returns the
  hung job and the previous job's reply if it was still pending (the server delivers it). An
  abandoned worker's late result is discarded (no sequence number, no record, no reply: the
  server has answered ``instrument_fault``), and its thread ends; a fresh worker with fresh
  instruments takes over the same queue.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from labd.daemon.metrics import SystemStats
from labd.daemon.recording import SequenceCounter
from labd.daemon.system import PhysicalSystem, SystemFault
from labd.store.writer import Measurement, Store
from protocols.frames import Buffer, error_reply, forward_reply
from protocols.v1 import ErrorCode

log = logging.getLogger("labd.worker")

REOPEN_BACKOFF_S = (0.05, 0.2, 1.0, 5.0)


@dataclass(slots=True)
class Job:
    envelope: list[bytes]  # routing identity and, for REQ/DEALER, the empty delimiter
    client: str  # who asked: the key's name with CURVE, else the routing identity in hex
    request_id: str
    x: np.ndarray
    theta: np.ndarray
    received: float  # time.time() on arrival


def pipe_message(kind: bytes, job: Job, frames: list[Buffer]) -> list[Buffer]:
    """What a worker sends to the server thread: kind (``forward`` for a measurement, ``error``
    for a failure, which is not cached so that a retry measures), client, request id, envelope
    size, envelope, reply frames."""
    return [kind, job.client.encode(), job.request_id.encode(), str(len(job.envelope)).encode(),
            *job.envelope, *frames]


def measure_job(system: PhysicalSystem, job: Job, meanwhile: Callable[[], None] | None = None
                ) -> tuple[np.ndarray, float] | SystemFault:
    """Measure one job: ``(y, instrument seconds)``, or the fault that stopped it
    (``meanwhile``: see ``PhysicalSystem.measure``)."""
    try:
        return system.measure(job.x, job.theta, meanwhile)
    except SystemFault as fault:
        log.warning("%s: instrument fault: %s", system.name, fault)
        return fault


def finish_job(system: PhysicalSystem, job: Job, result: tuple[np.ndarray, float] | SystemFault,
               sequence: SequenceCounter, store: Store | None, stats: SystemStats
               ) -> list[Buffer]:
    """The reply frames of a measured job, counted in ``stats``.

    On success the rows get consecutive sequence numbers and the measurement is recorded
    (durably) before the reply frames exist.
    """
    if isinstance(result, SystemFault):
        stats.fault(job.client)
        return error_reply(job.request_id, ErrorCode.INSTRUMENT_FAULT, str(result),
                           result.retryable)
    y, elapsed = result
    seq = sequence.take(job.x.shape[0])
    done = time.time()
    try:
        if store is not None and system.config.record:
            store.record(Measurement(
                system=system.name, seq=seq, client=job.client, request_id=job.request_id,
                x=job.x, theta=job.theta, y=y, received=job.received, done=done,
                elapsed_s=elapsed))
        elif store is not None:  # not recorded, but its numbers must not be handed out again
            store.reserve(system.name, seq, job.x.shape[0])
    except Exception as exc:  # a full disk must cost a reply, not the worker
        log.exception("%s: the store failed", system.name)
        stats.answered("instrument_fault", job.client)
        return error_reply(job.request_id, ErrorCode.INSTRUMENT_FAULT,
                           f"measured, but the store could not record it ({exc}); the result "
                           f"is withheld so that nothing unrecorded reaches a client",
                           retryable=True)
    stats.measured(job.client, seq, job.x, job.theta, y, elapsed, job.received, done)
    return forward_reply(job.request_id, seq, elapsed, y)


class SystemWorker(threading.Thread):
    def __init__(self, system: PhysicalSystem, context: zmq.Context, pipe_endpoint: str,
                 sequence: SequenceCounter, store: Store | None,
                 jobs: queue.Queue[Job | None], stats: SystemStats) -> None:
        super().__init__(name=f"labd-{system.name}", daemon=True)
        self.system = system
        self.jobs = jobs
        self.stats = stats
        self._context = context
        self._pipe_endpoint = pipe_endpoint
        self._sequence = sequence
        self._store = store
        self.active = False
        self.faulted = False
        self._fault_count = 0
        self._stopping = False
        self._push: zmq.Socket | None = None
        self._lock = threading.Lock()
        self.call_started: float | None = None  # time.monotonic() of the call in hand
        self.current: Job | None = None
        self.abandoned = False
        #: A measured job's pipe message, handed over while the next job measures.
        self._pending: list[Buffer] | None = None

    # -- called from the server thread --------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._stopping:
            raise queue.Full
        self.jobs.put_nowait(job)

    def state(self) -> str:
        if self.faulted:
            return "fault"
        return "busy" if self.active or not self.jobs.empty() else "ready"

    def stop(self) -> None:
        self._stopping = True
        self.jobs.put(None)

    def overdue(self, now: float) -> bool:
        started = self.call_started
        return started is not None and now - started > self.system.config.timeout_s

    def abandon(self) -> tuple[Job | None, list[Buffer] | None]:
        """Detach a worker whose call hangs; return its job (None if the call just ended) and
        the previous job's pipe message if it was not handed over yet (None otherwise)."""
        with self._lock:
            if self.call_started is None:
                return None, None
            self.abandoned = True
            pending, self._pending = self._pending, None
            return self.current, pending

    # -- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        self._push = self._context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 1000)
        self._push.connect(self._pipe_endpoint)
        try:
            self._reopen()
            while not self.abandoned:
                job = self.jobs.get()
                if self._stopping or self.faulted:  # (a stop marker: flushed after the loop)
                    self._flush()
                if job is None:
                    break
                if self._stopping:
                    self._reply_shutdown(job)
                    continue
                if self.faulted:
                    self._reopen()
                self.active = True
                try:
                    self._serve(job)
                finally:
                    self.active = False
            self._flush()
            while self._stopping:  # answer what arrived behind the stop marker
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._reply_shutdown(job)
        finally:
            self.system.close()
            self._push.close()

    def _serve(self, job: Job) -> None:
        with self._lock:
            self.current, self.call_started = job, time.monotonic()
        result = measure_job(self.system, job, self._flush)
        with self._lock:
            self.current, self.call_started = None, None
            if self.abandoned:
                log.warning("%s: a hung call returned after the watchdog fired; its result "
                            "is discarded", self.system.name)
                return
        self._flush()  # (when the measurement failed before the shots)
        if isinstance(result, SystemFault):
            self.faulted = True
            self._event("fault", {"system": self.system.name, "message": str(result),
                                  "retryable": result.retryable})
        kind = b"error" if isinstance(result, SystemFault) else b"forward"
        message = pipe_message(kind, job, finish_job(self.system, job, result, self._sequence,
                                                     self._store, self.stats))
        with self._lock:
            self._pending = message
        if self.jobs.empty():  # else it is handed over while the next job's shots run
            self._flush()

    def _flush(self) -> None:
        """Hand the pending reply, if any, to the server thread."""
        with self._lock:
            message, self._pending = self._pending, None
        if message is not None:
            self._push.send_multipart(message, copy=False)

    def _reopen(self) -> None:
        """Close and open the instruments, backing off while they keep failing."""
        while not self._stopping:
            self.system.close()
            try:
                self.system.open()
            except Exception as exc:  # noqa: BLE001 - any driver failure: back off, retry
                delay = REOPEN_BACKOFF_S[min(self._fault_count, len(REOPEN_BACKOFF_S) - 1)]
                self._fault_count += 1
                self.faulted = True
                log.warning("%s: cannot open instruments (%s); retrying in %.2f s",
                            self.system.name, exc, delay)
                time.sleep(delay)
                continue
            if self.faulted:
                log.info("%s: instruments reopened", self.system.name)
                self.stats.reconnects += 1
                self._event("ready", {"system": self.system.name})
            self.faulted = False
            self._fault_count = 0
            return

    def _reply_shutdown(self, job: Job) -> None:
        assert self._push is not None
        self._push.send_multipart(pipe_message(b"error", job, error_reply(
            job.request_id, ErrorCode.BUSY, "the daemon is shutting down; retry when it is back",
            retryable=True)), copy=False)

    def _event(self, topic: str, body: dict[str, Any]) -> None:
        assert self._push is not None
        self._push.send_multipart([b"event", topic.encode(), json.dumps(body).encode()])
