"""The Redis profile sink on a real server: the higher seq wins, tombstones delete, TTL."""

from __future__ import annotations

import uuid

import redis

from flows.config import load_config
from operators.outputs import Output
from state.redis_store import RedisProfileSink, profile_key, read_profile


def profile(user_id: str, seq: int, events: int) -> Output:
    return Output(
        "profile",
        user_id,
        {"schema_version": 1, "user_id": user_id, "seq": seq, "events_total": events},
    )


def partition(redis_url: str, prefix: str, ttl: int | None = None):  # type: ignore[no-untyped-def]
    config = load_config(None).model_copy(
        update={
            "redis": load_config(None).redis.model_copy(
                update={"url": redis_url, "key_prefix": prefix, "profile_ttl_s": ttl}
            )
        }
    )
    return RedisProfileSink(config).build("redis", 0, 1)


def test_older_seq_never_overwrites_newer(redis_url: str, redis_client: redis.Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    sink = partition(redis_url, prefix)
    sink.write_batch([profile("u1", 5, 10), profile("u2", 1, 1)])
    sink.write_batch([profile("u1", 3, 6)])  # a replay of older state
    assert read_profile(redis_client, prefix, "u1")["seq"] == 5  # type: ignore[index]
    sink.write_batch([profile("u1", 7, 12), profile("u1", 6, 11)])  # newest in a batch wins
    stored = read_profile(redis_client, prefix, "u1")
    assert stored is not None and (stored["seq"], stored["events_total"]) == (7, 12)
    sink.write_batch([Output("profile", "u2", None)])
    assert read_profile(redis_client, prefix, "u2") is None
    sink.write_batch([Output("segment", "u3", {"seq": 1})])  # not a profile: ignored
    assert read_profile(redis_client, prefix, "u3") is None
    sink.close()


def test_profile_ttl(redis_url: str, redis_client: redis.Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    sink = partition(redis_url, prefix, ttl=3600)
    sink.write_batch([profile("u1", 1, 1)])
    assert 0 < redis_client.ttl(profile_key(prefix, "u1")) <= 3600
    sink.close()
