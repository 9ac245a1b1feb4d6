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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.errors import DeviceNotFound
from drivers.sim.fake_smbus import FakeSMBus

#: Reads one sysfs/procfs attribute as text.
AttrReader = Callable[[Path], str]


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

    def path(self, absolute: str) -> Path:
        """``absolute`` ("/sys/class/thermal") under :attr:`root`."""
        return self.root / absolute.lstrip("/")

    def read_attr(self, path: Path) -> str:
        """Read a sysfs/procfs attribute. Errors are the kernel's ``OSError``."""
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()

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

    def __init__(self, root: Path | None = None, *, seed: int | None = None) -> None:
        self._owns_root = root is None
        super().__init__(root or Path(tempfile.mkdtemp(prefix="edge-agent-sim-")))
        self.seed = seed
        self._attrs: dict[Path, Callable[[], str]] = {}
        self._factory: Any = None
        self._stop = threading.Event()
        self._tickers: list[threading.Thread] = []

    def _open_i2c(self, number: int) -> FakeSMBus:
        return FakeSMBus(number, seed=self.seed)

    def fake_bus(self, number: int) -> FakeSMBus:
        """The fake bus ``number``, for emulators to attach chips to."""
        bus = self.i2c_bus(number)
        assert isinstance(bus, FakeSMBus)
        return bus

    def serve_attr(self, path: Path, produce: Callable[[], str]) -> None:
        """Answer reads of ``path`` with ``produce()``, which may raise ``OSError``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self._attrs[path] = produce

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
