"""Prometheus metrics every service shares, and the small HTTP endpoint that serves them.

Label values are bounded: service and endpoint names come from the handler tables, reasons and
codes from closed lists, never from message contents.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BusMetrics:
    """Counters and histograms of the bus layer, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "qnf_bus_handled_total",
            "Requests handled, by endpoint and result code ('ok' or an error code)",
            ["service", "endpoint", "code"],
            registry=registry,
        )
        self.rejected = Counter(
            "qnf_bus_rejected_total",
            "Messages refused before any handler ran, by reason",
            ["service", "reason"],
            registry=registry,
        )
        self.handle_seconds = Histogram(
            "qnf_bus_handle_seconds",
            "Time from receipt to reply, by endpoint",
            ["service", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events_dropped = Counter(
            "qnf_bus_events_dropped_total",
            "Events given up on (queue full, or the stream did not ack)",
            ["service"],
            registry=registry,
        )
        self.events = Counter(
            "qnf_bus_events_published_total",
            "Events published to the QNF_EVENTS stream",
            ["service", "kind"],
            registry=registry,
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


HealthCheck = Callable[[], bool]


class MetricsServer:
    """Serves /metrics, /healthz (process alive) and /readyz (connected and serving) on a thread."""

    def __init__(self, registry: CollectorRegistry, *, ready: HealthCheck) -> None:
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._server: _ThreadingServer | None = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return self._plain(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if self._ready():
                return self._plain(start_response, "200 OK", b"ready\n")
            return self._plain(start_response, "503 Service Unavailable", b"not ready\n")
        return self._plain(start_response, "404 Not Found", b"not found\n")

    @staticmethod
    def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: ephemeral) and return the port."""
        self._server = make_server(host, port, self._app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
