"""The raw Segment message as typed msgspec Structs: bytes are parsed and checked against
the published contract (``schemas/event.schema.json``) in one pass, in C.

Why msgspec: ``orjson.loads`` then fastjsonschema took 10.4 us a message on the
simulator's stream, decoding into these Structs 2.0 us (BENCHMARKS.md, session 7).
The JSON Schema stays the published contract; ``tests/unit/test_decode.py`` checks that
both give the same verdict on generated messages. Unknown fields are allowed and skipped,
as the schema allows them. What a Struct cannot say is checked in ``check``: the call
type (compared case-insensitively) and the field each type requires.

>>> check(RECORD.decode(b'{"type": " Track ", "event": "Signed Up"}')).type
'track'
>>> check(RECORD.decode(b'{"type": "alias"}'))
Traceback (most recent call last):
...
msgspec.ValidationError: Object missing required field `previousId`
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from firstmile.operators.events import EventType

#: Each call type by its name (typed: ``check`` leaves only these in ``Record.type``).
CALL_TYPES: dict[str, EventType] = {name: name for name in get_args(EventType)}
_REQUIRED_BY_TYPE = {"track": "event", "alias": "previousId", "group": "groupId"}

Text = str | None
#: Ids as text or integers (kept exactly, whatever their size); an integral float
#: (``42.0``) is an integer to JSON Schema, so it is taken here and checked later.
Id = Annotated[str, Meta(max_length=256)] | int | float | None
RequiredId = Annotated[str, Meta(min_length=1, max_length=256)] | int | float | UnsetType
Time = Annotated[str, Meta(max_length=64)] | int | float | None
Object = dict[str, Any] | None


class Device(Struct):
    type: Text = None


class Os(Struct):
    name: Text = None
    version: Text = None


class App(Struct):
    version: Text = None
    build: str | int | None = None


class Location(Struct):
    country: Text = None


class Consent(Struct):
    categoryPreferences: dict[str, bool] | None = None


class Context(Struct):
    ip: Text = None
    locale: Annotated[str, Meta(max_length=35)] | None = None
    timezone: Annotated[str, Meta(max_length=64)] | None = None
    userAgent: Annotated[str, Meta(max_length=1024)] | None = None
    device: Device | None = None
    os: Os | None = None
    app: App | None = None
    location: Location | None = None
    traits: Object = None
    campaign: Object = None
    referrer: Object = None
    network: Object = None
    consent: Consent | None = None


class Record(Struct):
    """One Segment message as it arrives (camelCase, as Segment spells it)."""

    type: Annotated[str, Meta(max_length=64)]
    messageId: Annotated[str, Meta(min_length=1, max_length=256)] | UnsetType = UNSET
    userId: Id = None
    anonymousId: Id = None
    timestamp: Time = None
    originalTimestamp: Time = None
    sentAt: Time = None
    receivedAt: Time = None
    event: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=200)] | None = None
    category: Annotated[str, Meta(max_length=200)] | None = None
    previousId: RequiredId = UNSET
    groupId: RequiredId = UNSET
    properties: Object = None
    traits: Object = None
    context: Context | None = None


RECORD = msgspec.json.Decoder(Record)


def check(record: Record) -> Record:
    """The record with its type normalized (``" Track "`` is ``track``); raises
    ``msgspec.ValidationError`` for an unknown type or a field its type requires."""
    call_type = record.type.strip().lower()
    if call_type not in CALL_TYPES:
        raise msgspec.ValidationError(
            f"Expected one of {', '.join(CALL_TYPES)}, got {record.type[:40]!r} - at `$.type`"
        )
    needed = _REQUIRED_BY_TYPE.get(call_type)
    if needed is not None and getattr(record, needed) is UNSET:
        raise msgspec.ValidationError(f"Object missing required field `{needed}`")
    record.type = call_type
    return record
