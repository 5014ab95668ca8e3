"""Bounded, time-limited memory of recently seen message ids (per user).

>>> from datetime import datetime, timedelta, UTC
>>> seen = RecentIds(capacity=2, window=timedelta(hours=1))
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> seen.add("a", t), seen.add("a", t + timedelta(minutes=5))
(True, False)
>>> seen.add("a", t + timedelta(hours=2))  # outside the window: no longer remembered
True
"""

from __future__ import annotations

from datetime import datetime, timedelta


class RecentIds:
    """Remembers at most ``capacity`` ids seen within ``window`` of event time."""

    __slots__ = ("_seen", "capacity", "window_s")

    def __init__(self, capacity: int = 256, window: timedelta = timedelta(hours=24)) -> None:
        self.capacity = capacity
        self.window_s = window.total_seconds()
        self._seen: dict[str, float] = {}  # insertion-ordered: oldest first

    def add(self, message_id: str, when: datetime) -> bool:
        """Record ``message_id``; ``False`` if it is a duplicate still remembered."""
        now = when.timestamp()
        seen = self._seen
        first = seen.get(message_id)
        if first is not None and now - first <= self.window_s:
            return False
        if first is not None:
            del seen[message_id]
        horizon = now - self.window_s
        while seen:
            oldest_id = next(iter(seen))
            if seen[oldest_id] >= horizon and len(seen) < self.capacity:
                break
            del seen[oldest_id]
        seen[message_id] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def __getstate__(self) -> tuple[int, float, dict[str, float]]:
        return self.capacity, self.window_s, self._seen

    def __setstate__(self, state: tuple[int, float, dict[str, float]]) -> None:
        self.capacity, self.window_s, self._seen = state
