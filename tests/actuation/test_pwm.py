"""PWM outputs: the driver's pin history from construction, level commands through the real
controller, and every safety rule of CONTRACT section 8 with levels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from agent.actuation.outputs import OutputController, OutputState
from agent.commands.parse import Command, CommandRefused, parse_command
from drivers.pwm import SPEC, PWMOptions, PWMOutput
from tests.actuation.rig import Rig, relay


def pwm(pin: int, **fields: Any) -> PWMOptions:
    return msgspec.convert({"driver": "pwm", "pin": pin, **fields}, PWMOptions)


@pytest.fixture
def factory() -> Iterator[Any]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()
    f.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "outputs.json")
    r.factory.pin_class = MockPWMPin
    yield r
    r.close()


def driven(pin: Any) -> list[float]:
    """Every level the pin was driven to (its first state is the unconfigured input)."""
    return [float(s.state) for s in pin.states[1:]]


def last(rig: Rig, name: str) -> OutputState:
    return [state for n, state in rig.published if n == name][-1]


# -- the driver ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("active_high", "initial", "history"),
    [(True, 0.0, [0.0]), (True, 0.6, [0.0, 0.6]), (False, 0.0, [1.0]), (False, 0.3, [1.0, 0.7])],
)
def test_the_pin_starts_at_its_initial_level_from_construction(
    factory: Any, active_high: bool, initial: float, history: list[float]
) -> None:
    pin = factory.pin(18)
    if not active_high:
        pin.drive_high()  # an inverting board's pull-up holds its input high before we start
        pin.clear_states()
    with PWMOutput(18, active_high=active_high, initial_level=initial, pin_factory=factory) as out:
        assert [float(s.state) for s in pin.states] == [pytest.approx(v) for v in history]
        assert out.level == pytest.approx(initial)


def test_levels_are_read_back_from_the_pin(factory: Any) -> None:
    with PWMOutput(18, frequency=25_000, pin_factory=factory) as out:
        out.set_level(0.4)
        assert out.level == 0.4 and out.is_on
        assert factory.pin(18).frequency == 25_000
        out.set(False)
        assert out.level == 0.0 and not out.is_on
    assert driven(factory.pin(18)) == [0.4, 0.0]


# -- commands --------------------------------------------------------------------------------


def test_plain_percent_and_json_level_commands_parse() -> None:
    assert parse_command(b"40%", retained=False, now=0, max_age=30) == Command("on", level=40.0)
    assert parse_command(b"0%", retained=False, now=0, max_age=30).level == 0.0
    cmd = parse_command(
        b'{"state": "on", "level": 12.5, "id": 7}', retained=False, now=0, max_age=30
    )
    assert (cmd.action, cmd.level, cmd.id) == ("on", 12.5, 7)


@pytest.mark.parametrize(
    "payload",
    [
        b"140%",
        b"-1%",
        b"x%",
        b"nan%",
        b'{"state": "on", "level": 101}',
        b'{"state": "on", "level": "40"}',
        b'{"state": "on", "level": true}',
        b'{"state": "off", "level": 40}',
    ],
)
def test_bad_levels_are_refused(payload: bytes) -> None:
    with pytest.raises(CommandRefused) as e:
        parse_command(payload, retained=False, now=0, max_age=30)
    assert e.value.code == "bad_payload"


def test_an_output_follows_level_commands_and_publishes_its_level(rig: Rig) -> None:
    c = rig.open({"lamp": pwm(18)})
    pin = rig.factory.pin(18)
    assert c.state("lamp") == OutputState(False, "boot", c.state("lamp").ts, level=0.0)  # type: ignore[union-attr]
    c.command("lamp", Command("on", level=40))
    assert pin.state == pytest.approx(0.4)
    assert (last(rig, "lamp").on, last(rig, "lamp").level) == (True, 40.0)
    assert b'"level":40.0' in last(rig, "lamp").encode()
    c.command("lamp", Command("on", level=75))
    c.command("lamp", Command("off"))
    assert pin.state == 0 and last(rig, "lamp").level == 0.0
    c.command("lamp", Command("on"))  # back to the last level
    assert last(rig, "lamp").level == 75.0
    c.command("lamp", Command("toggle"))
    assert not last(rig, "lamp").on
    c.command("lamp", Command("on", level=0))  # "0%": off
    assert not last(rig, "lamp").on
    assert driven(pin) == [0.4, 0.75, 0.0, 0.75, 0.0]


def test_levels_are_kept_within_min_and_max(rig: Rig) -> None:
    c = rig.open({"fan": pwm(18, min_level=30, max_level=80)})
    c.command("fan", Command("on", level=10))
    assert last(rig, "fan").level == 30.0
    c.command("fan", Command("on", level=95))
    assert last(rig, "fan").level == 80.0


def test_a_level_for_a_relay_is_refused(rig: Rig) -> None:
    rig.factory.pin_class = MockPWMPin
    c = rig.open({"pump": relay(17)})
    with pytest.raises(CommandRefused) as e:
        c.command("pump", Command("on", level=50))
    assert e.value.code == "bad_payload"
    assert not c.state("pump").on  # type: ignore[union-attr]


# -- safety ----------------------------------------------------------------------------------


def test_initial_on_starts_at_initial_level_and_shutdown_returns_to_it(rig: Rig) -> None:
    c = rig.open({"lamp": pwm(18, initial="on", initial_level=60)})
    pin = rig.factory.pin(18)
    assert driven(pin) == [pytest.approx(0.6)]
    assert c.state("lamp").level == 60.0  # type: ignore[union-attr]
    c.command("lamp", Command("on", level=20))
    rig.controller.shutdown()  # type: ignore[union-attr]
    assert driven(pin) == [pytest.approx(0.6), pytest.approx(0.2), pytest.approx(0.6)]
    assert rig.reasons("lamp")[-1] == "shutdown" and rig.published[-1][1].level == 60.0


def test_shutdown_of_an_initially_off_output_switches_it_off(rig: Rig) -> None:
    rig.open({"lamp": pwm(18)})
    rig.controller.command("lamp", Command("on", level=50))  # type: ignore[union-attr]
    rig.controller.shutdown()  # type: ignore[union-attr]
    assert driven(rig.factory.pin(18)) == [0.5, 0.0]
    assert rig.reasons("lamp")[-1] == "shutdown"


def test_max_on_switches_a_dimmed_output_off(rig: Rig) -> None:
    c = rig.open({"heater": pwm(18, max_on=0.2)})
    c.command("heater", Command("on", level=35))
    rig.run_for(0.1)
    c.command("heater", Command("on", level=45))  # a new level does not extend max_on
    rig.run_for(0.25)
    assert not last(rig, "heater").on and last(rig, "heater").reason == "max_on"
    assert "max_on" in rig.event_kinds()


def test_a_pulse_at_a_level_ends_off(rig: Rig) -> None:
    c = rig.open({"lamp": pwm(18)})
    state = c.command("lamp", Command("on", duration=0.1, level=25))
    assert state.level == 25.0 and state.until is not None
    rig.run_for(0.2)
    assert (last(rig, "lamp").on, last(rig, "lamp").reason) == (False, "pulse_end")
    assert rig.factory.pin(18).state == 0


def test_failsafe_goes_to_the_failsafe_level(rig: Rig) -> None:
    c = rig.open({"fan": pwm(18, failsafe="on", failsafe_level=90, failsafe_after=0.1)})
    c.connected()
    c.command("fan", Command("on", level=30))
    c.disconnected()
    rig.run_for(0.2)
    assert (last(rig, "fan").level, last(rig, "fan").reason) == (90.0, "failsafe")
    assert rig.factory.pin(18).state == pytest.approx(0.9)


def test_interlock_with_a_relay(rig: Rig) -> None:
    c = rig.open({"lamp": pwm(18, interlock=["pump"]), "pump": relay(17)})
    c.command("pump", Command("on"))
    c.command("lamp", Command("on", level=50))
    assert not c.state("pump").on and c.state("lamp").on  # type: ignore[union-attr]
    assert last(rig, "pump").reason == "interlock"
    c.command("pump", Command("on"))
    assert not c.state("lamp").on and last(rig, "lamp").level == 0.0  # type: ignore[union-attr]


def test_restore_brings_an_output_back_at_its_last_level(rig: Rig) -> None:
    c: OutputController = rig.open({"lamp": pwm(18, initial="restore", initial_level=70)})
    c.command("lamp", Command("on", level=20))
    c.command("lamp", Command("on", level=35))  # a new level, still on: saved too
    assert rig.controller is not None
    assert json.loads(rig.state_path.read_text()) == {"lamp": 35.0}
    rig.reboot()
    rig.factory.pin_class = MockPWMPin
    c = rig.open({"lamp": pwm(18, initial="restore", initial_level=70)})
    assert driven(rig.factory.pin(18)) == [pytest.approx(0.35)]  # opened straight at it
    assert (c.state("lamp").reason, c.state("lamp").level) == ("restore", 35.0)  # type: ignore[union-attr]


def test_a_restored_level_is_kept_within_a_changed_band(rig: Rig) -> None:
    c: OutputController = rig.open({"fan": pwm(18, initial="restore")})
    c.command("fan", Command("on", level=20))
    rig.reboot()
    rig.factory.pin_class = MockPWMPin
    c = rig.open({"fan": pwm(18, initial="restore", min_level=30)})  # the config changed
    assert c.state("fan").level == 30.0  # type: ignore[union-attr]


def test_an_output_saved_off_or_by_an_older_agent_restores_on_and_off(rig: Rig) -> None:
    rig.state_path.write_text('{"lamp": true, "fan": false}')  # before levels were kept
    c = rig.open(
        {
            "lamp": pwm(18, initial="restore", initial_level=70),
            "fan": pwm(19, initial="restore"),
        }
    )
    assert c.state("lamp").level == 70.0  # type: ignore[union-attr]
    assert not c.state("fan").on  # type: ignore[union-attr]


# -- options ---------------------------------------------------------------------------------


def test_options_check_their_levels() -> None:
    with pytest.raises(msgspec.ValidationError, match="min_level"):
        pwm(18, min_level=60, max_level=50)
    with pytest.raises(msgspec.ValidationError, match="initial_level"):
        pwm(18, max_level=50, initial_level=80)
    assert pwm(18, max_level=80).on_level == 80.0
    assert SPEC.kind == "output" and "driver: pwm" in SPEC.sample
