"""Scoring with the newest published snapshot: segment (with hysteresis), churn risk and
the features behind it. Plain arithmetic on the snapshot's numbers: cheap on every worker.

>>> scorer = Scorer(None)
>>> risk, version, top = scorer.churn({"engagement": 80.0, "onboarding_progress": 1.0})
>>> round(risk, 2), version, [t["name"] for t in top]
(0.03, 'prior', ['engagement', 'onboarding_progress'])
"""

from __future__ import annotations

import math
from typing import Any

from firstmile.online_models.risk import (
    churn_inputs,
    platt_map,
    prior_contributions,
    prior_risk,
    sigmoid,
)
from firstmile.online_models.snapshot import ModelSnapshot, Segment, choose
from firstmile.operators.population import NOBODY


class Scorer:
    def __init__(self, snapshot: ModelSnapshot | None, margin: float = 0.15) -> None:
        self.snapshot = snapshot
        self.margin = margin
        segments = snapshot.segments if snapshot else None
        self._segments = {s.id: s for s in segments.segments} if segments else {}
        #: What features impute and clip with (nothing before the first snapshot has it).
        self.population = (snapshot.population if snapshot else None) or NOBODY
        self.versions = {
            "segments": segments.version if segments else "none",
            "churn": snapshot.churn.version if snapshot and snapshot.churn else "prior",
        }
        self.policy = snapshot.policy if snapshot else None
        if self.policy is not None:
            self.versions["policy"] = self.policy.version

    def choose_path(
        self,
        x: dict[str, float],
        paths: tuple[str, ...],
        exploration: float,
        draw_key: str,
        rules_path: str,
    ) -> tuple[str, dict[str, float], dict[str, float]]:
        """A learned arm's path for ``x``, whom the rules give ``rules_path``: (path, each
        path's chance, each path's rating)."""
        return choose(self.policy, x, paths, exploration, draw_key, rules_path)

    def segment(self, x: dict[str, float], current: str | None) -> Segment | None:
        """The nearest segment, unless ``current`` is within the hysteresis margin of it."""
        model = self.snapshot.segments if self.snapshot else None
        if model is None or not model.segments:
            return None
        z = model.scaler.z(x, model.features)
        forecast, age = model.forecast, x.get("days_since_signup", math.inf)
        if forecast is not None and age < forecast.until_days:
            # A young user: the segment they are forecast to settle in. Keeping ``current``
            # while its odds are within the margin of the best is the same hysteresis.
            scores = forecast.scores(z, age)
            best = max(scores, key=lambda sid: (scores[sid], sid))
            if current in scores and scores[current] >= scores[best] + math.log1p(-self.margin):
                return self._segments[current]
            return self._segments[best]
        distances = {s.id: math.dist(z, s.center) for s in model.segments}
        nearest = min(distances, key=lambda sid: (distances[sid], sid))
        held = distances.get(current) if current is not None else None
        if held is not None and held <= distances[nearest] * (1 + self.margin):
            return self._segments[current]  # type: ignore[index]
        return self._segments[nearest]

    def churn(self, x: dict[str, float]) -> tuple[float, str, list[dict[str, Any]]]:
        """(risk, model version, top features with their signed contributions)."""
        model = self.snapshot.churn if self.snapshot else None
        if model is None:
            return prior_risk(x), "prior", _top(prior_contributions(x))
        z = model.scaler.z(churn_inputs(x), model.features)
        risk, parts = 1.0, [0.0] * len(z)
        for stage in model.stages:
            if stage.constant is not None:
                risk *= stage.constant
                continue
            terms = [w * v for w, v in zip(stage.weights, z, strict=True)]
            a, b = stage.calibration
            risk *= platt_map(sigmoid(stage.intercept + sum(terms)), a, b)
            parts = [part + term for part, term in zip(parts, terms, strict=True)]
        age = x.get("days_since_signup", 0.0)
        _, a, b = next(band for band in model.calibration if age < band[0])
        risk = platt_map(risk, a, b)
        return risk, model.version, _top(dict(zip(model.features, parts, strict=True)))


def _top(contributions: dict[str, float], n: int = 3) -> list[dict[str, Any]]:
    ranked = sorted(contributions.items(), key=lambda item: (-abs(item[1]), item[0]))
    return [{"name": name, "weight": round(value, 4)} for name, value in ranked[:n] if value]
