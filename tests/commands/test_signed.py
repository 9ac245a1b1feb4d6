"""Signed commands (CONTRACT section 13): the envelope codec and the handler's verdicts.

Property tests: every mutation of a valid envelope (any byte changed, dropped or added,
another topic, another key) is refused; an unsigned command never moves an output that
requires signatures.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands.auth import (
    Key,
    Unauthenticated,
    b64encode,
    new_ed25519_pair,
    new_hmac_secret,
    open_envelope,
    parse_key,
    read_envelope,
    sign_command,
)
from agent.commands.handler import CommandAuth, CommandHandler, Reply
from agent.commands.parse import envelope_of
from agent.commands.seen import SeenCommands
from agent.events import Event
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage
from tests.actuation.rig import Rig, relay

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
TOPICS = Topics.for_device("edge", "gh-1")
PUMP = TOPICS.output_set("pump")
HMAC_KEY = parse_key(new_hmac_secret().encode())
OTHER_KEY = parse_key(new_hmac_secret().encode())
ED_PRIVATE, ED_PUBLIC = (parse_key(pem) for pem in new_ed25519_pair())


def inner(state: str = "on", *, ts: float = NOW, nonce: str | None = None, **more: Any) -> str:
    body = {"state": state, "ts": iso_ts(ts), "nonce": nonce or uuid.uuid4().hex, **more}
    return json.dumps(body)


def verify(topic: str, payload: bytes, keys: dict[str, Key]) -> bytes:
    outer = envelope_of(payload)
    if outer is None:
        raise Unauthenticated("not an envelope")
    return open_envelope(topic, read_envelope(outer), keys)


# --- the codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("signer", ["hmac", "ed25519"])
def test_a_signed_command_opens_to_exactly_what_was_signed(signer: str) -> None:
    key, verify_key = (HMAC_KEY, HMAC_KEY) if signer == "hmac" else (ED_PRIVATE, ED_PUBLIC)
    command = inner("on", id="c-1")
    envelope = sign_command(PUMP, command, key, "ops")
    assert set(json.loads(envelope)) == {"signed", "kid", "sig"}
    assert verify(PUMP, envelope, {"ops": verify_key}) == command.encode()


def test_hmac_and_ed25519_keys_are_told_apart() -> None:
    assert HMAC_KEY.kind == "hmac-sha256" and len(HMAC_KEY.secret) == 32
    assert ED_PUBLIC.kind == "ed25519" and ED_PRIVATE.kind == "ed25519"


@pytest.mark.parametrize("data", [b"", b"short", b"c2hvcnQ", b"!!!!", b"-----BEGIN junk"])
def test_a_key_file_that_is_no_key_is_refused(data: bytes) -> None:
    from agent.commands.auth import KeyFileError

    with pytest.raises(KeyFileError):
        parse_key(data)


KEYS = {"ops": HMAC_KEY, "ctl": ED_PUBLIC}
SIGNED = {
    "hmac": sign_command(PUMP, inner("on", nonce="n" * 16), HMAC_KEY, "ops"),
    "ed25519": sign_command(PUMP, inner("on", nonce="m" * 16), ED_PRIVATE, "ctl"),
}


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a valid envelope, the same changed in one way: a byte replaced, removed or
    inserted)."""
    original = SIGNED[draw(st.sampled_from(sorted(SIGNED)))]
    data = bytearray(original)
    at = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["replace", "remove", "insert"]))
    if how == "replace":
        data[at] = draw(st.integers(0, 255).filter(lambda b: b != original[at]))
    elif how == "remove":
        del data[at]
    else:
        data.insert(at, draw(st.integers(0, 255)))
    return original, bytes(data)


def same_json(a: bytes, b: bytes) -> bool:
    """Whether two payloads say the same, read as the agent reads any command: surrounding
    whitespace (str.strip's) ignored."""
    try:
        return bool(json.loads(a.decode().strip()) == json.loads(b.decode().strip()))
    except ValueError:
        return False


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutation=mutations())
def test_every_mutation_of_a_valid_envelope_is_refused(mutation: tuple[bytes, bytes]) -> None:
    # Whitespace around the JSON's tokens is no change to the envelope (any JSON library
    # may write it); every change to what it says is refused.
    original, mutated = mutation
    if same_json(original, mutated):
        assert verify(PUMP, mutated, KEYS) == verify(PUMP, original, KEYS)
        return
    with pytest.raises(Unauthenticated):
        verify(PUMP, mutated, KEYS)


@pytest.mark.parametrize("signer", sorted(SIGNED))
@pytest.mark.parametrize(
    "topic",
    [TOPICS.output_set("heater"), "edge/gh-2/output/pump/set", PUMP + " ", PUMP.upper()],
)
def test_a_signature_holds_only_on_its_own_topic(signer: str, topic: str) -> None:
    assert verify(PUMP, SIGNED[signer], KEYS)
    with pytest.raises(Unauthenticated):
        verify(topic, SIGNED[signer], KEYS)


def test_another_key_or_an_unknown_kid_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        verify(PUMP, SIGNED["hmac"], {"ops": OTHER_KEY})
    with pytest.raises(Unauthenticated):
        verify(PUMP, SIGNED["hmac"], {"other": HMAC_KEY})
    with pytest.raises(Unauthenticated):  # an HMAC kid given an Ed25519 signature
        verify(PUMP, SIGNED["ed25519"].replace(b'"ctl"', b'"ops"'), KEYS)


def test_a_non_canonical_signature_encoding_is_refused() -> None:
    body = json.loads(SIGNED["hmac"])
    for sig in (body["sig"] + "=", body["sig"] + "A", " " + body["sig"]):
        with pytest.raises(Unauthenticated):
            verify(PUMP, json.dumps({**body, "sig": sig}).encode(), KEYS)


# --- the handler ---------------------------------------------------------------------------


class Bench:
    def __init__(self, rig: Rig, **auth: Any) -> None:
        self.rig = rig
        self.now = NOW
        self.sent: list[Reply] = []
        self.events: list[Event] = []
        self.outputs = rig.open({"pump": relay(17), "heater": relay(18)})
        self.auth = CommandAuth(keys=KEYS, **auth)
        self.seen = SeenCommands(path=None)
        self.handler = self.new_handler()

    def new_handler(self) -> CommandHandler:
        return CommandHandler(
            topics=TOPICS,
            outputs=self.outputs,
            max_age=30.0,
            max_skew=5.0,
            send=self.sent.append,
            seen=self.seen,
            auth=self.auth,
            report=self.events.append,
            clock=lambda: self.now,
        )

    def reply(self, payload: bytes | str, output: str = "pump") -> dict[str, Any]:
        self.sent.clear()
        raw = payload.encode() if isinstance(payload, str) else payload
        self.handler.handle(IncomingMessage(TOPICS.output_set(output), raw, 1, False, None))
        assert [r.topic for r in self.sent] == [TOPICS.reply]
        body: dict[str, Any] = json.loads(self.sent[0].payload)
        return body

    def on(self, pin: int) -> bool:
        return bool(self.rig.pin(pin).state)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    rig = Rig(state_path=tmp_path / "outputs.json")
    yield Bench(rig)
    rig.close()


def signed(command: str, output: str = "pump", key: Key = HMAC_KEY, kid: str = "ops") -> bytes:
    return sign_command(TOPICS.output_set(output), command, key, kid)


def test_a_valid_signed_command_is_carried_out(bench: Bench) -> None:
    body = bench.reply(signed(inner("on", id="s-1")))
    assert (body["ok"], body["id"], body["state"]) == (True, "s-1", "on")
    assert bench.on(17)
    assert bench.reply(signed(inner("off"), key=ED_PRIVATE, kid="ctl"))["ok"] is True
    assert not bench.on(17)


def test_a_replay_is_refused_with_no_state_change_and_one_event(bench: Bench) -> None:
    envelope = signed(inner("toggle", id="t-1"))
    assert bench.reply(envelope)["ok"] is True
    for _ in range(3):
        body = bench.reply(envelope)
        assert (body["ok"], body["error"]) == (False, "replayed")
    assert bench.on(17)
    rejected = [e for e in bench.events if e.kind == "command_rejected"]
    assert len(rejected) == 1  # rate-limited: the next two were counted, not sent
    assert rejected[0].fields == {
        "output": "pump",
        "kid": "ops",
        "reason": "replayed",
        "suppressed": 0,
    }


def test_a_replay_with_a_new_id_is_still_a_replay(bench: Bench) -> None:
    assert bench.reply(signed(inner("on", nonce="nonce-0001", id=1)))["ok"] is True
    bench.reply(signed(inner("off", id=2)))
    assert bench.reply(signed(inner("on", nonce="nonce-0001", id=3)))["error"] == "replayed"
    assert not bench.on(17)


def test_the_nonce_is_remembered_across_a_restart(tmp_path: Path, bench: Bench) -> None:
    bench.seen = SeenCommands(path=tmp_path / "commands.seen")
    bench.seen.open(bench.now)
    bench.handler = bench.new_handler()
    envelope = signed(inner("on"))
    assert bench.reply(envelope)["ok"] is True
    bench.seen.close()
    bench.reply(signed(inner("off")))
    bench.seen = SeenCommands(path=tmp_path / "commands.seen")
    bench.seen.open(bench.now + 10)
    bench.handler = bench.new_handler()
    bench.now += 10
    assert bench.reply(envelope)["error"] == "replayed"
    assert not bench.on(17)
    bench.seen.close()


@pytest.mark.parametrize(
    "payload",
    [
        signed(inner("on"), output="heater"),  # signed for another output
        sign_command("edge/gh-2/output/pump/set", inner("on"), HMAC_KEY, "ops"),  # device
        signed(inner("on"), key=OTHER_KEY),  # a key the agent does not have under "ops"
        signed(inner("on"), kid="nobody"),
        b"on",  # unsigned, and signatures are required
        b'{"state": "on", "id": 4}',
        b'{"signed": "{\\"state\\": \\"on\\"}", "kid": "ops", "sig": ""}',
        b'{"signed": "not even json", "kid": "ops", "sig": "AAAA"}',  # verified first
    ],
)
def test_what_does_not_verify_is_unauthenticated(bench: Bench, payload: bytes) -> None:
    body = bench.reply(payload)
    assert (body["ok"], body["error"]) == (False, "unauthenticated")
    assert not bench.on(17)
    assert [e.fields["reason"] for e in bench.events] == ["unauthenticated"]


def test_a_stale_or_future_signed_command_is_refused(bench: Bench) -> None:
    assert bench.reply(signed(inner("on", ts=NOW - 31)))["error"] == "stale"
    assert bench.reply(signed(inner("on", ts=NOW + 6)))["error"] == "stale"
    assert not bench.on(17)
    assert [e.fields["reason"] for e in bench.events] == ["stale"]


@pytest.mark.parametrize(
    "command",
    [
        json.dumps({"state": "on", "ts": iso_ts(NOW)}),  # no nonce
        json.dumps({"state": "on", "nonce": "abcdefgh"}),  # no ts
        json.dumps({"state": "on", "ts": iso_ts(NOW), "nonce": "short"}),
        json.dumps({"state": "on", "ts": iso_ts(NOW), "nonce": "x" * 65}),
        "on",
    ],
)
def test_a_signed_command_needs_ts_and_a_nonce(bench: Bench, command: str) -> None:
    assert bench.reply(signed(command))["error"] == "bad_payload"
    assert not bench.on(17)


def test_an_output_may_opt_out_of_signatures(tmp_path: Path) -> None:
    rig = Rig(state_path=tmp_path / "outputs.json")
    try:
        bench = Bench(rig, outputs={"heater": False})
        assert bench.reply("on", output="heater")["ok"] is True
        assert bench.reply("on")["error"] == "unauthenticated"
        assert bench.reply(signed(inner("on")))["ok"] is True  # signed still works
        assert bench.on(17) and bench.on(18)
    finally:
        rig.close()


def test_signatures_may_be_required_per_output_only(tmp_path: Path) -> None:
    rig = Rig(state_path=tmp_path / "outputs.json")
    try:
        bench = Bench(rig, required=False, outputs={"pump": True})
        assert bench.reply("on", output="heater")["ok"] is True
        assert bench.reply("on")["error"] == "unauthenticated"
    finally:
        rig.close()


unsigned_payloads = st.one_of(
    st.sampled_from([b"on", b"ON", b"1", b"true", b'{"state": "on"}', b'{"state":"on","id":1}']),
    st.binary(max_size=80),
    st.builds(
        lambda s, k, g: json.dumps({"signed": s, "kid": k, "sig": g}).encode(),
        st.sampled_from([inner("on"), "on", "{}"]) | st.text(max_size=20),
        st.sampled_from(["ops", "ctl", "x"]),
        st.sampled_from(["", "AAAA", b64encode(b"\x00" * 32), b64encode(b"\x00" * 64)])
        | st.text(max_size=90),
    ),
)


def test_no_unsigned_or_forged_command_moves_an_output_that_requires_signatures(
    bench: Bench,
) -> None:
    @settings(
        max_examples=1000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=unsigned_payloads, output=st.sampled_from(["pump", "heater"]))
    def one(payload: bytes, output: str) -> None:
        body = bench.reply(payload, output=output)
        assert body["ok"] is False
        assert body["error"] in ("unauthenticated", "bad_payload", "retained_command")
        assert not bench.on(17) and not bench.on(18)

    one()
