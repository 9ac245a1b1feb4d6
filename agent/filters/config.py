"""The per-sensor processing options: ``filters``, ``derived``, ``altitude``, ``publish``
and ``humidity_follows_temperature`` (CONTRACT section 12).

They are the agent's business, not the drivers': a driver's options struct
(``drivers/*.py``, a :class:`~drivers.base.SensorOptions`) knows nothing of them. The
agent's config model extends each driver's options struct with these fields
(:func:`with_processing`, a msgspec subclass made once per driver at import), so the
config walker validates them like every other key - every problem with its line and full
key path - and the JSON Schema shows them. Drivers receive the extended struct and
ignore the extra fields; the agent reads them through :func:`processing_of`, which also
accepts a plain driver options struct (no processing).

Checks that need the driver (a filter on a quantity the chip does not measure,
``dew_point`` on a BMP280) are in :func:`check_processing`, called by the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from agent.filters.derived import DERIVED
from drivers.base import (
    DriverSpec,
    OptionError,
    Options,
    PositiveSeconds,
    Quantity,
    SensorOptions,
)

#: ``[measured, true]``.
Point = Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)]
Count = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
#: A number, or a percentage such as ``"5%"``.
Threshold = (
    Annotated[float, msgspec.Meta(ge=0)]
    | Annotated[str, msgspec.Meta(pattern=r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$")]
)
DerivedName = Literal[
    "dew_point", "frost_point", "absolute_humidity", "vpd", "heat_index", "sea_level_pressure"
]


def parse_threshold(value: float | str) -> tuple[float, bool]:
    """``(amount, is_percent)`` of a :data:`Threshold`."""
    if isinstance(value, str):
        return float(value.strip().rstrip("%").strip()), True
    return float(value), False


class Window(Options, frozen=True):
    """``median``, ``min``, ``max``: the last ``window_size`` values, emitted every
    ``send_every`` values, the first time at the ``send_first_at``-th."""

    window_size: Count = 5
    send_every: Count = 5
    send_first_at: Count = 1

    def __post_init__(self) -> None:
        if self.send_first_at > self.send_every:
            raise OptionError("send_first_at", "must not be greater than send_every")


class QuantileWindow(Window, frozen=True):
    """``quantile``: as a window, and the quantile (0.9: the value 90 % are below)."""

    quantile: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9


class MovingAverageWindow(Window, frozen=True):
    """``sliding_window_moving_average``: ESPHome's defaults are 15 and 15."""

    window_size: Count = 15
    send_every: Count = 15


class ExponentialMovingAverageOptions(Options, frozen=True):
    """``exponential_moving_average``."""

    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.1
    send_every: Count = 15
    send_first_at: Count = 1

    def __post_init__(self) -> None:
        if self.send_first_at > self.send_every:
            raise OptionError("send_first_at", "must not be greater than send_every")


class ClampOptions(Options, frozen=True):
    """``clamp``: at least one bound."""

    min_value: float | None = None
    max_value: float | None = None
    ignore_out_of_range: bool = False

    def __post_init__(self) -> None:
        if self.min_value is None and self.max_value is None:
            raise ValueError("set min_value, max_value or both")
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise OptionError("max_value", "must not be below min_value")


class PolynomialOptions(Options, frozen=True):
    """``calibrate_polynomial``: a least-squares polynomial of ``degree`` through
    ``[measured, true]`` datapoints."""

    degree: Annotated[int, msgspec.Meta(ge=1, le=10)]
    datapoints: Annotated[list[Point], msgspec.Meta(min_length=2)]

    def __post_init__(self) -> None:
        if len(self.datapoints) <= self.degree:
            raise OptionError(
                "datapoints",
                f"degree {self.degree} needs at least {self.degree + 1} datapoints, "
                f"got {len(self.datapoints)}",
            )
        if len({x for x, _ in self.datapoints}) <= self.degree:
            raise OptionError(
                "datapoints",
                f"degree {self.degree} needs {self.degree + 1} distinct measured values",
            )


class FilterStep(Options, frozen=True):
    """One filter: a mapping with exactly one of these keys (ESPHome's names)."""

    offset: float | None = None
    multiply: float | None = None
    #: ``[measured, true]`` pairs, least squares (exact through two).
    calibrate_linear: Annotated[list[Point], msgspec.Meta(min_length=2)] | None = None
    calibrate_polynomial: PolynomialOptions | None = None
    clamp: ClampOptions | None = None
    #: A value or a list of values to drop.
    filter_out: float | list[float] | None = None
    median: Window | None = None
    quantile: QuantileWindow | None = None
    min: Window | None = None
    max: Window | None = None
    sliding_window_moving_average: MovingAverageWindow | None = None
    exponential_moving_average: ExponentialMovingAverageOptions | None = None
    throttle: PositiveSeconds | None = None
    throttle_average: PositiveSeconds | None = None
    #: Pass only values that moved more than this (a number, or "5%") since the last passed.
    delta: Threshold | None = None
    #: Decimal places.
    round: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None

    def __post_init__(self) -> None:
        chosen = [f for f in self.__struct_fields__ if getattr(self, f) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"a filter is one of {', '.join(self.__struct_fields__)}; "
                f"got {', '.join(chosen) or 'none'}"
            )
        if self.calibrate_linear is not None and len({x for x, _ in self.calibrate_linear}) < 2:
            raise OptionError("calibrate_linear", "needs two different measured values")

    @property
    def name(self) -> str:
        """The filter's name (its one key)."""
        return next(f for f in self.__struct_fields__ if getattr(self, f) is not None)

    @property
    def argument(self) -> Any:
        return getattr(self, self.name)


class PublishOptions(Options, frozen=True):
    """When a sample is published."""

    #: Quantity -> the least change (a number, or "5%" of the last published value) that
    #: publishes it; quantities not named are published with every value.
    on_change: dict[str, Threshold] = {}
    #: Every quantity is published at least this often, changed or not.
    heartbeat: PositiveSeconds | None = None


class Processing(Options, frozen=True):
    """What the agent does with a sensor's values before publishing them."""

    #: Quantity -> its filters, applied in order to every sample.
    filters: dict[str, list[FilterStep]] = {}
    #: Quantities computed from the filtered values of the same sample.
    derived: list[DerivedName] = []
    #: Metres above sea level: adds ``sea_level_pressure``.
    altitude: Annotated[float, msgspec.Meta(ge=-500, le=9000)] | None = None
    publish: PublishOptions = PublishOptions()
    #: A temperature correction also corrects the humidity measured on the same die.
    humidity_follows_temperature: bool = True

    @property
    def derived_names(self) -> list[str]:
        """``derived``, plus ``sea_level_pressure`` when ``altitude`` is set."""
        names: list[str] = list(dict.fromkeys(self.derived))
        if self.altitude is not None and "sea_level_pressure" not in names:
            names.append("sea_level_pressure")
        return names


_FIELDS = [
    (
        f.name,
        f.type,
        msgspec.field(default_factory=f.default_factory)
        if f.default is msgspec.NODEFAULT
        else msgspec.field(default=f.default),
    )
    for f in msgspec.structs.fields(Processing)
]
_NO_PROCESSING = Processing()


#: Extended options struct -> the Processing fields it took (a driver's own field of the
#: same name, such as the SCD4x's ``altitude`` for its CO2 compensation, stays the driver's).
_TAKEN: dict[type, tuple[str, ...]] = {}


def with_processing(options: type[SensorOptions], tag: str) -> type[SensorOptions]:
    """``options`` extended with the :class:`Processing` fields (same name and tag) that
    the driver does not define itself."""
    own = {f.name for f in msgspec.structs.fields(options)}
    fields = [f for f in _FIELDS if f[0] not in own]
    extended = msgspec.defstruct(
        options.__name__,
        fields,
        bases=(options,),
        tag=tag,
        frozen=True,
        kw_only=True,
        forbid_unknown_fields=True,
        module=options.__module__,
    )
    assert issubclass(extended, SensorOptions)
    _TAKEN[extended] = tuple(name for name, _, _ in fields)
    return extended


def processing_of(options: SensorOptions) -> Processing:
    """The processing options of a sensor's config entry (none for a plain driver struct)."""
    taken = _TAKEN.get(type(options))
    if taken is None:
        return _NO_PROCESSING
    return Processing(**{name: getattr(options, name) for name in taken})


AddProblem = Callable[[tuple[str | int, ...], str], None]


def check_processing(
    path: tuple[str | int, ...],
    spec: DriverSpec,
    processing: Processing,
    add: AddProblem,
    quantities: Mapping[str, Quantity] | None = None,
) -> None:
    """Problems that need the driver: quantities it does not measure (``quantities``, the
    sensor's; default: the driver's), a derived quantity whose inputs it lacks,
    ``sea_level_pressure`` without ``altitude``."""
    have = spec.quantities if quantities is None else quantities
    measured = list(have)
    for quantity in processing.filters:
        if quantity not in have:
            add(
                path + ("filters", quantity),
                f"{spec.name} has no quantity {quantity!r}; it has {', '.join(measured)}",
            )
    for i, name in enumerate(processing.derived):
        missing = [q for q in DERIVED[name].inputs if q not in have]
        if missing:
            add(
                path + ("derived", i),
                f"{name} needs {', '.join(DERIVED[name].inputs)}; {spec.name} does not "
                f"measure {', '.join(missing)}",
            )
        if name == "sea_level_pressure" and processing.altitude is None:
            add(path + ("derived", i), "sea_level_pressure needs `altitude` (m above sea level)")
    if processing.altitude is not None:
        missing = [q for q in DERIVED["sea_level_pressure"].inputs if q not in have]
        if missing:
            add(
                path + ("altitude",),
                f"altitude adds sea_level_pressure, which needs pressure and temperature; "
                f"{spec.name} does not measure {', '.join(missing)}",
            )
    known = measured + processing.derived_names
    for quantity in processing.publish.on_change:
        if quantity not in known:
            add(
                path + ("publish", "on_change", quantity),
                f"no quantity {quantity!r}; this sensor has {', '.join(known)}",
            )
