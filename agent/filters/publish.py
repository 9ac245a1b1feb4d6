"""When a quantity is published: ``publish.on_change`` and ``publish.heartbeat``.

A pure object per sensor: it is shown each sample's values (after filters and derived
quantities) and returns those to publish. A quantity with an ``on_change`` threshold is
published when it moved at least that much from the value last *published* (so a slow
drift is published once it adds up), or when its last publication is a ``heartbeat`` old;
a quantity without a threshold is published with every value it has. A threshold of 0
publishes every change.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.filters.config import PublishOptions, parse_threshold


class PublishPolicy:
    """Decides, per quantity, whether this sample's value is published.

    Args:
        options: the sensor's ``publish`` options.
        interval_s: the sensor's interval; a heartbeat is due up to half an interval
            early, so a 5 m heartbeat on a 10 s interval fires on the 30th sample, not
            the 31st because of a millisecond of jitter.
    """

    def __init__(self, options: PublishOptions, *, interval_s: float) -> None:
        self._thresholds = {q: parse_threshold(t) for q, t in options.on_change.items()}
        self._heartbeat_s = options.heartbeat
        self._slack_s = interval_s / 2
        #: Quantity -> (value, monotonic time) of its last publication.
        self._last: dict[str, tuple[float, float]] = {}

    def select(self, values: Mapping[str, float], now: float) -> dict[str, float]:
        """The values to publish of a sample taken at ``now`` (monotonic s); they count as
        published from here on."""
        out: dict[str, float] = {}
        for name, value in values.items():
            if self._due(name, value, now):
                out[name] = value
                self._last[name] = (value, now)
        return out

    def _due(self, name: str, value: float, now: float) -> bool:
        threshold = self._thresholds.get(name)
        last = self._last.get(name)
        if threshold is None or last is None:
            return True
        last_value, last_at = last
        if self._heartbeat_s is not None and now - last_at >= self._heartbeat_s - self._slack_s:
            return True
        amount, percent = threshold
        limit = abs(last_value) * amount / 100 if percent else amount
        if limit == 0:
            return value != last_value
        return abs(value - last_value) >= limit
