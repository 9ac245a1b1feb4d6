"""A fake I2C bus with the surface of :class:`smbus2.SMBus`, and the chips on it.

Two kinds of chip attach to it:

- *register* chips (:class:`I2CDevice`: ``read_registers``/``write_registers``): a write
  sets the register pointer, reads auto-increment from it (Bosch, TI, ADS1x15);
- *command* chips (:class:`CommandChip`: ``command``/``answer``): every write is a command,
  every read is the chip's next output bytes (Sensirion, Aosong, BH1750, SCD4x).

It behaves like hardware: an absent address NACKs with ``OSError(121)``; a chip can be
told to NACK on chosen registers, on a share of transactions, or on chosen transactions
(:meth:`FakeSMBus.fail_next`, :meth:`FakeSMBus.fail_command`); every transaction is
recorded so tests can assert what a driver sent and in what order.
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

_Entry = TypeVar("_Entry")

#: How many transactions :attr:`FakeSMBus.log` and :attr:`FakeSMBus.writes` keep at least
#: (when they reach twice as many, the older half goes).
KEEP_TRANSACTIONS = 20_000


def _keep(entries: list[_Entry], entry: _Entry) -> None:
    """Append ``entry``; at twice :data:`KEEP_TRANSACTIONS` entries the older half goes."""
    entries.append(entry)
    if len(entries) >= 2 * KEEP_TRANSACTIONS:
        del entries[:KEEP_TRANSACTIONS]


def nack() -> OSError:
    """The error a real bus raises when nobody acknowledges."""
    return OSError(errno.EREMOTEIO, "Remote I/O error")


class I2CDevice(Protocol):
    """A chip on the fake bus: a register file with side effects."""

    def read_registers(self, register: int, length: int) -> bytes:
        """Bytes from ``register`` on, auto-incrementing as real chips do."""

    def write_registers(self, register: int, data: bytes) -> None:
        """Write ``data`` from ``register`` on."""


class CommandChip:
    """Base of a command-style chip on the fake bus.

    Subclasses *must* implement :meth:`command` and :meth:`answer`; raising ``nack()``
    from either is the chip refusing (a NACK), as a busy Sensirion chip does.
    """

    def command(self, data: bytes) -> None:
        """The driver wrote ``data`` (command, arguments, CRCs)."""
        raise NotImplementedError

    def answer(self, length: int) -> bytes:
        """The chip's next ``length`` output bytes."""
        raise NotImplementedError


@dataclass
class _Fault:
    address: int
    errno: int
    #: Fail only writes starting with these bytes; ``None``: any transaction.
    command: bytes | None = None
    #: Transactions at this address to let through before failing.
    skip: int = 0
    times: int = 1


class FakeSMBus:
    """An SMBus-like bus holding :class:`I2CDevice` objects by address.

    Its chips answer from memory, so by default it says its transactions cannot block
    (``may_block``, :func:`drivers.hardware.bus_may_block`); ``may_block=True`` makes it
    stand for a real bus (a test of where the agent runs a read, or a chip that hangs).
    """

    def __init__(self, bus: int = 1, *, seed: int | None = None, may_block: bool = False) -> None:
        self.bus = bus
        self.may_block = may_block
        self.devices: dict[int, I2CDevice | CommandChip] = {}
        #: Share (0..1) of transactions per address that fail with a NACK.
        self.fail_rate: dict[int, float] = {}
        #: (address, register) pairs that always NACK.
        self.nack_registers: set[tuple[int, int]] = set()
        #: Every write as (address, register, bytes), in order: at least the latest
        #: :data:`KEEP_TRANSACTIONS` (``--simulate`` runs for weeks).
        self.writes: list[tuple[int, int, bytes]] = []
        #: Every transaction as (address, "w" | "r", bytes written or read), in order: at
        #: least the latest :data:`KEEP_TRANSACTIONS`.
        self.log: list[tuple[int, Literal["w", "r"], bytes]] = []
        self.closed = False
        self._faults: list[_Fault] = []
        self._random = random.Random(seed)
        self._pointer: dict[int, int] = {}
        self._lock = threading.Lock()

    def _log(self, entry: tuple[int, Literal["w", "r"], bytes]) -> None:
        _keep(self.log, entry)

    def _write_log(self, entry: tuple[int, int, bytes]) -> None:
        _keep(self.writes, entry)

    def attach(
        self, address: int, device: I2CDevice | CommandChip, *, fail_rate: float = 0.0
    ) -> None:
        """Put ``device`` on the bus at ``address``."""
        self.devices[address] = device
        self.fail_rate[address] = fail_rate

    def fail_next(
        self, address: int, *, skip: int = 0, times: int = 1, error: int = errno.EREMOTEIO
    ) -> None:
        """Fail ``times`` transactions at ``address`` after letting ``skip`` through, with
        ``OSError(error)`` (NACK by default; ``errno.EIO`` for a glitch)."""
        self._faults.append(_Fault(address, error, skip=skip, times=times))

    def fail_command(
        self, address: int, command: bytes, *, times: int = 1, error: int = errno.EREMOTEIO
    ) -> None:
        """Fail the next ``times`` writes to ``address`` that start with ``command``."""
        self._faults.append(_Fault(address, error, command=command, times=times))

    def _inject(self, address: int, written: bytes | None) -> None:
        for fault in self._faults:
            if fault.address != address or fault.times <= 0:
                continue
            if fault.command is not None and (
                written is None or not written.startswith(fault.command)
            ):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            fault.times -= 1
            self._faults = [f for f in self._faults if f.times > 0]
            raise OSError(fault.errno, errno.errorcode.get(fault.errno, "I/O error"))

    def _chip(self, address: int, written: bytes | None = None) -> I2CDevice | CommandChip:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        device = self.devices.get(address)
        if device is None:
            raise nack()
        self._inject(address, written)
        if self._random.random() < self.fail_rate.get(address, 0.0):
            raise nack()
        return device

    def _device(self, address: int, register: int) -> I2CDevice:
        device = self._chip(address, bytes([register]))
        if (address, register) in self.nack_registers:
            raise nack()
        if isinstance(device, CommandChip):
            raise TypeError(f"0x{address:02X} is a command chip: it has no registers")
        return device

    def _command(self, address: int, data: bytes) -> None:
        chip = self._chip(address, data)
        if not isinstance(chip, CommandChip):
            raise TypeError(f"0x{address:02X} is a register chip")
        chip.command(data)
        self._log((address, "w", data))

    def _answer(self, address: int, length: int) -> bytes:
        chip = self._chip(address)
        if not isinstance(chip, CommandChip):
            raise TypeError(f"0x{address:02X} is a register chip")
        data = chip.answer(length)
        self._log((address, "r", data))
        return data

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        """One byte: a command to a command chip, the register pointer to a register chip."""
        with self._lock:
            if isinstance(self.devices.get(i2c_addr), CommandChip):
                self._command(i2c_addr, bytes([value]))
            else:
                self._device(i2c_addr, value)
                self._pointer[i2c_addr] = value
                self._log((i2c_addr, "w", bytes([value])))

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        with self._lock:
            if isinstance(self.devices.get(i2c_addr), CommandChip):
                return self._answer(i2c_addr, 1)[0]
            register = self._pointer.get(i2c_addr, 0)
            data = self._device(i2c_addr, register).read_registers(register, 1)
            self._log((i2c_addr, "r", data))
            return data[0]

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
            if isinstance(self.devices.get(i2c_addr), CommandChip):
                self._command(i2c_addr, bytes([register]))
                return list(self._answer(i2c_addr, length))
            data = self._device(i2c_addr, register).read_registers(register, length)
            self._log((i2c_addr, "r", data))
            return list(data)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Iterable[int], force: bool | None = None
    ) -> None:
        payload = bytes(data)
        with self._lock:
            if isinstance(self.devices.get(i2c_addr), CommandChip):
                self._command(i2c_addr, bytes([register]) + payload)
                return
            self._device(i2c_addr, register).write_registers(register, payload)
            self._write_log((i2c_addr, register, payload))
            self._log((i2c_addr, "w", bytes([register]) + payload))

    def i2c_rdwr(self, *messages: Any) -> None:
        """Combined transactions of :class:`smbus2.i2c_msg`. To a register chip a write sets
        the register pointer (and writes any further bytes) and a read fills ``msg.buf``
        from it; to a command chip a write is a command and a read its next answer."""
        with self._lock:
            for msg in messages:
                address = msg.addr
                is_command_chip = isinstance(self.devices.get(address), CommandChip)
                if msg.flags & 0x0001:  # I2C_M_RD
                    if is_command_chip:
                        data = self._answer(address, msg.len)
                    else:
                        register = self._pointer.get(address, 0)
                        data = self._device(address, register).read_registers(register, msg.len)
                        self._log((address, "r", data))
                    for i, byte in enumerate(data[: msg.len]):
                        msg.buf[i] = byte
                else:
                    raw = bytes(msg)
                    if is_command_chip:
                        self._command(address, raw)
                        continue
                    if not raw:
                        self._chip(address)  # an address probe: ACK or NACK
                        continue
                    device = self._device(address, raw[0])
                    self._pointer[address] = raw[0]
                    self._log((address, "w", raw))
                    if len(raw) > 1:
                        device.write_registers(raw[0], raw[1:])
                        self._write_log((address, raw[0], raw[1:]))

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        """SMBus quick write: only the address, ACKed or NACKed (i2cdetect's probe)."""
        with self._lock:
            self._chip(i2c_addr)
            self._log((i2c_addr, "w", b""))

    def probe(self, address: int) -> bool:
        """Whether anything acknowledges ``address`` (what ``i2cdetect`` asks)."""
        with self._lock:
            return not self.closed and address in self.devices

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
