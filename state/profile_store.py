"""Where every user's current profile lives for lookups: Redis, or memory (embedded, tests).

Both stores keep, per user, the profile with the highest ``seq``: an older seq never
overwrites a newer one, even when a replay after a crash writes it again. The same seq
written again wins (it is the replay's, as on the output topics, where the last message
per key stays), except over an erasure marker. Erasing a
user removes the profile and leaves only a marker ``{seq, erased}`` (no data), so an
older write replayed later cannot bring the profile back; the marker expires after
``erased_ttl_s``. A profile may carry a TTL.

In Redis a user is one hash, ``<prefix>:profile:<user_id>`` = ``{seq, profile}``, written
by a Lua script so the seq check and the write are one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson
import redis
from redis.exceptions import NoScriptError

from firstmile.operators.errors import ServerError
from firstmile.state import redis_client

#: (user id, seq, profile value or None to erase)
Record = tuple[str, int, dict[str, Any] | None]

ERASED_TTL_S = 7 * 86_400

_PUT_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'seq')
if current then
  local held, seq = tonumber(current), tonumber(ARGV[1])
  if held > seq then return 0 end
  if held == seq and redis.call('HEXISTS', KEYS[1], 'erased') == 1 then return 0 end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'erased', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'profile', ARGV[2])
redis.call('HDEL', KEYS[1], 'erased')
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3])
else redis.call('PERSIST', KEYS[1]) end
return 1
"""


class ProfileStore(Protocol):
    def put_many(self, records: Sequence[Record]) -> None:
        """Write each record unless the store holds a higher seq for its user (or the
        same one, erased)."""

    def get(self, user_id: str) -> dict[str, Any] | None:
        """The user's current profile; None if unknown, erased or expired."""

    def close(self) -> None: ...


class MemoryProfileStore:
    """The in-process twin of the Redis store (same semantics, a clock for the TTLs)."""

    def __init__(
        self,
        ttl_s: int | None = None,
        *,
        erased_ttl_s: int = ERASED_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s, self.erased_ttl_s, self.clock = ttl_s, erased_ttl_s, clock
        self._held: dict[str, tuple[int, dict[str, Any] | None, float]] = {}

    def put_many(self, records: Sequence[Record]) -> None:
        now = self.clock()
        for user_id, seq, value in records:
            held = self._live(user_id, now)
            if held is not None and (held[0] > seq or (held[0] == seq and held[1] is None)):
                continue
            ttl = self.erased_ttl_s if value is None else self.ttl_s
            self._held[user_id] = (seq, value, now + ttl if ttl else float("inf"))

    def get(self, user_id: str) -> dict[str, Any] | None:
        held = self._live(user_id, self.clock())
        return held[1] if held is not None else None

    def close(self) -> None:
        pass

    def _live(self, user_id: str, now: float) -> tuple[int, dict[str, Any] | None, float] | None:
        held = self._held.get(user_id)
        if held is not None and held[2] <= now:
            del self._held[user_id]
            return None
        return held


class RedisProfileStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "firstmile",
        ttl_s: int | None = None,
        *,
        erased_ttl_s: int = ERASED_TTL_S,
    ) -> None:
        self.client, self.prefix = client, prefix
        self.ttl_s, self.erased_ttl_s = ttl_s or 0, erased_ttl_s
        self._put = client.register_script(_PUT_IF_NEWER)

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str = "firstmile",
        ttl_s: int | None = None,
        *,
        max_outage_s: float = 0.0,
    ) -> RedisProfileStore:
        """A store on ``url``; it must answer now, then rides out outages (``redis_client``)."""
        client = redis_client.connect(url, max_outage_s)
        try:
            redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            raise ServerError(f"cannot reach Redis at {url}: {exc}") from exc
        return cls(client, prefix, ttl_s)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:profile:{user_id}"

    def put_many(self, records: Sequence[Record]) -> None:
        try:
            try:
                self._pipeline(records).execute()
            except NoScriptError:  # Redis restarted after the pipeline loaded the script
                self._pipeline(records).execute()  # loads it again
        except redis.RedisError as exc:
            raise ServerError(f"Redis write failed: {exc}") from exc

    def _pipeline(self, records: Sequence[Record]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for user_id, seq, value in records:
            encoded = orjson.dumps(value) if value is not None else b""
            self._put(
                keys=[self.key(user_id)],
                args=[seq, encoded, self.ttl_s, self.erased_ttl_s],
                client=pipe,
            )
        return pipe

    def scan(self, limit: int = 100_000) -> Iterator[dict[str, Any]]:
        """Stored profiles, up to ``limit``, in no order: for aggregate views (the report
        page), not for the job."""
        batch: list[Any] = []
        seen = 0
        try:
            for key in self.client.scan_iter(match=f"{self.prefix}:profile:*", count=1000):
                batch.append(key)
                seen += 1
                if len(batch) == 500 or seen == limit:
                    yield from self._profiles(batch)
                    batch = []
                if seen == limit:
                    return
            yield from self._profiles(batch)
        except redis.RedisError as exc:
            raise ServerError(f"Redis read failed: {exc}") from exc

    def _profiles(self, keys: list[Any]) -> Iterator[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "profile")
        for raw in pipe.execute():
            if raw is not None:
                yield orjson.loads(raw)

    def get(self, user_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client.hget(self.key(user_id), "profile")
        except redis.RedisError as exc:
            raise ServerError(f"Redis read failed: {exc}") from exc
        return orjson.loads(raw) if raw is not None else None

    def close(self) -> None:
        self.client.close()
