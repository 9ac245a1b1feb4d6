"""Home Assistant discovery of the climate and air-quality drivers' quantities: the right
device_class, state_class and unit for each, and none where Home Assistant has no class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config.load import parse_config
from agent.homeassistant.discovery import components
from agent.mqtt.topics import Topics

CONFIG = """\
device_id: gh1
sensors:
  leaf: {driver: sht3x}
  bed: {driver: sht4x}
  box: {driver: aht20}
  office: {driver: scd4x}
  kitchen: {driver: bme680}
  balcony: {driver: pms5003}
homeassistant: {discovery: true}
"""


@pytest.fixture(scope="module")
def cmps() -> dict[str, dict[str, Any]]:
    config = parse_config(CONFIG, file="c.yaml", base_dir=Path("."), environ={})
    return components(config, Topics("edge/gh1"))


@pytest.mark.parametrize(
    ("entity", "unit", "device_class"),
    [
        ("leaf_temperature", "°C", "temperature"),
        ("leaf_humidity", "%", "humidity"),
        ("bed_temperature", "°C", "temperature"),
        ("bed_humidity", "%", "humidity"),
        ("box_temperature", "°C", "temperature"),
        ("box_humidity", "%", "humidity"),
        ("office_co2", "ppm", "carbon_dioxide"),
        ("office_temperature", "°C", "temperature"),
        ("office_humidity", "%", "humidity"),
        ("kitchen_pressure", "hPa", "atmospheric_pressure"),
        ("kitchen_gas_resistance", "Ω", None),  # Home Assistant has no class for it
        ("balcony_pm1_0", "µg/m³", "pm1"),
        ("balcony_pm2_5", "µg/m³", "pm25"),
        ("balcony_pm10", "µg/m³", "pm10"),
        ("balcony_pm2_5_cf1", "µg/m³", "pm25"),
        ("balcony_particles_0_3", "particles/0.1L", None),
        ("balcony_particles_10", "particles/0.1L", None),
    ],
)
def test_each_quantity_has_its_home_assistant_unit_and_class(
    cmps: dict[str, dict[str, Any]], entity: str, unit: str, device_class: str | None
) -> None:
    entry = cmps[entity]
    assert entry["unit_of_measurement"] == unit
    assert entry.get("device_class") == device_class
    assert entry["state_class"] == "measurement"
