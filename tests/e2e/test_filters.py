"""Filters, derived quantities and on_change + heartbeat publishing, end to end: the real
agent (simulated BME280) against a real mosquitto."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, Received

pytestmark = pytest.mark.e2e

#: Constant simulated values: nothing changes, so only the heartbeat publishes.
AIR = """\
  air:
    driver: bme280
    interval: 100ms
    simulation: {{temperature: 25.0, humidity: 50.0, pressure: 1000.0}}
    filters:
      temperature:
        - offset: -2.0
    derived: [vpd]
    publish:
      on_change: {{temperature: 0.5, humidity: 2, pressure: 1, vpd: 0.1}}
      heartbeat: {heartbeat}
  pi:
    driver: system
    interval: {pi_interval}
"""


def ts(m: Received) -> float:
    return datetime.fromisoformat(m.json()["ts"].replace("Z", "+00:00")).timestamp()


def test_on_change_and_heartbeat_publish_with_contiguous_seq(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    path = tmp_path / "c.yaml"
    sensors = AIR.format(heartbeat="1s", pi_interval="1s")
    write_config(path, port=broker.port, device_id=device_id, sensors=sensors)
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(path)
        readings = c.topic(f"{base}/sensor/air", count=4, timeout=15)
        info = c.topic(f"{base}/info")[0].json()
        agent.stop()
    assert "Traceback" not in agent.log()
    # Sampled every 100 ms, published only by the heartbeat: seq counts publications.
    seqs = [int(m.json()["seq"]) for m in readings]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    gaps = [b - a for a, b in zip(map(ts, readings), map(ts, readings[1:]), strict=False)]
    # Heartbeat 1 s, not every 100 ms sample (each stamp may wake late on a busy machine).
    assert all(gap >= 0.5 for gap in gaps), gaps
    for m in readings:
        values = m.json()["values"]
        assert set(values) == {"temperature", "humidity", "pressure", "vpd"}
        # offset -2 °C; the humidity keeps the vapour pressure: 50 % at 25 °C -> 56.38 %
        assert abs(values["temperature"] - 23.0) <= 0.02
        assert abs(values["humidity"] - 56.38) <= 0.05
        assert abs(values["vpd"] - 1.2225) <= 0.005
    assert info["units"]["vpd"] == "kPa"
    assert info["sensors"]["air"]["quantities"] == ["temperature", "humidity", "pressure", "vpd"]


def test_reload_keeps_the_filter_state_of_an_unchanged_sensor(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    path = tmp_path / "c.yaml"
    write_config(
        path,
        port=broker.port,
        device_id=device_id,
        sensors=AIR.format(heartbeat="5s", pi_interval="1s"),
    )
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(path)
        first = c.topic(f"{base}/sensor/air")[0]
        # Change only the other sensor, and reload.
        write_config(
            path,
            port=broker.port,
            device_id=device_id,
            sensors=AIR.format(heartbeat="5s", pi_interval="500ms"),
        )
        agent.signal(signal.SIGHUP)
        c.wait_for(
            lambda m: m.topic == f"{base}/event" and m.json().get("kind") == "config_reloaded"
        )
        reloaded_at = time.time()
        second = c.topic(f"{base}/sensor/air", count=2, timeout=10)[1]
        agent.stop()
    assert "Traceback" not in agent.log()
    assert reloaded_at - ts(first) < 3.5, "the reload came too late to show anything"
    # A fresh chain would have published its first sample right after the reload; the
    # kept one waits for the heartbeat, 5 s after the first reading (less the lateness
    # of either stamp on a busy machine).
    assert ts(second) - ts(first) >= 4.5
    assert second.json()["seq"] == first.json()["seq"] + 1
