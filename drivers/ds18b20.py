"""Maxim DS18B20 1-Wire temperature probes, through the kernel's ``w1-therm`` driver.

Enable the bus master with one line in ``/boot/firmware/config.txt`` (``/boot/config.txt``
before Bookworm) and a reboot; every probe on the bus then appears by its ROM id::

    dtoverlay=w1-gpio,gpiopin=4          # 4.7 kΩ pull-up from DQ to 3.3 V
    ls /sys/bus/w1/devices/              # 28-0316a2795bff  28-0416c0a1b2ff  w1_bus_master1

A probe is addressed by its 64-bit ROM id (family code 0x28, a 48-bit serial), which the
kernel writes as ``28-<serial in hex>``. The id is burnt into the chip, so a configured
sensor stays the same probe when others are added, removed or the cable is re-routed; the
position on the bus (the order of the kernel's search) changes with each of those.

Reading: where the kernel has it (Linux 5.10+) the driver reads the ``temperature``
attribute (milli-°C; the kernel returns EIO when the scratchpad fails its CRC), otherwise
``w1_slave``, whose two lines are the nine scratchpad bytes with the kernel's CRC verdict
(``crc=57 YES``) and the same bytes with ``t=<milli-°C>``. Either read starts a conversion
and blocks for its time (93.75 ms at 9 bits … 750 ms at 12 bits, datasheet table 2), and
the kernel's bus master talks to one probe at a time, so every probe on a master shares one
:attr:`~drivers.base.Driver.resource` (``w1-<master number>``) and the agent reads them one
after the other.

Not readings (all transient: the next read may succeed):

- ``crc=.. NO``: a bit was corrupted on the wire (long cable, weak pull-up, noise);
- an all-zero scratchpad: it passes the CRC (the CRC of zeros is zero) but is what a data
  line held low reads as — a short, or a probe that browned out mid-read;
- 85 °C, the power-on value of the temperature register: the probe reset (a power dip,
  or too weak parasite power for the conversion current) and never converted;
- a vanished device: the probe was unplugged and the kernel's search dropped it.

``temperature`` cannot show the scratchpad, so its two ambiguous answers, 0 and 85 000, are
checked once more through ``w1_slave``: a real 0.0 °C (an ice bath) is kept, an all-zero
scratchpad is refused. A probe really at exactly 85.0000 °C is refused as well; the power-on
value is indistinguishable from it in the datasheet's terms.

Resolution (9-12 bits) is set through the ``resolution`` attribute (Linux 5.10+), which
writes the probe's configuration register; it lasts until the probe loses power unless
saved with ``echo save > .../eeprom_cmd``. Below 12 bits the datasheet leaves the lowest
bits of the result undefined; they are masked off.
"""

from __future__ import annotations

import errno
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Seconds, Sensor, SensorOptions
from drivers.errors import (
    BusError,
    ChecksumError,
    DeviceNotFound,
    HardwareConfigError,
    ImplausibleReading,
    TransientError,
)
from drivers.hardware import Hardware, SimulatedHardware
from drivers.protocols.crc import maxim_crc8
from drivers.sim.fake_w1 import W1_DEVICES, w1_bus, w1_slave_text
from drivers.sim.signal import SimulatedSignal

#: The DS18B20's 1-Wire family code.
FAMILY: Final = 0x28
#: What the temperature register holds after power-on, before any conversion: +85 °C.
POWER_ON_RAW: Final = 0x0550
#: The datasheet's measuring range.
RANGE_C: Final = (-55.0, 125.0)

Resolution = Literal[9, 10, 11, 12]


@dataclass(frozen=True)
class ResolutionMode:
    """One row of datasheet table 2 (configuration register R1 R0)."""

    bits: Resolution
    #: The configuration register byte (bits 6-5: R1 R0; the others read 1 or 0 as shown).
    config: int
    #: Maximum conversion time.
    conversion_s: float
    #: One step of the result.
    step_c: float


RESOLUTIONS: Final[Mapping[int, ResolutionMode]] = {
    9: ResolutionMode(9, 0x1F, 0.09375, 0.5),
    10: ResolutionMode(10, 0x3F, 0.1875, 0.25),
    11: ResolutionMode(11, 0x5F, 0.375, 0.125),
    12: ResolutionMode(12, 0x7F, 0.75, 0.0625),
}

QUANTITIES: Final[Mapping[str, Quantity]] = {
    "temperature": Quantity("°C", 0.0625, "probe temperature", "temperature", RANGE_C),
}

_ROM_PATTERN = r"^28-[0-9a-f]{12}$"

SAMPLE = """\
tank:
  driver: ds18b20
  rom: 28-0316a2795bff   # the probe's ROM id: `ls /sys/bus/w1/devices/` or `edge-agent scan`
  interval: 30s          # probes on one bus are read one after another
  # resolution: 12       # 9..12 bits: 0.5 °C in 94 ms .. 0.0625 °C in 750 ms
pipe_return:
  driver: ds18b20
  rom: 28-0416c0a1b2ff   # a second probe on the same bus: a sensor of its own
  interval: 30s
"""


# --------------------------------------------------------------------------------------------
# The scratchpad: pure functions of its bytes (datasheet figure 9 and table 1).


def config_resolution(config: int) -> Resolution:
    """The resolution the configuration register byte selects (R1 R0, bits 6-5)."""
    resolutions: tuple[Resolution, ...] = (9, 10, 11, 12)
    return resolutions[(config >> 5) & 0b11]


def decode_temperature(lsb: int, msb: int, bits: int = 12) -> float:
    """°C from the temperature register (two's complement, 1/16 °C per count).

    Below 12 bits the lowest ``12 - bits`` bits are undefined (datasheet: "bit 0 is
    undefined" at 11 bits, and so on) and are masked off.
    """
    raw = int.from_bytes(bytes([lsb, msb]), "little", signed=True)
    raw &= ~((1 << (12 - bits)) - 1)
    return raw / 16


def encode_temperature(celsius: float, bits: int = 12) -> bytes:
    """The temperature register bytes (LSB, MSB) a probe at ``bits`` holds for ``celsius``."""
    raw = round(celsius * 16) & ~((1 << (12 - bits)) - 1)
    return (raw & 0xFFFF).to_bytes(2, "little")


@dataclass(frozen=True)
class W1Slave:
    """What the kernel's ``w1_slave`` attribute says."""

    scratchpad: bytes
    #: The kernel's CRC verdict (``YES``).
    crc_ok: bool
    #: The ``t=`` value, milli-°C.
    millidegrees: int


_W1_LINE_1 = re.compile(r"^((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)$")
_W1_LINE_2 = re.compile(r"^((?:[0-9a-f]{2} ){9})t=(-?\d+)$")


def parse_w1_slave(text: str) -> W1Slave:
    """Parse ``w1_slave``.

    Raises:
        BusError: the text is not the kernel's two lines (a read cut short).
    """
    lines = text.strip().splitlines()
    first = _W1_LINE_1.match(lines[0].strip()) if lines else None
    second = _W1_LINE_2.match(lines[1].strip()) if len(lines) > 1 else None
    if first is None or second is None:
        raise BusError(f"w1_slave is not the kernel's two lines: {text.strip()!r}")
    scratchpad = bytes.fromhex(first.group(1))
    return W1Slave(scratchpad, first.group(3) == "YES", int(second.group(2)))


def check_scratchpad(scratchpad: bytes, name: str) -> float:
    """°C from nine scratchpad bytes, or the transient error they amount to.

    Raises:
        ChecksumError: the CRC (byte 8, Maxim's CRC-8 of bytes 0-7) does not match.
        BusError: all nine bytes are zero (a data line held low), which passes the CRC.
        ImplausibleReading: the power-on value 85 °C, or outside -55..125 °C.
    """
    if len(scratchpad) != 9:
        raise BusError(f"{name}: scratchpad has {len(scratchpad)} bytes, not 9")
    crc = maxim_crc8(scratchpad[:8])
    if crc != scratchpad[8]:
        raise ChecksumError(
            f"{name}: scratchpad CRC mismatch: got 0x{scratchpad[8]:02x}, computed 0x{crc:02x} "
            f"over {scratchpad[:8].hex(' ')} (long cable, weak pull-up or noise)"
        )
    if not any(scratchpad):
        raise BusError(
            f"{name}: scratchpad is all zeros (it passes the CRC): the data line was held low"
        )
    raw = int.from_bytes(scratchpad[0:2], "little")
    if raw == POWER_ON_RAW:
        raise ImplausibleReading(
            f"{name}: 85 °C is the power-on value: the probe reset before converting "
            "(power dip, or parasite power too weak)"
        )
    celsius = decode_temperature(scratchpad[0], scratchpad[1], config_resolution(scratchpad[4]))
    _check_range(celsius, name)
    return celsius


def _check_range(celsius: float, name: str) -> None:
    lo, hi = RANGE_C
    if not lo <= celsius <= hi:
        raise ImplausibleReading(
            f"{name}: {celsius:g} °C is outside the probe's range {lo:g}..{hi:g}"
        )


# --------------------------------------------------------------------------------------------
# Finding probes.


def list_roms(hardware: Hardware | None = None) -> list[str]:
    """The ROM ids of the DS18B20s the kernel found, on every bus master (for
    ``edge-agent scan``), sorted."""
    base = (hardware or Hardware()).path(W1_DEVICES)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if re.fullmatch(_ROM_PATTERN, p.name))


def bus_master(device: Path, hardware: Hardware) -> str | None:
    """The bus master (``w1_bus_master1``) a device directory hangs off, or ``None``.

    On a real system ``/sys/bus/w1/devices/28-…`` links to
    ``/sys/devices/w1_bus_master1/28-…``; where it does not, each master's
    ``w1_master_slaves`` list is consulted.
    """
    parent = device.resolve().parent.name
    if parent.startswith("w1_bus_master"):
        return parent
    base = hardware.path(W1_DEVICES)
    if base.is_dir():
        for master in sorted(base.glob("w1_bus_master*")):
            try:
                slaves = hardware.read_attr(master / "w1_master_slaves").split()
            except OSError:
                continue
            if device.name in slaves:
                return master.name
    return None


# --------------------------------------------------------------------------------------------
# The driver.
class DeviceGone(TransientError, FileNotFoundError):
    """A probe that was on the bus is not there now; it may be plugged back in."""


class DS18B20(Sensor):
    """One DS18B20 probe, read through its w1-therm sysfs directory.

    Args:
        device: the probe's directory, ``/sys/bus/w1/devices/28-<serial>``.
        hardware: reads and writes attributes through :meth:`Hardware.read_attr` /
            :meth:`Hardware.write_attr`; the real ``/sys`` by default.
        resolution: 9-12 bits, written to the ``resolution`` attribute at start;
            ``None`` leaves the probe as it is (12 bits from the factory).
        resource: the bus master's name, so the agent reads one probe of a bus at a time;
            by default ``w1-<N>`` for the probe's ``w1_bus_master<N>``.

    Raises:
        DeviceNotFound: there is no such device directory (the message lists the probes
            that are there).
        HardwareConfigError: ``resolution`` cannot be set (an older kernel, or no
            permission to write the attribute).
    """

    min_interval_s: ClassVar[float] = RESOLUTIONS[12].conversion_s

    def __init__(
        self,
        device: str | Path,
        *,
        hardware: Hardware | None = None,
        resolution: Resolution | None = None,
        resource: str | None = None,
    ) -> None:
        self.device = Path(device)
        self.rom = self.device.name
        self._hw = hardware or Hardware()
        self._name = f"DS18B20 {self.rom}"
        if not self.device.is_dir():
            found = list_roms(self._hw)
            listed = ", ".join(found) if found else "none"
            raise DeviceNotFound(
                f"no 1-Wire device {self.rom} under {self.device.parent} (probes found: "
                f"{listed}); enable the bus with `dtoverlay=w1-gpio,gpiopin=4` in "
                "/boot/firmware/config.txt and check the 4.7 kΩ pull-up"
            )
        master = bus_master(self.device, self._hw)
        self.resource = resource or (
            f"w1-{master.removeprefix('w1_bus_master')}" if master else "w1"
        )
        self._temperature = self.device / "temperature"
        self._w1_slave = self.device / "w1_slave"
        self.uses_temperature_attr = self._temperature.exists()
        self._lock = threading.Lock()
        self._closed = False
        self.resolution: Resolution | None = None
        if resolution is not None:
            self.resolution = self._set_resolution(resolution)

    def _set_resolution(self, bits: Resolution) -> Resolution:
        if bits not in RESOLUTIONS:
            raise HardwareConfigError(f"{self._name}: resolution must be 9..12 bits, not {bits}")
        attr = self.device / "resolution"
        if not attr.exists():
            raise HardwareConfigError(
                f"{self._name}: this kernel has no {attr.name} attribute (w1-therm before "
                "Linux 5.10): leave `resolution` out, the probe stays at its own (12 bits)"
            )
        try:
            if int(self._hw.read_attr(attr).strip()) != bits:
                self._hw.write_attr(attr, f"{bits}\n")
            now = int(self._hw.read_attr(attr).strip())
        except PermissionError as e:
            raise HardwareConfigError(
                f"{self._name}: cannot write {attr}: {e.strerror}; the attribute is root's: "
                "give the agent's user write access (a udev rule) or leave `resolution` out"
            ) from e
        except (OSError, ValueError) as e:
            raise HardwareConfigError(f"{self._name}: setting {attr.name}: {e}") from e
        if now != bits:
            raise HardwareConfigError(f"{self._name}: resolution reads {now} after writing {bits}")
        return bits

    def read(self) -> dict[str, float]:
        """One conversion: ``temperature`` in °C.

        Raises:
            ChecksumError: the scratchpad failed its CRC.
            BusError: an all-zero scratchpad, a read cut short, or the kernel's EIO.
            ImplausibleReading: the 85 °C power-on value, or outside -55..125 °C.
            TransientError: the device vanished (unplugged); it may come back.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            if self.uses_temperature_attr:
                millidegrees = int(self._attr_int(self._temperature))
                if millidegrees not in (0, POWER_ON_RAW * 1000 // 16):
                    celsius = round(millidegrees * 16 / 1000) / 16
                    _check_range(celsius, self._name)
                    return {"temperature": celsius}
                # 0 and 85 000 may be an all-zero scratchpad or the power-on value, which
                # `temperature` cannot show: look at the scratchpad itself.
            return {"temperature": check_scratchpad(self._read_w1_slave().scratchpad, self._name)}

    def _read_w1_slave(self) -> W1Slave:
        return parse_w1_slave(self._read(self._w1_slave))

    def _attr_int(self, path: Path) -> int:
        text = self._read(path).strip()
        try:
            return int(text)
        except ValueError as e:
            raise BusError(f"{self._name}: {path.name} reads {text!r}") from e

    def _read(self, path: Path) -> str:
        try:
            return self._hw.read_attr(path)
        except FileNotFoundError as e:
            raise DeviceGone(
                f"{self._name} has gone from the bus (unplugged, or a broken wire): {path} "
                "no longer exists"
            ) from e
        except OSError as e:
            raise BusError(
                e.errno or errno.EIO,
                f"{self._name}: reading {path.name}: {e.strerror or e} (the kernel returns "
                "EIO when the scratchpad fails its CRC or the probe does not answer)",
            ) from e

    def close(self) -> None:
        """Forget the probe; the kernel owns the bus."""
        self._closed = True


# --------------------------------------------------------------------------------------------
# Options.


class DS18B20Options(SensorOptions, frozen=True, kw_only=True, tag="ds18b20"):
    """Options of the ``ds18b20`` driver: one probe, by its ROM id."""

    #: The probe's ROM id as the kernel names it: ``28-`` and twelve lowercase hex digits.
    rom: Annotated[
        str, msgspec.Meta(pattern=_ROM_PATTERN, description="ROM id, e.g. 28-0316a2795bff")
    ]
    #: 9..12 bits; ``None`` leaves the probe's own setting (12 bits from the factory).
    resolution: Resolution | None = None
    interval: Seconds = 30.0

    def __post_init__(self) -> None:
        conversion = RESOLUTIONS[self.resolution or 12].conversion_s
        if self.interval < conversion:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s is shorter than the conversion time "
                f"{conversion * 1000:g} ms at {self.resolution or 12} bits",
            )


def open_ds18b20(options: DS18B20Options, hardware: Hardware) -> DS18B20:
    """The probe ``options.rom`` under ``hardware``'s ``/sys/bus/w1/devices``."""
    return DS18B20(
        device=hardware.path(W1_DEVICES) / options.rom,
        hardware=hardware,
        resolution=options.resolution,
    )


# --------------------------------------------------------------------------------------------
# Emulation.

Fault = Literal["crc", "zeros", "power_on"]


class EmulatedDS18B20:
    """A DS18B20 as w1-therm shows it: ``w1_slave``, ``temperature`` and a writable
    ``resolution``, each read a conversion that takes the datasheet's time.

    Args:
        temperature: the physical temperature, °C.
        conversion: waits a conversion time (``time.sleep``; tests pass a recorder).
        fail_rate: share of conversions that go wrong the way real probes do.
        rng: picks failures and their kind.
    """

    def __init__(
        self,
        temperature: SimulatedSignal,
        *,
        conversion: Callable[[float], None] = time.sleep,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.temperature = temperature
        self.config = RESOLUTIONS[12].config
        self.th, self.tl = 0x4B, 0x46
        #: Faults for the next conversions, in order, before random ones.
        self.faults: list[Fault] = []
        self.fail_rate = fail_rate
        self.conversions = 0
        self._conversion = conversion
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    @property
    def bits(self) -> Resolution:
        return config_resolution(self.config)

    def scratchpad(self) -> bytes:
        """Convert, then the nine bytes a Read Scratchpad returns."""
        with self._lock:
            self._conversion(RESOLUTIONS[self.bits].conversion_s)
            self.conversions += 1
            fault = self.faults.pop(0) if self.faults else None
            if fault is None and self._rng.random() < self.fail_rate:
                fault = self._rng.choice(("crc", "zeros", "power_on"))
            if fault == "zeros":
                return bytes(9)
            if fault == "power_on":
                temp = POWER_ON_RAW.to_bytes(2, "little")
                config = RESOLUTIONS[12].config
            else:
                temp = encode_temperature(self.temperature.next(), self.bits)
                config = self.config
            body = temp + bytes([self.th, self.tl, config, 0xFF, 0x0C, 0x10])
            pad = body + bytes([maxim_crc8(body)])
            if fault == "crc":
                pad = pad[:1] + bytes([pad[1] ^ 0x04]) + pad[2:]
            return pad

    def w1_slave(self) -> str:
        return w1_slave_text(self.scratchpad())

    def temperature_attr(self) -> str:
        """What the kernel's ``temperature`` shows: EIO on a CRC failure, else milli-°C."""
        pad = self.scratchpad()
        if maxim_crc8(pad[:8]) != pad[8]:
            raise OSError(errno.EIO, "Input/output error")
        raw = int.from_bytes(pad[0:2], "little", signed=True)
        return f"{int(raw * 1000 / 16)}\n"

    def resolution_attr(self) -> str:
        return f"{self.bits}\n"

    def write_resolution(self, text: str) -> None:
        try:
            bits = int(text.strip())
        except ValueError:
            raise OSError(errno.EINVAL, "Invalid argument") from None
        if bits not in RESOLUTIONS:
            raise OSError(errno.EINVAL, "Invalid argument")
        with self._lock:
            self.config = RESOLUTIONS[bits].config


def attach_probe(
    hardware: SimulatedHardware,
    rom: str,
    probe: EmulatedDS18B20,
    *,
    master: int = 1,
    temperature_attr: bool = True,
) -> Path:
    """Put ``probe`` on the emulated bus ``master`` as ``rom``; returns its directory.

    Each attribute checks that its file is still there, so deleting the directory in the
    simulated tree (``rm -r …/28-…``) unplugs the probe, as the kernel removes it.
    """
    bus = w1_bus(hardware, master)
    device = bus.devices_dir / rom

    def present(produce: Callable[[], str], name: str) -> Callable[[], str]:
        def read() -> str:
            if not (device / name).exists():
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(device))
            return produce()

        return read

    attributes = {
        "w1_slave": present(probe.w1_slave, "w1_slave"),
        "resolution": present(probe.resolution_attr, "resolution"),
    }
    if temperature_attr:
        attributes["temperature"] = present(probe.temperature_attr, "temperature")
    return bus.add(rom, attributes, {"resolution": probe.write_resolution})


def emulate_ds18b20(options: DS18B20Options, hardware: SimulatedHardware) -> None:
    """Put a probe ``options.rom`` whose temperature follows ``options.simulation`` on the
    emulated bus master 1; ``fail_rate`` gives CRC errors, all-zero scratchpads and
    power-on resets."""
    values = options.simulation.values
    unknown = set(values) - set(QUANTITIES)
    if unknown:
        raise HardwareConfigError(f"simulation: {', '.join(sorted(unknown))} is not temperature")
    # Each probe its own walk, repeatable for a seeded run.
    rng = random.Random(
        None if hardware.seed is None else hardware.seed ^ zlib.crc32(options.rom.encode())
    )
    probe = EmulatedDS18B20(
        SimulatedSignal(values.get("temperature", [15.0, 25.0]), rng=rng),
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    attach_probe(hardware, options.rom, probe)


SPEC = DriverSpec(
    name="ds18b20",
    kind="sensor",
    summary="Maxim DS18B20 1-Wire temperature probes by ROM id, through the kernel's w1-therm",
    options=DS18B20Options,
    open=open_ds18b20,
    emulate=emulate_ds18b20,
    quantities=QUANTITIES,
    min_interval_s=RESOLUTIONS[9].conversion_s,
    sample=SAMPLE,
)
