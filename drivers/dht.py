"""DHT22 (AM2302) and DHT11 temperature/humidity sensors, through the Linux ``dht11`` driver.

Why the kernel driver and not userspace bit-banging: a DHT answers a start pulse with 40
bits whose value is the length of each high pulse, ~26 µs for a 0 and ~70 µs for a 1.
Python under Linux scheduling cannot time pulses that short: one preemption or page fault
in the middle of a frame misreads a bit. That is the source of the famous ~30 % checksum
failures of Adafruit_DHT and the other bit-banging libraries. The kernel's ``dht11`` IIO
driver (which handles DHT11, DHT21 and DHT22 alike) timestamps every edge in an interrupt
handler and decodes afterwards, so reads are reliable and cost no CPU while waiting.

Enable it with one line in ``/boot/firmware/config.txt`` (``/boot/config.txt`` before
Bookworm) and a reboot::

    dtoverlay=dht11,gpiopin=4

One line per sensor; each appears as ``/sys/bus/iio/devices/iio:deviceN``. The overlay
names its device tree node ``dht11@<pin in hex>`` (``dht11@4``, ``dht11@11`` for GPIO17)
and the IIO ``name`` attribute carries that node name, which is how :func:`find_device`
finds a sensor by pin. Overlays before 2023 named every node ``dht11@0``; for those the
pin is read from ``of_node/gpios`` instead.

The kernel reports temperature and humidity in milli-units (``in_temp_input``,
``in_humidityrelative_input``), returns EIO on a checksum or framing error, ETIMEDOUT when
the sensor does not answer and EAGAIN when the system clock is too coarse; after a good
read it caches the values for 2 s, so the two files read back to back come from one
transaction.
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Quantity, Seconds, Sensor, SensorOptions
from drivers.errors import (
    BusError,
    ChecksumError,
    DeviceNotFound,
    ImplausibleReading,
    TransientError,
)
from drivers.hardware import Hardware, SimulatedHardware
from drivers.sim.signal import SimulatedSignal

#: Where the kernel lists IIO devices.
IIO_DEVICES = "/sys/bus/iio/devices"
#: Which of the two chips; they share the kernel driver but not their limits.
Model = Literal["dht22", "dht11"]

SAMPLE_DHT22 = """\
shed:
  driver: dht22
  pin: 4                 # BCM GPIO of `dtoverlay=dht11,gpiopin=4` in /boot/firmware/config.txt
  # device: /sys/bus/iio/devices/iio:device0   # instead of pin: an explicit IIO device
  interval: 30s          # never below 2 s, the chip's minimum
"""

SAMPLE_DHT11 = """\
cellar:
  driver: dht11
  pin: 17                # BCM GPIO of `dtoverlay=dht11,gpiopin=17`
  interval: 30s          # never below 1 s, the chip's minimum
"""


@dataclass(frozen=True)
class JumpLimit:
    """The largest believable change between two reads ``elapsed_s`` apart.

    ``base`` covers reads a few seconds apart; ``per_s`` lets the allowance grow with the
    age of the reference, so a real step change (the sensor carried outdoors, a long
    outage) is accepted once enough time has passed instead of being rejected forever.
    """

    base: float
    per_s: float

    def allowed(self, elapsed_s: float) -> float:
        return self.base + self.per_s * max(0.0, elapsed_s)


@dataclass(frozen=True)
class DHTModel:
    """What differs between the DHT22 and the DHT11 (from their datasheets)."""

    name: Model
    #: Fastest the chip may be asked for a new measurement, start to start.
    min_interval_s: float
    #: Resolution of both quantities: °C and %RH.
    resolution: float
    temperature_range: tuple[float, float]
    humidity_range: tuple[float, float]


MODELS: dict[Model, DHTModel] = {
    "dht22": DHTModel("dht22", 2.0, 0.1, (-40.0, 80.0), (0.0, 100.0)),
    # The DHT11 datasheet says 20..90 %RH; clones report outside it, so only 0..100 is
    # refused as impossible.
    "dht11": DHTModel("dht11", 1.0, 1.0, (0.0, 50.0), (0.0, 100.0)),
}

#: No room changes faster than this: 10 °C or 30 %RH in a few seconds, plus as much again
#: per minute since the last accepted reading.
JUMP_LIMITS = {
    "temperature": JumpLimit(base=10.0, per_s=10.0 / 60),
    "humidity": JumpLimit(base=30.0, per_s=30.0 / 60),
}

_UNITS = {"temperature": "°C", "humidity": "%RH"}


def quantities(model: Model) -> dict[str, Quantity]:
    """The quantities a ``model`` reports, with its real resolution."""
    m = MODELS[model]
    return {
        "temperature": Quantity(
            "°C", m.resolution, "air temperature", "temperature", m.temperature_range
        ),
        "humidity": Quantity(
            "%RH", m.resolution, "relative humidity", "humidity", m.humidity_range
        ),
    }


def quantize(value: float, resolution: float) -> float:
    """``value`` rounded to a multiple of ``resolution``, without float noise (21.400000001)."""
    digits = max(0, -math.floor(math.log10(resolution)))
    return round(round(value / resolution) * resolution, digits)


class _DHTOptions(SensorOptions, frozen=True):
    """Options shared by ``dht22`` and ``dht11``."""

    #: The chip these options are for; each tagged subclass fixes it.
    model: ClassVar[Model] = "dht22"

    #: BCM GPIO number given to ``dtoverlay=dht11,gpiopin=N``; finds the IIO device.
    pin: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: Or an explicit IIO device directory, ``/sys/bus/iio/devices/iio:deviceN``.
    device: str | None = None
    interval: Seconds = 30.0

    def __post_init__(self) -> None:
        if (self.pin is None) == (self.device is None):
            raise ValueError("give exactly one of `pin` and `device`")
        minimum = MODELS[self.model].min_interval_s
        if self.interval < minimum:
            raise OptionError(
                "interval",
                f"interval {self.interval:g} s is below the {self.model.upper()}'s minimum "
                f"of {minimum:g} s",
            )


class DHT22Options(_DHTOptions, frozen=True, tag="dht22"):
    """Options of the ``dht22`` driver (DHT22, AM2302)."""

    model: ClassVar[Model] = "dht22"


class DHT11Options(_DHTOptions, frozen=True, tag="dht11"):
    """Options of the ``dht11`` driver."""

    model: ClassVar[Model] = "dht11"


def find_device(pin: int, hardware: Hardware) -> Path:
    """The IIO device directory of the DHT on GPIO ``pin``.

    Matches the IIO ``name`` attribute against the overlay's node name ``dht11@<pin hex>``;
    for a ``dht11`` device whose name carries no pin (older overlays: ``dht11@0``), the pin
    is taken from the device tree's ``of_node/gpios`` (phandle, pin, flags).

    Raises:
        DeviceNotFound: no such device; the message says how to enable the overlay.
    """
    base = hardware.path(IIO_DEVICES)
    wanted = f"dht11@{pin:x}"
    seen: list[str] = []
    for device in _iio_devices(base):
        try:
            name = hardware.read_attr(device / "name").strip()
        except OSError:
            continue
        if name == wanted:
            return device
        if name.startswith("dht11"):
            seen.append(f"{device.name} ({name})")
            if _of_gpio(device) == pin:
                return device
    found = f"; found only {', '.join(seen)}" if seen else ""
    raise DeviceNotFound(
        f"no DHT sensor on GPIO{pin}: no IIO device named {wanted} under {IIO_DEVICES}{found}. "
        f"Enable the kernel driver with `dtoverlay=dht11,gpiopin={pin}` in "
        "/boot/firmware/config.txt (/boot/config.txt before Bookworm) and reboot"
    )


def _iio_devices(base: Path) -> list[Path]:
    """``iio:deviceN`` directories under ``base``, by N."""
    if not base.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in base.iterdir():
        m = re.fullmatch(r"iio:device(\d+)", entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return [path for _, path in sorted(found)]


def _of_gpio(device: Path) -> int | None:
    """The GPIO in the device tree node's ``gpios`` property (big-endian u32 cells)."""
    try:
        cells = (device / "of_node" / "gpios").read_bytes()
    except OSError:
        return None
    if len(cells) < 8:
        return None
    pin: int = struct.unpack(">II", cells[:8])[1]
    return pin


class DHT(Sensor):
    """A DHT22 or DHT11 read through its kernel IIO device.

    Reads are paced and checked so the agent never sees what the chip cannot deliver:

    * **Pacing.** The chip must not be asked for a new measurement sooner than
      ``min_interval_s`` (DHT22 2 s, DHT11 1 s) after the previous request. A read that
      comes too soon *waits* the rest of that time rather than returning the last value:
      the config already refuses intervals below the minimum, so this happens only on a
      retry, where an old value would be a lie and an early request a sure failure.
    * **Retries.** EIO (checksum), ETIMEDOUT (no answer) and EAGAIN are retried up to
      ``attempts`` times in one :meth:`read`, each attempt paced as above. The worst case
      for a DHT22 is ~5 s (three 1 s kernel timeouts, 2 s apart), inside the agent's
      default read timeout. If every attempt fails, the last failure is raised:
      :class:`~drivers.errors.ChecksumError` for EIO, :class:`~drivers.errors.BusError`
      otherwise; both are transient, so the scheduler tries again at the next interval.
    * **Plausibility.** A value outside the chip's range, or one that jumped further from
      the last accepted reading than a room can change in the time between (see
      :data:`JUMP_LIMITS`), raises :class:`~drivers.errors.ImplausibleReading` (transient)
      and does not become the reference for the next jump check.

    Values are rounded to the chip's resolution: 0.1 °C / 0.1 %RH on a DHT22, 1 °C /
    1 %RH on a DHT11.

    Args:
        device: the IIO device directory (``/sys/bus/iio/devices/iio:deviceN``); see
            :func:`find_device` to find it by GPIO.
        model: ``"dht22"`` or ``"dht11"``: sets range, resolution and pacing. The kernel
            tells the chips apart by itself.
        hardware: reads attributes through :meth:`Hardware.read_attr`, so a fake can serve
            them; the real ``/sys`` by default.
        attempts: kernel transactions one :meth:`read` may spend on EIO/ETIMEDOUT/EAGAIN.
        clock: monotonic seconds, injectable so tests need not sleep.
        sleep: waits for the chip; injectable likewise.

    Raises:
        DeviceNotFound: ``device`` is not a DHT IIO device directory.
    """

    #: The stricter of the two chips (DHT22); the instance paces by :attr:`model`.
    min_interval_s: ClassVar[float] = MODELS["dht22"].min_interval_s

    def __init__(
        self,
        device: str | os.PathLike[str],
        *,
        model: Model = "dht22",
        hardware: Hardware | None = None,
        attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown DHT model {model!r}: dht22 or dht11")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.device = Path(device)
        self.model = MODELS[model]
        self._hw = hardware or Hardware()
        self._attempts = attempts
        self._clock = clock
        self._sleep = sleep
        self._temp_path = self.device / "in_temp_input"
        self._hum_path = self.device / "in_humidityrelative_input"
        for path in (self._temp_path, self._hum_path):
            if not path.exists():
                raise DeviceNotFound(
                    f"{path} does not exist: {self.device} is not a dht11 IIO device"
                )
        self._lock = threading.Lock()
        self._last_request = -math.inf
        #: The last accepted reading and when it was taken: the jump check's reference.
        self._reference: dict[str, float] | None = None
        self._reference_time = 0.0

    def read(self) -> dict[str, float]:
        """One temperature (°C) and relative humidity (%RH) reading.

        Raises:
            ChecksumError: every attempt failed with EIO (corrupted frame).
            BusError: every attempt failed with ETIMEDOUT/EAGAIN, or another I/O error.
            ImplausibleReading: out of the chip's range, or an impossible jump.
            DeviceNotFound: the device disappeared.
        """
        with self._lock:
            last: TransientError | None = None
            for _ in range(self._attempts):
                self._wait_for_chip()
                self._last_request = self._clock()
                try:
                    # Temperature first: it starts the transaction, and humidity comes
                    # from the kernel's 2 s cache of the same one.
                    temp_milli = self._read_milli(self._temp_path)
                    hum_milli = self._read_milli(self._hum_path)
                except (ChecksumError, BusError) as e:
                    last = e
                    continue
                return self._accept(
                    {"temperature": temp_milli / 1000.0, "humidity": hum_milli / 1000.0}
                )
            assert last is not None
            message = f"{self.model.name} at {self.device}: {last} ({self._attempts} attempts)"
            if isinstance(last, ChecksumError):
                raise ChecksumError(message) from last
            raise BusError(message) from last

    def _wait_for_chip(self) -> None:
        delay = self._last_request + self.model.min_interval_s - self._clock()
        if delay > 0:
            self._sleep(delay)

    def _read_milli(self, path: Path) -> int:
        try:
            text = self._hw.read_attr(path)
        except OSError as e:
            raise _map_os_error(path, e) from e
        try:
            return int(text.strip())
        except ValueError as e:
            raise ChecksumError(f"{path.name}: unreadable value {text.strip()!r}") from e

    def _accept(self, raw: dict[str, float]) -> dict[str, float]:
        now = self._clock()
        for quantity, value in raw.items():
            lo, hi = (
                self.model.temperature_range
                if quantity == "temperature"
                else self.model.humidity_range
            )
            if not lo <= value <= hi:
                raise ImplausibleReading(
                    f"{self.model.name} at {self.device}: {quantity} {value:g} "
                    f"{_UNITS[quantity]} is outside the chip's range {lo:g}..{hi:g}"
                )
        if self._reference is not None:
            elapsed = now - self._reference_time
            for quantity, value in raw.items():
                jump = abs(value - self._reference[quantity])
                allowed = JUMP_LIMITS[quantity].allowed(elapsed)
                if jump > allowed:
                    raise ImplausibleReading(
                        f"{self.model.name} at {self.device}: {quantity} jumped "
                        f"{jump:g} {_UNITS[quantity]} in {elapsed:.1f} s "
                        f"(at most {allowed:g} is believable)"
                    )
        self._reference, self._reference_time = dict(raw), now
        res = self.model.resolution
        return {quantity: quantize(value, res) for quantity, value in raw.items()}

    def close(self) -> None:
        """Nothing is held open between reads."""


#: What the kernel's dht11 driver means by each errno; all worth another attempt.
_RETRYABLE = {
    errno.EIO: "checksum or framing error (EIO)",
    errno.ETIMEDOUT: "no reply from the sensor (ETIMEDOUT): check wiring and pull-up",
    errno.EAGAIN: "kernel timer too coarse (EAGAIN)",
}


def _map_os_error(path: Path, e: OSError) -> DeviceNotFound | ChecksumError | BusError:
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return DeviceNotFound(f"{path} does not exist")
    if e.errno in (errno.EACCES, errno.EPERM):
        return DeviceNotFound(f"{path}: permission denied")
    if e.errno == errno.EIO:
        return ChecksumError(f"{path.name}: {_RETRYABLE[errno.EIO]}")
    reason = _RETRYABLE.get(e.errno or 0, e.strerror or str(e))
    return BusError(f"{path.name}: {reason}")


def open_dht(options: _DHTOptions, hardware: Hardware) -> DHT:
    """Open the DHT that ``options`` names, by ``pin`` or by ``device``."""
    if options.device is not None:
        device = hardware.path(options.device)
    else:
        assert options.pin is not None
        device = find_device(options.pin, hardware)
    return DHT(
        device,
        model=options.model,
        hardware=hardware,
        clock=hardware.monotonic,
        sleep=hardware.sleep,
    )


def emulate_dht(options: _DHTOptions, hardware: SimulatedHardware) -> None:
    """A fake IIO device for ``options`` under ``hardware.root``.

    The directory looks like the kernel's (a ``name`` file ``dht11@<pin hex>``, so
    :func:`find_device` finds it by pin); its two value files follow ``simulation``
    (defaults: 18..24 °C, 40..60 %RH), quantized to the chip's resolution, and fail with
    EIO or ETIMEDOUT at ``simulation.fail_rate``. Each sensor gets its own
    ``iio:deviceN``; emulating the same one again reuses its directory.
    """
    model = MODELS[options.model]
    if options.device is not None:
        device = hardware.path(options.device)
        name = "dht11@0"
    else:
        assert options.pin is not None
        name = f"dht11@{options.pin:x}"
        device = _fake_device_dir(hardware, name)
    device.mkdir(parents=True, exist_ok=True)
    (device / "name").write_text(f"{name}\n")

    key = f"{hardware.seed}-{device.name}" if hardware.seed is not None else None
    rng = random.Random(key)
    sim = options.simulation.values
    signals = {
        "temperature": SimulatedSignal(sim.get("temperature", [18.0, 24.0]), rng=rng),
        "humidity": SimulatedSignal(sim.get("humidity", [40.0, 60.0]), rng=rng),
    }
    fail_rate = options.simulation.fail_rate

    def serve(quantity: str) -> Callable[[], str]:
        def produce() -> str:
            if fail_rate and rng.random() < fail_rate:
                code = errno.EIO if rng.random() < 0.8 else errno.ETIMEDOUT
                raise OSError(code, os.strerror(code))
            value = quantize(signals[quantity].next(), model.resolution)
            return f"{round(value * 1000)}\n"

        return produce

    hardware.serve_attr(device / "in_temp_input", serve("temperature"))
    hardware.serve_attr(device / "in_humidityrelative_input", serve("humidity"))


def _fake_device_dir(hardware: SimulatedHardware, name: str) -> Path:
    """The emulated device named ``name``, or the next free ``iio:deviceN``."""
    base = hardware.path(IIO_DEVICES)
    existing = _iio_devices(base)
    for device in existing:
        name_file = device / "name"
        if name_file.is_file() and name_file.read_text().strip() == name:
            return device
    numbers = [int(d.name.removeprefix("iio:device")) for d in existing]
    return base / f"iio:device{max(numbers, default=-1) + 1}"


DHT22_SPEC = DriverSpec(
    name="dht22",
    kind="sensor",
    summary="DHT22/AM2302 temperature and humidity via the kernel dht11 IIO driver",
    options=DHT22Options,
    open=open_dht,
    emulate=emulate_dht,
    quantities=quantities("dht22"),
    min_interval_s=MODELS["dht22"].min_interval_s,
    sample=SAMPLE_DHT22,
    humidity_shares_die=True,
)

DHT11_SPEC = DriverSpec(
    name="dht11",
    kind="sensor",
    summary="DHT11 temperature and humidity via the kernel dht11 IIO driver",
    options=DHT11Options,
    open=open_dht,
    emulate=emulate_dht,
    quantities=quantities("dht11"),
    min_interval_s=MODELS["dht11"].min_interval_s,
    sample=SAMPLE_DHT11,
    humidity_shares_die=True,
)

#: Both specs, for the registry.
SPECS = (DHT22_SPEC, DHT11_SPEC)
