"""Sensirion SHT3x (SHT30, SHT31, SHT35) temperature and humidity over I2C.

Every :meth:`~SHT3x.read` is one *single-shot* measurement with clock stretching disabled
(datasheet 4.3, table 9): the chip NACKs its read header until the conversion is done, so
the driver waits the typical time, then polls the read until the datasheet's maximum
(plus a margin) has passed. Clock stretching stays off because the Raspberry Pi's I2C
controller mishandles stretched clocks (it can lose the first bit after a stretch).

At open the chip is soft-reset, its status register read (the "system reset detected" bit
must then be set: a chip that ignores Sensirion's reset is not an SHT3x) and cleared, the
heater switched to the configured state and checked in the status register, and its serial
number read. Every word the chip sends carries Sensirion's CRC-8, and every one is checked:
a mismatch is :class:`~drivers.errors.ChecksumError`, never a reading.

Conversion (datasheet 4.13): ``T = -45 + 175 * S_T / 65535`` °C, ``RH = 100 * S_RH / 65535``
%RH; both raw values are unsigned and the formulas cannot leave 0..100 %RH, so nothing is
clamped. Values are rounded to the datasheet's resolution (0.015 °C, 0.01 %RH: two
decimals each).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from drivers.base import DriverSpec, Quantity, Sensor, SensorOptions
from drivers.errors import BusError, HardwareConfigError, WrongDevice
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.crc import sensirion_words
from drivers.protocols.i2c import Commands, I2CMessageBus
from drivers.sim.fake_smbus import nack
from drivers.sim.sensirion import SensirionChip
from drivers.sim.signal import SimulatedSignal, simulated_signals

Repeatability = Literal["high", "medium", "low"]

# --------------------------------------------------------------------------------------------
# Commands (datasheet section 4, tables 9 and 13-19; the serial number from Sensirion's
# "electronic identification code" note).

#: Single shot, clock stretching disabled, by repeatability.
MEASURE: Final[Mapping[Repeatability, bytes]] = {
    "high": b"\x24\x00",
    "medium": b"\x24\x0b",
    "low": b"\x24\x16",
}
SOFT_RESET: Final = b"\x30\xa2"
READ_STATUS: Final = b"\xf3\x2d"
CLEAR_STATUS: Final = b"\x30\x41"
HEATER_ON: Final = b"\x30\x6d"
HEATER_OFF: Final = b"\x30\x66"
#: Read the 32-bit serial number, clock stretching disabled (0x3780 would stretch).
READ_SERIAL: Final = b"\x36\x82"

STATUS_ALERT_PENDING: Final = 1 << 15
STATUS_HEATER_ON: Final = 1 << 13
STATUS_RESET_DETECTED: Final = 1 << 4
STATUS_COMMAND_FAILED: Final = 1 << 1
STATUS_WRITE_CRC_FAILED: Final = 1 << 0


@dataclass(frozen=True, slots=True)
class Timing:
    """Measurement duration of one repeatability (datasheet table 4), in seconds."""

    typical_s: float
    max_s: float


TIMING: Final[Mapping[Repeatability, Timing]] = {
    "high": Timing(0.0125, 0.015),
    "medium": Timing(0.0045, 0.006),
    "low": Timing(0.0025, 0.004),
}
#: Soft reset time, maximum (datasheet table 4).
SOFT_RESET_S: Final = 0.0015
#: Margin on the datasheet's maximum measurement time: Linux sleeps overshoot.
_TIMEOUT_FACTOR: Final = 1.25
_TIMEOUT_EXTRA_S: Final = 0.005
_POLL_INTERVAL_S: Final = 0.001

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.015, "air temperature", "temperature", (-40.0, 125.0)),
    "humidity": Quantity("%RH", 0.01, "relative humidity", "humidity", (0.0, 100.0)),
}


# --------------------------------------------------------------------------------------------
# Conversion: pure functions (datasheet 4.13).


def temperature_from_raw(raw: int) -> float:
    """``S_T`` (0..65535) in °C: ``-45 + 175 * S_T / 65535``."""
    return -45.0 + 175.0 * raw / 65535.0


def humidity_from_raw(raw: int) -> float:
    """``S_RH`` (0..65535) in %RH: ``100 * S_RH / 65535``."""
    return 100.0 * raw / 65535.0


def raw_from_temperature(celsius: float) -> int:
    """The ``S_T`` whose conversion is nearest ``celsius`` (clipped to -45..130 °C)."""
    return min(0xFFFF, max(0, round((celsius + 45.0) * 65535.0 / 175.0)))


def raw_from_humidity(percent: float) -> int:
    """The ``S_RH`` whose conversion is nearest ``percent`` (clipped to 0..100 %RH)."""
    return min(0xFFFF, max(0, round(percent * 65535.0 / 100.0)))


# --------------------------------------------------------------------------------------------
# The driver.


class SHT3x(Sensor):
    """A Sensirion SHT30/SHT31/SHT35, read in single-shot mode.

    Args:
        bus: an ``smbus2.SMBus`` (or anything with its ``i2c_rdwr``), shared with other chips.
        address: 0x44 (ADDR pin to GND) or 0x45 (ADDR to VDD).
        repeatability: ``"high"``, ``"medium"`` or ``"low"``: less noise for a longer
            conversion (15, 6 or 4 ms at most).
        heater: switch the on-chip heater on (it reads several °C high while on: use it
            to dry a condensed sensor or to check it, not for the room's temperature).
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        clock: monotonic seconds; injectable, with ``sleep``, so tests need not wait.
        sleep: waits for the chip.

    Raises:
        BusError: nothing answered at ``address`` (wiring, address pin), or a NACK.
        ChecksumError: an answer at open failed its CRC.
        WrongDevice: something answered, but it does not behave as an SHT3x.
        HardwareConfigError: an unknown repeatability.
    """

    def __init__(
        self,
        *,
        bus: I2CMessageBus,
        address: int = 0x44,
        repeatability: Repeatability = "high",
        heater: bool = False,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if repeatability not in MEASURE:
            raise HardwareConfigError(
                f"repeatability must be high, medium or low, not {repeatability!r}"
            )
        self.address = address
        self.resource = resource
        self.repeatability: Repeatability = repeatability
        self.heater = heater
        self._name = f"SHT3x at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._chip = Commands(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        timing = TIMING[repeatability]
        self._typical_s = timing.typical_s
        self._timeout_s = timing.max_s * _TIMEOUT_FACTOR + _TIMEOUT_EXTRA_S
        with self._lock:
            self._reset()
            self._set_heater(heater)
            self.serial_number = self._read_serial()

    # -- set-up -----------------------------------------------------------------------------

    def _word(self, command: bytes, what: str) -> int:
        self._chip.send(command, what)
        (word,) = sensirion_words(self._chip.receive(3, what), f"{self._name}: {what}")
        return word

    def read_status(self) -> int:
        """The 16-bit status register (datasheet table 18)."""
        with self._lock:
            return self._word(READ_STATUS, "status")

    def _reset(self) -> None:
        self._chip.send(SOFT_RESET, "soft reset")
        self._sleep(SOFT_RESET_S)
        status = self._word(READ_STATUS, "status")
        if not status & STATUS_RESET_DETECTED:
            raise WrongDevice(
                f"{self._name}: status 0x{status:04X} after a soft reset has no 'reset "
                "detected' bit: this is not an SHT3x"
            )
        self._chip.send(CLEAR_STATUS, "clear status")

    def _set_heater(self, on: bool) -> None:
        self._chip.send(HEATER_ON if on else HEATER_OFF, "heater on" if on else "heater off")
        status = self._word(READ_STATUS, "status")
        if status & STATUS_COMMAND_FAILED:
            raise BusError(f"{self._name}: the heater command was not processed")
        if bool(status & STATUS_HEATER_ON) != on:
            raise WrongDevice(
                f"{self._name}: status 0x{status:04X} says the heater is "
                f"{'off' if on else 'on'} after switching it {'on' if on else 'off'}"
            )

    def _read_serial(self) -> int:
        self._chip.send(READ_SERIAL, "serial number")
        high, low = sensirion_words(self._chip.receive(6, "serial number"), self._name)
        return high << 16 | low

    # -- measuring --------------------------------------------------------------------------

    def read(self) -> dict[str, float]:
        """One single-shot measurement.

        Returns:
            ``temperature`` (°C) and ``humidity`` (%RH), two decimals each.

        Raises:
            BusError: a NACK on the command, or the chip still NACKed its read header
                after the datasheet's maximum conversion time.
            ChecksumError: a word failed its CRC.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            raw_t, raw_rh = self._measure()
        return {
            "temperature": round(temperature_from_raw(raw_t), 2),
            "humidity": round(humidity_from_raw(raw_rh), 2),
        }

    def _measure(self) -> tuple[int, int]:
        self._chip.send(MEASURE[self.repeatability], f"{self.repeatability} measurement")
        deadline = self._clock() + self._timeout_s
        self._sleep(self._typical_s)
        while True:
            try:
                data = self._chip.receive(6, "measurement")
                break
            except BusError:
                # Without clock stretching the chip NACKs its read header until it is done.
                if self._clock() >= deadline:
                    raise
                self._sleep(_POLL_INTERVAL_S)
        raw_t, raw_rh = sensirion_words(data, f"{self._name}: measurement")
        return raw_t, raw_rh

    def close(self) -> None:
        """Switch the heater off if it was on; the chip sleeps by itself between
        single-shot measurements. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.heater:
            try:
                with self._lock:
                    self._chip.send(HEATER_OFF, "heater off")
            except BusError:
                pass  # unplugged or bus gone: the heater goes off with the power anyway


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
greenhouse:
  driver: sht3x
  interval: 30s
  bus: 1                 # /dev/i2c-1
  address: 0x44          # 0x44 (ADDR to GND) or 0x45 (ADDR to VDD)
  repeatability: high    # high (15 ms), medium (6 ms) or low (4 ms): less noise, longer
  heater: false          # true keeps the heater on: dries a condensed sensor, reads high
"""

I2CBusNumber = Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")]


class SHT3xOptions(SensorOptions, frozen=True, tag="sht3x"):
    """Options of the ``sht3x`` driver (SHT30, SHT31, SHT35)."""

    bus: I2CBusNumber = 1
    address: Annotated[Literal[0x44, 0x45], msgspec.Meta(description="0x44 or 0x45 (ADDR)")] = 0x44
    repeatability: Repeatability = "high"
    heater: bool = False


def open_sht3x(options: SHT3xOptions, hardware: Hardware) -> SHT3x:
    """An :class:`SHT3x` on ``hardware``'s bus ``options.bus``."""
    return SHT3x(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        repeatability=options.repeatability,
        heater=options.heater,
        resource=f"i2c-{options.bus}",
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedSHT3x(SensirionChip):
    """A command-level SHT3x for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    It knows the single-shot, reset, status, heater and serial commands; NACKs its read
    header while a conversion runs and when it has nothing to send (a result is sent once,
    then cleared: reading it again is NACKed, never stale data); sets the "command failed"
    status bit on a command it does not know; and turns the signals' values into the raw
    words the real conversion gives back.

    Faults a test (or ``simulation.fail_rate``) can ask for: see
    :class:`~drivers.sim.sensirion.SensirionChip`.

    Args:
        temperature, humidity: the physical values (°C, %RH) to measure.
        serial_number: the 32-bit serial number.
        measuring_s: how long a conversion takes; by default the datasheet's typical time
            for the repeatability asked for (``math.inf``: a chip that never finishes).
        clock, fail_rate, rng: as for :class:`~drivers.sim.sensirion.SensirionChip`.
    """

    def __init__(
        self,
        *,
        temperature: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        serial_number: int = 0x0A1B2C3D,
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
        self.status = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED
        #: Every command received, in order.
        self.commands: list[bytes] = []

    def command(self, data: bytes) -> None:
        with self.lock:
            self.commands.append(data)
            if self.busy():
                raise nack()  # busy measuring: the chip does not acknowledge its address
            self.clear()
            self.status &= ~(STATUS_COMMAND_FAILED | STATUS_WRITE_CRC_FAILED)
            if data in MEASURE.values():
                repeatability = next(r for r, c in MEASURE.items() if c == data)
                duration = self.measuring_s
                if duration is None:
                    duration = TIMING[repeatability].typical_s
                self.busy_for(duration)
                self.send(
                    raw_from_temperature(self.temperature.next()),
                    raw_from_humidity(self.humidity.next()),
                    measurement=True,
                )
            elif data == SOFT_RESET:
                self.status = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED
                self.busy_for(SOFT_RESET_S / 2)
            elif data == READ_STATUS:
                self.send(self.status)
            elif data == CLEAR_STATUS:
                self.status &= ~(STATUS_ALERT_PENDING | STATUS_RESET_DETECTED | 0x0C00)
            elif data == HEATER_ON:
                self.status |= STATUS_HEATER_ON
            elif data == HEATER_OFF:
                self.status &= ~STATUS_HEATER_ON
            elif data == READ_SERIAL:
                self.send(self.serial_number >> 16, self.serial_number & 0xFFFF)
            else:
                self.status |= STATUS_COMMAND_FAILED


#: Defaults of ``simulation`` for quantities the config leaves out.
SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "temperature": [18.0, 24.0],
    "humidity": [40.0, 60.0],
}


def emulate_sht3x(options: SHT3xOptions, hardware: SimulatedHardware) -> None:
    """Put an emulated SHT3x whose values follow ``options.simulation`` on the fake bus."""
    rng = random.Random(f"{hardware.seed}-sht3x-{options.address}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    chip = EmulatedSHT3x(
        temperature=signals["temperature"],
        humidity=signals["humidity"],
        clock=hardware.monotonic,
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    hardware.fake_bus(options.bus).attach(options.address, chip)


SPEC = DriverSpec(
    name="sht3x",
    kind="sensor",
    summary="Sensirion SHT30/SHT31/SHT35 temperature and humidity over I2C",
    options=SHT3xOptions,
    open=open_sht3x,
    emulate=emulate_sht3x,
    quantities=QUANTITIES,
    sample=SAMPLE,
    i2c_addresses=(0x44, 0x45),
    humidity_shares_die=True,
)
