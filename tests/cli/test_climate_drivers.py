"""The climate and air-quality drivers as a user meets them: listed by ``edge-agent
drivers`` and read back from ``edge-agent read --simulate`` through the real process."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.mqtt import run_cli

#: One sensor per climate driver, each with simulated constants to read back.
CONFIG = """\
sensors:
  bench:
    driver: sht3x
    address: 0x45
    simulation: {temperature: 23.45, humidity: 55.5}
  bedroom:
    driver: sht4x
    address: 0x46
    precision: low
    simulation: {temperature: -3.21, humidity: 99.99}
  cupboard:
    driver: aht20
    simulation: {temperature: 17.77, humidity: 64.5}
  office:
    driver: scd4x
    sensor_altitude: 520
    simulation: {co2: 1234, temperature: 23.5, humidity: 38.25}
  kitchen:
    driver: bme680
    simulation: {temperature: 21.5, humidity: 40.25, pressure: 1001.5, gas_resistance: 52000}
  balcony:
    driver: pms5003
    port: /dev/ttyAMA0
    simulation: {pm2_5: 17, pm10: 23, particles_0_3: 999}
"""

#: What each sensor must read: the constants, to the chip's resolution.
EXPECTED = {
    "bench": {"temperature": 23.45, "humidity": 55.5},
    "bedroom": {"temperature": -3.21, "humidity": 99.99},
    "cupboard": {"temperature": 17.77, "humidity": 64.5},
    "office": {"co2": 1234, "temperature": 23.5, "humidity": 38.25},
}


def test_drivers_lists_each_climate_driver_with_its_sample() -> None:
    result = run_cli("drivers")
    assert result.returncode == 0, result.stderr
    assert "\nsht3x (sensor, built-in): Sensirion SHT30/SHT31/SHT35" in result.stdout
    assert "repeatability: high" in "\n" + result.stdout
    assert "\nscd4x (sensor" in "\n" + result.stdout
    assert "Sensirion SCD40/SCD41" in "\n" + result.stdout
    assert "co2 [ppm], resolution 1" in "\n" + result.stdout
    assert "\naht20 (sensor" in "\n" + result.stdout
    assert "Aosong AHT20" in "\n" + result.stdout
    assert "\nsht4x (sensor" in "\n" + result.stdout
    assert "Sensirion SHT40/SHT41/SHT43/SHT45" in "\n" + result.stdout


def test_read_simulate_gives_each_climate_sensors_constants_back(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    result = run_cli("read", "--simulate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    values = {r["sensor"]: r["values"] for r in map(json.loads, result.stdout.splitlines())}
    kitchen, balcony = values.pop("kitchen"), values.pop("balcony")
    assert values == EXPECTED
    assert abs(kitchen["temperature"] - 21.5) <= 0.01
    assert abs(kitchen["humidity"] - 40.25) <= 0.008
    assert abs(kitchen["pressure"] - 1001.5) <= 0.0018
    assert abs(kitchen["gas_resistance"] - 52000) <= 52  # the gas ADC's 0.1 %
    assert (balcony["pm2_5"], balcony["pm10"], balcony["particles_0_3"]) == (17, 23, 999)
    assert len(balcony) == 12
