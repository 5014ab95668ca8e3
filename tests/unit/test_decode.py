"""decode(): every input becomes an Event or a DeadLetter naming the problem."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstmile.operators.decode import DecodeLimits, Decoder, decode, default_decoder
from firstmile.operators.events import DeadLetter, Event, SourceRef
from firstmile.operators.resources import load_schema

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def message(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "track",
        "event": "Feature Used",
        "messageId": "m-1",
        "userId": "u-1",
        "anonymousId": "a-1",
        "timestamp": "2026-03-02T10:00:00.000Z",
        "properties": {"feature": "reports"},
        "context": {"locale": "de-DE", "app": {"version": "4.2.0"}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def decoder(**limits: object) -> Decoder:
    return Decoder(default_decoder().kinds, DecodeLimits(**limits), now=lambda: NOW)  # type: ignore[arg-type]


def dead(result: Event | DeadLetter) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    return result


def test_track_event_is_normalized() -> None:
    source = SourceRef("firstmile.events", 2, 41)
    event = decoder()(orjson.dumps(message()), source)
    assert isinstance(event, Event)
    assert event.kind == "feature_used"
    assert event.timestamp == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert (event.user_id, event.anonymous_id, event.message_id) == ("u-1", "a-1", "m-1")
    assert event.country == "DE"
    assert event.app_version == "4.2.0"
    assert event.properties == {"feature": "reports"}
    assert event.source == source


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({"event": "signed up"}, "signup"),
        ({"event": "ONBOARDING STEP SKIPPED"}, "onboarding_step_skipped"),
        ({"event": "Order Completed"}, "purchase"),
        ({"event": "Application Opened"}, "session_start"),
        ({"event": "Invite Sent"}, "feature_used"),
        ({"event": "Something Bespoke"}, "custom"),
        ({"type": "page", "event": None, "name": "Pricing"}, "page_view"),
        ({"type": "Screen", "event": None}, "page_view"),
        ({"type": "identify", "event": None, "traits": {"role": "admin"}}, "identify"),
        ({"type": "alias", "event": None, "previousId": "a-1"}, "alias"),
        ({"type": "group", "event": None, "groupId": "g-9"}, "group"),
    ],
)
def test_canonical_kinds(overrides: dict[str, object], kind: str) -> None:
    event = decoder()(orjson.dumps(message(**overrides)))
    assert isinstance(event, Event)
    assert event.kind == kind


def test_epoch_millis_and_offsets_become_utc() -> None:
    ms = int(datetime(2026, 3, 2, 9, 30, tzinfo=UTC).timestamp() * 1000)
    event = decoder()(orjson.dumps(message(timestamp=ms)))
    assert isinstance(event, Event) and event.timestamp == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    event = decoder()(orjson.dumps(message(timestamp="2026-03-02T11:30:00+02:00")))
    assert isinstance(event, Event) and event.timestamp == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def test_timestamp_falls_back_to_original_timestamp() -> None:
    raw = orjson.dumps(message(timestamp=None, originalTimestamp="2026-03-01T00:00:00Z"))
    event = decoder()(raw)
    assert isinstance(event, Event) and event.timestamp.day == 1


def test_device_and_country_from_context() -> None:
    ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"
    raw = orjson.dumps(
        message(context={"userAgent": ua, "location": {"country": "Sweden"}, "os": {"name": "iOS"}})
    )
    event = decoder()(raw)
    assert isinstance(event, Event)
    assert (event.device, event.country, event.os) == ("mobile", "SE", "ios")


def test_missing_message_id_gets_a_content_hash() -> None:
    raw = orjson.dumps(message(messageId=None))
    first, again = decoder()(raw), decoder()(raw)
    assert isinstance(first, Event) and isinstance(again, Event)
    assert first.message_id == again.message_id and first.message_id.startswith("h-")


def test_numeric_ids_are_kept_as_text() -> None:
    event = decoder()(orjson.dumps(message(userId=12345)))
    assert isinstance(event, Event) and event.user_id == "12345"


@pytest.mark.parametrize(
    ("raw", "reason", "detail_mentions"),
    [
        (b'{"type": "track"', "malformed_json", "unexpected"),
        (b"\xff\xfe{}", "malformed_json", "UTF-8"),
        (b"[1, 2]", "schema_violation", "object"),
        (orjson.dumps(message(type="teleport")), "schema_violation", "type"),
        (orjson.dumps(message(event=None)), "schema_violation", "event"),
        (orjson.dumps(message(userId=["u"])), "schema_violation", "userId"),
        (orjson.dumps(message(context={"locale": 42})), "schema_violation", "context.locale"),
        (orjson.dumps(message(type="alias", event=None)), "schema_violation", "previousId"),
        (orjson.dumps(message(userId=None, anonymousId=None)), "missing_identity", "userId"),
        (orjson.dumps(message(userId="  ", anonymousId="")), "missing_identity", "anonymousId"),
        (orjson.dumps(message(timestamp="last tuesday")), "bad_timestamp", "timestamp"),
        (orjson.dumps(message(timestamp="1999-12-31T23:59:59Z")), "bad_timestamp", "before"),
        (orjson.dumps(message(timestamp="2026-03-20T00:00:00Z")), "clock_skew", "after the time"),
        (orjson.dumps(message(timestamp=None)), "bad_timestamp", "missing"),
        (orjson.dumps(message(timestamp=True)), "schema_violation", "timestamp"),
        (b'{"type":"track","event":"x","userId":"u","timestamp":NaN}', "malformed_json", ""),
        # A 5,000-digit number is valid JSON; in a field firstmile does not read, it is
        # skipped (this message lacks a type).
        (b'{"n": 1' + b"0" * 5000 + b"}", "schema_violation", "type"),
        (b"[" * 40 + b"]" * 40, "too_deep", "32"),
        (b"[" * 5000 + b"]" * 5000, "too_deep", ""),
    ],
)
def test_dead_letters_name_the_problem(raw: bytes, reason: str, detail_mentions: str) -> None:
    result = dead(decoder()(raw, SourceRef("t", 0, 7)))
    assert result.reason == reason
    assert detail_mentions in result.detail
    assert result.source == SourceRef("t", 0, 7)
    assert base64.b64decode(result.raw_b64) == raw


def test_oversized_record_is_too_large_and_truncated() -> None:
    raw = orjson.dumps(message(properties={"blob": "x" * 10_000_000}))
    result = dead(decoder(max_bytes=32 * 1024)(raw))
    assert result.reason == "too_large"
    assert str(len(raw)) in result.detail
    assert len(result.raw) == 32 * 1024


def test_future_skew_is_configurable() -> None:
    raw = orjson.dumps(message(timestamp=(NOW + timedelta(hours=2)).isoformat()))
    assert isinstance(decoder(max_future=timedelta(hours=3))(raw), Event)
    assert dead(decoder(max_future=timedelta(hours=1))(raw)).reason == "clock_skew"


def test_a_device_clock_is_corrected_by_sent_at_and_received_at() -> None:
    """As Segment does: timestamp + (receivedAt - sentAt). A phone three days ahead is put
    back in place instead of dead-lettered; a message Segment already corrected (it has
    originalTimestamp) is taken as it is."""
    ahead = timedelta(days=3)
    stamped = NOW - timedelta(minutes=10)

    def stamp(moment: datetime) -> str:
        return moment.isoformat()

    phone = message(
        timestamp=stamp(stamped + ahead),
        sentAt=stamp(NOW - timedelta(minutes=1) + ahead),
        receivedAt=stamp(NOW - timedelta(minutes=1) + timedelta(milliseconds=200)),
    )
    event = decoder()(orjson.dumps(phone))
    assert isinstance(event, Event)
    assert event.timestamp == stamped + timedelta(milliseconds=200)
    relayed = {**phone, "timestamp": stamp(stamped), "originalTimestamp": phone["timestamp"]}
    event = decoder()(orjson.dumps(relayed))
    assert isinstance(event, Event) and event.timestamp == stamped
    uncorrectable = message(timestamp=stamp(stamped + ahead))
    assert dead(decoder()(orjson.dumps(uncorrectable))).reason == "clock_skew"


def test_module_level_decode_uses_the_shipped_mapping() -> None:
    event = decode(
        orjson.dumps(message(event="Onboarding Completed", timestamp="2026-01-01T00:00:00Z"))
    )
    assert isinstance(event, Event) and event.kind == "onboarding_completed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
segmentish = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group", "x"]),
        "event": json_values,
        "userId": json_values,
        "anonymousId": json_values,
        "messageId": json_values,
        "previousId": json_values,
        "groupId": json_values,
        "timestamp": st.one_of(json_values, st.datetimes().map(lambda d: d.isoformat())),
        "properties": json_values,
        "context": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "locale": json_values,
                    "userAgent": json_values,
                    "device": json_values,
                    "location": json_values,
                    "consent": json_values,
                },
            ),
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_never_raises_on_bytes(raw: bytes) -> None:
    assert isinstance(decode(raw), Event | DeadLetter)


@settings(max_examples=600, deadline=None)
@given(segmentish)
def test_decode_never_raises_on_segment_shaped_json(msg: dict[str, object]) -> None:
    try:
        raw = orjson.dumps(msg)
    except (TypeError, orjson.JSONEncodeError):
        return  # not encodable (e.g. integers over 64 bits): nothing to decode
    result = decode(raw)
    assert isinstance(result, Event | DeadLetter)
    if isinstance(result, Event):
        assert result.timestamp.tzinfo is not None
        assert result.user_id or result.anonymous_id


@settings(max_examples=600, deadline=None)
@given(segmentish)
def test_the_typed_decoder_agrees_with_the_published_schema(msg: dict[str, object]) -> None:
    """msgspec's Structs (``operators/records.py``) and the JSON Schema give the same
    verdict: a message is a schema violation for one exactly when it is for the other
    (the schema judges the call type as decode does, trimmed and lower-cased)."""
    try:
        raw = orjson.dumps(msg)
    except (TypeError, orjson.JSONEncodeError):
        return
    result = decoder()(raw)
    ours = isinstance(result, DeadLetter) and result.reason == "schema_violation"
    if ours and "cannot be kept exactly" in result.detail:  # type: ignore[union-attr]
        return  # an integral float id past 64 bits: valid JSON Schema, refused on purpose
    if isinstance(result, DeadLetter) and result.reason == "too_deep":
        return
    # What was sent, not the dict it came from: orjson writes NaN and infinities as null.
    judged = orjson.loads(raw)
    if isinstance(judged.get("type"), str):
        judged["type"] = judged["type"].strip().lower()  # type: ignore[union-attr]
    try:
        _full_schema()(judged)
        schema_says_invalid = False
    except fastjsonschema.JsonSchemaValueException:
        schema_says_invalid = True
    assert ours == schema_says_invalid, (msg, result)


@cache
def _full_schema() -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema("event"))  # type: ignore[no-any-return]


def test_ids_past_64_bits_are_kept_exactly_and_rounded_ones_refused() -> None:
    huge = b'{"type":"track","event":"x","userId":123456789012345678901234567890,'
    event = decoder()(huge + b'"timestamp":"2026-03-02T10:00:00Z"}')
    assert isinstance(event, Event) and event.user_id == "123456789012345678901234567890"
    rounded = b'{"type":"track","event":"x","userId":1.2345678901234568e+29,'
    result = dead(decoder()(rounded + b'"timestamp":"2026-03-02T10:00:00Z"}'))
    assert result.reason == "schema_violation" and "send ids as strings" in result.detail
    exact = b'{"type":"track","event":"x","userId":18446744073709551615,'
    event = decoder()(exact + b'"timestamp":"2026-03-02T10:00:00Z"}')
    assert isinstance(event, Event) and event.user_id == "18446744073709551615"
    assert decoder()(orjson.dumps(message(userId=42.0))).user_id == "42"  # type: ignore[union-attr]


def test_a_segment_batch_envelope_is_its_messages() -> None:
    """Segment's HTTP API and batch exports send ``{"batch": [...]}``: each message is an
    event (a bad one a dead letter of its own); the envelope's context and sentAt apply
    to the messages that lack their own."""
    sent = (NOW + timedelta(minutes=1)).isoformat()
    envelope = {
        "batch": [
            message(userId="u1", messageId="a"),
            message(userId="u2", messageId="b", context={"locale": "fr-FR"}),
            message(userId=None, anonymousId=None),
        ],
        "context": {"locale": "de-DE"},
        "sentAt": sent,
    }
    first, second, third = decoder().many(orjson.dumps(envelope))
    assert isinstance(first, Event) and isinstance(second, Event)
    assert (first.user_id, first.country, second.country) == ("u1", "DE", "FR")
    assert dead(third).reason == "missing_identity"
    assert [type(r) for r in decoder().many(orjson.dumps(message()))] == [Event]
