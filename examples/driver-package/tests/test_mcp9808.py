"""The MCP9808 against its datasheet, through a fake bus, and the agent's conformance kit."""

from __future__ import annotations

import pytest
from mcp9808_driver import MCP9808, SPEC, EmulatedMCP9808, decode_ta

from drivers.errors import BusError, WrongDevice
from drivers.sim.fake_smbus import FakeSMBus
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver


@pytest.mark.parametrize(
    ("upper", "lower", "celsius"),
    [
        (0x01, 0x94, 25.25),  # 0x0194 / 16
        (0x00, 0x01, 0.0625),  # one LSB
        (0x1F, 0xFF, -0.0625),  # sign set: two's complement
        (0x1E, 0x70, -25.0),
        (0xC1, 0x94, 25.25),  # alert flags (bits 15-13) are not temperature
        (0x07, 0xD0, 125.0),
    ],
)
def test_ta_register_decodes_as_the_datasheet_lays_it_out(
    upper: int, lower: int, celsius: float
) -> None:
    assert decode_ta(upper << 8 | lower) == celsius


def chip(temperature: float) -> tuple[FakeSMBus, EmulatedMCP9808]:
    bus = FakeSMBus()
    emulated = EmulatedMCP9808(SimulatedSignal(temperature), 0.0, 1)
    bus.attach(0x18, emulated)
    return bus, emulated


def test_reads_the_temperature_and_sets_the_resolution_register() -> None:
    bus, emulated = chip(-12.3125)
    with MCP9808(bus=bus, resolution=0.125) as sensor:
        assert emulated.resolution_bits == 2
        assert sensor.read() == {"temperature": -12.25}  # 0.125 °C steps


def test_a_chip_with_another_id_is_refused() -> None:
    bus, emulated = chip(20.0)
    emulated.registers[0x06] = 0x0001
    with pytest.raises(WrongDevice, match="not an MCP9808"):
        MCP9808(bus=bus)


def test_a_nack_is_a_bus_error() -> None:
    bus, _ = chip(20.0)
    sensor = MCP9808(bus=bus)
    bus.fail_next(0x18)
    with pytest.raises(BusError):
        sensor.read()


def test_the_driver_passes_the_conformance_kit() -> None:
    check_driver(SPEC)
