"""The one module that owns the paho client (STYLE 2).

A network thread of our own drives paho (``client.loop()``) so that reconnects follow
our backoff: exponential, with full jitter, bounded by ``reconnect.max_delay`` - a fleet
must not reconnect in lock-step after a broker restart. Paho's callbacks never act: they
hand events to the asyncio loop with ``call_soon_threadsafe`` and return (STYLE 3).

Every connection attempt gets a fresh paho ``Client``: paho keeps unacknowledged QoS>0
messages in memory and resends them after a reconnect, but the agent's outbox
(``agent.pipeline.outbox``) already takes everything unacknowledged at a disconnect into
its durable store and replays it from there. Were paho to resend too, every outage would
duplicate its in-flight window; a fresh client carries nothing over. The broker session
(``clean_start=False``) is kept, and so is the packet id counter (see ``_make_client``).
:meth:`Transport.publish` likewise refuses while disconnected instead of letting paho
queue in memory.

A dead link that still looks open (a blackhole: a Wi-Fi gone quiet, a NAT that forgot us)
is noticed within 1.5 x keepalive by a watchdog on the network thread (see
:meth:`Transport._watch_link`); paho alone would take up to 2 x keepalive. Connection
errors are logged once, as a sentence naming the setting to check, not once per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.model import MQTTConfig, TLSConfig

log = logging.getLogger(__name__)

#: Without a packet from the broker for this many keepalives, the watchdog sends a PINGREQ,
#: which a live broker answers at once.
PING_AFTER_KEEPALIVES = 0.5
#: Without a packet from the broker for this many keepalives, the connection is given up.
#: (The broker, for its part, gives us up after 1.5 x keepalive of silence: MQTT 3.1.2.10.)
DEAD_AFTER_KEEPALIVES = 1.5

# paho logs every packet it receives as "Received <TYPE> ..." (see Transport._on_log).
_RECEIVED = "Received "

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


def _quickack(client: paho.Client) -> None:
    """Acknowledge the broker's last TCP segment (a PUBACK, usually) now, not after the
    kernel's delayed ACK (up to 40 ms). A broker with Nagle's algorithm on - mosquitto's
    default - holds its next packet to us, a command say, until that ACK comes: measured
    as a ~35 ms command round trip whenever commands follow our QoS 1 publishes closely
    (tests/bench/RESULTS.md, B3). Linux only; elsewhere nothing happens."""
    option = getattr(socket, "TCP_QUICKACK", None)
    sock = client.socket()
    if option is not None and isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)


class Transport:
    """A supervised MQTT connection.

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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._rng = random.Random()
        self._last_error: str | None = None
        self.v5 = settings.protocol == "5"
        self.subscriptions: list[tuple[str, int]] = []
        self.connects = 0
        self._client_id = client_id
        self._will = will
        # Held while publishing and while swapping in a fresh client, so that a publish
        # never lands in a client that is not (or no longer) the connected one.
        self._publish_lock = threading.Lock()
        # The shortest the network thread sleeps, and its tick without the watchdog.
        self._tick_s = min(1.0, settings.keepalive / 10)
        self._watchdog = True
        # What happened to the current connection attempt (network thread only).
        self._got_connack = False
        self._last_in = time.monotonic()  # when the broker last sent us anything
        self._ping_sent_at: float | None = None  # our PINGREQ, unanswered so far
        self._drop_reason: str | None = None
        self._socket_error: str | None = None
        self._closed_reason: str | None = None
        self.client = self._make_client(client_id, will)

    # -- set-up --------------------------------------------------------------------------
    def _make_client(self, client_id: str, will: Will) -> paho.Client:
        s = self.settings
        if self.v5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
            )
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            client.tls_set_context(tls_context(s.tls))
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_register_write = self._on_socket_register_write
        client.on_log = self._on_log
        if self._watchdog and not callable(getattr(client, "_send_pingreq", None)):
            self._watchdog = False
            log.warning(
                "this paho-mqtt has no _send_pingreq: a dead link is noticed only after"
                " up to 2 x keepalive"
            )
        previous: paho.Client | None = getattr(self, "client", None)
        if previous is not None:
            # Continue the packet ids of the previous client rather than restarting at 1:
            # a broker session may still hold an unfinished QoS 2 exchange of the old
            # connection under a low id, and would take a new message with that id for
            # its duplicate. paho has no public setter for this counter.
            client._last_mid = previous._last_mid
        return client

    # -- paho callbacks: copy, hand over, return ----------------------------------------
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Nagle + delayed ACKs stall a command round trip ~40 ms (ENV-NOTES).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """Nothing to do: its presence alone keeps paho from writing on the caller's thread.

        Without it, paho's ``publish()`` (called on the asyncio thread) writes to the socket
        itself while the network thread may be writing too: two threads then interleave
        packets (out of order) and, on a TLS socket, corrupt the stream (the broker drops
        the connection with "Protocol error"). With it, ``publish()`` only queues and wakes
        ``loop()``, and every write happens on the network thread.
        """

    def _on_log(self, client: paho.Client, userdata: Any, level: int, buf: str) -> None:
        if buf.startswith(_RECEIVED):
            # A packet from the broker, PINGRESP included: paho's only report of a
            # PINGRESP, and more truthful than its private "last received" time, which
            # its own keepalive check resets without anything having arrived.
            self._last_in = time.monotonic()
        elif level == paho.MQTT_LOG_ERR and self._socket_error is None:
            # paho says why a socket failed (a TLS alert, a reset) only in its log; the
            # first error of an attempt is the cause, later ones are consequences.
            self._socket_error = buf

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
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
        self._connected.set()
        for topic, qos in self.subscriptions:
            self._subscribe(topic, qos)
        self._loop.call_soon_threadsafe(self._events.connected, bool(flags.session_present))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._closed_reason = str(reason_code)
        if not was_connected:
            return
        if self._drop_reason is not None:
            reason = self._drop_reason
        elif reason_code == ReasonCode(PacketTypes.DISCONNECT, "Keep alive timeout"):
            reason = "the broker did not answer a ping: the link is dead or blackholed"
        else:
            reason = str(reason_code)
        self._loop.call_soon_threadsafe(self._events.disconnected, reason)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        _quickack(client)
        self._loop.call_soon_threadsafe(self._events.published, mid, not reason_code.is_failure)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        message = IncomingMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            properties=getattr(msg, "properties", None),
        )
        self._loop.call_soon_threadsafe(self._events.message, message)

    # -- the network thread -----------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; returns at once (the broker may be down)."""
        self._thread = threading.Thread(target=self._run, name="mqtt-network", daemon=True)
        self._thread.start()

    def _connect_once(self) -> None:
        s = self.settings
        self._got_connack = False
        self._drop_reason = self._socket_error = self._closed_reason = None
        self._last_in, self._ping_sent_at = time.monotonic(), None
        with self._publish_lock:
            self.client = self._make_client(self._client_id, self._will)
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(s.session_expiry)
            self.client.connect(
                s.host, s.effective_port, s.keepalive, clean_start=False, properties=props
            )
        else:
            self.client.connect(s.host, s.effective_port, s.keepalive)

    def _run(self) -> None:
        attempt = 0
        s = self.settings
        while not self._stop.is_set():
            try:
                self._connect_once()
            except ssl.SSLCertVerificationError as e:
                check = "mqtt.host" if "mismatch" in str(e.verify_message) else "mqtt.tls.ca_certs"
                self._report(
                    f"TLS: the certificate of the broker at {s.host}:{s.effective_port} is not"
                    f" trusted ({e.verify_message}; check {check}); not connecting without TLS"
                )
            except ssl.SSLError as e:
                self._report(self._tls_failed(str(e)))
            except (OSError, ValueError) as e:
                self._report(f"cannot connect to {s.host}:{s.effective_port}: {e}")
            else:
                self._serve()
                if self._stop.is_set():
                    break
                if not self._got_connack:
                    self._report(self._closed_before_connack())
                attempt = 0 if self.connects and self._last_error is None else attempt
            delay = backoff_delay(
                attempt,
                min_delay=s.reconnect.min_delay,
                max_delay=s.reconnect.max_delay,
                rng=self._rng,
            )
            attempt += 1
            self._stop.wait(delay)

    def _serve(self) -> None:
        """Drive paho until the connection ends (or we stop)."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = self.client.loop(timeout=self._next_tick())
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._watchdog:
                self._watch_link()
        if self._stop.is_set():
            self.client.loop_write()  # the DISCONNECT that stop() queued, if still unsent
        if self._connected.is_set():
            self._on_disconnect(
                self.client,
                None,
                paho.DisconnectFlags(False),
                ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                None,
            )

    def _next_tick(self) -> float:
        """How long ``loop()`` may wait for the socket: until the watchdog's next
        deadline (a ping after keepalive/2 of silence, the drop after 1.5 x keepalive),
        and at least every keepalive/4 so that paho's own keepalive ping is never late by
        more than that. A publish or a stop wakes ``loop()`` earlier through paho's
        socket pair. An idle link so wakes a few times per keepalive, not every second."""
        if not self._watchdog:
            return self._tick_s
        keepalive = self.settings.keepalive
        silent_s = time.monotonic() - self._last_in
        pinged = self._ping_sent_at is not None and self._ping_sent_at >= self._last_in
        deadline = (DEAD_AFTER_KEEPALIVES if pinged else PING_AFTER_KEEPALIVES) * keepalive
        return min(max(deadline - silent_s, 0.05), max(keepalive / 4, self._tick_s))

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

        What arrives is seen through paho's log callback (:meth:`_on_log`). Sending a
        PINGREQ has no public API: this calls paho's private ``_send_pingreq``, there
        throughout paho 1.x and 2.x (pyproject pins ``<3``), on this thread, the one whose
        ``loop()`` calls it in paho. ``_make_client`` turns the watchdog off with a
        warning if it vanishes, and the blackhole test in
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
            and self._connected.is_set()
            and (self._ping_sent_at is None or self._ping_sent_at < self._last_in)
        ):
            self._ping_sent_at = now
            self.client._send_pingreq()

    def _drop(self, reason: str) -> None:
        """Shut the socket: paho's next read sees the connection lost."""
        self._drop_reason = reason
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

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
        reason = found.group(1).strip() if found else detail
        return (
            f"TLS: the broker at {s.host}:{s.effective_port} ended the connection during or"
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
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        """The network thread runs (connected or reconnecting)."""
        return self._thread is not None and self._thread.is_alive()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        correlation_data: bytes | None = None,
    ) -> int | None:
        """Send a message on the current connection.

        ``correlation_data`` (MQTT 5 only) is echoed to a requester that asked for a reply
        on its response topic.

        Returns:
            Its message id, which a later ``published(mid, ok)`` event acknowledges; or
            None when there is no connection (nothing was queued: the caller keeps it).
            A message sent on a connection that is lost before its acknowledgement is
            never resent by the transport: the next connection uses a fresh client.
        """
        with self._publish_lock:
            if not self._connected.is_set():
                return None
            properties = None
            if correlation_data is not None and self.v5:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.CorrelationData = correlation_data
            info = self.client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties
            )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and after every reconnect."""
        self.subscriptions.append((topic, qos))
        if self.connected:
            self._subscribe(topic, qos)

    def _subscribe(self, topic: str, qos: int) -> None:
        if self.v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
        else:
            self.client.subscribe(topic, qos)

    def stop(self, *, last: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``last`` (topic, payload; retained, QoS 1) if connected, disconnect
        cleanly, and end the network thread."""
        if last is not None and self.connected:
            info = self.client.publish(last[0], last[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except RuntimeError:
                log.warning("could not publish %s before stopping", last[0])
        self.client.disconnect()  # queued; the network thread sends it
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
