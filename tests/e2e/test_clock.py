"""Clock awareness (CONTRACT 14) in the real agent process, against a real mosquitto.

The agent's clock is steered through its control file (``EDGE_AGENT_CLOCK_FILE``): it
starts in 2022, unsynchronised, as a Pi without a real-time clock boots; the test steps
it and finally syncs it, as NTP does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.demo.broker import PrivateBroker, free_port
from agent.mqtt.payloads import parse_iso_ts
from tests.e2e.test_observability import get, wait_status
from tests.support.clock import IN_2022, ClockControl
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, run_cli

pytestmark = pytest.mark.e2e

YEAR_S = 365 * 86400.0


def clock_gauge(port: int) -> float:
    code, text = get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "edge_agent_clock_synced":
                return sample.value
    raise AssertionError("no edge_agent_clock_synced in /metrics")


def test_an_unsynchronised_clock_is_reported_everywhere_until_it_syncs(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    port = free_port()
    base = f"edge/{device_id}"
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="200ms",
        extra=f'health:\n  listen: "127.0.0.1:{port}"\n  publish_interval: 1s\n',
    )
    clock = ClockControl(tmp_path / "clock.json", offset_s=IN_2022 - time.time())
    with Collector(broker.port, f"{base}/#") as c:
        agents(config, env=clock.env)
        first = c.topic(f"{base}/sensor/pi")[0].json()
        assert first["clock_synced"] is False
        assert abs(parse_iso_ts(first["ts"]) - IN_2022) < 60
        info = c.topic(f"{base}/info")[0].json()
        assert info["clock_synced"] is False
        health = c.topic(f"{base}/health", timeout=15)[0].json()
        assert health["clock_synced"] is False
        healthz = wait_status(f"http://127.0.0.1:{port}/healthz", 200)
        assert healthz["clock_synced"] is False and healthz["ok"] is True
        assert clock_gauge(port) == 0
        status = run_cli("status", "-c", str(config))
        assert status.returncode == 0, status.stderr
        assert "clock: NOT synchronised" in status.stdout

        clock.sync()
        event = c.wait_for(
            lambda m: m.topic == f"{base}/event" and m.json()["kind"] == "clock_synced",
            timeout=15,
        )[0].json()
        assert event["clock_synced"] is True
        c.wait_for(lambda m: m.topic == f"{base}/info" and m.json()["clock_synced"] is True)
        # Readings sampled from now on are stamped with the good clock, without the flag.
        synced = c.wait_for(
            lambda m: m.topic == f"{base}/sensor/pi" and "clock_synced" not in m.json(),
            timeout=15,
        )[0].json()
        assert abs(parse_iso_ts(synced["ts"]) - time.time()) < 60
        # Uptime is counted on the monotonic clock: not four years after the step.
        later = c.wait_for(
            lambda m: m.topic == f"{base}/health" and m.json()["clock_synced"] is True,
            timeout=15,
        )[0].json()
        assert later["uptime_s"] < 600
        assert clock_gauge(port) == 1
        status = run_cli("status", "-c", str(config))
        assert "clock: synchronised" in status.stdout
