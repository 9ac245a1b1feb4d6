"""A TCP proxy that breaks the network on demand, for tests of reconnects and buffering.

Put it between a client (the agent, paho) and a server (mosquitto) on loopback, then
switch what the "network" does while the test runs::

    with FaultProxy(broker_port) as proxy:
        client.connect("127.0.0.1", proxy.port)
        proxy.blackhole()   # a dead Wi-Fi: sockets stay open, nothing arrives
        ...
        proxy.heal()        # blackholed connections are reset, new ones pass

States (each call replaces the previous one):
    pass (``heal()``): forward both ways.
    ``delay(s)``: pass, each chunk held ``s`` seconds in each direction (a round trip gains
        ``2 * s``). Order is kept.
    ``blackhole()``: accept connections but forward nothing, either way, on new and
        existing ones; their sockets are not read, so the peers' buffers fill as on a dead
        link. Leaving this state (``heal`` or ``delay``) resets the blackholed connections,
        as a NAT or a restarted access point would; the client reconnects cleanly.
    ``refuse()``: the listening socket is closed, so a connect gets ECONNREFUSED, as from a
        host whose broker is down. Established connections are left alone (combine with
        ``cut()`` for a crashed broker). Leaving the state binds the same port again.

And one action, which keeps the state: ``cut()`` resets (RST) every current connection.

The proxy accepts on 127.0.0.1 only and forwards only to a loopback target. It sets
TCP_NODELAY on both legs so it adds no Nagle delay of its own. When the target refuses a
connection, the client's accepted connection is reset at once. All sockets are handled by
one selector thread; control calls from other threads return once they took effect.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

__all__ = ["FaultProxy"]

_CHUNK: Final = 65536
_MAX_PENDING: Final = 4 * 1024 * 1024  # per direction; beyond it the source is not read
_CONTROL_TIMEOUT_S: Final = 10.0


class _Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


@dataclass(eq=False)
class _Direction:
    """One direction of a connection: bytes read from ``src`` waiting to go to ``dst``."""

    src: socket.socket
    dst: socket.socket
    pending: deque[tuple[float, bytes]] = field(default_factory=deque)  # (due time, data)
    pending_bytes: int = 0
    eof: bool = False  # src sent FIN
    shut: bool = False  # FIN passed on to dst


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    upstream: socket.socket | None  # None: accepted while blackholed, never connected
    frozen: bool
    directions: list[_Direction] = field(default_factory=list)

    def sockets(self) -> list[socket.socket]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _check_loopback(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve target host {host!r}: {exc}") from exc
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not all(a.is_loopback for a in addresses):
        raise ValueError(f"FaultProxy forwards only to loopback, not {host!r}")


class FaultProxy:
    """A loopback TCP proxy whose forwarding can be cut, blackholed, refused or delayed.

    Attributes:
        target_host: Where connections are forwarded (a loopback address or name).
        target_port: The port forwarded to.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        """Prepare a proxy to ``target_host:target_port``; :meth:`start` opens its port.

        Raises:
            ValueError: ``target_host`` is not a loopback address.
        """
        _check_loopback(target_host)
        self.target_host = target_host
        self.target_port = target_port
        self._port: int | None = None
        self._mode = _Mode.PASS
        self._delay_s = 0.0
        self._sel: selectors.DefaultSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], Future[None]]] = (
            queue.SimpleQueue()
        )
        self._conns: dict[socket.socket, _Connection] = {}  # by each of its sockets
        self._interest: dict[socket.socket, int] = {}  # registered with the selector
        self._count = 0
        self._count_changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None

    # -- public API ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on, on 127.0.0.1 (kept across ``refuse``/``heal``)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy now."""
        return self._count

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until exactly ``count`` connections are open; False on timeout."""
        with self._count_changed:
            return self._count_changed.wait_for(lambda: self._count == count, timeout)

    def start(self) -> Self:
        """Bind an ephemeral port on 127.0.0.1 and start forwarding (in pass state)."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._listen()
        except OSError:
            self._close_all()
            raise
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close the port and join the thread; idempotent.

        Raises:
            RuntimeError: The proxy thread had failed (the cause is chained).
        """
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():

            def stop() -> None:
                self._stopping = True

            self._call(stop)
        thread.join(_CONTROL_TIMEOUT_S)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise RuntimeError("the FaultProxy thread failed") from failure

    def cut(self) -> None:
        """Reset (RST) every current connection; the state stays as it is."""
        self._call(self._cut_all)

    def blackhole(self) -> None:
        """Accept connections and keep them open, but forward nothing either way."""

        def blackhole() -> None:
            self._mode = _Mode.BLACKHOLE
            self._listen()
            for conn in set(self._conns.values()):
                conn.frozen = True

        self._call(blackhole)

    def refuse(self) -> None:
        """Close the listening port: new connections are refused (ECONNREFUSED)."""

        def refuse() -> None:
            self._mode = _Mode.REFUSE
            self._unlisten()

        self._call(refuse)

    def delay(self, seconds: float) -> None:
        """Forward, holding every chunk ``seconds`` in each direction."""
        if seconds < 0:
            raise ValueError(f"delay must not be negative, not {seconds}")
        self._call(lambda: self._pass(seconds))

    def heal(self) -> None:
        """Back to plain forwarding; blackholed connections are reset."""
        self._call(lambda: self._pass(0.0))

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy :{self._port} -> {self.target_host}:{self.target_port}"
            f" {self._mode.value} delay={self._delay_s}s connections={self._count}>"
        )

    # -- control -------------------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the proxy thread and wait for it; re-raise what it raised."""
        if self._thread is None or self._wake_w is None:
            raise RuntimeError("FaultProxy is not started")
        if not self._thread.is_alive():
            raise RuntimeError("FaultProxy is stopped") from self._failure
        done: Future[None] = Future()
        self._commands.put((fn, done))
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")
        done.result(_CONTROL_TIMEOUT_S)

    def _pass(self, delay_s: float) -> None:
        self._mode = _Mode.PASS
        self._delay_s = delay_s
        self._listen()
        for conn in set(self._conns.values()):
            if conn.frozen:
                self._drop(conn, rst=True)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        assert self._sel is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port or 0))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ)

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        assert self._sel is not None
        self._sel.unregister(self._listener)
        self._listener.close()
        self._listener = None

    def _cut_all(self) -> None:
        for conn in set(self._conns.values()):
            self._drop(conn, rst=True)

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except BaseException as exc:  # re-raised by stop() or the next control call
            self._failure = exc
            while not self._commands.empty():
                _, done = self._commands.get()
                done.set_exception(RuntimeError("the FaultProxy thread failed"))
        finally:
            self._close_all()

    def _step(self) -> None:
        assert self._sel is not None
        events = self._sel.select(self._timeout())
        for key, mask in events:
            sock = key.fileobj
            if sock is self._wake_r:
                self._run_commands()
            elif sock is self._listener:
                self._accept()
            elif mask & selectors.EVENT_READ:
                assert isinstance(sock, socket.socket)
                conn = self._conns.get(sock)
                if conn is not None and not conn.frozen:
                    self._read(conn, sock)
        now = time.monotonic()
        for conn in set(self._conns.values()):
            if not conn.frozen:
                self._flush(conn, now)
        self._update_interest()

    def _timeout(self) -> float | None:
        """Until the next chunk falls due, unless its socket already waits for EVENT_WRITE."""
        due = [
            d.pending[0][0]
            for conn in set(self._conns.values())
            if not conn.frozen
            for d in conn.directions
            if d.pending and not self._interest.get(d.dst, 0) & selectors.EVENT_WRITE
        ]
        return None if not due else max(min(due) - time.monotonic(), 0.0)

    def _run_commands(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while not self._commands.empty():
            fn, done = self._commands.get()
            try:
                fn()
            except Exception as exc:  # handed to the caller, which raises it
                done.set_exception(exc)
            else:
                done.set_result(None)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            _tune(client)
            if self._mode is _Mode.BLACKHOLE:
                self._add(_Connection(client=client, upstream=None, frozen=True))
                continue
            try:
                upstream = socket.create_connection(
                    (self.target_host, self.target_port), timeout=2.0
                )
            except OSError:
                _reset(client)  # the target is down: the client sees a reset
                continue
            _tune(upstream)
            conn = _Connection(client=client, upstream=upstream, frozen=False)
            conn.directions = [_Direction(client, upstream), _Direction(upstream, client)]
            self._add(conn)

    def _add(self, conn: _Connection) -> None:
        for sock in conn.sockets():
            self._conns[sock] = conn  # registered by _update_interest
        self._set_count(self._count + 1)

    def _drop(self, conn: _Connection, *, rst: bool) -> None:
        assert self._sel is not None
        if self._conns.get(conn.client) is not conn:
            return
        for sock in conn.sockets():
            del self._conns[sock]
            if self._interest.pop(sock, 0):
                self._sel.unregister(sock)
            if rst:
                _reset(sock)
            else:
                sock.close()
        self._set_count(self._count - 1)

    def _set_count(self, count: int) -> None:
        with self._count_changed:
            self._count = count
            self._count_changed.notify_all()

    def _read(self, conn: _Connection, sock: socket.socket) -> None:
        direction = next(d for d in conn.directions if d.src is sock)
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, rst=True)  # pass a reset on as a reset
            return
        if not data:
            direction.eof = True
            return
        direction.pending.append((time.monotonic() + self._delay_s, data))
        direction.pending_bytes += len(data)

    def _flush(self, conn: _Connection, now: float) -> None:
        for d in conn.directions:
            while d.pending and d.pending[0][0] <= now:
                due, data = d.pending[0]
                try:
                    sent = d.dst.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._drop(conn, rst=True)
                    return
                d.pending_bytes -= sent
                if sent < len(data):
                    d.pending[0] = (due, data[sent:])
                    break
                d.pending.popleft()
            if d.eof and not d.pending and not d.shut:
                d.shut = True
                with contextlib.suppress(OSError):
                    d.dst.shutdown(socket.SHUT_WR)
        if conn.directions and all(d.shut for d in conn.directions):
            self._drop(conn, rst=False)

    def _update_interest(self) -> None:
        """(Un)register every connection socket for the events it now needs."""
        assert self._sel is not None
        now = time.monotonic()
        wanted = dict.fromkeys(self._conns, 0)
        for conn in set(self._conns.values()):
            if conn.frozen:
                continue
            for d in conn.directions:
                if not d.eof and d.pending_bytes < _MAX_PENDING:
                    wanted[d.src] |= selectors.EVENT_READ
                if d.pending and d.pending[0][0] <= now:
                    wanted[d.dst] |= selectors.EVENT_WRITE  # the last send would block
        for sock, events in wanted.items():
            current = self._interest.get(sock, 0)
            if events == current:
                continue
            if not events:
                self._sel.unregister(sock)
                del self._interest[sock]
            elif not current:
                self._sel.register(sock, events)
                self._interest[sock] = events
            else:
                self._sel.modify(sock, events)
                self._interest[sock] = events

    def _close_all(self) -> None:
        """Reset every connection and close every socket and the selector."""
        for conn in set(self._conns.values()):
            self._drop(conn, rst=True)
        if self._sel is not None:
            self._unlisten()
            self._sel.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
