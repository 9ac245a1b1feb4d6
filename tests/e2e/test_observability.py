"""Home Assistant discovery against a real broker, /healthz, /metrics and
``edge-agent status`` against the real agent process."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.demo.broker import PrivateBroker, free_port
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, retained, run_cli

pytestmark = pytest.mark.e2e

DEVICE = """\
outputs:
  pump: {driver: relay, pin: 17}
inputs:
  door: {driver: gpio, pin: 27}
homeassistant:
  discovery: true
  prefix: ha-{suffix}
"""


def discovery_config(tmp_path: Path, port: int, device_id: str, extra: str = "") -> Path:
    return write_config(
        tmp_path / "c.yaml",
        port=port,
        device_id=device_id,
        interval="200ms",
        extra=DEVICE.replace("{suffix}", device_id) + extra,
    )


def test_discovery_is_retained_and_announced_again_after_restart_and_birth(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    prefix = f"ha-{device_id}"
    topic = f"{prefix}/device/edge_agent_{device_id}/config"
    config = discovery_config(tmp_path, broker.port, device_id)
    with Collector(broker.port, f"{prefix}/#", persistent_id=f"ha-{device_id}") as c:
        agents(config)
        first = c.topic(topic)[0]
        body = first.json()
        assert set(body["cmps"]) >= {"pi_soc_temperature", "output_pump", "input_door"}
        assert body["cmps"]["output_pump"]["command_topic"] == f"edge/{device_id}/output/pump/set"
        # Home Assistant restarts and says so: the device is announced again.
        before = len(c.on(topic))
        c.client.publish(f"{prefix}/status", "online", qos=1).wait_for_publish(5)
        c.topic(topic, count=before + 1)
        # The broker restarts: announced again after the reconnect.
        before = len(c.on(topic))
        broker.restart()
        c.topic(topic, count=before + 1, timeout=20)
    config_msg = retained(broker.port, topic)
    assert config_msg is not None and config_msg.retain
    assert config_msg.json() == body


def test_entities_removed_by_a_reload_are_removed_from_home_assistant(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    prefix = f"ha-{device_id}"
    topic = f"{prefix}/device/edge_agent_{device_id}/config"
    config = discovery_config(tmp_path, broker.port, device_id)
    with Collector(broker.port, topic) as c:
        agent = agents(config)
        c.topic(topic)
        text = config.read_text().replace("inputs:\n  door: {driver: gpio, pin: 27}\n", "")
        config.write_text(text)
        agent.signal(signal.SIGHUP)
        removal = c.wait_for(lambda m: m.json()["cmps"].get("input_door") == {"p": "binary_sensor"})
        assert "output_pump" in removal[0].json()["cmps"]
        # Discovery turned off: the whole device goes, with an empty retained config.
        config.write_text(text.replace("discovery: true", "discovery: false"))
        agent.signal(signal.SIGHUP)
        c.wait_for(lambda m: m.payload == b"")
        agent.stop()
    assert retained(broker.port, topic, timeout=1) is None


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_status(url: str, status: int, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            code, body = get(url)
        except OSError:
            code, body = 0, b""
        if code == status:
            return json.loads(body) if body.startswith(b"{") else body
        assert time.monotonic() < deadline, (code, body)
        time.sleep(0.2)


def test_healthz_turns_503_beyond_max_offline_and_back(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="200ms",
        extra=f'health:\n  listen: "127.0.0.1:{port}"\n  max_offline: 1s\n',
    )
    agents(config)
    url = f"http://127.0.0.1:{port}/healthz"
    healthy = wait_status(url, 200)
    assert healthy["ok"] is True and healthy["connected"] is True
    assert healthy["sensors"]["pi"]["ok"] is True
    broker.stop()
    sick = wait_status(url, 503)
    assert sick["ok"] is False and sick["connected"] is False
    assert any("unreachable" in reason for reason in sick["reasons"])
    assert sick["queue_depth"] > 0  # buffering meanwhile
    broker.start()
    again = wait_status(url, 200, timeout=20)
    assert again["reasons"] == []
    assert get(f"http://127.0.0.1:{port}/nope")[0] == 404


def test_metrics_parse_and_match_what_the_broker_received(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    port = free_port()
    base = f"edge/{device_id}"
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="100ms",
        extra=(
            f'outputs:\n  pump: {{driver: relay, pin: 17}}\nhealth:\n  listen: "127.0.0.1:{port}"\n'
        ),
    )
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        c.topic(f"{base}/sensor/pi", count=5)
        c.client.publish(f"{base}/output/pump/set", "on", qos=1).wait_for_publish(5)
        c.client.publish(f"{base}/output/nope/set", "on", qos=1).wait_for_publish(5)
        c.topic(f"{base}/reply", count=2)
        agent.signal(signal.SIGSTOP)  # freeze the counters, then compare
        try:
            time.sleep(0.5)
            received = len(c.on(f"{base}/sensor/pi"))
            agent.signal(signal.SIGCONT)
            code, text = get(f"http://127.0.0.1:{port}/metrics")
        finally:
            agent.signal(signal.SIGCONT)
        assert code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }
        readings = samples[("edge_agent_readings_total", (("sensor", "pi"),))]
        # Scraped after SIGCONT: no fewer than the broker had, and every one it counts
        # arrives (however long the scrape took, the readings since are counted too).
        assert received <= readings
        c.wait_for(lambda m: m.topic == f"{base}/sensor/pi", count=int(readings))
    assert samples[("edge_agent_mqtt_connected", ())] == 1
    assert samples[("edge_agent_commands_total", (("output", "pump"), ("result", "ok")))] == 1
    assert (
        # An output that is not configured is counted without its name (topics are anyone's).
        samples[("edge_agent_commands_total", (("output", ""), ("result", "unknown_output")))] == 1
    )
    assert samples[("edge_agent_command_latency_seconds_count", ())] == 2
    assert samples[("edge_agent_output_on", (("output", "pump"),))] == 1
    assert samples[("edge_agent_process_resident_memory_bytes", ())] > 1e6
    assert samples[("edge_agent_acked_total", ())] >= received


def test_status_command_from_healthz_and_from_the_broker(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    port = free_port()
    with_http = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="200ms",
        extra=(
            f'outputs:\n  pump: {{driver: relay, pin: 17}}\nhealth:\n  listen: "127.0.0.1:{port}"\n'
        ),
    )
    agents(with_http)
    wait_status(f"http://127.0.0.1:{port}/healthz", 200)
    result = run_cli("status", "-c", str(with_http))
    assert result.returncode == 0, result.stderr
    assert f"edge-agent {device_id}" in result.stdout and "online" in result.stdout
    assert "health: ok" in result.stdout
    assert "soc_temperature=" in result.stdout and "pump" in result.stdout
    assert "/healthz" in result.stdout
    # The same device seen from its topics (no health.listen in this copy of the config).
    from_broker = tmp_path / "b.yaml"
    from_broker.write_text(with_http.read_text().split("health:")[0])
    result = run_cli("status", "-c", str(from_broker))
    assert result.returncode == 0, result.stderr
    assert "online" in result.stdout and "soc_temperature=" in result.stdout
    assert "retained topics" in result.stdout
    broker.stop()
    result = run_cli("status", "-c", str(from_broker))
    assert result.returncode == 1 and "cannot reach" in result.stderr
