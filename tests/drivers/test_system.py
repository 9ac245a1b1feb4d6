"""The system driver on a fake /sys and /proc tree."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from drivers.errors import DeviceNotFound
from drivers.hardware import Hardware
from drivers.system import SystemHealth


def make_tree(root: Path, *, temp_milli: str = "48312\n") -> None:
    (root / "sys/class/thermal/thermal_zone0").mkdir(parents=True)
    (root / "sys/class/thermal/thermal_zone0/temp").write_text(temp_milli)
    (root / "proc").mkdir()
    (root / "proc/loadavg").write_text("0.42 0.30 0.20 2/180 9999\n")
    (root / "proc/meminfo").write_text(
        "MemTotal:         426000 kB\nMemFree:           20000 kB\nMemAvailable:     319500 kB\n"
    )
    (root / "proc/uptime").write_text("12345.67 40000.00\n")


def test_reads_every_quantity_from_the_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with SystemHealth(hardware=Hardware(tmp_path)) as pi:
        values = pi.read()
    assert values["soc_temperature"] == pytest.approx(48.312)
    assert values["load_1m"] == pytest.approx(0.42)
    assert values["memory_used"] == pytest.approx(25.0)
    assert values["uptime"] == pytest.approx(12345.67)
    assert 0.0 <= values["disk_used"] <= 100.0


def test_missing_thermal_zone_is_a_permanent_error(tmp_path: Path) -> None:
    make_tree(tmp_path)
    pi = SystemHealth(hardware=Hardware(tmp_path), thermal_zone=3)
    with pytest.raises(DeviceNotFound, match="thermal_zone3"):
        pi.read()


def test_missing_disk_path_fails_at_open(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with pytest.raises(DeviceNotFound, match="/data"):
        SystemHealth(hardware=Hardware(tmp_path), disk_path="/data")


def test_a_failing_attribute_read_is_transient(tmp_path: Path) -> None:
    from drivers.errors import TransientError

    make_tree(tmp_path)

    class FlakyHardware(Hardware):
        def read_attr(self, path: Path) -> str:
            if path.name == "loadavg":
                raise OSError(errno.EIO, "Input/output error")
            return super().read_attr(path)

    with pytest.raises(TransientError, match="loadavg"):
        SystemHealth(hardware=FlakyHardware(tmp_path)).read()
