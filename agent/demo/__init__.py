"""``edge-agent demo``: a private broker, the agent on simulated hardware, a live view."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config.load import load_config
from agent.demo.broker import BrokerUnavailable, PrivateBroker, free_port
from agent.demo.liveview import LiveView
from agent.mqtt.client import BrokerTarget

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


def run_demo(*, config: Path | None = None, duration: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for ``duration`` seconds); stop everything it started."""
    config = config or DEMO_CONFIG
    if not config.exists():
        print(f"demo config not found: {config} (pass -c FILE)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    broker = PrivateBroker(workdir=workdir / "broker")
    env = dict(
        os.environ,
        EDGE_AGENT_DEMO_PORT=str(broker.port),
        EDGE_AGENT_DEMO_STATE_DIR=str(workdir / "state"),
        EDGE_AGENT_DEMO_HTTP_PORT=str(free_port()),
    )
    loaded = load_config(config, environ=env)  # errors surface here, before anything starts
    base = f"{loaded.config.mqtt.topic_prefix}/{loaded.config.device_id}"
    try:
        broker.start()
    except BrokerUnavailable as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    view = LiveView(BrokerTarget(host="127.0.0.1", port=broker.port), topic_filter=f"{base}/#")
    view.start()  # before the agent, so its first readings are seen too
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--simulate", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "agent.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    started = time.monotonic()
    header = demo_header(
        port=broker.port,
        base=base,
        device_id=loaded.config.device_id or "",
        output=next(iter(loaded.config.outputs), None),
        health=loaded.config.health.listen,
    )
    status = 0
    try:
        while duration is None or time.monotonic() - started < duration:
            if agent.poll() is not None:
                print(f"the agent exited with {agent.returncode}; see {workdir}/agent.log")
                status = 1
                break
            view.draw(header)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        time.sleep(0.2)
        view.draw(header + "\n(stopped)")
        view.stop()
        broker.close()
        if agent.stderr:
            agent.stderr.close()
    print(f"demo stopped; the agent's log is in {workdir}/agent.log")
    return status


def edge_agent_command() -> str:
    """How to run this ``edge-agent`` from another terminal on this machine: plain
    ``edge-agent`` when that is the one on ``$PATH``, else its path (``.venv/bin/edge-agent``
    from a checkout: ``make`` does not activate the venv)."""
    script = Path(sys.executable).parent / "edge-agent"  # not resolved: the venv's bin
    if not script.exists():
        return f"{sys.executable} -m agent"
    found = shutil.which("edge-agent")
    if found is not None and Path(found).resolve() == script.resolve():
        return "edge-agent"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def demo_header(
    *, port: int, base: str, device_id: str, output: str | None, health: str | None
) -> str:
    """The top of the demo's screen, with commands that work on this machine as printed."""
    cli = edge_agent_command()
    where = f"--host 127.0.0.1 --port {port}"
    lines = [
        f"edge-agent demo - broker 127.0.0.1:{port}, device {base}, simulated hardware. "
        "Ctrl-C stops everything.",
        "From another terminal:",
    ]

    def suggest(label: str, command: str) -> None:
        lines.append(f"  {label:<18} {command}")

    suggest("watch it:", f"{cli} watch {where} {device_id}")
    if output is not None:
        suggest(f"switch {output}:", f"{cli} send {where} --device {device_id} {output} toggle")
    if health:
        url = f"http://{health}/healthz"
        if shutil.which("curl"):
            suggest("health:", f"curl {url}  (and /metrics)")
        elif shutil.which("wget"):
            suggest("health:", f"wget -qO- {url}  (and /metrics)")
        else:
            suggest("health:", f"{url}  (and /metrics)")
    return "\n".join(lines)
