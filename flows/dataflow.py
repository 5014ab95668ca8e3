"""The firstmile dataflow, wired once from pure steps; sources and sinks are arguments.

input ─► decode ─┬─ dead letters ─────────────────────────────┐
                 └─ events ─► key by user ─► profile ─► outputs ─┴─► every sink
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows import metrics
from operators.decode import Decoder
from operators.dedup import RecentIds
from operators.events import DeadLetter, Event, RawRecord
from operators.eventtime import utc_now
from operators.outputs import Output, dead_letter_message
from operators.profile import DUPLICATE, UserProfile, apply_event, profile_message

ANONYMOUS_PREFIX = "anon:"


@dataclass(frozen=True)
class FlowSettings:
    """What the steps need besides their input; built from the config by the run modes."""

    decoder: Decoder
    dedup_capacity: int = 256
    dedup_window: timedelta = timedelta(hours=24)
    #: Emit the user's profile after each batch that changed it (for the Redis store).
    profile_updates: bool = False
    now: Callable[[], datetime] = field(default=utc_now)


def user_key(event: Event) -> str:
    """The state key: the product's user id, else the anonymous id (kept apart by prefix)."""
    return event.user_id if event.user_id else ANONYMOUS_PREFIX + (event.anonymous_id or "")


class ProfileLogic(StatefulBatchLogic[Event, Output, UserProfile]):
    """Bytewax glue around ``operators.profile``: one instance per user key."""

    def __init__(self, settings: FlowSettings, resume: UserProfile | None) -> None:
        self.settings = settings
        self.profile = resume

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        settings = self.settings
        now = settings.now()
        outputs: list[Output] = []
        changed = False
        for event in values:
            profile = self.profile
            if profile is None:
                profile = self.profile = UserProfile(
                    user_key(event),
                    recent_ids=RecentIds(settings.dedup_capacity, settings.dedup_window),
                )
                metrics.USERS.labels("known" if event.user_id else "anonymous").inc()
            result = apply_event(profile, event, processed_at=now)
            if result is DUPLICATE:
                metrics.DUPLICATES.inc()
                continue
            changed = True
            metrics.EVENTS.labels(event.kind).inc()
            outputs.extend(result)
        if changed and settings.profile_updates and self.profile and self.profile.known:
            outputs.append(profile_message(self.profile, now))
        return outputs, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        if self.profile is not None and self.profile.known:
            final = profile_message(self.profile, self.settings.now(), final=True)
            return [final], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> UserProfile:
        assert self.profile is not None  # a key gets logic only once it has an event
        return self.profile


def build_flow(
    source: Source[RawRecord], sinks: Sequence[Sink[Output]], settings: FlowSettings
) -> Dataflow:
    """The whole job: ``source`` in, every output to each of ``sinks``."""
    decoder = settings.decoder

    def decode(record: RawRecord) -> Event | DeadLetter:
        metrics.EVENTS_IN.inc()
        result = decoder(record.value, record.source)
        if isinstance(result, DeadLetter):
            metrics.DEAD_LETTERS.labels(result.reason).inc()
        return result

    def is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
        return isinstance(item, Event)

    def dead_letter_output(dead: Any) -> Output:
        return dead_letter_message(dead, settings.now())

    def unkey(keyed: tuple[str, Output]) -> Output:
        return keyed[1]

    def count(output: Output) -> None:
        metrics.OUTPUTS.labels(output.label).inc()

    flow = Dataflow("firstmile")
    raw = op.input("input", flow, source)
    decoded = op.map("decode", raw, decode)
    split = op.branch("split_dead_letters", decoded, is_event)
    dead = op.map("dead_letter", split.falses, dead_letter_output)
    keyed = op.key_on("key_by_user", split.trues, user_key)
    profiled = op.stateful_batch("profile", keyed, lambda resume: ProfileLogic(settings, resume))
    outputs = op.merge("outputs", dead, op.map("unkey", profiled, unkey))
    op.inspect("count_outputs", outputs, lambda _step, output: count(output))
    for index, sink in enumerate(sinks):
        op.output(f"sink_{index}_{type(sink).__name__}", outputs, sink)
    return flow
