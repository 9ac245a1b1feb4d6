"""The SCD4x driver: the datasheet's example transactions as real bytes, the open sequence
(stop first, serial, compensation, ASC), data-ready polling over a one-measurement buffer,
the modes, close, and the emulator behind ``--simulate``."""

from __future__ import annotations

import msgspec
import pytest
import yaml

from drivers import registry, scd4x
from drivers.errors import (
    BusError,
    ChecksumError,
    HardwareConfigError,
    MeasurementTimeout,
    TransientError,
    WrongDevice,
)
from drivers.hardware import SimulatedHardware
from drivers.scd4x import EmulatedSCD4x, SCD4x, SCD4xOptions, command
from drivers.sim.fake_smbus import CommandChip, FakeSMBus, nack
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver
from tests.drivers.fakeclock import FakeClock

# The datasheet's examples (SCD4x datasheet, chapter 3), bytes as on the wire.
#: read_measurement: 500 ppm, 25 °C, 37 %RH.
EXAMPLE_MEASUREMENT = bytes.fromhex("01f4336667a25eb93c")
#: get_serial_number: 0xf896 0x9f07 0x3bbe = 273325796834238.
EXAMPLE_SERIAL = bytes.fromhex("f896319f07c23bbe89")
#: set_sensor_altitude to 1950 m.
EXAMPLE_ALTITUDE = bytes.fromhex("2427079e09")
#: set_ambient_pressure to 98700 Pa.
EXAMPLE_PRESSURE = bytes.fromhex("e00003db42")


class ScriptedSCD4x(CommandChip):
    """Answers commands with bytes written down from the datasheet; records every write."""

    def __init__(self, measurement: bytes = EXAMPLE_MEASUREMENT) -> None:
        self.writes: list[bytes] = []
        self.answers = {
            0x3682: EXAMPLE_SERIAL,
            0xE4B8: bytes.fromhex("800604"),  # data ready: low 11 bits non-zero
            0xEC05: measurement,
        }
        self.pending = b""

    def command(self, data: bytes) -> None:
        self.writes.append(data)
        self.pending = self.answers.get(int.from_bytes(data[:2], "big"), b"")

    def answer(self, length: int) -> bytes:
        if not self.pending:
            raise nack()
        out, self.pending = self.pending[:length], b""
        return out


def scripted(chip: ScriptedSCD4x, **kwargs: object) -> SCD4x:
    bus = FakeSMBus()
    bus.attach(0x62, chip)
    clock = FakeClock()
    return SCD4x(bus=bus, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def test_the_datasheet_measurement_reads_500_ppm_25_degrees_37_percent() -> None:
    sensor = scripted(ScriptedSCD4x())
    assert sensor.read() == {"co2": 500.0, "temperature": 25.0, "humidity": 37.0}


def test_the_datasheet_serial_number_is_decoded() -> None:
    assert scripted(ScriptedSCD4x()).serial_number == 273325796834238


def test_the_altitude_is_sent_as_the_datasheet_example() -> None:
    chip = ScriptedSCD4x()
    scripted(chip, altitude_m=1950)
    assert EXAMPLE_ALTITUDE in chip.writes


def test_the_ambient_pressure_is_sent_as_the_datasheet_example() -> None:
    chip = ScriptedSCD4x()
    scripted(chip, ambient_pressure_hpa=987.0)
    assert EXAMPLE_PRESSURE in chip.writes


def test_open_stops_first_then_reads_the_serial_configures_and_starts() -> None:
    chip = ScriptedSCD4x()
    scripted(chip, automatic_self_calibration=False)
    assert [w[:2].hex() for w in chip.writes] == [
        "3f86",  # stop_periodic_measurement: a chip left running refuses the rest
        "3682",  # get_serial_number
        "241d",  # set_temperature_offset
        "2427",  # set_sensor_altitude
        "2416",  # set_automatic_self_calibration_enabled
        "21b1",  # start_periodic_measurement
    ]
    assert bytes.fromhex("2416000081") in chip.writes  # ASC off, with the CRC of 0x0000


def test_the_temperature_offset_word_is_offset_times_65535_over_175() -> None:
    chip = ScriptedSCD4x()
    scripted(chip, temperature_offset=4.0)
    (written,) = [w for w in chip.writes if w[:2] == b"\x24\x1d"]
    assert int.from_bytes(written[2:4], "big") == round(4 * 65535 / 175) == 0x05DA


@pytest.mark.parametrize(
    "measurement",
    [
        bytes.fromhex("01f4346667a25eb93c"),
        bytes.fromhex("01f4336667a35eb93c"),
        bytes.fromhex("01f4336667a25eb93d"),
        bytes.fromhex("01f4336667a2"),
    ],
)
def test_a_corrupted_or_short_measurement_is_a_checksum_error_never_a_reading(
    measurement: bytes,
) -> None:
    with pytest.raises(ChecksumError):
        scripted(ScriptedSCD4x(measurement)).read()


def test_a_serial_number_that_fails_its_crc_is_a_wrong_device() -> None:
    chip = ScriptedSCD4x()
    chip.answers[0x3682] = bytes.fromhex("f896329f07c23bbe89")
    with pytest.raises(WrongDevice, match="not an SCD4x"):
        scripted(chip)


@pytest.mark.parametrize("word", [0x0000, 0xFFFF])
def test_an_all_zero_or_all_one_serial_number_is_a_wrong_device(word: int) -> None:
    chip = ScriptedSCD4x()
    chip.answers[0x3682] = command(0, word, word, word)[2:]
    with pytest.raises(WrongDevice):
        scripted(chip)


# -- the emulated chip -----------------------------------------------------------------------


def emulated(**chip_kwargs: object) -> tuple[FakeSMBus, EmulatedSCD4x, FakeClock]:
    clock = FakeClock()
    chip = EmulatedSCD4x(clock=clock, **chip_kwargs)  # type: ignore[arg-type]
    bus = FakeSMBus()
    bus.attach(0x62, chip)
    return bus, chip, clock


def open_emulated(bus: FakeSMBus, clock: FakeClock, **kwargs: object) -> SCD4x:
    return SCD4x(bus=bus, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def test_a_chip_left_measuring_by_a_previous_run_is_stopped_and_configured() -> None:
    bus, chip, clock = emulated(starts_measuring=True)
    open_emulated(bus, clock, altitude_m=420, automatic_self_calibration=False)
    assert chip.altitude == 420
    assert chip.asc is False
    assert chip.state == "periodic"


def test_a_linked_pressure_is_sent_while_measuring_and_only_when_it_changes() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock)
    assert chip.ambient_pressure is None
    sensor.receive("pressure", 987.2)  # from a BME280 next to it, say
    sensor.read()
    assert chip.ambient_pressure == 987  # hPa: the datasheet example's word, 0x03DB
    assert chip.state == "periodic"  # set while measuring, no stop needed
    sent = chip.commands.count(scd4x.SET_AMBIENT_PRESSURE)
    sensor.receive("pressure", 987.4)  # the same whole hPa: nothing to send
    sensor.read()
    assert chip.commands.count(scd4x.SET_AMBIENT_PRESSURE) == sent
    sensor.receive("pressure", 1001.6)
    sensor.read()
    assert chip.ambient_pressure == 1002
    sensor.receive("pressure", 5.0)  # not a plausible ambient pressure: ignored
    sensor.receive("temperature", 1000.0)  # not what it takes
    sensor.read()
    assert chip.ambient_pressure == 1002


def test_without_the_stop_a_running_chip_nacks_configuration() -> None:
    bus, _, _ = emulated(starts_measuring=True)
    with pytest.raises(OSError):
        bus.i2c_rdwr(*_write(0x62, command(scd4x.SET_ALTITUDE, 100)))


def _write(address: int, data: bytes) -> list[object]:
    from smbus2 import i2c_msg

    return [i2c_msg.write(address, data)]


def test_the_first_read_waits_for_the_first_measurement_then_each_is_new() -> None:
    co2 = SimulatedSignal(800.0)
    bus, chip, clock = emulated(co2=co2)
    sensor = open_emulated(bus, clock)
    start = clock.now
    first = sensor.read()
    assert first["co2"] == 800.0
    assert 5.0 <= clock.now - start <= 5.0 + 0.2  # the chip's first update after 5 s
    chip.co2 = SimulatedSignal(1234.0)
    second = sensor.read()
    assert second["co2"] == 1234.0
    assert clock.now - start >= 10.0  # the next one, never a repeat of the buffer


def test_a_read_that_finds_no_new_measurement_in_time_is_a_timeout() -> None:
    bus, _, clock = emulated(period_s=60.0)
    sensor = open_emulated(bus, clock)
    with pytest.raises(MeasurementTimeout, match="no new measurement"):
        sensor.read()


def test_read_measurement_on_an_empty_buffer_is_nacked() -> None:
    from smbus2 import i2c_msg

    bus, _, clock = emulated()
    open_emulated(bus, clock)
    bus.i2c_rdwr(*_write(0x62, command(scd4x.READ_MEASUREMENT)))
    with pytest.raises(OSError):
        bus.i2c_rdwr(i2c_msg.read(0x62, 9))


def test_low_power_mode_starts_its_own_command_and_waits_30_s() -> None:
    bus, chip, clock = emulated(temperature=SimulatedSignal(-5.0))
    sensor = open_emulated(bus, clock, mode="low_power")
    assert chip.state == "low_power"
    start = clock.now
    assert sensor.read()["temperature"] == -5.0
    assert clock.now - start >= 30.0


def test_single_shot_on_an_scd41_measures_once_per_read_and_idles() -> None:
    bus, chip, clock = emulated(humidity=SimulatedSignal(71.5))
    sensor = open_emulated(bus, clock, mode="single_shot")
    assert chip.state == "idle"
    assert sensor.read()["humidity"] == 71.5
    assert scd4x.MEASURE_SINGLE_SHOT in chip.commands
    assert chip.state == "idle"


def test_single_shot_on_an_scd40_is_refused() -> None:
    bus, _, clock = emulated(model="scd40")
    with pytest.raises(HardwareConfigError, match="SCD41"):
        open_emulated(bus, clock, model="scd40", mode="single_shot")


def test_close_stops_the_periodic_measurement_once() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock)
    sensor.close()
    assert chip.state == "idle"
    assert chip.commands[-1] == scd4x.STOP_PERIODIC
    count = chip.commands.count(scd4x.STOP_PERIODIC)
    sensor.close()
    assert chip.commands.count(scd4x.STOP_PERIODIC) == count
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


def test_a_driver_reopened_right_after_close_is_not_nacked() -> None:
    bus, _, clock = emulated()
    open_emulated(bus, clock).close()
    open_emulated(bus, clock).close()


def test_a_nack_on_read_measurement_is_a_transient_bus_error() -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    bus.fail_command(0x62, b"\xec\x05")
    with pytest.raises(BusError):
        sensor.read()


def test_the_emulators_corrupted_crc_is_a_checksum_error() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock)
    clock.advance(5.0)
    assert sensor.data_ready()
    chip.corrupt_next = 1
    with pytest.raises(ChecksumError):
        sensor.read()


def test_an_argument_with_a_bad_crc_is_nacked_and_changes_nothing() -> None:
    bus, chip, _ = emulated()
    with pytest.raises(OSError):
        bus.i2c_rdwr(*_write(0x62, bytes.fromhex("2427079e0a")))
    assert chip.altitude == 0


def test_nobody_at_0x62_is_a_bus_error_at_open() -> None:
    clock = FakeClock()
    with pytest.raises(BusError):
        SCD4x(bus=FakeSMBus(), clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize(
    "kwargs",
    [{"altitude_m": 3001}, {"ambient_pressure_hpa": 650.0}, {"temperature_offset": -1.0}],
)
def test_compensation_out_of_the_datasheets_range_is_refused(kwargs: dict[str, object]) -> None:
    bus, _, clock = emulated()
    with pytest.raises(HardwareConfigError):
        open_emulated(bus, clock, **kwargs)


# -- options, registry, simulation -----------------------------------------------------------


def options(**config: object) -> SCD4xOptions:
    return msgspec.convert({"driver": "scd4x", **config}, SCD4xOptions)


def test_the_sample_is_valid_options() -> None:
    (config,) = yaml.safe_load(scd4x.SAMPLE).values()
    config.pop("interval")
    parsed = msgspec.convert(config, SCD4xOptions)
    assert (parsed.mode, parsed.sensor_altitude, parsed.automatic_self_calibration) == (
        "periodic",
        0,
        True,
    )


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"model": "scd40", "mode": "single_shot"}, "mode"),
        ({"mode": "low_power", "interval": 10.0}, "interval"),
        ({"model": "scd41", "mode": "single_shot", "interval": 5.0}, "interval"),
    ],
)
def test_options_refuse_modes_the_chip_cannot_serve(config: dict[str, object], option: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=option):
        options(**config)


@pytest.mark.parametrize(
    "config",
    [
        {"sensor_altitude": -1},
        {"ambient_pressure": 1300},
        {"address": 0x61},
        {"ambient_pressure": 1000, "pressure_from": "air"},
    ],
)
def test_options_refuse_values_out_of_range(config: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        options(**config)


def test_registered_with_its_address_and_the_5_s_minimum() -> None:
    assert registry.DRIVERS["scd4x"] is scd4x.SPEC
    assert scd4x.SPEC.i2c_addresses == (0x62,)
    assert scd4x.SPEC.min_interval_s == 5.0
    assert scd4x.SPEC.quantities["co2"].device_class == "carbon_dioxide"
    assert scd4x.SPEC.quantities["co2"].unit == "ppm"
    assert scd4x.SPEC.links == {"pressure_from": "pressure"}


def test_simulate_gives_the_configured_constants_back() -> None:
    opts = options(simulation={"co2": 1042, "temperature": 22.22, "humidity": 41.0})
    with SimulatedHardware(seed=1) as hardware:
        scd4x.SPEC.emulate(opts, hardware)
        with scd4x.SPEC.open(opts, hardware) as sensor:
            assert isinstance(sensor, SCD4x)
            assert sensor.resource == "i2c-1"
            assert sensor.read() == {"co2": 1042.0, "temperature": 22.22, "humidity": 41.0}


def test_a_simulated_fail_rate_gives_only_transient_errors() -> None:
    opts = options(simulation={"co2": 700, "fail_rate": 0.5})
    with SimulatedHardware(seed=4) as hardware:
        scd4x.SPEC.emulate(opts, hardware)
        sensor = scd4x.SPEC.open(opts, hardware)
        assert isinstance(sensor, SCD4x)
        kinds: set[type[Exception]] = set()
        for _ in range(10):
            try:
                assert sensor.read()["co2"] == 700.0
            except TransientError as e:
                kinds.add(type(e))
        sensor.close()
    assert kinds
    assert kinds <= {BusError, ChecksumError}


def test_passes_the_conformance_kit() -> None:
    check_driver(scd4x.SPEC)


def test_passes_the_conformance_kit_with_other_settings() -> None:
    check_driver(
        scd4x.SPEC, options={"mode": "low_power", "interval": 60.0, "sensor_altitude": 1950}
    )


def test_single_shot_passes_the_conformance_kit() -> None:
    check_driver(scd4x.SPEC, options={"model": "scd41", "mode": "single_shot", "interval": 300.0})
