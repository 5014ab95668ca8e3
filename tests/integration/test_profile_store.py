"""One suite for both profile stores (memory and a real Redis), and the write-behind sink."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from firstmile.operators.errors import ServerError
from firstmile.operators.outputs import Output
from firstmile.state.model_store import RECENT, MemoryModelStore, ModelStore, RedisModelStore
from firstmile.state.profile_sink import ProfileStoreSink
from firstmile.state.profile_store import (
    MemoryProfileStore,
    ProfileStore,
    Record,
    RedisProfileStore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Builds stores of one kind; ``ttl_s`` and ``erased_ttl_s`` as given."""
    made: list[ProfileStore] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(ttl_s: int | None = None, erased_ttl_s: int = 60) -> ProfileStore:
        store: ProfileStore
        if request.param == "memory":
            store = MemoryProfileStore(ttl_s, erased_ttl_s=erased_ttl_s, clock=Clock())
        else:
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            store = RedisProfileStore(client, prefix, ttl_s, erased_ttl_s=erased_ttl_s)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def value(user_id: str, seq: int, events: int = 1) -> dict[str, Any]:
    return {"schema_version": 1, "user_id": user_id, "seq": seq, "events_total": events}


def test_older_seq_never_overwrites_newer(make_store: Any) -> None:
    store = make_store()
    store.put_many([("u1", 5, value("u1", 5, 10)), ("u2", 1, value("u2", 1))])
    store.put_many([("u1", 3, value("u1", 3, 6))])  # a replay of older state
    assert store.get("u1") == value("u1", 5, 10)
    store.put_many([("u1", 5, value("u1", 5, 99))])  # the same seq, replayed: it wins, as
    assert store.get("u1")["events_total"] == 99  # the topic keeps a key's last message
    store.put_many([("u1", 7, value("u1", 7, 12))])
    assert store.get("u1") == value("u1", 7, 12)
    assert store.get("nobody") is None


def test_erasure_removes_the_profile_and_replays_cannot_bring_it_back(make_store: Any) -> None:
    store = make_store()
    store.put_many([("u1", 4, value("u1", 4))])
    store.put_many([("u1", 5, None)])
    assert store.get("u1") is None
    store.put_many([("u1", 4, value("u1", 4))])  # replayed after a crash
    assert store.get("u1") is None
    store.put_many([("u1", 5, value("u1", 5))])  # even with the erasure's own seq
    assert store.get("u1") is None
    store.put_many([("u1", 6, value("u1", 6))])  # signed up again: seq went on
    assert store.get("u1") == value("u1", 6)


def test_profile_ttl(make_store: Any) -> None:
    store = make_store(ttl_s=3600)
    store.put_many([("u1", 1, value("u1", 1))])
    assert store.get("u1") == value("u1", 1)
    if isinstance(store, RedisProfileStore):
        assert 0 < store.client.ttl(store.key("u1")) <= 3600
        store.put_many([("u1", 2, None)])
        assert 0 < store.client.ttl(store.key("u1")) <= 60  # only the erased marker, briefly
        assert store.client.hkeys(store.key("u1")) and not store.client.hget(
            store.key("u1"), "profile"
        )
    else:
        assert isinstance(store, MemoryProfileStore) and isinstance(store.clock, Clock)
        store.clock.now += 3601
        assert store.get("u1") is None


class SlowStore:
    """A memory store that takes its time and counts what it was sent."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.inner = MemoryProfileStore()
        self.delay, self.fail = delay, fail
        self.writes: list[Record] = []
        self.in_flight_max = 0
        self.gate = threading.Event()
        self.gate.set()

    def put_many(self, records: Sequence[Record]) -> None:
        self.gate.wait(5)
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("store is down")
        self.writes.extend(records)
        self.inner.put_many(records)

    def get(self, user_id: str) -> dict[str, Any] | None:
        return self.inner.get(user_id)

    def close(self) -> None:
        pass


def profile(user_id: str, seq: int) -> Output:
    return Output("profile", user_id, value(user_id, seq))


def test_write_behind_coalesces_and_snapshot_drains() -> None:
    store = SlowStore()
    store.gate.clear()  # hold the writer so updates pile up
    part = ProfileStoreSink(lambda: store, max_backlog=100).build_part("s", "profiles", None)
    part.write_batch([profile("u1", 1), profile("u2", 1), Output("segment", "u1", {"seq": 9})])
    part.write_batch([profile("u1", 3), profile("u1", 2)])
    store.gate.set()
    part.snapshot()  # the epoch barrier: everything is in the store afterwards
    assert store.get("u1") == value("u1", 3) and store.get("u2") == value("u2", 1)
    # u1's three updates cost at most two writes (the first may have left before the rest)
    assert len([r for r in store.writes if r[0] == "u1"]) <= 2
    part.write_batch([Output("profile", "u1", None, seq=4)])
    part.close()
    assert store.get("u1") is None


def test_write_behind_backlog_is_bounded() -> None:
    store = SlowStore(delay=0.05)
    part = ProfileStoreSink(lambda: store, max_backlog=2).build_part("s", "profiles", None)
    started = time.perf_counter()
    part.write_batch([profile(f"u{i}", 1) for i in range(8)])  # waits for room, never > 2
    assert time.perf_counter() - started >= 0.05
    part.close()
    assert {r[0] for r in store.writes} == {f"u{i}" for i in range(8)}


def test_a_failing_store_stops_the_flow() -> None:
    store = SlowStore(fail=True)
    part = ProfileStoreSink(lambda: store).build_part("s", "profiles", None)
    part.write_batch([profile("u1", 1)])
    with pytest.raises(ServerError, match="store is down"):
        part.snapshot()
    with pytest.raises(ServerError):
        part.write_batch([profile("u2", 1)])


def test_a_redis_restart_that_lost_the_script_mid_write_is_healed(redis_url: str) -> None:
    """A Redis restart between the pipeline loading the Lua script and running it (the
    fault bench's 60 s outage): NOSCRIPT once, then the write goes through."""
    client = redis.Redis.from_url(redis_url)
    store = RedisProfileStore(client, f"t{uuid.uuid4().hex[:8]}")
    real, lost = store._pipeline, []

    def restarted_in_between(records: Sequence[Record]) -> Any:
        pipe = real(records)
        if not lost:
            pipe.load_scripts()
            client.script_flush()  # what a restart does to loaded scripts
            pipe.scripts = set()  # the pipeline believes them loaded
            lost.append(True)
        return pipe

    store._pipeline = restarted_in_between  # type: ignore[method-assign]
    store.put_many([("u1", 1, {"user_id": "u1", "seq": 1})])
    assert lost and store.get("u1") == {"user_id": "u1", "seq": 1}


def test_an_outage_is_logged_once_when_it_starts_and_once_when_redis_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis answering with an error after an outage (NOSCRIPT: the restart lost the
    script) is Redis back too; an outage past the bound raises."""
    from redis.exceptions import ConnectionError, NoScriptError

    from firstmile.state.redis_client import OutageRetry

    answers: list[Exception] = [
        ConnectionError("down"),
        ConnectionError("down"),
        NoScriptError("x"),
    ]

    def call() -> None:
        raise answers.pop(0)

    with pytest.raises(NoScriptError):
        OutageRetry(30).call_with_retry(call, lambda error: None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("Redis unreachable (down)") and messages[1].startswith(
        "Redis is back"
    )

    def down() -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        OutageRetry(0.3).call_with_retry(down, lambda error: None)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_model_stores_keep_recent_versions_their_points_and_the_mark(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """What scorers and a resumed job read (``online_models.channel``), alike in both."""
    store: ModelStore
    if kind == "memory":
        store = MemoryModelStore()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        store = RedisModelStore(client, f"t{uuid.uuid4().hex[:8]}")
    assert store.since(0) == [] and store.reserved() == -math.inf
    assert store.publish(1, b"one", after=-math.inf) == -math.inf
    assert store.reserve(1000.25) == 1000.25
    assert store.reserve(900.0) == 1000.25  # an older mark (another process) leaves it
    assert store.publish(2, b'{"two":\n1}', after=1000.5) == 1000.5
    assert store.publish(3, b"three", after=7.0) == 1000.25  # in force after the mark
    assert store.publish(3, b"again", after=2000.0) is None  # only ever a higher version
    assert store.since(1) == [(1000.5, 2, b'{"two":\n1}'), (1000.25, 3, b"three")]
    for version in range(4, RECENT + 10):
        store.publish(version, b"v%d" % version, after=1000.0 + version)
    assert [v for _, v, _ in store.since(0)] == list(range(10, RECENT + 10))
    newest = (RECENT + 9, b"v%d" % (RECENT + 9))
    assert store.latest() == newest and store.reserved() == 1000.25
    store.restart(newest)  # a fresh run: the newest in force from the start
    assert store.since(0) == [(-math.inf, *newest)] and store.latest() == newest
    assert store.reserved() == -math.inf


def test_resuming_on_a_store_written_before_versions_had_points(redis_url: str) -> None:
    """The newest version was there before points were: a resumed job holds it as in
    force from the start, and says so in the store, so a second crash finds it too."""
    from firstmile.online_models.channel import Models
    from firstmile.online_models.snapshot import ModelSnapshot, sign

    client = redis.Redis.from_url(redis_url)
    store = RedisModelStore(client, f"t{uuid.uuid4().hex[:8]}")
    envelope = sign(ModelSnapshot(7, "2026-03-01T00:00:00.000Z"), b"key", "m1")
    store.publish(7, envelope)
    client.delete(store.recent_key)  # what an older firstmile left: the newest alone
    store.reserve(1000.0)
    resumed = Models(store, b"key", "m1")
    resumed.begin(resuming=True)
    assert store.since(0) == [(-math.inf, 7, envelope)] and store.reserved() == 1000.0
