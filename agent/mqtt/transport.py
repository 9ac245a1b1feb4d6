"""The one module that owns the paho client (STYLE 2).

One thread does all the I/O: paho runs on the agent's asyncio loop through its
external-loop API. The loop watches paho's socket (``loop.add_reader``; ``add_writer``
only while the kernel's send buffer is full) and calls ``loop_read``/``loop_write``
itself; a timer calls ``loop_misc`` and the link watchdog when one of their deadlines is
due, and at no other time. A publish is written at the end of the loop turn that made it,
together with everything else that turn published (the readings of sensors due at once,
a replay batch) in one corked write (``TCP_CORK``): per TCP segment the kernel's work and
the broker's wake-up cost more than paho's packet code. A command arrives in the same
loop callback that read it from the socket. paho's callbacks never act: they record an
event and return, and the events are handed to the agent right after paho's read or
write call has returned; what that handling publishes (a command's state) is written as
soon as it is done, in the same callback. A received
message is acknowledged (PUBACK) after the agent has taken it, so a command's state and
reply go out ahead of its acknowledgement. No thread hop, no self-pipe, no lock.

Only the TCP connect and the TLS handshake (and the DNS lookup) block, so each connection
attempt runs paho's ``connect()`` in a short-lived thread of its own (:func:`_in_thread`),
which ends as soon as the socket is connected and the CONNECT queued; then the loop takes
the socket over. paho's ``connect()`` is the only public way to have paho make its socket;
the thread costs a few hundred microseconds per attempt, and nothing while connected.
Reconnects follow our backoff: exponential, with full jitter, bounded by
``reconnect.max_delay`` - a fleet must not reconnect in lock-step after a broker restart.

Every connection attempt gets a fresh paho ``Client``: paho keeps unacknowledged QoS>0
messages in memory and resends them after a reconnect, but the agent's outbox
(``agent.pipeline.outbox``) already takes everything unacknowledged at a disconnect into
its durable store and replays it from there. Were paho to resend too, every outage would
duplicate its in-flight window; a fresh client carries nothing over. The broker session
(``clean_start=False``) is kept, and so is the packet id counter (see ``_make_client``).
:meth:`Transport.publish` likewise refuses while disconnected instead of letting paho
queue in memory.

A dead link that still looks open (a blackhole: a Wi-Fi gone quiet, a NAT that forgot us)
is noticed within 1.5 x keepalive by the link watchdog (see :meth:`Transport._watch_link`);
paho alone would take up to 2 x keepalive. Connection errors are logged once, as a
sentence naming the setting to check, not once per retry.

Where later protocol work belongs: a DISCONNECT from the broker arrives in
:meth:`Transport._on_disconnect` (``flags.is_disconnect_packet_from_server``, its reason
code: 0x8E "Session taken over" is another client with our id); the broker's CONNACK
properties (MQTT 5 ``MaximumPacketSize``, ``ReceiveMaximum``) in
:meth:`Transport._on_connect`, and every outgoing message passes :meth:`Transport.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.model import MQTTConfig, TLSConfig
from agent.mqtt.takeover import Takeover, TakeoverDetector, takeover_message

if TYPE_CHECKING:
    import ctypes

log = logging.getLogger(__name__)

#: Without a packet from the broker for this many keepalives, the watchdog sends a PINGREQ,
#: which a live broker answers at once.
PING_AFTER_KEEPALIVES = 0.5
#: Without a packet from the broker for this many keepalives, the connection is given up.
#: (The broker, for its part, gives us up after 1.5 x keepalive of silence: MQTT 3.1.2.10.)
DEAD_AFTER_KEEPALIVES = 1.5
#: The largest packet the agent takes from the broker (MQTT 5: announced in CONNECT as
#: Maximum Packet Size, so the broker never sends more; 3.1.1: a message above it is cut
#: to the command size limit before it goes further). Commands are at most 4 KiB; a
#: 256 MiB publish would otherwise cost a few hundred MB of RSS.
MAX_PACKET_BYTES = 256 * 1024

# CONNACK refusals (MQTT 5 reason codes; paho maps MQTT 3.1.1 return codes onto them) as
# sentences that say what to check.
_REFUSALS = {
    0x84: "the broker does not support MQTT {protocol} (check mqtt.protocol)",
    0x85: "the broker rejected the client id {client_id!r} (check mqtt.client_id)",
    0x86: "bad user name or password (check mqtt.username and mqtt.password/password_file)",
    0x87: (
        "not authorised: the broker refused these credentials or this client"
        " (check mqtt.username, mqtt.password/password_file and the broker's ACL)"
    ),
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "this client is banned by the broker",
    0x8C: "the broker wants another authentication method",
    0x97: "the broker's quota for this client is exceeded",
    0x9C: "the broker asks to use another server",
    0x9D: "the broker has moved to another server",
    0x9F: "the broker's connection rate limit is exceeded",
}


@dataclass(frozen=True)
class Will:
    """The Last Will: what the broker publishes for us when we vanish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class IncomingMessage:
    """A message received on a subscription, copied out of paho's object."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None


class TransportEvents:
    """What the transport tells the agent, always on the agent's asyncio loop.

    Subclasses *may* override any of these; the defaults do nothing.
    """

    def connected(self, session_present: bool) -> None:
        """A CONNACK accepted us."""

    def disconnected(self, reason: str) -> None:
        """The connection is gone; the transport is already reconnecting."""

    def published(self, mid: int, ok: bool) -> None:
        """The broker acknowledged message ``mid`` (PUBACK/PUBCOMP; at once for QoS 0)."""

    def message(self, message: IncomingMessage) -> None:
        """A message arrived on a subscription."""

    def taken_over(self, takeover: Takeover, message: str) -> None:
        """Another client took our session over (see :mod:`agent.mqtt.takeover`); the
        transport waits ``takeover.backoff_s`` before it connects again."""


def refusal_message(reason_code: ReasonCode, *, protocol: str, client_id: str) -> str:
    """A sentence for a CONNACK that refused the connection."""
    template = _REFUSALS.get(reason_code.value)
    if template is None:
        return f"the broker refused the connection: {reason_code}"
    sentence = template.format(protocol=protocol, client_id=client_id)
    return f"the broker refused the connection: {sentence} [{reason_code}]"


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS settings as an SSL context: certificate and hostname checked (unless
    ``insecure``), a client certificate when one is configured."""
    context = ssl.create_default_context(cafile=tls.ca_certs)
    if tls.certfile is not None:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    if tls.insecure:
        context.check_hostname = False
    return context


def backoff_delay(attempt: int, *, min_delay: float, max_delay: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_delay, min_delay * 2**attempt)], at least 50 ms."""
    cap = min(max_delay, min_delay * (2 ** min(attempt, 30)))
    return max(0.05, rng.uniform(0, cap))


_T = TypeVar("_T")

#: Least time between two timer wake-ups of the watchdog (a deadline just passed).
_MIN_TICK_S = 0.05


def _in_thread(
    loop: asyncio.AbstractEventLoop, work: Callable[[], _T], *, abandoned: Callable[[], None]
) -> asyncio.Future[_T]:
    """Run ``work`` in a thread of its own; its result (or error) on ``loop``.

    A thread per call rather than an executor: it exists only while ``work`` blocks (one
    connect), so an agent that is connected has no idle thread at all. If the future was
    cancelled by the time ``work`` returns, ``abandoned`` runs on the loop instead.
    """
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.cancelled():
            abandoned()
            return
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as e:  # handed to the awaiting coroutine
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="mqtt-connect", daemon=True).start()
    return future


class _PahoErrors(logging.Logger):
    """paho's logger: keeps the first error of a connection attempt, formats nothing else.

    paho says why a socket failed (a TLS alert, a reset) only in its log. Its ``on_log``
    callback would format every log line (each packet sent and received, payloads
    included); a logger is asked only for its level first.
    """

    def __init__(self, transport: Transport) -> None:
        super().__init__("agent.mqtt.paho", logging.ERROR)
        self._transport = transport

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.ERROR and self._transport._socket_error is None:
            # The first error of an attempt is the cause, later ones are consequences.
            self._transport._socket_error = str(msg) % args if args else str(msg)


#: Linux's TCP_CORK (None elsewhere): see Transport._write_now.
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)
#: How much one read of the socket takes from the kernel at most.
_RECV_BYTES = 65536


class _Client(paho.Client):
    """paho's client with a cheaper path for the two packets every reading makes.

    paho reads a packet's fixed header byte by byte (three ``recv()`` calls for a 4-byte
    PUBACK, and a fourth that finds the socket empty), and decodes every PUBACK into a new
    ``ReasonCode`` and ``Properties`` (~35 us of CPU on this machine, more than the
    agent's whole pipeline stage for a reading); its QoS 0 completion makes the same two
    objects for ``on_publish``. Here:

    - :meth:`_sock_recv` serves paho's small reads from one ``recv()`` of up to 64 KiB per
      readable event (:meth:`allow_recv`); a read that finds the buffer empty after that
      raises ``BlockingIOError`` as an empty socket would, so paho stops. What is left in
      the buffer when ``loop_read`` returns (it handles a bounded number of packets per
      call) is still to be read, and the kernel will not say so again: the transport calls
      ``loop_read`` until :meth:`buffered` is 0.
    - A PUBACK/PUBCOMP that says "success" and carries no properties (remaining length 2,
      or a zero reason code without properties) is handled without decoding objects: the
      reason code passed on is a shared one.
    - ``on_publish`` is not used. paho's own bookkeeping of an acknowledged QoS>0 message
      (:meth:`_do_on_publish`) is followed by ``acked(mid, reason_code)``; a QoS 0 message
      is complete when paho has written it (``MQTTMessageInfo.is_published``), which the
      transport checks after each write.

    Everything else, including every other packet and every PUBACK that says more, is
    paho's own code. These are paho's private methods (stable through 2.x; pyproject pins
    ``<3``); the transport tests drive all of them against a real mosquitto.
    """

    def __init__(self, *args: Any, acked: Callable[[int, ReasonCode], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked = acked
        self._rbuf = b""
        self._rpos = 0
        self._may_recv = False

    def allow_recv(self) -> None:
        """The socket is readable: the next read that finds the buffer empty may recv()."""
        self._may_recv = True

    def queued_packets(self) -> int:
        """Packets paho has queued and not written yet."""
        return len(self._out_packet)

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        pos = self._rpos
        if pos >= len(buf):
            if not self._may_recv:
                raise BlockingIOError
            self._may_recv = False
            buf = super()._sock_recv(_RECV_BYTES)
            if not buf:
                return buf  # EOF: paho sees the connection lost
            self._rbuf = buf
            pos = 0
        end = pos + bufsize
        self._rpos = min(end, len(buf))
        return buf[pos:end]

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        # MQTT 5, 3.4.2.1: without a reason code it is 0x00 Success; after the reason code
        # a property length may follow (0: none). mosquitto answers 0x10 "No matching
        # subscribers" to a reading nobody subscribes to.
        if size == 2:
            reason = 0
        elif self._protocol == paho.MQTTv5 and (size == 3 or (size == 4 and packet[3] == 0)):
            reason = packet[2]
        else:
            return super()._handle_pubackcomp(cmd)
        packet_type = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
        reason_code = _shared_reason(packet_type, reason)
        if reason_code is None:  # not a reason code of this packet: paho says so
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason_code, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _do_on_publish(
        self, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> MQTTErrorCode:
        rc = super()._do_on_publish(mid, reason_code, properties)
        self._acked(mid, reason_code)
        return rc

    def _update_inflight(self) -> MQTTErrorCode:
        # paho walks every message in flight after each acknowledgement, looking for one
        # it queued behind its in-flight limit; none is queued while every message it
        # holds is in flight.
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def _easy_log(self, level: Any, fmt: str, *args: Any) -> None:
        if level != paho.MQTT_LOG_DEBUG:  # two per message, and read by nobody
            super()._easy_log(level, fmt, *args)


#: Shared by every acknowledgement without properties; nobody writes to it.
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
_REASONS: dict[tuple[int, int], ReasonCode | None] = {}


def _shared_reason(packet_type: int, value: int) -> ReasonCode | None:
    """One ``ReasonCode`` per (packet type, value), made once; None if not valid there."""
    key = (packet_type, value)
    try:
        return _REASONS[key]
    except KeyError:
        pass
    try:
        reason: ReasonCode | None = ReasonCode(packet_type, identifier=value)
    except KeyError:
        reason = None
    _REASONS[key] = reason
    return reason


class Transport:
    """A supervised MQTT connection, driven from the asyncio loop that created it.

    Every method runs on ``loop``; events are delivered on it.

    Args:
        settings: the ``mqtt`` section of the config.
        client_id: the MQTT client id.
        will: the Last Will.
        events: receives connection events on ``loop``.
        loop: the agent's asyncio loop.
    """

    def __init__(
        self,
        *,
        settings: MQTTConfig,
        client_id: str,
        will: Will,
        events: TransportEvents,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self._events = events
        self._loop = loop
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._stopping = False
        self._rng = random.Random()
        self._last_error: str | None = None
        self.v5 = settings.protocol == "5"
        self.subscriptions: list[tuple[str, int]] = []
        self.connects = 0
        self._client_id = client_id
        self._will = will
        self._watchdog = True
        self._paho_log = _PahoErrors(self)
        # The socket the loop watches (None between connections), and its state.
        self._sock: Any = None
        self._writer_on = False  # add_writer is active: the send buffer was full
        self._timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()  # the current connection's socket is closed
        # Events from paho's callbacks, handed to the agent after paho's call returns.
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._delivering = False
        self._delivery_scheduled = False
        self._flush_scheduled = False
        self._acked_in_read = False  # a PUBACK/PUBCOMP came in this read: quick ACK
        self._ack_waiters: dict[int, asyncio.Future[bool]] = {}
        # QoS 0 messages handed to paho and not yet written (their ``published`` is due
        # once they are), oldest first.
        self._unwritten: deque[tuple[int, paho.MQTTMessageInfo]] = deque()
        # What happened to the current connection attempt.
        self._got_connack = False
        self._last_in = time.monotonic()  # when the broker last sent us anything
        self._last_out = time.monotonic()  # when we last wrote to the socket
        self._ping_sent_at: float | None = None  # our PINGREQ, unanswered so far
        self._drop_reason: str | None = None
        self._socket_error: str | None = None
        self._closed_reason: str | None = None
        #: Session takeovers (two agents with one client id: a cloned SD card).
        self.takeover = TakeoverDetector(clock=time.monotonic, rng=self._rng.random)
        self._takeover_wait: float | None = None
        #: Messages above MAX_PACKET_BYTES cut short (MQTT 3.1.1).
        self.oversized = 0
        self.client = self._make_client(client_id, will)

    # -- set-up --------------------------------------------------------------------------
    def _make_client(self, client_id: str, will: Will) -> _Client:
        s = self.settings
        if self.v5:
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv5,
                acked=self._on_ack,
            )
        else:
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
                acked=self._on_ack,
            )
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            client.tls_set_context(tls_context(s.tls))
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(0)
        # A message is acknowledged once the agent has taken it (see _take_message), not
        # by paho as it reads it. The subscriptions are QoS 1 (the daemon's), so the
        # broker never sends QoS 2 and paho's one gap here - it leaves a PUBREL for a
        # message id it does not know unanswered under manual acks - cannot open.
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.enable_logger(self._paho_log)
        if self._watchdog and not callable(getattr(client, "_send_pingreq", None)):
            self._watchdog = False
            log.warning(
                "this paho-mqtt has no _send_pingreq: a dead link is noticed only after"
                " up to 2 x keepalive"
            )
        previous: _Client | None = getattr(self, "client", None)
        if previous is not None:
            # Continue the packet ids of the previous client rather than restarting at 1:
            # a broker session may still hold an unfinished QoS 2 exchange of the old
            # connection under a low id, and would take a new message with that id for
            # its duplicate. paho has no public setter for this counter.
            client._last_mid = previous._last_mid
        return client

    # -- paho callbacks: record, return -------------------------------------------------
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # On the connect thread, before the loop takes the socket over (see _attach).
        # Nagle + delayed ACKs stall a command round trip ~40 ms (ENV-NOTES).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """Nothing to do: its presence alone keeps paho from writing inside ``publish()``.

        Every call into paho that can queue a packet (subscribe, disconnect, ``loop_read``
        with its acknowledgements, ``loop_misc`` with its pings) is followed by
        :meth:`_write_now`, which writes at once and watches the socket for writability
        only when the kernel's buffer is full; a publish by :meth:`_write_soon`, at the
        end of the turn. Without this callback paho would write from
        inside ``publish()`` - also inside its own callbacks, where its ``loop_write``
        deadlocks on a lock it already holds.
        """

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho is about to close the socket (connection lost, or our DISCONNECT sent)."""
        if client is not self.client or sock is not self._sock:
            return  # a connect thread's socket that the loop never took over
        self._detach()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # The broker's CONNACK properties (MQTT 5: MaximumPacketSize, ReceiveMaximum,
        # assigned keepalive) are in ``properties``.
        self._got_connack = True
        if reason_code.is_failure:
            self._report(
                refusal_message(
                    reason_code, protocol=self.settings.protocol, client_id=self._client_id
                )
            )
            return
        self._last_error = None
        self.connects += 1
        self._connected = True
        self.takeover.connected()
        for topic, qos in self.subscriptions:
            self._subscribe(topic, qos)  # queued; written when loop_read returns
        self._pending.append((self._events.connected, (bool(flags.session_present),)))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # A DISCONNECT packet from the broker has flags.is_disconnect_packet_from_server
        # and its reason (MQTT 5; 0x8E "Session taken over": another client with our id).
        was_connected = self._connected
        self._connected = False
        self._closed_reason = str(reason_code)
        if not was_connected:
            return
        from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        takeover = self.takeover.disconnected(
            reason_code.value if from_server else None,
            by_us=self._stopping or self._drop_reason is not None,
            clean=self._socket_error is None,  # paho logs an error on a reset, not on EOF
        )
        if takeover is not None:
            self._takeover_wait = takeover.backoff_s
            reason = takeover_message(self._client_id, takeover)
            self._pending.append((self._events.taken_over, (takeover, reason)))
        elif self._drop_reason is not None:
            reason = self._drop_reason
        elif reason_code == ReasonCode(PacketTypes.DISCONNECT, "Keep alive timeout"):
            reason = "the broker did not answer a ping: the link is dead or blackholed"
        else:
            reason = str(reason_code)
        self._pending.append((self._events.disconnected, (reason,)))

    def _on_ack(self, mid: int, reason_code: ReasonCode) -> None:
        """The broker acknowledged QoS>0 message ``mid`` (from ``_Client``)."""
        ok = not reason_code.is_failure
        self._acked_in_read = True
        waiter = self._ack_waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)
        self._pending.append((self._events.published, (mid, ok)))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        payload = msg.payload
        if len(payload) > MAX_PACKET_BYTES:
            # Only under 3.1.1 (MQTT 5 brokers honour our Maximum Packet Size): keep no
            # more than makes it a refused command (bad_payload), and let paho's copy go.
            self.oversized += 1
            payload = payload[: 4096 + 1]
            if self.oversized == 1 or self.oversized % 100 == 0:
                log.warning(
                    "dropped a %d-byte message on %s: over %d bytes (MQTT 3.1.1 cannot tell"
                    " the broker our Maximum Packet Size; MQTT 5 can)",
                    len(msg.payload),
                    msg.topic[:200],
                    MAX_PACKET_BYTES,
                )
            # paho grew its read buffer to the packet's size; once it has let go of it,
            # give the freed heap back to the system instead of keeping it as RSS.
            self._loop.call_soon(_trim_heap)
        message = IncomingMessage(
            topic=msg.topic,
            payload=bytes(payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            properties=getattr(msg, "properties", None),
        )
        self._pending.append((self._take_message, (message, client, msg.mid, msg.qos)))

    def _take_message(
        self, message: IncomingMessage, client: paho.Client, mid: int, qos: int
    ) -> None:
        """Hand ``message`` to the agent, then acknowledge it. A command is judged in this
        call (or queued), so its state and reply are written before its PUBACK, which
        nobody waits on; and a crash in between leaves the message to the broker to
        deliver again (at least once, as QoS 1 means; commands with an ``id`` are
        recognised, not carried out twice)."""
        try:
            self._events.message(message)
        finally:
            if qos and client is self.client and self._sock is not None:
                client.ack(mid, qos)
                self._write_now()

    # -- the loop's side of the socket -------------------------------------------------
    def _attach(self, client: paho.Client) -> None:
        """Take the socket of a connect that just succeeded over: read, write, time."""
        sock = client.socket()
        if sock is None:  # paho closed it already
            self._closed.set()
            return
        self._sock = sock
        self._unwritten.clear()
        now = time.monotonic()
        self._last_in = self._last_out = now
        self._loop.add_reader(sock, self._on_readable)
        # The CONNECT goes out when the loop next polls, after anything already there is
        # read: a broker that refuses us just after the TLS handshake (TLS 1.3, no client
        # certificate) has sent its alert and closed, and a write to the closed socket
        # would make the kernel discard the alert on the reset that answers it.
        self._loop.add_writer(sock, self._on_writable)
        self._writer_on = True
        self._schedule_tick()

    def _detach(self) -> None:
        """Stop watching the socket (paho closes it, or :meth:`_abandon` does)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock)
            if self._writer_on:
                self._loop.remove_writer(sock)
        self._writer_on = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in self._ack_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        self._ack_waiters.clear()
        self._closed.set()

    def _on_readable(self) -> None:
        client = self.client
        sock = self._sock
        self._acked_in_read = False
        client.allow_recv()
        rc = client.loop_read()
        # loop_read handles a bounded number of packets per call: what it left in the
        # client's read buffer, or (TLS) in a record it has not read to the end, the
        # kernel will not announce again.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is sock:
            if not client.buffered():
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
                client.allow_recv()
            rc = client.loop_read()
        self._last_in = time.monotonic()
        if self._acked_in_read:
            self._quickack()
        self._after_paho()

    def _on_writable(self) -> None:
        self._write_now()
        self._after_paho()

    def _write_soon(self) -> None:
        """Write what paho has queued at the end of this loop turn (:meth:`_flush`), so
        that what one turn publishes (the readings of sensors due together, a replay
        batch) goes out in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._after_paho()

    def _write_now(self) -> None:
        """Write what paho has queued, now; watch for writability only if the kernel's
        send buffer is full.

        Several packets go out corked (``TCP_CORK``): paho sends each packet with a
        ``send()`` of its own, which over loopback or a NIC means a TCP segment each, and
        the kernel's work per segment (and the broker's wake-up) is most of what a
        message costs; corked, the kernel sends them in as few segments as fit.
        """
        client = self.client
        sock = self._sock
        if sock is None or not client.want_write():
            return
        before = len(self._pending)
        cork = _TCP_CORK is not None and client.queued_packets() > 1
        if cork:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        try:
            client.loop_write()
        finally:
            if cork and self._sock is sock:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
        self._last_out = time.monotonic()
        if self._unwritten:
            self._written(before)
        sock = self._sock
        if sock is None:
            return  # the write found the connection lost (or sent our DISCONNECT)
        if client.want_write():
            if not self._writer_on:
                self._loop.add_writer(sock, self._on_writable)
                self._writer_on = True
        elif self._writer_on:
            self._loop.remove_writer(sock)
            self._writer_on = False

    def _written(self, at: int) -> None:
        """QoS 0 messages that the last write completed: ``published`` for each, placed
        before whatever that write caused (a lost connection, say)."""
        unwritten = self._unwritten
        events: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        while unwritten and unwritten[0][1].is_published():
            events.append((self._events.published, (unwritten.popleft()[0], True)))
        if self._sock is None:
            unwritten.clear()  # never written: this client and its queue are done
        if at == len(self._pending):
            self._pending.extend(events)
        else:
            for i, event in enumerate(events):
                self._pending.insert(at + i, event)

    def _after_paho(self) -> None:
        """After a call into paho from the loop: write what it queued, hand events over."""
        self._write_now()
        self._deliver()

    def _deliver(self) -> None:
        """Hand the recorded events to the agent, in order; what they publish is written
        when they have all been handled (in one corked write), and the events that
        causes are handed over in the same turn."""
        self._delivery_scheduled = False
        if self._delivering:
            return  # the outer call goes on with what was added
        self._delivering = True
        pending = self._pending
        try:
            while pending:
                while pending:
                    handler, args = pending.popleft()
                    try:
                        handler(*args)
                    except Exception:
                        log.exception("handling the MQTT event %s failed", handler.__name__)
                self._write_now()
        finally:
            self._delivering = False

    def _schedule_delivery(self) -> None:
        """Events caused inside a caller's ``publish()`` (a QoS 0 message written) are
        handed over after that caller is done: it has not recorded the message id yet."""
        if self._pending and not self._delivering and not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._loop.call_soon(self._deliver)

    def _quickack(self) -> None:
        """Acknowledge the broker's last TCP segment (a PUBACK, usually) now, not after
        the kernel's delayed ACK (up to 40 ms). A broker with Nagle's algorithm on -
        mosquitto's default - holds its next packet to us, a command say, until that ACK
        comes: measured as a ~35 ms command round trip whenever commands follow our QoS 1
        publishes closely (tests/bench/RESULTS.md, B3). Once per read that brought an
        acknowledgement. Linux only; elsewhere nothing happens."""
        option = getattr(socket, "TCP_QUICKACK", None)
        sock = self._sock
        if option is not None and isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    # -- timers: paho's keepalive and the link watchdog, only when due ----------------
    def _schedule_tick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._next_tick(), self._on_tick)

    def _next_tick(self) -> float:
        """Seconds until the next thing is due, and no sooner.

        paho's ``loop_misc`` has two deadlines: a PINGREQ once we have sent nothing for a
        keepalive, and its check of the broker's silence a keepalive after the last bytes
        came. The watchdog has two: a ping after keepalive / 2 of silence, the drop after
        1.5 x keepalive. Traffic only moves them later, so a tick that comes early just
        computes the next one; an idle healthy link wakes once per ping (every half
        keepalive) and for the PINGRESP.
        """
        keepalive = self.settings.keepalive
        due = min(self._last_out, self._last_in) + keepalive
        if self._watchdog:
            pinged = self._ping_sent_at is not None and self._ping_sent_at >= self._last_in
            after = DEAD_AFTER_KEEPALIVES if pinged else PING_AFTER_KEEPALIVES
            due = min(due, self._last_in + after * keepalive)
        return max(due - time.monotonic(), _MIN_TICK_S)

    def _on_tick(self) -> None:
        self._timer = None
        if self._sock is None:
            return
        self.client.loop_misc()
        if self._sock is not None and self._watchdog:
            self._watch_link()
        self._after_paho()
        if self._sock is not None:
            self._schedule_tick()

    def _watch_link(self) -> None:
        """Ping a quiet broker early; give a silent one up after 1.5 x keepalive.

        paho pings only after a whole keepalive without traffic and then waits another
        keepalive for the answer: a blackholed link (open socket, nothing arrives) goes
        unnoticed for up to 2 x keepalive, while readings pile up unacknowledged. Here a
        PINGREQ goes out once nothing has come from the broker for keepalive / 2 (a live
        broker answers it at once, so a healthy idle link never looks silent), and the
        socket is shut once nothing has come for 1.5 x keepalive, which ends the
        connection through paho's normal lost-connection path (and the agent buffers).
        paho's own check, which drops a connection whose PINGREQ stayed unanswered for a
        keepalive, may get there first (1.5 x keepalive too, counted from our ping).

        What arrives is seen by the reader (:meth:`_on_readable`). Sending a PINGREQ has
        no public API: this calls paho's private ``_send_pingreq``, there throughout paho
        1.x and 2.x (pyproject pins ``<3``). ``_make_client`` turns the watchdog off with
        a warning if it vanishes, and the blackhole test in
        tests/e2e/test_store_and_forward.py fails.
        """
        keepalive = self.settings.keepalive
        now = time.monotonic()
        silent_s = now - self._last_in
        if silent_s >= DEAD_AFTER_KEEPALIVES * keepalive:
            if self._drop_reason is None:
                self._drop(
                    f"nothing from the broker for {silent_s:.1f} s (1.5 x keepalive):"
                    " the link is dead or blackholed"
                )
        elif (
            silent_s >= PING_AFTER_KEEPALIVES * keepalive
            and self._connected
            and (self._ping_sent_at is None or self._ping_sent_at < self._last_in)
        ):
            self._ping_sent_at = now
            self.client._send_pingreq()

    def _drop(self, reason: str) -> None:
        """Shut the socket: paho's next read (at once: the socket is readable) sees the
        connection lost."""
        self._drop_reason = reason
        sock = self._sock
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- connecting --------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; returns at once (the broker may be down)."""
        self._task = self._loop.create_task(self._run(), name="mqtt")

    def _blocking_connect(self, client: paho.Client) -> None:
        """paho's connect (DNS, TCP, TLS handshake, CONNECT queued): on the connect thread,
        bounded by paho's connect timeout (5 s)."""
        s = self.settings
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(s.session_expiry)
            props.MaximumPacketSize = MAX_PACKET_BYTES
            client.connect(
                s.host, s.effective_port, s.keepalive, clean_start=False, properties=props
            )
        else:
            client.connect(s.host, s.effective_port, s.keepalive)

    async def _connect_once(self) -> None:
        self._got_connack = False
        self._drop_reason = self._socket_error = self._closed_reason = None
        self._ping_sent_at = None
        self._closed = asyncio.Event()
        client = self.client = self._make_client(self._client_id, self._will)
        # Stopped while connecting: when the thread is done, its socket is closed.
        await _in_thread(
            self._loop,
            lambda: self._blocking_connect(client),
            abandoned=lambda: _close_socket(client),
        )
        self._attach(client)

    async def _run(self) -> None:
        attempt = 0
        s = self.settings
        try:
            while True:
                try:
                    await self._connect_once()
                except ssl.SSLCertVerificationError as e:
                    check = (
                        "mqtt.host" if "mismatch" in str(e.verify_message) else "mqtt.tls.ca_certs"
                    )
                    self._report(
                        f"TLS: the certificate of the broker at {s.host}:{s.effective_port} is"
                        f" not trusted ({e.verify_message}; check {check}); not connecting"
                        " without TLS"
                    )
                except ssl.SSLError as e:
                    self._report(self._tls_failed(str(e)))
                except (OSError, ValueError) as e:
                    self.takeover.attempt_failed()
                    self._report(f"cannot connect to {s.host}:{s.effective_port}: {e}")
                else:
                    await self._closed.wait()
                    if not self._got_connack:
                        self.takeover.attempt_failed()
                        self._report(self._closed_before_connack())
                    attempt = 0 if self.connects and self._last_error is None else attempt
                delay = backoff_delay(
                    attempt,
                    min_delay=s.reconnect.min_delay,
                    max_delay=s.reconnect.max_delay,
                    rng=self._rng,
                )
                attempt += 1
                if self._takeover_wait is not None:
                    # Minutes, not seconds: fighting another agent for the session only
                    # throws both off for ever (see agent.mqtt.takeover).
                    delay, self._takeover_wait = self._takeover_wait, None
                await asyncio.sleep(delay)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close a connection that did not end by itself (a stop that could not send its
        DISCONNECT); the agent hears of it like of any lost connection."""
        if self._sock is not None:
            self._detach()
            _close_socket(self.client)
        if self._connected:
            self._on_disconnect(
                self.client,
                None,
                paho.DisconnectFlags(False),
                ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                None,
            )
        self._deliver()

    def _client_certificate_hint(self, detail: str) -> str:
        tls = self.settings.tls
        if tls is None:
            return ""
        if "CERTIFICATE_REQUIRED" in detail.upper() or "certificate required" in detail:
            return "; the broker requires a client certificate (mqtt.tls.certfile/keyfile)"
        if tls.certfile is None:
            return "; the broker may require a client certificate (mqtt.tls.certfile/keyfile)"
        return "; the broker may not accept this client certificate (mqtt.tls.certfile)"

    def _closed_before_connack(self) -> str:
        """Why a connection ended before the broker said yes or no (often TLS)."""
        s = self.settings
        if self._drop_reason is not None or self._closed_reason == "Keep alive timeout":
            return (
                f"no answer from the broker at {s.host}:{s.effective_port} to our CONNECT"
                " within the keepalive: the link is dead or blackholed"
            )
        detail = self._socket_error or self._closed_reason or "no reason given"
        detail = detail.removeprefix("failed to receive on socket: ")
        if s.tls is not None:
            return self._tls_failed(detail)
        hint = "; if this is a TLS port, set mqtt.tls" if "reset" in detail.lower() else ""
        return (
            f"the broker at {s.host}:{s.effective_port} closed the connection before"
            f" accepting it ({detail}){hint}"
        )

    def _tls_failed(self, detail: str) -> str:
        """A TLS handshake (or the first read after it, TLS 1.3) that failed."""
        s = self.settings
        # "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required
        # (_ssl.c:2580)" -> "tlsv13 alert certificate required"
        found = re.search(r"\[SSL: \w+\] ([^(]+)", detail)
        prefix = f"TLS: the broker at {s.host}:{s.effective_port} ended the connection"
        if found is None and self._last_error is not None and self._last_error.startswith(prefix):
            # TLS 1.3 sends its alert after the handshake; a retry may see only the reset
            # that follows it. That is the same failure: keep the sharper diagnosis.
            return self._last_error
        reason = found.group(1).strip() if found else detail
        return (
            f"{prefix} during or"
            f" just after the handshake ({reason}){self._client_certificate_hint(detail)};"
            " not connecting without TLS"
        )

    def _report(self, error: str) -> None:
        """Log a connection error once, not once per retry."""
        if error != self._last_error:
            log.error("%s; retrying with backoff", error)
            self._last_error = error

    # -- used by the agent ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def alive(self) -> bool:
        """The transport runs (connected or reconnecting)."""
        return self._task is not None and not self._task.done()

    @property
    def client_id(self) -> str:
        """The MQTT client id this transport connects with."""
        return self._client_id

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        correlation_data: bytes | None = None,
        now: bool = False,
    ) -> int | None:
        """Send a message on the current connection: written at the end of this loop
        turn, or (called while an event is handled) once the events are handled; later
        only if the kernel's send buffer is full, or paho's in-flight window.

        ``correlation_data`` (MQTT 5 only) is echoed to a requester that asked for a reply
        on its response topic. ``now``: written at once, also while events are being
        handled, instead of with the rest of the pass (an output's state, which a
        command's sender waits on: not after the log line, the reply and the PUBACK).

        Returns:
            Its message id, which a later ``published(mid, ok)`` event acknowledges; or
            None when there is no connection (nothing was queued: the caller keeps it).
            A message sent on a connection that is lost before its acknowledgement is
            never resent by the transport: the next connection uses a fresh client.
        """
        if not self._connected:
            return None
        properties = None
        if correlation_data is not None and self.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._write_now()
            self._schedule_delivery()
            return None
        if qos == 0:
            self._unwritten.append((info.mid, info))
        if now:
            self._write_now()
        elif not self._delivering:  # else written once the events are handled
            self._write_soon()
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and after every reconnect."""
        self.subscriptions.append((topic, qos))
        if self.connected:
            self._subscribe(topic, qos)
            self._write_now()

    def _subscribe(self, topic: str, qos: int) -> None:
        if self.v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
        else:
            self.client.subscribe(topic, qos)

    async def stop(self, *, last: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``last`` (topic, payload; retained, QoS 1) if connected and wait for its
        acknowledgement, disconnect cleanly, and end the transport."""
        self._stopping = True
        if last is not None and self._connected:
            mid = self.publish(last[0], last[1], qos=1, retain=True)
            acked = False
            if mid is not None:
                waiter = self._ack_waiters[mid] = self._loop.create_future()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        acked = await waiter
            if not acked:
                log.warning("could not publish %s before stopping", last[0])
        if self._sock is not None:
            self.client.disconnect()
            self._after_paho()  # sends the DISCONNECT; paho then closes the socket
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._deliver()


def _trim_heap() -> None:
    """``malloc_trim(0)`` on glibc: return freed heap pages to the kernel."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, loaded when first needed: ctypes and ``find_library`` (which runs
    ``ldconfig -p``) cost every start ~10 ms for a call only a giant packet makes."""
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def _close_socket(client: paho.Client) -> None:
    """Close the socket of a client the loop does not (or no longer) watch."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
