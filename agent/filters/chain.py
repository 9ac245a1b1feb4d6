"""A sensor's processing, sample by sample: humidity correction, each quantity's filter
chain, the derived quantities, rounding to resolution, and the publish policy.

:class:`SensorChain` is pure and owns all the state (windows, averages, last published
values), so the daemon keeps it across a reload when the sensor's config did not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.filters import filters as f
from agent.filters.config import FilterStep, Processing, parse_threshold, processing_of
from agent.filters.derived import DERIVED, humidity_at
from agent.filters.publish import PublishPolicy
from agent.mqtt.payloads import round_to_resolution, round_values
from drivers.base import DriverSpec, Quantity, SensorOptions

#: Filters that emit once per ``send_every`` values.
_COUNTING = ("median", "quantile", "min", "max", "sliding_window_moving_average")


def build_filter(step: FilterStep, quantity: Quantity | None = None) -> f.Filter:
    """The filter object of one validated config step."""
    name, arg = step.name, step.argument
    resolution = quantity.resolution if quantity else 0.0
    if name == "offset":
        return f.Offset(arg)
    if name == "multiply":
        return f.Multiply(arg)
    if name == "calibrate_linear":
        return f.CalibrateLinear([(x, y) for x, y in arg])
    if name == "calibrate_polynomial":
        return f.CalibratePolynomial([(x, y) for x, y in arg.datapoints], arg.degree)
    if name == "clamp":
        return f.Clamp(
            min_value=arg.min_value,
            max_value=arg.max_value,
            ignore_out_of_range=arg.ignore_out_of_range,
        )
    if name == "filter_out":
        values = arg if isinstance(arg, list) else [arg]
        return f.FilterOut(values, normalise=lambda v: round_to_resolution(v, resolution))
    if name in _COUNTING:
        reduce: Callable[[Sequence[float]], float] = {
            "median": f.median,
            "quantile": lambda window: f.quantile(window, arg.quantile),
            "min": min,
            "max": max,
            "sliding_window_moving_average": f.mean,
        }[name]  # type: ignore[assignment]
        return f.WindowFilter(
            reduce,
            window_size=arg.window_size,
            send_every=arg.send_every,
            send_first_at=arg.send_first_at,
        )
    if name == "exponential_moving_average":
        return f.ExponentialMovingAverage(
            alpha=arg.alpha, send_every=arg.send_every, send_first_at=arg.send_first_at
        )
    if name == "throttle":
        return f.Throttle(arg)
    if name == "throttle_average":
        return f.ThrottleAverage(arg)
    if name == "delta":
        amount, percent = parse_threshold(arg)
        return f.Delta(amount, percent=percent)
    assert name == "round", name
    return f.Round(arg)


def quantities_of(
    spec: DriverSpec, processing: Processing, measured: Mapping[str, Quantity] | None = None
) -> dict[str, Quantity]:
    """Every quantity the sensor publishes: the chip's (``measured``, default the
    driver's), then the derived ones."""
    out = dict(spec.quantities if measured is None else measured)
    for name in processing.derived_names:
        out[name] = DERIVED[name].quantity
    return out


def sensor_quantities(spec: DriverSpec, options: SensorOptions) -> dict[str, Quantity]:
    """:func:`quantities_of` for a sensor's config entry."""
    return quantities_of(spec, processing_of(options), spec.quantities_of(options))


@dataclass(frozen=True)
class Sample:
    """One sample through the chain."""

    #: The driver's values rounded to resolution, as without filters.
    raw: dict[str, float]
    #: What the filters and derived quantities produced (rounded), held back or not.
    filtered: dict[str, float]
    #: The part of ``filtered`` the publish policy lets through; empty: publish nothing.
    published: dict[str, float]


class SensorChain:
    """The processing of one sensor.

    Args:
        spec: the driver (its quantities, and whether RH shares the temperature die).
        processing: the sensor's ``filters``, ``derived``, ``publish``... options.
        interval_s: the sensor's interval.
        measured: the chip's quantities for this sensor's options (default: the driver's).
    """

    def __init__(
        self,
        *,
        spec: DriverSpec,
        processing: Processing,
        interval_s: float,
        measured: Mapping[str, Quantity] | None = None,
    ) -> None:
        self.spec = spec
        self.processing = processing
        self.measured = spec.quantities if measured is None else measured
        self.quantities = quantities_of(spec, processing, self.measured)
        self._chains = {
            q: [build_filter(step, self.measured.get(q)) for step in steps]
            for q, steps in processing.filters.items()
        }
        temperature_chain = self._chains.get("temperature", [])
        self._temperature_correction = [x for x in temperature_chain if x.calibration]
        self._correct_humidity = bool(
            processing.humidity_follows_temperature
            and spec.humidity_shares_die
            and self._temperature_correction
        )
        self._derived = [DERIVED[name] for name in processing.derived_names]
        self._policy = PublishPolicy(processing.publish, interval_s=interval_s)
        #: Nothing to do but round: the cost of a reading stays what it was without filters.
        self._plain = not (self._chains or self._derived or processing.publish.on_change)

    @classmethod
    def for_sensor(cls, spec: DriverSpec, options: SensorOptions) -> SensorChain:
        return cls(
            spec=spec,
            processing=processing_of(options),
            interval_s=options.interval,
            measured=spec.quantities_of(options),
        )

    def corrected_humidity(self, temperature_c: float, humidity_rh: float, now: float) -> float:
        """The RH at the corrected temperature, the vapour pressure kept."""
        corrected = temperature_c
        for step in self._temperature_correction:
            out = step.new_value(corrected, now)
            assert out is not None  # calibrations always pass a value
            corrected = out
        return humidity_at(
            humidity_rh, measured_temperature_c=temperature_c, true_temperature_c=corrected
        )

    def process(self, raw: Mapping[str, float], now: float) -> Sample:
        """Run one sample (the driver's unrounded values) taken at ``now`` (monotonic s)."""
        if self._plain:
            rounded = round_values(raw, self.measured)
            return Sample(raw=rounded, filtered=rounded, published=rounded)
        inputs = dict(raw)
        if self._correct_humidity and "temperature" in raw and "humidity" in raw:
            inputs["humidity"] = self.corrected_humidity(raw["temperature"], raw["humidity"], now)
        values: dict[str, float] = {}
        for name, value in inputs.items():
            out = _run(self._chains.get(name, ()), value, now)
            if out is not None and math.isfinite(out):
                values[name] = out
        for derived in self._derived:
            if all(q in values for q in derived.inputs):
                try:
                    result = derived.compute(values, self.processing.altitude)
                except (ValueError, ZeroDivisionError, OverflowError):
                    continue  # e.g. a dew point at 0 %RH
                if math.isfinite(result):
                    values[derived.name] = result
        filtered = round_values(values, self.quantities)
        return Sample(
            raw=round_values(raw, self.measured),
            filtered=filtered,
            published=self._policy.select(filtered, now),
        )


def _run(steps: Sequence[f.Filter], value: float, now: float) -> float | None:
    """``value`` through ``steps``; None as soon as one holds it back."""
    out: float | None = value
    for step in steps:
        out = step.new_value(value, now)
        if out is None:
            return None
        value = out
    return out


def _period_s(steps: list[FilterStep], interval_s: float) -> float | None:
    """The longest time between two values out of ``steps`` on a working sensor, or None
    when they may hold values back for ever (delta, filter_out, clamp that drops)."""
    period = interval_s
    for step in steps:
        arg = step.argument
        if step.name in (*_COUNTING, "exponential_moving_average"):
            period *= arg.send_every
        elif step.name in ("throttle", "throttle_average"):
            period = math.ceil(arg / period - 1e-9) * period if arg > period else period
            if step.name == "throttle_average":
                period += interval_s
        elif step.name in ("delta", "filter_out") or (
            step.name == "clamp" and arg.ignore_out_of_range
        ):
            return None
    return period


def reading_gap_s(spec: DriverSpec, options: SensorOptions) -> float | None:
    """The longest time between two published readings of a working sensor, or None when
    it is unbounded (every quantity may be held back for ever).

    Home Assistant restarts an entity's ``expire_after`` on every message on the sensor's
    topic, whichever quantities it holds, so it is the sensor's gap that counts.
    """
    processing = processing_of(options)
    gaps = []
    for name in spec.quantities_of(options):
        period = _period_s(processing.filters.get(name, []), options.interval)
        if period is None:
            continue
        if name in processing.publish.on_change:
            heartbeat = processing.publish.heartbeat
            if heartbeat is None:
                continue
            period = heartbeat + period
        gaps.append(period)
    return min(gaps) if gaps else None
