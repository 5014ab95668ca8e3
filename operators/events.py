"""The typed values that flow between steps: a normalized ``Event`` or a ``DeadLetter``.

Raw wire dicts never leave ``firstmile.operators.decode``; everything downstream sees these.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

EventType = Literal["track", "identify", "page", "screen", "alias", "group"]

#: Canonical kinds that config/events.toml maps track event names to.
CANONICAL_KINDS: frozenset[str] = frozenset(
    {
        "signup",
        "session_start",
        "page_view",
        "feature_viewed",
        "feature_used",
        "onboarding_step_viewed",
        "onboarding_step_completed",
        "onboarding_step_skipped",
        "onboarding_completed",
        "purchase",
        "support_ticket",
        "consent_updated",
        "user_erased",
        "identify",
        "alias",
        "group",
        "custom",
    }
)

DeadLetterReason = Literal[
    "malformed_json",
    "too_large",
    "too_deep",
    "not_an_object",
    "schema_violation",
    "missing_identity",
    "bad_timestamp",
    "clock_skew",
    "output_refused",
    "internal_error",
]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a raw record came from: a Kafka coordinate, a file line, or the simulator."""

    topic: str
    partition: int = 0
    offset: int = 0
    #: When the record reached the source (Kafka's timestamp, epoch seconds); 0: unknown.
    received: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    @property
    def partition_key(self) -> str:
        """``topic#partition``: the name of the source partition it was read from."""
        return f"{self.topic}#{self.partition}"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One message as a source delivers it: bytes plus their coordinates."""

    value: bytes
    source: SourceRef
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One accepted, normalized Segment-Spec event. Treat the dicts as read-only."""

    message_id: str
    type: EventType
    kind: str
    timestamp: datetime
    user_id: str | None
    anonymous_id: str | None
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    previous_id: str | None = None
    group_id: str | None = None
    country: str | None = None  # ISO-3166 alpha-2
    region: str | None = None  # ISO-3166-2, from the IP when a geo database is configured
    locale: str | None = None
    timezone: str | None = None
    device: str | None = None
    os: str | None = None
    app_version: str | None = None
    consent: dict[str, bool] | None = None
    source: SourceRef | None = None

    @property
    def identity(self) -> str:
        """The key the identity step routes on: the user id if known, else the anonymous id."""
        return self.user_id or self.anonymous_id or ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not become an ``Event``, with why and where it came from."""

    reason: DeadLetterReason
    detail: str
    raw: bytes
    source: SourceRef | None = None

    @property
    def raw_b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")
