"""Learned onboarding paths: the choice's propensities, delayed rewards, off-policy
estimates (``online_models.policy``)."""

from __future__ import annotations

import pickle
import random
from collections import Counter, deque
from datetime import UTC, datetime

import pytest

from firstmile.online_models.policy import LOGGED, POLICY_FEATURES, PolicyLearner
from firstmile.online_models.snapshot import choose, probabilities
from firstmile.operators.samples import Choice, Reward

T0 = datetime(2026, 3, 2, tzinfo=UTC)
PATHS = ("standard_tour", "short_tour", "guided_walkthrough")


@pytest.mark.parametrize("exploration", [0.05, 0.1, 0.5, 1.0])
def test_every_path_keeps_its_share_and_the_chances_sum_to_one(exploration: float) -> None:
    chances = probabilities("short_tour", PATHS, exploration)
    assert sum(chances.values()) == pytest.approx(1.0)
    assert min(chances.values()) == pytest.approx(exploration / 3)
    assert chances["short_tour"] == pytest.approx(1 - exploration + exploration / 3)
    assert probabilities(None, PATHS, exploration) == dict.fromkeys(PATHS, 1 / 3)


def test_the_draw_is_the_same_for_a_key_and_follows_the_chances() -> None:
    drawn = Counter(choose(None, {}, PATHS, 0.1, f"user-{i}@e")[0] for i in range(6000))
    again = Counter(choose(None, {}, PATHS, 0.1, f"user-{i}@e")[0] for i in range(6000))
    assert drawn == again
    for path in PATHS:  # no policy yet, no rules' path: uniform
        assert 1800 < drawn[path] < 2200, drawn


def test_before_a_policy_the_learned_arm_follows_the_rules_exploring() -> None:
    drawn = Counter(
        choose(None, {}, PATHS, 0.3, f"user-{i}@e", "guided_walkthrough")[0] for i in range(6000)
    )
    assert 4500 < drawn["guided_walkthrough"] < 5100, drawn
    assert 450 < drawn["standard_tour"] < 750, drawn  # 0.1 each


def test_the_rules_are_context_the_policy_follows_where_they_are_right() -> None:
    """The rules give short_tour to users with x > 0.5 and standard_tour otherwise, and
    are right: a path activates 60 % of the users the rules give it, 30 % of the others.
    Paths are drawn at random; the policy learns to choose what the rules choose."""
    rng = random.Random(9)
    learner = PolicyLearner()
    for i in range(3000):
        x = rng.random()
        rules = "short_tour" if x > 0.5 else "standard_tour"
        path = rng.choice(PATHS[:2])
        learner.chose(_choice(f"u{i}", x, path, 0.5, rules))
        learner.rewarded(Reward(f"u{i}", "e", rng.random() < (0.6 if path == rules else 0.3)))
    policy = learner.model(PATHS[:2], 0.1)
    assert policy is not None
    assert min(policy.rules) > 0.5, policy.rules  # log-odds of 0.6 vs 0.3: 1.25, less x
    for x, rules in ((0.2, "standard_tour"), (0.9, "short_tour")):
        values = policy.values({"onboarding_progress": x}, rules)
        assert max(values, key=values.__getitem__) == rules, values
        assert values[rules] == pytest.approx(0.6, abs=0.06)


def _choice(user: str, x: float, path: str, logged: float, rules: str = "short_tour") -> Choice:
    return Choice(user, "e", T0, {"onboarding_progress": x}, path, logged, "learned", rules,
                  PATHS[:2], 0.1, logged)  # fmt: skip


def test_a_path_learns_only_once_its_outcome_comes() -> None:
    learner = PolicyLearner()
    learner.chose(_choice("u1", 0.5, "short_tour", 0.5))
    assert learner.model(PATHS[:2], 0.1) is None and learner.rewards == 0  # delayed: waits
    learner.rewarded(Reward("u-unknown", "e", True))  # no choice: nothing to learn
    learner.rewarded(Reward("u1", "e", True))
    assert learner.rewards == 1
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
    # half the outcomes weigh 2 (the rules' path, drawn half the time), half nothing
    assert 0.95 < rules["weight_mean"] < 1.05, rules


def _logged(learner: PolicyLearner, n: int, rates: dict[str, float], seed: int) -> None:
    """``n`` outcomes of paths drawn at random; the rules choose standard_tour."""
    rng = random.Random(seed)
    for i in range(n):
        path = rng.choice(PATHS[:2])
        learner.chose(_choice(f"u{seed}-{i}", rng.random(), path, 0.5, "standard_tour"))
        learner.rewarded(Reward(f"u{seed}-{i}", "e", rng.random() < rates[path]))


def test_the_policy_leaves_the_rules_only_where_it_knows_better() -> None:
    """short_tour is a little better than the rules' standard_tour (45 % vs 40 %): on 60
    outcomes the policy cannot tell and keeps the rules' path; short_tour is much better
    (70 % vs 40 %) on 3,000 outcomes: it takes it."""
    few = PolicyLearner()
    _logged(few, 60, {"standard_tour": 0.40, "short_tour": 0.45}, seed=1)
    policy = few.model(PATHS[:2], 0.1)
    assert policy is not None
    users = [{"onboarding_progress": x / 10} for x in range(11)]
    assert policy.best(users, ["standard_tour"] * 11) == ["standard_tour"] * 11
    many = PolicyLearner()
    _logged(many, 3000, {"standard_tour": 0.40, "short_tour": 0.70}, seed=2)
    policy = many.model(PATHS[:2], 0.1)
    assert policy is not None
    user = {"onboarding_progress": 0.5}
    assert policy.best([user], ["standard_tour"]) == ["short_tour"]
    _, errors = policy.margins([user], ["standard_tour"])
    assert ((errors > 0) & (errors < 0.2)).all(), errors


def test_the_learned_policy_does_not_grade_its_own_homework() -> None:
    """Every path activates 40 % of users whatever they do: a policy fitted to the noise
    of 13 features is no better than 40 %, and its estimates must not say it is (judged
    on the outcomes it was fitted to, they read 46 % on average over 12 such streams)."""
    rng = random.Random(1)
    learner = PolicyLearner()
    for i in range(1500):
        x = {name: rng.gauss(0, 1) for name in POLICY_FEATURES}
        path = rng.choice(PATHS)
        chance = 1 / len(PATHS)
        choice = Choice(f"u{i}", "e", T0, x, path, chance, "learned", "standard_tour", PATHS,
                        0.1, chance)  # fmt: skip
        learner.chose(choice)
        learner.rewarded(Reward(f"u{i}", "e", rng.random() < 0.4))
    policy = learner.model(PATHS, 0.1)
    assert policy is not None
    learned = policy.estimates["learned"]
    for name in ("ips", "dr"):
        assert learned[f"{name}_low"] <= 0.4 <= learned[f"{name}_high"], learned


def test_the_learned_arm_as_it_ran_is_judged_by_the_chances_it_ran_with() -> None:
    """Three arms as assigned (standard_tour for everyone, the rules' short_tour, the
    learned arm); the learned policy follows the rules for the first half and then moves
    to standard_tour, a worse path. Judged with the chances each choice ran with, the
    estimates hold the learned arm's true rate; the newest policy is another policy."""
    rng = random.Random(3)
    learner = PolicyLearner()
    paths = PATHS[:2]
    rates = {"standard_tour": 0.3, "short_tour": 0.6}
    truth = []
    for i in range(6000):
        best = "short_tour" if i < 3000 else "standard_tour"
        running = probabilities(best, paths, 0.2)
        arms = {"control": {"standard_tour": 1.0}, "rules": {"short_tour": 1.0}}
        arms["learned"] = running
        arm = rng.choice(sorted(arms))
        path = rng.choices(paths, [arms[arm].get(p, 0.0) for p in paths])[0]
        logged = sum(chances.get(path, 0.0) for chances in arms.values()) / 3
        x = {"onboarding_progress": rng.random()}
        choice = Choice(f"u{i}", "e", T0, x, path, arms[arm][path], arm, "short_tour", paths,
                        0.2, logged, running)  # fmt: skip
        learner.chose(choice)
        learner.rewarded(Reward(f"u{i}", "e", rng.random() < rates[path]))
        truth.append(sum(running[p] * rates[p] for p in paths))
    policy = learner.model(paths, 0.2)
    assert policy is not None
    ran = policy.estimates["ran"]
    true_rate = sum(truth) / len(truth)  # 0.45
    for name in ("ips", "dr"):
        assert ran[f"{name}_low"] <= true_rate <= ran[f"{name}_high"], ran
    assert ran["n"] == 6000 and 0.95 < ran["weight_mean"] < 1.05, ran
    # The newest policy learned short_tour is better: it is not what ran.
    assert policy.estimates["learned"]["dr_low"] > ran["dr_high"], policy.estimates


def test_choices_logged_before_the_running_chances_existed_are_left_out_of_it() -> None:
    learner = PolicyLearner()
    _logged(learner, 200, {"standard_tour": 0.4, "short_tour": 0.5}, seed=4)
    policy = learner.model(PATHS[:2], 0.1)
    assert policy is not None
    assert "ran" not in policy.estimates and "learned" in policy.estimates


def test_a_learner_pickled_with_rows_of_five_loads_and_estimates() -> None:
    """Outcomes logged before the running chances existed (5-item rows) load as rows
    without them: the estimates go on, "as it ran" only once rows carry the chances."""
    learner = PolicyLearner()
    _logged(learner, 200, {"standard_tour": 0.4, "short_tour": 0.5}, seed=6)
    learner.logged = deque((row[:5] for row in learner.logged), maxlen=LOGGED)
    restored = pickle.loads(pickle.dumps(learner))
    assert all(len(row) == 6 and row[5] is None for row in restored.logged)
    policy = restored.model(PATHS[:2], 0.1)
    assert policy is not None and "learned" in policy.estimates
    assert "ran" not in policy.estimates
