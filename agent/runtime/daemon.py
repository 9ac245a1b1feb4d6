"""The daemon: config + hardware + sampling + MQTT, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.buffer.store import MessageStore
from agent.config.load import LoadedConfig
from agent.config.model import Config
from agent.events import Event
from agent.mqtt.payloads import Reading, encode_json, iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage, Transport, TransportEvents, Will
from agent.pipeline.outbox import Outbox
from agent.runtime.hardware_setup import make_hardware, sensor_opener, spec_of
from agent.runtime.paths import state_dir
from agent.sampling.scheduler import Scheduler, SensorSlot

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
#: How long a clean stop waits for readings in flight to be acknowledged.
DRAIN_ON_STOP_S = 1.0


def open_store(config: Config) -> MessageStore:
    """The store-and-forward buffer: ``buffer.path``, else ``<state_dir>/buffer.db``.

    The state directory is created private (0700): the buffer holds the readings.
    """
    directory = state_dir(config.state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(config.buffer.path).expanduser() if config.buffer.path else directory / "buffer.db"
    if path.parent != directory:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = MessageStore(
        path, max_messages=config.buffer.max_messages, max_age_s=config.buffer.max_age
    )
    os.chmod(path, 0o600)
    return store


class Agent(TransportEvents):
    """One running agent.

    Args:
        loaded: the validated config.
        simulate: run on emulated hardware (also ``simulate: true`` in the config).
    """

    def __init__(self, loaded: LoadedConfig, *, simulate: bool = False) -> None:
        self.loaded = loaded
        self.config = loaded.config
        assert self.config.device_id is not None
        self.device_id = self.config.device_id
        self.topics = Topics.for_device(self.config.mqtt.topic_prefix, self.device_id)
        self.simulate = simulate or self.config.simulate
        self.started_at = time.time()
        self.connected_since: float | None = None
        self.counters: dict[str, int] = {
            "read_errors": 0,
            "connects": 0,
            "reconnects": 0,
            "events": 0,
        }
        self._transport: Transport | None = None
        self._outbox: Outbox | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then publish ``offline`` and release everything."""
        loop = asyncio.get_running_loop()
        store = open_store(self.config)
        if store.depth():
            log.info("buffer %s holds %d readings to deliver", store.path, store.depth())
        hardware = make_hardware(self.config, simulate=self.simulate)
        slots = [
            SensorSlot(
                name=name,
                spec=spec_of(options),
                options=options,
                open=sensor_opener(options, hardware),
            )
            for name, options in self.config.sensors.items()
        ]
        scheduler = Scheduler(
            slots=slots, emit=self._publish_reading, report=self.report, sequence=store.sequences
        )
        mqtt = self.config.mqtt
        self._transport = Transport(
            settings=mqtt,
            client_id=mqtt.client_id or f"edge-agent-{self.device_id}",
            will=Will(self.topics.status, OFFLINE),
            events=self,
            loop=loop,
        )
        outbox = self._outbox = Outbox(
            store=store,
            sender=self._transport,
            durability=self.config.buffer.durability,
            report=self.report,
            defer=loop.call_soon,
        )
        self.scheduler = scheduler
        self._transport.start()
        tasks = [
            asyncio.create_task(scheduler.run(), name="scheduler"),
            asyncio.create_task(self._publish_health(), name="health"),
            asyncio.create_task(outbox.run(), name="replay"),
        ]
        log.info(
            "edge-agent %s started: device %s, %d sensors, broker %s:%d%s",
            __version__,
            self.device_id,
            len(slots),
            mqtt.host,
            mqtt.effective_port,
            " (simulated hardware)" if self.simulate else "",
        )
        try:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            stopper.cancel()
            scheduler.close()
            # Nothing new is read now. Give what is in flight a moment to be acknowledged,
            # then stop the transport (the acknowledgements it still hands over run during
            # the await), and keep whatever is still unacknowledged in the store.
            await outbox.drain(DRAIN_ON_STOP_S)
            await loop.run_in_executor(
                None,
                lambda: self._transport.stop(last=(self.topics.status, OFFLINE)),  # type: ignore[union-attr]
            )
            await asyncio.sleep(0)
            outbox.close()
            for slot in slots:
                if slot.driver is not None:
                    slot.driver.close()
            hardware.close()
            log.info("edge-agent stopped")

    # -- transport events (on the event loop) ---------------------------------------
    def connected(self, session_present: bool) -> None:
        assert self._transport is not None
        self.connected_since = time.time()
        self.counters["connects"] += 1
        self.counters["reconnects"] = self.counters["connects"] - 1
        log.info("connected to %s:%d", self.config.mqtt.host, self.config.mqtt.effective_port)
        self._publish(self.topics.status, ONLINE, qos=1, retain=True)
        self._publish(self.topics.info, encode_json(self.info()), qos=1, retain=True)
        if self._outbox is not None:
            self._outbox.connected()  # then queued events, then the replay

    def disconnected(self, reason: str) -> None:
        self.connected_since = None
        log.warning("disconnected from the broker (%s); reconnecting", reason)
        if self._outbox is not None:
            self._outbox.disconnected()

    def published(self, mid: int, ok: bool) -> None:
        if self._outbox is not None:
            self._outbox.published(mid, ok)

    def message(self, message: IncomingMessage) -> None:
        log.debug("ignoring message on %s", message.topic)

    # -- publishing ------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        """Publish ``status``/``info``/``health`` on the current connection, if any."""
        assert self._transport is not None
        self._transport.publish(topic, payload, qos=qos, retain=retain)

    def _publish_reading(self, reading: Reading, slot: SensorSlot) -> None:
        assert self._outbox is not None
        self._outbox.submit(
            reading,
            topic=self.topics.sensor(reading.sensor),
            qos=slot.options.qos,
            retain=slot.options.retain,
        )

    def report(self, event: Event) -> None:
        """Log an event and publish it on ``<base>/event``."""
        level = getattr(logging, event.level.upper())
        log.log(level, "%s: %s", event.kind, event.message)
        if event.kind in ("read_error", "sensor_failed"):
            self.counters["read_errors"] += 1
        self.counters["events"] += 1
        if self._outbox is None:
            return
        body = {
            "ts": iso_ts(event.ts),
            "level": event.level,
            "kind": event.kind,
            "message": event.message,
            **event.fields,
        }
        self._outbox.send_event(self.topics.event, encode_json(body))

    async def _publish_health(self) -> None:
        interval = self.config.health.publish_interval
        while True:
            await asyncio.sleep(interval)
            if self._transport is not None and self._transport.connected:
                self._publish(self.topics.health, encode_json(self.health()), qos=0, retain=True)

    def info(self) -> dict[str, Any]:
        """The ``<base>/info`` payload."""
        units: dict[str, str] = {}
        sensors = {}
        for name, options in self.config.sensors.items():
            spec = spec_of(options)
            for quantity, q in spec.quantities.items():
                units.setdefault(quantity, q.unit)
            sensors[name] = {
                "driver": spec.name,
                "interval_s": options.interval,
                "quantities": list(spec.quantities),
            }
        return {
            "version": __version__,
            "device_id": self.device_id,
            "hostname": socket.gethostname(),
            "started_at": iso_ts(self.started_at),
            "config_sha256": self.loaded.sha256,
            "simulated": self.simulate,
            "sensors": sensors,
            "outputs": {n: {"driver": spec_of(o).name} for n, o in self.config.outputs.items()},
            "inputs": {n: {"driver": spec_of(o).name} for n, o in self.config.inputs.items()},
            "units": units,
        }

    def health(self) -> dict[str, Any]:
        """The ``<base>/health`` payload."""
        now = time.time()
        outbox = self._outbox
        oldest = outbox.oldest_queued_ts() if outbox is not None else None
        return {
            "ts": iso_ts(now),
            "uptime_s": round(now - self.started_at, 3),
            "connected_since": iso_ts(self.connected_since) if self.connected_since else None,
            "queue_depth": outbox.queue_depth() if outbox is not None else 0,
            "oldest_queued_age_s": round(max(now - oldest, 0.0), 3) if oldest else None,
            "counters": {**self.counters, **(outbox.counters if outbox is not None else {})},
            "sensors_failed": [s.name for s in self.scheduler.slots if s.failed],
        }
