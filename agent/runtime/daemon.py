"""The daemon: config + hardware + sampling + MQTT, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.actuation.inputs import InputState, InputWatcher
from agent.actuation.outputs import OutputController, OutputState
from agent.actuation.statefile import OutputStateFile
from agent.buffer.fallback import RETRY_S, Buffer
from agent.buffer.store import MessageStore, StorageError, diagnose
from agent.clock import ClockSource, clock_from_env, stamp, watched
from agent.commands.gate import CommandGate, CommandLimits
from agent.commands.handler import CommandAuth, CommandHandler, Reply
from agent.commands.seen import SeenCommands
from agent.config.digest import config_digest, digest_key
from agent.config.load import LoadedConfig, load_config, load_keys
from agent.config.model import Config
from agent.errors import ConfigError
from agent.events import Event
from agent.filters.chain import SensorChain, sensor_quantities
from agent.homeassistant.announcer import Announcer
from agent.mqtt.payloads import Reading, encode_json, iso_ts
from agent.mqtt.takeover import Takeover
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage, Transport, TransportEvents, Will
from agent.observability.report import health_payload, healthz, snapshot
from agent.pipeline.outbox import Outbox
from agent.runtime.hardware_setup import make_hardware, sensor_opener, spec_of
from agent.runtime.logging_setup import add_secrets, config_secrets, event_fields
from agent.runtime.paths import state_dir
from agent.runtime.systemd import Notifier, status_line
from agent.sampling.scheduler import Scheduler, SensorSlot
from drivers.base import Options
from drivers.hardware import SimulatedHardware

if TYPE_CHECKING:
    # Imported where used: a reload (SIGHUP) and health.listen are the rare paths.
    from agent.observability.http import HealthServer, Response
    from agent.runtime.reload import ReloadPlan

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
#: How long a clean stop waits for readings in flight to be acknowledged.
DRAIN_ON_STOP_S = 1.0
#: Least time from one reload's start to the next, when requests come in a storm.
RELOAD_MIN_INTERVAL_S = 1.0
#: How often systemd's STATUS= line is refreshed (sent only when it changed).
STATUS_EVERY_S = 5.0


def private_dir(directory: Path) -> None:
    """Make ``directory`` (0700), or tighten an existing one that others may enter: it
    holds the readings, the outputs' states and the memory of accepted commands."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(directory, 0o700)
        except OSError as e:
            log.error(
                "%s is mode %04o and cannot be made 0700 (%s): others may read the agent's state",
                directory,
                mode,
                e.strerror,
            )
        else:
            log.warning("%s was mode %04o; made it 0700", directory, mode)


def buffer_path(config: Config) -> Path:
    """``buffer.path``, else ``<state_dir>/buffer.db``."""
    directory = state_dir(config.state_dir)
    return Path(config.buffer.path).expanduser() if config.buffer.path else directory / "buffer.db"


def open_disk_store(config: Config, clock: ClockSource | None = None) -> MessageStore:
    """The SQLite store at :func:`buffer_path`, measuring ages on ``clock``.

    The directory is private (0700) and the database with its ``-wal`` companion 0600
    (SQLite gives it the database file's mode).

    Raises:
        StorageError: the directory or the file cannot be used.
    """
    directory = state_dir(config.state_dir)
    path = buffer_path(config)
    try:
        private_dir(directory)
        if path.parent != directory:
            private_dir(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError as e:
        raise diagnose(e, path) from e
    store = MessageStore(
        path,
        max_messages=config.buffer.max_messages,
        max_age_s=config.buffer.max_age,
        time_source=clock,
    )
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(path.with_name(path.name + suffix), 0o600)
    return store


def open_store(config: Config, clock: ClockSource | None = None) -> Buffer:
    """The store-and-forward buffer, measuring ages on ``clock``. A state directory or
    buffer file that cannot be used is not fatal: the agent runs on the memory queue
    (``buffer.memory_max_messages``), says so in one line, and tries the disk again every
    few seconds."""
    try:
        disk: MessageStore | None = open_disk_store(config, clock)
        fault: StorageError | None = None
    except StorageError as e:
        disk, fault = None, e
        log.error(
            "the buffer %s cannot be used (%s: %s): running WITHOUT durability, up to %d"
            " readings in memory, trying again every %g s; fix the directory (permissions,"
            " a full or read-only file system) or set state_dir / buffer.path",
            e.path,
            e.reason,
            e.detail,
            config.buffer.memory_max_messages,
            RETRY_S,
        )
    return Buffer(
        disk=disk,
        path=buffer_path(config),
        max_messages=config.buffer.max_messages,
        max_age_s=config.buffer.max_age,
        memory_max_messages=config.buffer.memory_max_messages,
        reopen=lambda: open_disk_store(config, clock),
        fault=fault,
        time_source=clock,
    )


class _Link(TransportEvents):
    """Hands one transport's events to the agent, and only while that transport is the
    agent's current one: after a reload replaced it, the old one's last events (its
    disconnect, late acknowledgements) must not reach the new connection's bookkeeping."""

    def __init__(self, agent: Agent, transport_id: int) -> None:
        self._agent = agent
        self._id = transport_id

    def _current(self) -> bool:
        return self._agent._transport_id == self._id

    def connected(self, session_present: bool) -> None:
        if self._current():
            self._agent.connected(session_present)

    def disconnected(self, reason: str) -> None:
        if self._current():
            self._agent.disconnected(reason)

    def published(self, mid: int, ok: bool) -> None:
        if self._current():
            self._agent.published(mid, ok)

    def message(self, message: IncomingMessage) -> None:
        if self._current():
            self._agent.message(message)

    def taken_over(self, takeover: Takeover, message: str) -> None:
        if self._current():
            self._agent.taken_over(takeover, message)


class Agent(TransportEvents):
    """One running agent.

    Args:
        loaded: the validated config.
        simulate: run on emulated hardware (also ``simulate: true`` in the config).
        notifier: tells systemd about readiness, status, reloads and health.
        clock: the time and whether it is synchronised; default: the system's
            (:func:`agent.clock.clock_from_env`).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        simulate: bool = False,
        notifier: Notifier | None = None,
        clock: ClockSource | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        assert self.config.device_id is not None
        self.device_id = self.config.device_id
        self.topics = Topics.for_device(self.config.mqtt.topic_prefix, self.device_id)
        self.simulate = simulate or self.config.simulate
        self.notifier = notifier or Notifier({})
        #: Stamps read its cached sync state; :meth:`_watch_clock` refreshes it.
        self.clock = watched(clock if clock is not None else clock_from_env())
        #: The sync state the agent last acted on (said, re-stamped).
        self.clock_synced = self.clock.synced()
        self.started_at = self.clock.wall()
        #: Monotonic start and disconnect times: uptime and time offline survive a step.
        self.started_mono = self.clock.monotonic()
        self.disconnected_mono: float | None = None
        self.connected_since: float | None = None
        self.counters: dict[str, int] = {
            "read_errors": 0,
            "connects": 0,
            "reconnects": 0,
            "events": 0,
            "reloads": 0,
        }
        self._transport: Transport | None = None
        self._transport_id = 0
        self._outbox: Outbox | None = None
        self.scheduler: Scheduler | None = None
        self._sampling: asyncio.Task[None] | None = None
        self.outputs: OutputController | None = None
        self.inputs: InputWatcher | None = None
        self.commands: CommandHandler | None = None
        #: The rate per output and the refusal-reply budget, across reloads.
        self.command_limits = CommandLimits(max_rate=self.config.commands.max_rate)
        #: The bounded queue commands wait in to be judged (see agent.commands.gate).
        self.command_gate: CommandGate | None = None
        #: Accepted commands, remembered across reloads and restarts (at most once).
        self.seen_commands = SeenCommands(path=state_dir(self.config.state_dir) / "commands.seen")
        self._tasks: list[asyncio.Task[None]] = []
        self.disconnected_at: float | None = None
        #: Until when the transport waits after a session takeover (unix time), if any.
        self.takeover_until: float | None = None
        #: The last error event: {"ts", "kind", "message"}.
        self.last_error: dict[str, str] | None = None
        #: Readings per sensor, across reloads.
        self.readings: Counter[str] = Counter()
        #: Failed reads per (sensor, kind) of sensors replaced by a reload.
        self.retired_read_errors: Counter[tuple[str, str]] = Counter()
        self.announcer = Announcer(config=self.config, topics=self.topics, publish=self._retain)
        self._http: HealthServer | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._reloading: asyncio.Task[None] | None = None
        #: A reload was requested while one ran: one more follows it (the last wins).
        self._reload_again = False
        #: Events reported before the outbox exists (an output that cannot be opened).
        self._early_events: list[Event] = []
        self._stopping = False
        #: Keys the secrets in ``config_sha256``; read from the state dir at start.
        self._digest_key: bytes | None = None

    @property
    def config_sha256(self) -> str:
        """The running config's fingerprint (``agent.config.digest``): no secret in it."""
        if self._digest_key is None:
            private_dir(state_dir(self.config.state_dir))
            self._digest_key = digest_key(state_dir(self.config.state_dir))
        return config_digest(self.config, self._digest_key)

    @property
    def outbox(self) -> Outbox | None:
        return self._outbox

    @property
    def transport(self) -> Transport | None:
        return self._transport

    @property
    def sampling_running(self) -> bool:
        return self._sampling is not None and not self._sampling.done()

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then publish ``offline`` and release everything."""
        loop = asyncio.get_running_loop()
        self._stop = stop
        hardware = self.hardware = make_hardware(self.config, simulate=self.simulate)
        # Outputs take their initial (or restored) level first: before the buffer is
        # opened (which may take a while after a power cut) and before the broker is tried.
        outputs = self.outputs = OutputController(
            outputs=dict(self.config.outputs),
            hardware=hardware,
            state_file=OutputStateFile(state_dir(self.config.state_dir) / "outputs.json"),
            publish=self._publish_output,
            report=self.report,
            loop=loop,
        )
        outputs.open()
        store = open_store(self.config, self.clock)
        self._digest_key = digest_key(state_dir(self.config.state_dir))
        if store.depth():
            log.info("buffer %s holds %d readings to deliver", store.path, store.depth())
        self._report_store_state(store)
        transport = self._new_transport()
        outbox = self._outbox = Outbox(
            store=store,
            sender=transport,
            durability=self.config.buffer.durability,
            report=self.report,
            defer=loop.call_soon,
            time_source=self.clock,
        )
        if self.clock_synced:
            # Readings buffered in this boot before the sync by an agent that stopped
            # before it saw the sync (a restart): re-stamped now.
            restamped = outbox.clock_synced(stamp(self.clock))
            if restamped:
                log.info("re-stamped %d buffered readings sampled before the sync", restamped)
        for event in self._early_events:
            self._send_event(event)
        self._early_events.clear()
        self.inputs = self._open_inputs()
        # An unsynchronised clock may be anywhere: nothing is forgotten by it (the
        # handler forgets by its trusted time, CONTRACT 14).
        self.seen_commands.open(self.clock.wall() if self.clock.synced() else None)
        self.commands = self._command_handler()
        gate = self.command_gate = CommandGate(
            is_command=lambda topic: self.topics.set_topic_level(topic) is not None,
            output_of=self._configured_output,
            handle=self._judge_command,
            drop=self._drop_command,
            queue_size=self.config.commands.queue_size,
        )
        self._start_sampling()
        transport.start()
        self._background(self._publish_health(), "health")
        self._background(outbox.run(), "replay")
        self._background(gate.run(), "commands")
        self._background(self._keep_status(), "status")
        self._background(self._watch_clock(), "clock")
        self._background(self.notifier.run_watchdog(self._healthy), "watchdog")
        mqtt = self.config.mqtt
        log.info(
            "edge-agent %s started: device %s, %d sensors, %d outputs, %d inputs, broker %s:%d%s",
            __version__,
            self.device_id,
            len(self.config.sensors),
            len(self.config.outputs),
            len(self.config.inputs),
            mqtt.host,
            mqtt.effective_port,
            " (simulated hardware)" if self.simulate else "",
        )
        await self._start_http()
        self.notifier.ready(self.status_line())
        try:
            await stop.wait()
            if self._failure is not None:
                raise self._failure
        finally:
            self._stopping = True
            self.notifier.stopping()
            if self._reloading is not None:
                self._reloading.cancel()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Commands still waiting are judged (and answered) now; later ones at once.
            gate.judge_waiting(gate.depth())
            await self._stop_sampling()
            if self._http is not None:
                await self._http.close()
            outputs.shutdown()
            # Nothing new is read now. Give what is in flight a moment to be acknowledged,
            # then stop the transport (the acknowledgements it still hands over run during
            # the await), and keep whatever is still unacknowledged in the store.
            await outbox.drain(DRAIN_ON_STOP_S)
            current, status = self._transport, self.topics.status
            assert current is not None
            await current.stop(last=(status, OFFLINE))
            await asyncio.sleep(0)
            outbox.close()
            self.seen_commands.close()
            outputs.close()
            self.inputs.close()
            hardware.close()
            log.info("edge-agent stopped")

    def _report_store_state(self, store: Buffer) -> None:
        """Events for a buffer that was moved aside, or cannot be used, at start."""
        disk = store.disk
        if disk is not None and disk.recovered_from is not None:
            self.report(
                Event(
                    "buffer_recovered",
                    f"the buffer {disk.path} was unusable ({disk.recovered_reason}); moved to"
                    f" {disk.recovered_from} and started empty; seq starts again at 1 under"
                    f" the new epoch {disk.sequences.epoch}",
                    level="error",
                    fields={
                        "reason": disk.recovered_reason,
                        "moved_to": str(disk.recovered_from),
                        "epoch": disk.sequences.epoch,
                    },
                )
            )
        if store.fault is not None:
            fault = store.fault
            self.report(
                Event(
                    "storage_failed",
                    f"the buffer {fault.path} cannot be used ({fault.reason}: {fault.detail});"
                    f" running without durability, up to {store.memory_max_messages}"
                    " readings in memory",
                    level="error",
                    fields={"reason": fault.reason, "path": str(fault.path)},
                )
            )

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` until the agent stops; if it fails, the agent stops with its error."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
        self._failure = task.exception()
        if self._stop is not None:
            self._stop.set()

    def _new_transport(self) -> Transport:
        """A transport for the current config, subscribed to the commands, not started."""
        mqtt = self.config.mqtt
        self._transport_id += 1
        transport = self._transport = Transport(
            settings=mqtt,
            client_id=mqtt.client_id or f"edge-agent-{self.device_id}",
            will=Will(self.topics.status, OFFLINE),
            events=_Link(self, self._transport_id),
            loop=asyncio.get_running_loop(),
        )
        transport.subscribe(self.topics.command_filter, qos=1)
        for topic in self.announcer.subscriptions():
            transport.subscribe(topic, qos=1)
        return transport

    def _open_inputs(self) -> InputWatcher:
        inputs = InputWatcher(
            inputs=dict(self.config.inputs),
            hardware=self.hardware,
            publish=self._publish_input,
            report=self.report,
            loop=asyncio.get_running_loop(),
        )
        inputs.open()
        return inputs

    def _command_handler(self) -> CommandHandler:
        assert self.outputs is not None
        commands = self.config.commands
        auth = None
        if commands.auth is not None:
            try:
                keys = load_keys(self.config)
            except ConfigError as e:  # a key file changed since the config was checked
                log.error("cannot read the command keys; refusing signed commands:\n%s", e)
                keys = {}
            auth = CommandAuth(
                keys=keys,
                required=commands.auth.required,
                outputs={n: o.auth for n, o in self.config.outputs.items() if o.auth is not None},
            )
        return CommandHandler(
            topics=self.topics,
            outputs=self.outputs,
            max_age=commands.max_age,
            max_skew=commands.max_skew,
            send=self._send_reply,
            reserved_prefixes=(self.config.mqtt.topic_prefix, self.config.homeassistant.prefix),
            response_prefix=commands.response_prefix,
            seen=self.seen_commands,
            auth=auth,
            report=self.report,
            time_source=self.clock,
            limits=self.command_limits,
        )

    def _judge_command(self, message: IncomingMessage) -> None:
        """The gate's worker: judged by the handler of the config in force now."""
        if self.commands is not None:
            self.commands.handle(message)

    def _configured_output(self, topic: str) -> str | None:
        """The configured output that set topic ``topic`` names, or None."""
        name = self.topics.set_topic_level(topic)
        return name if name is not None and name in self.config.outputs else None

    def _drop_command(self, message: IncomingMessage) -> None:
        """A command that found the gate's queue full: counted, not answered."""
        name = self.topics.set_topic_level(message.topic)
        if self.commands is not None and name is not None:
            self.commands.drop(name, "the command queue is full")

    def _start_sampling(self, chains: dict[str, SensorChain] | None = None) -> None:
        """Sample every configured sensor; ``chains`` are filter chains to carry over."""
        kept = chains or {}
        slots = [
            SensorSlot(
                name=name,
                spec=spec_of(options),
                options=options,
                open=sensor_opener(options, self.hardware),
                chain=kept.get(name) or SensorChain.for_sensor(spec_of(options), options),
            )
            for name, options in self.config.sensors.items()
        ]
        assert self._outbox is not None
        self.scheduler = Scheduler(
            slots=slots,
            emit=self._publish_reading,
            report=self.report,
            sequence=self._outbox.store.sequences,
            time_source=self.clock,
        )
        self._sampling = asyncio.create_task(self.scheduler.run(), name="scheduler")
        self._sampling.add_done_callback(self._task_done)

    async def _stop_sampling(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampling
            self._sampling = None
        if self.scheduler is not None:
            self.scheduler.close()
            for slot in self.scheduler.slots:
                for kind, n in slot.error_kinds.items():
                    self.retired_read_errors[(slot.name, kind)] += n
                if slot.driver is not None:
                    slot.driver.close()
            self.scheduler = None

    # -- health for systemd ------------------------------------------------------------
    def _healthy(self) -> bool:
        """Whether systemd's watchdog may be fed: the loop runs (this is called from it),
        sampling runs, and the MQTT transport's task is alive."""
        transport = self._transport
        return (
            self._failure is None
            and self._sampling is not None
            and not self._sampling.done()
            and transport is not None
            and transport.alive
        )

    def status_line(self) -> str:
        """``systemctl status``'s one line: connection, sensors, queue."""
        mqtt = self.config.mqtt
        failed = [s.name for s in self.scheduler.slots if s.failed] if self.scheduler else []
        return status_line(
            connected=self._transport is not None and self._transport.connected,
            host=mqtt.host,
            port=mqtt.effective_port,
            sensors_ok=len(self.config.sensors) - len(failed),
            sensors_failed=failed,
            queue_depth=self._outbox.queue_depth() if self._outbox is not None else 0,
        )

    async def _watch_clock(self) -> None:
        """Follow the kernel's clock sync state; say when it changes (CONTRACT 14)."""
        if not self.clock_synced:
            log.warning(
                "the system clock is not synchronised: readings carry clock_synced false"
                " until it is, and are re-stamped then"
            )
        while True:
            await asyncio.sleep(self.clock.poll_s)
            synced = self.clock.refresh()
            if synced != self.clock_synced:
                self.clock_changed(synced)

    def clock_changed(self, synced: bool) -> None:
        """The clock became synchronised (``synced``) or lost its synchronisation."""
        self.clock_synced = synced
        if synced:
            restamped = 0
            if self._outbox is not None:
                restamped = self._outbox.clock_synced(stamp(self.clock))
            self.report(
                Event(
                    "clock_synced",
                    "the system clock is synchronised; readings are stamped with it again,"
                    f" and {restamped} readings sampled before were re-stamped",
                    fields={"clock_synced": True, "restamped": restamped},
                )
            )
        else:
            if self._outbox is not None:
                self._outbox.clock_unsynced()
            self.report(
                Event(
                    "clock_unsynced",
                    "the system clock lost its synchronisation; readings carry"
                    " clock_synced false until it is back",
                    level="warning",
                    fields={"clock_synced": False},
                )
            )
        if self._transport is not None:
            self._publish(self.topics.info, encode_json(self.info()), qos=1, retain=True)

    async def _keep_status(self) -> None:
        """Refresh systemd's status line (the queue depth moves while disconnected)."""
        if not self.notifier.enabled:
            return
        while True:
            connected = self._transport is not None and self._transport.connected
            await asyncio.sleep(STATUS_EVERY_S if not connected else 6 * STATUS_EVERY_S)
            self.notifier.status(self.status_line())

    # -- reload (SIGHUP) ---------------------------------------------------------------
    def request_reload(self) -> None:
        """Re-read the config file and apply it (from a SIGHUP handler, on the loop).

        Requests coalesce: one reload runs at a time, and any number of requests during
        it make exactly one more reload afterwards, which reads the file as it is then
        (the last request wins), at most one a second. A storm of 500 SIGHUPs in 5 s is
        six reloads, not 500.
        """
        if self._stopping:
            return
        if self._reloading is not None and not self._reloading.done():
            if not self._reload_again:
                log.info("a reload is running; one more will follow it")
            self._reload_again = True
            return
        self._reloading = asyncio.create_task(self._reload_until_current(), name="reload")

    async def _reload_until_current(self) -> None:
        while True:
            self._reload_again = False
            started = time.monotonic()
            await self.reload()
            if not self._reload_again or self._stopping:
                return
            # The follow-up reload waits out the rest of a second: a storm of requests is
            # then one reload a second at most, each reading the file as it is by then.
            await asyncio.sleep(max(RELOAD_MIN_INTERVAL_S - (time.monotonic() - started), 0))

    async def reload(self) -> bool:
        """Load the config file again. An invalid one is reported and the running config
        is kept; a valid one is applied without losing buffered readings.

        Returns:
            Whether the new config is now running.
        """
        self.notifier.reloading()
        try:
            try:
                # Off the loop: a slow disk or a large file must not stall readings, health
                # and the MQTT keepalive (the file is size-limited and regular, see load).
                loaded = await asyncio.get_running_loop().run_in_executor(
                    None, load_config, self.loaded.path
                )
            except ConfigError as e:
                log.error("reload refused; still running the previous config:\n%s", e)
                self.report(
                    Event(
                        "config_rejected",
                        f"{self.loaded.path} has {len(e.problems)} problem(s); "
                        "still running the previous config",
                        level="error",
                        fields={"problems": [str(p) for p in e.problems]},
                    )
                )
                return False
            except Exception as e:  # a parser bug must not end reloads for good
                log.exception("reload refused: reading %s failed", self.loaded.path)
                self.report(
                    Event(
                        "config_rejected",
                        f"{self.loaded.path} could not be read ({type(e).__name__}: {e}); "
                        "still running the previous config",
                        level="error",
                        fields={"problems": [f"{type(e).__name__}: {e}"]},
                    )
                )
                return False
            from agent.runtime.reload import plan_reload

            plan = plan_reload(self.config, loaded.config)
            if plan.restart_needed:
                self.report(
                    Event(
                        "config_rejected",
                        f"changing {', '.join(plan.restart_needed)} needs a restart "
                        "(systemctl restart edge-agent); still running the previous config",
                        level="error",
                        fields={"restart_needed": list(plan.restart_needed)},
                    )
                )
                return False
            await self._apply(loaded, plan)
            self.counters["reloads"] += 1
            self.report(
                Event(
                    "config_reloaded",
                    f"{loaded.path} applied",
                    fields={"config_sha256": self.config_sha256},
                )
            )
            return True
        finally:
            self.notifier.ready(self.status_line())

    async def _apply(self, loaded: LoadedConfig, plan: ReloadPlan) -> None:
        old_topics = self.topics
        self.loaded, self.config = loaded, loaded.config
        assert self.config.device_id is not None
        self.device_id = self.config.device_id
        self.topics = Topics.for_device(self.config.mqtt.topic_prefix, self.device_id)
        add_secrets(config_secrets(self.config))
        if plan.log_level:
            logging.getLogger().setLevel(self.config.log_level.upper())
        if plan.sensors:
            # Sensors whose config did not change keep their filter state (windows,
            # averages, what was last published), so a reload neither restarts a
            # median window nor publishes an unchanged value early.
            chains = {
                slot.name: slot.chain
                for slot in (self.scheduler.slots if self.scheduler else [])
                if self.config.sensors.get(slot.name) == slot.options
            }
            await self._stop_sampling()
            self._emulate(self.config.sensors.values())
            self._start_sampling(chains)
        if plan.outputs:
            assert self.outputs is not None
            self._emulate(self.config.outputs.values())
            for name in self.outputs.reconfigure(dict(self.config.outputs)):
                self._publish(old_topics.output_state(name), b"", qos=1, retain=True)
            self.outputs.publish_all()
            if self.connected_since is None:
                self.outputs.disconnected()  # failsafe timers for new outputs too
        if plan.inputs:
            assert self.inputs is not None
            self.inputs.close()
            for name in set(self.inputs.states) - set(self.config.inputs):
                self._publish(old_topics.input(name), b"", qos=1, retain=True)
            self._emulate(self.config.inputs.values())
            self.inputs = self._open_inputs()
            self.inputs.publish_all()
        previous = self.commands
        self.command_limits.reconfigure(max_rate=self.config.commands.max_rate)
        self.command_limits.forget(set(self.config.outputs))
        if self.command_gate is not None:
            self.command_gate.queue_size = self.config.commands.queue_size
        self.commands = self._command_handler()
        if previous is not None:
            self.commands.carry_over(previous)
        self.announcer.reconfigure(self.config, self.topics)
        if plan.mqtt:
            await self._reconnect(old_topics)
        else:
            self._publish(self.topics.info, encode_json(self.info()), qos=1, retain=True)

    def _emulate(self, options: Iterable[Options]) -> None:
        """Under simulation, give newly configured devices their emulators."""
        if isinstance(self.hardware, SimulatedHardware):
            for item in options:
                spec_of(item).emulate(item, self.hardware)

    async def _reconnect(self, old_topics: Topics) -> None:
        """Replace the connection: ``offline`` on the old base, then a new transport."""
        old = self._transport
        assert old is not None and self._outbox is not None and self.outputs is not None
        self._transport_id += 1  # the old transport's events are ignored from here on
        log.info("reconnecting: the mqtt settings or the device id changed")
        self.connected_since = None
        self._outbox.disconnected()  # its unacknowledged readings go to the store
        self.outputs.disconnected()
        await old.stop(last=(old_topics.status, OFFLINE))
        transport = self._new_transport()
        self._outbox.use_sender(transport)
        transport.start()

    # -- transport events (on the event loop, from the current transport only) ---------
    def connected(self, session_present: bool) -> None:
        self.connected_since = time.time()
        self.counters["connects"] += 1
        self.counters["reconnects"] = self.counters["connects"] - 1
        log.info("connected to %s:%d", self.config.mqtt.host, self.config.mqtt.effective_port)
        self._publish(self.topics.status, ONLINE, qos=1, retain=True)
        self._publish(self.topics.info, encode_json(self.info()), qos=1, retain=True)
        if self.outputs is not None:
            self.outputs.connected()
            self.outputs.publish_all()
        if self.inputs is not None:
            self.inputs.publish_all()
        self.announcer.announce()
        if self._outbox is not None:
            self._outbox.connected()  # then queued events, then the replay
        self.notifier.status(self.status_line())

    def disconnected(self, reason: str) -> None:
        self.connected_since = None
        self.disconnected_at = time.time()
        self.disconnected_mono = self.clock.monotonic()
        if self._stopping:
            log.info("disconnected from the broker")
        else:
            log.warning("disconnected from the broker (%s); reconnecting", reason)
        if self.outputs is not None:
            self.outputs.disconnected()
        if self._outbox is not None:
            self._outbox.disconnected()
        self.notifier.status(self.status_line())

    def published(self, mid: int, ok: bool) -> None:
        if self._outbox is not None:
            self._outbox.published(mid, ok)

    def taken_over(self, takeover: Takeover, message: str) -> None:
        """Another client has our client id: said once per episode, as an error event."""
        self.takeover_until = time.time() + takeover.backoff_s
        if takeover.first:
            self.report(
                Event(
                    "session_taken_over",
                    message,
                    level="error",
                    fields={
                        "client_id": self._transport.client_id if self._transport else None,
                        "certain": takeover.certain,
                        "backoff_s": round(takeover.backoff_s, 1),
                    },
                )
            )

    def message(self, message: IncomingMessage) -> None:
        if self.announcer.handle(message):
            return
        if self.command_gate is not None and not self._stopping:
            self.command_gate.take(message)
        elif self.commands is not None:  # stopping: the gate's worker is gone
            self.commands.handle(message)

    # -- publishing ------------------------------------------------------------------
    def _publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, now: bool = False
    ) -> None:
        """Publish on the current connection, if any; ``now``: written at once, not with
        the loop pass's other publishes."""
        assert self._transport is not None
        self._transport.publish(topic, payload, qos=qos, retain=retain, now=now)

    def _publish_output(self, name: str, state: OutputState) -> None:
        self._publish(self.topics.output_state(name), state.encode(), qos=1, retain=True, now=True)

    def _publish_input(self, name: str, state: InputState) -> None:
        self._publish(self.topics.input(name), state.encode(), qos=1, retain=True)

    def _send_reply(self, reply: Reply) -> None:
        assert self._transport is not None
        try:
            self._transport.publish(
                reply.topic,
                reply.payload,
                qos=1,
                retain=False,
                correlation_data=reply.correlation_data,
            )
        except ValueError as e:  # a response topic paho refuses
            log.warning("cannot reply on %r: %s", reply.topic, e)

    def _publish_reading(self, reading: Reading, slot: SensorSlot) -> None:
        assert self._outbox is not None
        self.readings[reading.sensor] += 1
        self._outbox.submit(
            reading,
            topic=self.topics.sensor(reading.sensor),
            qos=slot.options.qos,
            retain=slot.options.retain,
        )

    def report(self, event: Event) -> None:
        """Log an event and publish it on ``<base>/event``."""
        level = getattr(logging, event.level.upper())
        log.log(
            level, "%s: %s", event.kind, event.message, extra=event_fields(event.kind, event.fields)
        )
        if event.kind in ("read_error", "sensor_failed"):
            self.counters["read_errors"] += 1
        if event.kind in ("sensor_failed", "sensor_recovered"):
            self.notifier.status(self.status_line())
        if event.level == "error":
            self.last_error = {"ts": iso_ts(event.ts), "kind": event.kind, "message": event.message}
        self.counters["events"] += 1
        if self._outbox is None:
            self._early_events.append(event)
            return
        self._send_event(event)

    def _send_event(self, event: Event) -> None:
        assert self._outbox is not None
        body = {
            "ts": iso_ts(event.ts),
            "level": event.level,
            "kind": event.kind,
            "message": event.message,
            **event.fields,
        }
        self._outbox.send_event(self.topics.event, encode_json(body))

    async def _publish_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.publish_interval)
            if self._transport is not None and self._transport.connected:
                self._publish(self.topics.health, encode_json(self.health()), qos=0, retain=True)

    def info(self) -> dict[str, Any]:
        """The ``<base>/info`` payload."""
        units: dict[str, str] = {}
        sensors = {}
        for name, options in self.config.sensors.items():
            spec = spec_of(options)
            quantities = sensor_quantities(spec, options)
            for quantity, q in quantities.items():
                units.setdefault(quantity, q.unit)
            sensors[name] = {
                "driver": spec.name,
                "interval_s": options.interval,
                "quantities": list(quantities),
            }
        return {
            "version": __version__,
            "device_id": self.device_id,
            "hostname": socket.gethostname(),
            "started_at": iso_ts(self.started_at),
            "config_sha256": self.config_sha256,
            "simulated": self.simulate,
            "clock_synced": self.clock_synced,
            "sensors": sensors,
            "outputs": {n: {"driver": spec_of(o).name} for n, o in self.config.outputs.items()},
            "inputs": {n: {"driver": spec_of(o).name} for n, o in self.config.inputs.items()},
            "units": units,
        }

    def health(self) -> dict[str, Any]:
        """The ``<base>/health`` payload."""
        return health_payload(self)

    def _retain(self, topic: str, payload: bytes) -> None:
        self._publish(topic, payload, qos=1, retain=True)

    # -- the local HTTP endpoint --------------------------------------------------------
    async def _start_http(self) -> None:
        listen = self.config.health.listen
        if listen is None:
            return
        # prometheus-client is imported only for an agent that serves /metrics.
        from agent.observability.http import HealthServer, Response
        from agent.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
        from agent.observability.metrics import Metrics

        metrics = Metrics(lambda: snapshot(self))

        def healthz_response() -> Response:
            ok, body = healthz(self)
            return Response(200 if ok else 503, encode_json(body))

        server = HealthServer(
            listen,
            {
                "/healthz": healthz_response,
                "/metrics": lambda: Response(200, metrics.render(), METRICS_CONTENT_TYPE),
            },
        )
        try:
            await server.start()
        except OSError as e:
            self.report(
                Event(
                    "health_endpoint_failed",
                    f"cannot serve /healthz on {listen}: {e.strerror or e}",
                    level="error",
                )
            )
            return
        self._http = server
