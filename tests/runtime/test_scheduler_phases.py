"""Where in its interval each sensor is read: sensors that share an interval share a
wake-up, up to one per 250 ms of the interval, and the wake-ups are spread evenly."""

from __future__ import annotations

import pytest

from agent.sampling.scheduler import INTERVAL_PER_SHARED_WAKE, SensorSlot
from drivers import bme280
from drivers.bme280 import BME280Options
from tests.support.scheduling import Run


def phases(*intervals: float) -> list[float]:
    """The start offsets of sensors s0, s1 ... with these intervals, in config order."""
    slots = [
        SensorSlot(
            name=f"s{i}",
            spec=bme280.SPEC,
            options=BME280Options(interval=interval),
            open=lambda: pytest.fail("not opened"),
        )
        for i, interval in enumerate(intervals)
    ]
    offsets = Run(slots).scheduler.phases()
    return [offsets[f"s{i}"] for i in range(len(intervals))]


def test_four_sensors_at_one_second_share_one_wake_up() -> None:
    assert INTERVAL_PER_SHARED_WAKE == 0.25
    assert phases(1, 1, 1, 1) == [0, 0, 0, 0]


def test_more_than_fit_take_wake_ups_spread_across_the_interval() -> None:
    assert phases(*[1.0] * 9) == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert phases(*[60.0] * 250) == [0.0] * 240 + [30.0] * 10


def test_fast_sensors_are_spread_one_per_wake_up() -> None:
    assert phases(*[0.1] * 20) == pytest.approx([0.1 * i / 20 for i in range(20)])
    assert phases(0.4, 0.4) == [0, 0.2]
    assert phases(0.5, 0.5, 0.5) == [0, 0, 0.25]


def test_each_interval_is_its_own_group() -> None:
    assert phases(1, 0.1, 1, 0.1) == [0, 0, 0, 0.05]
