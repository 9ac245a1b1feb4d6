"""A PWM output end to end: the real agent and mosquitto; level commands, the published
level, and the level it goes back to at shutdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.e2e.test_commands import Commander, reply_to, start_agent
from tests.support.mqtt import AgentProcess, Collector, Received

pytestmark = pytest.mark.e2e

OUTPUTS = """\
outputs:
  lamp:
    driver: pwm
    pin: 18
    frequency: 500
    initial: on
    initial_level: 30
    max_level: 90
"""


def test_pwm_output_follows_level_commands_and_publishes_its_level(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    topic = f"{base}/output/lamp/state"
    commander = Commander(broker.port)
    try:
        with Collector(broker.port, f"{base}/#") as c:
            agent = start_agent(tmp_path, broker.port, device_id, agents, outputs=OUTPUTS)
            boot = c.topic(topic)[0].json()
            assert (boot["state"], boot["level"], boot["reason"]) == ("on", 30.0, "boot")

            def level(value: float) -> Received:
                return c.wait_for(lambda m: m.topic == topic and m.json()["level"] == value)[0]

            commander.send(f"{base}/output/lamp/set", "55%")
            assert level(55.0).json()["reason"] == "command"
            commander.send(
                f"{base}/output/lamp/set", json.dumps({"state": "on", "level": 100, "id": "a"})
            )
            assert level(90.0).json()["state"] == "on"  # clamped to max_level
            assert reply_to(c, base, "a")["level"] == 90.0
            commander.send(f"{base}/output/lamp/set", "off")
            assert level(0.0).json()["state"] == "off"
            commander.send(f"{base}/output/lamp/set", "on")
            assert level(90.0).json()["reason"] == "command"  # the last level
            agent.stop()
            final = c.on(topic)[-1].json()
            assert (final["state"], final["level"], final["reason"]) == ("on", 30.0, "shutdown")
    finally:
        commander.close()
