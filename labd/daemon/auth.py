"""CURVE authentication: who may talk to the daemon, and under which name.

Contract:

* The daemon holds a server key pair (ZeroMQ certificate files made by ``labd keys server``):
  ``NAME.key`` (public, given to clients) and ``NAME.key_secret`` (stays on the lab PC).
* The allow-list is a TOML file of named client public keys::

      [clients.alice]
      public_key = "Z85 text of the key"

  A connection whose key is not on the list is refused during the CURVE handshake: it gets no
  reply at all, not even an error. The file is re-read when it changes, so ``labd keys add`` and
  ``labd keys remove`` take effect for new connections without a restart.
* Every accepted message carries the client's name as its ZeroMQ ``User-Id``; the daemon uses it
  in logs, in the store and for per-system access (``clients = [...]`` in a system's table).
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("labd.auth")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class AllowList:
    """The named client keys in a TOML file, re-read whenever the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._mtime: float | None = None
        self._names: dict[bytes, str] = {}  # Z85 public key -> name

    def load(self) -> dict[str, str]:
        """Name -> Z85 public key, as in the file (empty if the file does not exist)."""
        if not self.path.exists():
            return {}
        data = tomllib.loads(self.path.read_text())
        clients = data.get("clients", {})
        out = {}
        for name, entry in clients.items():
            key = entry.get("public_key") if isinstance(entry, dict) else None
            if not NAME_PATTERN.match(name) or not isinstance(key, str) or len(key) != 40:
                raise ValueError(f"{self.path}: clients.{name}: needs a 40-character Z85 "
                                 f"public_key and a name of letters, digits, . _ -")
            out[name] = key
        return out

    def name_of(self, z85_key: bytes) -> str | None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            try:
                self._names = {k.encode(): n for n, k in self.load().items()}
            except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
                log.error("cannot read the client allow-list: %s (keeping the old one)", exc)
            self._mtime = mtime
        return self._names.get(z85_key)


class Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, with the allow-list deciding and naming each client."""

    def __init__(self, context: zmq.Context, allow_list: AllowList) -> None:
        super().__init__(context)
        self.allow_list = allow_list

    def callback(self, domain: str, z85_key: bytes) -> bool:
        name = self.allow_list.name_of(z85_key)
        if name is None:
            log.warning("refused a connection with an unknown key %s", z85_key.decode())
        return name is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allow_list.name_of(z85.encode(client_public_key)) or "unknown"

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(domain="*", credentials_provider=self)


def load_server_keys(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) of the server from its ``.key_secret`` certificate file."""
    public, secret = zmq.auth.load_certificate(str(Path(secret_file).expanduser()))
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key (use the .key_secret file)")
    return public, secret


def is_loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` can only be reached from this machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
