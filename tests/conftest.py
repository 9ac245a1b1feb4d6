"""Shared fixtures: a real mosquitto per test, a unique topic base, the agent process."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.support.mqtt import AgentProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """mosquitto on a random loopback port with its own config and persistence dir."""
    with PrivateBroker(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture
def device_id(request: pytest.FixtureRequest) -> str:
    """A device id no other test uses, so topics never cross-talk."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:40]
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def agents() -> Iterator[Callable[..., AgentProcess]]:
    """Starts real agent processes and makes sure they are gone after the test."""
    started: list[AgentProcess] = []

    def start(config: Path, **kwargs: object) -> AgentProcess:
        agent = AgentProcess(config, **kwargs).start()  # type: ignore[arg-type]
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(kill=True)
