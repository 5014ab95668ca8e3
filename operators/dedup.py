"""Bounded, time-limited memory of recently seen message ids (per user).

Ids are kept as 8-byte BLAKE2b digests with their event time in whole seconds, packed in
two arrays: 12 bytes per id in a snapshot, whatever the id's length. A false "duplicate"
needs two ids of one user, within the window, to share 64 bits of hash: negligible.

>>> from datetime import datetime, timedelta, UTC
>>> seen = RecentIds(capacity=2, window=timedelta(hours=1))
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> seen.add("a", t), seen.add("a", t + timedelta(minutes=5))
(True, False)
>>> seen.add("a", t + timedelta(hours=2))  # outside the window: no longer remembered
True
"""

from __future__ import annotations

import hashlib
from array import array
from datetime import datetime, timedelta


def _digest(message_id: str) -> int:
    raw = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little")


class RecentIds:
    """Remembers at most ``capacity`` ids seen within ``window`` of event time."""

    __slots__ = ("_ids", "_times", "capacity", "window_s")

    def __init__(self, capacity: int = 64, window: timedelta = timedelta(hours=24)) -> None:
        self.capacity = capacity
        self.window_s = int(window.total_seconds())
        self._ids = array("Q")  # oldest first
        self._times = array("I")  # event time of each id, epoch seconds (uint32: to 2106)

    def add(self, message_id: str, when: datetime) -> bool:
        """Record ``message_id``; ``False`` if it is a duplicate still remembered."""
        now = int(when.timestamp())
        digest = _digest(message_id)
        ids, times = self._ids, self._times
        if digest in ids:
            at = ids.index(digest)
            if abs(now - times[at]) <= self.window_s:
                return False
            del ids[at], times[at]
        horizon = now - self.window_s
        drop = 0
        while drop < len(ids) and (times[drop] < horizon or len(ids) - drop >= self.capacity):
            drop += 1
        if drop:
            del ids[:drop], times[:drop]
        ids.append(digest)
        times.append(now)
        return True

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_s)

    def __len__(self) -> int:
        return len(self._ids)

    def __getstate__(self) -> tuple[int, int, bytes, bytes]:
        return self.capacity, self.window_s, self._ids.tobytes(), self._times.tobytes()

    def __setstate__(self, state: tuple[int, int, bytes, bytes]) -> None:
        self.capacity, self.window_s, ids, times = state
        self._ids, self._times = array("Q"), array("I")
        self._ids.frombytes(ids)
        self._times.frombytes(times)
