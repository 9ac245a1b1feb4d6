"""The buffer as the outbox sees it: the SQLite store, and a bounded memory queue for
when the disk cannot be written (disk full, read-only, I/O error, unusable at start).

A storage fault must neither stop the agent nor lose readings silently. While the disk
refuses writes, readings that would have gone to the store wait in memory, at most
``memory_max_messages`` of them; beyond that the oldest are dropped and counted under
the fault's reason (``disk full``, ``read-only``, ...), which the outbox reports in a
``buffer_dropping`` event. Every :data:`RETRY_S` the outbox calls :meth:`Buffer.retry`:
once the disk takes writes again, the memory queue is written to it in one transaction
and the buffer is durable again.

Ids: the store's rows have its SQLite ids; memory entries get ids from
:data:`MEMORY_IDS` up, so both can be in flight at once, and :meth:`Buffer.take` returns
the store's rows (older) before the memory entries (newer), which keeps every sensor's
readings in order.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from agent.buffer.store import (
    MessageStore,
    QueuedMessage,
    SequenceStore,
    StorageError,
    message_age,
    new_epoch,
    restamp_message,
)
from agent.clock import ClockSource, Stamp

__all__ = ["MEMORY_IDS", "RETRY_S", "Buffer", "StorageFault", "VolatileSequences"]

log = logging.getLogger(__name__)

#: The first id of a memory entry; SQLite's row ids stay far below it.
MEMORY_IDS: Final = 1 << 62
#: How often a faulty disk is tried again.
RETRY_S: Final = 5.0
#: The reason under which the store's own limits drop readings.
LIMITS: Final = "limits"


@dataclass(frozen=True)
class StorageFault:
    """Why the buffer is not durable right now."""

    reason: str
    path: Path
    detail: str
    since: float = field(default_factory=time.time)


class VolatileSequences:
    """``seq`` counters for an agent whose buffer could not be opened at all: in memory,
    under an epoch of their own (see :class:`agent.buffer.store.SequenceStore`)."""

    durable = False

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self._next: dict[str, int] = {}

    def next(self, sensor: str) -> int:
        value = self._next.get(sensor, 1)
        self._next[sensor] = value + 1
        return value

    def persist(self) -> bool:
        return False


class Buffer:
    """The durable store with a memory queue for when it fails; see the module docstring.

    Args:
        disk: The opened store, or None when it could not be opened (``fault`` says why).
        path: Where the store is (or should be).
        max_messages: ``buffer.max_messages`` (the store's limit).
        max_age_s: ``buffer.max_age`` (applies to the memory queue too).
        memory_max_messages: The most readings kept in memory during a fault.
        reopen: Opens the store again, for a buffer that started without one.
        fault: Why ``disk`` is None.
        clock: Unix seconds, injectable for tests.
        time_source: The clocks ages are measured on (as the store's, see
            :class:`~agent.buffer.store.MessageStore`); None: the wall ``clock`` alone.
    """

    def __init__(
        self,
        *,
        disk: MessageStore | None,
        path: Path | None = None,
        max_messages: int | None = None,
        max_age_s: float | None = None,
        memory_max_messages: int = 10_000,
        reopen: Callable[[], MessageStore] | None = None,
        fault: StorageError | None = None,
        clock: Callable[[], float] = time.time,
        time_source: ClockSource | None = None,
    ) -> None:
        if disk is None and (path is None or max_messages is None or max_age_s is None):
            raise ValueError("a buffer without a store needs its path and limits")
        self.disk = disk
        self.path = disk.path if disk is not None else path
        self.max_messages = disk.max_messages if disk is not None else max_messages
        self.max_age_s = disk.max_age_s if disk is not None else max_age_s
        self.memory_max_messages = memory_max_messages
        self.sequences: SequenceStore | VolatileSequences = (
            disk.sequences if disk is not None else VolatileSequences()
        )
        #: Called with the new fault, or None when the disk works again.
        self.on_fault: Callable[[StorageFault | None], None] | None = None
        self._reopen = reopen
        self._clock = clock if time_source is None else time_source.wall
        self._time = time_source
        self._memory: dict[int, QueuedMessage] = {}
        self._next_memory_id = MEMORY_IDS
        self._undeleted: set[int] = set()  # store rows acknowledged but not yet deleted
        self._dropped: Counter[str] = Counter()
        self.fault: StorageFault | None = None
        if fault is not None:
            self.fault = StorageFault(fault.reason, fault.path, fault.detail, clock())

    # -- the store's interface, as the outbox uses it --------------------------------------

    def put(self, messages: Sequence[QueuedMessage]) -> list[int]:
        """Queue ``messages``: in the store, or in memory while the store fails."""
        if not messages:
            return []
        if self.fault is None and self.disk is not None:
            try:
                return self.disk.put(messages)
            except StorageError as exc:
                self._fail(exc)
        return self._put_memory(messages)

    def take(self, limit: int, *, after_id: int = 0) -> list[QueuedMessage]:
        """Up to ``limit`` messages after ``after_id``: the store's rows, then memory's."""
        out: list[QueuedMessage] = []
        if self.disk is not None and after_id < MEMORY_IDS:
            cursor = after_id
            try:
                while len(out) < limit:
                    rows = self.disk.take(limit - len(out), after_id=cursor)
                    if not rows:
                        break
                    cursor = rows[-1].id
                    out += [r for r in rows if r.id not in self._undeleted]
            except StorageError as exc:
                self._fail(exc)
        if len(out) < limit:
            for mid, message in self._memory.items():
                if mid > after_id:
                    out.append(message)
                    if len(out) >= limit:
                        break
        return out

    def delete(self, ids: Iterable[int]) -> None:
        """Forget delivered messages; store rows wait for a writable disk if need be."""
        rows: list[int] = []
        for i in ids:
            if i >= MEMORY_IDS:
                self._memory.pop(i, None)
            else:
                rows.append(i)
        if not rows:
            return
        if self.fault is None and self.disk is not None:
            try:
                self.disk.delete(rows)
                return
            except StorageError as exc:
                self._fail(exc)
        self._undeleted.update(rows)

    def enforce_limits(self) -> int:
        """The store's limits, and ``max_age`` on the memory queue."""
        dropped = 0
        if self.fault is None and self.disk is not None:
            try:
                dropped += self.disk.enforce_limits()
            except StorageError as exc:
                self._fail(exc)
        assert self.max_age_s is not None
        max_age_s = self.max_age_s
        expired = [i for i, m in self._memory.items() if self._age(m) > max_age_s]
        for i in expired:
            del self._memory[i]
        if expired:
            self._dropped["max_age"] += len(expired)
        return dropped + len(expired)

    def pop_dropped(self) -> dict[str, int]:
        """Messages dropped since the last call, by reason (``limits``, ``max_age``, or a
        storage fault's reason), and reset."""
        dropped = Counter(self._dropped)
        self._dropped.clear()
        if self.disk is not None:
            n = self.disk.pop_dropped()
            if n:
                dropped[LIMITS] += n
        return dict(dropped)

    def depth(self) -> int:
        """Messages queued, on disk and in memory."""
        on_disk = self.disk.depth() - len(self._undeleted) if self.disk is not None else 0
        return max(on_disk, 0) + len(self._memory)

    def memory_depth(self) -> int:
        """Messages waiting in memory for the disk."""
        return len(self._memory)

    def _age(self, message: QueuedMessage) -> float:
        return message_age(message, self._time, self._clock())

    def oldest_age(self) -> float | None:
        """The age of the oldest message queued (as ``max_age`` measures it), or None."""
        ages = [self._age(m) for m in self._memory.values()]
        if self.disk is not None:
            try:
                stored = self.disk.oldest_age()
            except StorageError as exc:
                self._fail(exc)
                stored = None
            if stored is not None:
                ages.append(stored)
        return max(ages, default=None)

    def clock_changed(self) -> None:
        """The clock's sync state changed (see :meth:`MessageStore.clock_changed`)."""
        if self.disk is not None:
            self.disk.clock_changed()

    def restamp(self, sync: Stamp, rewrite: Callable[[bytes, float], bytes]) -> int:
        """Re-stamp this boot's readings from an unsynchronised clock, in memory and on
        disk (see :meth:`MessageStore.restamp`); how many."""
        done = 0
        for mid, m in list(self._memory.items()):
            restamped = restamp_message(m, sync, rewrite, self._time)
            if restamped is not m:
                self._memory[mid] = restamped
                done += 1
        if self.fault is None and self.disk is not None:
            try:
                done += self.disk.restamp(sync, rewrite)
            except StorageError as exc:
                self._fail(exc)
        return done

    def oldest_ts(self) -> float | None:
        """The oldest sample time queued, or None."""
        times = [next(iter(self._memory.values())).ts] if self._memory else []
        if self.disk is not None:
            try:
                stored = self.disk.oldest_ts()
            except StorageError as exc:
                self._fail(exc)
                stored = None
            if stored is not None:
                times.append(stored)
        return min(times, default=None)

    # -- faults and recovery ---------------------------------------------------------------

    def retry(self) -> bool:
        """Try the disk again; on success write the memory queue to it.

        Call only while no memory entry is in flight (their ids change), and send from
        the start again afterwards: the entries are store rows now.

        Returns:
            True when the buffer is durable again.
        """
        if self.fault is None:
            return False
        try:
            if self.disk is None:
                assert self._reopen is not None, "a buffer without a store needs reopen"
                self.disk = self._reopen()
            if self._undeleted:
                self.disk.delete(self._undeleted)
            moved = list(self._memory.values())
            if moved:
                self.disk.put([replace(m, id=0) for m in moved])
            if isinstance(self.sequences, SequenceStore) and not self.sequences.durable:
                self.sequences.persist()
        except StorageError as exc:
            self._fail(exc)
            return False
        log.info(
            "buffer %s is writable again: %d readings moved from memory", self.path, len(moved)
        )
        self._undeleted.clear()
        self._memory.clear()
        self.fault = None
        if self.on_fault is not None:
            self.on_fault(None)
        return True

    def close(self) -> None:
        """Close the store, after a last try to save what is in memory; idempotent."""
        if self.fault is not None and (self.disk is not None or self._reopen is not None):
            self.retry()
        if self._memory:
            log.error(
                "%d readings kept in memory are lost: the buffer %s is not writable (%s)",
                len(self._memory),
                self.path,
                self.fault.reason if self.fault else "closed",
            )
            self._memory.clear()
        if self.disk is not None:
            self.disk.close()

    def _fail(self, exc: StorageError) -> None:
        if self.fault is None or self.fault.reason != exc.reason:
            since = self.fault.since if self.fault is not None else self._clock()
            self.fault = StorageFault(exc.reason, exc.path, exc.detail, since)
            if self.on_fault is not None:
                self.on_fault(self.fault)

    def _put_memory(self, messages: Sequence[QueuedMessage]) -> list[int]:
        ids: list[int] = []
        for m in messages:
            mid = self._next_memory_id
            self._next_memory_id += 1
            boot = self._time.boot_id if self._time is not None and m.mono is not None else ""
            self._memory[mid] = replace(m, id=mid, boot=m.boot or boot)
            ids.append(mid)
        excess = len(self._memory) - self.memory_max_messages
        if excess > 0:
            for mid in list(self._memory)[:excess]:
                del self._memory[mid]
            reason = self.fault.reason if self.fault is not None else "storage"
            self._dropped[reason] += excess
        return ids
