"""Simulated physical values: a constant, or a bounded random walk."""

from __future__ import annotations

import random
from collections.abc import Mapping

from drivers.errors import HardwareConfigError


class SimulatedSignal:
    """A value that stays constant or wanders inside ``[lo, hi]``.

    The walk moves by at most 2 % of the span per step and reflects at the bounds, so it
    looks like a real room rather than noise.
    """

    def __init__(self, spec: float | list[float], *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        if isinstance(spec, list):
            lo, hi = sorted(float(v) for v in spec)
            self.lo, self.hi = lo, hi
            self._value = self._rng.uniform(lo, hi)
        else:
            self.lo = self.hi = self._value = float(spec)

    def next(self) -> float:
        """The next value."""
        span = self.hi - self.lo
        if span > 0:
            step = self._rng.uniform(-0.02, 0.02) * span
            value = self._value + step
            if value > self.hi:
                value = 2 * self.hi - value
            if value < self.lo:
                value = 2 * self.lo - value
            self._value = min(self.hi, max(self.lo, value))
        return self._value


def simulated_signals(
    values: Mapping[str, float | list[float]],
    defaults: Mapping[str, float | list[float]],
    rng: random.Random,
) -> dict[str, SimulatedSignal]:
    """One signal per quantity of ``defaults``, from ``values`` where the config gives one.

    Raises:
        HardwareConfigError: ``values`` names a quantity the chip does not measure (a typo
            would otherwise be ignored in silence).
    """
    unknown = set(values) - set(defaults)
    if unknown:
        raise HardwareConfigError(
            f"simulation: {', '.join(sorted(unknown))} is not one of {', '.join(defaults)}"
        )
    return {
        name: SimulatedSignal(values.get(name, default), rng=rng)
        for name, default in defaults.items()
    }
