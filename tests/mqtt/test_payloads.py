"""Payload codecs: the timestamp text every payload carries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from agent.mqtt.payloads import Reading, iso_ts

#: 1970 to the end of year 9999, the range datetime can format.
TIMES = st.floats(min_value=0.0, max_value=253402300799.0, allow_nan=False)


def datetime_text(unix_s: float) -> str:
    """The reference: datetime's own conversion, cut to milliseconds."""
    moment = datetime.fromtimestamp(unix_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@given(TIMES)
def test_iso_ts_is_datetimes_text_for_any_time(unix_s: float) -> None:
    assert iso_ts(unix_s) == datetime_text(unix_s)


@given(st.integers(min_value=0, max_value=4_000_000_000), st.sampled_from([0.9999995, 0.9995]))
def test_iso_ts_rolls_over_into_the_next_second_as_datetime_does(whole: int, frac: float) -> None:
    assert iso_ts(whole + frac) == datetime_text(whole + frac)


def test_iso_ts_of_a_known_time() -> None:
    assert iso_ts(1795407087.123) == "2026-11-23T04:11:27.123Z"
    assert iso_ts(0.0) == "1970-01-01T00:00:00.000Z"


def test_iso_ts_from_many_threads_matches_each_threads_own_time() -> None:
    wrong: list[tuple[float, str]] = []

    def format_many(base: float) -> None:
        for i in range(2000):
            t = base + i * 0.37
            if iso_ts(t) != datetime_text(t):
                wrong.append((t, iso_ts(t)))

    threads = [threading.Thread(target=format_many, args=(1.7e9 + k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


def test_reading_payload_is_unchanged() -> None:
    reading = Reading(sensor="air", ts=1795407087.1234, seq=7, values={"t": 21.5}, epoch=3)
    assert reading.encode() == (
        b'{"sensor":"air","ts":"2026-11-23T04:11:27.123Z","seq":7,"epoch":3,"values":{"t":21.5}}'
    )
