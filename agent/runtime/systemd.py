"""Talking to systemd: readiness, status, watchdog, reload and stop notifications.

:class:`Notifier` is the agent's side of ``sd_notify(3)`` for a ``Type=notify`` unit
(``deploy/edge-agent.service``):

- ``READY=1`` once the config is loaded and the hardware is set up (not when the broker
  answers: a broker that is down must not fail the start, store-and-forward covers it);
- ``STATUS=`` kept current (what ``systemctl status edge-agent`` shows), sent only when the
  text changes;
- ``WATCHDOG=1`` from the event loop, only while the agent is healthy, every half
  ``WATCHDOG_USEC``; a hung loop stops the pings and systemd kills and restarts the agent;
- ``RELOADING=1`` ... ``READY=1`` around a reload (SIGHUP), ``STOPPING=1`` on stop.

It sends the datagram itself (the protocol is one ``AF_UNIX`` ``SOCK_DGRAM`` datagram of
``KEY=value`` lines), with no library and nothing to compile: a ``Type=notify`` unit whose
process never says ``READY=1`` would be killed after ``TimeoutStartSec``, so the agent must
not depend on an optional package for it. Without ``$NOTIFY_SOCKET`` (not started by
systemd, or a unit type that does not listen) every method is a no-op. A failed send is
logged once and never raised: notifications must not take the agent down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

#: Sends one notification (``KEY=value`` lines); True when it was sent.
Sender = Callable[[str], bool]


class Notifier:
    """``sd_notify`` for the agent; a no-op outside a ``Type=notify`` systemd unit.

    Args:
        environ: where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
            (default ``os.environ``), read once, here.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = _watchdog_usec(env)
        self._last_status: str | None = None
        self._failed = False
        self._send: Sender | None = None
        if self.socket_path is not None:
            self._send = _socket_sender(self.socket_path)

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to."""
        return self._send is not None

    # -- the messages ----------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with ``STATUS=``): the start-up, or a reload, is complete."""
        return self._notify("READY=1", status=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``, only when it differs from the last status sent."""
        if text == self._last_status:
            return False
        return self._notify(status=text)

    def reloading(self, status: str | None = "reloading the configuration") -> bool:
        """``RELOADING=1`` (plus ``MONOTONIC_USEC``, which systemd >= 253 requires): a
        reload has begun; follow with :meth:`ready` when it is done, applied or not."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._notify("RELOADING=1", f"MONOTONIC_USEC={usec}", status=status)

    def stopping(self, status: str | None = "stopping") -> bool:
        """``STOPPING=1``: the agent is shutting down."""
        return self._notify("STOPPING=1", status=status)

    def ping(self) -> bool:
        """``WATCHDOG=1``; call it only while the agent is healthy."""
        if self._watchdog_usec is None:
            return False
        return self._notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`ping` calls (half of ``WATCHDOG_USEC``), or None when
        systemd watches no one, or someone else (``WATCHDOG_PID`` is not ours)."""
        if self._send is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    async def run_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping every :meth:`watchdog_interval` while ``healthy()`` says so; returns at once
        when there is no watchdog. Run it as a task on the agent's event loop: a loop that
        hangs stops the pings, which is the point."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            if healthy():
                self.ping()
            else:
                log.debug("unhealthy: not pinging the systemd watchdog")
            await asyncio.sleep(interval)

    # -- sending ---------------------------------------------------------------------
    def _notify(self, *lines: str, status: str | None = None) -> bool:
        if self._send is None:
            return False
        message = list(lines)
        if status is not None:
            message.append("STATUS=" + " ".join(status.splitlines()))
        state = "\n".join(message)
        try:
            sent = self._send(state)
        except OSError as e:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.socket_path, e)
                self._failed = True
            return False
        if sent and status is not None:
            self._last_status = status
        return sent


def status_line(
    *,
    connected: bool,
    host: str,
    port: int,
    sensors_ok: int,
    sensors_failed: Iterable[str] = (),
    queue_depth: int = 0,
) -> str:
    """The one-line ``STATUS=``, e.g. ``connected to broker:1883; sensors: 2 ok, 1 failed
    (shed); queue: 0``."""
    failed = sorted(sensors_failed)
    link = f"connected to {host}:{port}" if connected else f"reconnecting to {host}:{port}"
    sensors = f"sensors: {sensors_ok} ok"
    if failed:
        sensors += f", {len(failed)} failed ({', '.join(failed)})"
    return f"{link}; {sensors}; queue: {queue_depth}"


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for this process (``WATCHDOG_PID``, if set, is
    ours); None otherwise. ``sd_watchdog_enabled(3)`` without the library."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        usec = int(raw)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec if usec > 0 else None


def _socket_sender(path: str) -> Sender:
    """Send to the socket at ``path`` (``@name``: the abstract namespace), like
    ``sd_notify(3)``."""
    address = "\0" + path[1:] if path.startswith("@") else path

    def send(state: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            # Never block the event loop: a receiver that does not read (not PID 1) fills
            # its queue after net.unix.max_dgram_qlen datagrams; then this raises.
            s.send(state.encode(), socket.MSG_DONTWAIT)
        return True

    return send
