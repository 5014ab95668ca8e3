"""Per-user profile: the picklable state and the pure logic that updates it.

Everything here is event time: ``as_of`` is the newest event or timer time the profile
has seen, and windows, recency and engagement are read at ``as_of``, so a replay at full
speed computes what living through the events computed. Memory per user is bounded by
the caps on each field (see ``ProfileSettings``).

>>> from datetime import datetime, UTC
>>> from firstmile.operators.events import Event
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> ev = Event("m1", "track", "signup", t, "u1", "a1", name="Signed Up")
>>> profile = UserProfile("u1")
>>> apply_event(profile, ev, processed_at=t)  # what the event calls for: a signup decision
['signup']
>>> apply_event(profile, ev, processed_at=t) is DUPLICATE, profile.events_total
(True, 1)
"""

from __future__ import annotations

import math
import sys
import zlib
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from firstmile.operators.dedup import RecentIds
from firstmile.operators.events import Event
from firstmile.operators.outputs import Output
from firstmile.operators.sessions import Sessions
from firstmile.operators.windows import Windows

#: What ``apply_event`` returns for a message id it has already seen.
DUPLICATE: Final = None

#: Segment of a user before any model has placed them.
NEW_SEGMENT = ("new", "New user", "none")  # id, label, the model version that assigned them

#: Onboarding step states, by precedence: a completed step stays completed.
VIEWED, SKIPPED, COMPLETED = 1, 2, 3
_STEP_STATE = {
    "onboarding_step_viewed": VIEWED,
    "onboarding_step_skipped": SKIPPED,
    "onboarding_step_completed": COMPLETED,
    "onboarding_completed": COMPLETED,
}
_MAX_TEXT = 64  # longer trait values, step and feature names are cut


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """Knobs of the profile logic; the caps bound memory per user."""

    session_gap: timedelta = timedelta(minutes=30)
    #: The product's onboarding steps, in order (progress = done / len).
    onboarding_steps: tuple[str, ...] = (
        "welcome",
        "profile",
        "connect_data",
        "invite_team",
        "first_report",
    )
    #: Identify traits kept in the profile (after privacy); others are ignored.
    traits: tuple[str, ...] = ("role", "company_size", "plan", "industry", "team_size")
    max_steps: int = 32
    max_features: int = 32


DEFAULT_SETTINGS = ProfileSettings()

#: Buckets event names are hashed into for a user's mix of events. Hashed, not a learned
#: vocabulary: the space is fixed from the first event on (centers, scalers and the
#: forecast's early snapshots keep their meaning), whatever names a product sends.
MIX_BUCKETS: Final = 16


def mix_name(event: Event) -> str:
    """What an event counts as in the mix: a track call by its name; page, screen,
    identify... by their type (page names are many: spread over the buckets, they would
    blur what a user does)."""
    return event.name if event.type == "track" and event.name else event.type


@lru_cache(maxsize=4096)  # a product sends a few dozen names
def mix_bucket(name: str) -> int:
    """The bucket of an event name (a track call's name, else the call's type).

    >>> mix_bucket("Report Created") == mix_bucket("Report Created"), 0 <= mix_bucket("page") < 16
    (True, True)
    """
    return zlib.crc32(name.encode()) % MIX_BUCKETS


@dataclass(slots=True)
class Lane:
    """A second playbook's view of one user (a backtest's candidate): the fields a
    playbook decides, kept apart; everything else is the profile's."""

    path: str | None = None
    arms: dict[str, str] = field(default_factory=dict)
    fired: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass(slots=True)
class UserProfile:
    """Everything firstmile keeps about one user (bounded: caps documented per field)."""

    user_id: str
    known: bool = False  # has a product user id
    seq: int = 0  # bumped on every accepted event and every output: orders outputs per user
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # by canonical kind: <= 16 keys
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    as_of: datetime | None = None  # newest event or timer time seen
    signed_up_at: datetime | None = None
    segment: tuple[str, ...] = NEW_SEGMENT
    recent_ids: RecentIds = field(default_factory=RecentIds)  # dedup: capacity, 24 h
    sessions: Sessions = field(default_factory=Sessions)  # <= 8 intervals + folded totals
    attributes_at: datetime | None = None  # event time of the newest traits/country/device
    windows: Windows = field(default_factory=Windows)  # <= 43 buckets
    steps: dict[str, int] = field(default_factory=dict)  # step -> VIEWED/SKIPPED/COMPLETED
    onboarding_completed_at: datetime | None = None
    features_used: dict[str, None] = field(default_factory=dict)  # ordered set, <= max_features
    traits: dict[str, str | float] = field(default_factory=dict)  # configured keys only
    country: str | None = None
    region: str | None = None  # ISO-3166-2, from the IP (the IP itself is never kept)
    device: str | None = None
    inactive_hours: int = 0  # largest "no activity for H hours" signal since the last event
    churn_risk: float | None = None
    risk_band: str | None = None
    scored_at: datetime | None = None  # event time of the last scoring
    path: str | None = None  # onboarding path the app should show
    pending_update: bool = False  # changed since the store last got it
    #: The last decision point the user has not come back after (epoch seconds).
    pending: float | None = None
    erased_at: datetime | None = None  # set: the user asked to be forgotten
    arms: dict[str, str] = field(default_factory=dict)  # experiment -> arm (sticky)
    #: Trigger rules: rule id -> (times fired, event time of the last, epoch s); the
    #: profile's "last triggers" are read from it (no second copy in the state).
    fired: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: The end of the first session after signup was a decision point already.
    first_session_decided: bool = False
    lane: Lane | None = None  # a backtest's candidate lane
    #: Experiment -> (path, propensity, policy) chosen at the first decision point.
    choices: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    #: Events by name, hashed into ``MIX_BUCKETS`` counts (empty until the first event):
    #: what a user does, whatever the product calls it (``features.name_mix``).
    mix: list[int] = field(default_factory=list)
    #: Where ``churn_risk`` ranks among recent decision points' at the user's age (0-1;
    #: ``PopulationStats.risk_rank``), None until the population has enough of them.
    churn_rank: float | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        # Values in field order: by default every user's pickled state would carry the
        # ~30 field names too (~370 of ~2,000 bytes). Times as whole microseconds since
        # the epoch: a datetime pickles as a call, and every profile touched in an epoch
        # is pickled at its end (38 -> 22 us a profile).
        state = [getattr(self, name) for name in _FIELDS]
        for index in _TIME_INDEXES:
            if (when := state[index]) is not None:
                state[index] = (when - _EPOCH) // _MICROSECOND
        return tuple(state)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            held = state[1]  # a snapshot written before: (None, {field name: value})
        else:
            held = dict(zip(_FIELDS, state, strict=False))  # fields added since: defaults
        for spec in fields(UserProfile):
            if spec.name in held:
                value = held[spec.name]
                if spec.name in _TIMES and isinstance(value, int):  # (a datetime before)
                    value = _EPOCH + value * _MICROSECOND
            elif spec.default is not MISSING:
                value = spec.default
            else:
                value = spec.default_factory()  # type: ignore[operator]
            setattr(self, spec.name, value)


_FIELDS: Final = tuple(spec.name for spec in fields(UserProfile))
_TIMES: Final = frozenset(
    spec.name for spec in fields(UserProfile) if spec.type == "datetime | None"
)
_TIME_INDEXES: Final = tuple(i for i, name in enumerate(_FIELDS) if name in _TIMES)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def apply_event(
    profile: UserProfile,
    event: Event,
    *,
    processed_at: datetime,
    settings: ProfileSettings = DEFAULT_SETTINGS,
) -> list[str] | None:
    """Fold one event into ``profile``; the decisions it calls for, or ``DUPLICATE``."""
    when = event.timestamp
    if not profile.recent_ids.add(event.message_id, when):
        return DUPLICATE
    profile.seq += 1
    profile.events_total += 1
    profile.counts[event.kind] = profile.counts.get(event.kind, 0) + 1
    mix = profile.mix or [0] * MIX_BUCKETS
    mix[mix_bucket(mix_name(event))] += 1
    profile.mix = mix
    if profile.first_seen is None or when < profile.first_seen:
        profile.first_seen = when
    if profile.last_seen is None or when > profile.last_seen:
        profile.last_seen = when
        profile.inactive_hours = 0
    if profile.as_of is None or when > profile.as_of:
        profile.as_of = when
    if event.user_id:
        profile.known = True
    profile.windows.add(when)
    profile.sessions.add(when.timestamp(), settings.session_gap.total_seconds())
    if profile.attributes_at is None or when >= profile.attributes_at:  # newest wins
        profile.attributes_at = when
        if event.country:
            profile.country, profile.region = event.country, event.region
        profile.device = event.device or profile.device
        if event.traits:
            _keep_traits(profile, event.traits, settings)
    _track(profile, event, settings)
    reasons: list[str] = []
    if event.kind == "signup" and profile.known:
        first = profile.signed_up_at is None
        if first or when < profile.signed_up_at:  # type: ignore[operator]
            profile.signed_up_at = when
        if first:
            reasons.append("signup")
    return reasons


def compact(profile: UserProfile) -> None:
    """Shrink an idle user's state to what outlives idleness: totals, traits, onboarding.

    Windows are empty by now, sessions fold into their totals, and remembered message ids
    have expired; ``seq`` and lifetime numbers go on if the user comes back.
    """
    profile.recent_ids = RecentIds(profile.recent_ids.capacity, profile.recent_ids.window)
    profile.windows = Windows()
    profile.sessions.fold()


def session_summary(
    profile: UserProfile, settings: ProfileSettings = DEFAULT_SETTINGS
) -> tuple[int, int, bool, float | None]:
    """(sessions, closed, newest open, mean closed length in s), read at ``as_of``."""
    as_of = profile.as_of.timestamp() if profile.as_of else float("-inf")
    return profile.sessions.summary(as_of=as_of, gap=settings.session_gap.total_seconds())


def path_choices(profile: UserProfile) -> dict[str, dict[str, Any]]:
    """Who chose the user's path in each experiment with a learned arm, with what chance."""
    return {
        key: {"path": path, "propensity": propensity, "policy": policy}
        for key, (path, propensity, policy) in profile.choices.items()
    }


def onboarding_progress(profile: UserProfile, settings: ProfileSettings) -> float:
    """Share of the configured steps completed or skipped (1.0 once onboarding completed)."""
    if profile.onboarding_completed_at is not None:
        return 1.0
    if not settings.onboarding_steps:
        return 0.0
    done = sum(1 for step in settings.onboarding_steps if profile.steps.get(step, 0) >= SKIPPED)
    return done / len(settings.onboarding_steps)


def erase(user_id: str, event: Event, *, seq: int) -> tuple[UserProfile, list[Output]]:
    """Forget ``user_id``: an empty profile that only remembers the erasure, and tombstones.

    The tombstones (``value`` None) delete the user's key from the segments and triggers
    topics (compacted) and the profile from the store. ``seq`` is the user's last seq: it goes
    on, so the store's "higher seq wins" keeps older writes from bringing data back.
    """
    forgotten = UserProfile(user_id, known=True, seq=seq + 1, erased_at=event.timestamp)
    tombstones = [
        Output("segment", user_id, None, seq=forgotten.seq),
        Output("trigger", user_id, None, seq=forgotten.seq),
        Output("profile", user_id, None, seq=forgotten.seq),
    ]
    return forgotten, tombstones


#: Numeric traits beyond this are no measurement (``company_size: 1e308`` once fed 709
#: into the learner and the population's mean): not kept.
MAX_NUMERIC_TRAIT = 1e9


def _keep_traits(profile: UserProfile, traits: dict[str, Any], settings: ProfileSettings) -> None:
    for name in settings.traits:
        value = traits.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            if math.isfinite(value) and abs(value) <= MAX_NUMERIC_TRAIT:
                profile.traits[name] = float(value)  # else implausible: not kept
        elif isinstance(value, str) and value.strip():
            profile.traits[name] = sys.intern(value.strip().lower()[:_MAX_TEXT])


def _track(profile: UserProfile, event: Event, settings: ProfileSettings) -> None:
    kind = event.kind
    state = _STEP_STATE.get(kind)
    if state is not None:
        step = event.properties.get("step")
        if isinstance(step, str) and step:
            step = sys.intern(step[:_MAX_TEXT])  # one copy across users, not one each
            if step in profile.steps or len(profile.steps) < settings.max_steps:
                profile.steps[step] = max(profile.steps.get(step, 0), state)
        done = profile.onboarding_completed_at
        if kind == "onboarding_completed" and (done is None or event.timestamp < done):
            profile.onboarding_completed_at = event.timestamp
    elif kind == "feature_used":
        name = event.properties.get("feature")
        feature = (name if isinstance(name, str) and name else event.name or "unnamed")[:_MAX_TEXT]
        used = profile.features_used
        if feature not in used and len(used) < settings.max_features:
            used[sys.intern(feature)] = None
