"""Every bad config is refused by `edge-agent check` with exit 78 and FILE:LINE: key.path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mqtt import run_cli

AIR = "sensors:\n  air:\n    driver: bme280\n"
RELAY = "outputs:\n  pump:\n    driver: relay\n    pin: 17\n"
SENSOR = "sensors:\n  pi:\n    driver: system\n"

#: (id, YAML, expected line, expected key path, words the message must contain)
BAD_CONFIGS: list[tuple[str, str, int, str, str]] = [
    ("unknown-top-key", "device_id: a\nsensorz: {}\n", 2, "sensorz", "unknown key"),
    ("unknown-nested-key", "mqtt:\n  host: x\n  prot: 5\n", 3, "mqtt.prot", "did you mean `port`"),
    ("duplicate-top-key", "device_id: a\ndevice_id: b\n", 2, "device_id", "duplicate key"),
    (
        "duplicate-sensor",
        "sensors:\n  a: {driver: system}\n  a: {driver: system}\n",
        3,
        "sensors.a",
        "duplicate key",
    ),
    ("port-range", "mqtt:\n  port: 70000\n", 2, "mqtt.port", "<= 65535"),
    ("port-type", "mqtt:\n  port: abc\n", 2, "mqtt.port", "expected `int`"),
    ("keepalive-low", "mqtt:\n  keepalive: 1\n", 2, "mqtt.keepalive", ">= 5"),
    ("protocol", 'mqtt:\n  protocol: "4"\n', 2, "mqtt.protocol", "'4'"),
    ("device-id-chars", "device_id: bad/id\n", 1, "device_id", "bad/id"),
    ("topic-prefix-wildcard", "mqtt:\n  topic_prefix: a/#\n", 2, "mqtt.topic_prefix", "a/#"),
    (
        "bad-duration",
        "sensors:\n  pi:\n    driver: system\n    interval: 10 minutes\n",
        4,
        "sensors.pi.interval",
        "expected a duration",
    ),
    (
        "zero-interval",
        "sensors:\n  pi:\n    driver: system\n    interval: 0s\n",
        4,
        "sensors.pi.interval",
        "greater than 0",
    ),
    (
        "unknown-driver",
        "sensors:\n  pi:\n    driver: systen\n",
        3,
        "sensors.pi.driver",
        "did you mean `system`",
    ),
    (
        "input-device-class",
        "inputs:\n  door:\n    driver: gpio\n    pin: 27\n    device_class: dor\n",
        5,
        "inputs.door.device_class",
        "'dor'",
    ),
    ("missing-driver", "sensors:\n  pi:\n    interval: 5s\n", 2, "sensors.pi", "driver"),
    (
        "driver-option-unknown",
        "sensors:\n  pi:\n    driver: system\n    adress: 0x76\n",
        4,
        "sensors.pi.adress",
        "unknown key",
    ),
    (
        "qos-range",
        "sensors:\n  pi:\n    driver: system\n    qos: 3\n",
        4,
        "sensors.pi.qos",
        "<= 2",
    ),
    (
        "fail-rate-range",
        "sensors:\n  pi:\n    driver: system\n    simulation:\n      fail_rate: 1.5\n",
        5,
        "sensors.pi.simulation.fail_rate",
        "from 0.0 to 1.0",
    ),
    (
        "simulation-unknown-quantity",
        "sensors:\n  pi:\n    driver: system\n    simulation:\n      humidity: 4\n",
        5,
        "sensors.pi.simulation.humidity",
        "no quantity",
    ),
    (
        "sensor-name-chars",
        "sensors:\n  my sensor:\n    driver: system\n",
        2,
        "sensors.my sensor",
        "matching regex",
    ),
    ("sensors-not-mapping", "sensors:\n  - pi\n", 1, "sensors", "expected a mapping"),
    ("missing-env", "mqtt:\n  host: ${NO_SUCH_VARIABLE_X}\n", 2, "mqtt.host", "NO_SUCH_VARIABLE_X"),
    (
        "password-and-file",
        "mqtt:\n  password: a\n  password_file: b\n",
        1,
        "mqtt",
        "not both",
    ),
    (
        "password-file-missing",
        "mqtt:\n  password_file: /nonexistent/pass\n",
        2,
        "mqtt.password_file",
        "cannot read",
    ),
    (
        "tls-ca-missing",
        "mqtt:\n  tls:\n    ca_certs: /nonexistent/ca.crt\n",
        3,
        "mqtt.tls.ca_certs",
        "no such file",
    ),
    (
        "reconnect-order",
        "mqtt:\n  reconnect: {min_delay: 10, max_delay: 5}\n",
        2,
        "mqtt.reconnect",
        "max_delay",
    ),
    (
        "buffer-durability",
        "buffer:\n  durability: sometimes\n",
        2,
        "buffer.durability",
        "sometimes",
    ),
    ("buffer-max-messages", "buffer:\n  max_messages: 0\n", 2, "buffer.max_messages", ">= 1"),
    ("yes-is-not-a-boolean", "simulate: yes\n", 1, "simulate", "expected `bool`"),
    ("top-level-list", "- a\n- b\n", 1, "", "expected a mapping"),
    ("invalid-yaml", "mqtt:\n  host: [unclosed\n", 3, "", "invalid YAML"),
    (
        "dht-interval-below-chip-minimum",
        "sensors:\n  shed:\n    driver: dht22\n    pin: 4\n    interval: 1s\n",
        5,
        "sensors.shed.interval",
        "minimum of 2 s",
    ),
    (
        "bme280-bad-address",
        "sensors:\n  air:\n    driver: bme280\n    address: 0x40\n",
        4,
        "sensors.air.address",
        "64",
    ),
    (
        "relay-missing-pin",
        "outputs:\n  pump:\n    driver: relay\n",
        2,
        "outputs.pump",
        "missing required key `pin`",
    ),
    (
        "interlock-unknown-output",
        "outputs:\n  pump:\n    driver: relay\n    pin: 17\n    interlock: [heatr]\n",
        5,
        "outputs.pump.interlock[0]",
        "no output named 'heatr'",
    ),
    (
        "pressure-from-unknown-sensor",
        "sensors:\n  co2:\n    driver: scd4x\n    pressure_from: ari\n",
        4,
        "sensors.co2.pressure_from",
        "no sensor named 'ari'",
    ),
    (
        "pressure-from-a-sensor-without-pressure",
        "sensors:\n  pi:\n    driver: system\n  co2:\n    driver: scd4x\n    pressure_from: pi\n",
        6,
        "sensors.co2.pressure_from",
        "sensor 'pi' (system) reports no pressure",
    ),
    (
        "pressure-from-itself",
        "sensors:\n  co2:\n    driver: scd4x\n    pressure_from: co2\n",
        4,
        "sensors.co2.pressure_from",
        "its own reading",
    ),
    (
        "pressure-from-and-ambient-pressure",
        "sensors:\n  co2:\n    driver: scd4x\n    ambient_pressure: 1000\n    pressure_from: air\n",
        5,
        "sensors.co2.pressure_from",
        "not both",
    ),
    (
        "relay-initial-bad",
        "outputs:\n  pump:\n    driver: relay\n    pin: 17\n    initial: maybe\n",
        5,
        "outputs.pump.initial",
        "maybe",
    ),
    ("health-listen", "health:\n  listen: nowhere\n", 2, "health.listen", "matching regex"),
    (
        "filter-unknown",
        AIR + "    filters:\n      temperature:\n        - medain: {}\n",
        6,
        "sensors.air.filters.temperature[0].medain",
        "did you mean `median`",
    ),
    (
        "filter-window-size-zero",
        AIR + "    filters:\n      temperature:\n        - offset: -1.2\n"
        "        - median: {window_size: 0}\n",
        7,
        "sensors.air.filters.temperature[1].median.window_size",
        ">= 1",
    ),
    (
        "filter-send-first-at-after-send-every",
        AIR + "    filters:\n      temperature:\n"
        "        - median: {send_every: 2, send_first_at: 3}\n",
        6,
        "sensors.air.filters.temperature[0].median.send_first_at",
        "not be greater than send_every",
    ),
    (
        "filter-two-in-one-step",
        AIR + "    filters:\n      temperature:\n        - {offset: 1, multiply: 2}\n",
        6,
        "sensors.air.filters.temperature[0]",
        "got offset, multiply",
    ),
    (
        "calibrate-linear-one-point",
        AIR + "    filters:\n      humidity:\n        - calibrate_linear: [[30.0, 33.5]]\n",
        6,
        "sensors.air.filters.humidity[0].calibrate_linear",
        "length >= 2",
    ),
    (
        "calibrate-polynomial-too-few-points",
        AIR + "    filters:\n      humidity:\n        - calibrate_polynomial:\n"
        "            degree: 2\n            datapoints: [[0, 0], [1, 1]]\n",
        8,
        "sensors.air.filters.humidity[0].calibrate_polynomial.datapoints",
        "at least 3 datapoints",
    ),
    (
        "clamp-without-bounds",
        AIR + "    filters:\n      humidity:\n        - clamp: {ignore_out_of_range: true}\n",
        6,
        "sensors.air.filters.humidity[0].clamp",
        "min_value, max_value or both",
    ),
    (
        "delta-not-a-percentage",
        AIR + "    filters:\n      humidity:\n        - delta: 5 percent\n",
        6,
        "sensors.air.filters.humidity[0].delta",
        "5 percent",
    ),
    (
        "filter-on-unmeasured-quantity",
        "sensors:\n  air:\n    driver: bmp280\n    filters:\n      humidity: [{offset: 1}]\n",
        5,
        "sensors.air.filters.humidity",
        "bmp280 has no quantity 'humidity'",
    ),
    (
        "derived-inputs-not-measured",
        "sensors:\n  air:\n    driver: bmp280\n    derived: [dew_point]\n",
        4,
        "sensors.air.derived[0]",
        "bmp280 does not measure humidity",
    ),
    (
        "derived-unknown",
        AIR + "    derived: [dewpoint]\n",
        4,
        "sensors.air.derived[0]",
        "'dewpoint'",
    ),
    (
        "sea-level-pressure-without-altitude",
        AIR + "    derived: [sea_level_pressure]\n",
        4,
        "sensors.air.derived[0]",
        "needs `altitude`",
    ),
    (
        "on-change-unknown-quantity",
        AIR + "    publish:\n      on_change: {temprature: 0.1}\n",
        5,
        "sensors.air.publish.on_change.temprature",
        "no quantity 'temprature'",
    ),
    (
        "heartbeat-not-a-duration",
        AIR + "    publish:\n      heartbeat: often\n",
        5,
        "sensors.air.publish.heartbeat",
        "expected a duration",
    ),
    # Values the types allowed that broke the daemon at run time (issue 20, row 7).
    ("max-on-inf", f"{RELAY}    max_on: .inf\n", 5, "outputs.pump.max_on", "finite"),
    (
        "max-on-inf-initial-on",
        f"{RELAY}    initial: on\n    max_on: .inf\n",
        6,
        "outputs.pump.max_on",
        "finite",
    ),
    ("interval-inf", f"{SENSOR}    interval: .inf\n", 4, "sensors.pi.interval", "finite"),
    ("interval-nan", f"{SENSOR}    interval: .nan\n", 4, "sensors.pi.interval", "finite"),
    ("duration-too-long", "buffer:\n  max_age: 99999d\n", 2, "buffer.max_age", "3650d"),
    (
        "session-expiry-beyond-32-bit",
        "mqtt:\n  session_expiry: 5000000000\n",
        2,
        "mqtt.session_expiry",
        "at most",
    ),
    (
        "topic-prefix-too-long",
        f"mqtt:\n  topic_prefix: {'p' * 65_600}\n",
        2,
        "mqtt.topic_prefix",
        "65535",
    ),
    (
        "health-listen-port",
        'health:\n  listen: "127.0.0.1:99999"\n',
        2,
        "health.listen",
        "1 to 65535",
    ),
    ("topic-prefix-dollar", "mqtt:\n  topic_prefix: $SYS\n", 2, "mqtt.topic_prefix", "`$`"),
    (
        "topic-prefix-newline",
        'mqtt:\n  topic_prefix: "edge\\nx"\n',
        2,
        "mqtt.topic_prefix",
        "control characters",
    ),
    ("client-id-nul", 'mqtt:\n  client_id: "a\\0b"\n', 2, "mqtt.client_id", "control characters"),
    (
        "ha-prefix-dollar",
        "homeassistant:\n  prefix: $ha\n",
        2,
        "homeassistant.prefix",
        "`$`",
    ),
    # The command gate (issue 20, row 9): a rate and a queue the daemon can use.
    ("max-rate-zero", "commands:\n  max_rate: 0\n", 2, "commands.max_rate", "> 0"),
    ("max-rate-inf", "commands:\n  max_rate: .inf\n", 2, "commands.max_rate", "finite"),
    ("max-rate-nan", "commands:\n  max_rate: .nan\n", 2, "commands.max_rate", "finite"),
    ("max-rate-type", "commands:\n  max_rate: fast\n", 2, "commands.max_rate", "`float`"),
    ("queue-size-zero", "commands:\n  queue_size: 0\n", 2, "commands.queue_size", ">= 1"),
    ("queue-size-huge", "commands:\n  queue_size: 1000000\n", 2, "commands.queue_size", "100000"),
    ("queue-size-float", "commands:\n  queue_size: 1.5\n", 2, "commands.queue_size", "`int`"),
]


@pytest.mark.parametrize(
    ("yaml_text", "line", "key_path", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS],
)
def test_bad_config_names_file_line_and_key(
    tmp_path: Path, yaml_text: str, line: int, key_path: str, words: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    prefix = f"{config}:{line}: " + (f"{key_path}: " if key_path else "")
    matching = [ln for ln in result.stderr.splitlines() if ln.startswith(prefix)]
    assert matching, f"no line starting {prefix!r} in:\n{result.stderr}"
    assert any(words in ln for ln in matching), result.stderr


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  port: 0\n  keepalive: x\nsensors:\n  pi: {driver: nope}\n")
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78
    assert [ln.split(": ")[1] for ln in result.stderr.splitlines()] == [
        "mqtt.port",
        "mqtt.keepalive",
        "sensors.pi.driver",
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 78
    assert "absent.yaml" in result.stderr and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_config_exits_78_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  port: -1\n")
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 78
    assert f"{config}:2: mqtt.port:" in result.stderr
    assert "Traceback" not in result.stderr


# -- hostile files (issue 20, row 8): every one is FILE[:LINE]: message, exit 78, at once ---


def alias_bomb(levels: int) -> str:
    """Ten times more values per level: 10**levels in all, in a few hundred bytes."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        refs = ",".join([f"*l{n - 1}"] * 10)
        lines.append(f"l{n}: &l{n} [{refs}]")
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, name: str, body: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


#: (id, make the config file, expected line or None, words the message must contain)
HOSTILE: list[tuple[str, Callable[[Path], Path], int | None, str]] = [
    ("alias-bomb-1e6", lambda t: _write(t, "c.yaml", alias_bomb(6)), None, "expands to more"),
    ("alias-bomb-1e10", lambda t: _write(t, "c.yaml", alias_bomb(10)), None, "expands to more"),
    ("dev-zero", lambda t: Path("/dev/zero"), None, "not a regular file"),
    ("fifo", _fifo, None, "not a regular file (a FIFO)"),
    ("directory", lambda t: t, None, "not a regular file"),
    (
        "nesting-500",
        lambda t: _write(t, "c.yaml", "a: " + "[" * 500 + "]" * 500 + "\n"),
        1,
        "nested deeper than 64",
    ),
    ("nul-character", lambda t: _write(t, "c.yaml", "device_id: a\x00b\n"), 1, "not allowed"),
    (
        "list-as-key",
        lambda t: _write(t, "c.yaml", "device_id: a\n? [x, y]\n: 1\n"),
        2,
        "key must be a string",
    ),
    ("not-utf-8", lambda t: _write(t, "c.yaml", b"device_id: a\nmqtt: \xff\n"), 2, "UTF-8"),
    (
        "too-large",
        lambda t: _write(t, "c.yaml", "# padding\n" * 200_000),
        None,
        "larger than 1024 KiB",
    ),
]


@pytest.mark.parametrize(
    ("make", "line", "words"), [pytest.param(*case[1:], id=case[0]) for case in HOSTILE]
)
def test_hostile_config_files_are_refused_quickly_without_traceback(
    tmp_path: Path, make: Callable[[Path], Path], line: int | None, words: str
) -> None:
    config = make(tmp_path)
    result = run_cli("check", "-c", str(config), timeout=20)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    prefix = f"{config}:{line}: " if line else f"{config}:"  # None: with or without a line
    (first, *_) = result.stderr.splitlines()
    assert first.startswith(prefix) and words in first, result.stderr


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        pytest.param(Path("/dev/urandom"), "not a regular file", id="dev-urandom"),
        pytest.param(None, "UTF-8", id="not-utf-8"),
    ],
)
def test_a_hostile_password_file_is_a_problem_of_its_key(
    tmp_path: Path, secret: Path | None, words: str
) -> None:
    if secret is None:
        secret = _write(tmp_path, "pass", b"\xff\xfe\x00secret")
        secret.chmod(0o600)  # private, as a secret must be: only its content is wrong
    config = _write(tmp_path, "c.yaml", f"mqtt:\n  password_file: {secret}\n")
    result = run_cli("check", "-c", str(config), timeout=20)
    assert result.returncode == 78, result.stderr
    (first, *_) = result.stderr.splitlines()
    assert first.startswith(f"{config}:2: mqtt.password_file: ") and words in first, first
