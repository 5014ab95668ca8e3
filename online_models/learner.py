"""The single writer: learns segments and churn from samples, publishes signed snapshots.

Samples are not every event: the profile step sends a user's feature snapshot at each
decision point (``decision``: the end of their first session, 6 h and 24 h after signup,
then daily while active) and when they go quiet (each inactivity timer), and a
``Return`` when a user comes back after a decision point. The learner resolves the churn
labels itself, on its clock (the newest sample's event time): a decision's stage of the
churn hazard (``firstmile.online_models.churn``) is learned once its horizon has passed (plus
``LABEL_SLACK_S`` for returns still on their way), whether or not the user came back by
then. So every label is learned at the same delay after its decision: a return known
within hours does not jump ahead of a departure known days later.

One learner (one Bytewax key) owns the River models; it publishes a new version every
``publish_every`` samples and at the end of input. A learner started without recovered
state adopts the newest published snapshot: segment ids and the churn weights carry on.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from array import array
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from river import drift

from firstmile.online_models.churn import ChurnLearner
from firstmile.online_models.forecast import SegmentForecast
from firstmile.online_models.policy import PolicyLearner
from firstmile.online_models.population import PopulationLearner
from firstmile.online_models.segments import SEGMENT_FEATURES, SegmentLearner
from firstmile.online_models.snapshot import ModelSnapshot
from firstmile.operators import telemetry
from firstmile.operators.eventtime import iso
from firstmile.operators.features import pack, unpack
from firstmile.operators.samples import Choice, Observation, Return, Reward, Sample, ToLearner

log = logging.getLogger(__name__)


#: Features whose distribution is watched for drift (ADWIN on each, from the snapshots).
WATCHED_FEATURES = ("events_7d", "active_days_7d", "onboarding_progress", "is_mobile", "engagement")


#: Returns may reach the learner after other users' later samples (other workers).
LABEL_SLACK_S = 3600.0


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    segments: int = 6
    seed: int = 42
    segment_warmup: int = 1200  # more seeds steadier segments (BENCHMARKS.md)
    churn_min_labels: int = 200
    publish_every: int = 200
    segment_min_age_days: float = 1.0
    segment_warmup_days: float = 1.0  # or start with what came in this long
    churn_horizon_h: int = 168  # no activity this long after a decision: churned
    max_held_decisions: int = 100_000  # beyond: the oldest are resolved early (~35 MB)


class Learner:
    def __init__(self, settings: LearnerSettings | None = None) -> None:
        self.settings = settings = settings or LearnerSettings()
        self.segments = SegmentLearner(
            settings.segments, seed=settings.seed, warmup=settings.segment_warmup
        )
        self.forecast = SegmentForecast()
        self.churn = ChurnLearner(
            min_labels=settings.churn_min_labels, horizon_h=settings.churn_horizon_h
        )
        self.version = 0
        self.pending = 0  # samples since the last publication
        self.first_segment_sample: datetime | None = None
        self.clock = float("-inf")  # the newest decision point seen (event time)
        #: Decisions awaiting their labels: (user, decided at) -> (packed features,
        #: published risk, returned at); and when each one's next stage is due: (due, n,
        #: user, decided at, stage), n keeping ties in arrival order. Flat and packed:
        #: all of it is pickled at every epoch's end.
        self.held: dict[tuple[str, float], tuple[bytes | array[float], float, float]] = {}
        self.due_heap: list[tuple[float, int, str, float, int]] = []
        self.waiting: dict[str, list[float]] = {}  # user -> decisions not yet returned after
        self.held_count = 0
        self.watch = {name: drift.ADWIN() for name in WATCHED_FEATURES}
        self.population = PopulationLearner()
        self.feature_drifts = 0
        self.policy = PolicyLearner()  # learned onboarding paths (experiments' learned arms)
        self.policy_paths: tuple[str, ...] = ()
        self.exploration = 0.1

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for key, (values, published, returned) in self.held.items():
            if isinstance(returned, list):  # written before: the return time in a list
                self.held[key] = (values, published, returned[0])
        if self.segments.respaced:  # the forecast's snapshots are in the segments' old space
            self.forecast = SegmentForecast()
            self.segments.respaced = False

    def observe(self, sample: ToLearner) -> None:
        if isinstance(sample, Observation):
            self.population.observe(sample)
            return
        if isinstance(sample, Choice):
            self.policy.chose(sample)
            self.policy_paths, self.exploration = sample.paths, sample.exploration
            return
        if isinstance(sample, Reward):
            self.policy.rewarded(sample)
            self.pending += 1
            return
        if isinstance(sample, Return):
            since, back = sample.decided_at.timestamp(), sample.at.timestamp()
            waiting = self.waiting.pop(sample.user_id, [])
            for decided in waiting:
                key = (sample.user_id, decided)
                held = self.held.get(key)
                if held is not None and since <= decided < back and back < held[2]:
                    self.held[key] = (held[0], held[1], back)
            later = [decided for decided in waiting if decided >= back]
            if later:
                self.waiting[sample.user_id] = later
            self.pending += 1
            return
        at = sample.at.timestamp()
        self.clock = max(self.clock, at)
        # Every user's first-day snapshot, fewer later ones (a long-lived user sends one a
        # day): segments learn from the whole population, not its oldest part.
        age = sample.features.get("days_since_signup", 0.0)
        raw = [sample.features.get(name, 0.0) for name in SEGMENT_FEATURES]
        self.forecast.observe(sample.user_id, age, raw, self.segments.settle)
        if age >= self.settings.segment_min_age_days and _kept(sample, 1 / max(1.0, age)):
            self.segments.learn(sample.features, sample.user_id)
            self._start_segments(sample.at)
        for name, detector in self.watch.items():
            detector.update(sample.features.get(name, 0.0))
            if detector.drift_detected:
                # Segments follow by themselves (KMeans' halflife); say so.
                self.feature_drifts += 1
                telemetry.DRIFTS.labels(f"feature:{name}").inc()
                log.info("feature drift in %s after %d samples", name, self.segments.seen)
        if sample.decision:
            published = self.churn.decided(sample.features)
            self.population.observe_risk(sample.features, published)
            key = (sample.user_id, at)
            self.held[key] = (pack(sample.features), published, float("inf"))
            self.waiting.setdefault(sample.user_id, []).append(at)
            self._await(key, 0)
        self._mature()
        self.pending += 1

    def _await(self, key: tuple[str, float], stage: int, *, validate_only: bool = False) -> None:
        """Come back to a decision once ``stage``'s horizon has passed. A decision whose user
        came back early is still validated at the last horizon (``validate_only``, stage
        -1): outcomes then reach validation and calibration in decision order, returns
        and departures alike, as labels reach the stages."""
        due = key[1] + self.churn.horizons[stage] * 3600 + LABEL_SLACK_S
        stage = -1 if validate_only else stage
        heapq.heappush(self.due_heap, (due, self.held_count, key[0], key[1], stage))
        self.held_count += 1

    def _mature(self) -> None:
        """Learn every stage label whose horizon has passed, in decision order."""
        heap, held = self.due_heap, self.held
        while heap and (heap[0][0] <= self.clock or len(held) > self.settings.max_held_decisions):
            _, _, user, decided, stage = heapq.heappop(heap)
            key = (user, decided)
            kept = held.get(key)
            if kept is None:
                continue
            values, published, returned = kept
            away = returned > decided + self.churn.horizons[stage] * 3600
            drifts = self.churn.drifts
            x = unpack(values)
            if stage < 0:  # validation only (see _await)
                del held[key]
                self._forget(user, decided)
                self.churn.validate(False, published, x)
                continue
            prior = not self.churn.earned()
            self.churn.learn_stage(stage, x, away)
            if prior and self.churn.earned():
                log.info(
                    "churn risk hands over from the prior to the learned model at %s (%s "
                    "labels per stage), for good",
                    iso(datetime.fromtimestamp(self.clock, UTC)),
                    "/".join(str(s.labels) for s in self.churn.stages),
                )
            if self.churn.drifts > drifts:
                telemetry.DRIFTS.labels("churn_error").inc()
            last = len(self.churn.horizons) - 1
            if stage < last and away:
                self._await(key, stage + 1)
                continue
            if stage < last:  # back early: the outcome is known, validated at the horizon
                self._await(key, last, validate_only=True)
                continue
            del held[key]
            self._forget(user, decided)
            self.churn.validate(away, published, x)

    def _forget(self, user: str, decided: float) -> None:
        waiting = self.waiting.get(user)
        if waiting is not None and decided in waiting:
            waiting.remove(decided)
            if not waiting:
                del self.waiting[user]

    def _start_segments(self, at: datetime) -> None:
        """A product too small to fill the warm-up soon starts with what it sent."""
        first = self.first_segment_sample = self.first_segment_sample or at
        days = (at - first).total_seconds() / 86400
        if days >= self.settings.segment_warmup_days and self.segments.start():
            log.info("segments start from %d samples after %.1f days", self.segments.seen, days)

    def due(self) -> bool:
        return self.pending >= self.settings.publish_every

    def publish(self, at: datetime, *, after: int = 0, force: bool = False) -> ModelSnapshot | None:
        """A new version, numbered above ``after`` too, if anything was learned since the
        last one (or ``force``: a restored learner's models again)."""
        if not self.pending and not force:
            return None
        segments = self.segments.model(self.population.bucket_names())
        churn = self.churn.model()
        if segments is not None:
            live = {segment.id for segment in segments.segments}
            forecast = self.forecast.published(live, len(segments.features))
            segments = replace(segments, forecast=forecast)
        self.pending = 0
        population = self.population.stats()
        policy = self.policy.model(self.policy_paths, self.exploration)
        if segments is None and churn is None and population is None and policy is None:
            return None
        self.version = max(self.version, after) + 1
        return ModelSnapshot(self.version, iso(at), segments, churn, population, policy)

    def adopt(self, snapshot: ModelSnapshot) -> None:
        """Carry on from a published snapshot (a fresh learner after a restart)."""
        self.version = max(self.version, snapshot.version)
        if snapshot.segments is not None:
            seg = snapshot.segments
            self.segments.published = {
                s.id: seg.scaler.raw(s.center, seg.features) for s in seg.segments
            }
            numbers = [
                int(s.id.split("-")[-1]) for s in seg.segments if s.id.split("-")[-1].isdigit()
            ]
            retired = [int(r.split("-")[-1]) for r in seg.retired if r.split("-")[-1].isdigit()]
            self.segments.next_id = max([0, *numbers, *retired]) + 1
        if snapshot.churn is not None:
            self.churn.adopt(snapshot.churn)
        log.info("learner adopted model snapshot v%d", snapshot.version)


def _kept(sample: Sample, share: float) -> bool:
    """A deterministic ``share`` of samples (by user and time): long-lived users would
    otherwise dominate what segments learn from, one snapshot per active day."""
    if share >= 1:
        return True
    digest = zlib.crc32(f"{sample.user_id}@{sample.at.timestamp()}".encode())
    return digest / 2**32 < share
