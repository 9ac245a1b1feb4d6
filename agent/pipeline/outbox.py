"""Store-and-forward of readings between the scheduler and the transport (CONTRACT §6).

Every reading goes through :class:`Outbox`. What it does depends on ``buffer.durability``:

``offline`` (the default; writes to the SD card only when it must):
    While connected a reading is published at once with its sensor's QoS and retain, and
    kept in memory until the broker acknowledges it (``published(mid, ok)``: PUBACK or
    PUBCOMP, or the socket write for QoS 0). On a disconnect everything still
    unacknowledged, and every reading produced while disconnected (QoS 0 included), is
    written to the :class:`~agent.buffer.store.MessageStore`. A ``kill -9`` while
    connected loses what is in memory: at most the unacknowledged window, normally a few
    milliseconds of readings.

``always``:
    Every QoS>=1 reading is written to the store *before* it is published, and its row is
    deleted on the acknowledgement. QoS 0 readings are treated as under ``offline``.

Replay: after every (re)connect - once the agent has published ``status`` and ``info`` -
the store is drained in insertion order (so in original order per sensor), with
``"replayed": true`` added to each payload, original ``ts`` and ``seq``, and retain
false. At most ``replay_window`` replayed messages are unacknowledged at once (below the
broker's receive maximum, so live messages always find room), and a loop turn sends at
most ``replay_batch`` of them before yielding. Rows are read ``read_ahead`` per query;
what was read ahead is read again whenever rows may have left the store or changed
other than by the replay's own acknowledgements (a drop by the limits, a re-stamp, an
acknowledged live row, a storage retry, a reconnect). Live readings never wait for the replay:
they are published the moment they are produced.

Back-pressure: at most ``in_flight_limit`` messages (the transport's, and the broker's
usual receive maximum) are handed to the transport unacknowledged. A live reading that
finds the window full - the link is slower than the sensors - goes to the store like a
reading taken offline and is replayed from there (``replayed: true``) as the window frees,
instead of queueing in paho's memory without bound, where it would be lost on a crash and
delay every other message on the one I/O thread.

The transport never resends by itself (it uses a fresh paho client per connection), so a
message unacknowledged at a disconnect is sent again only from the store. A duplicate is
possible only when the broker got a message whose acknowledgement was lost with the
connection, which QoS 1 permits, or when the agent dies before the DELETE of an
acknowledged row (below); consumers see it by (device_id, sensor, seq).

Storage faults: the store is wrapped in a :class:`~agent.buffer.fallback.Buffer`. When
the disk refuses a write (full, read-only, I/O error) readings wait in a bounded memory
queue instead, a ``storage_failed`` event says why, the oldest are dropped beyond the
queue's size (``buffer_dropping`` with the reason), and every few seconds the disk is
tried again; ``storage_recovered`` says when the buffer is durable again.

SQLite runs on the event loop. Writes are batched: everything produced in one loop turn
goes in one transaction (``defer`` runs the flush at the end of the turn). Deletes after
acknowledgements wait for ``delete_batch`` rows or ``delete_delay_s``, whichever comes
first: a drain of the buffer writes one transaction per batch, not one every few
messages, each rewriting the same pages into the WAL. Such a transaction takes about a
millisecond (one fsync for a put) on an SD card, which the loop can afford; a reading per
transaction is the worst case, while disconnected or under ``always``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from agent.buffer.fallback import LIMITS, MEMORY_IDS, RETRY_S, Buffer, StorageFault
from agent.buffer.store import MessageStore, QueuedMessage, message_age, restamp_message
from agent.clock import ClockSource, Stamp
from agent.events import Event, EventSink, RateLimiter
from agent.mqtt.payloads import Reading, restamp_payload

__all__ = ["Outbox", "Sender", "replayed_payload"]

log = logging.getLogger(__name__)

Durability = Literal["offline", "always"]

#: Replayed messages unacknowledged at once (mosquitto's receive maximum is 20).
REPLAY_WINDOW = 16
#: Messages handed to the transport and not yet acknowledged, at most (paho's max_inflight).
IN_FLIGHT_LIMIT = 20
#: Replayed messages sent per loop turn before live work gets its turn.
REPLAY_BATCH = 10
#: Rows the replay reads from the store per query, ahead of the window.
REPLAY_READ_AHEAD = 256
#: Acknowledged rows wait at most this long (seconds) for their DELETE, or until this
#: many are acknowledged: one transaction per batch, not one per loop turn.
DELETE_DELAY_S = 0.25
DELETE_BATCH = 500
#: At most one ``buffer_dropping`` event per this many seconds; counts in between merge.
DROP_REPORT_PERIOD_S = 10.0
#: Events kept in memory while disconnected (events are not buffered on disk).
EVENT_QUEUE = 100
#: How often the store's ``max_age`` is enforced when nothing is written.
LIMITS_PERIOD_S = 60.0

_REPLAYED_SUFFIX = b',"replayed":true}'


class Sender(Protocol):
    """What the outbox publishes through: :class:`agent.mqtt.transport.Transport`."""

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """Send now; the message id, or None if there is no connection."""
        ...


def replayed_payload(payload: bytes) -> bytes:
    """The reading payload ``payload`` as it is published from the buffer.

    Exactly :meth:`Reading.encode` with ``replayed=True``: that key comes last.

    Raises:
        ValueError: ``payload`` is not a JSON object.
    """
    body = payload.rstrip()
    if not body.endswith(b"}") or not body.startswith(b"{"):
        raise ValueError("a reading payload is a JSON object")
    return body[:-1] + _REPLAYED_SUFFIX


@dataclass(slots=True)
class _InFlight:
    """A message sent and not yet acknowledged. ``message.id`` is its store row, or 0."""

    message: QueuedMessage
    replay: bool


class Outbox:
    """Readings on their way to the broker; see the module docstring for the rules.

    All methods run on the agent's event loop.

    Args:
        store: The durable buffer (opened by the caller, closed by :meth:`close`); a bare
            :class:`MessageStore` is wrapped in a :class:`Buffer`.
        sender: Publishes on the current connection.
        durability: ``offline`` or ``always`` (``buffer.durability``).
        report: Receives the ``buffer_dropping`` events.
        defer: Schedules a call for the end of the current loop turn (``loop.call_soon``);
            None runs it at once (one transaction per message, for tests).
        replay_window: Most replayed messages unacknowledged at once.
        replay_batch: Most replayed messages sent per loop turn.
        read_ahead: Rows the replay reads per query.
        delete_delay_s: Longest wait of an acknowledged row for its DELETE (with
            ``defer``; without it, rows are deleted at once).
        delete_batch: Acknowledged rows that are deleted together without waiting.
        drop_report_period_s: Least time between two ``buffer_dropping`` events.
        clock: Monotonic seconds, injectable for tests.
        time_source: Stamps each reading's boot, and measures the ages of readings not
            yet in the store (as the store does); None: the wall clock's ``ts``.
    """

    def __init__(
        self,
        *,
        store: MessageStore | Buffer,
        sender: Sender,
        durability: Durability,
        report: EventSink,
        defer: Callable[[Callable[[], None]], object] | None = None,
        replay_window: int = REPLAY_WINDOW,
        replay_batch: int = REPLAY_BATCH,
        read_ahead: int = REPLAY_READ_AHEAD,
        delete_delay_s: float = DELETE_DELAY_S,
        delete_batch: int = DELETE_BATCH,
        drop_report_period_s: float = DROP_REPORT_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        time_source: ClockSource | None = None,
    ) -> None:
        self.store = store if isinstance(store, Buffer) else Buffer(disk=store)
        self.store.on_fault = self._storage_changed
        self.durability = durability
        self.replay_window = replay_window
        self.in_flight_limit = IN_FLIGHT_LIMIT
        self.replay_batch = replay_batch
        self.read_ahead = read_ahead
        self.delete_delay_s = delete_delay_s
        self.delete_batch = delete_batch
        self.drop_report_period_s = drop_report_period_s
        self._sender = sender
        self._report = report
        self._defer = defer
        self._clock = clock
        self._time = time_source
        #: The clocks at the last sync, while the clock stays synchronised: readings
        #: sampled before it are re-stamped from it (CONTRACT 14).
        self._sync: Stamp | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "readings",
                "published",
                "acked",
                "buffered",
                "replayed",
                "dropped",
                "rejected",
                "deferred",
                "restamped",
            ),
            0,
        )
        self._online = False
        self._closed = False
        self._inflight: dict[int, _InFlight] = {}  # by message id of this connection
        self._stored_inflight: set[int] = set()  # store rows now in flight
        self._replay_inflight = 0
        self._cursor = 0  # the replay has sent every row up to this id (this connection)
        self._staged: list[QueuedMessage] = []  # to be put at the end of this loop turn
        self._pending_delete: set[int] = set()  # acknowledged rows, deleted in batches
        self._delete_due = 0.0  # when the oldest of them is to be deleted at the latest
        # Store rows read ahead by the replay, not sent yet (ids above _cursor, in order).
        self._ahead: deque[QueuedMessage] = deque()
        self._flush_scheduled = False
        self._events: deque[tuple[str, bytes]] = deque(maxlen=EVENT_QUEUE)
        self._unreported_drops: dict[str, int] = {}
        #: Live readings were deferred to the store: acknowledgements wake the replay.
        self._backlog = False
        self._last_drop_report: float | None = None
        self._next_retry = clock() + RETRY_S
        self._log_limiter = RateLimiter(60.0, clock)
        self._wake = asyncio.Event()

    # -- state ---------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """True between the ``connected`` and ``disconnected`` events."""
        return self._online

    def queue_depth(self) -> int:
        """Readings not yet acknowledged: in the store, staged, or in flight from memory."""
        if self._closed:
            return 0
        in_memory = sum(1 for f in self._inflight.values() if not f.message.id)
        stored = max(0, self.store.depth() - len(self._pending_delete))
        return stored + len(self._staged) + in_memory

    def oldest_queued_age_s(self) -> float | None:
        """Age in seconds of the oldest reading not yet acknowledged (as ``max_age``
        measures it: on the monotonic clock where known), or None."""
        if self._closed:
            return None
        wall = time.time() if self._time is None else self._time.wall()
        waiting = [*self._staged, *(f.message for f in self._inflight.values() if not f.message.id)]
        ages = [message_age(m, self._time, wall) for m in waiting]
        stored = self.store.oldest_age()
        if stored is not None:
            ages.append(stored)
        return max(ages, default=None)

    def oldest_queued_ts(self) -> float | None:
        """Sample time (unix s) of the oldest reading not yet acknowledged, or None."""
        if self._closed:
            return None
        times = [m.ts for m in self._staged]
        times += [f.message.ts for f in self._inflight.values() if not f.message.id]
        stored = self.store.oldest_ts()
        if stored is not None:
            times.append(stored)
        return min(times, default=None)

    # -- input ---------------------------------------------------------------------------

    def submit(self, reading: Reading, *, topic: str, qos: int, retain: bool) -> None:
        """Send a fresh reading, or keep it for later; never blocks on the network."""
        if self._closed:
            return
        self.counters["readings"] += 1
        message = QueuedMessage(
            topic=topic,
            payload=(replace(reading, replayed=False) if reading.replayed else reading).encode(),
            qos=qos,
            sensor=reading.sensor,
            seq=reading.seq,
            ts=reading.ts,
            mono=reading.mono,
            synced=reading.clock_synced,
            boot=self._time.boot_id if self._time is not None and reading.mono is not None else "",
        )
        if self._sync is not None and not message.synced:
            # Sampled before the sync, handed over after it: re-stamped like the buffered.
            message = self._restamp(message, self._sync)
        if self.durability == "always" and qos >= 1:
            (row_id,) = self.store.put([message])
            self.counters["buffered"] += 1
            message = replace(message, id=row_id)
            self._check_dropped()
            if self._online and self._window_full():
                self._defer_live()  # stored already: the replay sends it
            elif self._online and not self._send(message, retain=retain, replay=False):
                self.disconnected()  # the transport knew first; its event follows
            return
        if self._online:
            if self._window_full():
                self._staged.append(message)
                self._defer_live()
                self._schedule_flush()
                return
            if self._send(message, retain=retain, replay=False):
                return
            # The connection is gone and its event not handled yet: store what is in
            # flight *before* this reading, or the replay would put it out of order.
            self._staged.append(message)
            self.disconnected()
            return
        self._staged.append(message)
        self._schedule_flush()

    def send_event(self, topic: str, payload: bytes) -> None:
        """Publish an event (QoS 1, not retained) now, or when connected again.

        Events wait in memory only (the newest :data:`EVENT_QUEUE`): they describe the
        agent, and are not worth an SD card write each.
        """
        if self._closed:
            return
        if self._online and self._sender.publish(topic, payload, qos=1, retain=False) is not None:
            return
        self._events.append((topic, payload))

    def use_sender(self, sender: Sender) -> None:
        """Publish through ``sender`` from now on (a new connection after a reload). Call
        :meth:`disconnected` first: nothing in flight may belong to the old one."""
        assert not self._inflight, "in-flight messages belong to the old sender"
        self._sender = sender

    # -- the clock (CONTRACT 14) ---------------------------------------------------------

    def clock_synced(self, sync: Stamp) -> int:
        """The clock has just become synchronised; ``sync`` its clocks read together.

        Every reading not yet delivered that was sampled in this boot from the
        unsynchronised clock gets ``ts = sync.wall - (sync.mono - its mono)``: in the
        store, in the memory queue, staged, and in flight (the copy that a disconnect
        would store). Readings already delivered cannot be. Their ``"clock_synced":
        false`` stays.

        Returns:
            How many readings were re-stamped.
        """
        if self._closed or self._time is None:
            return 0
        self._sync = sync
        self.store.clock_changed()
        self._ahead.clear()  # their payloads change
        done = self.store.restamp(sync, restamp_payload)
        before = list(self._staged)
        self._staged = [self._restamp(m, sync) for m in self._staged]
        done += sum(a is not b for a, b in zip(before, self._staged, strict=True))
        for mid, entry in list(self._inflight.items()):
            if not entry.message.id:
                restamped = self._restamp(entry.message, sync)
                if restamped is not entry.message:
                    self._inflight[mid] = _InFlight(restamped, entry.replay)
        self.counters["restamped"] += done
        return done

    def clock_unsynced(self) -> None:
        """The clock lost its synchronisation: readings from now on wait for the next."""
        self._sync = None
        self.store.clock_changed()

    def _restamp(self, message: QueuedMessage, sync: Stamp) -> QueuedMessage:
        return restamp_message(message, sync, restamp_payload, self._time)

    # -- transport events ----------------------------------------------------------------

    def connected(self) -> None:
        """The connection is up and ``status``/``info`` are sent: events, then replay."""
        if self._closed:
            return
        self._online = True
        self._cursor = 0
        self._ahead.clear()
        while self._events and self._online:
            topic, payload = self._events[0]
            if self._sender.publish(topic, payload, qos=1, retain=False) is None:
                break
            self._events.popleft()
        self._report_drops()
        self._wake.set()

    def disconnected(self) -> None:
        """The connection is gone: whatever it did not acknowledge goes to the store."""
        if self._closed:
            return
        self._online = False
        self._save_unacknowledged()
        self._cursor = 0
        self._ahead.clear()

    def published(self, mid: int, ok: bool) -> None:
        """The broker acknowledged message ``mid`` (``ok`` False: it refused it)."""
        entry = self._inflight.pop(mid, None)
        if entry is None or self._closed:
            return  # not ours (status, info, events)
        if entry.replay:
            self._replay_inflight -= 1
        if entry.replay or self._backlog:
            self._wake.set()
        if ok:
            self.counters["acked"] += 1
        else:
            # A refusal (e.g. "not authorized") is final: sending it again would loop.
            self.counters["rejected"] += 1
            if self._log_limiter.allow("rejected"):
                log.error("the broker refused a reading on %s; not retrying", entry.message.topic)
        if entry.message.id:
            self._stored_inflight.discard(entry.message.id)
            if not entry.replay:
                # A live row (``always``, or deferred) may be among the rows read ahead;
                # once deleted it would not be recognised there: read again.
                self._ahead.clear()
            if not self._pending_delete:
                self._delete_due = self._clock() + self.delete_delay_s
                self._wake.set()  # run() sleeps until the delete is due at the latest
            self._pending_delete.add(entry.message.id)
            self._schedule_flush()

    # -- replay --------------------------------------------------------------------------

    def pump(self) -> bool:
        """Send the next replay batch, within the window.

        Returns:
            True when it made progress and should be called again (after yielding).
        """
        if self._closed or not self._online:
            return False
        room = min(
            self.replay_window - self._replay_inflight,
            self.replay_batch,
            self.in_flight_limit - len(self._inflight),
        )
        if room <= 0:
            return False
        if not self.store.depth():
            # Nothing stored (the usual case while connected): no query either. Even a
            # read of an empty table dirties a page of SQLite's WAL index (the -shm
            # file, mmapped), which the kernel then writes to the SD card: the one-off
            # 4-8 KiB that B7 saw a minute after start, when the limits timer first
            # woke the replay.
            self._backlog = False
            return False
        ahead = self._ahead
        if not ahead:
            ahead.extend(self.store.take(max(room, self.read_ahead), after_id=self._cursor))
            if not ahead:
                self._backlog = False
                return False
        while ahead and room > 0:
            row = ahead.popleft()
            self._cursor = row.id
            if row.id in self._stored_inflight or row.id in self._pending_delete:
                continue  # a live ``always`` reading in flight, or acknowledged already
            if not self._send(row, retain=False, replay=True):
                return False  # connection lost: the disconnected event follows
            room -= 1
        return True

    async def run(self) -> None:
        """Replay whenever there is something to replay; enforce limits. Until cancelled."""
        next_limits = self._clock() + LIMITS_PERIOD_S
        self._next_retry = self._clock() + RETRY_S
        while True:
            # Sleep until woken (a connect, a replay acknowledgement, close) or until the
            # next thing that is due; an idle agent wakes once a minute, not every second
            # (SD-card Pis run on batteries and solar too). Not asyncio.wait_for: on 3.11
            # it can swallow a cancellation that coincides with the event being set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_timeout(next_limits)):
                    await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            if self._clock() >= next_limits:
                next_limits = self._clock() + LIMITS_PERIOD_S
                self.store.enforce_limits()
                self._check_dropped()
            if self.store.fault is not None and self._clock() >= self._next_retry:
                self._next_retry = self._clock() + RETRY_S
                self._retry_storage()
            self._report_drops()
            if self._pending_delete and self._clock() >= self._delete_due:
                self._delete_acknowledged()
            while self.pump():
                await asyncio.sleep(0)

    def _idle_timeout(self, next_limits: float) -> float:
        """Seconds :meth:`run` may sleep when nothing wakes it."""
        timeout = next_limits - self._clock()
        if self.store.fault is not None:
            timeout = min(timeout, self._next_retry - self._clock())
        if self._unreported_drops:
            timeout = min(timeout, self.drop_report_period_s)
        if self._online and self._staged:
            timeout = min(timeout, 1.0)  # a safety net; a connect wakes the replay anyway
        if self._pending_delete:
            timeout = min(timeout, self._delete_due - self._clock())
        return max(timeout, 0.01)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for every message in flight to be acknowledged."""
        deadline = self._clock() + timeout
        while self._inflight and self._online and self._clock() < deadline:
            await asyncio.sleep(0.02)

    # -- the store -----------------------------------------------------------------------

    def flush(self) -> None:
        """Write staged readings and delete acknowledged rows, one transaction each."""
        self._flush(delete_all=True)

    def _end_of_turn(self) -> None:
        self._flush(delete_all=False)

    def _flush(self, *, delete_all: bool) -> None:
        """Write staged readings; delete acknowledged rows if ``delete_all``, or if enough
        of them wait, or the oldest has waited ``delete_delay_s`` (see :meth:`published`).

        Batching the deletes keeps a replay from writing a transaction to the SD card
        every few messages (each rewrites the same pages into the WAL). The price: a
        crash in between sends those rows once more after the restart - duplicates, as
        QoS 1 permits, never a loss.
        """
        self._flush_scheduled = False
        if self._closed:
            return
        if self._pending_delete and (
            delete_all
            or len(self._pending_delete) >= self.delete_batch
            or self._clock() >= self._delete_due
        ):
            self._delete_acknowledged()
        if self._staged:
            staged, self._staged = self._staged, []
            self._put(staged)
            if self._online:
                self._wake.set()  # deferred live readings: the replay takes them

    def _delete_acknowledged(self) -> None:
        done, self._pending_delete = self._pending_delete, set()
        self.store.delete(done)

    def close(self) -> None:
        """Keep everything unacknowledged in the store, then close it; idempotent.

        Called on SIGTERM after the transport stopped, so the next start replays what
        this one could not deliver.
        """
        if self._closed:
            return
        self._online = False
        try:
            self._save_unacknowledged()
        finally:
            self._closed = True
            self._wake.set()
            self.store.close()

    def _save_unacknowledged(self) -> None:
        """Put in-flight readings not yet stored, then staged ones, in one transaction."""
        if self._pending_delete:
            done, self._pending_delete = self._pending_delete, set()
            self.store.delete(done)
        unacked = [f.message for f in self._inflight.values() if not f.message.id]
        staged, self._staged = self._staged, []
        self._inflight.clear()
        self._stored_inflight.clear()
        self._replay_inflight = 0
        self._put(unacked + staged)

    def _put(self, messages: list[QueuedMessage]) -> None:
        if not messages:
            return
        self.store.put(messages)
        self.counters["buffered"] += len(messages)
        self._check_dropped()

    def _schedule_flush(self) -> None:
        if self._defer is None:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._defer(self._end_of_turn)

    # -- sending -------------------------------------------------------------------------

    def _window_full(self) -> bool:
        return len(self._inflight) >= self.in_flight_limit

    def _defer_live(self) -> None:
        """A live reading waits in the store for room in the window (see module doc).

        What is in flight from memory is stored first, so that a disconnect cannot put
        it behind the deferred readings: the store keeps each sensor's order. Those rows
        are deleted on their acknowledgements, as under ``always``.
        """
        self.counters["deferred"] += 1
        self._backlog = True
        in_memory = [(mid, f) for mid, f in self._inflight.items() if not f.message.id]
        if in_memory:
            ids = self.store.put([f.message for _, f in in_memory])
            self.counters["buffered"] += len(ids)
            for (mid, entry), row_id in zip(in_memory, ids, strict=True):
                self._inflight[mid] = _InFlight(replace(entry.message, id=row_id), entry.replay)
                self._stored_inflight.add(row_id)
            self._check_dropped()
        if self._log_limiter.allow("deferred"):
            log.warning(
                "the broker acknowledges more slowly than readings come: %d in flight;"
                " keeping readings in the buffer meanwhile",
                len(self._inflight),
            )

    def _send(self, message: QueuedMessage, *, retain: bool, replay: bool) -> bool:
        payload = replayed_payload(message.payload) if replay else message.payload
        mid = self._sender.publish(message.topic, payload, qos=message.qos, retain=retain)
        if mid is None:
            return False
        self._inflight[mid] = _InFlight(message, replay)
        self.counters["published"] += 1
        if message.id:
            self._stored_inflight.add(message.id)
        if replay:
            self._replay_inflight += 1
            self.counters["replayed"] += 1
        return True

    # -- limits --------------------------------------------------------------------------

    def _check_dropped(self) -> None:
        dropped = self.store.pop_dropped()
        if not dropped:
            return
        self._ahead.clear()  # some of them may be gone
        for reason, n in dropped.items():
            self.counters["dropped"] += n
            self._unreported_drops[reason] = self._unreported_drops.get(reason, 0) + n
            if self._log_limiter.allow(f"dropped {reason}"):
                log.warning("buffer: dropping the oldest readings (%s)", self._why(reason))
        self._report_drops()

    def _why(self, reason: str) -> str:
        """The sentence for readings dropped for ``reason``."""
        if reason == LIMITS:
            return f"max_messages {self.store.max_messages}, max_age {self.store.max_age_s:g}s"
        if reason == "max_age":
            return f"older than max_age {self.store.max_age_s:g}s"
        return (
            f"storage {reason}: {self.store.path} cannot be written and at most"
            f" {self.store.memory_max_messages} readings are kept in memory"
        )

    # -- storage faults ------------------------------------------------------------------

    def _storage_changed(self, fault: StorageFault | None) -> None:
        """The buffer's disk failed (``fault``) or works again (None): say so once."""
        if fault is None:
            self._report(
                Event(
                    "storage_recovered",
                    f"the buffer {self.store.path} is writable again; readings are durable",
                    "info",
                    {"path": str(self.store.path)},
                )
            )
            return
        self._next_retry = self._clock() + RETRY_S
        self._report(
            Event(
                "storage_failed",
                f"the buffer {fault.path} cannot be written ({fault.reason}: {fault.detail});"
                f" keeping up to {self.store.memory_max_messages} readings in memory and"
                f" trying again every {RETRY_S:g} s",
                "error",
                {"reason": fault.reason, "path": str(fault.path)},
            )
        )
        self._wake.set()

    def _retry_storage(self) -> None:
        """Move the memory queue to the disk if it takes writes again."""
        if any(i >= MEMORY_IDS for i in self._stored_inflight):
            return  # their ids change when they move: wait for their acknowledgements
        if self._pending_delete:
            self._delete_acknowledged()  # memory entries among them get new ids in a move
        if self.store.retry():
            self._cursor = 0  # the moved entries are store rows now, with new ids
            self._ahead.clear()
            self._check_dropped()

    def _report_drops(self) -> None:
        """Publish the merged drop counts (one event per reason), at most once per period
        and only when online."""
        if not self._unreported_drops or not self._online:
            return
        now = self._clock()
        last = self._last_drop_report
        if last is not None and now - last < self.drop_report_period_s:
            return  # run() tries again when the period is over
        drops, self._unreported_drops = self._unreported_drops, {}
        self._last_drop_report = now
        for reason, dropped in drops.items():
            self._report(
                Event(
                    "buffer_dropping",
                    f"the buffer dropped its {dropped} oldest readings ({self._why(reason)})",
                    "warning",
                    {"dropped": dropped, "reason": reason},
                )
            )
