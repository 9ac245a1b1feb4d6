"""Relays and inputs on gpiozero's MockFactory: the pin's whole history is checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gpiozero.pins.mock import MockFactory

from drivers.errors import HardwareConfigError, PermanentError
from drivers.gpio import (
    GPIO_SPEC,
    RELAY_SPEC,
    GPIOClosed,
    GPIOInput,
    GPIOInputOptions,
    Relay,
    RelayOptions,
    open_relay,
)
from drivers.hardware import SimulatedHardware


@pytest.fixture
def factory() -> Iterator[Any]:
    mock = MockFactory()
    yield mock
    mock.reset()  # releases every reservation and forgets the pins
    mock.close()


def levels(factory: Any, pin: int) -> list[bool]:
    """Every level the pin has had, oldest first."""
    return [bool(s.state) for s in factory.pin(pin).states]


# --- relay: the level from the first instant ---------------------------------------------


def test_active_high_relay_starting_off_never_drives_high(factory: Any) -> None:
    with Relay(17, active_high=True, initial=False, pin_factory=factory) as relay:
        assert factory.pin(17).function == "output"
        assert not relay.is_on
    assert True not in levels(factory, 17)


def test_active_low_relay_starting_off_goes_straight_to_high(factory: Any) -> None:
    pin = factory.pin(17)
    pin.drive_high()  # the relay board's pull-up holds IN high before we start
    pin.clear_states()
    with Relay(17, active_high=False, initial=False, pin_factory=factory) as relay:
        assert pin.function == "output"
        assert not relay.is_on
    assert levels(factory, 17) == [True]  # HIGH from the first state, never LOW


def test_active_low_relay_from_a_floating_pin_is_driven_high_once(factory: Any) -> None:
    with Relay(17, active_high=False, initial=False, pin_factory=factory):
        pass
    # The mock pin floats LOW as an input before the relay exists; the relay's first and
    # only level is HIGH.
    assert levels(factory, 17) == [False, True]


def test_active_high_relay_starting_on_goes_high_at_once(factory: Any) -> None:
    with Relay(17, active_high=True, initial=True, pin_factory=factory) as relay:
        assert relay.is_on
    assert levels(factory, 17) == [False, True]  # floating input, then HIGH: nothing between


def test_active_low_relay_starting_on_goes_low_at_once(factory: Any) -> None:
    pin = factory.pin(17)
    pin.drive_high()
    pin.clear_states()
    with Relay(17, active_high=False, initial=True, pin_factory=factory) as relay:
        assert relay.is_on
    assert levels(factory, 17) == [True, False]


# --- relay: switching and reading back -----------------------------------------------------


@pytest.mark.parametrize("active_high", [True, False])
def test_set_switches_and_is_on_reads_the_pin_back(factory: Any, active_high: bool) -> None:
    with Relay(17, active_high=active_high, pin_factory=factory) as relay:
        relay.set(True)
        assert relay.is_on
        assert factory.pin(17).state == active_high
        relay.set(False)
        assert not relay.is_on
        assert factory.pin(17).state == (not active_high)


def test_close_is_idempotent_and_frees_the_pin(factory: Any) -> None:
    relay = Relay(17, pin_factory=factory)
    relay.close()
    relay.close()
    with Relay(17, pin_factory=factory):  # the pin is free again
        pass


def test_using_a_closed_relay_is_a_permanent_error(factory: Any) -> None:
    relay = Relay(17, pin_factory=factory)
    relay.close()
    with pytest.raises(GPIOClosed, match="17") as info:
        relay.set(True)
    assert isinstance(info.value, PermanentError)
    with pytest.raises(GPIOClosed):
        _ = relay.is_on


def test_a_pin_in_use_is_a_hardware_config_error(factory: Any) -> None:
    with (
        Relay(17, pin_factory=factory),
        pytest.raises(HardwareConfigError, match="GPIO 17 is already in use"),
    ):
        Relay(17, pin_factory=factory)


@pytest.mark.parametrize("pin", [99, "GPIO99", "BOARD1", "nonsense"])
def test_an_invalid_pin_is_a_hardware_config_error(factory: Any, pin: int | str) -> None:
    with pytest.raises(HardwareConfigError, match=f"GPIO {pin}"):
        Relay(pin, pin_factory=factory)


def test_pin_names_gpiozero_accepts_work(factory: Any) -> None:
    with Relay("BOARD11", pin_factory=factory) as relay:  # physical pin 11 is GPIO17
        relay.set(True)
        assert factory.pin(17).state


# --- relay: options and open ---------------------------------------------------------------


def relay_options(**fields: Any) -> RelayOptions:
    return msgspec.convert({"driver": "relay", "pin": 17, **fields}, RelayOptions)


@pytest.mark.parametrize(
    ("initial", "initial_on", "expected"),
    [
        ("off", None, False),
        ("on", None, True),
        ("restore", None, False),  # nothing saved: the safe level
        ("restore", True, True),  # the agent passes the saved state
        ("restore", False, False),
    ],
)
def test_open_relay_starts_at_the_initial_level(
    tmp_path: Path, initial: str, initial_on: bool | None, expected: bool
) -> None:
    hw = SimulatedHardware(tmp_path)
    try:
        options = relay_options(initial=initial, active_high=False)
        with open_relay(options, hw, initial_on=initial_on) as relay:
            assert relay.is_on is expected
            # Active-low: on is LOW. Every level since the pin was configured is the
            # expected one: the relay was not switched after opening.
            assert all(level is (not expected) for level in levels(hw.pin_factory(), 17)[1:])
            assert hw.pin_factory().pin(17).state is (not expected)
    finally:
        hw.close()


def test_relay_spec_opens_through_the_simulated_pin_factory(tmp_path: Path) -> None:
    hw = SimulatedHardware(tmp_path)
    try:
        options = relay_options(initial="on")
        RELAY_SPEC.emulate(options, hw)
        with RELAY_SPEC.open(options, hw) as relay:
            assert isinstance(relay, Relay)
            assert relay.is_on
    finally:
        hw.close()


def test_relay_options_keep_the_agents_safety_fields() -> None:
    options = relay_options(max_on=600.0, interlock=["heater"], active_high=False)
    assert (options.pin, options.active_high, options.max_on) == (17, False, 600.0)
    assert options.interlock == ("heater",)
    with pytest.raises(msgspec.ValidationError, match="pin"):
        msgspec.convert({"driver": "relay"}, RelayOptions)


# --- inputs --------------------------------------------------------------------------------


def test_pull_up_input_is_on_while_the_pin_is_pulled_low(factory: Any) -> None:
    with GPIOInput(27, pull_up=True, pin_factory=factory) as door:
        pin = factory.pin(27)
        assert pin.state  # idles HIGH through the pull-up
        assert not door.is_on
        pin.drive_low()
        assert door.is_on


def test_pull_down_input_is_on_while_the_pin_is_high(factory: Any) -> None:
    with GPIOInput(27, pull_up=False, pin_factory=factory) as button:
        pin = factory.pin(27)
        assert not pin.state
        assert not button.is_on
        pin.drive_high()
        assert button.is_on


def test_edges_fire_on_change_with_the_new_state(factory: Any) -> None:
    seen: list[bool] = []
    also: list[bool] = []
    with GPIOInput(27, pull_up=True, pin_factory=factory) as door:
        door.on_change(seen.append)
        door.on_change(also.append)
        pin = factory.pin(27)
        pin.drive_low()
        pin.drive_low()  # no edge: no event
        pin.drive_high()
        pin.drive_low()
    assert seen == [True, False, True]
    assert also == seen


def test_no_callbacks_after_close(factory: Any) -> None:
    seen: list[bool] = []
    door = GPIOInput(27, pin_factory=factory)
    door.on_change(seen.append)
    door.close()
    door.close()
    assert seen == []
    with GPIOInput(27, pin_factory=factory):  # the pin is free again
        pass


def test_bounce_time_is_handed_to_the_pin(factory: Any) -> None:
    # MockPin stores but does not apply debouncing; the real factories (lgpio) do.
    with GPIOInput(27, bounce_time=0.05, pin_factory=factory):
        assert factory.pin(27).bounce == pytest.approx(0.05)
    with GPIOInput(22, bounce_time=0.0, pin_factory=factory):
        assert factory.pin(22).bounce is None


def test_an_input_on_a_pin_in_use_is_a_hardware_config_error(factory: Any) -> None:
    with (
        Relay(27, pin_factory=factory),
        pytest.raises(HardwareConfigError, match="GPIO 27 is already in use"),
    ):
        GPIOInput(27, pin_factory=factory)


def test_gpio_spec_opens_an_input_from_options(tmp_path: Path) -> None:
    hw = SimulatedHardware(tmp_path)
    try:
        options = msgspec.convert(
            {"driver": "gpio", "pin": 27, "pull_up": False, "bounce_time": 0.1},
            GPIOInputOptions,
        )
        GPIO_SPEC.emulate(options, hw)
        with GPIO_SPEC.open(options, hw) as door:
            assert isinstance(door, GPIOInput)
            hw.pin_factory().pin(27).drive_high()
            assert door.is_on
            assert hw.pin_factory().pin(27).bounce == pytest.approx(0.1)
    finally:
        hw.close()


def test_negative_bounce_time_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="bounce_time"):
        msgspec.convert({"driver": "gpio", "pin": 27, "bounce_time": -1}, GPIOInputOptions)
