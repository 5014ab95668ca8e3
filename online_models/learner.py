"""The single writer: learns segments and churn from samples, publishes signed snapshots.

Samples are not every event: the profile step sends a user's feature snapshot at each
churn decision point (24 h after signup, then daily while active) and when they go quiet
(each inactivity timer), and the label of each decision later. Labels are learned in the
order of their decisions, once the churn horizon since the decision has passed (the
learner's clock: the newest decision point it saw): a return is known within hours and a
churn only after the horizon, so learning each label as it came would feed the model
this week's returns beside last week's churns, and it would learn too low a risk (on
the simulator its mean risk at 48 h was 0.24 for a churn rate of 0.31). One learner (one
Bytewax key) owns the River models; it publishes a new version every ``publish_every``
samples and at the end of input. A learner started
without recovered state adopts the newest published snapshot: segment ids and the churn
weights carry on.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from array import array
from dataclasses import dataclass
from datetime import datetime

from river import drift

from flows import metrics
from online_models.churn import CHURN_FEATURES, ChurnLearner
from online_models.segments import SegmentLearner
from online_models.snapshot import ModelSnapshot
from operators.eventtime import iso
from operators.features import pack, unpack

log = logging.getLogger(__name__)


#: Features whose distribution is watched for drift (ADWIN on each, from the snapshots).
WATCHED_FEATURES = ("events_7d", "active_days_7d", "onboarding_progress", "is_mobile", "engagement")


@dataclass(frozen=True, slots=True)
class Sample:
    """A user's features at a decision point; with ``label`` once its outcome is known."""

    user_id: str
    at: datetime  # the decision point (event time)
    features: dict[str, float]
    label: bool | None = None  # None: a snapshot (segments learn); else churned or not


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    segments: int = 6
    seed: int = 42
    segment_warmup: int = 1200  # more seeds steadier segments (BENCHMARKS.md)
    churn_min_labels: int = 200
    publish_every: int = 200
    segment_min_age_days: float = 1.0
    segment_warmup_days: float = 2.0  # or start with what came in this long
    churn_horizon_h: int = 168  # a label is learned this long after its decision point
    max_held_labels: int = 100_000  # beyond: the oldest are learned early (31 MB live)


class Learner:
    def __init__(self, settings: LearnerSettings | None = None) -> None:
        self.settings = settings = settings or LearnerSettings()
        self.segments = SegmentLearner(
            settings.segments, seed=settings.seed, warmup=settings.segment_warmup
        )
        self.churn = ChurnLearner(min_labels=settings.churn_min_labels)
        self.version = 0
        self.pending = 0  # samples since the last publication
        self.first_segment_sample: datetime | None = None
        self.clock = float("-inf")  # the newest decision point seen (event time)
        self.held: list[tuple[float, int, bool, array[float]]] = []  # labels, by decision
        self.held_count = 0  # ties in the heap keep their arrival order
        self.watch = {name: drift.ADWIN() for name in WATCHED_FEATURES}
        self.feature_drifts = 0

    def observe(self, sample: Sample) -> None:
        if sample.label is None:
            self.clock = max(self.clock, sample.at.timestamp())
            # Every user's first-day snapshot, fewer later ones (a long-lived user sends
            # one a day): segments learn from the whole population, not its oldest part.
            age = sample.features.get("days_since_signup", 0.0)
            if age >= self.settings.segment_min_age_days and _kept(sample, 1 / max(1.0, age)):
                self.segments.learn(sample.features)
                self._start_segments(sample.at)
            for name, detector in self.watch.items():
                detector.update(sample.features.get(name, 0.0))
                if detector.drift_detected:
                    # Segments follow by themselves (KMeans' halflife); say so.
                    self.feature_drifts += 1
                    metrics.DRIFTS.labels(f"feature:{name}").inc()
                    log.info("feature drift in %s after %d samples", name, self.segments.seen)
        else:
            heapq.heappush(
                self.held,
                (
                    sample.at.timestamp(),
                    self.held_count,
                    sample.label,
                    pack(sample.features),
                ),
            )
            self.held_count += 1
        self._mature()
        self.pending += 1

    def _mature(self) -> None:
        """Learn the held labels whose decision is a churn horizon old."""
        due = self.clock - self.settings.churn_horizon_h * 3600
        held = self.held
        while held and (held[0][0] <= due or len(held) > self.settings.max_held_labels):
            _, _, label, values = heapq.heappop(held)
            was_prior = not self.churn.earned()
            drifts = self.churn.drifts
            self.churn.learn(unpack(values), label)
            if self.churn.drifts > drifts:
                metrics.DRIFTS.labels("churn_error").inc()
            if was_prior != (not self.churn.earned()):
                log.info(
                    "churn risk switches to the %s after %d labels",
                    "prior" if was_prior is False else "learned model",
                    self.churn.labels,
                )

    def _start_segments(self, at: datetime) -> None:
        """A product too small to fill the warm-up soon starts with what it sent."""
        first = self.first_segment_sample = self.first_segment_sample or at
        days = (at - first).total_seconds() / 86400
        if days >= self.settings.segment_warmup_days and self.segments.start():
            log.info("segments start from %d samples after %.1f days", self.segments.seen, days)

    def due(self) -> bool:
        return self.pending >= self.settings.publish_every

    def publish(self, at: datetime) -> ModelSnapshot | None:
        """A new version if anything was learned since the last one."""
        if not self.pending:
            return None
        segments, churn = self.segments.model(), self.churn.model()
        self.pending = 0
        if segments is None and churn is None:
            return None
        self.version += 1
        return ModelSnapshot(self.version, iso(at), segments, churn)

    def adopt(self, snapshot: ModelSnapshot) -> None:
        """Carry on from a published snapshot (a fresh learner after a restart)."""
        self.version = max(self.version, snapshot.version)
        if snapshot.segments is not None:
            seg = snapshot.segments
            scales, means = seg.scaler.scales, seg.scaler.means
            self.segments.published = {
                s.id: [
                    c * scales[n] + means[n] for c, n in zip(s.center, seg.features, strict=True)
                ]
                for s in seg.segments
            }
            numbers = [
                int(s.id.split("-")[-1]) for s in seg.segments if s.id.split("-")[-1].isdigit()
            ]
            retired = [int(r.split("-")[-1]) for r in seg.retired if r.split("-")[-1].isdigit()]
            self.segments.next_id = max([0, *numbers, *retired]) + 1
        if snapshot.churn is not None and snapshot.churn.features == CHURN_FEATURES:
            churn = snapshot.churn
            champion = self.churn.champion
            for name, weight in zip(churn.features, churn.weights, strict=True):
                champion.model._weights[name] = weight  # River has no public setter
                champion.scaler.counts[name] = churn.labels
                champion.scaler.means[name] = churn.scaler.means[name]
                champion.scaler.vars[name] = churn.scaler.scales[name] ** 2
            champion.model.intercept = churn.intercept
            champion.labels = churn.labels
            self.churn.labels = max(self.churn.labels, churn.labels)
        log.info("learner adopted model snapshot v%d", snapshot.version)


def _kept(sample: Sample, share: float) -> bool:
    """A deterministic ``share`` of samples (by user and time): long-lived users would
    otherwise dominate what segments learn from, one snapshot per active day."""
    if share >= 1:
        return True
    digest = zlib.crc32(f"{sample.user_id}@{sample.at.timestamp()}".encode())
    return digest / 2**32 < share
