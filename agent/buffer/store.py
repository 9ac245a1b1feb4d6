"""The durable store-and-forward queue and the persistent per-sensor sequence counters.

One SQLite file (default ``<state_dir>/buffer.db``) holds two tables: ``messages``, the
queue of MQTT messages waiting for the broker, and ``seq_blocks``, the reservations that
keep each sensor's ``seq`` increasing across restarts (CONTRACT section 5 and 6).

Why SQLite in WAL mode: a committed transaction is atomic, and the file is never corrupt
after a crash, a ``kill -9`` or a power cut as long as journaling and syncing stay on.
Nothing here turns them off.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Final, NoReturn, Self

from agent.clock import ClockSource, Stamp
from agent.errors import AgentError

__all__ = [
    "SCHEMA_VERSION",
    "MessageStore",
    "QueuedMessage",
    "SequenceStore",
    "StorageError",
    "new_epoch",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
"""The ``PRAGMA user_version`` this code writes and understands."""

# One entry per schema version: _MIGRATIONS[n] takes a database from version n to n + 1.
# Append, never edit: a released migration has already run on someone's Pi.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE messages (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a late delete(id) is safe
        topic   TEXT    NOT NULL,
        payload BLOB    NOT NULL,
        qos     INTEGER NOT NULL,
        sensor  TEXT    NOT NULL,
        seq     INTEGER NOT NULL,
        ts      REAL    NOT NULL                    -- sample time, unix seconds
    );
    CREATE INDEX messages_ts ON messages (ts);
    CREATE TABLE seq_blocks (
        sensor         TEXT    PRIMARY KEY,
        reserved_up_to INTEGER NOT NULL             -- first seq not yet reserved
    ) WITHOUT ROWID;
    """,
    # v2: the sequence epoch (see SequenceStore), written by _ensure_epoch after migrating.
    """
    CREATE TABLE meta (
        key   TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # v3: ages on the monotonic clock (CONTRACT 14). mono: the sample's monotonic time in
    # the boot named by boot (NULL: not known, aged by ts); synced: ts is from a
    # synchronised clock, or was re-stamped from mono at the sync.
    """
    ALTER TABLE messages ADD COLUMN mono REAL;
    ALTER TABLE messages ADD COLUMN synced INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN boot TEXT NOT NULL DEFAULT '';
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_CORRUPTION_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_TRANSACTION_SYNC: Final = "FULL"
_DELETE_SYNC: Final = "NORMAL"

# What a failed read or write means, by SQLite's primary result code.
_SQLITE_REASONS: Final = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot open",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_AUTH: "permission denied",
    sqlite3.SQLITE_BUSY: "locked by another process",
    sqlite3.SQLITE_LOCKED: "locked by another process",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}
_ERRNO_REASONS: Final = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full",
    errno.EROFS: "read-only",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "not a directory",
    errno.EISDIR: "is a directory",
}


def message_age(message: QueuedMessage, source: ClockSource | None, wall: float) -> float:
    """``message``'s age in seconds, by the rules of :class:`MessageStore` (the same as
    its ``_AGE_SQL``), for messages held in memory; ``wall`` is the wall clock now."""
    if source is None or message.mono is None:
        return wall - message.ts
    mono = source.monotonic()
    if message.boot == source.boot_id:
        return mono - message.mono
    if message.synced and source.synced():
        return max(wall - message.ts, mono)
    return mono


def restamp_message(
    message: QueuedMessage,
    sync: Stamp,
    rewrite: Callable[[bytes, float], bytes],
    source: ClockSource | None,
) -> QueuedMessage:
    """``message`` re-stamped at ``sync`` as :meth:`MessageStore.restamp` does, or
    ``message`` itself when it is not to be (synchronised, of another boot, not a
    reading, or no clock to tell)."""
    if (
        source is None
        or message.synced
        or message.mono is None
        or not message.sensor
        or (message.boot or source.boot_id) != source.boot_id
    ):
        return message
    ts = sync.wall - (sync.mono - message.mono)
    try:
        payload = rewrite(message.payload, ts)
    except ValueError:
        return message
    return replace(message, ts=ts, payload=payload, synced=True, boot=source.boot_id)


def new_epoch(previous: int = 0) -> int:
    """A sequence epoch for counters that start afresh: unix milliseconds, and always
    greater than ``previous`` (a Pi without a clock may start in 1970)."""
    return max(int(time.time() * 1000), previous + 1)


class StorageError(AgentError, OSError):
    """The buffer's file cannot be read or written: disk full, read-only, I/O error, ...

    Attributes:
        reason: A short, stable phrase for events and ``/healthz``: ``disk full``,
            ``read-only``, ``I/O error``, ``permission denied``, ``cannot open``,
            ``not a directory``, ``is a directory``, ``locked by another process``,
            ``corrupt``.
        path: The file (or directory) concerned.
        detail: What SQLite or the operating system said.
    """

    def __init__(self, reason: str, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {reason} ({detail})")
        self.reason = reason
        self.path = path
        self.detail = detail


def diagnose(exc: BaseException, path: Path) -> StorageError:
    """The :class:`StorageError` that an ``sqlite3`` or ``OSError`` failure on ``path``
    means. SQLite reports most write failures as a bare I/O error; the file system's own
    flags then tell read-only and full apart."""
    reason: str | None = None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        reason = _SQLITE_REASONS.get(code & 0xFF) if isinstance(code, int) else None
    elif isinstance(exc, OSError) and exc.errno is not None:
        reason = _ERRNO_REASONS.get(exc.errno)
    if reason in (None, "I/O error", "cannot open", "read-only"):
        reason = _file_system_state(path) or reason
    return StorageError(reason or "I/O error", path, str(exc) or type(exc).__name__)


def _file_system_state(path: Path) -> str | None:
    """What the file system says of ``path``: ``is a directory``, ``not a directory``,
    ``read-only``, ``disk full``, ``permission denied``, or None when it takes writes.

    SQLite reports most failed writes as a bare I/O error, and a kernel that turned an
    SD card read-only after an error (``errors=remount-ro``) may still list the mount as
    ``rw``: a one-byte probe file in the directory tells them apart.
    """
    if path.is_dir():
        return "is a directory"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return "not a directory"
    directory = next((p for p in path.parents if p.is_dir()), None)
    if directory is None:
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only"
    probe = directory / f".edge-agent-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return _ERRNO_REASONS.get(e.errno or 0, "I/O error")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _raise_storage(exc: BaseException, path: Path) -> NoReturn:
    raise diagnose(exc, path) from exc


class _Unusable(Exception):
    """Internal: the file at open is not a database this code can use (moved aside)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One MQTT message waiting in the buffer.

    Attributes:
        topic: The full MQTT topic.
        payload: The encoded payload, exactly as it will be published.
        qos: The MQTT QoS to publish with.
        sensor: The sensor's name, or ``""`` for a message that is not a reading.
        seq: The reading's ``seq``, or 0 for a message that has none.
        ts: The sample time in unix seconds.
        id: The row id, assigned by :meth:`MessageStore.put`; 0 before that. Ids grow with
            insertion order and are never reused.
        mono: The sample's monotonic time (:mod:`agent.clock`), from which ``max_age`` is
            measured within its boot; None: not known, ``max_age`` counts from ``ts``.
        synced: Whether ``ts`` came from a synchronised clock (or was re-stamped at the
            sync); a reading's ``"clock_synced": false`` is in its payload regardless.
        boot: The boot ``mono`` belongs to; set by :meth:`MessageStore.put`.
    """

    topic: str
    payload: bytes
    qos: int
    sensor: str
    seq: int
    ts: float
    id: int = 0
    mono: float | None = None
    synced: bool = True
    boot: str = ""


class MessageStore:
    """A bounded, durable FIFO of MQTT messages in one SQLite file.

    Durability: WAL mode with ``synchronous=FULL`` for everything that adds data (``put``
    and sequence reservations), so a transaction that has returned is on the medium and
    survives a power cut. ``synchronous=NORMAL`` would also never corrupt the file but may
    lose the last transactions when the power goes, which for a buffer means losing
    readings. Deletes (after PUBACK) are committed with ``synchronous=NORMAL``: losing one
    to a power cut only replays an already delivered message, which QoS 1 permits anyway,
    and the next FULL commit makes it durable too (the WAL is synced as a whole).

    Cost on an SD card: each call is one transaction, i.e. one WAL append and, for ``put``,
    one fsync. Callers batch: put a flush's worth of messages at once and delete acked ids
    in batches, instead of one call per message. Nothing writes while there is nothing to
    do: :meth:`enforce_limits` on a store within its limits only reads.

    Limits: after every ``put`` (in the same transaction) and on :meth:`enforce_limits`,
    messages older than ``max_age_s`` are dropped, then the oldest by insertion order
    until at most ``max_messages`` remain. :meth:`pop_dropped` reports how many went, for
    the "buffer dropping" event.

    Age (CONTRACT 14): with a ``time_source``, a message's age is measured on the
    monotonic clock, so a step of the wall clock (NTP's first sync after a boot in 2022,
    or a person's ``date -s``) neither expires nor keeps anything wrongly. A message from
    an earlier boot (the monotonic clock restarted) is as old as its ``ts`` says when both
    it and the clock now are synchronised, and otherwise at least as old as this boot's
    uptime: it is kept until the current boot has run for ``max_age_s``. Without a
    ``time_source`` (and for messages without a monotonic stamp) the age is the wall
    clock's ``now - ts``.

    Recovery: a file that is not a usable database at open (garbage, a corrupt page, or a
    schema newer than this code) is renamed to ``<name>.corrupt-<UTC time>`` (or
    ``<name>.schema-v<N>-<UTC time>``), together with its ``-wal`` and ``-shm`` files, and a
    fresh store is created; :attr:`recovered_from` then names the moved file. Errors of
    the operating system (permissions, a missing or read-only file system, a lock held by
    another process) are raised as :class:`StorageError`: moving the file would not fix
    them.

    Storage faults: every failed read or write (disk full, read-only remount, I/O error)
    raises :class:`StorageError` saying why; a failed transaction is rolled back and the
    store stays usable, so the caller may retry once the disk is writable again.

    No shared memory: the connection runs in ``locking_mode=EXCLUSIVE``, set before WAL
    mode is entered, so SQLite keeps the WAL index in the heap and never creates or maps a
    ``-shm`` file (https://sqlite.org/wal.html, "Use of WAL without shared-memory"), and
    ``mmap_size=0`` keeps the database itself out of memory maps. A memory-mapped file
    whose page cannot be written (an unwritable or truncated ``-shm``, a full tmpfs)
    kills the process with SIGBUS instead of failing a write; a heap index cannot. The
    exclusive lock also stops a second agent from sharing the buffer by mistake.

    Threading: every method takes one lock, so the store may be shared between threads,
    though it is meant for the agent's event-loop thread. Calls block for the length of a
    transaction (an fsync on ``put``); run them in an executor if that matters.

    Attributes:
        path: The database file.
        max_messages: The most messages kept.
        max_age_s: The oldest sample time kept, in seconds before now.
        recovered_from: Where an unusable file found at open was moved, else None.
        sequences: The persistent per-sensor ``seq`` counters, in the same database.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 100_000,
        max_age_s: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
        seq_block: int = 1000,
        time_source: ClockSource | None = None,
    ) -> None:
        """Open (creating or migrating if needed) the store at ``path``.

        Args:
            path: The database file; its directory is created if missing.
            max_messages: The most messages kept; the oldest beyond it are dropped.
            max_age_s: Messages older than this are dropped.
            clock: Returns the current unix time; injectable for tests (used for ages
                only without a ``time_source``).
            seq_block: How many ``seq`` values :attr:`sequences` reserves per disk write.
            time_source: The clocks that ages are measured on (see the class docstring);
                None: the wall ``clock`` alone.

        Raises:
            ValueError: A limit or ``seq_block`` is not positive.
            StorageError: The file cannot be opened or created (permissions, a read-only
                or full file system, a directory in its place, locked by another agent),
                or an unusable file cannot be moved aside.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive, not {max_age_s}")
        if seq_block < 1:
            raise ValueError(f"seq_block must be at least 1, not {seq_block}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.recovered_from: Path | None = None
        self._clock = clock if time_source is None else time_source.wall
        self._time = time_source
        #: Until this monotonic time no message can expire (see _expire_locked).
        self._expiry_due = -math.inf
        self._lock = threading.RLock()
        self._dropped = 0
        #: Why the file was moved aside at open (``corrupt``, ``schema-vN``), else None.
        self.recovered_reason: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._connect()
            except _Unusable as exc:
                self.recovered_from = self._move_aside(exc.reason)
                self.recovered_reason = exc.reason
                log.error(
                    "buffer %s was unusable (%s); moved to %s and started empty",
                    self.path,
                    exc,
                    self.recovered_from,
                )
                self._conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, StorageError):
                raise
            _raise_storage(exc, self.path)
        self._closed = False
        try:
            self._depth: int = self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            self.sequences = SequenceStore(self, block_size=seq_block)
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                _raise_storage(exc, self.path)
            raise

    # -- opening -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open, check and migrate the file; raise _Unusable if it is not a usable store."""
        # Garbage is recognised before SQLite opens it: SQLite would otherwise adopt, and on
        # close delete, a -wal file lying beside it, which belongs in the moved-aside copy.
        try:
            with self.path.open("rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            header = b""
        if header and header != _SQLITE_HEADER:
            raise _Unusable("corrupt", "file is not a database (bad header)")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            try:
                # Before WAL mode: no -shm file, no memory map (see the class docstring).
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                conn.execute("PRAGMA mmap_size = 0")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {_TRANSACTION_SYNC}")
                # Truncate the WAL back to this size after a checkpoint (a long outage can
                # grow it); it is otherwise left at its largest size.
                conn.execute("PRAGMA journal_size_limit = 4194304")
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise _Unusable("corrupt", "; ".join(str(p) for p in problems))
                self._migrate(conn)
                self._ensure_epoch(conn)
            except sqlite3.DatabaseError as exc:
                if exc.sqlite_errorcode & 0xFF in _CORRUPTION_CODES:
                    raise _Unusable("corrupt", str(exc)) from exc
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _Unusable(
                f"schema-v{version}",
                f"schema version {version} is newer than this agent's {SCHEMA_VERSION}",
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _ensure_epoch(conn: sqlite3.Connection) -> None:
        """Give a new (or just migrated) database its sequence epoch."""
        if conn.execute("SELECT 1 FROM meta WHERE key = 'epoch'").fetchone() is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))

    def _move_aside(self, reason: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        base = self.path.with_name(f"{self.path.name}.{reason}-{stamp}")
        aside, n = base, 1
        while aside.exists():
            n += 1
            aside = base.with_name(f"{base.name}.{n}")
        self.path.rename(aside)
        # A stale WAL must go with its file: SQLite would replay it into the new one.
        for suffix in ("-wal", "-shm"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                companion.rename(aside.with_name(aside.name + suffix))
        return aside

    # -- plumbing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"message store {self.path} is closed")

    @contextmanager
    def _transaction(self, *, sync: str = _TRANSACTION_SYNC) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock, committed with the given sync level."""
        with self._lock:
            self._check_open()
            conn = self._conn
            if sync != _TRANSACTION_SYNC:
                conn.execute(f"PRAGMA synchronous = {sync}")
            # The in-memory counters follow the transaction: restored if it is rolled back.
            depth, dropped = self._depth, self._dropped
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        # A rollback after an I/O error may fail too; SQLite has then
                        # rolled back by itself (the transaction is gone either way).
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    self._depth, self._dropped = depth, dropped
                    raise
            except sqlite3.Error as exc:
                _raise_storage(exc, self.path)
            finally:
                if sync != _TRANSACTION_SYNC:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA synchronous = {_TRANSACTION_SYNC}")

    # -- the queue -----------------------------------------------------------------------

    def put(self, messages: Sequence[QueuedMessage]) -> list[int]:
        """Append messages durably, in order, in one transaction; then apply the limits.

        Args:
            messages: The messages to queue; their ``id`` is ignored.

        Returns:
            The new row ids, in the order of ``messages``. A message that the limits drop
            at once (already too old, or more messages than ``max_messages``) still has
            its id here; deleting it later is harmless.
        """
        if not messages:
            with self._lock:
                self._check_open()
            return []
        ids: list[int] = []
        with self._transaction() as conn:
            boot = self._time.boot_id if self._time is not None else ""
            for m in messages:
                cursor = conn.execute(
                    "INSERT INTO messages (topic, payload, qos, sensor, seq, ts, mono, synced,"
                    " boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.topic,
                        m.payload,
                        m.qos,
                        m.sensor,
                        m.seq,
                        m.ts,
                        m.mono,
                        int(m.synced),
                        (m.boot or boot) if m.mono is not None else "",
                    ),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            self._depth += len(ids)
            self._enforce_limits_locked(conn, batch=messages)
        return ids

    def take(self, limit: int, *, after_id: int = 0) -> list[QueuedMessage]:
        """Return up to ``limit`` of the oldest messages, without removing them.

        Messages come in insertion order, so each sensor's readings keep their order.

        Args:
            limit: The most messages to return.
            after_id: Only messages with a greater id: lets a caller with messages in
                flight fetch the next ones without fetching those again.
        """
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(
                    "SELECT topic, payload, qos, sensor, seq, ts, id, mono, synced, boot"
                    " FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, max(limit, 0)),
                ).fetchall()
            except sqlite3.Error as exc:
                _raise_storage(exc, self.path)
        return [
            QueuedMessage(
                topic=topic,
                payload=payload,
                qos=qos,
                sensor=sensor,
                seq=seq,
                ts=ts,
                id=row_id,
                mono=mono,
                synced=bool(synced),
                boot=boot,
            )
            for topic, payload, qos, sensor, seq, ts, row_id, mono, synced, boot in rows
        ]

    def delete(self, ids: Iterable[int]) -> None:
        """Remove delivered messages (after PUBACK); unknown ids are ignored.

        Pass a batch: each call is one transaction. It is committed without an fsync of
        its own (see the class docstring): after a power cut a deleted message may come
        back once, which is a duplicate, never a loss.
        """
        params = [(i,) for i in ids]
        if not params:
            with self._lock:
                self._check_open()
            return
        with self._transaction(sync=_DELETE_SYNC) as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM messages WHERE id = ?", params)
            self._depth -= conn.total_changes - before

    def enforce_limits(self) -> int:
        """Drop expired messages, then the oldest beyond ``max_messages``.

        Writes nothing when nothing is to be dropped, so it may be called periodically
        without wearing the SD card.

        Returns:
            How many messages this call dropped (also added to :meth:`pop_dropped`).
        """
        with self._lock:
            self._check_open()
            if not self._over_limits():
                return 0
            with self._transaction() as conn:
                return self._enforce_limits_locked(conn)

    def _over_limits(self) -> bool:
        if self._depth > self.max_messages:
            return True
        oldest = self._oldest_age_locked()
        return oldest is not None and oldest > self.max_age_s

    # A row's age (see the class docstring), in SQL: the same expression for expiry and
    # for the oldest age, so that the two never disagree. Parameters: wall, mono and boot
    # now, whether the clock is synchronised now.
    _AGE_SQL: Final = """
        CASE
            WHEN mono IS NULL THEN :wall - ts
            WHEN boot = :boot THEN :mono - mono
            WHEN synced AND :synced THEN MAX(:wall - ts, :mono)
            ELSE :mono
        END
    """

    def _age_params(self) -> dict[str, float | int | str]:
        source = self._time
        if source is None:
            return {"wall": self._clock(), "mono": 0.0, "boot": "", "synced": 1}
        return {
            "wall": source.wall(),
            "mono": source.monotonic(),
            "boot": source.boot_id,
            "synced": int(source.synced()),
        }

    def _enforce_limits_locked(
        self, conn: sqlite3.Connection, *, batch: Sequence[QueuedMessage] | None = None
    ) -> int:
        before = conn.total_changes
        if self._time is None:
            conn.execute("DELETE FROM messages WHERE ts < ?", (self._clock() - self.max_age_s,))
        else:
            self._expire_locked(conn, batch)
        expired = conn.total_changes - before
        self._depth -= expired
        excess = max(self._depth - self.max_messages, 0)
        if excess:
            before = conn.total_changes
            conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                (excess,),
            )
            excess = conn.total_changes - before
            self._depth -= excess
        dropped = expired + excess
        self._dropped += dropped
        return dropped

    def _expire_locked(
        self, conn: sqlite3.Connection, batch: Sequence[QueuedMessage] | None
    ) -> None:
        """Delete what is older than ``max_age_s`` by the ages of the class docstring.

        The ages are not indexed, so this scans the table; after a ``put`` it runs only
        when something may have expired since the last scan (:attr:`_expiry_due`, on the
        monotonic clock) or the batch itself holds an old message. Ages that follow the
        wall clock (messages without a monotonic stamp, or from an earlier boot) may
        expire up to one :meth:`enforce_limits` period late after a step of the clock.
        """
        params = self._age_params()
        mono = float(params["mono"])
        if batch is not None and mono < self._expiry_due:
            horizon = mono - self.max_age_s
            if all(m.mono is not None and m.mono >= horizon for m in batch):
                return
        conn.execute(
            f"DELETE FROM messages WHERE {self._AGE_SQL} > :max_age",
            {**params, "max_age": self.max_age_s},
        )
        oldest = conn.execute(f"SELECT MAX({self._AGE_SQL}) FROM messages", params).fetchone()[0]
        self._expiry_due = mono + self.max_age_s - (oldest if oldest is not None else 0.0)

    def clock_changed(self) -> None:
        """The clock's sync state changed: ages by the wall clock are checked at the next
        ``put`` rather than at the next :meth:`enforce_limits`."""
        with self._lock:
            self._expiry_due = -math.inf

    def restamp(self, sync: Stamp, rewrite: Callable[[bytes, float], bytes]) -> int:
        """Re-stamp, in one transaction, the readings of this boot whose ``ts`` came
        from an unsynchronised clock: ``ts = sync.wall - (sync.mono - mono)``.

        Their ``synced`` becomes true (their ``ts`` is good now); ids, and so the
        order, stay. Readings of an earlier boot cannot be re-stamped (their monotonic
        clock is gone) and are left as they are.

        Args:
            sync: The clocks read together just after the sync.
            rewrite: Returns a payload with its ``ts`` replaced.

        Returns:
            How many readings were re-stamped.
        """
        if self._time is None:
            return 0  # no monotonic stamps to re-stamp from
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(
                    "SELECT id, payload, mono FROM messages WHERE synced = 0 AND mono IS NOT"
                    " NULL AND boot = ? AND sensor != '' ORDER BY id",
                    (self._time.boot_id,),
                ).fetchall()
            except sqlite3.Error as exc:
                _raise_storage(exc, self.path)
            if not rows:
                return 0
            updates = []
            for row_id, payload, mono in rows:
                ts = sync.wall - (sync.mono - mono)
                try:
                    updates.append((ts, rewrite(payload, ts), row_id))
                except ValueError:
                    log.warning("buffer row %d is not a reading; not re-stamped", row_id)
            with self._transaction() as conn:
                conn.executemany(
                    "UPDATE messages SET ts = ?, payload = ?, synced = 1 WHERE id = ?", updates
                )
            self._expiry_due = -math.inf
        return len(updates)

    def pop_dropped(self) -> int:
        """Return how many messages the limits dropped since the last call, and reset."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped

    def depth(self) -> int:
        """Return how many messages are queued (kept in memory: no disk access)."""
        with self._lock:
            self._check_open()
            return self._depth

    def oldest_ts(self) -> float | None:
        """Return the oldest sample time queued, or None when the queue is empty."""
        with self._lock:
            self._check_open()
            return self._oldest_ts_locked()

    def _oldest_ts_locked(self) -> float | None:
        if self._depth == 0:
            return None
        try:
            value: float | None = self._conn.execute("SELECT MIN(ts) FROM messages").fetchone()[0]
        except sqlite3.Error as exc:
            _raise_storage(exc, self.path)
        return value

    def oldest_age(self) -> float | None:
        """Return the age of the oldest message queued, in seconds (as ``max_age_s``
        measures it: see the class docstring), or None when the queue is empty."""
        with self._lock:
            self._check_open()
            return self._oldest_age_locked()

    def _oldest_age_locked(self) -> float | None:
        if self._depth == 0:
            return None
        if self._time is None:
            oldest = self._oldest_ts_locked()
            return None if oldest is None else self._clock() - oldest
        try:
            value: float | None = self._conn.execute(
                f"SELECT MAX({self._AGE_SQL}) FROM messages", self._age_params()
            ).fetchone()[0]
        except sqlite3.Error as exc:
            _raise_storage(exc, self.path)
        return value

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Persist the sequence counters' exact positions and close the file; idempotent.

        After a clean close the next start continues every ``seq`` without a gap.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.sequences._release()
            except StorageError as exc:
                log.error("cannot save the seq counters to %s: %s", self.path, exc.reason)
            finally:
                self._closed = True
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"depth={self._depth}"
        return f"<MessageStore {str(self.path)!r} {state}>"


class SequenceStore:
    """Per-sensor ``seq`` counters that never repeat within their ``epoch``.

    A hi/lo allocator: the database holds, per sensor, ``reserved_up_to``, the first value
    not yet reserved. :meth:`next` hands out values from memory and writes (durably, before
    handing any of them out) a new reservation only once every ``block_size`` calls, so a
    sensor read every 10 s costs one small write every few hours instead of one per
    reading. A clean :meth:`MessageStore.close` writes back the exact next value, so a
    normal restart leaves no gap. After a crash the counter continues from the
    reservation: it may skip up to ``block_size - 1`` values, but never repeats one.
    Consumers see a gap (which they treat as possibly lost readings), never a duplicate.

    The epoch: a number (unix milliseconds when it began) that every reading carries next
    to its ``seq``; (device_id, sensor, epoch, seq) identifies a reading for good. It
    changes only when the counters could not be kept: a new database (the old one was
    deleted, or corrupt and moved aside) starts a new epoch with every ``seq`` at 1, and
    a reservation that cannot be written (disk full, read-only) starts a new epoch in
    memory, in which the counters go on, because after a crash the old reservation would
    hand out the same values again. The new epoch is written with the next reservation
    that succeeds (see :meth:`persist`).

    Obtain it as :attr:`MessageStore.sequences`; it shares the store's connection and lock.

    Attributes:
        epoch: The current epoch.
        durable: False while the counters run ahead of what the database holds.
    """

    def __init__(self, store: MessageStore, *, block_size: int = 1000) -> None:
        """Attach to an open store.

        Args:
            store: The store whose database holds the reservations.
            block_size: How many values one reservation write covers.
        """
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        self.block_size = block_size
        self._store = store
        self._next: dict[str, int] = {}
        self._limit: dict[str, int] = {}
        row = store._conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self.epoch: int = int(row[0]) if row else new_epoch()
        self.durable = True

    def next(self, sensor: str) -> int:
        """Return the sensor's next ``seq`` in :attr:`epoch` (the first ever is 1).

        Never raises for a storage fault: the counters then go on in memory under a new
        epoch (see the class docstring).
        """
        store = self._store
        with store._lock:
            store._check_open()
            if sensor not in self._next:
                start = 1
                if self.durable:
                    try:
                        row = store._conn.execute(
                            "SELECT reserved_up_to FROM seq_blocks WHERE sensor = ?", (sensor,)
                        ).fetchone()
                        start = int(row[0]) if row else 1
                    except sqlite3.Error as exc:
                        self._lose_durability(diagnose(exc, store.path))
                self._next[sensor] = self._limit[sensor] = start
            value = self._next[sensor]
            if value >= self._limit[sensor]:
                self._limit[sensor] = value + self.block_size
                self.persist()
            self._next[sensor] = value + 1
            return value

    def persist(self) -> bool:
        """Write the epoch and every reservation; True when they are on disk.

        Called by :meth:`next` at each reservation, and by whoever sees the disk writable
        again. A failure starts a new epoch in memory (once per fault).
        """
        store = self._store
        with store._lock:
            store._check_open()
            try:
                with store._transaction() as conn:
                    if not self.durable:
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('epoch', ?) ON CONFLICT"
                            " (key) DO UPDATE SET value = excluded.value",
                            (self.epoch,),
                        )
                        # Another epoch's reservations are meaningless in this one.
                        conn.execute("DELETE FROM seq_blocks")
                    conn.executemany(
                        "INSERT INTO seq_blocks (sensor, reserved_up_to) VALUES (?, ?) ON"
                        " CONFLICT (sensor) DO UPDATE SET reserved_up_to = excluded.reserved_up_to",
                        list(self._limit.items()),
                    )
            except StorageError as exc:
                self._lose_durability(exc)
                return False
        if not self.durable:
            log.info("seq counters saved again to %s (epoch %d)", store.path, self.epoch)
        self.durable = True
        return True

    def _lose_durability(self, exc: StorageError) -> None:
        if not self.durable:
            return
        self.durable = False
        self.epoch = new_epoch(self.epoch)
        log.error(
            "cannot save the seq counters to %s (%s): they go on in memory under the new"
            " epoch %d, so that no (epoch, seq) is ever published twice",
            exc.path,
            exc.reason,
            self.epoch,
        )

    def _release(self) -> None:
        """Write back every counter's exact next value (on clean close)."""
        if not self.durable:
            self.persist()
            if not self.durable:
                return
        unused = [(s, n) for s, n in self._next.items() if n < self._limit[s]]
        if not unused:
            return
        with self._store._transaction() as conn:
            conn.executemany(
                "UPDATE seq_blocks SET reserved_up_to = ? WHERE sensor = ?",
                [(n, s) for s, n in unused],
            )
        for s, n in unused:
            self._limit[s] = n
