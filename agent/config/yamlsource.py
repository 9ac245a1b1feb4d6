"""YAML loading that remembers where every key came from.

PyYAML's usual loaders accept duplicate keys silently (the last wins) and follow YAML 1.1,
where ``off``, ``no`` and ``on`` are booleans - so ``initial: off`` would mean ``False``.
This loader uses YAML 1.2 booleans (only true/false), rejects duplicate keys, substitutes
``${ENV_VAR}`` (and ``${ENV_VAR:-default}``) in strings, and records the line of every
key path so validation errors can say which line is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from drivers._yaml import YAML12Loader

KeyPath = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_Loader = YAML12Loader


@dataclass
class Source:
    """A parsed YAML document: plain Python data plus the line of every key path."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[tuple[KeyPath, int, str]] = field(default_factory=list)
    #: Key paths whose value came from a ``${ENV_VAR}``: perhaps a secret, never echoed.
    substituted: set[KeyPath] = field(default_factory=set)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


class YAMLSyntaxError(Exception):
    """The text is not valid YAML."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse(text: str, *, file: str, environ: Mapping[str, str] | None = None) -> Source:
    """Parse ``text``; structural problems (duplicate keys, missing env vars) are collected
    in ``Source.problems`` rather than raised, so they are reported with all the others.

    Raises:
        YAMLSyntaxError: the text is not YAML at all.
    """
    env = os.environ if environ is None else environ
    source = Source(file=file, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        source.data = {} if node is None else _build(node, (), loader, source, env)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise YAMLSyntaxError(line, f"{e.problem or e}") from e
    except yaml.YAMLError as e:
        raise YAMLSyntaxError(None, str(e)) from e
    finally:
        loader.dispose()
    if node is not None:
        source.lines.setdefault((), node.start_mark.line + 1)
    return source


def _build(
    node: yaml.Node, path: KeyPath, loader: _Loader, source: Source, env: Mapping[str, str]
) -> Any:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                source.problems.append(
                    (path + (str(key),), line, f"duplicate key (first defined on line {seen[key]})")
                )
            else:
                seen[key] = line
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int) or isinstance(key, bool):
                source.problems.append(
                    (path, key_node.start_mark.line + 1, f"key {key!r} must be a string")
                )
                continue
            child = path + (str(key),)
            source.lines[child] = key_node.start_mark.line + 1
            out[str(key)] = _build(value_node, child, loader, source, env)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            source.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_build(item, path + (i,), loader, source, env))
        return items
    value = loader.construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        source.substituted.add(path)
        value = _substitute(value, path, node.start_mark.line + 1, source, env)
        if isinstance(node, yaml.ScalarNode) and node.style is None:
            # unquoted: `port: ${PORT}` is a number, as if it had been written so
            tag = loader.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
            value = loader.construct_object(yaml.ScalarNode(tag, value), deep=True)
    return value


def _substitute(
    value: str, path: KeyPath, line: int, source: Source, env: Mapping[str, str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        source.problems.append((path, line, f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(replace, value)
