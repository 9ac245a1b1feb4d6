"""Command floods against the real agent (issue 20, rows 9 and 10): bounded in count and
time, asserting behaviour and bounded memory. How fast the agent copes is measured in
tests/bench, not asserted here."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.commands.auth import new_hmac_secret, parse_key, sign_command
from agent.demo.broker import PrivateBroker, free_port
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, run_cli

pytestmark = pytest.mark.e2e

#: The burst a bucket holds at the default max_rate (10 a second): 50 commands.
BURST = 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(metrics: bytes, output: str, result: str) -> float:
    """The value of edge_agent_commands_total{output, result}, 0 when absent."""
    head = f'edge_agent_commands_total{{output="{output}",result="{result}"}} '.encode()
    for line in metrics.splitlines():
        if line.startswith(head):
            return float(line[len(head) :])
    return 0.0


def publisher(port: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    return client


def publish_all(client: paho.Client, messages: list[tuple[str, bytes]], timeout: float) -> None:
    """Publish at QoS 1 as fast as the broker takes them; wait until it has them all."""
    sent = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    deadline = time.monotonic() + timeout
    while not all(info.is_published() for info in sent):
        assert time.monotonic() < deadline, "the broker never took the flood"
        time.sleep(0.1)


def settled(c: Collector, topic: str, quiet_s: float = 1.0, timeout: float = 60) -> None:
    """Wait until nothing more has arrived on ``topic`` for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    seen = len(c.on(topic))
    while True:
        time.sleep(quiet_s)
        now = len(c.on(topic))
        if now == seen:
            return
        assert time.monotonic() < deadline, f"{topic} never settled"
        seen = now


def wait_for_health(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "no /healthz"
        time.sleep(0.2)


def test_a_command_flood_is_bounded_and_readings_keep_flowing(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base, health = f"edge/{device_id}", free_port()
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="100ms",
        extra=(
            "outputs:\n  pump: {driver: relay, pin: 17}\n"
            f'health:\n  listen: "127.0.0.1:{health}"\n'
        ),
    )
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        c.topic(f"{base}/output/pump/state")
        c.topic(f"{base}/sensor/pi", count=5)
        wait_for_health(f"http://127.0.0.1:{health}/healthz")
        time.sleep(1)
        baseline = rss_mb(agent.pid)
        client = publisher(broker.port)
        try:
            started = time.monotonic()
            flood_from = time.time()
            flood = [(f"{base}/output/pump/set", b"off" if n % 2 else b"on") for n in range(6000)]
            flood += [(f"{base}/output/ghost-{n}/set", b"on") for n in range(1500)]
            flood += [  # no output name at all: 30 kB topic levels
                (f"{base}/output/x{n}{'y' * 30_000}/set", b"on") for n in range(1500)
            ]
            publish_all(client, flood, timeout=60)
            flood_to = time.time()
            healthz = get(f"http://127.0.0.1:{health}/healthz")[0]
            time.sleep(3)  # the agent works off what it was sent
            # A probe afterwards is judged and answered.
            client.publish(f"{base}/output/pump/set", b'{"state": "off", "id": "probe"}', qos=1)
            c.wait_for(lambda m: m.topic == f"{base}/reply" and b'"probe"' in m.payload, timeout=15)
            took = time.monotonic() - started
        finally:
            client.disconnect()
            client.loop_stop()
        time.sleep(2)
        after = rss_mb(agent.pid)
        status, metrics = get(f"http://127.0.0.1:{health}/metrics")
        later = len(c.on(f"{base}/sensor/pi"))
        c.wait_for(lambda m: m.topic == f"{base}/sensor/pi", count=later + 5, timeout=5)
        replies = [m.json() for m in c.on(f"{base}/reply")]
        # Sampled while the broker was taking the flood, by the readings' own stamps: the
        # collector receives the flood too, so when it sees a reading says little.
        during = sum(
            flood_from <= parse_iso_ts(m.json()["ts"]) <= flood_to
            for m in c.on(f"{base}/sensor/pi")
        )
    assert during > 0, "no reading was taken during the flood"
    assert healthz == 200, "/healthz did not answer 200 during the flood"
    assert after - baseline < 40, f"RSS grew from {baseline:.0f} to {after:.0f} MB"
    # Counters and series only for configured outputs: every invented name counts as "".
    assert status == 200 and len(metrics) < 200_000, len(metrics)
    assert b"yyyy" not in metrics and b"ghost" not in metrics, "a series for an invented name"
    assert metric(metrics, "pump", "rate_limited") > 0
    assert metric(metrics, "", "unknown_output") + metric(metrics, "", "dropped") > 0
    assert metric(metrics, "", "bad_payload") > 0
    # Replies are bounded: the accepted ones by the rate, the refusals by their budget.
    assert any(r.get("error") == "rate_limited" for r in replies)
    ok = [r for r in replies if r["ok"]]
    assert len(ok) <= BURST + 10 * took + 2, (len(ok), took)
    assert len(replies) <= BURST + 10 * took + 20 * (took + 1) + 2, (len(replies), took)
    # Refusals are logged a few times, not once each.
    log = agent.log()
    refusals = [x for x in log.splitlines() if "refused (" in x]
    assert len(refusals) < 30, f"{len(refusals)} refusal log lines"
    assert len(log) < 200_000, "the log grows with the flood"
    assert "Traceback" not in log


def test_forged_commands_cannot_use_up_an_outputs_rate(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    key_file = tmp_path / "ops.key"
    result = run_cli("keygen", str(key_file))
    assert result.returncode == 0, result.stderr
    key = parse_key(key_file.read_bytes())
    forger = parse_key(new_hmac_secret().encode())
    base = f"edge/{device_id}"
    pump = f"{base}/output/pump/set"
    config = write_config(
        tmp_path / "c.yaml",
        port=broker.port,
        device_id=device_id,
        interval="1s",
        extra=(
            f"commands:\n  auth:\n    keys:\n      ops: {key_file}\n"
            "outputs:\n  pump: {driver: relay, pin: 17}\n"
        ),
    )

    def signed(state: str, with_key: object, command_id: str | None = None) -> bytes:
        body = {"state": state, "ts": iso_ts(time.time()), "nonce": uuid.uuid4().hex}
        if command_id is not None:
            body["id"] = command_id
        return sign_command(pump, json.dumps(body), with_key, "ops")  # type: ignore[arg-type]

    with Collector(broker.port, f"{base}/#") as c:
        agents(config)
        c.topic(f"{base}/output/pump/state")
        client = publisher(broker.port)
        try:
            forged = [(pump, signed("on", forger)) for _ in range(1500)]
            forged += [(pump, b"on") for _ in range(1500)]  # unsigned: refused too
            publish_all(client, forged, timeout=60)
            settled(c, f"{base}/reply")  # the agent has worked off what it was sent
            assert not [m for m in c.on(f"{base}/reply") if m.json()["ok"]]
            # The real sender's burst is all there: the forgeries were not charged to it.
            count = len(c.on(f"{base}/reply"))
            for n in range(BURST):
                state = "on" if n % 2 else "off"
                client.publish(pump, signed(state, key, f"real-{n}"), qos=1)
            c.wait_for(
                lambda m: m.topic == f"{base}/reply" and b'"real-' in m.payload,
                count=BURST,
                timeout=15,
            )
        finally:
            client.disconnect()
            client.loop_stop()
        real = [r for r in (m.json() for m in c.on(f"{base}/reply")[count:]) if r.get("id")]
    assert len(real) == BURST
    assert all(r["ok"] for r in real), [r for r in real if not r["ok"]][:3]
