"""YAML as the agent reads it (YAML 1.2 booleans), for the config loader and the kit alike.

PyYAML follows YAML 1.1, where ``on``, ``off``, ``yes`` and ``no`` are booleans: a relay's
``initial: off`` would become ``False``. Only ``true``/``false`` are booleans here.
"""

from __future__ import annotations

import re

import yaml


class YAML12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans."""


YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


if hasattr(yaml, "CSafeLoader"):  # PyYAML built with libyaml (its wheels are)

    class YAML12CLoader(yaml.CSafeLoader):
        """:class:`YAML12Loader` on libyaml's parser: the same documents, ~10 x faster."""

    YAML12CLoader.yaml_implicit_resolvers = {
        first: list(resolvers) for first, resolvers in YAML12Loader.yaml_implicit_resolvers.items()
    }
else:  # pragma: no cover - a PyYAML without libyaml
    YAML12CLoader = YAML12Loader  # type: ignore[assignment,misc]
