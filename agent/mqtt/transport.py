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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.model import MQTTConfig

log = logging.getLogger(__name__)


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


def backoff_delay(attempt: int, *, min_delay: float, max_delay: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_delay, min_delay * 2**attempt)], at least 50 ms."""
    cap = min(max_delay, min_delay * (2 ** min(attempt, 30)))
    return max(0.05, rng.uniform(0, cap))


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
            context = ssl.create_default_context(cafile=s.tls.ca_certs)
            if s.tls.certfile is not None:
                context.load_cert_chain(s.tls.certfile, s.tls.keyfile)
            if s.tls.insecure:
                context.check_hostname = False
            client.tls_set_context(context)
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
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

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._report(f"broker refused the connection: {reason_code}")
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
        if was_connected:
            self._loop.call_soon_threadsafe(self._events.disconnected, str(reason_code))

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
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
                self._report(f"TLS certificate of {s.host} rejected: {e.verify_message}")
            except (OSError, ssl.SSLError, ValueError) as e:
                self._report(f"cannot connect to {s.host}:{s.effective_port}: {e}")
            else:
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = self.client.loop(timeout=1.0)
                if self._connected.is_set():
                    self._on_disconnect(
                        self.client,
                        None,
                        paho.DisconnectFlags(False),
                        ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                        None,
                    )
                if self._stop.is_set():
                    break
                attempt = 0 if self.connects and self._last_error is None else attempt
            delay = backoff_delay(
                attempt,
                min_delay=s.reconnect.min_delay,
                max_delay=s.reconnect.max_delay,
                rng=self._rng,
            )
            attempt += 1
            self._stop.wait(delay)

    def _report(self, error: str) -> None:
        """Log a connection error once, not once per retry."""
        if error != self._last_error:
            log.error("%s; retrying with backoff", error)
            self._last_error = error

    # -- used by the agent ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """Send a message on the current connection.

        Returns:
            Its message id, which a later ``published(mid, ok)`` event acknowledges; or
            None when there is no connection (nothing was queued: the caller keeps it).
            A message sent on a connection that is lost before its acknowledgement is
            never resent by the transport: the next connection uses a fresh client.
        """
        with self._publish_lock:
            if not self._connected.is_set():
                return None
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
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
        self._stop.set()
        self.client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
