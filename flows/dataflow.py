"""The firstmile dataflow, wired once from pure steps (``operators``); sources and sinks
are arguments. What is here is Bytewax glue: keys, state snapshots, notify times.

input ─► decode+privacy ─┬─ dead letters ──────────────────────────────────────────┐
                         └─ consent gate ─► identity (by anonymous id) ─► timers    │
                              (by user-hash shard) ─► profile (by user) ─► outputs ─┴─► sinks

Beside identity, "devices" (by user) remembers each user's anonymous ids and turns an
erasure into a "forget" for each one's identity state. Events that carry both ids of a
link the identity step already made go by it (``identity.Links``): most events do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from firstmile.flows.readout import sample_ratio
from firstmile.online_models.channel import Models
from firstmile.online_models.learner import Learner, LearnerSettings
from firstmile.operators import telemetry
from firstmile.operators.decode import Decoder
from firstmile.operators.errors import ModelError
from firstmile.operators.events import DeadLetter, Event, RawRecord
from firstmile.operators.eventtime import utc_now
from firstmile.operators.experiments import Outcome, Tally
from firstmile.operators.identity import (
    Devices,
    ForgetLink,
    IdentitySettings,
    Links,
    Visitor,
    forget,
    identity_key,
    stitch,
    user_key,
)
from firstmile.operators.outputs import Output, dead_letter_message
from firstmile.operators.playbook import Playbooks
from firstmile.operators.profile import (
    DEFAULT_SETTINGS,
    ProfileSettings,
    UserProfile,
)
from firstmile.operators.samples import Choice, Observation, Return, Reward, Sample, ToLearner
from firstmile.operators.timers import (
    Heartbeat,
    Pacemaker,
    Tick,
    TimerSettings,
    TimerShard,
    shard_of,
)
from firstmile.operators.user_step import Emitted, ProfileUpdates, UserStep
from firstmile.state.experiment_store import ExperimentStore, MemoryExperimentStore
from firstmile.state.shutdown import fatal_on_server_error

log = logging.getLogger(__name__)

_ANNOUNCED = 100_000  # (user, device) pairs a process remembers sending (~15 MB)


@dataclass(frozen=True)
class FlowSettings:
    """What the steps need besides their input; built from the config by the run modes."""

    decoder: Decoder
    dedup_capacity: int = 64
    dedup_window: timedelta = timedelta(hours=24)
    #: What goes to the store after each batch that changed a user (``ProfileUpdates``).
    profile_updates: ProfileUpdates = "none"
    profile: ProfileSettings = DEFAULT_SETTINGS
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    timers: TimerSettings = field(default_factory=TimerSettings)
    now: Callable[[], datetime] = field(default=utc_now)
    #: The model channel (store + signing key); the learner's knobs; the churn horizon.
    models: Models = field(default_factory=Models)
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    #: Between decision points, a changed user is rescored at most this often (event time).
    rescore_every: timedelta = timedelta(hours=1)
    #: Trigger rules, onboarding paths and experiments (config/): the config's version,
    #: then what ``firstmile publish`` adds, each in force from its point of event time.
    #: The timer shards read their absence rules and outcome deadlines from it too.
    playbooks: Playbooks = field(default_factory=Playbooks.shipped)
    #: A backtest's candidate: decided beside ``playbooks`` on the same profiles (its
    #: outputs marked ``side`` 1; ``user_step.Lane``). Its absence rules and outcome
    #: deadlines must be the current ones (the timers are shared).
    candidate: Playbooks | None = None
    experiment_store: ExperimentStore = field(default_factory=MemoryExperimentStore)
    #: A user's profile goes to the store at most this often (wall clock).
    update_every: timedelta = timedelta(seconds=1)
    #: Every source partition, when known: a shard waits to hear from each before its
    #: watermark moves (Kafka partitions are not all read from the first batch on).
    source_partitions: tuple[str, ...] = ()


class IdentityLogic(StatefulBatchLogic[Event | ForgetLink, Event, Visitor]):
    """Bytewax glue around ``firstmile.operators.identity``: one instance per anonymous id;
    it notes in ``links`` (its worker's) what it leaves each visitor linked to."""

    def __init__(
        self, settings: FlowSettings, resume: Visitor | None, links: Links | None = None
    ) -> None:
        self.settings = settings
        self.visitor = resume
        self.links = links

    def on_batch(self, values: list[Event | ForgetLink]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        if any(isinstance(value, ForgetLink) for value in values):
            # An erasure's links go at its place in time, after the links it undoes and
            # before the device's later events (events first on a tie).
            values = sorted(values, key=lambda v: (v.timestamp, isinstance(v, ForgetLink)))
        for event in values:
            if isinstance(event, ForgetLink):
                if (visitor := forget(self.visitor, event)) is not self.visitor:
                    telemetry.LINKS_FORGOTTEN.inc()
                    self.visitor = visitor
                continue
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
        if self.links is not None and values:
            self.links.note(_visitor_key(values[0]), self.visitor)
        if self.visitor is None:
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Event], bool]:
        if self.visitor is not None and self.visitor.user_id is None:
            telemetry.UNIDENTIFIED.inc()  # no profile for them, but counted
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Visitor:
        assert self.visitor is not None
        return self.visitor


class DeviceLogic(StatefulBatchLogic[Event, ForgetLink, Devices]):
    """Per user, the devices seen with them; an erasure sends each one's link to forget."""

    def __init__(self, resume: Devices | None) -> None:
        self.devices = resume or Devices()

    def on_batch(self, values: list[Event]) -> tuple[list[ForgetLink], bool]:
        out = [link for event in values for link in self.devices.see(event)]
        return out, StatefulBatchLogic.RETAIN if self.devices.ids else StatefulBatchLogic.DISCARD

    def snapshot(self) -> Devices:
        return self.devices


class TimerLogic(StatefulBatchLogic[Event | Heartbeat, Event | Tick, Any]):
    """One timer shard: passes events through, with the ticks they (or the clock) cause."""

    def __init__(self, settings: FlowSettings, resume: Any) -> None:
        self.settings = settings
        timers = settings.timers
        self.shard = (
            TimerShard.restore(timers, resume, paced=True, playbooks=settings.playbooks)
            if resume
            else TimerShard(
                timers,
                marks=dict.fromkeys(settings.source_partitions, float("-inf")),
                paced=True,
                playbooks=settings.playbooks,
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


class ProfileLogic(StatefulBatchLogic[Event | Tick, Emitted, UserProfile]):
    """Bytewax glue around ``operators.user_step``: one per user."""

    def __init__(self, settings: FlowSettings, resume: UserProfile | None) -> None:
        self.step = UserStep(settings, resume)

    def on_batch(self, values: list[Event | Tick]) -> tuple[list[Emitted], bool]:
        out, discard = self.step.on_batch(values)
        return out, StatefulBatchLogic.DISCARD if discard else StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.step.notify_at()

    def on_notify(self) -> tuple[list[Emitted], bool]:
        return self.step.on_notify()[0], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Emitted], bool]:
        return self.step.on_eof()[0], StatefulBatchLogic.RETAIN

    def snapshot(self) -> UserProfile:
        assert self.step.profile is not None  # a key gets logic only once it has an event
        return self.step.profile


class LearnerLogic(StatefulBatchLogic[ToLearner, Output, Learner]):
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
            # Restored from a snapshot: replayed events are scored with the versions the
            # crashed run had (``online_models.channel``); the restored models take force
            # after everything it scored, in place of what it learned since the snapshot.
            self._publish(force=True)

    def on_batch(self, values: list[ToLearner]) -> tuple[list[Output], bool]:
        learner = self.learner
        for sample in values:
            learner.observe(sample)
            telemetry.child(telemetry.SAMPLES, _sample_kind(sample)).inc()
            if isinstance(sample, Observation | Reward):
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
        experiment = self.settings.playbooks.latest.experiments.get(self.key)
        if experiment is not None:
            exposed = {arm: cells["exposed"][0] for arm, cells in self.tally.counts.items()}
            check = sample_ratio(exposed, experiment.expected_shares())
            if check["p_value"] is not None:
                telemetry.EXPERIMENT_SRM.labels(self.key).set(check["p_value"])
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

    # Each worker's links: its own identity step's, so an event that skips the step never
    # overtakes the one that made the link (both leave this worker in order).
    workers = _PerWorker()

    def needs_stitching(event: Event) -> bool:
        return identity_key(event) is not None and not workers.links.settled(event)

    # Pairs (user, device) this process sent to the devices step already: most events
    # carry both ids, and only a new pair or an erasure is news there.
    announced: dict[tuple[str, str], None] = {}

    def device_news(event: Event) -> bool:
        if not event.user_id:
            return False
        if event.kind == "user_erased":
            announced.clear()  # the erased user's devices are news again (erasures are rare)
            return True
        device = identity_key(event)
        if device is None or (pair := (event.user_id, device)) in announced:
            return False
        announced[pair] = None
        if len(announced) > _ANNOUNCED:
            del announced[next(iter(announced))]
        return True

    def by_shard(item: Event | Heartbeat) -> str:
        if isinstance(item, Heartbeat):
            return item.shard
        return shard_of(user_key(item), settings.timers.shards)

    pacemaker = Pacemaker(settings.timers.shards, settings.timers.heartbeat_s)

    def with_heartbeats(batch: list[Event]) -> list[Event | Heartbeat]:
        seen = [
            (_partition(event), event.timestamp.timestamp(), user_key(event)) for event in batch
        ]
        return [*batch, *pacemaker.beats(seen)]

    def by_user(item: Event | Tick) -> str:
        return item.user_id if isinstance(item, Tick) else user_key(item)

    allowed = op.filter("consent_gate", events, consented)
    routes = op.branch("needs_stitching", allowed, needs_stitching)
    news = op.key_on(
        "key_by_user_devices", op.filter("device_news", allowed, device_news), user_key
    )
    forgets = op.map("unkey_devices", op.stateful_batch("devices", news, DeviceLogic), _value)
    visitors = op.key_on(
        "key_by_visitor", op.merge("to_identity", routes.trues, forgets), _visitor_key
    )
    stitched = op.stateful_batch(
        "identity", visitors, lambda resume: IdentityLogic(settings, resume, workers.links)
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


class _PerWorker(threading.local):
    """State a worker thread keeps for itself, outside recovery (rebuilt as it runs)."""

    def __init__(self) -> None:
        self.links = Links()


def _visitor_key(item: Event | ForgetLink) -> str:
    if isinstance(item, ForgetLink):
        return item.anonymous_id
    key = identity_key(item)
    assert key is not None
    return key


def decode(
    raw: Stream[RawRecord], decoder: Decoder, now: Callable[[], datetime]
) -> tuple[Stream[Event], Stream[Output]]:
    """Raw records to accepted events, and dead letters as outputs."""

    def records(record: RawRecord) -> list[Event | DeadLetter]:
        results = decoder.many(record.value, record.source)
        telemetry.EVENTS_IN.inc(len(results))
        for result in results:
            if isinstance(result, DeadLetter):
                telemetry.child(telemetry.DEAD_LETTERS, result.reason).inc()
        return results

    def is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
        return isinstance(item, Event)

    def dead_letter_output(dead: Any) -> Output:
        return dead_letter_message(dead, now())

    decoded = op.flat_map("decode", raw, records)
    split = op.branch("split_dead_letters", decoded, is_event)
    return split.trues, op.map("dead_letter", split.falses, dead_letter_output)


def build_flow(
    source: Source[RawRecord], sinks: Sequence[Sink[Any]], settings: FlowSettings
) -> Dataflow:
    """The whole job: ``source`` in, every output to each of ``sinks``."""

    def count(output: Output) -> None:
        telemetry.child(telemetry.OUTPUTS, output.label).inc()

    flow = Dataflow("firstmile")
    events, dead = decode(op.input("input", flow, source), settings.decoder, settings.now)
    personalized = personalize(events, settings)
    outputs = op.merge("outputs", dead, personalized)
    op.inspect("count_outputs", outputs, lambda _step, output: count(output))
    for index, sink in enumerate(sinks):
        name = f"sink_{index}_{type(sink).__name__}"
        if isinstance(sink, FixedPartitionedSink):
            # Routed to the worker of the sink's part: only the kinds it takes cross over.
            kinds: frozenset[str] | None = getattr(sink, "kinds", None)
            taken = outputs
            if kinds is not None:
                taken = op.filter(f"{name}_kinds", outputs, _of_kinds(kinds))
            op.output(name, op.key_on(f"{name}_key", taken, _output_key), sink)
        else:
            op.output(name, outputs, sink)
    return flow


def _of_kinds(kinds: frozenset[str]) -> Callable[[Output], bool]:
    return lambda output: output.kind in kinds


def _is_sample(item: Emitted) -> TypeGuard[ToLearner]:
    return isinstance(item, Sample | Return | Observation | Choice | Reward)


def _sample_kind(sample: ToLearner) -> str:
    if isinstance(sample, Sample):
        return "decision" if sample.decision else "snapshot"
    return type(sample).__name__.lower()


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
