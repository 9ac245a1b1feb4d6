"""Commands under a flood: a bounded queue, a rate per output, a budget for refusals
(issue 20, rows 9 and 10).

A controller gone wild, or anyone with the broker's permission to publish on a set
topic, can send thousands of commands a second. Judged one by one as they arrive, each
costs a signature check, a parse, maybe an actuation, and a QoS 1 reply; what the loop
cannot keep up with piles up. So:

- :class:`CommandGate` takes each message from the transport in O(1) into a bounded queue
  (``commands.queue_size``). A command that finds it full is dropped unanswered and
  counted (result ``dropped``) - unless it is for a configured output that has no
  command waiting: that one is still queued, so a flood on one output never drops
  another output's command (the queue then holds at most ``queue_size`` plus one per
  configured output). A worker judges the queue :data:`BATCH` commands per loop
  turn, so readings, health and the MQTT keepalive go on during a flood; a command that
  finds the queue empty, the first in its loop turn, is judged at once instead (no wait
  for the worker's turn). What is kept per
  queued command is bounded too: a payload is cut to one byte over
  :data:`~agent.commands.parse.MAX_PAYLOAD_BYTES`, which still makes it ``bad_payload``.
- :class:`CommandLimits` holds a token bucket per configured output (``commands.max_rate``
  a second on average, in bursts of :data:`BURST_SECONDS` of it and at least
  :data:`MIN_BURST`, so that a script's quick sequence or two controllers racing are not
  refused). The handler charges it only once a command's signature holds (or the output
  takes unsigned commands): forged commands cannot use up an output's rate. A command
  beyond it is refused ``rate_limited`` without touching the output.
- Refusals that no output's rate paid for (beyond the rate, forged, to unknown outputs,
  malformed) share one reply budget (:data:`REFUSAL_REPLIES_PER_S`): beyond it a refused
  command is dropped and counted instead of answered, because answering a flood is a
  flood of our own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from agent.commands.parse import MAX_PAYLOAD_BYTES
from agent.mqtt.transport import IncomingMessage

__all__ = [
    "BATCH",
    "BURST_SECONDS",
    "MIN_BURST",
    "REFUSAL_REPLIES_PER_S",
    "CommandGate",
    "CommandLimits",
    "TokenBucket",
]

log = logging.getLogger(__name__)

#: Commands judged per loop turn before the worker yields.
BATCH: Final = 32
#: A burst may hold this many seconds' worth of ``max_rate`` ...
BURST_SECONDS: Final = 5.0
#: ... and at least this many commands.
MIN_BURST: Final = 50.0
#: Refusal replies not paid for by an output's rate, per second at most, over all outputs.
REFUSAL_REPLIES_PER_S: Final = 20.0


class TokenBucket:
    """``rate`` events a second on average, at most ``burst`` at once."""

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def allow(self) -> bool:
        """Take a token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class CommandLimits:
    """The rate per output and the refusal-reply budget, for the agent's life (a reload
    keeps them; :meth:`reconfigure` applies a new ``max_rate``).

    Args:
        max_rate: ``commands.max_rate``: commands a second per output, on average.
        clock: monotonic seconds, injectable for tests.
    """

    def __init__(self, *, max_rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rate = max_rate
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._replies = TokenBucket(
            rate=REFUSAL_REPLIES_PER_S, burst=REFUSAL_REPLIES_PER_S, clock=clock
        )

    def reconfigure(self, *, max_rate: float) -> None:
        """A new rate: every output starts again with a full bucket."""
        if max_rate != self.max_rate:
            self.max_rate = max_rate
            self._buckets.clear()

    def forget(self, keep: set[str]) -> None:
        """Drop the buckets of outputs that are no longer configured."""
        for name in set(self._buckets) - keep:
            del self._buckets[name]

    def allow(self, output: str) -> bool:
        """Charge one command to ``output`` (a configured output: the caller checks)."""
        bucket = self._buckets.get(output)
        if bucket is None:
            bucket = self._buckets[output] = TokenBucket(
                rate=self.max_rate,
                burst=max(self.max_rate * BURST_SECONDS, MIN_BURST),
                clock=self._clock,
            )
        return bucket.allow()

    def may_refuse(self) -> bool:
        """Take one refusal reply from the shared budget, if it has one left."""
        return self._replies.allow()


class CommandGate:
    """The bounded queue between the transport and the command handler.

    Args:
        is_command: whether a topic is a set topic (anything else is not queued).
        output_of: the configured output a set topic names, or None (an invented one).
        handle: judges and answers one command (the handler's ``handle``, as it is now).
        drop: counts a command dropped at the full queue (by its topic).
        queue_size: ``commands.queue_size``: commands waiting at most.
    """

    def __init__(
        self,
        *,
        is_command: Callable[[str], bool],
        output_of: Callable[[str], str | None],
        handle: Callable[[IncomingMessage], None],
        drop: Callable[[IncomingMessage], None],
        queue_size: int,
    ) -> None:
        self._is_command = is_command
        self._output_of = output_of
        #: Commands waiting per configured output (an output with none is never dropped).
        self._waiting: dict[str, int] = {}
        self._handle = handle
        self._drop = drop
        self.queue_size = queue_size
        #: Waiting commands, each with the configured output it names (None: none).
        self._queue: deque[tuple[IncomingMessage, str | None]] = deque()
        self._wake = asyncio.Event()
        #: Whether :meth:`take` judged a command at once in this loop turn already.
        self._judged_this_turn = False

    def depth(self) -> int:
        """Commands waiting."""
        return len(self._queue)

    def offer(self, message: IncomingMessage) -> None:
        """Queue a command (from the transport, on the loop); O(1), never blocks."""
        if self._is_command(message.topic):
            self._enqueue(message)

    def _enqueue(self, message: IncomingMessage) -> None:
        output = self._output_of(message.topic)
        waiting = self._waiting.get(output, 0) if output is not None else 0
        if len(self._queue) >= self.queue_size and (output is None or waiting):
            self._drop(message)
            return
        if output is not None:
            self._waiting[output] = waiting + 1
        self._queue.append((_bounded(message), output))
        self._wake.set()

    def take(self, message: IncomingMessage) -> None:
        """A message from the transport, on the loop: a command is judged at once when
        nothing waits and no other was judged so in this loop turn; otherwise it is
        queued for the worker, as :meth:`offer` does.

        Judging at once saves the loop turn the worker's wake-up costs, so a lone command's
        state goes out in the callback that read it (B3 in ``tests/bench``). Order is kept
        (nothing is waiting ahead of it), and under a flood this adds at most one command
        per loop turn to the worker's :data:`BATCH`.
        """
        if not self._is_command(message.topic):
            return
        if self._queue or self._judged_this_turn:
            self._enqueue(message)
            return
        self._judged_this_turn = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        self._judge(_bounded(message))

    def _next_turn(self) -> None:
        self._judged_this_turn = False

    def judge_waiting(self, limit: int = BATCH) -> int:
        """Judge up to ``limit`` waiting commands, in order; returns how many."""
        done = 0
        while self._queue and done < limit:
            message, output = self._queue.popleft()
            done += 1
            if output is not None:
                left = self._waiting.pop(output, 1) - 1
                if left:
                    self._waiting[output] = left
            self._judge(message)
        return done

    def _judge(self, message: IncomingMessage) -> None:
        try:
            self._handle(message)
        except Exception:  # one command's bug must not stop the judging of the rest
            log.exception("judging a command on %s failed", message.topic[:200])

    async def run(self) -> None:
        """Judge commands as they come, yielding to the loop between batches. Until
        cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.judge_waiting():
                await asyncio.sleep(0)


def _bounded(message: IncomingMessage) -> IncomingMessage:
    """``message`` with its payload cut to one byte over the limit (still ``bad_payload``),
    so that what is kept per command is bounded."""
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        return replace(message, payload=message.payload[: MAX_PAYLOAD_BYTES + 1])
    return message
