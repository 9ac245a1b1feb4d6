"""mqtt-io 2.7.0 in a venv of its own (``tests/bench/.venv-mqttio``, git-ignored).

Installed once through pip's configured index; when that fails, the bench skips mqtt-io's
column and says why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.bench.harness import BENCH, PYTHON

VERSION = "2.7.0"
VENV = BENCH / ".venv-mqttio"


def ensure() -> tuple[Path | None, str]:
    """mqtt-io's interpreter, or None and the reason it is unavailable."""
    python = VENV / "bin" / "python"
    stamp = VENV / f".installed-{VERSION}"
    if os.environ.get("BENCH_NO_MQTTIO"):
        return None, "skipped: BENCH_NO_MQTTIO is set"
    if stamp.exists() and python.exists():
        return python, ""
    print(f"bench: installing mqtt-io {VERSION} into {VENV.relative_to(BENCH.parents[1])}")
    steps = [
        [PYTHON, "-m", "venv", "--clear", str(VENV)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"mqtt-io=={VERSION}",
        ],
        [str(python), "-c", "import mqtt_io.server"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"mqtt-io {VERSION} could not be installed ({e})"
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {done.returncode}"
            return None, f"mqtt-io {VERSION} could not be installed ({why})"
    stamp.touch()
    return python, ""


def version_of(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('mqtt-io'))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() or "?"
