"""Per-user profile: the picklable state and the pure logic that updates it.

This is the first cut (issue 3): counters, recency and dedup. Later issues add windows,
sessions, onboarding progress and features on the same shape.

>>> from datetime import datetime, UTC
>>> from operators.events import Event
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> ev = Event("m1", "track", "signup", t, "u1", "a1", name="Signed Up")
>>> profile = UserProfile("u1")
>>> [o.kind for o in apply_event(profile, ev, processed_at=t)]
['segment']
>>> apply_event(profile, ev, processed_at=t) is DUPLICATE, profile.events_total
(True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from operators.dedup import RecentIds
from operators.events import Event
from operators.eventtime import iso
from operators.outputs import SCHEMA_VERSION, Output, message_id

#: What ``apply_event`` returns for a message id it has already seen.
DUPLICATE: Final = None

#: Segment of a user before any model has placed them.
NEW_SEGMENT = ("new", "New user")


@dataclass(slots=True)
class UserProfile:
    """Everything firstmile keeps about one user (bounded: caps documented per field)."""

    user_id: str
    known: bool = False  # has a product user id (anonymous visitors get no output)
    seq: int = 0  # bumped on every accepted event and every output: orders outputs per user
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # by canonical kind: <= 16 keys
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    signed_up_at: datetime | None = None
    segment: tuple[str, str] = NEW_SEGMENT
    recent_ids: RecentIds = field(default_factory=RecentIds)  # <= 256 ids, 24 h


def apply_event(
    profile: UserProfile, event: Event, *, processed_at: datetime
) -> list[Output] | None:
    """Fold one event into ``profile``; the outputs it causes, or ``DUPLICATE``."""
    if not profile.recent_ids.add(event.message_id, event.timestamp):
        return DUPLICATE
    profile.seq += 1
    profile.events_total += 1
    profile.counts[event.kind] = profile.counts.get(event.kind, 0) + 1
    if profile.first_seen is None or event.timestamp < profile.first_seen:
        profile.first_seen = event.timestamp
    if profile.last_seen is None or event.timestamp > profile.last_seen:
        profile.last_seen = event.timestamp
    if event.user_id:
        profile.known = True
    outputs: list[Output] = []
    if event.kind == "signup" and profile.signed_up_at is None and profile.known:
        profile.signed_up_at = event.timestamp
        outputs.append(segment_message(profile, event, reason="signup", processed_at=processed_at))
    return outputs


def segment_message(
    profile: UserProfile,
    cause: Event,
    *,
    reason: str,
    processed_at: datetime,
    previous: tuple[str, str] | None = None,
) -> Output:
    profile.seq += 1
    value = {
        "schema_version": SCHEMA_VERSION,
        "id": message_id("segment", profile.user_id, cause.message_id, reason),
        "type": "segment_change",
        "user_id": profile.user_id,
        "seq": profile.seq,
        "event_time": iso(cause.timestamp),
        "processed_at": iso(processed_at),
        "reason": reason,
        "previous_segment_id": previous[0] if previous else None,
        "previous_segment_label": previous[1] if previous else None,
        "segment_id": profile.segment[0],
        "segment_label": profile.segment[1],
        "churn_risk": None,
        "onboarding_path": "default",
        "experiment_arms": {},
        "top_features": [],
        "model_versions": {"segments": "none", "churn": "none"},
        "cause": {"event_id": cause.message_id, "rule_id": None},
    }
    return Output("segment", profile.user_id, value)


def profile_message(profile: UserProfile, processed_at: datetime, *, final: bool = False) -> Output:
    """The user's current profile, as stored in Redis and written to profiles.jsonl."""
    value: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "user_id": profile.user_id,
        "seq": profile.seq,
        "events_total": profile.events_total,
        "counts": dict(sorted(profile.counts.items())),
        "first_seen": iso(profile.first_seen) if profile.first_seen else None,
        "last_seen": iso(profile.last_seen) if profile.last_seen else None,
        "signed_up_at": iso(profile.signed_up_at) if profile.signed_up_at else None,
        "segment": profile.segment[0],
        "segment_label": profile.segment[1],
        "updated_at": iso(processed_at),
    }
    return Output("profile", profile.user_id, value, final)
