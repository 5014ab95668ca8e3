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

_PUBLISH_IF_NEWER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class ModelStore(Protocol):
    def publish(self, version: int, envelope: bytes) -> bool:
        """Store ``envelope`` as the newest version, unless a newer one is there."""

    def latest_version(self) -> int:
        """The newest version stored (0: none)."""

    def latest(self) -> tuple[int, bytes] | None: ...


class MemoryModelStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: tuple[int, bytes] | None = None

    def publish(self, version: int, envelope: bytes) -> bool:
        with self._lock:
            if self._held is not None and self._held[0] >= version:
                return False
            self._held = (version, envelope)
            return True

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
        self._publish = client.register_script(_PUBLISH_IF_NEWER)

    def publish(self, version: int, envelope: bytes) -> bool:
        try:
            done = self._publish(
                keys=[self.version_key, self.snapshot_key], args=[version, envelope]
            )
        except redis.RedisError as exc:
            raise ServerError(f"Redis model publish failed: {exc}") from exc
        return bool(done)

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
