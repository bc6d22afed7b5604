"""The node's local status endpoint: what this node has served, for the volunteer's own page.

    GET /                  the volunteer page (web/volunteer.html, built into swarmllm/gateway/static)
    GET /assets/NAME       its scripts and styles (same folder)
    GET /api/node          the report below, as JSON
    GET /api/node/stream   the same report as server-sent events, one a second

The report (`node_report`): peer id, model and span, state ("starting" | "serving" | "paused" |
"draining") and why it is paused, uptime, sessions served and active, tokens served (positions
computed for clients) and steps served, stream payload bytes up and down (the swarm node's
`traffic`) and the bandwidth caps, credits received (the credit inbox's signed statements, in all
and per gateway), swarmllm's and the protocol's version, and the auto-update state (null until the
node has an updater).

It listens on 127.0.0.1 only, never on another interface: it is the volunteer's own page on their
own machine, not part of the swarm's protocol. Peers have no business reading it (it says how busy
the node is and what it earned), and nothing in it is signed, so nothing remote should believe it.
A request whose Host header names another host is refused (403), so a web page elsewhere cannot read
it through a DNS name that resolves to 127.0.0.1 (DNS rebinding).

Promises: only GET and HEAD; anything else gets a clear 4xx sentence as JSON; a bad request, a
client that goes away mid-stream or an error building the report never reaches the node (the
server runs on its own threads and reads the node's counters, which it never changes); at most
MAX_STREAMS event streams at once (then 503). It does not import the gateway or FastAPI: the built
page is read as plain files.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import swarmllm
from swarmllm.protocol.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

if TYPE_CHECKING:
    from swarmllm.server.node import ServerNode

logger = logging.getLogger(__name__)

STATIC_DIR = Path(swarmllm.__file__).parent / "gateway" / "static"  # the built pages (web/, `npm run build`)
PAGE = "volunteer.html"
MAX_STREAMS = 16           # event streams at once: each holds a thread
STREAM_PERIOD = 1.0        # seconds between events
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
_ASSET = re.compile(r"^/assets/([A-Za-z0-9_-]+\.(js|css|svg|png|ico|woff2))$")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "png": "image/png",
          "ico": "image/x-icon", "woff2": "font/woff2", "html": "text/html; charset=utf-8"}


def node_report(node: "ServerNode", now: Optional[float] = None) -> dict[str, Any]:
    """The JSON of GET /api/node, from the node's public state (module docstring)."""
    now = time.time() if now is None else now
    status, config, service = node.status, node.config, node.service
    traffic = getattr(node.swarm, "traffic", None) if node.swarm is not None else None
    update = getattr(node, "update_state", None)
    if update is not None and hasattr(update, "to_json"):
        update = update.to_json()
    return {
        "peer_id": status.peer_id or None,
        "model": status.model_id or None,
        "start": status.start, "end": status.end,
        "state": status.state, "paused_reason": status.paused_reason,
        "uptime_seconds": round(max(0.0, now - node.started_at), 1),
        "sessions_served": service.sessions_served if service is not None else 0,
        "sessions_active": len(service.table.sessions) if service is not None else 0,
        "tokens_served": service.tokens_processed if service is not None else 0,
        "steps_served": service.steps_served if service is not None else 0,
        "bytes_up": int(getattr(traffic, "bytes_sent", 0) or 0),
        "bytes_down": int(getattr(traffic, "bytes_received", 0) or 0),
        "max_upload_bps": getattr(config, "max_upload_bps", None),
        "max_download_bps": getattr(config, "max_download_bps", None),
        "throughput": round(status.throughput, 2),
        "credits": _credits(node),
        "version": swarmllm.__version__, "protocol_version": PROTOCOL_VERSION,
        "min_protocol_version": MIN_PROTOCOL_VERSION,
        "update": update,
    }


def _credits(node: "ServerNode") -> Optional[dict[str, Any]]:
    if node.credits is None or not node.status.peer_id:
        return {"total": 0, "by_gateway": {}}
    try:
        by_gateway = node.credits.totals(node.status.peer_id)
    except sqlite3.Error:  # the inbox is closing (the node is leaving): unknown, not zero
        return None
    return {"total": sum(by_gateway.values()), "by_gateway": by_gateway}


class StatusServer:
    """The endpoint on 127.0.0.1:`port` (0 = any free port), serving `report()` on its own threads."""

    def __init__(self, report: Callable[[], dict], port: int, static_dir: Path = STATIC_DIR):
        self.report, self.static_dir = report, static_dir
        self.closing = threading.Event()
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self._http = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as e:
            raise ValueError(f"the status page cannot listen on 127.0.0.1:{port} ({e.strerror or e}); pass another "
                             "--status-port, or 0 for none") from None
        self._http.daemon_threads = True
        self.port: int = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="swarmllm-status", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.closing.set()
        self._http.shutdown()
        self._http.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: StatusServer
    server_version = "swarmllm-status"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        logger.debug("status page: " + format, *args)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _refuse_method(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served here: this page only answers "
                                                   "GET (it changes nothing on the node)", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _route(self, body: bool) -> None:
        host = (self.headers.get("Host") or "127.0.0.1").strip().lower()
        if re.sub(r":\d+$", "", host) not in LOCAL_HOSTS:
            return self._error(HTTPStatus.FORBIDDEN, f"this page answers only on 127.0.0.1, not for host {host[:80]!r}")
        path = self.path.split("?", 1)[0]
        try:
            if path == "/api/node":
                return self._send(HTTPStatus.OK, "application/json", self._report(), body)
            if path == "/api/node/stream":
                return self._stream() if body else self._send(HTTPStatus.OK, "text/event-stream", b"", False)
            if path in ("/", "/index.html", "/" + PAGE):
                return self._file(PAGE, "html", body)
            asset = _ASSET.match(path)
            if asset:
                return self._file("assets/" + asset.group(1), asset.group(2), body)
        except (ConnectionError, TimeoutError):
            return  # the client went away
        except Exception as e:  # building the report failed: say so, the node goes on
            logger.warning("the status page could not answer %s: %s", path, e)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the node's report failed: {e}")
        self._error(HTTPStatus.NOT_FOUND, f"nothing at {path[:100]!r}: the page is /, its data /api/node and "
                                          "/api/node/stream")

    def _report(self) -> bytes:
        return json.dumps(self.owner.report()).encode()

    def _file(self, name: str, kind: str, body: bool) -> None:
        path = self.owner.static_dir / name
        if not path.is_file():
            if name == PAGE:
                return self._error(HTTPStatus.NOT_FOUND, "the volunteer page is not built: run `npm ci && npm run "
                                                         "build` in web/ (its data is at /api/node)")
            return self._error(HTTPStatus.NOT_FOUND, f"no file {name!r}")
        self._send(HTTPStatus.OK, _TYPES[kind], path.read_bytes(), body,
                   {"Cache-Control": "no-cache" if kind == "html" else "max-age=86400"})

    def _stream(self) -> None:
        if not self.owner._streams.acquire(blocking=False):
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_STREAMS} event streams are open already; "
                                                               "close a tab or poll /api/node")
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while not self.owner.closing.is_set():
                self.wfile.write(b"data: " + self._report() + b"\n\n")
                self.wfile.flush()
                self.owner.closing.wait(STREAM_PERIOD)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the page was closed
        finally:
            self.owner._streams.release()

    def _send(self, status: HTTPStatus, content_type: str, data: bytes, body: bool,
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The base class's own refusals (a malformed request line, a too-long URL or header) as JSON too."""
        self.close_connection = True
        self._error(HTTPStatus(code), f"{message or HTTPStatus(code).phrase}: send a plain GET of /api/node")

    def _error(self, status: HTTPStatus, message: str, headers: Optional[dict] = None) -> None:
        self._send(status, "application/json", json.dumps({"error": message}).encode(), self.command != "HEAD",
                   headers)
