"""ROHM BH1750FVI ambient light sensor over I2C.

The BH1750 is a command chip: no register map, one-byte instructions (datasheet
"Instruction Set Architecture") and a two-byte result read back big-endian:

======================  ======  ==========================================================
instruction             opcode  what it does
======================  ======  ==========================================================
Power Down              0x00    no active state
Power On                0x01    waiting for a measurement instruction
Reset                   0x07    clears the data register (only while powered on)
Continuously H-Res      0x10    1 lx steps, 120 ms typical / 180 ms maximum at MTreg 69
Continuously H-Res2     0x11    0.5 lx steps, same time
Continuously L-Res      0x13    4 lx steps, 16 ms typical / 24 ms maximum
One Time H-Res          0x20    as 0x10, once, then Power Down
One Time H-Res2         0x21    as 0x11, once, then Power Down
One Time L-Res          0x23    as 0x13, once, then Power Down
Change MTreg high bits  0x40|   ``01000_MT[7:5]``
Change MTreg low bits   0x60|   ``011_MT[4:0]``
======================  ======  ==========================================================

Illuminance is ``count / 1.2 × (69 / MTreg)`` lx. In H-resolution mode 2 the result's
lowest bit is worth 2⁻¹, so the same count is *half* as many lux — drivers that apply the
mode-1 formula in mode 2 (ESPHome's among them) report twice the light. The measurement
time register (MTreg, 31..254, default 69) trades range for sensitivity: the conversion
takes MTreg / 69 times as long and each count is worth 69 / MTreg times as much, from
0.11 lx per count (mode 2, MTreg 254) to ~121 000 lx full scale (mode 1, MTreg 31).

The chip has no status bit: a read waits the datasheet's *maximum* measurement time for the
mode and MTreg. A saturated count (0xFFFF) is an error, not a reading: the light is at least
that bright, and a lower ``mtreg`` (or mode 1 instead of mode 2) measures it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Sensor, SensorOptions
from drivers.errors import BusError, HardwareConfigError, ImplausibleReading
from drivers.hardware import Hardware, SimulatedHardware, bus_lock
from drivers.protocols.i2c import Commands, I2CMessageBus
from drivers.sim.fake_smbus import CommandChip, nack
from drivers.sim.signal import SimulatedSignal

POWER_DOWN: Final = 0x00
POWER_ON: Final = 0x01
RESET: Final = 0x07
MTREG_HIGH: Final = 0x40
MTREG_LOW: Final = 0x60

MTREG_DEFAULT: Final = 69
MTREG_MIN: Final = 31
MTREG_MAX: Final = 254
SATURATED: Final = 0xFFFF

Mode = Literal["high", "high2", "low"]


@dataclass(frozen=True)
class ModeInfo:
    """One measurement mode (datasheet instruction set and electrical characteristics)."""

    continuous: int
    one_time: int
    #: Lux per count at MTreg 69 is 1/1.2 divided by this.
    count_divisor: int
    typical_s: float
    max_s: float


MODES: Final[Mapping[str, ModeInfo]] = {
    "high": ModeInfo(0x10, 0x20, 1, 0.120, 0.180),
    "high2": ModeInfo(0x11, 0x21, 2, 0.120, 0.180),
    "low": ModeInfo(0x13, 0x23, 1, 0.016, 0.024),
}

QUANTITIES: Final[Mapping[str, Quantity]] = {
    # 0.11 lx per count is the finest the chip resolves (mode 2 at MTreg 254); a configured
    # sensor's own step is in quantities_for.
    "illuminance": Quantity("lx", 0.11, "ambient light", "illuminance", (1.0, 54612.0)),
}

SAMPLE = """\
garden_light:
  driver: bh1750
  bus: 1                 # /dev/i2c-1
  address: 0x23          # 0x23 (ADDR low or open) or 0x5C (ADDR high)
  mode: high             # high: 1 lx steps | high2: 0.5 lx steps (dim light) | low: 4 lx, 16 ms
  continuous: false      # false: one measurement per read, the chip sleeps in between
  mtreg: 69              # 31..254: higher is more sensitive, slower and saturates sooner
  interval: 30s
"""


def lux(count: int, *, mode: Mode = "high", mtreg: int = MTREG_DEFAULT) -> float:
    """Illuminance for a raw ``count`` (datasheet: count / 1.2 × 69 / MTreg; half in mode 2)."""
    return count / 1.2 * (MTREG_DEFAULT / mtreg) / MODES[mode].count_divisor


def mtreg_commands(mtreg: int) -> tuple[int, int]:
    """The two instructions that set MTreg: ``01000_MT[7:5]`` and ``011_MT[4:0]``."""
    return MTREG_HIGH | (mtreg >> 5), MTREG_LOW | (mtreg & 0x1F)


def measurement_s(mode: Mode, mtreg: int, *, maximum: bool = True) -> float:
    """How long one measurement takes: the mode's time scaled by MTreg / 69."""
    info = MODES[mode]
    return (info.max_s if maximum else info.typical_s) * mtreg / MTREG_DEFAULT


class BH1750(Sensor):
    """A BH1750 ambient light sensor.

    Args:
        bus: an ``smbus2.SMBus`` (anything with ``i2c_rdwr``), shared with other chips.
        address: 0x23 (ADDR low) or 0x5C (ADDR high).
        mode: ``"high"`` (1 lx steps), ``"high2"`` (0.5 lx steps) or ``"low"`` (4 lx, fast).
        continuous: keep the chip measuring and read its latest result, instead of one
            measurement per :meth:`read` with the chip powered down in between.
        mtreg: the measurement time register, 31..254 (69 is the datasheet's default).
        resource: the shared bus's name ("i2c-1"), so the agent serialises its reads.
        sleep: waits for a measurement; injectable so tests need not sleep.

    Raises:
        BusError: the chip did not acknowledge (wrong address, wiring).
        HardwareConfigError: a mode or MTreg the chip does not have.
    """

    def __init__(
        self,
        *,
        bus: I2CMessageBus,
        address: int = 0x23,
        mode: Mode = "high",
        continuous: bool = False,
        mtreg: int = MTREG_DEFAULT,
        resource: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode not in MODES:
            raise HardwareConfigError(f"BH1750 mode must be high, high2 or low, not {mode!r}")
        if not MTREG_MIN <= mtreg <= MTREG_MAX:
            raise HardwareConfigError(f"BH1750 mtreg must be {MTREG_MIN}..{MTREG_MAX}, not {mtreg}")
        self.address = address
        self.mode: Mode = mode
        self.continuous = continuous
        self.mtreg = mtreg
        self.resource = resource
        self._name = f"BH1750 at 0x{address:02X}" + (f" on {resource}" if resource else "")
        self._chip = Commands(bus, address, self._name)
        self._lock = bus_lock(bus)
        self._sleep = sleep
        self._closed = False
        self._wait_s = measurement_s(mode, mtreg)
        if continuous:
            with self._lock:
                self._start(MODES[mode].continuous)
            # The first result is there after one full measurement.
            self._sleep(self._wait_s)

    def _start(self, instruction: int) -> None:
        self._chip.send(bytes([POWER_ON]), "Power On")
        high, low = mtreg_commands(self.mtreg)
        self._chip.send(bytes([high]), "MTreg high bits")
        self._chip.send(bytes([low]), "MTreg low bits")
        self._chip.send(bytes([instruction]), f"measurement instruction 0x{instruction:02X}")

    def read(self) -> dict[str, float]:
        """One illuminance reading, lx.

        Raises:
            BusError: a transaction failed (NACK, EIO).
            ImplausibleReading: the count saturated (0xFFFF): too bright for this mtreg.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            if not self.continuous:
                # Power On and MTreg every time: a chip that lost power would otherwise be
                # measuring at its default MTreg while we scale by ours.
                self._start(MODES[self.mode].one_time)
                self._sleep(self._wait_s)
            data = self._chip.receive(2, "measurement result")
        count = int.from_bytes(data, "big")
        if count == SATURATED:
            raise ImplausibleReading(
                f"{self._name}: the count saturated (0xFFFF, at least "
                f"{lux(count, mode=self.mode, mtreg=self.mtreg):.0f} lx): lower mtreg"
                + (" or use mode high" if self.mode == "high2" else "")
            )
        return {"illuminance": lux(count, mode=self.mode, mtreg=self.mtreg)}

    def close(self) -> None:
        """Power the chip down (it draws ~0.01 µA then). Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        with self._lock, contextlib.suppress(BusError):  # the chip may be gone
            self._chip.send(bytes([POWER_DOWN]), "Power Down")


# --------------------------------------------------------------------------------------------
# Options.


class BH1750Options(SensorOptions, frozen=True, tag="bh1750"):
    """Options of the ``bh1750`` driver."""

    bus: Annotated[int, msgspec.Meta(ge=0, description="/dev/i2c-<bus>")] = 1
    address: Annotated[Literal[0x23, 0x5C], msgspec.Meta(description="0x23 or 0x5C (ADDR)")] = 0x23
    mode: Mode = "high"
    continuous: bool = False
    mtreg: Annotated[int, msgspec.Meta(ge=MTREG_MIN, le=MTREG_MAX)] = MTREG_DEFAULT

    def __post_init__(self) -> None:
        needed = measurement_s(self.mode, self.mtreg)
        if not self.continuous and self.interval < needed:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s is shorter than one measurement "
                f"({needed * 1000:.0f} ms in mode {self.mode} at mtreg {self.mtreg})",
            )


def quantities_for(options: BH1750Options) -> Mapping[str, Quantity]:
    """``illuminance`` with the step of one count in this mode and MTreg (0.83 lx in mode
    ``high`` at 69; whole lux once a count is worth more than one), and its range."""
    step = lux(1, mode=options.mode, mtreg=options.mtreg)
    resolution = float(f"{step:.2g}") if step < 1 else 1.0
    q = QUANTITIES["illuminance"]
    top = lux(SATURATED - 1, mode=options.mode, mtreg=options.mtreg)
    return {"illuminance": Quantity(q.unit, resolution, q.description, q.device_class, (1.0, top))}


def open_bh1750(options: BH1750Options, hardware: Hardware) -> BH1750:
    """A :class:`BH1750` on ``hardware``'s bus ``options.bus``."""
    return BH1750(
        bus=hardware.i2c_bus(options.bus),
        address=options.address,
        mode=options.mode,
        continuous=options.continuous,
        mtreg=options.mtreg,
        resource=f"i2c-{options.bus}",
    )


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedBH1750(CommandChip):
    """A BH1750 on the fake bus, as its datasheet's state diagram has it.

    Power Down ignores everything but Power On; a measurement instruction needs Power On;
    the result appears after the typical measurement time for the mode and MTreg (until then
    a read returns the previous result, as the real chip does); a one-time measurement
    powers the chip down again; Reset clears the result. The count is the configured light
    converted back with the datasheet's formula, so the driver reads that light.

    Args:
        light: the illuminance, lx.
        clock: monotonic seconds, injectable so tests can step time.
    """

    def __init__(
        self, light: SimulatedSignal, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.light = light
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self._mtreg_high = MTREG_DEFAULT >> 5
        self.mode: Mode | None = None
        self.one_time = False
        self.result = 0
        self.measurements = 0
        self._ready_at: float | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def count_for(self, lx: float, mode: Mode) -> int:
        """The count the chip gives for ``lx``: the datasheet's formula backwards."""
        count = round(lx * 1.2 * self.mtreg / MTREG_DEFAULT * MODES[mode].count_divisor)
        return max(0, min(SATURATED, count))

    def command(self, data: bytes) -> None:
        if len(data) != 1:
            raise nack()
        op = data[0]
        with self._lock:
            self._settle()
            if op == POWER_ON:
                self.powered = True
            elif op == POWER_DOWN:
                self.powered = False
                self._ready_at = None
            elif not self.powered:
                return  # Power Down: "no active state"
            elif op == RESET:
                self.result = 0
            elif op & 0xF8 == MTREG_HIGH:
                self._mtreg_high = op & 0x07
            elif op & 0xE0 == MTREG_LOW:
                self.mtreg = (self._mtreg_high << 5) | (op & 0x1F)
            else:
                for mode in ("high", "high2", "low"):
                    info = MODES[mode]
                    if op in (info.continuous, info.one_time):
                        self.mode = mode
                        self.one_time = op == info.one_time
                        self._ready_at = self._clock() + measurement_s(
                            mode, self.mtreg, maximum=False
                        )
                        return
                raise nack()

    def answer(self, length: int) -> bytes:
        with self._lock:
            self._settle()
            return self.result.to_bytes(2, "big")[:length]

    def _settle(self) -> None:
        if self._ready_at is None or self.mode is None or self._clock() < self._ready_at:
            return
        self.result = self.count_for(self.light.next(), self.mode)
        self.measurements += 1
        if self.one_time:
            self.powered = False
            self._ready_at = None
        else:
            self._ready_at += measurement_s(self.mode, self.mtreg, maximum=False)


def emulate_bh1750(options: BH1750Options, hardware: SimulatedHardware) -> None:
    """An emulated BH1750 whose light follows ``options.simulation.illuminance``; reads NACK
    at ``fail_rate``."""
    unknown = set(options.simulation.values) - set(QUANTITIES)
    if unknown:
        raise HardwareConfigError(f"simulation: {', '.join(sorted(unknown))} is not illuminance")
    rng = random.Random(hardware.seed)
    light = SimulatedSignal(options.simulation.values.get("illuminance", [200.0, 800.0]), rng=rng)
    hardware.fake_bus(options.bus).attach(
        options.address, EmulatedBH1750(light), fail_rate=options.simulation.fail_rate
    )


SPEC = DriverSpec(
    name="bh1750",
    kind="sensor",
    summary="ROHM BH1750 ambient light (lx) over I2C",
    options=BH1750Options,
    open=open_bh1750,
    emulate=emulate_bh1750,
    quantities=QUANTITIES,
    quantities_for=quantities_for,
    sample=SAMPLE,
    i2c_addresses=(0x23, 0x5C),
)
