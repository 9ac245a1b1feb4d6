"""install.sh's password file step (``setup_password_file``): written 0640 root:GROUP when
asked, an existing one checked and tightened, an empty one refused. The function itself is
cut out of install.sh and run in a temporary directory (the group is root's own here; on a
Pi it is edge-agent). The whole installer runs in tests/deploy/test_nspawn.py."""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[2] / "deploy" / "install.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")


def functions() -> str:
    text = INSTALL.read_text()
    out = []
    for name in ("setup_password_file", "die", "say"):
        # a one-line function (`say() { ...; }`), else one that ends at a line `}`
        match = re.search(rf"^{name}\(\) \{{.*\}}$", text, re.M) or re.search(
            rf"^{name}\(\) \{{$.*?^\}}$", text, re.S | re.M
        )
        assert match is not None, name
        out.append(match.group(0))
    return "\n".join(out)


def run(file: Path, password: str = "") -> subprocess.CompletedProcess[str]:
    group = grp.getgrgid(0).gr_name
    script = f'{functions()}\nsetup_password_file "$1" "$2" "$3"\n'
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script, "install.sh", str(file), group, password],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_password_is_written_0640_and_never_echoed(tmp_path: Path) -> None:
    file = tmp_path / "mqtt.pass"
    result = run(file, "s3cret-pw")
    assert result.returncode == 0, result.stderr
    assert file.read_text() == "s3cret-pw\n"
    assert mode(file) == 0o640 and file.stat().st_uid == 0 and file.stat().st_gid == 0
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mqtt.pass"]  # no staging file left


def test_an_existing_loose_password_file_is_tightened(tmp_path: Path) -> None:
    file = tmp_path / "mqtt.pass"
    file.write_text("pw\n")
    file.chmod(0o666)
    result = run(file)
    assert result.returncode == 0, result.stderr
    assert mode(file) == 0o640
    assert "making it 0640" in result.stdout


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_password_file_stops_the_install(tmp_path: Path, content: str) -> None:
    file = tmp_path / "mqtt.pass"
    file.write_text(content)
    result = run(file)
    assert result.returncode != 0
    assert "is empty" in result.stderr


def test_no_password_file_is_fine(tmp_path: Path) -> None:
    assert run(tmp_path / "mqtt.pass").returncode == 0
    assert not (tmp_path / "mqtt.pass").exists()
