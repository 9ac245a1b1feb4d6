"""The CRC-8 variants of the chips we drive.

- Sensirion (SHT3x, SHT4x, SCD4x) and Aosong (AHT20): polynomial 0x31 (x⁸ + x⁵ + x⁴ + 1),
  initial value 0xFF, no reflection, no final XOR; the SHT3x datasheet's example is
  0xBEEF → 0x92.
- Maxim/Dallas 1-Wire (DS18B20 ROM ids and scratchpads): the same polynomial, reflected
  (0x8C, least significant bit first), initial value 0; over the whole scratchpad
  including its CRC byte the result is 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.errors import ChecksumError


def crc8_msb(data: Iterable[int], *, polynomial: int = 0x31, initial: int = 0xFF) -> int:
    """CRC-8, most significant bit first (Sensirion, Aosong)."""
    crc = initial
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ polynomial) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def sensirion_crc8(data: Iterable[int]) -> int:
    """Sensirion's CRC-8 of a 16-bit word (or any bytes): 0xBEEF → 0x92."""
    return crc8_msb(data)


def maxim_crc8(data: Iterable[int]) -> int:
    """Maxim/Dallas 1-Wire CRC-8 (reflected 0x31, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def sensirion_words(data: bytes, name: str) -> list[int]:
    """Split a Sensirion answer (word, CRC, word, CRC, …) into its 16-bit words.

    Raises:
        ChecksumError: a CRC does not match, or the answer is not whole word+CRC triples.
    """
    if len(data) % 3:
        raise ChecksumError(f"{name}: {len(data)} bytes is not a whole number of words")
    words = []
    for i in range(0, len(data), 3):
        word, crc = data[i : i + 2], data[i + 2]
        expected = sensirion_crc8(word)
        if crc != expected:
            raise ChecksumError(
                f"{name}: CRC mismatch on word {i // 3}: got 0x{crc:02X}, "
                f"computed 0x{expected:02X} over {word.hex()}"
            )
        words.append(int.from_bytes(word, "big"))
    return words


def sensirion_encode(*words: int) -> bytes:
    """Words as a Sensirion chip sends them: each big-endian, followed by its CRC."""
    out = bytearray()
    for word in words:
        raw = (word & 0xFFFF).to_bytes(2, "big")
        out += raw
        out.append(sensirion_crc8(raw))
    return bytes(out)
