"""A fake serial port with pyserial's surface, and the device on its other end.

The port is what a driver opens (``read(n)``, ``write(b)``, ``reset_input_buffer()``,
``in_waiting``, ``close()``); the device is what an emulator implements: it sees every byte
the driver writes and decides what the driver will read. Tests reach the stream directly to
make it fail the way a UART does: garbage before a frame, a stream cut mid-frame, silence.
"""

from __future__ import annotations

import errno
import threading
from typing import Protocol


class SerialDevice(Protocol):
    """The chip at the far end of a :class:`FakeSerialPort`."""

    def received(self, data: bytes) -> bytes:
        """The driver wrote ``data``; return the bytes the chip sends back (may be empty)."""

    def produce(self) -> bytes:
        """Bytes the chip sends by itself when the driver reads (a streaming sensor's
        next frame); empty when it is silent."""


class FakeSerialPort:
    """A serial port whose far end is a :class:`SerialDevice` (or nothing: silence)."""

    def __init__(self, device: SerialDevice | None = None, *, name: str = "/dev/serial0") -> None:
        self.device = device
        self.name = name
        self.baudrate = 9600
        self.timeout: float | None = 1.0
        self.closed = False
        #: Every write, in order.
        self.writes: list[bytes] = []
        self._rx = bytearray()
        #: Bytes the port delivers at most from now on before it goes silent (a cut
        #: cable); ``None``: no cut.
        self.cut_after: int | None = None
        self._lock = threading.Lock()

    def configure(self, *, baudrate: int, timeout_s: float) -> None:
        """What ``serial.Serial(path, baudrate=…, timeout=…)`` would set."""
        self.baudrate = baudrate
        self.timeout = timeout_s
        self.closed = False

    def inject(self, data: bytes) -> None:
        """Put ``data`` in the receive buffer, ahead of anything the device sends next."""
        with self._lock:
            self._rx += data

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "Attempting to use a port that is not open")

    @property
    def in_waiting(self) -> int:
        with self._lock:
            self._check()
            return len(self._rx)

    def write(self, data: bytes) -> int:
        with self._lock:
            self._check()
            payload = bytes(data)
            self.writes.append(payload)
            if self.device is not None:
                self._rx += self.device.received(payload)
            return len(payload)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes; fewer (maybe none) when the far end has no more before the
        timeout, as pyserial returns. The fake never sleeps."""
        with self._lock:
            self._check()
            while len(self._rx) < size and self.device is not None:
                more = self.device.produce()
                if not more:
                    break
                self._rx += more
            chunk = bytes(self._rx[:size])
            if self.cut_after is not None:
                chunk = chunk[: self.cut_after]
                self.cut_after -= len(chunk)
            del self._rx[: len(chunk)]
            return chunk

    def reset_input_buffer(self) -> None:
        with self._lock:
            self._check()
            self._rx.clear()

    def flush(self) -> None:
        self._check()

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSerialPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
