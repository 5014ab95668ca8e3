"""Where experiment tallies go for ``firstmile report``: Redis (Kafka mode) or memory.

One writer per experiment (the flow keys the tallies by experiment), so a put simply
replaces the experiment's counts.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import orjson
import redis

from firstmile.operators.errors import ServerError


class ExperimentStore(Protocol):
    def put(self, experiment: str, counts: dict[str, Any]) -> None: ...

    def all(self) -> dict[str, dict[str, Any]]:
        """Every experiment's counts: arm -> metric -> [users, successes]."""


class MemoryExperimentStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}

    def put(self, experiment: str, counts: dict[str, Any]) -> None:
        with self._lock:
            self._held[experiment] = orjson.loads(orjson.dumps(counts))  # a copy

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._held)


class RedisExperimentStore:
    def __init__(self, client: redis.Redis, prefix: str = "firstmile") -> None:
        self.client = client
        self.key = f"{prefix}:experiments"

    def put(self, experiment: str, counts: dict[str, Any]) -> None:
        try:
            self.client.hset(self.key, experiment, orjson.dumps(counts))
        except redis.RedisError as exc:
            raise ServerError(f"Redis experiment write failed: {exc}") from exc

    def all(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.client.hgetall(self.key)
        except redis.RedisError as exc:
            raise ServerError(f"Redis experiment read failed: {exc}") from exc
        return {_text(key): orjson.loads(value) for key, value in sorted(raw.items())}


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
