"""Home Assistant discovery of the probe, light, analog and power drivers: the device_class
and unit of each quantity, and a mapped ADC channel announced as what it is mapped to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config.load import parse_config
from agent.homeassistant.discovery import components
from agent.mqtt.topics import Topics

CONFIG = """\
device_id: gh2
sensors:
  tank: {driver: ds18b20, rom: 28-0316a2795bff}
  light: {driver: bh1750}
  pot: {driver: ads1015, address: 0x49, gain: 2}
  soil:
    driver: ads1115
    map: {points: [[2.8, 0], [1.2, 100]], quantity: moisture, unit: "%", device_class: moisture}
  solar: {driver: ina219}
homeassistant: {discovery: true}
"""


@pytest.fixture(scope="module")
def cmps() -> dict[str, dict[str, Any]]:
    config = parse_config(CONFIG, file="c.yaml", base_dir=Path("."), environ={})
    return components(config, Topics("edge/gh2"))


@pytest.mark.parametrize(
    ("entity", "unit", "device_class"),
    [
        ("tank_temperature", "°C", "temperature"),
        ("light_illuminance", "lx", "illuminance"),
        ("pot_voltage", "V", "voltage"),
        ("soil_moisture", "%", "moisture"),
        ("solar_bus_voltage", "V", "voltage"),
        ("solar_shunt_voltage", "mV", "voltage"),
        ("solar_current", "A", "current"),
        ("solar_power", "W", "power"),
    ],
)
def test_each_quantity_has_its_unit_and_class(
    cmps: dict[str, dict[str, Any]], entity: str, unit: str, device_class: str
) -> None:
    assert cmps[entity]["unit_of_measurement"] == unit
    assert cmps[entity]["device_class"] == device_class
    assert cmps[entity]["state_class"] == "measurement"


def test_a_mapped_channel_is_not_announced_as_volts(cmps: dict[str, dict[str, Any]]) -> None:
    assert "soil_voltage" not in cmps
    assert "value_json['values']['moisture']" in cmps["soil_moisture"]["value_template"]


PWM_CONFIG = """\
device_id: gh3
outputs:
  lamp: {driver: pwm, pin: 18}
  fan: {driver: pwm, pin: 19, ha_component: fan}
  pump: {driver: relay, pin: 17}
homeassistant: {discovery: true}
"""


def test_pwm_outputs_are_a_dimmable_light_and_a_fan() -> None:
    config = parse_config(PWM_CONFIG, file="c.yaml", base_dir=Path("."), environ={})
    topics = Topics("edge/gh3")
    cmps = components(config, topics)
    lamp, fan = cmps["output_lamp"], cmps["output_fan"]
    assert lamp["p"] == "light" and fan["p"] == "fan" and cmps["output_pump"]["p"] == "switch"
    assert lamp["brightness_scale"] == 100
    assert lamp["brightness_command_topic"] == topics.output_set("lamp")
    assert lamp["brightness_state_topic"] == topics.output_state("lamp")
    assert fan["percentage_command_topic"] == topics.output_set("fan")
    for entity, key in ((lamp, "brightness"), (fan, "percentage")):
        # What Home Assistant sends renders to a command the agent accepts.
        rendered = entity[f"{key}_command_template"].replace("{{ value }}", "40")
        from agent.commands.parse import parse_command

        assert parse_command(rendered.encode(), retained=False, now=0, max_age=30).level == 40
        assert entity[f"{key}_value_template"] == "{{ value_json.level | round(0) | int }}"
        assert entity["payload_on"] == "on" and entity["payload_off"] == "off"
