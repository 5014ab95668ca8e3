"""A profile read as numbers: the feature vector, engagement, completeness, and the
profile message built from them.

Feature names are stable (models and rules refer to them); ``FEATURE_NAMES`` lists them
in order. Everything is read at the profile's ``as_of`` (event time). Missing traits are
imputed from the population (as published with the models) and flagged by a
``*_missing`` feature; durations are clipped at the population's 99th percentile.

Engagement, 0-100 (documented in the README)::

    100 * (0.35 * min(1, ln(1 + events_7d) / ln(101))     # volume, saturating at 100/week
         + 0.25 * active_days_7d / 7                       # regularity
         + 0.20 * onboarding_progress                      # activation
         + 0.20 * min(1, features_distinct / 5))           # breadth
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from firstmile.operators.eventtime import iso
from firstmile.operators.outputs import SCHEMA_VERSION, Output
from firstmile.operators.population import NOBODY, PopulationStats
from firstmile.operators.profile import (
    COMPLETED,
    DEFAULT_SETTINGS,
    MIX_BUCKETS,
    SKIPPED,
    VIEWED,
    ProfileSettings,
    UserProfile,
    onboarding_progress,
    path_choices,
    session_summary,
)


class SentRule(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def action(self) -> str: ...


class RuleBookView(Protocol):
    """What a profile message reads of the rule book (``rules.RuleBook``, which reads
    features: a protocol here, not an import cycle)."""

    def last_sent(
        self, fired: dict[str, tuple[int, float]], user_id: str
    ) -> Sequence[tuple[SentRule, float]]: ...


FEATURE_NAMES: tuple[str, ...] = (
    "events_1h",
    "events_24h",
    "events_7d",
    "active_days_7d",
    "events_total_log",
    "sessions",
    "session_mean_min",
    "hours_since_last_seen",
    "days_since_signup",
    "onboarding_progress",
    "onboarding_completed",
    "steps_skipped",
    "time_to_complete_h",
    "features_distinct",
    "purchases",
    "support_tickets",
    "engagement",
    "completeness",
    "company_size_log",
    "company_size_missing",
    "role_admin",
    "role_missing",
    "is_mobile",
    "inactive_hours",
    # Rates and shares: how a user behaves, not how long they have been around, so they
    # mean the same after one session as after a month (what early segments read).
    "events_per_session",
    "sessions_per_day",
    "skip_share",
    "feature_use_share",
    "page_view_share",
    "steps_stuck",
)


#: A user's share of events in each name bucket (``profile.mix_bucket``): what they do,
#: not how much. Beside the feature vector (segments read it), not in it: outputs and
#: the churn model keep ``FEATURE_NAMES``. Batch KMeans on the tuning streams, ARI
#: against the planted behaviours at 48 h: `sim/1` 0.57 -> 0.69, `b2b/1` 0.50 -> 0.65.
MIX_FEATURES: tuple[str, ...] = tuple(f"mix_{i:02d}" for i in range(MIX_BUCKETS))


def name_mix(profile: UserProfile) -> dict[str, float]:
    """``MIX_FEATURES``: each bucket's share of the user's events (all 0 before any)."""
    counts = profile.mix
    total = sum(counts)
    if not total:
        return dict.fromkeys(MIX_FEATURES, 0.0)
    return {name: round(c / total, 4) for name, c in zip(MIX_FEATURES, counts, strict=True)}


def pack(vector: Mapping[str, float]) -> bytes:
    """A feature vector kept for later in float32 (96 bytes): features carry at most 4
    decimals and stay below 10^3 (or are whole numbers), which float32 holds closely
    enough for ``unpack`` to round back exactly. Bytes, not an array: the learner holds
    tens of thousands and is pickled every epoch, and bytes pickle 3x faster."""
    return array("f", [vector.get(name, 0.0) for name in FEATURE_NAMES]).tobytes()


def unpack(values: bytes | array[float]) -> dict[str, float]:
    """``pack``'s vector again (an array from a snapshot written before reads the same)."""
    floats = array("f", values)
    return {name: round(value, 4) for name, value in zip(FEATURE_NAMES, floats, strict=True)}


#: Features that read the population (imputed or clipped): they depend on the model
#: snapshot in force, so on where the learner had got to in the stream.
POPULATION_FEATURES = ("session_mean_min", "time_to_complete_h", "company_size_log", "role_admin")


#: What a complete profile knows; each missing one is a data gap.
EXPECTED = ("role", "company_size", "plan", "country", "device", "signup")


def engagement(
    profile: UserProfile,
    settings: ProfileSettings = DEFAULT_SETTINGS,
    windows: tuple[int, int, int, int] | None = None,
) -> float:
    _, _, events_7d, active_days = windows or _windows(profile)
    score = (
        0.35 * min(1.0, math.log1p(events_7d) / math.log(101))
        + 0.25 * active_days / 7
        + 0.20 * onboarding_progress(profile, settings)
        + 0.20 * min(1.0, len(profile.features_used) / 5)
    )
    return round(100 * score, 2)


def data_gaps(profile: UserProfile) -> list[str]:
    have = {
        "role": "role" in profile.traits,
        "company_size": "company_size" in profile.traits,
        "plan": "plan" in profile.traits,
        "country": profile.country is not None,
        "device": profile.device is not None,
        "signup": profile.signed_up_at is not None,
    }
    return [name for name in EXPECTED if not have[name]]


def completeness(profile: UserProfile) -> float:
    return round(1 - len(data_gaps(profile)) / len(EXPECTED), 3)


def features(
    profile: UserProfile,
    population: PopulationStats | None = None,
    settings: ProfileSettings = DEFAULT_SETTINGS,
    windows: tuple[int, int, int, int] | None = None,
    sessions: tuple[int, int, bool, float | None] | None = None,
) -> dict[str, float]:
    """The user's feature vector: every name in ``FEATURE_NAMES``, as floats.

    ``windows`` and ``sessions`` may be passed when the caller has read them already.
    """
    population = population or NOBODY
    w = _windowed(profile, settings, windows)
    s = _sessioned(profile, population, settings, sessions)
    t = _static(profile, population, settings)
    values = (w[0], w[1], w[2], w[3], t[0], s[0], s[1], *t[1:10], w[4], *t[10:])
    return dict(zip(FEATURE_NAMES, values, strict=True))


#: Features read together (one costly read each): the windows, the sessions, the rest.
_WINDOWED = ("events_1h", "events_24h", "events_7d", "active_days_7d", "engagement")
_SESSIONED = ("sessions", "session_mean_min")
_STATIC = tuple(name for name in FEATURE_NAMES if name not in (*_WINDOWED, *_SESSIONED))


def _windowed(
    profile: UserProfile,
    settings: ProfileSettings,
    windows: tuple[int, int, int, int] | None = None,
) -> tuple[float, ...]:
    windows = windows or _windows(profile)
    events_1h, events_24h, events_7d, active_days = windows
    return (
        float(events_1h),
        float(events_24h),
        float(events_7d),
        float(active_days),
        engagement(profile, settings, windows),
    )


def _sessioned(
    profile: UserProfile,
    population: PopulationStats,
    settings: ProfileSettings,
    sessions: tuple[int, int, bool, float | None] | None = None,
) -> tuple[float, ...]:
    session_count, _, _, mean_session_s = sessions or session_summary(profile, settings)
    return (
        float(session_count),
        round(population.clip("session_s", mean_session_s or 0.0) / 60, 4),
    )


def _company_size(profile: UserProfile, population: PopulationStats) -> tuple[Any, bool]:
    company_size = profile.traits.get("company_size")
    if isinstance(company_size, float):
        return company_size, False
    return population.impute("company_size"), True


def _role(profile: UserProfile, population: PopulationStats) -> tuple[Any, bool]:
    role = profile.traits.get("role")
    if role is None:
        return population.impute("role"), True
    return role, False


def _company_size_log(p: UserProfile, pop: PopulationStats, s: ProfileSettings) -> float:
    size = _company_size(p, pop)[0]
    return round(math.log1p(max(0.0, size)), 4) if isinstance(size, float) else 0.0


_Feature = Callable[[UserProfile, PopulationStats, ProfileSettings], float]

#: ``_STATIC``'s features, each on its own (cheap): counts and flags exact, the rest rounded.
_STATIC_FEATURES: dict[str, _Feature] = {
    "events_total_log": lambda p, pop, s: round(math.log1p(p.events_total), 4),
    "hours_since_last_seen": lambda p, pop, s: round(_hours(p.last_seen, p.as_of), 4),
    "days_since_signup": lambda p, pop, s: round(_hours(p.signed_up_at, p.as_of) / 24, 4),
    "onboarding_progress": lambda p, pop, s: round(onboarding_progress(p, s), 4),
    "onboarding_completed": lambda p, pop, s: float(p.onboarding_completed_at is not None),
    "steps_skipped": lambda p, pop, s: float(_steps_in(p, SKIPPED)),
    "time_to_complete_h": lambda p, pop, s: round(
        pop.clip("onboarding_s", time_to_complete_s(p) or 0.0) / 3600, 4
    ),
    "features_distinct": lambda p, pop, s: float(len(p.features_used)),
    "purchases": lambda p, pop, s: float(p.counts.get("purchase", 0)),
    "support_tickets": lambda p, pop, s: float(p.counts.get("support_ticket", 0)),
    "completeness": lambda p, pop, s: completeness(p),
    "company_size_log": _company_size_log,
    "company_size_missing": lambda p, pop, s: float(_company_size(p, pop)[1]),
    "role_admin": lambda p, pop, s: float(_role(p, pop)[0] in ("admin", "owner")),
    "role_missing": lambda p, pop, s: float(_role(p, pop)[1]),
    "is_mobile": lambda p, pop, s: float(p.device in ("mobile", "tablet")),
    "inactive_hours": lambda p, pop, s: float(p.inactive_hours),
    "events_per_session": lambda p, pop, s: round(p.events_total / max(1, p.sessions.count()), 4),
    "sessions_per_day": lambda p, pop, s: round(
        p.sessions.count() / max(1.0, _hours(p.signed_up_at or p.first_seen, p.as_of) / 24), 4
    ),
    "skip_share": lambda p, pop, s: round(_steps_in(p, SKIPPED) / max(1, len(p.steps)), 4),
    "feature_use_share": lambda p, pop, s: _share(p, "feature_used"),
    "page_view_share": lambda p, pop, s: _share(p, "page_view"),
    "steps_stuck": lambda p, pop, s: float(_steps_in(p, VIEWED)),
}


def _steps_in(profile: UserProfile, state: int) -> int:
    return sum(1 for held in profile.steps.values() if held == state)


def _share(profile: UserProfile, kind: str) -> float:
    return round(profile.counts.get(kind, 0) / max(1, profile.events_total), 4)


assert tuple(_STATIC_FEATURES) == _STATIC
_STATIC_FUNCTIONS = tuple(_STATIC_FEATURES.values())


def _static(
    profile: UserProfile, population: PopulationStats, settings: ProfileSettings
) -> tuple[float, ...]:
    return tuple([f(profile, population, settings) for f in _STATIC_FUNCTIONS])


class LazyFeatures(Mapping[str, float]):
    """The feature vector read on demand: each feature (the windows' and the sessions'
    as a group, one costly read each) is computed when first asked for. For conditions
    that read a few features per event; ``features`` when all are needed."""

    __slots__ = ("_population", "_profile", "_settings", "_values")

    def __init__(
        self, profile: UserProfile, population: PopulationStats, settings: ProfileSettings
    ) -> None:
        self._profile, self._population, self._settings = profile, population, settings
        self._values: dict[str, float] = {}

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __getitem__(self, name: str) -> float:
        values = self._values
        if name not in values:
            single = _STATIC_FEATURES.get(name)
            if single is not None:
                values[name] = single(self._profile, self._population, self._settings)
            elif name in _WINDOWED:
                values.update(zip(_WINDOWED, _windowed(self._profile, self._settings), strict=True))
            elif name in _SESSIONED:
                group = _sessioned(self._profile, self._population, self._settings)
                values.update(zip(_SESSIONED, group, strict=True))
            else:
                raise KeyError(name)
        return values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(FEATURE_NAMES)

    def __len__(self) -> int:
        return len(FEATURE_NAMES)


def time_to_complete_s(profile: UserProfile) -> float | None:
    """Seconds from signup (or first sight) to onboarding completed; None until then."""
    done, start = profile.onboarding_completed_at, profile.signed_up_at or profile.first_seen
    if done is None or start is None:
        return None
    return max(0.0, (done - start).total_seconds())


def profile_message(
    profile: UserProfile,
    processed_at: datetime,
    *,
    population: PopulationStats | None = None,
    settings: ProfileSettings = DEFAULT_SETTINGS,
    final: bool = False,
    vector: dict[str, float] | None = None,
    rules: RuleBookView | None = None,
) -> Output:
    """The user's current profile, as stored in Redis and written to profiles.jsonl.

    ``vector``: the feature vector, when the caller computed it already; ``rules``: the
    rule book the user's last triggers are read with.
    """
    windows = _windows(profile)
    events_1h, events_24h, events_7d, active_days = windows
    summary = session_summary(profile, settings)
    session_count, closed, is_open, mean_session_s = summary
    vector = vector or features(profile, population, settings, windows, summary)
    steps = profile.steps
    to_complete = time_to_complete_s(profile)
    imputed = [name for name in ("company_size", "role") if vector[f"{name}_missing"]]
    value: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "user_id": profile.user_id,
        "seq": profile.seq,
        "events_total": profile.events_total,
        "counts": dict(sorted(profile.counts.items())),
        "first_seen": _iso(profile.first_seen),
        "last_seen": _iso(profile.last_seen),
        "as_of": _iso(profile.as_of),
        "signed_up_at": _iso(profile.signed_up_at),
        "segment": profile.segment[0],
        "segment_label": profile.segment[1],
        "segment_version": (*profile.segment, "none")[2],  # state from before versions: none
        "churn_risk": round(profile.churn_risk, 4) if profile.churn_risk is not None else None,
        "churn_band": profile.risk_band,
        "churn_rank": profile.churn_rank,
        "onboarding_path": profile.path,
        "experiment_arms": dict(profile.arms),
        "last_triggers": [
            {"rule_id": rule.id, "action": rule.action, "at": iso(datetime.fromtimestamp(at, UTC))}
            for rule, at in (rules.last_sent(profile.fired, profile.user_id) if rules else ())
        ],
        "sessions": {
            "count": session_count,
            "closed": closed,
            "open": is_open,
            "mean_minutes": round(mean_session_s / 60, 3) if mean_session_s is not None else None,
        },
        "windows": {
            "events_1h": events_1h,
            "events_24h": events_24h,
            "events_7d": events_7d,
            "active_days_7d": active_days,
        },
        "onboarding": {
            "progress": round(onboarding_progress(profile, settings), 4),
            "completed": profile.onboarding_completed_at is not None,
            "completed_at": _iso(profile.onboarding_completed_at),
            "time_to_complete_h": round(to_complete / 3600, 3) if to_complete is not None else None,
            "steps_viewed": sorted(step for step, state in steps.items() if state == VIEWED),
            "steps_completed": sorted(step for step, state in steps.items() if state == COMPLETED),
            "steps_skipped": sorted(step for step, state in steps.items() if state == SKIPPED),
        },
        "features_used": sorted(profile.features_used),
        "traits": dict(sorted(profile.traits.items())),
        "country": profile.country,
        "region": profile.region,
        "device": profile.device,
        "inactive_hours": profile.inactive_hours,
        "engagement": vector["engagement"],
        "completeness": vector["completeness"],
        "data_gaps": data_gaps(profile),
        "imputed": imputed,
        "features": vector,
        "updated_at": iso(processed_at),
    }
    if profile.choices:  # who chose the path of an experiment with a learned arm
        value["path_choices"] = path_choices(profile)
    return Output("profile", profile.user_id, value, final)


def _windows(profile: UserProfile) -> tuple[int, int, int, int]:
    if profile.as_of is None:
        return 0, 0, 0, 0
    return profile.windows.counts(profile.as_of)


def _hours(since: datetime | None, as_of: datetime | None) -> float:
    if since is None or as_of is None:
        return 0.0
    return max(0.0, (as_of - since).total_seconds() / 3600)


def _iso(when: datetime | None) -> str | None:
    return iso(when) if when is not None else None
