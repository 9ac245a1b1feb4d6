"""B1-B9: how each measure is taken (RESULTS.md repeats this in prose).

Each measure runs its contenders in alternation (the order rotates every trial) on a
private mosquitto per contender, and returns table rows: one value per trial per contender.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.buffer.store import MessageStore, QueuedMessage
from agent.demo.broker import PrivateBroker
from agent.mqtt.payloads import Reading
from tests.bench.contenders import (
    Contender,
    Workload,
    agent_process,
    bme280s,
    ours_config,
)
from tests.bench.harness import (
    BENCH,
    PYTHON,
    CpuLimit,
    FirstMessage,
    Proc,
    ProcSample,
    Series,
    Watcher,
    percentile,
    scratch,
    sleep_until,
)

#: What a B4 reading carries: the values of the simulated ``system`` sensor.
SYSTEM_VALUES = {
    "soc_temperature": 50.517,
    "load_1m": 1.27,
    "memory_used": 26.6,
    "disk_used": 68.7,
    "uptime": 3600.0,
}
BME280_VALUES = {"temperature": 21.53, "humidity": 40.213, "pressure": 1013.249}
#: Seconds to wait for a contender to come online.
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Plan:
    """Trial counts and windows; ``quick`` shrinks them all for a smoke run."""

    quick: bool
    b1_trials: int
    idle_trials: int
    idle_window_s: float
    idle_warmup_s: float
    wake_trials: int
    wake_window_s: float
    b3_trials: int
    b3_commands: int  # per mode per trial
    b4_trials: int
    b4_window_s: float
    b5_trials: int
    b5_readings: int
    b6_trials: int
    b6_window_s: float
    limited_trials: int  # B1 at the CPU limit
    limited_commands: int  # B3 at the CPU limit, per mode

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 2, 1, 5, 2, 1, 5, 1, 50, 1, 2, 1, 5000, 1, 3, 1, 30)
        return cls(False, 5, 2, 60, 5, 2, 30, 2, 500, 2, 5, 2, 50_000, 2, 15, 3, 200)


@dataclass
class Row:
    """One line of the table."""

    id: str
    measure: str
    target: str
    cells: dict[str, Series | str]  # contender key -> values, or why there are none
    #: Whether ours meets the target, given every column's medians; None: not judged.
    check: Callable[[dict[str, float]], bool | None] | None = None
    digits: int = 2
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    plan: Plan
    contenders: list[Contender]
    #: One mosquitto per contender, Debian's defaults (Nagle's algorithm on its side).
    brokers: dict[str, PrivateBroker]
    unavailable: dict[str, str]  # contender key -> why its column is empty
    #: One more per contender with ``set_tcp_nodelay true``, for B3.
    nodelay_brokers: dict[str, PrivateBroker] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def rotation(self, trial: int, keys: tuple[str, ...] | None = None) -> list[Contender]:
        chosen = [c for c in self.contenders if keys is None or c.key in keys]
        k = trial % len(chosen) if chosen else 0
        return chosen[k:] + chosen[:k]

    def port(self, contender: Contender, *, nodelay: bool = False) -> int:
        brokers = self.nodelay_brokers if nodelay else self.brokers
        return brokers[contender.key].port

    def has(self, key: str) -> bool:
        return any(c.key == key for c in self.contenders)


def base_topic(measure: str, key: str) -> str:
    """A topic base (and device id) no other trial uses."""
    return f"edge/{measure}-{key}-{uuid.uuid4().hex[:8]}"


def _fail(proc: Proc, what: str) -> RuntimeError:
    return RuntimeError(f"{proc.name}: {what}; its log ends:\n{proc.log()}")


@contextlib.contextmanager
def running(
    ctx: Context,
    contender: Contender,
    workload: Workload,
    measure: str,
    *,
    nodelay: bool = False,
    limit: CpuLimit | None = None,
) -> Iterator[tuple[Proc, str, float]]:
    """Start ``contender`` (in ``limit``'s cgroup, if given) and wait for it to be online:
    (process, base, online time)."""
    port = ctx.port(contender, nodelay=nodelay)
    base = base_topic(measure, contender.key)
    waiter = FirstMessage(f"{base}/status", contender.online)
    timeout = START_TIMEOUT_S if limit is None else START_TIMEOUT_S * 100 / limit.percent / 4
    with Watcher(port, [f"{base}/status"], waiter):
        work = scratch(f"{measure}-")
        proc = contender.start(workload, port=port, base=base, work=work, limit=limit)
        try:
            try:
                t_online = waiter.wait(timeout)
            except TimeoutError as e:
                raise _fail(proc, str(e)) from None
            yield proc, base, t_online
        finally:
            proc.stop()


def _cells(ctx: Context, values: dict[str, list[float]]) -> dict[str, Series | str]:
    cells: dict[str, Series | str] = {k: Series(v) for k, v in values.items()}
    for key, why in ctx.unavailable.items():
        cells.setdefault(key, why)
    return cells


def _ratio_at_most(limit: float, other: str) -> Callable[[dict[str, float]], bool | None]:
    def check(m: dict[str, float]) -> bool | None:
        if "ours" not in m or other not in m:
            return None
        return m["ours"] <= limit * m[other]

    return check


def _both(
    a: Callable[[dict[str, float]], bool | None], b: Callable[[dict[str, float]], bool | None]
) -> Callable[[dict[str, float]], bool | None]:
    def check(m: dict[str, float]) -> bool | None:
        results = [r for r in (a(m), b(m)) if r is not None]
        return all(results) if results else None

    return check


def _at_most(limit: float) -> Callable[[dict[str, float]], bool | None]:
    return lambda m: m["ours"] <= limit if "ours" in m else None


# -- B1 ---------------------------------------------------------------------------------


def b1_startup(ctx: Context) -> list[Row]:
    """Time from spawning the process to the retained ``online`` (mqtt-io: ``running``)
    arriving at a subscriber that was subscribed before the start."""
    values: dict[str, list[float]] = {c.key: [] for c in ctx.contenders}
    for c in ctx.contenders:  # unmeasured: writes bytecode caches, warms the page cache
        with running(ctx, c, "idle", "b1"):
            pass
    for trial in range(ctx.plan.b1_trials):
        for c in ctx.rotation(trial):
            with running(ctx, c, "idle", "b1") as (proc, _base, t_online):
                values[c.key].append((t_online - proc.t_start) * 1000)
    return [
        Row(
            "B1",
            "start → retained `online` (ms)",
            "≤ 0.2 × mqtt-io",
            _cells(ctx, values),
            _ratio_at_most(0.2, "mqttio"),
            digits=0,
        )
    ]


# -- B2, B7, B8: idle processes side by side ----------------------------------------------


@dataclass
class IdleTrial:
    rss_mib: float
    cpu_pct: float
    wakeups_s: float
    write_bytes_h: float
    thread_wakeups_s: list[float]


def _idle(
    ctx: Context, workload: Workload, trials: int, window_s: float
) -> dict[str, list[IdleTrial]]:
    """All contenders at once (each on its own broker), idle: one window of /proc deltas
    per trial after a warm-up. Their counters are per process, so running them side by
    side costs each nothing and gives every contender the same machine conditions."""
    out: dict[str, list[IdleTrial]] = {c.key: [] for c in ctx.contenders}
    for trial in range(trials):
        with contextlib.ExitStack() as stack:
            procs = {
                c.key: stack.enter_context(running(ctx, c, workload, f"idle-{workload}"))[0]
                for c in ctx.rotation(trial)
            }
            time.sleep(ctx.plan.idle_warmup_s)
            first: dict[str, ProcSample] = {k: p.sample() for k, p in procs.items()}
            time.sleep(window_s)
            last: dict[str, ProcSample] = {k: p.sample() for k, p in procs.items()}
            for key, proc in procs.items():
                if not proc.alive():
                    raise _fail(proc, "exited during the window")
                a, b = first[key], last[key]
                dt = b.t - a.t
                per_thread = sorted(
                    ((n - a.threads.get(tid, 0)) / dt for tid, n in b.threads.items()),
                    reverse=True,
                )
                out[key].append(
                    IdleTrial(
                        rss_mib=b.rss_kb / 1024,
                        cpu_pct=(b.cpu_s - a.cpu_s) / dt * 100,
                        wakeups_s=(b.wakeups - a.wakeups) / dt,
                        write_bytes_h=(b.write_bytes - a.write_bytes) / dt * 3600,
                        thread_wakeups_s=per_thread,
                    )
                )
    return out


def b2_b7_idle(ctx: Context) -> list[Row]:
    """B2 (RSS at the end of the window, CPU % over it) and B7 (``write_bytes`` over it,
    per hour) on the idle workload: 4 sensors at 1 s, 4 outputs, 2 inputs."""
    plan = ctx.plan
    runs = _idle(ctx, "idle", plan.idle_trials, plan.idle_window_s)

    def pick(f: Callable[[IdleTrial], float]) -> dict[str, list[float]]:
        return {k: [f(t) for t in v] for k, v in runs.items()}

    window = f"{plan.idle_window_s:g} s window"
    return [
        Row(
            "B2",
            f"idle RSS (MiB), end of a {window}",
            "≤ 1.3 × paho floor",
            _cells(ctx, pick(lambda t: t.rss_mib)),
            _ratio_at_most(1.3, "floor"),
            digits=1,
        ),
        Row(
            "B2",
            f"idle CPU (% of one core) over a {window}",
            "≤ 0.5 × mqtt-io and ≤ 3 × paho floor",
            _cells(ctx, pick(lambda t: t.cpu_pct)),
            _both(_ratio_at_most(0.5, "mqttio"), _ratio_at_most(3.0, "floor")),
            digits=2,
        ),
        Row(
            "B7",
            f"disk writes while connected (KiB/h, `write_bytes` over the {window} x 3600/window)",
            "≈ 0 beyond state changes (≤ 64 KiB/h)",
            _cells(ctx, pick(lambda t: t.write_bytes_h / 1024)),
            _at_most(64),
            digits=0,
        ),
    ]


def b8_wakeups(ctx: Context) -> list[Row]:
    """Voluntary context switches summed over every thread, per second, idle with one
    sensor at 60 s; also each of ours' threads, busiest first, as a note."""
    plan = ctx.plan
    runs = _idle(ctx, "one", plan.wake_trials, plan.wake_window_s)
    row = Row(
        "B8",
        f"wake-ups/s idle, one sensor at 60 s ({plan.wake_window_s:g} s window)",
        "≤ 1 /s",
        _cells(ctx, {k: [t.wakeups_s for t in v] for k, v in runs.items()}),
        _at_most(1.0),
        digits=2,
    )
    for key, trials in runs.items():
        for t in trials:
            threads = ", ".join(f"{x:.2f}" for x in t.thread_wakeups_s)
            row.notes.append(f"B8 {key}: wake-ups/s per thread: {threads}")
    return [row]


# -- B3 ---------------------------------------------------------------------------------


class _Echoes:
    """Matches each state message to the oldest unanswered command of its output."""

    def __init__(self, contender: Contender) -> None:
        self.contender = contender
        self.pending: dict[str, deque[tuple[float, bool]]] = {}
        self.rtts: list[float] = []
        self.mismatched = 0
        self.unexpected = 0
        self.cond = threading.Condition()

    def expect(self, output: str, on: bool) -> float:
        with self.cond:
            t = time.monotonic()
            self.pending.setdefault(output, deque()).append((t, on))
            return t

    def __call__(self, topic: str, payload: bytes, retained: bool, t: float) -> None:
        if retained:
            return
        try:
            output, on = self.contender.parse_state(topic, payload)
        except (ValueError, KeyError):
            return
        with self.cond:
            queue = self.pending.get(output)
            if not queue:
                self.unexpected += 1
                return
            sent, expected = queue.popleft()
            self.rtts.append((t - sent) * 1000)
            self.mismatched += on != expected
            self.cond.notify_all()

    def wait_all(self, timeout: float = 2.0) -> int:
        """Wait until nothing is pending; the number given up on."""
        with self.cond:
            self.cond.wait_for(lambda: not any(self.pending.values()), timeout)
            lost = sum(len(q) for q in self.pending.values())
            for q in self.pending.values():
                q.clear()
            return lost


def _b3_trial(
    ctx: Context,
    c: Contender,
    n: int,
    *,
    nodelay: bool,
    command_qos: int,
    state_qos: int,
    limit: CpuLimit | None = None,
) -> tuple[list[float], list[float], int]:
    """``n`` sparse commands (each 10 ms after the previous state arrived), then ``n`` in
    bursts of 10 sent 5 ms apart (open loop), 50 ms between bursts. Commands alternate
    on/off per output, round robin over the 4 outputs. One bench client sends them and
    subscribes to the states; the round trip is from just before ``publish()`` to the
    state's arrival on paho's network thread."""
    with running(ctx, c, "idle", "b3", nodelay=nodelay, limit=limit) as (_proc, base, _t):
        echoes = _Echoes(c)
        port = ctx.port(c, nodelay=nodelay)
        with Watcher(port, [c.state_filter(base)], echoes, qos=state_qos) as w:
            # Retained states delivered, start-up settled (under a CPU limit, mqtt-io
            # publishes its outputs' states a few seconds after `running`).
            time.sleep(1.0 if limit is None else 5.0)
            echoes.unexpected = 0  # mqtt-io publishes its outputs' states after `running`
            state: dict[str, bool] = {}
            lost = 0

            def send(i: int) -> None:
                output = f"o{i % 4}"
                on = state[output] = not state.get(output, False)
                topic, payload = c.command(base, output, on)
                echoes.expect(output, on)
                w.publish(topic, payload, qos=command_qos)

            for i in range(n):
                send(i)
                lost += echoes.wait_all()
                time.sleep(0.01)
            sparse, echoes.rtts = echoes.rtts, []
            for burst in range(n // 10):
                t0 = time.monotonic()
                for j in range(10):
                    sleep_until(t0 + j * 0.005)
                    send(burst * 10 + j)
                lost += echoes.wait_all()
                time.sleep(0.05)
            bursts = echoes.rtts
    return sparse, bursts, lost + echoes.mismatched + echoes.unexpected


def b3_commands(ctx: Context) -> list[Row]:
    """On brokers with ``set_tcp_nodelay true`` (QoS 1 commands, states subscribed at
    QoS 0), so that mosquitto's own Nagle delays do not hide the contenders'; then once
    more on mosquitto's defaults (QoS 0 commands, states at QoS 1: the combination in
    which the bench client itself never leaves mosquitto waiting on a delayed ACK)."""
    plan = ctx.plan
    rows: list[Row] = []
    variants = [
        ("", True, 1, 0, plan.b3_trials, plan.b3_commands),
        (", mosquitto defaults", False, 0, 1, 1, max(plan.b3_commands // 5, 50)),
    ]
    for label, nodelay, command_qos, state_qos, trials, n in variants:
        keys = [c.key for c in ctx.contenders]
        stats: dict[str, dict[str, list[float]]] = {
            name: {k: [] for k in keys} for name in ("sp50", "sp99", "bp50", "bp99")
        }
        problems: list[str] = []
        for trial in range(trials):
            for c in ctx.rotation(trial):
                sparse, bursts, lost = _b3_trial(
                    ctx, c, n, nodelay=nodelay, command_qos=command_qos, state_qos=state_qos
                )
                stats["sp50"][c.key].append(percentile(sparse, 50))
                stats["sp99"][c.key].append(percentile(sparse, 99))
                stats["bp50"][c.key].append(percentile(bursts, 50))
                stats["bp99"][c.key].append(percentile(bursts, 99))
                if lost:
                    problems.append(
                        f"B3{label} {c.key} trial {trial}: {lost} commands unanswered or wrong"
                    )
        total = n * trials
        judged = not label
        group = [
            Row("B3", f"command → state{label}, sparse, p50 (ms; {total} commands)",
                "≤ 1.3 × floor" if judged else "—", _cells(ctx, stats["sp50"]),
                _ratio_at_most(1.3, "floor") if judged else None),
            Row("B3", f"command → state{label}, sparse, p99 (ms)", "≤ 3 ms" if judged else "—",
                _cells(ctx, stats["sp99"]), _at_most(3.0) if judged else None),
            Row("B3", f"command → state{label}, bursts 5 ms apart, p50 (ms; {total} commands)",
                "≤ 1.3 × floor" if judged else "—", _cells(ctx, stats["bp50"]),
                _ratio_at_most(1.3, "floor") if judged else None),
            Row("B3", f"command → state{label}, bursts 5 ms apart, p99 (ms)",
                "≤ 3 ms" if judged else "—", _cells(ctx, stats["bp99"]),
                _at_most(3.0) if judged else None),
        ]  # fmt: skip
        group[0].notes.extend(problems)
        rows += group
    return rows


# -- B4 ---------------------------------------------------------------------------------

#: B4 sweeps this many ``system`` sensors at 1 ms: the most the agent sustains is found
#: between them (more sensors offer more readings than it can acknowledge).
B4_SWEEP = (2, 4, 8)
#: A run whose backlog (``queue_depth``) ends above this did not sustain its load.
B4_BACKLOG = 1000


@dataclass
class _Progress:
    """(time, acknowledged, readings, queue depth, process CPU s) samples of a publisher."""

    samples: list[tuple[float, int, int, int, float]] = field(default_factory=list)

    def rate(self, start: float, end: float) -> tuple[float, float, float, int]:
        """Acknowledged/s, CPU ms per 1000 acknowledged, readings/s, and the backlog at
        the end, between ``start`` and ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            raise RuntimeError(f"only {len(inside)} progress samples in the window")
        (t0, a0, r0, _, c0), (t1, a1, r1, q1, c1) = inside[0], inside[-1]
        if a1 <= a0:
            raise RuntimeError("nothing was acknowledged in the window")
        dt = t1 - t0
        return (a1 - a0) / dt, (c1 - c0) * 1000 / (a1 - a0) * 1000, (r1 - r0) / dt, q1


def _b4_ours(ctx: Context, c: Contender, qos: int, sensors: int) -> tuple[float, float, float, int]:
    port = ctx.port(c)
    base = base_topic("b4", "ours")
    work = scratch("b4-")
    config = ours_config(
        work / "agent.yaml",
        port=port,
        device_id=base.split("/", 1)[1],
        sensors="".join(
            f"  s{i}: {{driver: system, interval: 1ms, qos: {qos}}}\n" for i in range(sensors)
        ),
        extra="health:\n  publish_interval: 1s\n",
    )
    progress = _Progress()
    online = FirstMessage(f"{base}/status", b"online")
    proc: Proc | None = None

    def on_message(topic: str, payload: bytes, retained: bool, t: float) -> None:
        online(topic, payload, retained, t)
        if topic.endswith("/health") and proc is not None:
            health = json.loads(payload)
            counters = health["counters"]
            progress.samples.append(
                (t, counters["acked"], counters["readings"], health["queue_depth"],
                 proc.sample().cpu_s)
            )  # fmt: skip

    with Watcher(port, [f"{base}/status", f"{base}/health"], on_message):
        proc = agent_process(config, name=f"ours-b4-qos{qos}")
        try:
            t_online = online.wait(START_TIMEOUT_S)
            start = t_online + 2.0
            end = start + ctx.plan.b4_window_s + 0.5
            sleep_until(end)
            return progress.rate(start, end)
        except (TimeoutError, RuntimeError) as e:
            raise _fail(proc, str(e)) from None
        finally:
            proc.stop()


def _b4_floor(ctx: Context, c: Contender, qos: int) -> tuple[float, float]:
    window = ctx.plan.b4_window_s
    proc = Proc(
        [
            PYTHON,
            str(BENCH / "floor_publish.py"),
            f"--port={ctx.port(c)}",
            f"--base={base_topic('b4', 'floor')}",
            f"--qos={qos}",
            f"--duration={window + 3}",
            "--report=1",
            f"--values={json.dumps(SYSTEM_VALUES)}",
        ],
        name=f"floor-b4-qos{qos}",
        pipe=True,
    )
    progress = _Progress()
    try:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            t, acked = line.split()
            progress.samples.append((float(t), int(acked), int(acked), 0, proc.sample().cpu_s))
        if not progress.samples:
            raise _fail(proc, "reported nothing")
        start = progress.samples[0][0] + 1.0
        rate, cost, _, _ = progress.rate(start, start + window + 0.5)
        return rate, cost
    finally:
        proc.stop()


def b4_throughput(ctx: Context) -> list[Row]:
    """Sustained acknowledged readings/s and CPU ms per 1000 readings.

    Ours: 2, 4 and 8 simulated ``system`` sensors at 1 ms (each offers up to 1000/s),
    counted from the agent's own ``<base>/health`` counters (``acked``, ``readings``,
    ``queue_depth``) published every second, CPU from /proc at each health message. Its
    sustained rate is the best acknowledged rate of a run whose backlog stayed under
    1000. The floor: ``floor_publish.py`` publishing readings of the same shape as fast as
    a window of 20 unacknowledged messages allows, reporting every second.
    """
    plan = ctx.plan
    rows: list[Row] = []
    why = "n/a: sensor intervals are whole seconds ≥ 1; no way to drive it to saturation"
    for qos in (0, 1):
        rate: dict[str, list[float]] = {"ours": [], "floor": []}
        cost: dict[str, list[float]] = {"ours": [], "floor": []}
        sweep: list[str] = []
        for trial in range(plan.b4_trials):
            for c in ctx.rotation(trial, ("ours", "floor")):
                if c.key == "floor":
                    r, ms = _b4_floor(ctx, c, qos)
                    rate["floor"].append(r)
                    cost["floor"].append(ms)
                    continue
                best: tuple[float, float] | None = None
                for sensors in B4_SWEEP:
                    acked, ms, offered, backlog = _b4_ours(ctx, c, qos, sensors)
                    sweep.append(
                        f"trial {trial + 1}, {sensors} sensors: {offered:.0f} readings/s,"
                        f" {acked:.0f} acked/s, backlog {backlog}"
                    )
                    if backlog < B4_BACKLOG and (best is None or acked > best[0]):
                        best = (acked, ms)
                if best is not None:
                    rate["ours"].append(best[0])
                    cost["ours"].append(best[1])
        rate_cells = _cells(ctx, rate)
        cost_cells = _cells(ctx, cost)
        if ctx.has("mqttio"):
            rate_cells["mqttio"] = cost_cells["mqttio"] = why
        rows.append(
            Row("B4", f"sustained readings/s, QoS {qos}", "≥ 0.7 × floor", rate_cells,
                lambda m: m["ours"] >= 0.7 * m["floor"] if "floor" in m else None, digits=0,
                notes=[f"B4 QoS {qos} ours: " + "; ".join(sweep)])
        )  # fmt: skip
        rows.append(
            Row("B4", f"CPU ms per 1000 readings, QoS {qos}", "—", cost_cells, None, digits=0)
        )
    return rows


# -- B5 ---------------------------------------------------------------------------------


class _Drain:
    """Counts distinct replayed readings of sensor ``old`` and live ones of ``live``."""

    def __init__(self, base: str, online: bytes, total: int) -> None:
        self.base = base
        self.online = FirstMessage(f"{base}/status", online)
        self.total = total
        self.seqs: set[int] = set()
        self.done_at: float | None = None
        self.done = threading.Event()
        self.live: list[float] = []

    def __call__(self, topic: str, payload: bytes, retained: bool, t: float) -> None:
        self.online(topic, payload, retained, t)
        if topic.endswith("/sensor/old") and b'"replayed":true' in payload:
            at = payload.index(b'"seq":') + 6
            self.seqs.add(int(payload[at : payload.index(b",", at)]))
            if len(self.seqs) >= self.total and self.done_at is None:
                self.done_at = t
                self.done.set()
        elif topic.endswith("/sensor/live") and b'"replayed"' not in payload:
            self.live.append(t)

    def result(self, proc: Proc, timeout: float) -> tuple[float, float | None]:
        """Readings/s from ``online`` to the last replayed reading; the longest gap (ms)
        between live readings meanwhile (None without a live sensor)."""
        t_online = self.online.wait(START_TIMEOUT_S)
        if not self.done.wait(timeout):
            raise _fail(proc, f"{len(self.seqs)}/{self.total} replayed readings arrived")
        assert self.done_at is not None
        live = [t_online] + [t for t in self.live if t_online <= t <= self.done_at]
        gap = max((b - a for a, b in itertools.pairwise(live)), default=None)
        return self.total / (self.done_at - t_online), None if gap is None else gap * 1000


def _fill(store_path: str, base: str, total: int) -> None:
    """``total`` readings of sensor ``old`` in the agent's buffer, as an outage leaves them."""
    now = time.time()
    store = MessageStore(Path(store_path))
    try:
        batch: list[QueuedMessage] = []
        for i in range(total):
            ts = now - (total - i) * 0.01
            reading = Reading(sensor="old", ts=ts, seq=i + 1, values=BME280_VALUES)
            batch.append(QueuedMessage(f"{base}/sensor/old", reading.encode(), 1, "old", i + 1, ts))
            if len(batch) == 5000:
                store.put(batch)
                batch = []
        store.put(batch)
    finally:
        store.close()


def _b5_ours(ctx: Context, c: Contender, total: int) -> tuple[float, float | None]:
    port = ctx.port(c)
    base = base_topic("b5", "ours")
    work = scratch("b5-")
    config = ours_config(
        work / "agent.yaml",
        port=port,
        device_id=base.split("/", 1)[1],
        sensors="  live: {driver: system, interval: 100ms}\n",
    )
    (work / "state").mkdir(mode=0o700)
    _fill(str(work / "state" / "buffer.db"), base, total)
    drain = _Drain(base, b"online", total)
    with Watcher(port, [f"{base}/status", f"{base}/sensor/#"], drain):
        proc = agent_process(config, name="ours-b5")
        try:
            return drain.result(proc, timeout=total / 200 + 30)
        finally:
            proc.stop()


def _b5_floor(ctx: Context, c: Contender, total: int) -> tuple[float, float | None]:
    port = ctx.port(c)
    base = base_topic("b5", "floor")
    drain = _Drain(base, b"online", total)
    with Watcher(port, [f"{base}/status", f"{base}/sensor/#"], drain):
        proc = Proc(
            [
                PYTHON,
                str(BENCH / "floor_publish.py"),
                f"--port={port}",
                f"--base={base}",
                "--sensor=old",
                "--qos=1",
                f"--count={total}",
                f"--values={json.dumps(BME280_VALUES)}",
            ],
            name="floor-b5",
        )
        try:
            return drain.result(proc, timeout=total / 200 + 30)
        finally:
            proc.stop()


def b5_drain(ctx: Context) -> list[Row]:
    """Ours: its SQLite buffer is filled with N readings (``MessageStore.put``, as an
    outage leaves them), then the agent starts with the broker up and a live ``system``
    sensor at 100 ms. A subscriber (QoS 0) counts distinct replayed ``seq`` from
    ``online`` until all N arrived, and the longest gap between live readings meanwhile.
    The floor: ``floor_publish.py --count N`` (payloads built before connecting), QoS 1,
    window 20, timed the same way."""
    plan = ctx.plan
    rate: dict[str, list[float]] = {"ours": [], "floor": []}
    gaps: dict[str, list[float]] = {"ours": []}
    for trial in range(plan.b5_trials):
        for c in ctx.rotation(trial, ("ours", "floor")):
            if c.key == "ours":
                r, gap = _b5_ours(ctx, c, plan.b5_readings)
                if gap is not None:
                    gaps["ours"].append(gap)
            else:
                r, _ = _b5_floor(ctx, c, plan.b5_readings)
            rate[c.key].append(r)
    rate_cells = _cells(ctx, rate)
    gap_cells = _cells(ctx, gaps)
    if ctx.has("mqttio"):
        rate_cells["mqttio"] = gap_cells["mqttio"] = "n/a: no buffer (nothing is kept offline)"
    if ctx.has("floor"):
        gap_cells["floor"] = "n/a: publishes nothing live"
    return [
        Row(
            "B5",
            f"drain of {plan.b5_readings} buffered readings (readings/s)",
            "≥ 0.8 × floor",
            rate_cells,
            lambda m: m["ours"] >= 0.8 * m["floor"] if "floor" in m else None,
            digits=0,
        ),
        Row(
            "B5",
            "longest gap between live readings (100 ms sensor) during the drain (ms)",
            "live readings keep flowing (≤ 500 ms)",
            gap_cells,
            _at_most(500.0),
            digits=0,
        ),
    ]


# -- B6 ---------------------------------------------------------------------------------


def b6_lateness(ctx: Context) -> list[Row]:
    """``Scheduler.lateness`` measured in the agent process itself: ``agent_lateness.py``
    runs the daemon as ``edge-agent run --simulate`` does and turns on
    ``record_lateness`` after the warm-up. 20 simulated BME280s at 100 ms on 10 buses."""
    plan = ctx.plan
    ours = next((c for c in ctx.contenders if c.key == "ours"), None)
    p50: list[float] = []
    p99: list[float] = []
    counts: list[str] = []
    for _trial in range(plan.b6_trials if ours else 0):
        assert ours is not None
        port = ctx.port(ours)
        base = base_topic("b6", "ours")
        work = scratch("b6-")
        config = ours_config(
            work / "agent.yaml",
            port=port,
            device_id=base.split("/", 1)[1],
            sensors=bme280s(20, "100ms", buses=10),
        )
        out = work / "lateness.json"
        online = FirstMessage(f"{base}/status", b"online")
        with Watcher(port, [f"{base}/status"], online):
            proc = Proc(
                [PYTHON, str(BENCH / "agent_lateness.py"), "-c", str(config), "--out", str(out)],
                name="ours-b6",
            )
            try:
                online.wait(START_TIMEOUT_S)
                time.sleep(2.0)
                proc.popen.send_signal(signal.SIGUSR1)
                time.sleep(plan.b6_window_s)
            finally:
                proc.stop()
        try:
            lateness = [x * 1000 for x in json.loads(out.read_text())]
        except (OSError, ValueError):
            raise _fail(proc, "wrote no lateness") from None
        p50.append(percentile(lateness, 50))
        p99.append(percentile(lateness, 99))
        counts.append(f"{len(lateness)} of {int(200 * plan.b6_window_s)} slots")
    why = {
        "mqttio": "n/a: intervals are whole seconds ≥ 1, and it sleeps `interval` after each "
        "read (drifts by design): no schedule to be late for",
        "floor": "n/a: no scheduler",
    }
    cells50: dict[str, Series | str] = {"ours": Series(p50)}
    cells99: dict[str, Series | str] = {"ours": Series(p99)}
    for c in ctx.contenders:
        if c.key in why:
            cells50[c.key] = cells99[c.key] = why[c.key]
    for key, reason in ctx.unavailable.items():
        cells50.setdefault(key, reason)
        cells99.setdefault(key, reason)
    return [
        Row("B6", "scheduling lateness p50 at 20 sensors × 10 Hz (ms)", "—", cells50, None),
        Row(
            "B6",
            "scheduling lateness p99 at 20 sensors × 10 Hz (ms)",
            "≤ 2 ms",
            cells99,
            _at_most(2.0),
            notes=[f"B6 samples per trial: {', '.join(counts)}"],
        ),
    ]


# -- B9 ---------------------------------------------------------------------------------


def b9_filter_cost(ctx: Context) -> list[Row]:
    """CPU per reading of the filter stage (``filter_cost.py``): a 3-filter chain and 3
    derived quantities, and the same sensor without processing, in this process on the
    thread's own CPU clock. mqtt-io has no filters; the floor publishes no readings."""
    from tests.bench.filter_cost import measure

    trials, readings = (1, 5_000) if ctx.plan.quick else (3, 20_000)
    filtered: list[float] = []
    plain: list[float] = []
    for _ in range(trials):
        result = measure(readings)
        filtered.append(result["filtered_us"])
        plain.append(result["plain_us"])
    why = {"mqttio": "n/a: no filters", "floor": "n/a: no readings"}

    def cells(values: list[float]) -> dict[str, Series | str]:
        out: dict[str, Series | str] = {"ours": Series(values)}
        for c in ctx.contenders:
            out.setdefault(c.key, why.get(c.key, "n/a"))
        for key, reason in ctx.unavailable.items():
            out.setdefault(key, reason)
        return out

    note = f"B9: {trials} trials of {readings} readings each"
    return [
        Row(
            "B9",
            "filter stage CPU per reading, 3 filters + 3 derived (µs)",
            "≤ 100 µs",
            cells(filtered),
            _at_most(100.0),
            notes=[note],
        ),
        Row("B9", "the same sensor without filters (µs)", "—", cells(plain), None),
    ]


# -- B10: a command flood (ours only) ----------------------------------------------------


class _Flood:
    """What a flood trial sees: live readings' arrival times and the probe's reply."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.online = FirstMessage(f"{base}/status", b"online")
        self.readings: list[float] = []
        self.probe_at: float | None = None
        self.probed = threading.Event()

    def __call__(self, topic: str, payload: bytes, retained: bool, t: float) -> None:
        self.online(topic, payload, retained, t)
        if topic == f"{self.base}/sensor/live":
            self.readings.append(t)
        elif topic == f"{self.base}/reply" and b'"probe"' in payload:
            self.probe_at = t
            self.probed.set()


def _b10_trial(ctx: Context, c: Contender, n: int) -> tuple[float, float, float]:
    """``n`` QoS 1 commands as fast as the broker takes them (nine in ten to output o0,
    on/off, the rest to invented outputs), then a probe to o1, which the flood spared
    (o0's rate is spent by then): seconds from the broker having taken the last flood
    command to the probe's reply, RSS growth (MB) from before the flood to after the
    probe, and the longest gap (ms) between readings (100 ms) meanwhile."""
    port = ctx.port(c)
    base = base_topic("b10", "ours")
    work = scratch("b10-")
    config = ours_config(
        work / "agent.yaml",
        port=port,
        device_id=base.split("/", 1)[1],
        sensors="  live: {driver: system, interval: 100ms}\n",
        outputs=2,
    )
    flood = _Flood(base)
    with Watcher(port, [f"{base}/status", f"{base}/sensor/live", f"{base}/reply"], flood) as w:
        proc = agent_process(config, name="ours-b10")
        try:
            flood.online.wait(START_TIMEOUT_S)
            time.sleep(1.0)
            rss_before = proc.sample().rss_kb / 1024
            started = time.monotonic()
            sent = [
                w.client.publish(
                    f"{base}/output/o0/set" if i % 10 else f"{base}/output/ghost-{i}/set",
                    b"on" if i % 2 else b"off",
                    qos=1,
                )
                for i in range(n)
            ]
            deadline = started + n / 100 + 30
            while not all(info.is_published() for info in sent):
                if time.monotonic() > deadline:
                    raise _fail(proc, "the broker did not take the flood")
                time.sleep(0.01)
            taken = time.monotonic()
            w.publish(f"{base}/output/o1/set", b'{"state": "on", "id": "probe"}')
            if not flood.probed.wait(60):
                raise _fail(proc, "the probe after the flood was not answered")
            assert flood.probe_at is not None
            rss_after = proc.sample().rss_kb / 1024
            during = [started] + [t for t in flood.readings if started <= t <= flood.probe_at]
            gap = max(b - a for a, b in itertools.pairwise([*during, flood.probe_at]))
            return flood.probe_at - taken, rss_after - rss_before, gap * 1000
        finally:
            proc.stop()


def b10_flood(ctx: Context) -> list[Row]:
    """Ours under a command flood at its defaults (``commands.max_rate`` 10, queue 100):
    the probe's answer, memory and readings. mqtt-io and the floor have no such limits to
    measure."""
    n = 1000 if ctx.plan.quick else 10_000
    trials = 1 if ctx.plan.quick else 3
    ours = [c for c in ctx.contenders if c.key == "ours"]
    probe: list[float] = []
    rss: list[float] = []
    gaps: list[float] = []
    for _ in range(trials):
        for c in ours:
            p, r, g = _b10_trial(ctx, c, n)
            probe.append(p)
            rss.append(r)
            gaps.append(g)

    def cells(values: list[float]) -> dict[str, Series | str]:
        out = _cells(ctx, {"ours": values})
        for c in ctx.contenders:
            out.setdefault(c.key, "n/a: not measured (no command limits)")
        return out

    note = f"B10: {trials} trials of {n} commands (9 in 10 to one output, 1 to invented ones)"
    return [
        Row(
            "B10",
            f"another output's command answered after a {n}-command flood (s)",
            "≤ 2 s",
            cells(probe),
            _at_most(2.0),
            notes=[note],
        ),
        Row("B10", "RSS growth over the flood (MB)", "≤ 20 MB", cells(rss), _at_most(20.0)),
        Row(
            "B10",
            "longest gap between 100 ms readings during the flood (ms)",
            "≤ 500 ms",
            cells(gaps),
            _at_most(500.0),
            digits=0,
        ),
    ]


# -- B1 and B3 at 10 % of one core (a Pi-class proxy) -----------------------------------

#: The CPU limit of the Pi-class rows, in % of one core (a Pi Zero 2 is roughly this
#: fraction of one core of this machine's EPYC).
PI_CPU_PERCENT = 10.0


def pi_class(ctx: Context) -> list[Row]:
    """B1 and B3 with every contender in a cgroup of its own capped at 10 % of one core
    (cgroup v1 ``cpu.cfs_quota_us`` 10000 per 100000), joined before exec. The notes give,
    per contender, how often the limit throttled it and the CPU it used over its start."""
    why = CpuLimit.unavailable()
    pct = f"{PI_CPU_PERCENT:g} % of one core"
    if why is not None:
        cells: dict[str, Series | str] = {c.key: why for c in ctx.contenders}
        return [Row("B1", f"start → retained `online` at {pct} (ms)", "≤ 0.25 × mqtt-io", cells)]
    starts: dict[str, list[float]] = {c.key: [] for c in ctx.contenders}
    notes: list[str] = []
    for trial in range(ctx.plan.limited_trials):
        for c in ctx.rotation(trial):
            limit = CpuLimit(PI_CPU_PERCENT, c.key)
            try:
                with running(ctx, c, "idle", "pi", limit=limit) as (proc, _base, t_online):
                    elapsed = t_online - proc.t_start
                    cpu = proc.sample().cpu_s
                    stat = limit.stat()
                    starts[c.key].append(elapsed * 1000)
                    notes.append(
                        f"B1 at {pct}, {c.key} trial {trial}: {cpu * 1000:.0f} ms CPU over"
                        f" {elapsed * 1000:.0f} ms ({cpu / elapsed * 100:.1f} % of a core);"
                        f" throttled in {stat.get('nr_throttled', 0)} of"
                        f" {stat.get('nr_periods', 0)} periods"
                    )
            finally:
                limit.close()
    n = ctx.plan.limited_commands
    stats: dict[str, dict[str, list[float]]] = {
        name: {c.key: [] for c in ctx.contenders} for name in ("sp50", "sp99", "bp50", "bp99")
    }
    for c in ctx.rotation(0):
        limit = CpuLimit(PI_CPU_PERCENT, c.key)
        try:
            sparse, bursts, lost = _b3_trial(
                ctx, c, n, nodelay=True, command_qos=1, state_qos=0, limit=limit
            )
            stat = limit.stat()
        finally:
            limit.close()
        stats["sp50"][c.key].append(percentile(sparse, 50))
        stats["sp99"][c.key].append(percentile(sparse, 99))
        stats["bp50"][c.key].append(percentile(bursts, 50))
        stats["bp99"][c.key].append(percentile(bursts, 99))
        notes.append(
            f"B3 at {pct}, {c.key}: throttled in {stat.get('nr_throttled', 0)} of"
            f" {stat.get('nr_periods', 0)} periods"
            + (f"; {lost} commands unanswered or wrong" if lost else "")
        )
    rows = [
        Row("B1", f"start → retained `online` at {pct} (ms)", "≤ 0.25 × mqtt-io",
            _cells(ctx, starts), _ratio_at_most(0.25, "mqttio"), digits=0, notes=notes),
        Row("B3", f"command → state at {pct}, sparse, p50 (ms; {n} commands)", "—",
            _cells(ctx, stats["sp50"])),
        Row("B3", f"command → state at {pct}, sparse, p99 (ms)", "—", _cells(ctx, stats["sp99"])),
        Row("B3", f"command → state at {pct}, bursts 5 ms apart, p50 (ms; {n} commands)", "—",
            _cells(ctx, stats["bp50"])),
        Row("B3", f"command → state at {pct}, bursts 5 ms apart, p99 (ms)", "—",
            _cells(ctx, stats["bp99"])),
    ]  # fmt: skip
    return rows
