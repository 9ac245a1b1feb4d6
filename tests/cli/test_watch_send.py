"""``edge-agent watch`` and ``edge-agent send`` against a real mosquitto and the real agent."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.commands.send import build_command, command_payload
from agent.demo.broker import PrivateBroker
from agent.mqtt.payloads import parse_iso_ts
from tests.support.configs import write_config
from tests.support.mqtt import ROOT, AgentProcess, Collector, agent_command, run_cli

pytestmark = pytest.mark.e2e

OUTPUTS = """\
outputs:
  pump:
    driver: relay
    pin: 17
"""


def agent_with_pump(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    *,
    protocol: str = "5",
) -> tuple[Path, Collector]:
    """The agent with one relay, and a collector that has seen it ready for commands."""
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="500ms",
        extra=OUTPUTS,
        protocol=protocol,
    )
    collector = Collector(broker.port, f"edge/{device_id}/#")
    agents(config)
    collector.topic(f"edge/{device_id}/output/pump/state")
    return config, collector


@pytest.fixture
def pump(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> Iterator[tuple[Path, Collector]]:
    config, collector = agent_with_pump(tmp_path, broker, device_id, agents)
    yield config, collector
    collector.close()


def by_host(broker: PrivateBroker) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port)]


# -- the command, as built ----------------------------------------------------------------
def test_build_command_is_the_contract_json() -> None:
    ts = parse_iso_ts("2026-11-23T04:11:27.123Z")
    assert build_command("on", command_id="c-1", ts=ts) == {
        "state": "on",
        "id": "c-1",
        "ts": "2026-11-23T04:11:27.123Z",
    }
    command = build_command("toggle", command_id="c-2", ts=ts, duration=2.5, level=40)
    assert command["duration"] == 2.5 and command["level"] == 40
    assert json.loads(command_payload(command)) == command
    assert b" " not in command_payload(command)


# -- send ---------------------------------------------------------------------------------
def test_send_switches_and_prints_the_ok_reply(
    pump: tuple[Path, Collector], broker: PrivateBroker, device_id: str
) -> None:
    _, collector = pump
    base = f"edge/{device_id}"
    result = run_cli("send", *by_host(broker), "--device", device_id, "pump", "on")
    assert result.returncode == 0, result.stdout + result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is True and reply["state"] == "on" and reply["output"] == "pump"
    assert reply["id"].startswith("send-")
    state = collector.wait_for(
        lambda m: m.topic == f"{base}/output/pump/state" and m.json()["state"] == "on"
    )
    assert state[0].json()["reason"] == "command"
    # MQTT 5: the reply came on our response topic too, and on <base>/reply
    on_reply = collector.wait_for(lambda m: m.topic == f"{base}/reply")
    assert on_reply[0].json()["id"] == reply["id"]
    private = collector.wait_for(lambda m: m.topic.startswith(f"{base}/reply/edge-agent-send-"))
    assert private[0].json()["id"] == reply["id"]


def test_send_a_pulse_from_the_config(pump: tuple[Path, Collector], device_id: str) -> None:
    config, collector = pump
    result = run_cli("send", "-c", str(config), "pump", "on", "--duration", "1")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is True and reply["until"] is not None
    collector.wait_for(
        lambda m: (
            m.topic == f"edge/{device_id}/output/pump/state" and m.json()["reason"] == "pulse_end"
        )
    )


def test_send_an_error_reply_exits_1(
    pump: tuple[Path, Collector], broker: PrivateBroker, device_id: str
) -> None:
    result = run_cli("send", *by_host(broker), "--device", device_id, "nosuch", "on")
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and reply["error"] == "unknown_output"
    bad = run_cli("send", *by_host(broker), "--device", device_id, "pump", "sideways")
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "bad_payload"


def test_send_under_mqtt_3_1_1_matches_the_reply_by_id(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    config, collector = agent_with_pump(tmp_path, broker, device_id, agents, protocol="3.1.1")
    try:
        result = run_cli("send", "-c", str(config), "pump", "toggle")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "on"
        time.sleep(0.3)
        assert not [m for m in collector.messages if m.topic.startswith(f"edge/{device_id}/reply/")]
    finally:
        collector.close()


def test_send_without_an_agent_times_out(broker: PrivateBroker) -> None:
    started = time.monotonic()
    result = run_cli("send", *by_host(broker), "--device", "nobody", "pump", "on", "--timeout", "1")
    assert result.returncode == 75
    assert "no reply from edge/nobody" in result.stderr
    assert time.monotonic() - started < 10
    assert result.stdout == ""


def test_send_to_no_broker_and_without_a_target(tmp_path: Path, broker: PrivateBroker) -> None:
    port = str(broker.port)
    broker.stop()
    unreachable = run_cli("send", "--host", "127.0.0.1", "--port", port, "--device", "x", "a", "on")
    assert unreachable.returncode == 75
    assert f"cannot reach the broker at 127.0.0.1:{port}" in unreachable.stderr
    no_device = run_cli("send", "--host", "127.0.0.1", "a", "on")
    assert no_device.returncode == 1 and "--device" in no_device.stderr
    missing = tmp_path / "none.yaml"
    no_config = run_cli("send", "a", "on", env={"EDGE_AGENT_CONFIG": str(missing)})
    assert no_config.returncode == 1
    assert f"no config at {missing}" in no_config.stderr and "--host" in no_config.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus: 1\n")
    assert run_cli("send", "-c", str(bad), "a", "on").returncode == 78


# -- watch --------------------------------------------------------------------------------
class Watch:
    """``edge-agent watch`` in a subprocess, its stdout a pipe (so: one line per message)."""

    def __init__(self, *args: str, argv: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            argv if argv is not None else agent_command("watch", *args),
            cwd=ROOT,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line in {timeout} s; saw {seen[-10:]}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        finally:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


def test_watch_shows_what_the_device_publishes_and_stops_on_ctrl_c(
    pump: tuple[Path, Collector], broker: PrivateBroker, device_id: str
) -> None:
    base = f"edge/{device_id}"
    watch = Watch(*by_host(broker), device_id)
    try:
        assert watch.wait_for(lambda line: line.startswith("edge-agent watch - "))
        assert watch.wait_for(lambda line: line == f"{base}/status online  (retained)")
        reading = watch.wait_for(lambda line: line.startswith(f"{base}/sensor/pi "))
        assert "soc_temperature=" in reading and " #" in reading  # summarized: #seq values
        sent = run_cli("send", *by_host(broker), "--device", device_id, "pump", "on")
        assert sent.returncode == 0, sent.stderr
        state = watch.wait_for(lambda line: line.startswith(f"{base}/output/pump/state "))
        assert '"state":"on"' in state
    finally:
        code = watch.interrupt()
    assert code == 0


def test_watch_every_device_with_host_and_one_device_from_the_config(
    pump: tuple[Path, Collector], broker: PrivateBroker, device_id: str
) -> None:
    config, _ = pump
    everyone = Watch(*by_host(broker))
    mine = Watch("-c", str(config))
    try:
        everyone.wait_for(lambda line: line.startswith("edge-agent watch - edge/+/# on "))
        everyone.wait_for(lambda line: line.startswith(f"edge/{device_id}/status "))
        mine.wait_for(lambda line: line.startswith(f"edge-agent watch - edge/{device_id}/# on "))
        mine.wait_for(lambda line: line.startswith(f"edge/{device_id}/sensor/pi "))
    finally:
        assert everyone.interrupt() == 0
        assert mine.interrupt() == 0


def test_watch_an_unreachable_broker(broker: PrivateBroker) -> None:
    port = str(broker.port)
    broker.stop()
    result = run_cli("watch", "--host", "127.0.0.1", "--port", port, timeout=15)
    assert result.returncode == 75
    assert "cannot reach the broker" in result.stderr


# -- the demo suggests them ---------------------------------------------------------------
def test_every_command_the_demo_suggests_runs_here() -> None:
    demo = subprocess.Popen(
        agent_command("demo"),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        top = [demo.stdout.readline().rstrip("\n") for _ in range(3)]
        assert top[0].startswith("edge-agent demo - broker 127.0.0.1:"), top
        assert top[1] == "From another terminal:"
        screen = top + [demo.stdout.readline().rstrip("\n") for _ in range(2)]
        commands = {
            label: command
            for label, command in (
                line.strip().split(":", 1) for line in screen[2:] if line.startswith("  ")
            )
        }
        assert set(commands) >= {"watch it", "switch fan"}, screen
        for command in commands.values():
            assert "mosquitto_" not in command
        # Ctrl-C once it shows the device: a fixed timer could fire before it has
        # connected on a busy machine.
        watch = Watch(argv=shlex.split(commands["watch it"]))
        try:
            watch.wait_for(lambda line: line.startswith("edge/demo-pi/status online"), 30)
        finally:
            assert watch.interrupt() == 0
        send = subprocess.run(
            commands["switch fan"].strip(),
            shell=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert send.returncode == 0, send.stderr
        assert json.loads(send.stdout)["ok"] is True
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert demo.wait(20) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(5)
        if demo.stdout is not None:
            demo.stdout.close()
