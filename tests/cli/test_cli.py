"""The CLI as a user runs it: check, read, drivers, schema."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.mqtt import ROOT, run_cli


def test_check_prints_a_one_line_summary() -> None:
    result = run_cli("check", "-c", str(ROOT / "config/example.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "OK" in lines[0] and "sensors" in lines[0]


def test_check_uses_edge_agent_config_env(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("device_id: from-env\n")
    result = run_cli("check", env={"EDGE_AGENT_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "from-env" in result.stdout


def test_read_simulated_prints_one_valid_reading_per_sensor(tmp_path: Path) -> None:
    # The demo's DHT fails 10 % of its reads on purpose; a one-shot read must not.
    config = tmp_path / "demo.yaml"
    text = (ROOT / "config/demo.yaml").read_text()
    assert "fail_rate: 0.1" in text
    config.write_text(text.replace("fail_rate: 0.1", "fail_rate: 0.0"))
    result = run_cli("read", "--simulate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    demo_sensors = _demo_sensor_names()
    assert [r["sensor"] for r in readings] == demo_sensors
    for r in readings:
        assert set(r) == {"sensor", "ts", "seq", "values"}
        assert r["seq"] == 1  # per sensor: each one's first reading, not 1, 2, 3
        assert r["ts"].endswith("Z") and len(r["ts"]) == len("2026-11-23T04:11:27.123Z")
        assert r["values"] and all(isinstance(v, int | float) for v in r["values"].values())


def test_read_one_named_sensor() -> None:
    result = run_cli("read", "--simulate", "-c", str(ROOT / "config/demo.yaml"), "pi")
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["sensor"] for x in result.stdout.splitlines()] == ["pi"]


def test_read_unknown_sensor_fails() -> None:
    result = run_cli("read", "--simulate", "-c", str(ROOT / "config/demo.yaml"), "nope")
    assert result.returncode == 1
    assert "nope" in result.stderr


def test_read_failing_sensor_exits_1_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("sensors:\n  pi:\n    driver: system\n    thermal_zone: 42\n")
    result = run_cli("read", "-c", str(config))
    assert result.returncode == 1
    assert "thermal_zone42" in result.stderr
    assert "Traceback" not in result.stderr


def test_drivers_lists_every_driver_with_quantities_and_defaults() -> None:
    from drivers.registry import DRIVERS

    result = run_cli("drivers")
    assert result.returncode == 0
    for name in DRIVERS:
        assert f"\n{name} (" in "\n" + result.stdout
    assert "soc_temperature [°C]" in result.stdout
    assert "interval: 60.0" in result.stdout


def test_drivers_lists_the_derived_quantities_a_driver_can_have() -> None:
    result = run_cli("drivers")
    text = "\n" + result.stdout
    bme280 = text.split("\nbme280 (")[1].split("\n\n")[0]
    bmp280 = text.split("\nbmp280 (")[1].split("\n\n")[0]
    assert "    vpd [kPa], resolution 0.001" in bme280
    assert "sea_level_pressure [hPa]" in bmp280 and "dew_point" not in bmp280


def test_read_shows_filtered_and_raw_values(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "sensors:\n"
        "  air:\n    driver: bme280\n"
        "    simulation: {temperature: 25.0, humidity: 50.0, pressure: 1000}\n"
        "    filters:\n      temperature: [{offset: -2.0}]\n"
        "    derived: [vpd]\n"
    )
    result = run_cli("read", "--simulate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    (reading,) = map(json.loads, result.stdout.splitlines())
    assert set(reading) == {"sensor", "ts", "seq", "values", "raw"}
    assert abs(reading["raw"]["temperature"] - 25.0) <= 0.01
    assert set(reading["raw"]) == {"temperature", "humidity", "pressure"}
    assert abs(reading["values"]["temperature"] - 23.0) <= 0.01
    # 50 % at 25 °C is 56.38 % at 23 °C (tests/filters/test_derived.py), within the
    # simulated chip's resolution
    assert abs(reading["values"]["humidity"] - 56.38) <= 0.03
    # VPD of 23 °C / 56.38 %: 2.80251 kPa * (1 - 0.5638)
    assert abs(reading["values"]["vpd"] - 1.2225) <= 0.003


def test_schema_is_json_schema_of_the_config() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "Config" in schema["$defs"]


def _demo_sensor_names() -> list[str]:
    from agent.config import load_config

    return list(load_config(ROOT / "config/demo.yaml", environ={}).config.sensors)


def test_every_sensor_driver_reads_its_simulated_constants_back(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "sensors:\n"
        "  air:\n    driver: bme280\n    address: 0x77\n"
        "    simulation: {temperature: 21.5, humidity: 40.25, pressure: 1013.25}\n"
        "  baro:\n    driver: bmp280\n    simulation: {temperature: -5.25, pressure: 990}\n"
        "  shed:\n    driver: dht22\n    pin: 4\n"
        "    simulation: {temperature: 12.3, humidity: 71.2}\n"
        "  cellar:\n    driver: dht11\n    pin: 17\n"
        "    simulation: {temperature: 9, humidity: 80}\n"
        "  pi:\n    driver: system\n    simulation: {soc_temperature: 51.25}\n"
    )
    result = run_cli("read", "--simulate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    values = {r["sensor"]: r["values"] for r in map(json.loads, result.stdout.splitlines())}
    assert abs(values["air"]["temperature"] - 21.5) <= 0.01
    assert abs(values["air"]["humidity"] - 40.25) <= 0.008
    assert abs(values["air"]["pressure"] - 1013.25) <= 0.0018
    assert set(values["baro"]) == {"temperature", "pressure"}
    assert abs(values["baro"]["temperature"] + 5.25) <= 0.01
    assert abs(values["baro"]["pressure"] - 990) <= 0.0016
    assert values["shed"] == {"temperature": 12.3, "humidity": 71.2}
    assert values["cellar"] == {"temperature": 9, "humidity": 80}
    assert values["pi"]["soc_temperature"] == 51.25


def test_simulated_bus_faults_are_reported_not_crashed(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "sensors:\n  air:\n    driver: bme280\n    simulation: {fail_rate: 1.0}\n"
        "  pi:\n    driver: system\n"
    )
    result = run_cli("read", "--simulate", "-c", str(config))
    assert result.returncode == 1
    assert "air: BusError" in result.stderr
    assert "Traceback" not in result.stderr
    assert [json.loads(x)["sensor"] for x in result.stdout.splitlines()] == ["pi"]
