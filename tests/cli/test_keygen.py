"""``edge-agent keygen``: keys for signed commands, private, never overwriting one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent import cli
from agent.commands.auth import parse_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_hmac_secret(tmp_path: Path) -> None:
    path = tmp_path / "ops.key"
    assert cli.main(["keygen", str(path)]) == 0
    assert mode(path) == 0o600
    key = parse_key(path.read_bytes())
    assert key.kind == "hmac-sha256" and len(key.secret) == 32
    assert cli.main(["keygen", str(tmp_path / "other.key")]) == 0
    assert parse_key((tmp_path / "other.key").read_bytes()).secret != key.secret


def test_an_ed25519_pair(tmp_path: Path) -> None:
    path = tmp_path / "ctl"
    assert cli.main(["keygen", "--ed25519", str(path)]) == 0
    assert mode(path) == 0o600 and mode(tmp_path / "ctl.pub") == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    assert b"PUBLIC KEY" in (tmp_path / "ctl.pub").read_bytes()
    assert (
        parse_key(path.read_bytes()).fingerprint
        == parse_key((tmp_path / "ctl.pub").read_bytes()).fingerprint
    )


def test_an_existing_key_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ops.key"
    path.write_text("keep me")
    assert cli.main(["keygen", str(path)]) == 1
    assert path.read_text() == "keep me"
    assert "exists" in capsys.readouterr().err
