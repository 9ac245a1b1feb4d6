"""Logging: journald with structured fields under systemd, plain stderr elsewhere.

Under systemd (``$JOURNAL_STREAM`` names the file stderr is, or ``$INVOCATION_ID`` is set
and stderr is not a terminal) records go to journald through :class:`JournalHandler`,
which speaks journald's native datagram protocol itself (no systemd-python, nothing to
compile), with the right ``PRIORITY`` (debug 7, info 6, warning 4, error 3, critical 2),
``SYSLOG_IDENTIFIER=edge-agent``, ``LOGGER=`` (the logger name) and
``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``. When journald cannot be reached the lines go to
stderr with a ``<N>`` priority prefix (which journald's stream reads as the priority), and
one line says so. Elsewhere: ``time LEVEL logger: message`` on stderr.

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
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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
#: The largest datagram sent to journald; longer values are cut to fit. Below the default
#: socket send buffer (net.core.wmem_default, 208 KiB), so a send never fails for size.
MAX_DATAGRAM = 48 * 1024
#: How long a send may wait for journald's queue, and how long after a failure records go
#: straight to stderr before journald is tried again.
SEND_TIMEOUT = 0.5
RETRY_AFTER = 30.0


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


def _priority(levelno: int) -> int:
    """The syslog priority of a logging level: debug 7, info 6, warning 4, error 3,
    critical 2."""
    for level, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4)):
        if levelno <= level:
            return priority
    return 3 if levelno <= logging.ERROR else 2


def encode_journal_fields(fields: Mapping[str, str], *, limit: int = MAX_DATAGRAM) -> bytes:
    """One datagram of journald's native protocol (``systemd.journal-fields(7)``,
    "Native Journal Protocol"): ``KEY=value\\n`` per field, or, for a value with a newline
    in it, ``KEY\\n``, its length as 64-bit little-endian, the value and ``\\n``.

    The longest values are cut (ending in ``[... N bytes cut]``) until the datagram fits in
    ``limit`` bytes: journald also takes larger entries through a sealed memfd, which this
    does not implement.
    """
    values = {key: value.encode("utf-8", "replace") for key, value in fields.items()}

    def size() -> int:
        return sum(len(k) + len(v) + (10 if b"\n" in v else 2) for k, v in values.items())

    excess = size() - limit
    while excess > 0:
        key = max(values, key=lambda k: len(values[k]))
        value = values[key]
        marker = b"[... %d bytes cut]" % (excess + 32)
        keep = max(len(value) - excess - len(marker) - 16, 0)
        if keep == 0 and len(value) <= len(marker):
            break  # nothing left to cut: only short values, too many of them
        values[key] = value[:keep].decode("utf-8", "ignore").encode() + marker
        excess = size() - limit
    out = bytearray()
    for key, value in values.items():
        name = key.encode("ascii")
        if b"\n" in value:
            out += name + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += name + b"=" + value + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Logs to journald over its native datagram protocol, with structured fields.

    ``MESSAGE`` is the formatted line, ``PRIORITY`` the syslog level,
    ``SYSLOG_IDENTIFIER=edge-agent``, ``LOGGER``, ``THREAD_NAME``, ``CODE_*``, the
    traceback as ``EXCEPTION_TEXT``, and every ``extra`` key that is a journal field name
    (:data:`_FIELD_NAME`). Needs no library: the protocol is a few lines
    (:func:`encode_journal_fields`).

    **Never dark.** When journald cannot be reached (no socket, refused, its queue full
    for :data:`SEND_TIMEOUT` s) the record is written to ``fallback`` (stderr) with a
    ``<N>`` priority prefix instead, and one line says so; the next
    :data:`RETRY_AFTER` s go straight to the fallback, then journald is tried again, and
    one line says when it is back.
    """

    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        fallback: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.socket_path = str(socket_path if socket_path is not None else JOURNAL_SOCKET)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.settimeout(SEND_TIMEOUT)
        self._fallback = logging.StreamHandler(fallback or sys.stderr)
        self._fallback.setFormatter(_PriorityPrefixFormatter("%(name)s: %(message)s"))
        self._clock = clock
        self._dark_until: float | None = None  # journald failed; stderr until then

    @property
    def dark(self) -> bool:
        """True while records go to the fallback because journald failed."""
        return self._dark_until is not None

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """The journal fields of a record."""
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName or "",
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        if record.exc_text:
            fields["EXCEPTION_TEXT"] = record.exc_text
        for key, value in vars(record).items():
            if _FIELD_NAME.fullmatch(key) and key not in _RESERVED and value is not None:
                fields[key] = str(value)
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            datagram = encode_journal_fields(self.fields(record))
        except Exception:
            self.handleError(record)
            return
        if self._dark_until is not None and self._clock() < self._dark_until:
            self._fallback.handle(record)
            return
        try:
            self._socket.sendto(datagram, self.socket_path)
        except OSError as e:
            if self._dark_until is None:
                self._say(
                    f"edge-agent: cannot log to journald at {self.socket_path} "
                    f"({e.strerror or e}): logging to stderr"
                )
            self._dark_until = self._clock() + RETRY_AFTER
            self._fallback.handle(record)
            return
        if self._dark_until is not None:
            self._dark_until = None
            self._say(f"edge-agent: journald at {self.socket_path} is back: logging there")

    def _say(self, text: str) -> None:
        notice = logging.LogRecord(
            "agent.runtime.logging_setup", logging.WARNING, __file__, 0, text, (), None
        )
        self._fallback.handle(notice)

    def close(self) -> None:
        self._socket.close()
        self._fallback.close()
        super().close()


class _PriorityPrefixFormatter(logging.Formatter):
    """``<N>logger: message``: journald's stdout stream reads ``<N>`` as the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _priority(record.levelno)
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
        handler = JournalHandler(fallback=out)
        handler.setFormatter(logging.Formatter("%(message)s"))
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
