"""Microchip MCP9808 digital temperature sensor, over I2C (datasheet DS25095A).

The chip converts continuously; a read is the ambient temperature register TA (0x05): bits
15-13 are alert flags, bit 12 the sign, bits 11-0 the temperature in 1/16 °C — a 13-bit
two's complement number. The resolution register (0x08) trades resolution for conversion
time: 0.5 °C in 30 ms … 0.0625 °C in 250 ms (datasheet table 5-6). At open the
manufacturer id (0x06 = 0x0054) and device id (0x07, upper byte 0x04) say it is an MCP9808.
"""

from __future__ import annotations

import random
from typing import Annotated

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Sensor, SensorOptions
from drivers.errors import WrongDevice
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.i2c import Registers, SMBusLike
from drivers.sim.fake_smbus import nack
from drivers.sim.signal import SimulatedSignal

REG_CONFIG = 0x01
REG_TA = 0x05
REG_MANUFACTURER = 0x06
REG_DEVICE = 0x07
REG_RESOLUTION = 0x08
MANUFACTURER_ID = 0x0054
DEVICE_ID = 0x04

#: resolution (°C) -> (register value, conversion time in s), datasheet table 5-6.
RESOLUTIONS = {0.5: (0, 0.030), 0.25: (1, 0.065), 0.125: (2, 0.130), 0.0625: (3, 0.250)}


def decode_ta(raw: int) -> float:
    """°C from the TA register: the alert flags (bits 15-13) dropped, 13-bit two's
    complement in 1/16 °C."""
    value = raw & 0x1FFF
    if value & 0x1000:
        value -= 0x2000
    return value / 16.0


def encode_ta(celsius: float) -> int:
    """The TA register for ``celsius`` (alert flags clear), the inverse of
    :func:`decode_ta`."""
    counts = round(celsius * 16)
    if not -0x1000 <= counts < 0x1000:
        raise ValueError(f"{celsius} °C is outside what TA holds")
    return counts & 0x1FFF


class MCP9808(Sensor):
    """One MCP9808 on an SMBus-like ``bus``."""

    def __init__(self, *, bus: SMBusLike, address: int = 0x18, resolution: float = 0.0625) -> None:
        self.name = f"mcp9808@0x{address:02X}"
        self._regs = Registers(bus, address, self.name)
        self._lock = bus_lock(bus)
        self._step = resolution
        self._closed = False
        with self._lock:
            manufacturer = self._regs.read_word(REG_MANUFACTURER)
            device = self._regs.read_word(REG_DEVICE) >> 8
            if manufacturer != MANUFACTURER_ID or device != DEVICE_ID:
                raise WrongDevice(
                    f"{self.name}: manufacturer 0x{manufacturer:04X}, device 0x{device:02X}: "
                    f"not an MCP9808 (0x{MANUFACTURER_ID:04X}, 0x{DEVICE_ID:02X})"
                )
            self._regs.write(REG_RESOLUTION, RESOLUTIONS[resolution][0])

    def read(self) -> dict[str, float]:
        if self._closed:
            raise WrongDevice(f"{self.name} is closed")
        with self._lock:
            raw = self._regs.read_word(REG_TA)
        return {"temperature": decode_ta(raw)}

    def close(self) -> None:
        self._closed = True


class MCP9808Options(SensorOptions, frozen=True, tag="mcp9808"):
    """``driver: mcp9808``."""

    bus: Annotated[int, msgspec.Meta(ge=0)] = 1
    address: Annotated[int, msgspec.Meta(ge=0x18, le=0x1F)] = 0x18
    #: °C per step, 0.5, 0.25, 0.125 or 0.0625; finer steps take longer (0.0625: 250 ms).
    resolution: float = 0.0625

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise OptionError(
                "resolution", f"must be one of {', '.join(f'{r:g}' for r in RESOLUTIONS)}"
            )


class EmulatedMCP9808:
    """The chip's registers, with TA following a simulated temperature."""

    def __init__(self, signal: SimulatedSignal, fail_rate: float, seed: int | None) -> None:
        self.signal = signal
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.registers = {REG_MANUFACTURER: MANUFACTURER_ID, REG_DEVICE: DEVICE_ID << 8}
        self.resolution_bits = 3

    def read_registers(self, register: int, length: int) -> bytes:
        if register == REG_TA:
            if self.random.random() < self.fail_rate:
                raise nack()
            step = 0.5 / (1 << self.resolution_bits)
            value = round(self.signal.next() / step) * step
            return encode_ta(value).to_bytes(2, "big")[:length]
        return self.registers.get(register, 0).to_bytes(2, "big")[:length]

    def write_registers(self, register: int, data: bytes) -> None:
        if register == REG_RESOLUTION:
            self.resolution_bits = data[0] & 0x03


def open_mcp9808(options: MCP9808Options, hardware: Hardware) -> MCP9808:
    return MCP9808(
        bus=hardware.i2c_bus(options.bus), address=options.address, resolution=options.resolution
    )


def emulate_mcp9808(options: MCP9808Options, hardware: SimulatedHardware) -> None:
    sim = options.simulation
    chip = EmulatedMCP9808(
        SimulatedSignal(sim.values.get("temperature", [10.0, 14.0])), sim.fail_rate, hardware.seed
    )
    hardware.fake_bus(options.bus).attach(options.address, chip)


SAMPLE = """\
sensors:
  cellar:
    driver: mcp9808
    bus: 1
    address: 0x18        # 0x18-0x1F with the A0-A2 pins
    resolution: 0.0625   # 0.5 | 0.25 | 0.125 | 0.0625 °C
    interval: 30s
"""

SPEC = DriverSpec(
    name="mcp9808",
    kind="sensor",
    summary="Microchip MCP9808 temperature sensor over I2C (example package)",
    options=MCP9808Options,
    open=open_mcp9808,
    emulate=emulate_mcp9808,
    quantities={
        "temperature": Quantity("°C", 0.0625, "temperature", "temperature", (-40.0, 125.0))
    },
    sample=SAMPLE,
    i2c_addresses=tuple(range(0x18, 0x20)),
)
