"""What the profile steps send the learner: feature snapshots at decision points and when
users go quiet (``Sample``), returns after a decision point (``Return``, which date the
churn labels), what users show of the population (``Observation``: traits and
durations), and experiments' path choices and their outcomes (``Choice``, ``Reward``).
Plain messages: the learner (``online_models.learner``) reads them."""

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
    """What one user showed of the population: their traits, one duration, or the first
    event name of theirs in a mix bucket (what names the buckets in segment labels)."""

    traits: dict[str, str | float] | None = None
    kind: str = ""  # a duration's kind ("session_s", "onboarding_s")
    seconds: float = 0.0
    event_name: str = ""


@dataclass(frozen=True, slots=True)
class Choice:
    """The onboarding path an experiment's user got at their first decision point, who
    chose it (``policy``: "learned", "rules" or "fixed") with what ``propensity``, and what
    the rules would have chosen: the log off-policy evaluation reads."""

    user_id: str
    experiment: str
    at: datetime
    features: dict[str, float]
    path: str
    propensity: float  # the user's arm's chance of choosing ``path``
    policy: str
    rules_path: str
    paths: tuple[str, ...]  # what a learned policy chooses among
    exploration: float  # the learned policy's (the experiment's ``exploration``)
    #: The chance of ``path`` over the experiment's arms as assigned (their shares):
    #: the logging policy off-policy evaluation divides by.
    logged: float = 1.0
    #: Each path's chance under the learned policy running at ``at`` (its guard rails
    #: applied), whatever the user's arm: what judges the learned arm as it ran.
    running: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Reward:
    """A chosen path's outcome: the user activated (onboarding done in time) or not."""

    user_id: str
    experiment: str
    success: bool


ToLearner = Sample | Return | Observation | Choice | Reward
