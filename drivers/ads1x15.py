"""TI ADS1115 (16-bit) and ADS1015 (12-bit) analog-to-digital converters over I2C.

Each :meth:`~ADS1x15.read` is one *single-shot* conversion: write the config register with
OS = 1, wait one conversion period (1 / data rate), poll OS until it reads 1 again ("not
performing a conversion"), read the conversion register. The chip powers down between
conversions. The config register, as the datasheet lays it out (ADS1115 SBAS444 9.6.3):

===== ========= ===========================================================================
bits  field     meaning
===== ========= ===========================================================================
15    OS        write 1: start a single conversion; read 0: converting, 1: idle
14:12 MUX       000 AIN0-AIN1, 001 AIN0-AIN3, 010 AIN1-AIN3, 011 AIN2-AIN3,
                100 AIN0-GND, 101 AIN1-GND, 110 AIN2-GND, 111 AIN3-GND
11:9  PGA       000 ±6.144 V, 001 ±4.096, 010 ±2.048, 011 ±1.024, 100 ±0.512, 101 ±0.256
8     MODE      1: single-shot
7:5   DR        ADS1115: 8 16 32 64 128 250 475 860 SPS; ADS1015: 128 250 490 920 1600
                2400 3300 3300 SPS
4:0   COMP_*    comparator off: COMP_QUE = 11
===== ========= ===========================================================================

The result is two's complement, most significant byte first: the ADS1115's 16 bits are
worth FSR / 32768 each; the ADS1015's 12-bit result is left-justified (bits 15:4), worth
FSR / 2048. A code at either end of the range (0x7FFF / 0x8000, or 0x7FF0 / 0x8000 on an
ADS1015) means the input is at or beyond full scale: that is not a reading (a lower
``gain``, i.e. a wider range, measures it).

``gain`` is the programmable amplifier's setting in the form the Adafruit libraries made
common (2/3, 1, 2, 4, 8, 16 for ±6.144 … ±0.256 V). Whatever the range, no input may go
beyond VDD + 0.3 V or below GND − 0.3 V: at VDD = 3.3 V the ±6.144 V and ±4.096 V ranges
only widen the scale, they do not let 5 V in.

A ``map`` turns the voltage into what the user wants — a soil probe's moisture in %, a
pressure transducer's bar — by piecewise-linear interpolation between two or more
``[volts, value]`` points (clamped to the end points), and the sensor then reports that
quantity instead of ``voltage``.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Options, Quantity, Sensor, SensorOptions
from drivers.errors import HardwareConfigError, ImplausibleReading, MeasurementTimeout
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.i2c import Registers
from drivers.sim.signal import SimulatedSignal

REG_CONVERSION: Final = 0x00
REG_CONFIG: Final = 0x01

OS: Final = 0x8000
MODE_SINGLE: Final = 0x0100
COMP_QUE_DISABLE: Final = 0x0003

Channel = int | Literal["0-1", "0-3", "1-3", "2-3"]

#: Channel -> MUX[2:0].
MUX: Final[Mapping[Channel, int]] = {
    "0-1": 0b000,
    "0-3": 0b001,
    "1-3": 0b010,
    "2-3": 0b011,
    0: 0b100,
    1: 0b101,
    2: 0b110,
    3: 0b111,
}
#: The inputs each MUX setting measures: (positive, negative or None for GND).
MUX_INPUTS: Final[Mapping[int, tuple[int, int | None]]] = {
    0b000: (0, 1),
    0b001: (0, 3),
    0b010: (1, 3),
    0b011: (2, 3),
    0b100: (0, None),
    0b101: (1, None),
    0b110: (2, None),
    0b111: (3, None),
}

#: Gain -> (PGA[2:0], full-scale range in volts).
GAINS: Final[Mapping[Fraction, tuple[int, float]]] = {
    Fraction(2, 3): (0b000, 6.144),
    Fraction(1): (0b001, 4.096),
    Fraction(2): (0b010, 2.048),
    Fraction(4): (0b011, 1.024),
    Fraction(8): (0b100, 0.512),
    Fraction(16): (0b101, 0.256),
}
#: PGA[2:0] -> full-scale range; 110 and 111 are ±0.256 V as well.
PGA_FSR: Final[Mapping[int, float]] = {
    **{code: fsr for code, fsr in GAINS.values()},
    0b110: 0.256,
    0b111: 0.256,
}


@dataclass(frozen=True)
class Chip:
    """What differs between the ADS1115 and the ADS1015."""

    name: str
    bits: int
    data_rates: tuple[int, ...]
    default_rate: int


ADS1115_CHIP: Final = Chip("ADS1115", 16, (8, 16, 32, 64, 128, 250, 475, 860), 128)
ADS1015_CHIP: Final = Chip("ADS1015", 12, (128, 250, 490, 920, 1600, 2400, 3300), 1600)

#: The data rate's tolerance is ±10 % (datasheet electrical characteristics); the timeout
#: allows twice the period plus a margin for Linux's sleeps.
_TIMEOUT_PERIODS: Final = 2.0
_TIMEOUT_EXTRA_S: Final = 0.01
_POLL_S: Final = 0.0005

VOLTAGE: Final = Quantity("V", 0.000125, "input voltage", "voltage")


def gain_fraction(gain: float | Fraction) -> Fraction:
    """``gain`` as an exact fraction (0.6667 from YAML is 2/3).

    Raises:
        HardwareConfigError: not one of the PGA's settings.
    """
    for exact in GAINS:
        if abs(float(exact) - float(gain)) < 1e-3:
            return exact
    raise HardwareConfigError(f"gain must be 2/3, 1, 2, 4, 8 or 16, not {gain}")


def config_word(chip: Chip, channel: Channel, gain: Fraction, data_rate: int) -> int:
    """The config register for one single-shot conversion (OS = 1, comparator off).

    Raises:
        HardwareConfigError: a channel, gain or data rate the chip does not have.
    """
    if channel not in MUX:
        raise HardwareConfigError(
            f"channel must be 0, 1, 2, 3, '0-1', '0-3', '1-3' or '2-3', not {channel!r}"
        )
    if data_rate not in chip.data_rates:
        rates = ", ".join(str(r) for r in chip.data_rates)
        raise HardwareConfigError(f"{chip.name} data_rate must be one of {rates}, not {data_rate}")
    pga, _ = GAINS[gain]
    dr = chip.data_rates.index(data_rate)
    return OS | MUX[channel] << 12 | pga << 9 | MODE_SINGLE | dr << 5 | COMP_QUE_DISABLE


def code_to_volts(chip: Chip, raw: int, fsr: float) -> float:
    """Volts for a conversion register value (16-bit two's complement; the ADS1015's
    12-bit result left-justified).

    Raises:
        ImplausibleReading: the code is at full scale, so the input is at or beyond it.
    """
    signed = raw - 0x10000 if raw & 0x8000 else raw
    code = signed >> (16 - chip.bits)
    top = (1 << (chip.bits - 1)) - 1
    if code >= top or code <= -top - 1:
        raise ImplausibleReading(
            f"{chip.name}: code 0x{raw:04X} is full scale: the input is at or beyond "
            f"±{fsr:g} V; use a lower gain"
        )
    return code * fsr / (1 << (chip.bits - 1))


# --------------------------------------------------------------------------------------------
# Map: volts -> the quantity the user wants.


class VoltageMap(Options, frozen=True):
    """Piecewise-linear ``[volts, value]`` points and what the value is."""

    #: Two or more ``[volts, value]`` pairs, in any order; distinct volts.
    points: Annotated[
        list[Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)]],
        msgspec.Meta(min_length=2),
    ]
    #: The name it is published under (``moisture``, ``pressure``).
    quantity: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$")]
    unit: str = ""
    #: Home Assistant ``device_class`` (``moisture``, ``pressure``), if there is one.
    device_class: str | None = None
    #: Published values are rounded to this.
    resolution: Annotated[float, msgspec.Meta(gt=0)] = 0.1

    def __post_init__(self) -> None:
        volts = [p[0] for p in self.points]
        if len(set(volts)) != len(volts):
            raise OptionError("points", "each point needs a voltage of its own")

    def apply(self, volts: float) -> float:
        """The value at ``volts``, interpolated, clamped to the first and last points."""
        pts = sorted((p[0], p[1]) for p in self.points)
        xs = [x for x, _ in pts]
        if volts <= xs[0]:
            return pts[0][1]
        if volts >= xs[-1]:
            return pts[-1][1]
        i = bisect.bisect_right(xs, volts)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        return y0 + (y1 - y0) * (volts - x0) / (x1 - x0)

    def invert(self, value: float) -> float:
        """A voltage at which :meth:`apply` gives ``value`` (for the emulator)."""
        pts = sorted((p[0], p[1]) for p in self.points)
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            lo, hi = sorted((y0, y1))
            if lo <= value <= hi and y1 != y0:
                return x0 + (x1 - x0) * (value - y0) / (y1 - y0)
        return min(pts, key=lambda p: abs(p[1] - value))[0]


# --------------------------------------------------------------------------------------------
# The driver.


class ADS1x15(Sensor):
    """ADS1115 and ADS1015: one code path, parametrised by :attr:`chip`."""

    chip: ClassVar[Chip]

    def __init__(
        self,
        *,
        bus: Any,
        address: int = 0x48,
        channel: Channel = 0,
        gain: float | Fraction = 1,
        data_rate: int | None = None,
        voltage_map: VoltageMap | None = None,
        resource: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.channel = channel
        self.gain = gain_fraction(gain)
        self.data_rate = data_rate if data_rate is not None else self.chip.default_rate
        self.config = config_word(self.chip, channel, self.gain, self.data_rate)
        self.fsr = GAINS[self.gain][1]
        self.voltage_map = voltage_map
        self.resource = resource
        self._name = f"{self.chip.name} at 0x{address:02X}" + (
            f" on {resource}" if resource else ""
        )
        self._regs = Registers(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._sleep = sleep
        self._clock = clock
        self._period_s = 1.0 / self.data_rate
        self.timeout_s = self._period_s * _TIMEOUT_PERIODS + _TIMEOUT_EXTRA_S
        self._closed = False

    def read(self) -> dict[str, float]:
        """One single-shot conversion: ``voltage`` in V, or the ``map``'s quantity.

        Raises:
            BusError: a transaction failed (NACK, EIO).
            MeasurementTimeout: OS did not read 1 within two conversion periods.
            ImplausibleReading: the code is at full scale (input at or beyond the range).
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            self._regs.write_word(REG_CONFIG, self.config)
            deadline = self._clock() + self.timeout_s
            self._sleep(self._period_s)
            while not self._regs.read_word(REG_CONFIG) & OS:
                if self._clock() >= deadline:
                    raise MeasurementTimeout(
                        f"{self._name}: conversion still running after "
                        f"{self.timeout_s * 1000:.1f} ms ({self.data_rate} SPS)"
                    )
                self._sleep(_POLL_S)
            raw = self._regs.read_word(REG_CONVERSION)
        volts = code_to_volts(self.chip, raw, self.fsr)
        if self.voltage_map is not None:
            return {self.voltage_map.quantity: self.voltage_map.apply(volts)}
        return {"voltage": volts}

    def close(self) -> None:
        """Forget the chip: it powers down after each single-shot conversion."""
        self._closed = True


class ADS1115(ADS1x15):
    """A TI ADS1115, 16-bit, 8..860 SPS (default 128).

    Args:
        bus: an ``smbus2.SMBus`` (``read_i2c_block_data``, ``i2c_rdwr``), shared.
        address: 0x48 (ADDR to GND), 0x49 (VDD), 0x4A (SDA) or 0x4B (SCL).
        channel: 0-3 single-ended (against GND), or ``"0-1"``, ``"0-3"``, ``"1-3"``,
            ``"2-3"`` differential.
        gain: 2/3, 1, 2, 4, 8 or 16: full-scale ±6.144, 4.096, 2.048, 1.024, 0.512, 0.256 V.
        data_rate: samples per second; also the conversion time (1 / rate).
        voltage_map: turns volts into another quantity.
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        sleep, clock: injectable so tests need not wait.

    Raises:
        HardwareConfigError: a channel, gain or data rate the chip does not have.
    """

    chip = ADS1115_CHIP


class ADS1015(ADS1x15):
    """A TI ADS1015, 12-bit, 128..3300 SPS (default 1600); arguments as :class:`ADS1115`."""

    chip = ADS1015_CHIP


# --------------------------------------------------------------------------------------------
# Options.

SAMPLE = """\
soil:
  driver: ads1115          # or ads1015 (12 bits, faster)
  bus: 1
  address: 0x48            # 0x48 ADDR-GND | 0x49 VDD | 0x4A SDA | 0x4B SCL
  channel: 0               # 0..3 against GND, or "0-1", "0-3", "1-3", "2-3" differential
  gain: 1                  # 2/3: ±6.144 V | 1: ±4.096 | 2: ±2.048 | 4: ±1.024 | ... | 16: ±0.256
  data_rate: 128           # samples/s (ADS1115 8..860, ADS1015 128..3300)
  map:                     # optional: publish moisture in %, not volts
    points: [[2.8, 0], [1.2, 100]]   # [volts, value]: dry in air, wet in water
    quantity: moisture
    unit: "%"
    device_class: moisture
    resolution: 1
"""

ADS1015_SAMPLE = """\
pot:
  driver: ads1015
  address: 0x49
  channel: "0-1"           # differential: AIN0 - AIN1
  gain: 2                  # ±2.048 V
  data_rate: 1600
"""

Gain = Annotated[
    float,
    msgspec.Meta(description="2/3 (write 0.6667), 1, 2, 4, 8 or 16: ±6.144 V ... ±0.256 V"),
]


class _ADSOptions(SensorOptions, frozen=True):
    chip: ClassVar[Chip] = ADS1115_CHIP

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[
        Literal[0x48, 0x49, 0x4A, 0x4B], msgspec.Meta(description="0x48..0x4B (ADDR pin)")
    ] = 0x48
    channel: Annotated[int, msgspec.Meta(ge=0, le=3)] | Literal["0-1", "0-3", "1-3", "2-3"] = 0
    gain: Gain = 1.0
    #: Samples per second; default: the chip's own (ADS1115 128, ADS1015 1600).
    data_rate: int | None = None
    map: VoltageMap | None = None

    def __post_init__(self) -> None:
        try:
            gain_fraction(self.gain)
        except HardwareConfigError as e:
            raise OptionError("gain", str(e)) from None
        if self.data_rate is not None and self.data_rate not in self.chip.data_rates:
            rates = ", ".join(str(r) for r in self.chip.data_rates)
            raise OptionError("data_rate", f"{self.chip.name} data_rate must be one of {rates}")


class ADS1115Options(_ADSOptions, frozen=True, tag="ads1115"):
    """Options of the ``ads1115`` driver."""

    chip: ClassVar[Chip] = ADS1115_CHIP


class ADS1015Options(_ADSOptions, frozen=True, tag="ads1015"):
    """Options of the ``ads1015`` driver."""

    chip: ClassVar[Chip] = ADS1015_CHIP


def quantities_for(options: _ADSOptions) -> Mapping[str, Quantity]:
    """``voltage`` with the resolution of the chosen range (one code, ADS1115 FSR / 32768
    or ADS1015 FSR / 2048, to two digits), or the ``map``'s quantity."""
    m = options.map
    if m is None:
        _, fsr = GAINS[gain_fraction(options.gain)]
        # One code, to two digits: 125 µV -> 0.00012 V, 7.8125 µV -> 0.0000078 V.
        step = float(f"{fsr / (1 << (options.chip.bits - 1)):.2g}")
        # Below full scale; a single-ended input cannot go below GND.
        lo = 0.0 if isinstance(options.channel, int) else -0.95 * fsr
        return {
            "voltage": Quantity(
                "V", step, VOLTAGE.description, VOLTAGE.device_class, valid_range=(lo, 0.95 * fsr)
            )
        }
    description = f"mapped from {options.chip.name} volts"
    values = [p[1] for p in m.points]
    return {
        m.quantity: Quantity(
            m.unit,
            m.resolution,
            description,
            m.device_class,
            valid_range=(min(values), max(values)),
        )
    }


def _open(options: _ADSOptions, hardware: Hardware) -> ADS1x15:
    cls = ADS1115 if options.chip is ADS1115_CHIP else ADS1015
    return cls(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        channel=options.channel,
        gain=options.gain,
        data_rate=options.data_rate,
        voltage_map=options.map,
        resource=f"i2c-{options.bus}",
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedADS1x15:
    """An ADS1115 or ADS1015 on the fake bus: config and conversion registers, single-shot
    conversions that take 1 / data rate, the OS bit, MUX over four input voltages and the
    PGA's full scale (codes clip at its ends, as the chip's do).

    Args:
        chip: :data:`ADS1115_CHIP` or :data:`ADS1015_CHIP`.
        inputs: AIN0..AIN3 against GND, volts.
        clock: monotonic seconds, injectable so tests can step time.
    """

    def __init__(
        self,
        chip: Chip,
        inputs: list[SimulatedSignal],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chip = chip
        self.inputs = inputs
        self.config = 0x8583  # the datasheet's reset value
        self.conversion = 0
        self.conversions = 0
        #: Never finish a conversion, as a chip whose power sags does.
        self.stuck = False
        self._done_at: float | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def _rate(self) -> int:
        dr = (self.config >> 5) & 0b111
        rates = self.chip.data_rates
        return rates[min(dr, len(rates) - 1)]

    def code_for(self, volts: float) -> int:
        fsr = PGA_FSR[(self.config >> 9) & 0b111]
        full = 1 << (self.chip.bits - 1)
        code = max(-full, min(full - 1, round(volts / fsr * full)))
        return (code << (16 - self.chip.bits)) & 0xFFFF

    def _settle(self) -> None:
        if self._done_at is None or self.stuck or self._clock() < self._done_at:
            return
        positive, negative = MUX_INPUTS[(self.config >> 12) & 0b111]
        volts = self.inputs[positive].next()
        if negative is not None:
            volts -= self.inputs[negative].next()
        self.conversion = self.code_for(volts)
        self.conversions += 1
        self._done_at = None

    def read_registers(self, register: int, length: int) -> bytes:
        with self._lock:
            self._settle()
            if register == REG_CONFIG:
                busy = self._done_at is not None
                word = (self.config & ~OS) | (0 if busy else OS)
            elif register == REG_CONVERSION:
                word = self.conversion
            else:
                word = 0x8000 if register == 0x02 else 0x7FFF  # Lo_thresh / Hi_thresh
            return word.to_bytes(2, "big")[:length]

    def write_registers(self, register: int, data: bytes) -> None:
        if register != REG_CONFIG or len(data) != 2:
            return
        with self._lock:
            self._settle()
            word = int.from_bytes(data, "big")
            self.config = word & ~OS
            if word & OS and self._done_at is None:
                self._done_at = self._clock() + 1.0 / self._rate()


def _emulate(options: _ADSOptions, hardware: SimulatedHardware) -> None:
    quantity = next(iter(quantities_for(options)))
    spec = options.simulation.values.get(quantity)
    rng = random.Random(hardware.seed)
    if spec is None:
        volts: float | list[float] = [0.5, 2.5]
    elif options.map is not None:
        m = options.map
        volts = [m.invert(v) for v in spec] if isinstance(spec, list) else m.invert(spec)
    else:
        volts = spec
    # The measured signal on the channel's positive input; the negative input, if any, at 0.
    inputs = [SimulatedSignal(0.0, rng=rng) for _ in range(4)]
    positive, _ = MUX_INPUTS[MUX[options.channel]]
    inputs[positive] = SimulatedSignal(volts, rng=rng)
    hardware.fake_bus(options.bus).attach(
        options.address,
        EmulatedADS1x15(options.chip, inputs),
        fail_rate=options.simulation.fail_rate,
    )


def emulate_ads1115(options: ADS1115Options, hardware: SimulatedHardware) -> None:
    """An emulated ADS1115 whose channel follows ``simulation`` (volts, or the map's
    quantity, converted back to volts); NACKs at ``fail_rate``."""
    _emulate(options, hardware)


def emulate_ads1015(options: ADS1015Options, hardware: SimulatedHardware) -> None:
    """An emulated ADS1015, as :func:`emulate_ads1115`."""
    _emulate(options, hardware)


ADDRESSES: Final = (0x48, 0x49, 0x4A, 0x4B)

SPEC = DriverSpec(
    name="ads1115",
    kind="sensor",
    summary="TI ADS1115 16-bit ADC over I2C: volts, or a mapped quantity (soil moisture, bar)",
    options=ADS1115Options,
    open=_open,
    emulate=emulate_ads1115,
    quantities={"voltage": VOLTAGE},
    quantities_for=quantities_for,
    sample=SAMPLE,
    i2c_addresses=ADDRESSES,
)

ADS1015_SPEC = DriverSpec(
    name="ads1015",
    kind="sensor",
    summary="TI ADS1015 12-bit ADC over I2C: volts, or a mapped quantity",
    options=ADS1015Options,
    open=_open,
    emulate=emulate_ads1015,
    quantities={"voltage": VOLTAGE},
    quantities_for=quantities_for,
    sample=ADS1015_SAMPLE,
    i2c_addresses=ADDRESSES,
)
