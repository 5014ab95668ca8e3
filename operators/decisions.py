"""Decisions per user: segment and churn risk from the newest models, the decision events
they cause, and the churn labels that decision points leave behind.

A decision event is emitted at signup, at each decision point (a timer: the end of the
first session, 6 h and 24 h after signup, then daily while active), and whenever the
user's segment, churn-risk band (both with hysteresis) or onboarding path
(config/paths.toml) changes; nothing otherwise. A decision point sends the user's
features to the learner, and their return after it, when they come back; the learner
dates the churn labels with those (``firstmile.online_models.learner``).

>>> band(0.62, "medium"), band(0.66, "medium"), band(0.2, None)
('medium', 'high', 'low')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from firstmile.operators.events import Event
from firstmile.operators.eventtime import iso
from firstmile.operators.experiments import Experiments, Outcome
from firstmile.operators.features import FEATURE_NAMES, name_mix
from firstmile.operators.outputs import SCHEMA_VERSION, Output, message_id
from firstmile.operators.paths import PathMap
from firstmile.operators.population import PopulationStats
from firstmile.operators.profile import NEW_SEGMENT, UserProfile, path_choices
from firstmile.operators.rules import Verdict
from firstmile.operators.samples import Return, Sample

#: Churn-risk bands (upper bounds); a user changes band only this far past a bound.
BANDS = (("low", 0.3), ("medium", 0.6), ("high", 1.01))
BAND_MARGIN = 0.05


def band(risk: float, current: str | None) -> str:
    """The risk band, keeping ``current`` while ``risk`` is within the margin of it."""
    lower = 0.0
    for name, upper in BANDS:
        if name == current and lower - BAND_MARGIN <= risk < upper + BAND_MARGIN:
            return name
        lower = upper
    return next(name for name, upper in BANDS if risk < upper)


class ScoredSegment(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def label(self) -> str: ...


class Scoring(Protocol):
    """What deciding reads of the models in force (``online_models.scoring.Scorer``)."""

    versions: dict[str, str]

    @property
    def population(self) -> PopulationStats: ...

    def segment(self, x: dict[str, float], current: str | None) -> ScoredSegment | None: ...

    def churn(self, x: dict[str, float]) -> tuple[float, str, list[dict[str, Any]]]: ...


class Attributes(Mapping[str, Any]):
    """What conditions in paths, rules and experiments read (``rules.ATTRIBUTES``): the
    profile's own fields, and its features from ``vector`` (a ``LazyFeatures`` computes
    only the ones the conditions read)."""

    __slots__ = ("_base", "_vector")

    def __init__(self, base: dict[str, Any], vector: Mapping[str, float]) -> None:
        self._base, self._vector = base, vector

    def __getitem__(self, key: str) -> Any:
        if key in self._base:
            return self._base[key]
        if key in _FEATURES:
            return self._vector.get(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._base:
            return self._base[key]
        if key in _FEATURES:
            return self._vector.get(key, default)
        return default

    def __contains__(self, key: object) -> bool:
        return key in self._base or key in _FEATURES

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from FEATURE_NAMES

    def __len__(self) -> int:
        return len(self._base) + len(FEATURE_NAMES)


_FEATURES = frozenset(FEATURE_NAMES)


def attributes(
    profile: UserProfile,
    vector: Mapping[str, float],
    event: Event | Mapping[str, Any] | None = None,
) -> Attributes:
    """The user's attributes, with ``event`` (the cause) when there is one: an event, or
    what stands for one (an absence deadline's kind, name and matched property)."""
    return Attributes(_own(profile, event), vector)


def _own(profile: UserProfile, event: Event | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attributes that are the profile's own fields (not features)."""
    known: dict[str, Any] = {
        "user_id": profile.user_id,
        "segment": profile.segment[0],
        "segment_label": profile.segment[1],
        "churn_band": profile.risk_band,
        "churn_risk": profile.churn_risk,
        "churn_rank": profile.churn_rank,
        "path": profile.path,
        "country": profile.country,
        "device": profile.device,
        "trait": profile.traits,
        "arms": profile.arms,
    }
    if isinstance(event, Event):
        known["event"] = {"kind": event.kind, "name": event.name, "properties": event.properties}
    elif event is not None:
        known["event"] = event
    return known


def decide(
    profile: UserProfile,
    vector: dict[str, float],
    scorer: Scoring,
    *,
    reasons: list[str],
    paths: PathMap | None = None,
    imposed_path: str | None = None,
    event_time: datetime,
    processed_at: datetime,
    cause_event: str | None = None,
    config_version: str | None = None,
) -> tuple[Output | None, list[str]]:
    """Score ``profile``: the decision event if ``reasons`` or a change call for one, and
    every reason (the changes found added). ``imposed_path``: an experiment arm's path;
    ``config_version``: the playbook's, named with the models' versions."""
    before = profile.segment
    # A signup is the user's first word: a scoring of the visit before it was never
    # announced, so the signup reports (and holds no hysteresis) from a new user.
    first = "signup" in reasons
    previous, held_band = (NEW_SEGMENT, None) if first else (before, profile.risk_band)
    current = previous[0] if previous[0] != NEW_SEGMENT[0] else None
    segment = scorer.segment(vector | name_mix(profile), current)
    if segment is not None:
        if segment.id != previous[0]:
            reasons = [*reasons, "segment_changed"]
        # id and label from one model version, named with them: a label is never stale
        profile.segment = (segment.id, segment.label, scorer.versions["segments"])
    risk, _, top = scorer.churn(vector)
    # The store keeps the highest seq: a rendered change with no seq of its own is lost.
    moved = round(risk, 4) != round(profile.churn_risk or -1.0, 4) or profile.segment != before
    new_band = band(risk, held_band)
    if held_band is not None and new_band != held_band:
        reasons = [*reasons, "risk_band_changed"]
    profile.churn_risk, profile.risk_band = risk, new_band
    profile.churn_rank = scorer.population.risk_rank(risk, vector.get("days_since_signup", 0.0))
    if imposed_path is not None or paths is not None:
        reasons = repath(profile, vector, paths, imposed_path, reasons)
    if not reasons:
        if moved:
            profile.seq += 1
        return None, reasons
    profile.seq += 1
    cause = cause_event or f"timer:{iso(event_time)}"
    value = {
        "schema_version": SCHEMA_VERSION,
        "id": message_id("segment", profile.user_id, cause, *reasons),
        "type": "segment_change",
        "user_id": profile.user_id,
        "seq": profile.seq,
        "event_time": iso(event_time),
        "processed_at": iso(processed_at),
        "reason": "+".join(reasons),
        "previous_segment_id": previous[0],
        "previous_segment_label": previous[1],
        "segment_id": profile.segment[0],
        "segment_label": profile.segment[1],
        "churn_risk": round(risk, 4),
        "churn_band": new_band,
        "onboarding_path": profile.path or "default",
        "experiment_arms": dict(profile.arms),
        "top_features": top,
        "model_versions": _versions(scorer.versions, config_version),
        **({"path_choices": path_choices(profile)} if profile.choices else {}),
        "cause": {
            "event_id": cause_event,
            "rule_id": None,
            "signal": None if cause_event else reasons[0],
        },
    }
    return Output("segment", profile.user_id, value), reasons


def _versions(models: Mapping[str, Any], config: str | None) -> dict[str, Any]:
    return {**models, "config": config} if config is not None else dict(models)


def path_attributes(profile: UserProfile, vector: dict[str, float]) -> dict[str, Any]:
    """What the path mapping reads: a plain dict (a few attributes per scoring, all known)."""
    return {**vector, **_own(profile)}


def imposed_path(
    profile: UserProfile, experiments: Experiments, paths: PathMap, vector: dict[str, float]
) -> str | None:
    """The path the user's experiment arms impose: a fixed arm's, or the one a learned
    policy chose for them (``profile.choices``) unless a ``required`` path rule matches
    them now (a guard rail); None: the mapping chooses (also for a learned arm's user the
    policy gave the rules' path: it deferred to the rules, which then adapt it as the
    rules arm's)."""
    if not profile.arms:
        return None
    fixed = experiments.path(profile.arms)
    if fixed is not None:
        return fixed
    learned = experiments.learned(profile.arms)
    chosen = profile.choices.get(learned.key) if learned is not None else None
    if chosen is None or chosen[2] == "deferred":  # the policy chose what the rules choose
        return None
    return paths.required_path(path_attributes(profile, vector)) or chosen[0]


def repath(
    profile: UserProfile,
    vector: dict[str, float],
    paths: PathMap | None,
    imposed_path: str | None,
    reasons: list[str],
) -> list[str]:
    """Choose the user's onboarding path (``imposed_path``: an experiment arm's); the
    reasons, with ``path_changed`` if it changed."""
    path = imposed_path or paths.choose(path_attributes(profile, vector))  # type: ignore[union-attr]
    if profile.path is not None and path != profile.path:
        reasons = [*reasons, "path_changed"]
    profile.path = path
    return reasons


def trigger_message(
    profile: UserProfile,
    verdict: Verdict,
    known: Mapping[str, Any],
    *,
    event_time: datetime,
    processed_at: datetime,
    cause_event: str | None,
    signal: str | None,
    versions: Mapping[str, Any],
    config_version: str | None = None,
) -> Output:
    """The trigger event of a rule that won (``config_version``: its playbook's)."""
    rule = verdict.rule
    profile.seq += 1
    cause = cause_event or f"{signal}:{iso(event_time)}"
    value = {
        "schema_version": SCHEMA_VERSION,
        "id": message_id("trigger", profile.user_id, rule.id, cause),
        "type": "trigger",
        "user_id": profile.user_id,
        "seq": profile.seq,
        "event_time": iso(event_time),
        "processed_at": iso(processed_at),
        "rule_id": rule.id,
        "action": rule.action,
        "priority": rule.priority,
        "payload": rule.render(known),
        "cause": {
            "event_id": cause_event,
            "signal": signal,
            "model_versions": _versions(versions, config_version),
        },
        "explanation": verdict.explanation(known),
    }
    return Output("trigger", profile.user_id, value)


def outcomes(profile: UserProfile, name: str, experiments: Experiments) -> list[Outcome]:
    """The user's outcome ``name`` (activation, retention), once per arm they are in."""
    signed_up = profile.signed_up_at
    if not profile.arms or signed_up is None:
        return []
    if name == "activation":
        done = profile.onboarding_completed_at
        limit = signed_up + timedelta(days=experiments.activation_days)
        success = done is not None and done <= limit
    else:
        day = signed_up + timedelta(days=experiments.retention_day)
        success = profile.last_seen is not None and profile.last_seen >= day
    return [Outcome(key, arm, name, success) for key, arm in profile.arms.items()]


def remember_decision(profile: UserProfile, at: datetime, vector: dict[str, float]) -> Sample:
    """A decision point: the learner keeps its features and awaits the user's return
    (``pending``: the first decision point the user has not come back after)."""
    if profile.pending is None or isinstance(profile.pending, tuple):
        profile.pending = at.timestamp()
    return Sample(profile.user_id, at, vector | name_mix(profile), decision=True)


def label_on_return(profile: UserProfile, when: datetime) -> Return | None:
    """The user is back after decision points: the learner dates their labels with it."""
    pending = profile.pending
    if isinstance(pending, tuple):  # recovered from before returns were dated
        pending = pending[0]
    if pending is None or when.timestamp() <= pending:
        return None
    profile.pending = None
    return Return(profile.user_id, datetime.fromtimestamp(pending, UTC), when)
