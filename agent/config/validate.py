"""Turns parsed YAML into typed config objects, collecting *every* problem with its path.

msgspec stops at the first error and reports dictionary keys as ``[...]``; users need all
their mistakes at once, each with the line and the full key path (``sensors.air.interval``).
So this walks the target type field by field: structs, tagged unions on ``driver``, dicts,
sequences and ``X | None`` are walked here; leaves are checked by ``msgspec.convert``.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from agent.config.durations import parse_duration
from agent.config.model import DRIVER_UNIONS, DriverUnion
from agent.config.yamlsource import KeyPath
from drivers import registry
from drivers.base import OptionError

_MSGSPEC_SUFFIX = re.compile(r" - at `\$[^`]*`$")
#: Keys whose values are secrets wherever they appear: a problem with one names its type,
#: never its value (it would land in `check`'s output, the log and a config_rejected event).
SECRET_KEYS = frozenset({"password", "secret", "token", "key", "passphrase"})


@dataclass
class Problems:
    """Problems found so far, by key path."""

    items: list[tuple[KeyPath, str]] = field(default_factory=list)
    #: Paths whose values must not be echoed besides those named in :data:`SECRET_KEYS`
    #: (values substituted from the environment).
    secret_paths: set[KeyPath] = field(default_factory=set)

    def is_secret(self, path: KeyPath) -> bool:
        return path in self.secret_paths or (bool(path) and path[-1] in SECRET_KEYS)

    def add(self, path: KeyPath, message: str) -> None:
        self.items.append((path, message))


class _Invalid:
    """Marks a value that failed validation, so the walk can go on."""


INVALID: Any = _Invalid()


def format_path(path: KeyPath) -> str:
    """``("sensors", "air", "interval")`` -> ``sensors.air.interval``; indices as ``[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def convert(value: Any, tp: Any, path: KeyPath, problems: Problems) -> Any:
    """``value`` as an instance of ``tp``, or :data:`INVALID` with problems recorded."""
    if isinstance(value, float) and not math.isfinite(value):
        # YAML's .inf and .nan: no setting of the agent means "infinite", and timers,
        # JSON payloads and MQTT intervals all break on them at run time.
        problems.add(path, f"must be a finite number, got {value!r}")
        return INVALID
    origin = get_origin(tp)
    if origin is Annotated:
        return _leaf(_maybe_duration(value, tp, path, problems), tp, path, problems)
    if origin in (Union, types.UnionType):
        return _union(value, tp, path, problems)
    if tp in DRIVER_UNIONS:
        return _driver(value, DRIVER_UNIONS[tp], path, problems)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp.__struct_config__.tag_field is not None:
            return _tagged(value, [tp], path, problems)
        return _struct(value, tp, path, problems)
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, dict):
            problems.add(path, f"expected a mapping, got {_kind(value)}")
            return INVALID
        out = {}
        for key, item in value.items():
            checked_key = _leaf(key, key_tp, path + (key,), problems)
            out[key] = convert(item, value_tp, path + (key,), problems)
            if checked_key is INVALID:
                out[key] = INVALID
        return out
    if origin in (list, tuple) and not (origin is tuple and len(get_args(tp)) != 2):
        (item_tp, *_) = get_args(tp)
        if not isinstance(value, list):
            problems.add(path, f"expected a list, got {_kind(value)}")
            return INVALID
        items = [convert(item, item_tp, path + (i,), problems) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return _leaf(value, tp, path, problems)


def is_valid(value: Any) -> bool:
    """True when nothing inside ``value`` failed."""
    if value is INVALID:
        return False
    if isinstance(value, dict):
        return all(is_valid(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(is_valid(v) for v in value)
    return True


def _struct(value: Any, tp: type[msgspec.Struct], path: KeyPath, problems: Problems) -> Any:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {_kind(value)}")
        return INVALID
    info = msgspec.structs.fields(tp)
    by_name = {f.encode_name: f for f in info}
    tag_field = tp.__struct_config__.tag_field
    hints = typing.get_type_hints(tp, include_extras=True)
    kwargs: dict[str, Any] = {}
    ok = True
    for key, item in value.items():
        if key == tag_field:
            continue
        f = by_name.get(key)
        if f is None:
            problems.add(path + (key,), f"unknown key{_suggest(key, list(by_name))}")
            ok = False
            continue
        converted = convert(item, hints[f.name], path + (key,), problems)
        ok = ok and is_valid(converted)
        kwargs[f.name] = converted
    for f in info:
        if f.required and f.encode_name not in value:
            problems.add(path, f"missing required key `{f.encode_name}`")
            ok = False
    if not ok:
        return INVALID
    try:
        return tp(**kwargs)
    except OptionError as e:
        problems.add(path + (e.option,), str(e))
        return INVALID
    except (ValueError, TypeError) as e:
        problems.add(path, str(e))
        return INVALID


def _union(value: Any, tp: Any, path: KeyPath, problems: Problems) -> Any:
    members = [m for m in get_args(tp) if m is not type(None)]
    if value is None and len(members) < len(get_args(tp)):
        return None
    structs = [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
    if len(members) == 1:
        return convert(value, members[0], path, problems)
    if structs and len(structs) == len(members):
        return _tagged(value, structs, path, problems)
    return _leaf(value, tp, path, problems)


def _driver(value: Any, union: DriverUnion, path: KeyPath, problems: Problems) -> Any:
    """A driver's options: the member its ``driver`` names, or, when that names none, the
    problem as :func:`_tagged` words it for the whole union."""
    tag = value.get(union.base.__struct_config__.tag_field) if isinstance(value, dict) else None
    target = union.member(tag) if isinstance(tag, str) else None
    if target is None:
        return _tagged(value, union.members(), path, problems)
    return _struct(value, target, path, problems)


def _tagged(value: Any, structs: list[Any], path: KeyPath, problems: Problems) -> Any:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {_kind(value)}")
        return INVALID
    tag_field = structs[0].__struct_config__.tag_field
    by_tag = {s.__struct_config__.tag: s for s in structs}
    tag = value.get(tag_field)
    if tag is None:
        problems.add(path, f"missing required key `{tag_field}` (one of {', '.join(by_tag)})")
        return INVALID
    target = by_tag.get(tag)
    if target is None and tag in registry.BROKEN:
        problems.add(path + (tag_field,), str(registry.BROKEN[tag]))
        return INVALID
    if target is None:
        problems.add(
            path + (tag_field,),
            f"unknown {tag_field} {tag!r}{_suggest(str(tag), list(by_tag))}; "
            f"known: {', '.join(by_tag)}",
        )
        return INVALID
    return _struct(value, target, path, problems)


def _maybe_duration(value: Any, tp: Any, path: KeyPath, problems: Problems) -> Any:
    for meta in get_args(tp)[1:]:
        if isinstance(meta, msgspec.Meta) and meta.extra and meta.extra.get("duration"):
            try:
                return parse_duration(value)
            except ValueError as e:
                problems.add(path, str(e))
                return INVALID
    return value


def _leaf(value: Any, tp: Any, path: KeyPath, problems: Problems) -> Any:
    if value is INVALID:
        return INVALID
    try:
        return msgspec.convert(value, tp, strict=True)
    except msgspec.ValidationError as e:
        message = _MSGSPEC_SUFFIX.sub("", str(e))
        if problems.is_secret(path):
            problems.add(path, _without_value(message, value))
        else:
            problems.add(path, _humane(message, value))
        return INVALID


def _humane(message: str, value: Any) -> str:
    message = message.replace("Expected `", "expected `")
    if message.startswith("expected"):
        message = message.split(", got `")[0] + f", got {value!r}"
    return message.replace("Invalid enum value", "expected one of the listed values, got")


def _without_value(message: str, value: Any) -> str:
    """A problem with a secret's value, saying what kind of value it is, not which."""
    message = message.replace("Expected `", "expected `").split(", got `")[0]
    if message.startswith("Invalid enum value"):
        message = "expected one of the listed values"
    kind = "a number" if isinstance(value, int | float) and not isinstance(value, bool) else None
    hint = " (quote it in YAML to make it a string)" if kind else ""
    shown = kind or _kind(value)
    return f"{message}, got {shown}{hint}; the value is not shown: it may be a secret"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
