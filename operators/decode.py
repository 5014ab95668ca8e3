"""Bytes to a normalized ``Event`` or a ``DeadLetter``: parse, bound, validate, normalize.

``decode`` never raises, whatever the bytes.

>>> ev = decode(b'{"type":"track","event":"Signed Up","userId":"u1",'
...             b'"timestamp":"2026-03-02T10:00:00Z","context":{"locale":"en-GB"}}')
>>> ev.kind, ev.user_id, ev.country, ev.timestamp.isoformat()
('signup', 'u1', 'GB', '2026-03-02T10:00:00+00:00')
>>> decode(b'{"type":"track","event":"x"}').reason
'missing_identity'
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import msgspec
import orjson
from msgspec import UnsetType

from firstmile.operators.device import device_class
from firstmile.operators.events import DeadLetter, DeadLetterReason, Event, SourceRef
from firstmile.operators.eventtime import iso, parse_event_time, utc_now
from firstmile.operators.geo import country_code, country_from_locale
from firstmile.operators.kinds import EventKinds
from firstmile.operators.privacy import Privacy
from firstmile.operators.records import CALL_TYPES, RECORD, Context, Device, Record, check
from firstmile.operators.resources import CONFIG_DIR

_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
#: The largest batch envelope read (Segment's HTTP API takes up to 500 KB a batch).
BATCH_BYTES = 512 * 1024


def device_corrected(times: Mapping[str, datetime]) -> datetime:
    """The event's time, a device clock's error taken out where the message allows.

    As Segment does: ``timestamp + (receivedAt - sentAt)`` when the device stamped the
    event and its sending (``sentAt``) and a server the receipt (``receivedAt``). A message
    that already passed through Segment carries ``originalTimestamp`` beside a corrected
    ``timestamp``, taken as it is. Otherwise the first of ``_TIME_FIELDS`` present.
    """
    sent, received = times.get("sentAt"), times.get("receivedAt")
    if "originalTimestamp" in times and "timestamp" in times:
        return times["timestamp"]
    stamped = times.get("timestamp") or times.get("originalTimestamp")
    if stamped is not None and sent is not None and received is not None:
        return stamped + (received - sent)
    for name in _TIME_FIELDS:
        if name in times:
            return times[name]
    raise ValueError("no time field")  # the caller dead-letters a message without one


_EMPTY: Mapping[str, Any] = {}
_NO_CONTEXT = Context()
_NO_DEVICE = Device()


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what a single event may be. Segment itself caps messages at 32 KB."""

    max_bytes: int = 32 * 1024
    max_depth: int = 32
    max_future: timedelta = timedelta(days=1)


class Decoder:
    """A configured ``decode``: limits, the event-name mapping and a clock are injected."""

    def __init__(
        self,
        kinds: EventKinds,
        limits: DecodeLimits | None = None,
        now: Callable[[], datetime] = utc_now,
        privacy: Privacy | None = None,
    ) -> None:
        self.kinds = kinds
        self.limits = limits or DecodeLimits()
        self.now = now
        self.privacy = privacy or Privacy()

    def __call__(self, raw: bytes, source: SourceRef | None = None) -> Event | DeadLetter:
        try:
            return self._decode(raw, source)
        except Exception as exc:  # a bug must not stop the flow: dead-letter it with the cause
            return DeadLetter(
                "internal_error",
                f"{type(exc).__name__}: {exc}"[:300],
                _as_bytes(raw),
                source,
            )

    def many(self, raw: bytes, source: SourceRef | None = None) -> list[Event | DeadLetter]:
        """A record as events: one message, or a Segment batch (``{"batch": [...]}``, as the
        HTTP API and batch exports send it; its ``context``, ``sentAt`` and ``receivedAt``
        apply to every message that lacks its own), up to ``BATCH_BYTES``."""
        raw = _as_bytes(raw)
        if b'"batch"' not in raw or len(raw) > BATCH_BYTES:
            return [self(raw, source)]
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [self(raw, source)]
        batch = envelope.get("batch") if isinstance(envelope, dict) else None
        if not isinstance(batch, list) or "type" in envelope:
            return [self(raw, source)]
        shared = {k: envelope[k] for k in ("context", "sentAt", "receivedAt") if k in envelope}
        decoded = []
        for item in batch:
            if isinstance(item, dict):
                context = item.get("context")
                merged = {**shared, **item}
                if isinstance(context, dict) and isinstance(shared.get("context"), dict):
                    merged["context"] = {**shared["context"], **context}
                item = merged
            decoded.append(self(orjson.dumps(item), source))
        return decoded

    def _decode(self, raw: bytes, source: SourceRef | None) -> Event | DeadLetter:
        raw = _as_bytes(raw)
        limits = self.limits
        if len(raw) > limits.max_bytes:
            return DeadLetter(
                "too_large",
                f"{len(raw)} bytes > limit {limits.max_bytes} (raw_b64 keeps the first bytes)",
                raw[: limits.max_bytes],
                source,
            )
        # Only walk the tree when there are enough brackets for depth to matter (cheap in C).
        if raw.count(b"{") + raw.count(b"[") > limits.max_depth:
            try:
                deep = _deeper_than(orjson.loads(raw), limits.max_depth)
            except orjson.JSONDecodeError as exc:
                return _malformed(str(exc), raw, source)
            if deep:
                return DeadLetter(
                    "too_deep", f"nesting deeper than {limits.max_depth}", raw, source
                )
        try:
            record = check(RECORD.decode(raw))
        except msgspec.ValidationError as exc:
            return DeadLetter("schema_violation", _schema_detail(exc), raw, source)
        except msgspec.DecodeError as exc:
            try:  # orjson's words for what is wrong: they name the line and column
                orjson.loads(raw)
            except orjson.JSONDecodeError as orjson_exc:
                return _malformed(str(orjson_exc), raw, source)
            return _malformed(str(exc), raw, source)
        return self._normalize(record, raw, source)

    def _normalize(self, msg: Record, raw: bytes, source: SourceRef | None) -> Event | DeadLetter:
        for field, value in (("userId", msg.userId), ("anonymousId", msg.anonymousId)):
            if isinstance(value, float) and not (value.is_integer() and abs(value) < 2**63):
                # JSON numbers past 64 bits arrive as floats: two ids could become one
                return DeadLetter(
                    "schema_violation",
                    f"{field}: the number {value!r} cannot be kept exactly; send ids as strings",
                    raw,
                    source,
                )
        user_id = _identity(msg.userId)
        anonymous_id = _identity(msg.anonymousId)
        if user_id is None and anonymous_id is None:
            return DeadLetter(
                "missing_identity", "userId and anonymousId are both missing or empty", raw, source
            )
        timestamp = None
        now = self.now()
        times: dict[str, datetime] = {}
        for name, value in zip(
            _TIME_FIELDS,
            (msg.timestamp, msg.originalTimestamp, msg.sentAt, msg.receivedAt),
            strict=True,
        ):
            if value is None:
                continue
            try:
                times[name] = parse_event_time(value, now=now, max_future=None)
            except ValueError as exc:
                return DeadLetter("bad_timestamp", f"{name}: {exc}", raw, source)
        if not times:
            return DeadLetter(
                "bad_timestamp",
                "timestamp: missing (also no originalTimestamp, sentAt or receivedAt)",
                raw,
                source,
            )
        timestamp = device_corrected(times)
        if timestamp > now + self.limits.max_future:
            return DeadLetter(
                "clock_skew",
                f"timestamp: {iso(timestamp)} is more than {self.limits.max_future} after the "
                "time it was read (a device clock ahead; no sentAt/receivedAt to correct it)",
                raw,
                source,
            )

        call_type = CALL_TYPES[msg.type]  # check() left only these
        context = msg.context or _NO_CONTEXT
        device = context.device or _NO_DEVICE
        locale = _text(context.locale)
        consent = context.consent.categoryPreferences if context.consent else None

        privacy = self.privacy
        country = None
        if context.location is not None and isinstance(context.location.country, str):
            country = country_code(context.location.country)
        ip_country, region = privacy.geo(context.ip)  # the IP itself goes no further
        country = country or ip_country
        if country is None and locale:
            country = country_from_locale(locale)
        os_name = _text(context.os.name) if context.os else None
        event_name = msg.event if call_type == "track" else _text(msg.name)
        if isinstance(event_name, UnsetType):
            event_name = None
        message_id = (
            msg.messageId
            if isinstance(msg.messageId, str)
            else "h-" + hashlib.sha256(raw).hexdigest()[:32]
        )
        return Event(
            message_id=message_id,
            type=call_type,
            kind=self.kinds.kind_of(call_type, event_name),
            timestamp=timestamp,
            user_id=user_id,
            anonymous_id=anonymous_id,
            name=event_name,
            properties=privacy.scrub(msg.properties or _EMPTY),
            traits=privacy.scrub(msg.traits or context.traits or _EMPTY),
            previous_id=_identity(msg.previousId),
            group_id=_identity(msg.groupId),
            country=country,
            region=region if country == ip_country else None,
            locale=locale,
            timezone=_text(context.timezone),
            device=device_class(_text(device.type), _text(context.userAgent)),
            os=os_name.lower() if os_name else None,
            app_version=_text(context.app.version) if context.app else None,
            consent=dict(consent) if consent else None,
            source=source,
        )


def _as_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return repr(raw).encode("utf-8", "replace")


def _deeper_than(value: object, limit: int) -> bool:
    """Whether parsed JSON nests deeper than ``limit`` containers (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, dict | list)
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def _identity(value: object) -> str | None:
    if isinstance(value, bool | UnsetType) or value is None:
        return None
    if isinstance(value, float):  # integral (checked above): 42.0 is the id 42
        value = int(value)
    text = str(value).strip()
    # Interned: a user's id is held by their profile, timers and identity links, each
    # from another event; one copy a user instead of one per holder.
    return sys.intern(text) if text else None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _schema_detail(exc: msgspec.ValidationError) -> str:
    """msgspec's message with its path first, rooted at "event":
    ``event.context.locale: Expected `str | null`, got `int```."""
    message, _, path = str(exc).partition(" - at `$")
    where = "event" + path.rstrip("`") if path else "event"
    return f"{where}: {message}"[:300]


def _malformed(text: str, raw: bytes, source: SourceRef | None) -> DeadLetter:
    reason: DeadLetterReason = (
        "too_deep" if "depth" in text or "recursion" in text else "malformed_json"
    )
    return DeadLetter(reason, text[:300], raw, source)


@cache
def default_decoder() -> Decoder:
    return Decoder(EventKinds.load(CONFIG_DIR / "events.toml"))


def decode(raw: bytes, source: SourceRef | None = None) -> Event | DeadLetter:
    """Decode with the default mapping and limits (see ``Decoder`` to configure them)."""
    return default_decoder()(raw, source)
