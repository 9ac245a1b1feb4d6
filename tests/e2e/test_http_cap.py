"""Half-open HTTP connections against the real agent (issue 20, row 12): bounded in count
and time, asserting behaviour and bounded descriptors."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker, free_port
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess

pytestmark = pytest.mark.e2e


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def http_connections(pid: int, port: int) -> int:
    """The descriptors ``pid`` holds for TCP connections to its own ``port`` (the health
    endpoint's): its other descriptors (the broker link, the buffer, log files, worker
    threads' wake-up pipes) come and go with what it is doing."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] != "0A":  # 0A: the listening socket itself
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_idle_http_connections_are_capped_and_closed(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    health = free_port()
    agent = agents(
        write_config(
            tmp_path / "c.yaml",
            port=broker.port,
            device_id=device_id,
            extra=f'health:\n  listen: "127.0.0.1:{health}"\n',
        )
    )
    url = f"http://127.0.0.1:{health}/healthz"
    deadline = time.monotonic() + 20
    while True:
        try:
            if get(url)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "no /healthz"
        time.sleep(0.2)
    baseline = open_fds(agent.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(600):  # half-open: connected, never a byte sent
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", health))
            idle.append(s)
        time.sleep(1)
        # The cap (16) plus what one accept burst holds until its refusals are closed.
        held = http_connections(agent.pid, health)
        assert held <= 32, (held, baseline, open_fds(agent.pid))
        assert open_fds(agent.pid) < baseline + 60, (baseline, open_fds(agent.pid))
        time.sleep(6)  # past the request timeout: the held ones are closed too
        assert get(url)[0] == 200, "/healthz answers again while the idle sockets stay open"
    finally:
        for s in idle:
            s.close()
    assert agent.process is not None and agent.process.poll() is None
    assert "Traceback" not in agent.log()
