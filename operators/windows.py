"""Rolling event-time windows (1 h / 24 h / 7 d) kept in buckets, so memory is bounded.

Each window is a ring of counts at its own resolution (5-minute buckets for 1 h, hours
for 24 h, days for 7 d), all 12 + 24 + 7 of them in one array, with the index of each
ring's newest bucket: a bucket that falls out of its window is reused. An event older
than its window is not counted. A window ending at ``now`` covers the bucket holding
``now`` and the ones before it, so counts are exact at bucket resolution. (Sparse maps
of bucket -> count held the same counts in about 1.5 KB a user, the ring in under 0.3.)

>>> from datetime import datetime, timedelta, UTC
>>> t = datetime(2026, 3, 2, 12, tzinfo=UTC)
>>> w = Windows()
>>> for minutes in (0, 10, 70, 60 * 30):
...     w.add(t + timedelta(minutes=minutes))
>>> w.counts(t + timedelta(minutes=60 * 30))
(1, 1, 4, 2)
"""

from __future__ import annotations

from array import array
from datetime import datetime
from typing import Any

#: (bucket seconds, buckets per window) for the 1 h, 24 h and 7 d windows.
RESOLUTIONS = ((300, 12), (3600, 24), (86_400, 7))
#: Where each window's ring starts in the array of counts.
_OFFSETS = (0, 12, 36)
_SIZE = 43
_NONE = -1  # no bucket yet


class Windows:
    """Bucketed counts of events by event time; ``counts(now)`` reads the three windows."""

    __slots__ = ("_newest", "_read", "_rings")

    def __init__(self) -> None:
        self._rings = array("I", bytes(4 * _SIZE))  # the rings, one after the other
        self._newest = array("q", (_NONE, _NONE, _NONE))  # each ring's newest bucket index
        self._read: tuple[int, tuple[int, int, int, int]] | None = None  # (now, counts)

    def add(self, when: datetime) -> None:
        self._read = None
        seconds = int(when.timestamp())
        counts, newest = self._rings, self._newest
        for ring, (width, span) in enumerate(RESOLUTIONS):
            index, head, base = seconds // width, newest[ring], _OFFSETS[ring]
            if index > head:  # a new newest bucket: the ones it passed start from zero
                if head == _NONE or index - head >= span:
                    counts[base : base + span] = array("I", bytes(4 * span))
                else:
                    for passed in range(head + 1, index + 1):
                        counts[base + passed % span] = 0
                newest[ring] = head = index
            if index > head - span:
                counts[base + index % span] += 1

    def counts(self, now: datetime) -> tuple[int, int, int, int]:
        """Events in the last 1 h, 24 h, 7 d, and active days in the last 7 d."""
        seconds = int(now.timestamp())
        if self._read is not None and self._read[0] == seconds:
            return self._read[1]  # read twice per update: for the features and the message
        counts, totals, active_days = self._rings, [], 0
        for ring, (width, span) in enumerate(RESOLUTIONS):
            head, base = self._newest[ring], _OFFSETS[ring]
            current = seconds // width
            # the buckets both in the window ending now and still held by the ring
            first, last = max(current, head) - span + 1, min(current, head)
            held = [counts[base + i % span] for i in range(first, last + 1)]  # none: no head
            totals.append(sum(held))
            if ring == 2:
                active_days = sum(1 for n in held if n)
        result = (totals[0], totals[1], totals[2], active_days)
        self._read = (seconds, result)
        return result

    def __getstate__(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        # Each ring's counts oldest first, leading zeros dropped: most rings are mostly
        # empty, and every profile touched in an epoch is pickled at its end.
        rings = []
        for ring, (_, span) in enumerate(RESOLUTIONS):
            head, base = self._newest[ring], _OFFSETS[ring]
            held = [self._rings[base + i % span] for i in range(head - span + 1, head + 1)]
            first = next((i for i, n in enumerate(held) if n), len(held))
            rings.append(tuple(held[first:]))
        return tuple(self._newest), tuple(rings)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.__init__()  # type: ignore[misc]
        if len(state) == 2:
            newest, rings = state
            for ring, (_, span) in enumerate(RESOLUTIONS):
                head, held = newest[ring], rings[ring]
                self._newest[ring] = head
                for i, n in zip(range(head - len(held) + 1, head + 1), held, strict=True):
                    self._rings[_OFFSETS[ring] + i % span] = n
            return
        # A snapshot of the sparse maps of before: bucket -> count, per window.
        for ring, buckets in enumerate(state):
            if buckets:
                head, span = max(buckets), RESOLUTIONS[ring][1]
                self._newest[ring] = head
                for index, n in buckets.items():
                    if index > head - span:
                        self._rings[_OFFSETS[ring] + index % span] = n
