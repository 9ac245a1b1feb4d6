"""The PMS5003 driver: frames and commands as the Plantower manual lays them out, found in
a stream with garbage, checked for length and checksum, passive reads, sleep/wake with the
fan's warm-up, and the emulator behind ``--simulate``."""

from __future__ import annotations

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers import pms5003, registry
from drivers.errors import BusError, ChecksumError, MeasurementTimeout, TransientError
from drivers.hardware import SimulatedHardware
from drivers.pms5003 import (
    PMS5003,
    WORDS,
    EmulatedPMS5003,
    PMS5003Options,
    command,
    decode_frame,
    encode_frame,
)
from drivers.sim.fake_serial import FakeSerialPort
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver
from tests.drivers.fakeclock import FakeClock

#: A data frame written out byte by byte: 42 4D, length 28, 13 words, checksum.
FRAME = bytes.fromhex(
    "424d001c"
    "0005"
    "0008"
    "0009"  # PM1.0, PM2.5, PM10, CF=1
    "0005"
    "0008"
    "0009"  # the same, atmospheric environment
    "03b1"
    "011d"
    "0038"
    "0006"
    "0002"
    "0000"  # > 0.3, 0.5, 1, 2.5, 5, 10 µm per 0.1 L
    "9700"  # reserved (version and error code on a PMS7003)
    "0280"  # the sum of the 30 bytes before it
)
VALUES = {
    "pm1_0_cf1": 5, "pm2_5_cf1": 8, "pm10_cf1": 9, "pm1_0": 5, "pm2_5": 8, "pm10": 9,
    "particles_0_3": 945, "particles_0_5": 285, "particles_1_0": 56,
    "particles_2_5": 6, "particles_5_0": 2, "particles_10": 0,
}  # fmt: skip


def test_the_commands_are_the_manuals_bytes() -> None:
    assert command(0xE2) == bytes.fromhex("424de2000001 71".replace(" ", ""))  # passive read
    assert command(0xE1, 0) == bytes.fromhex("424de100000170")  # passive mode
    assert command(0xE1, 1) == bytes.fromhex("424de100010171")  # active mode
    assert command(0xE4, 0) == bytes.fromhex("424de400000173")  # sleep
    assert command(0xE4, 1) == bytes.fromhex("424de400010174")  # wake up


def test_a_frame_written_out_decodes_to_its_words() -> None:
    assert sum(FRAME[:30]) == 0x0280
    assert decode_frame(FRAME) == VALUES


@pytest.mark.parametrize("position", [4, 9, 17, 29, 30, 31])
def test_a_corrupted_byte_is_a_checksum_error(position: int) -> None:
    frame = bytearray(FRAME)
    frame[position] ^= 0x10
    with pytest.raises(ChecksumError):
        decode_frame(bytes(frame))


def test_a_frame_of_another_length_is_refused() -> None:
    # A PMS3003 sends length 20 (24-byte frames).
    frame = bytearray(FRAME)
    frame[3] = 0x14
    with pytest.raises(ChecksumError, match="length 20"):
        decode_frame(bytes(frame))


@given(st.fixed_dictionaries({name: st.integers(0, 0xFFFF) for name in WORDS}))
def test_frames_round_trip(words: dict[str, int]) -> None:
    assert decode_frame(encode_frame(words)) == words


# -- the driver on a fake UART ---------------------------------------------------------------


def emulated(
    **device_kwargs: object,
) -> tuple[FakeSerialPort, EmulatedPMS5003, FakeClock]:
    clock = FakeClock()
    signals = {name: SimulatedSignal(float(value)) for name, value in VALUES.items()}
    device_kwargs.setdefault("signals", signals)
    device = EmulatedPMS5003(clock=clock, **device_kwargs)  # type: ignore[arg-type]
    return FakeSerialPort(device), device, clock


def open_emulated(port: FakeSerialPort, clock: FakeClock, **kwargs: object) -> PMS5003:
    return PMS5003(port=port, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def test_open_switches_to_passive_mode_and_a_read_asks_for_one_frame() -> None:
    port, device, clock = emulated()
    sensor = open_emulated(port, clock)
    assert device.mode == "passive"
    assert port.writes[0] == command(0xE1, 0)
    port.writes.clear()
    assert sensor.read() == {name: float(v) for name, v in VALUES.items()}
    assert port.writes == [command(0xE2)]


def test_the_frame_is_found_behind_garbage_and_a_false_start() -> None:
    port, _, clock = emulated()
    sensor = open_emulated(port, clock)

    class Noisy(EmulatedPMS5003):
        def _frame(self) -> bytes:
            # Noise, a lone 0x42, a 42 4D with a wrong length, then the real frame.
            return b"\x00\xff\x42\x13\x42\x4d\x00\x07\x01\x02" + super()._frame()

    noisy = Noisy(signals=port.device.signals, clock=clock)  # type: ignore[union-attr]
    noisy.mode = "passive"
    port.device = noisy
    assert sensor.read()["pm2_5"] == 8.0


def test_acknowledgements_and_active_mode_leftovers_are_skipped() -> None:
    port, _, clock = emulated()
    sensor = open_emulated(port, clock)
    # What a sensor left in active mode leaves in the buffer is cleared before the request;
    # an acknowledgement (42 4D 00 04 ...) arriving after it is skipped.
    port.inject(FRAME[:17])
    ack = bytes.fromhex("424d0004e1000174")
    original = port.device.received  # type: ignore[union-attr]
    port.device.received = lambda data: ack + original(data)  # type: ignore[union-attr,method-assign]
    assert sensor.read()["particles_0_3"] == 945.0


def test_a_stream_cut_mid_frame_is_a_timeout_never_a_reading() -> None:
    port, _, clock = emulated()
    sensor = open_emulated(port, clock)
    port.cut_after = 20
    with pytest.raises(MeasurementTimeout, match="ended"):
        sensor.read()
    port.cut_after = None
    assert sensor.read()


def test_a_corrupted_checksum_through_the_port_is_a_checksum_error() -> None:
    port, device, clock = emulated()
    sensor = open_emulated(port, clock)
    device.corrupt_next = 1
    with pytest.raises(ChecksumError, match="checksum"):
        sensor.read()


def test_silence_is_a_timeout_that_names_the_wiring() -> None:
    clock = FakeClock()
    port = FakeSerialPort(None)
    with pytest.raises(MeasurementTimeout, match="TX"):
        sensor = open_emulated(port, clock)
        sensor.read()


def test_a_failing_port_is_a_bus_error() -> None:
    port, _, clock = emulated()
    sensor = open_emulated(port, clock)
    port.close()
    with pytest.raises(BusError):
        sensor.read()


def test_a_sensor_found_asleep_is_woken_and_the_warm_up_waited() -> None:
    port, device, clock = emulated(asleep=True)
    sensor = open_emulated(port, clock)
    assert not device.asleep
    start = clock.now
    reading = sensor.read()
    assert clock.now - start >= 30.0 - 0.3
    assert reading["pm2_5"] == 8.0  # not the zeros of a fan still spinning up


def test_sleep_between_reads_wakes_waits_30_s_reads_and_sleeps_again() -> None:
    port, device, clock = emulated()
    sensor = open_emulated(port, clock, sleep_between_reads=True)
    assert device.asleep
    for _ in range(2):
        start = clock.now
        assert sensor.read()["pm10"] == 9.0
        assert clock.now - start >= 30.0
        assert device.asleep
    wakes = [c for c in device.commands if c == (0xE4, 1)]
    assert len(wakes) == 2


def test_a_failed_read_still_puts_the_sensor_back_to_sleep() -> None:
    port, device, clock = emulated()
    sensor = open_emulated(port, clock, sleep_between_reads=True)
    device.corrupt_next = 1
    with pytest.raises(ChecksumError):
        sensor.read()
    assert device.asleep


def test_close_is_idempotent_and_closes_an_owned_port() -> None:
    port, _, clock = emulated()
    sensor = open_emulated(port, clock, owns_port=True)
    sensor.close()
    sensor.close()
    assert port.closed
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


# -- options, registry, simulation -----------------------------------------------------------


def options(**config: object) -> PMS5003Options:
    return msgspec.convert({"driver": "pms5003", **config}, PMS5003Options)


def test_the_sample_is_valid_options() -> None:
    (config,) = yaml.safe_load(pms5003.SAMPLE).values()
    config["interval"] = 300.0  # "5m" is parsed by the agent's config layer
    assert msgspec.convert(config, PMS5003Options).sleep_between_reads


def test_sleeping_between_reads_needs_an_interval_longer_than_the_warm_up() -> None:
    with pytest.raises(msgspec.ValidationError, match="interval"):
        options(sleep_between_reads=True, interval=45.0)


def test_the_default_timeout_covers_the_warm_up() -> None:
    assert options().timeout == 45.0


def test_registered_with_home_assistant_classes() -> None:
    assert registry.DRIVERS["pms5003"] is pms5003.SPEC
    q = pms5003.SPEC.quantities
    assert (q["pm2_5"].device_class, q["pm2_5"].unit) == ("pm25", "µg/m³")
    assert (q["pm1_0"].device_class, q["pm10"].device_class) == ("pm1", "pm10")
    assert q["particles_0_3"].device_class is None


def test_simulate_gives_the_configured_constants_back() -> None:
    opts = options(simulation={"pm2_5": 42, "particles_0_3": 1234})
    with SimulatedHardware(seed=1) as hardware:
        pms5003.SPEC.emulate(opts, hardware)
        with pms5003.SPEC.open(opts, hardware) as sensor:
            reading = sensor.read()  # type: ignore[attr-defined]
    assert reading["pm2_5"] == 42.0
    assert reading["particles_0_3"] == 1234.0


def test_a_simulated_fail_rate_gives_only_transient_errors() -> None:
    opts = options(simulation={"fail_rate": 0.5})
    kinds: set[type[Exception]] = set()
    with SimulatedHardware(seed=2, virtual_time=True) as hardware:
        pms5003.SPEC.emulate(opts, hardware)
        for _ in range(20):  # open asks for a frame too: it may fail the same way
            try:
                sensor = pms5003.SPEC.open(opts, hardware)
                break
            except TransientError as e:
                kinds.add(type(e))
        for _ in range(30):
            try:
                sensor.read()  # type: ignore[attr-defined]
            except TransientError as e:
                kinds.add(type(e))
        sensor.close()
    assert kinds == {ChecksumError, MeasurementTimeout}


def test_passes_the_conformance_kit() -> None:
    check_driver(pms5003.SPEC)


def test_passes_the_conformance_kit_running_continuously() -> None:
    check_driver(pms5003.SPEC, options={"sleep_between_reads": False, "interval": 10.0})
