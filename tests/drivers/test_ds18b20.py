"""The DS18B20 driver through a fake w1-therm sysfs tree: the datasheet's bytes, the
kernel's two attributes, the ways probes fail, and many probes on one bus."""

from __future__ import annotations

import asyncio
import errno
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import MemorySequence, Scheduler, SensorSlot
from drivers.ds18b20 import (
    DS18B20,
    SPEC,
    DeviceGone,
    DS18B20Options,
    EmulatedDS18B20,
    attach_probe,
    check_scratchpad,
    decode_temperature,
    encode_temperature,
    list_roms,
    open_ds18b20,
    parse_w1_slave,
)
from drivers.errors import (
    BusError,
    ChecksumError,
    DeviceNotFound,
    HardwareConfigError,
    ImplausibleReading,
    TransientError,
)
from drivers.hardware import SimulatedHardware
from drivers.protocols.crc import maxim_crc8
from drivers.sim.fake_w1 import w1_bus, w1_slave_text
from drivers.sim.signal import SimulatedSignal

ROM = "28-0316a2795bff"

#: DS18B20 datasheet table 1: temperature/data relationship (12-bit).
DATASHEET_TABLE = [
    (0x07D0, 125.0),
    (0x0191, 25.0625),
    (0x00A2, 10.125),
    (0x0008, 0.5),
    (0x0000, 0.0),
    (0xFFF8, -0.5),
    (0xFF5E, -10.125),
    (0xFE6F, -25.0625),
    (0xFC90, -55.0),
]


def scratchpad(raw: int, config: int = 0x7F) -> bytes:
    """Nine scratchpad bytes holding ``raw`` in the temperature register, with a good CRC."""
    body = raw.to_bytes(2, "little") + bytes([0x4B, 0x46, config, 0xFF, 0x0C, 0x10])
    return body + bytes([maxim_crc8(body)])


@pytest.fixture
def hw() -> Iterator[SimulatedHardware]:
    with SimulatedHardware(seed=1) as hardware:
        yield hardware


class Pads:
    """Serves fixed scratchpads (``w1_slave``) and the kernel's ``temperature`` for them."""

    def __init__(self, *pads: bytes) -> None:
        self.pads = list(pads)
        self.reads = 0

    def next(self) -> bytes:
        self.reads += 1
        return self.pads.pop(0) if len(self.pads) > 1 else self.pads[0]

    def w1_slave(self) -> str:
        return w1_slave_text(self.next())

    def temperature(self) -> str:
        pad = self.next()
        if maxim_crc8(pad[:8]) != pad[8]:
            raise OSError(errno.EIO, "Input/output error")
        return f"{int(int.from_bytes(pad[:2], 'little', signed=True) * 1000 / 16)}\n"


def serve(hw: SimulatedHardware, pads: Pads, *, temperature_attr: bool) -> DS18B20:
    attrs = {"w1_slave": pads.w1_slave}
    if temperature_attr:
        attrs["temperature"] = pads.temperature
    device = w1_bus(hw).add(ROM, attrs)
    return DS18B20(device=device, hardware=hw)


# -- the datasheet's numbers ---------------------------------------------------------------


@pytest.mark.parametrize(("raw", "celsius"), DATASHEET_TABLE)
def test_datasheet_table_decodes(raw: int, celsius: float) -> None:
    lsb, msb = raw & 0xFF, raw >> 8
    assert decode_temperature(lsb, msb) == celsius
    assert encode_temperature(celsius) == bytes([lsb, msb])


@pytest.mark.parametrize("temperature_attr", [False, True], ids=["w1_slave", "temperature"])
@pytest.mark.parametrize(("raw", "celsius"), DATASHEET_TABLE)
def test_datasheet_table_through_the_kernel_attributes(
    hw: SimulatedHardware, raw: int, celsius: float, temperature_attr: bool
) -> None:
    with serve(hw, Pads(scratchpad(raw)), temperature_attr=temperature_attr) as probe:
        assert probe.read() == {"temperature": celsius}


def test_w1_slave_parses_the_kernels_two_lines() -> None:
    text = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    parsed = parse_w1_slave(text)
    assert parsed.crc_ok and parsed.millidegrees == 23125
    assert parsed.scratchpad == bytes.fromhex("72014b467fff0e1057")
    assert check_scratchpad(parsed.scratchpad, "p") == 23.125


@pytest.mark.parametrize("text", ["", "72 01 4b : crc=57 YES\n", "garbage\nmore\n"])
def test_a_truncated_w1_slave_is_a_bus_error(text: str) -> None:
    with pytest.raises(BusError):
        parse_w1_slave(text)


@pytest.mark.parametrize(
    ("bits", "config", "expected"), [(9, 0x1F, 25.0), (10, 0x3F, 25.0), (11, 0x5F, 25.0)]
)
def test_undefined_low_bits_are_masked_below_12_bits(
    bits: int, config: int, expected: float
) -> None:
    # 0x0191 = 25.0625 °C: its lowest bit is undefined at 9, 10 and 11 bits.
    assert check_scratchpad(scratchpad(0x0191, config), "p") == expected
    assert decode_temperature(0x91, 0x01, bits) == expected


# -- not readings --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature_attr", [False, True], ids=["w1_slave", "temperature"])
def test_crc_failure_is_an_error_never_a_reading(
    hw: SimulatedHardware, temperature_attr: bool
) -> None:
    bad = bytearray(scratchpad(0x0191))
    bad[0] ^= 0x01
    assert w1_slave_text(bytes(bad)).splitlines()[0].endswith("NO")
    with (
        serve(hw, Pads(bytes(bad)), temperature_attr=temperature_attr) as probe,
        pytest.raises(ChecksumError if not temperature_attr else BusError),
    ):
        probe.read()


@pytest.mark.parametrize("temperature_attr", [False, True], ids=["w1_slave", "temperature"])
def test_all_zero_scratchpad_passes_the_crc_but_is_an_error(
    hw: SimulatedHardware, temperature_attr: bool
) -> None:
    assert maxim_crc8(bytes(8)) == 0
    with (
        serve(hw, Pads(bytes(9)), temperature_attr=temperature_attr) as probe,
        pytest.raises(BusError, match="all zeros"),
    ):
        probe.read()


def test_a_real_zero_degrees_from_temperature_is_confirmed_through_w1_slave(
    hw: SimulatedHardware,
) -> None:
    pads = Pads(scratchpad(0x0000))
    with serve(hw, pads, temperature_attr=True) as probe:
        assert probe.read() == {"temperature": 0.0}
    assert pads.reads == 2  # temperature said 0, w1_slave showed a real scratchpad


@pytest.mark.parametrize("temperature_attr", [False, True], ids=["w1_slave", "temperature"])
def test_power_on_85_is_an_error(hw: SimulatedHardware, temperature_attr: bool) -> None:
    with (
        serve(hw, Pads(scratchpad(0x0550)), temperature_attr=temperature_attr) as probe,
        pytest.raises(ImplausibleReading, match="power-on"),
    ):
        probe.read()


def test_errors_are_transient_and_the_next_read_succeeds(hw: SimulatedHardware) -> None:
    bad = bytearray(scratchpad(0x0191))
    bad[8] ^= 0xFF
    pads = Pads(bytes(bad), bytes(9), scratchpad(0x0550), scratchpad(0x00A2))
    with serve(hw, pads, temperature_attr=False) as probe:
        for _ in range(3):
            with pytest.raises(TransientError):
                probe.read()
        assert probe.read() == {"temperature": 10.125}


def test_unplugged_probe_is_transient_and_reads_again_when_plugged_back(
    hw: SimulatedHardware,
) -> None:
    probe_chip = EmulatedDS18B20(SimulatedSignal(21.5), conversion=lambda s: None)
    device = attach_probe(hw, ROM, probe_chip)
    with DS18B20(device=device, hardware=hw) as probe:
        assert probe.read() == {"temperature": 21.5}
        w1_bus(hw).remove(ROM)
        assert ROM not in list_roms(hw)
        with pytest.raises(DeviceGone) as gone:
            probe.read()
        assert isinstance(gone.value, TransientError)
        attach_probe(hw, ROM, probe_chip)
        assert probe.read() == {"temperature": 21.5}


def test_deleting_the_simulated_directory_unplugs_the_probe(hw: SimulatedHardware) -> None:
    device = attach_probe(hw, ROM, EmulatedDS18B20(SimulatedSignal(5.0), conversion=lambda s: None))
    with DS18B20(device=device, hardware=hw) as probe:
        for attr in device.iterdir():
            attr.unlink()
        with pytest.raises(DeviceGone):
            probe.read()


def test_a_missing_probe_at_start_is_permanent_and_names_the_probes_found(
    hw: SimulatedHardware,
) -> None:
    attach_probe(hw, "28-0416c0a1b2ff", EmulatedDS18B20(SimulatedSignal(5.0)))
    with pytest.raises(DeviceNotFound, match="28-0416c0a1b2ff"):
        DS18B20(device=hw.path("/sys/bus/w1/devices") / ROM, hardware=hw)


def test_emulator_failures_are_errors_never_readings(hw: SimulatedHardware) -> None:
    for temperature_attr, rom in ((True, ROM), (False, "28-0416c0a1b2ff")):
        chip = EmulatedDS18B20(SimulatedSignal(20.0), conversion=lambda s: None)
        chip.faults = ["crc", "zeros", "power_on", "zeros", "power_on", "crc"]
        device = attach_probe(hw, rom, chip, temperature_attr=temperature_attr)
        outcomes: list[float | type[Exception]] = []
        with DS18B20(device=device, hardware=hw) as probe:
            while chip.faults:
                try:
                    outcomes.append(probe.read()["temperature"])
                except TransientError as e:
                    outcomes.append(type(e))
        # Through `temperature`, a 0 or 85 000 is looked at again through w1_slave, which
        # is a new conversion: it may then succeed. A fault itself is never a value.
        assert set(outcomes) <= {20.0, ChecksumError, BusError, ImplausibleReading}
        assert ImplausibleReading in outcomes and BusError in outcomes


def test_emulator_fail_rate_one_never_yields_a_reading(hw: SimulatedHardware) -> None:
    chip = EmulatedDS18B20(SimulatedSignal(20.0), conversion=lambda s: None, fail_rate=1.0)
    with DS18B20(device=attach_probe(hw, ROM, chip), hardware=hw) as probe:
        for _ in range(30):
            with pytest.raises(TransientError):
                probe.read()


# -- resolution and conversion time -------------------------------------------------------


def test_resolution_is_written_and_the_conversion_takes_its_time(hw: SimulatedHardware) -> None:
    waits: list[float] = []
    chip = EmulatedDS18B20(SimulatedSignal(25.0625), conversion=waits.append)
    device = attach_probe(hw, ROM, chip)
    with DS18B20(device=device, hardware=hw, resolution=9) as probe:
        assert chip.bits == 9 and chip.config == 0x1F
        assert probe.read() == {"temperature": 25.0}
    assert waits == [0.09375]


def test_read_only_resolution_is_a_config_error(hw: SimulatedHardware) -> None:
    device = w1_bus(hw).add(
        ROM, {"w1_slave": Pads(scratchpad(0x0191)).w1_slave, "resolution": lambda: "12\n"}
    )
    with pytest.raises(HardwareConfigError, match="cannot write"):
        DS18B20(device=device, hardware=hw, resolution=10)
    # Asking for what the probe already has writes nothing.
    assert DS18B20(device=device, hardware=hw, resolution=12).resolution == 12


def test_kernel_without_resolution_attribute_is_a_config_error(hw: SimulatedHardware) -> None:
    device = w1_bus(hw).add(ROM, {"w1_slave": Pads(scratchpad(0x0191)).w1_slave})
    with pytest.raises(HardwareConfigError, match=r"5\.10"):
        DS18B20(device=device, hardware=hw, resolution=11)


def test_real_emulator_sleeps_the_conversion_time(hw: SimulatedHardware) -> None:
    device = attach_probe(hw, ROM, EmulatedDS18B20(SimulatedSignal(20.0)))
    with DS18B20(device=device, hardware=hw, resolution=10) as probe:
        start = time.monotonic()
        probe.read()
        assert time.monotonic() - start >= 0.1875


# -- many probes on one bus ----------------------------------------------------------------

EIGHT = [f"28-{serial:012x}" for serial in range(0x0316A2795B00, 0x0316A2795B08)]


def test_eight_probes_each_read_their_own_value_and_share_the_bus_resource(
    hw: SimulatedHardware,
) -> None:
    for i, rom in enumerate(EIGHT):
        attach_probe(hw, rom, EmulatedDS18B20(SimulatedSignal(10.0 + i), conversion=lambda s: None))
    assert list_roms(hw) == EIGHT
    probes = [DS18B20(device=hw.path("/sys/bus/w1/devices") / rom, hardware=hw) for rom in EIGHT]
    assert {p.resource for p in probes} == {"w1-1"}
    assert [p.read()["temperature"] for p in probes] == [10.0 + i for i in range(8)]


def test_probes_on_two_masters_are_two_resources(hw: SimulatedHardware) -> None:
    chip = EmulatedDS18B20(SimulatedSignal(1.0), conversion=lambda s: None)
    a = DS18B20(device=attach_probe(hw, EIGHT[0], chip, master=1), hardware=hw)
    b = DS18B20(device=attach_probe(hw, EIGHT[1], chip, master=2), hardware=hw)
    assert (a.resource, b.resource) == ("w1-1", "w1-2")


def test_scheduler_reads_probes_of_one_bus_one_at_a_time(hw: SimulatedHardware) -> None:
    active = 0
    most = 0
    guard = threading.Lock()

    def conversion(seconds: float) -> None:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        time.sleep(0.02)
        with guard:
            active -= 1

    options = [
        msgspec.convert({"driver": "ds18b20", "rom": rom, "interval": 0.8}, DS18B20Options)
        for rom in EIGHT[:4]
    ]
    for i, opt in enumerate(options):
        attach_probe(hw, opt.rom, EmulatedDS18B20(SimulatedSignal(float(i)), conversion=conversion))
    readings: list[Reading] = []
    events: list[Event] = []
    slots = [
        SensorSlot(
            name=opt.rom,
            spec=SPEC,
            options=opt,
            open=functools.partial(open_ds18b20, opt, hw),
        )
        for opt in options
    ]
    # All due at once: phases are spread only within one interval group, so give each the
    # same phase by driving them as one.
    scheduler = Scheduler(
        slots=slots,
        emit=lambda r, s: readings.append(r),
        report=events.append,
        sequence=MemorySequence(),
    )
    scheduler.phases = lambda: {s.name: 0.0 for s in slots}  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        scheduler.close()
    assert not events
    assert {r.sensor for r in readings} == set(EIGHT[:4])
    assert {r.sensor: r.values["temperature"] for r in readings} == {
        rom: float(i) for i, rom in enumerate(EIGHT[:4])
    }
    assert most == 1


# -- options and spec ---------------------------------------------------------------------


def test_options_key_a_probe_by_rom_id() -> None:
    options = msgspec.convert({"driver": "ds18b20", "rom": ROM, "resolution": 10}, DS18B20Options)
    assert options.rom == ROM and options.resolution == 10 and options.interval == 30.0


@pytest.mark.parametrize("rom", ["28-0316A2795BFF", "0316a2795bff", "10-0316a2795bff", "28-0316"])
def test_options_refuse_what_is_not_a_ds18b20_rom_id(rom: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="rom"):
        msgspec.convert({"driver": "ds18b20", "rom": rom}, DS18B20Options)


def test_options_refuse_an_interval_shorter_than_the_conversion() -> None:
    with pytest.raises(msgspec.ValidationError, match="conversion time"):
        msgspec.convert({"driver": "ds18b20", "rom": ROM, "interval": 0.5}, DS18B20Options)
    msgspec.convert(
        {"driver": "ds18b20", "rom": ROM, "interval": 0.5, "resolution": 10}, DS18B20Options
    )


def test_simulate_runs_the_driver_on_the_emulator(tmp_path: Path) -> None:
    options = msgspec.convert(
        {"driver": "ds18b20", "rom": ROM, "resolution": 9, "simulation": {"temperature": 4.0}},
        DS18B20Options,
    )
    with SimulatedHardware(seed=3) as hw:
        SPEC.emulate(options, hw)
        with SPEC.open(options, hw) as probe:
            assert isinstance(probe, DS18B20)
            assert probe.read() == {"temperature": 4.0}
            assert probe.uses_temperature_attr


def test_spec_quantities_and_sample() -> None:
    assert SPEC.quantities["temperature"].device_class == "temperature"
    assert SPEC.quantities["temperature"].resolution == 0.0625
    assert "rom: 28-" in SPEC.sample
