"""What is connected: the devices on the Pi's buses, and which drivers claim them.

``edge-agent scan`` prints this; ``edge-agent check --hardware`` uses it to say what was
found where a configured chip does not answer. It reads only what ``i2cdetect``, ``ls
/sys/bus/w1/devices`` and ``ls /dev/serial*`` would: an I2C probe is an SMBus quick write,
or a one-byte read in the EEPROM and multiplexer ranges, where a quick write can change
state (i2cdetect's own rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import DriverSpec
from drivers.hardware import Hardware, bus_lock

#: The 7-bit addresses i2cdetect probes by default.
I2C_ADDRESSES = range(0x08, 0x78)
#: Where i2cdetect reads a byte instead of a quick write (EEPROMs, write-protect latches).
_READ_PROBE = set(range(0x30, 0x38)) | set(range(0x50, 0x60))
SERIAL_GLOBS = ("serial[0-9]", "ttyAMA[0-9]*", "ttyS[0-9]*", "ttyUSB[0-9]*", "ttyACM[0-9]*")


@dataclass
class ScanResult:
    """Everything found."""

    #: bus number -> addresses that answered
    i2c: dict[int, list[int]] = field(default_factory=dict)
    #: 1-Wire ROM ids ("28-0316a2795bff")
    w1: list[str] = field(default_factory=list)
    #: IIO devices as (directory name, driver name): ("iio:device0", "dht11@4")
    iio: list[tuple[str, str]] = field(default_factory=list)
    serial: list[str] = field(default_factory=list)
    #: Hardware PWM chips as (chip number, channels): a pwm output's ``hardware_pwm``.
    pwm: list[tuple[int, int]] = field(default_factory=list)


def probe_i2c(bus: Any, address: int) -> bool:
    """Whether anything acknowledges ``address`` on ``bus``."""
    with bus_lock(bus):
        try:
            if address in _READ_PROBE:
                bus.read_byte(address)
            else:
                bus.write_quick(address)
        except OSError:
            return False
    return True


def scan_i2c_bus(bus: Any, addresses: Iterable[int] = I2C_ADDRESSES) -> list[int]:
    """The addresses on ``bus`` that answer."""
    return [a for a in addresses if probe_i2c(bus, a)]


def scan(hardware: Hardware) -> ScanResult:
    """Probe every bus ``hardware`` has."""
    result = ScanResult()
    for number in hardware.i2c_bus_numbers():
        try:
            bus = hardware.i2c_bus(number)
        except OSError:
            continue
        result.i2c[number] = scan_i2c_bus(bus)
    w1 = hardware.path("/sys/bus/w1/devices")
    if w1.is_dir():
        result.w1 = sorted(p.name for p in w1.iterdir() if not p.name.startswith("w1_bus_master"))
    iio = hardware.path("/sys/bus/iio/devices")
    if iio.is_dir():
        for device in sorted(iio.glob("iio:device*")):
            try:
                name = hardware.read_attr(device / "name").strip()
            except OSError:
                name = "?"
            result.iio.append((device.name, name))
    result.serial = hardware.serial_port_names()
    pwm = hardware.path("/sys/class/pwm")
    if pwm.is_dir():
        for chip in sorted(pwm.glob("pwmchip*")):
            suffix = chip.name.removeprefix("pwmchip")
            try:
                channels = int(hardware.read_attr(chip / "npwm").strip())
            except (OSError, ValueError):
                continue
            if suffix.isdigit():
                result.pwm.append((int(suffix), channels))
    return result


def claims(address: int, drivers: Iterable[DriverSpec]) -> list[str]:
    """The drivers whose chips can answer at ``address``."""
    return [spec.name for spec in drivers if address in spec.i2c_addresses]


def render(result: ScanResult, drivers: Iterable[DriverSpec]) -> str:
    """The scan as a user reads it."""
    specs = list(drivers)
    lines: list[str] = []
    if not result.i2c:
        lines.append(
            "I2C: no bus (/dev/i2c-*): enable I2C with `sudo raspi-config nonint do_i2c 0`"
        )
    for number, addresses in sorted(result.i2c.items()):
        lines.append(f"I2C /dev/i2c-{number}: {len(addresses) or 'nothing'} answering")
        for address in addresses:
            names = claims(address, specs)
            lines.append(
                f"  0x{address:02X} {'/'.join(names) if names else '(no driver claims it)'}"
            )
    lines.append(f"1-Wire: {len(result.w1) or 'no'} device(s)")
    lines.extend(f"  {rom}" for rom in result.w1)
    lines.append(f"IIO: {len(result.iio) or 'no'} device(s)")
    lines.extend(f"  {directory} {name}" for directory, name in result.iio)
    lines.append(f"serial: {', '.join(result.serial) if result.serial else 'no ports'}")
    if result.pwm:
        lines.append(f"PWM: {len(result.pwm)} chip(s) (a pwm output's hardware_pwm)")
        lines.extend(
            f"  pwmchip{chip}: channels 0..{channels - 1}" for chip, channels in result.pwm
        )
    else:
        lines.append("PWM: no hardware PWM chip (dtoverlay=pwm-2chan enables GPIO 18 and 19)")
    return "\n".join(lines)
