"""Identity stitching: an anonymous visitor becomes a known user.

State is keyed by the anonymous id (or an alias's ``previousId``). Until the visitor is
linked, their events wait in a bounded buffer (oldest dropped past ``max_buffer``, and
anything older than ``ttl`` before the newest); the first event that carries both ids
(identify, alias, or any call with both) links them and releases the buffer into the
known user's stream, in event-time order, once. Later anonymous-only events of a linked
visitor are attributed to the user. Events with only a user id never come here.

Erasure reaches every device: a step keyed by user remembers the anonymous ids seen with
them (``Devices``), and a ``user_erased`` event turns into one ``ForgetLink`` per device,
so each anonymous id's link to the erased user goes too (not only the requesting one's).

>>> from datetime import datetime, timedelta, UTC
>>> from firstmile.operators.events import Event
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> visitor = Visitor()
>>> stitch(visitor, Event("m1", "page", "page_view", t, None, "a1"))
([], False)
>>> out, linked = stitch(visitor, Event("m2", "identify", "identify", t, "u1", "a1"))
>>> [(e.message_id, e.user_id) for e in out], linked
([('m1', 'u1'), ('m2', 'u1')], True)
>>> [e.user_id for e in stitch(visitor, Event("m3", "page", "page_view", t, None, "a1"))[0]]
['u1']
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from firstmile.operators.events import Event


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    max_buffer: int = 50  # events held per unlinked visitor
    ttl: timedelta = timedelta(days=7)  # buffered events older than this are dropped


@dataclass(slots=True)
class Visitor:
    """One anonymous id: who it turned out to be, or what it did before we knew."""

    user_id: str | None = None
    buffer: list[Event] = field(default_factory=list)
    dropped: int = 0  # buffered events lost to the caps (counted, never replayed)


@dataclass(frozen=True, slots=True)
class ForgetLink:
    """An erased user's device: its visitor forgets the link, if it is still to them."""

    anonymous_id: str
    user_id: str
    timestamp: datetime  # the erasure's: events after it from the device are not theirs


#: Devices remembered per user for erasure (the newest; a user with more devices than
#: this keeps the oldest links past an erasure, which the README says).
MAX_DEVICES = 64


@dataclass(slots=True)
class Devices:
    """The anonymous ids seen with one user, oldest first.

    >>> from datetime import datetime, UTC
    >>> t = datetime(2026, 3, 2, tzinfo=UTC)
    >>> devices = Devices()
    >>> devices.see(Event("m1", "identify", "identify", t, "u1", "a1"))
    []
    >>> devices.see(Event("m2", "track", "user_erased", t, "u1", "a2"))  # doctest: +ELLIPSIS
    [ForgetLink(anonymous_id='a1', ...), ForgetLink(anonymous_id='a2', ...)]
    >>> devices.ids
    {}
    """

    ids: dict[str, None] = field(default_factory=dict)  # an ordered set

    def see(self, event: Event) -> list[ForgetLink]:
        """Remember the event's device; an erasure: every device's link to forget."""
        device = identity_key(event)
        if device:
            self.ids.pop(device, None)
            self.ids[device] = None
            if len(self.ids) > MAX_DEVICES:
                del self.ids[next(iter(self.ids))]
        if event.kind != "user_erased" or not event.user_id:
            return []
        user = event.user_id
        forget = [ForgetLink(device, user, event.timestamp) for device in self.ids]
        self.ids = {}
        return forget


def forget(visitor: Visitor | None, link: ForgetLink) -> Visitor | None:
    """The visitor after its user was erased: gone if linked to them, else as it was."""
    return None if visitor is not None and visitor.user_id == link.user_id else visitor


class Links:
    """Anonymous ids linked to a user, as the identity step last left them (bounded: the
    oldest noted go first; a forgotten one only means the step is asked again).

    An event that carries both ids of a link already made changes nothing at the step:
    it comes out as it went in. Nearly every event after signup is one (98 % of the
    simulator's), so they need not cross to the step, nor wake its state for the epoch's
    snapshot. Aliases and erasures always go.

    >>> from datetime import datetime, UTC
    >>> from firstmile.operators.events import Event
    >>> links, t = Links(), datetime(2026, 3, 2, tzinfo=UTC)
    >>> links.note("a1", Visitor(user_id="u1"))
    >>> [links.settled(Event("m", "track", "x", t, user, "a1")) for user in ("u1", "u2", None)]
    [True, False, False]
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.users: dict[str, str] = {}
        self.capacity = capacity

    def note(self, key: str, visitor: Visitor | None) -> None:
        """The identity step's state for ``key`` after a batch."""
        user = visitor.user_id if visitor is not None else None
        if not user:
            self.users.pop(key, None)
        elif self.users.get(key) != user:
            self.users[key] = user
            if len(self.users) > self.capacity:
                del self.users[next(iter(self.users))]

    def settled(self, event: Event) -> bool:
        """Whether ``event`` would pass the identity step unchanged, changing nothing."""
        return (
            event.user_id is not None
            and event.anonymous_id is not None
            and event.type != "alias"
            and event.kind != "user_erased"
            and self.users.get(event.anonymous_id) == event.user_id
        )


def identity_key(event: Event) -> str | None:
    """The key of the identity step, or None when the event needs no stitching."""
    if event.type == "alias" and event.previous_id:
        return event.previous_id
    return event.anonymous_id


def stitch(
    visitor: Visitor, event: Event, settings: IdentitySettings | None = None
) -> tuple[list[Event], bool]:
    """Events to pass on to the user profile, and whether this event (re)linked the id."""
    user = event.user_id
    if user:
        linked = visitor.user_id != user
        visitor.user_id = user
        released = sorted(visitor.buffer, key=lambda held: held.timestamp)
        visitor.buffer = []
        return [replace(held, user_id=user) for held in released] + [event], linked
    if visitor.user_id:
        return [replace(event, user_id=visitor.user_id)], False
    settings = settings or IdentitySettings()
    buffer = visitor.buffer
    buffer.append(event)
    horizon = max(held.timestamp for held in buffer) - settings.ttl
    kept = [held for held in buffer if held.timestamp >= horizon][-settings.max_buffer :]
    visitor.dropped += len(buffer) - len(kept)
    visitor.buffer = kept
    return [], False


ANONYMOUS_PREFIX = "anon:"


def user_key(event: Event) -> str:
    """The profile key: the product's user id (every event has one after stitching)."""
    return event.user_id if event.user_id else ANONYMOUS_PREFIX + (event.anonymous_id or "")
