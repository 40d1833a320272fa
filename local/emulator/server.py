"""HTTPS server (stdlib ThreadingHTTPServer + ssl, throwaway trustme CA) and the in-process entry point."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import trustme

from . import faults
from .control import EmulatorControl
from .control_api import ControlAPI
from .graph import GraphService
from .identity import DEVICE_LOGIN_PATH, Identity, is_identity_path
from .notify import Notifier
from .state import Clock, Store
from .web import Request, Response, graph_error

log = logging.getLogger("local.emulator")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, ssl_context: ssl.SSLContext, emulator) -> None:
        super().__init__(addr, handler)
        self.ssl_context = ssl_context
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()

    def get_request(self):
        sock, addr = self.socket.accept()
        # The TLS handshake runs in the connection's own thread, so a slow client never blocks accept().
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.conn_lock:
            self.connections.add(tls)
        return tls, addr

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GraphEmulator/1.0"
    sys_version = ""
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def handle(self):
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def _any(self):
        emu = self.server.emulator
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request.build(self.command, unquote(parts.path), parts.query, dict(self.headers.items()), body)
        try:
            resp = emu.dispatch(req)
        except Exception:  # noqa: BLE001 - an emulator bug must answer 500, not kill the connection thread
            log.exception("emulator error on %s %s", self.command, self.path)
            resp = graph_error(500, "generalException", "Emulator internal error (see emulator log).")
        if os.environ.get("GRAPH_EMULATOR_TRACE"):
            _trace(os.environ["GRAPH_EMULATOR_TRACE"], req, resp)
        if resp.drop:
            self._drop()
            return
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and self.command != "HEAD":
            self.wfile.write(resp.body)

    def _drop(self) -> None:
        """Close the connection without an answer (fault injection)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.connection.close()

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _any


_trace_lock = threading.Lock()


def _trace(path: str, req: Request, resp: Response) -> None:
    """One line per Graph request (``GRAPH_EMULATOR_TRACE=file``), to follow a chaos run's event
    through its writes: time, method, path, answer, If-Match, and the subject and changeKey sent
    or answered. Off unless the variable is set; never the bodies' other fields."""
    if not req.path.startswith("/v1.0"):
        return

    def field(raw: bytes, name: str) -> str:
        try:
            value = json.loads(raw or b"{}").get(name)
        except (ValueError, AttributeError):
            return ""
        return str(value)[:40] if value is not None else ""

    answer = str(resp.status) if not resp.drop else (f"lost-{resp.status}" if resp.body else "drop")
    line = (
        f"{time.time():.3f} {req.method} {req.path[len('/v1.0'):]} {answer}"
        f" if-match={req.headers.get('If-Match') or ''}"  # headers: case-insensitive
        f" subject={field(req.body, 'subject')!r} ck={field(resp.body, 'changeKey')}\n"
    )
    with _trace_lock, open(path, "a", encoding="utf-8") as out:
        out.write(line)


class Emulator:
    """A running emulator. Attributes: base_url, authority_host, graph_base, control_url, ca_path, port,
    control (an EmulatorControl client). Use `stop()` or `with start_emulator() as emu:`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state_dir: str | os.PathLike | None = None) -> None:
        self.clock = Clock()
        self.store = Store(self.clock)
        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="graph-emulator-")
            state_dir = self._tmp.name
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="Graph emulator throwaway CA")
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_path = str(self.state_dir / "emulator-ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.httpd = _Server((host, port), _Handler, ctx, self)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.base_url = f"https://{host}:{self.port}"
        self.authority_host = self.base_url
        self.graph_base = f"{self.base_url}/v1.0"
        self.control_url = f"{self.base_url}/_control"
        self.notifier = Notifier(self.store)
        self.identity = Identity(self.store, self.base_url)
        self.graph = GraphService(self.store, self.notifier, self.base_url)
        self.control_api = ControlAPI(self)
        self.control = EmulatorControl(self.control_url, self.ca_path)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="emulator-http", daemon=True)
        self._thread.start()

    def authority(self, tenant: str = "common") -> str:
        return f"{self.base_url}/{tenant}"

    def describe(self) -> dict:
        return {
            "authority_host": self.authority_host,
            "authority": self.authority("common"),
            "graph_base": self.graph_base,
            "ca_path": self.ca_path,
            "control_url": self.control_url,
            "port": self.port,
            "pid": os.getpid(),
        }

    def reset(self) -> None:
        self.graph.holds.release()
        self.notifier.reset()
        self.store.reset()

    # ------------------------------------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/_control"):
            return self.control_api.handle(req)
        if req.path == "/v1.0" or req.path.startswith("/v1.0/"):
            return self.graph.serve(req)
        if req.path == DEVICE_LOGIN_PATH:
            return self.identity.device_login(req)
        if is_identity_path(req.path):
            rule = faults.pick(self.store, req, "identity")
            if rule is not None:
                if rule.kind == "drop":
                    return Response(drop=True)
                if rule.kind in ("503", "500", "429"):
                    return faults.status_response(rule)
                if rule.kind == "hold":
                    self.graph.holds.wait()
                if rule.kind == "latency":
                    time.sleep(rule.latency_ms / 1000.0)
                resp = self.identity.handle(req)
                resp.drop = rule.kind == "lost_response"
                return resp
            return self.identity.handle(req)
        if req.path.startswith("/beta/"):
            return graph_error(400, "BadRequest", "The emulator serves v1.0 only.")
        return graph_error(404, "NotFound", f"No such endpoint: {req.path}")

    def stop(self) -> None:
        self.graph.stop()
        self.notifier.stop()
        self.httpd.shutdown()
        self.httpd.close_all()
        self.httpd.server_close()
        self.control.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_emulator(port: int = 0, host: str = "127.0.0.1", state_dir: str | os.PathLike | None = None) -> Emulator:
    """Start the emulator in this process (background threads) and return it once it accepts connections."""
    return Emulator(host=host, port=port, state_dir=state_dir)
