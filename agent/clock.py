"""Which time the agent can trust (CONTRACT section 14).

A Raspberry Pi has no real-time clock: it boots with the time it saved at shutdown, or
in 1970, and the clock steps to the right time when NTP first syncs, maybe minutes later.
Every rule here that measures an age therefore uses the monotonic clock, and the wall
clock is believed only while the kernel says it is synchronised.

The kernel knows: ``adjtimex(2)`` (glibc's ``adjtimex``/``ntp_adjtime``) with ``modes = 0``
only reads, needs no privilege, and reports ``STA_UNSYNC`` in ``status`` until a time
daemon (systemd-timesyncd, chrony, ntpd) has disciplined the clock, and again when its
estimated error grows past 16 s without one; the call then also returns ``TIME_ERROR``.

The clock is a :class:`ClockSource`, injected wherever time matters, so that tests step
the wall clock forwards and backwards and flip the sync state. :func:`clock_from_env`
gives the real one, or, for the end-to-end tests of the real process, one steered by a
control file (:data:`CLOCK_FILE_ENV`). The daemon wraps it in a :class:`WatchedClock`,
which asks the kernel for the sync state only at the watch's polls (every
:data:`POLL_UNSYNCED_S` while unsynchronised, :data:`POLL_SYNCED_S` after), so stamping a
reading costs no system call and an idle agent is not woken every second.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = [
    "CLOCK_FILE_ENV",
    "POLL_CONTROL_FILE_S",
    "POLL_SYNCED_S",
    "POLL_UNSYNCED_S",
    "STA_UNSYNC",
    "TIME_ERROR",
    "ClockSource",
    "ClockUnavailable",
    "ControlFileClock",
    "Stamp",
    "SystemClock",
    "WatchedClock",
    "clock_from_env",
    "kernel_clock_synced",
    "read_boot_id",
    "stamp",
    "watched",
]

log = logging.getLogger(__name__)

#: ``status`` bit: the clock is not synchronised (``<sys/timex.h>``).
STA_UNSYNC: Final = 0x0040
#: ``adjtimex`` return value: the clock is not synchronised.
TIME_ERROR: Final = 5
#: The environment variable naming a control file that steers the clock (tests only).
CLOCK_FILE_ENV: Final = "EDGE_AGENT_CLOCK_FILE"
#: The kernel's id of the current boot: monotonic times compare only within one.
BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
#: How often an unsynchronised clock's state is read: the sync is noticed within this.
POLL_UNSYNCED_S: Final = 5.0
#: How often a synchronised clock's state is read. The kernel drops the sync only once
#: its estimated error has grown past 16 s (at 500 ppm: hours without a time daemon).
POLL_SYNCED_S: Final = 60.0
#: The control file's poll (tests step and sync it and want to see the effect soon).
POLL_CONTROL_FILE_S: Final = 0.5


class ClockUnavailable(OSError):
    """The kernel's sync state cannot be read (no ``adjtimex``, or the call failed)."""


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """``struct timex`` of ``<sys/timex.h>`` (the ``long`` layout glibc's ``adjtimex``
    takes on 32- and 64-bit Linux), with the kernel's trailing padding."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
        ("_spare", ctypes.c_byte * 64),  # room for fields a newer kernel header adds
    )


@functools.cache
def _adjtimex() -> Callable[[Any], int]:
    """glibc's ``adjtimex``, looked up once."""
    # The process's own symbols, libc's among them: no ctypes.util.find_library, which
    # runs ldconfig (tens of milliseconds at every start).
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        function = libc.adjtimex
    except AttributeError as e:
        raise ClockUnavailable("this C library has no adjtimex") from e
    function.argtypes = (ctypes.POINTER(_Timex),)
    function.restype = ctypes.c_int
    return function


def kernel_clock_synced() -> bool:
    """Whether the kernel considers the system clock synchronised.

    ``adjtimex`` with ``modes = 0`` (read only): False when ``status`` has
    :data:`STA_UNSYNC` or the call returns :data:`TIME_ERROR`.

    Raises:
        ClockUnavailable: the call is not available or failed (a seccomp filter, say).
    """
    timex = _Timex()
    timex.modes = 0
    state = _adjtimex()(ctypes.byref(timex))
    if state == -1:
        errno = ctypes.get_errno()
        raise ClockUnavailable(errno, f"adjtimex: {os.strerror(errno)}")
    return state != TIME_ERROR and not timex.status & STA_UNSYNC


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's id of this boot; ``""`` where there is none (not Linux)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Stamp:
    """The clocks read together, at one moment.

    Attributes:
        wall: Unix seconds, as the system clock says.
        mono: Monotonic seconds (comparable only within ``boot_id``).
        synced: Whether ``wall`` came from a synchronised clock.
    """

    wall: float
    mono: float
    synced: bool


class ClockSource(Protocol):
    """The time, as the agent reads it. Implementations: :class:`SystemClock`,
    :class:`ControlFileClock`, and the tests' fakes.

    Implementations must make :meth:`monotonic` never go backwards within one
    :attr:`boot_id`, and may make :meth:`wall` jump either way at any time.
    """

    @property
    def boot_id(self) -> str:
        """Identifies the boot that :meth:`monotonic` counts from."""
        ...

    def wall(self) -> float:
        """Unix seconds, trusted only when :meth:`synced`."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (since boot)."""
        ...

    def synced(self) -> bool:
        """Whether the wall clock is synchronised now."""
        ...


def stamp(clock: ClockSource) -> Stamp:
    """Read ``clock``'s wall and monotonic time and sync state together.

    The sync state is read first: should the clock be stepped at its sync between the
    reads, the stamp is then flagged and good (re-stamped later, harmlessly), never a
    wall time from before the step that claims to be synchronised.
    """
    synced = clock.synced()
    return Stamp(wall=clock.wall(), mono=clock.monotonic(), synced=synced)


class SystemClock:
    """The system's clocks; the sync state from :func:`kernel_clock_synced`.

    Where the kernel's state cannot be read, the clock counts as unsynchronised (said
    once in the log): readings are then flagged rather than trusted blindly.
    """

    def __init__(self) -> None:
        self._boot_id = read_boot_id()
        self._warned = False

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def synced(self) -> bool:
        try:
            return kernel_clock_synced()
        except ClockUnavailable as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot read the clock's sync state (%s): assuming unsynchronised", e)
            return False


class ControlFileClock:
    """The system's clocks as a JSON file steers them: for end-to-end tests.

    The file holds ``{"offset_s": <seconds added to the wall clock>, "synced": <bool>,
    "boot_id": <str, optional>}``; it is read again whenever it changes, so a test steps
    the wall clock or syncs it by rewriting the file (atomically: write and rename).
    The monotonic clock is the system's own. A missing or unreadable file leaves the
    last state (at first: no offset, unsynchronised).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset_s = 0.0
        self._synced = False
        self._boot_id = read_boot_id()
        self._seen: tuple[int, int, int] | None = None
        self._refresh()

    @property
    def boot_id(self) -> str:
        self._refresh()
        return self._boot_id

    def wall(self) -> float:
        self._refresh()
        return time.time() + self._offset_s

    def monotonic(self) -> float:
        return time.monotonic()

    def synced(self) -> bool:
        self._refresh()
        return self._synced

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._seen:
                return
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.debug("clock control file %s: %s", self.path, e)
            return
        if not isinstance(body, dict):
            return
        self._seen = key
        self._offset_s = float(body.get("offset_s", 0.0))
        self._synced = bool(body.get("synced", False))
        if isinstance(body.get("boot_id"), str):
            self._boot_id = body["boot_id"]


class WatchedClock:
    """``source``'s clocks, with the sync state as of the last :meth:`refresh`.

    Every reading and command is stamped, and the sync state changes a few times in a
    run at most: reading it once per poll instead of once per stamp saves a system
    call each. Between a change and the next poll, the state is stale by at most one
    poll interval. A clock that just synchronised is then still called unsynchronised,
    so its readings are flagged (harmless, they are right); one that just lost its sync
    is still trusted for up to :data:`POLL_SYNCED_S`, which is nothing against the hours
    its error took to grow past the kernel's 16 s.
    """

    def __init__(
        self,
        source: ClockSource,
        *,
        unsynced_poll_s: float = POLL_UNSYNCED_S,
        synced_poll_s: float = POLL_SYNCED_S,
    ) -> None:
        self.source = source
        self._polls = (unsynced_poll_s, synced_poll_s)
        self._synced = source.synced()

    @property
    def boot_id(self) -> str:
        return self.source.boot_id

    def wall(self) -> float:
        return self.source.wall()

    def monotonic(self) -> float:
        return self.source.monotonic()

    def synced(self) -> bool:
        return self._synced

    def refresh(self) -> bool:
        """Read the sync state from the source now; the new state."""
        self._synced = self.source.synced()
        return self._synced

    @property
    def poll_s(self) -> float:
        """Seconds until the next :meth:`refresh` is due, for the current state."""
        return self._polls[self._synced]


def watched(source: ClockSource) -> WatchedClock:
    """``source`` wrapped for the daemon, polled at the rate that suits it."""
    if isinstance(source, ControlFileClock):
        return WatchedClock(
            source, unsynced_poll_s=POLL_CONTROL_FILE_S, synced_poll_s=POLL_CONTROL_FILE_S
        )
    return WatchedClock(source)


def clock_from_env(environ: Mapping[str, str] | None = None) -> ClockSource:
    """The agent's clock: :class:`SystemClock`, or a :class:`ControlFileClock` when
    :data:`CLOCK_FILE_ENV` names a control file (a test hook; said in the log)."""
    environ = os.environ if environ is None else environ
    path = environ.get(CLOCK_FILE_ENV)
    if path:
        log.warning("%s=%s: the clock is steered by a test's control file", CLOCK_FILE_ENV, path)
        return ControlFileClock(Path(path))
    return SystemClock()
