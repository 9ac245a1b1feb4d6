"""Judging and answering commands (CONTRACT section 7).

Every message on a set topic is one command and gets exactly one reply on
``<base>/reply`` and, when it names an acceptable MQTT 5 response topic, one there too
(with its correlation data). It runs on the event loop, in the transport's callback
for the read that brought the command.

A response topic is acceptable only where nobody could mistake a reply for something
else: not a ``$`` topic, not under ``<topic_prefix>/#`` (this agent's and its peers'
state, status and set topics) nor under the Home Assistant discovery prefix, and, when
``commands.response_prefix`` is set, under it. A command naming any other response topic
is refused (``bad_payload``) on ``<base>/reply`` only: otherwise anyone who may publish a
command could make the agent publish ``"state": "on"`` on another output's state topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.actuation.outputs import OutputController
from agent.clock import ClockSource, stamp
from agent.commands.auth import Key, Unauthenticated, open_envelope, read_envelope
from agent.commands.gate import CommandLimits
from agent.commands.parse import Command, CommandRefused, envelope_of, parse_command
from agent.commands.seen import Seen, SeenCommands
from agent.events import Event, EventSink, RateLimiter
from agent.mqtt.payloads import encode_json, iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage

log = logging.getLogger(__name__)

#: An output name, as the config allows it.
OUTPUT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The longest topic MQTT can carry.
MAX_TOPIC_BYTES = 65535
#: At most one refusal log line per code, and one command_rejected event per reason, this
#: often (the rest are counted, and the next line or event says how many).
REJECTED_EVENT_EVERY_S = 10.0
#: Refusal codes that are also a ``command_rejected`` event (``stale`` only when signed).
_REJECTED_EVENTS = ("unauthenticated", "replayed")


@dataclass(frozen=True)
class CommandAuth:
    """Signed commands (``commands.auth``): the keys by id, and who must sign."""

    keys: dict[str, Key]
    #: ``commands.auth.required``: unsigned commands are refused ...
    required: bool = True
    #: ... unless an output says otherwise (``outputs.<name>.auth``).
    outputs: dict[str, bool] | None = None

    def required_for(self, output: str) -> bool:
        return (self.outputs or {}).get(output, self.required)


class LatencyHistogram:
    """Cumulative latency buckets, as Prometheus histograms count them."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.counts[i] += 1


@dataclass(frozen=True)
class Reply:
    """One reply message."""

    topic: str
    payload: bytes
    correlation_data: bytes | None = None


class CommandHandler:
    """Turns messages on set topics into actuation and replies.

    Args:
        topics: the device's topics.
        outputs: the outputs commands switch.
        max_age: ``commands.max_age`` in seconds.
        max_skew: ``commands.max_skew``: how far ahead a command's ``ts`` may be.
        send: publishes a reply (QoS 1, not retained).
        reserved_prefixes: topic prefixes a reply must never be published under (the
            ``topic_prefix`` and the Home Assistant prefix); the device's base always is.
        response_prefix: ``commands.response_prefix``: when set, response topics must be
            under it.
        seen: the memory of accepted commands and signed commands' nonces (shared across
            reloads); default: a fresh one in memory only.
        auth: the keys signed commands are verified with, and which outputs require
            them; None: no keys (a signed command is refused, unsigned ones accepted).
        report: where ``command_rejected`` events go (rate-limited).
        limits: the rate per output and the refusal-reply budget (``agent.commands.gate``),
            shared across reloads; None: no limits.
        clock: wall clock, for staleness and reply ``ts``.
        time_source: the agent's clocks and their sync state (CONTRACT 14); None: the
            ``clock`` is trusted as it is. See :meth:`_reference` for what changes.
        monotonic: monotonic clock, for how often refusals are logged and reported.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        outputs: OutputController,
        max_age: float,
        send: Callable[[Reply], None],
        max_skew: float = 5.0,
        reserved_prefixes: Iterable[str] = (),
        response_prefix: str | None = None,
        seen: SeenCommands | None = None,
        auth: CommandAuth | None = None,
        report: EventSink | None = None,
        limits: CommandLimits | None = None,
        clock: Callable[[], float] = time.time,
        time_source: ClockSource | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topics = topics
        self._outputs = outputs
        self._max_age = max_age
        self._max_skew = max_skew
        self._send = send
        self._reserved = (*reserved_prefixes, topics.base)
        self._response_prefix = response_prefix
        self._seen = seen if seen is not None else SeenCommands(path=None)
        self._auth = auth
        self._report = report
        self._limits = limits
        #: Refusals' log lines and command_rejected events, one per key every 10 s.
        self._rejections = RateLimiter(REJECTED_EVENT_EVERY_S, monotonic)
        #: The key id of the signed command being judged (None: unsigned).
        self._kid: str | None = None
        self._clock = clock if time_source is None else time_source.wall
        self._time = time_source
        if time_source is not None:
            # A trusted time read back from the file counts from now (the agent's start).
            self._seen.trusted_at(time_source.monotonic())
        #: The wall clock when the command being judged arrived: its reply's ``ts``.
        self._wall = 0.0
        #: Whether the ``ts`` of the command being judged can be checked for the future.
        self._synced = True
        #: Whether the command being judged was charged to its output's rate.
        self._charged = False
        #: Commands dropped unanswered (queue full, or no refusal replies left), in all.
        self.dropped = 0
        #: (output, "ok" or error code) -> count, for /metrics.
        self.results: Counter[tuple[str, str]] = Counter()
        #: Seconds from arrival on the loop to the reply handed to the transport.
        self.latency = LatencyHistogram()

    def handle(self, message: IncomingMessage) -> None:
        """Judge ``message``; ignored unless it is on a set topic (``<base>/output/.../set``,
        malformed ones included: those are answered ``bad_payload``)."""
        name = self._topics.set_topic_level(message.topic)
        if name is None:
            log.debug("ignoring message on %s", message.topic)
            return
        started = time.monotonic()
        now = self._wall = self._clock()
        route: tuple[str, bytes | None] | None = None
        self._kid = None
        self._charged = False
        try:
            route = self._route(message)
            body = self._judge(name, message, self._reference(now))
        except CommandRefused as e:
            body = self._refusal(name, e, now)
            self._refused(name, e)
            if not self._charged and self._limits is not None and not self._limits.may_refuse():
                # Answering every refusal of a flood would be a flood of our own.
                self.drop(name, "more refusals than can be answered")
                return
        self.results[(self.label(name), _result(body))] += 1
        payload = encode_json(body)
        self._send(Reply(self._topics.reply, payload))
        if route is not None:
            self._send(Reply(route[0], payload, route[1]))
        self.latency.observe(time.monotonic() - started)

    def label(self, name: str) -> str:
        """The output label for counters and /metrics: a configured output's name, else
        ``""`` for all others, so that invented names grow neither."""
        return name if name in self._outputs else ""

    def drop(self, name: str, why: str) -> None:
        """Count a command to ``name`` dropped unanswered (result ``dropped``), and say so
        in the log (rate-limited)."""
        self.dropped += 1
        self.results[(self.label(name), "dropped")] += 1
        key = f"dropped: {why}"
        if self._rejections.allow(key):
            held_back = self._rejections.take_suppressed(key)
            log.warning(
                "dropping commands unanswered: %s (%d dropped so far%s)",
                why,
                self.dropped,
                f", {held_back + 1} in the last {REJECTED_EVENT_EVERY_S:g} s" if held_back else "",
            )

    @property
    def seen(self) -> SeenCommands:
        """The memory of accepted commands, to hand to the next handler on a reload."""
        return self._seen

    def _route(self, message: IncomingMessage) -> tuple[str, bytes | None] | None:
        """The MQTT 5 response topic and correlation data to reply to as well, if any.

        Raises:
            CommandRefused: the message names a response topic the agent will not use.
        """
        props = message.properties
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if topic is None:
            return None
        problem = response_topic_problem(
            topic,
            reserved=self._reserved,
            response_prefix=self._response_prefix,
            own_replies=self._topics.reply,
        )
        if problem is not None:
            raise CommandRefused("bad_payload", f"the response topic {problem}; not acted on")
        correlation = getattr(props, "CorrelationData", None)
        return topic, bytes(correlation) if correlation is not None else None

    def _refused(self, name: str, e: CommandRefused) -> None:
        """Say that a command was refused: a log line per code, and for the signing's
        refusals a ``command_rejected`` event, each at most once every 10 s per code (one
        limiter for both; what it held back is counted in the next line and event)."""
        event = self._report is not None and (
            e.code in _REJECTED_EVENTS or (e.code == "stale" and self._kid is not None)
        )
        key = f"{e.code} (event)" if event else e.code
        if not self._rejections.allow(key):
            return
        held_back = self._rejections.take_suppressed(key)
        log.warning(
            "command to %s refused (%s): %s%s",
            _shown(name),
            e.code,
            e.message[:300],
            f" ({held_back} more refused {e.code} in the last {REJECTED_EVENT_EVERY_S:g} s)"
            if held_back
            else "",
        )
        if not event or self._report is None:
            return
        known = name if name in self._outputs else None
        self._report(
            Event(
                "command_rejected",
                f"a command to {known or 'an unknown output'} was refused ({e.code}): {e.message}",
                level="warning",
                fields={
                    "output": known,
                    "kid": self._kid,
                    "reason": e.code,
                    "suppressed": held_back,
                },
            )
        )

    def _refusal(self, name: str, e: CommandRefused, now: float) -> dict[str, Any]:
        return {
            "id": e.command_id,
            "output": name,
            "ok": False,
            "error": e.code,
            "message": e.message,
            "ts": iso_ts(now),
        }

    def _reference(self, wall: float) -> float:
        """The time that commands' ``ts`` and the memory of accepted commands are judged
        by (CONTRACT 14).

        Without a ``time_source``, or while the clock is synchronised, the wall clock
        (never less than the trusted time below, so that the reference never goes back).
        While it is not synchronised, the trusted time: the last reference used (kept in
        the memory of accepted commands, across restarts) plus the monotonic time since,
        raised by the ``ts`` of every signed command accepted meanwhile (the signers'
        clocks are the best the agent has); the unsynchronised wall clock only when
        nothing is known at all. Then no ``ts`` is refused for being ahead: a ``ts``
        ahead of that reference is a signer's clock, not a command made to be replayed.

        Safety: the reference never decreases, and an entry is forgotten only once the
        reference has passed its deadline (``ts + max_age``), when its command is stale
        by the same reference: a signed command that was accepted is refused (stale or
        replayed) ever after, whatever the wall clock does.
        """
        source = self._time
        if source is None:
            self._synced = True
            return wall
        now = stamp(source)
        trusted = self._seen.trusted_at(now.mono)
        self._synced = now.synced
        value = self._seen.trusted_value
        if trusted is None or value is None:
            reference = now.wall
        elif now.synced:
            reference = max(now.wall, value)
        else:
            reference = trusted
        self._seen.trust(reference, now.mono)
        return reference

    def carry_over(self, previous: CommandHandler) -> None:
        """Keep the counters of the handler this one replaces (after a reload); the memory
        of accepted commands is shared by passing ``seen=previous.seen``."""
        self.results = previous.results
        self.latency = previous.latency
        self.dropped = previous.dropped
        self._rejections = previous._rejections

    def _judge(self, name: str, message: IncomingMessage, now: float) -> dict[str, Any]:
        """The reply body of an accepted command (carried out, or recognised as a
        redelivery of one that was).

        Raises:
            CommandRefused: with the refusal's code.
        """
        if not OUTPUT_NAME.fullmatch(name):
            raise CommandRefused(
                "bad_payload",
                "not a set topic: <base>/output/<name>/set, a name of letters, digits, _ and -",
            )
        if _expired(message):
            raise CommandRefused("stale", "the command's MQTT message expiry has passed")
        payload = self._verified(name, message)
        command = parse_command(
            payload,
            retained=message.retain,
            now=now,
            max_age=self._max_age,
            max_skew=self._max_skew if self._synced else math.inf,
            signed=self._kid is not None,
        )
        if command.nonce is not None and self._seen.get(_nonce_key(command.nonce), now) is not None:
            raise CommandRefused(
                "replayed", "this nonce was already used: a replayed command", command.id
            )
        if self._limits is not None and name in self._outputs:
            # Charged only now: the signature holds (or the output takes unsigned
            # commands) and it is no replay, so neither forged nor replayed commands can
            # use up a real sender's rate.
            if not self._limits.allow(name):
                raise CommandRefused(
                    "rate_limited",
                    f"more than {self._limits.max_rate:g} commands a second to {name}",
                    command.id,
                )
            self._charged = True
        if command.nonce is not None:
            self._take_nonce(command, payload, now)
            if not self._synced and command.ts is not None and self._time is not None:
                # A signed command's ts is a signer's clock: trusted while ours is not.
                self._seen.trust(command.ts, self._time.monotonic())
        if name not in self._outputs:
            raise CommandRefused(
                "unknown_output", f"this device has no output named {name!r}", command.id
            )
        if command.id is None:
            return self._carry_out(name, command, now)
        # A command with an id is carried out at most once while it could be accepted:
        # a QoS 1 redelivery (same output, id and payload) is answered again, never acted
        # on twice (a repeated toggle would undo the first); the same id with another
        # payload is a reuse, refused.
        key = json.dumps([name, command.id])
        digest = hashlib.sha256(message.payload).hexdigest()[:32]
        seen = self._seen.get(key, now)
        if seen is not None:
            if seen.digest != digest:
                raise CommandRefused(
                    "bad_payload",
                    f"id {command.id!r} was already used for another command to {name} "
                    f"within the last {self._max_age + self._max_skew:g} s",
                    command.id,
                )
            earlier = seen.reply if seen.reply is not None else self._state_body(name, command)
            return {**earlier, "duplicate": True, "ts": iso_ts(self._wall)}
        if self._seen.full(now):
            raise CommandRefused(
                "rate_limited",
                f"{len(self._seen)} commands with an id within max_age: no more can be "
                "told apart from redeliveries until the oldest expire",
                command.id,
            )
        body = self._carry_out(name, command, now)
        # Until when this command could still be accepted (and so must be recognised).
        until = (
            command.ts + self._max_age
            if command.ts is not None
            else now + self._max_age + self._max_skew
        )
        self._seen.add(key, Seen(until=until, digest=digest, reply=body))
        return body

    def _verified(self, name: str, message: IncomingMessage) -> bytes:
        """The command's bytes: the payload itself, or, for a signed command, the inner
        command once its signature over this topic holds (nothing reads it before).

        Raises:
            CommandRefused: ``unauthenticated``.
        """
        outer = envelope_of(message.payload)
        if outer is None:
            if self._auth is not None and self._auth.required_for(name):
                raise CommandRefused(
                    "unauthenticated", f"{name} takes signed commands only (commands.auth)"
                )
            return message.payload
        keys = self._auth.keys if self._auth is not None else {}
        try:
            envelope = read_envelope(outer)
            inner = open_envelope(message.topic, envelope, keys)
        except Unauthenticated as e:
            kid = outer.get("kid")
            self._kid = kid if isinstance(kid, str) and kid in keys else None
            raise CommandRefused("unauthenticated", f"signed command refused: {e}") from None
        self._kid = envelope.kid
        return inner

    def _take_nonce(self, command: Command, payload: bytes, now: float) -> None:
        """Use up a signed command's nonce, before it is carried out: accepted once while
        its ``ts`` is fresh, across reloads and restarts.

        Raises:
            CommandRefused: ``replayed``, or ``rate_limited`` when the memory is full.
        """
        assert command.nonce is not None and command.ts is not None
        key = _nonce_key(command.nonce)
        if self._seen.get(key, now) is not None:
            raise CommandRefused(
                "replayed", "this nonce was already used: a replayed command", command.id
            )
        if self._seen.full(now):
            raise CommandRefused(
                "rate_limited",
                f"{len(self._seen)} commands within max_age: no more nonces can be kept",
                command.id,
            )
        digest = hashlib.sha256(payload).hexdigest()[:32]
        self._seen.add(key, Seen(until=command.ts + self._max_age, digest=digest))

    def _carry_out(self, name: str, command: Command, now: float) -> dict[str, Any]:
        state = self._outputs.command(name, command)
        body: dict[str, Any] = {
            "id": command.id,
            "output": name,
            "ok": True,
            "state": "on" if state.on else "off",
            "until": iso_ts(state.until) if state.until is not None else None,
            "ts": iso_ts(self._wall),
        }
        if state.level is not None:
            body["level"] = state.level
        return body

    def _state_body(self, name: str, command: Command) -> dict[str, Any]:
        """A reply for a redelivery whose first reply this process never had (it was
        accepted before a restart): the output's state now."""
        state = self._outputs.state(name)
        return {
            "id": command.id,
            "output": name,
            "ok": True,
            "state": "on" if state is not None and state.on else "off",
            "until": iso_ts(state.until) if state is not None and state.until else None,
        }


def response_topic_problem(
    topic: object,
    *,
    reserved: Iterable[str],
    response_prefix: str | None = None,
    own_replies: str | None = None,
) -> str | None:
    """Why ``topic`` may not be replied to (a phrase), or None when it may.

    ``own_replies`` (``<base>/reply``) is the one place under the reserved prefixes that
    is allowed, below it: ``<base>/reply/<anything>`` carries nothing but this device's
    replies (``edge-agent send`` listens on ``<base>/reply/<its client id>``).
    """
    if not isinstance(topic, str) or not topic:
        return "is empty"
    if "+" in topic or "#" in topic or "\x00" in topic:
        return "has a wildcard or a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "is too long"
    if own_replies is not None and topic.startswith(own_replies + "/"):
        return None
    if topic.startswith("$"):
        return "is a $ topic (the broker's)"
    for prefix in reserved:
        if topic == prefix or topic.startswith(prefix + "/"):
            return f"is under {prefix}/#, where devices publish and take commands"
    if response_prefix is not None and not (
        topic == response_prefix or topic.startswith(response_prefix + "/")
    ):
        return f"is not under commands.response_prefix ({response_prefix}/#)"
    return None


def _nonce_key(nonce: str) -> str:
    return json.dumps(["nonce", nonce])


def _shown(name: str) -> str:
    """An output name as the log shows it: a topic level may be 64 kB of anyone's text."""
    return repr(name[:64] + ("..." if len(name) > 64 else ""))


def _result(body: dict[str, Any]) -> str:
    return "ok" if body["ok"] else str(body["error"])


def _expired(message: IncomingMessage) -> bool:
    """MQTT 5: the broker passes on what is left of a message's expiry interval; 0 means
    the message is already too old to act on."""
    props = message.properties
    remaining = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    return isinstance(remaining, int) and remaining <= 0
