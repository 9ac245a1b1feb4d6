"""deploy/ in a real, booted systemd: a Debian 12 container with systemd-nspawn.

A Debian bookworm root file system is made once with debootstrap (~60-75 s, ~300 MB, from
Debian's packages) and cached outside the repository, in ``$EDGE_AGENT_TEST_CACHE``
(default ``/var/cache/edge-agent-tests``), under a name that changes with the package
list; the cache is never written to after it is made: each run boots it with
``--volatile=overlay`` (a tmpfs takes every write). The container has no network but its
own loopback (``--private-network``): mosquitto from Debian runs inside, next to the
agent, and the agent is installed by ``deploy/install.sh`` from a wheelhouse built here on
the host, exactly as an offline Pi would be.

The tests run in file order on one container (module scope); each leaves the service
running with the base config, or says what it changed.

Needs root, debootstrap, systemd-nspawn (Debian: systemd-container) and nsenter; skipped
with the reason otherwise. ``make system-deps`` installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.debootstrap import cached_debootstrap

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",  # /bin/kill, for the unit's ExecReload
    "python3",
    "python3-venv",
    "python3-systemd",
    "mosquitto",
    "mosquitto-clients",
]
#: Bump when the post-debootstrap preparation changes: it is part of the cache key.
PREPARATION = 1
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT = "edge-agent.service"
DEVICE = "nspawn-box"
BASE = f"edge/{DEVICE}"
PASSWORD = "nspawn-Secret-4711"  # mosquitto's local-only mode ignores it; it must not leak
BASE_CONFIG = f"""\
device_id: {DEVICE}
simulate: true
mqtt:
  host: localhost
  username: edge
  password: {PASSWORD}
  keepalive: 5
  reconnect: {{min_delay: 0.2, max_delay: 1}}
sensors:
  pi:
    driver: system
    interval: 500ms
  flaky:
    driver: system
    interval: 500ms
    thermal_zone: 1
    simulation: {{fail_rate: 1.0}}
health:
  publish_interval: 5s
"""
#: Test-only unit settings: restart fast, and fail fast instead of hanging at start.
TEST_DROP_IN = "[Service]\nRestartSec=1s\nTimeoutStartSec=30s\nTimeoutStopSec=15s\n"


#: The host's tools, found also where a PATH without sbin would miss them.
TOOLS: dict[str, str] = {}


def _missing_prerequisite() -> str | None:
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    search = f"{os.environ.get('PATH', '')}:{PATH}"
    for tool, package in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ]:
        found = shutil.which(tool, path=search)
        if found is None:
            return f"{tool} is not installed (Debian package {package}; `make system-deps`)"
        TOOLS[tool] = found
    return None


_reason = _missing_prerequisite()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


# -- the cached root file system -------------------------------------------------------
def cached_rootfs() -> Path:
    return cached_debootstrap(
        "bookworm-rootfs",
        include=PACKAGES,
        preparation=PREPARATION,
        hostname="edge-test",
        debootstrap=TOOLS["debootstrap"],
    )


def build_wheelhouse(into: Path, python: str) -> Path:
    """The agent's wheel and its dependencies' for the container's Python: it is offline."""
    src = into / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("agent", "drivers"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = into / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("pi_edge_agent-*.whl")
    machine = platform.machine()
    abi = "cp" + python.replace(".", "")
    subprocess.run(
        [
            *pip,
            "download",
            "--dest",
            str(wheels),
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            abi,
            "--platform",
            f"manylinux_2_17_{machine}",
            "--platform",
            f"manylinux2014_{machine}",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheels


def container_python(rootfs: Path) -> str:
    versions = [
        p.name.removeprefix("python")
        for p in (rootfs / "usr/lib").glob("python3.*")
        if re.fullmatch(r"python3\.\d+", p.name) and (p / "os.py").exists()
    ]
    assert len(versions) == 1, versions
    return versions[0]


# -- the container ------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


class Container:
    """A booted Debian: ``systemd-nspawn -b`` on a volatile overlay of the cached tree."""

    def __init__(self, rootfs: Path, workdir: Path, binds: dict[Path, str]) -> None:
        self.name = f"edge-test-{uuid.uuid4().hex[:8]}"
        self.log_path = workdir / "nspawn.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [
            TOOLS["systemd-nspawn"],
            "--directory",
            str(rootfs),
            "--volatile=overlay",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            f"--machine={self.name}",
            *[f"--bind-ro={host}:{inside}" for host, inside in binds.items()],
            "--boot",
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={"PATH": PATH, "LANG": "C.UTF-8"},
        )
        try:
            self.leader = self._wait_for_leader()
            self._wait_for_boot()
        except BaseException:
            self.stop()
            raise

    def _wait_for_boot(self) -> None:
        # Until PID 1 listens, systemctl says "offline"; then --wait waits for the boot.
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=90
            ).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the container did not boot ({state}): {self.log()}")

    def _wait_for_leader(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log()}")
            # nspawn forks an intermediate child before the container's PID 1; only a
            # child that has become systemd is the leader (under load the intermediate
            # lives long enough to be picked, and nsenter into it then fails).
            for kid in children(self.process.pid):
                try:
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        return kid
                except (FileNotFoundError, ProcessLookupError):
                    continue
            time.sleep(0.05)
        raise RuntimeError(f"no container leader after 30 s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def command(self, *args: str) -> list[str]:
        return [
            TOOLS["nsenter"],
            "--target",
            str(self.leader),
            "--all",
            "--",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "SYSTEMD_COLORS=0",
            "SYSTEMD_PAGER=",
            *args,
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def write(self, path: str, text: str, *, mode: str = "0640", group: str = "root") -> None:
        self.run(
            "sh",
            "-c",
            'cat > "$1.tmp" && chgrp "$2" "$1.tmp" && chmod "$3" "$1.tmp" && mv "$1.tmp" "$1"',
            "sh",
            path,
            group,
            mode,
            input=text,
        )

    def show(self, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", UNIT, *[f"--property={p}" for p in properties])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--unit", UNIT, "--output=json", "--no-pager", *args)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_until(
        self, what: str, predicate: Callable[[], bool], timeout: float = 20, every: float = 0.2
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                status = self.run("systemctl", "status", UNIT, "--lines=30", check=False)
                raise AssertionError(f"not {what} after {timeout} s:\n{status.stdout}")
            time.sleep(every)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@dataclass(frozen=True)
class Message:
    at: float
    retain: bool
    topic: str
    payload: str

    def json(self) -> Any:
        return json.loads(self.payload)


class Tap:
    """``mosquitto_sub`` inside the container, on everything under the base topic."""

    def __init__(self, container: Container) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            container.command(
                "mosquitto_sub", "-h", "localhost", "-q", "1", "-F", "%r %t %p", "-t", f"{BASE}/#"
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            retain, topic, payload = (line.rstrip("\n").split(" ", 2) + ["", ""])[:3]
            with self._cond:
                self.messages.append(Message(time.time(), retain == "1", topic, payload))
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[Message], bool], *, since: float = 0, timeout: float = 15
    ) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m.at >= since and predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{m.topic} {m.payload[:60]}" for m in self.messages[-15:]]
                    raise AssertionError(f"no such message in {timeout} s; last seen: {seen}")
                self._cond.wait(left)

    def topic(self, topic: str, *, since: float = 0, timeout: float = 15) -> Message:
        return self.wait_for(lambda m: m.topic == f"{BASE}/{topic}", since=since, timeout=timeout)

    def close(self) -> None:
        # nsenter forked mosquitto_sub into the container's PID namespace: end it by pid.
        for pid in children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()


@dataclass
class Machine:
    container: Container
    tap: Tap
    install: subprocess.CompletedProcess[str]
    testdir: Path  #: the container's /mnt/test

    def main_pid(self) -> int:
        return int(self.container.show("MainPID")["MainPID"])

    def active(self) -> bool:
        return self.container.show("ActiveState")["ActiveState"] == "active"

    def set_config(self, text: str) -> None:
        self.container.write("/etc/edge-agent/config.yaml", text, group="edge-agent")

    def restart_with_base_config(self) -> None:
        self.set_config(BASE_CONFIG)
        self.container.run("systemctl", "reset-failed", UNIT, check=False)
        self.container.run("systemctl", "restart", UNIT, timeout=60)
        assert self.active()


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """The container, booted, with the agent installed by install.sh and running."""
    workdir = tmp_path_factory.mktemp("nspawn")
    rootfs = cached_rootfs()
    wheels = build_wheelhouse(workdir, container_python(rootfs))
    testdir = workdir / "test"
    testdir.mkdir()
    (testdir / "config.yaml").write_text(BASE_CONFIG)
    container = Container(
        rootfs, workdir, {ROOT: "/mnt/src", wheels: "/mnt/wheels", testdir: "/mnt/test"}
    )
    tap = None
    try:
        container.run("mkdir", "-p", f"/etc/systemd/system/{UNIT}.d")
        container.write(f"/etc/systemd/system/{UNIT}.d/50-test.conf", TEST_DROP_IN, mode="0644")
        tap = Tap(container)
        install = container.run(
            "/mnt/src/deploy/install.sh",
            "--wheels",
            "/mnt/wheels",
            "--config",
            "/mnt/test/config.yaml",
            check=False,
            timeout=300,
        )
        yield Machine(container, tap, install, testdir)
    finally:
        if tap is not None:
            tap.close()
        container.stop()


@pytest.fixture
def m(machine: Machine) -> Iterator[Machine]:
    """The machine with the agent installed; after the test, running the base config
    again (whatever the test left behind), unless the test uninstalled it."""
    if machine.install.returncode != 0:
        pytest.fail(
            f"install.sh exited {machine.install.returncode}:\n"
            f"{machine.install.stdout}{machine.install.stderr}"
        )
    yield machine
    c = machine.container
    if c.run("test", "-x", "/opt/edge-agent/venv/bin/edge-agent", check=False).returncode:
        return
    config = c.run("cat", "/etc/edge-agent/config.yaml", check=False).stdout
    if config != BASE_CONFIG or not machine.active():
        machine.restart_with_base_config()


# -- the tests, in order ------------------------------------------------------------------
def test_install_starts_the_service_after_ready(m: Machine) -> None:
    c = m.container
    assert "edge-agent check" in m.install.stdout and "OK" in m.install.stdout
    assert c.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    props = c.show("Type", "ActiveState", "SubState", "StatusText", "NotifyAccess", "User")
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    # Type=notify: systemd calls it started only when READY=1 came, after the set-up
    messages = [e.get("MESSAGE", "") for e in c.journal()]
    set_up = next(i for i, msg in enumerate(messages) if "started: device" in msg)
    started = next(i for i, msg in enumerate(messages) if msg.startswith("Started edge-agent"))
    assert set_up < started
    # STATUS= is what `systemctl status` shows: kept current by the agent
    c.wait_until(
        "showing the broker in its status",
        lambda: "localhost:1883" in c.show("StatusText")["StatusText"],
        timeout=10,
    )
    # what install.sh set up
    stat = c.run("stat", "-c", "%a %U %G", "/etc/edge-agent/config.yaml").stdout.split()
    assert stat == ["640", "root", "edge-agent"]
    groups = c.run("id", "-nG", "edge-agent").stdout.split()
    assert {"edge-agent", "gpio", "i2c"} <= set(groups)
    assert c.run("stat", "-c", "%a %U", "/var/lib/edge-agent").stdout.split() == [
        "700",
        "edge-agent",
    ]
    # systemd itself on the installed unit, program and all: not a word on stderr
    verify = c.run("systemd-analyze", "verify", UNIT, check=False)
    assert verify.stderr == "" and verify.returncode == 0, verify.stderr
    security = c.run("systemd-analyze", "security", UNIT, "--no-pager").stdout
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert exposure and float(exposure.group(1)) <= 2.0, security


def test_readings_arrive(m: Machine) -> None:
    assert m.tap.wait_for(lambda x: x.topic == f"{BASE}/status" and x.payload == "online")
    info = m.tap.topic("info").json()
    assert info["device_id"] == DEVICE and info["simulated"] is True
    first = m.tap.topic("sensor/pi").json()
    later = m.tap.wait_for(
        lambda x: x.topic == f"{BASE}/sensor/pi" and x.json()["seq"] >= first["seq"] + 2
    ).json()
    assert "soc_temperature" in later["values"]


def test_reload_applies_a_good_config_and_keeps_the_old_on_a_bad_one(m: Machine) -> None:
    c = m.container
    pid = m.main_pid()
    good = BASE_CONFIG.replace(
        "sensors:\n", "sensors:\n  extra:\n    driver: system\n    interval: 500ms\n", 1
    )
    m.set_config(good)
    since = time.time()
    c.run("systemctl", "reload", UNIT)
    m.tap.topic("sensor/extra", since=since)
    # config_sha256 is keyed (it must not be a hash of an inline password): the new info
    # is the one that lists the new sensor.
    info = m.tap.wait_for(
        lambda x: x.topic == f"{BASE}/info" and "extra" in x.json()["sensors"],
        since=since,
    ).json()
    assert "extra" in info["sensors"]
    assert m.main_pid() == pid, "a reload is not a restart"
    c.wait_until(
        "running again after the reload", lambda: c.show("SubState")["SubState"] == "running"
    )

    # A config with a mistake: logged, and the running config stays.
    m.set_config(good + "mqtt_typo: 1\n")
    since = time.time()
    c.run("systemctl", "reload", UNIT)
    c.wait_until(
        "logging the config error",
        lambda: any("mqtt_typo" in e.get("MESSAGE", "") for e in c.journal("--since=-30s")),
        timeout=10,
    )
    m.tap.topic("sensor/extra", since=time.time())  # still the good config's sensors
    assert m.main_pid() == pid
    props = c.show("ActiveState", "SubState", "NRestarts")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")


def test_watchdog_restarts_a_hung_agent(m: Machine) -> None:
    c = m.container
    drop_in = f"/etc/systemd/system/{UNIT}.d/60-watchdog.conf"
    c.write(drop_in, "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n", mode="0644")
    try:
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", UNIT)
        pid, restarts = m.main_pid(), int(c.show("NRestarts")["NRestarts"])
        assert c.show("WatchdogUSec")["WatchdogUSec"] == "3s"
        time.sleep(4.5)  # longer than WatchdogSec: a healthy agent keeps pinging
        assert m.main_pid() == pid and m.active(), "a healthy agent was killed by the watchdog"
        c.run("kill", "-STOP", str(pid))  # hung: the event loop no longer runs
        c.wait_until(
            "restarted by the watchdog",
            lambda: m.main_pid() not in (0, pid) and m.active(),
            timeout=20,
        )
        assert int(c.show("NRestarts")["NRestarts"]) == restarts + 1
        assert any("Watchdog timeout" in e.get("MESSAGE", "") for e in c.journal("--since=-60s"))
    finally:
        c.run("rm", "-f", drop_in)
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", UNIT, check=False)


def test_stop_publishes_offline(m: Machine) -> None:
    c = m.container
    assert m.active()
    since = time.time()
    c.run("systemctl", "stop", UNIT)
    m.tap.wait_for(lambda x: x.topic == f"{BASE}/status" and x.payload == "offline", since=since)
    retained = c.run(
        "mosquitto_sub", "-h", "localhost", "-C", "1", "-W", "5", "-t", f"{BASE}/status"
    )
    assert retained.stdout.strip() == "offline"  # what a controller that looks later sees
    props = c.show("ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    c.run("systemctl", "start", UNIT)
    assert m.active()


def test_a_config_error_exits_78_without_a_restart_loop(m: Machine) -> None:
    c = m.container
    restarts = int(c.show("NRestarts")["NRestarts"])
    m.set_config(BASE_CONFIG.replace("interval: 500ms", "interval: soon", 1))
    failed = c.run("systemctl", "restart", UNIT, check=False)
    assert failed.returncode != 0
    props = c.show("ActiveState", "ExecMainStatus", "Result")
    assert props["ActiveState"] == "failed" and props["ExecMainStatus"] == "78", props
    time.sleep(3)  # RestartSec=1s in the test drop-in: a restart would have happened
    props = c.show("ActiveState", "NRestarts")
    assert props == {"ActiveState": "failed", "NRestarts": str(restarts)}
    messages = [e.get("MESSAGE", "") for e in c.journal("--since=-30s")]
    assert any("config.yaml:" in msg and "sensors.pi.interval" in msg for msg in messages)
    assert not any("Traceback" in msg for msg in messages)


def test_install_again_upgrades_in_place_and_refuses_a_bad_config(m: Machine) -> None:
    c = m.container
    pid = m.main_pid()
    before = c.run("sha256sum", "/etc/edge-agent/config.yaml").stdout
    again = c.run(
        "/mnt/src/deploy/install.sh",
        "--from",
        "/mnt/src",
        "--wheels",
        "/mnt/wheels",
        timeout=300,
    )
    assert "keeping /etc/edge-agent/config.yaml" in again.stdout
    assert "restarting" in again.stdout
    assert c.run("sha256sum", "/etc/edge-agent/config.yaml").stdout == before
    assert m.active() and m.main_pid() != pid
    pid = m.main_pid()
    (m.testdir / "bad.yaml").write_text(BASE_CONFIG + "bogus: true\n")
    bad = c.run(
        "/mnt/src/deploy/install.sh",
        "--wheels",
        "/mnt/wheels",
        "--config",
        "/mnt/test/bad.yaml",
        check=False,
        timeout=300,
    )
    assert bad.returncode == 78, bad.stdout + bad.stderr
    assert "bogus" in bad.stdout + bad.stderr
    assert c.run("sha256sum", "/etc/edge-agent/config.yaml").stdout == before
    assert m.active() and m.main_pid() == pid


def test_journal_has_structured_fields_and_no_secrets(m: Machine) -> None:
    entries = m.container.journal()
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "edge-agent"]
    assert ours
    started = [e for e in ours if "started: device" in e.get("MESSAGE", "")]
    assert started
    assert started[-1]["_TRANSPORT"] == "journal"  # the JournalHandler, not stderr
    assert started[-1]["PRIORITY"] == "6"
    assert started[-1]["LOGGER"] == "agent.runtime.daemon"
    failed = [e for e in ours if e.get("EVENT") == "sensor_failed"]
    assert failed, "no EVENT=sensor_failed entry"
    assert failed[-1]["SENSOR"] == "flaky"
    assert int(failed[-1]["PRIORITY"]) <= 4
    everything = json.dumps(entries)
    assert PASSWORD not in everything


def test_uninstall_keeps_config_and_state_unless_purged(m: Machine) -> None:
    c = m.container
    c.run("/mnt/src/deploy/uninstall.sh")
    assert c.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert c.run("test", "-e", f"/etc/systemd/system/{UNIT}", check=False).returncode == 1
    assert c.run("test", "-e", "/opt/edge-agent", check=False).returncode == 1
    assert c.run("test", "-f", "/etc/edge-agent/config.yaml", check=False).returncode == 0
    assert c.run("test", "-d", "/var/lib/edge-agent", check=False).returncode == 0
    c.run("/mnt/src/deploy/uninstall.sh")  # again: nothing to do, no error
    c.run("/mnt/src/deploy/uninstall.sh", "--purge")
    for path in ("/etc/edge-agent", "/var/lib/edge-agent", f"/etc/systemd/system/{UNIT}.d"):
        assert c.run("test", "-e", path, check=False).returncode == 1, path
    assert c.run("getent", "passwd", "edge-agent", check=False).returncode == 2
