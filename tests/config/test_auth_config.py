"""commands.auth in the config: key files by id, private, real keys; per-output auth."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.commands.auth import new_ed25519_pair, new_hmac_secret
from agent.config.load import load_keys, parse_config
from agent.errors import ConfigError

OUTPUT = "outputs:\n  door:\n    driver: relay\n    pin: 17\n"


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def problems(text: str, base: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="c.yaml", base_dir=base)
    return str(info.value)


def test_keys_are_read_relative_to_the_config(tmp_path: Path) -> None:
    write_key(tmp_path / "ops.key", new_hmac_secret().encode())
    write_key(tmp_path / "ctl.pub", new_ed25519_pair()[1], 0o640)
    text = "commands:\n  auth:\n    keys: {ops: ops.key, ctl: ctl.pub}\n" + OUTPUT
    config = parse_config(text, file="c.yaml", base_dir=tmp_path)
    assert config.commands.auth is not None and config.commands.auth.required is True
    keys = load_keys(config)
    assert {k: v.kind for k, v in keys.items()} == {"ops": "hmac-sha256", "ctl": "ed25519"}


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660])
def test_a_key_file_others_can_read_is_a_config_error(tmp_path: Path, mode: int) -> None:
    secret = new_hmac_secret()
    write_key(tmp_path / "ops.key", secret.encode(), mode)
    message = problems("commands:\n  auth:\n    keys: {ops: ops.key}\n", tmp_path)
    assert "c.yaml:3: commands.auth.keys.ops:" in message and f"{mode:04o}" in message
    assert secret.strip() not in message


@pytest.mark.parametrize(
    ("data", "says"),
    [(b"", "empty"), (b"c2hvcnQ\n", "at least 32 bytes"), (b"not base64 !!\n", "not a key")],
)
def test_a_key_file_that_is_no_key_is_a_config_error(
    tmp_path: Path, data: bytes, says: str
) -> None:
    write_key(tmp_path / "ops.key", data)
    message = problems("commands:\n  auth:\n    keys: {ops: ops.key}\n", tmp_path)
    assert "commands.auth.keys.ops" in message and says in message


def test_required_without_keys_is_a_config_error(tmp_path: Path) -> None:
    assert "at least one key" in problems("commands:\n  auth: {}\n", tmp_path)


def test_an_output_requiring_signatures_needs_keys(tmp_path: Path) -> None:
    message = problems(OUTPUT + "    auth: true\n", tmp_path)
    assert "outputs.door.auth" in message
