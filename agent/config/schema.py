"""The JSON Schema of the config file, for editors' YAML language servers."""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec

from agent.config.model import DRIVER_UNIONS, Config, Name
from drivers.base import (
    DURATION_JSON_SCHEMA,
    InputOptions,
    Options,
    OutputOptions,
    SensorOptions,
)


def config_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file (imports every driver's module)."""
    schema = msgspec.json.schema(_with_every_driver())
    _widen_durations(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pi-edge-agent config"
    return schema


def _with_every_driver() -> type[msgspec.Struct]:
    """:class:`Config` as the schema shows it: ``sensors``, ``outputs`` and ``inputs`` as
    the full unions of the drivers' options (Config declares their bases, which the config
    walker resolves by tag). Every field is restated, so the order stays Config's."""
    hints = typing.get_type_hints(Config, include_extras=True)
    drivers: dict[str, type[Options]] = {
        "sensors": SensorOptions,
        "outputs": OutputOptions,
        "inputs": InputOptions,
    }
    fields: list[tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(Config):
        tp = (
            types.GenericAlias(dict, (Name, DRIVER_UNIONS[drivers[f.name]].union()))
            if f.name in drivers
            else hints[f.name]
        )
        default = (
            f.default
            if f.default is not msgspec.NODEFAULT
            else msgspec.field(default_factory=f.default_factory)
        )
        fields.append((f.name, tp, default))
    return msgspec.defstruct(
        "Config",
        fields,
        bases=(Config,),
        module=Config.__module__,
        namespace={"__doc__": Config.__doc__},
        frozen=True,
        kw_only=True,
        forbid_unknown_fields=True,
    )


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
