"""The firstmile dataflow, wired once from pure steps; sources and sinks are arguments.

input ─► decode+privacy ─┬─ dead letters ──────────────────────────────────────────┐
                         └─ consent gate ─► identity (by anonymous id) ─► timers    │
                              (by user-hash shard) ─► profile (by user) ─► outputs ─┴─► sinks
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from firstmile.online_models.channel import Models
from firstmile.online_models.learner import Learner, LearnerSettings
from firstmile.operators import telemetry
from firstmile.operators.decisions import (
    attributes,
    decide,
    label_on_return,
    outcomes,
    remember_decision,
    trigger_message,
)
from firstmile.operators.decode import Decoder
from firstmile.operators.dedup import RecentIds
from firstmile.operators.errors import ModelError
from firstmile.operators.events import DeadLetter, Event, RawRecord
from firstmile.operators.eventtime import utc_now
from firstmile.operators.experiments import Experiments, Outcome, Tally
from firstmile.operators.features import LazyFeatures, features, profile_message, time_to_complete_s
from firstmile.operators.identity import IdentitySettings, Visitor, identity_key, stitch
from firstmile.operators.outputs import Output, dead_letter_message
from firstmile.operators.paths import PathMap
from firstmile.operators.profile import (
    DEFAULT_SETTINGS,
    DUPLICATE,
    ProfileSettings,
    UserProfile,
    apply_event,
    compact,
    erase,
)
from firstmile.operators.rules import RuleBook
from firstmile.operators.samples import Observation, Return, Sample
from firstmile.operators.timers import (
    Heartbeat,
    Pacemaker,
    Tick,
    TimerSettings,
    TimerShard,
    shard_of,
)
from firstmile.state.experiment_store import ExperimentStore, MemoryExperimentStore
from firstmile.state.shutdown import fatal_on_server_error

log = logging.getLogger(__name__)

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
    #: The model channel (store + signing key); the learner's knobs; the churn horizon.
    models: Models = field(default_factory=Models)
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    #: Between decision points, a changed user is rescored at most this often (event time).
    rescore_every: timedelta = timedelta(hours=1)
    #: Onboarding paths (config/paths.toml), trigger rules, experiments and their tallies.
    paths: PathMap = field(default_factory=PathMap.load)
    rules: RuleBook = field(default_factory=RuleBook.load)
    experiments: Experiments = field(default_factory=Experiments.load)
    experiment_store: ExperimentStore = field(default_factory=MemoryExperimentStore)
    #: A user's profile goes to the store at most this often (wall clock).
    update_every: timedelta = timedelta(seconds=1)
    #: Every source partition, when known: a shard waits to hear from each before its
    #: watermark moves (Kafka partitions are not all read from the first batch on).
    source_partitions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The timer shards fire the rules' absence deadlines and the outcomes' maturity.
        timers = replace(
            self.timers,
            absences=self.rules.absences(),
            outcomes=self.experiments.outcome_deadlines(),
        )
        object.__setattr__(self, "timers", timers)


def user_key(event: Event) -> str:
    """The profile key: the product's user id (every event has one after stitching)."""
    return event.user_id if event.user_id else ANONYMOUS_PREFIX + (event.anonymous_id or "")


class IdentityLogic(StatefulBatchLogic[Event, Event, Visitor]):
    """Bytewax glue around ``firstmile.operators.identity``: one instance per anonymous id."""

    def __init__(self, settings: FlowSettings, resume: Visitor | None) -> None:
        self.settings = settings
        self.visitor = resume

    def on_batch(self, values: list[Event]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        for event in values:
            if event.kind == "user_erased":
                # The anonymous id's link to the user and its buffer go with the user.
                self.visitor = Visitor()
                out.append(event)
                continue
            visitor = self.visitor
            if visitor is None:
                visitor = self.visitor = Visitor()
                if not event.user_id:
                    telemetry.USERS.labels("anonymous").inc()
            dropped = visitor.dropped
            released, linked = stitch(visitor, event, self.settings.identity)
            if linked:
                telemetry.STITCHED.inc()
            if visitor.dropped != dropped:
                telemetry.STITCH_DROPPED.inc(visitor.dropped - dropped)
            out.extend(released)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Event], bool]:
        if self.visitor is not None and self.visitor.user_id is None:
            telemetry.UNIDENTIFIED.inc()  # no profile for them, but counted
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Visitor:
        assert self.visitor is not None
        return self.visitor


class TimerLogic(StatefulBatchLogic[Event | Heartbeat, Event | Tick, Any]):
    """One timer shard: passes events through, with the ticks they (or the clock) cause."""

    def __init__(self, settings: FlowSettings, resume: Any) -> None:
        self.settings = settings
        timers = settings.timers
        self.shard = (
            TimerShard.restore(timers, resume, paced=True)
            if resume
            else TimerShard(
                timers,
                marks=dict.fromkeys(settings.source_partitions, float("-inf")),
                paced=True,
            )
        )
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
            signup = event.kind == "signup"
            out.extend(
                shard.observe(
                    event.user_id,
                    event.timestamp,
                    source=partition,
                    now=now,
                    signup=signup,
                    kind=event.kind,
                    properties=event.properties,
                )
            )
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


Emitted = Output | Sample | Return | Observation | Outcome  # what the profile step sends on


class ProfileLogic(StatefulBatchLogic[Event | Tick, Emitted, UserProfile]):
    """Bytewax glue around ``operators.profile`` and ``operators.decisions``: one per user."""

    def __init__(self, settings: FlowSettings, resume: UserProfile | None) -> None:
        self.settings = settings
        self.profile = resume
        self.rendered_at: datetime | None = None  # when the store last got this profile

    def _new(self, user_id: str) -> UserProfile:
        settings = self.settings
        return UserProfile(
            user_id, recent_ids=RecentIds(settings.dedup_capacity, settings.dedup_window)
        )

    def on_batch(self, values: list[Event | Tick]) -> tuple[list[Emitted], bool]:
        settings = self.settings
        now = settings.now()
        out: list[Emitted] = []
        changed = False
        listened = settings.rules.triggers
        for item in values:
            if isinstance(item, Tick):
                if self.profile is not None:
                    changed |= self._on_tick(item, now, out)
                continue
            profile = self.profile
            last_seq = profile.seq if profile is not None else 0
            if profile is not None and profile.erased_at is not None:
                if item.kind != "signup" or item.timestamp <= profile.erased_at:
                    telemetry.SUPPRESSED.labels("erased").inc()
                    continue
                profile = None  # a new signup after erasure starts afresh
            if item.kind == "user_erased":
                self.profile, tombstones = erase(user_key(item), item, seq=last_seq)
                telemetry.ERASURES.inc()
                out.extend(tombstones)
                changed = False
                continue
            if profile is None:
                profile = self.profile = self._new(user_key(item))
                profile.seq = last_seq  # seq goes on across an erasure
                if not last_seq:
                    telemetry.USERS.labels("known").inc()
            reasons = apply_event(profile, item, processed_at=now, settings=settings.profile)
            if reasons is DUPLICATE:
                telemetry.DUPLICATES.inc()
                continue
            changed = True
            telemetry.child(telemetry.EVENTS, item.kind).inc()
            # Snapshots from before ``received`` existed lack it: read it softly.
            received: float = getattr(item.source, "received", 0.0) if item.source else 0.0
            if received:
                telemetry.LATENCY.observe(max(0.0, now.timestamp() - received))
            self._observe_population(item, out)
            returned = label_on_return(profile, item.timestamp)
            if returned is not None:
                out.append(returned)
            if "signup" in reasons and not profile.arms:
                self._assign(out, item)
            vector = None
            if reasons:
                vector, reasons = self._decide(out, now, reasons, item.timestamp, item.message_id)
            if reasons or item.kind in listened:
                triggers = [item.kind, *reasons]
                self._act(out, now, triggers, item.timestamp, item.message_id, vector, item)
        if self.profile is None:  # only stale timers for a user we no longer hold
            return out, StatefulBatchLogic.DISCARD
        profile = self.profile
        if changed and profile.known and profile.erased_at is None:
            vector = None
            as_of = profile.as_of or now
            if profile.scored_at is None or as_of - profile.scored_at >= settings.rescore_every:
                vector, found = self._decide(out, now, [], as_of, None)  # a change of mind?
                if found:
                    self._act(out, now, found, as_of, None, vector, signal=found[0])
            if settings.profile_updates:
                self._update_store(out, now, vector)
        return out, StatefulBatchLogic.RETAIN

    def _update_store(
        self, out: list[Emitted], now: datetime, vector: dict[str, float] | None
    ) -> None:
        """The profile for the store, at most every ``update_every`` per user: a user busy
        within that time gets one update when it is over (``notify_at``), not one per batch.
        ``pending_update`` is state, so a snapshot taken in between still gets it out."""
        profile = self.profile
        assert profile is not None
        gap = self.settings.update_every
        if self.rendered_at is not None and now - self.rendered_at < gap:
            profile.pending_update = True
            return
        self._send_update(out, now, vector)

    def _send_update(
        self, out: list[Emitted], now: datetime, vector: dict[str, float] | None = None
    ) -> None:
        assert self.profile is not None
        out.append(self._message(now, vector))
        self.profile.pending_update = False
        self.rendered_at = now

    def notify_at(self) -> datetime | None:
        profile = self.profile
        if profile is None or not profile.pending_update:
            return None
        return (self.rendered_at or self.settings.now()) + self.settings.update_every

    def on_notify(self) -> tuple[list[Emitted], bool]:
        out: list[Emitted] = []
        profile = self.profile
        if profile is not None and profile.pending_update and profile.erased_at is None:
            self._send_update(out, self.settings.now())
        return out, StatefulBatchLogic.RETAIN

    def _observe_population(self, event: Event, out: list[Emitted]) -> None:
        """What this user shows of the population, for the learner: it publishes what
        features impute and clip with, with the models."""
        profile = self.profile
        assert profile is not None
        if event.traits and profile.traits:
            out.append(Observation(traits=dict(profile.traits)))
        if event.kind == "onboarding_completed":
            to_complete = time_to_complete_s(profile)
            if to_complete is not None:
                out.append(Observation(kind="onboarding_s", seconds=to_complete))

    def _decide(
        self,
        out: list[Emitted],
        now: datetime,
        reasons: list[str],
        at: datetime,
        cause_event: str | None,
    ) -> tuple[dict[str, float], list[str]]:
        """Score the user; emit a decision event if called for. The feature vector used,
        and the reasons (with the changes the scoring found)."""
        profile, settings = self.profile, self.settings
        assert profile is not None
        scorer = settings.models.scorer()
        vector = features(profile, scorer.population, settings.profile)
        profile.scored_at = at
        before = profile.segment[0]
        decision, reasons = decide(
            profile,
            vector,
            scorer,
            reasons=reasons,
            event_time=at,
            processed_at=now,
            cause_event=cause_event,
            paths=settings.paths,
            imposed_path=settings.experiments.path(profile.arms) if profile.arms else None,
        )
        if decision is not None and decision.value is not None:
            out.append(decision)
            telemetry.child(telemetry.DECISIONS, decision.value["reason"]).inc()
            if before != profile.segment[0]:
                telemetry.TRANSITIONS.labels(before, profile.segment[0]).inc()
        return vector, reasons

    def _act(
        self,
        out: list[Emitted],
        now: datetime,
        triggers: list[str],
        at: datetime,
        cause_event: str | None,
        vector: dict[str, float] | None = None,
        event: Event | Mapping[str, Any] | None = None,
        *,
        signal: str | None = None,
    ) -> bool:
        """Run the rules listening to ``triggers`` (one cause); whether any fired."""
        profile, settings = self.profile, self.settings
        assert profile is not None
        book = settings.rules
        if book.triggers.isdisjoint(triggers):
            return False  # the common case: no rule listens, no attributes are built
        lazy = LazyFeatures(profile, settings.models.scorer().population, settings.profile)
        known = attributes(profile, vector or lazy, event)
        verdicts = book.evaluate(
            dict.fromkeys(triggers),
            lambda: known,
            profile.fired,
            at=at.timestamp(),
            user_id=profile.user_id,
        )
        for verdict in verdicts:
            rule_id = verdict.rule.id
            outcome = "held_out" if verdict.held_out else "sent"
            telemetry.child(telemetry.TRIGGERS, rule_id, outcome).inc()
            if verdict.held_out:
                continue
            out.append(
                trigger_message(
                    profile,
                    verdict,
                    known,
                    event_time=at,
                    processed_at=now,
                    cause_event=cause_event,
                    signal=signal,
                    versions=settings.models.scorer().versions,
                )
            )
        return bool(verdicts)

    def _assign(self, out: list[Emitted], event: Event) -> None:
        """A new user's experiment arms (sticky), and their exposures for the tallies."""
        profile = self.profile
        assert profile is not None
        settings = self.settings
        known = attributes(
            profile,
            LazyFeatures(profile, settings.models.scorer().population, settings.profile),
            event,
        )
        profile.arms = settings.experiments.assign(profile.user_id, known)
        out.extend(Outcome(key, arm, "exposed", True) for key, arm in profile.arms.items())

    def _on_tick(self, tick: Tick, now: datetime, out: list[Emitted]) -> bool:
        """Apply a timer; whether it changed the profile. Stale timers change nothing."""
        profile = self.profile
        assert profile is not None
        if profile.erased_at is not None or profile.last_seen is None:
            return False
        if tick.kind == "decision":
            if not profile.known or profile.signed_up_at is None:
                return False
            telemetry.child(telemetry.TIMERS, "decision").inc()
            self._decision_point(tick.due, now, out)
            return True
        if tick.kind == "deadline":
            return self._deadline(tick, now, out)
        if tick.last_seen < profile.last_seen:
            return False  # the user was active since; a newer timer is pending
        telemetry.child(telemetry.TIMERS, tick.kind).inc()
        if profile.as_of is None or tick.due > profile.as_of:
            profile.as_of = tick.due
        if tick.kind == "session_end":
            length = profile.sessions.newest_length()
            if length is not None:
                out.append(Observation(kind="session_s", seconds=length))
            signed_up = profile.signed_up_at
            if (
                profile.known
                and signed_up is not None
                and tick.last_seen >= signed_up
                and not profile.first_session_decided
            ):
                # The end of the first session after signup (sessions browsed anonymously
                # before it do not count, however late identity stitching replays them).
                profile.first_session_decided = True
                self._decision_point(tick.due, now, out)
        elif tick.kind == "inactive":
            profile.inactive_hours = max(profile.inactive_hours, tick.hours)
            if profile.known and profile.signed_up_at is not None:
                # Going quiet is news: rescore (risk rises, the band or path may change, and
                # rules on those fire), and quiet users are a behaviour the segments learn.
                signal = f"timer:inactive_{tick.hours}h"
                quiet, found = self._decide(out, now, [], tick.due, None)
                out.append(Sample(profile.user_id, tick.due, quiet))
                if found:
                    self._act(out, now, found, tick.due, None, quiet, signal=signal)
        elif tick.kind == "idle":
            compact(profile)
        profile.seq += 1
        signal = (
            f"timer:inactive_{tick.hours}h" if tick.kind == "inactive" else f"timer:{tick.kind}"
        )
        self._act(out, now, [signal], tick.due, None, signal=signal)
        return True

    def _decision_point(self, at: datetime, now: datetime, out: list[Emitted]) -> None:
        """Score the user, send the learner their features, run the rules on it."""
        profile = self.profile
        assert profile is not None
        if profile.as_of is None or at > profile.as_of:
            profile.as_of = at
        vector, found = self._decide(out, now, ["decision_point"], at, None)
        out.append(remember_decision(profile, at, vector))
        self._act(out, now, found, at, None, vector, signal="decision_point")

    def _deadline(self, tick: Tick, now: datetime, out: list[Emitted]) -> bool:
        """An absence rule's deadline passed, or an experiment outcome is known."""
        profile = self.profile
        assert profile is not None
        telemetry.child(telemetry.TIMERS, tick.name.partition(":")[0]).inc()
        if tick.name.startswith("outcome:"):
            out.extend(
                outcomes(profile, tick.name.removeprefix("outcome:"), self.settings.experiments)
            )
            return False
        if profile.as_of is None or tick.due > profile.as_of:
            profile.as_of = tick.due
        profile.seq += 1  # windows and recency read at a new time: a new profile version
        # absence:<rule>[:<value>]: a rule with `match` watches each value on its own, and
        # its rule reads the value as the cause's property (`{event.properties.feature}`)
        trigger, _, value = tick.name.partition(":")[2].partition(":")
        cause = None
        if value:
            match = self.settings.rules.absence_match(trigger)
            cause = {"kind": "absence", "name": trigger, "properties": {match: value}}
        self._act(out, now, [f"absence:{trigger}"], tick.due, None, None, cause, signal=tick.name)
        return True

    def _message(
        self, now: datetime, vector: dict[str, float] | None = None, *, final: bool = False
    ) -> Output:
        assert self.profile is not None
        settings = self.settings
        return profile_message(
            self.profile,
            now,
            population=settings.models.scorer().population,
            settings=settings.profile,
            final=final,
            vector=vector,
            rules=settings.rules,
        )

    def on_eof(self) -> tuple[list[Emitted], bool]:
        profile = self.profile
        if profile is not None and profile.known and profile.erased_at is None:
            profile.pending_update = False  # the final profile is the newest update too
            return [self._message(self.settings.now(), final=True)], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> UserProfile:
        assert self.profile is not None  # a key gets logic only once it has an event
        return self.profile


class LearnerLogic(StatefulBatchLogic[Sample | Return | Observation, Output, Learner]):
    """The single learner (one key): learns from samples, publishes signed snapshots."""

    def __init__(self, settings: FlowSettings, resume: Learner | None) -> None:
        self.settings = settings
        self.learner = resume or Learner(settings.learner)
        self.newest: datetime | None = None
        if resume is None:
            try:
                latest = settings.models.latest()
            except ModelError as exc:
                log.error("%s: the learner starts from scratch", exc)
                latest = None
            if latest is not None:
                self.learner.adopt(latest)
        else:
            # Restored from a snapshot: the store may hold versions the crashed run
            # published after it. Replayed events are scored with the models of the
            # position they replay from, as they were the first time, not later ones.
            self._publish(force=True)

    def on_batch(self, values: list[Sample | Return | Observation]) -> tuple[list[Output], bool]:
        learner = self.learner
        for sample in values:
            learner.observe(sample)
            telemetry.child(telemetry.SAMPLES, _sample_kind(sample)).inc()
            if isinstance(sample, Observation):
                continue
            if self.newest is None or sample.at > self.newest:
                self.newest = sample.at
        if learner.due():
            self._publish()
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        self._publish()
        return [], StatefulBatchLogic.RETAIN

    def _publish(self, *, force: bool = False) -> None:
        after = 0
        if force:  # after a restore the store may be ahead of the restored counter
            with fatal_on_server_error():
                after = self.settings.models.store.latest_version()
        snapshot = self.learner.publish(
            self.newest or self.settings.now(), after=after, force=force
        )
        if snapshot is None:
            return
        self.settings.models.publish(snapshot)
        quality = self.learner.churn.quality()
        for name, value in quality.items():
            telemetry.CHURN_QUALITY.labels(name).set(value)
        if snapshot.segments is not None:
            for segment in snapshot.segments.segments:
                telemetry.SEGMENT_SIZE.labels(segment.id).set(segment.size)

    def snapshot(self) -> Learner:
        return self.learner


class ExperimentLogic(StatefulBatchLogic[Outcome, Output, tuple[str, Tally]]):
    """One experiment's tally (keyed by experiment: a single writer), put in the store at
    most once a second (wall clock) and at the end."""

    def __init__(self, settings: FlowSettings, resume: tuple[str, Tally] | None) -> None:
        self.settings = settings
        self.key, self.tally = resume if resume else ("", Tally())
        self.put_at: datetime | None = None
        self.dirty = resume is not None

    def on_batch(self, values: list[Outcome]) -> tuple[list[Output], bool]:
        for outcome in values:
            self.key = outcome.experiment
            self.tally.add(outcome)
        self.dirty = True
        now = self.settings.now()
        if self.put_at is None or now - self.put_at >= timedelta(seconds=1):
            self._put(now)
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return (self.put_at or self.settings.now()) + timedelta(seconds=1) if self.dirty else None

    def on_notify(self) -> tuple[list[Output], bool]:
        self._put(self.settings.now())
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        self._put(self.settings.now())
        return [], StatefulBatchLogic.RETAIN

    def _put(self, now: datetime) -> None:
        if not self.dirty or not self.key:
            return
        with fatal_on_server_error():
            self.settings.experiment_store.put(self.key, self.tally.counts)
        for arm, cells in self.tally.counts.items():
            for metric, (measured, converted) in cells.items():
                telemetry.EXPERIMENT.labels(self.key, arm, metric, "measured").set(measured)
                telemetry.EXPERIMENT.labels(self.key, arm, metric, "converted").set(converted)
        self.put_at, self.dirty = now, False

    def snapshot(self) -> tuple[str, Tally]:
        return self.key, self.tally


def personalize(events: Stream[Event], settings: FlowSettings) -> Stream[Output]:
    """Accepted events to outputs: consent gate, identity, timers, profile (and, later,
    scoring and decisions). The stateful heart of the job, also what bench/ measures."""
    privacy = settings.decoder.privacy

    def consented(event: Event) -> bool:
        if event.kind == "user_erased" or privacy.allowed(event.consent):
            return True
        telemetry.SUPPRESSED.labels("no_consent").inc()
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
        seen = [
            (_partition(event), event.timestamp.timestamp(), user_key(event)) for event in batch
        ]
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
    profiled = op.map(
        "unkey",
        op.stateful_batch("profile", keyed, lambda resume: ProfileLogic(settings, resume)),
        _value,
    )
    split = op.branch("split_samples", profiled, _is_sample)
    samples = op.key_on("to_the_learner", split.trues, lambda _sample: "learner")
    learned = op.stateful_batch("learner", samples, lambda resume: LearnerLogic(settings, resume))
    decided = op.branch("split_outcomes", split.falses, _is_outcome)
    tallies = op.key_on("by_experiment", decided.trues, lambda outcome: outcome.experiment)
    tallied = op.stateful_batch(
        "experiments", tallies, lambda resume: ExperimentLogic(settings, resume)
    )
    return op.merge(
        "decided",
        decided.falses,
        op.map("unkey_learner", learned, _value),
        op.map("unkey_experiments", tallied, _value),
    )


def build_flow(
    source: Source[RawRecord], sinks: Sequence[Sink[Any]], settings: FlowSettings
) -> Dataflow:
    """The whole job: ``source`` in, every output to each of ``sinks``."""
    decoder = settings.decoder

    def decode(record: RawRecord) -> list[Event | DeadLetter]:
        results = decoder.many(record.value, record.source)
        telemetry.EVENTS_IN.inc(len(results))
        for result in results:
            if isinstance(result, DeadLetter):
                telemetry.child(telemetry.DEAD_LETTERS, result.reason).inc()
        return results

    def is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
        return isinstance(item, Event)

    def dead_letter_output(dead: Any) -> Output:
        return dead_letter_message(dead, settings.now())

    def count(output: Output) -> None:
        telemetry.child(telemetry.OUTPUTS, output.label).inc()

    flow = Dataflow("firstmile")
    raw = op.input("input", flow, source)
    decoded = op.flat_map("decode", raw, decode)
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


def _is_sample(item: Emitted) -> TypeGuard[Sample | Return | Observation]:
    return isinstance(item, Sample | Return | Observation)


def _sample_kind(sample: Sample | Return | Observation) -> str:
    if isinstance(sample, Return):
        return "return"
    if isinstance(sample, Observation):
        return "observation"
    return "decision" if sample.decision else "snapshot"


def _is_outcome(item: Output | Outcome) -> TypeGuard[Outcome]:
    return isinstance(item, Outcome)


def _output_key(output: Output) -> str:
    return output.key or ""


def _partition(event: Event) -> str:
    return event.source.partition_key if event.source else ""


def _event_time(event: Event) -> datetime:
    return event.timestamp


def _value(keyed: tuple[str, Any]) -> Any:
    return keyed[1]
