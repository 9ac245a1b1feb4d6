"""Every driver the agent knows, by name: the built-in ones and those of installed packages.

Drivers register through entry points in the group ``pi_edge_agent.drivers`` (CONTRACT 11):
``name = "module:SPEC"``, the object a :class:`~drivers.base.DriverSpec` whose ``name`` is
the entry point's name. The built-in drivers register the same way, in this project's own
``pyproject.toml`` — so adding a built-in driver adds one line there, and the venv must be
reinstalled to see it (``make venv``, or ``pip install -e .``).

A package whose entry point fails to load, or yields something that is not a valid spec,
is recorded in :data:`BROKEN` and reported once (:func:`problems`); everything else works.
A name that a package shares with a built-in driver goes to the built-in, and is reported.

Packages' drivers are imported at start, so that a broken one is reported then; a built-in
driver's module only when it is first asked for (:func:`spec`, what loading a config does),
so the daemon holds only the drivers its config names. :data:`DRIVERS`, :data:`ORIGINS`
and :data:`BROKEN` import every built-in driver (``edge-agent drivers``, the JSON Schema).
"""

from __future__ import annotations

import email
import importlib.metadata
import logging
from dataclasses import dataclass

from drivers.base import Driver, DriverSpec, InputOptions, Options, OutputOptions, SensorOptions
from drivers.errors import DriverError, PermanentError
from drivers.hardware import Hardware

log = logging.getLogger(__name__)

GROUP = "pi_edge_agent.drivers"
#: The distribution whose entry points are the built-in drivers.
BUILTIN_DISTRIBUTION = "pi-edge-agent"

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


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _name_and_version(dist: importlib.metadata.Distribution | None) -> tuple[str, str]:
    """A distribution's ``Name`` and ``Version``, from its metadata's headers alone.

    ``dist.metadata`` parses the whole file, long description included (this project's is
    its README, ~1800 lines), and ``dist.metadata`` and ``dist.version`` parse it
    again on every access: asked per entry point, that cost ~0.25 s of every start.
    """
    if dist is None:
        return "unknown", "unknown"
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    headers = email.message_from_string(text.split("\n\n", 1)[0])
    return headers.get("Name", "unknown"), headers.get("Version", "unknown")


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
    """Find every entry point; import the third parties' now (so that a broken package is
    reported at start), the built-ins' only when first asked for (:func:`spec`)."""
    by_dist: dict[int, tuple[str, str]] = {}  # id(distribution) -> (name, version)
    found: list[tuple[Origin, importlib.metadata.EntryPoint]] = []
    for entry_point in importlib.metadata.entry_points(group=GROUP):
        dist = entry_point.dist
        if id(dist) not in by_dist:
            by_dist[id(dist)] = _name_and_version(dist)
        package, version = by_dist[id(dist)]
        found.append(
            (Origin(package=package, version=version, target=entry_point.value), entry_point)
        )
    found.sort(key=lambda pair: (not pair[0].builtin, pair[1].name))  # built-ins first: they win
    seen: set[tuple[str, str]] = set()
    holders: dict[str, Origin] = {}  # name -> where the driver of that name comes from
    for origin, entry_point in found:
        key = (entry_point.name, entry_point.value)
        if key in seen:  # one distribution found twice on sys.path
            continue
        seen.add(key)
        name = entry_point.name
        if name in holders:
            _notes.append(
                f"package {origin.package} {origin.version} also provides driver "
                f"{name!r}; the one from {holders[name]} is used"
            )
            continue
        if origin.builtin:
            _pending[name] = (entry_point, origin)
        elif not _use(entry_point, origin):
            continue
        holders[name] = origin
        _order.append(name)


def _use(entry_point: importlib.metadata.EntryPoint, origin: Origin) -> bool:
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
_pending: dict[str, tuple[importlib.metadata.EntryPoint, Origin]] = {}
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
