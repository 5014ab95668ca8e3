"""``firstmile backtest``: what a candidate rule book, paths and experiments would have
done on a history, beside the config in force, from one pass over the same events.

The history is read and decoded once; two copies of the personalization
(``dataflow.personalize``) run side by side in one dataflow, one per config, each with
its own learner, so each side is what ``firstmile run --input`` with its config writes
(embedded runs are reproducible). Triggers meet by id: an id is its cause (user, rule,
cause), so a trigger on one side only was added or removed by the change. Memory holds
the triggers not matched yet (the differences), each rule's users and each user's final
path and arms, not the history.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from firstmile.flows import report
from firstmile.flows.config import FirstmileConfig
from firstmile.flows.dataflow import FlowSettings, decode, personalize
from firstmile.flows.metrics import RunCounters
from firstmile.flows.run import flow_settings
from firstmile.operators.errors import ConfigError, FirstmileError
from firstmile.operators.events import Event, RawRecord
from firstmile.operators.outputs import Output
from firstmile.operators.playbook import Playbook, Playbooks
from firstmile.operators.user_step import CANDIDATE
from firstmile.state.experiment_store import MemoryExperimentStore
from firstmile.state.files import JsonlSource, count_lines

SIDES = ("current", "candidate")
EXAMPLES = 5  # example users per rule and direction
#: A rule firing for more users than this share "fires for nearly everyone".
NEARLY_EVERYONE = 0.9


@dataclass
class _Rule:
    """One rule's triggers on both sides."""

    action: str = ""
    triggers: list[int] = field(default_factory=lambda: [0, 0])
    users: list[set[str]] = field(default_factory=lambda: [set(), set()])
    added: int = 0
    removed: int = 0
    added_users: list[str] = field(default_factory=list)
    removed_users: list[str] = field(default_factory=list)


class Comparison:
    """Both sides' outputs as they come, folded into what the report needs."""

    def __init__(self) -> None:
        self.rules: dict[str, _Rule] = {}
        #: Triggers seen on one side only so far: id -> (side, rule id, user).
        self.unmatched: dict[str, tuple[int, str, str]] = {}
        self.finals: dict[str, tuple[int, str | None, dict[str, str]]] = {}
        self.users = 0
        self.path_moves: Counter[tuple[str | None, str | None]] = Counter()
        self.path_examples: list[str] = []
        self.arm_moves: Counter[str] = Counter()
        self.arm_users = 0
        self.arm_examples: list[str] = []

    def see(self, side: int, output: Output) -> None:
        value = output.value
        if value is None:
            return
        if output.kind == "trigger":
            self._trigger(side, value)
        elif output.kind == "profile" and output.final:
            self._final(side, value)

    def _trigger(self, side: int, value: dict[str, Any]) -> None:
        rule_id, user = value["rule_id"], value["user_id"]
        rule = self.rules.setdefault(rule_id, _Rule(value["action"]))
        rule.triggers[side] += 1
        rule.users[side].add(user)
        held = self.unmatched.get(value["id"])
        if held is not None and held[0] != side:
            del self.unmatched[value["id"]]  # the same trigger on both sides
        else:
            self.unmatched[value["id"]] = (side, rule_id, user)

    def _final(self, side: int, value: dict[str, Any]) -> None:
        user, path, arms = value["user_id"], value["onboarding_path"], value["experiment_arms"]
        held = self.finals.pop(user, None)
        if held is None:
            self.finals[user] = (side, path, arms)
            return
        self.users += 1
        current = held if held[0] == 0 else (side, path, arms)
        candidate = (side, path, arms) if held[0] == 0 else held
        if current[1] != candidate[1]:
            self.path_moves[(current[1], candidate[1])] += 1
            _example(self.path_examples, user)
        moved = [
            experiment
            for experiment in sorted(set(current[2]) | set(candidate[2]))
            if current[2].get(experiment) != candidate[2].get(experiment)
        ]
        self.arm_moves.update(moved)
        if moved:
            self.arm_users += 1
            _example(self.arm_examples, user)

    def finish(self) -> None:
        """What stayed unmatched is the difference."""
        for side, rule_id, user in self.unmatched.values():
            rule = self.rules[rule_id]
            if side == 1:
                rule.added += 1
                _example(rule.added_users, user)
            else:
                rule.removed += 1
                _example(rule.removed_users, user)
        self.unmatched.clear()
        self.users += len(self.finals)  # a user on one side only (cannot happen: counted)
        self.finals.clear()


def _example(examples: list[str], user: str) -> None:
    if len(examples) < EXAMPLES and user not in examples:
        examples.append(user)


class _Partition(StatelessSinkPartition[Output]):
    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison

    def write_batch(self, items: list[Output]) -> None:
        for output in items:
            self.comparison.see(output.side, output)


class _Sink(DynamicSink[Output]):
    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.comparison)


@operator
def _side(step_id: str, up: Stream[Event], settings: FlowSettings) -> Stream[Output]:
    """One config's personalization, its steps named under ``step_id``."""
    return personalize(up, settings)


def _tagger(side: int) -> Callable[[Output], Output]:
    def tag(output: Output) -> Output:
        return replace(output, side=side)

    return tag


def build_backtest_flow(
    source: Source[RawRecord], sides: list[FlowSettings], comparison: Comparison
) -> Dataflow:
    """One pass: with one settings (a candidate lane in them), one personalization;
    with two, one per side."""
    flow = Dataflow("firstmile_backtest")
    first = sides[0]
    events, _dead = decode(op.input("input", flow, source), first.decoder, first.now)
    if len(sides) == 1:
        both = personalize(events, first)
    else:
        both = op.merge(
            "both",
            *(
                op.map(f"tag_{name}", _side(name, events, settings), _tagger(index))
                for index, (name, settings) in enumerate(zip(SIDES, sides, strict=True))
            ),
        )
    op.output("compare", both, _Sink(comparison))
    return flow


def shareable(current: Playbook, candidate: Playbook) -> bool:
    """Whether one personalization can decide both (``user_step.Lane``): the timers it
    keeps (absence rules, outcome deadlines) must be the same for both."""
    return (
        current.rules.absences() == candidate.rules.absences()
        and current.experiments.outcome_deadlines() == candidate.experiments.outcome_deadlines()
    )


def backtest(
    config: FirstmileConfig,
    candidate: FirstmileConfig,
    history: str,
    *,
    window: tuple[float | None, float | None] | None = None,
    max_share: float | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Replay ``history`` (a JSONL file; with ``window``, the events topic between those
    broker times instead) through both configs; the report (``lines`` prints it)."""
    sides = []
    for name, chosen in zip(SIDES, (config, candidate), strict=True):
        try:
            sides.append(flow_settings(chosen, profile_updates="none"))
        except FirstmileError as exc:  # a bad candidate is refused, naming the file
            raise ConfigError(f"{name} config", str(exc)) from None
    plays = [settings.playbooks.latest for settings in sides]
    shared = shareable(*plays)
    if shared:  # the candidate as a lane of the current's personalization
        candidate_lane = Playbooks(plays[1])
        flows = [replace(sides[0], candidate=candidate_lane)]
    else:
        flows = sides
    source: Source[RawRecord]
    if window is not None:
        from firstmile.state.kafka import KafkaEventSource

        source, total = KafkaEventSource(config, window=window), None
    else:
        source, total = JsonlSource(history), count_lines(history)
    comparison = Comparison()
    flow = build_backtest_flow(source, flows, comparison)
    before = RunCounters.read()
    started = time.monotonic()
    with report.progress(show_progress, before, total=total):
        cli_main(flow, epoch_interval=timedelta(seconds=config.recovery.snapshot_interval_s))
    comparison.finish()
    numbers = RunCounters.read().since(before)
    wall = time.monotonic() - started
    readouts = (
        _lane_readouts(flows[0], plays)
        if shared
        else [
            report.experiments_summary(s.playbooks.latest.experiments, s.experiment_store)
            for s in sides
        ]
    )
    result = _report(comparison, sides, config, candidate, history, numbers, wall, max_share)
    result["experiments"] = dict(zip(SIDES, readouts, strict=True))
    result["mode"] = "one pass, shared profiles" if shared else "one pass, separate profiles"
    return result


def _lane_readouts(settings: FlowSettings, plays: list[Playbook]) -> list[dict[str, Any]]:
    """Both sides' readouts from one store: the candidate's tallies carry a suffix."""
    tallies = settings.experiment_store.all()
    current = MemoryExperimentStore()
    candidate = MemoryExperimentStore()
    for key, counts in tallies.items():
        if key.endswith(CANDIDATE):
            candidate.put(key.removesuffix(CANDIDATE), counts)
        else:
            current.put(key, counts)
    return [
        report.experiments_summary(plays[0].experiments, current),
        report.experiments_summary(plays[1].experiments, candidate),
    ]


def _report(
    comparison: Comparison,
    sides: list[FlowSettings],
    config: FirstmileConfig,
    candidate: FirstmileConfig,
    history: str,
    numbers: dict[str, Any],
    wall: float,
    max_share: float | None,
) -> dict[str, Any]:
    users = comparison.users
    configured = [{rule.id: rule for rule in s.playbooks.latest.rules.rules} for s in sides]
    rules = []
    failed = []
    for rule_id in sorted(set(comparison.rules) | set(configured[0]) | set(configured[1])):
        seen = comparison.rules.get(rule_id, _Rule())
        flags = []
        if rule_id not in configured[0]:
            flags.append("new")
        if rule_id not in configured[1]:
            flags.append("removed")
        elif not seen.triggers[1]:
            flags.append("never fires")
        share = [len(seen.users[i]) / users if users else 0.0 for i in (0, 1)]
        if rule_id in configured[1] and share[1] > NEARLY_EVERYONE:
            flags.append("fires for nearly everyone")
        if max_share is not None and rule_id in configured[1] and share[1] * 100 > max_share:
            failed.append(rule_id)
        action = seen.action or next(
            (c[rule_id].action for c in reversed(configured) if rule_id in c), ""
        )
        rules.append(
            {
                "rule_id": rule_id,
                "action": action,
                **{
                    name: {
                        "triggers": seen.triggers[i],
                        "users": len(seen.users[i]),
                        "user_share": round(share[i], 4),
                    }
                    for i, name in enumerate(SIDES)
                },
                "added": seen.added,
                "removed": seen.removed,
                "examples_added": seen.added_users,
                "examples_removed": seen.removed_users,
                "flags": flags,
            }
        )
    moved = sum(comparison.path_moves.values())
    return {
        "input": history,
        "events": numbers["events_in"],
        "dead_letters": sum(numbers["dead_letters"].values()),
        "users": users,
        "wall_time_s": round(wall, 3),
        "events_per_s": round(numbers["events_in"] / wall, 1) if wall > 0 else 0.0,
        "configs": {
            name: {
                "rules": str(chosen.rules),
                "paths": str(chosen.paths),
                "experiments": str(chosen.experiments),
            }
            for name, chosen in zip(SIDES, (config, candidate), strict=True)
        },
        "rules": rules,
        "paths": {
            "users_changed": moved,
            "moves": [
                {"from": old, "to": new, "users": n}
                for (old, new), n in comparison.path_moves.most_common()
            ],
            "examples": comparison.path_examples,
        },
        "experiment_arms": {
            "users_changed": comparison.arm_users,
            "by_experiment": dict(comparison.arm_moves),
            "examples": comparison.arm_examples,
        },
        "gate": {"max_user_share_pct": max_share, "failed": failed},
        "warnings": sides[0].playbooks.latest.experiments.rebucketing(
            sides[1].playbooks.latest.experiments
        ),
    }


def lines(result: dict[str, Any]) -> list[str]:
    """The report for people."""
    configs = result["configs"]
    out = [
        f"backtest of {result['input']}: {result['events']:,} events, {result['users']:,} users "
        f"({result['wall_time_s']:.1f} s, {result['events_per_s']:,.0f} events/s; "
        f"{result['mode']})",
        *(
            f"  {name}: rules {c['rules']}, paths {c['paths']}, experiments {c['experiments']}"
            for name, c in configs.items()
        ),
        "",
        f"{'rule':<28} {'action':<20} {'current':>16} {'candidate':>16} {'added':>7} "
        f"{'removed':>7}  flags",
    ]
    for rule in result["rules"]:
        now, then = rule["current"], rule["candidate"]
        out.append(
            f"{rule['rule_id']:<28} {rule['action']:<20} "
            f"{now['triggers']:>7,} ({now['user_share']:>5.1%}) "
            f"{then['triggers']:>7,} ({then['user_share']:>5.1%}) "
            f"{rule['added']:>7,} {rule['removed']:>7,}  {', '.join(rule['flags'])}"
        )
        for direction in ("added", "removed"):
            if rule[f"examples_{direction}"]:
                out.append(f"    e.g. {direction} for: {', '.join(rule[f'examples_{direction}'])}")
    paths = result["paths"]
    out += ["", f"onboarding path changes for {paths['users_changed']:,} users"]
    out += [f"  {m['from']} -> {m['to']}: {m['users']:,}" for m in paths["moves"]]
    if paths["examples"]:
        out.append(f"  e.g. {', '.join(paths['examples'])}")
    arms = result["experiment_arms"]
    out.append(f"experiment arm changes for {arms['users_changed']:,} users")
    out += [f"  {key}: {n:,}" for key, n in arms["by_experiment"].items()]
    for name, readouts in result["experiments"].items():
        for key, readout in readouts.items():
            cells = "; ".join(
                f"{arm}: "
                + ", ".join(
                    f"{metric} {c['converted']}/{c['measured']}"
                    for metric, c in row.items()
                    if isinstance(c, dict)
                )
                for arm, row in readout["arms"].items()
            )
            out.append(f"  {name} readout {key}: {cells}")
    out += [f"warning: {warning}" for warning in result["warnings"]]
    gate = result["gate"]
    if gate["max_user_share_pct"] is not None:
        verdict = (
            f"FAILED: {', '.join(gate['failed'])} fire(s) for more than "
            f"{gate['max_user_share_pct']:g} % of users"
            if gate["failed"]
            else f"passed: no candidate rule fires for more than {gate['max_user_share_pct']:g} %"
        )
        out.append(f"gate {verdict}")
    return out
