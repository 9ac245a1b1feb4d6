"""A small blocking WebSocket client (RFC 6455) for Home Assistant's API, stdlib only.

Just what the tests need: text frames, client-side masking, fragmented and long messages,
ping/pong and close. Home Assistant's websocket API is JSON over text frames.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import time
from types import TracebackType
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CLOSE, _PING, _PONG, _CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class WebSocketClosed(ConnectionError):
    """The server closed the connection."""


class WebSocket:
    """One client connection to ``ws://host:port/path``."""

    def __init__(self, host: str, port: int, path: str, *, timeout: float = 10.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        head = self._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"websocket upgrade refused: {status.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if accept not in head:
            raise ConnectionError("websocket upgrade: wrong Sec-WebSocket-Accept")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise WebSocketClosed("connection closed by the server")
        self._buffer += chunk

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def send_json(self, body: dict[str, Any]) -> None:
        self._send_frame(_TEXT, json.dumps(body).encode())

    def receive_json(self, timeout: float = 10.0) -> Any:
        """The next JSON message; TimeoutError if none comes within ``timeout``."""
        self._sock.settimeout(timeout)
        message = b""
        try:
            while True:
                first, second = self._read_exact(2)
                opcode, fin = first & 0x0F, bool(first & 0x80)
                n = second & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._read_exact(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._read_exact(8))
                payload = self._read_exact(n)  # a server never masks
                if opcode == _PING:
                    self._send_frame(_PONG, payload)
                    continue
                if opcode == _CLOSE:
                    raise WebSocketClosed(f"closed by the server: {payload[2:].decode()!r}")
                if opcode in (_TEXT, _BINARY, _CONTINUATION):
                    message += payload
                    if fin:
                        return json.loads(message)
        except TimeoutError:
            raise TimeoutError(f"no websocket message in {timeout}s") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(_CLOSE, struct.pack("!H", 1000))
        self._sock.close()

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HomeAssistantSocket:
    """An authenticated connection to Home Assistant's websocket API (``/api/websocket``)."""

    def __init__(self, port: int, token: str) -> None:
        self.ws = WebSocket("127.0.0.1", port, "/api/websocket")
        self._next_id = 1
        #: Events of subscriptions, in arrival order: (subscription id, event, monotonic s).
        self.events: list[tuple[int, Any, float]] = []
        hello = self.ws.receive_json()
        if hello.get("type") != "auth_required":
            raise ConnectionError(f"unexpected greeting: {hello}")
        self.ws.send_json({"type": "auth", "access_token": token})
        answer = self.ws.receive_json()
        if answer.get("type") != "auth_ok":
            raise ConnectionError(f"websocket auth failed: {answer}")

    def call(self, message_type: str, timeout: float = 15.0, **fields: Any) -> Any:
        """Send a command and return its ``result``; events that arrive meanwhile are kept."""
        sent_id = self.send(message_type, **fields)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {message_type} in {timeout}s")
            message = self.ws.receive_json(timeout=left)
            if message.get("type") == "event":
                self.events.append((message["id"], message["event"], time.monotonic()))
                continue
            if message.get("id") != sent_id:
                continue
            if not message.get("success", False):
                raise RuntimeError(f"{message_type} failed: {message.get('error')}")
            return message.get("result")

    def send(self, message_type: str, **fields: Any) -> int:
        sent_id = self._next_id
        self._next_id += 1
        self.ws.send_json({"id": sent_id, "type": message_type, **fields})
        return sent_id

    def collect_events(self, seconds: float) -> None:
        """Read subscription events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.ws.receive_json(timeout=left)
            except TimeoutError:
                return
            if message.get("type") == "event":
                self.events.append((message["id"], message["event"], time.monotonic()))

    def close(self) -> None:
        self.ws.close()
