"""Logging: journald detection, structured fields, priorities, secrets never logged."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cli
from agent.config.load import load_config
from agent.runtime import logging_setup
from agent.runtime.logging_setup import (
    JournalHandler,
    RedactSecrets,
    config_secrets,
    event_fields,
    setup_logging,
    under_systemd,
)

PASSWORD = "hunter2-s3cret"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging_setup._Installed.handler = None
    logging_setup._Installed.redactor = None


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[io.TextIOWrapper]:
    """A real file as stderr, so it has a device and an inode like systemd's stream."""
    with open(tmp_path / "stderr", "w+") as f:
        yield f


def journal_env(stream: io.TextIOWrapper) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}


def decode_journal(datagram: bytes) -> dict[str, str]:
    """journald's side of the native protocol: ``KEY=value\\n``, or ``KEY\\n`` + a 64-bit
    little-endian length + the value + ``\\n``; anything else is a protocol error."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", datagram[nl + 1 : nl + 9])
            value = datagram[nl + 9 : nl + 9 + size]
            assert len(value) == size and datagram[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        name = key.decode("ascii")
        assert name not in fields, f"{name} twice"
        fields[name] = value.decode()
    return fields


class Journald:
    """Stands in for journald: a datagram socket bound where journald's would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self._entries: list[dict[str, str]] = []

    @property
    def entries(self) -> list[dict[str, str]]:
        """Every entry received so far (kept across calls)."""
        while True:
            try:
                self._entries.append(decode_journal(self.sock.recv(1 << 20)))
            except BlockingIOError:
                return self._entries

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Journald]:
    j = Journald(tmp_path / "journal.socket")
    monkeypatch.setattr(logging_setup, "JOURNAL_SOCKET", j.path)
    yield j
    j.close()


def journal_logging(
    stream: io.TextIOWrapper, level: str = "debug", secrets: tuple[str, ...] = ()
) -> JournalHandler:
    handler = setup_logging(level, secrets=secrets, environ=journal_env(stream), stream=stream)
    assert isinstance(handler, JournalHandler)
    return handler


# -- detection ---------------------------------------------------------------------------
def test_journal_stream_matching_stderr_means_systemd(stream: io.TextIOWrapper) -> None:
    assert under_systemd(journal_env(stream), stream)


def test_journal_stream_of_another_file_means_redirected(
    stream: io.TextIOWrapper, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}
    assert not under_systemd(env, stream)  # e.g. `edge-agent run 2>file` in a unit


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "-1:2"])
def test_a_bad_journal_stream_is_not_systemd(stream: io.TextIOWrapper, value: str) -> None:
    assert not under_systemd({"JOURNAL_STREAM": value}, stream)


def test_invocation_id_without_journal_stream(
    stream: io.TextIOWrapper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # StandardError=null or a socket: systemd started us, journald is there
    env = {"INVOCATION_ID": "0" * 32}
    monkeypatch.setattr(logging_setup, "JOURNAL_SOCKET", tmp_path / "no-journald")
    assert not under_systemd(env, stream)
    socket_path = tmp_path / "journal.socket"
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(socket_path))
        monkeypatch.setattr(logging_setup, "JOURNAL_SOCKET", socket_path)
        assert under_systemd(env, stream)
    assert not under_systemd({}, stream)


def test_plain_stderr_elsewhere(stream: io.TextIOWrapper) -> None:
    handler = setup_logging("info", environ={}, stream=stream)
    assert isinstance(handler, logging.StreamHandler)
    logging.getLogger("agent.test").info("hello %s", "world")
    logging.getLogger("agent.test").debug("not shown")
    stream.seek(0)
    lines = stream.read().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO agent.test: hello world")


def test_setup_logging_twice_replaces_its_own_handler_only(stream: io.TextIOWrapper) -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first = setup_logging("info", environ={}, stream=stream)
    second = setup_logging("warning", environ={}, stream=stream)
    assert first not in root.handlers
    assert second in root.handlers and foreign in root.handlers
    assert root.level == logging.WARNING
    root.removeHandler(foreign)


# -- journald ----------------------------------------------------------------------------
def test_journal_priorities_and_fields(stream: io.TextIOWrapper, journald: Journald) -> None:
    journal_logging(stream)
    log = logging.getLogger("agent.sampling.scheduler")
    log.debug("d")
    log.info("i")
    log.warning("sensor %s failed", "air", extra={"SENSOR": "air", "EVENT": "sensor_failed"})
    log.error("e", extra={"OUTPUT": "pump", "lower_case": "dropped", "_TRUSTED": "no", "9X": "no"})
    log.critical("c")
    assert [e["PRIORITY"] for e in journald.entries] == ["7", "6", "4", "3", "2"]
    warning = journald.entries[2]
    assert warning["MESSAGE"] == "sensor air failed"
    assert warning["SENSOR"] == "air" and warning["EVENT"] == "sensor_failed"
    assert warning["SYSLOG_IDENTIFIER"] == "edge-agent"
    assert warning["LOGGER"] == "agent.sampling.scheduler"
    assert warning["CODE_FUNC"] == "test_journal_priorities_and_fields"
    error = journald.entries[3]
    assert error["OUTPUT"] == "pump"
    assert not {"lower_case", "LOWER_CASE", "_TRUSTED", "9X"} & set(error)
    # only journal field names go out: nothing of the LogRecord's own attributes
    for entry in journald.entries:
        assert all(key.isupper() or key == "MESSAGE" for key in entry), entry.keys()
        assert "EXCEPTION_INFO" not in entry and "CODE_ARGS" not in entry


def test_journal_exception_text(stream: io.TextIOWrapper, journald: Journald) -> None:
    journal_logging(stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent").exception("it broke")
    entry = journald.entries[0]
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("it broke\nTraceback")
    assert "ValueError: boom" in entry["EXCEPTION_TEXT"]


def test_event_fields() -> None:
    assert event_fields("sensor_failed", {"sensor": "air", "error": "EIO"}) == {
        "EVENT": "sensor_failed",
        "SENSOR": "air",
    }
    assert event_fields("failsafe", {"output": "pump", "input": None}) == {
        "EVENT": "failsafe",
        "OUTPUT": "pump",
    }


def test_a_multi_line_message_uses_the_binary_safe_form(
    stream: io.TextIOWrapper, journald: Journald
) -> None:
    journal_logging(stream)
    logging.getLogger("agent.x").info("two\nlines=yes", extra={"SENSOR": "a\nb"})
    (entry,) = journald.entries
    assert entry["MESSAGE"] == "two\nlines=yes"
    assert entry["SENSOR"] == "a\nb"
    stream.seek(0)
    assert stream.read() == ""  # all of it went to journald


def test_a_huge_message_is_cut_to_fit_one_datagram(
    stream: io.TextIOWrapper, journald: Journald
) -> None:
    journal_logging(stream)
    logging.getLogger("agent.x").warning("x" * 200_000 + "\nend", extra={"SENSOR": "air"})
    (entry,) = journald.entries
    assert entry["MESSAGE"].startswith("xxxx") and entry["MESSAGE"].endswith("bytes cut]")
    assert len(entry["MESSAGE"]) < logging_setup.MAX_DATAGRAM
    assert entry["SENSOR"] == "air" and entry["PRIORITY"] == "4"
    datagram = logging_setup.encode_journal_fields({"MESSAGE": "y" * 100_000, "A": "b"})
    assert len(datagram) <= logging_setup.MAX_DATAGRAM


def test_without_journald_it_logs_to_stderr_and_says_so_once(
    stream: io.TextIOWrapper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $JOURNAL_STREAM is right, but nothing listens on the journal socket (issue 20: such a
    # run used to log nothing at all).
    monkeypatch.setattr(logging_setup, "JOURNAL_SOCKET", tmp_path / "no-journald")
    journal_logging(stream, level="info")
    log = logging.getLogger("agent.x")
    log.info("up")
    log.warning("two\nlines")
    log.error("bad")
    stream.seek(0)
    lines = stream.read().splitlines()
    assert lines[0].startswith("<4>agent.runtime.logging_setup: edge-agent: cannot log to ")
    assert f"journald at {tmp_path / 'no-journald'}" in lines[0]
    assert lines[0].endswith(": logging to stderr")
    assert lines[1:] == ["<6>agent.x: up", "<4>agent.x: two", "<4>lines", "<3>agent.x: bad"]


def test_journald_going_away_and_coming_back(stream: io.TextIOWrapper, tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "journal.socket"
    handler = JournalHandler(path, fallback=stream, clock=lambda: now[0])
    log = logging.getLogger("agent.flaky")
    log.addHandler(handler)
    log.propagate = False
    try:
        j = Journald(path)
        log.warning("one")
        j.close()  # journald stops
        log.warning("two")
        log.warning("three")
        assert handler.dark
        j = Journald(path)  # back, but not tried again until RETRY_AFTER has passed
        log.warning("four")
        now[0] += logging_setup.RETRY_AFTER
        log.warning("five")
        assert not handler.dark
        assert [e["MESSAGE"] for e in j.entries] == ["five"]
        j.close()
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    stream.seek(0)
    lines = stream.read().splitlines()
    assert len(lines) == 5, lines
    assert "cannot log to journald" in lines[0]
    assert lines[1:4] == ["<4>agent.flaky: two", "<4>agent.flaky: three", "<4>agent.flaky: four"]
    assert lines[4].endswith(f"journald at {path} is back: logging there")


# -- secrets -----------------------------------------------------------------------------
def test_the_password_is_redacted_everywhere(stream: io.TextIOWrapper, journald: Journald) -> None:
    journal_logging(stream, secrets=(PASSWORD,))
    log = logging.getLogger("agent.mqtt")
    log.info("connecting with password %s", PASSWORD)
    log.info(f"inline {PASSWORD}!")
    log.warning("field", extra={"SENSOR": f"x{PASSWORD}"})
    try:
        raise ConnectionError(f"auth failed for pass={PASSWORD}")
    except ConnectionError:
        log.exception("connect failed")
    log.info("args %r", {"password": PASSWORD})
    text = repr(journald.entries)
    assert PASSWORD not in text
    assert journald.entries[0]["MESSAGE"] == "connecting with password ***"
    assert journald.entries[1]["MESSAGE"] == "inline ***!"
    assert journald.entries[2]["SENSOR"] == "x***"
    assert "auth failed for pass=***" in journald.entries[3]["EXCEPTION_TEXT"]
    assert journald.entries[4]["MESSAGE"] == "args {'password': '***'}"


def test_the_password_is_redacted_on_stderr(stream: io.TextIOWrapper) -> None:
    setup_logging("info", secrets=[PASSWORD], environ={}, stream=stream)
    log = logging.getLogger("agent")
    try:
        raise RuntimeError(PASSWORD)
    except RuntimeError:
        log.exception("oops %s", PASSWORD)
    log.info("%s and %s", "x", PASSWORD, stack_info=True)
    stream.seek(0)
    text = stream.read()
    assert PASSWORD not in text
    assert "oops ***" in text and "RuntimeError: ***" in text and "x and ***" in text


def test_secrets_can_be_added_after_a_reload(stream: io.TextIOWrapper) -> None:
    setup_logging("info", secrets=["old-password"], environ={}, stream=stream)
    logging_setup.add_secrets(["new-password"])
    logging.getLogger("agent").info("old-password new-password")
    stream.seek(0)
    assert stream.read().rstrip().endswith("agent: *** ***")


def test_redaction_rules() -> None:
    r = RedactSecrets(["", "abc", "abcd"])
    assert r.secrets == ("abcd",)  # too short to redact without garbling the log
    r.add(["abcdef"])
    assert r.redact("xabcdefx abcd") == "x***x ***"  # the longer secret hidden whole
    record = logging.LogRecord("a", logging.INFO, __file__, 1, "%s %d", ("abcd", 5), None)
    assert r.filter(record)
    assert record.getMessage() == "*** 5"
    untouched = logging.LogRecord("a", logging.INFO, __file__, 1, "%s", ("fine",), None)
    r.filter(untouched)
    assert untouched.msg == "%s" and untouched.args == ("fine",)


def test_config_secrets(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text(PASSWORD + "\n")
    (tmp_path / "mqtt.pass").chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  password_file: mqtt.pass\nsensors: {}\n")
    assert config_secrets(load_config(path).config) == [PASSWORD]
    path.write_text("mqtt: {}\nsensors: {}\n")
    assert config_secrets(load_config(path).config) == []


def test_cli_setup_logging_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(
        logging_setup,
        "setup_logging",
        lambda level, *, secrets=(): calls.append((level, list(secrets))),
    )
    cli.setup_logging("debug", secrets=[PASSWORD])
    assert calls == [("debug", [PASSWORD])]
