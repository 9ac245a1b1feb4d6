"""Where drivers get their hardware: the Pi's own, or an emulated one.

The agent opens every driver through a :class:`Hardware`. :class:`RealHardware` hands out
``smbus2.SMBus`` objects, gpiozero's default pin factory and the real ``/sys`` and
``/proc``. :class:`SimulatedHardware` hands out fake buses with register-level chip
emulators, a ``MockFactory`` and a private file tree, so ``--simulate`` runs the same
driver code.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from drivers.errors import DeviceNotFound
from drivers.sim.fake_serial import FakeSerialPort
from drivers.sim.fake_smbus import FakeSMBus

#: Reads one sysfs/procfs attribute as text.
AttrReader = Callable[[Path], str]

_bus_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_bus_locks_strong: dict[int, tuple[Any, threading.RLock]] = {}
_bus_locks_guard = threading.Lock()


def bus_lock(bus: object) -> threading.RLock:
    """The one lock of ``bus``: every driver holds it while it talks to the bus.

    One ``smbus2.SMBus`` is shared by every chip on the bus, and it keeps the target
    address as per-file state (``ioctl(I2C_SLAVE)`` then the transfer), so two threads
    using it at once can send one chip's bytes to the other. Holding this lock for a whole
    measurement also keeps a trigger-wait-read sequence in one piece. The lock belongs to
    the bus object, so drivers from different packages that share a bus share the lock.
    It is re-entrant: a driver may call helpers that take it again.
    """
    with _bus_locks_guard:
        try:
            lock = _bus_locks.get(bus)
            if lock is None:
                lock = _bus_locks[bus] = threading.RLock()
        except TypeError:  # not weak-referenceable: keep it alive instead
            entry = _bus_locks_strong.get(id(bus))
            if entry is None:
                entry = _bus_locks_strong[id(bus)] = (bus, threading.RLock())
            lock = entry[1]
        return lock


def bus_may_block(bus: object) -> bool:
    """Whether a transaction on ``bus`` may block: True for a real bus (an ``smbus2.SMBus``
    waits for the adapter and the chip). A fake bus whose chips answer from memory says
    False with a ``may_block`` attribute (:class:`~drivers.sim.fake_smbus.FakeSMBus`), and
    a :class:`~drivers.base.SteppedSensor` on it is read on the agent's event loop."""
    return bool(getattr(bus, "may_block", True))


class Hardware:
    """The hardware a driver may ask for.

    Subclasses *may* override any method; the defaults are those of a real Pi.
    """

    simulated = False

    def __init__(self, root: Path = Path("/")) -> None:
        #: Where ``/sys`` and ``/proc`` are found (a fake tree in tests).
        self.root = root
        self._buses: dict[int, Any] = {}
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Monotonic seconds. Drivers that pace or poll take their clock from here (and
        emulators theirs), so simulated hardware can run on virtual time."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait for the chip (a conversion, a pacing interval)."""
        time.sleep(seconds)

    def path(self, absolute: str) -> Path:
        """``absolute`` ("/sys/class/thermal") under :attr:`root`."""
        return self.root / absolute.lstrip("/")

    def read_attr(self, path: Path) -> str:
        """Read a sysfs/procfs attribute. Errors are the kernel's ``OSError``."""
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()

    def write_attr(self, path: Path, text: str) -> None:
        """Write a sysfs attribute (a DS18B20's ``resolution``). Errors are ``OSError``."""
        with open(path, "w", encoding="ascii") as f:
            f.write(text)

    def i2c_lock(self, number: int) -> threading.RLock:
        """The lock of ``/dev/i2c-<number>`` (:func:`bus_lock` of :meth:`i2c_bus`)."""
        return bus_lock(self.i2c_bus(number))

    def i2c_bus_numbers(self) -> list[int]:
        """The I2C buses that exist (``/dev/i2c-*``), for ``edge-agent scan``."""
        numbers = []
        for node in self.path("/dev").glob("i2c-*"):
            suffix = node.name.removeprefix("i2c-")
            if suffix.isdigit():
                numbers.append(int(suffix))
        return sorted(numbers)

    def serial_port_names(self) -> list[str]:
        """The serial devices that exist (``/dev/serial0``, ``/dev/ttyUSB0``, …)."""
        from drivers.scan import SERIAL_GLOBS

        dev = self.path("/dev")
        return sorted({f"/dev/{p.name}" for pattern in SERIAL_GLOBS for p in dev.glob(pattern)})

    def serial_port(self, path: str, *, baudrate: int, timeout_s: float) -> Any:
        """A serial port (8N1) opened with pyserial: ``read(n)``, ``write(b)``,
        ``reset_input_buffer()``, ``close()``."""
        try:
            import serial
        except ImportError as e:
            raise DeviceNotFound(
                "pyserial is not installed: pip install pyserial (Debian: python3-serial)"
            ) from e
        try:
            return serial.Serial(path, baudrate=baudrate, timeout=timeout_s)
        except serial.SerialException as e:
            raise DeviceNotFound(
                f"{path}: {e}: enable the serial port (raspi-config nonint do_serial_hw 0) "
                "and check the agent's user is in group dialout"
            ) from e

    def i2c_bus(self, number: int) -> Any:
        """The bus ``/dev/i2c-<number>``, opened once and shared by every driver on it."""
        with self._lock:
            bus = self._buses.get(number)
            if bus is None:
                bus = self._buses[number] = self._open_i2c(number)
            return bus

    def _open_i2c(self, number: int) -> Any:
        from smbus2 import SMBus

        try:
            return SMBus(number)
        except FileNotFoundError as e:
            raise DeviceNotFound(
                f"/dev/i2c-{number} does not exist: enable I2C (raspi-config) or check `bus`"
            ) from e
        except PermissionError as e:
            raise DeviceNotFound(
                f"/dev/i2c-{number}: permission denied: the agent's user needs group i2c"
            ) from e

    def pin_factory(self) -> Any:
        """gpiozero pin factory for GPIO drivers; ``None`` means gpiozero's default."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every bus this object opened."""
        with self._lock:
            for bus in self._buses.values():
                bus.close()
            self._buses.clear()


RealHardware = Hardware


class SimulatedHardware(Hardware):
    """Emulated hardware. Emulators register themselves here (see ``DriverSpec.emulate``).

    Files live in a private temporary tree; attributes whose reads must behave like a
    device (change on each read, fail with EIO) are served by callables.
    """

    simulated = True

    def __init__(
        self, root: Path | None = None, *, seed: int | None = None, virtual_time: bool = False
    ) -> None:
        self._owns_root = root is None
        #: With virtual time :meth:`sleep` returns at once and moves :meth:`monotonic` on,
        #: so a driver that paces its chip (a DHT22's 2 s) is tested in milliseconds.
        self.virtual_time = virtual_time
        self._time_offset = 0.0
        super().__init__(root or Path(tempfile.mkdtemp(prefix="edge-agent-sim-")))
        self.seed = seed
        self._attrs: dict[Path, Callable[[], str]] = {}
        self._attr_writers: dict[Path, Callable[[str], None]] = {}
        self._serial: dict[str, FakeSerialPort] = {}
        self._factory: Any = None
        self._stop = threading.Event()
        self._tickers: list[threading.Thread] = []

    def monotonic(self) -> float:
        return time.monotonic() + self._time_offset

    def sleep(self, seconds: float) -> None:
        if self.virtual_time:
            with self._lock:
                self._time_offset += max(0.0, seconds)
        else:
            time.sleep(seconds)

    def _open_i2c(self, number: int) -> FakeSMBus:
        return FakeSMBus(number, seed=self.seed)

    def fake_bus(self, number: int) -> FakeSMBus:
        """The fake bus ``number``, for emulators to attach chips to."""
        bus = self.i2c_bus(number)
        assert isinstance(bus, FakeSMBus)
        return bus

    def serve_attr(
        self,
        path: Path,
        produce: Callable[[], str],
        consume: Callable[[str], None] | None = None,
    ) -> None:
        """Answer reads of ``path`` with ``produce()`` and writes with ``consume(text)``;
        either may raise ``OSError``. Without ``consume`` the attribute is read-only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self._attrs[path] = produce
        if consume is not None:
            self._attr_writers[path] = consume

    def remove_attr(self, path: Path) -> None:
        """Make ``path`` vanish, as a device's sysfs entry does when it is unplugged."""
        self._attrs.pop(path, None)
        self._attr_writers.pop(path, None)
        path.unlink(missing_ok=True)

    def write_attr(self, path: Path, text: str) -> None:
        consume = self._attr_writers.get(path)
        if consume is not None:
            consume(text)
            return
        if path in self._attrs:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        super().write_attr(path, text)

    def i2c_bus_numbers(self) -> list[int]:
        return sorted(self._buses)

    def attach_serial(self, path: str, port: FakeSerialPort) -> None:
        """Serve ``port`` when a driver opens the serial device ``path``."""
        self._serial[path] = port

    def serial_port_names(self) -> list[str]:
        return sorted(self._serial)

    def serial_port(self, path: str, *, baudrate: int, timeout_s: float) -> Any:
        port = self._serial.get(path)
        if port is None:
            raise DeviceNotFound(f"{path} does not exist (no emulated device there)")
        port.configure(baudrate=baudrate, timeout_s=timeout_s)
        return port

    def read_attr(self, path: Path) -> str:
        produce = self._attrs.get(path)
        if produce is not None:
            return produce()
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return super().read_attr(path)

    def every(self, period_s: float, action: Callable[[], None], name: str) -> None:
        """Call ``action`` every ``period_s`` on a thread of its own until :meth:`close`
        (an emulated contact that opens and closes, say). Errors in it are ignored."""

        def tick() -> None:
            while not self._stop.wait(period_s):
                with contextlib.suppress(Exception):
                    action()

        thread = threading.Thread(target=tick, name=f"sim-{name}", daemon=True)
        thread.start()
        self._tickers.append(thread)

    def pin_factory(self) -> Any:
        if self._factory is None:
            from gpiozero.pins.mock import MockFactory

            self._factory = MockFactory()
        return self._factory

    def close(self) -> None:
        self._stop.set()
        for thread in self._tickers:
            thread.join(1.0)
        self._tickers.clear()
        super().close()
        if self._factory is not None:
            self._factory.close()
            self._factory = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
