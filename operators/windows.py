"""Rolling event-time windows (1 h / 24 h / 7 d) kept in buckets, so memory is bounded.

Each window is a sparse map ``bucket index -> count`` at its own resolution (5-minute
buckets for 1 h, hours for 24 h, days for 7 d); buckets that fell out of their window
are pruned on every add. At most 12 + 24 + 7 buckets per user, whatever the event rate.
A window ending at ``now`` covers the bucket holding ``now`` and the ones before it, so
counts are exact at bucket resolution.

>>> from datetime import datetime, timedelta, UTC
>>> t = datetime(2026, 3, 2, 12, tzinfo=UTC)
>>> w = Windows()
>>> for minutes in (0, 10, 70, 60 * 30):
...     w.add(t + timedelta(minutes=minutes))
>>> w.counts(t + timedelta(minutes=60 * 30))
(1, 1, 4, 2)
"""

from __future__ import annotations

from datetime import datetime

#: (bucket seconds, buckets per window) for the 1 h, 24 h and 7 d windows.
RESOLUTIONS = ((300, 12), (3600, 24), (86_400, 7))


class Windows:
    """Bucketed counts of events by event time; ``counts(now)`` reads the three windows."""

    __slots__ = ("_read", "buckets")

    def __init__(self) -> None:
        self.buckets: tuple[dict[int, int], ...] = tuple({} for _ in RESOLUTIONS)
        self._read: tuple[int, tuple[int, int, int, int]] | None = None  # (now, counts)

    def add(self, when: datetime) -> None:
        self._read = None
        seconds = int(when.timestamp())
        for (width, span), buckets in zip(RESOLUTIONS, self.buckets, strict=True):
            index = seconds // width
            count = buckets.get(index)
            if count is not None:  # the common case: nothing new to prune
                buckets[index] = count + 1
                continue
            buckets[index] = 1
            horizon = max(buckets) - span
            if min(buckets) <= horizon:
                for stale in [key for key in buckets if key <= horizon]:
                    del buckets[stale]

    def counts(self, now: datetime) -> tuple[int, int, int, int]:
        """Events in the last 1 h, 24 h, 7 d, and active days in the last 7 d."""
        seconds = int(now.timestamp())
        if self._read is not None and self._read[0] == seconds:
            return self._read[1]  # read twice per update: for the features and the message
        totals = []
        for (width, span), buckets in zip(RESOLUTIONS, self.buckets, strict=True):
            current = seconds // width
            totals.append(
                sum(n for index, n in buckets.items() if current - span < index <= current)
            )
        width, span = RESOLUTIONS[2]
        current = seconds // width
        active_days = sum(1 for index in self.buckets[2] if current - span < index <= current)
        counts = (totals[0], totals[1], totals[2], active_days)
        self._read = (seconds, counts)
        return counts

    def __getstate__(self) -> tuple[dict[int, int], ...]:
        return self.buckets

    def __setstate__(self, state: tuple[dict[int, int], ...]) -> None:
        self.buckets = state
        self._read = None
