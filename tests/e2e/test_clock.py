"""Clock awareness (CONTRACT 14) in the real agent process, against a real mosquitto.

The agent's clock is steered through its control file (``EDGE_AGENT_CLOCK_FILE``): it
starts in 2022, unsynchronised, as a Pi without a real-time clock boots; the test steps
it and finally syncs it, as NTP does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.commands.auth import parse_key, sign_command
from agent.demo.broker import PrivateBroker, free_port
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from tests.e2e.test_commands import Commander, ready
from tests.e2e.test_observability import get, wait_status
from tests.e2e.test_store_and_forward import assert_no_loss, readings
from tests.support.clock import IN_2022, ClockControl
from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import AgentProcess, Collector, run_cli

pytestmark = pytest.mark.e2e

YEAR_S = 365 * 86400.0
TWO_SENSORS = "".join(
    f"  {name}:\n    driver: system\n    interval: 200ms\n    thermal_zone: {n}\n"
    for n, name in enumerate("ab")
)
T = TypeVar("T")


def wait_until(probe: Callable[[], T | Literal[False] | None], timeout: float = 20.0) -> T:
    """The first true value ``probe`` returns, polling; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def delivered_through_live(c: Collector, base: str, *, after: float) -> bool:
    """Whether both sensors have a live reading received after ``after`` and every seq
    before it."""
    seqs: dict[str, set[int]] = {}
    live: dict[str, int] = {}
    for m in readings(c, base):
        body = m.json()
        seqs.setdefault(body["sensor"], set()).add(body["seq"])
        if m.at > after and not body.get("replayed"):
            live.setdefault(body["sensor"], body["seq"])
    return len(live) == 2 and all(set(range(1, n + 1)) <= seqs[s] for s, n in live.items())


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


def test_clock_steps_during_an_outage_lose_nothing_and_early_readings_are_restamped(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    """A Pi boots in 2022, its broker unreachable; the clock steps four years ahead, a
    year more, back an hour, then NTP syncs it; then the broker comes back. A buffer aged
    by the wall clock would have dropped everything at the first step (max_age 10 min)."""
    port = free_port()
    base = f"edge/{device_id}"
    config = write_config(
        tmp_path / "c.yaml",
        port=0,  # replaced below: the agent talks through the fault proxy
        device_id=device_id,
        sensors=TWO_SENSORS,
        extra=f'buffer:\n  max_age: 10m\nhealth:\n  listen: "127.0.0.1:{port}"\n',
    )
    clock = ClockControl(tmp_path / "clock.json", offset_s=IN_2022 - time.time())
    healthz = f"http://127.0.0.1:{port}/healthz"
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config.write_text(config.read_text().replace("port: 0\n", f"port: {proxy.port}\n"))
        agents(config, env=clock.env)
        early = c.wait_for(
            lambda m: m.topic == f"{base}/sensor/a" and not m.json().get("replayed")
        )[0].json()
        assert early["clock_synced"] is False and parse_iso_ts(early["ts"]) < IN_2022 + 3600
        # The broker goes away.
        proxy.refuse()
        proxy.cut()
        outage_began = time.time()
        wait_until(lambda: wait_status(healthz, 200)["connected"] is False)
        for step in (4 * YEAR_S, YEAR_S, -3600.0):
            time.sleep(1.5)
            clock.step(step)
        time.sleep(1.5)
        during = wait_status(healthz, 200)
        assert during["clock_synced"] is False
        assert during["queue_depth"] >= 20
        # Ages on the monotonic clock: seconds, not years (or negative after the step back).
        assert 0 < during["oldest_queued_age_s"] < 120
        synced_at = time.time()
        clock.sync()
        after = wait_until(lambda: (h := wait_status(healthz, 200))["clock_synced"] and h)
        assert 0 < after["oldest_queued_age_s"] < 120
        assert clock_gauge(port) == 1
        time.sleep(1.0)  # a few readings from the synchronised clock, still buffered
        outage_ended = time.time()
        proxy.heal()
        # Complete: a live reading of each sensor after the outage, and every seq up to it.
        wait_until(lambda: delivered_through_live(c, base, after=outage_ended), timeout=60)
        event = c.wait_for(
            lambda m: m.topic == f"{base}/event" and m.json()["kind"] == "clock_synced",
            timeout=20,
        )[0].json()
    assert event["restamped"] >= 20
    by_sensor = assert_no_loss(c, base)  # every seq from 1: nothing expired or lost
    for sensor, messages in by_sensor.items():
        bodies = [m.json() for m in messages]
        # Replayed after the outage (a reading sampled before the first connect may have
        # been replayed right after it, before the outage, unsynchronised and so as it was).
        replayed = [m.json() for m in messages if m.json().get("replayed") and m.at > outage_ended]
        assert [b["seq"] for b in replayed] == sorted(b["seq"] for b in replayed), sensor
        flagged = [b for b in replayed if b.get("clock_synced") is False]
        good = [b for b in replayed if "clock_synced" not in b]
        assert len(flagged) >= 10 and good, (sensor, len(flagged), len(good))
        # Sampled before the sync, re-stamped from the monotonic clock at it: real times
        # within the outage (not 2022, 2026 or 2027), increasing with seq.
        stamps = [parse_iso_ts(b["ts"]) for b in flagged]
        assert all(outage_began - 5 < ts < synced_at + 2 for ts in stamps), (sensor, stamps)
        assert stamps == sorted(stamps)
        # Sampled after it: stamped by the synchronised clock.
        assert all(synced_at - 2 < parse_iso_ts(b["ts"]) < outage_ended + 2 for b in good)
        # Delivered live before the outage: their ts cannot be taken back; they stay flagged.
        live_before = [
            b for b in bodies if not b.get("replayed") and b.get("clock_synced") is False
        ]
        assert live_before and all(parse_iso_ts(b["ts"]) < IN_2022 + 3600 for b in live_before)


def test_signed_commands_on_an_agent_whose_clock_is_in_2022(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    """The controller's clock is right, the agent's four years behind and unsynchronised:
    commands are judged by the trusted time, replays refused, also after a restart."""
    key_file = tmp_path / "ops.key"
    assert run_cli("keygen", str(key_file)).returncode == 0
    key = parse_key(key_file.read_bytes())
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="5s",
        extra=f"commands:\n  auth:\n    keys:\n      ops: {key_file}\n"
        "outputs:\n  pump: {driver: relay, pin: 17}\n",
    )
    base = f"edge/{device_id}"
    pump = f"{base}/output/pump/set"
    clock = ClockControl(tmp_path / "clock.json", offset_s=IN_2022 - time.time())

    def signed(state: str, ts: float) -> str:
        body = {"state": state, "ts": iso_ts(ts), "nonce": uuid.uuid4().hex}
        return sign_command(pump, json.dumps(body), key, "ops").decode()

    commander = Commander(broker.port)
    with Collector(broker.port, f"{base}/#") as c:

        def send(payload: str) -> Any:
            count = len(c.on(f"{base}/reply")) + 1
            commander.send(pump, payload)
            return c.wait_for(lambda m: m.topic == f"{base}/reply", count=count)[-1].json()

        agent = agents(config, env=clock.env)
        ready(c, base, ("pump",))
        first = signed("on", time.time())
        assert send(first)["ok"] is True  # four years "ahead" of the agent: not stale
        assert send(first)["error"] == "replayed"
        assert send(signed("off", time.time() - 120))["error"] == "stale"  # by the signer's time
        agent.stop()
        clock.step(-3600)  # the next boot is an hour further back
        agents(config, env=clock.env)
        c.topic(f"{base}/output/pump/state", count=2)
        assert send(first)["error"] == "replayed"  # remembered across the restart
        assert send(signed("off", time.time()))["ok"] is True
    commander.close()
