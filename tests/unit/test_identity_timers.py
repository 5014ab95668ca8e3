"""Identity stitching and event-time timers, on their pure logic with a fake clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from firstmile.flows.simulator import Simulation
from firstmile.operators.decode import decode
from firstmile.operators.events import Event
from firstmile.operators.identity import IdentitySettings, Links, Visitor, identity_key, stitch
from firstmile.operators.timers import (
    Heartbeat,
    Pacemaker,
    Tick,
    TimerSettings,
    TimerShard,
    on_grid,
    shard_of,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def anon(minutes: float, message_id: str, user: str | None = None) -> Event:
    return Event(message_id, "page", "page_view", T0 + timedelta(minutes=minutes), user, "a1")


def test_buffered_events_are_released_once_in_event_time_order() -> None:
    visitor = Visitor()
    assert stitch(visitor, anon(20, "m2")) == ([], False)
    assert stitch(visitor, anon(10, "m1")) == ([], False)
    released, linked = stitch(visitor, anon(30, "m3", user="u1"))
    assert linked and [(e.message_id, e.user_id) for e in released] == [
        ("m1", "u1"),
        ("m2", "u1"),
        ("m3", "u1"),
    ]
    again, linked = stitch(visitor, anon(40, "m4", user="u1"))  # already linked: nothing replayed
    assert not linked and [e.message_id for e in again] == ["m4"]
    later, _ = stitch(visitor, anon(50, "m5"))
    assert [(e.message_id, e.user_id) for e in later] == [("m5", "u1")]


def test_the_buffer_is_bounded_by_count_and_age() -> None:
    settings = IdentitySettings(max_buffer=3, ttl=timedelta(hours=1))
    visitor = Visitor()
    for i in range(5):
        stitch(visitor, anon(i, f"m{i}"), settings)
    assert [e.message_id for e in visitor.buffer] == ["m2", "m3", "m4"] and visitor.dropped == 2
    stitch(visitor, anon(200, "late"), settings)  # everything older than an hour before it goes
    assert [e.message_id for e in visitor.buffer] == ["late"] and visitor.dropped == 5


def test_alias_routes_on_the_previous_id() -> None:
    alias = Event("m", "alias", "alias", T0, "u1", None, previous_id="a1")
    assert identity_key(alias) == "a1"
    assert identity_key(anon(0, "m")) == "a1"
    assert identity_key(Event("m", "track", "custom", T0, "u1", None)) is None


def test_timers_fire_in_order_and_a_new_event_supersedes_them() -> None:
    settings = TimerSettings(allowed_lateness=timedelta(0), inactivity_hours=(2,))
    shard = TimerShard(settings)
    shard.observe("u1", T0)
    shard.observe("u2", T0 + timedelta(minutes=20))
    fired = shard.observe("u2", T0 + timedelta(minutes=40))  # u1's session ended at +30
    assert [(t.user_id, t.kind, t.due) for t in fired] == [
        ("u1", "session_end", T0 + timedelta(minutes=30))
    ]
    fired = shard.observe("u3", T0 + timedelta(days=40))
    assert [(t.user_id, t.kind) for t in fired] == [
        ("u2", "session_end"),  # due at +70 min
        ("u1", "inactive"),  # +2 h
        ("u2", "inactive"),  # +2 h 40
        ("u1", "idle"),
        ("u2", "idle"),
    ]
    assert set(shard.users) == {"u3"}  # idle users' timers are gone with them


def test_the_slowest_partition_holds_the_watermark_back() -> None:
    shard = TimerShard(TimerSettings(allowed_lateness=timedelta(0)))
    shard.observe("u1", T0, source="events#0")
    assert shard.observe("u2", T0 + timedelta(hours=5), source="events#1") == []  # #0 may lag
    fired = shard.observe("u3", T0 + timedelta(hours=5), source="events#0")
    assert [(t.user_id, t.kind) for t in fired] == [("u1", "session_end")]
    assert shard.observe("u4", T0 + timedelta(hours=6), source="events#1") == []
    # End of input: every partition was read to its end, so the newest time counts.
    assert [(t.user_id, t.kind) for t in shard.finish()] == [
        ("u2", "session_end"),
        ("u3", "session_end"),
    ]


def test_erasure_forgets_pending_timers_and_state_survives_a_restore() -> None:
    settings = TimerSettings(allowed_lateness=timedelta(0))
    shard = TimerShard(settings)
    shard.observe("u1", T0)
    shard.observe("u2", T0)
    shard.forget("u1")
    restored = TimerShard.restore(settings, shard.state())
    fired = restored.observe("u3", T0 + timedelta(hours=1))
    assert [(t.user_id, t.kind) for t in fired] == [("u2", "session_end")]


def _simulated_events() -> list[tuple[str, datetime]]:
    out = []
    for line in Simulation(users=120, days=5, seed=3, malformed_rate=0).lines():
        ev = decode(line)
        if isinstance(ev, Event):
            out.append((ev.user_id or "anon:" + (ev.anonymous_id or ""), ev.timestamp))
    return out


def _fired_key(tick: Tick) -> tuple[str, str, int, datetime]:
    return tick.user_id, tick.kind, tick.hours, tick.due


def test_replay_at_full_speed_fires_what_living_through_it_fires() -> None:
    """The same stream, once as fast as possible and once on a clock that walks through
    it minute by minute (live: wall-clock watermark); the same timers fire, at the same
    event times, up to where the replay's watermark ends."""
    events = _simulated_events()
    lateness = timedelta(minutes=5)
    shards = 8

    def shards_for(wall_clock: bool) -> dict[str, TimerShard]:
        settings = TimerSettings(allowed_lateness=lateness, wall_clock=wall_clock, shards=shards)
        return {f"shard-{i}": TimerShard(settings) for i in range(shards)}

    replay = shards_for(False)
    replayed: list[Tick] = []
    for user, when in events:
        replayed += replay[shard_of(user, shards)].observe(user, when)

    live = shards_for(True)
    lived: list[Tick] = []
    clock = events[0][1]
    for user, when in events:
        while clock + timedelta(minutes=1) < when:  # time passes between events
            clock += timedelta(minutes=1)
            for shard in live.values():
                lived += shard.advance(clock)
        clock = max(clock, when)
        lived += live[shard_of(user, shards)].observe(user, when, now=clock)

    # Compare up to where every replay shard's watermark got (the live clock went further).
    horizon = min(shard.watermark for shard in replay.values()) - lateness.total_seconds()
    replay_set = {_fired_key(t) for t in replayed if t.due.timestamp() <= horizon}
    live_set = {_fired_key(t) for t in lived if t.due.timestamp() <= horizon}
    assert len(replay_set) > 500
    assert {kind for _, kind, _, _ in replay_set} >= {"session_end", "inactive"}
    assert replay_set == live_set


def test_a_quiet_shard_moves_on_when_it_hears_a_heartbeat() -> None:
    settings = TimerSettings(allowed_lateness=timedelta(0))
    quiet = TimerShard(settings)
    quiet.observe("u1", T0, source="events#0")
    pace = Pacemaker(shards=4, interval_s=60)
    beats = pace.beats([("events#0", (T0 + timedelta(hours=1)).timestamp(), "u9")])
    assert len(beats) == 4 and {b.shard for b in beats} == {f"shard-{i}" for i in range(4)}
    assert [(t.user_id, t.kind) for t in quiet.hear(beats[0])] == [("u1", "session_end")]
    # A partition first heard of is news; the slowest partition holds the shard back.
    lagging = pace.beats([("events#1", (T0 + timedelta(minutes=5)).timestamp(), "u9")])
    assert quiet.hear(lagging[0]) == []
    assert quiet.watermark == (T0 + timedelta(minutes=5)).timestamp()
    # Any partition that moved a minute on is news too, not only the slowest one.
    assert pace.beats([("events#0", (T0 + timedelta(minutes=60.5)).timestamp(), "u9")]) == []
    assert len(pace.beats([("events#0", (T0 + timedelta(minutes=61)).timestamp(), "u9")])) == 4


def test_one_event_stamped_now_does_not_make_a_replay_live() -> None:
    """Kafka mode replaying March: an event stamped with the wall clock's time used to set
    ``live`` and let the wall clock fire every timer; now the partition's time decides."""
    settings = TimerSettings(allowed_lateness=timedelta(minutes=5), wall_clock=True)
    shard = TimerShard(settings)
    now = T0 + timedelta(days=200)
    for minute in range(300):  # a busy March partition
        shard.observe(f"u{minute % 7}", T0 + timedelta(minutes=minute), source="p0", now=now)
    fired = shard.observe("phone", now, source="p0", now=now)
    fired += shard.advance(now)
    assert not shard.live
    assert all(tick.due <= T0 + timedelta(minutes=300) for tick in fired)
    assert shard.watermark < (T0 + timedelta(hours=6)).timestamp()


def test_an_erasure_takes_the_anonymous_ids_link_with_it() -> None:
    """After "User Deleted" for u1 from device a1, a1's later anonymous events are no
    longer attributed to u1: the link (a1 -> u1) was personal data of u1's."""
    from dataclasses import replace

    from firstmile.flows.config import load_config
    from firstmile.flows.dataflow import IdentityLogic
    from firstmile.flows.run import flow_settings

    logic = IdentityLogic(flow_settings(load_config(None), profile_updates="none"), None)
    out, _ = logic.on_batch([anon(0, "m0"), anon(1, "m1", user="u1")])
    assert [e.user_id for e in out] == ["u1", "u1"]  # stitched
    erased = replace(anon(2, "m2", user="u1"), kind="user_erased")
    assert logic.on_batch([erased])[0] == [erased]
    out, _ = logic.on_batch([anon(3, "m3")])
    assert out == [] and logic.snapshot().user_id is None  # waits for an identify again


def test_the_last_heartbeat_is_the_same_however_the_input_is_cut_into_batches() -> None:
    """At the end of the input the shards know what the last heartbeat said, and fire the
    deadlines before it: a file run and a Kafka run of one stream must fire the same.
    Batches reach the pacemaker grouped by user, not in time order, and a sparse stream's
    batch spans many hours; the heartbeat's marks are on a grid of the interval."""
    import random

    rng = random.Random(5)
    start = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    events = sorted(
        (start + rng.uniform(0, 20 * 3600), f"u{rng.randrange(40)}") for _ in range(800)
    )
    # The evening: one user still active, every 10 minutes, six hours on.
    events += [(start + 20 * 3600 + 600 * i + 17, "a-late") for i in range(1, 37)]

    def last_beat(batch_size: int) -> dict[str, float]:
        pace, marks = Pacemaker(shards=4, interval_s=60), dict[str, float]()
        for i in range(0, len(events), batch_size):
            batch = sorted(events[i : i + batch_size], key=lambda e: e[1])  # by user, as keyed
            beats = pace.beats([("p#0", seconds, user) for seconds, user in batch])
            marks = beats[0].marks if beats else marks
        return marks

    newest = events[-1][0]
    cuts = {size: last_beat(size) for size in (37, 250, 500, 836)}
    assert all(on_grid(marks["p#0"], 60) == on_grid(newest, 60) for marks in cuts.values()), cuts
    # The shards fire what is due before that line, so they all fire the same: a session
    # that ends well before it, and not one that ends between it and the newest time.
    gap = 1800.0
    settings = TimerSettings(session_gap=timedelta(seconds=gap), allowed_lateness=timedelta(0))
    line = on_grid(newest, 60)
    assert newest - line > 2
    fired = set()
    for marks in cuts.values():
        shard = TimerShard(settings, marks={"p#0": float("-inf")}, paced=True)
        for user, last in (("early", line - gap - 600), ("edge", line + 1 - gap)):
            shard.observe(user, datetime.fromtimestamp(last, UTC), source="p#0")
        ticks = [*shard.hear(Heartbeat("shard-0", marks)), *shard.finish()]
        ended = [t.user_id for t in ticks if t.kind == "session_end"]
        fired.add(tuple(sorted(ended)))
    assert fired == {("early",)}, fired


def test_events_of_a_link_already_made_skip_the_identity_step(monkeypatch: Any) -> None:
    """Once a device is linked, events with both its ids pass the identity step by (its
    state would not change); the first link, anonymous-only events and the erasure still
    go through it, and the outputs are those of a flow where every event goes."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from firstmile.flows.config import load_config
    from firstmile.flows.dataflow import IdentityLogic, personalize
    from firstmile.flows.run import flow_settings

    stream = [
        anon(0, "m0"),
        anon(1, "m1", user="u1"),  # links a1 -> u1
        *(anon(2 + i, f"m{2 + i}", user="u1") for i in range(6)),  # settled
        anon(9, "m9"),  # anonymous-only: goes, and is attributed
        replace(anon(10, "m10", user="u1"), kind="user_erased"),  # goes
        anon(11, "m11"),  # no longer u1's
    ]
    seen: list[str] = []
    on_batch = IdentityLogic.on_batch

    def counted(self: IdentityLogic, values: list[Any]) -> Any:
        seen.extend(getattr(value, "message_id", "forget") for value in values)
        return on_batch(self, values)

    def run() -> list[tuple[str, str | None, Any]]:
        seen.clear()
        flow, out = Dataflow("links"), list[Any]()
        events = op.input("in", flow, TestingSource(stream, batch_size=1))
        settings = flow_settings(load_config(None), profile_updates="none")
        op.output("out", personalize(events, settings), TestingSink(out))
        run_main(flow)
        return sorted(
            (o.kind, o.key, {k: v for k, v in (o.value or {}).items() if k != "processed_at"})
            for o in out
            if hasattr(o, "kind")
        )

    monkeypatch.setattr(IdentityLogic, "on_batch", counted)
    skipping = run()
    assert seen == ["m0", "m1", "m9", "m10", "forget", "m11"]
    monkeypatch.setattr(Links, "settled", lambda self, event: False)
    assert run() == skipping
    assert seen == [f"m{i}" for i in range(8)] + ["m9", "m10", "forget", "m11"]
