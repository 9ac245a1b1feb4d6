"""The config is parsed on libyaml's parser (PyYAML's C extension) when PyYAML has it:
the same data and the same line numbers as the pure-Python parser, ~2 x faster per start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config import yamlsource
from drivers._yaml import YAML12Loader
from tests.support.mqtt import ROOT

CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def test_the_config_loader_uses_libyaml() -> None:
    # PyYAML's wheels (PyPI, piwheels) are built with libyaml.
    assert hasattr(yaml, "CSafeLoader")
    assert issubclass(yamlsource._Loader, yaml.CSafeLoader)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_libyaml_gives_what_the_python_parser_gives(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_text()
    environ = {
        "EDGE_AGENT_DEMO_PORT": "1883",
        "EDGE_AGENT_DEMO_HTTP_PORT": "9108",
        "EDGE_AGENT_DEMO_STATE_DIR": "/tmp/state",
    }
    fast = yamlsource.parse(text, file=str(path), environ=environ)
    monkeypatch.setattr(yamlsource, "_Loader", YAML12Loader)
    slow = yamlsource.parse(text, file=str(path), environ=environ)
    assert fast.data == slow.data
    assert fast.lines == slow.lines
    assert fast.problems == slow.problems


def test_unquoted_substitutions_and_yaml_1_2_booleans_on_libyaml() -> None:
    text = "a: ${PORT}\nb: '${PORT}'\nc: off\nd: true\n"
    source = yamlsource.parse(text, file="t.yaml", environ={"PORT": "1883"})
    assert source.data == {"a": 1883, "b": "1883", "c": "off", "d": True}
