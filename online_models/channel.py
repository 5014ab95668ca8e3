"""The channel between the single learner and the scorers on every worker and process.

The learner publishes signed snapshots into a ``ModelStore``; each worker's ``Models``
takes the newer versions from it, verifies them and scores with them. A refused snapshot
(unsigned, wrong key, tampered) is logged and counted, and the scorers keep the version
they had.

A version is in force by event time, so that a replay scores each position as the first
pass did, in every process. Before a scorer scores an event time beyond what its process
has reserved, it reserves up to ``reserve_s`` further in the store (one mark for the
job: the newest time any process reserved) and takes the versions published so far. A
version is in force only after the mark as it stood when it was published, so no process
has scored a time at which a version it did not have is in force. The store keeps each
recent version with that point, and the mark survives a crash: a resumed job scores
each replayed event with the version the crashed run used at its time, and what the
restored learner publishes is in force only after everything the crashed run scored.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from datetime import datetime

from firstmile.online_models.scoring import Scorer
from firstmile.online_models.snapshot import ModelSnapshot, sign, verify
from firstmile.operators import telemetry
from firstmile.operators.errors import ModelError
from firstmile.operators.jsonbytes import kept
from firstmile.operators.watermark import MAX_JUMP_S
from firstmile.state.model_store import RECENT, MemoryModelStore, ModelStore
from firstmile.state.shutdown import fatal_on_server_error

log = logging.getLogger(__name__)

#: Event time reserved ahead of the newest scored: a new version takes force this much
#: later at most; the store is asked once per this much event time.
RESERVE_S = 300.0


class Models:
    def __init__(
        self,
        store: ModelStore | None = None,
        key: bytes | None = None,
        key_id: str = "m1",
        *,
        margin: float = 0.15,
        reserve_s: float = RESERVE_S,
    ) -> None:
        self.store = store or MemoryModelStore()
        self.key = key or os.urandom(32)  # embedded: this process is the only reader
        self.key_id = key_id
        self.margin, self.reserve_s = margin, reserve_s
        #: (in force after this event time, version, scorer), oldest first.
        self._held: list[tuple[float, int, Scorer]] = [(-math.inf, 0, Scorer(None, margin))]
        self._version = 0  # the newest version seen, refused ones too
        self._reserved = -math.inf  # the store's mark, as this process last saw it
        self._lock = threading.Lock()

    def begin(self, *, resuming: bool, owner: bool = True) -> None:
        """Before a run: ``resuming`` (from a recovery snapshot), the recent versions with
        the event times they are in force after, as the crashed run scored with them;
        otherwise the newest version is in force from the start, and the ``owner`` (one
        process per job) makes the store say so."""
        with self._lock, fatal_on_server_error():
            if resuming:
                self._reserved = self.store.reserved()
                self._take(self.store.since(0))
            if len(self._held) > 1:
                return
            held = self.store.latest()
            if owner:  # (resuming with no recent versions: a store written before them)
                self.store.restart(held, clear_mark=not resuming)
            if held is not None:
                self._take([(-math.inf, *held)])

    def publish(self, snapshot: ModelSnapshot) -> bool:
        envelope = sign(snapshot, self.key, self.key_id)
        with self._lock, fatal_on_server_error():  # runs inside the flow
            after = self.store.publish(
                snapshot.version, envelope, _summary(snapshot), self._held[-1][0]
            )
            if after is not None and snapshot.version > self._held[-1][1]:
                self._keep(after, snapshot.version, Scorer(snapshot, self.margin))
        if after is not None:
            telemetry.MODEL_VERSION.set(snapshot.version)
            log.info(
                "published model v%d (%s, %s)",
                snapshot.version,
                snapshot.segments.version if snapshot.segments else "no segments yet",
                snapshot.churn.version if snapshot.churn else "churn prior",
            )
        return after is not None

    def latest(self) -> ModelSnapshot | None:
        """The newest verified snapshot in the store (``ModelError`` if refused)."""
        held = self.store.latest()
        return verify(held[1], {self.key_id: self.key}) if held else None

    def scorer(self, at: datetime) -> Scorer:
        """The scorer of the version in force at event time ``at``."""
        t = at.timestamp()
        if t > self._reserved:
            with self._lock, fatal_on_server_error():
                if t > self._reserved:
                    # An event far ahead (a wrong clock) moves the mark an hour at most
                    # (each), or every later version would wait for its time.
                    jump = t if math.isinf(self._reserved) else self._reserved + MAX_JUMP_S
                    mark = self.store.reserve(min(t, jump) + self.reserve_s)
                    self._take(self.store.since(self._version))
                    # Only now: a scorer that skips the lock (its time within the mark)
                    # must find every version published before the mark moved.
                    self._reserved = mark
        held = self._held
        for after, _, scorer in reversed(held):
            if t > after:
                return scorer
        return held[0][2]  # older than every version kept: the oldest

    def _take(self, found: list[tuple[float, int, bytes]]) -> None:
        """Verify and hold versions from the store (under the lock)."""
        for after, version, envelope in found:
            if version <= self._held[-1][1]:
                continue
            try:
                snapshot = verify(envelope, {self.key_id: self.key})
            except ModelError as exc:
                if version != self._version:
                    log.error(
                        "%s (version %d); scoring goes on with version %d",
                        exc,
                        version,
                        self._held[-1][1],
                    )
                    telemetry.MODELS_REFUSED.inc()
                self._version = max(self._version, version)  # not taken again
                continue
            self._keep(after, version, Scorer(snapshot, self.margin))

    def _keep(self, after: float, version: int, scorer: Scorer) -> None:
        self._held = [*self._held[-(RECENT - 1) :], (after, version, scorer)]
        self._version = max(self._version, version)


def _summary(snapshot: ModelSnapshot) -> bytes:
    """What the report page shows of each version: when, and the segments' sizes."""
    segments = snapshot.segments.segments if snapshot.segments else []
    return kept(
        {
            "version": snapshot.version,
            "created_at": snapshot.created_at,
            "segments": {s.id: {"label": s.label, "size": s.size} for s in segments},
        }
    )
