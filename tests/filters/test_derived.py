"""Derived quantities against published values and the formulas written out here."""

from __future__ import annotations

import math

import pytest

from agent.filters import derived as d


def test_saturation_vapour_pressure_uses_sonntag_1990_over_water() -> None:
    # 6.112 * exp(17.62 * 20 / (243.12 + 20)) = 6.112 * exp(1.339313) = 23.3260 hPa
    assert d.saturation_vapour_pressure(20.0) == pytest.approx(23.3260, abs=1e-4)
    assert d.saturation_vapour_pressure(0.0) == 6.112


def test_dew_point_at_20_c_and_50_percent() -> None:
    # gamma = ln(0.5) + 1.339313 = 0.646166; Td = 243.12 * 0.646166 / (17.62 - 0.646166)
    assert d.dew_point(20.0, 50.0) == pytest.approx(9.2552, abs=1e-3)
    # and the published psychrometric value, 9.3 °C
    assert d.dew_point(20.0, 50.0) == pytest.approx(9.3, abs=0.1)


def test_dew_point_equals_temperature_at_saturation() -> None:
    assert d.dew_point(15.0, 100.0) == pytest.approx(15.0, abs=1e-9)


def test_frost_point_inverts_the_ice_curve() -> None:
    # e = 0.8 * 6.112 * exp(17.62 * -5 / 238.12) = 0.8 * 4.22167 = 3.37734 hPa; over ice:
    # ln(3.37734 / 6.112) = -0.593194; Tf = 272.62 * -0.593194 / (22.46 + 0.593194) = -7.0150
    assert d.frost_point(-5.0, 80.0) == pytest.approx(-7.0150, abs=1e-3)
    # the frost point lies between the dew point and the air temperature below 0 °C
    assert d.dew_point(-5.0, 80.0) < d.frost_point(-5.0, 80.0) < -5.0


def test_absolute_humidity_at_20_c_and_50_percent() -> None:
    # e = 11.663 hPa; 1000 * 1166.3 Pa / (461.5 * 293.15 K) = 8.621 g/m³ (tables: 8.65)
    assert d.absolute_humidity(20.0, 50.0) == pytest.approx(8.621, abs=2e-3)


def test_vpd_at_25_c_and_60_percent() -> None:
    # es(25) = 31.6006 hPa; 0.4 * 31.6006 / 10 = 1.2640 kPa
    assert d.vpd(25.0, 60.0) == pytest.approx(1.2640, abs=1e-4)
    assert d.vpd(25.0, 100.0) == 0.0


def fahrenheit(c: float) -> float:
    return c * 9 / 5 + 32


def celsius(f: float) -> float:
    return (f - 32) * 5 / 9


def test_heat_index_rothfusz_matches_noaa_table() -> None:
    # NOAA's table: 90 °F at 70 % -> 106 °F
    assert fahrenheit(d.heat_index(celsius(90), 70)) == pytest.approx(106, abs=0.5)
    # 96 °F at 40 % -> 101 °F
    assert fahrenheit(d.heat_index(celsius(96), 40)) == pytest.approx(101, abs=0.5)


def test_heat_index_below_80_f_is_steadmans_simple_formula() -> None:
    # 0.5 * (70 + 61 + (70 - 68) * 1.2 + 50 * 0.094) = 69.05 °F
    assert fahrenheit(d.heat_index(celsius(70), 50)) == pytest.approx(69.05, abs=1e-9)


def rothfusz(t: float, rh: float) -> float:
    return (
        -42.379
        + 2.04901523 * t
        + 10.14333127 * rh
        - 0.22475541 * t * rh
        - 6.83783e-3 * t**2
        - 5.481717e-2 * rh**2
        + 1.22874e-3 * t**2 * rh
        + 8.5282e-4 * t * rh**2
        - 1.99e-6 * t**2 * rh**2
    )


def test_heat_index_dry_adjustment() -> None:
    # RH 5 % at 100 °F: minus (13 - 5) / 4 * sqrt((17 - 5) / 17)
    expected = rothfusz(100, 5) - 2 * math.sqrt(12 / 17)
    assert fahrenheit(d.heat_index(celsius(100), 5)) == pytest.approx(expected, abs=1e-6)


def test_heat_index_humid_adjustment() -> None:
    # RH 90 % at 85 °F: plus (90 - 85) / 10 * (87 - 85) / 5
    expected = rothfusz(85, 90) + 0.5 * 0.4
    assert fahrenheit(d.heat_index(celsius(85), 90)) == pytest.approx(expected, abs=1e-6)


def test_sea_level_pressure_at_120_m() -> None:
    # 1000 * (1 - 0.78 / (15 + 0.78 + 273.15)) ** -5.257 = 1014.31 hPa
    assert d.sea_level_pressure(1000.0, 15.0, 120.0) == pytest.approx(1014.31, abs=0.01)
    # about 1 hPa per 8.3 m near sea level
    assert d.sea_level_pressure(1000.0, 15.0, 8.3) == pytest.approx(1001.0, abs=0.05)
    assert d.sea_level_pressure(1000.0, 15.0, 0.0) == 1000.0


def test_humidity_at_keeps_the_vapour_pressure() -> None:
    # 50 % at 25 °C: e = 0.5 * 31.6006 = 15.8003 hPa; at 23 °C es = 28.0251 hPa, so
    # RH = 100 * 15.8003 / 28.0251 = 56.379 %
    rh = d.humidity_at(50.0, measured_temperature_c=25.0, true_temperature_c=23.0)
    assert rh == pytest.approx(56.379, abs=1e-3)
    assert d.humidity_at(90.0, measured_temperature_c=25.0, true_temperature_c=20.0) == 100.0


def test_every_derived_quantity_has_units_and_inputs() -> None:
    assert set(d.DERIVED) == {
        "dew_point",
        "frost_point",
        "absolute_humidity",
        "vpd",
        "heat_index",
        "sea_level_pressure",
    }
    assert d.DERIVED["vpd"].quantity.unit == "kPa"
    assert d.DERIVED["sea_level_pressure"].inputs == ("pressure", "temperature")
