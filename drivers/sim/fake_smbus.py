"""A fake I2C bus with the surface of :class:`smbus2.SMBus` and register-level devices on it.

It behaves like hardware: an absent address NACKs with ``OSError(121)``, a device can be
told to NACK on chosen registers or on a share of transactions, and every write is
recorded so tests can assert what a driver sent.
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Iterable
from typing import Any, Protocol


def nack() -> OSError:
    """The error a real bus raises when nobody acknowledges."""
    return OSError(errno.EREMOTEIO, "Remote I/O error")


class I2CDevice(Protocol):
    """A chip on the fake bus: a register file with side effects."""

    def read_registers(self, register: int, length: int) -> bytes:
        """Bytes from ``register`` on, auto-incrementing as real chips do."""

    def write_registers(self, register: int, data: bytes) -> None:
        """Write ``data`` from ``register`` on."""


class FakeSMBus:
    """An SMBus-like bus holding :class:`I2CDevice` objects by address."""

    def __init__(self, bus: int = 1, *, seed: int | None = None) -> None:
        self.bus = bus
        self.devices: dict[int, I2CDevice] = {}
        #: Share (0..1) of transactions per address that fail with a NACK.
        self.fail_rate: dict[int, float] = {}
        #: (address, register) pairs that always NACK.
        self.nack_registers: set[tuple[int, int]] = set()
        #: Every write as (address, register, bytes), in order.
        self.writes: list[tuple[int, int, bytes]] = []
        self.closed = False
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def attach(self, address: int, device: I2CDevice, *, fail_rate: float = 0.0) -> None:
        """Put ``device`` on the bus at ``address``."""
        self.devices[address] = device
        self.fail_rate[address] = fail_rate

    def _device(self, address: int, register: int) -> I2CDevice:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        device = self.devices.get(address)
        if device is None or (address, register) in self.nack_registers:
            raise nack()
        if self._random.random() < self.fail_rate.get(address, 0.0):
            raise nack()
        return device

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        with self._lock:
            return self._device(i2c_addr, register).read_registers(register, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self.write_i2c_block_data(i2c_addr, register, [value])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        with self._lock:
            return list(self._device(i2c_addr, register).read_registers(register, length))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Iterable[int], force: bool | None = None
    ) -> None:
        payload = bytes(data)
        with self._lock:
            self._device(i2c_addr, register).write_registers(register, payload)
            self.writes.append((i2c_addr, register, payload))

    def i2c_rdwr(self, *messages: Any) -> None:
        """Combined transactions of :class:`smbus2.i2c_msg`: a write sets the register
        pointer (and writes any further bytes), a read fills ``msg.buf`` from it."""
        with self._lock:
            pointer: dict[int, int] = {}
            for msg in messages:
                address = msg.addr
                if msg.flags & 0x0001:  # I2C_M_RD
                    register = pointer.get(address, 0)
                    data = self._device(address, register).read_registers(register, msg.len)
                    for i, byte in enumerate(data):
                        msg.buf[i] = byte
                else:
                    raw = bytes(msg)
                    if not raw:
                        continue
                    device = self._device(address, raw[0])
                    pointer[address] = raw[0]
                    if len(raw) > 1:
                        device.write_registers(raw[0], raw[1:])
                        self.writes.append((address, raw[0], raw[1:]))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
