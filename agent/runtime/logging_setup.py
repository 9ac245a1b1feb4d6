"""Logging: journald with structured fields under systemd, plain stderr elsewhere.

Under systemd (``$JOURNAL_STREAM`` names the file stderr is, or ``$INVOCATION_ID`` is set
and stderr is not a terminal) records go to journald through
``systemd.journal.JournalHandler`` with the right ``PRIORITY`` (debug 7, info 6,
warning 4, error 3, critical 2), ``SYSLOG_IDENTIFIER=edge-agent``, ``LOGGER=`` (the logger
name) and ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``. Without systemd-python the lines go
to stderr with a ``<N>`` priority prefix, which journald reads as the priority.
Elsewhere: ``time LEVEL logger: message`` on stderr.

**Structured fields.** A record's ``extra`` keys that are valid journal field names
(upper-case letters, digits and ``_``, starting with a letter, at most 64 characters)
become journal fields.
The agent uses these:

- ``SENSOR=<name>``, ``OUTPUT=<name>``, ``INPUT=<name>``: the sensor, output or input a
  message is about;
- ``EVENT=<kind>``: the ``<base>/event`` kind a message reports (``sensor_failed``,
  ``buffer_dropping`` ...).

::

    log.warning("sensor %s failed", name, extra={"SENSOR": name, "EVENT": "sensor_failed"})
    log.log(level, "%s", event.message, extra=event_fields(event.kind, event.fields))

Then ``journalctl -u edge-agent SENSOR=air`` or ``journalctl -u edge-agent
EVENT=sensor_failed -o json`` find them. On stderr the fields are not shown.

**Secrets.** Every handler has a :class:`RedactSecrets` filter: the configured MQTT
password (:func:`config_secrets`) is replaced by ``***`` wherever it would appear — the
message, its arguments, an exception's text, a structured field. Passwords shorter than
:data:`MIN_SECRET_LEN` are not redacted (replacing every occurrence of a 1-3 character
string would garble the log and give the password away by what it hides).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config.model import Config

SYSLOG_IDENTIFIER = "edge-agent"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"
MIN_SECRET_LEN = 4
#: Journal field names a record's ``extra`` may carry: journald drops any other
#: (``sd_journal_send(3)``; a leading ``_`` is for trusted fields, a digit is refused).
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: Fields the handler sets itself; an ``extra`` may not override them.
_RESERVED = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "LOGGER",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "THREAD_NAME",
        "EXCEPTION_TEXT",
    }
)
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def config_secrets(config: Config) -> list[str]:
    """The secrets in a loaded config that must never be logged (today: the MQTT
    password, also when it came from ``password_file``)."""
    return [config.mqtt.password] if config.mqtt.password else []


def event_fields(kind: str, fields: Mapping[str, Any]) -> dict[str, str]:
    """The journal fields for an event: ``EVENT=kind`` and ``SENSOR``/``OUTPUT``/``INPUT``
    from the event's ``sensor``/``output``/``input``, as a logging ``extra``."""
    extra = {"EVENT": kind}
    for key in ("sensor", "output", "input"):
        if fields.get(key) is not None:
            extra[key.upper()] = str(fields[key])
    return extra


def journal_stream_is_stderr(
    environ: Mapping[str, str] | None = None, stream: IO[str] | None = None
) -> bool:
    """True when ``$JOURNAL_STREAM`` (``DEV:INODE``, set by systemd for a service whose
    output goes to the journal) is the file behind ``stream`` (default stderr)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


def under_systemd(environ: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> bool:
    """True when this process is a systemd service whose log belongs in the journal."""
    env = os.environ if environ is None else environ
    if journal_stream_is_stderr(env, stream):
        return True
    if "JOURNAL_STREAM" in env or not env.get("INVOCATION_ID"):
        return False  # stderr was redirected on purpose, or no systemd at all
    s = stream or sys.stderr
    try:
        interactive = s.isatty()
    except (OSError, ValueError, AttributeError):
        interactive = False
    return not interactive and JOURNAL_SOCKET.exists()


class RedactSecrets(logging.Filter):
    """Replaces secrets with ``***`` in a record before any handler formats it.

    Secrets are only ever added (:meth:`add`): after a reload that changed the password,
    the old one is still redacted.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def add(self, secrets: Iterable[str]) -> None:
        """Redact these too (empty and too short ones are ignored)."""
        with self._lock:
            known = set(self._secrets)
            known.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)
            # The longest first, so a secret containing another is hidden whole.
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is logging's error to report, not ours
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # The text (redacted) stands in for the exception from here on; handlers and
            # formatters would otherwise format the live exception, password and all.
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if _FIELD_NAME.fullmatch(key) and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


def _journal_handler_class() -> type[logging.Handler] | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class StructuredJournalHandler(JournalHandler):  # type: ignore[misc]
        """JournalHandler that sends only valid journal fields from ``extra``.

        systemd-python 235's own ``emit`` passes the whole ``record.__dict__`` (journald
        drops the lower-case names, but ``EXCEPTION_INFO`` is the exception's repr);
        here ``MESSAGE`` is the formatted line, and the traceback is ``EXCEPTION_TEXT``.
        """

        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                fields: dict[str, Any] = {
                    key: value
                    for key, value in vars(record).items()
                    if _FIELD_NAME.fullmatch(key) and key not in _RESERVED and value is not None
                }
                if record.exc_text:
                    fields["EXCEPTION_TEXT"] = record.exc_text
                self.send(
                    message,
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    return StructuredJournalHandler


class _PriorityPrefixFormatter(logging.Formatter):
    """``<N>logger: message``: journald's stdout stream reads ``<N>`` as the priority."""

    _PRIORITIES = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4))

    def format(self, record: logging.LogRecord) -> str:
        priority = 3 if record.levelno <= logging.ERROR else 2
        for level, p in self._PRIORITIES:
            if record.levelno <= level:
                priority = p
                break
        text = super().format(record)
        # A multi-line message (a traceback) keeps its priority on every line.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class _Installed:
    """What :func:`setup_logging` installed in this process."""

    handler: logging.Handler | None = None
    redactor: RedactSecrets | None = None


def add_secrets(secrets: Iterable[str]) -> None:
    """Redact these from now on as well (after a reload: the new config's secrets)."""
    if _Installed.redactor is not None:
        _Installed.redactor.add(secrets)


def setup_logging(
    level: str = "info",
    *,
    secrets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Give the root logger our handler (replacing the one an earlier call installed)
    and level; returns the handler.

    Args:
        level: ``debug`` | ``info`` | ``warning`` | ``error``.
        secrets: never logged, see :class:`RedactSecrets` (:func:`config_secrets`).
        environ: for the systemd detection (default ``os.environ``).
        stream: the stream (default ``sys.stderr``) used, and checked against
            ``$JOURNAL_STREAM``.
    """
    out = stream or sys.stderr
    handler: logging.Handler
    if under_systemd(environ, out):
        journal = _journal_handler_class()
        if journal is not None:
            handler = journal()
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(out)
            handler.setFormatter(_PriorityPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    redactor = RedactSecrets(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    if _Installed.handler is not None:  # called again: replace our handler, not others
        root.removeHandler(_Installed.handler)
        _Installed.handler.close()
    root.addHandler(handler)
    _Installed.handler, _Installed.redactor = handler, redactor
    root.setLevel(getattr(logging, level.upper()))
    return handler
