"""One user's step: their profile, decisions, rules and experiment arms. Events and
timer ticks in; decision and trigger events, profile messages for the store, samples
and observations for the learner and experiment outcomes out. No Bytewax here: the
dataflow's ``ProfileLogic`` runs a ``UserStep`` per user key, and tests drive one
directly with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from firstmile.operators import telemetry
from firstmile.operators.decisions import (
    Scoring,
    attributes,
    decide,
    imposed_path,
    label_on_return,
    outcomes,
    path_attributes,
    remember_decision,
    repath,
    trigger_message,
)
from firstmile.operators.dedup import RecentIds
from firstmile.operators.events import Event
from firstmile.operators.experiments import Experiment, Outcome
from firstmile.operators.features import (
    LazyFeatures,
    features,
    name_mix,
    profile_message,
    time_to_complete_s,
)
from firstmile.operators.identity import user_key
from firstmile.operators.outputs import Output
from firstmile.operators.playbook import Playbook, Playbooks
from firstmile.operators.profile import (
    DUPLICATE,
    Lane,
    ProfileSettings,
    UserProfile,
    apply_event,
    compact,
    erase,
    mix_bucket,
    mix_name,
)
from firstmile.operators.samples import Choice, Observation, Return, Reward, Sample
from firstmile.operators.timers import Tick

#: What the step sends on.
Emitted = Output | Sample | Return | Observation | Choice | Reward | Outcome

#: What ``on_batch`` says of the state: keep it, or drop it (only stale timers came for
#: a user no longer held).
RETAIN, DISCARD = False, True


class ScoringNow(Scoring, Protocol):
    def choose_path(
        self,
        x: dict[str, float],
        paths: tuple[str, ...],
        exploration: float,
        draw_key: str,
        rules_path: str,
    ) -> tuple[str, dict[str, float], dict[str, float]]: ...


class ModelsInForce(Protocol):
    def scorer(self, at: datetime) -> ScoringNow:
        """The models in force at event time ``at`` (a replay scores as the first pass)."""


#: What the user step sends the profile store after each batch that changed a user:
#: nothing (file mode), the whole profile (Redis, for the app and ``firstmile serve``), or
#: the onboarding path alone (the simulated product, that store's only reader: rendering
#: whole profiles for it was a tenth of the default run's CPU). Final profiles are whole.
ProfileUpdates = Literal["none", "whole", "path"]


class StepSettings(Protocol):
    """What a user's step reads (``flows.dataflow.FlowSettings`` has it all)."""

    @property
    def now(self) -> Callable[[], datetime]: ...
    @property
    def profile(self) -> ProfileSettings: ...
    @property
    def models(self) -> ModelsInForce: ...
    @property
    def playbooks(self) -> Playbooks: ...
    @property
    def candidate(self) -> Playbooks | None: ...
    @property
    def dedup_capacity(self) -> int: ...
    @property
    def dedup_window(self) -> timedelta: ...
    @property
    def profile_updates(self) -> ProfileUpdates: ...
    @property
    def update_every(self) -> timedelta: ...
    @property
    def rescore_every(self) -> timedelta: ...


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # no time of its own: the profile's newest


class UserStep:
    """One user's profile, decisions, rules and experiments: events and timers in, what
    they cause out. Pure: the clock, the models, rules, paths and experiments come in
    through ``StepSettings``; ``flows.dataflow.ProfileLogic`` runs one per user key."""

    __slots__ = ("fresh", "profile", "rendered_at", "settings")  # one per user: kept small

    def __init__(self, settings: StepSettings, resume: UserProfile | None) -> None:
        self.settings = settings
        self.profile = resume
        self.rendered_at: datetime | None = None  # when the store last got this profile
        #: Within a batch: the newest scoring's vector and the seq it left, so a profile
        #: rendered with nothing changed since reuses it (cleared after the batch).
        self.fresh: tuple[int, dict[str, float]] | None = None

    def _new(self, user_id: str) -> UserProfile:
        settings = self.settings
        return UserProfile(
            user_id, recent_ids=RecentIds(settings.dedup_capacity, settings.dedup_window)
        )

    def on_batch(self, values: list[Event | Tick]) -> tuple[list[Emitted], bool]:
        settings = self.settings
        now = settings.now()
        out: list[Emitted] = []
        changed = False
        playbooks = settings.playbooks
        for item in values:
            if isinstance(item, Tick):
                if self.profile is not None and self._on_tick(
                    item, now, out, playbooks.at(item.due.timestamp())
                ):
                    changed = True
                    self._rescore(out, now)
                continue
            profile = self.profile
            last_seq = profile.seq if profile is not None else 0
            if profile is not None and profile.erased_at is not None:
                if item.kind != "signup" or item.timestamp <= profile.erased_at:
                    telemetry.SUPPRESSED.labels("erased").inc()
                    continue
                profile = None  # a new signup after erasure starts afresh
            if item.kind == "user_erased":
                self.profile, tombstones = erase(user_key(item), item, seq=last_seq)
                telemetry.ERASURES.inc()
                out.extend(tombstones)
                changed = False
                continue
            if profile is None:
                profile = self.profile = self._new(user_key(item))
                profile.seq = last_seq  # seq goes on across an erasure
                if not last_seq:
                    telemetry.USERS.labels("known").inc()
            reasons = apply_event(profile, item, processed_at=now, settings=settings.profile)
            if reasons is DUPLICATE:
                telemetry.DUPLICATES.inc()
                continue
            changed = True
            telemetry.child(telemetry.EVENTS, item.kind).inc()
            # Snapshots from before ``received`` existed lack it: read it softly.
            received: float = getattr(item.source, "received", 0.0) if item.source else 0.0
            if received:
                telemetry.LATENCY.observe(max(0.0, now.timestamp() - received))
            self._observe_population(item, out)
            returned = label_on_return(profile, item.timestamp)
            if returned is not None:
                out.append(returned)
            play = playbooks.at(item.timestamp.timestamp())
            signup = "signup" in reasons
            if signup and not profile.arms:
                self._assign(out, item, play)
            vector, decided = None, bool(reasons)
            if decided:
                vector, reasons = self._decide(
                    out, now, reasons, item.timestamp, item.message_id, play
                )
            if reasons or item.kind in play.rules.triggers:
                triggers = [item.kind, *reasons]
                self._act(out, now, triggers, item.timestamp, item.message_id, play, vector, item)
            if settings.candidate is not None:
                self._candidate_event(out, now, item, signup, reasons if decided else None, vector)
            self._rescore(out, now)
        if self.profile is None:  # only stale timers for a user we no longer hold
            return out, DISCARD
        profile = self.profile
        updates = settings.profile_updates != "none"
        if changed and profile.known and profile.erased_at is None and updates:
            self._update_store(out, now)
        self.fresh = None
        return out, RETAIN

    def _rescore(self, out: list[Emitted], now: datetime) -> None:
        """A change of mind, at most every ``rescore_every`` of event time. Checked after
        every item, not once per batch: how a source batches must not change decisions
        (a replay batches differently)."""
        profile, settings = self.profile, self.settings
        if profile is None or not profile.known or profile.erased_at is not None:
            return
        as_of = profile.as_of
        if as_of is None or (
            profile.scored_at is not None and as_of - profile.scored_at < settings.rescore_every
        ):
            return
        play = settings.playbooks.at(as_of.timestamp())
        vector, found = self._decide(out, now, [], as_of, None, play)
        if found:
            self._act(out, now, found, as_of, None, play, vector, signal=found[0])
        if settings.candidate is not None:
            self._candidate_changes(out, now, found, as_of, vector)

    def _update_store(self, out: list[Emitted], now: datetime) -> None:
        """The profile for the store, at most every ``update_every`` per user: a user busy
        within that time gets one update when it is over (``notify_at``), not one per batch.
        ``pending_update`` is state, so a snapshot taken in between still gets it out."""
        profile = self.profile
        assert profile is not None
        gap = self.settings.update_every
        if self.rendered_at is not None and now - self.rendered_at < gap:
            profile.pending_update = True
            return
        self._send_update(out, now)

    def _send_update(self, out: list[Emitted], now: datetime) -> None:
        assert self.profile is not None
        out.append(self._message(now))
        self.profile.pending_update = False
        self.rendered_at = now

    def notify_at(self) -> datetime | None:
        profile = self.profile
        if profile is None or not profile.pending_update:
            return None
        return (self.rendered_at or self.settings.now()) + self.settings.update_every

    def on_notify(self) -> tuple[list[Emitted], bool]:
        out: list[Emitted] = []
        profile = self.profile
        if profile is not None and profile.pending_update and profile.erased_at is None:
            self._send_update(out, self.settings.now())
        return out, RETAIN

    def _observe_population(self, event: Event, out: list[Emitted]) -> None:
        """What this user shows of the population, for the learner: it publishes what
        features impute and clip with, with the models."""
        profile = self.profile
        assert profile is not None
        if event.traits and profile.traits:
            out.append(Observation(traits=dict(profile.traits)))
        name = mix_name(event)
        if profile.mix[mix_bucket(name)] == 1:  # the user's first in its bucket
            out.append(Observation(event_name=name))
        if event.kind == "onboarding_completed":
            to_complete = time_to_complete_s(profile)
            if to_complete is not None:
                out.append(Observation(kind="onboarding_s", seconds=to_complete))

    def _scorer(self, at: datetime = _EPOCH) -> tuple[ScoringNow, datetime]:
        """The models in force for the user now (at ``at``, or at the newest time the
        profile has seen, if later: a late event is scored with today's models, as its
        features are), and that time."""
        as_of = self.profile.as_of if self.profile is not None else None
        when = as_of if as_of is not None and as_of > at else at
        return self.settings.models.scorer(when), when

    def _decide(
        self,
        out: list[Emitted],
        now: datetime,
        reasons: list[str],
        at: datetime,
        cause_event: str | None,
        play: Playbook,
    ) -> tuple[dict[str, float], list[str]]:
        """Score the user; emit a decision event if called for. The feature vector used,
        and the reasons (with the changes the scoring found)."""
        profile, settings = self.profile, self.settings
        assert profile is not None
        scorer, when = self._scorer(at)
        vector = features(profile, scorer.population, settings.profile)
        profile.scored_at = when
        before = profile.segment[0]
        decision, reasons = decide(
            profile,
            vector,
            scorer,
            reasons=reasons,
            event_time=at,
            processed_at=now,
            cause_event=cause_event,
            paths=play.paths,
            imposed_path=imposed_path(profile, play.experiments, play.paths, vector),
            config_version=play.version,
        )
        self.fresh = (profile.seq, vector)
        if decision is not None and decision.value is not None:
            out.append(decision)
            telemetry.child(telemetry.DECISIONS, decision.value["reason"]).inc()
            if before != profile.segment[0]:
                telemetry.TRANSITIONS.labels(before, profile.segment[0]).inc()
        return vector, reasons

    def _act(
        self,
        out: list[Emitted],
        now: datetime,
        triggers: list[str],
        at: datetime,
        cause_event: str | None,
        play: Playbook,
        vector: dict[str, float] | None = None,
        event: Event | Mapping[str, Any] | None = None,
        *,
        signal: str | None = None,
    ) -> bool:
        """Run the rules listening to ``triggers`` (one cause); whether any fired."""
        profile, settings = self.profile, self.settings
        assert profile is not None
        book = play.rules
        if book.triggers.isdisjoint(triggers):
            return False  # the common case: no rule listens, no attributes are built
        scorer, _ = self._scorer(at)
        lazy = LazyFeatures(profile, scorer.population, settings.profile)
        known = attributes(profile, vector or lazy, event)
        verdicts = book.evaluate(
            dict.fromkeys(triggers),
            lambda: known,
            profile.fired,
            at=at.timestamp(),
            user_id=profile.user_id,
        )
        for verdict in verdicts:
            rule_id = verdict.rule.id
            outcome = "held_out" if verdict.held_out else "sent"
            telemetry.child(telemetry.TRIGGERS, rule_id, outcome).inc()
            if verdict.held_out:
                continue
            out.append(
                trigger_message(
                    profile,
                    verdict,
                    known,
                    event_time=at,
                    processed_at=now,
                    cause_event=cause_event,
                    signal=signal,
                    versions=scorer.versions,
                    config_version=play.version,
                )
            )
        return bool(verdicts)

    def _assign(self, out: list[Emitted], event: Event, play: Playbook) -> None:
        """A new user's experiment arms (sticky), and their exposures for the tallies."""
        profile = self.profile
        assert profile is not None
        settings = self.settings
        scorer, _ = self._scorer(event.timestamp)
        known = attributes(
            profile, LazyFeatures(profile, scorer.population, settings.profile), event
        )
        profile.arms = play.experiments.assign(profile.user_id, known, event.anonymous_id)
        out.extend(Outcome(key, arm, "exposed", True) for key, arm in profile.arms.items())

    def _on_tick(self, tick: Tick, now: datetime, out: list[Emitted], play: Playbook) -> bool:
        """Apply a timer; whether it changed the profile. Stale timers change nothing."""
        profile = self.profile
        assert profile is not None
        if profile.erased_at is not None or profile.last_seen is None:
            return False
        if tick.kind == "decision":
            if not profile.known or profile.signed_up_at is None:
                return False
            telemetry.child(telemetry.TIMERS, "decision").inc()
            self._decision_point(tick.due, now, out, play)
            return True
        if tick.kind == "deadline":
            return self._deadline(tick, now, out, play)
        if tick.last_seen < profile.last_seen:
            return False  # the user was active since; a newer timer is pending
        telemetry.child(telemetry.TIMERS, tick.kind).inc()
        if profile.as_of is None or tick.due > profile.as_of:
            profile.as_of = tick.due
        if tick.kind == "session_end":
            length = profile.sessions.newest_length()
            if length is not None:
                out.append(Observation(kind="session_s", seconds=length))
            signed_up = profile.signed_up_at
            if (
                profile.known
                and signed_up is not None
                and tick.last_seen >= signed_up
                and not profile.first_session_decided
            ):
                # The end of the first session after signup (sessions browsed anonymously
                # before it do not count, however late identity stitching replays them).
                profile.first_session_decided = True
                self._decision_point(tick.due, now, out, play)
        elif tick.kind == "inactive":
            profile.inactive_hours = max(profile.inactive_hours, tick.hours)
            if profile.known and profile.signed_up_at is not None:
                # Going quiet is news: rescore (risk rises, the band or path may change, and
                # rules on those fire), and quiet users are a behaviour the segments learn.
                signal = f"timer:inactive_{tick.hours}h"
                quiet, found = self._decide(out, now, [], tick.due, None, play)
                out.append(Sample(profile.user_id, tick.due, quiet | name_mix(profile)))
                if found:
                    self._act(out, now, found, tick.due, None, play, quiet, signal=signal)
                if self.settings.candidate is not None:
                    self._candidate_changes(out, now, found, tick.due, quiet, signal)
        elif tick.kind == "idle":
            compact(profile)
        profile.seq += 1
        signal = (
            f"timer:inactive_{tick.hours}h" if tick.kind == "inactive" else f"timer:{tick.kind}"
        )
        self._act(out, now, [signal], tick.due, None, play, signal=signal)
        if self.settings.candidate is not None:
            with self._as_candidate(out, tick.due) as (lane_out, cand):
                self._act(lane_out, now, [signal], tick.due, None, cand, signal=signal)
        return True

    def _decision_point(
        self, at: datetime, now: datetime, out: list[Emitted], play: Playbook
    ) -> None:
        """Score the user, send the learner their features, run the rules on it."""
        profile = self.profile
        assert profile is not None
        if profile.as_of is None or at > profile.as_of:
            profile.as_of = at
        if profile.arms:
            pending = [
                e
                for e in play.experiments.experiments
                if e.learns and e.key in profile.arms and e.key not in profile.choices
            ]
            if pending:
                self._choose_path(out, at, play, pending)
        vector, found = self._decide(out, now, ["decision_point"], at, None, play)
        out.append(remember_decision(profile, at, vector))
        self._act(out, now, found, at, None, play, vector, signal="decision_point")
        if self.settings.candidate is not None:
            with self._as_candidate(out, at) as (lane_out, cand):
                lane_found = self._repath(found, vector, cand)
                self._act(
                    lane_out, now, lane_found, at, None, cand, vector, signal="decision_point"
                )

    def _choose_path(
        self, out: list[Emitted], at: datetime, play: Playbook, experiments: list[Experiment]
    ) -> None:
        """At the first decision point of a user in an experiment with a learned arm: the
        path their arm gives them from now on, and what the rules would have chosen,
        logged with its propensity for the learner (``online_models.policy``)."""
        profile = self.profile
        assert profile is not None
        scorer, _ = self._scorer(at)
        vector = features(profile, scorer.population, self.settings.profile)
        attributes = path_attributes(profile, vector)
        rules_path = play.paths.choose(attributes)
        required = play.paths.required_path(attributes)  # a guard rail: no choice then
        paths = play.paths.names()
        for experiment in experiments:
            variation = experiment.variation(profile.arms[experiment.key])
            if variation is None:  # held out
                continue
            key = f"{profile.user_id}@{experiment.key}"
            drawn, learned, _ = scorer.choose_path(
                vector, paths, experiment.exploration, key, rules_path
            )
            if required is not None:
                drawn, learned = required, {required: 1.0}
            chances: dict[str, dict[str, float]] = {}  # each arm's chance of each path
            for v in experiment.variations:
                if v.path is not None:
                    chances[v.name] = {v.path: 1.0}
                elif v.policy == "learned":
                    chances[v.name] = learned
                else:
                    chances[v.name] = {rules_path: 1.0}
            path = drawn if variation.policy == "learned" else variation.path or rules_path
            if variation.policy == "learned":
                policy = "required" if required is not None else "learned"
                if required is None and path == rules_path:
                    policy = "deferred"  # to the rules: the path follows them from now on
            else:
                policy = "fixed" if variation.path else "rules"
            shares = experiment.expected_shares()
            total = sum(shares.get(v.name, 0.0) for v in experiment.variations) or 1.0
            logged = sum(
                shares.get(name, 0.0) / total * arm_chances.get(path, 0.0)
                for name, arm_chances in chances.items()
            )
            propensity = chances[variation.name].get(path, 0.0)
            profile.choices[experiment.key] = (path, round(propensity, 6), policy)
            out.append(
                Choice(
                    profile.user_id,
                    experiment.key,
                    at,
                    vector,
                    path,
                    propensity,
                    policy,
                    rules_path,
                    paths,
                    experiment.exploration,
                    logged,
                    learned,
                )
            )

    def _deadline(self, tick: Tick, now: datetime, out: list[Emitted], play: Playbook) -> bool:
        """An absence rule's deadline passed, or an experiment outcome is known."""
        profile = self.profile
        assert profile is not None
        telemetry.child(telemetry.TIMERS, tick.name.partition(":")[0]).inc()
        if tick.name.startswith("outcome:"):
            name = tick.name.removeprefix("outcome:")
            known = outcomes(profile, name, play.experiments)
            out.extend(known)
            if name == "activation":  # a chosen path's reward, for the policy to learn
                out.extend(
                    Reward(profile.user_id, o.experiment, o.success)
                    for o in known
                    if o.experiment in profile.choices
                )
            if self.settings.candidate is not None:
                with self._as_candidate(out, tick.due) as (lane_out, cand):
                    lane_out.extend(outcomes(profile, name, cand.experiments))
            return False
        if profile.as_of is None or tick.due > profile.as_of:
            profile.as_of = tick.due
        profile.seq += 1  # windows and recency read at a new time: a new profile version
        # absence:<rule>[:<value>]: a rule with `match` watches each value on its own, and
        # its rule reads the value as the cause's property (`{event.properties.feature}`)
        trigger, _, value = tick.name.partition(":")[2].partition(":")
        self._absent(out, now, tick, trigger, value, play)
        if self.settings.candidate is not None:
            with self._as_candidate(out, tick.due) as (lane_out, cand):
                self._absent(lane_out, now, tick, trigger, value, cand)
        return True

    def _absent(
        self, out: list[Emitted], now: datetime, tick: Tick, rule: str, value: str, play: Playbook
    ) -> None:
        """Run absence rule ``rule``'s deadline (for its ``value`` of the matched property)."""
        cause = None
        if value:
            match = play.rules.absence_match(rule)
            cause = {"kind": "absence", "name": rule, "properties": {match: value}}
        self._act(
            out, now, [f"absence:{rule}"], tick.due, None, play, None, cause, signal=tick.name
        )

    @contextmanager
    def _as_candidate(
        self, out: list[Emitted], at: datetime
    ) -> Iterator[tuple[list[Emitted], Playbook]]:
        """The profile as a backtest's candidate lane sees it: the lane's path, arms and
        triggers' history in place of the current lane's (everything else is shared);
        what it emits goes to ``out`` marked as the candidate's."""
        profile, candidate = self.profile, self.settings.candidate
        assert profile is not None and candidate is not None
        lane = profile.lane if profile.lane is not None else Lane()
        held = (profile.path, profile.arms, profile.fired, profile.seq)
        profile.path, profile.arms, profile.fired = lane.path, lane.arms, lane.fired
        emitted: list[Emitted] = []
        try:
            yield emitted, candidate.at(at.timestamp())
        finally:
            lane.path, lane.arms, lane.fired = profile.path, profile.arms, profile.fired
            profile.path, profile.arms, profile.fired, profile.seq = held
            profile.lane = lane
            out.extend(_candidate_item(item) for item in emitted)

    def _candidate_event(
        self,
        out: list[Emitted],
        now: datetime,
        event: Event,
        signup: bool,
        found: list[str] | None,
        vector: dict[str, float] | None,
    ) -> None:
        """The candidate lane's turn at an event the current lane just handled (``found``:
        its decision's reasons, None if the event called for no decision)."""
        with self._as_candidate(out, event.timestamp) as (lane_out, cand):
            assert self.profile is not None
            if signup and not self.profile.arms:
                self._assign(lane_out, event, cand)
            reasons = self._repath(found, vector, cand) if found is not None else []
            if reasons or event.kind in cand.rules.triggers:
                self._act(
                    lane_out,
                    now,
                    [event.kind, *reasons],
                    event.timestamp,
                    event.message_id,
                    cand,
                    vector,
                    event,
                )

    def _candidate_changes(
        self,
        out: list[Emitted],
        now: datetime,
        found: list[str],
        at: datetime,
        vector: dict[str, float],
        signal: str | None = None,
    ) -> None:
        """The candidate lane's turn after a rescoring whose changes were ``found``."""
        with self._as_candidate(out, at) as (lane_out, cand):
            reasons = self._repath(found, vector, cand)
            if reasons:
                self._act(
                    lane_out, now, reasons, at, None, cand, vector, signal=signal or reasons[0]
                )

    def _repath(
        self, found: list[str], vector: dict[str, float] | None, play: Playbook
    ) -> list[str]:
        """The current lane's reasons, as the candidate's path would have them."""
        profile = self.profile
        assert profile is not None and vector is not None
        kept = [reason for reason in found if reason != "path_changed"]
        imposed = imposed_path(profile, play.experiments, play.paths, vector)
        return repath(profile, vector, play.paths, imposed, kept)

    def _message(self, now: datetime, *, final: bool = False) -> Output:
        profile, settings, fresh = self.profile, self.settings, self.fresh
        assert profile is not None
        if settings.profile_updates == "path" and not final:
            path = {"user_id": profile.user_id, "seq": profile.seq, "onboarding_path": profile.path}
            return Output("profile", profile.user_id, path)
        return profile_message(
            profile,
            now,
            population=self._scorer()[0].population,
            settings=settings.profile,
            final=final,
            vector=fresh[1] if fresh is not None and fresh[0] == profile.seq else None,
            rules=settings.playbooks.latest.rules,
        )

    def on_eof(self) -> tuple[list[Emitted], bool]:
        profile = self.profile
        if profile is not None and profile.known and profile.erased_at is None:
            profile.pending_update = False  # the final profile is the newest update too
            final: list[Emitted] = [self._message(self.settings.now(), final=True)]
            lane = profile.lane
            if lane is not None:  # what a backtest compares of the candidate's
                value = {"user_id": profile.user_id, "onboarding_path": lane.path,
                         "experiment_arms": dict(lane.arms)}  # fmt: skip
                final.append(Output("profile", profile.user_id, value, final=True, side=1))
            return final, RETAIN
        return [], RETAIN


#: A backtest's candidate lane's experiment tallies: the experiment key with this suffix.
CANDIDATE = "@candidate"


def _candidate_item(item: Emitted) -> Emitted:
    if isinstance(item, Output):
        return replace(item, side=1)
    if isinstance(item, Outcome):
        return replace(item, experiment=item.experiment + CANDIDATE)
    raise AssertionError(f"a candidate lane emits outputs and outcomes, not {item!r}")
