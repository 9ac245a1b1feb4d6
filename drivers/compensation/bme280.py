"""Bosch BME280/BMP280 calibration and compensation: the datasheet's integer code, and its
inverse for the emulator.

Pure functions of a :class:`Calibration` and raw ADC counts, with no bus, so they are
tested against the datasheet's worked example directly (BME280 datasheet section 4.2.3 and
8.2; the BMP280 shares the temperature and pressure formulas).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final


@dataclass(frozen=True, slots=True)
class Calibration:
    """The trimming parameters burnt into each chip (datasheet ``dig_T1`` ... ``dig_H6``).

    A BMP280 has no humidity parameters; they stay 0 and are never used.
    """

    dig_t1: int
    dig_t2: int
    dig_t3: int
    dig_p1: int
    dig_p2: int
    dig_p3: int
    dig_p4: int
    dig_p5: int
    dig_p6: int
    dig_p7: int
    dig_p8: int
    dig_p9: int
    dig_h1: int = 0
    dig_h2: int = 0
    dig_h3: int = 0
    dig_h4: int = 0
    dig_h5: int = 0
    dig_h6: int = 0


#: Registers 0x88..0x9F: dig_T1 is unsigned, dig_T2/T3 signed, dig_P1 unsigned, the rest signed.
_TP_FORMAT: Final = struct.Struct("<HhhHhhhhhhhh")
#: Registers 0xE1..0xE7: dig_H2 (s16), dig_H3 (u8), three bytes holding H4/H5, dig_H6 (s8).
_H_FORMAT: Final = struct.Struct("<hBBBBb")
#: Bytes 0x88..0xA1 read at once on a BME280 (0xA0 is reserved, 0xA1 is dig_H1).
CALIB_TP_LENGTH: Final = 26


def _signed12(value: int) -> int:
    """Sign-extend a 12-bit two's-complement value."""
    return value - 0x1000 if value & 0x800 else value


def decode_calibration(block_88: bytes, block_e1: bytes | None = None) -> Calibration:
    """Decode the calibration registers.

    Args:
        block_88: registers 0x88.. on: 24 bytes (to 0x9F) for a BMP280, 26 (to 0xA1, which
            holds dig_H1) for a BME280.
        block_e1: registers 0xE1..0xE7 of a BME280, or ``None`` for a BMP280.

    dig_H4 and dig_H5 are 12-bit *signed* values packed across nibbles (H4 = E4[7:0] E5[3:0],
    H5 = E6[7:0] E5[7:4]); they are sign-extended from bit 11, which drivers that treat them
    as unsigned get wrong for every chip with a negative value.

    Raises:
        ValueError: a block has the wrong length.
    """
    if len(block_88) not in (24, CALIB_TP_LENGTH):
        raise ValueError(f"calibration block 0x88 must be 24 or 26 bytes, got {len(block_88)}")
    t_p = Calibration(*_TP_FORMAT.unpack(block_88[:24]))
    if block_e1 is None:
        return t_p
    if len(block_88) != CALIB_TP_LENGTH:
        raise ValueError("a BME280's calibration block 0x88 must be 26 bytes (to dig_H1)")
    if len(block_e1) != _H_FORMAT.size:
        raise ValueError(f"calibration block 0xE1 must be 7 bytes, got {len(block_e1)}")
    h2, h3, e4, e5, e6, h6 = _H_FORMAT.unpack(block_e1)
    return replace(
        t_p,
        dig_h1=block_88[25],
        dig_h2=h2,
        dig_h3=h3,
        dig_h4=_signed12((e4 << 4) | (e5 & 0x0F)),
        dig_h5=_signed12((e6 << 4) | (e5 >> 4)),
        dig_h6=h6,
    )


def encode_calibration(cal: Calibration) -> tuple[bytes, bytes]:
    """The register bytes that :func:`decode_calibration` turns back into ``cal``.

    Returns:
        ``(block_88, block_e1)``: 26 bytes for 0x88..0xA1 and 7 bytes for 0xE1..0xE7.

    Raises:
        ValueError: a parameter does not fit its register width.
    """
    for name in ("dig_h4", "dig_h5"):
        if not -0x800 <= getattr(cal, name) <= 0x7FF:
            raise ValueError(f"{name} must fit 12 signed bits, got {getattr(cal, name)}")
    if not 0 <= cal.dig_h1 <= 0xFF:
        raise ValueError(f"dig_h1 must fit 8 unsigned bits, got {cal.dig_h1}")
    try:
        t_p = _TP_FORMAT.pack(
            cal.dig_t1, cal.dig_t2, cal.dig_t3, cal.dig_p1, cal.dig_p2, cal.dig_p3,
            cal.dig_p4, cal.dig_p5, cal.dig_p6, cal.dig_p7, cal.dig_p8, cal.dig_p9,
        )  # fmt: skip
        h4, h5 = cal.dig_h4 & 0xFFF, cal.dig_h5 & 0xFFF
        e5 = ((h5 & 0x0F) << 4) | (h4 & 0x0F)
        humidity = _H_FORMAT.pack(cal.dig_h2, cal.dig_h3, h4 >> 4, e5, h5 >> 4, cal.dig_h6)
    except struct.error as e:
        raise ValueError(f"calibration does not fit its registers: {e}") from e
    return t_p + bytes([0, cal.dig_h1]), humidity


def compensate_temperature(cal: Calibration, adc_t: int) -> tuple[int, int]:
    """``BME280_compensate_T_int32`` (BME280 datasheet 4.2.3, BMP280 3.11.3).

    Returns:
        ``(temperature, t_fine)``: temperature in 0.01 °C (2508 is 25.08 °C), and the fine
        temperature that pressure and humidity compensation need.
    """
    var1 = (((adc_t >> 3) - (cal.dig_t1 << 1)) * cal.dig_t2) >> 11
    delta = (adc_t >> 4) - cal.dig_t1
    var2 = (((delta * delta) >> 12) * cal.dig_t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def _c_div(numerator: int, denominator: int) -> int:
    """C's integer division, which truncates towards zero (Python's ``//`` floors)."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator < 0) == (denominator < 0) else -quotient


def compensate_pressure(cal: Calibration, t_fine: int, adc_p: int) -> int:
    """``BME280_compensate_P_int64`` (BME280 datasheet 4.2.3, BMP280 3.11.3).

    Returns:
        Pressure in Pa as Q24.8 (1/256 Pa: 24674867 is 96386.2 Pa), or 0 when the
        calibration would divide by zero, as the datasheet's code does.
    """
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.dig_p6
    var2 = var2 + ((var1 * cal.dig_p5) << 17)
    var2 = var2 + (cal.dig_p4 << 35)
    var1 = ((var1 * var1 * cal.dig_p3) >> 8) + ((var1 * cal.dig_p2) << 12)
    var1 = (((1 << 47) + var1) * cal.dig_p1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _c_div(((p << 31) - var2) * 3125, var1)
    var1 = (cal.dig_p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.dig_p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.dig_p7 << 4)


def compensate_humidity(cal: Calibration, t_fine: int, adc_h: int) -> int:
    """``bme280_compensate_H_int32`` (BME280 datasheet 4.2.3).

    Returns:
        Relative humidity as Q22.10 (1/1024 %RH: 47445 is 46.333 %RH), clamped to 0..100 %.
    """
    x = t_fine - 76800
    x = ((((adc_h << 14) - (cal.dig_h4 << 20) - (cal.dig_h5 * x)) + 16384) >> 15) * (
        (
            (((((x * cal.dig_h6) >> 10) * (((x * cal.dig_h3) >> 11) + 32768)) >> 10) + 2097152)
            * cal.dig_h2
            + 8192
        )
        >> 14
    )
    x = x - (((((x >> 15) * (x >> 15)) >> 7) * cal.dig_h1) >> 4)
    x = min(max(x, 0), 419430400)
    return x >> 12


def typical_measurement_s(temperature: int, pressure: int, humidity: int) -> float:
    """Typical forced-mode conversion time for these oversampling factors (0 = skipped).

    BME280 datasheet 9.1; it also matches the BMP280's table 13.
    """
    ms = 1.0 + 2.0 * temperature
    ms += 2.0 * pressure + 0.5 if pressure else 0.0
    ms += 2.0 * humidity + 0.5 if humidity else 0.0
    return ms / 1000.0


def max_measurement_s(temperature: int, pressure: int, humidity: int) -> float:
    """Maximum forced-mode conversion time for these oversampling factors (datasheet 9.1)."""
    ms = 1.25 + 2.3 * temperature
    ms += 2.3 * pressure + 0.575 if pressure else 0.0
    ms += 2.3 * humidity + 0.575 if humidity else 0.0
    return ms / 1000.0


# Calibrations of real chips, for tests and the emulator.

#: A real chip's calibration: T/P from the BMP280 datasheet's worked example, H typical.
TYPICAL_CALIBRATION: Final = Calibration(
    dig_t1=27504, dig_t2=26435, dig_t3=-1000,
    dig_p1=36477, dig_p2=-10685, dig_p3=3024, dig_p4=2855, dig_p5=140,
    dig_p6=-7, dig_p7=15500, dig_p8=-14600, dig_p9=6000,
    dig_h1=75, dig_h2=362, dig_h3=0, dig_h4=313, dig_h5=50, dig_h6=30,
)  # fmt: skip

#: A calibration with negative dig_H4, dig_H5 and dig_H6, which naive decoders get wrong.
#: With it, humidity below about 10 %RH is out of the ADC's reach at high temperatures.
NEGATIVE_CALIBRATION: Final = Calibration(
    dig_t1=28009, dig_t2=25654, dig_t3=-1000,
    dig_p1=39145, dig_p2=-10750, dig_p3=3024, dig_p4=5996, dig_p5=-146,
    dig_p6=-7, dig_p7=9900, dig_p8=-10230, dig_p9=4285,
    dig_h1=75, dig_h2=365, dig_h3=200, dig_h4=-5, dig_h5=-50, dig_h6=-10,
)  # fmt: skip


# The inverse: physical values -> raw counts, for the emulator.


def _nearest(compensate: Callable[[int], int], target: int, bits: int) -> int:
    """The raw count in ``[0, 2**bits)`` whose compensated value is nearest ``target``.

    Compensation is monotonic in the raw count (rising or falling), so a search for the
    first count at or past the target, then the better of it and its neighbours, is exact.
    The search splits its bracket where a straight line through the bracket's ends says
    the target is (pressure and humidity are nearly linear in their counts: ~8 steps
    instead of 20), and halves it instead when that made little progress twice running or
    cannot help (a flat stretch, the target already at an end): the count it finds is the
    one plain bisection finds.
    """
    lo, hi = 0, (1 << bits) - 1
    x0, f0 = lo, compensate(lo)
    x1, f1 = hi, compensate(hi)
    rising = f1 >= f0
    slow = 0
    while lo < hi:
        width = hi - lo
        if slow >= 2 or f1 in (f0, target):
            mid = (lo + hi) // 2
        else:
            mid = min(max(x0 + (target - f0) * (x1 - x0) // (f1 - f0), lo), hi - 1)
        value = compensate(mid)
        if (value >= target) if rising else (value <= target):
            hi, x1, f1 = mid, mid, value
        else:
            lo, x0, f0 = mid + 1, mid, value
        slow = slow + 1 if hi - lo > width // 2 else 0
    candidates = [c for c in (lo - 1, lo, lo + 1) if 0 <= c < 1 << bits]
    return min(candidates, key=lambda c: abs(compensate(c) - target))


def raw_temperature(cal: Calibration, celsius: float) -> int:
    """The 20-bit ``adc_T`` for which the integer compensation gives ``celsius``."""
    target = round(celsius * 100)
    return _nearest(lambda adc: compensate_temperature(cal, adc)[0], target, 20)


def raw_pressure(cal: Calibration, t_fine: int, hpa: float) -> int:
    """The 20-bit ``adc_P`` for which the integer compensation gives ``hpa`` at ``t_fine``."""
    target = round(hpa * 25600)
    return _nearest(lambda adc: compensate_pressure(cal, t_fine, adc), target, 20)


def raw_humidity(cal: Calibration, t_fine: int, percent: float) -> int:
    """The 16-bit ``adc_H`` for which the integer compensation gives ``percent`` at
    ``t_fine``."""
    target = round(percent * 1024)
    return _nearest(lambda adc: compensate_humidity(cal, t_fine, adc), target, 16)
