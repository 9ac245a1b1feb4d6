"""Store-and-forward (CONTRACT §6): the real agent, a real mosquitto, a real broken network.

The FaultProxy sits between the agent and the broker; collectors connect to the broker
directly, so they see everything that reaches it, whatever the agent's link does.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker, free_port
from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.metrics import metric
from tests.support.mqtt import AgentProcess, Collector, Received

pytestmark = pytest.mark.e2e

FIVE_SENSORS = "".join(
    f"  s{n}:\n    driver: system\n    interval: 100ms\n    thermal_zone: {n}\n" for n in range(5)
)


def readings(c: Collector, base: str) -> list[Received]:
    prefix = f"{base}/sensor/"
    return [m for m in list(c.messages) if m.topic.startswith(prefix)]


def seqs_by_sensor(messages: Iterable[Received]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in messages:
        body = m.json()
        out.setdefault(body["sensor"], []).append(body["seq"])
    return out


def wait_complete(c: Collector, base: str, sensors: int, timeout: float = 15.0) -> None:
    """Wait until every sensor's seqs seen so far form 1..max (snapshot of max now)."""
    deadline = time.monotonic() + timeout
    targets: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = seqs_by_sensor(readings(c, base))
        if len(seen) == sensors:
            if not targets:
                targets = {s: max(v) for s, v in seen.items()}
            if all(set(range(1, targets[s] + 1)) <= set(seen[s]) for s in targets):
                return
        time.sleep(0.1)
    seen = seqs_by_sensor(readings(c, base))
    missing = {s: sorted(set(range(1, t + 1)) - set(seen.get(s, []))) for s, t in targets.items()}
    raise AssertionError(f"readings never arrived: {missing}")


def agent_log_count(agent: AgentProcess, text: str) -> int:
    return sum(text in line for line in agent.log().splitlines())


def wait_for_disconnect(agent: AgentProcess, *, since: float, keepalive: int) -> float:
    """Seconds from ``since`` until the agent logs that it lost a dead link; fails the test
    if that takes longer than 1.5 x keepalive (plus 1.5 s for the check's tick and logging).
    """
    deadline = since + 1.5 * keepalive + 1.5
    while "disconnected from the broker" not in agent.log():
        assert time.monotonic() < deadline, f"not noticed in time:\n{agent.log()}"
        time.sleep(0.05)
    detected_after = time.monotonic() - since
    (line,) = [x for x in agent.log().splitlines() if "disconnected from the broker" in x]
    assert "dead or blackholed" in line, line
    return detected_after


def assert_no_loss(c: Collector, base: str) -> dict[str, list[Received]]:
    """Per sensor: seqs are exactly 1..max; live ones arrive in order; returns by sensor."""
    by_sensor: dict[str, list[Received]] = {}
    for m in readings(c, base):
        by_sensor.setdefault(m.json()["sensor"], []).append(m)
    for sensor, msgs in by_sensor.items():
        seqs = [m.json()["seq"] for m in msgs]
        assert set(seqs) == set(range(1, max(seqs) + 1)), (sensor, sorted(seqs))
        live = [m.json()["seq"] for m in msgs if not m.json().get("replayed")]
        assert live == sorted(live), (sensor, live)
        replayed = [m.json()["seq"] for m in msgs if m.json().get("replayed")]
        assert replayed == sorted(replayed) or len(set(replayed)) < len(replayed), replayed
    return by_sensor


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_unreachable_at_start_then_everything_is_delivered(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    protocol: str,
) -> None:
    base = f"edge/{device_id}"
    sensors = "  pi:\n    driver: system\n    interval: 100ms\n    retain: true\n"
    with (
        FaultProxy(broker.port) as proxy,
        Collector(broker.port, f"{base}/#", retain_as_published=True) as c,
    ):
        proxy.refuse()
        config = write_config(
            tmp_path / "c.yaml",
            port=proxy.port,
            device_id=device_id,
            sensors=sensors,
            protocol=protocol,
        )
        agent = agents(config)
        agent.wait_until_started()
        time.sleep(1.5)
        assert not readings(c, base)
        proxy.heal()
        c.wait_for(lambda m: m.topic.endswith("/sensor/pi") and not m.json().get("replayed"))
        wait_complete(c, base, 1)
        agent.stop()
    (msgs,) = assert_no_loss(c, base).values()
    replayed = [m for m in msgs if m.json().get("replayed")]
    assert len(replayed) >= 8, "the outage was 1.5 s at 10 Hz"
    assert [m.json()["seq"] for m in replayed] == list(range(1, len(replayed) + 1))
    assert not any(m.retain for m in replayed), "a replayed reading must not be retained"
    assert any(m.retain for m in msgs if not m.json().get("replayed")), "live ones are"
    status = c.on(f"{base}/status")[0]
    assert status.text == "online" and status.at <= replayed[0].at, "replay after status"


def test_many_connection_cuts_lose_no_reading_of_five_sensors(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml", port=proxy.port, device_id=device_id, sensors=FIVE_SENSORS
        )
        agent = agents(config)
        c.topic(f"{base}/status")
        for i in range(8):
            time.sleep(0.4 + 0.1 * (i % 3))
            proxy.cut()
            if i % 2:  # a broker briefly down, not only a reset
                proxy.refuse()
                time.sleep(0.3)
                proxy.heal()
        wait_complete(c, base, 5)
        agent.stop()
    by_sensor = assert_no_loss(c, base)
    assert len(by_sensor) == 5
    replayed = sum(1 for ms in by_sensor.values() for m in ms if m.json().get("replayed"))
    assert replayed >= 20, "the cuts should have made the agent buffer"
    total = sum(len(ms) for ms in by_sensor.values())
    distinct = sum(len({m.json()["seq"] for m in ms}) for ms in by_sensor.values())
    # A cut loses the acks of what was in flight: at most the 20 of paho's window each.
    assert total - distinct <= 8 * 20, "duplicates only from acks lost with a connection"
    assert len(c.on(f"{base}/status")) >= 9, "online again after every cut"


def test_ten_broker_restarts_lose_no_reading_of_five_sensors_at_10hz(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    restarts = 10
    config = write_config(
        tmp_path / "c.yaml", port=broker.port, device_id=device_id, sensors=FIVE_SENSORS
    )
    # A persistent session: mosquitto (persistence on) keeps what arrives for it while it
    # restarts and the collector is reconnecting.
    with Collector(broker.port, f"{base}/#", persistent_id=f"collector-{device_id}") as c:
        agent = agents(config)
        c.topic(f"{base}/status")
        for i in range(restarts):
            time.sleep(1.0 + 0.2 * (i % 2))  # up: the agent reconnects and replays
            # Stopped only once the agent is back (its backoff and a busy machine can
            # outlast the up time), so that each restart is one disconnect.
            deadline = time.monotonic() + 20
            while agent_log_count(agent, "connected to 127.0.0.1:") < i + 1:
                assert time.monotonic() < deadline, agent.log()
                time.sleep(0.05)
            broker.stop()
            time.sleep(0.5 + 0.2 * (i % 3))  # down: the agent buffers
            broker.start()
        wait_complete(c, base, 5, timeout=20)
        # (Counted before the stop, which may log a disconnect of its own.)
        assert agent_log_count(agent, "disconnected from the broker") == restarts
        agent.stop()
    by_sensor = assert_no_loss(c, base)
    assert len(by_sensor) == 5
    for sensor, msgs in by_sensor.items():
        bodies = [m.json() for m in msgs]
        # Duplicates (an acknowledgement lost in a restart) are the same reading again.
        first: dict[int, dict[str, object]] = {}
        for body in bodies:
            same = first.setdefault(body["seq"], body)
            assert (same["ts"], same["values"]) == (body["ts"], body["values"]), (sensor, body)
        # Order per sensor: live readings in seq order, replayed ones too (each counted at
        # its first delivery).
        for replayed in (False, True):
            seqs = [b["seq"] for b in bodies if bool(b.get("replayed")) is replayed]
            firsts = [q for n, q in enumerate(seqs) if q not in seqs[:n]]
            assert firsts == sorted(firsts), (sensor, replayed, seqs)
        assert max(first) >= 15 * 10, "each sensor read at 10 Hz for the whole ~18 s"
    replayed_total = sum(1 for ms in by_sensor.values() for m in ms if m.json().get("replayed"))
    assert replayed_total >= restarts * 5 * 3, "every outage was buffered and replayed"
    total = sum(len(ms) for ms in by_sensor.values())
    distinct = sum(len({m.json()["seq"] for m in ms}) for ms in by_sensor.values())
    # At a restart at most the agent's (20) and the collector's (20) in-flight windows can
    # be delivered twice.
    assert total - distinct <= restarts * 40, (total, distinct)


def test_blackholed_link_is_detected_and_its_readings_arrive_after_heal(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    keepalive = 5
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml",
            port=proxy.port,
            device_id=device_id,
            interval="100ms",
            keepalive=keepalive,
        )
        agent = agents(config)
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.blackhole()
        blackholed = time.monotonic()
        # The transport's watchdog pings after keepalive / 2 without a packet from the
        # broker and gives up after 1.5 x keepalive (paho alone: up to 2 x keepalive).
        detected_after = wait_for_disconnect(agent, since=blackholed, keepalive=keepalive)
        proxy.heal()
        # (The broker's own keepalive published the Will "offline" meanwhile.)
        online = c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "online", count=2)
        c.wait_for(
            lambda m: "sensor" in m.topic and m.at > online[1].at and "replayed" not in m.text
        )
        wait_complete(c, base, 1)
        agent.stop()
    (msgs,) = assert_no_loss(c, base).values()
    replayed = [m for m in msgs if m.json().get("replayed")]
    assert len(replayed) >= detected_after * 10 * 0.8, (len(replayed), detected_after)


def test_idle_healthy_link_is_not_mistaken_for_a_dead_one(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    """With nothing to publish, only pings come back from the broker: the watchdog that
    gives a silent broker up after 1.5 x keepalive must not drop a healthy idle link."""
    base = f"edge/{device_id}"
    keepalive = 5
    with Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml",
            port=broker.port,
            device_id=device_id,
            interval="1h",  # one reading at start, then nothing
            keepalive=keepalive,
        )
        agent = agents(config)
        c.topic(f"{base}/sensor/pi")
        time.sleep(3 * keepalive + 1)
        assert "disconnected from the broker" not in agent.log(), agent.log()
        assert [m.text for m in c.on(f"{base}/status")] == ["online"], "no reconnect, no Will"
        assert len(c.on(f"{base}/sensor/pi")) == 1, "really idle"
        agent.stop()
    connects = broker.log_path.read_text().count(f"as edge-agent-{device_id} ")
    assert connects == 1, broker.log_path.read_text()


def test_kill_during_an_outage_then_restart_delivers_the_buffer(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml", port=proxy.port, device_id=device_id, interval="100ms"
        )
        first = agents(config)
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.refuse()
        proxy.cut()
        time.sleep(1.5)
        first.stop(kill=True)
        proxy.heal()
        agents(config)
        c.wait_for(
            lambda m: m.topic == f"{base}/sensor/pi" and not m.json().get("replayed"), count=8
        )
        time.sleep(0.5)
    msgs = [m.json() for m in c.on(f"{base}/sensor/pi")]
    seqs = [m["seq"] for m in msgs]
    assert len(seqs) == len(set(seqs)), "no seq delivered twice"
    # After a crash the counter resumes at its last reservation (blocks of 1000): a gap,
    # never a repeat.
    first_run = sorted(s for s in seqs if s <= 1000)
    assert first_run == list(range(1, len(first_run) + 1)), first_run
    buffered = [m["seq"] for m in msgs if m.get("replayed") and m["seq"] <= 1000]
    assert len(buffered) >= 10, "1.5 s of readings at 10 Hz were buffered and delivered"
    second_run = sorted(s for s in seqs if s > 1000)
    assert second_run == list(range(1001, 1001 + len(second_run))), second_run


def test_durability_always_keeps_readings_in_flight_at_a_kill(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml",
            port=proxy.port,
            device_id=device_id,
            interval="100ms",
            extra="buffer:\n  durability: always\n",
        )
        first = agents(config)
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.delay(0.4)  # ~8 readings sent but not acknowledged at any moment
        time.sleep(1.5)
        first.stop(kill=True)
        with sqlite3.connect(tmp_path / "state" / "buffer.db") as db:
            stored = [row[0] for row in db.execute("SELECT seq FROM messages ORDER BY id")]
        assert len(stored) >= 3, "readings in flight were on disk before they were sent"
        highest = max(stored)
        proxy.heal()
        agents(config)
        c.wait_for(
            lambda m: m.topic == f"{base}/sensor/pi" and m.json()["seq"] > highest, timeout=10
        )
        time.sleep(0.5)
    seqs = {m.json()["seq"] for m in c.on(f"{base}/sensor/pi")}
    assert set(range(1, highest + 1)) <= seqs, sorted(set(range(1, highest + 1)) - seqs)


def test_full_buffer_drops_exactly_the_oldest_and_says_how_many(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base, health = f"edge/{device_id}", free_port()
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        proxy.refuse()
        config = write_config(
            tmp_path / "c.yaml",
            port=proxy.port,
            device_id=device_id,
            interval="100ms",
            extra=f'buffer:\n  max_messages: 20\nhealth:\n  listen: "127.0.0.1:{health}"\n',
        )
        agent = agents(config)
        agent.wait_until_started()
        # Until 15 readings have been dropped (35 at 10 Hz; longer on a busy machine).
        deadline = time.monotonic() + 30
        while metric(health, "edge_agent_dropped_total") < 15:
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        proxy.heal()
        event = c.wait_for(
            lambda m: m.topic == f"{base}/event" and m.json()["kind"] == "buffer_dropping"
        )[0].json()
        c.wait_for(lambda m: m.topic == f"{base}/sensor/pi" and not m.json().get("replayed"))
        time.sleep(0.5)
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    dropped = event["dropped"]
    assert dropped >= 10, event
    assert event["level"] == "warning"
    seqs = sorted(m.json()["seq"] for m in c.on(f"{base}/sensor/pi"))
    assert seqs == list(range(dropped + 1, seqs[-1] + 1)), (dropped, seqs)
    replayed = [m for m in c.on(f"{base}/sensor/pi") if m.json().get("replayed")]
    assert len(replayed) == 20, "the buffer held exactly max_messages"
    assert sum(m.json()["kind"] == "buffer_dropping" for m in c.on(f"{base}/event")) == 1


def test_sigterm_keeps_unacknowledged_readings_for_the_next_start(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        config = write_config(
            tmp_path / "c.yaml", port=proxy.port, device_id=device_id, interval="100ms"
        )
        first = agents(config)
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.blackhole()  # connected, but nothing is acknowledged any more
        time.sleep(1.0)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.log()
        proxy.heal()
        agents(config)
        c.wait_for(
            lambda m: m.topic == f"{base}/sensor/pi" and not m.json().get("replayed"), count=8
        )
        wait_complete(c, base, 1)
    seqs = [m.json()["seq"] for m in c.on(f"{base}/sensor/pi")]
    assert set(seqs) == set(range(1, max(seqs) + 1)), "a clean restart leaves no seq gap"
    assert sum(1 for m in c.on(f"{base}/sensor/pi") if m.json().get("replayed")) >= 8
