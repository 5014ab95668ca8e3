"""Sessions: runs of activity separated by an inactivity gap, robust to arrival order.

The newest ``MAX_RECENT`` sessions are kept as ``[start, last]`` intervals (epoch
seconds); older ones are folded into a count and a total length. A late event (anonymous
events released at identify time, a lagging Kafka partition) lands in the session it
belongs to, and may join two sessions into one, so the result does not depend on the
order events arrive in, as long as the arrivals never spread over more than the kept
sessions (then the oldest is folded before a late event could join it). The newest
session is open until the profile's time passes its last event plus the gap.

>>> s = Sessions()
>>> gap = 1800.0
>>> for t in (0, 600, 10_000, 5_000):  # the last one arrives late, between the two
...     s.add(t, gap)
>>> s.count(), s.summary(as_of=10_000, gap=gap)
(3, (3, 2, True, 300.0))
>>> s.add(2_200, gap); s.add(3_500, gap)  # bridges the first two sessions into one
>>> s.count()
2
"""

from __future__ import annotations

import bisect

MAX_RECENT = 8


class Sessions:
    __slots__ = ("folded", "folded_seconds", "recent")

    def __init__(self) -> None:
        self.recent: list[list[float]] = []  # sorted, separated by more than the gap
        self.folded = 0
        self.folded_seconds = 0.0

    def add(self, when: float, gap: float, keep: int = MAX_RECENT) -> None:
        recent = self.recent
        i = bisect.bisect_left(recent, [when, when])
        lo = i - 1 if i > 0 and recent[i - 1][1] + gap >= when else i
        hi = i
        while hi < len(recent) and recent[hi][0] - gap <= when:
            hi += 1
        if lo == hi:  # touches no session: a new one
            recent.insert(i, [when, when])
        else:
            merged = [min(recent[lo][0], when), max(recent[hi - 1][1], when)]
            recent[lo:hi] = [merged]
        if len(recent) > keep:
            start, last = recent.pop(0)
            self.folded += 1
            self.folded_seconds += last - start

    def fold(self) -> None:
        """Fold every kept session into the totals (an idle user's state is compacted)."""
        for start, last in self.recent:
            self.folded += 1
            self.folded_seconds += last - start
        self.recent = []

    def count(self) -> int:
        return self.folded + len(self.recent)

    def newest_length(self) -> float | None:
        return self.recent[-1][1] - self.recent[-1][0] if self.recent else None

    def summary(self, *, as_of: float, gap: float) -> tuple[int, int, bool, float | None]:
        """(sessions, closed sessions, newest still open, mean closed length in seconds)."""
        is_open = bool(self.recent) and as_of < self.recent[-1][1] + gap
        closed = self.recent[:-1] if is_open else self.recent
        count = self.folded + len(closed)
        seconds = self.folded_seconds + sum(last - start for start, last in closed)
        return self.count(), count, is_open, (seconds / count if count else None)

    def __getstate__(self) -> tuple[list[list[float]], int, float]:
        return self.recent, self.folded, self.folded_seconds

    def __setstate__(self, state: tuple[list[list[float]], int, float]) -> None:
        self.recent, self.folded, self.folded_seconds = state
