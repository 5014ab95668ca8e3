"""Redis: every user's current profile, written behind the flow in pipelines.

A profile lives at ``<prefix>:profile:<user_id>`` as a hash ``{seq, profile}``. Writes go
through a small Lua script that keeps the higher ``seq``, so a replay after a crash never
puts an older profile over a newer one.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.config import FirstmileConfig
from operators.errors import ServerError
from operators.outputs import Output

_PUT_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'seq')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'profile', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def profile_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:profile:{user_id}"


def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServerError(f"cannot reach Redis at {url}: {exc}") from exc
    return client


def read_profile(client: redis.Redis, prefix: str, user_id: str) -> dict[str, Any] | None:
    raw = client.hget(profile_key(prefix, user_id), "profile")
    return orjson.loads(raw) if raw is not None else None


class _RedisPartition(StatelessSinkPartition[Output]):
    def __init__(self, config: FirstmileConfig) -> None:
        self._client = connect(config.redis.url)
        self._put = self._client.register_script(_PUT_IF_NEWER)
        self._prefix = config.redis.key_prefix
        self._ttl = config.redis.profile_ttl_s or 0

    def write_batch(self, items: list[Output]) -> None:
        latest: dict[str, Output] = {}  # one write per user per batch: the highest seq
        for item in items:
            if item.kind != "profile" or item.key is None:
                continue
            held = latest.get(item.key)
            if (
                held is None
                or held.value is None
                or item.value is None
                or item.value["seq"] > held.value["seq"]
            ):
                latest[item.key] = item
        if not latest:
            return
        started = time.perf_counter()
        pipe = self._client.pipeline(transaction=False)
        for user_id, item in latest.items():
            key = profile_key(self._prefix, user_id)
            if item.value is None:
                pipe.delete(key)
            else:
                self._put(
                    keys=[key],
                    args=[item.value["seq"], orjson.dumps(item.value), self._ttl],
                    client=pipe,
                )
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise ServerError(f"Redis write failed: {exc}") from exc
        metrics.REDIS_WRITE.observe(time.perf_counter() - started)

    def close(self) -> None:
        self._client.close()


class RedisProfileSink(DynamicSink[Output]):
    """Each user's newest profile into Redis (higher seq wins)."""

    def __init__(self, config: FirstmileConfig) -> None:
        self.config = config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.config)
