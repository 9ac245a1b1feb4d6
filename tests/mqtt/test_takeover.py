"""Session takeover detection (cloned SD cards), as a function of events and a clock."""

from __future__ import annotations

from agent.mqtt.takeover import (
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    SESSION_TAKEN_OVER,
    STABLE_SESSION_S,
    SUSPECT_AFTER,
    TakeoverDetector,
    takeover_message,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, jitter: float = 0.5) -> TakeoverDetector:
    return TakeoverDetector(clock=clock, rng=lambda: jitter)


def test_mqtt5_reason_0x8e_is_a_takeover_at_once_and_backs_off_minutes() -> None:
    clock = Clock()
    d = detector(clock)
    d.connected()
    clock.now += 30
    takeover = d.disconnected(SESSION_TAKEN_OVER)
    assert takeover is not None and takeover.certain and takeover.first
    assert takeover.backoff_s == FIRST_BACKOFF_S  # jitter 0.5: the middle
    assert d.active


def test_the_backoff_doubles_per_takeover_and_is_capped_and_jittered() -> None:
    clock = Clock()
    d = detector(clock, jitter=0.0)
    backoffs = []
    for _ in range(6):
        d.connected()
        clock.now += 1
        t = d.disconnected(SESSION_TAKEN_OVER)
        assert t is not None
        backoffs.append(t.backoff_s)
    assert backoffs[0] == 0.75 * FIRST_BACKOFF_S and backoffs[1] == 1.5 * FIRST_BACKOFF_S
    assert max(backoffs) == 0.75 * MAX_BACKOFF_S
    assert [t for t in backoffs if t] == backoffs


def test_only_the_first_of_an_episode_is_to_be_logged() -> None:
    clock = Clock()
    d = detector(clock)
    firsts = []
    for _ in range(4):
        d.connected()
        clock.now += 1
        t = d.disconnected(SESSION_TAKEN_OVER)
        assert t is not None
        firsts.append(t.first)
    assert firsts == [True, False, False, False]


def test_under_3_1_1_repeated_short_sessions_are_a_suspected_takeover() -> None:
    clock = Clock()
    d = detector(clock)
    results = []
    for _ in range(SUSPECT_AFTER):
        d.connected()
        clock.now += 0.5
        results.append(d.disconnected(None))
    assert results[:-1] == [None] * (SUSPECT_AFTER - 1)
    assert results[-1] is not None and not results[-1].certain


def test_a_flaky_link_with_long_sessions_is_no_takeover() -> None:
    clock = Clock()
    d = detector(clock)
    for _ in range(10):
        d.connected()
        clock.now += 20
        assert d.disconnected(None) is None
        clock.now += 1
        assert d.disconnected(None) is None, "a failed connect attempt is not a session"


def test_a_stable_session_ends_the_episode() -> None:
    clock = Clock()
    d = detector(clock)
    d.connected()
    assert d.disconnected(SESSION_TAKEN_OVER) is not None
    d.connected()
    clock.now += STABLE_SESSION_S + 1
    assert d.disconnected(None) is None and not d.active
    d.connected()
    t = d.disconnected(SESSION_TAKEN_OVER)
    assert t is not None and t.first and t.count == 1


def test_our_own_disconnect_is_never_a_takeover() -> None:
    clock = Clock()
    d = detector(clock)
    for _ in range(5):
        d.connected()
        assert d.disconnected(None, by_us=True) is None


def test_the_message_names_the_client_and_says_what_to_do() -> None:
    clock = Clock()
    d = detector(clock)
    d.connected()
    t = d.disconnected(SESSION_TAKEN_OVER)
    assert t is not None
    text = takeover_message("edge-agent-pi", t)
    assert "edge-agent-pi" in text and "cloned SD card" in text and "device_id" in text


def test_resets_and_failed_reconnects_are_a_flaky_link_or_a_restart_not_a_twin() -> None:
    clock = Clock()
    d = detector(clock)
    for n in range(12):
        d.connected()
        clock.now += 0.5
        if n % 2:
            assert d.disconnected(None, clean=False) is None  # a cut: reset by peer
        else:
            assert d.disconnected(None) is None
            d.attempt_failed()  # the broker is down: a restart
