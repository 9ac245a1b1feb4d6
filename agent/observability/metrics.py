"""``/metrics`` in the Prometheus text format, through prometheus-client.

Nothing is counted here: a collector reads the agent's own counters at scrape time, so
the numbers are the ones ``<base>/health`` reports, and an agent without the endpoint
pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent.observability.report import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _AgentCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        info = GaugeMetricFamily(
            "edge_agent_info", "The agent's version and device", labels=["version", "device_id"]
        )
        info.add_metric([s.version, s.device_id], 1)
        yield info
        yield GaugeMetricFamily("edge_agent_uptime_seconds", "Seconds since start", s.uptime_s)
        yield GaugeMetricFamily(
            "edge_agent_mqtt_connected", "1 while connected to the broker", int(s.connected)
        )
        yield CounterMetricFamily(
            "edge_agent_mqtt_connects", "Successful connections to the broker", s.connects
        )
        yield CounterMetricFamily(
            "edge_agent_mqtt_reconnects", "Connections after the first", s.reconnects
        )
        readings = CounterMetricFamily(
            "edge_agent_readings", "Readings taken, per sensor", labels=["sensor"]
        )
        for sensor, n in sorted(s.readings.items()):
            readings.add_metric([sensor], n)
        yield readings
        errors = CounterMetricFamily(
            "edge_agent_read_errors", "Failed reads, per sensor and kind", labels=["sensor", "kind"]
        )
        for (sensor, kind), n in sorted(s.read_errors.items()):
            errors.add_metric([sensor, kind], n)
        yield errors
        failed = GaugeMetricFamily(
            "edge_agent_sensor_failed", "1 while a sensor is failed", labels=["sensor"]
        )
        for sensor in sorted(s.readings):
            failed.add_metric([sensor], int(sensor in s.sensors_failed))
        yield failed
        last = GaugeMetricFamily(
            "edge_agent_sensor_last_reading_timestamp_seconds",
            "Unix time of each sensor's last reading",
            labels=["sensor"],
        )
        for sensor, ts in sorted(s.last_reading_ts.items()):
            last.add_metric([sensor], ts)
        yield last
        for key, help_text in (
            ("published", "Readings sent to the broker (live and replayed)"),
            ("acked", "Readings the broker acknowledged"),
            ("buffered", "Readings written to the store-and-forward buffer"),
            ("replayed", "Readings sent from the buffer after an outage"),
            ("dropped", "Buffered readings dropped by the buffer's limits"),
            ("rejected", "Readings the broker refused"),
            ("deferred", "Live readings kept in the buffer while the in-flight window was full"),
            ("restamped", "Readings re-stamped from the monotonic clock when the clock synced"),
        ):
            yield CounterMetricFamily(f"edge_agent_{key}", help_text, s.outbox.get(key, 0))
        yield CounterMetricFamily("edge_agent_events", "Events reported", s.events)
        yield GaugeMetricFamily(
            "edge_agent_clock_synced",
            "1 while the system clock is synchronised (the kernel's adjtimex state)",
            int(s.clock_synced),
        )
        storage = GaugeMetricFamily(
            "edge_agent_storage_ok", "1 while the buffer's disk takes writes", labels=["reason"]
        )
        storage.add_metric([s.storage_fault or ""], int(s.storage_fault is None))
        yield storage
        yield GaugeMetricFamily(
            "edge_agent_buffer_memory_depth",
            "Readings kept in memory because the buffer's disk cannot be written",
            s.memory_depth,
        )
        yield GaugeMetricFamily(
            "edge_agent_buffer_depth", "Readings not yet acknowledged", s.queue_depth
        )
        yield GaugeMetricFamily(
            "edge_agent_buffer_oldest_age_seconds",
            "Age of the oldest reading not yet acknowledged (0 when none)",
            s.oldest_queued_age_s or 0.0,
        )
        commands = CounterMetricFamily(
            "edge_agent_commands",
            "Commands per output and result (ok or the error code)",
            labels=["output", "result"],
        )
        for (output, result), n in sorted(s.commands.items()):
            commands.add_metric([output, result], n)
        yield commands
        outputs = GaugeMetricFamily(
            "edge_agent_output_on", "1 while an output is on", labels=["output"]
        )
        for output, on in sorted(s.outputs_on.items()):
            outputs.add_metric([output], on)
        yield outputs
        latency = HistogramMetricFamily(
            "edge_agent_command_latency_seconds",
            "From a command's arrival to its reply being sent",
        )
        buckets = [
            (repr(bound), count)
            for bound, count in zip(s.latency_bounds, s.latency_counts, strict=True)
        ]
        buckets.append(("+Inf", s.latency_count))
        latency.add_metric([], buckets, s.latency_sum)
        yield latency


class Metrics:
    """The registry behind ``/metrics``.

    Args:
        snapshot: returns a :class:`Snapshot` of the agent, called at each scrape.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(snapshot))
        ProcessCollector(namespace="edge_agent", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
