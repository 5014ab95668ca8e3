"""GrowthBook conformance: every evalCondition and assignment case in ../shared/conformance."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from firstmile.operators.conditions import compile_condition, evaluate_condition
from firstmile.operators.experiments import (
    choose_variation,
    gb_hash,
    get_bucket_ranges,
    get_equal_weights,
    in_namespace,
)
from tests.helpers import SHARED

CASES_FILE = SHARED / "conformance" / "growthbook-cases.json"


def cases(section: str) -> list[Any]:
    if not CASES_FILE.is_file():
        pytest.fail(f"conformance data missing: {CASES_FILE}", pytrace=False)
    return orjson.loads(CASES_FILE.read_bytes())[section]  # type: ignore[no-any-return]


def _ids(section: str) -> list[str]:
    return [f"{i}:{case[0]}" for i, case in enumerate(cases(section))]


@pytest.mark.parametrize("case", cases("evalCondition"), ids=_ids("evalCondition"))
def test_eval_condition(case: list[Any]) -> None:
    _name, condition, attributes, expected, *rest = case
    saved_groups = rest[0] if rest else None
    assert evaluate_condition(condition, attributes, saved_groups) is expected
    # The prepared form (what rules and paths run per event) judges the same.
    assert compile_condition(condition, saved_groups)(attributes) is expected


@pytest.mark.parametrize("case", cases("hash"))
def test_hash(case: list[Any]) -> None:
    seed, value, version, expected = case
    result = gb_hash(seed, value, version)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("case", cases("getBucketRange"), ids=_ids("getBucketRange"))
def test_bucket_ranges(case: list[Any]) -> None:
    _name, (n, coverage, weights), expected = case
    ranges = get_bucket_ranges(n, coverage, weights)
    assert [pytest.approx(r, abs=1e-6) for r in map(list, ranges)] == expected


@pytest.mark.parametrize("case", cases("chooseVariation"), ids=_ids("chooseVariation"))
def test_choose_variation(case: list[Any]) -> None:
    _name, n, ranges, expected = case
    assert choose_variation(n, [tuple(r) for r in ranges]) == expected


@pytest.mark.parametrize("case", cases("inNamespace"), ids=_ids("inNamespace"))
def test_in_namespace(case: list[Any]) -> None:
    _name, user_id, namespace, expected = case
    assert in_namespace(user_id, namespace) is expected


@pytest.mark.parametrize("case", cases("getEqualWeights"))
def test_equal_weights(case: list[Any]) -> None:
    n, expected = case
    assert get_equal_weights(n) == pytest.approx(expected, abs=1e-6)
