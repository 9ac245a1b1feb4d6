"""The real agent process against a real mosquitto: online, readings, Will, clean stop."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, retained

pytestmark = pytest.mark.e2e


def test_run_publishes_online_info_and_readings(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    config = write_config(tmp_path / "c.yaml", port=broker.port, device_id=device_id)
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        status = c.topic(f"{base}/status")[0]
        assert status.text == "online"
        info = c.topic(f"{base}/info")[0].json()
        assert info["device_id"] == device_id
        assert info["sensors"]["pi"]["driver"] == "system"
        assert info["units"]["soc_temperature"] == "°C"
        assert len(info["config_sha256"]) == 64
        readings = [m.json() for m in c.topic(f"{base}/sensor/pi", count=3)]
    assert [r["seq"] for r in readings] == [readings[0]["seq"] + i for i in range(3)]
    assert all(r["sensor"] == "pi" and "soc_temperature" in r["values"] for r in readings)
    online = retained(broker.port, f"{base}/status")
    assert online is not None and online.retain and online.text == "online"
    agent.stop()


def test_sigkill_makes_the_broker_publish_offline_from_the_will(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    config = write_config(tmp_path / "c.yaml", port=broker.port, device_id=device_id)
    with Collector(broker.port, f"{base}/status") as c:
        agent = agents(config)
        c.wait_for(lambda m: m.text == "online")
        agent.stop(kill=True)
        c.wait_for(lambda m: m.text == "offline", timeout=5)
    status = retained(broker.port, f"{base}/status")
    assert status is not None and status.retain and status.text == "offline"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_publishes_offline_and_exits_0(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    signum: int,
) -> None:
    base = f"edge/{device_id}"
    config = write_config(tmp_path / "c.yaml", port=broker.port, device_id=device_id)
    with Collector(broker.port, f"{base}/status") as c:
        agent = agents(config)
        c.wait_for(lambda m: m.text == "online")
        agent.signal(signum)
        assert agent.wait() == 0, agent.log()
        c.wait_for(lambda m: m.text == "offline", timeout=5)
    assert "Traceback" not in agent.log()


def test_starts_without_a_broker_and_connects_when_it_appears(
    tmp_path: Path, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    broker = PrivateBroker(workdir=tmp_path / "late-broker")
    base = f"edge/{device_id}"
    config = write_config(tmp_path / "c.yaml", port=broker.port, device_id=device_id)
    agent = agents(config)
    try:
        broker.start()
        with Collector(broker.port, f"{base}/#") as c:
            c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "online", timeout=10)
            c.topic(f"{base}/sensor/pi", timeout=10)
        assert agent.process is not None and agent.process.poll() is None
    finally:
        agent.stop()
        broker.close()


def test_a_failing_sensor_is_reported_and_the_rest_keeps_running(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    sensors = (
        "  good:\n    driver: system\n    interval: 200ms\n"
        "  bad:\n    driver: system\n    interval: 200ms\n    thermal_zone: 1\n"
        "    simulation: {fail_rate: 1.0}\n"
    )
    config = write_config(
        tmp_path / "c.yaml", port=broker.port, device_id=device_id, sensors=sensors
    )
    with Collector(broker.port, f"{base}/#") as c:
        agents(config)
        event = c.wait_for(
            lambda m: m.topic == f"{base}/event" and m.json()["kind"] == "sensor_failed"
        )[0].json()
        assert event["sensor"] == "bad" and event["level"] == "error"
        assert "Input/output error" in event["message"]
        c.topic(f"{base}/sensor/good", count=3)
    assert not c.on(f"{base}/sensor/bad")
