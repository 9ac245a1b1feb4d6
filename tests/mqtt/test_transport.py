"""The transport's message path against a real mosquitto: what ``published`` says, what
arrives, and paho's packets read in bulk (``_Client``'s read buffer and PUBACK path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config.model import MQTTConfig
from agent.demo.broker import PrivateBroker
from agent.mqtt.transport import IncomingMessage, Transport, TransportEvents, Will
from tests.support.mqtt import Collector

PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])


class Events(TransportEvents):
    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.acks: list[tuple[int, bool]] = []
        self.messages: list[IncomingMessage] = []
        self.changed = asyncio.Event()

    def connected(self, session_present: bool) -> None:
        self.up.set()

    def published(self, mid: int, ok: bool) -> None:
        self.acks.append((mid, ok))
        self.changed.set()

    def message(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        self.changed.set()


async def until(events: Events, done: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            events.changed.clear()
            await events.changed.wait()


def run(port: int, protocol: str, body: Callable[[Transport, Events], Awaitable[None]]) -> None:
    async def main() -> None:
        events = Events()
        transport = Transport(
            settings=MQTTConfig(host="127.0.0.1", port=port, protocol=protocol),  # type: ignore[arg-type]
            client_id=f"transport-test-{protocol}",
            will=Will("transport-test/status", b"offline"),
            events=events,
            loop=asyncio.get_running_loop(),
        )
        transport.start()
        async with asyncio.timeout(10):
            await events.up.wait()
        try:
            await body(transport, events)
        finally:
            await transport.stop()

    asyncio.run(main())


@PROTOCOLS
@pytest.mark.parametrize("qos", [0, 1])
def test_every_message_is_acknowledged_once_and_arrives_in_order(
    broker: PrivateBroker, protocol: str, qos: int
) -> None:
    """Windows of 20 (the agent's in-flight limit): the broker's PUBACKs come several to
    a read, and a turn's publishes go out in one corked write."""
    total = 600

    async def body(transport: Transport, events: Events) -> None:
        mids: list[int] = []
        while len(mids) < total:
            for _ in range(20):
                mid = transport.publish(
                    "transport-test/seq", str(len(mids)).encode(), qos=qos, retain=False
                )
                assert mid is not None
                mids.append(mid)
            assert len(events.acks) <= len(mids) - 20, "acknowledged before publish returned"
            await until(events, lambda: len(events.acks) == len(mids))
        assert sorted(mid for mid, _ in events.acks) == sorted(mids)
        assert all(ok for _, ok in events.acks)

    with Collector(broker.port, "transport-test/seq") as c:
        run(broker.port, protocol, body)
        received = c.topic("transport-test/seq", count=total)
    assert [int(m.payload) for m in received] == list(range(total))


def test_a_refusal_in_the_puback_says_not_ok(tmp_path: Path) -> None:
    """A PUBACK with a failure reason (MQTT 5: 0x87 Not authorized) goes through paho's
    own decoder and says ``ok`` False; the accepted ones around it say True."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    with PrivateBroker(workdir=tmp_path / "broker", extra_config=f"acl_file {acl}") as broker:

        async def body(transport: Transport, events: Events) -> None:
            good = transport.publish("allowed/a", b"1", qos=1, retain=False)
            bad = transport.publish("denied/a", b"2", qos=1, retain=False)
            again = transport.publish("allowed/b", b"3", qos=1, retain=False)
            await until(events, lambda: len(events.acks) == 3)
            assert dict(events.acks) == {good: True, bad: False, again: True}

        run(broker.port, "5", body)


@PROTOCOLS
def test_a_burst_of_incoming_messages_all_arrive_in_order(
    broker: PrivateBroker, protocol: str
) -> None:
    """Many messages in one read of the socket, one of them larger than a read: paho
    takes one packet per ``loop_read`` call when nothing of ours is in flight, so what it
    leaves in the read buffer must be read without the kernel saying so again."""
    total = 300
    big = b"x" * 200_000  # more than one 64 KiB read

    async def body(transport: Transport, events: Events) -> None:
        transport.subscribe("transport-test/in/#", qos=1)
        v5 = protocol == "5"
        version = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        sender = paho.Client(CallbackAPIVersion.VERSION2, protocol=version)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()

        def burst() -> list[IncomingMessage]:
            return [m for m in events.messages if m.topic == "transport-test/in/x"]

        try:
            # The subscription is in place once a probe comes back.
            async with asyncio.timeout(10):
                while not events.messages:
                    sender.publish("transport-test/in/probe", b"p", qos=0)
                    with contextlib.suppress(TimeoutError):
                        await until(events, lambda: bool(events.messages), timeout=0.2)
            for i in range(total):
                payload = big if i == total // 2 else str(i).encode()
                sender.publish("transport-test/in/x", payload, qos=1)
            await until(events, lambda: len(burst()) >= total)
        finally:
            sender.disconnect()
            sender.loop_stop()
        payloads = [m.payload for m in burst()]
        assert payloads[total // 2] == big
        del payloads[total // 2]
        assert [int(p) for p in payloads] == [i for i in range(total) if i != total // 2]

    run(broker.port, protocol, body)
