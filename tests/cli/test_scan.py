"""``edge-agent scan`` and ``edge-agent check --hardware`` on emulated buses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.load import load_config
from agent.runtime.hardware_check import check_hardware
from drivers import bme280
from drivers.hardware import SimulatedHardware
from drivers.registry import DRIVERS
from drivers.scan import render, scan
from drivers.sim.fake_pwm import FakePWMChip
from drivers.sim.fake_serial import FakeSerialPort
from drivers.sim.fake_w1 import FakeW1Bus
from tests.support.mqtt import run_cli

CONFIG = """\
device_id: scan-test
sensors:
  air:
    driver: bme280
    address: 0x76
  pi:
    driver: system
"""


class UnknownChip:
    """A chip no driver claims (a VL53L0X-like at 0x29)."""

    def read_registers(self, register: int, length: int) -> bytes:
        return bytes(length)

    def write_registers(self, register: int, data: bytes) -> None:
        pass


def test_scan_lists_what_answers_and_which_drivers_claim_it() -> None:
    with SimulatedHardware() as hw:
        bme280.emulate_bme280(bme280.BME280Options(address=0x77), hw)
        hw.fake_bus(3).attach(0x29, UnknownChip())
        FakeW1Bus(hw).add("28-0316a2795bff", {"temperature": lambda: "21000\n"})
        hw.attach_serial("/dev/serial0", FakeSerialPort())
        text = render(scan(hw), DRIVERS.values())
    assert "I2C /dev/i2c-1: 1 answering\n  0x77 bme280/bme680/bmp280" in text
    assert "I2C /dev/i2c-3: 1 answering\n  0x29 (no driver claims it)" in text
    assert "1-Wire: 1 device(s)\n  28-0316a2795bff" in text
    assert "serial: /dev/serial0" in text


def test_scan_lists_hardware_pwm_chips_and_check_finds_a_missing_channel(
    tmp_path: Path,
) -> None:
    with SimulatedHardware() as hw:
        FakePWMChip(hw, chip=0, npwm=2)
        text = render(scan(hw), DRIVERS.values())
    assert "PWM: 1 chip(s) (a pwm output's hardware_pwm)\n  pwmchip0: channels 0..1" in text
    path = tmp_path / "config.yaml"
    path.write_text(
        "outputs:\n  fan:\n    driver: pwm\n    pin: 18\n"
        "    hardware_pwm: {chip: 0, channel: 2}\n"
        "  lamp:\n    driver: pwm\n    pin: 13\n    hardware_pwm: {chip: 1}\n"
    )
    hw = SimulatedHardware()
    FakePWMChip(hw, chip=0, npwm=2)
    problems = check_hardware(load_config(path), hw)
    assert problems[0] == f"{path}:5: outputs.fan.hardware_pwm: pwmchip0 has 2 channels (0..1)"
    assert problems[1].startswith(f"{path}:9: outputs.lamp.hardware_pwm: no ")
    assert "dtoverlay=pwm-2chan" in problems[1] and len(problems) == 2


def test_scan_finds_nothing_on_an_empty_machine(tmp_path: Path) -> None:
    with SimulatedHardware(tmp_path) as hw:
        text = render(scan(hw), DRIVERS.values())
    assert "I2C: no bus" in text and "raspi-config nonint do_i2c 0" in text
    assert "1-Wire: no device(s)" in text
    assert "PWM: no hardware PWM chip" in text


def test_check_hardware_names_the_line_and_what_was_found_instead(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    loaded = load_config(path)
    hw = SimulatedHardware()
    bme280.emulate_bme280(bme280.BME280Options(address=0x77), hw)  # strapped the other way
    problems = check_hardware(loaded, hw)
    assert problems == [
        f"{path}:3: sensors.air: nothing answers at 0x76 on /dev/i2c-1 (found: 0x77)"
    ]


def test_check_hardware_passes_when_everything_answers(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    result = run_cli("check", "--hardware", "--simulate", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.skipif(Path("/dev/i2c-1").exists(), reason="this machine has a real I2C bus")
def test_check_hardware_on_a_machine_without_i2c_says_so(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    result = run_cli("check", "--hardware", "-c", str(path))
    # This machine has no /dev/i2c-1: the sensor is reported with its line, exit 1.
    assert result.returncode == 1
    assert f"{path}:3: sensors.air: /dev/i2c-1 does not exist" in result.stderr


def test_scan_of_the_emulated_config_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    result = run_cli("scan", "--simulate", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "0x76 bme280/bme680/bmp280" in result.stdout
