"""The outbox's rules, without a broker: a fake sender and a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.buffer.store import MessageStore
from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.pipeline.outbox import Durability, Outbox, replayed_payload


class FakeSender:
    """Records publishes; ``up`` False refuses them as a lost connection would."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[int, str, dict[str, object], int, bool]] = []
        self._mid = 0

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        if not self.up:
            return None
        self._mid += 1
        self.sent.append((self._mid, topic, json.loads(payload), qos, retain))
        return self._mid

    def seqs(self) -> list[int]:
        return [int(body["seq"]) for _, _, body, _, _ in self.sent]  # type: ignore[call-overload]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    with MessageStore(tmp_path / "buffer.db", max_messages=50) as s:
        yield s


def make(
    store: MessageStore, durability: Durability = "offline"
) -> tuple[Outbox, FakeSender, list[Event]]:
    sender = FakeSender()
    events: list[Event] = []
    outbox = Outbox(store=store, sender=sender, durability=durability, report=events.append)
    return outbox, sender, events


def submit(outbox: Outbox, seq: int, *, qos: int = 1, retain: bool = True) -> None:
    reading = Reading(sensor="air", ts=1_800_000_000.0 + seq, seq=seq, values={"t": 20.5})
    outbox.submit(reading, topic="edge/d/sensor/air", qos=qos, retain=retain)


def test_replayed_payload_is_the_reading_encoded_as_replayed() -> None:
    reading = Reading(sensor="air", ts=1_800_000_000.123, seq=7, values={"t": 1.25})
    assert (
        replayed_payload(reading.encode())
        == Reading(sensor="air", ts=reading.ts, seq=7, values={"t": 1.25}, replayed=True).encode()
    )


def test_a_reading_from_an_unsynchronised_clock_says_so_before_replayed() -> None:
    flagged = Reading(
        sensor="air", ts=1_654_041_600.0, seq=1, values={"t": 1.0}, clock_synced=False
    )
    assert json.loads(flagged.encode())["clock_synced"] is False
    assert list(json.loads(replayed_payload(flagged.encode()))) == [
        "sensor",
        "ts",
        "seq",
        "values",
        "clock_synced",
        "replayed",
    ]
    # A synchronised clock adds nothing, and the monotonic stamp is never published.
    plain = Reading(sensor="air", ts=1_800_000_000.0, seq=1, values={"t": 1.0}, mono=12.5)
    assert list(json.loads(plain.encode())) == ["sensor", "ts", "seq", "values"]


def test_offline_mode_writes_nothing_while_acknowledged(store: MessageStore) -> None:
    outbox, sender, _ = make(store)
    outbox.connected()
    for seq in (1, 2, 3):
        submit(outbox, seq)
    for mid, *_ in sender.sent:
        outbox.published(mid, True)
    assert store.depth() == 0 and outbox.queue_depth() == 0
    assert outbox.counters["acked"] == 3


def test_offline_mode_stores_the_unacknowledged_and_what_comes_while_disconnected(
    store: MessageStore,
) -> None:
    outbox, sender, _ = make(store)
    outbox.connected()
    submit(outbox, 1)
    submit(outbox, 2)
    outbox.published(sender.sent[0][0], True)
    sender.up = False
    submit(outbox, 3, qos=0)  # the transport knew before the outbox did
    outbox.disconnected()
    submit(outbox, 4, qos=0)
    assert [m.seq for m in store.take(10)] == [2, 3, 4]
    assert outbox.queue_depth() == 3


def test_replay_is_in_order_windowed_flagged_and_not_retained(store: MessageStore) -> None:
    outbox, sender, _ = make(store)
    window = outbox.replay_window
    total = 2 * window + 5
    for seq in range(1, total + 1):
        submit(outbox, seq)
    assert store.depth() == total and not sender.sent
    outbox.connected()
    while outbox.pump():
        pass
    assert sender.seqs() == list(range(1, window + 1)), "at most replay_window unacknowledged"
    assert all(
        body["replayed"] is True and retain is False for _, _, body, _, retain in sender.sent
    )
    for mid, *_ in list(sender.sent):
        outbox.published(mid, True)
    while outbox.pump():
        pass
    assert sender.seqs() == list(range(1, 2 * window + 1))
    outbox.flush()
    assert store.depth() == total - window


def test_live_readings_go_out_during_a_replay(store: MessageStore) -> None:
    outbox, sender, _ = make(store)
    for seq in range(1, 31):
        submit(outbox, seq)
    outbox.connected()
    outbox.pump()
    submit(outbox, 31)
    assert sender.seqs()[-1] == 31 and "replayed" not in sender.sent[-1][2]


def test_always_mode_stores_before_sending_and_deletes_on_ack(store: MessageStore) -> None:
    outbox, sender, _ = make(store, "always")
    outbox.connected()
    submit(outbox, 1)
    assert store.depth() == 1 and sender.seqs() == [1]
    while outbox.pump():
        pass
    assert sender.seqs() == [1], "a live reading in flight is not replayed as well"
    outbox.published(sender.sent[0][0], True)
    assert store.depth() == 0
    submit(outbox, 2, qos=0)
    assert store.depth() == 0, "QoS 0 is not written while connected"


def test_always_mode_replays_what_was_in_flight_at_a_disconnect(store: MessageStore) -> None:
    outbox, sender, _ = make(store, "always")
    outbox.connected()
    submit(outbox, 1)
    outbox.disconnected()
    outbox.connected()
    while outbox.pump():
        pass
    assert sender.seqs() == [1, 1] and sender.sent[1][2]["replayed"] is True


def test_dropped_readings_are_reported_once_merged_when_online(store: MessageStore) -> None:
    outbox, _, events = make(store)
    for seq in range(1, 71):  # max_messages is 50
        submit(outbox, seq)
    assert not events, "reported when it can be published"
    outbox.connected()
    (event,) = events
    assert event.kind == "buffer_dropping" and event.fields == {"dropped": 20, "reason": "limits"}
    assert [m.seq for m in store.take(1)] == [21], "the oldest went"


def test_close_keeps_what_is_unacknowledged(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "b.db")
    outbox, sender, _ = make(store)
    outbox.connected()
    submit(outbox, 1)
    submit(outbox, 2)
    outbox.published(sender.sent[0][0], True)
    outbox.close()
    with MessageStore(tmp_path / "b.db") as reopened:
        assert [m.seq for m in reopened.take(10)] == [2]


@pytest.mark.parametrize("durability", ["offline", "always"])
def test_a_full_window_defers_live_readings_to_the_store_not_to_paho(
    store: MessageStore, durability: Durability
) -> None:
    """A link slower than the sensors: what does not fit in the in-flight window waits in
    the store (durably) and is replayed as acknowledgements come, in order."""
    outbox, sender, _ = make(store, durability)
    outbox.connected()
    limit = outbox.in_flight_limit
    for seq in range(1, limit + 11):
        submit(outbox, seq)
    outbox.flush()
    assert sender.seqs() == list(range(1, limit + 1)), "never more than the window in flight"
    assert outbox.counters["deferred"] == 10
    assert outbox.queue_depth() == limit + 10
    # Acknowledgements free the window; the replay sends the deferred ones, in order.
    for mid, *_ in list(sender.sent):
        outbox.published(mid, True)
    while outbox.pump():
        pass
    deferred = sender.sent[limit:]
    assert [int(body["seq"]) for _, _, body, _, _ in deferred] == list(range(limit + 1, limit + 11))  # type: ignore[call-overload]
    assert all(body["replayed"] is True for _, _, body, _, _ in deferred)
    for mid, *_ in deferred:
        outbox.published(mid, True)
    outbox.flush()
    assert outbox.queue_depth() == 0 and store.depth() == 0
    assert outbox.counters["acked"] == limit + 10


def test_deferred_readings_keep_their_order_across_a_disconnect(store: MessageStore) -> None:
    """The in-flight ones are stored before the deferred ones, so a disconnect (nothing
    acknowledged: a blackhole) cannot put them behind in the replay."""
    outbox, sender, _ = make(store)
    outbox.connected()
    total = outbox.in_flight_limit + 10
    for seq in range(1, total + 1):
        submit(outbox, seq)
    outbox.flush()
    outbox.disconnected()
    sent_before = len(sender.sent)
    outbox.connected()
    replayed: list[int] = []
    while len(replayed) < total:
        assert outbox.pump() or len(sender.sent) > sent_before
        fresh = sender.sent[sent_before:]
        sent_before = len(sender.sent)
        replayed += [int(body["seq"]) for _, _, body, _, _ in fresh]  # type: ignore[call-overload]
        for mid, *_ in fresh:
            outbox.published(mid, True)
    assert replayed == list(range(1, total + 1))


class Turns:
    """``defer`` for an outbox: the calls of a loop turn, run at its end by ``end()``."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []
        self.now = 100.0

    def __call__(self, call: Callable[[], None]) -> None:
        self.calls.append(call)

    def end(self) -> None:
        calls, self.calls = self.calls, []
        for call in calls:
            call()


def test_acknowledged_rows_are_deleted_in_batches_not_per_turn(store: MessageStore) -> None:
    turns = Turns()
    sender = FakeSender()
    outbox = Outbox(
        store=store,
        sender=sender,
        durability="offline",
        report=lambda e: None,
        defer=turns,
        clock=lambda: turns.now,
        delete_delay_s=0.25,
        delete_batch=8,
    )
    for seq in range(1, 31):
        submit(outbox, seq)
    turns.end()
    outbox.connected()
    while outbox.pump():
        pass
    for mid, *_ in sender.sent[:5]:
        outbox.published(mid, True)
    turns.end()
    assert store.depth() == 30, "five acknowledgements wait for more"
    assert outbox.queue_depth() == 25, "but are not counted as queued"
    turns.now += 0.3
    turns.end()
    outbox.published(sender.sent[5][0], True)  # a turn after the delay: all six go
    turns.end()
    assert store.depth() == 24
    for mid, *_ in sender.sent[6:14]:  # a batch's worth goes at once
        outbox.published(mid, True)
    turns.end()
    assert store.depth() == 16
    outbox.published(sender.sent[14][0], True)
    outbox.disconnected()  # what waits is deleted before the unacknowledged are kept
    assert store.depth() == 15 and [m.seq for m in store.take(1)] == [16]


def test_rows_read_ahead_that_the_limits_drop_are_not_sent(store: MessageStore) -> None:
    """The replay reads rows ahead of its window. Live readings deferred to the store
    while the window is full push the oldest out (max_messages is 50), some of them read
    ahead already: those are not sent from the stale copy."""
    outbox, sender, _ = make(store)
    for seq in range(1, 46):
        submit(outbox, seq)
    outbox.connected()
    while outbox.pump():
        pass
    assert sender.seqs() == list(range(1, 17)), "the replay window"
    for seq in range(1001, 1041):  # 4 fit the in-flight limit, 36 are deferred
        submit(outbox, seq)
    assert outbox.counters["dropped"] == 35, "rows 1-35 went"
    for mid, *_ in sender.sent[:16]:  # the replayed ones first: room for the replay
        outbox.published(mid, True)
    outbox.pump()
    while True:
        for mid, *_ in list(sender.sent):
            outbox.published(mid, True)
        if not outbox.pump():
            break
    replayed = [s for s in sender.seqs()[16:] if s < 1000]
    assert replayed == list(range(36, 46)), replayed
