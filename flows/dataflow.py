"""The firstmile dataflow, wired once from pure steps; sources and sinks are arguments.

input ─► decode+privacy ─┬─ dead letters ──────────────────────────────────────────┐
                         └─ consent gate ─► identity (by anonymous id) ─► timers    │
                              (by user-hash shard) ─► profile (by user) ─► outputs ─┴─► sinks
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from flows import metrics
from operators.decode import Decoder
from operators.dedup import RecentIds
from operators.events import DeadLetter, Event, RawRecord
from operators.eventtime import utc_now
from operators.features import profile_message, time_to_complete_s
from operators.identity import IdentitySettings, Visitor, identity_key, stitch
from operators.outputs import Output, dead_letter_message
from operators.population import Population
from operators.profile import (
    DEFAULT_SETTINGS,
    DUPLICATE,
    ProfileSettings,
    UserProfile,
    apply_event,
    compact,
    erase,
)
from operators.timers import Heartbeat, Pacemaker, Tick, TimerSettings, TimerShard, shard_of

ANONYMOUS_PREFIX = "anon:"
#: Event time the source must move on before quiet timer shards hear of it (a heartbeat
#: goes to every shard: 64 items, at most once per batch).
HEARTBEAT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class FlowSettings:
    """What the steps need besides their input; built from the config by the run modes."""

    decoder: Decoder
    dedup_capacity: int = 64
    dedup_window: timedelta = timedelta(hours=24)
    #: Emit the user's profile after each batch that changed it (for the Redis store).
    profile_updates: bool = False
    profile: ProfileSettings = DEFAULT_SETTINGS
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    timers: TimerSettings = field(default_factory=TimerSettings)
    now: Callable[[], datetime] = field(default=utc_now)
    #: One per worker process: population statistics for imputation and clipping.
    population: Population = field(default_factory=Population)


def user_key(event: Event) -> str:
    """The profile key: the product's user id (every event has one after stitching)."""
    return event.user_id if event.user_id else ANONYMOUS_PREFIX + (event.anonymous_id or "")


class IdentityLogic(StatefulBatchLogic[Event, Event, Visitor]):
    """Bytewax glue around ``operators.identity``: one instance per anonymous id."""

    def __init__(self, settings: FlowSettings, resume: Visitor | None) -> None:
        self.settings = settings
        self.visitor = resume

    def on_batch(self, values: list[Event]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        for event in values:
            visitor = self.visitor
            if visitor is None:
                visitor = self.visitor = Visitor()
                if not event.user_id:
                    metrics.USERS.labels("anonymous").inc()
            dropped = visitor.dropped
            released, linked = stitch(visitor, event, self.settings.identity)
            if linked:
                metrics.STITCHED.inc()
            if visitor.dropped != dropped:
                metrics.STITCH_DROPPED.inc(visitor.dropped - dropped)
            out.extend(released)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Event], bool]:
        if self.visitor is not None and self.visitor.user_id is None:
            metrics.UNIDENTIFIED.inc()  # no profile for them, but counted
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Visitor:
        assert self.visitor is not None
        return self.visitor


class TimerLogic(StatefulBatchLogic[Event | Heartbeat, Event | Tick, Any]):
    """One timer shard: passes events through, with the ticks they (or the clock) cause."""

    def __init__(self, settings: FlowSettings, resume: Any) -> None:
        self.settings = settings
        timers = settings.timers
        self.shard = TimerShard.restore(timers, resume) if resume else TimerShard(timers)
        self.live = timers.wall_clock

    def on_batch(self, values: list[Event | Heartbeat]) -> tuple[list[Event | Tick], bool]:
        shard = self.shard
        now = self.settings.now() if self.live else None
        out: list[Event | Tick] = []
        events = [value for value in values if isinstance(value, Event)]
        # Upstream keyed steps emit a batch grouped by their keys; event time is the order
        # that timers must see, or one user's later events fire another's timers early.
        for event in sorted(events, key=_event_time):
            assert event.user_id is not None
            partition = _partition(event)
            out.extend(shard.observe(event.user_id, event.timestamp, source=partition, now=now))
            if event.kind == "user_erased":
                shard.forget(event.user_id)
            out.append(event)
        for value in values:  # heartbeats cover the events before them: after the events
            if isinstance(value, Heartbeat):
                out.extend(shard.hear(value, now))
        out.extend(shard.advance(now))  # what became due behind events of skewed partitions
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Event | Tick], bool]:
        return list(self.shard.advance(self.settings.now())), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Event | Tick], bool]:
        return list(self.shard.finish()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # Live, the wall clock moves the watermark even when no event comes.
        return self.settings.now() + timedelta(seconds=1) if self.live else None

    def snapshot(self) -> Any:
        return self.shard.state()


class ProfileLogic(StatefulBatchLogic[Event | Tick, Output, UserProfile]):
    """Bytewax glue around ``operators.profile``: one instance per user."""

    def __init__(self, settings: FlowSettings, resume: UserProfile | None) -> None:
        self.settings = settings
        self.profile = resume

    def _new(self, user_id: str) -> UserProfile:
        settings = self.settings
        return UserProfile(
            user_id, recent_ids=RecentIds(settings.dedup_capacity, settings.dedup_window)
        )

    def on_batch(self, values: list[Event | Tick]) -> tuple[list[Output], bool]:
        settings = self.settings
        now = settings.now()
        outputs: list[Output] = []
        changed = False
        for item in values:
            if isinstance(item, Tick):
                if self.profile is None:
                    continue
                changed |= self._on_tick(item)
                continue
            profile = self.profile
            last_seq = profile.seq if profile is not None else 0
            if profile is not None and profile.erased_at is not None:
                if item.kind != "signup" or item.timestamp <= profile.erased_at:
                    metrics.SUPPRESSED.labels("erased").inc()
                    continue
                profile = None  # a new signup after erasure starts afresh
            if item.kind == "user_erased":
                self.profile, tombstones = erase(user_key(item), item, seq=last_seq)
                metrics.ERASURES.inc()
                outputs.extend(tombstones)
                changed = False
                continue
            if profile is None:
                profile = self.profile = self._new(user_key(item))
                profile.seq = last_seq  # seq goes on across an erasure
                if not last_seq:
                    metrics.USERS.labels("known").inc()
            result = apply_event(profile, item, processed_at=now, settings=settings.profile)
            if result is DUPLICATE:
                metrics.DUPLICATES.inc()
                continue
            if item.traits:
                settings.population.observe_traits(profile.traits)
            if item.kind == "onboarding_completed":
                to_complete = time_to_complete_s(profile)
                if to_complete is not None:
                    settings.population.observe_duration("onboarding_s", to_complete)
            changed = True
            metrics.EVENTS.labels(item.kind).inc()
            outputs.extend(result)
        if self.profile is None:  # only stale timers for a user we no longer hold
            return outputs, StatefulBatchLogic.DISCARD
        if changed and settings.profile_updates and self.profile.known:
            outputs.append(self._message(now))
        return outputs, StatefulBatchLogic.RETAIN

    def _on_tick(self, tick: Tick) -> bool:
        """Apply a timer; whether it changed the profile. Stale timers change nothing."""
        profile = self.profile
        assert profile is not None
        if profile.erased_at is not None or profile.last_seen is None:
            return False
        if tick.last_seen < profile.last_seen:
            return False  # the user was active since; a newer timer is pending
        metrics.TIMERS.labels(tick.kind).inc()
        if profile.as_of is None or tick.due > profile.as_of:
            profile.as_of = tick.due
        if tick.kind == "session_end":
            length = profile.sessions.newest_length()
            if length is not None:
                self.settings.population.observe_duration("session_s", length)
        elif tick.kind == "inactive":
            profile.inactive_hours = max(profile.inactive_hours, tick.hours)
        elif tick.kind == "idle":
            compact(profile)
        profile.seq += 1
        return True

    def _message(self, now: datetime, *, final: bool = False) -> Output:
        assert self.profile is not None
        settings = self.settings
        return profile_message(
            self.profile,
            now,
            population=settings.population,
            settings=settings.profile,
            final=final,
        )

    def on_eof(self) -> tuple[list[Output], bool]:
        profile = self.profile
        if profile is not None and profile.known and profile.erased_at is None:
            return [self._message(self.settings.now(), final=True)], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> UserProfile:
        assert self.profile is not None  # a key gets logic only once it has an event
        return self.profile


def personalize(events: Stream[Event], settings: FlowSettings) -> Stream[Output]:
    """Accepted events to outputs: consent gate, identity, timers, profile (and, later,
    scoring and decisions). The stateful heart of the job, also what bench/ measures."""
    privacy = settings.decoder.privacy

    def consented(event: Event) -> bool:
        if event.kind == "user_erased" or privacy.allowed(event.consent):
            return True
        metrics.SUPPRESSED.labels("no_consent").inc()
        return False

    def needs_stitching(event: Event) -> bool:
        return identity_key(event) is not None

    def visitor_key(event: Event) -> str:
        key = identity_key(event)
        assert key is not None
        return key

    def by_shard(item: Event | Heartbeat) -> str:
        if isinstance(item, Heartbeat):
            return item.shard
        return shard_of(user_key(item), settings.timers.shards)

    pacemaker = Pacemaker(settings.timers.shards, HEARTBEAT_INTERVAL_S)

    def with_heartbeats(batch: list[Event]) -> list[Event | Heartbeat]:
        seen = [(_partition(event), event.timestamp.timestamp()) for event in batch]
        return [*batch, *pacemaker.beats(seen)]

    def by_user(item: Event | Tick) -> str:
        return item.user_id if isinstance(item, Tick) else user_key(item)

    allowed = op.filter("consent_gate", events, consented)
    routes = op.branch("needs_stitching", allowed, needs_stitching)
    visitors = op.key_on("key_by_visitor", routes.trues, visitor_key)
    stitched = op.stateful_batch(
        "identity", visitors, lambda resume: IdentityLogic(settings, resume)
    )
    identified = op.merge("identified", routes.falses, op.map("unkey_identity", stitched, _value))
    paced = op.flat_map_batch("heartbeats", identified, with_heartbeats)
    sharded = op.key_on("key_by_shard", paced, by_shard)
    timed = op.stateful_batch("timers", sharded, lambda resume: TimerLogic(settings, resume))
    keyed = op.key_on("key_by_user", op.map("unkey_timers", timed, _value), by_user)
    profiled = op.stateful_batch("profile", keyed, lambda resume: ProfileLogic(settings, resume))
    return op.map("unkey", profiled, _value)


def build_flow(
    source: Source[RawRecord], sinks: Sequence[Sink[Any]], settings: FlowSettings
) -> Dataflow:
    """The whole job: ``source`` in, every output to each of ``sinks``."""
    decoder = settings.decoder

    def decode(record: RawRecord) -> Event | DeadLetter:
        metrics.EVENTS_IN.inc()
        result = decoder(record.value, record.source)
        if isinstance(result, DeadLetter):
            metrics.DEAD_LETTERS.labels(result.reason).inc()
        return result

    def is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
        return isinstance(item, Event)

    def dead_letter_output(dead: Any) -> Output:
        return dead_letter_message(dead, settings.now())

    def count(output: Output) -> None:
        metrics.OUTPUTS.labels(output.label).inc()

    flow = Dataflow("firstmile")
    raw = op.input("input", flow, source)
    decoded = op.map("decode", raw, decode)
    split = op.branch("split_dead_letters", decoded, is_event)
    dead = op.map("dead_letter", split.falses, dead_letter_output)
    personalized = personalize(split.trues, settings)
    outputs = op.merge("outputs", dead, personalized)
    op.inspect("count_outputs", outputs, lambda _step, output: count(output))
    keyed_outputs = None
    for index, sink in enumerate(sinks):
        name = f"sink_{index}_{type(sink).__name__}"
        if isinstance(sink, FixedPartitionedSink):
            if keyed_outputs is None:
                keyed_outputs = op.key_on("key_outputs", outputs, _output_key)
            op.output(name, keyed_outputs, sink)
        else:
            op.output(name, outputs, sink)
    return flow


def _output_key(output: Output) -> str:
    return output.key or ""


def _partition(event: Event) -> str:
    source = event.source
    return f"{source.topic}#{source.partition}" if source else ""


def _event_time(event: Event) -> datetime:
    return event.timestamp


def _value(keyed: tuple[str, Any]) -> Any:
    return keyed[1]
