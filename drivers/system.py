"""The Pi's own health: SoC temperature, load, memory, disk and uptime.

Everything is read from ``/sys`` and ``/proc`` under an injectable root, so tests feed it
a fake tree.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Annotated

import msgspec

from drivers.base import DriverSpec, Quantity, Seconds, Sensor, SensorOptions
from drivers.errors import DeviceNotFound, TransientError
from drivers.hardware import Hardware, SimulatedHardware
from drivers.sim.signal import SimulatedSignal

SAMPLE = """\
pi:
  driver: system
  interval: 60s
  thermal_zone: 0        # /sys/class/thermal/thermal_zone0/temp
  disk_path: /           # the filesystem whose use is reported
"""

QUANTITIES = {
    "soc_temperature": Quantity("°C", 0.001, "SoC temperature", "temperature", (0.0, 100.0)),
    "load_1m": Quantity("", 0.01, "1-minute load average", valid_range=(0.0, 16.0)),
    "memory_used": Quantity(
        "%", 0.1, "memory in use (MemTotal - MemAvailable)", valid_range=(0.0, 100.0)
    ),
    "disk_used": Quantity("%", 0.1, "space in use on disk_path", valid_range=(0.0, 100.0)),
    "uptime": Quantity("s", 1, "seconds since boot", "duration", (0.0, 1e8)),
}


class SystemOptions(SensorOptions, frozen=True, tag="system"):
    """Options of the ``system`` driver."""

    interval: Seconds = 60.0
    thermal_zone: Annotated[int, msgspec.Meta(ge=0)] = 0
    disk_path: str = "/"


class SystemHealth(Sensor):
    """Reads the host's health from ``root``/sys and ``root``/proc.

    Args:
        hardware: where ``/sys`` and ``/proc`` are (``Hardware(Path("/"))`` on a Pi).
        thermal_zone: the thermal zone of the SoC.
        disk_path: the mount point whose use is reported, relative to the real ``/``.
    """

    def __init__(self, *, hardware: Hardware, thermal_zone: int = 0, disk_path: str = "/") -> None:
        self._hw = hardware
        self._thermal = hardware.path(f"/sys/class/thermal/thermal_zone{thermal_zone}/temp")
        self._loadavg = hardware.path("/proc/loadavg")
        self._meminfo = hardware.path("/proc/meminfo")
        self._uptime = hardware.path("/proc/uptime")
        self._disk = hardware.path(disk_path)
        if not self._disk.exists():
            raise DeviceNotFound(f"disk_path {disk_path} does not exist")

    def _attr(self, path: Path) -> str:
        try:
            return self._hw.read_attr(path)
        except FileNotFoundError as e:
            raise DeviceNotFound(f"{path} does not exist") from e
        except OSError as e:
            raise TransientError(f"{path}: {e.strerror}") from e

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        values["soc_temperature"] = int(self._attr(self._thermal).strip()) / 1000.0
        values["load_1m"] = float(self._attr(self._loadavg).split()[0])
        meminfo = parse_meminfo(self._attr(self._meminfo))
        total = meminfo["MemTotal"]
        values["memory_used"] = 100.0 * (total - meminfo["MemAvailable"]) / total
        st = os.statvfs(self._disk)
        size = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        values["disk_used"] = 100.0 * (size - free) / size if size else 0.0
        values["uptime"] = float(self._attr(self._uptime).split()[0])
        return values

    def close(self) -> None:
        """Nothing is held open between reads."""


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as {field: kB}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key.strip()] = int(parts[0])
    return out


def open_system(options: SystemOptions, hardware: Hardware) -> SystemHealth:
    return SystemHealth(
        hardware=hardware, thermal_zone=options.thermal_zone, disk_path=options.disk_path
    )


def emulate_system(options: SystemOptions, hardware: SimulatedHardware) -> None:
    """A fake /sys and /proc whose values follow ``simulation``; the SoC temperature read
    fails with EIO at ``simulation.fail_rate``, as a flaky sysfs attribute would."""
    sim = options.simulation.values
    fail_rate = options.simulation.fail_rate
    rng = random.Random(hardware.seed)
    temp = SimulatedSignal(sim.get("soc_temperature", [45.0, 60.0]))
    load = SimulatedSignal(sim.get("load_1m", [0.1, 1.5]))
    mem = SimulatedSignal(sim.get("memory_used", [20.0, 40.0]))
    thermal = hardware.path(f"/sys/class/thermal/thermal_zone{options.thermal_zone}/temp")

    def soc_temperature() -> str:
        if rng.random() < fail_rate:
            raise OSError(errno.EIO, "Input/output error")
        return f"{round(temp.next() * 1000)}\n"

    hardware.serve_attr(thermal, soc_temperature)
    hardware.serve_attr(
        hardware.path("/proc/loadavg"), lambda: f"{load.next():.2f} 0.50 0.40 1/123 4567\n"
    )
    total = 512000

    def meminfo() -> str:
        available = round(total * (1 - mem.next() / 100))
        return (
            f"MemTotal:       {total} kB\nMemFree:        1000 kB\nMemAvailable:   {available} kB\n"
        )

    hardware.serve_attr(hardware.path("/proc/meminfo"), meminfo)
    started = os.times().elapsed

    def uptime() -> str:
        return f"{3600 + os.times().elapsed - started:.2f} 100.00\n"

    hardware.serve_attr(hardware.path("/proc/uptime"), uptime)
    hardware.path(options.disk_path).mkdir(parents=True, exist_ok=True)


SPEC = DriverSpec(
    name="system",
    kind="sensor",
    summary="the Pi's own health from /sys and /proc",
    options=SystemOptions,
    open=open_system,
    emulate=emulate_system,
    quantities=QUANTITIES,
    sample=SAMPLE,
    computed=("disk_used", "uptime"),
    blocking=False,  # /proc and sysfs attributes, answered from kernel memory
)
