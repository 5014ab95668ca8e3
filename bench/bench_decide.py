"""The decide step with many rules: what 50 trigger rules cost per event.

A generated rule book of ``--rules`` rules (default 50) over the triggers users hit most
(page views, feature use, sessions, onboarding steps), scoring changes, timers and absence
patterns, each with a 2-3 clause GrowthBook condition, cooldowns and caps. Measured:

1. The stateful steps (identity, timers, profile, scoring, paths, rules, experiments,
   learner) in Bytewax on one worker, on a simulated stream decoded up front: with no
   rules, the shipped rules, and the generated book; then the shipped rules with a
   three-arm paths experiment (control, rules, a learned policy: issue 16) and the same
   with its learned arm on the rules. Within that run, the decide step's own time
   (scoring, paths, the learned policy's choice, experiment assignment, rules, trigger
   events: the user step's ``_decide``, ``_act``, ``_assign`` and ``_choose_path``)
   gives the decide step's events/s.
2. Rule evaluation alone: one cause's winners from the generated book, per call.

    .venv/bin/python -m bench.bench_decide --users 3000 --rules 50
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from bench.bench_paths import EXPERIMENT as PATHS_EXPERIMENT
from bench.bench_profile import bench_throughput, decoded
from bench.machine import describe
from firstmile.flows.config import load_config
from firstmile.flows.run import flow_settings
from firstmile.operators.experiments import Experiments
from firstmile.operators.playbook import Playbooks
from firstmile.operators.rules import RuleBook
from firstmile.operators.user_step import UserStep

#: Triggers of the generated rules, the busiest first.
TRIGGERS = (
    "page_view",
    "feature_used",
    "session_start",
    "onboarding_step_viewed",
    "onboarding_step_completed",
    "onboarding_step_skipped",
    "onboarding_completed",
    "purchase",
    "support_ticket",
    "segment_changed",
    "risk_band_changed",
    "path_changed",
    "decision_point",
    "timer:session_end",
    "timer:inactive_24h",
)
ABSENCES = (
    ("signup", "feature_used", "1d"),
    ("onboarding_step_viewed", "onboarding_step_completed", "12h"),
    ("session_start", "feature_used", "2h"),
    ("purchase", "session_start", "3d"),
    ("support_ticket", "session_start", "2d"),
)
CONDITIONS = (
    '{{ engagement = {{ "$gte" = {x:.2f} }}, churn_band = {{ "$in" = ["low", "medium"] }} }}',
    '{{ onboarding_progress = {{ "$lt" = {x:.2f} }}, is_mobile = 1 }}',
    '{{ features_distinct = {{ "$gte" = {n} }}, "trait.role" = {{ "$ne" = "guest" }} }}',
    '{{ "$or" = [ {{ sessions = {{ "$gt" = {n} }} }}, {{ purchases = {{ "$gte" = 1 }} }} ] }}',
    '{{ days_since_signup = {{ "$lte" = {n} }}, "event.name" = {{ "$regex" = "^(Home|Docs)" }} }}',
)


def generated_rules(count: int) -> str:
    """``count`` valid rules: distinct priorities per trigger, so none conflict."""
    tables = []
    for i in range(count):
        condition = CONDITIONS[i % len(CONDITIONS)].format(x=0.1 + (i % 7) / 10, n=1 + i % 4)
        if i < len(ABSENCES):
            after, unless, within = ABSENCES[i]
            listen = f'absence = {{ after = "{after}", unless = "{unless}", within = "{within}" }}'
        else:
            listen = f'when = ["{TRIGGERS[i % len(TRIGGERS)]}"]'
        tables.append(
            f'[[rules]]\nid = "rule-{i:02d}"\n{listen}\nif = {condition}\n'
            f'then = {{ action = "action_{i % 9}", payload = {{ n = "{{engagement}}" }} }}\n'
            f'priority = {i}\ncooldown = "{1 + i % 6}h"\nmax_fires = {2 + i % 5}\n'
        )
    return "\n".join(tables)


@contextmanager
def timed_decide_step() -> Iterator[list[float]]:
    """Seconds spent in the decide step's methods while the block runs."""
    spent = [0.0]
    names = ("_decide", "_act", "_assign", "_choose_path")
    originals = {name: getattr(UserStep, name) for name in names}

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started

        return wrapper

    for name, method in originals.items():
        setattr(UserStep, name, timed(method))
    try:
        yield spent
    finally:
        for name, method in originals.items():
            setattr(UserStep, name, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rules", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    events = list(decoded(args.users, args.days, args.seed))
    base = flow_settings(load_config(None), profile_updates="none")
    book = RuleBook.parse(generated_rules(args.rules))
    shipped = base.playbooks.latest
    learned = Experiments.load(text=PATHS_EXPERIMENT)
    on_rules = Experiments.load(
        text=PATHS_EXPERIMENT.replace('policy = "learned"', 'policy = "rules"')
    )
    for what, playbook in (
        ("no rules", replace(shipped, rules=RuleBook())),
        (f"shipped rules ({len(shipped.rules.rules)})", shipped),
        (f"{len(book.rules)} generated rules", replace(shipped, rules=book)),
        ("shipped rules, paths experiment, learned arm", replace(shipped, experiments=learned)),
        ("shipped rules, paths experiment, all on rules", replace(shipped, experiments=on_rules)),
    ):
        playbooks = Playbooks(playbook)
        with timed_decide_step() as spent:
            seconds, outputs = bench_throughput(events, replace(base, playbooks=playbooks))
        print(
            f"{what}: decide step {len(events) / spent[0]:,.0f} events/s "
            f"({spent[0]:.2f} s of its own); all stateful steps, Bytewax, 1 worker: "
            f"{len(events):,} events in {seconds:.2f} s = {len(events) / seconds:,.0f} "
            f"events/s ({outputs:,} outputs)"
        )
    known = {"engagement": 0.4, "churn_band": "low", "onboarding_progress": 0.2, "is_mobile": 1.0}
    known |= {"features_distinct": 3.0, "trait": {"role": "admin"}, "sessions": 2.0}
    known |= {"purchases": 0.0, "days_since_signup": 1.0, "event": {"name": "Home"}}
    calls = 200_000
    started = time.perf_counter()
    for i in range(calls):
        book.evaluate(("page_view", "segment_changed"), lambda: known, {}, at=float(i), user_id="u")
    per_call = (time.perf_counter() - started) / calls * 1e6
    listening = len(book.candidates("page_view")) + len(book.candidates("segment_changed"))
    print(
        f"rule evaluation alone: a page view that also changed the segment ({listening} rules "
        f"listen): {per_call:.1f} us per cause"
    )


if __name__ == "__main__":
    main()
