"""Exceptions raised by firstmile.

Tree::

    FirstmileError
    ├── ConfigError          a config file or override is invalid
    ├── MappingError         config/events.toml (or another data file) is invalid
    ├── InputError           an input file or stream cannot be opened or read
    ├── ServerError          Kafka or Redis cannot be reached or refused a request
    └── ModelError           a model snapshot is unsigned, tampered with or malformed

Bad *events* are never exceptions: they become dead letters (``events.DeadLetter``).
"""

from __future__ import annotations


class FirstmileError(Exception):
    """Root of every error firstmile raises on purpose."""


class ConfigError(FirstmileError):
    """A config file or environment override is invalid."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"config error: {field}: {problem}")


class MappingError(FirstmileError):
    """A data file under config/ (such as the event-name mapping) is invalid."""


class InputError(FirstmileError):
    """An input file or stream cannot be opened or read."""


class ServerError(FirstmileError):
    """Kafka or Redis cannot be reached, or refused a request."""


class ModelError(FirstmileError):
    """A model snapshot was refused: unsigned, signed with another key, or malformed."""
