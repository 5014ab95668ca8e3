"""Churn risk: the chance a user sends nothing in the next 7 days, as a discrete-time
hazard model whose labels mature early.

At each decision point the learner keeps the user's features and waits. After 24 h it
knows whether the user came back within 24 h; after 72 h, for those who did not, whether
they came back within 72 h; after 168 h, for those still away, whether they came back at
all. Each step is one River logistic regression on the same standardized inputs:

    risk = P(away 24 h) * P(away 72 h | away 24 h) * P(away 168 h | away 72 h)

So the first labels arrive a day into a new deployment's stream, not a week, and each
stage learns its labels at one fixed delay after the decision, in decision order: returns
and departures reach it together, with no bias towards either. A stage without enough
labels yet (the last one, in a stream's first week) stands at its label rate so far,
shrunk towards ``QUIET_STAYS_AWAY``.

Hand-over (one rule, once): the published risk comes from a documented prior
(``prior_risk``, version ``prior``) until the first two stages have each learned
``min_labels`` labels with ``min_labels // 8`` of either outcome, and the first stage's
progressive ROC-AUC over its recent labels is at least the prior's on the same labels.
From then on the learned model publishes, for good (logged once): no flip-flopping.

Calibration: each stage maps its probabilities to its labels' rates (online Platt
scaling, ``Platt``, on its newest labels and its predictions just before learning them);
once the early stages are ready, decisions' 7-day outcomes feed a final Platt map
per age band (``AGE_BANDS``) onto the observed churn rate: the last stage's stand-in
rate and SGD's lag left the product several points off, most in the first days.

Drift: ADWIN watches the first stage's per-label log-loss; on a drift that stage gets a
challenger, kept if its recent log-loss is lower after ``trial`` labels.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from river import drift, linear_model, metrics, optim, preprocessing

from firstmile.online_models.risk import (
    AGE_BANDS,
    CHURN_INPUTS,
    age_band,
    churn_inputs,
    logit,
    platt_map,
    prior_risk,
    sigmoid,
)
from firstmile.online_models.snapshot import ChurnModel, ChurnStage, Scaler

log = logging.getLogger(__name__)

#: The hazard's early horizons; the last stage is the churn horizon (7 days by default).
EARLY_HORIZONS_H: tuple[int, ...] = (24, 72)
#: Of users away 72 h, the share still away at 168 h before the stream has shown it.
QUIET_STAYS_AWAY = 0.8
_SHRINK = 20.0  # pseudo-labels behind QUIET_STAYS_AWAY
_BINS = 10


class _Stage:
    """One step of the hazard: a logistic regression on standardized inputs."""

    def __init__(self, horizon_h: int, lr: float) -> None:
        self.horizon_h = horizon_h
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=1e-4)
        self.labels = 0
        self.away = 0  # labels that said "still away"
        self.recent_loss = 0.0  # exponentially weighted, ~100 labels
        self.platt = Platt()  # SGD lags: its probabilities, mapped to the labels' rates

    def ready(self, min_labels: int) -> bool:
        least = min_labels // 8
        return self.labels >= min_labels and least <= self.away <= self.labels - least

    def predict(self, z: dict[str, float]) -> float:
        """The logistic regression's probability, uncalibrated."""
        if not self.labels:
            return 0.5
        return float(self.model.predict_proba_one(z).get(True, 0.5))

    def calibrated(self, z: dict[str, float]) -> float:
        return self.platt.apply(self.predict(z))

    def rate(self, fallback: float) -> float:
        """The label rate so far, shrunk towards ``fallback``."""
        return (self.away + _SHRINK * fallback) / (self.labels + _SHRINK)

    def learn(self, z: dict[str, float], away: bool, p: float) -> None:
        self.recent_loss = 0.99 * self.recent_loss + 0.01 * _log_loss(p, away)
        self.model.learn_one(z, away)
        self.labels += 1
        self.away += away


class Platt:
    """Online Platt scaling: ``sigmoid(a * logit(p) + b)``. It keeps the newest ``window``
    (prediction, outcome) pairs, each prediction the model's as of its outcome, and refits
    every ``every`` pairs by Newton's method (from the last fit); the identity until it
    has ``least`` pairs with ``least // 10`` of either outcome.

    >>> platt = Platt()
    >>> for i in range(1000):  # a model that says 0.5 for users who churn 1 in 5
    ...     platt.observe(0.5, i % 5 == 0)
    >>> round(platt.apply(0.5), 2)
    0.2
    """

    def __init__(self, window: int = 3000, every: int = 500, least: int = 300) -> None:
        self.pairs: deque[tuple[float, bool]] = deque(maxlen=window)
        self.every, self.least = every, least
        self.a, self.b = 1.0, 0.0
        self.seen = 0
        self.fitted = False

    def observe(self, p: float, churned: bool) -> None:
        self.pairs.append((logit(p), churned))
        self.seen += 1
        if self.seen % self.every == 0:
            self.fit()

    def fit(self) -> None:
        pairs = self.pairs
        positives = sum(y for _, y in pairs)
        if len(pairs) < self.least or min(positives, len(pairs) - positives) < self.least // 10:
            return
        a, b = self.a, self.b
        for _ in range(25):  # Newton-Raphson on the log-loss, a little ridge towards (1, 0)
            ga, gb, haa, hab, hbb = 1e-3 * (a - 1), 1e-3 * b, 1e-3, 0.0, 1e-3
            for x, y in pairs:
                p = sigmoid(a * x + b)
                r, w = p - y, max(p * (1 - p), 1e-9)
                ga, gb = ga + r * x, gb + r
                haa, hab, hbb = haa + w * x * x, hab + w * x, hbb + w
            det = haa * hbb - hab * hab
            if det <= 0:
                return
            step_a, step_b = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
            a, b = a - step_a, b - step_b
            if abs(step_a) + abs(step_b) < 1e-4:
                break
        self.a, self.b, self.fitted = a, b, True

    def apply(self, p: float) -> float:
        return platt_map(p, self.a, self.b)


class ChurnLearner:
    def __init__(
        self, *, min_labels: int = 200, lr: float = 0.01, trial: int = 300, horizon_h: int = 168
    ) -> None:
        self.lr, self.min_labels, self.trial = lr, min_labels, trial
        self.horizons = (*(h for h in EARLY_HORIZONS_H if h < horizon_h), horizon_h)
        self.scaler = preprocessing.StandardScaler()
        self.stages = [_Stage(h, lr) for h in self.horizons]
        self.challenger: _Stage | None = None
        self.handed_over = False
        #: The final calibration, one per age band (``AGE_BANDS``): the first days are
        #: where the hazard bends most, and one global map left them off by several points.
        self.platts = [Platt(every=200, least=200) for _ in AGE_BANDS]
        self.pooled = Platt()  # every band's outcomes: for a band not fitted yet
        self.stage_auc = metrics.RollingROCAUC(window_size=500)  # first stage, recent
        self.prior_auc = metrics.RollingROCAUC(window_size=500)  # the prior, same labels
        self.roc_auc = metrics.ROCAUC()  # the published risk against 7-day outcomes
        self.log_loss = metrics.LogLoss()
        self.bins = [[0.0, 0.0, 0] for _ in range(_BINS)]  # sum p, sum y, n
        self.detector = drift.ADWIN()
        self.labels = 0  # 7-day outcomes validated
        self.churned = 0
        self.drifts = 0
        self.swaps = 0
        self.versions = 0

    @property
    def stage_labels(self) -> int:
        return self.stages[0].labels

    def decided(self, x: dict[str, float]) -> float:
        """A decision point's features: the scaler learns them; the risk published for it
        (the learner keeps it for the decision's outcome, to validate)."""
        row = churn_inputs(x)
        self.scaler.learn_one(row)
        if not self.handed_over:
            return prior_risk(x)
        return self._calibration(age_band(x)).apply(self.risk(self.scaler.transform_one(row)))

    def _calibration(self, band: int) -> Platt:
        platt = self.platts[band]
        return platt if platt.fitted else self.pooled

    def _z(self, x: dict[str, float]) -> dict[str, float]:
        return self.scaler.transform_one(churn_inputs(x))

    def risk(self, z: dict[str, float]) -> float:
        """The product of the (each calibrated) stages, before the final calibration."""
        p = 1.0
        for stage in self.stages:
            ready = stage.ready(self.min_labels)
            p *= stage.calibrated(z) if ready else stage.rate(_fallback(stage))
        return p

    def learn_stage(self, index: int, x: dict[str, float], away: bool) -> None:
        """Stage ``index``'s label for a decision (features ``x``) a horizon old: whether
        the user is still away."""
        stage = self.stages[index]
        z = self._z(x)
        p = stage.predict(z)
        if index == 0:
            self.stage_auc.update(away, p)
            self.prior_auc.update(away, prior_risk(x))
            self.detector.update(_log_loss(p, away))
            if self.detector.drift_detected and stage.labels >= self.min_labels:
                self.drifts += 1
                if self.challenger is None:
                    log.info("churn drift after %d labels: training a challenger", stage.labels)
                    self.challenger = _Stage(stage.horizon_h, self.lr)
            if self.challenger is not None:
                self.challenger.learn(z, away, self.challenger.predict(z))
                if self.challenger.labels >= self.trial:
                    if self.challenger.recent_loss < stage.recent_loss:
                        log.info(
                            "churn challenger wins (log-loss %.3f < %.3f): swapped",
                            self.challenger.recent_loss,
                            stage.recent_loss,
                        )
                        self.challenger.labels, self.challenger.away = stage.labels, stage.away
                        self.stages[0] = stage = self.challenger
                        self.swaps += 1
                    self.challenger = None
        stage.learn(z, away, p)
        stage.platt.observe(p, away)  # p: the stage's own prediction, just before it learned
        if not self.handed_over and self._earned():
            self.handed_over = True  # the learner logs it, with the stream's time

    def validate(self, churned: bool, published: float, x: dict[str, float]) -> None:
        """A decision's 7-day outcome against the risk that was published for it; with its
        features ``x``, calibration learns from it."""
        if self._early_ready():
            now = self.risk(self._z(x))  # the model as of the outcome, not of the decision
            self.platts[age_band(x)].observe(now, churned)
            self.pooled.observe(now, churned)
        self.labels += 1
        self.churned += churned
        self.roc_auc.update(churned, published)
        self.log_loss.update(churned, published)
        b = self.bins[min(_BINS - 1, int(published * _BINS))]
        b[0], b[1], b[2] = b[0] + published, b[1] + churned, b[2] + 1

    def _early_ready(self) -> bool:
        early = self.stages[: max(1, len(self.stages) - 1)]
        return all(stage.ready(self.min_labels) for stage in early)

    def _earned(self) -> bool:
        return self._early_ready() and self.stage_auc.get() >= self.prior_auc.get()

    def adopt(self, model: ChurnModel) -> None:
        """Carry on from a published model (a fresh learner after a restart)."""
        if model.features != CHURN_INPUTS or len(model.stages) != len(self.stages):
            return
        for i, name in enumerate(model.features):
            self.scaler.counts[name] = model.labels
            self.scaler.means[name] = model.scaler.means[name]
            self.scaler.vars[name] = model.scaler.scales[name] ** 2
            for stage, published in zip(self.stages, model.stages, strict=True):
                if published.constant is None:
                    stage.model._weights[name] = published.weights[i]  # no public setter
        for stage, published in zip(self.stages, model.stages, strict=True):
            if published.constant is None:
                stage.model.intercept = published.intercept
                stage.platt.a, stage.platt.b = published.calibration
                stage.labels = max(stage.labels, model.labels)
                stage.away = max(stage.away, stage.labels // 2)
        for platt, (_, a, b) in zip(self.platts, model.calibration, strict=True):
            platt.a, platt.b, platt.fitted = a, b, True
        self.handed_over = True

    def earned(self) -> bool:
        """Whether the learned model publishes (for good, once it has)."""
        return self.handed_over

    def quality(self) -> dict[str, float]:
        """Progressive validation so far: ROC-AUC, log-loss, expected calibration error."""
        n = sum(b[2] for b in self.bins)
        ece = sum(abs(b[0] - b[1]) for b in self.bins) / n if n else 0.0
        return {
            "roc_auc": round(float(self.roc_auc.get()), 4),
            "log_loss": round(float(self.log_loss.get()), 4),
            "ece": round(ece, 4),
            "labels": float(self.labels),
            "drifts": float(self.drifts),
        }

    def model(self) -> ChurnModel | None:
        """The model to publish now; None while the prior is still in charge."""
        if not self.handed_over:
            return None
        names = CHURN_INPUTS
        scaler = Scaler.learned(self.scaler, names)
        stages = []
        for stage in self.stages:
            if stage.ready(self.min_labels):
                weights = [float(stage.model.weights.get(n, 0.0)) for n in names]
                stages.append(
                    ChurnStage(
                        stage.horizon_h,
                        weights,
                        float(stage.model.intercept),
                        None,
                        [stage.platt.a, stage.platt.b],
                    )
                )
            else:
                stages.append(ChurnStage(stage.horizon_h, [], 0.0, stage.rate(_fallback(stage))))
        share = [sum(abs(s.weights[i]) for s in stages if s.weights) for i in range(len(names))]
        total = sum(share) or 1.0
        self.versions += 1
        return ChurnModel(
            version=f"churn-v{self.versions}",
            features=names,
            scaler=scaler,
            stages=stages,
            calibration=[
                [upper, (p := self._calibration(band)).a, p.b]
                for band, upper in enumerate(AGE_BANDS)
            ],
            labels=self.stage_labels,
            metrics=self.quality(),
            importance={n: round(s / total, 4) for n, s in zip(names, share, strict=True)},
            reliability=[[round(p / n, 4), round(y / n, 4), n] for p, y, n in self.bins if n],
        )


def _fallback(stage: _Stage) -> float:
    """What a stage without labels says: the last one, users away 72 h stay away mostly;
    the others, a coin toss (they earn their labels within days)."""
    return QUIET_STAYS_AWAY if stage.horizon_h > EARLY_HORIZONS_H[-1] else 0.5


def _log_loss(p: float, label: bool) -> float:
    p = min(1 - 1e-7, max(1e-7, p))
    return -math.log(p if label else 1 - p)
