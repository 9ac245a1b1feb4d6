"""Two agents with one device_id (a cloned SD card) against a real mosquitto (issue 20,
row 6)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
