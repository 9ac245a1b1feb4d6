"""Each filter on its own, against values worked out here (ESPHome's semantics)."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.filters import filters as f

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def run(flt: f.Filter, values: list[float], *, dt: float = 1.0) -> list[float | None]:
    return [flt.new_value(v, i * dt) for i, v in enumerate(values)]


def test_offset_and_multiply() -> None:
    assert f.Offset(-1.2).new_value(21.5, 0) == pytest.approx(20.3)
    assert f.Multiply(1.5).new_value(4.0, 0) == 6.0


@given(finite, finite, finite, finite, finite)
def test_calibrate_linear_through_two_points_is_exact(
    x1: float, y1: float, x2: float, y2: float, x: float
) -> None:
    if abs(x1 - x2) < 1e-3:
        return
    flt = f.CalibrateLinear([(x1, y1), (x2, y2)])
    scale = max(1.0, abs(y1), abs(y2))
    assert flt.new_value(x1, 0) == pytest.approx(y1, abs=1e-6 * scale)
    assert flt.new_value(x2, 0) == pytest.approx(y2, abs=1e-6 * scale)


def test_calibrate_linear_least_squares_over_three_points() -> None:
    # points (0, 1), (1, 3), (2, 4): mean x 1, mean y 8/3; Sxy = (-1)(-5/3) + 0 + (1)(4/3) = 3,
    # Sxx = 2 -> slope 1.5, intercept 8/3 - 1.5 = 7/6
    flt = f.CalibrateLinear([(0, 1), (1, 3), (2, 4)])
    assert flt.slope == pytest.approx(1.5)
    assert flt.intercept == pytest.approx(7 / 6)
    assert flt.new_value(10, 0) == pytest.approx(15 + 7 / 6)


def test_calibrate_linear_refuses_one_point_and_a_vertical_line() -> None:
    with pytest.raises(ValueError, match="two points"):
        f.fit_linear([(1, 2)])
    with pytest.raises(ValueError, match="same"):
        f.fit_linear([(1, 2), (1, 3)])


@given(st.lists(st.floats(min_value=-50, max_value=50), min_size=3, max_size=3, unique=True))
def test_calibrate_polynomial_of_degree_two_through_three_points_is_exact(xs: list[float]) -> None:
    if min(abs(a - b) for i, a in enumerate(xs) for b in xs[i + 1 :]) < 0.5:
        return

    def true(x: float) -> float:
        return 0.5 * x * x - 2 * x + 3

    flt = f.CalibratePolynomial([(x, true(x)) for x in xs], 2)
    for x in (*xs, 7.25):
        assert flt.new_value(x, 0) == pytest.approx(true(x), rel=1e-6, abs=1e-6)


def test_calibrate_polynomial_least_squares_line() -> None:
    # degree 1 is ordinary least squares: same points as the linear test
    assert f.fit_polynomial([(0, 1), (1, 3), (2, 4)], 1) == [
        pytest.approx(7 / 6),
        pytest.approx(1.5),
    ]
    with pytest.raises(ValueError, match="at least 3"):
        f.fit_polynomial([(0, 1), (1, 2)], 2)


def test_clamp_moves_to_the_bound_or_drops() -> None:
    clamp = f.Clamp(min_value=10, max_value=75)
    assert run(clamp, [5, 10, 50, 75, 80]) == [10, 10, 50, 75, 75]
    ignore = f.Clamp(min_value=10, max_value=75, ignore_out_of_range=True)
    assert run(ignore, [5, 10, 50, 75, 80]) == [None, 10, 50, 75, None]
    assert f.Clamp(max_value=0).new_value(-1e9, 0) == -1e9


def test_filter_out_compares_at_the_resolution() -> None:
    flt = f.FilterOut([85.0], normalise=lambda v: round(v, 1))
    assert run(flt, [85.0, 85.04, 85.06, 21.0]) == [None, None, 85.06, 21.0]


def test_median_of_odd_and_even_windows() -> None:
    assert f.median([3, 1, 2]) == 2
    assert f.median([4, 1, 3, 2]) == 2.5


def test_quantile_position_is_ceil_n_q_minus_one() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert f.quantile(values, 0.9) == 9.0  # ceil(9.0) - 1 = index 8
    assert f.quantile(values, 0.95) == 10.0  # ceil(9.5) - 1 = index 9
    assert f.quantile(values, 0.1) == 1.0


def test_window_emits_first_at_send_first_at_then_every_send_every() -> None:
    flt = f.WindowFilter(max, window_size=3, send_every=4, send_first_at=2)
    out = run(flt, [1, 5, 2, 3, 4, 0, 9, 1, 2, 3])
    # first at the 2nd value (max of [1, 5]), then at the 6th (max of [3, 4, 0]), the
    # 10th (max of [1, 2, 3])
    assert out == [None, 5, None, None, None, 4, None, None, None, 3]


def test_window_defaults_publish_the_first_value_at_once() -> None:
    flt = f.WindowFilter(f.median, window_size=5, send_every=5, send_first_at=1)
    out = run(flt, [10, 11, 12, 13, 14, 15])
    assert out == [10, None, None, None, None, 13]


@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.data(),
)
def test_a_window_never_emits_before_send_first_at(
    window_size: int, send_every: int, data: st.DataObject
) -> None:
    send_first_at = data.draw(st.integers(1, send_every))
    values = data.draw(st.lists(finite, min_size=1, max_size=40))
    flt = f.WindowFilter(
        statistics.fmean,
        window_size=window_size,
        send_every=send_every,
        send_first_at=send_first_at,
    )
    out = run(flt, values)
    emitted = [i + 1 for i, v in enumerate(out) if v is not None]
    assert all(n >= send_first_at for n in emitted)
    assert emitted == list(range(send_first_at, len(values) + 1, send_every))
    for n in emitted:
        window = values[max(0, n - window_size) : n]
        assert out[n - 1] == pytest.approx(statistics.fmean(window))


def test_exponential_moving_average_is_seeded_with_the_first_value() -> None:
    flt = f.ExponentialMovingAverage(alpha=0.5, send_every=1)
    # 10; 0.5*20 + 0.5*10 = 15; 0.5*0 + 0.5*15 = 7.5
    assert run(flt, [10, 20, 0]) == [10, 15, 7.5]
    every = f.ExponentialMovingAverage(alpha=0.5, send_every=2, send_first_at=2)
    assert run(every, [10, 20, 0, 0]) == [None, 15, None, 3.75]


def test_throttle_passes_one_value_per_period() -> None:
    flt = f.Throttle(3.0)
    assert run(flt, [1, 2, 3, 4, 5, 6, 7]) == [1, None, None, 4, None, None, 7]


def test_throttle_average_emits_each_periods_mean_once() -> None:
    flt = f.ThrottleAverage(3.0)
    # periods [0, 3): 1, 2, 3 -> 2 emitted with the value at t=3; [3, 6): 4, 5, 6 -> 5 at t=6
    assert run(flt, [1, 2, 3, 4, 5, 6, 7]) == [None, None, None, 2, None, None, 5]


def test_throttle_average_skips_a_period_without_values() -> None:
    flt = f.ThrottleAverage(10.0)
    assert flt.new_value(1, 0) is None
    assert flt.new_value(3, 5) is None
    assert flt.new_value(8, 31) == 2  # periods 1 and 2 had nothing; nothing for them
    assert flt.new_value(1, 41) == 8


def test_delta_passes_only_more_than_the_threshold() -> None:
    flt = f.Delta(0.5)
    assert run(flt, [20.0, 20.5, 20.6, 19.9, 20.0]) == [20.0, None, 20.6, 19.9, None]


def test_delta_in_percent_of_the_last_passed_value() -> None:
    flt = f.Delta(10, percent=True)
    # 100 passes; 109 is 9 % away: held; 111 passes; now 10 % of 111 = 11.1: 122 is 11 away
    assert run(flt, [100, 109, 111, 122, 123]) == [100, None, 111, None, 123]


def test_delta_zero_drops_repeats() -> None:
    assert run(f.Delta(0), [1, 1, 2, 2]) == [1, None, 2, None]


def test_round_to_decimals() -> None:
    assert f.Round(1).new_value(21.46, 0) == 21.5
    assert f.Round(0).new_value(21.46, 0) == 21.0


def test_calibrations_are_marked_as_such() -> None:
    assert f.Offset(1).calibration and f.Multiply(2).calibration
    assert not f.Round(1).calibration
    assert not f.WindowFilter(f.median, window_size=1, send_every=1).calibration
