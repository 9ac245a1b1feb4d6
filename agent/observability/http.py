"""A tiny HTTP server on the agent's own event loop: ``/healthz`` and ``/metrics``.

It runs on the loop it reports on: a hung loop does not answer, which is what a health
check should see. Only GET (and HEAD) of those two paths; anything else is 404/405. One
request per connection, bounded reads, a timeout per request.

Connections are capped (:data:`MAX_CONNECTIONS`): one beyond the cap is closed at once,
and an idle one is closed after :data:`REQUEST_TIMEOUT_S`, so a thousand half-open
connections cannot use up the process's file descriptors (systemd's default limit is
1024, and the buffer and the MQTT socket need theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
#: Connections served at once; more are closed as they come.
MAX_CONNECTIONS = 16
#: The listen backlog: connections the kernel holds before the agent accepts them.
BACKLOG = 16


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[], Response]

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` or ``"[::1]:9108"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class HealthServer:
    """Serves ``routes`` (path -> handler) on ``listen``."""

    def __init__(self, listen: str, routes: dict[str, Handler]) -> None:
        self.host, self.port = parse_listen(listen)
        self._routes = routes
        self._server: asyncio.Server | None = None
        #: Connections open now.
        self.active = 0
        #: Connections closed at once because MAX_CONNECTIONS were open.
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, backlog=BACKLOG
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= MAX_CONNECTIONS:
            self.refused += 1
            writer.transport.abort()  # no response, no wait: the descriptor goes now
            return
        self.active += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            response, method = self._respond(head)
            writer.write(_encode(response, head_only=method == "HEAD"))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[Response, str]:
        if len(head) > MAX_REQUEST_BYTES:
            return Response(404, b'{"error": "request too large"}'), "GET"
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3:
            return Response(404, b'{"error": "bad request"}'), "GET"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        handler = self._routes.get(path)
        if handler is None:
            return Response(404, b'{"error": "not found; try /healthz or /metrics"}'), method
        if method not in ("GET", "HEAD"):
            return Response(405, b'{"error": "GET only"}'), method
        try:
            return handler(), method
        except Exception:
            log.exception("the %s handler failed", path)
            return Response(503, b'{"ok": false, "reasons": ["internal error"]}'), method


def _encode(response: Response, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body
