"""Learned onboarding paths: the choice's propensities, delayed rewards, off-policy
estimates (``online_models.policy``)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from firstmile.online_models.policy import PolicyLearner
from firstmile.online_models.snapshot import choose, probabilities
from firstmile.operators.samples import Choice, Reward

T0 = datetime(2026, 3, 2, tzinfo=UTC)
PATHS = ("standard_tour", "short_tour", "guided_walkthrough")


@pytest.mark.parametrize("exploration", [0.05, 0.1, 0.5, 1.0])
def test_every_path_keeps_its_share_and_the_chances_sum_to_one(exploration: float) -> None:
    chances = probabilities({"standard_tour": 0.1, "short_tour": 0.9, "guided_walkthrough": 0.3},
                            PATHS, exploration)  # fmt: skip
    assert sum(chances.values()) == pytest.approx(1.0)
    assert min(chances.values()) == pytest.approx(exploration / 3)
    assert chances["short_tour"] == pytest.approx(1 - exploration + exploration / 3)
    assert probabilities(None, PATHS, exploration) == dict.fromkeys(PATHS, 1 / 3)


def test_the_draw_is_the_same_for_a_key_and_follows_the_chances() -> None:
    drawn = Counter(choose(None, {}, PATHS, 0.1, f"user-{i}@e")[0] for i in range(6000))
    again = Counter(choose(None, {}, PATHS, 0.1, f"user-{i}@e")[0] for i in range(6000))
    assert drawn == again
    for path in PATHS:  # no policy yet: uniform
        assert 1800 < drawn[path] < 2200, drawn


def _choice(user: str, x: float, path: str, logged: float, rules: str = "short_tour") -> Choice:
    return Choice(user, "e", T0, {"onboarding_progress": x}, path, logged, "learned", rules,
                  PATHS[:2], 0.1, logged)  # fmt: skip


def test_a_path_learns_only_once_its_outcome_comes() -> None:
    learner = PolicyLearner()
    learner.chose(_choice("u1", 0.5, "short_tour", 0.5))
    assert learner.model(PATHS[:2], 0.1) is None and learner.rewards == 0  # delayed: waits
    learner.rewarded(Reward("u-unknown", "e", True))  # no choice: nothing to learn
    learner.rewarded(Reward("u1", "e", True))
    assert learner.rewards == 1 and "short_tour" in learner.models
    assert learner.model(PATHS[:2], 0.1) is None  # standard_tour has no outcome yet
    learner.chose(_choice("u2", 0.1, "standard_tour", 0.5))
    learner.rewarded(Reward("u2", "e", False))
    policy = learner.model(PATHS[:2], 0.1)
    assert policy is not None and policy.rewards == 2 and policy.paths == list(PATHS[:2])


def test_off_policy_estimates_recover_what_a_policy_would_have_achieved() -> None:
    """Paths drawn at random (chance 1/2 each); activation depends on the user and the
    path. The estimates of "always short_tour" (the rules here) land on its true rate."""
    rng = random.Random(5)
    learner = PolicyLearner()
    truth = []
    for i in range(4000):
        x = rng.random()
        chances = {"standard_tour": 0.3, "short_tour": 0.2 + 0.6 * x}
        path = rng.choice(PATHS[:2])
        learner.chose(_choice(f"u{i}", x, path, 0.5))
        learner.rewarded(Reward(f"u{i}", "e", rng.random() < chances[path]))
        truth.append(chances["short_tour"])
    policy = learner.model(PATHS[:2], 0.1)
    assert policy is not None
    rules = policy.estimates["rules"]
    true_rate = sum(truth) / len(truth)  # 0.5
    for name in ("ips", "dr"):
        assert rules[f"{name}_low"] <= true_rate <= rules[f"{name}_high"], rules
    assert rules["dr_high"] - rules["dr_low"] < rules["ips_high"] - rules["ips_low"]
