"""Event-time timers, held in shards keyed by a hash of the user id.

A shard remembers each of its users' newest event time and the next timer due for them:
the end of their session (``session_gap`` after it), then "no activity for H hours" for
each H, then idle compaction of their state. Its watermark is the newest event time read
from the slowest source partition (Kafka partitions are read at different paces, hours
apart when catching up), minus the allowed lateness: from its own events, and from the
``Pacemaker``'s heartbeats, so a shard whose users are all quiet still moves on. At the
end of the input, every partition's newest time counts. Live, it is also the wall clock
minus the allowed lateness, but only once the stream has caught up (an event arrived
within the lateness of the wall clock), so catching up on a backlog never fires timers
early. A timer fires when the watermark passes it, also for users who never send another
event, so replaying history at full speed fires the same timers, at the same event
times, as living through it.

>>> from datetime import datetime, timedelta, UTC
>>> t = datetime(2026, 3, 2, tzinfo=UTC)
>>> shard = TimerShard(TimerSettings(allowed_lateness=timedelta(0), inactivity_hours=(1,)))
>>> shard.observe("u1", t)
[]
>>> [(tick.user_id, tick.kind) for tick in shard.observe("u2", t + timedelta(minutes=45))]
[('u1', 'session_end')]
>>> [(tick.user_id, tick.kind, tick.hours) for tick in shard.observe("u2", t + timedelta(hours=3))]
[('u1', 'inactive', 1), ('u2', 'session_end', 0), ('u2', 'inactive', 1)]
"""

from __future__ import annotations

import functools
import heapq
import math
import sys
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from firstmile.operators.playbook import Playbook, Playbooks
from firstmile.operators.rules import Absence
from firstmile.operators.watermark import MAX_JUMP_S, PartitionClock

TickKind = Literal["session_end", "inactive", "idle", "decision", "deadline"]
_DECISION = -1  # the heap's stage for decision points
#: Absence rules with ``match``: values watched at once per user and rule, and their length.
MATCHED_PER_RULE = 8
MATCH_CHARS = 64


@dataclass(frozen=True, slots=True)
class TimerSettings:
    session_gap: timedelta = timedelta(minutes=30)
    inactivity_hours: tuple[int, ...] = (24, 72, 168)
    idle_after: timedelta = timedelta(days=30)  # then the user's state is compacted
    allowed_lateness: timedelta = timedelta(minutes=5)
    wall_clock: bool = False  # live Kafka mode: the clock also moves the watermark
    shards: int = 64
    #: Event time a source partition must move on (a line of this grid) before quiet
    #: shards hear of it (a heartbeat goes to every shard, at most once per batch).
    heartbeat_s: float = 60.0
    #: Decision points: at each of ``decision_early`` after signup, then every
    #: ``decision_every`` after signup while the user is active (the first one always).
    decision_every: timedelta = timedelta(hours=24)
    decision_early: tuple[timedelta, ...] = (timedelta(hours=6),)
    #: Absence rules: after an event of one kind, a deadline (``absence:<rule id>``) that
    #: an event of another kind cancels.
    absences: tuple[Absence, ...] = ()
    #: Deadlines after signup (``outcome:<name>``, seconds): experiment outcomes mature.
    outcomes: tuple[tuple[str, float], ...] = ()

    def schedule(self) -> tuple[tuple[float, TickKind, int], ...]:
        """(seconds after the last event, kind, hours) in firing order."""
        return _schedule(self)


@functools.cache
def _schedule(self: TimerSettings) -> tuple[tuple[float, TickKind, int], ...]:
    timers: list[tuple[float, TickKind, int]] = [
        (self.session_gap.total_seconds(), "session_end", 0)
    ]
    timers += [(hours * 3600.0, "inactive", hours) for hours in sorted(self.inactivity_hours)]
    timers.append((self.idle_after.total_seconds(), "idle", 0))
    return tuple(sorted(timers, key=lambda timer: timer[0]))


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer that fired: ``due`` is its event time (last activity + its delay)."""

    user_id: str
    kind: TickKind
    due: datetime
    last_seen: datetime
    hours: int = 0
    name: str = ""  # a deadline's name: absence:<rule id>[:<value>] or outcome:<name>


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """How far each source partition has been read, for a shard that may see few events."""

    shard: str
    marks: dict[str, float]  # source partition -> newest event time (shared: read-only)


class Pacemaker:
    """Tells every shard how far the source has been read, so quiet shards' timers fire.

    A shard sees only its users' events; without this, a shard whose users are all quiet
    would not move on. After a batch of events in which any partition's time reached a
    new line of a grid of ``interval_s``, every shard gets a ``Heartbeat`` with every
    partition's time. The last beat's times, rounded down to the grid, are then the same
    however the input was cut into batches or partitions: the end of the input fires the
    deadlines before that (``TimerShard.finish``), so a file run and a Kafka run fire the
    same ones. A worker's pacemaker knows the partitions that worker reads; shards merge
    what all workers tell them.

    >>> from datetime import datetime, UTC
    >>> pace = Pacemaker(shards=2, interval_s=60)
    >>> [(b.shard, b.marks) for b in pace.beats([("p#0", 1000.0, "u1")])]
    [('shard-0', {'p#0': 1000.0}), ('shard-1', {'p#0': 1000.0})]
    >>> pace.beats([("p#0", 1019.0, "u1")]), len(pace.beats([("p#0", 1021.0, "u2")]))
    ([], 2)
    """

    def __init__(self, shards: int, interval_s: float) -> None:
        self.keys = [f"shard-{i}" for i in range(shards)]
        self.interval_s = interval_s
        self.clocks: dict[str, PartitionClock] = {}
        self._beaten: dict[str, float] = {}  # the grid lines of the marks last sent

    def beats(self, seen: list[tuple[str, float, str]]) -> list[Heartbeat]:
        """After events ``(source partition, epoch seconds, user id)``: the heartbeats due."""
        by_source: dict[str, list[tuple[float, str]]] = {}
        for source, seconds, user_id in seen:
            by_source.setdefault(source, []).append((seconds, user_id))
        clocks = self.clocks
        for source, events in by_source.items():
            clock = clocks.get(source)
            if clock is None:
                clock = clocks[source] = PartitionClock()
            clock.see_batch(events)
        marks = {source: clock.mark for source, clock in clocks.items()}
        cells = {source: on_grid(mark, self.interval_s) for source, mark in marks.items()}
        # Any partition that moved on is news, not only the slowest: the end of the input
        # is every partition's newest time, and a stuck partition must not hide the others.
        if cells == self._beaten:
            return []
        self._beaten = cells
        return [Heartbeat(key, marks) for key in self.keys]


def _by_kind(absences: Iterable[Absence]) -> dict[str, list[tuple[str, bool, float, str | None]]]:
    """Absence rules by event kind: (deadline name, arms it (else cancels), seconds, the
    event property whose value the deadline is per, if any)."""
    by_kind: dict[str, list[tuple[str, bool, float, str | None]]] = {}
    for absence in absences:
        name, match = f"absence:{absence.rule_id}", absence.match
        for kind in absence.unless:  # an awaited kind cancels, even if it also arms
            by_kind.setdefault(kind, []).append((name, False, absence.within_s, match))
        for kind in absence.after - absence.unless:
            by_kind.setdefault(kind, []).append((name, True, absence.within_s, match))
    return by_kind


def on_grid(seconds: float, grid: float) -> float:
    """``seconds`` rounded down to a multiple of ``grid`` (-inf stays -inf)."""
    return seconds // grid * grid if seconds > float("-inf") else seconds


def shard_of(user_id: str, shards: int) -> str:
    """The timer shard key of a user (stable across processes and restarts)."""
    return f"shard-{zlib.crc32(user_id.encode('utf-8')) % shards}"


ShardState = tuple[
    dict[str, float],
    bool,
    dict[str, tuple[float, int]],
    dict[str, float],
    dict[str, float],
    dict[str, dict[str, float]],
]


@dataclass(slots=True)
class TimerShard:
    settings: TimerSettings
    marks: dict[str, float] = field(default_factory=dict)  # source partition -> newest time
    live: bool = False  # the stream has caught up with the wall clock
    #: In the flow a shard sees a sample of its partitions' events, too few to tell a
    #: wrong clock from a quiet hour: its own events move time only within the jump;
    #: the ``Pacemaker``'s heartbeats, from every event, move it further.
    paced: bool = False
    users: dict[str, tuple[float, int]] = field(default_factory=dict)  # user -> (last, stage)
    signups: dict[str, float] = field(default_factory=dict)  # user -> signup time
    decisions: dict[str, float] = field(default_factory=dict)  # user -> next decision point
    heap: list[tuple[float, str, int]] = field(default_factory=list)  # (due, user, stage)
    deadlines: dict[str, dict[str, float]] = field(default_factory=dict)  # user -> name -> due
    alarms: list[tuple[float, str, str]] = field(default_factory=list)  # (due, user, name)
    #: Published playbooks, when rules may change while the job runs: an event's absence
    #: rules and outcome deadlines are then those of the version in force at its time.
    playbooks: Playbooks | None = field(default=None, repr=False)
    #: The settings' schedule, read once: hashing the settings per event was measurable.
    _timers: tuple[tuple[float, TickKind, int], ...] = field(init=False, repr=False)
    #: Absence rules by event kind: (deadline name, arms it (else cancels), seconds, the
    #: event property whose value the deadline is per, if any).
    _by_kind: dict[str, list[tuple[str, bool, float, str | None]]] = field(init=False, repr=False)
    _clocks: dict[str, PartitionClock] = field(init=False, repr=False)
    _version: str = field(init=False, repr=False)
    _outcomes: tuple[tuple[str, float], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._timers = self.settings.schedule()
        self._clocks = {}
        self._by_kind = _by_kind(self.settings.absences)
        self._version = ""  # the playbook ``_by_kind`` and ``_outcomes`` are of
        self._outcomes = self.settings.outcomes

    @property
    def watermark(self) -> float:
        """The newest event time of the slowest source partition (epoch seconds). A paced
        shard knows it from heartbeats, whose times depend on where the input's batches
        were cut: it counts up to its line of the heartbeats' grid, which does not (a file
        run and a Kafka run of one stream fire the same timers, the end of input too)."""
        mark = min(self.marks.values(), default=float("-inf"))
        return on_grid(mark, self.settings.heartbeat_s) if self.paced else mark

    def observe(
        self,
        user_id: str,
        when: datetime,
        *,
        source: str = "",
        now: datetime | None = None,
        signup: bool = False,
        kind: str = "",
        properties: Mapping[str, Any] | None = None,
    ) -> list[Tick]:
        """An event of ``user_id`` at ``when`` read from ``source`` (a partition's name);
        ``now`` is the wall clock, when live; ``properties``: the event's (absence rules
        with ``match`` read them).

        Timers the event's time has passed fire first, as they would have live, before
        the event (re)schedules its user's timers; those ticks are returned.
        """
        seconds = when.timestamp()
        mark = self.marks.get(source, float("-inf"))
        if not self.paced:
            mark = self._clock(source).see(seconds, user_id)
        elif mark < seconds <= mark + MAX_JUMP_S:  # a jump is the pacemaker's to confirm
            mark = seconds
        self.marks[source] = mark
        if now is not None:  # live once the partition's time, not one event's, is current
            lag = now.timestamp() - mark
            self.live = lag <= self.settings.allowed_lateness.total_seconds()
        fired = self.advance(now)
        fired += self._fire_own(user_id, seconds)
        held = self.users.get(user_id)
        if held is None or seconds > held[0]:
            self.users[user_id] = (seconds, 0)
            heapq.heappush(self.heap, (seconds + self._timers[0][0], user_id, 0))
        if self.playbooks is not None:
            self._follow(self.playbooks.at(seconds))
        if signup and user_id not in self.signups:
            self.signups[user_id] = seconds
            for name, after in self._outcomes:
                self._set_deadline(user_id, f"outcome:{name}", seconds + after)
        if kind in self._by_kind:
            self._absences(user_id, kind, seconds, properties or {})
        if user_id in self.signups and user_id not in self.decisions:
            self._schedule_decision(user_id, seconds)
        return fired

    def _follow(self, play: Playbook) -> None:
        if play.version != self._version:
            self._version = play.version
            self._by_kind = _by_kind(play.rules.absences())
            self._outcomes = play.experiments.outcome_deadlines()

    def _absences(
        self, user_id: str, kind: str, seconds: float, properties: Mapping[str, Any]
    ) -> None:
        for name, arms, within, match in self._by_kind[kind]:
            if match is not None:  # one deadline per value: absence:<rule>:<value>
                value = properties.get(match)
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    continue  # no value, nothing to pair it with
                prefix, name = name + ":", f"{name}:{str(value)[:MATCH_CHARS]}"
                held = self.deadlines.get(user_id, {})
                if arms and sum(n.startswith(prefix) for n in held) >= MATCHED_PER_RULE:
                    continue  # bounded state: the first few values are watched
            if not arms:  # the awaited kind came: the deadline is off
                pending = self.deadlines.get(user_id)
                if pending is not None and pending.pop(name, None) is not None and not pending:
                    del self.deadlines[user_id]
            elif name not in self.deadlines.get(user_id, {}):
                self._set_deadline(user_id, name, seconds + within)

    def _set_deadline(self, user_id: str, name: str, due: float) -> None:
        name = sys.intern(name)  # "outcome:activation" held once, not once a user
        self.deadlines.setdefault(user_id, {})[name] = due
        heapq.heappush(self.alarms, (due, user_id, name))

    def _schedule_decision(self, user_id: str, after: float) -> None:
        """The next decision point at or after ``after``: an early one, else
        signup + n * every, n >= 1."""
        settings = self.settings
        every = settings.decision_every.total_seconds()
        signed_up = self.signups[user_id]
        early = [
            signed_up + offset.total_seconds()
            for offset in settings.decision_early
            if after <= signed_up + offset.total_seconds() < signed_up + every
        ]
        n = max(1, math.ceil((after - signed_up) / every))
        due = min(early, default=signed_up + n * every)
        self.decisions[user_id] = due
        heapq.heappush(self.heap, (due, user_id, _DECISION))

    def hear(self, heartbeat: Heartbeat, now: datetime | None = None) -> list[Tick]:
        """Merge how far the source has been read; fire what that made due."""
        marks = self.marks
        for source, seconds in heartbeat.marks.items():
            if seconds > marks.get(source, float("-inf")):
                marks[source] = seconds
                if not self.paced:  # a paced shard's own events never claim: no clock
                    self._clock(source).advance_to(seconds)
        if now is not None and marks:  # a heartbeat can tell a paced shard it caught up
            lag = now.timestamp() - max(marks.values())
            self.live = lag <= self.settings.allowed_lateness.total_seconds()
        return self.advance(now)

    def _clock(self, source: str) -> PartitionClock:
        """The partition's robust clock (not state: rebuilt from ``marks`` on restore)."""
        clock = self._clocks.get(source)
        if clock is None:
            clock = self._clocks[source] = PartitionClock(
                mark=self.marks.get(source, float("-inf"))
            )
        return clock

    def finish(self) -> list[Tick]:
        """End of input: every partition has been read to its end, so the newest time counts
        (the newest mark: claims far ahead that never agreed still do not count)."""
        if self.marks:
            newest = max(self.marks.values())
            self.marks = dict.fromkeys(self.marks, newest)
            self._clocks = {}  # rebuilt from the marks, should anything come after
        return self.advance()

    def state(self) -> ShardState:
        """What recovery keeps (the heap is rebuilt, the settings come from the config)."""
        return (
            dict(self.marks),
            self.live,
            dict(self.users),
            dict(self.signups),
            dict(self.decisions),
            {user: dict(names) for user, names in self.deadlines.items()},
        )

    @classmethod
    def restore(
        cls,
        settings: TimerSettings,
        state: ShardState,
        *,
        paced: bool = False,
        playbooks: Playbooks | None = None,
    ) -> TimerShard:
        marks, live, users, signups, decisions, *rest = state
        shard = cls(settings, marks, live, paced, users, signups, decisions, playbooks=playbooks)
        shard.deadlines = rest[0] if rest else {}  # snapshots before deadlines had five parts
        shard._rebuild()
        return shard

    def _rebuild(self) -> None:
        schedule = self._timers
        self.heap = []
        for user_id, (last, stage) in list(self.users.items()):
            if stage >= len(schedule):  # the schedule shrank since the snapshot
                del self.users[user_id]
                continue
            self.heap.append((last + schedule[stage][0], user_id, stage))
        self.heap.extend((due, user_id, _DECISION) for user_id, due in self.decisions.items())
        heapq.heapify(self.heap)
        self.alarms = [
            (due, user_id, name)
            for user_id, names in self.deadlines.items()
            for name, due in names.items()
        ]
        heapq.heapify(self.alarms)

    def _decide(self, user_id: str, due: float) -> list[Tick]:
        if self.decisions.get(user_id) != due:
            return []  # superseded or forgotten
        del self.decisions[user_id]
        held = self.users.get(user_id)
        last = held[0] if held else self.signups[user_id]
        every = self.settings.decision_every.total_seconds()
        early = due < self.signups[user_id] + every
        if early or last > due - every:  # active since the last one: another one follows
            self._schedule_decision(user_id, due + 1e-6)
        return [Tick(user_id, "decision", _utc(due), _utc(last))]

    def forget(self, user_id: str) -> None:
        """Drop the user's pending timers (erasure); stale heap entries are skipped."""
        self.users.pop(user_id, None)
        self.signups.pop(user_id, None)
        self.decisions.pop(user_id, None)
        self.deadlines.pop(user_id, None)

    def advance(self, now: datetime | None = None) -> list[Tick]:
        """Fire every timer the watermark has passed, oldest first."""
        settings = self.settings
        heap, users = self.heap, self.users
        lateness = settings.allowed_lateness.total_seconds()
        mark = self.watermark - lateness
        if now is not None and settings.wall_clock and self.live:
            mark = max(mark, now.timestamp() - lateness)
        alarms = self.alarms
        if (not heap or heap[0][0] > mark) and (not alarms or alarms[0][0] > mark):
            return []  # the common case, kept cheap: nothing is due
        fired: list[Tick] = []
        while True:
            timer = heap[0][0] if heap else float("inf")
            alarm = alarms[0][0] if alarms else float("inf")
            if min(timer, alarm) > mark:
                break
            if timer <= alarm:
                due, user_id, stage = heapq.heappop(heap)
                fired.extend(self._fire(due, user_id, stage))
            else:
                due, user_id, name = heapq.heappop(alarms)
                fired.extend(self._ring(due, user_id, name))
        if len(heap) > 4 * len(users) + 64 or len(alarms) > 4 * len(self.deadlines) + 64:
            self._rebuild()
        return fired

    def _ring(self, due: float, user_id: str, name: str) -> list[Tick]:
        """The tick of a popped deadline, if it is still pending (not cancelled)."""
        pending = self.deadlines.get(user_id)
        if pending is None or pending.get(name) != due:
            return []
        del pending[name]
        if not pending:
            del self.deadlines[user_id]
        held = self.users.get(user_id)
        last = held[0] if held else due
        return [Tick(user_id, "deadline", _utc(due), _utc(last), name=name)]

    def _fire(self, due: float, user_id: str, stage: int) -> list[Tick]:
        """The tick of a popped heap entry, if it is still the user's pending timer."""
        if stage == _DECISION:
            return self._decide(user_id, due)
        schedule = self._timers
        held = self.users.get(user_id)
        if held is None or held[1] != stage or held[0] + schedule[stage][0] != due:
            return []  # superseded by a newer event, or forgotten
        _, kind, hours = schedule[stage]
        if stage + 1 < len(schedule):
            self.users[user_id] = (held[0], stage + 1)
            heapq.heappush(self.heap, (held[0] + schedule[stage + 1][0], user_id, stage + 1))
        else:
            del self.users[user_id]
        return [Tick(user_id, kind, _utc(due), _utc(held[0]), hours)]

    def _fire_own(self, user_id: str, upto: float) -> list[Tick]:
        """The user's own timers due by ``upto``, the time of their newest event.

        A user's events arrive in order (one Kafka partition per user), so their own
        event proves their timeline passed these, whatever other partitions lag behind.
        """
        fired: list[Tick] = []
        schedule = self._timers
        while True:
            pending = []
            held = self.users.get(user_id)
            if held is not None:
                pending.append((held[0] + schedule[held[1]][0], held[1]))
            decision = self.decisions.get(user_id)
            if decision is not None:
                pending.append((decision, _DECISION))
            due, stage = min(pending, default=(float("inf"), 0))
            names = self.deadlines.get(user_id)
            if names and (alarm := min(names.values())) < due:
                if alarm > upto:
                    return fired
                name = next(n for n, at in names.items() if at == alarm)
                fired.extend(self._ring(alarm, user_id, name))
                continue
            if due > upto:
                return fired
            fired.extend(self._fire(due, user_id, stage))


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
