"""The fault proxy itself: each network fault looks to a client as it would for real."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.faultproxy import FaultProxy

TIMEOUT_S = 5.0


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1, the simplest target to proxy to."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: stop
                return
            with self._lock:
                self._conns.append(conn)
                thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a reset from the proxy ends the echo
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)  # EOF answered with EOF, as servers do

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(TIMEOUT_S)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(TIMEOUT_S)
        for conn in self._conns:
            conn.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.port) as p:
        yield p


@contextlib.contextmanager
def connect(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    try:
        yield sock
    finally:
        sock.close()


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The connection ends: an RST (ECONNRESET) or, at worst, an EOF."""
    sock.settimeout(TIMEOUT_S)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy.port) as a, connect(proxy.port) as b:
        assert roundtrip(a, b"hello") == b"hello"
        assert roundtrip(b, b"world") == b"world"
        assert proxy.wait_for_connections(2)
        big = bytes(range(256)) * 8192  # 2 MiB: more than a socket buffer
        assert roundtrip(a, big) == big


def test_client_close_closes_the_connection(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"x") == b"x"
        assert proxy.connections == 1
    assert proxy.wait_for_connections(0)


def test_cut_resets_connections_and_keeps_accepting(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"ping") == b"ping"
        proxy.cut()
        assert proxy.connections == 0
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"again") == b"again"


def test_blackhole_forwards_nothing_and_keeps_the_socket_open(proxy: FaultProxy) -> None:
    with connect(proxy.port) as old:
        assert roundtrip(old, b"before") == b"before"
        proxy.blackhole()
        old.sendall(b"lost")
        old.settimeout(0.3)
        with pytest.raises(TimeoutError):
            old.recv(1)
        with connect(proxy.port) as new:  # new connections are accepted...
            assert proxy.wait_for_connections(2)
            new.settimeout(0.3)
            new.sendall(b"also lost")
            with pytest.raises(TimeoutError):  # ...and are as dead
                new.recv(1)
            proxy.heal()  # blackholed connections are reset on heal
            assert_closed_by_peer(old)
            assert_closed_by_peer(new)
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"healed") == b"healed"


def test_refuse_refuses_new_connections_until_heal(proxy: FaultProxy) -> None:
    port = proxy.port
    with connect(port) as established:
        assert roundtrip(established, b"a") == b"a"
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()
        assert roundtrip(established, b"b") == b"b"  # left alone
        proxy.heal()
        assert proxy.port == port
        with connect(port) as sock:
            assert roundtrip(sock, b"c") == b"c"


def test_delay_adds_latency_each_way_and_keeps_order(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"warm") == b"warm"
        proxy.delay(0.5)
        started = time.monotonic()
        for n in range(5):
            sock.sendall(b"%d," % n)
        expected = b"0,1,2,3,4,"
        received = b""
        while len(received) < len(expected):
            received += sock.recv(100)
        slow = time.monotonic() - started
        assert received == expected
        assert 1.0 <= slow < 1.0 + 2.0
        proxy.heal()
        started = time.monotonic()
        assert roundtrip(sock, b"quick") == b"quick"
        assert time.monotonic() - started < 0.5, "healed: no delay either way"


def test_a_down_target_resets_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy(dead_port) as proxy:
        try:
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT_S)
        except ConnectionResetError:
            pass  # the RST overtook connect() on loopback: also a reset
        else:
            with sock:
                assert_closed_by_peer(sock)
        assert proxy.connections == 0


def test_stop_is_idempotent_and_resets_connections(echo: EchoServer) -> None:
    proxy = FaultProxy(echo.port).start()
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"x") == b"x"
        proxy.stop()
        assert_closed_by_peer(sock)
    proxy.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        proxy.cut()


def test_only_loopback_targets_are_allowed() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(1883, target_host="192.0.2.1")
    FaultProxy(1883, target_host="localhost")  # resolves to loopback; never started


# -- with a real broker and a real paho client -------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    """A throwaway mosquitto on a free loopback port; yields the port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.01)
        yield port
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


def test_paho_reconnects_through_a_cut_and_a_refusal(tmp_path: Path) -> None:
    topic = f"{uuid.uuid4().hex}/faultproxy"
    connects = threading.Semaphore(0)
    disconnects = threading.Semaphore(0)
    received: list[bytes] = []
    got = threading.Condition()

    def on_connect(
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client: paho.Client, *args: object) -> None:
        connects.release()

    def on_disconnect(client: paho.Client, *args: object) -> None:
        disconnects.release()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with got:
            received.append(bytes(msg.payload))
            got.notify_all()

    def publish_and_receive(client: paho.Client, payload: bytes) -> None:
        client.publish(topic, payload, qos=1)
        with got:
            assert got.wait_for(lambda: payload in received, TIMEOUT_S)

    with mosquitto(tmp_path) as broker_port, FaultProxy(broker_port) as proxy:
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.connect("127.0.0.1", proxy.port, keepalive=10)
        client.loop_start()
        try:
            assert connects.acquire(timeout=TIMEOUT_S)
            publish_and_receive(client, b"first")

            proxy.refuse()
            proxy.cut()  # a crashed broker: connections reset, the port closed
            assert disconnects.acquire(timeout=TIMEOUT_S)
            assert not connects.acquire(timeout=1.5)  # at least one retry is refused
            proxy.heal()
            assert connects.acquire(timeout=TIMEOUT_S)
            publish_and_receive(client, b"after outage")
        finally:
            client.disconnect()
            client.loop_stop()
