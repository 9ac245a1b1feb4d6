"""The sd_notify side of the agent against a real unix datagram socket (as systemd binds)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.systemd import Notifier, status_line


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, here bound in tmp_path."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already sent, without waiting."""
        self.sock.setblocking(False)
        try:
            out = []
            while True:
                try:
                    out.append(self.sock.recv(4096).decode())
                except BlockingIOError:
                    return out
        finally:
            self.sock.settimeout(2)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield s
    s.sock.close()


def test_ready_sends_ready_with_the_status(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("connected to broker:1883; sensors: 1 ok; queue: 0")
    assert (
        notify_socket.recv() == "READY=1\nSTATUS=connected to broker:1883; sensors: 1 ok; queue: 0"
    )
    assert notifier.ready()
    assert notify_socket.recv() == "READY=1"


def test_status_is_sent_only_when_it_changes(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    assert notifier.status("reconnecting to broker:1883")
    assert not notifier.status("reconnecting to broker:1883")
    assert notifier.status("connected to broker:1883")
    assert not notifier.status("connected to broker:1883")
    assert notify_socket.pending() == [
        "STATUS=reconnecting to broker:1883",
        "STATUS=connected to broker:1883",
    ]
    # ready() with a status counts as the last status sent
    notifier.ready("up")
    assert not notifier.status("up")
    assert notify_socket.pending() == ["READY=1\nSTATUS=up"]


def test_a_multi_line_status_stays_one_field(notify_socket: NotifySocket) -> None:
    Notifier().status("line one\nREADY=1")
    assert notify_socket.recv() == "STATUS=line one READY=1"


def test_reload_and_stop(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify_socket.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
    assert lines[2] == "STATUS=reloading the configuration"
    notifier.ready("reloaded")
    assert notify_socket.recv() == "READY=1\nSTATUS=reloaded"
    notifier.stopping()
    assert notify_socket.recv() == "STOPPING=1\nSTATUS=stopping"


def test_watchdog_interval_is_half_of_watchdog_usec(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Notifier().watchdog_interval() is None
    assert not Notifier().ping()
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_interval() == 15.0
    assert notifier.ping()
    assert notify_socket.recv() == "WATCHDOG=1"


@pytest.mark.parametrize(
    ("usec", "pid"),
    [("30000000", "1"), ("0", None), ("soon", None), ("30000000", "me")],
    ids=["another-process", "zero", "garbage", "garbage-pid"],
)
def test_no_watchdog_unless_it_is_meant_for_us(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    notifier = Notifier()
    assert notifier.watchdog_interval() is None
    assert not notifier.ping()
    assert notify_socket.pending() == []


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not any(
        [
            notifier.ready("x"),
            notifier.status("x"),
            notifier.reloading(),
            notifier.stopping(),
            notifier.ping(),
        ]
    )


def test_environ_is_read_once_at_construction(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": notify_socket.address})
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/elsewhere.sock")
    assert notifier.ready()
    assert notify_socket.recv() == "READY=1"


def test_it_needs_no_systemd_library(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No systemd-python: a Type=notify unit whose process never says READY=1 would be
    # killed at TimeoutStartSec, so nothing here may depend on a library.
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.daemon", None)
    notifier = Notifier()
    assert notifier.ready("up")
    assert notify_socket.recv() == "READY=1\nSTATUS=up"


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    s = NotifySocket(f"@edge-agent-test-{uuid.uuid4().hex}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", s.address)
        assert Notifier().ready("abstract")
        assert s.recv() == "READY=1\nSTATUS=abstract"
    finally:
        s.sock.close()


def test_a_vanished_socket_is_logged_once_and_never_raised(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = Notifier()
    with caplog.at_level(logging.WARNING, logger="agent.runtime.systemd"):
        assert not notifier.ready("x")
        assert not notifier.status("y")
        assert not notifier.stopping()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1
    # a status that failed to go out is not taken as sent
    s = NotifySocket(str(tmp_path / "gone.sock"))
    try:
        assert notifier.status("y")
        assert s.recv() == "STATUS=y"
    finally:
        s.sock.close()


def test_run_watchdog_pings_only_while_healthy(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # a ping every 20 ms
    notifier = Notifier()
    assert notifier.watchdog_interval() == 0.02
    healthy = True
    received: list[str] = []

    async def systemd() -> None:
        # Like PID 1, read all the time: a unix datagram queue holds only
        # net.unix.max_dgram_qlen (often 10) datagrams, then the sender blocks.
        while True:
            received.extend(notify_socket.pending())
            await asyncio.sleep(0.005)

    async def scenario() -> tuple[list[str], list[str]]:
        nonlocal healthy
        reader = asyncio.create_task(systemd())
        task = asyncio.create_task(notifier.run_watchdog(lambda: healthy))
        await asyncio.sleep(0.3)
        healthy = False
        await asyncio.sleep(0.03)  # a ping already under way may still arrive
        while_healthy = list(received)
        received.clear()
        await asyncio.sleep(0.3)
        task.cancel()
        reader.cancel()
        return while_healthy, list(received)

    while_healthy, while_sick = asyncio.run(scenario())
    assert len(while_healthy) >= 5
    assert set(while_healthy) == {"WATCHDOG=1"}
    assert while_sick == []


def test_run_watchdog_returns_at_once_without_a_watchdog(notify_socket: NotifySocket) -> None:
    asyncio.run(asyncio.wait_for(Notifier().run_watchdog(lambda: True), 1))
    assert notify_socket.pending() == []


def test_status_line() -> None:
    assert (
        status_line(connected=True, host="broker", port=1883, sensors_ok=2, queue_depth=0)
        == "connected to broker:1883; sensors: 2 ok; queue: 0"
    )
    assert (
        status_line(
            connected=False,
            host="10.0.0.5",
            port=8883,
            sensors_ok=1,
            sensors_failed=["shed", "air"],
            queue_depth=42,
        )
        == "reconnecting to 10.0.0.5:8883; sensors: 1 ok, 2 failed (air, shed); queue: 42"
    )


def test_the_built_in_sender_never_blocks_on_a_full_queue(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    started = time.monotonic()
    results = [notifier.ping() for _ in range(5000)]  # nobody reads
    assert time.monotonic() - started < 5
    assert results[0] and not results[-1]
    assert notify_socket.recv() == "WATCHDOG=1"
