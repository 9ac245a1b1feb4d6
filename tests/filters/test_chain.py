"""A sensor's chain: humidity correction, filters, derived quantities, publish policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.load import parse_config
from agent.filters.chain import SensorChain, reading_gap_s, sensor_quantities
from agent.filters.config import PublishOptions
from agent.filters.publish import PublishPolicy
from agent.runtime.hardware_setup import spec_of
from drivers.base import SensorOptions


def sensor(body: str, driver: str = "bme280") -> SensorOptions:
    text = f"sensors:\n  air:\n    driver: {driver}\n" + "".join(
        f"    {line}\n" for line in body.strip().splitlines()
    )
    return parse_config(text, file="c.yaml", base_dir=Path("."), environ={}).sensors["air"]


def chain(body: str, driver: str = "bme280") -> SensorChain:
    options = sensor(body, driver)
    return SensorChain.for_sensor(spec_of(options), options)


def test_no_processing_publishes_the_rounded_values() -> None:
    c = chain("interval: 10s")
    out = c.process({"temperature": 21.5349, "humidity": 40.0, "pressure": 1000.0}, 0.0)
    assert out.published == out.filtered == out.raw
    assert out.raw["temperature"] == 21.53


def test_a_temperature_offset_also_corrects_humidity_keeping_the_vapour_pressure() -> None:
    c = chain("filters:\n  temperature:\n    - offset: -2.0")
    out = c.process({"temperature": 25.0, "humidity": 50.0, "pressure": 1000.0}, 0.0)
    # es(25) = 6.112 * exp(17.62 * 25 / 268.12) = 31.6006 hPa, e = 15.8003 hPa;
    # es(23) = 6.112 * exp(17.62 * 23 / 266.12) = 28.0251 hPa; RH = 15.8003 / 28.0251 = 56.379 %
    assert out.filtered["temperature"] == 23.0
    assert out.filtered["humidity"] == pytest.approx(56.379, abs=0.008)
    assert out.raw["humidity"] == 50.0


def test_humidity_correction_can_be_turned_off() -> None:
    c = chain("filters:\n  temperature:\n    - offset: -2.0\nhumidity_follows_temperature: false")
    out = c.process({"temperature": 25.0, "humidity": 50.0, "pressure": 1000.0}, 0.0)
    assert out.filtered["humidity"] == 50.0


def test_humidity_correction_uses_only_the_calibrations_then_the_humidity_chain() -> None:
    c = chain(
        "filters:\n"
        "  temperature: [{multiply: 1.0}, {offset: -2.0}, {round: 0}]\n"
        "  humidity: [{offset: 1.0}]"
    )
    out = c.process({"temperature": 25.0, "humidity": 50.0, "pressure": 1000.0}, 0.0)
    assert out.filtered["humidity"] == pytest.approx(57.379, abs=0.008)


def test_a_chip_without_humidity_on_the_die_is_not_corrected() -> None:
    # the system driver has no humidity; a BMP280 neither: nothing to correct, no error
    c = chain("filters:\n  temperature:\n    - offset: -2.0", driver="bmp280")
    out = c.process({"temperature": 25.0, "pressure": 1000.0}, 0.0)
    assert out.filtered == {"temperature": 23.0, "pressure": 1000.0}


def test_derived_quantities_come_from_the_filtered_values_of_the_same_sample() -> None:
    c = chain(
        "filters:\n  temperature:\n    - offset: 0.5\n"
        "humidity_follows_temperature: false\n"
        "derived: [dew_point, absolute_humidity, vpd]\n"
        "altitude: 120"
    )
    out = c.process({"temperature": 19.5, "humidity": 50.0, "pressure": 1000.0}, 0.0)
    # from 20.0 °C and 50 %: see test_derived for the arithmetic
    assert out.filtered["dew_point"] == 9.26
    assert out.filtered["absolute_humidity"] == 8.62
    assert out.filtered["vpd"] == 1.166  # 0.5 * 23.3260 / 10
    # 1000 * (1 - 0.78 / (20 + 0.78 + 273.15)) ** -5.257 = 1014.06 hPa
    assert out.filtered["sea_level_pressure"] == pytest.approx(1014.06, abs=0.011)
    derived = ["dew_point", "absolute_humidity", "vpd", "sea_level_pressure"]
    assert list(c.quantities)[-4:] == derived


def test_a_derived_quantity_waits_for_its_inputs() -> None:
    c = chain(
        "filters:\n  temperature:\n"
        "    - median: {window_size: 3, send_every: 3, send_first_at: 3}\n"
        "derived: [dew_point]"
    )
    raw = {"temperature": 20.0, "humidity": 50.0, "pressure": 1000.0}
    first = c.process(raw, 0.0)
    assert "temperature" not in first.published and "dew_point" not in first.published
    assert first.published == {"humidity": 50.0, "pressure": 1000.0}
    c.process(raw, 10.0)
    third = c.process(raw, 20.0)
    assert third.published["dew_point"] == 9.26


def test_a_sample_with_every_quantity_held_back_publishes_nothing() -> None:
    c = chain("filters:\n  temperature: [{throttle: 30s}]", driver="bmp280")
    c2 = chain(
        "filters:\n  temperature: [{throttle: 30s}]\n  pressure: [{throttle: 30s}]",
        driver="bmp280",
    )
    raw = {"temperature": 20.0, "pressure": 1000.0}
    assert c.process(raw, 0.0).published == raw
    assert c.process(raw, 10.0).published == {"pressure": 1000.0}
    assert c2.process(raw, 0.0).published == raw
    assert c2.process(raw, 10.0).published == {}


def test_on_change_with_heartbeat() -> None:
    policy = PublishPolicy(
        PublishOptions(on_change={"t": 0.5, "h": "10%"}, heartbeat=60.0), interval_s=10.0
    )
    assert policy.select({"t": 20.0, "h": 50.0, "p": 1.0}, 0) == {"t": 20.0, "h": 50.0, "p": 1.0}
    assert policy.select({"t": 20.4, "h": 54.0, "p": 1.0}, 10) == {"p": 1.0}
    # 20.5 moved 0.5 from the last *published* 20.0; 55.0 is 10 % of 50
    assert policy.select({"t": 20.5, "h": 55.0}, 20) == {"t": 20.5, "h": 55.0}
    assert policy.select({"t": 20.6, "h": 55.0}, 30) == {}
    # a heartbeat after 60 s (less half an interval of slack) publishes unchanged values
    assert policy.select({"t": 20.6, "h": 55.0}, 74.9) == {}
    assert policy.select({"t": 20.6, "h": 55.0}, 75.0) == {"t": 20.6, "h": 55.0}


def test_on_change_zero_publishes_every_change() -> None:
    policy = PublishPolicy(PublishOptions(on_change={"t": 0}), interval_s=1.0)
    assert [policy.select({"t": v}, i) for i, v in enumerate([1.0, 1.0, 1.01])] == [
        {"t": 1.0},
        {},
        {"t": 1.01},
    ]


def test_derived_quantities_are_quantities_of_the_sensor() -> None:
    options = sensor("derived: [vpd, heat_index]")
    quantities = sensor_quantities(spec_of(options), options)
    assert list(quantities) == ["temperature", "humidity", "pressure", "vpd", "heat_index"]
    assert quantities["vpd"].unit == "kPa"


def test_reading_gap_follows_windows_heartbeat_and_on_change() -> None:
    def gap(body: str) -> float | None:
        options = sensor(body)
        return reading_gap_s(spec_of(options), options)

    assert gap("interval: 10s") == 10
    assert gap("interval: 10s\nfilters: {temperature: [{median: {send_every: 6}}]}") == 10
    every = "filters:\n  " + "\n  ".join(
        f"{q}: [{{sliding_window_moving_average: {{send_every: 6}}}}]"
        for q in ("temperature", "humidity", "pressure")
    )
    assert gap("interval: 10s\n" + every) == 60
    changes = "publish: {on_change: {temperature: 0.1, humidity: 1, pressure: 1}"
    assert gap(f"interval: 10s\n{changes}}}") is None
    assert gap(f"interval: 10s\n{changes}, heartbeat: 5m}}") == 310
