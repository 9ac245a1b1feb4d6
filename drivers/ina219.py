"""TI INA219 current, voltage and power monitor over I2C.

The INA219 measures the drop across a shunt resistor (``shunt_ohms``) and the bus voltage
on its load side, and multiplies them in the chip once the calibration register is set
(datasheet 8.5.1):

- ``Current_LSB = max_current / 2^15`` (or a rounder ``current_lsb`` of your choosing, at
  least that), ``Cal = trunc(0.04096 / (Current_LSB × shunt_ohms))``;
- ``Current = Shunt × Cal / 4096`` in Current_LSBs, ``Power = Current × Bus / 5000`` in
  ``20 × Current_LSB``.

The shunt PGA is the narrowest range that holds ``max_current × shunt_ohms`` (±40, 80, 160
or 320 mV) and the bus range (BRNG) 16 or 32 V from ``max_bus_voltage``. Each read is one
*triggered* conversion of shunt and bus (MODE 011): write the calibration and the
configuration, wait the conversion times, poll the bus register's CNVR bit (conversion
ready), then read shunt, bus, current and power (reading power clears CNVR). The chip sleeps
no deeper in between, but it is never caught mid-conversion. The bus register's OVF bit
says the current or power arithmetic overflowed: that is not a reading (raise
``max_current`` or lower the PGA's load).

Registers: 00 configuration, 01 shunt voltage (signed, 10 µV), 02 bus voltage (bits 15:3,
4 mV; bit 1 CNVR; bit 0 OVF), 03 power, 04 current (signed), 05 calibration.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Sensor, SensorOptions
from drivers.errors import HardwareConfigError, ImplausibleReading, MeasurementTimeout
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.i2c import Registers
from drivers.sim.signal import SimulatedSignal

REG_CONFIG: Final = 0x00
REG_SHUNT: Final = 0x01
REG_BUS: Final = 0x02
REG_POWER: Final = 0x03
REG_CURRENT: Final = 0x04
REG_CALIBRATION: Final = 0x05

RESET: Final = 0x8000
BRNG_32V: Final = 0x2000
MODE_TRIGGERED: Final = 0b011
CNVR: Final = 0x0002
OVF: Final = 0x0001
DEFAULT_CONFIG: Final = 0x399F

SHUNT_LSB_V: Final = 10e-6
BUS_LSB_V: Final = 0.004

#: PGA[1:0] -> shunt full scale, volts.
PGA_RANGES: Final[Mapping[int, float]] = {0b00: 0.040, 0b01: 0.080, 0b10: 0.160, 0b11: 0.320}
#: Samples averaged -> ADC code (BADC/SADC) and conversion time (datasheet table 5).
AVERAGING: Final[Mapping[int, tuple[int, float]]] = {
    1: (0b0011, 532e-6),
    2: (0b1001, 1.06e-3),
    4: (0b1010, 2.13e-3),
    8: (0b1011, 4.26e-3),
    16: (0b1100, 8.51e-3),
    32: (0b1101, 17.02e-3),
    64: (0b1110, 34.05e-3),
    128: (0b1111, 68.10e-3),
}
ADC_TIMES: Final[Mapping[int, float]] = {
    0b0000: 84e-6,
    0b0001: 148e-6,
    0b0010: 276e-6,
    0b0011: 532e-6,
    **{code: t for code, t in AVERAGING.values()},
}
_TIMEOUT_FACTOR: Final = 2.0
_TIMEOUT_EXTRA_S: Final = 0.01
_POLL_S: Final = 0.0005


def current_lsb_for(max_current: float) -> float:
    """The smallest Current_LSB that still holds ``max_current``: max / 2^15."""
    return max_current / 32768


def calibration(current_lsb: float, shunt_ohms: float) -> int:
    """``trunc(0.04096 / (Current_LSB × R_shunt))`` (datasheet equation 1).

    Raises:
        HardwareConfigError: the value does not fit the 16-bit register (bit 0 is unused,
            so it must be at most 0xFFFE), i.e. Current_LSB × R_shunt is too small.
    """
    # The product is rounded first: 0.001 x 0.002 is 2.0000000000000003e-06 in floats,
    # which would truncate 20480 to 20479.
    cal = math.floor(0.04096 / float(f"{current_lsb * shunt_ohms:.12g}"))
    if not 1 <= cal <= 0xFFFE:
        raise HardwareConfigError(
            f"calibration {cal} does not fit the register: choose a larger current_lsb"
        )
    return cal & 0xFFFE


def pga_for(shunt_v: float) -> int:
    """The narrowest shunt range that holds ``shunt_v``.

    Raises:
        HardwareConfigError: more than 320 mV across the shunt.
    """
    for code, full_scale in PGA_RANGES.items():
        if shunt_v <= full_scale + 1e-12:
            return code
    raise HardwareConfigError(
        f"max_current x shunt_ohms = {shunt_v * 1000:g} mV exceeds the INA219's 320 mV"
    )


def config_word(*, bus_32v: bool, pga: int, averaging: int) -> int:
    """Configuration register for one triggered shunt-and-bus conversion."""
    adc, _ = AVERAGING[averaging]
    return (BRNG_32V if bus_32v else 0) | pga << 11 | adc << 7 | adc << 3 | MODE_TRIGGERED


def signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def bus_volts(word: int) -> float:
    """Bus voltage register -> volts (bits 15:3, 4 mV)."""
    return (word >> 3) * BUS_LSB_V


class INA219(Sensor):
    """A TI INA219.

    Args:
        bus: an ``smbus2.SMBus`` (``read_i2c_block_data``, ``i2c_rdwr``), shared.
        address: 0x40..0x4F (A0, A1 to GND, VS+, SDA or SCL).
        shunt_ohms: the shunt resistor (0.1 Ω on the common breakout boards).
        max_current: the largest current expected, A; sets PGA and Current_LSB.
        current_lsb: a rounder Current_LSB than ``max_current / 2^15`` (datasheet 8.5.1).
        max_bus_voltage: 16 or 32 V (BRNG).
        averaging: samples averaged per conversion, 1..128.
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        sleep, clock: injectable so tests need not wait.

    Raises:
        HardwareConfigError: a shunt/current pair the chip cannot measure.
    """

    def __init__(
        self,
        *,
        bus: Any,
        address: int = 0x40,
        shunt_ohms: float = 0.1,
        max_current: float = 3.2,
        current_lsb: float | None = None,
        max_bus_voltage: Literal[16, 32] = 32,
        averaging: int = 1,
        resource: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shunt_ohms <= 0 or max_current <= 0:
            raise HardwareConfigError("shunt_ohms and max_current must be positive")
        if averaging not in AVERAGING:
            raise HardwareConfigError(f"averaging must be 1, 2, 4, ... 128, not {averaging}")
        minimum = current_lsb_for(max_current)
        if current_lsb is not None and current_lsb < minimum * (1 - 1e-9):
            raise HardwareConfigError(
                f"current_lsb {current_lsb:g} A cannot hold {max_current:g} A: at least "
                f"{minimum:g} A"
            )
        self.address = address
        self.shunt_ohms = shunt_ohms
        self.current_lsb = current_lsb if current_lsb is not None else minimum
        self.power_lsb = 20 * self.current_lsb
        self.calibration = calibration(self.current_lsb, shunt_ohms)
        self.pga = pga_for(max_current * shunt_ohms)
        self.config = config_word(bus_32v=max_bus_voltage == 32, pga=self.pga, averaging=averaging)
        self.resource = resource
        self._name = f"INA219 at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._regs = Registers(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._sleep = sleep
        self._clock = clock
        self._conversion_s = 2 * AVERAGING[averaging][1]  # shunt, then bus
        self.timeout_s = self._conversion_s * _TIMEOUT_FACTOR + _TIMEOUT_EXTRA_S
        self._closed = False

    def read(self) -> dict[str, float]:
        """One triggered conversion.

        Returns:
            ``bus_voltage`` V, ``shunt_voltage`` mV, ``current`` A (signed: negative when
            it flows back), ``power`` W.

        Raises:
            BusError: a transaction failed (NACK, EIO).
            MeasurementTimeout: CNVR did not come within twice the conversion time.
            ImplausibleReading: OVF: the current or power arithmetic overflowed.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            # Calibration every time: a chip that browned out has lost it, and would
            # report a current of 0.
            self._regs.write_word(REG_CALIBRATION, self.calibration)
            self._regs.write_word(REG_CONFIG, self.config)
            deadline = self._clock() + self.timeout_s
            self._sleep(self._conversion_s)
            while not (bus := self._regs.read_word(REG_BUS)) & CNVR:
                if self._clock() >= deadline:
                    raise MeasurementTimeout(
                        f"{self._name}: no conversion ready (CNVR) after "
                        f"{self.timeout_s * 1000:.1f} ms"
                    )
                self._sleep(_POLL_S)
            shunt = signed16(self._regs.read_word(REG_SHUNT))
            current = signed16(self._regs.read_word(REG_CURRENT))
            power = self._regs.read_word(REG_POWER)  # clears CNVR
        if bus & OVF:
            raise ImplausibleReading(
                f"{self._name}: math overflow (OVF): the current or power is beyond the "
                f"calibrated range (shunt {shunt * SHUNT_LSB_V * 1000:g} mV); raise max_current"
            )
        return {
            "bus_voltage": bus_volts(bus),
            "shunt_voltage": shunt * SHUNT_LSB_V * 1000,
            "current": current * self.current_lsb,
            "power": power * self.power_lsb,
        }

    def close(self) -> None:
        """Forget the chip: a triggered conversion leaves it idle."""
        self._closed = True


# --------------------------------------------------------------------------------------------
# Options.

SAMPLE = """\
solar:
  driver: ina219
  bus: 1
  address: 0x40          # 0x40..0x4F (A0, A1)
  shunt_ohms: 0.1        # the breakout boards' R100
  max_current: 3.2       # A; sets the shunt range (PGA) and the current resolution
  # current_lsb: 0.0001  # optional: a round A/bit, at least max_current / 32768
  max_bus_voltage: 32    # 16 or 32 V
  averaging: 1           # samples per conversion: 1, 2, 4 ... 128
  interval: 10s
"""


class INA219Options(SensorOptions, frozen=True, tag="ina219"):
    """Options of the ``ina219`` driver."""

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[int, msgspec.Meta(ge=0x40, le=0x4F, description="0x40..0x4F")] = 0x40
    shunt_ohms: Annotated[float, msgspec.Meta(gt=0)] = 0.1
    max_current: Annotated[float, msgspec.Meta(gt=0)] = 3.2
    current_lsb: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_bus_voltage: Literal[16, 32] = 32
    averaging: Literal[1, 2, 4, 8, 16, 32, 64, 128] = 1

    def __post_init__(self) -> None:
        if self.max_current * self.shunt_ohms > 0.320 + 1e-12:
            raise OptionError(
                "max_current",
                f"{self.max_current:g} A x {self.shunt_ohms:g} Ω is "
                f"{self.max_current * self.shunt_ohms * 1000:g} mV across the shunt; the "
                "INA219 measures at most 320 mV",
            )
        lsb = self.current_lsb if self.current_lsb is not None else 0.0
        if lsb and lsb < current_lsb_for(self.max_current) * (1 - 1e-9):
            raise OptionError("current_lsb", "must be at least max_current / 32768 A")
        try:
            calibration(lsb or current_lsb_for(self.max_current), self.shunt_ohms)
        except HardwareConfigError as e:
            raise OptionError("current_lsb", str(e)) from None


def quantities_for(options: INA219Options) -> Mapping[str, Quantity]:
    """The four quantities; current at what the current register really resolves, power at
    20 × Current_LSB, each to two digits."""
    lsb = options.current_lsb or current_lsb_for(options.max_current)
    # What the current register resolves is coarser than Current_LSB: the shunt's own
    # 10 µV step, and the calibration truncated to an integer (a relative error up to
    # 1/Cal at full scale), add to it.
    exact_cal = 0.04096 / (lsb * options.shunt_ohms)
    cal_error = (exact_cal - calibration(lsb, options.shunt_ohms)) / exact_cal
    current_step = lsb + SHUNT_LSB_V / options.shunt_ohms + cal_error * options.max_current
    # Published to the decimals one LSB needs: 97.66 µA -> 0.00001 A, not 1.24990234375.
    bus_max = float(options.max_bus_voltage)
    amps = options.max_current
    return {
        "bus_voltage": Quantity(
            "V", BUS_LSB_V, "bus voltage, load side", "voltage", (0.0, bus_max)
        ),
        "shunt_voltage": Quantity("mV", 0.01, "drop across the shunt", "voltage"),
        "current": Quantity(
            "A", _two_digits(current_step), "current through the shunt", "current", (-amps, amps)
        ),
        "power": Quantity("W", _two_digits(20 * lsb), "power into the load", "power"),
    }


def _two_digits(step: float) -> float:
    """``step`` to two significant digits: published values keep what the chip resolves
    without printing its binary fractions (97.65625 µA -> 0.000098)."""
    return float(f"{step:.2g}")


def open_ina219(options: INA219Options, hardware: Hardware) -> INA219:
    """An :class:`INA219` on ``hardware``'s bus ``options.bus``."""
    return INA219(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        shunt_ohms=options.shunt_ohms,
        max_current=options.max_current,
        current_lsb=options.current_lsb,
        max_bus_voltage=options.max_bus_voltage,
        averaging=options.averaging,
        resource=f"i2c-{options.bus}",
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedINA219:
    """An INA219 on the fake bus: its six registers, reset, triggered and continuous
    conversions that take the configured ADC times, CNVR (cleared by reading power or
    writing the configuration), and OVF when current or power overflow their registers.
    The shunt reading is clipped at the PGA's range and the bus at its own, as the chip's.

    Args:
        shunt_ohms: the emulated shunt.
        bus_voltage: volts on the load side.
        current: amperes through the shunt.
        clock: monotonic seconds, injectable so tests can step time.
    """

    def __init__(
        self,
        *,
        shunt_ohms: float,
        bus_voltage: SimulatedSignal,
        current: SimulatedSignal,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shunt_ohms = shunt_ohms
        self.bus_voltage = bus_voltage
        self.current = current
        self.regs = {REG_CONFIG: DEFAULT_CONFIG, REG_CALIBRATION: 0}
        self.results = {REG_SHUNT: 0, REG_BUS: 0, REG_POWER: 0, REG_CURRENT: 0}
        self.conversions = 0
        self._done_at: float | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def _conversion_s(self) -> float:
        cfg = self.regs[REG_CONFIG]
        return ADC_TIMES.get((cfg >> 7) & 0xF, 532e-6) + ADC_TIMES.get((cfg >> 3) & 0xF, 532e-6)

    def _settle(self) -> None:
        if self._done_at is None or self._clock() < self._done_at:
            return
        cfg = self.regs[REG_CONFIG]
        full_scale = PGA_RANGES[(cfg >> 11) & 0b11]
        shunt_v = max(-full_scale, min(full_scale, self.current.next() * self.shunt_ohms))
        shunt = round(shunt_v / SHUNT_LSB_V)
        bus_max = 32.0 if cfg & BRNG_32V else 16.0
        bus = round(max(0.0, min(bus_max, self.bus_voltage.next())) / BUS_LSB_V)
        cal = self.regs[REG_CALIBRATION]
        current = shunt * cal // 4096 if shunt >= 0 else -(-shunt * cal // 4096)
        power = abs(current) * bus // 5000
        overflow = not -0x8000 <= current <= 0x7FFF or power > 0xFFFF
        self.results = {
            REG_SHUNT: shunt & 0xFFFF,
            REG_BUS: (bus << 3) | CNVR | (OVF if overflow else 0),
            REG_CURRENT: current & 0xFFFF,
            REG_POWER: power & 0xFFFF,
        }
        self.conversions += 1
        mode = cfg & 0b111
        self._done_at = (
            self._clock() + self._conversion_s() if mode in (0b101, 0b110, 0b111) else None
        )

    def read_registers(self, register: int, length: int) -> bytes:
        with self._lock:
            self._settle()
            if register in self.results:
                word = self.results[register]
                if register == REG_POWER:
                    self.results[REG_BUS] &= ~CNVR
            else:
                word = self.regs.get(register, 0)
            return word.to_bytes(2, "big")[:length]

    def write_registers(self, register: int, data: bytes) -> None:
        if len(data) != 2:
            return
        word = int.from_bytes(data, "big")
        with self._lock:
            self._settle()
            if register == REG_CONFIG:
                if word & RESET:
                    self.regs = {REG_CONFIG: DEFAULT_CONFIG, REG_CALIBRATION: 0}
                    self._done_at = None
                    return
                self.regs[REG_CONFIG] = word
                self.results[REG_BUS] &= ~CNVR
                self._done_at = self._clock() + self._conversion_s() if word & 0b011 else None
            elif register == REG_CALIBRATION:
                self.regs[REG_CALIBRATION] = word & 0xFFFE


def emulate_ina219(options: INA219Options, hardware: SimulatedHardware) -> None:
    """An emulated INA219 with the configured shunt whose bus voltage and current follow
    ``simulation``; reads NACK at ``fail_rate``."""
    values = options.simulation.values
    unknown = set(values) - {"bus_voltage", "current"}
    if unknown:
        raise HardwareConfigError(
            f"simulation: {', '.join(sorted(unknown))}: only bus_voltage and current are "
            "simulated (shunt voltage and power follow from them)"
        )
    rng = random.Random(hardware.seed)
    chip = EmulatedINA219(
        shunt_ohms=options.shunt_ohms,
        bus_voltage=SimulatedSignal(values.get("bus_voltage", [12.0, 13.5]), rng=rng),
        current=SimulatedSignal(
            values.get("current", [0.1 * options.max_current, 0.6 * options.max_current]),
            rng=rng,
        ),
    )
    hardware.fake_bus(options.bus).attach(
        options.address, chip, fail_rate=options.simulation.fail_rate
    )


SPEC = DriverSpec(
    name="ina219",
    kind="sensor",
    summary="TI INA219 current, bus voltage and power over I2C (solar, batteries)",
    options=INA219Options,
    open=open_ina219,
    emulate=emulate_ina219,
    quantities=quantities_for(INA219Options()),
    quantities_for=quantities_for,
    computed=("shunt_voltage", "power"),
    sample=SAMPLE,
    i2c_addresses=tuple(range(0x40, 0x50)),
)
