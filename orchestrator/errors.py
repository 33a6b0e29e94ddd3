"""Errors the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class OrchestratorError(Exception):
    """Any error that should reach the user as one line, with exit code `exit_code`."""

    exit_code = 1


class ConfigError(OrchestratorError):
    """Bad user input: a case folder, cluster file or sweep file. Exit code 2.

    Always names the file and the key so the user can go straight to the problem.
    """

    exit_code = 2

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        super().__init__(f"{self.path}: {key}: {message}")


class UnsupportedError(ConfigError):
    """A case or flag this environment cannot run (e.g. a GPU-only flag on CPU)."""
