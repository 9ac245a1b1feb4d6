"""No secret in any message (issue #21): the validator never echoes a secret's value, a
secret file must be private and not empty, and ``config_sha256`` reveals nothing.

Property tests: whatever wrong value a secret field holds, and whatever an environment
variable substituted into any field holds, the problems (what ``check`` prints, what the
log and a ``config_rejected`` event carry) never contain it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import cli
from agent.config.digest import config_digest, digest_key
from agent.config.load import load_config, parse_config
from agent.errors import ConfigError

# A secret long enough that finding it in a message is not chance.
secret_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=6, max_size=20
).filter(lambda s: s.strip() == s and len(s.strip()) >= 6)
secret_numbers = st.integers(min_value=10**6, max_value=10**18)


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="c.yaml", base_dir=tmp_path, environ=environ or {})
    return str(info.value)


def stand_in(secret: str) -> str:
    """A value of the secret's length and kind that no message's own wording contains:
    a problem's text for it shows what the agent says whatever the value."""
    return "1" * len(secret) if secret.isdigit() else "\u2603" * len(secret)


def yaml_scalar(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML


@st.composite
def wrong_password_values(draw: st.DrawFn) -> tuple[str, str]:
    """(the secret, YAML for a password value of the wrong type that holds it): a bare
    number (the red team's `password: 98765432`), or the secret in a list or a mapping."""
    secret = draw(st.one_of(secret_text, secret_numbers.map(str)))
    scalar = secret if secret.isdigit() else yaml_scalar(secret)
    shapes = ["[{}]", "{{a: {}}}", "[[{}]]"] + (["{}"] if secret.isdigit() else [])
    return secret, draw(st.sampled_from(shapes)).format(scalar)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=wrong_password_values())
def test_a_wrong_password_value_is_never_echoed(case: tuple[str, str], tmp_path: Path) -> None:
    secret, value = case
    message = problems_of(f"mqtt:\n  password: {value}\n", tmp_path)
    scalar = secret if secret.isdigit() else yaml_scalar(secret)
    other = stand_in(secret)
    other_scalar = other if other.isdigit() else yaml_scalar(other)
    wording = problems_of(f"mqtt:\n  password: {value.replace(scalar, other_scalar)}\n", tmp_path)
    assume(secret not in wording)  # the secret happens to be a part of the agent's own words
    assert "mqtt.password" in message
    assert secret not in message, message


def test_the_red_team_case_says_what_to_do(tmp_path: Path) -> None:
    message = problems_of("mqtt:\n  password: 98765432\n", tmp_path)
    assert "98765432" not in message
    assert "c.yaml:2: mqtt.password: expected `str`, got a number" in message
    assert "quote it" in message


KEYS = ["host", "username", "password", "client_id", "port", "keepalive", "topic_prefix"]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    secret=st.one_of(secret_text, secret_numbers.map(str)),
    key=st.sampled_from(KEYS),
    quoted=st.booleans(),
    wrap=st.sampled_from(["{}", "[{}]", "{{x: {}}}"]),
)
def test_a_value_from_the_environment_is_never_echoed(
    secret: str, key: str, quoted: bool, wrap: str, tmp_path: Path
) -> None:
    # `${VAR}` may be used for a secret in any string; a problem with such a value names
    # the key and the type, not the value.
    ref = '"${SECRET}"' if quoted else "${SECRET}"
    text = f"mqtt:\n  {key}: {wrap.format(ref)}\n  port: 0\n"
    if key == "port":
        text = f"mqtt:\n  port: {wrap.format(ref)}\n"
    try:
        parse_config(text, file="c.yaml", base_dir=tmp_path, environ={"SECRET": secret})
    except ConfigError as e:
        try:
            parse_config(
                text, file="c.yaml", base_dir=tmp_path, environ={"SECRET": stand_in(secret)}
            )
        except ConfigError as same_problem:
            assume(secret not in str(same_problem))  # a part of the agent's own words
        assert secret not in str(e), str(e)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o660, 0o620, 0o777])
def test_a_password_file_others_can_read_or_the_group_can_write_is_an_error(
    tmp_path: Path, mode: int
) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2-hunter2\n")
    secret.chmod(mode)
    message = problems_of("mqtt:\n  password_file: mqtt.pass\n", tmp_path)
    assert f"c.yaml:2: mqtt.password_file: {secret} is mode {mode:04o}" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_a_private_password_file_is_read(tmp_path: Path, mode: int) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2-hunter2\n")
    secret.chmod(mode)
    config = parse_config("mqtt:\n  password_file: mqtt.pass\n", file="c", base_dir=tmp_path)
    assert config.mqtt.password == "hunter2-hunter2"


@pytest.mark.parametrize("content", ["", "\n", "  \r\n"])
def test_an_empty_password_file_is_an_error(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text(content)
    secret.chmod(0o600)
    message = problems_of("mqtt:\n  password_file: mqtt.pass\n", tmp_path)
    assert f"mqtt.password_file: {secret} is empty" in message


def test_a_tls_key_file_others_can_read_is_an_error(tmp_path: Path) -> None:
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("-----BEGIN PRIVATE KEY-----\nMIIsecret\n")
    (tmp_path / "c.key").chmod(0o644)
    text = "mqtt:\n  tls:\n    ca_certs: ca.crt\n    certfile: c.crt\n    keyfile: c.key\n"
    message = problems_of(text, tmp_path)
    assert "mqtt.tls.keyfile:" in message and "0644" in message
    assert "MIIsecret" not in message
    (tmp_path / "c.key").chmod(0o600)
    parse_config(text, file="c", base_dir=tmp_path)


def test_check_prints_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  password: 98765432\n  username: ${USER_SECRET}\n  port: ${P}\n")
    environ = {"USER_SECRET": "[s3cr3t-user]", "P": "s3cr3t-port"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in environ.items():
            mp.setenv(k, v)
        assert cli.main(["check", "-c", str(path)]) == 78
    out = capsys.readouterr()
    text = out.out + out.err
    assert "mqtt.password" in text and "mqtt.port" in text
    for secret in ("98765432", "s3cr3t"):
        assert secret not in text, text


# --- config_sha256 -----------------------------------------------------------------------


def loaded(tmp_path: Path, password: str, extra: str = "") -> tuple[str, bytes]:
    path = tmp_path / "c.yaml"
    raw = f"device_id: d\nmqtt:\n  password: {password}\n{extra}"
    path.write_text(raw)
    key = digest_key(tmp_path)
    return config_digest(load_config(path).config, key), raw.encode()


def test_config_sha256_is_not_a_hash_of_the_file_and_changes_with_the_secret(
    tmp_path: Path,
) -> None:
    first, raw = loaded(tmp_path, "correct-horse")
    assert first != hashlib.sha256(raw).hexdigest()
    assert loaded(tmp_path, "correct-horse")[0] == first  # stable
    assert loaded(tmp_path, "battery-staple")[0] != first  # a new password: a new digest
    assert loaded(tmp_path, "correct-horse", "log_level: debug\n")[0] != first
    assert len(first) == 64


def test_config_sha256_cannot_be_checked_against_a_word_list_without_the_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text("device_id: d\nmqtt:\n  password: correct-horse\n")
    config = load_config(path).config
    # Two devices with the same config and password: different keys, different digests;
    # an attacker with a word list has neither key.
    a, b = digest_key(tmp_path / "a"), digest_key(tmp_path / "b")
    assert a != b and config_digest(config, a) != config_digest(config, b)
    assert (tmp_path / "a" / "config-digest.key").stat().st_mode & 0o777 == 0o600
    assert digest_key(tmp_path / "a") == a  # kept
