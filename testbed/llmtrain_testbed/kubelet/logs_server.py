"""The kubelet API's log endpoint, so `kubectl logs` works: the API server proxies to it over mutual TLS.

Each node serves GET /containerLogs/{namespace}/{pod}/{container} (tailLines, follow, previous, limitBytes) on
its own port with the kubelet serving cert, and accepts only client certs signed by the cluster CA (the API
server presents its kubelet client cert).
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger("testbed.kubelet.logs")

# (namespace, pod, container, previous) -> (log file, is the container still running?) or an error message
LogFinder = Callable[[str, str, str, bool], "tuple[Path, Callable[[], bool]] | str"]


def tail_lines(data: bytes, n: int) -> bytes:
    """The last n lines of data (a trailing newline does not count as an extra empty line)."""
    if n <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


class _Handler(BaseHTTPRequestHandler):
    server: LogsServer

    def setup(self) -> None:
        self.request.settimeout(30)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path in ("/healthz", "/readyz"):
            self._reply(200, "ok")
            return
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, f"not found: {url.path}")
            return
        _, namespace, pod, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        previous = query.get("previous") == "true"
        found = self.server.finder(namespace, pod, container, previous)
        if isinstance(found, str):
            self._reply(404, found)
            return
        path, running = found
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._reply(404, f"log of {namespace}/{pod}/{container}: {exc}")
            return
        if "tailLines" in query:
            data = tail_lines(data, int(query["tailLines"]))
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"])]
        follow = query.get("follow") == "true" and not previous
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if not follow:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if follow:
            self._follow(path, path.stat().st_size, running)

    def _follow(self, path: Path, offset: int, running: Callable[[], bool]) -> None:
        """Stream what the container appends until it stops (HTTP/1.0: the end of the body is the close)."""
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(65536)
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    continue
                if not running():
                    return
                time.sleep(0.2)


class LogsServer(ThreadingHTTPServer):
    """One node's kubelet endpoint."""

    daemon_threads = True

    def __init__(self, host: str, port: int, cert: str, key: str, client_ca: str, finder: LogFinder) -> None:
        super().__init__((host, port), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
        # The handshake then happens in the handler thread, so one slow client cannot stall accept().
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.finder = finder
        self.thread = threading.Thread(target=self.serve_forever, name=f"logs-{port}", daemon=True)

    def handle_error(self, request: object, client_address: object) -> None:
        log.info("logs request from %s failed: %s", client_address, sys.exc_info()[1])

    def start(self) -> None:
        self.thread.start()
