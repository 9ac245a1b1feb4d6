"""The clock module: the kernel's sync state through ctypes, and the injectable sources."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent import clock as clock_module
from agent.clock import (
    CLOCK_FILE_ENV,
    POLL_CONTROL_FILE_S,
    POLL_SYNCED_S,
    POLL_UNSYNCED_S,
    STA_UNSYNC,
    TIME_ERROR,
    ClockUnavailable,
    ControlFileClock,
    SystemClock,
    WatchedClock,
    clock_from_env,
    kernel_clock_synced,
    read_boot_id,
    stamp,
    watched,
)
from tests.support.clock import IN_2022, ClockControl, SteppableClock


def test_the_kernel_call_reads_this_machines_state() -> None:
    # This VM's kernel is not synchronised (ENV-NOTES): STA_UNSYNC is set.
    assert kernel_clock_synced() is False


def test_the_struct_matches_the_kernels_layout() -> None:
    # The C library writes the whole struct: a layout too small would overwrite memory.
    # struct timex is 208 bytes on 64-bit Linux (glibc's <bits/timex.h>), 128 on 32-bit.
    expected = 208 if ctypes.sizeof(ctypes.c_long) == 8 else 128
    assert ctypes.sizeof(clock_module._Timex) >= expected
    timex = clock_module._Timex()
    state = clock_module._adjtimex()(ctypes.byref(timex))
    assert 0 <= state <= TIME_ERROR
    assert timex.status & STA_UNSYNC  # this VM
    assert state == TIME_ERROR
    # maxerror is in microseconds; the kernel caps it at 16 s (NTP_PHASE_LIMIT).
    assert 0 <= timex.maxerror <= 16_000_000
    assert timex.tick > 0  # microseconds per tick: the kernel filled the struct


def test_adjtimex_failure_is_clock_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(_timex: object) -> int:
        ctypes.set_errno(1)
        return -1

    monkeypatch.setattr(clock_module, "_adjtimex", lambda: failing)
    with pytest.raises(ClockUnavailable, match="adjtimex"):
        kernel_clock_synced()


@pytest.mark.parametrize(
    ("state", "status", "synced"),
    [
        (0, 0, True),  # TIME_OK, disciplined
        (1, 0, True),  # TIME_INS: a leap second is pending, still synchronised
        (0, STA_UNSYNC, False),
        (TIME_ERROR, 0, False),
        (TIME_ERROR, STA_UNSYNC | 0x1, False),
    ],
)
def test_sync_state_from_return_value_and_status(
    monkeypatch: pytest.MonkeyPatch, state: int, status: int, synced: bool
) -> None:
    def fake(timex: Any) -> int:
        ctypes.cast(timex, ctypes.POINTER(clock_module._Timex)).contents.status = status
        return state

    monkeypatch.setattr(clock_module, "_adjtimex", lambda: fake)
    assert kernel_clock_synced() is synced


def test_system_clock_without_the_kernel_state_counts_as_unsynced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise ClockUnavailable(38, "adjtimex: Function not implemented")

    monkeypatch.setattr(clock_module, "kernel_clock_synced", broken)
    source = SystemClock()
    assert source.synced() is False
    assert source.synced() is False
    assert [r.message for r in caplog.records].count(
        "cannot read the clock's sync state ([Errno 38] adjtimex: Function not implemented):"
        " assuming unsynchronised"
    ) == 1


def test_system_clock_reads_the_system() -> None:
    source = SystemClock()
    assert abs(source.wall() - time.time()) < 5
    first = source.monotonic()
    assert source.monotonic() >= first
    assert source.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert source.synced() is False  # this VM


def test_boot_id_is_empty_where_there_is_none(tmp_path: Path) -> None:
    assert read_boot_id(tmp_path / "missing") == ""


def test_control_file_steps_the_wall_clock_and_flips_sync(tmp_path: Path) -> None:
    control = ClockControl(tmp_path / "clock.json", offset_s=IN_2022 - time.time())
    source = ControlFileClock(control.path)
    assert abs(source.wall() - IN_2022) < 5
    assert source.synced() is False
    mono = source.monotonic()
    control.step(365 * 86400)
    assert abs(source.wall() - (IN_2022 + 365 * 86400)) < 5
    control.step(-3600)
    assert abs(source.wall() - (IN_2022 + 365 * 86400 - 3600)) < 5
    control.sync()
    assert source.synced() is True
    assert abs(source.wall() - time.time()) < 5
    assert source.monotonic() >= mono  # the monotonic clock never stepped


def test_control_file_keeps_its_state_when_the_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    path.write_text(json.dumps({"offset_s": -1000.0, "synced": True, "boot_id": "b1"}))
    source = ControlFileClock(path)
    assert source.synced() is True and source.boot_id == "b1"
    path.write_text("{not json")
    assert source.synced() is True
    assert abs(source.wall() - (time.time() - 1000)) < 5
    os.unlink(path)
    assert source.synced() is True


def test_clock_from_env_picks_the_control_file_only_when_asked(tmp_path: Path) -> None:
    assert isinstance(clock_from_env({}), SystemClock)
    chosen = clock_from_env({CLOCK_FILE_ENV: str(tmp_path / "c.json")})
    assert isinstance(chosen, ControlFileClock)
    assert chosen.synced() is False  # no file yet: unsynchronised, no offset


def test_stamp_reads_the_three_together() -> None:
    fake = SteppableClock(wall=IN_2022, mono=50.0, synced=False)
    first = stamp(fake)
    assert (first.wall, first.mono, first.synced) == (IN_2022, 50.0, False)
    fake.advance(10)
    fake.step(-3600)
    fake.sync(IN_2022 + 4 * 365 * 86400)
    second = stamp(fake)
    assert second.mono - first.mono == 10
    assert second.synced is True


class CountingClock(SteppableClock):
    """Counts how often its sync state is asked for."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asked = 0

    def synced(self) -> bool:
        self.asked += 1
        return super().synced()


def test_watched_clock_stamps_from_the_state_of_its_last_refresh() -> None:
    source = CountingClock(synced=False)
    clock = WatchedClock(source)
    asked_at_start = source.asked
    source.sync(IN_2022 + 4 * 365 * 86400)
    first = [stamp(clock) for _ in range(100)]
    # No system call per stamp: the kernel is asked only at the watch's polls.
    assert source.asked == asked_at_start
    # The clock has synchronised, but until the refresh its readings are flagged.
    assert all(s.synced is False and s.wall == source.now for s in first)
    assert clock.refresh() is True
    assert stamp(clock).synced is True
    assert source.asked == asked_at_start + 1
    assert (clock.boot_id, clock.monotonic()) == (source.boot_id, source.mono)


def test_watched_clock_polls_faster_while_unsynchronised() -> None:
    source = SteppableClock(synced=False)
    clock = WatchedClock(source)
    assert clock.poll_s == POLL_UNSYNCED_S
    source.sync(IN_2022 + 86400)
    clock.refresh()
    assert clock.poll_s == POLL_SYNCED_S
    # An idle agent: fewer than one wake-up a second even before NTP is reached.
    assert POLL_SYNCED_S > POLL_UNSYNCED_S >= 1.0


def test_the_daemon_polls_a_control_file_fast_and_the_kernel_slowly(tmp_path: Path) -> None:
    control = watched(ControlFileClock(tmp_path / "clock.json"))
    assert control.poll_s == POLL_CONTROL_FILE_S
    system = watched(SystemClock())
    assert system.poll_s == POLL_UNSYNCED_S  # this VM's kernel is not synchronised
