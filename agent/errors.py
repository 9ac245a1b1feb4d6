"""The agent's error tree. Drivers have their own (``drivers.errors``)."""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file, pointing at the line to fix."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(AgentError):
    """The config cannot be used; every problem found is listed. Exit status 78."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class TransportError(AgentError):
    """The MQTT transport failed; carries paho's reason code when there is one."""

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
