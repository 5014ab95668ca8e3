"""The channel between the single learner and the scorers on every worker and process.

The learner publishes signed snapshots into a ``ModelStore``; each worker's ``Models``
looks for a newer version at most every ``poll_s`` seconds, verifies it and scores with
it. A refused snapshot (unsigned, wrong key, tampered) is logged and counted, and the
scorers keep the version they had.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import orjson

from firstmile.online_models.scoring import Scorer
from firstmile.online_models.snapshot import ModelSnapshot, sign, verify
from firstmile.operators import telemetry
from firstmile.operators.errors import ModelError
from firstmile.state.model_store import MemoryModelStore, ModelStore
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
        self._scorer = Scorer(None, margin)
        self._version = 0
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def publish(self, snapshot: ModelSnapshot) -> bool:
        with fatal_on_server_error():  # runs inside the flow
            done = self.store.publish(
                snapshot.version, sign(snapshot, self.key, self.key_id), _summary(snapshot)
            )
        if done:
            with self._lock:  # this process's scorers take it now; others poll the store
                if snapshot.version > self._version:
                    self._scorer = Scorer(snapshot, self.margin)
                    self._version = snapshot.version
            telemetry.MODEL_VERSION.set(snapshot.version)
            log.info(
                "published model v%d (%s, %s)",
                snapshot.version,
                snapshot.segments.version if snapshot.segments else "no segments yet",
                snapshot.churn.version if snapshot.churn else "churn prior",
            )
        return done

    def latest(self) -> ModelSnapshot | None:
        """The newest verified snapshot in the store (``ModelError`` if refused)."""
        held = self.store.latest()
        return verify(held[1], {self.key_id: self.key}) if held else None

    def scorer(self) -> Scorer:
        """The scorer of the newest verified version (checked at most every ``poll_s``)."""
        now = self.clock()
        if now - self._checked < self.poll_s:
            return self._scorer
        with self._lock, fatal_on_server_error():
            self._checked = now
            if self.store.latest_version() > self._version:
                self._load()
        return self._scorer

    def _load(self) -> None:
        held = self.store.latest()
        if held is None:
            return
        version, envelope = held
        try:
            snapshot = verify(envelope, {self.key_id: self.key})
        except ModelError as exc:
            if version != self._version:
                log.error(
                    "%s (version %d); scoring goes on with version %d", exc, version, self._version
                )
                telemetry.MODELS_REFUSED.inc()
            self._version = version  # do not retry the same bad version on every poll
            return
        self._scorer = Scorer(snapshot, self.margin)
        self._version = version


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
