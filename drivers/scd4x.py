"""Sensirion SCD40 / SCD41: CO₂ (photoacoustic NDIR), temperature and humidity over I2C.

The SCD4x measures by itself, on its own clock: every 5 s in periodic mode, every 30 s in
low-power periodic mode, or (SCD41 only) once per ``measure_single_shot``, which takes
5 s. Its output buffer holds one measurement and is emptied when read, and a
``read_measurement`` with an empty buffer is NACKed. So a :meth:`~SCD4x.read` polls
``get_data_ready_status`` (the low 11 bits are non-zero when a new measurement waits) and
then reads it once: a reading is never a repeat of the previous one.

At open the driver first sends ``stop_periodic_measurement`` and waits its 500 ms: a chip
left measuring by a previous run (the agent restarted, the Pi rebooted without a power
cycle) refuses every configuration command until then. It then reads the 48-bit serial
number (three CRC-checked words; a chip that does not answer it like an SCD4x is a
permanent :class:`~drivers.errors.WrongDevice`), writes the temperature offset, the
altitude or ambient pressure for the CO₂ pressure compensation and the automatic
self-calibration (ASC) setting into the chip's RAM (never ``persist_settings``: its EEPROM
is rated for 2000 writes), and starts the measurement mode. :meth:`~SCD4x.close` stops it.

Every word carries Sensirion's CRC-8 both ways: a mismatch in an answer is a
:class:`~drivers.errors.ChecksumError`, never a reading. Conversion (datasheet 3.5.2):
CO₂ in ppm as sent, ``T = -45 + 175 * word / 65535`` °C, ``RH = 100 * word / 65535`` %RH.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Seconds, Sensor, SensorOptions
from drivers.errors import (
    BusError,
    ChecksumError,
    HardwareConfigError,
    MeasurementTimeout,
    WrongDevice,
)
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.crc import sensirion_encode, sensirion_words
from drivers.protocols.i2c import Commands, I2CMessageBus
from drivers.sim.fake_smbus import nack
from drivers.sim.sensirion import SensirionChip
from drivers.sim.signal import SimulatedSignal, simulated_signals

Model = Literal["scd40", "scd41"]
Mode = Literal["periodic", "low_power", "single_shot"]

# --------------------------------------------------------------------------------------------
# Commands (datasheet table 9) and their execution times.

START_PERIODIC: Final = 0x21B1
START_LOW_POWER: Final = 0x21AC
READ_MEASUREMENT: Final = 0xEC05
STOP_PERIODIC: Final = 0x3F86
SET_TEMPERATURE_OFFSET: Final = 0x241D
GET_TEMPERATURE_OFFSET: Final = 0x2318
SET_ALTITUDE: Final = 0x2427
GET_ALTITUDE: Final = 0x2322
SET_AMBIENT_PRESSURE: Final = 0xE000
SET_ASC: Final = 0x2416
GET_ASC: Final = 0x2313
GET_DATA_READY: Final = 0xE4B8
GET_SERIAL: Final = 0x3682
MEASURE_SINGLE_SHOT: Final = 0x219D  # SCD41 only

#: Commands the chip accepts while a periodic measurement runs (table 9, "during meas.").
ALLOWED_WHILE_MEASURING: Final = frozenset(
    {READ_MEASUREMENT, STOP_PERIODIC, SET_AMBIENT_PRESSURE, GET_DATA_READY}
)

COMMAND_S: Final = 0.001
STOP_S: Final = 0.5
SINGLE_SHOT_S: Final = 5.0
#: Signal update interval of each mode.
UPDATE_S: Final[Mapping[Mode, float]] = {"periodic": 5.0, "low_power": 30.0, "single_shot": 5.0}
#: How far past its update interval a measurement may be late before the read gives up.
_LATE_S: Final = 1.5
_POLL_S: Final = 0.1
DATA_READY_MASK: Final = 0x07FF

#: Ranges the datasheet gives for the compensation inputs.
ALTITUDE_RANGE_M: Final = (0, 3000)
PRESSURE_RANGE_HPA: Final = (700.0, 1200.0)

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "co2": Quantity("ppm", 1, "CO₂ concentration", "carbon_dioxide", (400.0, 5000.0)),
    "temperature": Quantity("°C", 0.01, "temperature at the sensor", "temperature", (-10.0, 60.0)),
    "humidity": Quantity("%RH", 0.01, "relative humidity at the sensor", "humidity", (0.0, 95.0)),
}


# --------------------------------------------------------------------------------------------
# Words: pure functions.


def command(code: int, *args: int) -> bytes:
    """A command as sent: its 16 bits, then each argument word with its CRC."""
    return code.to_bytes(2, "big") + sensirion_encode(*args)


def temperature_from_word(word: int) -> float:
    return -45.0 + 175.0 * word / 65535.0


def humidity_from_word(word: int) -> float:
    return 100.0 * word / 65535.0


def word_from_temperature(celsius: float) -> int:
    return min(0xFFFF, max(0, round((celsius + 45.0) * 65535.0 / 175.0)))


def word_from_humidity(percent: float) -> int:
    return min(0xFFFF, max(0, round(percent * 65535.0 / 100.0)))


def offset_word(celsius: float) -> int:
    """``set_temperature_offset``'s argument: ``offset * 65535 / 175``."""
    return round(celsius * 65535.0 / 175.0)


def pressure_word(hpa: float) -> int:
    """``set_ambient_pressure``'s argument: Pa / 100, i.e. hPa."""
    return round(hpa)


# --------------------------------------------------------------------------------------------
# The driver.


class SCD4x(Sensor):
    """A Sensirion SCD40 or SCD41.

    Args:
        bus: an ``smbus2.SMBus`` (or anything with its ``i2c_rdwr``), shared with other chips.
        address: 0x62, the only one.
        model: ``"scd40"`` or ``"scd41"`` (only the SCD41 has single-shot mode).
        mode: ``"periodic"`` (a measurement every 5 s), ``"low_power"`` (every 30 s) or
            ``"single_shot"`` (SCD41: one 5 s measurement per read, the chip idles between).
        altitude_m: height above sea level for the pressure compensation (0..3000 m).
        ambient_pressure_hpa: or the ambient pressure itself (700..1200 hPa), which
            overrides the altitude.
        automatic_self_calibration: ASC, which assumes the sensor sees fresh air
            (~400 ppm) at least once a week; switch it off in a greenhouse enriched with
            CO₂ or a room never aired.
        temperature_offset: °C the chip subtracts for its own self-heating (default 4).
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        clock, sleep: injectable so tests need not wait.

    Raises:
        BusError: nothing answered at ``address``, or a NACK.
        WrongDevice: something answered the serial number request but not as an SCD4x.
        HardwareConfigError: single-shot on an SCD40, or a compensation out of range.
    """

    #: The chip refreshes its output every 5 s at best.
    min_interval_s: ClassVar[float] = 5.0

    def __init__(
        self,
        *,
        bus: I2CMessageBus,
        address: int = 0x62,
        model: Model = "scd41",
        mode: Mode = "periodic",
        altitude_m: int = 0,
        ambient_pressure_hpa: float | None = None,
        automatic_self_calibration: bool = True,
        temperature_offset: float = 4.0,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode == "single_shot" and model != "scd41":
            raise HardwareConfigError("single_shot mode exists only on the SCD41")
        if not ALTITUDE_RANGE_M[0] <= altitude_m <= ALTITUDE_RANGE_M[1]:
            raise HardwareConfigError(f"altitude must be 0..3000 m, not {altitude_m}")
        if ambient_pressure_hpa is not None and not (
            PRESSURE_RANGE_HPA[0] <= ambient_pressure_hpa <= PRESSURE_RANGE_HPA[1]
        ):
            raise HardwareConfigError(
                f"ambient pressure must be 700..1200 hPa, not {ambient_pressure_hpa}"
            )
        if not 0.0 <= temperature_offset <= 20.0:
            raise HardwareConfigError(
                f"temperature offset must be 0..20 °C, not {temperature_offset}"
            )
        self.address = address
        self.resource = resource
        self.model: Model = model
        self.mode: Mode = mode
        self._name = f"{model.upper()} at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._chip = Commands(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        #: The pressure word last sent (hPa), and one received from a linked sensor.
        self._pressure_sent: int | None = None
        self._pressure_linked: float | None = None
        with self._lock:
            # A chip left measuring refuses configuration: stop it first, whatever it does.
            self._send(STOP_PERIODIC, wait_s=STOP_S, what="stop_periodic_measurement")
            self.serial_number = self._read_serial()
            self._send(
                SET_TEMPERATURE_OFFSET,
                offset_word(temperature_offset),
                what="set_temperature_offset",
            )
            self._send(SET_ALTITUDE, altitude_m, what="set_sensor_altitude")
            if ambient_pressure_hpa is not None:
                self._set_pressure(ambient_pressure_hpa)
            self._send(SET_ASC, int(automatic_self_calibration), what="set_asc_enabled")
            if mode == "periodic":
                self._send(START_PERIODIC, what="start_periodic_measurement")
            elif mode == "low_power":
                self._send(START_LOW_POWER, what="start_low_power_periodic_measurement")

    # -- transactions -----------------------------------------------------------------------

    def _send(self, code: int, *args: int, wait_s: float = COMMAND_S, what: str) -> None:
        self._chip.send(command(code, *args), what)
        self._sleep(wait_s)

    def _words(self, code: int, count: int, what: str) -> list[int]:
        self._send(code, what=what)
        return sensirion_words(self._chip.receive(3 * count, what), f"{self._name}: {what}")

    def _read_serial(self) -> int:
        try:
            words = self._words(GET_SERIAL, 3, "get_serial_number")
        except ChecksumError as e:
            raise WrongDevice(
                f"{self._name}: the serial number failed its CRC ({e}): not an SCD4x, or "
                "another chip at 0x62"
            ) from e
        serial = words[0] << 32 | words[1] << 16 | words[2]
        if serial in (0, 0xFFFF_FFFF_FFFF):
            raise WrongDevice(f"{self._name}: serial number 0x{serial:012X} is not an SCD4x's")
        return serial

    def _set_pressure(self, hpa: float) -> None:
        word = pressure_word(hpa)
        if word != self._pressure_sent:
            self._send(SET_AMBIENT_PRESSURE, word, what="set_ambient_pressure")
            self._pressure_sent = word

    def receive(self, quantity: str, value: float) -> None:
        """The ambient pressure (hPa) from a linked sensor (``pressure_from``): sent to the
        chip at the next read when it changed by a whole hPa (the command's step), and it
        overrides the altitude from then on. A value outside 700..1200 hPa is ignored."""
        if quantity == "pressure" and PRESSURE_RANGE_HPA[0] <= value <= PRESSURE_RANGE_HPA[1]:
            self._pressure_linked = value

    # -- measuring --------------------------------------------------------------------------

    def read(self) -> dict[str, float]:
        """The next new measurement.

        Periodic modes wait for it (at most the mode's update interval plus a margin);
        single-shot triggers one and waits its 5 s.

        Returns:
            ``co2`` (ppm), ``temperature`` (°C) and ``humidity`` (%RH).

        Raises:
            BusError: a NACK.
            ChecksumError: a word failed its CRC.
            MeasurementTimeout: no new measurement within the update interval plus margin.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            if self._pressure_linked is not None:
                # The one setting the chip takes while measuring periodically; its
                # next measurement is compensated with it.
                self._set_pressure(self._pressure_linked)
            if self.mode == "single_shot":
                self._send(MEASURE_SINGLE_SHOT, wait_s=SINGLE_SHOT_S, what="measure_single_shot")
            else:
                self._wait_for_data()
            co2, raw_t, raw_rh = self._words(READ_MEASUREMENT, 3, "read_measurement")
        return {
            "co2": float(co2),
            "temperature": round(temperature_from_word(raw_t), 2),
            "humidity": round(humidity_from_word(raw_rh), 2),
        }

    def data_ready(self) -> bool:
        """Whether a new measurement waits in the chip's buffer."""
        with self._lock:
            (status,) = self._words(GET_DATA_READY, 1, "get_data_ready_status")
        return bool(status & DATA_READY_MASK)

    def _wait_for_data(self) -> None:
        limit = UPDATE_S[self.mode] + _LATE_S
        deadline = self._clock() + limit
        while not self.data_ready():
            if self._clock() >= deadline:
                raise MeasurementTimeout(
                    f"{self._name}: no new measurement within {limit:g} s "
                    f"({self.mode} mode updates every {UPDATE_S[self.mode]:g} s)"
                )
            self._sleep(_POLL_S)

    def close(self) -> None:
        """Stop the periodic measurement (the chip then idles at ~0.2 mA instead of
        measuring). Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.mode == "single_shot":
            return
        try:
            with self._lock:
                # Wait the 500 ms too: a driver opened right after (a reload) would be NACKed.
                self._send(STOP_PERIODIC, wait_s=STOP_S, what="stop_periodic_measurement")
        except BusError:
            pass  # unplugged or the bus is gone: nothing left to stop


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
office:
  driver: scd4x
  interval: 30s          # never below 5 s: the chip updates every 5 s (30 s in low_power)
  bus: 1                 # /dev/i2c-1
  address: 0x62          # fixed
  model: scd41           # scd40 | scd41
  mode: periodic         # periodic (5 s) | low_power (30 s) | single_shot (SCD41 only)
  sensor_altitude: 0     # metres above sea level, for the CO2 pressure compensation
  ambient_pressure: null # or hPa (700..1200); overrides sensor_altitude
  pressure_from: null    # or a sensor of this agent that reports pressure (a BME280):
                         # its latest reading compensates the CO2 (overrides both)
  automatic_self_calibration: true   # assumes fresh air (~400 ppm) once a week
  temperature_offset: 4.0            # °C of self-heating the chip subtracts
"""


class SCD4xOptions(SensorOptions, frozen=True, tag="scd4x"):
    """Options of the ``scd4x`` driver (SCD40, SCD41)."""

    interval: Seconds = 30.0
    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[Literal[0x62], msgspec.Meta(description="0x62 (fixed)")] = 0x62
    model: Model = "scd41"
    mode: Mode = "periodic"
    #: Not ``altitude``: that key is the agent's (it adds sea-level pressure).
    sensor_altitude: Annotated[int, msgspec.Meta(ge=0, le=3000, description="metres")] = 0
    ambient_pressure: (
        Annotated[float, msgspec.Meta(ge=700, le=1200, description="hPa; overrides altitude")]
        | None
    ) = None
    pressure_from: (
        Annotated[str, msgspec.Meta(description="a sensor of this agent that reports pressure")]
        | None
    ) = None
    automatic_self_calibration: bool = True
    temperature_offset: Annotated[float, msgspec.Meta(ge=0, le=20, description="°C")] = 4.0

    def __post_init__(self) -> None:
        if self.pressure_from is not None and self.ambient_pressure is not None:
            raise OptionError("pressure_from", "give ambient_pressure or pressure_from, not both")
        if self.mode == "single_shot" and self.model != "scd41":
            raise OptionError("mode", "single_shot mode exists only on the SCD41")
        if self.mode == "low_power" and self.interval < UPDATE_S["low_power"]:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s is shorter than low_power mode's 30 s update: "
                "most reads would find no new measurement",
            )
        if self.mode == "single_shot" and self.interval < 2 * SINGLE_SHOT_S:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s: a single-shot measurement takes 5 s, "
                "so the interval must be at least 10 s",
            )


def open_scd4x(options: SCD4xOptions, hardware: Hardware) -> SCD4x:
    """An :class:`SCD4x` on ``hardware``'s bus ``options.bus``."""
    return SCD4x(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        model=options.model,
        mode=options.mode,
        altitude_m=options.sensor_altitude,
        ambient_pressure_hpa=options.ambient_pressure,
        automatic_self_calibration=options.automatic_self_calibration,
        temperature_offset=options.temperature_offset,
        resource=f"i2c-{options.bus}",
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedSCD4x(SensirionChip):
    """A command-level SCD40/SCD41 for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    It has the chip's modes and rules: idle, periodic (a new measurement every
    ``period_s``) and low-power periodic (every ``6 * period_s``); configuration commands
    NACKed while measuring and any command NACKed while the previous one executes (500 ms
    after a stop, 5 s during a single shot); a one-measurement buffer emptied on read, with
    ``read_measurement`` NACKed when it is empty; single-shot only on the SCD41. It keeps
    the altitude, pressure, ASC and offset it was sent (checking each argument's CRC: a bad
    one sets nothing and is NACKed), and turns the signals' values into raw words.

    Faults: see :class:`~drivers.sim.sensirion.SensirionChip` (``fail_rate`` applies to
    ``read_measurement``).

    Args:
        period_s: the periodic update interval; 5 s like the chip, less to make a
            simulation answer sooner.
        starts_measuring: the chip is already in periodic mode (left so by a previous run).
    """

    def __init__(
        self,
        *,
        model: Model = "scd41",
        co2: SimulatedSignal | None = None,
        temperature: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        serial_number: int = 0xF8969F073BBE,
        period_s: float = UPDATE_S["periodic"],
        starts_measuring: bool = False,
        clock: Callable[[], float] = time.monotonic,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(clock=clock, fail_rate=fail_rate, rng=rng)
        self.model = model
        self.co2 = co2 or SimulatedSignal(600.0)
        self.temperature = temperature or SimulatedSignal(21.0)
        self.humidity = humidity or SimulatedSignal(45.0)
        self.serial_number = serial_number
        self.period_s = period_s
        self.commands: list[int] = []
        #: Settings in the chip's RAM.
        self.altitude = 0
        self.ambient_pressure: int | None = None
        self.asc = True
        self.offset = offset_word(4.0)
        self.state: Literal["idle", "periodic", "low_power"] = "idle"
        self._mode_started = 0.0
        self._measured = 0  # measurements taken since the mode started
        self._buffer: bytes | None = None
        if starts_measuring:
            self._start("periodic")

    # -- SensirionChip -----------------------------------------------------------------------

    def command(self, data: bytes) -> None:
        with self.lock:
            now = self._clock()
            if self.busy() or len(data) < 2:
                raise nack()
            self._update(now)
            code = int.from_bytes(data[:2], "big")
            self.commands.append(code)
            if self.state != "idle" and code not in ALLOWED_WHILE_MEASURING:
                raise nack()
            args = data[2:]
            try:
                words = sensirion_words(args, "scd4x") if args else []
            except ChecksumError:
                raise nack() from None
            self.clear()
            self._execute(code, words, now)

    # -- behaviour --------------------------------------------------------------------------

    def _execute(self, code: int, words: list[int], now: float) -> None:
        if code == STOP_PERIODIC:
            self.state = "idle"
            self.busy_for(STOP_S)
        elif code in (START_PERIODIC, START_LOW_POWER):
            self._start("periodic" if code == START_PERIODIC else "low_power")
        elif code == READ_MEASUREMENT:
            if self._buffer is None:
                return  # nothing to send: the read header is NACKed
            self.send_encoded(self._buffer, measurement=True)
            self._buffer = None
        elif code == GET_DATA_READY:
            self.send(0x8006 if self._buffer is not None else 0x8000)
        elif code == GET_SERIAL:
            s = self.serial_number
            self.send(s >> 32, s >> 16 & 0xFFFF, s & 0xFFFF)
        elif code == SET_ALTITUDE and words:
            self.altitude = words[0]
        elif code == GET_ALTITUDE:
            self.send(self.altitude)
        elif code == SET_AMBIENT_PRESSURE and words:
            self.ambient_pressure = words[0]
        elif code == SET_ASC and words:
            self.asc = bool(words[0])
        elif code == GET_ASC:
            self.send(int(self.asc))
        elif code == SET_TEMPERATURE_OFFSET and words:
            self.offset = words[0]
        elif code == GET_TEMPERATURE_OFFSET:
            self.send(self.offset)
        elif code == MEASURE_SINGLE_SHOT and self.model == "scd41":
            self._buffer = self._measurement()
            self.busy_for(SINGLE_SHOT_S * self.period_s / UPDATE_S["periodic"])
        else:
            raise nack()  # unknown here (or single shot on an SCD40)

    def _start(self, state: Literal["periodic", "low_power"]) -> None:
        self.state = state
        self._mode_started = self._clock()
        self._measured = 0

    def _update(self, now: float) -> None:
        """Take the measurements whose time has come; the buffer keeps the latest."""
        if self.state == "idle":
            return
        period = self.period_s * (1 if self.state == "periodic" else 6)
        due = int((now - self._mode_started) / period)
        if due > self._measured:
            self._measured = due
            self._buffer = self._measurement()

    def _measurement(self) -> bytes:
        return sensirion_encode(
            min(0xFFFF, max(0, round(self.co2.next()))),
            word_from_temperature(self.temperature.next()),
            word_from_humidity(self.humidity.next()),
        )


SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "co2": [450.0, 900.0],
    "temperature": [19.0, 24.0],
    "humidity": [35.0, 55.0],
}
#: The emulated chip's update interval under ``--simulate``: 50 times the chip's, so a
#: ``read --simulate`` answers in a fraction of a second rather than 5 s.
SIMULATED_PERIOD_S: Final = 0.1


def emulate_scd4x(options: SCD4xOptions, hardware: SimulatedHardware) -> None:
    """Put an emulated SCD4x whose values follow ``options.simulation`` on the fake bus."""
    rng = random.Random(f"{hardware.seed}-scd4x-{options.address}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    chip = EmulatedSCD4x(
        model=options.model,
        co2=signals["co2"],
        temperature=signals["temperature"],
        humidity=signals["humidity"],
        period_s=SIMULATED_PERIOD_S,
        clock=hardware.monotonic,
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    hardware.fake_bus(options.bus).attach(options.address, chip)


SPEC = DriverSpec(
    name="scd4x",
    kind="sensor",
    summary="Sensirion SCD40/SCD41 CO2, temperature and humidity over I2C",
    options=SCD4xOptions,
    open=open_scd4x,
    emulate=emulate_scd4x,
    quantities=QUANTITIES,
    min_interval_s=SCD4x.min_interval_s,
    sample=SAMPLE,
    i2c_addresses=(0x62,),
    humidity_shares_die=True,
    links={"pressure_from": "pressure"},
)
