"""Commands under a flood (issue 20, rows 9 and 10): the bounded queue, the rate per
output, the refusal-reply budget, and what the handler charges to them. Judged without
threads, on an injected clock."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.auth import new_hmac_secret, parse_key, sign_command
from agent.commands.gate import (
    BATCH,
    MIN_BURST,
    REFUSAL_REPLIES_PER_S,
    CommandGate,
    CommandLimits,
    TokenBucket,
)
from agent.commands.handler import CommandAuth, CommandHandler, Reply
from agent.commands.parse import MAX_PAYLOAD_BYTES
from agent.commands.seen import SeenCommands
from agent.events import Event
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage
from tests.actuation.rig import Rig, relay

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
TOPICS = Topics.for_device("edge", "gh-1")
KEY = parse_key(new_hmac_secret().encode())
OTHER_KEY = parse_key(new_hmac_secret().encode())
BURST = int(MIN_BURST)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def command(output: str = "pump", payload: bytes = b"on") -> IncomingMessage:
    return IncomingMessage(TOPICS.output_set(output), payload, 1, False, None)


# --- the token bucket and the limits --------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert [bucket.allow(), bucket.allow()] == [True, False]
    clock.now += 100
    assert sum(bucket.allow() for _ in range(10)) == 2, "the burst does not grow while idle"


def test_a_clock_going_back_gives_no_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.allow()
    clock.now -= 50
    assert not bucket.allow()


def test_each_output_has_a_bucket_of_its_own_with_a_burst_of_at_least_min_burst() -> None:
    clock = Clock()
    limits = CommandLimits(max_rate=1, clock=clock)
    assert sum(limits.allow("pump") for _ in range(BURST + 10)) == BURST
    assert sum(limits.allow("heater") for _ in range(BURST + 10)) == BURST
    clock.now += 3
    assert sum(limits.allow("pump") for _ in range(10)) == 3
    fast = CommandLimits(max_rate=100, clock=clock)
    assert sum(fast.allow("pump") for _ in range(1000)) == 500, "5 s' worth"


def test_a_new_rate_refills_and_forgotten_outputs_lose_their_buckets() -> None:
    clock = Clock()
    limits = CommandLimits(max_rate=1, clock=clock)
    for _ in range(BURST):
        limits.allow("pump")
    assert not limits.allow("pump")
    limits.reconfigure(max_rate=1)
    assert not limits.allow("pump"), "an unchanged rate keeps the buckets"
    limits.reconfigure(max_rate=2)
    assert limits.allow("pump")
    limits.forget(keep={"heater"})
    assert sum(limits.allow("pump") for _ in range(BURST)) == BURST


# --- the queue -------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.handled: list[IncomingMessage] = []
        self.dropped: list[IncomingMessage] = []

    def gate(self, queue_size: int = 100, outputs: tuple[str, ...] = ()) -> CommandGate:
        def output_of(topic: str) -> str | None:
            name = TOPICS.set_topic_level(topic)
            return name if name in outputs else None

        return CommandGate(
            is_command=lambda topic: TOPICS.set_topic_level(topic) is not None,
            output_of=output_of,
            handle=self.handled.append,
            drop=self.dropped.append,
            queue_size=queue_size,
        )


def judging_all(handle: Callable[[IncomingMessage], None], queue_size: int) -> CommandGate:
    """A gate that takes every topic as a command and drops nothing it is not full for."""
    return CommandGate(
        is_command=lambda _topic: True,
        output_of=lambda _topic: None,
        handle=handle,
        drop=lambda _m: None,
        queue_size=queue_size,
    )


def drain(gate: CommandGate) -> None:
    while gate.judge_waiting():
        pass


def test_the_queue_is_bounded_and_what_does_not_fit_is_handed_to_drop() -> None:
    r = Recorder()
    gate = r.gate(queue_size=50)
    for n in range(10_000):
        gate.offer(command(payload=str(n).encode()))
    assert gate.depth() == 50 and len(r.dropped) == 10_000 - 50
    drain(gate)
    assert [m.payload for m in r.handled] == [str(n).encode() for n in range(50)], "in order"
    assert gate.depth() == 0


def test_a_flood_on_one_output_never_drops_another_outputs_command() -> None:
    r = Recorder()
    gate = r.gate(queue_size=50, outputs=("pump", "fan", "valve"))
    for n in range(1000):
        gate.offer(command("pump", str(n).encode()))
        if n == 500:
            gate.offer(command("fan", b"first"))
            gate.offer(command("fan", b"second"))  # the fan has one waiting: dropped
    gate.offer(command("valve", b"late"))
    gate.offer(command("ghost", b"invented"))  # no such output: dropped like the flood
    assert gate.depth() == 50 + 2, "over the bound by one per configured output at most"
    assert [m.payload for m in r.dropped if m.topic != TOPICS.output_set("pump")] == [
        b"second",
        b"invented",
    ]
    drain(gate)
    assert [m.payload for m in r.handled] == [str(n).encode() for n in range(50)] + [
        b"first",
        b"late",
    ], "in the order they came"
    # Once the fan's command was judged, the fan may have one waiting again.
    for _ in range(60):
        gate.offer(command("pump", b"again"))
    gate.offer(command("fan", b"third"))
    assert gate.depth() == 51


def test_a_queued_payload_is_cut_to_one_byte_over_the_limit() -> None:
    r = Recorder()
    gate = r.gate()
    gate.offer(command(payload=b"x" * 10_000_000))
    drain(gate)
    (judged,) = r.handled
    assert len(judged.payload) == MAX_PAYLOAD_BYTES + 1  # still bad_payload


def test_messages_on_other_topics_are_not_queued() -> None:
    r = Recorder()
    gate = r.gate()
    gate.offer(IncomingMessage("edge/gh-1/elsewhere", b"on", 1, False, None))
    assert gate.depth() == 0


def test_the_worker_judges_a_batch_per_loop_turn_and_survives_a_failing_command() -> None:
    judged: list[bytes] = []
    turns: list[int] = []

    def handle(message: IncomingMessage) -> None:
        if message.payload == b"boom":
            raise RuntimeError("a bug in one command")
        judged.append(message.payload)

    async def scenario() -> None:
        gate = judging_all(handle, queue_size=1000)
        worker = asyncio.create_task(gate.run())
        gate.offer(command(payload=b"boom"))
        for _ in range(3 * BATCH):
            gate.offer(command())
        while gate.depth():
            turns.append(len(judged))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker

    asyncio.run(scenario())
    assert len(judged) == 3 * BATCH
    assert all(b - a <= BATCH for a, b in itertools.pairwise(turns))
    assert len(turns) >= 3, "the loop got its turns while the queue was worked off"


def test_take_judges_a_lone_command_at_once_and_queues_the_rest_of_its_loop_turn() -> None:
    r = Recorder()

    async def scenario() -> None:
        gate = r.gate(queue_size=3)
        gate.take(command(payload=b"1"))  # nothing waits: judged before take() returns
        assert [m.payload for m in r.handled] == [b"1"] and gate.depth() == 0
        gate.take(command(payload=b"2"))  # the same loop turn: queued for the worker
        gate.take(IncomingMessage("edge/gh-1/elsewhere", b"on", 1, False, None))
        assert [m.payload for m in r.handled] == [b"1"] and gate.depth() == 1
        await asyncio.sleep(0)
        gate.take(command(payload=b"3"))  # a new turn, but "2" waits: behind it, in order
        gate.take(command(payload=b"4"))
        gate.take(command(payload=b"5"))  # the queue (3) is full: dropped
        assert gate.depth() == 3 and [m.payload for m in r.dropped] == [b"5"]
        drain(gate)
        await asyncio.sleep(0)
        gate.take(command(payload=b"x" * 10_000))  # the queue is empty again: at once, cut
        assert gate.depth() == 0

    asyncio.run(scenario())
    assert [m.payload for m in r.handled][:4] == [b"1", b"2", b"3", b"4"]
    assert len(r.handled[4].payload) == MAX_PAYLOAD_BYTES + 1


def test_take_survives_a_failing_command(caplog: pytest.LogCaptureFixture) -> None:
    def handle(message: IncomingMessage) -> None:
        raise RuntimeError("a bug in one command")

    async def scenario() -> None:
        gate = judging_all(handle, queue_size=10)
        gate.take(command())

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "judging a command on edge/gh-1/output/pump/set failed" in caplog.text


# --- the handler's charges -------------------------------------------------------------------


class Bench:
    """A handler as the daemon builds one, with limits on an injected monotonic clock."""

    def __init__(self, rig: Rig, *, max_rate: float = 1.0, **auth: Any) -> None:
        self.clock = Clock()
        self.sent: list[Reply] = []
        self.events: list[Event] = []
        self.outputs = rig.open(
            {
                "pump": relay(17),
                "heater": relay(18),
                "fan": relay(22),
                "compressor": relay(23, min_switch_interval=300),
            }
        )
        self.limits = CommandLimits(max_rate=max_rate, clock=self.clock)
        self.handler = CommandHandler(
            topics=TOPICS,
            outputs=self.outputs,
            max_age=30.0,
            send=self.sent.append,
            seen=SeenCommands(path=None),
            auth=CommandAuth(keys={"ops": KEY}, outputs={"fan": False}, **auth),
            report=self.events.append,
            limits=self.limits,
            clock=lambda: NOW,
            monotonic=self.clock,
        )

    def send(self, payload: bytes, output: str = "pump") -> list[dict[str, Any]]:
        self.sent.clear()
        self.handler.handle(command(output, payload))
        return [json.loads(r.payload) for r in self.sent]

    def signed(self, state: str = "on", output: str = "pump", **more: Any) -> bytes:
        body = {"state": state, "ts": iso_ts(NOW), "nonce": uuid.uuid4().hex, **more}
        return sign_command(TOPICS.output_set(output), json.dumps(body), KEY, "ops")


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    rig = Rig(state_path=tmp_path / "outputs.json")
    yield Bench(rig)
    rig.close()


def test_commands_beyond_the_rate_are_refused_rate_limited_with_their_id(bench: Bench) -> None:
    for n in range(BURST):
        (body,) = bench.send(bench.signed("on" if n % 2 else "off", id=n))
        assert body["ok"] is True
    (body,) = bench.send(bench.signed(id="late"))
    assert (body["ok"], body["error"], body["id"]) == (False, "rate_limited", "late")
    assert "1 commands a second" in body["message"]
    assert bench.send(bench.signed(output="heater"), output="heater")[0]["ok"] is True, (
        "a bucket per output"
    )
    bench.clock.now += 1
    assert bench.send(bench.signed())[0]["ok"] is True, "then max_rate a second"
    assert bench.handler.results[("pump", "rate_limited")] == 1


def test_forged_commands_do_not_use_up_an_outputs_rate(bench: Bench) -> None:
    forged = sign_command(
        TOPICS.output_set("pump"),
        json.dumps({"state": "on", "ts": iso_ts(NOW), "nonce": uuid.uuid4().hex}),
        OTHER_KEY,
        "ops",
    )
    for _ in range(5 * BURST):
        bench.send(forged)
        bench.send(b"on")  # unsigned, where signatures are required
        bench.clock.now += 0.05  # the refusal budget refills; the rate would not
    assert bench.handler.results[("pump", "unauthenticated")] > BURST
    for _ in range(BURST):
        assert bench.send(bench.signed())[0]["ok"] is True


def test_a_replayed_command_does_not_use_up_the_rate_either(bench: Bench) -> None:
    envelope = bench.signed()
    assert bench.send(envelope)[0]["ok"] is True
    for _ in range(3 * BURST):
        bench.send(envelope)
        bench.clock.now += 0.05
    assert bench.handler.results[("pump", "replayed")] > BURST
    for _ in range(BURST - 1):
        assert bench.send(bench.signed())[0]["ok"] is True


def test_an_output_that_takes_unsigned_commands_is_charged_for_every_one(bench: Bench) -> None:
    assert sum(bool(bench.send(b"on", output="fan")[0]["ok"]) for _ in range(BURST + 5)) == BURST
    assert bench.handler.results[("fan", "rate_limited")] == 5


def test_refusals_no_rate_paid_for_share_a_reply_budget_then_are_dropped(bench: Bench) -> None:
    budget = int(REFUSAL_REPLIES_PER_S)
    replies = [bench.send(b"on") for _ in range(200)]  # unsigned: unauthenticated
    assert sum(len(r) for r in replies) == budget
    assert bench.handler.results[("pump", "unauthenticated")] == budget
    assert bench.handler.results[("pump", "dropped")] == 200 - budget
    assert bench.handler.dropped == 200 - budget
    # A command the output's rate paid for is answered, even when refused later on.
    (body,) = bench.send(bench.signed(output="compressor"), output="compressor")
    assert (body["ok"], body["error"]) == (False, "rate_limited")  # min_switch_interval
    assert "min_switch_interval" in body["message"]
    bench.clock.now += 1
    assert len(bench.send(b"on")) == 1, "the budget refills"


def test_commands_to_unknown_outputs_count_under_one_label_and_take_no_bucket(
    bench: Bench,
) -> None:
    for n in range(2000):
        name = f"invented-{n}"
        bench.send(bench.signed(output=name), output=name)
        bench.send(b"on", output=f"{n}" + "y" * 30_000)  # no output name at all
        bench.clock.now += 0.1
    assert {label for label, _result in bench.handler.results} == {""}
    assert bench.handler.results[("", "unknown_output")] == 2000
    assert bench.handler.results[("", "bad_payload")] == 2000
    assert sum(bench.send(bench.signed())[0]["ok"] for _ in range(BURST)) == BURST


def test_refusals_are_logged_once_per_code_every_10_s_with_how_many_were_held_back(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.commands.handler")
    stale = b'{"state": "on", "ts": "2020-01-01T00:00:00Z"}'
    for _ in range(500):  # over 15 s
        bench.send(b"on", output="x" * 30_000)  # a 30 kB topic level: bad_payload
        bench.send(stale, output="fan")
        bench.clock.now += 0.03
    lines = [r.getMessage() for r in caplog.records]
    bad = [line for line in lines if "refused (bad_payload)" in line]
    old = [line for line in lines if "refused (stale)" in line]
    assert len(bad) == 2 and len(old) == 2, lines
    assert "more refused bad_payload in the last 10 s" in bad[1]
    assert all(len(line) < 600 for line in lines), "a 30 kB name is not logged whole"
    dropping = [line for line in lines if "dropping commands unanswered" in line]
    assert len(dropping) == 2, dropping
