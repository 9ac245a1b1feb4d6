"""Commands while the clock is not synchronised (CONTRACT 14): a ``ts`` cannot be judged by
a clock that may be years off, and signed commands stay protected by their nonces.

The handler judges by its trusted time (``CommandHandler._reference``); these tests step
the agent's clock forwards and backwards, restart it on a clock that booted in 2022, and
check that no signed command is ever accepted twice and that good ones are not refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.handler import CommandAuth, CommandHandler, Reply
from agent.commands.seen import SeenCommands
from agent.mqtt.payloads import iso_ts
from agent.mqtt.transport import IncomingMessage
from tests.actuation.rig import Rig, relay
from tests.commands.test_signed import KEYS, NOW, TOPICS, inner, signed
from tests.support.clock import IN_2022, SteppableClock

YEAR_S = 365 * 86400.0


class Agent:
    """A handler on a steppable clock, with its memory in a file: :meth:`restart` makes a
    new handler (and memory, read back from the file) as a restarted agent would."""

    def __init__(self, rig: Rig, path: Path, clock: SteppableClock) -> None:
        self.clock = clock
        self.path = path
        self.sent: list[Reply] = []
        self.outputs = rig.open({"pump": relay(17)})
        self.seen = SeenCommands(path=path)
        self.seen.open(None)
        self.handler = self._handler()

    def _handler(self) -> CommandHandler:
        return CommandHandler(
            topics=TOPICS,
            outputs=self.outputs,
            max_age=30.0,
            max_skew=5.0,
            send=self.sent.append,
            seen=self.seen,
            auth=CommandAuth(keys=KEYS, required=False),
            time_source=self.clock,
        )

    def restart(self) -> None:
        self.seen.close()
        self.seen = SeenCommands(path=self.path)
        self.seen.open(self.clock.wall() if self.clock.synced() else None)
        self.handler = self._handler()

    def reply(self, payload: bytes | str) -> dict[str, Any]:
        self.sent.clear()
        raw = payload.encode() if isinstance(payload, str) else payload
        self.handler.handle(IncomingMessage(TOPICS.output_set("pump"), raw, 1, False, None))
        body: dict[str, Any] = json.loads(self.sent[0].payload)
        return body

    def error(self, payload: bytes | str) -> str | None:
        body = self.reply(payload)
        return None if body["ok"] else str(body["error"])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(state_path=tmp_path / "outputs.json")
    yield rig
    rig.close()


@pytest.fixture
def start(rig: Rig, tmp_path: Path) -> Iterator[Callable[[SteppableClock], Agent]]:
    started: list[Agent] = []

    def make(clock: SteppableClock) -> Agent:
        started.append(Agent(rig, tmp_path / "commands.seen", clock))
        return started[-1]

    yield make
    for agent in started:
        agent.seen.close()


def test_a_pi_booted_in_2022_takes_signed_commands_and_refuses_their_replays(
    rig: Rig, start: Callable[[SteppableClock], Agent]
) -> None:
    clock = SteppableClock(wall=IN_2022, synced=False)
    agent = start(clock)
    # The controller's clock is right (2026): four years "ahead" of the agent's. Not stale.
    first = signed(inner("on", ts=NOW))
    assert agent.error(first) is None
    assert agent.error(first) == "replayed"
    clock.advance(5)
    assert agent.error(signed(inner("off", ts=NOW + 5))) is None
    # Unsigned commands with a ts from a right clock, and without ts, are accepted too.
    assert agent.error(json.dumps({"state": "on", "ts": iso_ts(NOW + 5)})) is None
    assert agent.error("off") is None


def test_a_replay_long_after_is_stale_even_after_a_restart_in_2022(
    rig: Rig, start: Callable[[SteppableClock], Agent]
) -> None:
    # Synchronised: a command is accepted; a minute later its nonce is forgotten (stale).
    clock = SteppableClock(wall=NOW, synced=True)
    agent = start(clock)
    captured = signed(inner("on", ts=NOW))
    assert agent.error(captured) is None
    clock.advance(3600)
    assert agent.error(signed(inner("off", ts=NOW + 3600))) is None
    assert agent.error(captured) == "stale"
    # The Pi reboots without network: the clock is in 2022 and unsynchronised. An attacker
    # replays the captured command: its nonce is long forgotten, but it is still stale.
    clock.reboot("boot-b", wall=IN_2022)
    agent.restart()
    assert agent.error(captured) == "stale"
    assert not rig.pin(17).state


def test_replays_are_refused_across_steps_of_the_clock(
    rig: Rig, start: Callable[[SteppableClock], Agent]
) -> None:
    clock = SteppableClock(wall=IN_2022, synced=False)
    agent = start(clock)
    envelopes = []
    for n in range(3):
        envelopes.append(signed(inner("on" if n % 2 else "off", ts=NOW + n)))
        assert agent.error(envelopes[-1]) is None
        clock.advance(1)
    for step in (4 * YEAR_S, YEAR_S, -3600.0):
        clock.step(step)
        assert {agent.error(e) for e in envelopes} == {"replayed"}
    clock.sync(NOW + 10)  # NTP: the clock is right from now on
    assert {agent.error(e) for e in envelopes} == {"replayed"}
    agent.restart()  # and after a restart
    assert {agent.error(e) for e in envelopes} == {"replayed"}
    clock.advance(60)
    assert {agent.error(e) for e in envelopes} == {"stale"}


def test_an_unsynchronised_agent_does_not_judge_ts_ahead_but_does_judge_it_behind(
    rig: Rig, start: Callable[[SteppableClock], Agent]
) -> None:
    clock = SteppableClock(wall=NOW, synced=True)
    agent = start(clock)
    assert agent.error(signed(inner("on", ts=NOW + 60))) == "stale"  # synchronised: ahead
    clock.is_synced = False
    # Not synchronised: ahead may be our clock's fault; accepted, and the signer's time
    # becomes the trusted time ...
    assert agent.error(signed(inner("on", ts=NOW + 60))) is None
    # ... so a command 31 s older than that is stale, whatever the wall clock says.
    clock.step(-YEAR_S)
    assert agent.error(signed(inner("off", ts=NOW + 29))) == "stale"
    assert agent.error(signed(inner("off", ts=NOW + 31))) is None


def test_the_trusted_time_survives_a_restart_and_never_goes_back(
    rig: Rig, start: Callable[[SteppableClock], Agent]
) -> None:
    clock = SteppableClock(wall=NOW, synced=True)
    agent = start(clock)
    assert agent.error(signed(inner("on", ts=NOW, id="a"))) is None
    clock.reboot("boot-b", wall=IN_2022)
    agent.restart()
    assert agent.seen.trusted_value == NOW
    clock.advance(100)
    assert agent.error(signed(inner("off", ts=NOW + 100 - 31))) == "stale"
    assert agent.error(signed(inner("off", ts=NOW + 100 - 29))) is None
