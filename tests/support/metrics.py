"""Reading the agent's ``/metrics`` in a test."""

from __future__ import annotations

import urllib.request


def metric(port: int, name: str) -> float:
    """The value of the unlabelled sample ``name`` (``edge_agent_dropped_total``) on the
    agent's ``/metrics`` at ``127.0.0.1:port``; 0 while it is absent or nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0
