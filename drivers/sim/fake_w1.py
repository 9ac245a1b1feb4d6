"""A fake Linux 1-Wire sysfs tree (``/sys/bus/w1/devices``), as the w1-gpio master and the
w1-therm slave driver lay it out, on :class:`~drivers.hardware.SimulatedHardware`.

The kernel's ``w1_slave`` attribute is two lines: the nine scratchpad bytes in hex, then
``: crc=XX YES`` (or ``NO``), and the same bytes again followed by ``t=<milli-°C>``.
:func:`w1_slave_text` writes it from scratchpad bytes, so an emulator works in bytes (as
the chip does) and a test can corrupt them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.protocols.crc import maxim_crc8

if TYPE_CHECKING:
    from drivers.hardware import SimulatedHardware

W1_DEVICES = "/sys/bus/w1/devices"


def w1_slave_text(scratchpad: bytes, *, millidegrees: int | None = None) -> str:
    """``w1_slave`` for these nine scratchpad bytes, with the kernel's CRC verdict.

    ``millidegrees`` is what the kernel prints after ``t=``; by default it is decoded from
    bytes 0-1 the way w1-therm does for a DS18B20 (signed, 1/16 °C).
    """
    if len(scratchpad) != 9:
        raise ValueError("a scratchpad has nine bytes")
    hexed = " ".join(f"{b:02x}" for b in scratchpad)
    verdict = "YES" if maxim_crc8(scratchpad[:8]) == scratchpad[8] else "NO"
    if millidegrees is None:
        raw = int.from_bytes(scratchpad[0:2], "little", signed=True)
        millidegrees = raw * 1000 // 16
    return f"{hexed} : crc={scratchpad[8]:02x} {verdict}\n{hexed} t={millidegrees}\n"


def rom_crc(family: int, serial: bytes) -> int:
    """The CRC byte of a 64-bit ROM id (family code, 48-bit serial, CRC)."""
    return maxim_crc8(bytes([family]) + serial)


class FakeW1Bus:
    """Devices on one emulated 1-Wire bus master (``w1_bus_master<N>``)."""

    def __init__(self, hardware: SimulatedHardware, master: int = 1) -> None:
        self.hardware = hardware
        self.master = master
        self.devices_dir = hardware.path(W1_DEVICES)
        self.master_dir = self.devices_dir / f"w1_bus_master{master}"
        self.master_dir.mkdir(parents=True, exist_ok=True)
        self.roms: list[str] = []
        self._write_slaves()

    def _write_slaves(self) -> None:
        (self.master_dir / "w1_master_slaves").write_text(
            "".join(f"{rom}\n" for rom in self.roms) or "not found.\n"
        )
        (self.master_dir / "w1_master_slave_count").write_text(f"{len(self.roms)}\n")

    def add(
        self,
        rom: str,
        attributes: dict[str, Callable[[], str]],
        writers: dict[str, Callable[[str], None]] | None = None,
    ) -> Path:
        """Put a device ``rom`` ("28-0316a2795bff") on the bus with these attributes
        (name → producer; a producer may raise ``OSError``), some of them writable."""
        device = self.devices_dir / rom
        for name, produce in attributes.items():
            consume = (writers or {}).get(name)
            self.hardware.serve_attr(device / name, produce, consume)
        if rom not in self.roms:
            self.roms.append(rom)
        self._write_slaves()
        return device

    def remove(self, rom: str) -> None:
        """Unplug ``rom``: its directory vanishes, as the kernel removes it."""
        device = self.devices_dir / rom
        if device.exists():
            for attr in list(device.iterdir()):
                self.hardware.remove_attr(attr)
            device.rmdir()
        if rom in self.roms:
            self.roms.remove(rom)
        self._write_slaves()


_shared: weakref.WeakKeyDictionary[SimulatedHardware, dict[int, FakeW1Bus]] = (
    weakref.WeakKeyDictionary()
)


def w1_bus(hardware: SimulatedHardware, master: int = 1) -> FakeW1Bus:
    """The one :class:`FakeW1Bus` ``master`` of ``hardware``, so that every emulator of a
    probe on it (one per configured sensor) adds to the same bus."""
    buses = _shared.setdefault(hardware, {})
    bus = buses.get(master)
    if bus is None:
        bus = buses[master] = FakeW1Bus(hardware, master)
    return bus
