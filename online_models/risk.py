"""The published churn risk's arithmetic, shared by the learner (``churn``) and the
scorers on every worker: the model's inputs, the cold-start prior and the calibration
maps. No River here: scoring must not pay for importing the learner's library.
"""

from __future__ import annotations

import math

from firstmile.online_models.snapshot import log1p
from firstmile.operators.features import FEATURE_NAMES

#: Everything but the scores derived from other features.
CHURN_FEATURES: tuple[str, ...] = tuple(
    name for name in FEATURE_NAMES if name not in ("engagement", "completeness")
)
#: Counts and durations enter on a log scale: a linear model then reads "1 vs 3 events"
#: as the big difference it is and "40 vs 60" as the small one.
_LOGGED = frozenset(
    name
    for name in CHURN_FEATURES
    if name
    not in (
        "onboarding_progress",
        "onboarding_completed",
        "company_size_log",
        "company_size_missing",
        "role_admin",
        "role_missing",
        "is_mobile",
        "events_total_log",
    )
)
#: Where a user is in their first days and how long since they were seen, as buckets:
#: a linear model cannot bend a curve, and the first days are where the curve bends.
_BUCKETS: tuple[tuple[str, str, float, float], ...] = (
    ("age_under_12h", "days_since_signup", 0.0, 0.5),
    ("age_12h_36h", "days_since_signup", 0.5, 1.5),
    ("age_36h_60h", "days_since_signup", 1.5, 2.5),
    ("seen_under_1h", "hours_since_last_seen", 0.0, 1.0),
    ("seen_1h_6h", "hours_since_last_seen", 1.0, 6.0),
    ("seen_6h_24h", "hours_since_last_seen", 6.0, 24.0),
    ("seen_24h_72h", "hours_since_last_seen", 24.0, 72.0),
)
#: The model's inputs, by name (``churn_inputs``).
CHURN_INPUTS: tuple[str, ...] = (*CHURN_FEATURES, *(name for name, *_ in _BUCKETS))


def churn_inputs(features: dict[str, float]) -> dict[str, float]:
    """The model's inputs: ``CHURN_FEATURES``, counts and durations as ``ln(1 + x)``, and
    the age and recency buckets.

    >>> inputs = churn_inputs({"events_7d": math.e - 1, "hours_since_last_seen": 3.0})
    >>> inputs["events_7d"], inputs["seen_1h_6h"], inputs["seen_under_1h"]
    (1.0, 1.0, 0.0)
    """
    get = features.get
    inputs = {
        name: log1p(get(name, 0.0)) if name in _LOGGED else get(name, 0.0)
        for name in CHURN_FEATURES
    }
    for name, feature, low, high in _BUCKETS:
        inputs[name] = 1.0 if low <= get(feature, 0.0) < high else 0.0
    return inputs


#: Upper bounds (days since signup) of the age bands calibrated apart.
AGE_BANDS: tuple[float, ...] = (0.5, 1.5, 2.5, 1e9)  # 1e9: every older user (JSON has no inf)


def age_band(x: dict[str, float]) -> int:
    """The index of the user's band in ``AGE_BANDS``.

    >>> age_band({"days_since_signup": 1.0}), age_band({})
    (1, 0)
    """
    age = x.get("days_since_signup", 0.0)
    return next(i for i, upper in enumerate(AGE_BANDS) if age < upper)


#: The prior: a new user's risk before anything is known, as a logit. 0.3 is a typical
#: 7-day churn rate of a new signup; engagement and onboarding lower it, two quiet days
#: raise it (to 0.84 for an unengaged user).
PRIOR_BASE = 0.3
_PRIOR_LOGIT = math.log(PRIOR_BASE / (1 - PRIOR_BASE))


def prior_contributions(features: dict[str, float]) -> dict[str, float]:
    """What moves the prior's logit away from its base, per feature (signed)."""
    return {
        "engagement": -2.0 * features.get("engagement", 0.0) / 100,
        "onboarding_progress": -1.0 * features.get("onboarding_progress", 0.0),
        "hours_since_last_seen": 2.5 * min(1.0, features.get("hours_since_last_seen", 0.0) / 48),
    }


def prior_risk(features: dict[str, float]) -> float:
    """Risk before the learned model has earned its place:
    ``sigmoid(logit(0.3) - 2 * engagement/100 - onboarding_progress
    + 2.5 * min(1, hours_since_last_seen / 48))``.

    >>> prior_risk({}), prior_risk({"hours_since_last_seen": 48.0})
    (0.3, 0.8393)
    """
    return round(sigmoid(_PRIOR_LOGIT + sum(prior_contributions(features).values())), 4)


def platt_map(p: float, a: float, b: float) -> float:
    """``sigmoid(a * logit(p) + b)``: a Platt map, as fitted here and applied by scorers."""
    return sigmoid(a * logit(p) + b)


def logit(p: float) -> float:
    p = min(1 - 1e-6, max(1e-6, p))
    return math.log(p / (1 - p))


def sigmoid(logit: float) -> float:
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, logit))))
