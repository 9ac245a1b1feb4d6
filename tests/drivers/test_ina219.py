"""INA219 on a fake bus: TI's calibration formula and the datasheet's configure/measure/
calculate example (table 3) as real register words, CNVR and OVF, PGA and BRNG choice."""

from __future__ import annotations

import msgspec
import pytest

from drivers.errors import BusError, HardwareConfigError, ImplausibleReading, MeasurementTimeout
from drivers.hardware import SimulatedHardware
from drivers.ina219 import (
    INA219,
    SPEC,
    EmulatedINA219,
    INA219Options,
    bus_volts,
    calibration,
    config_word,
    pga_for,
)
from drivers.sim.fake_smbus import FakeSMBus
from drivers.sim.signal import SimulatedSignal


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Table3:
    """The datasheet's example chip (10 A, VCM 12 V, 2 mΩ, ±40 mV, 16 V): fixed result
    registers; records what the driver writes."""

    def __init__(self, bus_words: list[int]) -> None:
        self.bus_words = bus_words
        self.written: dict[int, int] = {}

    def read_registers(self, register: int, length: int) -> bytes:
        word = {
            0x01: 0x07D0,
            0x02: self.bus_words.pop(0) if len(self.bus_words) > 1 else self.bus_words[0],
            0x03: 0x1766,
            0x04: 0x2710,
        }.get(register, self.written.get(register, 0))
        return word.to_bytes(2, "big")[:length]

    def write_registers(self, register: int, data: bytes) -> None:
        self.written[register] = int.from_bytes(data, "big")


def table3_sensor(chip: object, clock: FakeClock) -> INA219:
    bus = FakeSMBus()
    bus.attach(0x40, chip)  # type: ignore[arg-type]
    return INA219(
        bus=bus,
        shunt_ohms=0.002,
        max_current=10.0,
        current_lsb=0.001,
        max_bus_voltage=16,
        sleep=clock.sleep,
        clock=clock,
    )


def test_calibration_is_tis_formula() -> None:
    # Table 3: Current_LSB 1 mA, R_shunt 2 mΩ -> 0x5000 = 20480.
    assert calibration(0.001, 0.002) == 0x5000
    # The breakout board: 0.1 Ω, 3.2 A -> LSB = 3.2 / 32768, trunc(0.04096 / (LSB x 0.1)).
    assert calibration(3.2 / 32768, 0.1) == 4194


def test_pga_is_the_narrowest_range_that_holds_the_shunt_drop() -> None:
    assert [pga_for(v) for v in (0.02, 0.04, 0.05, 0.1, 0.32)] == [0b00, 0b00, 0b01, 0b10, 0b11]
    with pytest.raises(HardwareConfigError, match="320 mV"):
        pga_for(0.33)


def test_config_is_table_3s_with_a_triggered_mode() -> None:
    # Table 3's step 1 writes 0x019F (continuous); we trigger each conversion (MODE 011).
    assert config_word(bus_32v=False, pga=0b00, averaging=1) == 0x019F & ~0b100
    assert config_word(bus_32v=True, pga=0b11, averaging=128) == 0b0_0_1_11_1111_1111_011


def test_bus_voltage_register() -> None:
    assert bus_volts(0x5D98) == pytest.approx(11.98)  # table 3, step 3: 0BB3h x 4 mV


def test_table_3_through_the_fake_bus() -> None:
    clock = FakeClock()
    chip = Table3([0x5D98, 0x5D98 | 0x2])  # not ready once, then CNVR
    with table3_sensor(chip, clock) as sensor:
        reading = sensor.read()
    assert chip.written == {0x05: 0x5000, 0x00: 0x019B}
    assert reading["shunt_voltage"] == pytest.approx(20.0)
    assert reading["bus_voltage"] == pytest.approx(11.98)
    assert reading["current"] == pytest.approx(10.0)
    assert reading["power"] == pytest.approx(119.8)


def test_overflow_is_an_error_not_a_reading() -> None:
    clock = FakeClock()
    with (
        table3_sensor(Table3([0x5D98 | 0x3]), clock) as sensor,
        pytest.raises(ImplausibleReading, match="OVF"),
    ):
        sensor.read()


def test_no_conversion_ready_is_a_timeout() -> None:
    clock = FakeClock()
    with table3_sensor(Table3([0x5D98]), clock) as sensor, pytest.raises(MeasurementTimeout):
        sensor.read()


def test_nack_is_a_bus_error() -> None:
    bus = FakeSMBus()
    with INA219(bus=bus, sleep=lambda s: None) as sensor, pytest.raises(BusError):
        sensor.read()


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(HardwareConfigError):
        INA219(bus=FakeSMBus(), shunt_ohms=0.1, max_current=4.0)  # 400 mV
    with pytest.raises(HardwareConfigError, match="current_lsb"):
        INA219(bus=FakeSMBus(), max_current=3.2, current_lsb=0.00001)


# -- against the emulator ------------------------------------------------------------------


def emulated(current: float, volts: float, **kwargs: object) -> tuple[INA219, EmulatedINA219]:
    clock = FakeClock()
    shunt = float(kwargs.pop("shunt_ohms", 0.1))  # type: ignore[arg-type]
    chip = EmulatedINA219(
        shunt_ohms=shunt,
        bus_voltage=SimulatedSignal(volts),
        current=SimulatedSignal(current),
        clock=clock,
    )
    bus = FakeSMBus()
    bus.attach(0x40, chip)
    sensor = INA219(bus=bus, shunt_ohms=shunt, sleep=clock.sleep, clock=clock, **kwargs)  # type: ignore[arg-type]
    return sensor, chip


def test_emulated_solar_panel_reads_back() -> None:
    sensor, chip = emulated(1.5, 13.2, max_current=3.2)
    reading = sensor.read()
    assert reading["bus_voltage"] == pytest.approx(13.2, abs=0.004)
    assert reading["shunt_voltage"] == pytest.approx(150.0, abs=0.01)
    assert reading["current"] == pytest.approx(1.5, abs=0.001)
    assert reading["power"] == pytest.approx(19.8, abs=0.02)
    assert chip.regs[0x05] == 4194 and chip.conversions == 1


def test_emulated_reverse_current_is_negative() -> None:
    sensor, _ = emulated(-0.8, 12.0, max_current=2.0)
    reading = sensor.read()
    assert reading["current"] == pytest.approx(-0.8, abs=0.001)
    assert reading["power"] == pytest.approx(9.6, abs=0.02)


def test_emulated_overflow_beyond_the_calibrated_range() -> None:
    # 0.5 A expected, 2 A flowing: the PGA's ±80 mV holds the shunt drop but the current
    # register overflows.
    sensor, _ = emulated(2.0, 12.0, max_current=0.5, current_lsb=0.00002)
    with pytest.raises(ImplausibleReading):
        sensor.read()


def test_calibration_is_rewritten_after_a_chip_reset() -> None:
    sensor, chip = emulated(1.0, 12.0)
    sensor.read()
    chip.write_registers(0x00, b"\x80\x00")  # a brown-out reset
    assert chip.regs[0x05] == 0
    assert sensor.read()["current"] == pytest.approx(1.0, abs=0.001)


def test_options() -> None:
    o = msgspec.convert({"driver": "ina219", "address": 0x45, "averaging": 16}, INA219Options)
    assert (o.shunt_ohms, o.max_current, o.max_bus_voltage) == (0.1, 3.2, 32)
    with pytest.raises(msgspec.ValidationError, match="320 mV"):
        msgspec.convert({"driver": "ina219", "max_current": 5}, INA219Options)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"driver": "ina219", "address": 0x50}, INA219Options)


def test_quantities_follow_the_calibration() -> None:
    o = msgspec.convert({"driver": "ina219", "current_lsb": 0.0001}, INA219Options)
    q = SPEC.quantities_of(o)
    # 0.1 mA LSB + 10 µV / 0.1 Ω + the truncated calibration's error (4096 of 4096 exact).
    assert q["current"].resolution == pytest.approx(0.0002)
    assert q["power"].resolution == pytest.approx(0.002)  # 20 x 0.1 mA
    assert {n: x.device_class for n, x in q.items()} == {
        "bus_voltage": "voltage",
        "shunt_voltage": "voltage",
        "current": "current",
        "power": "power",
    }


def test_simulate_runs_the_driver_on_the_emulator() -> None:
    o = msgspec.convert(
        {"driver": "ina219", "simulation": {"bus_voltage": 5.0, "current": 0.25}}, INA219Options
    )
    with SimulatedHardware(seed=1) as hw:
        SPEC.emulate(o, hw)
        with SPEC.open(o, hw) as sensor:
            reading = sensor.read()  # type: ignore[attr-defined]
    assert reading["bus_voltage"] == pytest.approx(5.0, abs=0.004)
    assert reading["current"] == pytest.approx(0.25, abs=0.001)
