"""Loading a large rule book: the overlap check (shadowed rules, conflicts) indexed, next
to comparing every pair (the reference, measured in the same run, up to 2,000 rules).

Rules are shaped as a product team writes many of them: one per feature ("viewed X,
never used it"), per plan and per segment, a few priorities, several actions.

    .venv/bin/python -m bench.bench_rules --sizes 1000,2000,10000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.machine import describe
from firstmile.operators.rules import RuleBook, overlap_problems


def book(n: int) -> dict[str, Any]:
    rules = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            when, condition = ["feature_viewed"], {"event.properties.feature": f"f{i}"}
        elif kind == 1:
            when, condition = (
                ["decision_point"],
                {"trait.plan": f"p{i}", "churn_risk": {"$gte": 0.5}},
            )
        else:
            when, condition = (
                ["segment_changed"],
                {"segment": f"s{i}", "days_since_signup": {"$lte": 3}},
            )
        rules.append(
            {"id": f"r{i}", "when": when, "if": condition, "priority": i % 4,
             "then": {"action": f"a{i % 7}", "payload": {"n": i}}}
        )  # fmt: skip
    return {"rules": rules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,2000,10000")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"{'rules':>7} | {'load (indexed)':>15} | {'all pairs (reference)':>22}")
    for n in (int(s) for s in args.sizes.split(",")):
        data = book(n)
        started = time.perf_counter()
        loaded = RuleBook.from_data(data)
        indexed = time.perf_counter() - started
        reference = "-"
        if n <= 2000:
            started = time.perf_counter()
            _all_pairs(list(loaded.rules))
            reference = f"{time.perf_counter() - started:.2f} s (check only)"
            started = time.perf_counter()
            overlap_problems(loaded.rules)
            reference += f", indexed check {time.perf_counter() - started:.2f} s"
        print(f"{n:>7} | {indexed:>13.2f} s | {reference}")


def _all_pairs(rules: list[Any]) -> int:
    from firstmile.operators.rules import _disjoint, _implies

    ordered = sorted(rules, key=lambda r: r.precedence)
    found = 0
    for i, rule in enumerate(ordered):
        for other in ordered[:i]:
            if set(rule.triggers) <= set(other.triggers) and _implies(
                rule.condition, other.condition
            ):
                found += 1
            if set(rule.triggers) & set(other.triggers) and other.priority == rule.priority:
                found += not _disjoint(rule.condition, other.condition)
    return found


if __name__ == "__main__":
    main()
