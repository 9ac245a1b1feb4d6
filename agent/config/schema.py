"""The JSON Schema of the config file, for editors' YAML language servers."""

from __future__ import annotations

from typing import Any

import msgspec

from agent.config.model import Config
from drivers.base import DURATION_JSON_SCHEMA


def config_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file."""
    schema = msgspec.json.schema(Config)
    _widen_durations(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pi-edge-agent config"
    return schema


def _widen_durations(node: Any) -> None:
    """Durations are numbers or strings like "10s"; msgspec only knows the number."""
    if isinstance(node, dict):
        if node.get("pattern") == DURATION_JSON_SCHEMA["pattern"]:
            node["type"] = DURATION_JSON_SCHEMA["type"]
        for value in node.values():
            _widen_durations(value)
    elif isinstance(node, list):
        for value in node:
            _widen_durations(value)
