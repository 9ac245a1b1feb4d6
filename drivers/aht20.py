"""Aosong (ASAIR) AHT20 temperature and humidity over I2C, also the AHT21/AHT25 and DHT20.

What the datasheet says, and what popular drivers got wrong:

- **Status is a plain one-byte read.** The datasheet's "send 0x71 to get the status" is
  the I2C read header itself (0x38 << 1 | 1): writing 0x71 as a command confuses some
  chips into a busy bit that never clears.
- **Initialisation is 0xBE 0x08 0x00**, sent when the status's calibration bits
  (``status & 0x18 != 0x18``) say the chip is not ready. 0xE1 is the *AHT10's* command:
  current AHT20s NACK it, which drivers written for both chips mistake for a missing
  device. After 0xBE the calibration bit (bit 3) must be set, or the chip is refused.
- **A measurement** is 0xAC 0x33 0x00, then at least 80 ms, then a 7-byte read: status,
  20-bit humidity, 20-bit temperature (sharing the middle byte), CRC-8 (Sensirion's
  polynomial 0x31, initial value 0xFF) over the first six. While the busy bit (bit 7) is
  set the other bytes are the *previous* measurement's: the driver polls until the bit
  clears and never returns those stale values. A CRC mismatch is a ChecksumError.
- **A chip that lost its calibration** (a brown-out resets it) reports a clear
  calibration bit in the measurement's status; that reading is refused (transient) and the
  chip is initialised again before the next one.

Conversion (datasheet 6.1): ``RH = S_RH / 2^20 * 100`` %RH, ``T = S_T / 2^20 * 200 - 50``
°C; rounded to 0.01 (the datasheet's resolution is 0.024 %RH and 0.01 °C).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Final, Literal

import msgspec

from drivers.base import DriverSpec, Quantity, Sensor, SensorOptions
from drivers.errors import ChecksumError, ImplausibleReading, MeasurementTimeout, WrongDevice
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.crc import crc8_msb
from drivers.protocols.i2c import Commands, I2CMessageBus
from drivers.sim.fake_smbus import CommandChip, nack
from drivers.sim.signal import SimulatedSignal, simulated_signals

# --------------------------------------------------------------------------------------------
# Commands, status bits and timing (datasheet sections 5 and 7).

INITIALIZE: Final = b"\xbe\x08\x00"
TRIGGER: Final = b"\xac\x33\x00"
SOFT_RESET: Final = b"\xba"
#: The AHT10's initialisation; an AHT20 NACKs it. Never sent, kept for the emulator.
AHT10_INITIALIZE: Final = b"\xe1\x08\x00"

STATUS_BUSY: Final = 0x80
STATUS_CALIBRATED: Final = 0x08
#: The bits the datasheet's start-up check wants set.
STATUS_READY: Final = 0x18

SOFT_RESET_S: Final = 0.020
INITIALIZE_S: Final = 0.010
MEASUREMENT_S: Final = 0.080
#: How long after the 80 ms the driver keeps polling the busy bit before giving up.
_BUSY_TIMEOUT_S: Final = 0.100
_POLL_INTERVAL_S: Final = 0.010

FULL_SCALE: Final = 1 << 20

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.01, "air temperature", "temperature", (-40.0, 85.0)),
    "humidity": Quantity("%RH", 0.024, "relative humidity", "humidity", (0.0, 100.0)),
}


# --------------------------------------------------------------------------------------------
# Conversion: pure functions.


def crc8(data: bytes) -> int:
    """The AHT20's CRC-8: polynomial 0x31, initial value 0xFF (as Sensirion's)."""
    return crc8_msb(data)


def decode(frame: bytes) -> tuple[int, int, int]:
    """``(status, S_RH, S_T)`` of a 7-byte measurement answer.

    Raises:
        ChecksumError: the frame is short or its CRC does not match.
    """
    if len(frame) != 7:
        raise ChecksumError(f"a measurement is 7 bytes, got {len(frame)}")
    if crc8(frame[:6]) != frame[6]:
        raise ChecksumError(
            f"CRC mismatch: got 0x{frame[6]:02X}, computed 0x{crc8(frame[:6]):02X} "
            f"over {frame[:6].hex()}"
        )
    humidity = frame[1] << 12 | frame[2] << 4 | frame[3] >> 4
    temperature = (frame[3] & 0x0F) << 16 | frame[4] << 8 | frame[5]
    return frame[0], humidity, temperature


def encode(status: int, raw_humidity: int, raw_temperature: int) -> bytes:
    """The 7 bytes an AHT20 sends for these raw values (what :func:`decode` reverses)."""
    body = bytes(
        [
            status,
            raw_humidity >> 12 & 0xFF,
            raw_humidity >> 4 & 0xFF,
            (raw_humidity & 0x0F) << 4 | raw_temperature >> 16 & 0x0F,
            raw_temperature >> 8 & 0xFF,
            raw_temperature & 0xFF,
        ]
    )
    return body + bytes([crc8(body)])


def humidity_from_raw(raw: int) -> float:
    """``S_RH`` (20 bit) in %RH."""
    return raw / FULL_SCALE * 100.0


def temperature_from_raw(raw: int) -> float:
    """``S_T`` (20 bit) in °C."""
    return raw / FULL_SCALE * 200.0 - 50.0


def raw_from_humidity(percent: float) -> int:
    """The ``S_RH`` nearest ``percent`` (clipped to the 20-bit range)."""
    return min(FULL_SCALE - 1, max(0, round(percent / 100.0 * FULL_SCALE)))


def raw_from_temperature(celsius: float) -> int:
    """The ``S_T`` nearest ``celsius`` (clipped to the 20-bit range, -50..150 °C)."""
    return min(FULL_SCALE - 1, max(0, round((celsius + 50.0) / 200.0 * FULL_SCALE)))


# --------------------------------------------------------------------------------------------
# The driver.


class AHT20(Sensor):
    """An Aosong AHT20 (or AHT21, AHT25, DHT20: the same protocol at 0x38).

    Args:
        bus: an ``smbus2.SMBus`` (or anything with its ``i2c_rdwr``), shared with other chips.
        address: 0x38, the only one the chip has.
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        clock: monotonic seconds; injectable, with ``sleep``, so tests need not wait.
        sleep: waits for the chip.

    Raises:
        BusError: nothing answered at ``address``, or a NACK.
        WrongDevice: the calibration bit stays clear after the 0xBE initialisation.
    """

    def __init__(
        self,
        *,
        bus: I2CMessageBus,
        address: int = 0x38,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.address = address
        self.resource = resource
        self._name = f"AHT20 at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._chip = Commands(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        with self._lock:
            self._chip.send(SOFT_RESET, "soft reset")
            self._sleep(SOFT_RESET_S)
            self._initialize()
        self._needs_init = False

    def read_status(self) -> int:
        """The status byte: a one-byte read, no command (the datasheet's "0x71")."""
        with self._lock:
            return self._chip.receive(1, "status")[0]

    def _initialize(self) -> None:
        status = self._chip.receive(1, "status")[0]
        if status & STATUS_READY == STATUS_READY:
            return
        self._chip.send(INITIALIZE, "initialisation 0xBE")
        self._sleep(INITIALIZE_S)
        status = self._chip.receive(1, "status")[0]
        if not status & STATUS_CALIBRATED:
            raise WrongDevice(
                f"{self._name}: status 0x{status:02X}: calibration bit still clear after the "
                "0xBE initialisation (not an AHT20, or a faulty one)"
            )

    def read(self) -> dict[str, float]:
        """One measurement (about 80 ms).

        Returns:
            ``temperature`` (°C) and ``humidity`` (%RH), two decimals each.

        Raises:
            BusError: a NACK.
            ChecksumError: the answer failed its CRC.
            MeasurementTimeout: the busy bit was still set 180 ms after the trigger.
            ImplausibleReading: the chip reports it lost its calibration (re-initialised
                before the next read).
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            if self._needs_init:
                self._initialize()
                self._needs_init = False
            status, raw_rh, raw_t = self._measure()
        if not status & STATUS_CALIBRATED:
            self._needs_init = True
            raise ImplausibleReading(
                f"{self._name}: status 0x{status:02X}: the chip lost its calibration "
                "(a brown-out?); initialising it again"
            )
        return {
            "temperature": round(temperature_from_raw(raw_t), 2),
            "humidity": round(humidity_from_raw(raw_rh), 2),
        }

    def _measure(self) -> tuple[int, int, int]:
        self._chip.send(TRIGGER, "measurement trigger 0xAC")
        self._sleep(MEASUREMENT_S)
        deadline = self._clock() + _BUSY_TIMEOUT_S
        while True:
            frame = self._chip.receive(7, "measurement")
            if not frame[0] & STATUS_BUSY:
                break
            # Busy: the other bytes are the previous measurement's. Never return them.
            if self._clock() >= deadline:
                raise MeasurementTimeout(
                    f"{self._name}: still busy {(MEASUREMENT_S + _BUSY_TIMEOUT_S) * 1000:.0f} ms "
                    "after the trigger"
                )
            self._sleep(_POLL_INTERVAL_S)
        try:
            return decode(frame)
        except ChecksumError as e:
            raise ChecksumError(f"{self._name}: {e}") from e

    def close(self) -> None:
        """Nothing to release: the chip sleeps by itself after each measurement."""
        self._closed = True


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
cupboard:
  driver: aht20          # also AHT21, AHT25 and DHT20
  interval: 30s
  bus: 1                 # /dev/i2c-1
  address: 0x38          # fixed
"""


class AHT20Options(SensorOptions, frozen=True, tag="aht20"):
    """Options of the ``aht20`` driver."""

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[Literal[0x38], msgspec.Meta(description="0x38 (fixed)")] = 0x38


def open_aht20(options: AHT20Options, hardware: Hardware) -> AHT20:
    """An :class:`AHT20` on ``hardware``'s bus ``options.bus``."""
    return AHT20(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        resource=f"i2c-{options.bus}",
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedAHT20(CommandChip):
    """A command-level AHT20 for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    A read returns the status byte followed by the data bytes and CRC of the *last finished*
    measurement, as the chip does: while the busy bit is set those are stale. It starts
    uncalibrated (status 0x00 until 0xBE, or ``calibrated=True`` for a chip that comes up
    ready), NACKs the AHT10's 0xE1, and :meth:`brown_out` clears the calibration as a
    supply dip does.

    Faults: :attr:`corrupt_next` flips a bit of the next measurement's CRC; ``fail_rate``
    NACKs or corrupts that share of measurement reads.
    """

    def __init__(
        self,
        *,
        temperature: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        calibrated: bool = False,
        measuring_s: float = MEASUREMENT_S,
        calibration_sticks: bool = True,
        clock: Callable[[], float] = time.monotonic,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.temperature = temperature or SimulatedSignal(21.0)
        self.humidity = humidity or SimulatedSignal(50.0)
        self.status = STATUS_READY if calibrated else 0x00
        self.measuring_s = measuring_s
        #: False: 0xBE does not set the calibration bit (a faulty or foreign chip).
        self.calibration_sticks = calibration_sticks
        self.fail_rate = fail_rate
        self.corrupt_next = 0
        self.commands: list[bytes] = []
        self._clock = clock
        self._rng = rng or random.Random()
        self._data = encode(0, 0, 0)[1:6]
        self._pending: bytes | None = None
        self._ready_at = 0.0
        self._lock = threading.Lock()

    def brown_out(self) -> None:
        """A supply dip: the chip forgets its calibration."""
        with self._lock:
            self.status &= ~STATUS_READY

    def command(self, data: bytes) -> None:
        with self._lock:
            self.commands.append(data)
            self._settle()
            if data.startswith(b"\xe1"):
                raise nack()  # the AHT10's initialisation is not an AHT20 command
            if data == INITIALIZE:
                if self.calibration_sticks:
                    self.status |= STATUS_READY
            elif data == TRIGGER:
                self._pending = encode(
                    0,
                    raw_from_humidity(self.humidity.next()),
                    raw_from_temperature(self.temperature.next()),
                )[1:6]
                self._ready_at = self._clock() + self.measuring_s
                self.status |= STATUS_BUSY
            elif data == SOFT_RESET:
                self._pending = None
                self.status &= ~STATUS_BUSY
            # Anything else is ignored, as the chip does.

    def answer(self, length: int) -> bytes:
        with self._lock:
            self._settle()
            body = bytes([self.status]) + self._data
            frame = bytearray(body + bytes([crc8(body)]))
            if length > 1 and not self.status & STATUS_BUSY:
                if self.fail_rate and self._rng.random() < self.fail_rate:
                    if self._rng.random() < 0.5:
                        raise nack()
                    self.corrupt_next += 1
                if self.corrupt_next:
                    self.corrupt_next -= 1
                    frame[6] ^= 0x01
            return bytes(frame[:length])

    def _settle(self) -> None:
        if self._pending is not None and self._clock() >= self._ready_at:
            self._data, self._pending = self._pending, None
            self.status &= ~STATUS_BUSY


SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "temperature": [18.0, 24.0],
    "humidity": [40.0, 60.0],
}


def emulate_aht20(options: AHT20Options, hardware: SimulatedHardware) -> None:
    """Put an emulated AHT20 whose values follow ``options.simulation`` on the fake bus."""
    rng = random.Random(f"{hardware.seed}-aht20-{options.address}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    chip = EmulatedAHT20(
        temperature=signals["temperature"],
        humidity=signals["humidity"],
        clock=hardware.monotonic,
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    hardware.fake_bus(options.bus).attach(options.address, chip)


SPEC = DriverSpec(
    name="aht20",
    kind="sensor",
    summary="Aosong AHT20/AHT21/AHT25/DHT20 temperature and humidity over I2C",
    options=AHT20Options,
    open=open_aht20,
    emulate=emulate_aht20,
    quantities=QUANTITIES,
    sample=SAMPLE,
    i2c_addresses=(0x38,),
    humidity_shares_die=True,
)
