"""Hardware PWM through the kernel's sysfs interface (``hardware_pwm``): the channel's
history from export, the kernel's ordering rules, errors a Pi gives, and the safety rules
through the real controller."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.commands.parse import Command
from drivers.errors import HardwareConfigError
from drivers.hardware import SimulatedHardware
from drivers.pwm import SPEC, PWMOptions, SysfsPWMOutput
from drivers.sim.fake_pwm import FakePWMChip
from tests.actuation.rig import Rig


def pwm(**fields: Any) -> PWMOptions:
    return msgspec.convert(
        {"driver": "pwm", "pin": 18, "hardware_pwm": {"chip": 0, "channel": 0}, **fields},
        PWMOptions,
    )


@pytest.fixture
def hardware() -> Iterator[SimulatedHardware]:
    with SimulatedHardware(seed=1) as h:
        yield h


def attr(hardware: SimulatedHardware, name: str) -> str:
    return hardware.read_attr(hardware.path(f"/sys/class/pwm/pwmchip0/pwm0/{name}")).strip()


def test_25_khz_at_60_percent_is_a_40000_ns_period_and_24000_ns_duty(
    hardware: SimulatedHardware,
) -> None:
    chip = FakePWMChip(hardware)
    out = SysfsPWMOutput(hardware, chip=0, channel=0, frequency=25_000, initial_level=0.6)
    assert (attr(hardware, "period"), attr(hardware, "duty_cycle")) == ("40000", "24000")
    assert attr(hardware, "enable") == "1"
    # Exported (low), then straight to 60 %: no other level in between.
    assert chip.levels(0) == [0.0, 0.6]
    assert out.level == 0.6
    out.set_level(0.25)
    assert attr(hardware, "duty_cycle") == "10000" and out.level == 0.25
    out.close()
    out.close()
    assert chip.levels(0)[-1] == 0.0 and 0 not in chip.channels  # off, disabled, unexported


def test_a_channel_left_running_slower_takes_its_new_duty_before_its_new_period(
    hardware: SimulatedHardware,
) -> None:
    chip = FakePWMChip(hardware)
    old = SysfsPWMOutput(hardware, chip=0, channel=0, frequency=100, initial_level=0.9)
    assert attr(hardware, "duty_cycle") == "9000000"
    del old  # the agent was killed: the channel stays exported and running
    out = SysfsPWMOutput(hardware, chip=0, channel=0, frequency=25_000, initial_level=0.5)
    assert (attr(hardware, "period"), attr(hardware, "duty_cycle")) == ("40000", "20000")
    assert chip.levels(0)[-1] == 0.5
    out.close()


def test_the_kernel_refuses_a_duty_cycle_longer_than_the_period(
    hardware: SimulatedHardware,
) -> None:
    FakePWMChip(hardware)
    out = SysfsPWMOutput(hardware, chip=0, channel=0, frequency=1000)
    path = hardware.path("/sys/class/pwm/pwmchip0/pwm0/duty_cycle")
    with pytest.raises(OSError) as e:
        hardware.write_attr(path, "2000000")
    assert e.value.errno == errno.EINVAL
    out.close()


def test_no_pwm_chip_names_the_overlay(hardware: SimulatedHardware) -> None:
    with pytest.raises(HardwareConfigError, match="dtoverlay=pwm-2chan"):
        SysfsPWMOutput(hardware, chip=0, channel=0)


def test_a_channel_the_chip_does_not_have_says_how_many_it_has(
    hardware: SimulatedHardware,
) -> None:
    FakePWMChip(hardware, npwm=2)
    with pytest.raises(HardwareConfigError, match=r"2 channels \(0\.\.1\)"):
        SysfsPWMOutput(hardware, chip=0, channel=2)


def test_no_permission_names_the_udev_rule(hardware: SimulatedHardware) -> None:
    chip = FakePWMChip(hardware)
    chip.export_error = errno.EACCES
    with pytest.raises(HardwareConfigError, match="udev rule"):
        SysfsPWMOutput(hardware, chip=0, channel=0)


def test_an_inverting_board_is_refused_with_hardware_pwm() -> None:
    with pytest.raises(msgspec.ValidationError, match="active_high"):
        pwm(active_high=False)


def test_simulate_puts_a_pwm_chip_there(hardware: SimulatedHardware) -> None:
    options = pwm(initial="on", initial_level=40)
    SPEC.emulate(options, hardware)
    out = SPEC.open(options, hardware)
    assert isinstance(out, SysfsPWMOutput) and out.level == 0.4
    out.close()


# -- through the controller: the safety rules hold on hardware PWM --------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "outputs.json")
    yield r
    r.close()


def test_levels_failsafe_and_shutdown_on_a_hardware_channel(rig: Rig) -> None:
    chip = FakePWMChip(rig.hardware)
    c = rig.open({"fan": pwm(failsafe="on", failsafe_level=90, failsafe_after=0.1)})
    assert chip.levels(0) == [0.0]  # exported, enabled at 0 %: never on at start
    c.connected()
    c.command("fan", Command("on", level=30))
    assert c.state("fan").level == 30.0  # type: ignore[union-attr]
    c.disconnected()
    rig.run_for(0.2)
    assert c.state("fan").reason == "failsafe"  # type: ignore[union-attr]
    assert chip.levels(0)[-1] == pytest.approx(0.9)
    rig.controller.shutdown()  # type: ignore[union-attr]
    assert chip.levels(0)[-1] == 0.0
    assert chip.levels(0) == [0.0, pytest.approx(0.3), pytest.approx(0.9), 0.0]
