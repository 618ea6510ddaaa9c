"""The monitor's HTTP server: the page, the JSON it polls, ``/metrics``. Read-only.

Routes (GET and HEAD only; ``http.server`` answers any other method 501, so nothing here
can change anything on the daemon, whose only requests from the monitor are ``monitor``):

* ``/``, ``/page.js``, ``/page.css``: the page, self-contained (no CDN, no build step);
* ``/api/state?plot=SYSTEM``: everything the page shows (``Monitor.state``), as JSON;
* ``/metrics``: Prometheus' text format (``labd.web.prometheus``);
* ``/healthz``: ``ok`` (the monitor itself runs; ``labd_up`` says whether the daemon does).

Security:

* ``--http`` on a non-loopback address needs a token or an explicit insecure choice (checked
  by ``check_exposure`` before anything binds), as the control socket needs CURVE keys or
  ``--insecure``.
* With a token every route needs it: ``Authorization: Bearer TOKEN`` (what Prometheus sends
  with ``authorization: {credentials_file: ...}``), or the cookie that opening
  ``/?token=TOKEN`` once sets (HttpOnly, SameSite=Strict; the answer redirects to the same
  address without the token). Compared in constant time.
* Bound to loopback, a request whose ``Host`` names another host is refused (403): another web
  site cannot read the page through DNS rebinding.
* Every answer forbids framing and inline scripts (Content-Security-Policy) and caching.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from labd.daemon.auth import is_loopback
from labd.web.prometheus import DaemonCollector
from labd.web.runs import RunWatch
from labd.web.store import StoreWatch
from labd.web.watch import DaemonWatch

log = logging.getLogger("labd.web")

COOKIE = "labd_web_token"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8")}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ExposureError(ValueError):
    """A non-loopback address without a token and without an explicit insecure choice."""


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Raise ``ExposureError`` unless ``host`` is loopback, or a token or ``insecure`` is given."""
    if not is_loopback(f"tcp://{host}:0") and token is None and not insecure:
        raise ExposureError(
            f"refusing to serve the monitor page on {host}, reachable from the network, "
            f"without a token: anyone who can reach the port would see the rig's measurements. "
            f"Give --http-token-file FILE, serve on 127.0.0.1 (and use an SSH tunnel), or "
            f"pass --insecure")


class Monitor:
    """What the server shows: a daemon (``DaemonWatch``), its store, training runs."""

    def __init__(self, watch: DaemonWatch, runs: RunWatch, store: StoreWatch | None = None
                 ) -> None:
        self.watch = watch
        self.runs = runs
        self.store = store or StoreWatch()
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(watch, self.store.summary))
        self._store_path: str | None = None  # the last one the daemon named

    def state(self, plot: str | None) -> dict[str, Any]:
        """The page's JSON: ``now``, ``link`` and ``daemon`` (``DaemonWatch.view``), ``store``
        (the summary with the daemon's backlog), ``runs``."""
        view = self.watch.view(plot)
        daemon = view.pop("daemon")
        backlog = (daemon or {}).get("store") or {}
        if daemon is not None:
            self._store_path = backlog.get("path")
        store = self.store.summary(self._store_path)
        if store is not None:
            store = {**store, "backlog_bytes": backlog.get("backlog_bytes")}
        return {"now": time.time(), "link": view, "daemon": daemon, "store": store,
                "runs": self.runs.runs()}


class MonitorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], monitor: Monitor, token: str | None) -> None:
        super().__init__(address, Handler)
        self.monitor = monitor
        self.token = token
        self.loopback = is_loopback(f"tcp://{address[0]}:0")
        self.static = {path: (resources.files("labd.web").joinpath("static", name).read_bytes(),
                              kind) for path, (name, kind) in STATIC.items()}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A viewer that went away mid-answer is no error; anything else is logged (never a
        traceback on stderr from ``socketserver``)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("%s went away before its answer was sent", client_address)
            return
        log.exception("monitor: error while answering %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: MonitorServer
    server_version = "labd-web"
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls every second

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if self.server.loopback and not self._host_is_loopback():
            return self._send(403, b"this monitor answers only requests addressed to the "
                                   b"loopback host it listens on\n", head=head)
        if self.server.token is not None and not self._authorized(url.path, query, head):
            return None
        if url.path in self.server.static:
            body, kind = self.server.static[url.path]
            return self._send(200, body, kind, head=head)
        if url.path == "/api/state":
            plot = query.get("plot", [None])[0]
            body = json.dumps(self.server.monitor.state(plot), separators=(",", ":"))
            return self._send(200, body.encode(), "application/json", head=head)
        if url.path == "/metrics":
            return self._send(200, generate_latest(self.server.monitor.registry),
                              CONTENT_TYPE_LATEST, head=head)
        if url.path == "/healthz":
            return self._send(200, b"ok\n", head=head)
        return self._send(404, b"not found: this read-only monitor serves /, /api/state, "
                               b"/metrics and /healthz\n", head=head)

    def _host_is_loopback(self) -> bool:
        host = self.headers.get("Host")
        if host is None:  # (HTTP/1.0)
            return True
        if host.startswith("["):  # [IPv6]:port
            name = host[1:].split("]", 1)[0]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return is_loopback(f"tcp://[{name}]:0")

    def _authorized(self, path: str, query: dict[str, list[str]], head: bool) -> bool:
        """Whether the request carries the token; if not, the 401 (or the redirect that sets
        the cookie) is sent."""
        token = self.server.token
        assert token is not None
        given = query.get("token", [None])[0]
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            self._send(303, b"", extra={
                "Location": path,
                "Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"}, head=head)
            return False
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(),
                                                              token.encode()):
            return True
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            cookie = None
        if cookie is not None and hmac.compare_digest(cookie.value.encode(), token.encode()):
            return True
        self._send(401, b"this monitor needs its token: open /?token=TOKEN once (the token is in "
                        b"the file given to --http-token-file), or send Authorization: Bearer\n",
                   extra={"WWW-Authenticate": 'Bearer realm="labd"'}, head=head)
        return False

    def _send(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(HTTPStatus(status))
        for key, value in {**HEADERS, "Content-Type": kind, "Content-Length": str(len(body)),
                           **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
