"""The filter objects: one per ESPHome sensor filter, each a small pure state machine.

A filter takes one value at a time (:meth:`Filter.new_value`) and returns a value to pass
on, or None to hold the sample back (a window that is not due yet, a throttle, a delta that
is too small). Filters that depend on time take ``now``, monotonic seconds, from the caller:
nothing here reads a clock, so every filter is a function of its inputs and its state.

The semantics are ESPHome's (esphome.io/components/sensor/filter/*): the window filters'
``window_size``/``send_every``/``send_first_at`` counting, the quantile position
``ceil(n * q) - 1``, the exponential moving average seeded with its first value, ``delta``
passing only values that differ by *more* than the threshold from the last passed one, and
so on. Where ESPHome's behaviour comes from its timer loop (``throttle_average``) the
difference is described on the class.
"""

from __future__ import annotations

import abc
import math
from collections import deque
from collections.abc import Callable, Sequence

__all__ = [
    "CalibrateLinear",
    "CalibratePolynomial",
    "Clamp",
    "Delta",
    "ExponentialMovingAverage",
    "Filter",
    "FilterOut",
    "Multiply",
    "Offset",
    "Round",
    "Throttle",
    "ThrottleAverage",
    "WindowFilter",
    "fit_linear",
    "fit_polynomial",
    "mean",
    "median",
    "quantile",
]


class Filter(abc.ABC):
    """One step of a quantity's filter chain.

    Subclasses *must* implement :meth:`new_value`. They *may* set :attr:`calibration` when
    they map a value to a corrected one without state (``offset``, ``multiply``, the
    calibrations): those are the steps that also correct humidity when they correct a
    temperature (``humidity_follows_temperature``).
    """

    #: A stateless correction of the value (applied again to correct humidity).
    calibration: bool = False

    @abc.abstractmethod
    def new_value(self, value: float, now: float) -> float | None:
        """The value to pass on for ``value`` arriving at ``now`` (monotonic s), or None."""


class Offset(Filter):
    """Adds a constant: ``offset: -1.2``."""

    calibration = True

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def new_value(self, value: float, now: float) -> float | None:
        return value + self.offset


class Multiply(Filter):
    """Multiplies by a constant: ``multiply: 1.05``."""

    calibration = True

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def new_value(self, value: float, now: float) -> float | None:
        return value * self.factor


def fit_linear(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line through ``(measured, true)`` points.

    Raises:
        ValueError: fewer than two points, or every measured value is the same.
    """
    if len(points) < 2:
        raise ValueError("a line needs at least two points")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("the measured values must not all be the same")
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    return slope, my - slope * mx


class CalibrateLinear(Filter):
    """Maps measured to true by the least-squares line through ``[measured, true]`` points
    (exact through two points)."""

    calibration = True

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        self.slope, self.intercept = fit_linear(points)

    def new_value(self, value: float, now: float) -> float | None:
        return self.slope * value + self.intercept


def fit_polynomial(points: Sequence[tuple[float, float]], degree: int) -> list[float]:
    """Coefficients ``[c0, c1, ...]`` of the least-squares polynomial of ``degree`` through
    the points (``c0 + c1*x + c2*x**2 ...``), from the normal equations solved by Gaussian
    elimination with partial pivoting.

    Raises:
        ValueError: ``degree`` < 1, not more points than ``degree``, or a singular system
            (too few distinct measured values).
    """
    if degree < 1:
        raise ValueError("degree must be at least 1")
    if len(points) <= degree:
        raise ValueError(f"degree {degree} needs at least {degree + 1} datapoints")
    size = degree + 1
    power_sums = [sum(x**k for x, _ in points) for k in range(2 * degree + 1)]
    matrix = [[power_sums[r + c] for c in range(size)] for r in range(size)]
    rhs = [sum(y * x**r for x, y in points) for r in range(size)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(matrix[r][col]))
        if abs(matrix[pivot][col]) < 1e-12 * max(1.0, abs(power_sums[0])):
            raise ValueError("the datapoints need more distinct measured values")
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        rhs[col], rhs[pivot] = rhs[pivot], rhs[col]
        for r in range(col + 1, size):
            factor = matrix[r][col] / matrix[col][col]
            for c in range(col, size):
                matrix[r][c] -= factor * matrix[col][c]
            rhs[r] -= factor * rhs[col]
    coefficients = [0.0] * size
    for r in reversed(range(size)):
        tail = sum(matrix[r][c] * coefficients[c] for c in range(r + 1, size))
        coefficients[r] = (rhs[r] - tail) / matrix[r][r]
    return coefficients


class CalibratePolynomial(Filter):
    """Maps measured to true by a least-squares polynomial of ``degree``."""

    calibration = True

    def __init__(self, points: Sequence[tuple[float, float]], degree: int) -> None:
        self.coefficients = fit_polynomial(points, degree)

    def new_value(self, value: float, now: float) -> float | None:
        result = 0.0
        for c in reversed(self.coefficients):  # Horner
            result = result * value + c
        return result


class Clamp(Filter):
    """Limits to ``[min_value, max_value]`` (inclusive; a missing bound is open); with
    ``ignore_out_of_range`` a value outside is dropped instead of moved to the bound."""

    def __init__(
        self,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
        ignore_out_of_range: bool = False,
    ) -> None:
        self.min_value = -math.inf if min_value is None else min_value
        self.max_value = math.inf if max_value is None else max_value
        self.ignore_out_of_range = ignore_out_of_range

    def new_value(self, value: float, now: float) -> float | None:
        if self.min_value <= value <= self.max_value:
            return value
        if self.ignore_out_of_range:
            return None
        return self.min_value if value < self.min_value else self.max_value


class FilterOut(Filter):
    """Drops the given values, compared at the quantity's resolution (as ESPHome compares
    at the sensor's ``accuracy_decimals``): ``filter_out: 85.0`` drops a DS18B20's
    power-on value."""

    def __init__(self, values: Sequence[float], *, normalise: Callable[[float], float]) -> None:
        self._normalise = normalise
        self._values = frozenset(normalise(v) for v in values)

    def new_value(self, value: float, now: float) -> float | None:
        return None if self._normalise(value) in self._values else value


def median(values: Sequence[float]) -> float:
    """The middle value; of an even count, the mean of the two middle ones."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def quantile(values: Sequence[float], q: float) -> float:
    """ESPHome's quantile: the sorted value at position ``ceil(n * q) - 1``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q) - 1)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class WindowFilter(Filter):
    """``median``, ``quantile``, ``min``, ``max`` and ``sliding_window_moving_average``:
    keeps the last ``window_size`` values and emits ``reduce(window)`` on every
    ``send_every``-th value, the first time on the ``send_first_at``-th.

    Args:
        reduce: the window's statistic (:func:`median`, :func:`mean`, ``min``...).
        window_size: values kept (>= 1).
        send_every: emit on every this many values (>= 1).
        send_first_at: emit the first time on this value (1 <= send_first_at <= send_every).
    """

    def __init__(
        self,
        reduce: Callable[[Sequence[float]], float],
        *,
        window_size: int,
        send_every: int,
        send_first_at: int = 1,
    ) -> None:
        if window_size < 1 or send_every < 1 or not 1 <= send_first_at <= send_every:
            raise ValueError("need window_size >= 1 and 1 <= send_first_at <= send_every")
        self._reduce = reduce
        self.send_every = send_every
        self._window: deque[float] = deque(maxlen=window_size)
        self._count = send_every - send_first_at

    def new_value(self, value: float, now: float) -> float | None:
        self._window.append(value)
        self._count += 1
        if self._count < self.send_every:
            return None
        self._count = 0
        return self._reduce(list(self._window))


class ExponentialMovingAverage(Filter):
    """``avg = alpha * value + (1 - alpha) * avg``, seeded with the first value; emitted on
    every ``send_every``-th value, the first time on the ``send_first_at``-th."""

    def __init__(self, *, alpha: float, send_every: int, send_first_at: int = 1) -> None:
        if not 0 < alpha <= 1 or send_every < 1 or not 1 <= send_first_at <= send_every:
            raise ValueError("need 0 < alpha <= 1 and 1 <= send_first_at <= send_every")
        self.alpha = alpha
        self.send_every = send_every
        self._average: float | None = None
        self._count = send_every - send_first_at

    def new_value(self, value: float, now: float) -> float | None:
        if self._average is None:
            self._average = value
        else:
            self._average = self.alpha * value + (1 - self.alpha) * self._average
        self._count += 1
        if self._count < self.send_every:
            return None
        self._count = 0
        return self._average


class Throttle(Filter):
    """Passes a value only when the last passed one is at least ``period_s`` old."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: float | None = None

    def new_value(self, value: float, now: float) -> float | None:
        if self._last is not None and now - self._last < self.period_s:
            return None
        self._last = now
        return value


class ThrottleAverage(Filter):
    """The mean of the values of each ``period_s`` period, emitted once per period.

    ESPHome emits from a timer at the end of each period. Here nothing runs between
    samples, so periods are counted from the first value (``t0 + k * period_s``) and a
    period's mean is emitted with the first value that falls into a later period; that
    value starts the next period. A period without values emits nothing (ESPHome since
    2024.3 does the same instead of NaN).
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._t0: float | None = None
        self._period = 0
        self._sum = 0.0
        self._n = 0

    def new_value(self, value: float, now: float) -> float | None:
        if self._t0 is None:
            self._t0 = now
        period = math.floor((now - self._t0) / self.period_s)
        out = None
        if period != self._period:
            if self._n:
                out = self._sum / self._n
            self._period, self._sum, self._n = period, 0.0, 0
        self._sum += value
        self._n += 1
        return out


class Delta(Filter):
    """Passes a value only when it differs by more than ``threshold`` from the last passed
    one (the first always passes); with ``percent`` the threshold is that percentage of the
    last passed value."""

    def __init__(self, threshold: float, *, percent: bool = False) -> None:
        self.threshold = threshold
        self.percent = percent
        self._last: float | None = None

    def new_value(self, value: float, now: float) -> float | None:
        if self._last is not None:
            limit = abs(self._last) * self.threshold / 100 if self.percent else self.threshold
            if abs(value - self._last) <= limit:
                return None
        self._last = value
        return value


class Round(Filter):
    """Rounds to ``decimals`` decimal places."""

    def __init__(self, decimals: int) -> None:
        self.decimals = decimals

    def new_value(self, value: float, now: float) -> float | None:
        return round(value, self.decimals)
