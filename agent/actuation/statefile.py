"""The outputs' last states, for ``initial: restore``: one small JSON file, replaced
atomically so a power cut leaves either the old file or the new one, never half of each.

A state is ``true``/``false``, or for an output with a level that is on, its level in %
(``{"pump": true, "fan": 40.0}``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


#: On/off, or the level (%, above 0) an output with levels was on at.
SavedState = bool | float


class OutputStateFile:
    """``{"pump": true, "heater": false, "fan": 40.0}`` at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, SavedState]:
        """The saved states; empty when there is no file or it cannot be read (logged)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable output state file %s: %s", self.path, e)
            return {}
        if not isinstance(data, dict):
            log.error("ignoring output state file %s: not a JSON object", self.path)
            return {}
        return {str(k): v for k, v in data.items() if _is_state(v)}

    def save(self, states: dict[str, SavedState]) -> None:
        """Write ``states``: temporary file, fsync, rename over the old, fsync the directory."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(states, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _is_state(value: object) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, int | float) and 0 < value <= 100
