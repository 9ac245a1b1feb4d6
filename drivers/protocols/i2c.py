"""I2C transactions with every bus failure turned into :class:`~drivers.errors.BusError`.

Two kinds of chip live on an I2C bus:

- *register* chips (Bosch, TI, the ADS1x15): a register pointer, then bytes from it.
  :class:`Registers` reads and writes them through the SMBus calls.
- *command* chips (Sensirion, Aosong, the BH1750, SCD4x): no register map; every write is a
  command (often with arguments and a CRC), every read is the chip's next output.
  :class:`Commands` sends and receives them as plain I2C messages (``i2c_rdwr`` with
  ``smbus2.i2c_msg``), which is what these chips expect: an SMBus "register" byte would be
  taken as half a command.

Both hold no lock: a driver holds :func:`drivers.hardware.bus_lock` around a whole
measurement, so that a trigger-wait-read sequence is never interleaved with another chip's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from drivers.errors import BusError


class SMBusLike(Protocol):
    """The part of :class:`smbus2.SMBus` register chips use."""

    def read_byte_data(self, i2c_addr: int, register: int, /) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int, /) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, /) -> list[int]: ...


class I2CMessageBus(Protocol):
    """The part of :class:`smbus2.SMBus` command chips use."""

    def i2c_rdwr(self, *messages: Any) -> None: ...


def bus_error(e: OSError, what: str) -> BusError:
    """The :class:`BusError` for a failed transaction. NACK (EREMOTEIO), EIO and ETIMEDOUT
    are what a real i2c-dev returns; anything else (EBADF after close, ENXIO from a flaky
    adapter) is still a failed transaction."""
    message = f"{what}: {e.strerror or e}"
    return BusError(e.errno, message) if e.errno is not None else BusError(message)


@contextlib.contextmanager
def bus_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` inside the block into a :class:`BusError` saying ``what``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, BusError):
            raise
        raise bus_error(e, what) from e


class Registers:
    """A register chip at ``address`` on an SMBus.

    Writes are one register/value pair each (:meth:`write`) unless the chip auto-increments
    on writes (:meth:`write_block`).
    """

    def __init__(self, bus: SMBusLike, address: int, name: str) -> None:
        self.bus = bus
        self.address = address
        self.name = name

    def read(self, register: int, length: int = 1) -> bytes:
        """``length`` bytes from ``register`` on."""
        with bus_errors(f"{self.name}: reading register 0x{register:02X}"):
            if length == 1:
                data = bytes([self.bus.read_byte_data(self.address, register)])
            else:
                data = bytes(self.bus.read_i2c_block_data(self.address, register, length))
        if len(data) != length:
            raise BusError(
                f"{self.name}: reading register 0x{register:02X}: "
                f"got {len(data)} bytes, wanted {length}"
            )
        return data

    def write(self, register: int, value: int) -> None:
        """One byte to ``register``."""
        with bus_errors(f"{self.name}: writing register 0x{register:02X}"):
            self.bus.write_byte_data(self.address, register, value)

    def read_word(self, register: int) -> int:
        """A 16-bit big-endian register (TI's order: most significant byte first)."""
        return int.from_bytes(self.read(register, 2), "big")

    def write_word(self, register: int, value: int) -> None:
        """A 16-bit big-endian register, as one transaction: pointer, MSB, LSB."""
        from smbus2 import i2c_msg

        payload = bytes([register, (value >> 8) & 0xFF, value & 0xFF])
        with bus_errors(f"{self.name}: writing register 0x{register:02X}"):
            self.bus.i2c_rdwr(i2c_msg.write(self.address, payload))  # type: ignore[attr-defined]


class Commands:
    """A command chip at ``address``: :meth:`send` a command, :meth:`receive` its answer."""

    def __init__(self, bus: I2CMessageBus, address: int, name: str) -> None:
        self.bus = bus
        self.address = address
        self.name = name

    def send(self, command: bytes, what: str = "") -> None:
        """Write ``command`` (with any arguments and CRCs) as one I2C write."""
        from smbus2 import i2c_msg

        with bus_errors(f"{self.name}: sending {what or command.hex()}"):
            self.bus.i2c_rdwr(i2c_msg.write(self.address, command))

    def receive(self, length: int, what: str = "") -> bytes:
        """Read the chip's next ``length`` bytes as one I2C read."""
        from smbus2 import i2c_msg

        msg = i2c_msg.read(self.address, length)
        with bus_errors(f"{self.name}: reading {what or f'{length} bytes'}"):
            self.bus.i2c_rdwr(msg)
        return bytes(msg)
