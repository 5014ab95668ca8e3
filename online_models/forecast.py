"""Early segments as a forecast: which segment a new user will hold once their behaviour
has settled, learned online from users who got there (delayed labels).

Centers fitted to the whole population describe settled users; a user's first hours sit
between them (few sessions, nothing tried yet), so the nearest center says little. The
forecast keeps each user's early feature snapshots (younger than ``early_days``); when the
same user sends a snapshot at ``mature_days`` or later, the segment that snapshot falls in
is the label of every early one, and a softmax regression (River) learns from them.

One hand-over rule, as for churn: the forecast is published once it has ``min_labels``
labels and its running agreement with the mature segment beats the nearest center's, on
the same early snapshots, both predicted before learning. Until then, and past
``early_days``, young users get the nearest center.

Why (offline, on the bench's tuning streams, 48 h snapshots of the later 60 % of users):
ARI against the planted behaviours 0.82-0.84 for a forecast trained on the first 40 %,
next to 0.57-0.60 for the nearest center and 0.53-0.55 for batch k-means on those 48 h
features. A user 4 days old has settled enough to label their first days (7 days gave
the labels, and the forecast, three days later: 24 h ARI +0.02 to +0.07 on 5 of 8
held-out runs, the other three within 0.01; BENCHMARKS.md, session 15).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from river import linear_model, optim

from firstmile.online_models.snapshot import Forecast, forecast_inputs

#: Age buckets (days since signup) the forecast reads beside the features: what a user did
#: by their first session's end means more than the same by day two.
AGE_EDGES = [0.25, 1.0, 2.0]


def inputs(z: list[float], age_days: float) -> dict[Hashable, Any]:
    """The regression's inputs by position (River's softmax has no intercept: a constant)."""
    return dict(enumerate(forecast_inputs(z, age_days, AGE_EDGES)))


class SegmentForecast:
    def __init__(
        self,
        *,
        early_days: float = 3.0,
        mature_days: float = 4.0,
        min_labels: int = 300,
        max_users: int = 50_000,
        memory: float = 0.99,  # the agreement figures' decay per label
    ) -> None:
        self.early_days, self.mature_days = early_days, mature_days
        self.min_labels, self.max_users, self.memory = min_labels, max_users, memory
        self.model = linear_model.SoftmaxRegression(optimizer=optim.AdaGrad(0.1), l2=1e-4)
        #: user -> early snapshots, each (age in days, raw features as float32 bytes:
        #: they pickle faster than arrays, every epoch), oldest user first.
        self.early: OrderedDict[str, list[tuple[float, bytes | array[float]]]] = OrderedDict()
        self.labels = 0
        self.agree = {"forecast": 0.0, "nearest": 0.0, "weight": 0.0}

    def observe(
        self,
        user_id: str,
        age_days: float,
        raw: list[float],
        settle: Callable[[list[float]], tuple[list[float], str | None]],
    ) -> None:
        """A snapshot of ``user_id`` at ``age_days``; ``settle`` standardizes raw features
        and names the nearest published segment (None before the first publication)."""
        if age_days < self.early_days:
            held = self.early.setdefault(user_id, [])
            held.append((age_days, array("f", raw).tobytes()))
            if len(self.early) > self.max_users:
                self.early.popitem(last=False)  # bounded: the oldest users' go unlearned
            return
        if age_days < self.mature_days:
            return
        held = self.early.pop(user_id, [])
        if not held:
            return
        label = settle(raw)[1]
        if label is None:
            return
        for age, values in held:
            z, nearest = settle(array("f", values).tolist())
            x = inputs(z, age)
            guess = self.model.predict_one(x) if self.labels else None
            agree, m = self.agree, self.memory
            agree["weight"] = agree["weight"] * m + 1
            agree["forecast"] = agree["forecast"] * m + (guess == label)
            agree["nearest"] = agree["nearest"] * m + (nearest == label)
            self.model.learn_one(x, label)
            self.labels += 1

    def earned(self) -> bool:
        agree = self.agree
        return self.labels >= self.min_labels and agree["forecast"] > agree["nearest"]

    def published(self, live: set[str], width: int) -> Forecast | None:
        """The forecast for scorers, over the ``live`` segments; None until earned."""
        if not self.earned():
            return None
        size = width + len(AGE_EDGES) + 2
        weights = {
            label: [float(w.get(i, 0.0)) for i in range(size)]
            for label, w in self.model.weights.items()
            if label in live
        }
        if len(weights) < 2:
            return None
        total = self.agree["weight"] or 1.0
        return Forecast(
            until_days=self.early_days,
            age_edges=AGE_EDGES,
            weights=weights,
            labels=self.labels,
            agreement=round(self.agree["forecast"] / total, 4),
            nearest_agreement=round(self.agree["nearest"] / total, 4),
        )
