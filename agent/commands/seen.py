"""What commands were already carried out: the memory that makes "at most once" hold.

Every accepted command that can be recognised again (one with an ``id``; a signed
command's ``nonce``) is remembered until the moment its command could no longer be
accepted anyway (its ``ts`` plus ``commands.max_age``; without ``ts``, acceptance plus
``max_age`` plus ``max_skew``). The memory is bounded twice: by that age, and by count —
when :data:`CAPACITY` live entries are held, a new command that would need one is refused
rather than an old one forgotten, since forgetting early is exactly how a command runs
twice.

It also keeps the *trusted time* (CONTRACT 14): the reference by which the handler last
judged a command (see :meth:`agent.commands.handler.CommandHandler._reference`). It only
grows, and entries are forgotten only by it, so it is saved with them: after a restart on
a clock that booted in the past, the agent still knows that what it forgot is stale.

It survives a reload (the daemon hands the same object to the new handler) and a restart:
each entry is appended to a file in the state directory (one JSON line, mode 0600) and
read back at start; expired lines are dropped when the file is rewritten. Appends are
flushed to the kernel, not fsynced: a crash or kill -9 loses nothing, a power cut may lose
the last few seconds of entries (after a power cut the outputs restart from their initial
state, and the broker does not redeliver messages it saw acknowledged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: Live entries held at most: 4096 within the default 35 s window is over 100 commands
#: a second, sustained.
CAPACITY = 4096


@dataclass
class Seen:
    """One remembered command."""

    #: Unix time after which its command would be refused as stale anyway.
    until: float
    #: A digest of what was accepted under this key (to tell a redelivery from a reuse).
    digest: str
    #: The reply it got, while this process still has it.
    reply: dict[str, Any] | None = None


class SeenCommands:
    """Remembered command keys, each until its own deadline.

    Args:
        path: the file that keeps them across restarts; None: memory only.
        capacity: live entries held at most.
    """

    def __init__(self, *, path: Path | None, capacity: int = CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self._entries: dict[str, Seen] = {}
        self._file: IO[str] | None = None
        self._appended = 0
        self._write_failed = False
        #: The trusted time (unix seconds), None until known; saved with the entries.
        self.trusted_value: float | None = None
        #: The monotonic time at which ``trusted_value`` held; None: not anchored yet
        #: (read from the file: anchored when first used).
        self._trusted_mono: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, now: float | None) -> None:
        """Read what an earlier run remembered, drop the expired (by ``now``; None: keep
        all, for a clock that cannot be trusted), and start appending."""
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    self._read_line(line, now)
        except FileNotFoundError:
            self._start_appending()  # nothing to compact: no rewrite, no fsync at start
            return
        except (OSError, UnicodeDecodeError) as e:
            log.error("cannot read the command memory %s: %s", self.path, e)
        self._rewrite(now)

    def _start_appending(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as e:
            self._report_write_error(e)

    def _read_line(self, line: str, now: float | None) -> None:
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                return
            if "t" in item:
                trusted = float(item["t"])
                if math.isfinite(trusted):
                    self.trusted_value = max(trusted, self.trusted_value or -math.inf)
            if "k" not in item:
                return
            key, until, digest = item["k"], float(item["u"]), item["h"]
        except (ValueError, KeyError, TypeError):
            return  # a line cut short by a crash
        if isinstance(key, str) and isinstance(digest, str) and (now is None or until >= now):
            self._entries[key] = Seen(until, digest)

    def trusted_at(self, mono: float) -> float | None:
        """The trusted time now: its value plus the monotonic time since it held (None:
        unknown). A value read from the file counts from the first call."""
        if self.trusted_value is None:
            return None
        if self._trusted_mono is None:
            self._trusted_mono = mono
        return self.trusted_value + max(mono - self._trusted_mono, 0.0)

    def trust(self, value: float, mono: float) -> None:
        """The trusted time is ``value`` at monotonic ``mono``, unless it was already
        greater (it never goes back). Saved with the next entry or rewrite."""
        if not math.isfinite(value):
            return
        if self.trusted_value is None or value >= self.trusted_value:
            self.trusted_value = value
        self._trusted_mono = mono

    def get(self, key: str, now: float) -> Seen | None:
        """The live entry for ``key``, if any."""
        self._expire(now)
        return self._entries.get(key)

    def full(self, now: float) -> bool:
        """True when no new entry can be taken until some expire."""
        self._expire(now)
        return len(self._entries) >= self.capacity

    def add(self, key: str, seen: Seen) -> None:
        """Remember ``key`` (the caller checked :meth:`full` first)."""
        self._entries[key] = seen
        item: dict[str, Any] = {"k": key, "u": seen.until, "h": seen.digest}
        if self.trusted_value is not None:
            item["t"] = self.trusted_value
        self._append(item)

    def _expire(self, now: float) -> None:
        if self._entries and min(s.until for s in self._entries.values()) < now:
            self._entries = {k: s for k, s in self._entries.items() if s.until >= now}

    def _append(self, item: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(item, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as e:
            self._report_write_error(e)
            return
        self._appended += 1
        if self._appended > 2 * self.capacity:
            self._rewrite(None)

    def _rewrite(self, now: float | None) -> None:
        """Replace the file with the live entries only (temporary file, rename)."""
        assert self.path is not None
        if now is not None:
            self._expire(now)
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                if self.trusted_value is not None:
                    f.write(json.dumps({"t": self.trusted_value}) + "\n")
                for key, seen in self._entries.items():
                    line = {"k": key, "u": seen.until, "h": seen.digest}
                    f.write(json.dumps(line, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            self._report_write_error(e)
        self._start_appending()
        self._appended = 0

    def _report_write_error(self, error: OSError) -> None:
        if not self._write_failed:
            log.error(
                "cannot write the command memory %s (%s): commands are remembered in "
                "memory only, and a restart forgets them",
                self.path,
                error.strerror or error,
            )
        self._write_failed = True

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
