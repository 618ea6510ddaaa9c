"""The servers ``benchmarks.transport`` measures labd against, each in a subprocess of its own:

    python -m benchmarks.servers NAME ENDPOINT

``echo``: the raw echo, a ROUTER answering ``[identity, "", x, theta]`` with ``[identity, "",
y]``, ``y`` a preallocated frame of x's size (what the loopback answers), zero-copy, sent and
received with the same lean calls as labd (``protocols.transport``), so that the comparison
measures labd's own work and not a difference in how pyzmq is called. ``reqrep``: the issue's
REQ/REP echo, every message sent back as received, with pyzmq's own calls. ``floor``: the least
a Python forward server does (``benchmarks.transport``'s docstring), a ROUTER answering
``[identity, header, x, theta]`` with ``[identity, header, y]``. Each stops at a message whose
last frame is ``stop``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

import numpy as np
import zmq

from protocols.transport import recv_frames, send_frames


@contextlib.contextmanager
def bound(kind: int, endpoint: str) -> Iterator[zmq.Socket]:
    """A socket of ``kind`` bound to ``endpoint`` in a context of its own, for the block."""
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.bind(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def echo(endpoint: str) -> None:
    replies: dict[int, zmq.Frame] = {}  # y by its size
    with bound(zmq.ROUTER, endpoint) as sock:
        while True:
            msg = recv_frames(sock)
            if len(msg) == 3 and msg[2].bytes == b"stop":
                return
            n = len(msg[2])
            y = replies.get(n)
            if y is None:
                y = replies[n] = zmq.Frame(bytes(n))
            send_frames(sock, [msg[0], b"", y])


def reqrep(endpoint: str) -> None:
    with bound(zmq.REP, endpoint) as sock:
        while True:
            msg = sock.recv_multipart(copy=False)
            if len(msg) == 1 and msg[0].bytes == b"stop":
                return
            sock.send_multipart(msg, copy=False)


def floor(endpoint: str) -> None:
    with bound(zmq.ROUTER, endpoint) as sock:
        while True:
            msg = recv_frames(sock)
            if len(msg) == 2 and msg[1].bytes == b"stop":
                return
            head = json.loads(msg[1].bytes)
            shape = head["arrays"][0]["shape"]
            x = np.frombuffer(msg[2].buffer, np.float32).reshape(shape)
            theta = np.frombuffer(msg[3].buffer, np.float32)
            if not (x.min() >= -1.0 and x.max() <= 1.0
                    and theta.min() >= -1.0 and theta.max() <= 1.0):
                raise SystemExit("out of range")
            y = x + theta
            if not np.isfinite(y).all():
                raise SystemExit("not finite")
            reply = (f'{{"v":1,"id":"{head["id"]}","ok":true,"seq":0,"elapsed_s":0.0,'
                     f'"arrays":[{{"name":"y","dtype":"float32","shape":[{shape[0]},'
                     f'{shape[1]}]}}]}}')
            send_frames(sock, [msg[0], reply.encode(), y])


SERVERS: dict[str, Callable[[str], None]] = {"echo": echo, "reqrep": reqrep, "floor": floor}

if __name__ == "__main__":
    SERVERS[sys.argv[1]](sys.argv[2])
