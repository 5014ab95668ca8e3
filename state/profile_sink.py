"""Write-behind of profiles into a ``ProfileStore``, with a bounded backlog.

The flow hands profiles over and goes on; a writer thread sends them in pipelined
batches, keeping only each user's newest profile while it waits (so a busy user costs
one write per batch, not one per event). The backlog holds at most ``max_backlog`` users:
when it is full the flow waits (back-pressure, never unbounded memory). At the end of
every epoch, before Bytewax snapshots the state, the backlog is drained: a recovered
snapshot never gets ahead of the store, so nothing is lost in a crash. A store error
stops the flow at its next hand-over, and recovery replays the epoch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from firstmile.operators import telemetry
from firstmile.operators.errors import ServerError
from firstmile.operators.outputs import Output
from firstmile.state.profile_store import ProfileStore, Record
from firstmile.state.shutdown import fatal_on_server_error


class _WriteBehind(StatefulSinkPartition[Output, None]):
    def __init__(self, store: ProfileStore, max_backlog: int) -> None:
        self._store, self._max = store, max_backlog
        self._pending: dict[str, Record] = {}
        self._writing = 0
        self._closing = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="profile-writer", daemon=True)
        self._thread.start()

    def write_batch(self, values: list[Output]) -> None:
        with self._cond:
            self._raise_if_failed()
            for item in values:
                if item.kind != "profile" or item.key is None:
                    continue
                seq = item.value["seq"] if item.value is not None else item.seq
                held = self._pending.get(item.key)
                if held is not None:
                    if seq >= held[1]:  # the same seq again: the newer render
                        self._pending[item.key] = (item.key, seq, item.value)
                    continue
                while len(self._pending) >= self._max and self._error is None:
                    self._cond.notify_all()
                    self._cond.wait()  # back-pressure: the writer frees room
                self._raise_if_failed()
                self._pending[item.key] = (item.key, seq, item.value)
            telemetry.REDIS_BACKLOG.set(len(self._pending))
            self._cond.notify_all()

    def snapshot(self) -> None:
        """The epoch ends: wait until everything handed over is in the store."""
        with self._cond:
            self._cond.notify_all()
            while (self._pending or self._writing) and self._error is None:
                self._cond.wait()
            self._raise_if_failed()

    def close(self) -> None:
        try:
            self.snapshot()
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()
            self._store.close()

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = list(self._pending.values()), {}
                self._writing = len(batch)
                telemetry.REDIS_BACKLOG.set(0)
                self._cond.notify_all()
            started = time.perf_counter()
            try:
                self._store.put_many(batch)
            except BaseException as exc:  # handed to the flow's thread, which stops
                with self._cond:
                    self._error = exc
                    self._writing = 0
                    self._cond.notify_all()
                return
            telemetry.REDIS_WRITE.observe(time.perf_counter() - started)
            with self._cond:
                self._writing = 0
                self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            with fatal_on_server_error():
                raise ServerError(f"profile store write failed: {self._error}") from self._error


class _WriteThrough(StatefulSinkPartition[Output, None]):
    """Writes in the flow's thread: for the in-process store of embedded runs, where the
    simulator reads users' decisions back and must see them in a reproducible order."""

    def __init__(self, store: ProfileStore) -> None:
        self._store = store

    def write_batch(self, values: list[Output]) -> None:
        self._store.put_many(
            [
                (item.key, item.value["seq"] if item.value is not None else item.seq, item.value)
                for item in values
                if item.kind == "profile" and item.key is not None
            ]
        )

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._store.close()


class ProfileStoreSink(FixedPartitionedSink[Output, None]):
    """Profiles (and erasures) into the store built by ``open_store``, written behind
    (or through, in the flow's thread, with ``write_behind=False``)."""

    #: The outputs it writes (``build_flow`` routes only these to its part).
    kinds = frozenset({"profile"})

    def __init__(
        self,
        open_store: Callable[[], ProfileStore],
        max_backlog: int = 10_000,
        *,
        write_behind: bool = True,
    ) -> None:
        self.open_store, self.max_backlog = open_store, max_backlog
        self.write_behind = write_behind

    def list_parts(self) -> list[str]:
        return ["profiles"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _WriteBehind | _WriteThrough:
        if not self.write_behind:
            return _WriteThrough(self.open_store())
        return _WriteBehind(self.open_store(), self.max_backlog)
