"""Where the agent keeps its state (CONTRACT section 1)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def on_raspberry_pi(root: Path = Path("/")) -> bool:
    """True when the device tree says this is a Raspberry Pi."""
    try:
        return "Raspberry Pi" in (root / "proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


def state_dir(configured: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``state_dir`` from the config, else systemd's ``$STATE_DIRECTORY``, else
    ``/var/lib/edge-agent`` on a Pi (or as root), else ``~/.local/state/edge-agent``."""
    env = os.environ if environ is None else environ
    if configured:
        return Path(configured).expanduser()
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if on_raspberry_pi() or os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "edge-agent"
