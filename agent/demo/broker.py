"""A private mosquitto on a free loopback port, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class BrokerUnavailable(RuntimeError):
    """mosquitto is not installed or did not start."""


def find_mosquitto() -> str:
    """The mosquitto binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerUnavailable("mosquitto is not installed: sudo apt-get install mosquitto")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateBroker:
    """mosquitto with a config file and persistence directory of its own.

    Args:
        port: the loopback port; default a free one.
        workdir: where config, persistence and log go; default a new temporary directory.
        extra_config: more mosquitto.conf lines (ACLs, TLS listeners...).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
        listen: bool = True,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edge-agent-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.listen = listen
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1",
            f"log_dest file {self.log_path}\nlog_type error\nlog_type warning\nlog_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto` and cannot write workdir
        if self.listen:
            lines.append(f"listener {self.port} 127.0.0.1\nallow_anonymous true")
        if self.extra_config:
            lines.append(self.extra_config)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 5.0) -> PrivateBroker:
        """Start (or restart) mosquitto and wait until it accepts connections."""
        conf = self._write_config()
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise BrokerUnavailable(f"mosquitto exited: {err or self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen on port {self.port} in {timeout}s")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def stop(self, *, kill: bool = False) -> None:
        """Stop mosquitto (SIGTERM, or SIGKILL with ``kill``); idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the working directory if it was ours."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
