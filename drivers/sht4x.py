"""Sensirion SHT4x (SHT40, SHT41, SHT43, SHT45) temperature and humidity over I2C.

The SHT4x has one-byte commands and no status register. At open the chip is soft-reset
(0x94) and its serial number read (0x89): two words, each with Sensirion's CRC-8, which is
how a real SHT4x is told from a chip that NACKs or answers garbage. Every
:meth:`~SHT4x.read` sends the measurement command of the chosen precision, waits the
typical time and polls the read header, which the chip NACKs until the conversion is done,
up to the datasheet's maximum time plus a margin.

Conversion (datasheet 4.6): ``T = -45 + 175 * S_T / 65535`` °C and
``RH = -6 + 125 * S_RH / 65535`` %RH. The humidity formula reaches -6..119 %RH; the
datasheet's own code crops the *humidity* result to 0..100 %RH (values outside come from
condensation or extreme conditions and have no physical meaning), so the driver does that
and nothing else: temperature is never clamped. Values are rounded to the datasheet's
resolution, 0.01 °C and 0.01 %RH.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from drivers.base import DriverSpec, Quantity, Sensor, SensorOptions
from drivers.errors import BusError, HardwareConfigError
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.crc import sensirion_words
from drivers.protocols.i2c import Commands, I2CMessageBus
from drivers.sim.fake_smbus import nack
from drivers.sim.sensirion import SensirionChip
from drivers.sim.signal import SimulatedSignal, simulated_signals

Precision = Literal["high", "medium", "low"]

# --------------------------------------------------------------------------------------------
# Commands and timing (datasheet section 4, tables 7 and 8).

MEASURE: Final[Mapping[Precision, bytes]] = {"high": b"\xfd", "medium": b"\xf6", "low": b"\xe0"}
READ_SERIAL: Final = b"\x89"
SOFT_RESET: Final = b"\x94"


@dataclass(frozen=True, slots=True)
class Timing:
    """Measurement duration of one precision, in seconds."""

    typical_s: float
    max_s: float


TIMING: Final[Mapping[Precision, Timing]] = {
    "high": Timing(0.0069, 0.0083),
    "medium": Timing(0.0037, 0.0045),
    "low": Timing(0.0013, 0.0016),
}
#: Soft reset time, maximum.
SOFT_RESET_S: Final = 0.001
_TIMEOUT_FACTOR: Final = 1.25
_TIMEOUT_EXTRA_S: Final = 0.005
_POLL_INTERVAL_S: Final = 0.001

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.01, "air temperature", "temperature", (-40.0, 125.0)),
    "humidity": Quantity("%RH", 0.01, "relative humidity", "humidity", (0.0, 100.0)),
}


# --------------------------------------------------------------------------------------------
# Conversion: pure functions.


def temperature_from_raw(raw: int) -> float:
    """``S_T`` (0..65535) in °C: ``-45 + 175 * S_T / 65535``; never clamped."""
    return -45.0 + 175.0 * raw / 65535.0


def humidity_from_raw(raw: int) -> float:
    """``S_RH`` (0..65535) in %RH: ``-6 + 125 * S_RH / 65535``, cropped to 0..100 as the
    datasheet's code does."""
    return min(100.0, max(0.0, -6.0 + 125.0 * raw / 65535.0))


def raw_from_temperature(celsius: float) -> int:
    """The ``S_T`` whose conversion is nearest ``celsius`` (clipped to -45..130 °C)."""
    return min(0xFFFF, max(0, round((celsius + 45.0) * 65535.0 / 175.0)))


def raw_from_humidity(percent: float) -> int:
    """The ``S_RH`` whose uncropped conversion is nearest ``percent`` (-6..119 %RH)."""
    return min(0xFFFF, max(0, round((percent + 6.0) * 65535.0 / 125.0)))


# --------------------------------------------------------------------------------------------
# The driver.


class SHT4x(Sensor):
    """A Sensirion SHT40/SHT41/SHT43/SHT45.

    Args:
        bus: an ``smbus2.SMBus`` (or anything with its ``i2c_rdwr``), shared with other chips.
        address: 0x44, 0x45 or 0x46: fixed by the part number (SHT40-AD1B 0x44, -BD1B 0x45,
            -CD1B 0x46).
        precision: ``"high"``, ``"medium"`` or ``"low"`` repeatability (8.3, 4.5 or 1.6 ms
            at most).
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        clock: monotonic seconds; injectable, with ``sleep``, so tests need not wait.
        sleep: waits for the chip.

    Raises:
        BusError: nothing answered at ``address``, or a NACK.
        ChecksumError: the serial number failed its CRC.
        HardwareConfigError: an unknown precision.
    """

    def __init__(
        self,
        *,
        bus: I2CMessageBus,
        address: int = 0x44,
        precision: Precision = "high",
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if precision not in MEASURE:
            raise HardwareConfigError(f"precision must be high, medium or low, not {precision!r}")
        self.address = address
        self.resource = resource
        self.precision: Precision = precision
        self._name = f"SHT4x at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._chip = Commands(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        timing = TIMING[precision]
        self._typical_s = timing.typical_s
        self._timeout_s = timing.max_s * _TIMEOUT_FACTOR + _TIMEOUT_EXTRA_S
        with self._lock:
            self._chip.send(SOFT_RESET, "soft reset")
            self._sleep(SOFT_RESET_S)
            self._chip.send(READ_SERIAL, "serial number")
            self._sleep(0.001)  # a moment for the chip to fetch it before the read
            high, low = sensirion_words(self._chip.receive(6, "serial number"), self._name)
            self.serial_number = high << 16 | low

    def read(self) -> dict[str, float]:
        """One measurement.

        Returns:
            ``temperature`` (°C) and ``humidity`` (%RH, cropped to 0..100), two decimals.

        Raises:
            BusError: a NACK on the command, or the chip still NACKed its read header
                after the datasheet's maximum conversion time.
            ChecksumError: a word failed its CRC.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            self._chip.send(MEASURE[self.precision], f"{self.precision} precision measurement")
            deadline = self._clock() + self._timeout_s
            self._sleep(self._typical_s)
            while True:
                try:
                    data = self._chip.receive(6, "measurement")
                    break
                except BusError:
                    if self._clock() >= deadline:
                        raise
                    self._sleep(_POLL_INTERVAL_S)
        raw_t, raw_rh = sensirion_words(data, f"{self._name}: measurement")
        return {
            "temperature": round(temperature_from_raw(raw_t), 2),
            "humidity": round(humidity_from_raw(raw_rh), 2),
        }

    def close(self) -> None:
        """Nothing to release: the chip idles by itself between measurements."""
        self._closed = True


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
bedroom:
  driver: sht4x
  interval: 30s
  bus: 1                 # /dev/i2c-1
  address: 0x44          # set by the part: SHT4x-A 0x44, -B 0x45, -C 0x46
  precision: high        # high (8.3 ms), medium (4.5 ms) or low (1.6 ms)
"""


class SHT4xOptions(SensorOptions, frozen=True, tag="sht4x"):
    """Options of the ``sht4x`` driver (SHT40, SHT41, SHT43, SHT45)."""

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[
        Literal[0x44, 0x45, 0x46], msgspec.Meta(description="0x44, 0x45 or 0x46 (part number)")
    ] = 0x44
    precision: Precision = "high"


def open_sht4x(options: SHT4xOptions, hardware: Hardware) -> SHT4x:
    """An :class:`SHT4x` on ``hardware``'s bus ``options.bus``."""
    return SHT4x(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        precision=options.precision,
        resource=f"i2c-{options.bus}",
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedSHT4x(SensirionChip):
    """A command-level SHT4x for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    It knows the three measurement commands, soft reset and the serial number; NACKs its
    address while converting and its read header when it has nothing to send (a result is
    sent once); ignores unknown commands (and then NACKs the read, as the chip does); and
    turns the signals' values into the raw words the real conversion gives back. A
    humidity signal outside 0..100 %RH gives the raw words the chip sends in condensation
    (-6..119 %RH before cropping).

    Faults: see :class:`~drivers.sim.sensirion.SensirionChip`.
    """

    def __init__(
        self,
        *,
        temperature: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        serial_number: int = 0x1234ABCD,
        measuring_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(clock=clock, fail_rate=fail_rate, rng=rng)
        self.temperature = temperature or SimulatedSignal(21.0)
        self.humidity = humidity or SimulatedSignal(50.0)
        self.serial_number = serial_number
        self.measuring_s = measuring_s
        self.commands: list[bytes] = []

    def command(self, data: bytes) -> None:
        with self.lock:
            self.commands.append(data)
            if self.busy():
                raise nack()
            self.clear()
            precision = next((p for p, c in MEASURE.items() if c == data), None)
            if precision is not None:
                duration = self.measuring_s
                if duration is None:
                    duration = TIMING[precision].typical_s
                self.busy_for(duration)
                self.send(
                    raw_from_temperature(self.temperature.next()),
                    raw_from_humidity(self.humidity.next()),
                    measurement=True,
                )
            elif data == READ_SERIAL:
                self.send(self.serial_number >> 16, self.serial_number & 0xFFFF)
            elif data == SOFT_RESET:
                self.busy_for(SOFT_RESET_S / 2)


SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "temperature": [18.0, 24.0],
    "humidity": [40.0, 60.0],
}


def emulate_sht4x(options: SHT4xOptions, hardware: SimulatedHardware) -> None:
    """Put an emulated SHT4x whose values follow ``options.simulation`` on the fake bus."""
    rng = random.Random(f"{hardware.seed}-sht4x-{options.address}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    chip = EmulatedSHT4x(
        temperature=signals["temperature"],
        humidity=signals["humidity"],
        clock=hardware.monotonic,
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    hardware.fake_bus(options.bus).attach(options.address, chip)


SPEC = DriverSpec(
    name="sht4x",
    kind="sensor",
    summary="Sensirion SHT40/SHT41/SHT43/SHT45 temperature and humidity over I2C",
    options=SHT4xOptions,
    open=open_sht4x,
    emulate=emulate_sht4x,
    quantities=QUANTITIES,
    sample=SAMPLE,
    i2c_addresses=(0x44, 0x45, 0x46),
    humidity_shares_die=True,
)
