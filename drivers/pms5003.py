"""Plantower PMS5003 / PMS7003 particulate matter sensors over a UART (9600 8N1).

The sensor is used in *passive* mode: it measures continuously but sends a frame only when
asked (``42 4D E2 00 00 01 71``), so the driver never reads a frame that sat in a buffer.
A frame is 32 bytes: ``42 4D``, a length of 28, thirteen 16-bit big-endian words and a
16-bit sum of the 30 bytes before it. The driver looks for ``42 4D`` in whatever the UART
delivers (line noise at boot, the 8-byte acknowledgements the sensor sends after a mode
or sleep command, half a frame of the active mode it was left in), checks the length
(28; anything else is skipped as not a data frame) and the checksum (a mismatch is a
:class:`~drivers.errors.ChecksumError`, never a reading), and gives up with a
:class:`~drivers.errors.MeasurementTimeout` when the stream ends mid-frame.

Words 1-3 are PM1.0, PM2.5 and PM10 in µg/m³ "CF=1, standard particle" (the factory's
calibration aerosol), words 4-6 the same "under atmospheric environment" — the ones for
ambient air, reported as ``pm1_0``, ``pm2_5`` and ``pm10``; the CF=1 ones as
``pm1_0_cf1``, ``pm2_5_cf1`` and ``pm10_cf1``. Words 7-12 count particles larger than 0.3,
0.5, 1.0, 2.5, 5 and 10 µm in 0.1 L of air.

**The fan's warm-up.** The manual asks for at least 30 s between waking the sensor and
trusting its data. With ``sleep_between_reads`` the driver puts the sensor to sleep (fan
and laser off: the laser's life is ~8000 h of running) after every read, and each read
wakes it, waits the 30 s and then asks for a frame. Without it the sensor runs; only a
sensor found asleep at open (left so by a previous run) is woken and waited for.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec

from drivers.base import (
    DriverSpec,
    OptionError,
    PositiveSeconds,
    Quantity,
    Seconds,
    Sensor,
    SensorOptions,
)
from drivers.errors import BusError, ChecksumError, MeasurementTimeout
from drivers.hardware import Hardware, SimulatedHardware
from drivers.sim.fake_serial import FakeSerialPort
from drivers.sim.signal import SimulatedSignal, simulated_signals

START: Final = b"\x42\x4d"
FRAME_LENGTH: Final = 28  # the length field: 13 words + the checksum
FRAME_SIZE: Final = 32
CMD_READ: Final = 0xE2
CMD_MODE: Final = 0xE1  # data 0: passive, 1: active
CMD_SLEEP: Final = 0xE4  # data 0: sleep, 1: wake up
BAUDRATE: Final = 9600
WARM_UP_S: Final = 30.0
#: How long to wait for a frame after asking for one (a frame takes 33 ms at 9600 baud).
_FRAME_TIMEOUT_S: Final = 2.0
_COMMAND_SETTLE_S: Final = 0.1

#: Quantity name of each data word, in frame order (word 13 is reserved).
WORDS: Final = (
    "pm1_0_cf1", "pm2_5_cf1", "pm10_cf1",
    "pm1_0", "pm2_5", "pm10",
    "particles_0_3", "particles_0_5", "particles_1_0",
    "particles_2_5", "particles_5_0", "particles_10",
)  # fmt: skip


def _pm(size: str, kind: str, device_class: str) -> Quantity:
    return Quantity("µg/m³", 1, f"PM{size} {kind}", device_class, (0.0, 500.0))


def _count(size: str) -> Quantity:
    return Quantity(
        "particles/0.1L", 1, f"particles larger than {size} µm in 0.1 L of air", None, (0.0, 5000.0)
    )


QUANTITIES: Final[Mapping[str, Quantity]] = {
    "pm1_0": _pm("1.0", "(atmospheric environment)", "pm1"),
    "pm2_5": _pm("2.5", "(atmospheric environment)", "pm25"),
    "pm10": _pm("10", "(atmospheric environment)", "pm10"),
    "pm1_0_cf1": _pm("1.0", "(CF=1, standard particle)", "pm1"),
    "pm2_5_cf1": _pm("2.5", "(CF=1, standard particle)", "pm25"),
    "pm10_cf1": _pm("10", "(CF=1, standard particle)", "pm10"),
    "particles_0_3": _count("0.3"),
    "particles_0_5": _count("0.5"),
    "particles_1_0": _count("1.0"),
    "particles_2_5": _count("2.5"),
    "particles_5_0": _count("5"),
    "particles_10": _count("10"),
}


class SerialPort(Protocol):
    """The part of ``serial.Serial`` the driver uses."""

    def read(self, size: int = 1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def reset_input_buffer(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Frames: pure functions.


def command(cmd: int, data: int = 0) -> bytes:
    """A command frame: ``42 4D cmd dataH dataL`` and the 16-bit sum of those five bytes."""
    body = START + bytes([cmd, data >> 8 & 0xFF, data & 0xFF])
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


def encode_frame(words: Mapping[str, int], reserved: int = 0) -> bytes:
    """The 32-byte data frame carrying ``words`` (missing ones are 0)."""
    body = START + FRAME_LENGTH.to_bytes(2, "big")
    for name in WORDS:
        body += (words.get(name, 0) & 0xFFFF).to_bytes(2, "big")
    body += (reserved & 0xFFFF).to_bytes(2, "big")
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


def decode_frame(frame: bytes) -> dict[str, int]:
    """The words of one 32-byte data frame.

    Raises:
        ChecksumError: the start, length or checksum is wrong.
    """
    if len(frame) != FRAME_SIZE or frame[:2] != START:
        raise ChecksumError(f"not a {FRAME_SIZE}-byte frame starting 42 4D: {frame.hex()}")
    length = int.from_bytes(frame[2:4], "big")
    if length != FRAME_LENGTH:
        raise ChecksumError(f"frame length {length}, a PMS5003/PMS7003 sends {FRAME_LENGTH}")
    expected = sum(frame[:30]) & 0xFFFF
    got = int.from_bytes(frame[30:32], "big")
    if got != expected:
        raise ChecksumError(f"checksum 0x{got:04X}, computed 0x{expected:04X}")
    return {
        name: int.from_bytes(frame[4 + 2 * i : 6 + 2 * i], "big") for i, name in enumerate(WORDS)
    }


# --------------------------------------------------------------------------------------------
# The driver.


class PMS5003(Sensor):
    """A Plantower PMS5003 or PMS7003 in passive mode.

    Args:
        port: a pyserial-like port opened at 9600 baud with a read timeout (``read(n)``,
            ``write(b)``, ``reset_input_buffer()``); the driver never closes it unless
            ``owns_port``.
        sleep_between_reads: put the sensor to sleep after each read and wake it (and wait
            the fan's warm-up) before the next one.
        warm_up_s: how long after waking the data is trusted (the manual: 30 s).
        owns_port: close ``port`` in :meth:`close`.
        clock, sleep: injectable so tests need not wait.

    Raises:
        MeasurementTimeout: the sensor did not answer (wiring: its TX to the Pi's RX).
    """

    def __init__(
        self,
        *,
        port: SerialPort,
        sleep_between_reads: bool = False,
        warm_up_s: float = WARM_UP_S,
        owns_port: bool = False,
        name: str = "PMS5003",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.port = port
        self.sleep_between_reads = sleep_between_reads
        self.warm_up_s = warm_up_s
        self._owns_port = owns_port
        self._name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._command(CMD_MODE, 0)  # passive
            #: When the fan was last started; -inf: it was already running.
            self._awake_since = -float("inf")
            try:
                self._request_frame()
            except MeasurementTimeout:
                # Silent: asleep, left so by an earlier run. Wake it; reads wait the warm-up.
                self._wake()
            self._asleep = False
            if sleep_between_reads:
                self._command(CMD_SLEEP, 0)
                self._asleep = True

    # -- transactions -----------------------------------------------------------------------

    def _command(self, cmd: int, data: int) -> None:
        try:
            self.port.write(command(cmd, data))
        except OSError as e:
            raise BusError(e.errno, f"{self._name}: writing to the serial port: {e}") from e
        self._sleep(_COMMAND_SETTLE_S)

    def _wake(self) -> None:
        self._command(CMD_SLEEP, 1)
        self._command(CMD_MODE, 0)  # back to passive: some units wake up in active mode
        self._awake_since = self._clock()

    def _read_bytes(self, n: int, deadline: float) -> bytes:
        out = b""
        while len(out) < n:
            try:
                chunk = self.port.read(n - len(out))
            except OSError as e:
                raise BusError(e.errno, f"{self._name}: reading the serial port: {e}") from e
            if not chunk or self._clock() > deadline:
                break  # a real port returns nothing only after its own read timeout
            out += chunk
        return out

    def _request_frame(self) -> dict[str, int]:
        """Ask for a frame and find it in the stream."""
        try:
            self.port.reset_input_buffer()
        except OSError as e:
            raise BusError(e.errno, f"{self._name}: {e}") from e
        self._command_no_settle(CMD_READ, 0)
        deadline = self._clock() + _FRAME_TIMEOUT_S
        buf = bytearray()
        skipped = 0
        bad: ChecksumError | None = None
        while True:
            at = buf.find(START)
            if at < 0:
                keep = 1 if buf[-1:] == START[:1] else 0
                skipped += len(buf) - keep
                del buf[: len(buf) - keep]
                more = self._read_bytes(FRAME_SIZE, deadline)
                if not more:
                    break
                buf += more
                continue
            skipped += at
            del buf[:at]
            if len(buf) < FRAME_SIZE:
                more = self._read_bytes(FRAME_SIZE - len(buf), deadline)
                if not more:
                    if len(buf) > 4 and int.from_bytes(buf[2:4], "big") == FRAME_LENGTH:
                        raise MeasurementTimeout(
                            f"{self._name}: the stream ended {len(buf)} bytes into a "
                            f"{FRAME_SIZE}-byte frame"
                        )
                    break
                buf += more
                continue
            if int.from_bytes(buf[2:4], "big") != FRAME_LENGTH:
                # An acknowledgement (length 4) or noise that looked like a start: look
                # again from the next byte, never trusting its length.
                del buf[:1]
                skipped += 1
                continue
            try:
                return decode_frame(bytes(buf[:FRAME_SIZE]))
            except ChecksumError as e:
                # A false start can hide the real frame: look on before giving up.
                bad = bad or ChecksumError(f"{self._name}: {e}")
                del buf[:1]
                skipped += 1
        if bad is not None:
            raise bad
        raise MeasurementTimeout(
            f"{self._name}: no frame within {_FRAME_TIMEOUT_S:g} s of a read request"
            + (f" ({skipped} bytes of noise)" if skipped else "")
            + ": check that the sensor's TX goes to the Pi's RX and the 5 V supply"
        )

    def _command_no_settle(self, cmd: int, data: int) -> None:
        try:
            self.port.write(command(cmd, data))
        except OSError as e:
            raise BusError(e.errno, f"{self._name}: writing to the serial port: {e}") from e

    # -- measuring --------------------------------------------------------------------------

    def read(self) -> dict[str, float]:
        """One frame, asked for in passive mode, once the fan has warmed up.

        Raises:
            ChecksumError: the frame failed its length or checksum check.
            MeasurementTimeout: no complete frame arrived.
            BusError: the serial port failed.
        """
        if self._closed:
            raise ValueError(f"{self._name} is closed")
        with self._lock:
            if self._asleep:
                self._wake()
                self._asleep = False
            remaining = self._awake_since + self.warm_up_s - self._clock()
            if remaining > 0:
                self._sleep(remaining)
            try:
                words = self._request_frame()
            finally:
                if self.sleep_between_reads:
                    self._command(CMD_SLEEP, 0)
                    self._asleep = True
        return {name: float(words[name]) for name in WORDS}

    def close(self) -> None:
        """Leave the sensor as it is (asleep with ``sleep_between_reads``, else running);
        close the port if the driver opened it. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._owns_port:
            close = getattr(self.port, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------------------------
# Options and sample.

SAMPLE = """\
balcony:
  driver: pms5003        # also PMS7003
  interval: 5m
  port: /dev/serial0     # the Pi's UART: sensor TX -> GPIO15 (RXD), RX -> GPIO14 (TXD)
  sleep_between_reads: true   # fan and laser off between reads (each read waits 30 s)
"""


class PMS5003Options(SensorOptions, frozen=True, tag="pms5003"):
    """Options of the ``pms5003`` driver (PMS5003, PMS7003)."""

    interval: Seconds = 60.0
    #: A read may wait the fan's 30 s warm-up.
    timeout: PositiveSeconds | None = 45.0
    port: str = "/dev/serial0"
    sleep_between_reads: bool = False
    warm_up: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=120,
            extra={"duration": True},
            extra_json_schema={
                "type": ["number", "string"],
                "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$",
            },
        ),
    ] = WARM_UP_S

    def __post_init__(self) -> None:
        if self.sleep_between_reads and self.interval < 2 * self.warm_up:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s with sleep_between_reads: each read wakes the "
                f"fan for its {self.warm_up:g} s warm-up, so the interval must be at least "
                f"{2 * self.warm_up:g} s for the sensor to sleep at all",
            )
        if self.timeout is not None and self.sleep_between_reads and self.timeout <= self.warm_up:
            raise OptionError(
                "timeout", f"timeout must exceed the {self.warm_up:g} s warm-up a read waits"
            )


def open_pms5003(options: PMS5003Options, hardware: Hardware) -> PMS5003:
    """A :class:`PMS5003` on the serial port ``options.port``."""
    port: Any = hardware.serial_port(options.port, baudrate=BAUDRATE, timeout_s=1.0)
    try:
        return PMS5003(
            port=port,
            sleep_between_reads=options.sleep_between_reads,
            warm_up_s=options.warm_up,
            owns_port=True,
            name=f"PMS5003 on {options.port}",
            clock=hardware.monotonic,
            sleep=hardware.sleep,
        )
    except BaseException:
        port.close()
        raise


# --------------------------------------------------------------------------------------------
# Emulation.


class EmulatedPMS5003:
    """The far end of a :class:`~drivers.sim.fake_serial.FakeSerialPort`: a PMS5003.

    It starts in active mode (a frame per read of the port, as after power-on), obeys the
    mode, read and sleep commands (checking their checksums; a bad one is ignored, as the
    sensor does), answers mode and sleep commands with an 8-byte acknowledgement
    ``42 4D 00 04 cmd data sum``, stays silent while asleep, and sends all-zero data for
    ``warm_up_s`` after waking (a fan not yet up to speed). Values come from the signals.

    Faults: ``fail_rate`` corrupts the checksum of, or cuts, that share of frames;
    :attr:`corrupt_next` corrupts the next one.
    """

    def __init__(
        self,
        *,
        signals: Mapping[str, SimulatedSignal] | None = None,
        asleep: bool = False,
        warm_up_s: float = WARM_UP_S,
        clock: Callable[[], float] = time.monotonic,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.signals = dict(signals or {})
        self.mode: Literal["active", "passive"] = "active"
        self.asleep = asleep
        self.warm_up_s = warm_up_s
        self.fail_rate = fail_rate
        self.corrupt_next = 0
        self.commands: list[tuple[int, int]] = []
        self._clock = clock
        self._rng = rng or random.Random()
        self._awake_since = -float("inf")

    def received(self, data: bytes) -> bytes:
        out = b""
        for i in range(0, len(data) - 6, 1):
            chunk = data[i : i + 7]
            if chunk[:2] != START or int.from_bytes(chunk[5:7], "big") != sum(chunk[:5]) & 0xFFFF:
                continue
            cmd, value = chunk[2], int.from_bytes(chunk[3:5], "big")
            self.commands.append((cmd, value))
            out += self._execute(cmd, value)
        return out

    def _execute(self, cmd: int, value: int) -> bytes:
        if cmd == CMD_SLEEP:
            if value == 1 and self.asleep:
                self.asleep = False
                self._awake_since = self._clock()
                return b""  # waking: the manual's sensor does not acknowledge
            if value == 0:
                self.asleep = True
            return self._ack(cmd, value)
        if self.asleep:
            return b""
        if cmd == CMD_MODE:
            self.mode = "active" if value else "passive"
            return self._ack(cmd, value)
        if cmd == CMD_READ and self.mode == "passive":
            return self._frame()
        return b""

    @staticmethod
    def _ack(cmd: int, value: int) -> bytes:
        body = START + bytes([0x00, 0x04, cmd, value & 0xFF])
        return body + (sum(body) & 0xFFFF).to_bytes(2, "big")

    def produce(self) -> bytes:
        if self.asleep or self.mode != "active":
            return b""
        return self._frame()

    def _frame(self) -> bytes:
        warming = self._clock() - self._awake_since < self.warm_up_s
        words = (
            {}
            if warming
            else {
                name: max(0, min(0xFFFF, round(signal.next())))
                for name, signal in self.signals.items()
            }
        )
        frame = bytearray(encode_frame(words))
        if self.fail_rate and self._rng.random() < self.fail_rate:
            if self._rng.random() < 0.5:
                return bytes(frame[: self._rng.randrange(4, FRAME_SIZE)])  # cut mid-frame
            self.corrupt_next += 1
        if self.corrupt_next:
            self.corrupt_next -= 1
            frame[31] ^= 0x01
        return bytes(frame)


SIMULATION_DEFAULTS: Final[Mapping[str, float | list[float]]] = {
    "pm1_0": [3.0, 8.0],
    "pm2_5": [5.0, 15.0],
    "pm10": [8.0, 25.0],
    "pm1_0_cf1": [3.0, 8.0],
    "pm2_5_cf1": [5.0, 15.0],
    "pm10_cf1": [8.0, 25.0],
    "particles_0_3": [600.0, 1500.0],
    "particles_0_5": [150.0, 450.0],
    "particles_1_0": [20.0, 80.0],
    "particles_2_5": [2.0, 10.0],
    "particles_5_0": [0.0, 3.0],
    "particles_10": [0.0, 1.0],
}


def emulate_pms5003(options: PMS5003Options, hardware: SimulatedHardware) -> None:
    """Attach an emulated PMS5003 whose values follow ``options.simulation`` at
    ``options.port``."""
    rng = random.Random(f"{hardware.seed}-pms5003-{options.port}")
    signals = simulated_signals(options.simulation.values, SIMULATION_DEFAULTS, rng)
    device = EmulatedPMS5003(
        signals=signals,
        warm_up_s=options.warm_up,
        clock=hardware.monotonic,
        fail_rate=options.simulation.fail_rate,
        rng=rng,
    )
    hardware.attach_serial(options.port, FakeSerialPort(device, name=options.port))


SPEC = DriverSpec(
    name="pms5003",
    kind="sensor",
    summary="Plantower PMS5003/PMS7003 particulate matter (PM1.0/2.5/10, counts) over UART",
    options=PMS5003Options,
    open=open_pms5003,
    emulate=emulate_pms5003,
    quantities=QUANTITIES,
    sample=SAMPLE,
)
