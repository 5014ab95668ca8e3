"""The channel between the single learner and the scorers on every worker and process.

The learner publishes signed snapshots into a ``ModelStore``; each worker's ``Models``
looks for newer versions at most every ``poll_s`` seconds, verifies them and scores with
them. A refused snapshot (unsigned, wrong key, tampered) is logged and counted, and the
scorers keep the version they had.

A version is in force by event time, so that a replay scores each position as the first
pass did: a version published while the newest event time scored in this process is
``T`` is in force for event times after ``T``, and the store keeps that point with the
envelope. After a restore the scorers load the recent versions with their points and a
replayed event is scored with the version in force at its time, not with whatever is
newest when it comes by again. Before outputs leave the flow, the newest event time
scored is marked in the store (``mark_scored``); what a restored learner publishes is in
force only after that mark, after everything the crashed run sent (``begin``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime

import orjson

from firstmile.online_models.scoring import Scorer
from firstmile.online_models.snapshot import ModelSnapshot, sign, verify
from firstmile.operators import telemetry
from firstmile.operators.errors import ModelError
from firstmile.state.model_store import RECENT, MemoryModelStore, ModelStore
from firstmile.state.shutdown import fatal_on_server_error

log = logging.getLogger(__name__)


class Models:
    def __init__(
        self,
        store: ModelStore | None = None,
        key: bytes | None = None,
        key_id: str = "m1",
        *,
        poll_s: float = 0.5,
        margin: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store or MemoryModelStore()
        self.key = key or os.urandom(32)  # embedded: this process is the only reader
        self.key_id = key_id
        self.poll_s, self.margin, self.clock = poll_s, margin, clock
        #: (in force after this event time, version, scorer), oldest first.
        self._held: list[tuple[float, int, Scorer]] = [(-math.inf, 0, Scorer(None, margin))]
        self._version = 0  # the newest version seen, refused ones too
        self._scored = -math.inf  # the newest event time any scorer here was asked for
        self._marked = -math.inf  # the newest of those the store has (``mark_scored``)
        self._floor = -math.inf  # resumed: what the crashed run had scored before sending
        self._checked = -math.inf
        self._lock = threading.Lock()

    def begin(self, *, resuming: bool, owner: bool = True) -> None:
        """Before a run: ``resuming`` (from a recovery snapshot), the recent versions with
        the event times they are in force after, as the crashed run scored with them;
        otherwise the newest version is in force from the start, and the ``owner`` (one
        process per job) makes the store say so."""
        with self._lock, fatal_on_server_error():
            if resuming:
                self._take(self.store.since(0))
                self._floor = self._marked = self.store.scored()
            if len(self._held) > 1:
                return
            held = self.store.latest()
            if owner and not resuming:
                self.store.restart(held)
            if held is not None:
                self._take([(-math.inf, *held)])

    def publish(self, snapshot: ModelSnapshot) -> bool:
        envelope = sign(snapshot, self.key, self.key_id)
        # The lock makes "in force after what was scored" exact: no scorer here picks a
        # version between reading the newest time and the version joining the list.
        with self._lock, fatal_on_server_error():  # runs inside the flow
            after = max(self._scored, self._held[-1][0], self._floor)
            done = self.store.publish(snapshot.version, envelope, _summary(snapshot), after)
            if done and snapshot.version > self._held[-1][1]:
                self._keep(after, snapshot.version, Scorer(snapshot, self.margin))
        if done:
            telemetry.MODEL_VERSION.set(snapshot.version)
            log.info(
                "published model v%d (%s, %s)",
                snapshot.version,
                snapshot.segments.version if snapshot.segments else "no segments yet",
                snapshot.churn.version if snapshot.churn else "churn prior",
            )
        return done

    def mark_scored(self) -> None:
        """Before outputs leave the flow: the newest event time scored goes to the store.
        A restored learner's versions are in force only after it, so a replay scores
        what the crashed run already sent with the versions it had."""
        scored = self._scored
        if scored > self._marked:
            with fatal_on_server_error():
                self.store.mark(scored)
            self._marked = scored

    def latest(self) -> ModelSnapshot | None:
        """The newest verified snapshot in the store (``ModelError`` if refused)."""
        held = self.store.latest()
        return verify(held[1], {self.key_id: self.key}) if held else None

    def scorer(self, at: datetime) -> Scorer:
        """The scorer of the version in force at event time ``at`` (the store is checked
        for newer ones at most every ``poll_s``)."""
        now = self.clock()
        if now - self._checked >= self.poll_s:
            with self._lock, fatal_on_server_error():
                self._checked = now
                if self.store.latest_version() > self._version:
                    self._take(self.store.since(self._held[-1][1]))
        t = at.timestamp()
        with self._lock:
            if t > self._scored:
                self._scored = t
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
                self._version = max(self._version, version)  # not retried on every poll
                continue
            self._keep(after, version, Scorer(snapshot, self.margin))

    def _keep(self, after: float, version: int, scorer: Scorer) -> None:
        self._held = [*self._held[-(RECENT - 1) :], (after, version, scorer)]
        self._version = max(self._version, version)


def _summary(snapshot: ModelSnapshot) -> bytes:
    """What the report page shows of each version: when, and the segments' sizes."""
    segments = snapshot.segments.segments if snapshot.segments else []
    return orjson.dumps(
        {
            "version": snapshot.version,
            "created_at": snapshot.created_at,
            "segments": {s.id: {"label": s.label, "size": s.size} for s in segments},
        }
    )
