"""YAML loading that remembers where every key came from.

PyYAML's usual loaders accept duplicate keys silently (the last wins) and follow YAML 1.1,
where ``off``, ``no`` and ``on`` are booleans - so ``initial: off`` would mean ``False``.
This loader uses YAML 1.2 booleans (only true/false), rejects duplicate keys, substitutes
``${ENV_VAR}`` (and ``${ENV_VAR:-default}``) in strings, and records the line of every
key path so validation errors can say which line is wrong.

It also parses on a budget, because a config file is input the agent does not control:
nesting deeper than :data:`MAX_DEPTH` is refused before PyYAML's recursive composer sees it
(a RecursionError otherwise), and building the data stops after :data:`MAX_NODES` values,
aliases counted at every use (a 500-byte "billion laughs" file otherwise expands to
gigabytes). Keys must be scalars (a list as a key is a problem, not a TypeError).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from drivers._yaml import YAML12CLoader

KeyPath = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_Loader = YAML12CLoader

#: Deepest nesting of mappings and lists accepted.
MAX_DEPTH = 64
#: Most values (scalars, mappings, lists; an alias counts its whole value each time it is
#: used) a config may expand to. Real configs have a few hundred.
MAX_NODES = 100_000


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0

    def spend(self, node: yaml.Node) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YAMLSyntaxError(
                node.start_mark.line + 1,
                f"expands to more than {MAX_NODES} values (aliases counted at every use):"
                " refusing it",
            )


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
    try:
        _check_depth(text)
        loader = _Loader(text)
    except yaml.YAMLError as e:
        raise _syntax_error(e, text) from e
    try:
        node = loader.get_single_node()
        budget = _Budget()
        source.data = {} if node is None else _build(node, (), loader, source, env, budget=budget)
    except yaml.YAMLError as e:
        raise _syntax_error(e, text) from e
    finally:
        loader.dispose()
    if node is not None:
        source.lines.setdefault((), node.start_mark.line + 1)
    return source


def _syntax_error(e: yaml.YAMLError, text: str) -> YAMLSyntaxError:
    """``e`` with the line it happened on."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        return YAMLSyntaxError(mark.line + 1 if mark else None, f"{e.problem or e}")
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        return YAMLSyntaxError(line, f"character {e.character!r} is not allowed in YAML")
    return YAMLSyntaxError(None, str(e))


def _check_depth(text: str) -> None:
    """Refuse nesting beyond :data:`MAX_DEPTH`, from the event stream (no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise YAMLSyntaxError(line, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _build(
    node: yaml.Node,
    path: KeyPath,
    loader: _Loader,
    source: Source,
    env: Mapping[str, str],
    *,
    budget: _Budget,
) -> Any:
    budget.spend(node)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # reported below
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
            if not isinstance(key_node, yaml.ScalarNode):
                where = path + ("(a list or mapping as a key)",)
                source.lines[where] = key_node.start_mark.line + 1
                source.problems.append((where, source.lines[where], "a key must be a string"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int) or isinstance(key, bool):
                source.problems.append(
                    (path, key_node.start_mark.line + 1, f"key {key!r} must be a string")
                )
                continue
            child = path + (str(key),)
            source.lines[child] = key_node.start_mark.line + 1
            out[str(key)] = _build(value_node, child, loader, source, env, budget=budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            source.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_build(item, path + (i,), loader, source, env, budget=budget))
        return items
    value = loader.construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        source.substituted.add(path)
        value = _substitute(value, path, node.start_mark.line + 1, source, env)
        if isinstance(node, yaml.ScalarNode) and not node.style:  # plain: None, libyaml ""
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
