"""How far one source partition's event time has got, robust to a few events far ahead.

Phones with wrong clocks are normal: one event stamped months ahead must not move time
for everyone (every user's inactivity timers would fire, idle state would be compacted).
An event within ``max_jump`` of the mark moves it, as the newest time always did. One
further ahead is held as a claim. The mark jumps only when claims agree: as many as a
third of the events of the hour before the mark for a jump within a day, of the day
before it for a longer one (at most ``confirm``), from as many users (at most
``confirm_users``: one device flushing its queue is one user), while events within the
jump stay fewer than the claims (a few outliers among the bulk never jump it; a
partition that truly moved on, after a quiet night, sends nothing else). It then moves
to the earliest claim. After a quiet night a partition moves on within a few events; a
clock days ahead needs up to ``confirm`` agreeing claims.

>>> clock = PartitionClock(max_jump=3600, confirm=3, confirm_users=2)
>>> [clock.see(1000.0 + 100 * i, "abcd"[i % 4]) for i in range(7)][-1]
1600.0
>>> clock.see(9e9, "c"), clock.see(1700.0, "a"), clock.see(1800.0, "b")  # an outlier
(1600.0, 1700.0, 1800.0)
>>> [clock.see(t, u) for t, u in ((90_000.0, "a"), (90_001.0, "b"), (90_002.0, "a"))]
[1800.0, 1800.0, 90000.0]
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field

#: A jump further than this is a claim to confirm (seconds).
MAX_JUMP_S = 3600.0
DAY_S = 86_400.0
#: Claims that together move the mark, and the users they must come from.
CONFIRM = 128
CONFIRM_USERS = 4


@dataclass(slots=True)
class PartitionClock:
    max_jump: float = MAX_JUMP_S
    confirm: int = CONFIRM
    confirm_users: int = CONFIRM_USERS
    mark: float = float("-inf")
    claims: list[float] = field(default_factory=list)  # times beyond the jump, in arrival
    claimants: set[int] = field(default_factory=set)  # their users (hashed)
    since: int = 0  # events within the jump since the first claim
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=3 * CONFIRM))

    def see_batch(self, events: list[tuple[float, str]]) -> float:
        """A batch of ``(epoch seconds, user id)``; the mark after it. Seen in time order:
        a batch reaches the pacemaker grouped by user (keyed steps emit it so), and in
        that order one user's later hours came as claims before the bulk that moves the
        mark to them, so where the mark ended depended on how the input was cut into
        batches. A clock's first batch starts it at the batch's median time, not at
        whatever event came first."""
        events = sorted(events)  # the bulk first: the claims after it need its count
        if self.mark == float("-inf") and events:
            self.mark = events[(len(events) - 1) // 2][0]
        for seconds, user_id in events:
            self.see(seconds, user_id)
        return self.mark

    def see(self, seconds: float, user_id: str) -> float:
        """An event's time (epoch seconds); the mark after it."""
        if self.mark == float("-inf") or seconds <= self.mark + self.max_jump:
            self.mark = max(self.mark, seconds)
            self.recent.append(seconds)
            if self.claims:
                self.since += 1
                if self.since > len(self.claims):  # the bulk disagrees: outliers
                    self._drop_claims()
            return self.mark
        claims = self.claims
        claims.append(seconds)
        self.claimants.add(zlib.crc32(user_id.encode("utf-8")))
        needed = self._needed(min(claims))
        if len(claims) >= needed:
            if len(self.claimants) >= min(self.confirm_users, needed):
                self.mark = min(claims)
                self.recent.append(self.mark)
                self._drop_claims()
            elif len(claims) >= self.confirm:  # one device's burst: the newest claims only
                del claims[: len(claims) - self.confirm + 1]
        return self.mark

    def _needed(self, earliest: float) -> int:
        """Claims that move the mark, 1 to ``confirm``: a third of the events of the hour
        before it for a jump within a day (a quiet night: as sparse as the evening was),
        of the day before it for a longer one (wrong clocks are mostly days or months
        off). Arrival order is not time order: every kept time is counted."""
        window = self.max_jump if earliest <= self.mark + DAY_S else DAY_S
        since = self.mark - window
        count = sum(seconds >= since for seconds in self.recent)
        return max(1, min(self.confirm, count // 3))

    def advance_to(self, mark: float) -> None:
        """Another observer (the pacemaker, which sees every event) moved the mark."""
        if mark > self.mark:
            self.mark = mark
            self.claims = [t for t in self.claims if t > mark + self.max_jump]
            if not self.claims:
                self._drop_claims()

    def _drop_claims(self) -> None:
        self.claims, self.claimants, self.since = [], set(), 0
