"""The store-and-forward queue and the sequence counters, on real SQLite files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.buffer import SCHEMA_VERSION, MessageStore, QueuedMessage


class FakeClock:
    """A settable clock, in unix seconds."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def msg(n: int, *, sensor: str = "air", ts: float = 1_800_000_000.0) -> QueuedMessage:
    return QueuedMessage(
        topic=f"edge/dev/sensor/{sensor}",
        payload=json.dumps({"sensor": sensor, "seq": n}).encode(),
        qos=1,
        sensor=sensor,
        seq=n,
        ts=ts,
    )


def content(m: QueuedMessage) -> tuple[str, bytes, int, str, int, float]:
    return (m.topic, m.payload, m.qos, m.sensor, m.seq, m.ts)


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        result: str = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return result
    finally:
        conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[MessageStore]:
    with MessageStore(tmp_path / "buffer.db", clock=clock) as s:
        yield s


# -- the queue ---------------------------------------------------------------------------


def test_take_returns_oldest_first_and_keeps_per_sensor_order(store: MessageStore) -> None:
    batch = [msg(1, sensor="air"), msg(1, sensor="shed"), msg(2, sensor="air")]
    ids = store.put(batch)
    ids += store.put([msg(3, sensor="air"), msg(2, sensor="shed")])
    assert ids == sorted(ids)
    taken = store.take(10)
    assert [m.id for m in taken] == ids
    assert [(m.sensor, m.seq) for m in taken] == [
        ("air", 1),
        ("shed", 1),
        ("air", 2),
        ("air", 3),
        ("shed", 2),
    ]
    assert content(taken[0]) == content(batch[0])
    assert [m.id for m in store.take(2)] == ids[:2]
    assert [m.id for m in store.take(2, after_id=ids[1])] == ids[2:4]


def test_take_does_not_remove_and_delete_does(store: MessageStore) -> None:
    ids = store.put([msg(n) for n in range(1, 6)])
    assert len(store.take(3)) == 3
    assert store.depth() == 5
    store.delete(ids[:2] + [999_999])  # an unknown id is ignored
    assert store.depth() == 3
    assert [m.seq for m in store.take(10)] == [3, 4, 5]
    store.delete([])
    store.delete(ids)
    assert store.depth() == 0
    assert store.take(10) == []
    assert store.oldest_ts() is None


def test_ids_are_never_reused(store: MessageStore) -> None:
    first = store.put([msg(1), msg(2)])
    store.delete(first)
    assert store.put([msg(3)])[0] > max(first)


def test_count_limit_drops_exactly_the_oldest(tmp_path: Path, clock: FakeClock) -> None:
    with MessageStore(tmp_path / "b.db", max_messages=5, clock=clock) as store:
        store.put([msg(n) for n in range(1, 4)])
        assert store.pop_dropped() == 0
        store.put([msg(n) for n in range(4, 9)])
        assert store.depth() == 5
        assert [m.seq for m in store.take(10)] == [4, 5, 6, 7, 8]
        store.put([msg(9)])
        assert [m.seq for m in store.take(10)] == [5, 6, 7, 8, 9]
        assert store.pop_dropped() == 4
        assert store.pop_dropped() == 0


def test_age_limit_drops_expired_messages(tmp_path: Path, clock: FakeClock) -> None:
    now = clock.now
    with MessageStore(tmp_path / "b.db", max_age_s=3600, clock=clock) as store:
        store.put([msg(1, ts=now - 100), msg(2, ts=now - 50), msg(3, ts=now)])
        assert store.oldest_ts() == now - 100
        assert store.enforce_limits() == 0
        clock.now = now + 3600 - 100  # exactly max_age: still kept
        assert store.enforce_limits() == 0
        clock.now = now + 3600 - 49
        assert store.enforce_limits() == 2
        assert [m.seq for m in store.take(10)] == [3]
        assert store.oldest_ts() == now
        assert store.pop_dropped() == 2


def test_put_of_an_already_expired_message_drops_it(tmp_path: Path, clock: FakeClock) -> None:
    with MessageStore(tmp_path / "b.db", max_age_s=60, clock=clock) as store:
        ids = store.put([msg(1, ts=clock.now - 61), msg(2, ts=clock.now)])
        assert len(ids) == 2
        assert [m.seq for m in store.take(10)] == [2]
        assert store.pop_dropped() == 1
        store.delete(ids)  # the dropped id is harmless
        assert store.depth() == 0


def test_enforce_limits_within_limits_writes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "b.db"
    with MessageStore(path, clock=clock) as store:
        store.put([msg(1)])
        wal = path.with_name(path.name + "-wal")
        size = wal.stat().st_size
        for _ in range(10):
            assert store.enforce_limits() == 0
        assert wal.stat().st_size == size


def test_reopen_keeps_contents(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "b.db"
    with MessageStore(path, clock=clock) as store:
        ids = store.put([msg(n) for n in range(1, 4)])
        store.delete(ids[:1])
        before = store.take(10)
    with MessageStore(path, clock=clock) as store:
        assert store.take(10) == before
        assert store.depth() == 2
        assert store.recovered_from is None
    assert integrity(path) == "ok"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_close_is_idempotent_and_use_after_close_fails(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "b.db")
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.put([msg(1)])
    with pytest.raises(ValueError, match="closed"):
        store.sequences.next("air")


def test_limits_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        MessageStore(tmp_path / "b.db", max_messages=0)
    with pytest.raises(ValueError, match="max_age_s"):
        MessageStore(tmp_path / "b.db", max_age_s=0)


# -- recovery ----------------------------------------------------------------------------


def test_a_garbage_file_is_moved_aside(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "buffer.db"
    garbage = b"this is not a database, it is a shopping list\n" * 200
    path.write_bytes(garbage)
    path.with_name("buffer.db-wal").write_bytes(b"stale wal")
    with MessageStore(path, clock=clock) as store:
        aside = store.recovered_from
        assert aside is not None
        assert aside.name.startswith("buffer.db.corrupt-")
        assert aside.read_bytes() == garbage
        assert aside.with_name(aside.name + "-wal").read_bytes() == b"stale wal"
        assert store.depth() == 0
        store.put([msg(1)])
        assert [m.seq for m in store.take(1)] == [1]
    assert integrity(path) == "ok"


def test_a_damaged_page_is_detected_and_moved_aside(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "buffer.db"
    with MessageStore(path, clock=clock) as store:
        store.put([msg(n) for n in range(1000)])
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page : 3 * page] = b"\xa5" * page  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    with MessageStore(path, clock=clock) as store:
        assert store.recovered_from is not None
        assert store.depth() == 0


def test_a_newer_schema_is_moved_aside_not_misread(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "buffer.db"
    MessageStore(path, clock=clock).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with MessageStore(path, clock=clock) as store:
        assert store.recovered_from is not None
        assert store.recovered_from.name.startswith(f"buffer.db.schema-v{SCHEMA_VERSION + 1}-")


# -- kill -9 -----------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.buffer import MessageStore, QueuedMessage

    store = MessageStore(Path(sys.argv[1]), max_age_s=1e12)
    n = int(sys.argv[2])
    while True:
        batch = [
            QueuedMessage(topic="t", payload=b"%d" % (n + k) * 50, qos=1, sensor="air",
                          seq=n + k, ts=1e9 + n + k)
            for k in range(5)
        ]
        ids = store.put(batch)
        print(" ".join(map(str, ids)), flush=True)
        n += 5
    """
)


def run_writer_and_kill(path: Path, first_seq: int, *, committed: int) -> list[int]:
    """Run a writer, SIGKILL it once it reported ``committed`` ids; return those ids."""
    reported: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(first_seq)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported += [int(i) for i in line.split()]
            if len(reported) >= committed:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for line in proc.stdout:  # whatever was committed and printed before the kill
            reported += [int(i) for i in line.split()]
    assert proc.returncode == -signal.SIGKILL
    return reported


def test_kill_9_mid_write_leaves_a_consistent_prefix(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    first_seq = 1
    for _ in range(3):  # later rounds open the hot WAL a killed writer left
        reported = run_writer_and_kill(path, first_seq, committed=300)
        assert integrity(path) == "ok"
        with MessageStore(path, max_age_s=1e12) as store:
            assert store.recovered_from is None
            rows = store.take(1_000_000)
        ids = [m.id for m in rows]
        # Every reported id is there, as a prefix, and nothing after it is torn or out of
        # order: the rows are exactly the first len(rows) messages the writer produced.
        assert ids == list(range(1, len(ids) + 1))
        assert reported == list(range(first_seq, first_seq + len(reported)))
        assert reported[-1] <= ids[-1]
        assert [m.seq for m in rows] == list(range(1, len(rows) + 1))
        assert all(m.payload == b"%d" % m.seq * 50 and m.ts == 1e9 + m.seq for m in rows)
        assert len(rows) % 5 == 0  # batches are atomic
        first_seq = len(rows) + 1


# -- sequence counters -------------------------------------------------------------------


def reserved_up_to(store: MessageStore, sensor: str) -> int | None:
    """What the file holds, through the store's own connection: it locks the file
    exclusively, so no other connection may read it while it is open."""
    row = store._conn.execute(
        "SELECT reserved_up_to FROM seq_blocks WHERE sensor = ?", (sensor,)
    ).fetchone()
    return None if row is None else int(row[0])


def test_seq_starts_at_1_and_counts_per_sensor(store: MessageStore) -> None:
    seqs = store.sequences
    assert [seqs.next("air") for _ in range(3)] == [1, 2, 3]
    assert seqs.next("shed") == 1
    assert seqs.next("air") == 4


def test_seq_continues_without_gap_after_clean_close(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with MessageStore(path) as store:
        assert [store.sequences.next("air") for _ in range(3)] == [1, 2, 3]
        store.sequences.next("shed")
    with MessageStore(path) as store:
        assert store.sequences.next("air") == 4
        assert store.sequences.next("shed") == 2


def test_seq_reservation_is_written_once_per_block(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with MessageStore(path, seq_block=10) as store:
        assert store.sequences.next("air") == 1
        assert reserved_up_to(store, "air") == 11
        for expected in range(2, 11):
            assert store.sequences.next("air") == expected
        assert reserved_up_to(store, "air") == 11  # nine readings, no write
        assert store.sequences.next("air") == 11
        assert reserved_up_to(store, "air") == 21


_SEQ_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from agent.buffer import MessageStore

    store = MessageStore(Path(sys.argv[1]), seq_block=int(sys.argv[2]))
    for _ in range(int(sys.argv[3])):
        print(store.sequences.next("air"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(): a crash
    """
)


@pytest.mark.parametrize("count", [1, 5, 25])
def test_seq_never_repeats_after_a_crash(tmp_path: Path, count: int) -> None:
    path = tmp_path / "b.db"
    block = 10
    with MessageStore(path, seq_block=block) as store:
        assert store.sequences.next("air") == 1
    result = subprocess.run(
        [sys.executable, "-c", _SEQ_CRASHER, str(path), str(block), str(count)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    handed_out = [int(line) for line in result.stdout.split()]
    assert handed_out == list(range(2, 2 + count))
    with MessageStore(path, seq_block=block) as store:
        after = store.sequences.next("air")
    assert handed_out[-1] < after <= handed_out[-1] + block  # a gap, never a repeat


# -- a model of the queue ----------------------------------------------------------------


class QueueModel(RuleBasedStateMachine):
    """The store behaves like a list with limits, through any interleaving of calls."""

    MAX_MESSAGES = 12
    MAX_AGE_S = 100.0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock(1000.0)
        self.store = MessageStore(
            Path(self.tmp.name) / "b.db",
            max_messages=self.MAX_MESSAGES,
            max_age_s=self.MAX_AGE_S,
            clock=self.clock,
        )
        self.model: list[QueuedMessage] = []  # with ids
        self.all_ids: list[int] = []
        self.dropped = 0
        self.seq = 0

    def _apply_limits(self) -> None:
        cutoff = self.clock.now - self.MAX_AGE_S
        kept = [m for m in self.model if m.ts >= cutoff]
        excess = max(len(kept) - self.MAX_MESSAGES, 0)
        self.dropped += len(self.model) - len(kept) + excess
        self.model = kept[excess:]

    @rule(ages=st.lists(st.floats(min_value=-50, max_value=150), min_size=0, max_size=6))
    def put(self, ages: list[float]) -> None:
        batch = []
        for age in ages:
            self.seq += 1
            batch.append(msg(self.seq, sensor="ab"[self.seq % 2], ts=self.clock.now - age))
        ids = self.store.put(batch)
        assert len(ids) == len(batch)
        assert all(i > max(self.all_ids, default=0) for i in ids)
        self.all_ids += ids
        self.model += [
            QueuedMessage(m.topic, m.payload, m.qos, m.sensor, m.seq, m.ts, i)
            for m, i in zip(batch, ids, strict=True)
        ]
        self._apply_limits()

    @rule(limit=st.integers(min_value=0, max_value=20), skip=st.integers(0, 5))
    def take(self, limit: int, skip: int) -> None:
        after = self.model[skip - 1].id if 0 < skip <= len(self.model) else 0
        expected = [m for m in self.model if m.id > after][:limit]
        assert self.store.take(limit, after_id=after) == expected

    @precondition(lambda self: bool(self.all_ids))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.all_ids), max_size=5))
        self.store.delete(ids)
        self.model = [m for m in self.model if m.id not in set(ids)]

    @rule(seconds=st.floats(min_value=0, max_value=80))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        before = self.dropped
        self._apply_limits()
        assert self.store.enforce_limits() == self.dropped - before

    @rule()
    def pop_dropped(self) -> None:
        assert self.store.pop_dropped() == self.dropped
        self.dropped = 0

    @invariant()
    def depth_and_oldest_match(self) -> None:
        assert self.store.depth() == len(self.model)
        assert self.store.oldest_ts() == min((m.ts for m in self.model), default=None)

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()


QueueModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_store_matches_the_model = QueueModel.TestCase
