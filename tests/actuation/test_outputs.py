"""Outputs and their safety policy (CONTRACT section 8), on simulated pins.

Every test drives the real controller, relay driver and gpiozero device; only the pin is
a mock (:class:`tests.actuation.rig.JournalPin`), whose history is the evidence. Timers run
on a real event loop with short real durations.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.actuation.outputs import OutputController, OutputState
from agent.actuation.statefile import OutputStateFile
from agent.commands.parse import Command, CommandRefused
from drivers.gpio import Relay
from tests.actuation.rig import Rig, relay

ON = Command("on")
OFF = Command("off")
TOGGLE = Command("toggle")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(state_path=tmp_path / "state" / "outputs.json")
    yield r
    r.close()


def refusal(controller: OutputController, name: str, command: Command) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        controller.command(name, command)
    return info.value


def state_of(outputs: OutputController, name: str) -> OutputState:
    state = outputs.state(name)
    assert state is not None, f"{name} could not be opened"
    return state


def level(rig: Rig, pin: int) -> bool:
    return bool(rig.pin(pin).state)


# --- boot ------------------------------------------------------------------------------


@pytest.mark.parametrize("active_high", [True, False])
@pytest.mark.parametrize("initial", ["off", "on"])
def test_boot_at_the_initial_state(rig: Rig, active_high: bool, initial: str) -> None:
    outputs = rig.open({"pump": relay(17, active_high=active_high, initial=initial)})
    on = initial == "on"
    state = outputs.state("pump")
    assert state is not None
    assert (state.on, state.reason, state.until) == (on, "boot", None)
    assert level(rig, 17) is (on == active_high)
    assert rig.pin(17).function == "output"
    # Opening is not a change anyone asked to hear about before the broker is reached;
    # publish_all does it after each connect.
    assert rig.published == []
    outputs.publish_all()
    assert rig.published == [("pump", state)]


@pytest.mark.parametrize("initial", ["off", "on"])
def test_active_low_relay_never_shows_the_other_level_at_boot(rig: Rig, initial: str) -> None:
    pin = rig.pin(17)
    pin.drive_high()  # the relay board's pull-up holds IN high before the agent starts
    pin.clear_states()
    rig.journal.clear()
    rig.open({"pump": relay(17, active_high=False, initial=initial)})
    wanted = initial == "off"  # active-low: off is HIGH
    # The first and only level written is the wanted one; the pin never took another.
    assert pin.writes == [wanted]
    assert [s.state for s in pin.states[1:]] == ([] if wanted else [False])
    if initial == "off":
        assert all(s.state for s in pin.states)  # never LOW: the relay never clicked


def test_boot_with_several_outputs_sets_each_once(rig: Rig) -> None:
    outputs = rig.open(
        {
            "pump": relay(17, initial="on"),
            "heater": relay(18, active_high=False),
            "fan": relay(22),
        }
    )
    assert [rig.pin(n).writes for n in (17, 18, 22)] == [[True], [True], [False]]
    assert [state_of(outputs, n).on for n in ("pump", "heater", "fan")] == [True, False, False]


# --- restore and the state file ---------------------------------------------------------


@pytest.mark.parametrize("active_high", [True, False])
def test_restore_brings_back_the_last_state_across_restarts(rig: Rig, active_high: bool) -> None:
    outputs = rig.open({"pump": relay(17, initial="restore", active_high=active_high)})
    assert state_of(outputs, "pump").on is False  # nothing saved
    assert state_of(outputs, "pump").reason == "restore"
    outputs.command("pump", ON)
    assert json.loads(rig.state_path.read_text()) == {"pump": True}

    rig.reboot()
    pin = rig.pin(17)
    pin.drive_low() if active_high else pin.drive_high()  # the idle level of the board
    pin.clear_states()
    outputs = rig.open({"pump": relay(17, initial="restore", active_high=active_high)})
    state = outputs.state("pump")
    assert state is not None
    assert (state.on, state.reason) == (True, "restore")
    # Opened straight at the saved level: one write, the active one; no off-then-on.
    assert pin.writes == [active_high]
    assert [s.state for s in pin.states] == [not active_high, active_high]

    outputs.command("pump", OFF)
    rig.reboot()
    outputs = rig.open({"pump": relay(17, initial="restore", active_high=active_high)})
    assert state_of(outputs, "pump").on is False
    assert rig.pin(17).writes == [not active_high]


def test_only_restore_outputs_are_saved(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, initial="restore"), "fan": relay(18)})
    outputs.command("fan", ON)
    assert not rig.state_path.exists() or json.loads(rig.state_path.read_text()) == {"pump": False}
    outputs.command("pump", ON)
    assert json.loads(rig.state_path.read_text()) == {"pump": True}


def test_state_file_is_replaced_whole(rig: Rig) -> None:
    outputs = rig.open(
        {"pump": relay(17, initial="restore"), "heater": relay(18, initial="restore")}
    )
    outputs.command("pump", ON)
    outputs.command("heater", ON)
    outputs.command("pump", OFF)
    assert json.loads(rig.state_path.read_text()) == {"pump": False, "heater": True}
    # Written through a temporary file that is renamed over the old one: none is left.
    assert sorted(p.name for p in rig.state_path.parent.iterdir()) == ["outputs.json"]


def test_a_write_cut_short_leaves_the_old_file(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outputs = rig.open({"pump": relay(17, initial="restore")})
    outputs.command("pump", ON)

    def power_cut(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", power_cut)
    with caplog.at_level(logging.ERROR):
        state = outputs.command("pump", OFF)  # the command itself still works
    assert state.on is False
    assert not level(rig, 17)
    assert "cannot save output states" in caplog.text
    assert json.loads(rig.state_path.read_text()) == {"pump": True}  # old file, whole
    monkeypatch.undo()
    outputs.command("pump", ON)
    outputs.command("pump", OFF)
    assert json.loads(rig.state_path.read_text()) == {"pump": False}


@pytest.mark.parametrize(
    "content", ['{"pump": tr', "", "\x00\x00\x00", "[true]", '"on"', '{"pump": "on"}']
)
def test_a_corrupt_state_file_is_ignored_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    rig.state_path.parent.mkdir(parents=True)
    rig.state_path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="agent.actuation.statefile"):
        outputs = rig.open({"pump": relay(17, initial="restore")})
    assert state_of(outputs, "pump").on is False  # the safe level
    assert rig.pin(17).writes == [False]
    if content.startswith("{") and "on" in content and "tr" not in content:
        assert caplog.text == ""  # valid JSON object; the non-boolean value is skipped
    else:
        assert "output state file" in caplog.text
    outputs.command("pump", ON)
    assert json.loads(rig.state_path.read_text()) == {"pump": True}


def test_state_file_load_keeps_only_on_off_and_levels(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(
        '{"a": true, "b": false, "c": 40.5, "d": null, "e": "on", "f": 0, "g": 101, "h": 1e999}'
    )
    assert OutputStateFile(path).load() == {"a": True, "b": False, "c": 40.5}
    assert OutputStateFile(tmp_path / "missing.json").load() == {}


# --- commands --------------------------------------------------------------------------


def test_command_switches_reads_back_and_publishes(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, active_high=False)})
    state = outputs.command("pump", ON)
    assert (state.on, state.reason, state.until) == (True, "command", None)
    assert rig.pin(17).state is False  # active-low: on is LOW
    assert rig.published == [("pump", state)]
    assert outputs.command("pump", TOGGLE).on is False
    assert outputs.command("pump", TOGGLE).on is True
    assert rig.reasons("pump") == ["command"] * 3


def test_repeating_the_current_state_writes_nothing_but_answers(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    outputs.command("pump", ON)
    writes = list(rig.pin(17).writes)
    state = outputs.command("pump", ON)
    assert state.on is True
    assert rig.pin(17).writes == writes
    assert rig.reasons("pump") == ["command", "command"]  # re-published, as commanded


# --- pulses ----------------------------------------------------------------------------


def test_pulse_reverts_after_duration(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    state = outputs.command("pump", Command("on", duration=0.1))
    assert state.on and state.until is not None
    assert 0.05 < state.until - state.ts < 0.2
    rig.run_for(0.02)
    assert level(rig, 17)
    rig.run_for(0.2)
    assert not level(rig, 17)
    final = outputs.state("pump")
    assert final is not None and (final.on, final.reason, final.until) == (False, "pulse_end", None)
    assert rig.reasons("pump") == ["command", "pulse_end"]


def test_off_pulse_switches_back_on(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, initial="on")})
    outputs.command("pump", Command("off", duration=0.05))
    assert not level(rig, 17)
    rig.run_for(0.2)
    assert level(rig, 17)
    assert rig.reasons("pump") == ["command", "pulse_end"]


def test_pulse_while_already_on_holds_then_switches_off(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    outputs.command("pump", ON)
    outputs.command("pump", Command("on", duration=0.05))
    rig.run_for(0.2)
    assert not level(rig, 17)
    assert rig.reasons("pump")[-1] == "pulse_end"


@pytest.mark.parametrize("follow_up", [ON, OFF, Command("on", duration=0.4)])
def test_a_new_command_cancels_a_pending_pulse_end(rig: Rig, follow_up: Command) -> None:
    outputs = rig.open({"pump": relay(17)})
    outputs.command("pump", Command("on", duration=0.1))
    outputs.command("pump", follow_up)
    rig.run_for(0.25)
    assert level(rig, 17) is (follow_up.action == "on")
    assert "pulse_end" not in rig.reasons("pump")
    if follow_up.duration is not None:
        rig.run_for(0.3)
        assert not level(rig, 17)
        assert rig.reasons("pump")[-1] == "pulse_end"


def test_a_refused_command_keeps_the_pulse(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, min_switch_interval=0.2)})
    rig.run_for(0.21)
    outputs.command("pump", Command("on", duration=0.1))
    assert refusal(outputs, "pump", OFF).code == "rate_limited"
    rig.run_for(0.25)
    assert not level(rig, 17)
    assert rig.reasons("pump") == ["command", "pulse_end"]


# --- max_on ----------------------------------------------------------------------------


def test_max_on_switches_off_and_reports(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, max_on=0.1)})
    state = outputs.command("pump", ON)
    assert state.until is not None and 0.05 < state.until - state.ts < 0.2
    rig.run_for(0.25)
    assert not level(rig, 17)
    assert state_of(outputs, "pump").reason == "max_on"
    assert rig.reasons("pump") == ["command", "max_on"]
    assert rig.event_kinds() == ["max_on"]
    assert rig.events[0].fields == {"output": "pump"}


def test_repeating_on_does_not_extend_max_on(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, max_on=0.3)})
    first = outputs.command("pump", ON)
    rig.run_for(0.2)
    again = outputs.command("pump", ON)
    assert again.until == pytest.approx(first.until, abs=0.02)
    rig.run_for(0.2)  # 0.4 s after it went on; 0.5 s had "on" restarted the count
    assert not level(rig, 17)
    assert rig.reasons("pump")[-1] == "max_on"


def test_a_pulse_longer_than_max_on_ends_at_max_on(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, max_on=0.1)})
    outputs.command("pump", Command("on", duration=10))
    rig.run_for(0.25)
    assert not level(rig, 17)
    assert rig.reasons("pump") == ["command", "max_on"]


def test_max_on_applies_to_an_output_that_boots_on(rig: Rig) -> None:
    rig.open({"pump": relay(17, initial="on", max_on=0.1)})
    rig.run_for(0.25)
    assert not level(rig, 17)
    assert rig.reasons("pump") == ["max_on"]


# --- interlocks ------------------------------------------------------------------------


def interlocked_pair(rig: Rig, **heater: Any) -> OutputController:
    # Declared on one side only: interlocks are symmetric.
    return rig.open({"pump": relay(17, interlock=["heater"]), "heater": relay(18, **heater)})


@pytest.mark.parametrize(("first", "second"), [("heater", "pump"), ("pump", "heater")])
def test_interlock_switches_the_partner_off_first(rig: Rig, first: str, second: str) -> None:
    outputs = interlocked_pair(rig)
    pins = {"pump": 17, "heater": 18}
    outputs.command(first, ON)
    rig.journal.clear()
    rig.published.clear()
    state = outputs.command(second, ON)
    assert state.on
    # The partner's pin went inactive before this one went active.
    assert rig.journal == [(pins[first], False), (pins[second], True)]
    assert [(n, s.reason, s.on) for n, s in rig.published] == [
        (first, "interlock", False),
        (second, "command", True),
    ]


def test_interlock_order_with_active_low_relays(rig: Rig) -> None:
    outputs = rig.open(
        {
            "pump": relay(17, interlock=["heater"], active_high=False),
            "heater": relay(18, active_high=False),
        }
    )
    outputs.command("heater", ON)
    rig.journal.clear()
    outputs.command("pump", TOGGLE)
    assert rig.journal == [(18, True), (17, False)]


def test_interlock_refused_when_the_partner_may_not_switch_yet(rig: Rig) -> None:
    outputs = interlocked_pair(rig, min_switch_interval=0.3)
    rig.run_for(0.31)
    outputs.command("heater", ON)
    rig.journal.clear()
    rig.published.clear()
    error = refusal(outputs, "pump", ON)
    assert error.code == "interlocked"
    assert "heater" in error.message
    assert rig.journal == [] and rig.published == []
    assert level(rig, 18) and not level(rig, 17)
    rig.run_for(0.31)
    outputs.command("pump", ON)
    assert rig.journal == [(18, False), (17, True)]


def test_interlock_refusal_moves_no_partner_at_all(rig: Rig) -> None:
    # pump is interlocked with fan and heater (which may be on together); heater booted on
    # just now and its min_switch_interval holds it. Refused means nothing moved: not
    # even fan, which could have been switched off.
    outputs = rig.open(
        {
            "pump": relay(17, interlock=["fan", "heater"]),
            "fan": relay(18),
            "heater": relay(22, initial="on", min_switch_interval=5),
        }
    )
    outputs.command("fan", ON)
    rig.journal.clear()
    rig.published.clear()
    error = refusal(outputs, "pump", ON)
    assert error.code == "interlocked"
    assert "heater" in error.message
    assert rig.journal == [] and rig.published == []
    assert level(rig, 18) and level(rig, 22) and not level(rig, 17)


def test_interlock_refused_when_the_partner_pin_fails(rig: Rig) -> None:
    outputs = interlocked_pair(rig)
    outputs.command("heater", ON)
    rig.pin(18).fail_writes = True
    rig.journal.clear()
    assert refusal(outputs, "pump", ON).code == "interlocked"
    assert rig.journal == []
    assert not level(rig, 17) and level(rig, 18)


def test_a_pulse_that_displaced_a_partner_ends_with_both_off(rig: Rig) -> None:
    outputs = interlocked_pair(rig)
    outputs.command("pump", ON)
    outputs.command("heater", Command("on", duration=0.05))
    assert not level(rig, 17) and level(rig, 18)
    rig.run_for(0.15)  # the pulse ends: heater off; pump stays off (nobody asked)
    assert not level(rig, 17) and not level(rig, 18)


def test_an_off_pulse_does_not_come_back_on_into_an_interlock(rig: Rig) -> None:
    outputs = interlocked_pair(rig)
    outputs.command("pump", ON)
    outputs.command("pump", Command("off", duration=0.1))
    outputs.command("heater", ON)
    rig.run_for(0.25)
    assert not level(rig, 17) and level(rig, 18)
    assert "pulse_end_skipped" in rig.event_kinds()


# --- min_switch_interval ---------------------------------------------------------------


def test_rate_limited_changes_nothing(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, min_switch_interval=0.2)})
    rig.run_for(0.21)
    outputs.command("pump", ON)
    writes = list(rig.pin(17).writes)
    rig.published.clear()
    error = refusal(outputs, "pump", OFF)
    assert error.code == "rate_limited"
    assert "retry in" in error.message
    assert refusal(outputs, "pump", TOGGLE).code == "rate_limited"
    assert rig.pin(17).writes == writes and level(rig, 17)
    assert rig.published == []
    assert outputs.command("pump", ON).on  # no change asked: not limited
    rig.run_for(0.21)
    assert not outputs.command("pump", OFF).on


# --- failsafe --------------------------------------------------------------------------


def test_failsafe_applies_after_failsafe_after_without_the_broker(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, failsafe="off", failsafe_after=0.2)})
    outputs.connected()
    outputs.command("pump", ON)
    outputs.disconnected()
    rig.run_for(0.05)
    assert level(rig, 17)
    rig.run_for(0.25)
    assert not level(rig, 17)
    assert rig.reasons("pump") == ["command", "failsafe"]
    assert rig.event_kinds() == ["failsafe"]


def test_failsafe_on_switches_on(rig: Rig) -> None:
    rig.open({"vent": relay(17, failsafe="on", failsafe_after=0.05)})
    rig.run_for(0.15)  # armed at open: the broker was never reached
    assert level(rig, 17)
    assert rig.reasons("vent") == ["failsafe"]


def test_failsafe_is_armed_at_open(rig: Rig) -> None:
    rig.open({"pump": relay(17, initial="on", failsafe="off", failsafe_after=0.05)})
    rig.run_for(0.15)
    assert not level(rig, 17)
    assert rig.reasons("pump") == ["failsafe"]


def test_reconnecting_in_time_cancels_the_failsafe(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, failsafe="off", failsafe_after=0.15)})
    outputs.connected()
    outputs.command("pump", ON)
    outputs.disconnected()
    rig.run_for(0.05)
    outputs.connected()
    rig.run_for(0.25)
    assert level(rig, 17)
    assert rig.reasons("pump") == ["command"]
    assert rig.events == []


def test_failsafe_counts_from_the_last_disconnect(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, failsafe="off", failsafe_after=0.4)})
    outputs.connected()
    outputs.command("pump", ON)
    outputs.disconnected()
    rig.run_for(0.2)
    outputs.connected()
    outputs.disconnected()
    rig.run_for(0.3)  # 0.5 s since the first disconnect, 0.3 s since the second
    assert level(rig, 17)
    rig.run_for(0.2)
    assert not level(rig, 17)


def test_failsafe_null_keeps_the_state(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, failsafe=None, failsafe_after=0.05)})
    outputs.connected()
    outputs.command("pump", ON)
    outputs.disconnected()
    rig.run_for(0.15)
    assert level(rig, 17)
    assert rig.reasons("pump") == ["command"] and rig.events == []


def test_failsafe_on_gives_way_to_an_interlocked_partner(rig: Rig) -> None:
    outputs = rig.open(
        {
            "pump": relay(17, interlock=["heater"], failsafe="on", failsafe_after=0.05),
            "heater": relay(18, failsafe=None),
        }
    )
    outputs.connected()
    outputs.command("heater", ON)
    outputs.disconnected()
    rig.run_for(0.15)
    assert level(rig, 18) and not level(rig, 17)


# --- shutdown --------------------------------------------------------------------------


def test_shutdown_returns_to_initial_and_restore_stays(rig: Rig) -> None:
    outputs = rig.open(
        {
            "pump": relay(17),
            "vent": relay(18, initial="on"),
            "lamp": relay(22, initial="restore"),
            "fan": relay(23),
        }
    )
    outputs.command("pump", ON)
    outputs.command("vent", OFF)
    outputs.command("lamp", ON)
    rig.published.clear()
    outputs.shutdown()
    assert [level(rig, n) for n in (17, 18, 22, 23)] == [False, True, True, False]
    # Every output's state is published, once, with reason shutdown and nothing pending.
    assert sorted(n for n, _ in rig.published) == ["fan", "lamp", "pump", "vent"]
    for name, state in rig.published:
        assert (state.reason, state.until) == ("shutdown", None), name
    assert json.loads(rig.state_path.read_text()) == {"lamp": True}


def test_shutdown_cancels_timers(rig: Rig) -> None:
    outputs = rig.open(
        {
            "pump": relay(17, failsafe="off", failsafe_after=0.05),
            "vent": relay(18, initial="on", max_on=0.1),
        }
    )
    outputs.command("pump", Command("on", duration=0.05))
    outputs.command("vent", OFF)
    outputs.shutdown()
    assert not level(rig, 17) and level(rig, 18)
    published = list(rig.published)
    rig.run_for(0.2)
    assert rig.published == published  # no pulse end, failsafe or max_on after shutdown
    assert level(rig, 18)


def test_nothing_moves_after_shutdown(rig: Rig) -> None:
    # Between shutdown and close the agent still drains its outbox and stops the
    # transport: a late command or a disconnect must not switch anything.
    outputs = rig.open({"pump": relay(17, failsafe="on", failsafe_after=0.05)})
    outputs.shutdown()
    writes = list(rig.pin(17).writes)
    assert refusal(outputs, "pump", ON).code == "hardware_error"
    outputs.disconnected()
    rig.run_for(0.15)
    assert rig.pin(17).writes == writes and not level(rig, 17)


def test_close_releases_the_pins_and_is_idempotent(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    outputs.shutdown()
    outputs.close()
    outputs.close()
    with Relay(17, pin_factory=rig.factory):  # the pin is free again
        pass


# --- hardware errors -------------------------------------------------------------------


def test_an_output_whose_pin_is_in_use_is_reported_and_the_rest_work(rig: Rig) -> None:
    squatter = Relay(17, pin_factory=rig.factory)
    try:
        outputs = rig.open({"pump": relay(17), "heater": relay(18)})
        assert rig.event_kinds() == ["output_unavailable"]
        assert rig.events[0].fields == {"output": "pump"}
        assert rig.events[0].level == "error"
        assert outputs.state("pump") is None
        error = refusal(outputs, "pump", ON)
        assert error.code == "hardware_error"
        assert "pump" in error.message
        assert outputs.command("heater", ON).on and level(rig, 18)
        outputs.publish_all()
        assert [n for n, _ in rig.published] == ["heater", "heater"]
        outputs.shutdown()  # nothing to do for pump, and no crash
        outputs.close()
    finally:
        squatter.close()


def test_two_outputs_on_one_pin_the_second_is_unavailable(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17), "heater": relay(17)})
    assert rig.event_kinds() == ["output_unavailable"]
    assert rig.events[0].fields == {"output": "heater"}
    assert outputs.command("pump", ON).on
    assert refusal(outputs, "heater", ON).code == "hardware_error"


def test_an_unavailable_restore_output_keeps_its_saved_state(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17, initial="restore")})
    outputs.command("pump", ON)
    rig.reboot()
    squatter = Relay(17, pin_factory=rig.factory)
    rig.open({"pump": relay(17, initial="restore"), "lamp": relay(18, initial="restore")})
    squatter.close()
    # The pin could not be had this time; what was saved for it is not forgotten.
    assert json.loads(rig.state_path.read_text()) == {"pump": True, "lamp": False}


def test_a_pin_that_fails_on_set_is_a_hardware_error(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17), "heater": relay(18)})
    rig.pin(17).fail_writes = True
    error = refusal(outputs, "pump", ON)
    assert error.code == "hardware_error"
    assert "GPIO 17" in error.message
    assert not level(rig, 17)
    assert state_of(outputs, "pump").on is False
    assert rig.event_kinds() == ["output_error"]
    assert outputs.command("heater", ON).on  # the others work
    rig.pin(17).fail_writes = False
    assert outputs.command("pump", ON).on  # and it recovers


def test_a_pin_that_does_not_follow_is_a_hardware_error(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    rig.pin(17).stuck = True
    error = refusal(outputs, "pump", ON)
    assert error.code == "hardware_error"
    assert "reads back off" in error.message
    assert state_of(outputs, "pump").on is False
    assert rig.event_kinds() == ["output_error"]


def test_a_failing_pin_at_pulse_end_is_reported_and_the_state_stays_true(rig: Rig) -> None:
    outputs = rig.open({"pump": relay(17)})
    outputs.command("pump", Command("on", duration=0.05))
    rig.pin(17).fail_writes = True
    rig.run_for(0.15)
    assert level(rig, 17)
    state = outputs.state("pump")
    assert state is not None and state.on  # what the pin says, not what was wanted
    assert rig.event_kinds() == ["output_error"]
