"""Derived quantities: dew point, frost point, absolute humidity, VPD, heat index and
sea-level pressure, computed from the filtered values of one sample.

Constants, named so they can be checked:

- Saturation vapour pressure, Magnus form ``e_s(T) = C * exp(A * T / (B + T))`` hPa, T in
  °C, with Sonntag (1990) constants: over water ``A = 17.62, B = 243.12 °C, C = 6.112
  hPa`` (valid -45..60 °C); over ice ``A = 22.46, B = 272.62 °C, C = 6.112 hPa`` (-65..0 °C).
- Vapour pressure from relative humidity (which sensors report over water):
  ``e = RH / 100 * e_s,water(T)``.
- Dew point: the T at which ``e_s,water(T) = e``; frost point: the T at which
  ``e_s,ice(T) = e``; both inverted in closed form from the Magnus formula.
- Absolute humidity: ``rho_v = e / (R_v * T_K)`` with ``R_v = 461.5 J/(kg K)``, in g/m³.
- VPD (of the air, leaf temperature = air temperature): ``e_s,water(T) - e``, in kPa.
- Heat index: NOAA's (the Rothfusz regression with NOAA's two adjustments, and Steadman's
  simple formula below 80 °F), computed in °F and returned in °C.
- Sea-level pressure: the barometric formula for a standard lapse rate
  ``L = 0.0065 K/m`` and exponent ``g M / (R L) = 5.257``, with the measured temperature as
  the station temperature: ``p0 = p * (1 - L h / (T + L h + 273.15)) ** -5.257``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drivers.base import Quantity

#: Magnus constants over water (Sonntag 1990): A, B (°C), C (hPa).
WATER_A, WATER_B, WATER_C = 17.62, 243.12, 6.112
#: Magnus constants over ice (Sonntag 1990): A, B (°C), C (hPa).
ICE_A, ICE_B, ICE_C = 22.46, 272.62, 6.112
#: Specific gas constant of water vapour, J/(kg K).
R_VAPOUR = 461.5
#: Standard temperature lapse rate, K/m, and the barometric exponent g*M/(R*L).
LAPSE_RATE = 0.0065
BAROMETRIC_EXPONENT = 5.257
KELVIN = 273.15


def saturation_vapour_pressure(temperature_c: float) -> float:
    """Over water, hPa (Magnus, Sonntag 1990)."""
    return WATER_C * math.exp(WATER_A * temperature_c / (WATER_B + temperature_c))


def vapour_pressure(temperature_c: float, humidity_rh: float) -> float:
    """hPa, from a relative humidity (%) over water."""
    return humidity_rh / 100 * saturation_vapour_pressure(temperature_c)


def humidity_at(
    humidity_rh: float, *, measured_temperature_c: float, true_temperature_c: float
) -> float:
    """The relative humidity at ``true_temperature_c`` of air whose RH was measured as
    ``humidity_rh`` at ``measured_temperature_c``: the vapour pressure is kept. Clamped to
    0..100 %."""
    e = vapour_pressure(measured_temperature_c, humidity_rh)
    return min(100.0, max(0.0, 100 * e / saturation_vapour_pressure(true_temperature_c)))


def _magnus_inverse(e_hpa: float, a: float, b: float, c: float) -> float:
    gamma = math.log(e_hpa / c)
    return b * gamma / (a - gamma)


def dew_point(temperature_c: float, humidity_rh: float) -> float:
    """°C; needs humidity > 0."""
    return _magnus_inverse(vapour_pressure(temperature_c, humidity_rh), WATER_A, WATER_B, WATER_C)


def frost_point(temperature_c: float, humidity_rh: float) -> float:
    """°C: where the air's vapour pressure saturates over ice; meaningful below 0 °C."""
    return _magnus_inverse(vapour_pressure(temperature_c, humidity_rh), ICE_A, ICE_B, ICE_C)


def absolute_humidity(temperature_c: float, humidity_rh: float) -> float:
    """g/m³ of water vapour."""
    e_pa = vapour_pressure(temperature_c, humidity_rh) * 100
    return 1000 * e_pa / (R_VAPOUR * (temperature_c + KELVIN))


def vpd(temperature_c: float, humidity_rh: float) -> float:
    """kPa: how much more vapour the air could hold."""
    es = saturation_vapour_pressure(temperature_c)
    return (es - vapour_pressure(temperature_c, humidity_rh)) / 10


def heat_index(temperature_c: float, humidity_rh: float) -> float:
    """°C, by NOAA's procedure (www.wpc.ncep.noaa.gov/html/heatindex_equation.shtml)."""
    t = temperature_c * 9 / 5 + 32
    rh = humidity_rh
    simple = 0.5 * (t + 61.0 + (t - 68.0) * 1.2 + rh * 0.094)
    if (simple + t) / 2 < 80:
        hi = simple
    else:
        hi = (
            -42.379
            + 2.04901523 * t
            + 10.14333127 * rh
            - 0.22475541 * t * rh
            - 0.00683783 * t * t
            - 0.05481717 * rh * rh
            + 0.00122874 * t * t * rh
            + 0.00085282 * t * rh * rh
            - 0.00000199 * t * t * rh * rh
        )
        if rh < 13 and 80 <= t <= 112:
            hi -= (13 - rh) / 4 * math.sqrt((17 - abs(t - 95)) / 17)
        elif rh > 85 and 80 <= t <= 87:
            hi += (rh - 85) / 10 * (87 - t) / 5
    return (hi - 32) * 5 / 9


def sea_level_pressure(pressure_hpa: float, temperature_c: float, altitude_m: float) -> float:
    """hPa at sea level for a station at ``altitude_m``."""
    lh = LAPSE_RATE * altitude_m
    ratio: float = (1 - lh / (temperature_c + lh + KELVIN)) ** -BAROMETRIC_EXPONENT
    return pressure_hpa * ratio


@dataclass(frozen=True)
class Derived:
    """A derived quantity: its units and what it is computed from."""

    name: str
    quantity: Quantity
    #: The chip quantities it needs, in the order ``compute`` takes them.
    inputs: tuple[str, ...]
    #: From the inputs' filtered values and the sensor's altitude (m, or None).
    compute: Callable[[Mapping[str, float], float | None], float]


def _th(f: Callable[[float, float], float]) -> Callable[[Mapping[str, float], float | None], float]:
    return lambda v, _alt: f(v["temperature"], v["humidity"])


def _slp(v: Mapping[str, float], altitude: float | None) -> float:
    assert altitude is not None
    return sea_level_pressure(v["pressure"], v["temperature"], altitude)


_TH = ("temperature", "humidity")

#: Every derived quantity, by name.
DERIVED: dict[str, Derived] = {
    d.name: d
    for d in (
        Derived(
            "dew_point",
            Quantity("°C", 0.01, "dew point (Magnus, Sonntag 1990, over water)", "temperature"),
            _TH,
            _th(dew_point),
        ),
        Derived(
            "frost_point",
            Quantity("°C", 0.01, "frost point (Magnus, Sonntag 1990, over ice)", "temperature"),
            _TH,
            _th(frost_point),
        ),
        Derived(
            "absolute_humidity",
            Quantity("g/m³", 0.01, "water vapour per volume of air"),
            _TH,
            _th(absolute_humidity),
        ),
        Derived(
            "vpd",
            Quantity("kPa", 0.001, "vapour pressure deficit of the air", "pressure"),
            _TH,
            _th(vpd),
        ),
        Derived(
            "heat_index",
            Quantity("°C", 0.01, "heat index (NOAA, Rothfusz)", "temperature"),
            _TH,
            _th(heat_index),
        ),
        Derived(
            "sea_level_pressure",
            Quantity("hPa", 0.01, "pressure reduced to sea level", "atmospheric_pressure"),
            ("pressure", "temperature"),
            _slp,
        ),
    )
}
