"""The pieces every measure uses: processes, /proc counters, a watching MQTT client, stats.

Every time here is ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the
machine), so a time taken in the bench and one taken in a child compare directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
#: Scratch space (git-ignored): configs, state dirs, broker dirs.
WORK = BENCH / "_work"
#: The project's venv interpreter: runs the agent and the floor scripts.
PYTHON = sys.executable
_TICK = os.sysconf("SC_CLK_TCK")


#: Where child processes log; None: :func:`log_dir` chooses.
LOGS: Path | None = None


def log_dir() -> Path:
    """Where child processes log: tmpfs when there is one, so that logging never shows in
    a process's ``write_bytes`` (B7 measures the agent's own disk writes)."""
    if LOGS is not None:
        LOGS.mkdir(parents=True, exist_ok=True)
        return LOGS
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else WORK
    path = base / f"edge-bench-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- /proc -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """One look at a process in /proc."""

    t: float
    cpu_s: float  # utime + stime, all threads
    rss_kb: int
    wakeups: int  # voluntary context switches summed over live threads
    write_bytes: int
    threads: dict[int, int]  # tid -> voluntary context switches


def proc_sample(pid: int) -> ProcSample:
    """CPU time, RSS, voluntary context switches and bytes written of ``pid``."""
    t = time.monotonic()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICK
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    write_bytes = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                write_bytes = int(line.split()[1])
    threads: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    threads[int(tid)] = int(line.split()[1])
    return ProcSample(t, cpu_s, rss_kb, sum(threads.values()), write_bytes, threads)


# -- CPU limits ------------------------------------------------------------------------

#: The cgroup v1 ``cpu`` controller (ENV-NOTES, "Time and CPU limits").
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000


class CpuLimit:
    """A cgroup v1 ``cpu`` group of its own that caps its processes at ``percent`` % of
    one core (CFS quota per 100 ms period): roughly a Pi Zero 2 at 10 %.

    A process joins before it runs anything (:meth:`wrap`: ``sh`` writes its own pid to
    ``cgroup.procs`` and ``exec``s the command), so its imports run limited too.
    :meth:`stat` shows that the limit bit (``nr_throttled``).
    """

    def __init__(self, percent: float, name: str) -> None:
        self.percent = percent
        self.path = CPU_CGROUPS / f"edge-bench-{os.getpid()}-{name}-{time.monotonic_ns()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_US}\n")
        quota = round(CFS_PERIOD_US * percent / 100)
        (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")

    @staticmethod
    def unavailable() -> str | None:
        """Why no limit can be set here, or None."""
        if not (CPU_CGROUPS / "cpu.cfs_quota_us").exists():
            return f"n/a: no cgroup v1 cpu controller at {CPU_CGROUPS}"
        if not os.access(CPU_CGROUPS, os.W_OK):
            return f"n/a: {CPU_CGROUPS} is not writable (needs root)"
        return None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]

    def stat(self) -> dict[str, int]:
        """``cpu.stat``: nr_periods, nr_throttled, throttled_time (ns)."""
        out: dict[str, int] = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
        return out

    def close(self) -> None:
        """Remove the group (its processes have exited)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


# -- processes -------------------------------------------------------------------------


class Proc:
    """A child process whose output goes to a log file (or a pipe)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        pipe: bool = False,
        limit: CpuLimit | None = None,
    ) -> None:
        self.argv = list(argv) if limit is None else limit.wrap(argv)
        self.name = name
        self.log_path = log_dir() / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Bytecode caches as any installed program has them (this machine's environment
        # sets PYTHONDONTWRITEBYTECODE, which would make ours compile itself at every start).
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.t_start = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env={**environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else self._log,
            stderr=self._log,
            text=pipe or None,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sample(self) -> ProcSample:
        return proc_sample(self.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return code

    def __enter__(self) -> Proc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- MQTT ------------------------------------------------------------------------------

Handler = Callable[[str, bytes, bool, float], None]


def nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """``on_socket_open``: TCP_NODELAY, as the agent and every floor script set it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Watcher:
    """A paho client in the bench: subscribes, hands every message to ``handler`` with its
    arrival time, and may publish (commands). TCP_NODELAY like everyone else.

    ``handler(topic, payload, retained, t_arrival)`` runs on paho's network thread.
    """

    def __init__(self, port: int, topics: Sequence[str], handler: Handler, *, qos: int = 0):
        self._handler = handler
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_socket_open = nodelay
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        subs = [(topic, qos) for topic in topics]
        self.client.on_connect = lambda c, *a: c.subscribe(subs)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("the bench's MQTT client did not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._handler(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic())

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FirstMessage:
    """Waits for the first (non-retained unless ``retained``) message equal to ``payload``
    on ``topic``; its arrival time."""

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.at: float | None = None
        self._event = threading.Event()

    def __call__(self, topic: str, payload: bytes, retained: bool, t: float) -> None:
        if topic == self.topic and payload == self.payload and self.at is None:
            self.at = t
            self._event.set()

    def wait(self, timeout: float) -> float:
        if not self._event.wait(timeout):
            raise TimeoutError(f"no {self.payload!r} on {self.topic} within {timeout:g} s")
        assert self.at is not None
        return self.at


# -- numbers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Series:
    """One contender's results for one row: a value per trial."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (a short spin at the end)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left - 0.0005 if left > 0.001 else 0)


def scratch(prefix: str) -> Path:
    """A fresh directory under :data:`WORK`."""
    WORK.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=WORK))
