"""Beyond conformance: conditions are safe on hostile input."""

from __future__ import annotations

import time

from firstmile.operators.conditions import MAX_PATTERN_LENGTH, evaluate_condition


def test_catastrophic_regex_runs_in_linear_time() -> None:
    started = time.perf_counter()
    assert not evaluate_condition({"v": {"$regex": "^(a+)+$"}}, {"v": "a" * 50_000 + "b"})
    assert time.perf_counter() - started < 1.0  # a backtracking engine takes ages here


def test_oversized_or_invalid_or_backreference_patterns_never_match() -> None:
    huge = "a" * (MAX_PATTERN_LENGTH + 1)
    assert not evaluate_condition({"v": {"$regex": huge}}, {"v": huge})
    assert not evaluate_condition({"v": {"$regex": "(a"}}, {"v": "(a"})
    assert not evaluate_condition({"v": {"$regex": r"(a)\1"}}, {"v": "aa"})
    assert not evaluate_condition({"v": {"$notRegex": "(a"}}, {"v": "b"})


def test_dotted_paths_and_booleans_are_strict() -> None:
    attributes = {"profile": {"onboarding": {"completed": True, "steps": 1}}}
    assert evaluate_condition({"profile.onboarding.completed": True}, attributes)
    assert not evaluate_condition({"profile.onboarding.steps": True}, attributes)
    assert not evaluate_condition({"profile.missing.deeper": {"$exists": True}}, attributes)
