"""Bosch BME280 (temperature, humidity, pressure) and BMP280 (temperature, pressure) over I2C.

Both chips share one register map, so one class does the work and the two public classes
differ only in the chip ids they accept and whether humidity exists.

Every :meth:`~BME280.read` is one *forced-mode* measurement: write the settings, trigger,
wait the datasheet's typical conversion time, poll the ``measuring`` bit until it clears
(giving up after the datasheet's maximum time plus a margin), burst-read the ADC values and
compensate them with Bosch's integer formulas. The measurement is also available in steps
(:meth:`~BME280.read_steps`), so the agent waits for the conversion on its event loop
instead of in a sleeping thread. The chip sleeps between reads, which is the
datasheet's recommended "weather monitoring" use (section 3.5.1).

The compensation formulas are pure functions of a :class:`Calibration` and the raw counts,
so they are tested against the datasheet's worked example without any bus. The emulator
(:class:`EmulatedBME280`) runs them backwards to produce raw counts, so ``--simulate`` gives
back the configured physical values through the real driver code.

Resolution and rounding: the integer formulas return 0.01 °C, 1/256 Pa and 1/1024 %RH, but
the chips resolve no better than 0.01 °C, 0.18 Pa (BME280; 0.16 Pa BMP280) and 0.008 %RH
(datasheet tables 1-3, at the highest oversampling). Each value is rounded to the fewest
decimals whose step is not coarser than that resolution: temperature to 0.01 °C, humidity to
0.001 %RH and pressure to 0.001 hPa (0.1 Pa). A fourth pressure decimal would only print
fixed-point noise; a second one (0.01 hPa = 1 Pa) would throw away what the chip resolves.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from drivers.base import DriverSpec, Quantity, ReadSteps, SensorOptions, SteppedSensor
from drivers.compensation.bme280 import (
    CALIB_TP_LENGTH,
    TYPICAL_CALIBRATION,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    decode_calibration,
    encode_calibration,
    max_measurement_s,
    raw_humidity,
    raw_pressure,
    raw_temperature,
    typical_measurement_s,
)
from drivers.errors import (
    ChecksumError,
    HardwareConfigError,
    ImplausibleReading,
    MeasurementTimeout,
    WrongDevice,
)
from drivers.hardware import Hardware, SimulatedHardware, bus_lock, bus_may_block
from drivers.protocols.i2c import Registers, SMBusLike
from drivers.sim.signal import SimulatedSignal

# --------------------------------------------------------------------------------------------
# Registers (BME280 datasheet section 5.3; the BMP280 has the same map without humidity).

REG_CALIB_TP: Final = 0x88  # 0x88..0x9F dig_T1..dig_P9, 0xA1 dig_H1
REG_CALIB_H: Final = 0xE1  # 0xE1..0xE7 dig_H2..dig_H6
REG_CHIP_ID: Final = 0xD0
REG_RESET: Final = 0xE0
REG_CTRL_HUM: Final = 0xF2
REG_STATUS: Final = 0xF3
REG_CTRL_MEAS: Final = 0xF4
REG_CONFIG: Final = 0xF5
REG_DATA: Final = 0xF7  # press_msb .. hum_lsb

RESET_COMMAND: Final = 0xB6
STATUS_MEASURING: Final = 0x08
STATUS_IM_UPDATE: Final = 0x01
MODE_FORCED: Final = 0b01

BME280_CHIP_ID: Final = 0x60
#: 0x58 in production; early BMP280 samples report 0x56 or 0x57.
BMP280_CHIP_IDS: Final = frozenset({0x56, 0x57, 0x58})

#: What a chip writes to the data registers of a skipped measurement.
SKIPPED_20BIT: Final = 0x80000
SKIPPED_16BIT: Final = 0x8000

#: Oversampling factor -> register code (osrs_x[2:0]); 0 skips the measurement.
OVERSAMPLING_CODES: Final[Mapping[int, int]] = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
#: IIR filter coefficient -> register code (filter[2:0]); 0 is off.
FILTER_CODES: Final[Mapping[int, int]] = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}

#: Start-up time after a soft reset before the chip answers reliably (datasheet table 1).
_STARTUP_S: Final = 0.002
#: How long the NVM copy (``im_update``) may take after a reset before we give up.
_NVM_COPY_TIMEOUT_S: Final = 0.05
_POLL_INTERVAL_S: Final = 0.0005
#: Margin on the datasheet's maximum measurement time: Linux sleeps overshoot.
_TIMEOUT_FACTOR: Final = 1.25
_TIMEOUT_EXTRA_S: Final = 0.005


# --------------------------------------------------------------------------------------------
# Quantities, resolution and rounding.


def decimals_for(resolution: float) -> int:
    """The fewest decimals whose step is not coarser than ``resolution`` (0.0018 -> 3).

    Rounding to this many decimals loses nothing the chip resolves and prints no digits
    that are pure fixed-point noise.
    """
    return max(0, math.ceil(-math.log10(resolution) - 1e-9))


QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.01, "air temperature", "temperature", (-40.0, 85.0)),
    "humidity": Quantity("%RH", 0.008, "relative humidity", "humidity", (0.0, 100.0)),
    "pressure": Quantity(
        "hPa",
        0.0018,
        "absolute air pressure (not sea level)",
        "atmospheric_pressure",
        (300.0, 1100.0),
    ),
}
BMP280_QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": QUANTITIES["temperature"],
    "pressure": Quantity(
        "hPa",
        0.0016,
        "absolute air pressure (not sea level)",
        "atmospheric_pressure",
        (300.0, 1100.0),
    ),
}


# --------------------------------------------------------------------------------------------
# The driver.


@dataclass(frozen=True, slots=True)
class _Raw:
    adc_t: int
    adc_p: int
    adc_h: int | None


class _BoschSensor(SteppedSensor):
    """BME280 and BMP280: one code path, parametrised by the class attributes below."""

    chip: ClassVar[str]
    chip_ids: ClassVar[frozenset[int]]
    has_humidity: ClassVar[bool]
    quantities: ClassVar[Mapping[str, Quantity]]

    def __init__(
        self,
        *,
        bus: SMBusLike,
        address: int,
        temperature_oversampling: int,
        pressure_oversampling: int,
        humidity_oversampling: int,
        iir_filter: int,
        resource: str | None,
        measurement_timeout_s: float | None,
    ) -> None:
        for what, value in (
            ("temperature_oversampling", temperature_oversampling),
            ("pressure_oversampling", pressure_oversampling),
            ("humidity_oversampling", humidity_oversampling),
        ):
            if value not in OVERSAMPLING_CODES:
                raise HardwareConfigError(f"{what} must be 0, 1, 2, 4, 8 or 16, not {value}")
        if temperature_oversampling == 0:
            # Pressure and humidity compensation need t_fine from this very measurement.
            raise HardwareConfigError("temperature_oversampling cannot be 0 (skipped)")
        if iir_filter not in FILTER_CODES:
            raise HardwareConfigError(f"iir_filter must be 0, 2, 4, 8 or 16, not {iir_filter}")
        self.address = address
        self.resource = resource
        self._name = f"{self.chip} at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._regs = Registers(bus, address, self._name)
        self.step_lock = bus_lock(bus)
        self.steps_may_block = bus_may_block(bus)
        self._closed = False
        self._oversampling = (
            temperature_oversampling,
            pressure_oversampling,
            humidity_oversampling,
        )
        self._ctrl_hum = OVERSAMPLING_CODES[humidity_oversampling]
        self._ctrl_meas = (
            OVERSAMPLING_CODES[temperature_oversampling] << 5
            | OVERSAMPLING_CODES[pressure_oversampling] << 2
            | MODE_FORCED
        )
        self._config = FILTER_CODES[iir_filter] << 2
        self._typical_s = typical_measurement_s(*self._oversampling)
        self._max_s = max_measurement_s(*self._oversampling)
        self._timeout_s = (
            measurement_timeout_s
            if measurement_timeout_s is not None
            else self._max_s * _TIMEOUT_FACTOR + _TIMEOUT_EXTRA_S
        )
        with self.step_lock:
            self.chip_id = self._check_chip_id()
            self._reset()
            self.calibration = self._read_calibration()

    # -- set-up -----------------------------------------------------------------------------

    def _check_chip_id(self) -> int:
        found = self._regs.read(REG_CHIP_ID)[0]
        if found not in self.chip_ids:
            hint = ""
            if found == BME280_CHIP_ID:
                hint = " (that is a BME280: use driver bme280)"
            elif found in BMP280_CHIP_IDS:
                hint = " (that is a BMP280: use driver bmp280)"
            wanted = " or ".join(f"0x{i:02X}" for i in sorted(self.chip_ids))
            raise WrongDevice(
                f"{self._name}: chip id is 0x{found:02X}, a {self.chip} has {wanted}{hint}"
            )
        return found

    def _reset(self) -> None:
        """Soft reset, then wait for the NVM copy so the calibration registers are valid."""
        self._regs.write(REG_RESET, RESET_COMMAND)
        time.sleep(_STARTUP_S)
        deadline = time.monotonic() + _NVM_COPY_TIMEOUT_S
        while self._regs.read(REG_STATUS)[0] & STATUS_IM_UPDATE:
            if time.monotonic() >= deadline:
                raise MeasurementTimeout(
                    f"{self._name}: NVM copy still running {_NVM_COPY_TIMEOUT_S * 1000:.0f} ms"
                    " after reset"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _read_calibration(self) -> Calibration:
        if self.has_humidity:
            cal = decode_calibration(
                self._regs.read(REG_CALIB_TP, CALIB_TP_LENGTH), self._regs.read(REG_CALIB_H, 7)
            )
        else:
            cal = decode_calibration(self._regs.read(REG_CALIB_TP, 24))
        if cal.dig_t1 == 0 or cal.dig_p1 == 0:
            # All-zero (or erased) NVM would divide by zero in the pressure formula.
            raise ChecksumError(f"{self._name}: calibration data is blank: {cal}")
        return cal

    # -- measuring --------------------------------------------------------------------------

    def read_steps(self) -> ReadSteps:
        """One forced-mode measurement, in steps (:class:`~drivers.base.SteppedSensor`;
        :meth:`read` runs them with ``time.sleep``): write the settings and trigger, wait
        the datasheet's typical conversion time, poll ``measuring`` until it clears
        (0.5 ms apart), fetch the ADC values.

        Returns:
            ``temperature`` (°C), ``humidity`` (%RH, BME280 only) and ``pressure`` (hPa,
            absolute), each rounded to the chip's resolution. A quantity whose oversampling
            is 0 is left out.

        Raises:
            BusError: a transaction failed (NACK, EIO, ETIMEDOUT, ...).
            MeasurementTimeout: the chip was still measuring after the datasheet's maximum.
            ImplausibleReading: the pressure compensation gave no value.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        # ctrl_hum takes effect only with the next ctrl_meas write, so it goes first; config
        # is honoured in sleep mode only, so it goes before the trigger too.
        if self.has_humidity:
            self._regs.write(REG_CTRL_HUM, self._ctrl_hum)
        self._regs.write(REG_CONFIG, self._config)
        self._regs.write(REG_CTRL_MEAS, self._ctrl_meas)
        deadline = time.monotonic() + self._timeout_s
        yield self._typical_s
        # The status is read once more after the deadline, so a read that was descheduled
        # past it does not report a timeout for a measurement that had finished.
        while self._regs.read(REG_STATUS)[0] & STATUS_MEASURING:
            if time.monotonic() >= deadline:
                raise MeasurementTimeout(
                    f"{self._name}: still measuring after {self._timeout_s * 1000:.1f} ms"
                    f" (datasheet maximum {self._max_s * 1000:.1f} ms)"
                )
            yield _POLL_INTERVAL_S
        data = self._regs.read(REG_DATA, 8 if self.has_humidity else 6)
        return self._compensate(
            _Raw(
                adc_p=(data[0] << 12) | (data[1] << 4) | (data[2] >> 4),
                adc_t=(data[3] << 12) | (data[4] << 4) | (data[5] >> 4),
                adc_h=(data[6] << 8) | data[7] if self.has_humidity else None,
            )
        )

    def _compensate(self, raw: _Raw) -> dict[str, float]:
        # Skipped channels are known from our own settings, not from the 0x80000 / 0x8000
        # markers: those are also valid readings (0x80000 is about 830 hPa, 0x8000 mid-range
        # humidity on typical calibrations).
        _, osrs_p, osrs_h = self._oversampling
        cal = self.calibration
        centi_celsius, t_fine = compensate_temperature(cal, raw.adc_t)
        values = {"temperature": round(centi_celsius / 100, self._decimals("temperature"))}
        if raw.adc_h is not None and osrs_h:
            q10 = compensate_humidity(cal, t_fine, raw.adc_h)
            values["humidity"] = round(q10 / 1024, self._decimals("humidity"))
        if osrs_p:
            q8 = compensate_pressure(cal, t_fine, raw.adc_p)
            if q8 <= 0:
                raise ImplausibleReading(
                    f"{self._name}: no pressure from raw 0x{raw.adc_p:05X} with {cal}"
                )
            values["pressure"] = round(q8 / 25600, self._decimals("pressure"))
        return values

    def _decimals(self, quantity: str) -> int:
        return decimals_for(self.quantities[quantity].resolution)

    def close(self) -> None:
        """Forget the chip. It already sleeps between forced measurements, and the bus
        belongs to the :class:`~drivers.hardware.Hardware` that opened it."""
        self._closed = True


class BME280(_BoschSensor):
    """A Bosch BME280: temperature, relative humidity and pressure, in forced mode.

    Args:
        bus: an ``smbus2.SMBus``, or anything with its ``read_byte_data``,
            ``write_byte_data`` and ``read_i2c_block_data``; shared with other chips.
        address: 0x76 (SDO to GND) or 0x77 (SDO to VDDIO).
        temperature_oversampling: 1, 2, 4, 8 or 16. Temperature cannot be skipped: the
            other two compensations need it.
        pressure_oversampling: 0 (skip), 1, 2, 4, 8 or 16.
        humidity_oversampling: 0 (skip), 1, 2, 4, 8 or 16.
        iir_filter: IIR filter coefficient for temperature and pressure, 0 (off), 2 .. 16.
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        measurement_timeout_s: how long to wait for a conversion; by default the
            datasheet's maximum for these settings plus a margin.

    Raises:
        WrongDevice: the chip at ``address`` is not a BME280.
        BusError: the chip did not answer (wrong address, wiring, a transient NACK).
        MeasurementTimeout: the NVM copy after the soft reset did not finish.
        HardwareConfigError: an oversampling or filter setting the chip does not have.
    """

    chip = "BME280"
    chip_ids = frozenset({BME280_CHIP_ID})
    has_humidity = True
    quantities = QUANTITIES

    def __init__(
        self,
        *,
        bus: SMBusLike,
        address: int = 0x76,
        temperature_oversampling: int = 1,
        pressure_oversampling: int = 1,
        humidity_oversampling: int = 1,
        iir_filter: int = 0,
        resource: str | None = None,
        measurement_timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            bus=bus,
            address=address,
            temperature_oversampling=temperature_oversampling,
            pressure_oversampling=pressure_oversampling,
            humidity_oversampling=humidity_oversampling,
            iir_filter=iir_filter,
            resource=resource,
            measurement_timeout_s=measurement_timeout_s,
        )


class BMP280(_BoschSensor):
    """A Bosch BMP280: temperature and pressure, in forced mode.

    Takes the same arguments as :class:`BME280` except ``humidity_oversampling``, and
    accepts chip ids 0x58 and the engineering samples' 0x56 and 0x57.
    """

    chip = "BMP280"
    chip_ids = BMP280_CHIP_IDS
    has_humidity = False
    quantities = BMP280_QUANTITIES

    def __init__(
        self,
        *,
        bus: SMBusLike,
        address: int = 0x76,
        temperature_oversampling: int = 1,
        pressure_oversampling: int = 1,
        iir_filter: int = 0,
        resource: str | None = None,
        measurement_timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            bus=bus,
            address=address,
            temperature_oversampling=temperature_oversampling,
            pressure_oversampling=pressure_oversampling,
            humidity_oversampling=0,
            iir_filter=iir_filter,
            resource=resource,
            measurement_timeout_s=measurement_timeout_s,
        )


# --------------------------------------------------------------------------------------------
# Options and samples.

SAMPLE = """\
living_room:
  driver: bme280
  interval: 30s
  bus: 1                 # /dev/i2c-1
  address: 0x76          # 0x76 (SDO to GND) or 0x77 (SDO to VDDIO)
  oversampling:          # 1, 2, 4, 8 or 16; 0 skips pressure or humidity
    temperature: 1
    pressure: 1
    humidity: 1
  filter: 0              # IIR filter for temperature and pressure: 0 (off), 2, 4, 8, 16
"""

BMP280_SAMPLE = """\
barometer:
  driver: bmp280
  interval: 60s
  bus: 1                 # /dev/i2c-1
  address: 0x77          # 0x76 (SDO to GND) or 0x77 (SDO to VDDIO)
  oversampling:          # 1, 2, 4, 8 or 16; 0 skips pressure
    temperature: 2
    pressure: 16         # 0.16 Pa resolution
  filter: 4              # IIR filter for temperature and pressure: 0 (off), 2, 4, 8, 16
"""

Oversampling = Annotated[
    Literal[0, 1, 2, 4, 8, 16], msgspec.Meta(description="oversampling factor; 0 skips")
]
TemperatureOversampling = Annotated[
    Literal[1, 2, 4, 8, 16],
    msgspec.Meta(description="oversampling factor; pressure and humidity need temperature"),
]
IIRFilter = Annotated[Literal[0, 2, 4, 8, 16], msgspec.Meta(description="IIR filter; 0 is off")]
I2CAddress = Annotated[Literal[0x76, 0x77], msgspec.Meta(description="0x76 or 0x77 (SDO pin)")]
I2CBusNumber = Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")]


class BMP280Oversampling(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Oversampling of a BMP280. x1 is the datasheet's weather-monitoring setting."""

    temperature: TemperatureOversampling = 1
    pressure: Oversampling = 1


class BME280Oversampling(BMP280Oversampling, frozen=True):
    """Oversampling of a BME280. x1 each is the datasheet's weather-monitoring setting."""

    humidity: Oversampling = 1


class BME280Options(SensorOptions, frozen=True, tag="bme280"):
    """Options of the ``bme280`` driver."""

    bus: I2CBusNumber = 1
    address: I2CAddress = 0x76
    oversampling: BME280Oversampling = BME280Oversampling()
    filter: IIRFilter = 0


class BMP280Options(SensorOptions, frozen=True, tag="bmp280"):
    """Options of the ``bmp280`` driver."""

    bus: I2CBusNumber = 1
    address: I2CAddress = 0x76
    oversampling: BMP280Oversampling = BMP280Oversampling()
    filter: IIRFilter = 0


def open_bme280(options: BME280Options, hardware: Hardware) -> BME280:
    """A :class:`BME280` on ``hardware``'s bus ``options.bus``."""
    return BME280(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        temperature_oversampling=options.oversampling.temperature,
        pressure_oversampling=options.oversampling.pressure,
        humidity_oversampling=options.oversampling.humidity,
        iir_filter=options.filter,
        resource=f"i2c-{options.bus}",
    )


def open_bmp280(options: BMP280Options, hardware: Hardware) -> BMP280:
    """A :class:`BMP280` on ``hardware``'s bus ``options.bus``."""
    return BMP280(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        temperature_oversampling=options.oversampling.temperature,
        pressure_oversampling=options.oversampling.pressure,
        iir_filter=options.filter,
        resource=f"i2c-{options.bus}",
    )


# --------------------------------------------------------------------------------------------
# Emulation: physical values -> raw counts, and a register-level chip.

#: Defaults of ``simulation.values`` for quantities the config leaves out.
SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "temperature": [18.0, 24.0],
    "humidity": 45.0,
    "pressure": 1013.25,
}


class EmulatedBME280:
    """A register-level BME280 or BMP280 for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    It has the chip id, the calibration registers, soft reset with an NVM copy, the status
    bits, ``ctrl_hum`` that only takes effect with the next ``ctrl_meas`` write, forced mode
    and the data registers (0x80000 / 0x8000 for skipped channels). Each forced measurement
    takes the next value of each signal and stores the raw counts for which the real
    compensation gives that value back, so the driver under test reads what was configured.

    Not emulated: normal mode's standby timing (a normal-mode write measures once), the IIR
    filter, noise, and the coarser raw resolution at low oversampling (counts are always 20
    bit, so values come back within the chip's best resolution at any setting).

    Args:
        kind: ``"bme280"`` or ``"bmp280"`` (no humidity registers).
        calibration: the trimming parameters in the NVM.
        chip_id: what register 0xD0 says; by default the kind's real id.
        temperature, pressure, humidity: the physical values (°C, hPa, %RH) to measure.
        measuring_s: how long the measuring bit stays set after a trigger; by default the
            datasheet's typical time for the chosen oversampling.
        nvm_copy_s: how long ``im_update`` stays set after a reset.
        clock: monotonic seconds, injectable so tests can step time.
    """

    def __init__(
        self,
        *,
        kind: Literal["bme280", "bmp280"] = "bme280",
        calibration: Calibration = TYPICAL_CALIBRATION,
        chip_id: int | None = None,
        temperature: SimulatedSignal | None = None,
        pressure: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        measuring_s: float | None = None,
        nvm_copy_s: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.has_humidity = kind == "bme280"
        self.calibration = calibration
        self.temperature = temperature or SimulatedSignal(20.0)
        self.pressure = pressure or SimulatedSignal(1013.25)
        self.humidity = humidity or SimulatedSignal(45.0)
        self.measuring_s = measuring_s
        self.nvm_copy_s = nvm_copy_s
        #: Keep the measuring bit set forever, as a wedged chip does.
        self.stuck_measuring = False
        #: Forced measurements triggered so far.
        self.measurements = 0
        self._clock = clock
        self._registers = bytearray(256)
        self._registers[REG_CHIP_ID] = chip_id if chip_id is not None else (
            BME280_CHIP_ID if self.has_humidity else 0x58
        )  # fmt: skip
        block_88, block_e1 = encode_calibration(calibration)
        self._registers[REG_CALIB_TP : REG_CALIB_TP + len(block_88)] = block_88
        if self.has_humidity:
            self._registers[REG_CALIB_H : REG_CALIB_H + len(block_e1)] = block_e1
        self._ctrl_hum_active = 0
        self._measuring_until = 0.0
        self._nvm_until = 0.0
        self._pending: bytes | None = None
        self._raw_cache: dict[tuple[object, ...], int] = {}
        self._lock = threading.Lock()
        self._reset()

    # -- I2CDevice --------------------------------------------------------------------------

    def read_registers(self, register: int, length: int) -> bytes:
        """Registers from ``register`` on; the status register reflects the clock."""
        with self._lock:
            self._settle()
            out = bytearray()
            for offset in range(length):
                reg = (register + offset) & 0xFF
                if reg == REG_STATUS:
                    out.append(self._status())
                elif not self.has_humidity and reg in (0xFD, 0xFE, REG_CTRL_HUM):
                    out.append(0)
                else:
                    out.append(self._registers[reg])
            return bytes(out)

    def write_registers(self, register: int, data: bytes) -> None:
        """Write ``data`` from ``register`` on; read-only registers ignore writes."""
        with self._lock:
            self._settle()
            for offset, value in enumerate(data):
                self._write((register + offset) & 0xFF, value)

    # -- behaviour --------------------------------------------------------------------------

    def _write(self, register: int, value: int) -> None:
        if register == REG_RESET:
            if value == RESET_COMMAND:
                self._reset()
        elif register == REG_CTRL_HUM:
            if self.has_humidity:
                self._registers[REG_CTRL_HUM] = value & 0x07
        elif register == REG_CONFIG:
            self._registers[REG_CONFIG] = value
        elif register == REG_CTRL_MEAS:
            self._registers[REG_CTRL_MEAS] = value
            self._ctrl_hum_active = self._registers[REG_CTRL_HUM]
            if value & 0x03:
                self._trigger()

    def _reset(self) -> None:
        for reg in (REG_CTRL_HUM, REG_CTRL_MEAS, REG_CONFIG):
            self._registers[reg] = 0
        self._registers[REG_DATA : REG_DATA + 8] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
        self._ctrl_hum_active = 0
        self._pending = None
        self._measuring_until = 0.0
        self._nvm_until = self._clock() + self.nvm_copy_s

    def _status(self) -> int:
        now = self._clock()
        measuring = self.stuck_measuring or now < self._measuring_until
        return (STATUS_MEASURING if measuring else 0) | (
            STATUS_IM_UPDATE if now < self._nvm_until else 0
        )

    def _factors(self) -> tuple[int, int, int]:
        codes = {code: factor for factor, code in OVERSAMPLING_CODES.items()}
        ctrl_meas = self._registers[REG_CTRL_MEAS]
        osrs_h = self._ctrl_hum_active if self.has_humidity else 0
        return (
            codes.get(ctrl_meas >> 5, 16),
            codes.get((ctrl_meas >> 2) & 0x07, 16),
            codes.get(osrs_h & 0x07, 16),
        )

    def _trigger(self) -> None:
        osrs_t, osrs_p, osrs_h = self._factors()
        adc_t, adc_p, adc_h = self._raw_counts(
            self.temperature.next(),
            self.pressure.next(),
            self.humidity.next() if self.has_humidity else None,
        )
        adc_t = adc_t if osrs_t else SKIPPED_20BIT
        adc_p = adc_p if osrs_p else SKIPPED_20BIT
        adc_h = adc_h if osrs_h else SKIPPED_16BIT
        self._pending = bytes(
            [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
             adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4,
             adc_h >> 8, adc_h & 0xFF]
        )  # fmt: skip
        duration = self.measuring_s
        if duration is None:
            duration = typical_measurement_s(osrs_t, osrs_p, osrs_h)
        self._measuring_until = self._clock() + duration
        self.measurements += 1

    def _raw_counts(
        self, celsius: float, hpa: float, percent: float | None
    ) -> tuple[int, int, int]:
        """The raw counts for these physical values. Running the compensation backwards is
        a search of ~10-20 compensations per quantity (~0.1 ms): its results are kept by the
        values the compensation gives back (0.01 °C, t_fine with 1/256 Pa and 1/1024 %RH,
        the keys of the search itself), so a signal that stays put or comes back costs a
        lookup."""
        cal = self.calibration
        cache = self._raw_cache
        if len(cache) > 4096:
            cache.clear()
        key_t = ("t", round(celsius * 100))
        adc_t = cache.get(key_t)
        if adc_t is None:
            adc_t = cache[key_t] = raw_temperature(cal, celsius)
        _, t_fine = compensate_temperature(cal, adc_t)
        key_p = ("p", t_fine, round(hpa * 25600))
        adc_p = cache.get(key_p)
        if adc_p is None:
            adc_p = cache[key_p] = raw_pressure(cal, t_fine, hpa)
        if percent is None:
            return adc_t, adc_p, 0
        key_h = ("h", t_fine, round(percent * 1024))
        adc_h = cache.get(key_h)
        if adc_h is None:
            adc_h = cache[key_h] = raw_humidity(cal, t_fine, percent)
        return adc_t, adc_p, adc_h

    def _settle(self) -> None:
        """Finish a measurement whose time is up: results appear, the mode returns to sleep."""
        if self._pending is None or self.stuck_measuring:
            return
        if self._clock() >= self._measuring_until:
            self._registers[REG_DATA : REG_DATA + 8] = self._pending
            self._registers[REG_CTRL_MEAS] &= ~0x03
            self._pending = None


def _signals(
    options: BME280Options | BMP280Options, hardware: SimulatedHardware, names: tuple[str, ...]
) -> dict[str, SimulatedSignal]:
    unknown = set(options.simulation.values) - set(names)
    if unknown:
        raise HardwareConfigError(
            f"simulation.values: {', '.join(sorted(unknown))} is not one of {', '.join(names)}"
        )
    rng = random.Random(hardware.seed)
    return {
        name: SimulatedSignal(
            options.simulation.values.get(name, SIMULATION_DEFAULTS[name]), rng=rng
        )
        for name in names
    }


def emulate_bme280(options: BME280Options, hardware: SimulatedHardware) -> None:
    """Put an emulated BME280 whose values follow ``options.simulation`` on the fake bus."""
    signals = _signals(options, hardware, ("temperature", "humidity", "pressure"))
    chip = EmulatedBME280(
        kind="bme280",
        temperature=signals["temperature"],
        pressure=signals["pressure"],
        humidity=signals["humidity"],
    )
    hardware.fake_bus(options.bus).attach(
        options.address, chip, fail_rate=options.simulation.fail_rate
    )


def emulate_bmp280(options: BMP280Options, hardware: SimulatedHardware) -> None:
    """Put an emulated BMP280 whose values follow ``options.simulation`` on the fake bus."""
    signals = _signals(options, hardware, ("temperature", "pressure"))
    chip = EmulatedBME280(
        kind="bmp280", temperature=signals["temperature"], pressure=signals["pressure"]
    )
    hardware.fake_bus(options.bus).attach(
        options.address, chip, fail_rate=options.simulation.fail_rate
    )


SPEC = DriverSpec(
    name="bme280",
    kind="sensor",
    summary="Bosch BME280 temperature, humidity and pressure over I2C",
    options=BME280Options,
    open=open_bme280,
    emulate=emulate_bme280,
    quantities=QUANTITIES,
    sample=SAMPLE,
    i2c_addresses=(0x76, 0x77),
    humidity_shares_die=True,
)

BMP280_SPEC = DriverSpec(
    name="bmp280",
    kind="sensor",
    summary="Bosch BMP280 temperature and pressure over I2C",
    options=BMP280Options,
    open=open_bmp280,
    emulate=emulate_bmp280,
    quantities=BMP280_QUANTITIES,
    sample=BMP280_SAMPLE,
    i2c_addresses=(0x76, 0x77),
)
