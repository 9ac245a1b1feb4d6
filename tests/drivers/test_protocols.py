"""The shared protocol pieces: CRC-8 variants and I2C transactions."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import BusError, ChecksumError
from drivers.protocols.crc import maxim_crc8, sensirion_crc8, sensirion_encode, sensirion_words
from drivers.protocols.i2c import Commands, Registers
from drivers.sim.fake_smbus import CommandChip, FakeSMBus


def test_sensirion_crc_matches_the_datasheet_example() -> None:
    # SHT3x datasheet 4.12: CRC of 0xBEEF is 0x92.
    assert sensirion_crc8(b"\xbe\xef") == 0x92


def test_maxim_crc_of_a_ds18b20_datasheet_scratchpad_checks() -> None:
    # A scratchpad as the w1-therm driver prints it: the CRC over all nine bytes is 0.
    scratchpad = bytes.fromhex("500555007fa50c10") + bytes(
        [maxim_crc8(bytes.fromhex("500555007fa50c10"))]
    )
    assert maxim_crc8(scratchpad) == 0


def test_maxim_crc_of_the_application_note_rom() -> None:
    # Maxim AN27's worked example: ROM 02 1C B8 01 00 00 00 has CRC 0xA2.
    assert maxim_crc8(bytes.fromhex("021cb801000000")) == 0xA2


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10))
def test_sensirion_words_round_trip(words: list[int]) -> None:
    assert sensirion_words(sensirion_encode(*words), "chip") == words


@given(
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
    st.data(),
)
def test_any_single_bit_flip_is_a_checksum_error(words: list[int], data: st.DataObject) -> None:
    raw = bytearray(sensirion_encode(*words))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ChecksumError):
        sensirion_words(bytes(raw), "chip")


def test_a_partial_word_is_a_checksum_error() -> None:
    with pytest.raises(ChecksumError, match="whole number"):
        sensirion_words(b"\xbe\xef", "chip")


class Echo(CommandChip):
    """Answers each command with the command bytes reversed."""

    def __init__(self) -> None:
        self.last = b""

    def command(self, data: bytes) -> None:
        self.last = data

    def answer(self, length: int) -> bytes:
        return self.last[::-1][:length].ljust(length, b"\xff")


def test_commands_go_to_a_command_chip_as_plain_writes_and_reads() -> None:
    bus = FakeSMBus()
    bus.attach(0x44, Echo())
    chip = Commands(bus, 0x44, "echo")
    chip.send(b"\x24\x00")
    assert chip.receive(3) == b"\x00\x24\xff"
    assert bus.log == [(0x44, "w", b"\x24\x00"), (0x44, "r", b"\x00\x24\xff")]


def test_a_chosen_command_nacks_and_becomes_a_bus_error() -> None:
    bus = FakeSMBus()
    bus.attach(0x44, Echo())
    bus.fail_command(0x44, b"\x24")
    chip = Commands(bus, 0x44, "echo")
    chip.send(b"\x30\xa2")  # another command passes
    with pytest.raises(BusError, match="echo") as info:
        chip.send(b"\x24\x00")
    assert info.value.errno == errno.EREMOTEIO
    chip.send(b"\x24\x00")  # only once


def test_the_nth_transaction_fails_with_the_chosen_errno() -> None:
    bus = FakeSMBus()
    bus.attach(0x44, Echo())
    bus.fail_next(0x44, skip=1, error=errno.EIO)
    chip = Commands(bus, 0x44, "echo")
    chip.send(b"\x01")
    with pytest.raises(BusError) as info:
        chip.receive(1)
    assert info.value.errno == errno.EIO


class Memory:
    """A 256-byte register file."""

    def __init__(self) -> None:
        self.cells = bytearray(256)

    def read_registers(self, register: int, length: int) -> bytes:
        return bytes(self.cells[register : register + length])

    def write_registers(self, register: int, data: bytes) -> None:
        self.cells[register : register + len(data)] = data


def test_registers_read_and_write_words_big_endian() -> None:
    bus = FakeSMBus()
    bus.attach(0x40, Memory())
    regs = Registers(bus, 0x40, "ina")
    regs.write_word(0x05, 0x1000)
    assert regs.read_word(0x05) == 0x1000
    assert regs.read(0x05, 2) == b"\x10\x00"


def test_an_absent_address_is_a_bus_error_naming_the_chip() -> None:
    with pytest.raises(BusError, match=r"ina: reading register 0x00"):
        Registers(FakeSMBus(), 0x40, "ina").read(0x00)
