"""The buffer on a disk that fails for real: full (a small tmpfs), read-only (a loop-mounted
ext4 remounted ``ro``), unusable at open; and the ``seq`` epoch that keeps every
(device, sensor, epoch, seq) unique whatever happens to the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.buffer.fallback import LIMITS, MEMORY_IDS, Buffer, StorageFault
from agent.buffer.store import MessageStore, QueuedMessage, SequenceStore, StorageError
from tests.support.mounts import emergency_read_only, fill, loop_ext4, tmpfs

ROOT = Path(__file__).resolve().parents[2]


def message(seq: int, *, sensor: str = "air", size: int = 200) -> QueuedMessage:
    return QueuedMessage(
        topic=f"edge/d/sensor/{sensor}",
        payload=b'{"seq":%d,"pad":"%s"}' % (seq, b"x" * size),
        qos=1,
        sensor=sensor,
        seq=seq,
        ts=1e9 + seq,
    )


def seqs(rows: list[QueuedMessage]) -> list[int]:
    return [m.seq for m in rows]


def faults(buffer: Buffer) -> list[StorageFault | None]:
    seen: list[StorageFault | None] = []
    buffer.on_fault = seen.append
    return seen


def test_a_full_disk_keeps_readings_in_memory_drops_the_oldest_and_recovers(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        disk = MessageStore(mnt / "buffer.db", max_age_s=1e12)
        buffer = Buffer(disk=disk, memory_max_messages=50)
        seen = faults(buffer)
        buffer.put([message(n) for n in range(1, 11)])
        filler = fill(mnt)
        seq = 10
        while buffer.fault is None:  # the disk's last free pages go first
            seq += 1
            buffer.put([message(seq)])
            assert seq < 10_000, "the disk never filled"
        assert [f.reason for f in seen if f] == ["disk full"]
        for n in range(seq + 1, seq + 80):
            buffer.put([message(n)])
        last = seq + 79
        dropped = buffer.pop_dropped()
        assert dropped == {"disk full": 80 - 50}, dropped
        assert buffer.memory_depth() == 50
        rows = buffer.take(100_000)
        on_disk = [m for m in rows if m.id < MEMORY_IDS]
        in_memory = [m for m in rows if m.id >= MEMORY_IDS]
        # What reached the disk, then the newest 50 from memory: in order, none twice.
        assert seqs(on_disk) == list(range(1, len(on_disk) + 1))
        assert seqs(in_memory) == list(range(last - 49, last + 1))
        assert not buffer.retry(), "still full"
        filler.unlink()
        assert buffer.retry()
        assert seen[-1] is None and buffer.fault is None and buffer.memory_depth() == 0
        assert seqs(buffer.take(100_000)) == seqs(on_disk) + seqs(in_memory)
        buffer.close()
        with MessageStore(mnt / "buffer.db", max_age_s=1e12) as again:
            assert seqs(again.take(100_000)) == seqs(on_disk) + seqs(in_memory)


def test_a_card_turned_read_only_keeps_reading_the_store(tmp_path: Path) -> None:
    """ext4 with ``errors=remount-ro`` after an error: it stays read-only until unmounted
    (a reboot), so the agent runs on memory from then on, and keeps what is on disk."""
    with loop_ext4(tmp_path / "card") as card:
        buffer = Buffer(disk=MessageStore(card / "buffer.db", max_age_s=1e12))
        seen = faults(buffer)
        buffer.put([message(n) for n in range(1, 6)])
        emergency_read_only(card)
        ids = buffer.put([message(6), message(7)])
        assert [f.reason if f else None for f in seen] == ["read-only"]
        assert all(i >= MEMORY_IDS for i in ids)
        first = buffer.take(3)
        buffer.delete(m.id for m in first)  # acknowledged: not sent again
        assert seqs(buffer.take(100)) == [4, 5, 6, 7]
        assert buffer.depth() == 4
        assert not buffer.retry()
        assert buffer.fault is not None and buffer.fault.reason == "read-only"
        buffer.close()


def test_a_store_that_cannot_be_opened_says_where_and_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StorageError) as info:
        MessageStore(tmp_path / "a-file" / "buffer.db")
    assert info.value.reason == "not a directory"
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StorageError) as info:
        MessageStore(tmp_path / "dir.db")
    assert info.value.reason == "is a directory" and str(tmp_path / "dir.db") in str(info.value)


def test_a_buffer_without_a_store_runs_in_memory_and_opens_it_later(tmp_path: Path) -> None:
    path = tmp_path / "state" / "buffer.db"
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    try:
        MessageStore(path)
    except StorageError as e:
        error = e
    buffer = Buffer(
        disk=None,
        path=path,
        max_messages=100,
        max_age_s=1e12,
        reopen=lambda: MessageStore(path, max_age_s=1e12),
        fault=error,
    )
    assert buffer.fault is not None and buffer.fault.reason == "not a directory"
    first, second = buffer.sequences.next("air"), buffer.sequences.next("air")
    assert (first, second) == (1, 2)
    buffer.put([message(1), message(2)])
    assert not buffer.retry()
    blocker.unlink()
    assert buffer.retry()
    assert buffer.disk is not None and seqs(buffer.disk.take(10)) == [1, 2]
    buffer.close()


def test_limits_drops_are_counted_apart_from_storage_drops(tmp_path: Path) -> None:
    buffer = Buffer(disk=MessageStore(tmp_path / "b.db", max_messages=3, max_age_s=1e12))
    buffer.put([message(n) for n in range(1, 6)])
    assert buffer.pop_dropped() == {LIMITS: 2}
    buffer.close()


# -- no shared memory: an unwritable -shm cannot SIGBUS the agent --------------------------


def test_the_store_keeps_no_shm_file(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with MessageStore(path, max_age_s=1e12) as store:
        store.put([message(n) for n in range(1, 100)])
        assert store.take(1)
        assert not path.with_name("buffer.db-shm").exists()


_SHM_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.buffer.store import MessageStore, QueuedMessage
    path = Path(sys.argv[1])
    with MessageStore(path, max_age_s=1e12) as store:
        for n in range(1, 2001):
            store.put([QueuedMessage("t", b"x" * 100, 1, "s", n, 1e9 + n)])
        print(store.depth())
    """
)


def test_an_immutable_shm_file_is_not_a_signal(tmp_path: Path) -> None:
    """``chattr +i`` on ``buffer.db-shm`` (row 4 of issue 20): the process used to die of
    SIGBUS; now SQLite never maps the file at all."""
    with loop_ext4(tmp_path / "card") as card:
        shm = card / "buffer.db-shm"
        shm.write_bytes(b"\0" * 32768)
        subprocess.run(["chattr", "+i", str(shm)], check=True, timeout=10)
        try:
            result = subprocess.run(
                [sys.executable, "-c", _SHM_WRITER, str(card / "buffer.db")],
                check=False,
                cwd=ROOT,
                capture_output=True,
                timeout=120,
            )
        finally:
            subprocess.run(["chattr", "-i", str(shm)], check=True, timeout=10)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.split() == [b"2000"]


# -- seq epochs ---------------------------------------------------------------------------


def key(sequences: SequenceStore, sensor: str = "air") -> tuple[int, int]:
    """(epoch, seq) of the next reading, read as the scheduler does: the epoch after."""
    seq = sequences.next(sensor)
    return sequences.epoch, seq


def test_a_deleted_buffer_starts_a_new_epoch(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with MessageStore(path) as store:
        old = store.sequences.epoch
        assert [store.sequences.next("air") for _ in range(3)] == [1, 2, 3]
    for name in ("buffer.db", "buffer.db-wal"):
        (tmp_path / name).unlink(missing_ok=True)
    with MessageStore(path) as store:
        assert store.sequences.next("air") == 1
        assert store.sequences.epoch > old


def test_a_corrupt_buffer_is_moved_aside_under_a_new_epoch(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with MessageStore(path) as store:
        old = store.sequences.epoch
        store.sequences.next("air")
    path.write_bytes(b"garbage" * 1000)
    with MessageStore(path) as store:
        assert store.recovered_reason == "corrupt" and store.recovered_from is not None
        assert store.sequences.epoch != old and store.sequences.next("air") == 1


def test_the_epoch_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with MessageStore(path) as store:
        epoch = store.sequences.epoch
        store.sequences.next("air")
    with MessageStore(path) as store:
        assert store.sequences.epoch == epoch and store.sequences.next("air") == 2


def test_a_reservation_that_cannot_be_written_changes_the_epoch_never_repeats(
    tmp_path: Path,
) -> None:
    """Counters that ran past their saved reservation must not hand out the same
    (epoch, seq) again after a crash: they go on under a new epoch."""
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        path = mnt / "buffer.db"
        store = MessageStore(path, seq_block=5)
        seqs_ = store.sequences
        published = {key(seqs_) for _ in range(4)}
        first_epoch = seqs_.epoch
        filler = fill(mnt)
        for _ in range(10):  # crosses two reservations, which fail
            published.add(key(seqs_))
        assert not seqs_.durable and seqs_.epoch != first_epoch
        filler.unlink()
        # A crash now (no close): the file still holds the first epoch's reservation.
        store._closed = True
        store._conn.close()
        with MessageStore(path, seq_block=5) as again:
            for _ in range(20):
                new = key(again.sequences)
                assert new not in published, new
                published.add(new)


def test_the_new_epoch_is_saved_once_the_disk_is_writable(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        path = mnt / "buffer.db"
        store = MessageStore(path, seq_block=5)
        store.sequences.next("air")
        filler = fill(mnt)
        for _ in range(6):
            store.sequences.next("air")
        filler.unlink()
        epoch = store.sequences.epoch
        assert store.sequences.persist() and store.sequences.durable
        store.close()
        with MessageStore(path, seq_block=5) as again:
            assert again.sequences.epoch == epoch and again.sequences.next("air") == 8
