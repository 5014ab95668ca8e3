"""Onboarding paths: the shipped mapping, choices, and every validation error by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from firstmile.operators.conditions import condition_problems
from firstmile.operators.errors import MappingError
from firstmile.operators.paths import PathMap


def test_the_shipped_paths_load_and_choose_sensibly() -> None:
    paths = PathMap.load()
    assert paths.choose({"churn_band": "high", "onboarding_completed": 1.0}) == "retention_offer"
    assert paths.choose({"churn_band": "high", "onboarding_completed": 0.0}) == "re_engagement"
    # Stuck on a step: the walkthrough, before being treated as lost (high risk or not).
    stuck = {"churn_band": "high", "onboarding_completed": 0.0, "steps_stuck": 1.0}
    assert paths.choose(stuck) == "guided_walkthrough"
    # Skipping by choice while using the product is not stuck: a short tour.
    skipping = {"churn_band": "low", "onboarding_completed": 0.0, "steps_skipped": 3.0}
    assert paths.choose({**skipping, "skip_share": 1.0, "feature_use_share": 0.4}) == "short_tour"
    assert paths.choose({"churn_band": "low", "features_distinct": 4.0}) == "short_tour"
    # The learned segment's label counts: one that needs a hand gets the walkthrough.
    needs_help = {"churn_band": "low", "segment_label": "needs help, rare visits"}
    assert paths.choose(needs_help) == "guided_walkthrough"
    assert paths.choose({"churn_band": "medium"}) == paths.default == "standard_tour"
    # Remembered answers follow what the conditions read, dotted paths included.
    traits = PathMap("plain", (("admin_tour", {"trait.role": "admin"}),))
    assert traits.choose({"trait": {"role": "admin"}}) == "admin_tour"
    assert traits.choose({"trait": {"role": "viewer"}}) == "plain"
    assert traits.choose({"trait": {"role": "admin"}, "x": 1}) == "admin_tour"


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


def test_explain_names_the_rule_that_chose_the_path() -> None:
    from datetime import UTC, datetime

    from firstmile.flows.explain import explain
    from firstmile.operators.features import profile_message
    from firstmile.operators.profile import UserProfile

    profile = UserProfile("u1", known=True, seq=3, as_of=datetime(2026, 3, 2, tzinfo=UTC))
    profile.churn_risk, profile.risk_band, profile.path = 0.8, "high", "re_engagement"
    profile.churn_rank = 0.95
    value = profile_message(profile, datetime(2026, 3, 2, tzinfo=UTC)).value
    assert value is not None
    lines = explain(value, None, PathMap.load())
    assert lines[0].startswith("user u1: profile seq 3")
    assert "  no segment model published yet" in lines
    assert any(line.startswith("churn risk 0.8 (high)") and "prior" in line for line in lines)
    at = lines.index("onboarding path re_engagement")
    assert lines[at + 1].startswith("  paths[1] guided_walkthrough: no")
    assert lines[at + 2].startswith("  paths[2] retention_offer: no")
    assert lines[at + 3].startswith("  paths[3] re_engagement: matches")
    assert lines[at + 4] == "last triggers: none"

    # In the control arm, the experiment imposes the path; rules are read as they stand.
    from firstmile.operators.experiments import Experiments
    from firstmile.operators.rules import RuleBook

    profile.arms = {"personalized-onboarding": "control"}
    profile.fired = {"stalled-step": (2, 1772409600.0), "gone-rule": (1, 1772409700.0)}
    value = profile_message(profile, datetime(2026, 3, 2, tzinfo=UTC), rules=RuleBook.load()).value
    assert value is not None
    lines = explain(value, None, PathMap.load(), RuleBook.load(), Experiments.load())
    assert "experiment personalized-onboarding: arm control (sticky since signup)" in lines
    assert any(
        "imposed by the experiment arm" in line and "standard_tour" in line for line in lines
    )
    # Last triggers come from the rules' fire history (a rule no longer configured: none).
    assert "last triggers: 1" in lines
    assert "  2026-03-02T00:00:00.000Z stalled-step -> guided_walkthrough" in lines
    offer = next(line for line in lines if line.startswith("  retention-offer (priority 50"))
    # Among the riskiest users in their first three days: the rule's condition holds,
    # with what it read.
    assert offer.endswith("holds (churn_rank=0.95, days_since_signup=0.0) -> retention_offer")
    profile.churn_rank = 0.3
    value = profile_message(profile, datetime(2026, 3, 2, tzinfo=UTC), rules=RuleBook.load()).value
    assert value is not None
    lines = explain(value, None, PathMap.load(), RuleBook.load(), Experiments.load())
    offer = next(line for line in lines if line.startswith("  retention-offer (priority 50"))
    assert offer.endswith(
        "does not hold (churn_rank=0.3, days_since_signup=0.0) -> retention_offer"
    )
