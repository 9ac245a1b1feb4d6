"""Writing agent configs for tests."""

from __future__ import annotations

from pathlib import Path

SYSTEM_SENSOR = """\
  pi:
    driver: system
    interval: {interval}
"""


def write_config(
    path: Path,
    *,
    port: int,
    device_id: str,
    sensors: str | None = None,
    extra: str = "",
    mqtt_extra: str = "",
    interval: str = "200ms",
    keepalive: int = 5,
    protocol: str = "5",
) -> Path:
    """A config for one test: its own broker port, device id and state dir."""
    body = (
        f"device_id: {device_id}\n"
        f"state_dir: {path.parent / 'state'}\n"
        "mqtt:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        f"  keepalive: {keepalive}\n"
        f'  protocol: "{protocol}"\n'
        "  reconnect: {min_delay: 0.2, max_delay: 1}\n"
        f"{mqtt_extra}"
        "sensors:\n"
        f"{sensors if sensors is not None else SYSTEM_SENSOR.format(interval=interval)}"
        f"{extra}"
    )
    path.write_text(body)
    return path
