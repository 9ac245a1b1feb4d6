"""Every driver the agent knows, by name: the built-in ones and those of installed packages.

Drivers register through entry points in the group ``pi_edge_agent.drivers`` (CONTRACT 11):
``name = "module:SPEC"``, the object a :class:`~drivers.base.DriverSpec` whose ``name`` is
the entry point's name. The built-in drivers are declared the same way in this project's
own ``pyproject.toml``, and listed again in :data:`BUILTIN` (a test keeps the two equal), so
that finding one needs neither the installed metadata nor ``importlib.metadata``.

Installed packages are found by reading the ``entry_points.txt`` of every ``*.dist-info``
and ``*.egg-info`` directory on ``sys.path`` (what pip and setuptools install; the first
distribution of a name on the path wins, as for ``importlib.metadata``): importing
``importlib.metadata`` and its scan of every distribution cost ~40 ms of every start, and
RSS, for a look at a few small files. A package whose entry point fails to load, or
yields something that is not a valid spec, is recorded in :data:`BROKEN` and reported once
(:func:`problems`); everything else works. A name that a package shares with a built-in
driver goes to the built-in, and is reported.

Packages' drivers are imported at start, so that a broken one is reported then; a built-in
driver's module only when it is first asked for (:func:`spec`, what loading a config does),
so the daemon holds only the drivers its config names. :data:`DRIVERS`, :data:`ORIGINS`
and :data:`BROKEN` import every built-in driver (``edge-agent drivers``, the JSON Schema).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from agent import __version__
from drivers.base import Driver, DriverSpec, InputOptions, Options, OutputOptions, SensorOptions
from drivers.errors import DriverError, PermanentError
from drivers.hardware import Hardware

log = logging.getLogger(__name__)

GROUP = "pi_edge_agent.drivers"
#: The distribution whose entry points are the built-in drivers.
BUILTIN_DISTRIBUTION = "pi-edge-agent"
#: The built-in drivers: ``[project.entry-points."pi_edge_agent.drivers"]`` of
#: pyproject.toml, entry for entry (tests/drivers/test_registry.py compares them).
BUILTIN: dict[str, str] = {
    "system": "drivers.system:SPEC",
    "bme280": "drivers.bme280:SPEC",
    "bmp280": "drivers.bme280:BMP280_SPEC",
    "dht22": "drivers.dht:DHT22_SPEC",
    "dht11": "drivers.dht:DHT11_SPEC",
    "sht3x": "drivers.sht3x:SPEC",
    "sht4x": "drivers.sht4x:SPEC",
    "aht20": "drivers.aht20:SPEC",
    "scd4x": "drivers.scd4x:SPEC",
    "bme680": "drivers.bme680:SPEC",
    "pms5003": "drivers.pms5003:SPEC",
    "relay": "drivers.gpio:RELAY_SPEC",
    "gpio": "drivers.gpio:GPIO_SPEC",
    "pwm": "drivers.pwm:SPEC",
    "ina219": "drivers.ina219:SPEC",
    "ads1015": "drivers.ads1x15:ADS1015_SPEC",
    "ads1115": "drivers.ads1x15:SPEC",
    "bh1750": "drivers.bh1750:SPEC",
    "ds18b20": "drivers.ds18b20:SPEC",
}

_BASES = {"sensor": SensorOptions, "output": OutputOptions, "input": InputOptions}


@dataclass(frozen=True)
class Origin:
    """Where a driver comes from."""

    #: The distribution (``pi-edge-agent`` for built-ins).
    package: str
    version: str
    #: The entry point's value, ``module:object``.
    target: str

    @property
    def builtin(self) -> bool:
        return _normalise(self.package) == _normalise(BUILTIN_DISTRIBUTION)

    def __str__(self) -> str:
        return "built-in" if self.builtin else f"{self.package} {self.version}"


@dataclass(frozen=True)
class Broken:
    """A driver entry point that could not be used."""

    name: str
    origin: Origin
    error: str

    def __str__(self) -> str:
        return (
            f"driver {self.name!r} from package {self.origin.package} {self.origin.version} "
            f"({self.origin.target}) cannot be used: {self.error}"
        )


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = module:object`` line of a distribution's ``entry_points.txt``."""

    name: str
    value: str

    def load(self) -> object:
        module, _, attributes = self.value.partition(":")
        found: object = importlib.import_module(module.strip())
        for attribute in attributes.split("[", 1)[0].strip().split(".") if attributes else ():
            found = getattr(found, attribute)
        return found


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _headers(directory: str) -> tuple[str, str]:
    """A distribution's ``Name`` and ``Version``, from its metadata file's headers alone
    (the long description after them can be thousands of lines)."""
    name = version = "unknown"
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(directory, file), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break
                    key, _, value = line.partition(":")
                    if key == "Name":
                        name = value.strip()
                    elif key == "Version":
                        version = value.strip()
        except (OSError, UnicodeDecodeError):
            continue
        break
    return name, version


def _group(text: str) -> list[EntryPoint]:
    """The entries of :data:`GROUP` in an ``entry_points.txt``."""
    found: list[EntryPoint] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == GROUP and "=" in line:
            name, _, value = line.partition("=")
            found.append(EntryPoint(name.strip(), value.strip()))
    return found


def _distribution_name(directory: str) -> str:
    """``foo_bar-1.0.dist-info`` or ``foo_bar.egg-info`` -> ``foo-bar``."""
    stem = directory.rsplit(".", 1)[0]
    return _normalise(stem.split("-", 1)[0])


def _distributions() -> Iterator[tuple[str, str, str, list[EntryPoint]]]:
    """(name, version, directory, driver entry points) of every distribution on
    ``sys.path`` that declares drivers; a name found again later on the path is skipped."""
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # missing, or not a directory (a zip file)
            continue
        for directory in names:
            if not directory.endswith((".dist-info", ".egg-info")):
                continue
            key = _distribution_name(directory)
            if key in seen:
                continue
            seen.add(key)
            path = os.path.join(entry or ".", directory)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            if GROUP not in text:
                continue
            entry_points = _group(text)
            if entry_points:
                yield (*_headers(path), path, entry_points)


def validate_spec(name: str, spec: object) -> str | None:
    """Why ``spec`` is not a usable driver called ``name``, or ``None`` when it is."""
    if not isinstance(spec, DriverSpec):
        return f"expected a drivers.base.DriverSpec, got {type(spec).__name__}"
    if spec.name != name:
        return f"the spec is named {spec.name!r} but its entry point is {name!r}"
    base = _BASES.get(spec.kind)
    if base is None:
        return f"kind {spec.kind!r} is none of sensor, output, input"
    if not (isinstance(spec.options, type) and issubclass(spec.options, base)):
        return f"a {spec.kind}'s options must subclass drivers.base.{base.__name__}"
    tag = spec.options.__struct_config__.tag
    if tag != name:
        return f"its options are tagged {tag!r}, not {name!r}"
    if not (callable(spec.open) and callable(spec.emulate)):
        return "open and emulate must be callables"
    return None


def _scan() -> None:
    """The built-ins from :data:`BUILTIN` (imported only when first asked for:
    :func:`spec`); every installed package's drivers, imported now (so that a broken
    package is reported at start)."""
    for name, target in sorted(BUILTIN.items()):
        _pending[name] = (
            EntryPoint(name, target),
            Origin(BUILTIN_DISTRIBUTION, __version__, target),
        )
        _order.append(name)
    found: list[tuple[Origin, EntryPoint]] = []
    for package, version, _path, entry_points in _distributions():
        if _normalise(package) == _normalise(BUILTIN_DISTRIBUTION):
            continue  # this project's own metadata: BUILTIN already holds it
        found += [(Origin(package, version, ep.value), ep) for ep in entry_points]
    found.sort(key=lambda pair: pair[1].name)
    packages: list[str] = []
    for origin, entry_point in found:
        name = entry_point.name
        if name in BUILTIN or name in packages:
            holder = "built-in" if name in BUILTIN else str(_origins.get(name, "another package"))
            _notes.append(
                f"package {origin.package} {origin.version} also provides driver "
                f"{name!r}; the one from {holder} is used"
            )
            continue
        if _use(entry_point, origin):
            packages.append(name)
            _order.append(name)


def _use(entry_point: EntryPoint, origin: Origin) -> bool:
    """Import ``entry_point``'s spec into the registry, or record why it cannot be used."""
    name = entry_point.name
    try:
        spec = entry_point.load()
    except Exception as e:  # a third party's import error must not stop the agent
        _broken[name] = Broken(name, origin, f"{type(e).__name__}: {e}")
        return False
    problem = validate_spec(name, spec)
    if problem is not None:
        _broken[name] = Broken(name, origin, problem)
        return False
    assert isinstance(spec, DriverSpec)
    _drivers[name] = spec
    _origins[name] = origin
    return True


_drivers: dict[str, DriverSpec] = {}
_origins: dict[str, Origin] = {}
_broken: dict[str, Broken] = {}
_notes: list[str] = []
#: Built-in drivers whose module is not imported yet.
_pending: dict[str, tuple[EntryPoint, Origin]] = {}
#: Driver names in the order they are listed: built-ins, then packages, each by name.
_order: list[str] = []
_scan()

#: Every usable driver by name (importing every built-in driver's module: to look one up,
#: use :func:`spec`).
DRIVERS: dict[str, DriverSpec]
#: Where each driver in :data:`DRIVERS` comes from.
ORIGINS: dict[str, Origin]
#: Entry points that could not be used, by driver name.
BROKEN: dict[str, Broken]


def __getattr__(name: str) -> object:
    # DRIVERS, ORIGINS and BROKEN are complete only once every built-in is imported.
    if name not in ("DRIVERS", "ORIGINS", "BROKEN"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for pending in list(_pending):
        spec(pending)
    listed = [n for n in _order if n in _drivers]
    tables = {
        "DRIVERS": {n: _drivers[n] for n in listed},
        "ORIGINS": {n: _origins[n] for n in listed},
        "BROKEN": dict(_broken),
    }
    globals().update(tables)
    return tables[name]


def spec(name: str) -> DriverSpec | None:
    """The driver called ``name``, its module imported on first use; ``None`` when there
    is none or it cannot be used (then :data:`BROKEN` says why).

    A config names a few of the built-in drivers; importing only those keeps the others'
    modules (their option structs, emulators, compensation code) out of the daemon.
    """
    found = _drivers.get(name)
    if found is None and name in _pending:
        _use(*_pending.pop(name))
        found = _drivers.get(name)
    return found


def problems() -> list[str]:
    """One sentence per broken package or name clash, to be reported once at start."""
    return [str(b) for b in _broken.values()] + list(_notes)


def _of_kind(kind: str) -> list[DriverSpec]:
    drivers: dict[str, DriverSpec] = __getattr__("DRIVERS")  # type: ignore[assignment]
    return [s for s in drivers.values() if s.kind == kind]


def sensors() -> list[DriverSpec]:
    return _of_kind("sensor")


def outputs() -> list[DriverSpec]:
    return _of_kind("output")


def inputs() -> list[DriverSpec]:
    return _of_kind("input")


def spec_of(options: Options) -> DriverSpec:
    """The registry entry of a config entry."""
    tag = options.__struct_config__.tag
    assert isinstance(tag, str)
    found = spec(tag)
    assert found is not None, f"no driver {tag!r} for options of {type(options).__name__}"
    return found


def guarded_open(spec: DriverSpec, options: Options, hardware: Hardware) -> Driver:
    """``spec.open``, with any error that is not a driver's own made a
    :class:`~drivers.errors.PermanentError`: a third party's bug is reported, never fatal."""
    try:
        return spec.open(options, hardware)
    except DriverError:
        raise
    except Exception as e:  # a driver's own bug must not take the daemon down
        log.debug("opening %s failed", spec.name, exc_info=True)
        raise PermanentError(f"{spec.name} could not be opened: {type(e).__name__}: {e}") from e
