"""What the profile steps send the learner: feature snapshots at decision points and when
users go quiet (``Sample``), returns after a decision point (``Return``, which date the
churn labels), and what users show of the population (``Observation``: traits and
durations). Plain messages: the learner (``online_models.learner``) reads them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Sample:
    """A user's features at ``at``; a ``decision`` point awaits the user's return."""

    user_id: str
    at: datetime  # event time
    features: dict[str, float]
    decision: bool = False


@dataclass(frozen=True, slots=True)
class Return:
    """The user is back (at ``at``) after the decision point at ``decided_at``."""

    user_id: str
    decided_at: datetime
    at: datetime


@dataclass(frozen=True, slots=True)
class Observation:
    """What one user showed of the population: their traits, or one duration."""

    traits: dict[str, str | float] | None = None
    kind: str = ""  # a duration's kind ("session_s", "onboarding_s")
    seconds: float = 0.0


ToLearner = Sample | Return | Observation
