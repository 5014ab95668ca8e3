"""The flow's logic classes driven in one thread, routed as the dataflow routes them, for
benchmarks that need to look inside (state sizes, the samples the learner got).

One worker, one event at a time: the same steps and state as ``firstmile.flows.dataflow``, without
Bytewax's batching, recovery or sinks.
"""

from __future__ import annotations

from firstmile.flows.dataflow import (
    Emitted,
    ExperimentLogic,
    FlowSettings,
    IdentityLogic,
    LearnerLogic,
    ProfileLogic,
    TimerLogic,
)
from firstmile.operators.events import Event
from firstmile.operators.experiments import Outcome
from firstmile.operators.identity import identity_key
from firstmile.operators.outputs import Output
from firstmile.operators.samples import Choice, Observation, Return, Reward, Sample
from firstmile.operators.timers import Pacemaker, Tick, shard_of


class Driver:
    def __init__(self, settings: FlowSettings) -> None:
        self.settings = settings
        self.visitors: dict[str, IdentityLogic] = {}
        self.timers: dict[str, TimerLogic] = {}
        self.profiles: dict[str, ProfileLogic] = {}
        self.learner = LearnerLogic(settings, None)
        self.experiments: dict[str, ExperimentLogic] = {}
        self.outputs: list[Output] = []
        self.samples: list[Sample] = []
        self.pacemaker = Pacemaker(settings.timers.shards, settings.timers.heartbeat_s)

    def feed(self, event: Event) -> None:
        key = identity_key(event)
        released = [event]
        if key is not None:
            visitor = self.visitors.get(key)
            if visitor is None:
                visitor = self.visitors[key] = IdentityLogic(self.settings, None)
            released = visitor.on_batch([event])[0]
        for item in released:
            assert item.user_id is not None
            self._timer(shard_of(item.user_id, self.settings.timers.shards), item)
            seen = [("", item.timestamp.timestamp(), item.user_id)]
            for beat in self.pacemaker.beats(seen):  # shards move time on heartbeats
                if beat.shard in self.timers:
                    self._profile(self.timers[beat.shard].on_batch([beat])[0])

    def _timer(self, shard: str, event: Event) -> None:
        timer = self.timers.get(shard)
        if timer is None:
            timer = self.timers[shard] = TimerLogic(self.settings, None)
        self._profile(timer.on_batch([event])[0])

    def finish(self) -> None:
        for timer in self.timers.values():
            self._profile(timer.on_eof()[0])
        for profile in self.profiles.values():
            self._collect(profile.on_eof()[0])
        self.learner.on_eof()
        for tally in self.experiments.values():
            tally.on_eof()

    def _profile(self, items: list[Event | Tick]) -> None:
        for item in items:
            logic = self.profiles.get(item.user_id or "")
            if logic is None:
                logic = self.profiles[item.user_id or ""] = ProfileLogic(self.settings, None)
            self._collect(logic.on_batch([item])[0])

    def _collect(self, items: list[Emitted]) -> None:
        for item in items:
            if isinstance(item, Sample):
                self.samples.append(item)
                self.learner.on_batch([item])
            elif isinstance(item, Return | Observation | Choice | Reward):
                self.learner.on_batch([item])
            elif isinstance(item, Outcome):
                tally = self.experiments.get(item.experiment)
                if tally is None:
                    tally = self.experiments[item.experiment] = ExperimentLogic(self.settings, None)
                tally.on_batch([item])
            else:
                self.outputs.append(item)
