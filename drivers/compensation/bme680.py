"""BME680/BME688 datasheet maths: calibration decode with its signedness, the
floating-point compensation formulas (datasheet 3.3), both gas formulas, the heater's
register codes, and the inverse the emulator needs — pure functions, no bus.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Variant = Literal["bme680", "bme688"]

COEFF1_LENGTH: Final = 23
COEFF2_LENGTH: Final = 14
COEFF3_LENGTH: Final = 5


# --------------------------------------------------------------------------------------------
# Calibration: decode with the datasheet's signedness.


@dataclass(frozen=True, slots=True)
class Calibration:
    """The trimming parameters of one chip (datasheet tables 13 and 14)."""

    par_t1: int
    par_t2: int
    par_t3: int
    par_p1: int
    par_p2: int
    par_p3: int
    par_p4: int
    par_p5: int
    par_p6: int
    par_p7: int
    par_p8: int
    par_p9: int
    par_p10: int
    par_h1: int
    par_h2: int
    par_h3: int
    par_h4: int
    par_h5: int
    par_h6: int
    par_h7: int
    par_g1: int
    par_g2: int
    par_g3: int
    res_heat_range: int
    res_heat_val: int
    range_switching_error: int


#: 0x8A..0xA0: T2 (s16) T3 (s8) - P1 (u16) P2 (s16) P3 (s8) - P4 (s16) P5 (s16) P7 (s8)
#: P6 (s8) - - P8 (s16) P9 (s16) P10 (u8).
_COEFF1: Final = struct.Struct("<hbxHhbxhhbbxxhhB")
#: 0xE1..0xEE: H2 MSB, H2/H1 nibbles, H1 MSB, H3..H5 (s8), H6 (u8), H7 (s8), T1 (u16),
#: G2 (s16), G1 (s8), G3 (s8).
_COEFF2: Final = struct.Struct("<BBBbbbBbHhbb")


def _signed4(nibble: int) -> int:
    return nibble - 16 if nibble & 0x8 else nibble


def decode_calibration(coeff1: bytes, coeff2: bytes, coeff3: bytes) -> Calibration:
    """The calibration from registers 0x8A..0xA0, 0xE1..0xEE and 0x00..0x04.

    Raises:
        ValueError: a block has the wrong length.
    """
    for block, length, where in (
        (coeff1, COEFF1_LENGTH, "0x8A"),
        (coeff2, COEFF2_LENGTH, "0xE1"),
        (coeff3, COEFF3_LENGTH, "0x00"),
    ):
        if len(block) != length:
            raise ValueError(f"calibration block {where} must be {length} bytes, got {len(block)}")
    t2, t3, p1, p2, p3, p4, p5, p7, p6, p8, p9, p10 = _COEFF1.unpack(coeff1)
    h2_msb, e2, h1_msb, h3, h4, h5, h6, h7, t1, g2, g1, g3 = _COEFF2.unpack(coeff2)
    return Calibration(
        par_t1=t1, par_t2=t2, par_t3=t3,
        par_p1=p1, par_p2=p2, par_p3=p3, par_p4=p4, par_p5=p5, par_p6=p6, par_p7=p7,
        par_p8=p8, par_p9=p9, par_p10=p10,
        par_h1=h1_msb << 4 | (e2 & 0x0F),
        par_h2=h2_msb << 4 | e2 >> 4,
        par_h3=h3, par_h4=h4, par_h5=h5, par_h6=h6, par_h7=h7,
        par_g1=g1, par_g2=g2, par_g3=g3,
        res_heat_range=(coeff3[2] >> 4) & 0x03,
        res_heat_val=coeff3[0] - 256 if coeff3[0] & 0x80 else coeff3[0],
        range_switching_error=_signed4(coeff3[4] >> 4),
    )  # fmt: skip


def encode_calibration(cal: Calibration) -> tuple[bytes, bytes, bytes]:
    """The register blocks :func:`decode_calibration` turns back into ``cal``.

    Raises:
        ValueError: a parameter does not fit its register.
    """
    for name in ("par_h1", "par_h2"):
        if not 0 <= getattr(cal, name) <= 0xFFF:
            raise ValueError(f"{name} must fit 12 unsigned bits, got {getattr(cal, name)}")
    if not -8 <= cal.range_switching_error <= 7:
        raise ValueError("range_switching_error must fit 4 signed bits")
    if not 0 <= cal.res_heat_range <= 3:
        raise ValueError("res_heat_range must fit 2 bits")
    try:
        coeff1 = _COEFF1.pack(
            cal.par_t2, cal.par_t3, cal.par_p1, cal.par_p2, cal.par_p3, cal.par_p4, cal.par_p5,
            cal.par_p7, cal.par_p6, cal.par_p8, cal.par_p9, cal.par_p10,
        )  # fmt: skip
        e2 = (cal.par_h2 & 0x0F) << 4 | (cal.par_h1 & 0x0F)
        coeff2 = _COEFF2.pack(
            cal.par_h2 >> 4, e2, cal.par_h1 >> 4, cal.par_h3, cal.par_h4, cal.par_h5,
            cal.par_h6, cal.par_h7, cal.par_t1, cal.par_g2, cal.par_g1, cal.par_g3,
        )  # fmt: skip
        coeff3 = bytes(
            [
                cal.res_heat_val & 0xFF,
                0,
                cal.res_heat_range << 4,
                0,
                (cal.range_switching_error & 0x0F) << 4,
            ]
        )
    except struct.error as e:
        raise ValueError(f"calibration does not fit its registers: {e}") from e
    return coeff1, coeff2, coeff3


# --------------------------------------------------------------------------------------------
# Compensation (datasheet 3.3, floating point): pure functions.


def t_fine(cal: Calibration, adc_t: int) -> float:
    """The fine temperature the other compensations need; ``t_fine / 5120`` is °C."""
    var1 = (adc_t / 16384.0 - cal.par_t1 / 1024.0) * cal.par_t2
    d = adc_t / 131072.0 - cal.par_t1 / 8192.0
    var2 = d * d * (cal.par_t3 * 16.0)
    return var1 + var2


def temperature(cal: Calibration, adc_t: int) -> float:
    """°C."""
    return t_fine(cal, adc_t) / 5120.0


def pressure(cal: Calibration, fine: float, adc_p: int) -> float:
    """Pa; 0 if the calibration would divide by zero."""
    var1 = fine / 2.0 - 64000.0
    var2 = var1 * var1 * (cal.par_p6 / 131072.0)
    var2 = var2 + var1 * cal.par_p5 * 2.0
    var2 = var2 / 4.0 + cal.par_p4 * 65536.0
    var1 = (cal.par_p3 * var1 * var1 / 16384.0 + cal.par_p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.par_p1
    if var1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.par_p9 * p * p / 2147483648.0
    var2 = p * (cal.par_p8 / 32768.0)
    var3 = (p / 256.0) ** 3 * (cal.par_p10 / 131072.0)
    return p + (var1 + var2 + var3 + cal.par_p7 * 128.0) / 16.0


def humidity(cal: Calibration, fine: float, adc_h: int) -> float:
    """%RH, clamped to 0..100 as Bosch's code does."""
    temp_comp = fine / 5120.0
    var1 = adc_h - (cal.par_h1 * 16.0 + cal.par_h3 / 2.0 * temp_comp)
    var2 = var1 * (
        cal.par_h2
        / 262144.0
        * (1.0 + cal.par_h4 / 16384.0 * temp_comp + cal.par_h5 / 1048576.0 * temp_comp**2)
    )
    var3 = cal.par_h6 / 16384.0
    var4 = cal.par_h7 / 2097152.0
    rh = var2 + (var3 + var4 * temp_comp) * var2 * var2
    return min(100.0, max(0.0, rh))


#: The BME680's gas range lookup tables (datasheet table 16, floating-point version).
GAS_RANGE_K1: Final = (
    1.0, 1.0, 1.0, 1.0, 1.0, 0.99, 1.0, 0.992, 1.0, 1.0, 0.998, 0.995, 1.0, 0.99, 1.0, 1.0,
)  # fmt: skip
GAS_RANGE_K2: Final = (
    8000000.0, 4000000.0, 2000000.0, 1000000.0, 499500.4995, 248262.1648, 125000.0,
    63004.03226, 31281.28128, 15625.0, 7812.5, 3906.25, 1953.125, 976.5625, 488.28125,
    244.140625,
)  # fmt: skip


def gas_resistance_bme680(cal: Calibration, adc_gas: int, gas_range: int) -> float:
    """Ω, from the BME680's 10-bit gas ADC (0x2A/0x2B) and range (datasheet 3.4.1)."""
    var1 = (1340.0 + 5.0 * cal.range_switching_error) * GAS_RANGE_K1[gas_range]
    return var1 * GAS_RANGE_K2[gas_range] / (adc_gas - 512.0 + var1)


def gas_resistance_bme688(adc_gas: int, gas_range: int) -> float:
    """Ω, from the BME688's 10-bit gas ADC (0x2C/0x2D) and range (BME688 datasheet)."""
    var1 = 262144 >> gas_range
    var2 = 4096.0 + 3.0 * (adc_gas - 512.0)
    return 1000000.0 * var1 / var2


def heater_resistance_code(cal: Calibration, target_c: float, ambient_c: float) -> int:
    """``res_heat_x`` for a heater set-point of ``target_c`` at ``ambient_c`` (datasheet
    3.3.5); targets above 400 °C are limited to 400, as Bosch's code does."""
    target = min(target_c, 400.0)
    var1 = cal.par_g1 / 16.0 + 49.0
    var2 = cal.par_g2 / 32768.0 * 0.0005 + 0.00235
    var3 = cal.par_g3 / 1024.0
    var4 = var1 * (1.0 + var2 * target)
    var5 = var4 + var3 * ambient_c
    code = 3.4 * (
        var5 * (4.0 / (4.0 + cal.res_heat_range)) * (1.0 / (1.0 + cal.res_heat_val * 0.002)) - 25.0
    )
    return min(255, max(0, int(code)))


def gas_wait_code(duration_ms: int) -> int:
    """``gas_wait_x``: 6-bit milliseconds times a factor 1, 4, 16 or 64 in bits 7:6
    (0x59 is 25 x 4 = 100 ms); 4032 ms and more is 0xFF."""
    if duration_ms >= 0xFC0:
        return 0xFF
    factor = 0
    while duration_ms > 0x3F:
        duration_ms //= 4
        factor += 1
    return duration_ms + factor * 64


def gas_wait_ms(code: int) -> int:
    """The heating time a ``gas_wait_x`` code stands for."""
    return (code & 0x3F) * (1, 4, 16, 64)[code >> 6]


def tph_duration_s(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Time of the T, P and H conversions plus the gas conversion's overhead, as Bosch's
    API computes it (1963 µs per oversampling cycle, plus switching and wake-up)."""
    cycles = osrs_t + osrs_p + osrs_h
    us = cycles * 1963 + 477 * 4 + 477 * 5 + 500
    return (us // 1000 + 1) / 1000.0


# --------------------------------------------------------------------------------------------
# The inverse, for the emulator.

#: A plausible chip's calibration (signed fields negative where real chips have them so).
TYPICAL_CALIBRATION: Final = Calibration(
    par_t1=26137, par_t2=26233, par_t3=3,
    par_p1=36306, par_p2=-10393, par_p3=88, par_p4=6879, par_p5=-97, par_p6=30, par_p7=38,
    par_p8=-2373, par_p9=-3124, par_p10=30,
    par_h1=780, par_h2=1012, par_h3=0, par_h4=45, par_h5=20, par_h6=120, par_h7=-100,
    par_g1=-23, par_g2=-9731, par_g3=18,
    res_heat_range=1, res_heat_val=46, range_switching_error=-2,
)  # fmt: skip


def nearest(convert: Callable[[int], float], target: float, bits: int) -> int:
    """The raw count in ``[0, 2**bits)`` whose conversion is nearest ``target`` (conversions
    are monotonic in the count, rising or falling)."""
    lo, hi = 0, (1 << bits) - 1
    rising = convert(hi) >= convert(lo)
    while lo < hi:
        mid = (lo + hi) // 2
        if (convert(mid) >= target) if rising else (convert(mid) <= target):
            hi = mid
        else:
            lo = mid + 1
    candidates = [c for c in (lo - 1, lo, lo + 1) if 0 <= c < 1 << bits]
    return min(candidates, key=lambda c: abs(convert(c) - target))


def raw_gas(cal: Calibration, variant: Variant, ohms: float) -> tuple[int, int]:
    """``(adc, range)`` whose conversion is nearest ``ohms``, over every range."""
    best: tuple[float, int, int] | None = None
    for gas_range in range(16):

        def convert(adc: int, r: int = gas_range) -> float:
            if variant == "bme688":
                return gas_resistance_bme688(adc, r)
            return gas_resistance_bme680(cal, adc, r)

        adc = nearest(convert, ohms, 10)
        error = abs(convert(adc) - ohms)
        if best is None or error < best[0]:
            best = (error, adc, gas_range)
    assert best is not None
    return best[1], best[2]
