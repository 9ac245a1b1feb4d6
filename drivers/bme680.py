"""Bosch BME680 and BME688: temperature, humidity, pressure and gas resistance over I2C.

Every :meth:`~BME680.read` is one *forced-mode* measurement: write oversampling, filter and
the heater profile (set-point 0: target temperature and duration), trigger, wait the
conversion plus heating time, poll ``new_data_0`` and burst-read field 0 (0x1D..0x2D). The
measurement is also available in steps (:meth:`~BME680.read_steps`), so the agent waits
for the conversion and the heater on its event loop instead of in a sleeping thread.

- **Which chip.** The chip id (0xD0) must be 0x61; the variant id (0xF0) says BME680 (0x00)
  or BME688 (0x01). They differ in the gas ADC: the BME680's result sits at 0x2A/0x2B and
  is converted with the datasheet's two range lookup tables and the chip's
  ``range_switching_error``; the BME688's sits at 0x2C/0x2D with its own formula, and its
  gas measurement is enabled with ``run_gas = 2`` rather than 1.
- **Calibration** is decoded with the datasheet's signedness (table 13/14): T1, P1 and H6,
  P10 unsigned; H1 and H2 12-bit unsigned values sharing register 0xE2's nibbles;
  ``range_switching_error`` the *signed* upper nibble of 0x04; ``res_heat_range`` bits
  5:4 of 0x02; ``res_heat_val`` a signed byte. Everything else signed.
- **Compensation** uses the datasheet's floating-point formulas (section 3.3), as pure
  functions of the calibration and the raw counts.
- **Gas is valid only if the chip says so.** ``gas_valid`` and ``heat_stab`` are checked on
  every read: a heater that did not reach its target (the duration is too short for the
  temperature) or a gas conversion that did not run gives no reading at all — an
  :class:`~drivers.errors.ImplausibleReading` saying which, because a gas resistance
  measured on a cold plate is meaningless and a partial reading would hide the cause.

Gas resistance is a raw sensor resistance in Ω (no IAQ index: that is Bosch's closed BSEC
library). It falls as VOCs rise and drifts with humidity and age; compare trends.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from drivers.base import DriverSpec, Quantity, ReadSteps, SensorOptions, SteppedSensor
from drivers.compensation.bme680 import (
    COEFF1_LENGTH,
    COEFF2_LENGTH,
    COEFF3_LENGTH,
    TYPICAL_CALIBRATION,
    Calibration,
    Variant,
    decode_calibration,
    encode_calibration,
    gas_resistance_bme680,
    gas_resistance_bme688,
    gas_wait_code,
    gas_wait_ms,
    heater_resistance_code,
    humidity,
    nearest,
    pressure,
    raw_gas,
    t_fine,
    temperature,
    tph_duration_s,
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
from drivers.sim.signal import SimulatedSignal, simulated_signals

# --------------------------------------------------------------------------------------------
# Registers (datasheet section 5.3).

REG_FIELD0: Final = 0x1D  # meas_status_0, then meas_index, press, temp, hum, gas
FIELD_LENGTH: Final = 17  # 0x1D..0x2D
REG_IDAC_HEAT0: Final = 0x50
REG_RES_HEAT0: Final = 0x5A
REG_GAS_WAIT0: Final = 0x64
REG_CTRL_GAS_0: Final = 0x70
REG_CTRL_GAS_1: Final = 0x71
REG_CTRL_HUM: Final = 0x72
REG_CTRL_MEAS: Final = 0x74
REG_CONFIG: Final = 0x75
REG_CHIP_ID: Final = 0xD0
REG_RESET: Final = 0xE0
REG_VARIANT_ID: Final = 0xF0
REG_COEFF1: Final = 0x8A  # 0x8A..0xA0
REG_COEFF2: Final = 0xE1  # 0xE1..0xEE
REG_COEFF3: Final = 0x00  # 0x00..0x04

CHIP_ID: Final = 0x61
VARIANT_IDS: Final[Mapping[int, Variant]] = {0x00: "bme680", 0x01: "bme688"}
RESET_COMMAND: Final = 0xB6
MODE_FORCED: Final = 0b01

STATUS_NEW_DATA: Final = 0x80
STATUS_GAS_MEASURING: Final = 0x40
STATUS_MEASURING: Final = 0x20
GAS_VALID: Final = 0x20
HEAT_STAB: Final = 0x10
#: ctrl_gas_1 run_gas (bits 5:4): 1 runs the BME680's gas conversion, 2 the BME688's.
RUN_GAS: Final[Mapping[Variant, int]] = {"bme680": 0x10, "bme688": 0x20}

OVERSAMPLING_CODES: Final[Mapping[int, int]] = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
FILTER_CODES: Final[Mapping[int, int]] = {0: 0, 1: 1, 3: 2, 7: 3, 15: 4, 31: 5, 63: 6, 127: 7}

_STARTUP_S: Final = 0.005
_POLL_S: Final = 0.005
_TIMEOUT_EXTRA_S: Final = 0.1

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.01, "air temperature", "temperature", (-40.0, 85.0)),
    "humidity": Quantity("%RH", 0.008, "relative humidity", "humidity", (0.0, 100.0)),
    "pressure": Quantity(
        "hPa", 0.0018, "absolute air pressure", "atmospheric_pressure", (300.0, 1100.0)
    ),
    # A 10-bit ADC over 16 ranges: one step is at most 0.12 % of the value (both variants,
    # from the conversion formulas), 1.5 kΩ .. 13 MΩ is what both can convert.
    "gas_resistance": Quantity(
        "Ω",
        1.0,
        "resistance of the heated metal-oxide layer (falls as VOCs rise)",
        None,
        (1500.0, 13_000_000.0),
        relative_resolution=0.0013,
    ),
}


# --------------------------------------------------------------------------------------------
# The driver.


@dataclass(frozen=True, slots=True)
class Raw:
    """What one forced measurement left in field 0."""

    status: int
    adc_t: int
    adc_p: int
    adc_h: int
    adc_gas: int
    gas_range: int
    gas_valid: bool
    heat_stab: bool


def decode_field(data: bytes, variant: Variant) -> Raw:
    """Field 0 (17 bytes from 0x1D) of ``variant``."""
    gas = data[15:17] if variant == "bme688" else data[13:15]
    return Raw(
        status=data[0],
        adc_p=data[2] << 12 | data[3] << 4 | data[4] >> 4,
        adc_t=data[5] << 12 | data[6] << 4 | data[7] >> 4,
        adc_h=data[8] << 8 | data[9],
        adc_gas=gas[0] << 2 | gas[1] >> 6,
        gas_range=gas[1] & 0x0F,
        gas_valid=bool(gas[1] & GAS_VALID),
        heat_stab=bool(gas[1] & HEAT_STAB),
    )


class BME680(SteppedSensor):
    """A Bosch BME680 or BME688 (told apart by its variant id), in forced mode.

    Args:
        bus: an ``smbus2.SMBus``-like object, shared with other chips.
        address: 0x76 (SDO to GND) or 0x77 (SDO to VDDIO).
        temperature_oversampling, pressure_oversampling, humidity_oversampling: 1, 2, 4, 8
            or 16 (pressure and humidity may be 0: skipped).
        iir_filter: 0 (off), 1, 3, 7, 15, 31, 63 or 127.
        heater_temperature_c: the gas heater's target, 200..400 °C; ``None``: no gas.
        heater_duration_ms: how long the heater holds its target before the gas
            conversion, 1..4032 ms.
        resource: the shared bus's name ("i2c-1").
        clock, sleep: injectable so tests need not wait.

    Raises:
        WrongDevice: the chip id is not 0x61, or the variant id is unknown.
        BusError: the chip did not answer.
        HardwareConfigError: a setting the chip does not have.
    """

    def __init__(
        self,
        *,
        bus: SMBusLike,
        address: int = 0x77,
        temperature_oversampling: int = 2,
        pressure_oversampling: int = 4,
        humidity_oversampling: int = 1,
        iir_filter: int = 0,
        heater_temperature_c: float | None = 320.0,
        heater_duration_ms: int = 150,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for what, value in (
            ("temperature_oversampling", temperature_oversampling),
            ("pressure_oversampling", pressure_oversampling),
            ("humidity_oversampling", humidity_oversampling),
        ):
            if value not in OVERSAMPLING_CODES:
                raise HardwareConfigError(f"{what} must be 0, 1, 2, 4, 8 or 16, not {value}")
        if temperature_oversampling == 0:
            raise HardwareConfigError("temperature_oversampling cannot be 0 (skipped)")
        if iir_filter not in FILTER_CODES:
            raise HardwareConfigError(f"iir_filter must be one of {sorted(FILTER_CODES)}")
        if heater_temperature_c is not None and not 200 <= heater_temperature_c <= 400:
            raise HardwareConfigError("the heater's target must be 200..400 °C")
        if not 1 <= heater_duration_ms <= 4032:
            raise HardwareConfigError("the heater's duration must be 1..4032 ms")
        self.address = address
        self.resource = resource
        self._regs = Registers(bus, address, f"BME68x at 0x{address:02X}")
        self.step_lock = bus_lock(bus)
        self.steps_may_block = bus_may_block(bus)
        self._clock = clock
        self._sleep = sleep
        self._closed = False
        self._osrs = (temperature_oversampling, pressure_oversampling, humidity_oversampling)
        self._filter = FILTER_CODES[iir_filter]
        self.heater_temperature_c = heater_temperature_c
        self.heater_duration_ms = heater_duration_ms
        self._ambient_c = 25.0
        with self.step_lock:
            chip_id = self._regs.read(REG_CHIP_ID)[0]
            if chip_id != CHIP_ID:
                raise WrongDevice(
                    f"BME68x at 0x{address:02X}: chip id is 0x{chip_id:02X}, a BME680/BME688 "
                    "has 0x61"
                    + (" (0x60 is a BME280: use driver bme280)" if chip_id == 0x60 else "")
                )
            variant_id = self._regs.read(REG_VARIANT_ID)[0]
            if variant_id not in VARIANT_IDS:
                raise WrongDevice(
                    f"BME68x at 0x{address:02X}: variant id 0x{variant_id:02X} is neither a "
                    "BME680 (0x00) nor a BME688 (0x01)"
                )
            self.variant: Variant = VARIANT_IDS[variant_id]
            self._name = f"{self.variant.upper()} at 0x{address:02X}" + (
                f" on {resource}" if resource else ""
            )
            self._regs.name = self._name
            self._regs.write(REG_RESET, RESET_COMMAND)
            self._sleep(_STARTUP_S)
            self.calibration = decode_calibration(
                self._regs.read(REG_COEFF1, COEFF1_LENGTH),
                self._regs.read(REG_COEFF2, COEFF2_LENGTH),
                self._regs.read(REG_COEFF3, COEFF3_LENGTH),
            )
        if self.calibration.par_t1 == 0 or self.calibration.par_p1 == 0:
            raise ChecksumError(f"{self._name}: calibration data is blank")

    def read_steps(self) -> ReadSteps:
        """One forced measurement, with a gas conversion if the heater is configured, in
        steps (:class:`~drivers.base.SteppedSensor`; :meth:`read` runs them with the
        ``sleep`` it was given): write the settings and trigger, wait the conversion plus
        heating time, poll ``new_data_0`` (5 ms apart), fetch field 0.

        Returns:
            ``temperature`` (°C), ``humidity`` (%RH), ``pressure`` (hPa) and
            ``gas_resistance`` (Ω); a skipped quantity is left out.

        Raises:
            BusError: a transaction failed.
            MeasurementTimeout: no new data after the conversion and heating time.
            ImplausibleReading: the heater did not reach its target, or the gas
                conversion was not valid: no reading rather than a meaningless one.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        osrs_t, osrs_p, osrs_h = self._osrs
        gas = self.heater_temperature_c is not None
        regs = self._regs
        regs.write(REG_CONFIG, self._filter << 2)
        if gas:
            assert self.heater_temperature_c is not None
            regs.write(
                REG_RES_HEAT0,
                heater_resistance_code(
                    self.calibration, self.heater_temperature_c, self._ambient_c
                ),
            )
            regs.write(REG_GAS_WAIT0, gas_wait_code(self.heater_duration_ms))
            regs.write(REG_CTRL_GAS_1, RUN_GAS[self.variant])  # set-point 0
            regs.write(REG_CTRL_GAS_0, 0x00)
        else:
            regs.write(REG_CTRL_GAS_1, 0x00)
            regs.write(REG_CTRL_GAS_0, 0x08)  # heat_off
        regs.write(REG_CTRL_HUM, OVERSAMPLING_CODES[osrs_h])
        regs.write(
            REG_CTRL_MEAS,
            OVERSAMPLING_CODES[osrs_t] << 5 | OVERSAMPLING_CODES[osrs_p] << 2 | MODE_FORCED,
        )
        duration = tph_duration_s(osrs_t, osrs_p, osrs_h)
        if gas:
            duration += gas_wait_ms(gas_wait_code(self.heater_duration_ms)) / 1000.0
        deadline = self._clock() + duration * 1.25 + _TIMEOUT_EXTRA_S
        yield duration
        while True:
            data = regs.read(REG_FIELD0, FIELD_LENGTH)
            if data[0] & STATUS_NEW_DATA:
                break
            if self._clock() >= deadline:
                raise MeasurementTimeout(
                    f"{self._name}: no new data {duration * 1000:.0f} ms after the trigger"
                )
            yield _POLL_S
        return self._compensate(decode_field(data, self.variant))

    def sleep(self, seconds: float) -> None:
        """The ``sleep`` this driver was given (virtual time in tests)."""
        self._sleep(seconds)

    def _compensate(self, raw: Raw) -> dict[str, float]:
        cal = self.calibration
        _, osrs_p, osrs_h = self._osrs
        fine = t_fine(cal, raw.adc_t)
        celsius = fine / 5120.0
        self._ambient_c = celsius
        values = {"temperature": round(celsius, 2)}
        if osrs_h:
            values["humidity"] = round(humidity(cal, fine, raw.adc_h), 3)
        if osrs_p:
            pa = pressure(cal, fine, raw.adc_p)
            if pa <= 0:
                raise ImplausibleReading(f"{self._name}: no pressure from raw 0x{raw.adc_p:05X}")
            values["pressure"] = round(pa / 100.0, 3)
        if self.heater_temperature_c is not None:
            if not raw.gas_valid:
                raise ImplausibleReading(
                    f"{self._name}: the gas conversion is not valid (gas_valid clear)"
                )
            if not raw.heat_stab:
                raise ImplausibleReading(
                    f"{self._name}: the gas heater did not reach {self.heater_temperature_c:g} °C "
                    f"within {self.heater_duration_ms} ms (heat_stab clear): lengthen "
                    "heater.duration or lower heater.temperature"
                )
            if self.variant == "bme688":
                ohms = gas_resistance_bme688(raw.adc_gas, raw.gas_range)
            else:
                ohms = gas_resistance_bme680(cal, raw.adc_gas, raw.gas_range)
            values["gas_resistance"] = round(ohms)
        return values

    def close(self) -> None:
        """Forget the chip: it sleeps between forced measurements, heater off."""
        self._closed = True


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
kitchen:
  driver: bme680          # BME680 or BME688: the chip says which
  interval: 60s
  bus: 1                  # /dev/i2c-1
  address: 0x77           # 0x77 (SDO to VDDIO, most breakouts) or 0x76 (SDO to GND)
  oversampling: {temperature: 2, pressure: 4, humidity: 1}   # 1..16; 0 skips P or H
  filter: 0               # IIR: 0 (off), 1, 3, 7, 15, 31, 63, 127
  heater:                 # null: no gas measurement
    temperature: 320      # °C, 200..400
    duration: 150ms       # time at temperature before the gas conversion, up to 4032 ms
"""


class BME680Oversampling(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Oversampling factors: Bosch's recommended 2x/4x/1x by default."""

    temperature: Literal[1, 2, 4, 8, 16] = 2
    pressure: Literal[0, 1, 2, 4, 8, 16] = 4
    humidity: Literal[0, 1, 2, 4, 8, 16] = 1


class HeaterProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The gas heater's set-point: target temperature and how long to hold it."""

    temperature: Annotated[float, msgspec.Meta(ge=200, le=400, description="°C")] = 320.0
    duration: Annotated[
        float,
        msgspec.Meta(
            ge=0.001,
            le=4.032,
            extra={"duration": True},
            extra_json_schema={
                "type": ["number", "string"],
                "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$",
            },
        ),
    ] = 0.15


class BME680Options(SensorOptions, frozen=True, tag="bme680"):
    """Options of the ``bme680`` driver (BME680 and BME688)."""

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[Literal[0x76, 0x77], msgspec.Meta(description="0x76 or 0x77 (SDO)")] = 0x77
    oversampling: BME680Oversampling = BME680Oversampling()
    filter: Literal[0, 1, 3, 7, 15, 31, 63, 127] = 0
    heater: HeaterProfile | None = HeaterProfile()


def open_bme680(options: BME680Options, hardware: Hardware) -> BME680:
    """A :class:`BME680` on ``hardware``'s bus ``options.bus``."""
    heater = options.heater
    return BME680(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        temperature_oversampling=options.oversampling.temperature,
        pressure_oversampling=options.oversampling.pressure,
        humidity_oversampling=options.oversampling.humidity,
        iir_filter=options.filter,
        heater_temperature_c=heater.temperature if heater else None,
        heater_duration_ms=max(1, round(heater.duration * 1000)) if heater else 150,
        resource=f"i2c-{options.bus}",
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


def quantities_for(options: BME680Options) -> Mapping[str, Quantity]:
    """The quantities a configured sensor reports: no gas without a heater, no pressure or
    humidity when skipped."""
    skip = set()
    if options.heater is None:
        skip.add("gas_resistance")
    if options.oversampling.pressure == 0:
        skip.add("pressure")
    if options.oversampling.humidity == 0:
        skip.add("humidity")
    return {name: q for name, q in QUANTITIES.items() if name not in skip}


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedBME680:
    """A register-level BME680 or BME688 for :class:`~drivers.sim.fake_smbus.FakeSMBus`.

    Chip and variant ids, calibration registers, soft reset, forced mode with a
    measurement time of the oversampling plus the programmed heating time, ``new_data_0``,
    and field 0 holding the raw counts the real compensation turns back into the signals'
    values — the gas result at 0x2A/0x2B on a BME680, at 0x2C/0x2D on a BME688, whose
    other pair stays zero. ``heat_stab`` is set only if the programmed heating time is at
    least :attr:`heat_up_ms` (the plate's time to reach temperature), and ``gas_valid``
    only if the variant's run_gas value was written.

    Faults: ``fail_rate`` (on the bus) NACKs that share of transactions.
    """

    def __init__(
        self,
        *,
        variant: Variant = "bme680",
        calibration: Calibration = TYPICAL_CALIBRATION,
        chip_id: int = CHIP_ID,
        temperature: SimulatedSignal | None = None,
        pressure: SimulatedSignal | None = None,
        humidity: SimulatedSignal | None = None,
        gas_resistance: SimulatedSignal | None = None,
        heat_up_ms: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.variant: Variant = variant
        self.calibration = calibration
        self.temperature = temperature or SimulatedSignal(22.0)
        self.pressure = pressure or SimulatedSignal(1013.25)
        self.humidity = humidity or SimulatedSignal(45.0)
        self.gas_resistance = gas_resistance or SimulatedSignal(50000.0)
        self.heat_up_ms = heat_up_ms
        #: Clear ``gas_valid`` in every result, as a chip whose gas conversion failed does.
        self.gas_invalid = False
        self.measurements = 0
        self._clock = clock
        self._registers = bytearray(256)
        self._registers[REG_CHIP_ID] = chip_id
        self._registers[REG_VARIANT_ID] = 0x01 if variant == "bme688" else 0x00
        coeff1, coeff2, coeff3 = encode_calibration(calibration)
        self._registers[REG_COEFF1 : REG_COEFF1 + COEFF1_LENGTH] = coeff1
        self._registers[REG_COEFF2 : REG_COEFF2 + COEFF2_LENGTH] = coeff2
        self._registers[REG_COEFF3 : REG_COEFF3 + COEFF3_LENGTH] = coeff3
        self._ready_at = 0.0
        self._pending: bytes | None = None
        self._lock = threading.Lock()

    def read_registers(self, register: int, length: int) -> bytes:
        with self._lock:
            self._settle()
            return bytes(self._registers[(register + i) & 0xFF] for i in range(length))

    def write_registers(self, register: int, data: bytes) -> None:
        with self._lock:
            self._settle()
            for offset, value in enumerate(data):
                reg = (register + offset) & 0xFF
                if reg == REG_RESET:
                    if value == RESET_COMMAND:
                        for r in (REG_CTRL_GAS_0, REG_CTRL_GAS_1, REG_CTRL_HUM, REG_CTRL_MEAS):
                            self._registers[r] = 0
                        self._pending = None
                elif (
                    reg in (REG_CHIP_ID, REG_VARIANT_ID)
                    or REG_FIELD0 <= reg < REG_FIELD0 + FIELD_LENGTH
                ):
                    continue  # read-only
                else:
                    self._registers[reg] = value
                    if reg == REG_CTRL_MEAS and value & 0x03 == MODE_FORCED:
                        self._trigger()

    def _trigger(self) -> None:
        regs = self._registers
        codes = {code: factor for factor, code in OVERSAMPLING_CODES.items()}
        osrs_t = codes.get(regs[REG_CTRL_MEAS] >> 5, 16)
        osrs_p = codes.get((regs[REG_CTRL_MEAS] >> 2) & 0x07, 16)
        osrs_h = codes.get(regs[REG_CTRL_HUM] & 0x07, 16)
        cal = self.calibration
        adc_t = nearest(lambda a: temperature(cal, a), self.temperature.next(), 20)
        fine = t_fine(cal, adc_t)
        adc_p = nearest(lambda a: pressure(cal, fine, a), self.pressure.next() * 100.0, 20)
        adc_h = nearest(lambda a: humidity(cal, fine, a), self.humidity.next(), 16)
        run_gas = regs[REG_CTRL_GAS_1] & 0x30
        heating_ms = gas_wait_ms(regs[REG_GAS_WAIT0]) if run_gas else 0
        field = bytearray(FIELD_LENGTH)
        field[0] = STATUS_NEW_DATA
        field[2:5] = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4])
        field[5:8] = bytes([adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4])
        field[8:10] = bytes([adc_h >> 8, adc_h & 0xFF])
        if run_gas:
            adc_gas, gas_range = raw_gas(cal, self.variant, self.gas_resistance.next())
            ran = run_gas == RUN_GAS[self.variant]
            valid = ran and not self.gas_invalid
            stable = ran and heating_ms >= self.heat_up_ms
            flags = (GAS_VALID if valid else 0) | (HEAT_STAB if stable else 0)
            at = 15 if self.variant == "bme688" else 13
            field[at] = adc_gas >> 2
            field[at + 1] = (adc_gas & 0x03) << 6 | flags | gas_range
        self._pending = bytes(field)
        self._registers[REG_FIELD0] = STATUS_MEASURING | (STATUS_GAS_MEASURING if run_gas else 0)
        self._ready_at = (
            self._clock() + tph_duration_s(osrs_t, osrs_p, osrs_h) + heating_ms / 1000.0
        )
        self.measurements += 1

    def _settle(self) -> None:
        if self._pending is not None and self._clock() >= self._ready_at:
            self._registers[REG_FIELD0 : REG_FIELD0 + FIELD_LENGTH] = self._pending
            self._registers[REG_CTRL_MEAS] &= ~0x03
            self._pending = None


SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "temperature": [19.0, 24.0],
    "humidity": [35.0, 55.0],
    "pressure": 1013.25,
    "gas_resistance": [40000.0, 120000.0],
}


def emulate_bme680(
    options: BME680Options, hardware: SimulatedHardware, *, variant: Variant = "bme680"
) -> None:
    """Put an emulated BME680 whose values follow ``options.simulation`` on the fake bus."""
    rng = random.Random(f"{hardware.seed}-bme680-{options.address}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    chip = EmulatedBME680(
        variant=variant,
        temperature=signals["temperature"],
        pressure=signals["pressure"],
        humidity=signals["humidity"],
        gas_resistance=signals["gas_resistance"],
        clock=hardware.monotonic,
    )
    hardware.fake_bus(options.bus).attach(
        options.address, chip, fail_rate=options.simulation.fail_rate
    )


SPEC = DriverSpec(
    name="bme680",
    kind="sensor",
    summary="Bosch BME680/BME688 temperature, humidity, pressure and gas resistance over I2C",
    options=BME680Options,
    open=open_bme680,
    emulate=emulate_bme680,
    quantities=QUANTITIES,
    sample=SAMPLE,
    i2c_addresses=(0x76, 0x77),
    quantities_for=quantities_for,
    humidity_shares_die=True,
)
