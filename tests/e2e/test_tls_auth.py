"""TLS and authentication against a real mosquitto (CONTRACT §3 ``mqtt.tls``, passwords).

Each broker has two listeners: a plain anonymous one, where the test's collector watches
what arrives, and the one under test (TLS, mutual TLS, or password), the only one the agent
is given. ``per_listener_settings`` keeps their security settings apart. Bad settings must
be reported once, clearly, while the agent keeps running and retrying; TLS never falls back
to plain TCP.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from agent.demo.broker import PrivateBroker, free_port
from tests.support.certs import Certificates, make_certificates
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector

pytestmark = pytest.mark.e2e

PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])
USER, PASSWORD = "agent", "s3cret-pw"
RETRIES = 3  # connection attempts the broker must see before "once" is judged


class Broker(PrivateBroker):
    """mosquitto with a plain anonymous listener (``port``) and one under test
    (``secure_port``), configured by ``listener`` (its lines after ``listener PORT``)."""

    def __init__(self, workdir: Path, listener: str) -> None:
        self.secure_port = free_port()
        super().__init__(port=free_port(), workdir=workdir, listen=False)
        self.set_listener(listener)

    def set_listener(self, listener: str) -> None:
        """Configure the listener under test; takes effect at the next (re)start."""
        self.extra_config = (
            "per_listener_settings true\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.secure_port} 127.0.0.1\n{listener}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"{count} x {text!r} not in:\n{self.log()}"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    started: list[Broker] = []

    def start(listener: str) -> Broker:
        broker = Broker(tmp_path / f"broker{len(started)}", listener)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.close()


def tls_listener(certs: Certificates, *, mutual: bool) -> str:
    lines = [
        "allow_anonymous true",
        f"cafile {certs.ca}",
        f"certfile {certs.server_cert}",
        f"keyfile {certs.server_key}",
    ]
    if mutual:
        # The client certificate's CN becomes the user name, so the broker log shows it.
        lines += ["require_certificate true", "use_identity_as_username true"]
    return "\n".join(lines) + "\n"


def password_listener(path: Path, password: str = PASSWORD) -> str:
    passwd = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin:/usr/local/bin"
    )
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([passwd, "-c", "-b", str(path), USER, password], check=True, timeout=10)
    return f"allow_anonymous false\npassword_file {path}\n"


def tls_settings(ca: Path, cert: tuple[Path, Path] | None = None) -> str:
    out = f"  tls:\n    ca_certs: {ca}\n"
    if cert is not None:
        out += f"    certfile: {cert[0]}\n    keyfile: {cert[1]}\n"
    return out


class StartAgent(Protocol):
    def __call__(self, broker: Broker, mqtt_extra: str, protocol: str = "5") -> AgentProcess: ...


@pytest.fixture
def start_agent(agents: Callable[..., AgentProcess], tmp_path: Path, device_id: str) -> StartAgent:
    """Starts the agent on the broker's listener under test, with these mqtt settings."""

    def start(broker: Broker, mqtt_extra: str, protocol: str = "5") -> AgentProcess:
        config = write_config(
            tmp_path / "c.yaml",
            port=broker.secure_port,
            device_id=device_id,
            protocol=protocol,
            interval="100ms",
            mqtt_extra=mqtt_extra,
        )
        return agents(config)

    return start


def error_lines(agent: AgentProcess) -> list[str]:
    """The agent's connection error reports (the transport logs one per new error)."""
    return [line for line in agent.log().splitlines() if "retrying with backoff" in line]


def assert_delivers(agent: AgentProcess, broker: Broker, c: Collector, base: str) -> None:
    c.topic(f"{base}/status")
    readings = c.topic(f"{base}/sensor/pi", count=3)
    assert readings[0].json()["sensor"] == "pi"
    assert error_lines(agent) == [], agent.log()
    # It came in through the listener under test: the only port the agent was given.
    assert f"on port {broker.secure_port}." in broker.log(), broker.log()


@PROTOCOLS
def test_one_way_tls_delivers_readings(
    certs: Certificates,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
    protocol: str,
) -> None:
    broker = brokers(tls_listener(certs, mutual=False))
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(
            broker,
            protocol=protocol,
            mqtt_extra=tls_settings(certs.ca),
        )
        assert_delivers(agent, broker, c, base)


@PROTOCOLS
def test_mutual_tls_delivers_readings(
    certs: Certificates,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
    protocol: str,
) -> None:
    broker = brokers(tls_listener(certs, mutual=True))
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(
            broker,
            protocol=protocol,
            mqtt_extra=tls_settings(certs.ca, (certs.client_cert, certs.client_key)),
        )
        assert_delivers(agent, broker, c, base)
    assert f"as edge-agent-{device_id} " in broker.log()
    assert "u'edge-agent test client'" in broker.log(), "identified by its certificate"


def test_mutual_tls_without_client_certificate_is_refused_with_a_hint_and_retried(
    certs: Certificates,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
) -> None:
    broker = brokers(tls_listener(certs, mutual=True))
    base = f"edge/{device_id}"
    # (A persistent session: the broker is restarted below.)
    with Collector(broker.port, f"{base}/#", persistent_id=f"collector-{device_id}") as c:
        agent = start_agent(broker, tls_settings(certs.ca))
        broker.wait_for_log("peer did not return a certificate", count=RETRIES)
        (line,) = error_lines(agent)
        assert "client certificate (mqtt.tls.certfile/keyfile)" in line, line
        assert f"127.0.0.1:{broker.secure_port}" in line, line
        assert agent.process is not None and agent.process.poll() is None, "still running"
        assert not c.messages, "nothing got through"
        # Still retrying: once the broker stops asking for a certificate, it connects and
        # delivers what it read meanwhile.
        broker.stop()
        broker.set_listener(tls_listener(certs, mutual=False))
        broker.start()
        c.topic(f"{base}/status", timeout=10)
        replayed = c.wait_for(lambda m: "sensor" in m.topic and m.json().get("replayed"))
        assert replayed[0].json()["seq"] == 1
        c.wait_for(lambda m: "sensor" in m.topic and not m.json().get("replayed"), count=3)
    # (Connection refused while the broker restarted is another error, logged once too.)
    assert sum("client certificate" in x for x in error_lines(agent)) == 1, agent.log()
    assert "disconnected from the broker" not in agent.log(), "a clean connection"


def test_untrusted_broker_certificate_is_reported_once_and_never_bypassed(
    certs: Certificates,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
) -> None:
    broker = brokers(tls_listener(certs, mutual=False))
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(
            broker,
            mqtt_extra=tls_settings(certs.other_ca),  # a CA that did not sign the broker's
        )
        broker.wait_for_log("alert unknown ca", count=RETRIES)
        time.sleep(0.3)
        assert agent.process is not None and agent.process.poll() is None, "still running"
        assert not c.messages, "nothing got through"
    (line,) = error_lines(agent)
    assert "certificate" in line and "not trusted" in line, line
    assert "mqtt.tls.ca_certs" in line, line
    assert "not connecting without TLS" in line, line
    log = broker.log()
    assert "wrong version number" not in log, "a plaintext attempt on the TLS port"
    assert f"as edge-agent-{device_id}" not in log, "the agent never got a session"


@PROTOCOLS
def test_bad_password_is_reported_once_and_retried(
    tmp_path: Path,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
    protocol: str,
) -> None:
    passwords = tmp_path / "passwd"
    broker = brokers(password_listener(passwords))
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(
            broker,
            protocol=protocol,
            mqtt_extra=f"  username: {USER}\n  password: not-the-password\n",
        )
        broker.wait_for_log("disconnected, not authorised", count=RETRIES)
        (line,) = error_lines(agent)
        assert "refused" in line and "not authorised" in line, line
        assert "mqtt.password/password_file" in line, line
        assert "not-the-password" not in agent.log(), "secrets are never logged"
        assert agent.process is not None and agent.process.poll() is None, "still running"
        assert not c.messages, "nothing got through"
        # Still retrying: once the broker accepts that password (reloaded on SIGHUP), it
        # connects.
        password_listener(passwords, "not-the-password")
        assert broker.process is not None
        broker.process.send_signal(signal.SIGHUP)
        c.topic(f"{base}/status", timeout=10)
    assert len(error_lines(agent)) == 1, agent.log()


@PROTOCOLS
def test_password_file_authenticates(
    tmp_path: Path,
    brokers: Callable[[str], Broker],
    start_agent: StartAgent,
    device_id: str,
    protocol: str,
) -> None:
    broker = brokers(password_listener(tmp_path / "passwd"))
    secret = tmp_path / "mqtt.pass"
    secret.write_text(f"{PASSWORD}\n")  # as `echo` writes it: the newline is not part of it
    secret.chmod(0o600)
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(
            broker,
            protocol=protocol,
            mqtt_extra=f"  username: {USER}\n  password_file: {secret}\n",
        )
        assert_delivers(agent, broker, c, base)
    assert f"u'{USER}'" in broker.log()
    assert "not authorised" not in broker.log()
