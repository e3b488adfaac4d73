"""The monitor's metrics endpoint: ``/metrics`` (text format 0.0.4, gzip when asked) and ``/healthz``.

A small threading HTTP server on its own thread; each scrape renders :class:`MonitorCollector`'s
rows directly (see :mod:`hami.monitor.metrics`). gzip runs at level 1: on a 100-container x 8-card
node the body is ~1.5 MB and level 1 keeps most of the gain for a fraction of the CPU.
"""

from __future__ import annotations

import gzip
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hami.monitor.metrics import MonitorCollector

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.collector.render()
            except Exception:  # a bug must not kill the endpoint; the scrape fails visibly
                log.exception("scrape failed")
                self._send(500, b"scrape failed\n", "text/plain")
                return
            gz = "gzip" in (self.headers.get("Accept-Encoding") or "")
            self._send(200, gzip.compress(body, 1) if gz else body, CONTENT_TYPE, gzip_=gz)
        elif path in ("/healthz", "/readyz", "/"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str, *, gzip_: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if gzip_:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], collector: MonitorCollector) -> None:
        self.collector = collector
        super().__init__(addr, _Handler)


class MetricsServer:
    def __init__(self, host: str, port: int, collector: MonitorCollector) -> None:
        self._server = _Server((host, port), collector)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
