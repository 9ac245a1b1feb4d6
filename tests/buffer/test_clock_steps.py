"""``buffer.max_age`` on the monotonic clock (CONTRACT 14): steps of the wall clock at NTP
sync neither expire nor reorder the buffer; readings from an earlier boot have a rule."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from agent.buffer.fallback import Buffer
from agent.buffer.store import MessageStore, QueuedMessage, StorageError
from agent.clock import stamp
from agent.mqtt.payloads import Reading, parse_iso_ts, restamp_payload
from agent.pipeline.outbox import Outbox
from tests.support.clock import IN_2022, SteppableClock

YEAR_S = 365 * 86400.0
HOUR_S = 3600.0


def reading(n: int, clock: SteppableClock, *, sensor: str = "air") -> QueuedMessage:
    return QueuedMessage(
        topic=f"edge/dev/sensor/{sensor}",
        payload=json.dumps({"sensor": sensor, "seq": n}).encode(),
        qos=1,
        sensor=sensor,
        seq=n,
        ts=clock.wall(),
        mono=clock.monotonic(),
        synced=clock.synced(),
    )


def test_steps_of_the_wall_clock_expire_nothing_and_keep_the_order(tmp_path: Path) -> None:
    clock = SteppableClock(wall=IN_2022, synced=False)
    with MessageStore(tmp_path / "b.db", max_age_s=HOUR_S, time_source=clock) as store:
        for n in range(1, 11):
            store.put([reading(n, clock)])
            clock.advance(60)  # ten readings over ten minutes
        clock.step(4 * YEAR_S)  # NTP's first sync: four years ahead
        assert store.enforce_limits() == 0
        store.put([reading(11, clock)])
        clock.step(YEAR_S)  # and a year more
        store.put([reading(12, clock)])
        clock.step(-HOUR_S)  # and back an hour
        store.put([reading(13, clock)])
        assert store.enforce_limits() == 0
        assert store.pop_dropped() == 0
        assert [m.seq for m in store.take(100)] == list(range(1, 14))
        # The oldest is ten minutes old, whatever the wall clock says.
        assert store.oldest_age() == 600
        # max_age is an hour of monotonic time: reading 1 goes after 50 more minutes.
        clock.advance(HOUR_S - 600 + 1)
        assert store.enforce_limits() == 1
        assert [m.seq for m in store.take(100)] == list(range(2, 14))


def test_a_step_back_does_not_keep_what_is_too_old(tmp_path: Path) -> None:
    clock = SteppableClock(wall=IN_2022 + 4 * YEAR_S, synced=True)
    with MessageStore(tmp_path / "b.db", max_age_s=HOUR_S, time_source=clock) as store:
        store.put([reading(1, clock)])
        clock.advance(HOUR_S + 1)
        clock.step(-YEAR_S)  # the wall clock says the reading is from the future
        store.put([reading(2, clock)])  # a put notices as well as enforce_limits
        assert [m.seq for m in store.take(10)] == [2]
        assert store.pop_dropped() == 1


def test_rows_of_an_earlier_boot_stay_until_this_boot_has_run_max_age(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = SteppableClock(wall=IN_2022, mono=1000.0, synced=False, boot_id="first")
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        store.put([reading(1, clock)])
    # Reboot: the monotonic clock starts again, lower, and the wall clock is in 2022 again.
    clock.reboot("second", wall=IN_2022 - 600, mono=5.0)
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        store.put([reading(2, clock)])
        clock.step(4 * YEAR_S)
        assert store.enforce_limits() == 0
        assert store.oldest_age() == 5.0  # at least as old as this boot: a lower bound
        clock.advance(HOUR_S - 5.0)
        assert store.enforce_limits() == 0  # this boot has run exactly max_age
        clock.advance(1)
        assert store.enforce_limits() == 1  # the earlier boot's reading
        assert [m.seq for m in store.take(10)] == [2]  # 3596 s old: this boot's clock


def test_synchronised_rows_of_an_earlier_boot_age_by_the_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    now = IN_2022 + 4 * YEAR_S
    clock = SteppableClock(wall=now, mono=1000.0, synced=True, boot_id="first")
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        store.put([reading(1, clock)])
        clock.advance(1800)
        store.put([reading(2, clock)])
    clock.reboot("second", wall=IN_2022, mono=5.0)
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        assert store.enforce_limits() == 0  # unsynchronised: the wall clock says nothing
        clock.sync(now + 1800 + 1000)  # 2800 s after reading 1: both still within the hour
        assert store.enforce_limits() == 0
        assert store.oldest_age() == 2800
        clock.advance(801)
        assert store.enforce_limits() == 1
        assert [m.seq for m in store.take(10)] == [2]


def test_a_version_2_buffer_is_migrated_and_its_rows_age_by_their_ts(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = SteppableClock(wall=IN_2022, synced=True)
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        store.put([reading(1, clock)])
    # Make it what version 2 wrote: no mono, synced, boot columns.
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE old AS SELECT id, topic, payload, qos, sensor, seq, ts FROM messages;"
        "DROP TABLE messages; ALTER TABLE old RENAME TO messages; PRAGMA user_version = 2;"
    )
    conn.close()
    with MessageStore(path, max_age_s=HOUR_S, time_source=clock) as store:
        (row,) = store.take(10)
        assert (row.seq, row.mono, row.synced, row.boot) == (1, None, True, "")
        clock.advance(HOUR_S - 1)
        assert store.enforce_limits() == 0
        clock.step(2)
        assert store.enforce_limits() == 1


def test_the_memory_queue_ages_on_the_monotonic_clock_too(tmp_path: Path) -> None:
    clock = SteppableClock(wall=IN_2022, synced=False)
    fault = StorageError("read-only", tmp_path / "b.db", "test")
    buffer = Buffer(
        disk=None,
        path=tmp_path / "b.db",
        max_messages=100,
        max_age_s=HOUR_S,
        fault=fault,
        reopen=lambda: MessageStore(tmp_path / "b.db", time_source=clock),
        time_source=clock,
    )
    buffer.put([reading(1, clock)])
    clock.advance(600)
    buffer.put([reading(2, clock)])
    clock.step(4 * YEAR_S)
    assert buffer.enforce_limits() == 0
    assert buffer.oldest_age() == 600
    clock.advance(HOUR_S - 599)
    assert buffer.enforce_limits() == 1
    assert [m.seq for m in buffer.take(10)] == [2]
    buffer.close()


def encoded(n: int, clock: SteppableClock) -> QueuedMessage:
    """A real reading's message, as the outbox makes it."""
    body = Reading(
        sensor="air",
        ts=clock.wall(),
        seq=n,
        values={"t": 20.5},
        epoch=7,
        clock_synced=clock.synced(),
        mono=clock.monotonic(),
    )
    return QueuedMessage(
        topic="edge/dev/sensor/air",
        payload=body.encode(),
        qos=1,
        sensor="air",
        seq=n,
        ts=body.ts,
        mono=body.mono,
        synced=body.clock_synced,
    )


def test_restamp_payload_replaces_ts_and_keeps_everything_else() -> None:
    reading = Reading(sensor="air", ts=IN_2022, seq=3, values={"t": 0.1}, clock_synced=False)
    restamped = restamp_payload(reading.encode(), 1_800_000_000.5)
    assert restamped == replace(reading, ts=1_800_000_000.5).encode()
    assert json.loads(restamped)["clock_synced"] is False
    with pytest.raises(ValueError):
        restamp_payload(b"[1]", 0.0)
    with pytest.raises(ValueError):
        restamp_payload(b"{", 0.0)


def test_readings_before_the_sync_are_restamped_from_the_monotonic_clock(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = SteppableClock(wall=IN_2022, mono=1000.0, synced=False, boot_id="old")
    with MessageStore(path, max_age_s=YEAR_S, time_source=clock) as store:
        store.put([encoded(1, clock)])  # a reading of an earlier boot: cannot be re-stamped
    clock.reboot("now", wall=IN_2022, mono=10.0)
    true_start = 1_800_000_000.0  # what the time really was at mono 10
    with MessageStore(path, max_age_s=YEAR_S, time_source=clock) as store:
        for n in range(2, 6):
            store.put([encoded(n, clock)])
            clock.advance(15)
        clock.step(-HOUR_S)  # someone fiddles with the clock before NTP comes
        clock.sync(true_start + 60.25)  # 60.25 s after reading 2, NTP steps the clock
        sync = stamp(clock)
        assert store.restamp(sync, restamp_payload) == 4
        store.put([encoded(6, clock)])  # sampled after the sync: good as it is
        rows = store.take(10)
        assert [m.seq for m in rows] == [1, 2, 3, 4, 5, 6]  # order kept
        assert rows[0].ts == IN_2022 and not rows[0].synced  # the earlier boot's, as it was
        for n, row in zip(range(2, 6), rows[1:5], strict=True):
            assert row.ts == pytest.approx(true_start + 15 * (n - 2))
            assert row.synced
            body = json.loads(row.payload)
            assert parse_iso_ts(body["ts"]) == pytest.approx(row.ts, abs=0.001)
            assert body["clock_synced"] is False  # flagged for good
            assert (body["seq"], body["epoch"], body["values"]) == (n, 7, {"t": 20.5})
        assert "clock_synced" not in json.loads(rows[5].payload)
        assert store.restamp(sync, restamp_payload) == 0  # nothing is re-stamped twice


def test_the_outbox_restamps_what_it_holds_and_what_comes_late(tmp_path: Path) -> None:
    clock = SteppableClock(wall=IN_2022, mono=10.0, synced=False)
    sent: list[bytes] = []

    class Offline:
        def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
            sent.append(payload)
            return None

    store = MessageStore(tmp_path / "b.db", time_source=clock)
    outbox = Outbox(
        store=Buffer(disk=store, time_source=clock),
        sender=Offline(),
        durability="offline",
        report=lambda event: None,
        time_source=clock,
    )
    late = Reading(
        sensor="air", ts=clock.wall(), seq=2, values={}, clock_synced=False, mono=clock.monotonic()
    )
    outbox.submit(
        Reading(sensor="air", ts=clock.wall(), seq=1, values={}, clock_synced=False, mono=10.0),
        topic="edge/dev/sensor/air",
        qos=1,
        retain=False,
    )
    clock.advance(30)
    clock.sync(1_800_000_030.0)
    assert outbox.clock_synced(stamp(clock)) == 1
    # Sampled before the sync, handed over after it (a slow read): re-stamped too.
    outbox.submit(late, topic="edge/dev/sensor/air", qos=1, retain=False)
    rows = store.take(10)
    assert [(m.seq, m.ts) for m in rows] == [(1, 1_800_000_000.0), (2, 1_800_000_000.0)]
    assert all(json.loads(m.payload)["clock_synced"] is False for m in rows)
    assert outbox.counters["restamped"] == 1
    outbox.close()
