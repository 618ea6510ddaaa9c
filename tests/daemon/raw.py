"""A protocol v1 client written from the spec page alone, with raw pyzmq and json: no labd
code, so the tests hold the daemon to the page and not to our own client."""

from __future__ import annotations

import json
import uuid

import numpy as np
import zmq


class RawClient:
    def __init__(self, endpoint: str, kind: int = zmq.DEALER) -> None:
        self.kind = kind
        self.sock = zmq.Context.instance().socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close()

    def send_frames(self, frames: list[bytes]) -> None:
        """Send body frames as they are (a DEALER adds the empty delimiter, as REQ does)."""
        prefix = [b""] if self.kind == zmq.DEALER else []
        self.sock.send_multipart(prefix + frames)

    def send(self, header: dict, arrays: list[np.ndarray] = ()) -> None:
        self.send_frames([json.dumps(header).encode()] + [a.tobytes() for a in arrays])

    def recv(self, timeout_ms: int = 10000) -> tuple[dict, list[np.ndarray]]:
        assert self.sock.poll(timeout_ms), "no reply"
        frames = self.sock.recv_multipart()
        if self.kind == zmq.DEALER:
            assert frames[0] == b"", "a reply to a DEALER starts with the empty delimiter"
            frames = frames[1:]
        header = json.loads(frames[0])
        specs = header.get("arrays", [])
        assert len(specs) == len(frames) - 1
        arrays = [np.frombuffer(f, dtype=np.dtype(s["dtype"]).newbyteorder("<")).reshape(s["shape"])
                  for s, f in zip(specs, frames[1:], strict=True)]
        return header, arrays

    def request(self, op: str, arrays: list[tuple[str, np.ndarray]] = (), **fields) -> tuple[
            dict, list[np.ndarray]]:
        rid = uuid.uuid4().hex
        header = {"v": 1, "id": rid, "op": op, **fields}
        if arrays:
            header["arrays"] = [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)}
                                for n, a in arrays]
        self.send(header, [a for _, a in arrays])
        reply, out = self.recv()
        assert reply["id"] == rid and reply["v"] == 1
        return reply, out


def forward_header(system: str, x: np.ndarray, theta: np.ndarray, rid: str = "r1") -> dict:
    return {"v": 1, "id": rid, "op": "forward", "system": system,
            "arrays": [{"name": "x", "dtype": str(x.dtype), "shape": list(x.shape)},
                       {"name": "theta", "dtype": str(theta.dtype), "shape": list(theta.shape)}]}
