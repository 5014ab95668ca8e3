"""Churn risk: River logistic regression on standardized features, learned from delayed
labels with progressive validation (each label is first predicted, then learned).

A label matures after a decision point: 1 when the user then stays away for the churn
horizon (7 days by default), 0 when they come back; the learner hands it over once the
decision is a horizon old (``online_models.learner``). Until then the published risk
comes from a documented prior (``prior_risk``, marked ``prior``) until the model has seen
``min_labels`` labels, ``min_labels // 4`` of them churn, and its progressive ROC-AUC
over the last labels is at least the prior's on the same labels.

Drift: ADWIN watches the per-label log-loss. When it fires, a challenger model starts
learning beside the champion from the next label on; once both have seen ``trial``
labels, the one with the lower recent log-loss is kept (counted and logged either way).
"""

from __future__ import annotations

import logging
import math

from river import drift, linear_model, metrics, optim, preprocessing

from online_models.snapshot import ChurnModel, Scaler
from operators.features import FEATURE_NAMES

log = logging.getLogger(__name__)

#: Everything but the scores derived from other features and the inactivity signal the
#: labels come from.
CHURN_FEATURES: tuple[str, ...] = tuple(
    name for name in FEATURE_NAMES if name not in ("engagement", "completeness", "inactive_hours")
)
_BINS = 10


#: The prior's base: a new user's risk before anything is known. Chosen so the prior's
#: mean matches the simulator's churn rate at 48 h (~0.31); calibration error 0.20 at
#: base 0.9, 0.04 at 0.7, with the same ranking (BENCHMARKS.md).
PRIOR_BASE = 0.7


def prior_contributions(features: dict[str, float]) -> dict[str, float]:
    """What moves the prior away from its base, per feature (signed)."""
    return {
        "engagement": -0.5 * features.get("engagement", 0.0) / 100,
        "onboarding_progress": -0.3 * features.get("onboarding_progress", 0.0),
        "hours_since_last_seen": 0.3 * min(1.0, features.get("hours_since_last_seen", 0.0) / 48),
    }


def prior_risk(features: dict[str, float]) -> float:
    """Risk before any label has matured: low engagement, unfinished onboarding, and not
    seen for a while (recency, saturating at two days).

    ``0.7 - 0.5 * engagement/100 - 0.3 * onboarding_progress
    + 0.3 * min(1, hours_since_last_seen / 48)``, within [0.05, 0.95].
    """
    risk = PRIOR_BASE + sum(prior_contributions(features).values())
    return round(min(0.95, max(0.05, risk)), 4)


class _Candidate:
    """One scaler + logistic regression, with its recent loss."""

    def __init__(self, lr: float) -> None:
        self.scaler = preprocessing.StandardScaler()
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=1e-4)
        self.recent_loss = 0.0  # exponentially weighted, ~100 labels
        self.labels = 0

    def predict(self, row: dict[str, float]) -> float:
        z = self.scaler.transform_one(row) if self.labels else row
        return float(self.model.predict_proba_one(z).get(True, 0.5))

    def learn(self, row: dict[str, float], label: bool, p: float) -> None:
        self.recent_loss = 0.99 * self.recent_loss + 0.01 * _log_loss(p, label)
        self.scaler.learn_one(row)
        self.model.learn_one(self.scaler.transform_one(row), label)
        self.labels += 1


class ChurnLearner:
    def __init__(self, *, min_labels: int = 200, lr: float = 0.05, trial: int = 300) -> None:
        self.lr, self.min_labels, self.trial = lr, min_labels, trial
        self.champion = _Candidate(lr)
        self.challenger: _Candidate | None = None
        self.roc_auc = metrics.ROCAUC()
        self.recent_auc = metrics.RollingROCAUC(window_size=500)  # the model's, last labels
        self.prior_auc = metrics.RollingROCAUC(window_size=500)  # the prior's, same labels
        self.churned = 0
        self.log_loss = metrics.LogLoss()
        self.bins = [[0.0, 0.0, 0] for _ in range(_BINS)]  # sum p, sum y, n
        self.detector = drift.ADWIN()
        self.labels = 0
        self.drifts = 0
        self.swaps = 0
        self.versions = 0

    def learn(self, x: dict[str, float], label: bool) -> float:
        """Predict, score the prediction, learn; the prediction made before learning."""
        row = {name: x.get(name, 0.0) for name in CHURN_FEATURES}
        prior = prior_risk(x)
        p = self.champion.predict(row) if self.champion.labels else prior
        self.recent_auc.update(label, p)
        self.prior_auc.update(label, prior)
        self.churned += label
        if not self.earned():
            p = prior  # what was published for this decision: validate that
        self.roc_auc.update(label, p)
        self.log_loss.update(label, p)
        b = self.bins[min(_BINS - 1, int(p * _BINS))]
        b[0], b[1], b[2] = b[0] + p, b[1] + label, b[2] + 1
        self.detector.update(_log_loss(p, label))
        if self.detector.drift_detected and self.labels >= self.min_labels:
            self.drifts += 1
            if self.challenger is None:
                log.info("churn drift detected after %d labels: training a challenger", self.labels)
                self.challenger = _Candidate(self.lr)
        if self.challenger is not None:
            self.challenger.learn(row, label, self.challenger.predict(row))
            if self.challenger.labels >= self.trial:
                if self.challenger.recent_loss < self.champion.recent_loss:
                    log.info(
                        "churn challenger wins (log-loss %.3f < %.3f): swapped",
                        self.challenger.recent_loss,
                        self.champion.recent_loss,
                    )
                    self.champion = self.challenger
                    self.swaps += 1
                self.challenger = None
        self.champion.learn(row, label, p)
        self.labels += 1
        return p

    def earned(self) -> bool:
        """Whether the learned model has earned its place over the prior."""
        return (
            self.labels >= self.min_labels
            and self.churned >= self.min_labels // 4
            and self.recent_auc.get() >= self.prior_auc.get()
        )

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
        if not self.earned():
            return None
        champion = self.champion
        names = CHURN_FEATURES
        means = {n: float(champion.scaler.means.get(n, 0.0)) for n in names}
        scales = {
            n: math.sqrt(v) if (v := float(champion.scaler.vars.get(n, 0.0))) > 1e-12 else 1.0
            for n in names
        }
        weights = [float(champion.model.weights.get(n, 0.0)) for n in names]
        total = sum(abs(w) for w in weights) or 1.0
        self.versions += 1
        return ChurnModel(
            version=f"churn-v{self.versions}",
            features=names,
            scaler=Scaler(means, scales),
            weights=weights,
            intercept=float(champion.model.intercept),
            labels=self.labels,
            metrics=self.quality(),
            importance={n: round(abs(w) / total, 4) for n, w in zip(names, weights, strict=True)},
        )


def _log_loss(p: float, label: bool) -> float:
    p = min(1 - 1e-7, max(1e-7, p))
    return -math.log(p if label else 1 - p)
