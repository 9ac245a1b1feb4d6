"""A real Home Assistant Core for tests: its venv, its process, onboarding, its APIs.

The venv is built once into a cache directory outside the repository (``make test-ha``
does that, see :data:`HA_VENV`) because installing ``homeassistant`` takes minutes. Each
test run gets a fresh configuration directory with a minimal ``configuration.yaml``:
no ``default_config`` (its integrations want the internet), only what the tests talk to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent.demo.broker import free_port
from tests.ha.websocket import HomeAssistantSocket

#: The venv with ``homeassistant`` (``make test-ha`` creates it when it is missing).
HA_VENV = Path(os.environ.get("EDGE_AGENT_HA_VENV", "/var/cache/edge-agent-tests/ha-venv"))
HA_VERSION = "2025.4.4"
USERNAME, PASSWORD = "tester", "edge-agent-tests"

CONFIGURATION = """\
homeassistant:
  name: edge-agent test
  latitude: 52.5
  longitude: 13.4
  elevation: 34
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
websocket_api:
config:
onboarding:
recorder:
  commit_interval: 0
history:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
    homeassistant.components.mqtt.sensor: debug   # "Ignore empty state" lines
"""


def available() -> str | None:
    """Why Home Assistant cannot run here, or None when it can."""
    hass = HA_VENV / "bin" / "hass"
    if not hass.exists():
        return f"no Home Assistant venv at {HA_VENV} (run `make test-ha`)"
    return None


class HomeAssistantCore:
    """``hass -c CONFIG_DIR`` in a subprocess, onboarded, with a long-lived token.

    Args:
        config_dir: its configuration directory (created, kept across :meth:`restart`).
    """

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.port = free_port()
        self._token_file = config_dir / "test-token"
        self.token: str | None = (
            self._token_file.read_text().strip() if self._token_file.exists() else None
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config_dir / "home-assistant.log"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- process -------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> HomeAssistantCore:
        """Start Home Assistant and wait until it runs (the first start takes ~40 s)."""
        self._console = open(self.config_dir / "console.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(HA_VENV / "bin" / "hass"),
                "-c",
                str(self.config_dir),
                "--skip-pip",
                "--log-no-color",
                "--log-file",
                str(self.log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Home Assistant exited:\n{self.log_tail()}")
            try:
                steps = self.request("GET", "/api/onboarding", auth=False)
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
                continue
            if self.token is None:
                if not all(step["done"] for step in steps):
                    self._onboard()
                else:
                    raise RuntimeError("Home Assistant is onboarded but we have no token")
            if self.request("GET", "/api/config").get("state") == "RUNNING":
                return self
            time.sleep(0.5)
        raise TimeoutError(f"Home Assistant did not start in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop it cleanly (SIGTERM); it saves its storage and closes the database."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._console.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    # -- onboarding ----------------------------------------------------------------------

    def _onboard(self) -> None:
        client_id = f"{self.base_url}/"
        user = self.request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Tester",
                "username": USERNAME,
                "password": PASSWORD,
                "language": "en",
            },
            auth=False,
        )
        form = urllib.parse.urlencode(
            {"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id}
        ).encode()
        request = urllib.request.Request(
            f"{self.base_url}/auth/token",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            short_lived = json.loads(response.read())["access_token"]
        self.token = short_lived
        # Not the ``core_config`` step: it sets up integrations that want the internet
        # (weather, radio, text-to-speech).
        self.request("POST", "/api/onboarding/analytics", {})
        self.request(
            "POST",
            "/api/onboarding/integration",
            {"client_id": client_id, "redirect_uri": f"{self.base_url}/?auth_callback=1"},
        )
        with self.socket() as ws:
            self.token = ws.call(
                "auth/long_lived_access_token", client_name="edge-agent tests", lifespan=30
            )
        assert self.token is not None
        self._token_file.write_text(self.token)

    # -- APIs ----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 15
    ) -> Any:
        """A REST call; the decoded JSON answer. HTTPError on a 4xx/5xx status."""
        headers = {"Content-Type": "application/json"}
        if auth:
            assert self.token is not None, "not onboarded"
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def socket(self) -> _Socket:
        assert self.token is not None
        return _Socket(self.port, self.token)

    def add_mqtt(self, broker_port: int) -> dict[str, Any]:
        """Add the MQTT integration through the config-flow API, as the UI does."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        result: dict[str, Any] = flow
        while result.get("type") == "form":
            fields = {f["name"] for f in result.get("data_schema", [])}
            answer: dict[str, Any] = {}
            if "broker" in fields:
                answer = {"broker": "127.0.0.1", "port": broker_port}
            result = self.request(
                "POST", f"/api/config/config_entries/flow/{result['flow_id']}", answer
            )
            if result.get("errors"):
                raise RuntimeError(f"MQTT config flow: {result}")
        if result.get("type") != "create_entry":
            raise RuntimeError(f"MQTT config flow did not create an entry: {result}")
        return result

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.request("GET", f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return body

    def history(self, entity_ids: list[str], since: str) -> dict[str, list[dict[str, Any]]]:
        """Every recorded state of ``entity_ids`` since ``since`` (ISO 8601), by entity."""
        query = urllib.parse.urlencode(
            {"filter_entity_id": ",".join(entity_ids), "no_attributes": "1"}
        )
        path = f"/api/history/period/{urllib.parse.quote(since)}?{query}"
        rows: list[list[dict[str, Any]]] = self.request("GET", path)
        return {series[0]["entity_id"]: series for series in rows if series}

    def call_service(self, domain: str, service: str, **data: Any) -> Any:
        return self.request("POST", f"/api/services/{domain}/{service}", data)

    def wait_for(self, predicate: Any, *, timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll ``predicate()`` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")


class _Socket(HomeAssistantSocket):
    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
