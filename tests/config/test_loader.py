"""Config loading: durations, env substitution, secrets, YAML 1.2 booleans, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import load_config, parse_config
from agent.config.durations import format_duration, parse_duration
from agent.config.schema import config_schema
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("7d", 604800),
        (" 2.5s ", 2.5),
        (3, 3),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10", "ten s", "5 minutes", "-1s", True, None, "1w"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_defaults_fill_an_empty_file(tmp_path: Path) -> None:
    config = parse_config("", file="x.yaml", base_dir=tmp_path)
    assert config.mqtt.effective_port == 1883
    assert config.mqtt.protocol == "5"
    assert config.device_id  # the hostname
    assert config.buffer.max_age == 7 * 86400


def test_tls_changes_the_default_port(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    config = parse_config("mqtt:\n  tls: {ca_certs: ca.crt}\n", file="x", base_dir=tmp_path)
    assert config.mqtt.effective_port == 8883


def test_env_substitution_keeps_types_of_unquoted_scalars(tmp_path: Path) -> None:
    text = 'mqtt:\n  host: ${H}\n  port: ${P}\n  username: "${P}"\n  client_id: ${C:-fallback}\n'
    config = parse_config(text, file="x", base_dir=tmp_path, environ={"H": "broker", "P": "1884"})
    assert config.mqtt.host == "broker"
    assert config.mqtt.port == 1884
    assert config.mqtt.username == "1884"
    assert config.mqtt.client_id == "fallback"


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("s3cret\n")
    (tmp_path / "mqtt.pass").chmod(0o600)
    config = parse_config("mqtt:\n  password_file: mqtt.pass\n", file="x", base_dir=tmp_path)
    assert config.mqtt.password == "s3cret"


def test_on_and_off_are_strings_not_booleans(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("simulate: off\n", file="x", base_dir=tmp_path)
    assert "expected `bool`, got 'off'" in str(e.value)


def test_config_objects_are_immutable(tmp_path: Path) -> None:
    config = parse_config("device_id: a\n", file="x", base_dir=tmp_path)
    with pytest.raises(AttributeError):
        config.device_id = "b"  # type: ignore[misc]


def test_example_and_demo_configs_are_valid() -> None:
    example = load_config(ROOT / "config/example.yaml", environ={})
    assert example.config.sensors
    demo = load_config(ROOT / "config/demo.yaml", environ={})
    assert demo.config.simulate


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "config/schema.json").read_text())
    assert committed == json.loads(json.dumps(config_schema())), (
        "run `make schema` to regenerate config/schema.json"
    )


def test_schema_accepts_durations_as_strings() -> None:
    schema = json.dumps(config_schema())
    assert '"type": ["number", "string"]' in schema
