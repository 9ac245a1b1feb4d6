"""The agent as ``edge-agent run --simulate`` runs it, plus the scheduler's own lateness log
(B6): the same wiring as ``agent.cli.cmd_run``, with ``Scheduler.record_lateness`` turned
on at SIGUSR1 (after the warm-up) and the recorded lateness written as JSON to ``--out``
when SIGTERM stops it.

    python tests/bench/agent_lateness.py -c CONFIG --out lateness.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from agent.cli import setup_logging
from agent.config.load import load_config
from agent.runtime.daemon import Agent
from agent.sampling.scheduler import Scheduler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    loaded = load_config(args.config)
    setup_logging(loaded.config.log_level)
    agent = Agent(loaded, simulate=True)
    recorded: list[Scheduler] = []

    def record() -> None:
        if agent.scheduler is not None:
            agent.scheduler.lateness.clear()
            agent.scheduler.record_lateness = True
            recorded.append(agent.scheduler)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, record)
        await agent.run(stop)

    asyncio.run(run())
    lateness = recorded[-1].lateness if recorded else []
    args.out.write_text(json.dumps(lateness))


if __name__ == "__main__":
    main()
