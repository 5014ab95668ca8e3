"""Where the learner publishes signed model snapshots and every scorer picks them up.

Redis (Kafka mode: all processes share it) or memory (embedded runs). A version is only
ever replaced by a higher one. The store holds envelopes: verifying them is the reader's
job (``firstmile.online_models.snapshot.verify``).
"""

from __future__ import annotations

import threading
from typing import Protocol

import redis

from firstmile.operators.errors import ServerError

#: Versions whose summary (time, segment sizes) the history keeps, for the report page.
HISTORY = 2000

_PUBLISH_IF_NEWER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
end
return 1
"""


class ModelStore(Protocol):
    def publish(self, version: int, envelope: bytes, summary: bytes = b"") -> bool:
        """Store ``envelope`` as the newest version, unless a newer one is there; its
        ``summary`` (JSON, unsigned: for display) joins the history."""

    def history(self) -> list[bytes]:
        """The newest ``HISTORY`` versions' summaries, oldest first."""

    def latest_version(self) -> int:
        """The newest version stored (0: none)."""

    def latest(self) -> tuple[int, bytes] | None: ...


class MemoryModelStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: tuple[int, bytes] | None = None
        self._history: list[bytes] = []

    def publish(self, version: int, envelope: bytes, summary: bytes = b"") -> bool:
        with self._lock:
            if self._held is not None and self._held[0] >= version:
                return False
            self._held = (version, envelope)
            if summary:
                self._history = [*self._history[-(HISTORY - 1) :], summary]
            return True

    def history(self) -> list[bytes]:
        return list(self._history)

    def latest_version(self) -> int:
        held = self._held
        return held[0] if held else 0

    def latest(self) -> tuple[int, bytes] | None:
        return self._held


class RedisModelStore:
    def __init__(self, client: redis.Redis, prefix: str = "firstmile") -> None:
        self.client = client
        self.version_key = f"{prefix}:model:version"
        self.snapshot_key = f"{prefix}:model:snapshot"
        self.history_key = f"{prefix}:model:history"
        self._publish = client.register_script(_PUBLISH_IF_NEWER)

    def publish(self, version: int, envelope: bytes, summary: bytes = b"") -> bool:
        try:
            done = self._publish(
                keys=[self.version_key, self.snapshot_key, self.history_key],
                args=[version, envelope, summary, HISTORY],
            )
        except redis.RedisError as exc:
            raise ServerError(f"Redis model publish failed: {exc}") from exc
        return bool(done)

    def history(self) -> list[bytes]:
        try:
            held = self.client.lrange(self.history_key, 0, -1)
        except redis.RedisError as exc:
            raise ServerError(f"Redis model read failed: {exc}") from exc
        return [item if isinstance(item, bytes) else item.encode() for item in held]

    def latest_version(self) -> int:
        try:
            raw = self.client.get(self.version_key)
        except redis.RedisError as exc:
            raise ServerError(f"Redis model read failed: {exc}") from exc
        return int(raw) if raw is not None else 0

    def latest(self) -> tuple[int, bytes] | None:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.version_key)
            pipe.get(self.snapshot_key)
            version, envelope = pipe.execute()
        except redis.RedisError as exc:
            raise ServerError(f"Redis model read failed: {exc}") from exc
        if version is None or envelope is None:
            return None
        return int(version), bytes(envelope)
