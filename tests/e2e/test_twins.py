"""Two agents with one device_id (a cloned SD card), and a giant packet from the broker,
against a real mosquitto (issue 20, rows 6 and 11)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.demo.broker import PrivateBroker, free_port
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector

pytestmark = pytest.mark.e2e


def healthz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    return body


def twin(tmp_path: Path, name: str, port: int, device_id: str, protocol: str) -> tuple[Path, int]:
    health = free_port()
    directory = tmp_path / name
    directory.mkdir()
    config = write_config(
        directory / "c.yaml",
        port=port,
        device_id=device_id,
        protocol=protocol,
        extra=f'health:\n  listen: "127.0.0.1:{health}"\n',
    )
    return config, health


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_agents_with_one_device_id_stop_fighting_and_say_why(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    protocol: str,
) -> None:
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/status") as c:
        first_config, first_health = twin(tmp_path, "a", broker.port, device_id, protocol)
        second_config, second_health = twin(tmp_path, "b", broker.port, device_id, protocol)
        first = agents(first_config)
        c.wait_for(lambda m: m.payload == b"online")
        time.sleep(1)
        second = agents(second_config)
        deadline = time.monotonic() + 30
        while not any("session_taken_over" in a.log() for a in (first, second)):
            assert time.monotonic() < deadline, first.log() + second.log()
            time.sleep(0.2)
        settled = len(c.messages)
        time.sleep(6)
        flips = len(c.messages) - settled
    assert flips <= 1, f"still flapping: {flips} status messages in 6 s"
    (loser, health) = (
        (first, first_health) if "session_taken_over" in first.log() else (second, second_health)
    )
    lines = [x for x in loser.log().splitlines() if "session_taken_over" in x]
    assert len(lines) == 1, lines
    assert "cloned SD card" in lines[0] and f"edge-agent-{device_id}" in lines[0]
    body = healthz(health)
    assert body["session_taken_over"] is True
    assert any(r.startswith("session taken over") for r in body["reasons"])
    for agent in (first, second):
        assert agent.process is not None and agent.process.poll() is None


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_giant_packet_from_the_broker_costs_no_memory(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    protocol: str,
) -> None:
    base = f"edge/{device_id}"
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        protocol=protocol,
        extra="outputs:\n  pump: {driver: relay, pin: 17}\n",
    )
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        c.topic(f"{base}/output/pump/state")
        time.sleep(0.5)
        before = rss_mb(agent.pid)
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        client.connect("127.0.0.1", broker.port, 30)
        client.loop_start()
        try:
            for _ in range(3):
                client.publish(f"{base}/output/pump/set", b"x" * (64 * 1024 * 1024), qos=1)
            info = client.publish(f"{base}/output/pump/set", b'{"state":"on","id":"probe"}', qos=1)
            info.wait_for_publish(30)
            c.wait_for(lambda m: m.topic == f"{base}/reply" and b"probe" in m.payload, timeout=30)
        finally:
            client.disconnect()
            client.loop_stop()
        after = rss_mb(agent.pid)
        replies = [m.json() for m in c.on(f"{base}/reply")]
    assert after - before < 30, f"RSS {before:.0f} -> {after:.0f} MB"
    giant = [r for r in replies if r.get("error") == "bad_payload"]
    # MQTT 5: the broker honours our Maximum Packet Size and never sends them;
    # 3.1.1: they arrive, cut short, and are refused.
    assert len(giant) == (0 if protocol == "5" else 3), replies
    assert agent.process is not None and agent.process.poll() is None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
