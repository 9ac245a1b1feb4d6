"""The outputs and their safety policy (CONTRACT section 8).

An output changes only for: its ``initial`` (or restored) state at start, applied when the
pin is opened, before the broker is reached; an accepted command; the end of a pulse;
``max_on``; ``failsafe``; an interlock; shutdown. Everything here runs on the agent's
event loop, one call at a time, so two commands can never interleave half-way: the
interlock invariant (never two interlocked outputs on together) holds between any two
statements a command can observe.

Interlocks switch the other output off first, as ESPHome does: a command to switch ``pump``
on while its interlocked ``heater`` is on switches the heater off (reason ``interlock``),
reads its pin back, and only then switches the pump on. If the heater cannot be switched
off (its ``min_switch_interval`` has not passed, or its pin fails), the command is refused
with ``interlocked`` and nothing moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import msgspec

from agent.actuation.statefile import OutputStateFile, SavedState
from agent.commands.parse import Command, CommandRefused
from agent.events import Event, EventSink, Level
from agent.mqtt.payloads import encode_json, iso_ts
from drivers.base import Output, OutputOptions
from drivers.errors import DriverError
from drivers.hardware import Hardware
from drivers.pwm import LevelOutput, PWMOptions
from drivers.registry import guarded_open, spec_of

log = logging.getLogger(__name__)

Reason = Literal[
    "boot", "command", "pulse_end", "max_on", "failsafe", "interlock", "restore", "shutdown"
]


@dataclass(frozen=True)
class OutputState:
    """What ``<base>/output/<name>/state`` says."""

    on: bool
    reason: Reason
    #: When the output last changed (unix s).
    ts: float
    #: When it will switch back by itself (a pulse's end or ``max_on``), if it will.
    until: float | None = None
    #: A dimmable output's level, 0..100 %; None for on/off outputs.
    level: float | None = None

    def encode(self) -> bytes:
        body: dict[str, object] = {
            "state": "on" if self.on else "off",
            "ts": iso_ts(self.ts),
            "reason": self.reason,
            "until": iso_ts(self.until) if self.until is not None else None,
        }
        if self.level is not None:
            body["level"] = self.level
        return encode_json(body)


@dataclass
class _Output:
    name: str
    options: OutputOptions
    driver: Output | None = None
    state: OutputState | None = None
    #: loop.time() of the last change, for min_switch_interval.
    changed_at: float | None = None
    revert: asyncio.TimerHandle | None = None
    failsafe: asyncio.TimerHandle | None = None
    #: loop.time() at which a pending pulse ends, if one is pending.
    pulse_end: float | None = None
    #: A dimmable output's last level above 0: what a plain "on" brings back.
    last_level: float | None = None


class OutputController:
    """Every configured output, switched only through this object.

    Args:
        outputs: the ``outputs`` section of the config.
        hardware: where the pins are.
        state_file: where ``restore`` outputs keep their last state.
        publish: called with (name, state) after every change.
        report: receives events (failsafe applied, hardware errors).
        loop: the agent's event loop, for timers.
        clock: wall clock for ``ts``; timers use the loop's monotonic clock.
    """

    def __init__(
        self,
        *,
        outputs: dict[str, OutputOptions],
        hardware: Hardware,
        state_file: OutputStateFile,
        publish: Callable[[str, OutputState], None],
        report: EventSink,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outputs = {name: _Output(name, options) for name, options in outputs.items()}
        self._hardware = hardware
        self._state_file = state_file
        self._publish = publish
        self._report = report
        self._loop = loop
        self._clock = clock
        self._partners = _partners(outputs)
        self._saved: dict[str, SavedState] = {}
        #: Set by :meth:`shutdown`: from then on nothing switches and no timer is armed.
        self._stopped = False

    # -- start and stop ---------------------------------------------------------------
    def open(self) -> None:
        """Open every output at its initial (or restored) level.

        The level is handed to the driver's constructor, so the pin never shows any other.
        An output that cannot be opened is reported and stays unavailable (commands to it
        are refused with ``hardware_error``); the others work.
        """
        self._saved = self._state_file.load()
        for out in self._outputs.values():
            self._open(out)
        self._save()
        self._arm_failsafe()

    def shutdown(self) -> None:
        """Outputs back to their ``initial`` state (``restore`` ones stay), reason
        ``shutdown``; timers cancelled. Every state is published.

        Afterwards nothing switches any more: the agent still runs its loop while it
        drains the outbox and stops the transport, and a late command, a disconnect
        (failsafe) or a timer must not move an output then.
        """
        self._stopped = True
        for out in self._outputs.values():
            self._cancel(out)
            if out.state is None:
                continue
            target = (
                out.state.on if out.options.initial == "restore" else out.options.initial == "on"
            )
            if target == out.state.on and not self._level_differs(out, target, "shutdown"):
                out.state = replace(out.state, reason="shutdown", until=None)
            elif self._try_switch(out, target, "shutdown"):
                continue
            else:
                out.state = replace(out.state, until=None)
            self._publish(out.name, out.state)

    def close(self) -> None:
        """Release the pins. Call :meth:`shutdown` first."""
        for out in self._outputs.values():
            self._cancel(out)
            if out.driver is not None:
                out.driver.close()
                out.driver = None

    def _open(self, out: _Output) -> None:
        restore = out.options.initial == "restore"
        options = out.options
        if restore:
            # Opened straight at the saved level (off when nothing was saved).
            saved = self._saved.get(out.name, False)
            options = msgspec.structs.replace(options, initial="on" if saved else "off")
            if isinstance(options, PWMOptions) and not isinstance(saved, bool):
                options = msgspec.structs.replace(options, initial_level=options.clamp(saved))
        try:
            driver = guarded_open(spec_of(options), options, self._hardware)
            assert isinstance(driver, Output)
            out.driver = driver
            on = driver.is_on
            level = _percent(driver.level) if isinstance(driver, LevelOutput) else None
        except DriverError as e:
            self._event(
                out,
                "output_unavailable",
                f"output {out.name} cannot be used: {e}",
                "error",
            )
            return
        out.state = OutputState(on, "restore" if restore else "boot", self._clock(), level=level)
        out.last_level = level if level else None
        out.changed_at = self._loop.time()
        self._schedule_revert(out, None)
        log.info("output %s %s at start (%s)", out.name, _word(on), out.state.reason)

    def reconfigure(self, outputs: dict[str, OutputOptions]) -> list[str]:
        """Apply a reloaded ``outputs`` section.

        A removed output is switched off (reason ``shutdown``) and its pin released; an
        output whose pin, driver or polarity changed is released and opened anew at its
        initial level; any other change (limits, interlocks, failsafe) is taken over with
        the output left as it is. Interlocked outputs that are now both on are resolved by
        switching the later one (by name) off.

        Returns:
            The names of the removed outputs.
        """
        removed = [name for name in self._outputs if name not in outputs]
        for name in removed:
            self._release(self._outputs.pop(name))
        for name, options in outputs.items():
            out = self._outputs.get(name)
            if out is not None and _same_hardware(out.options, options):
                out.options = options
                if out.state is not None:
                    self._schedule_revert(out, None, keep_pulse=True)
                continue
            if out is not None:
                self._release(out)
            out = self._outputs[name] = _Output(name, options)
            self._open(out)
        self._partners = _partners(outputs)
        for name in sorted(self._outputs):
            out = self._outputs[name]
            if out.state is not None and out.state.on and not self._partners_off(out):
                self._try_switch(out, False, "interlock")
        self._save()
        return removed

    def _release(self, out: _Output) -> None:
        """Switch ``out`` off and release its pin."""
        self._cancel(out)
        if out.state is not None and out.state.on:
            self._try_switch(out, False, "shutdown")
        if out.driver is not None:
            out.driver.close()
            out.driver = None

    # -- what the agent asks ------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._outputs

    @property
    def names(self) -> list[str]:
        return list(self._outputs)

    def state(self, name: str) -> OutputState | None:
        """The last published state; None when the output could not be opened."""
        return self._outputs[name].state

    def publish_all(self) -> None:
        """Publish every output's state (after each connect)."""
        for out in self._outputs.values():
            if out.state is not None:
                self._publish(out.name, out.state)

    def connected(self) -> None:
        """The broker is back: no failsafe is pending any more."""
        for out in self._outputs.values():
            if out.failsafe is not None:
                out.failsafe.cancel()
                out.failsafe = None

    def disconnected(self) -> None:
        """The broker is gone: failsafe states follow after ``failsafe_after``."""
        self._arm_failsafe()

    def command(self, name: str, command: Command) -> OutputState:
        """Carry out an accepted command on output ``name``.

        Returns:
            The output's state afterwards.

        Raises:
            CommandRefused: ``rate_limited``, ``interlocked`` or ``hardware_error``; nothing
                changed.
        """
        out = self._outputs[name]
        if self._stopped:
            raise CommandRefused(
                "hardware_error", f"output {name} is shut down: the agent is stopping", command.id
            )
        if out.driver is None or out.state is None:
            raise CommandRefused(
                "hardware_error", f"output {name} could not be opened; see the log", command.id
            )
        on = not out.state.on if command.action == "toggle" else command.action == "on"
        level: float | None = None
        if command.level is not None:
            if not isinstance(out.options, PWMOptions):
                raise CommandRefused(
                    "bad_payload",
                    f"{name} is not dimmable: it takes on, off and toggle, not a level",
                    command.id,
                )
            if on:
                level = out.options.clamp(command.level)
                on = level > 0
        if on != out.state.on:
            wait = self._switch_wait(out)
            if wait > 0:
                raise CommandRefused(
                    "rate_limited",
                    f"{name} changed less than min_switch_interval "
                    f"({out.options.min_switch_interval:g} s) ago; retry in {wait:.1f} s",
                    command.id,
                )
            if on:
                self._clear_partners(out, command)
        try:
            self._switch(out, on, "command", hold=command.duration, level=level)
        except DriverError as e:
            raise CommandRefused("hardware_error", f"{name}: {e}", command.id) from e
        assert out.state is not None
        return out.state

    # -- the one place a pin is driven ----------------------------------------------------
    def _switch(
        self,
        out: _Output,
        on: bool,
        reason: Reason,
        *,
        hold: float | None = None,
        level: float | None = None,
    ) -> None:
        """Drive ``out`` to ``on`` (a dimmable output: to ``level``, or the level ``on``
        means for ``reason``), read it back, re-arm its timers, publish, log and save.

        Raises:
            DriverError: the pin could not be driven or did not read back as asked; the
                output's state is then what the pin reads.
        """
        assert out.driver is not None and out.state is not None
        target = self._target_level(out, on, reason, level)
        changed = on != out.state.on
        level_changed = target is not None and target != out.state.level
        if changed or level_changed:
            try:
                if isinstance(out.driver, LevelOutput) and target is not None:
                    out.driver.set_level(target / 100)
                    actual_level: float | None = _percent(out.driver.level)
                else:
                    out.driver.set(on)
                    actual_level = None
                actual = out.driver.is_on
            except DriverError as e:
                self._hardware_error(out, e)
                raise
            if actual != on or (target is not None and actual_level != target):
                shown = f"{actual_level:g} %" if actual_level is not None else _word(actual)
                asked = f"{target:g} %" if target is not None else _word(on)
                error = DriverError(f"{out.name} reads back {shown} after set {asked}")
                self._hardware_error(out, error)
                raise error
            if changed:
                out.changed_at = self._loop.time()
        if target:
            out.last_level = target
        if changed or level_changed:
            out.state = OutputState(on, reason, self._clock(), level=target)
        elif reason == "command":
            out.state = replace(out.state, reason="command")
        self._schedule_revert(out, hold)
        # The state goes out first: the log line and the state file's write (two fsyncs,
        # tens of ms on an SD card) are not what a controller waits on. Both still happen
        # before this returns, so before a command's reply and before the loop runs
        # anything else; a power cut between the publish and the write leaves the old
        # state in the file, which the restart restores and publishes again (as a cut
        # between driving the pin and the write always could).
        try:
            if changed or level_changed or reason == "command":
                self._publish(out.name, out.state)
        finally:
            if changed or level_changed:
                log.info(
                    "output %s %s (%s)",
                    out.name,
                    f"{_word(on)} at {target:g} %" if target is not None else _word(on),
                    reason,
                    extra={"OUTPUT": out.name},
                )
                self._save()

    def _target_level(
        self, out: _Output, on: bool, reason: Reason, level: float | None
    ) -> float | None:
        """The level a dimmable output goes to; None for an on/off output.

        Off is 0. On is ``level`` when a command gave one; the ``failsafe_level`` for a
        failsafe; ``initial_level`` at shutdown (a ``restore`` output keeps its level);
        otherwise the last level it was on at (a plain "on", a pulse's end), or
        ``initial_level`` if it has not been on yet.
        """
        options = out.options
        if not isinstance(options, PWMOptions):
            return None
        if not on:
            return 0.0
        if level is not None:
            return level
        if reason == "failsafe":
            return options.failsafe_on_level
        restore = options.initial == "restore"
        if (reason == "shutdown" and not restore) or out.last_level is None:
            return options.on_level
        return out.last_level

    def _level_differs(self, out: _Output, on: bool, reason: Reason) -> bool:
        """Whether a dimmable output that is already ``on`` is at another level than
        ``reason`` asks for."""
        target = self._target_level(out, on, reason, None)
        return target is not None and out.state is not None and target != out.state.level

    def _try_switch(self, out: _Output, on: bool, reason: Reason) -> bool:
        """:meth:`_switch` for changes nobody waits on (timers, failsafe, shutdown)."""
        if out.driver is None or out.state is None:
            return False
        try:
            self._switch(out, on, reason)
        except DriverError:
            return False
        return True

    def _clear_partners(self, out: _Output, command: Command) -> None:
        """Switch off every output interlocked with ``out`` before it goes on.

        Every partner that is on is checked before any is switched: a refusal because
        one of them may not switch yet moves none of them.
        """
        partners_on = [
            self._outputs[partner]
            for partner in sorted(self._partners[out.name])
            if (state := self._outputs[partner].state) is not None and state.on
        ]
        for other in partners_on:
            partner = other.name
            wait = self._switch_wait(other)
            if wait > 0:
                raise CommandRefused(
                    "interlocked",
                    f"{out.name} is interlocked with {partner}, which is on and cannot be "
                    f"switched off for another {wait:.1f} s (min_switch_interval)",
                    command.id,
                )
        for other in partners_on:
            partner = other.name
            if not self._try_switch(other, False, "interlock"):
                raise CommandRefused(
                    "interlocked",
                    f"{out.name} is interlocked with {partner}, which is on and could not be "
                    "switched off",
                    command.id,
                )

    def _event(self, out: _Output, kind: str, message: str, level: Level) -> None:
        self._report(Event(kind, message, level=level, fields={"output": out.name}))

    def _hardware_error(self, out: _Output, error: DriverError) -> None:
        self._event(
            out,
            "output_error",
            f"output {out.name}: {error}",
            "error",
        )
        if out.driver is not None and out.state is not None:
            try:
                actual = out.driver.is_on
            except DriverError:
                return
            if actual != out.state.on:
                out.state = OutputState(actual, out.state.reason, self._clock())
                self._publish(out.name, out.state)

    # -- timers ---------------------------------------------------------------------------
    def _switch_wait(self, out: _Output) -> float:
        """Seconds until ``min_switch_interval`` lets ``out`` change again."""
        if out.changed_at is None or out.options.min_switch_interval <= 0:
            return 0.0
        return out.changed_at + out.options.min_switch_interval - self._loop.time()

    def _schedule_revert(
        self, out: _Output, hold: float | None, *, keep_pulse: bool = False
    ) -> None:
        """Arm the output's single revert timer: the end of a pulse of ``hold`` seconds
        (back to the opposite state), or ``max_on`` while on, whichever comes first.
        ``keep_pulse`` keeps a pending pulse's end instead (a reload changed the limits)."""
        assert out.state is not None
        if out.revert is not None:
            out.revert.cancel()
            out.revert = None
        now = self._loop.time()
        if not keep_pulse:
            out.pulse_end = now + hold if hold is not None else None
        candidates: list[tuple[float, bool, Reason]] = []
        if out.pulse_end is not None:
            candidates.append((max(out.pulse_end - now, 0.0), not out.state.on, "pulse_end"))
        if out.state.on and out.options.max_on > 0:
            # Counted from when it went on: repeating "on" does not extend it.
            on_for = now - out.changed_at if out.changed_at is not None else 0.0
            candidates.append((max(out.options.max_on - on_for, 0.0), False, "max_on"))
        if not candidates or self._stopped:
            out.state = replace(out.state, until=None)
            return
        delay, target, reason = min(candidates, key=lambda c: c[0])
        out.state = replace(out.state, until=self._clock() + delay)
        out.revert = self._loop.call_later(delay, self._revert, out, target, reason)

    def _revert(self, out: _Output, target: bool, reason: Reason) -> None:
        out.revert = None
        out.pulse_end = None
        if target and not self._partners_off(out):
            # Switching back on would need an interlocked partner switched off; a pulse end
            # is not a command, so it gives way instead.
            self._event(
                out,
                "pulse_end_skipped",
                f"{out.name} stays off after its pulse: an interlocked output is on",
                "warning",
            )
            return
        if self._try_switch(out, target, reason) and reason == "max_on":
            self._event(
                out,
                "max_on",
                f"{out.name} switched off after max_on ({out.options.max_on:g} s)",
                "warning",
            )

    def _partners_off(self, out: _Output) -> bool:
        return all(
            not (p.state is not None and p.state.on)
            for p in (self._outputs[n] for n in self._partners[out.name])
        )

    def _arm_failsafe(self) -> None:
        if self._stopped:
            return
        for out in self._outputs.values():
            if out.options.failsafe is None or out.failsafe is not None:
                continue
            out.failsafe = self._loop.call_later(
                out.options.failsafe_after, self._apply_failsafe, out
            )

    def _apply_failsafe(self, out: _Output) -> None:
        out.failsafe = None
        target = out.options.failsafe == "on"
        if out.state is None or (
            out.state.on == target and not self._level_differs(out, target, "failsafe")
        ):
            return
        if target and not self._partners_off(out):
            return
        if self._try_switch(out, target, "failsafe"):
            self._event(
                out,
                "failsafe",
                f"{out.name} switched {_word(target)}: no broker for "
                f"{out.options.failsafe_after:g} s",
                "warning",
            )

    def _cancel(self, out: _Output) -> None:
        for handle in (out.revert, out.failsafe):
            if handle is not None:
                handle.cancel()
        out.revert = out.failsafe = None

    def _save(self) -> None:
        # A restore output that could not be opened this time keeps what was saved for it.
        states = {
            out.name: _saved_state(out.state) if out.state is not None else self._saved[out.name]
            for out in self._outputs.values()
            if out.options.initial == "restore"
            and (out.state is not None or out.name in self._saved)
        }
        if states == self._saved:
            return
        try:
            self._state_file.save(states)
        except OSError as e:
            log.error("cannot save output states to %s: %s", self._state_file.path, e)
            return
        self._saved = states


def _partners(outputs: dict[str, OutputOptions]) -> dict[str, set[str]]:
    """Each output's interlock partners, both ways."""
    partners: dict[str, set[str]] = {name: set() for name in outputs}
    for name, options in outputs.items():
        for other in options.interlock:
            partners[name].add(other)
            partners.setdefault(other, set()).add(name)
    return partners


def _same_hardware(old: OutputOptions, new: OutputOptions) -> bool:
    """Whether ``new`` drives the same device in the same way as ``old`` (only the
    safety policy around it may differ)."""
    policy = ("initial", "max_on", "failsafe", "failsafe_after", "interlock", "min_switch_interval")
    if type(old) is not type(new):
        return False
    return all(
        getattr(old, field) == getattr(new, field)
        for field in old.__struct_fields__
        if field not in policy
    )


def _word(on: bool) -> str:
    return "on" if on else "off"


def _percent(level: float) -> float:
    """A driver's 0..1 level as the published percentage (two decimals)."""
    return round(level * 100, 2)


def _saved_state(state: OutputState) -> SavedState:
    """What ``restore`` keeps of ``state``: on/off, and the level of an output with levels."""
    if state.on and state.level:
        return float(state.level)
    return state.on
