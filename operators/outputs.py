"""Output messages: what firstmile writes to Kafka, Redis and JSONL, with stable ids.

Every message carries ``schema_version``; ``id`` is derived from its cause, so the same
cause replayed after a crash yields the same id (consumers dedup on it).

>>> message_id("segment", "u1", "m1") == message_id("segment", "u1", "m1")
True
>>> message_id("segment", "u1", "m1") == message_id("trigger", "u1", "m1")
False
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from firstmile.operators.events import DeadLetter
from firstmile.operators.eventtime import iso

SCHEMA_VERSION = 1

OutputKind = Literal["segment", "trigger", "deadletter", "profile"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("segment", "trigger", "deadletter", "profile")


@dataclass(frozen=True, slots=True)
class Output:
    """One message for the sinks. ``value`` None is a tombstone for ``key``.

    A profile is ``final`` when it is the user's state at the end of the input (what
    profiles.jsonl holds); other profiles are live updates for the profile store.
    """

    kind: OutputKind
    key: str | None
    value: dict[str, Any] | None
    final: bool = False
    seq: int = 0  # a tombstone's seq (a value carries its own)
    side: int = 0  # a backtest's candidate lane says 1 (``user_step.Lane``)

    @property
    def label(self) -> str:
        """Its name in metrics and the summary."""
        return "profile_update" if self.kind == "profile" and not self.final else self.kind


def message_id(kind: str, *parts: object) -> str:
    """A deterministic id: the same kind and cause give the same id."""
    digest = hashlib.sha256("\x1f".join([kind, *map(str, parts)]).encode("utf-8"))
    return digest.hexdigest()[:32]


def dead_letter_message(dead: DeadLetter, processed_at: datetime) -> Output:
    source = dead.source.as_dict() if dead.source else None
    coordinates = (source["topic"], source["partition"], source["offset"]) if source else ()
    value = {
        "schema_version": SCHEMA_VERSION,
        "id": message_id("deadletter", *coordinates, hashlib.sha256(dead.raw).hexdigest()),
        "reason": dead.reason,
        "detail": dead.detail,
        "raw_b64": dead.raw_b64,
        "source": source,
        "processed_at": iso(processed_at),
    }
    return Output("deadletter", None, value)
