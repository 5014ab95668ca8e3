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

from array import array

MAX_RECENT = 8


class Sessions:
    """``recent``: the kept sessions' start and last event, flat (``[s0, l0, s1, l1,
    ...]``: 16 bytes a session, where a list of ``[start, last]`` lists took ~120)."""

    __slots__ = ("folded", "folded_seconds", "recent")

    def __init__(self) -> None:
        self.recent = array("d")  # sorted, separated by more than the gap
        self.folded = 0
        self.folded_seconds = 0.0

    def add(self, when: float, gap: float, keep: int = MAX_RECENT) -> None:
        recent = self.recent
        n = len(recent) // 2
        i = n  # the first session at or after (when, when): events come mostly in order
        while i > 0 and (recent[2 * i - 2], recent[2 * i - 1]) >= (when, when):
            i -= 1
        lo = i - 1 if i > 0 and recent[2 * i - 1] + gap >= when else i
        hi = i
        while hi < n and recent[2 * hi] - gap <= when:
            hi += 1
        if lo == hi:  # touches no session: a new one
            recent[2 * i : 2 * i] = array("d", (when, when))
        else:
            merged = (min(recent[2 * lo], when), max(recent[2 * hi - 1], when))
            recent[2 * lo : 2 * hi] = array("d", merged)
        if len(recent) > 2 * keep:
            start, last = recent[0], recent[1]
            del recent[:2]
            self.folded += 1
            self.folded_seconds += last - start

    def _pairs(self) -> list[tuple[float, float]]:
        recent = self.recent
        return list(zip(recent[::2], recent[1::2], strict=True))

    def fold(self) -> None:
        """Fold every kept session into the totals (an idle user's state is compacted)."""
        for start, last in self._pairs():
            self.folded += 1
            self.folded_seconds += last - start
        self.recent = array("d")

    def count(self) -> int:
        return self.folded + len(self.recent) // 2

    def newest_length(self) -> float | None:
        return self.recent[-1] - self.recent[-2] if self.recent else None

    def summary(self, *, as_of: float, gap: float) -> tuple[int, int, bool, float | None]:
        """(sessions, closed sessions, newest still open, mean closed length in seconds)."""
        pairs = self._pairs()
        is_open = bool(pairs) and as_of < pairs[-1][1] + gap
        closed = pairs[:-1] if is_open else pairs
        count = self.folded + len(closed)
        seconds = self.folded_seconds + sum(last - start for start, last in closed)
        return self.count(), count, is_open, (seconds / count if count else None)

    def __getstate__(self) -> tuple[bytes, int, float]:
        return self.recent.tobytes(), self.folded, self.folded_seconds

    def __setstate__(self, state: tuple[bytes | list[list[float]], int, float]) -> None:
        recent, self.folded, self.folded_seconds = state
        self.recent = array("d")
        if isinstance(recent, bytes):
            self.recent.frombytes(recent)
        else:  # a snapshot from before: a list of [start, last] lists
            self.recent.extend(value for pair in recent for value in pair)
