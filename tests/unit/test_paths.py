"""Onboarding paths: the shipped mapping, choices, and every validation error by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.conditions import condition_problems
from operators.errors import MappingError
from operators.paths import PathMap


def test_the_shipped_paths_load_and_choose_sensibly() -> None:
    paths = PathMap.load()
    assert paths.choose({"churn_band": "high", "onboarding_completed": 1.0}) == "retention_offer"
    assert paths.choose({"churn_band": "high", "onboarding_completed": 0.0}) == "re_engagement"
    stalled = {"churn_band": "low", "onboarding_completed": 0.0, "steps_skipped": 2.0}
    assert paths.choose(stalled) == "guided_walkthrough"
    assert paths.choose({"churn_band": "low", "features_distinct": 4.0}) == "short_tour"
    assert paths.choose({"churn_band": "medium"}) == paths.default == "standard_tour"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('default = "a"\nextra = 1\n', "unknown field(s): extra"),
        ("paths = []\n", "default: must name a path"),
        ('default = "a"\n[[paths]]\npath = "b"\nwhen = "x"\n', "paths[1]: unknown field(s): when"),
        ('default = "a"\n[[paths]]\nif = {}\n', "paths[1].path: must name a path"),
        (
            'default = "a"\n[[paths]]\npath = "b"\nif = { x = { "$gtt" = 1 } }\n',
            "paths[1].if: x: unknown operator $gtt",
        ),
        (
            'default = "a"\n[[paths]]\npath = "b"\nif = { x = { "$regex" = "(" } }\n',
            "paths[1].if: x: $regex pattern does not compile",
        ),
        (
            'default = "a"\n[[paths]]\npath = "b"\n[[paths]]\npath = "c"\nif = { x = 1 }\n',
            "paths[2] (c): never chosen, the rule before matches all",
        ),
        ('default = "a"\n[[paths]\n', "not valid TOML"),
    ],
)
def test_each_problem_is_named(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "paths.toml"
    file.write_text(text)
    with pytest.raises(MappingError) as raised:
        PathMap.load(file)
    assert message in str(raised.value) and str(file) in str(raised.value)


def test_condition_problems_walk_logical_operators() -> None:
    assert condition_problems({"$or": [{"a": 1}, {"b": {"$nope": 2}}]}) == [
        "$or[1].b: unknown operator $nope"
    ]
    assert condition_problems({"$and": {"a": 1}}) == ["$and: must be a list of conditions"]
    assert condition_problems({"a": {"$in": [1]}, "b": {"$regexi": "^x"}}) == []
