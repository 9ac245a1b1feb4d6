"""The command path's security (issue #21), end to end: the real agent, a real mosquitto.

One test per row of the issue: no reflection through response topics; no command carried
out twice (across a reload and a restart too); no secret in the log, on the broker or in
``info.config_sha256``; the files the agent makes are private.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from agent.mqtt.payloads import iso_ts
from tests.e2e.test_commands import Commander, ready, reply_to, start_agent, states
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector

pytestmark = pytest.mark.e2e


@pytest.fixture
def commander(broker: PrivateBroker) -> Iterator[Commander]:
    c = Commander(broker.port)
    yield c
    c.close()


def test_a_response_topic_on_another_devices_topics_is_refused_and_not_published(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    spoofed = [
        f"{base}/output/heater/state",  # the red team's: HA would show the heater on
        f"edge/other-{device_id}/status",
        f"homeassistant/switch/{device_id}/config",
    ]
    with Collector(broker.port, "#") as c:
        start_agent(tmp_path, broker.port, device_id, agents)
        ready(c, base)
        for i, topic in enumerate(spoofed):
            commander.send(
                f"{base}/output/pump/set",
                f'{{"state": "on", "id": "r-{i}"}}',
                response_topic=topic,
                correlation=b"x",
            )
            c.wait_for(lambda m: m.topic == f"{base}/reply", count=i + 1)
        # A fine one, as a marker that everything before it has been handled.
        commander.send(f"{base}/output/pump/set", "off", response_topic="ctl/r", correlation=b"m")
        c.wait_for(lambda m: m.topic == "ctl/r")
        replies = [m.json() for m in c.on(f"{base}/reply")]
        assert [(r["ok"], r["error"]) for r in replies[:3]] == [(False, "bad_payload")] * 3
        for topic in spoofed:
            assert all(topic not in r.get("message", "") for r in replies)
            for m in c.on(topic):  # only what the agent itself publishes there
                assert b'"ok"' not in m.payload, (topic, m.payload)
        assert all(s["state"] == "off" for s in states(c, base, "pump"))  # never acted on
        assert all(s["reason"] == "boot" for s in states(c, base, "heater"))


def test_a_command_is_carried_out_once_across_a_reload_and_a_restart(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    commands = "commands:\n  max_age: 60s\n"
    toggle = json.dumps({"state": "toggle", "id": "t-1", "ts": iso_ts(time.time())})
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(tmp_path, broker.port, device_id, agents, commands=commands)
        ready(c, base)
        commander.send(f"{base}/output/pump/set", toggle)
        first = reply_to(c, base, "t-1")
        assert (first["ok"], first["state"]) == (True, "on")
        # A reload: a new command handler, the same memory.
        agent.signal(signal.SIGHUP)
        c.wait_for(lambda m: m.topic == f"{base}/event" and "config_reloaded" in m.text)
        commander.send(f"{base}/output/pump/set", toggle)
        c.wait_for(lambda m: m.topic == f"{base}/reply", count=2)
        assert c.on(f"{base}/reply")[-1].json()["duplicate"] is True
        # A restart: a new process, the memory read back from the state dir.
        agent.stop()
        agent = start_agent(tmp_path, broker.port, device_id, agents, commands=commands)
        c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "online", count=2)
        commander.send(f"{base}/output/pump/set", toggle)
        c.wait_for(lambda m: m.topic == f"{base}/reply", count=3)
        again = c.on(f"{base}/reply")[-1].json()
        assert (again["ok"], again["duplicate"], again["id"]) == (True, True, "t-1")
        # The restart put the pump back to its initial state; the toggle did not run again.
        assert again["state"] == "off"
        pump = states(c, base, "pump")
        assert [s["reason"] for s in pump].count("command") == 1, pump
    memory = tmp_path / "state" / "commands.seen"
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600


PASSWORD = "correct-horse-battery"


def test_no_secret_in_the_log_the_broker_or_config_sha256(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
) -> None:
    # The test broker allows anonymous clients and ignores the credentials.
    base = f"edge/{device_id}"
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="5s",
        mqtt_extra=f"  username: u\n  password: {PASSWORD}\n",
    )
    with Collector(broker.port, "#") as c:
        agent = agents(config)
        info = c.topic(f"{base}/info")[0].json()
        assert info["config_sha256"] != hashlib.sha256(config.read_bytes()).hexdigest()
        # A reload with the red team's broken password: a number.
        config.write_text(config.read_text().replace(PASSWORD, "98765432"))
        agent.signal(signal.SIGHUP)
        rejected = c.wait_for(lambda m: m.topic == f"{base}/event" and "config_rejected" in m.text)
        assert "mqtt.password" in rejected[0].text
        # ... then a good one with a new password: the fingerprint changes.
        config.write_text(config.read_text().replace("98765432", "another-passw0rd"))
        agent.signal(signal.SIGHUP)
        c.wait_for(lambda m: m.topic == f"{base}/event" and "config_reloaded" in m.text)
        later = c.wait_for(lambda m: m.topic == f"{base}/info", count=2)[-1].json()
        assert later["config_sha256"] != info["config_sha256"]
        agent.stop()
        seen = b"".join(m.payload for m in c.messages)
    log = agent.log()
    assert "config_rejected" in log
    for secret in (PASSWORD, "98765432", "another-passw0rd"):
        assert secret.encode() not in seen, secret
        assert secret not in log, secret


def test_every_file_the_agent_makes_is_private(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # an existing, looser state dir
    outputs = "outputs:\n  pump:\n    driver: relay\n    pin: 17\n    initial: restore\n"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        c.topic(f"{base}/output/pump/state")
        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "p"}')
        reply_to(c, base, "p")
        c.topic(f"{base}/sensor/pi")
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        agent.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "made it 0700" in agent.log()
    expected = {"buffer.db", "outputs.json", "commands.seen", "config-digest.key"}
    assert expected <= set(files), files
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}, files
