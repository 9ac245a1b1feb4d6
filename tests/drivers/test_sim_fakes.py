"""The fakes driver authors build emulators on: serial port, 1-Wire sysfs tree."""

from __future__ import annotations

import pytest

from drivers.errors import DeviceNotFound
from drivers.hardware import SimulatedHardware
from drivers.sim.fake_serial import FakeSerialPort
from drivers.sim.fake_w1 import FakeW1Bus, w1_slave_text


class Counter:
    """Answers "?" with "!" and streams a counter byte when read."""

    def __init__(self) -> None:
        self.n = 0

    def received(self, data: bytes) -> bytes:
        return b"!" if data == b"?" else b""

    def produce(self) -> bytes:
        self.n += 1
        return bytes([self.n])


def test_serial_port_answers_writes_and_streams_reads() -> None:
    port = FakeSerialPort(Counter())
    port.write(b"?")
    assert port.read(3) == b"!\x01\x02"
    assert port.writes == [b"?"]


def test_serial_garbage_comes_first_and_a_cut_stream_goes_silent() -> None:
    port = FakeSerialPort(Counter())
    port.inject(b"\xaa")
    port.cut_after = 2
    assert port.read(4) == b"\xaa\x01"
    assert port.read(4) == b""


def test_serial_reset_input_buffer_and_closed_port() -> None:
    port = FakeSerialPort(None)
    port.inject(b"junk")
    port.reset_input_buffer()
    assert port.read(4) == b""
    port.close()
    with pytest.raises(OSError):
        port.read(1)


def test_simulated_hardware_serves_an_attached_serial_port() -> None:
    with SimulatedHardware() as hw:
        port = FakeSerialPort(Counter())
        hw.attach_serial("/dev/serial0", port)
        assert hw.serial_port("/dev/serial0", baudrate=9600, timeout_s=2.0) is port
        assert port.timeout == 2.0
        with pytest.raises(DeviceNotFound):
            hw.serial_port("/dev/ttyUSB0", baudrate=9600, timeout_s=1.0)


def test_w1_slave_text_is_the_kernels_two_lines_with_its_crc_verdict() -> None:
    # 0x0191 = 25.0625 °C; CRC computed over the first eight bytes.
    good = bytes.fromhex("91014b467fff0c10") + b"\x00"
    from drivers.protocols.crc import maxim_crc8

    good = good[:8] + bytes([maxim_crc8(good[:8])])
    text = w1_slave_text(good)
    first, second = text.splitlines()
    assert first.endswith("YES") and second.endswith("t=25062")
    bad = good[:8] + bytes([good[8] ^ 1])
    assert w1_slave_text(bad).splitlines()[0].endswith("NO")


def test_w1_devices_appear_in_the_master_list_and_vanish_when_unplugged() -> None:
    with SimulatedHardware() as hw:
        bus = FakeW1Bus(hw)
        device = bus.add("28-0316a2795bff", {"temperature": lambda: "21500\n"})
        assert hw.read_attr(device / "temperature") == "21500\n"
        assert (bus.master_dir / "w1_master_slaves").read_text() == "28-0316a2795bff\n"
        bus.remove("28-0316a2795bff")
        with pytest.raises(FileNotFoundError):
            hw.read_attr(device / "temperature")


def test_w1_writable_attribute_takes_writes() -> None:
    with SimulatedHardware() as hw:
        seen: list[str] = []
        device = FakeW1Bus(hw).add(
            "28-000000000001", {"resolution": lambda: "12\n"}, {"resolution": seen.append}
        )
        hw.write_attr(device / "resolution", "9")
        assert seen == ["9"]


def test_simulated_signals_take_the_configs_values_and_the_drivers_defaults() -> None:
    import random

    from drivers.errors import HardwareConfigError
    from drivers.sim.signal import simulated_signals

    signals = simulated_signals(
        {"temperature": 21.0}, {"temperature": [18.0, 24.0], "humidity": 45.0}, random.Random(1)
    )
    assert signals["temperature"].next() == 21.0
    assert signals["humidity"].next() == 45.0
    with pytest.raises(HardwareConfigError, match="presure"):
        simulated_signals({"presure": 1000.0}, {"pressure": 1013.25}, random.Random(1))


def test_the_fake_bus_keeps_the_latest_transactions_not_all_of_them() -> None:
    from drivers.bme280 import REG_CONFIG, EmulatedBME280
    from drivers.sim.fake_smbus import KEEP_TRANSACTIONS, FakeSMBus

    bus = FakeSMBus(1)
    bus.attach(0x76, EmulatedBME280())
    for i in range(3 * KEEP_TRANSACTIONS):
        bus.write_byte_data(0x76, REG_CONFIG, i & 0xFC)
    assert KEEP_TRANSACTIONS <= len(bus.writes) < 2 * KEEP_TRANSACTIONS
    assert KEEP_TRANSACTIONS <= len(bus.log) < 2 * KEEP_TRANSACTIONS
    last = (3 * KEEP_TRANSACTIONS - 1) & 0xFC
    assert bus.writes[-1] == (0x76, REG_CONFIG, bytes([last]))
    assert bus.log[-1] == (0x76, "w", bytes([REG_CONFIG, last]))
