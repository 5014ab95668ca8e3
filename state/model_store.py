"""Where the learner publishes signed model snapshots and every scorer picks them up.

Redis (Kafka mode: all processes share it) or memory (embedded runs). A version is only
ever replaced by a higher one. The store holds envelopes: verifying them is the reader's
job (``firstmile.online_models.snapshot.verify``). Beside the newest it keeps the
``RECENT`` newest versions, each with the event time it is in force after, and the
job's mark: the newest event time any scorer reserved (``online_models.channel``). A
version is published in force after the mark at the time, in one atomic step. The
points are unsigned: who can write the store can already withhold a version.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol, cast

import redis

from firstmile.operators.errors import ServerError

#: Versions whose summary (time, segment sizes) the history keeps, for the report page.
HISTORY = 2000
#: Versions kept with their points in force: a replay reaches back at most this far.
RECENT = 256

_PUBLISH_IF_NEWER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return false end
local after = tonumber(ARGV[5])
local mark = redis.call('ZSCORE', KEYS[5], 'mark')
if mark and tonumber(mark) > after then after = tonumber(mark) end
local point = string.format('%.17g', after)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
end
redis.call('ZADD', KEYS[4], ARGV[1], point .. '\\n' .. ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[6]) - 1)
return point
"""

_RESERVE = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], 'mark')
return redis.call('ZSCORE', KEYS[1], 'mark')
"""


class ModelStore(Protocol):
    def publish(
        self, version: int, envelope: bytes, summary: bytes = b"", after: float = -math.inf
    ) -> float | None:
        """Store ``envelope`` as the newest version, unless a newer one is there (None),
        in force for event times after ``after`` or the mark, whichever is later (that
        point is returned); its ``summary`` (JSON, unsigned: for display) joins the
        history."""

    def since(self, version: int) -> list[tuple[float, int, bytes]]:
        """The recent versions above ``version``: (in force after, version, envelope),
        oldest first."""

    def reserve(self, until: float) -> float:
        """Move the mark to ``until`` if that is later; the mark."""

    def reserved(self) -> float:
        """The mark (-inf: none)."""

    def restart(self, held: tuple[int, bytes] | None, *, clear_mark: bool = True) -> None:
        """A fresh run: the newest version (if any) alone is recent, in force from the
        start, and (``clear_mark``) nothing is reserved."""

    def history(self) -> list[bytes]:
        """The newest ``HISTORY`` versions' summaries, oldest first."""

    def latest_version(self) -> int:
        """The newest version stored (0: none)."""

    def latest(self) -> tuple[int, bytes] | None: ...


class MemoryModelStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: list[tuple[float, int, bytes]] = []
        self._history: list[bytes] = []
        self._mark = -math.inf

    def publish(
        self, version: int, envelope: bytes, summary: bytes = b"", after: float = -math.inf
    ) -> float | None:
        with self._lock:
            if self._recent and self._recent[-1][1] >= version:
                return None
            after = max(after, self._mark)
            self._recent = [*self._recent[-(RECENT - 1) :], (after, version, envelope)]
            if summary:
                self._history = [*self._history[-(HISTORY - 1) :], summary]
            return after

    def since(self, version: int) -> list[tuple[float, int, bytes]]:
        return [held for held in self._recent if held[1] > version]

    def reserve(self, until: float) -> float:
        with self._lock:
            self._mark = max(self._mark, until)
            return self._mark

    def reserved(self) -> float:
        return self._mark

    def restart(self, held: tuple[int, bytes] | None, *, clear_mark: bool = True) -> None:
        with self._lock:
            self._recent = [(-math.inf, *held)] if held else []
            if clear_mark:
                self._mark = -math.inf

    def history(self) -> list[bytes]:
        return list(self._history)

    def latest_version(self) -> int:
        recent = self._recent
        return recent[-1][1] if recent else 0

    def latest(self) -> tuple[int, bytes] | None:
        recent = self._recent
        return (recent[-1][1], recent[-1][2]) if recent else None


class RedisModelStore:
    def __init__(self, client: redis.Redis, prefix: str = "firstmile") -> None:
        self.client = client
        self.version_key = f"{prefix}:model:version"
        self.snapshot_key = f"{prefix}:model:snapshot"
        self.history_key = f"{prefix}:model:history"
        self.recent_key = f"{prefix}:model:recent"  # score: version; member: after + envelope
        self.mark_key = f"{prefix}:model:mark"  # a sorted set of one: ZADD GT keeps the newest
        self._publish = client.register_script(_PUBLISH_IF_NEWER)
        self._reserve = client.register_script(_RESERVE)

    def publish(
        self, version: int, envelope: bytes, summary: bytes = b"", after: float = -math.inf
    ) -> float | None:
        keys = [self.version_key, self.snapshot_key, self.history_key, self.recent_key]
        keys.append(self.mark_key)
        args: list[bytes | int | str] = [version, envelope, summary, HISTORY, repr(after)]
        args.append(RECENT)
        try:
            point = self._publish(keys=keys, args=args)
        except redis.RedisError as exc:
            raise ServerError(f"Redis model publish failed: {exc}") from exc
        return float(point) if point is not None else None

    def since(self, version: int) -> list[tuple[float, int, bytes]]:
        try:
            held = self.client.zrangebyscore(
                self.recent_key, f"({version}", "+inf", withscores=True
            )
        except redis.RedisError as exc:
            raise ServerError(f"Redis model read failed: {exc}") from exc
        found = []
        for member, score in cast(list[tuple[bytes, float]], held):
            after, _, envelope = member.partition(b"\n")
            found.append((float(after), int(score), envelope))
        return found

    def reserve(self, until: float) -> float:
        try:
            return float(self._reserve(keys=[self.mark_key], args=[repr(until)]))
        except redis.RedisError as exc:
            raise ServerError(f"Redis model write failed: {exc}") from exc

    def reserved(self) -> float:
        try:
            held = self.client.zscore(self.mark_key, "mark")
        except redis.RedisError as exc:
            raise ServerError(f"Redis model read failed: {exc}") from exc
        return float(held) if held is not None else -math.inf

    def restart(self, held: tuple[int, bytes] | None, *, clear_mark: bool = True) -> None:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.recent_key, *([self.mark_key] if clear_mark else []))
            if held is not None:
                pipe.zadd(self.recent_key, {b"-inf\n" + held[1]: held[0]})
            pipe.execute()
        except redis.RedisError as exc:
            raise ServerError(f"Redis model write failed: {exc}") from exc

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
