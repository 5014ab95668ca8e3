"""Experiments: config validation by name, GrowthBook-style assignment, outcomes, tallies
and the readout's statistics."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firstmile.flows.readout import TUNING, compare, readout, sequential_multiplier
from firstmile.flows.simulator import FITTING, Simulation
from firstmile.operators.decisions import outcomes
from firstmile.operators.errors import MappingError
from firstmile.operators.experiments import HOLDOUT, Experiment, Experiments, Outcome, Tally
from firstmile.operators.profile import UserProfile

T0 = datetime(2026, 3, 2, tzinfo=UTC)
ARMS = 'variations = [{ name = "a", path = "standard_tour" }, { name = "b" }]\n'


def load(tmp_path: Path, text: str) -> Experiments:
    file = tmp_path / "experiments.toml"
    file.write_text(text)
    return Experiments.load(file)


def test_the_shipped_experiment_loads() -> None:
    experiments = Experiments.load()
    (experiment,) = experiments.experiments
    assert experiment.key == "personalized-onboarding" and experiment.control == "control"
    assert experiments.outcome_deadlines() == (
        ("activation", 3 * 86400.0),
        ("retention", 8 * 86400.0),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + "colour = 1\n",
            "experiments[1] (x).colour: unknown field",
        ),
        (
            '[[experiments]]\nkey = "x"\nvariations = [{ name = "a" }]\n',
            "variations: List should have at least 2 items",
        ),
        ('[[experiments]]\nkey = "x"\n' + ARMS + "weights = [1.0]\n", "weights: one per variation"),
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + "weights = [0.7, 0.7]\n",
            "weights: non-negative, summing to 1",
        ),
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + "coverage = 1.5\n",
            "coverage: Input should be less than or equal to 1",
        ),
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + 'namespace = ["n", 0.6, 0.2]\n',
            "namespace: [name, start, end]",
        ),
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + "hash_version = 3\n",
            "hash_version: Input should be 1 or 2",
        ),
        (
            '[[experiments]]\nkey = "x"\n' + ARMS + 'if = { plan = { "$inn" = [1] } }\n',
            "if: plan: unknown operator $inn",
        ),
        (
            '[[experiments]]\nkey = "x"\nvariations = [{ name = "a" }, { name = "a" }]\n',
            "variation names must be distinct",
        ),
        (
            '[[experiments]]\nkey = "x"\nvariations = [{ name = "a" }, { name = "holdout" }]\n',
            "not 'holdout'",
        ),
        ('[[experiments]]\nkey = "has space"\n' + ARMS, "key: String should match pattern"),
        (('[[experiments]]\nkey = "x"\n' + ARMS) * 2, "experiment keys must be distinct"),
        ("activation_days = 0\n", "activation_days: Input should be greater than 0"),
        ("[[experiments]\n", "not valid TOML"),
    ],
)
def test_each_problem_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert "experiments.toml" in str(caught.value)


def test_assignment_follows_coverage_weights_namespace_condition_and_holdout() -> None:
    def experiment(**fields: object) -> Experiment:
        return Experiment.model_validate(
            {"key": "e", "variations": [{"name": "a"}, {"name": "b"}], **fields}
        )

    users = [f"user-{i}" for i in range(4000)]

    def share(e: Experiment, arm: str | None, attributes: dict[str, object] | None = None) -> float:
        return sum(e.assign(u, attributes or {}) == arm for u in users) / len(users)

    even = experiment()
    assert abs(share(even, "a") - 0.5) < 0.03 and share(even, None) == 0
    assert [even.assign(u, {}) for u in users] == [even.assign(u, {}) for u in users]  # stable
    assert abs(share(experiment(weights=[0.9, 0.1]), "a") - 0.9) < 0.03
    assert abs(share(experiment(coverage=0.5), None) - 0.5) < 0.03
    assert abs(share(experiment(namespace=("ns", 0.0, 0.25)), None) - 0.75) < 0.03
    gated = experiment(**{"if": {"trait.plan": "pro"}})
    assert share(gated, None, {"trait": {"plan": "free"}}) == 1.0
    assert share(gated, None, {"trait": {"plan": "pro"}}) == 0.0
    assert abs(share(experiment(holdout=0.2), HOLDOUT) - 0.2) < 0.03
    assert share(experiment(active=False), None) == 1.0


def test_an_arm_imposes_its_path_and_the_other_keeps_the_mapping() -> None:
    experiments = Experiments.load()
    assert experiments.path({"personalized-onboarding": "control"}) == "standard_tour"
    assert experiments.path({"personalized-onboarding": "personalized"}) is None
    assert experiments.path({"personalized-onboarding": HOLDOUT}) is None
    assert experiments.path({}) is None


def test_outcomes_are_read_from_the_profile_once_per_arm() -> None:
    experiments = Experiments.load()
    profile = UserProfile(
        "u1", known=True, signed_up_at=T0, last_seen=T0 + timedelta(days=7, hours=2)
    )
    profile.arms = {"personalized-onboarding": "personalized"}
    assert outcomes(profile, "activation", experiments) == [
        Outcome("personalized-onboarding", "personalized", "activation", False)
    ]
    profile.onboarding_completed_at = T0 + timedelta(days=2, hours=23)
    assert outcomes(profile, "activation", experiments)[0].success is True
    profile.onboarding_completed_at = T0 + timedelta(days=3, hours=1)  # too late
    assert outcomes(profile, "activation", experiments)[0].success is False
    assert outcomes(profile, "retention", experiments)[0].success is True  # seen on day 7
    profile.last_seen = T0 + timedelta(days=6)
    assert outcomes(profile, "retention", experiments)[0].success is False
    assert outcomes(UserProfile("u2", signed_up_at=T0), "activation", experiments) == []


def test_tally_counts_users_and_successes() -> None:
    tally = Tally()
    for arm, metric, success in [
        ("a", "exposed", True),
        ("a", "activation", True),
        ("a", "activation", False),
        ("b", "exposed", True),
    ]:
        tally.add(Outcome("e", arm, metric, success))
    assert tally.counts["a"]["activation"] == [2, 1] and tally.counts["b"]["exposed"] == [1, 1]
    assert tally.counts["b"]["retention"] == [0, 0]


def test_the_lift_and_its_intervals() -> None:
    result = compare((4000, 800), (4000, 1040))
    assert result.rate == 0.26 and math.isclose(result.lift, 0.3)
    # The delta-method standard error of p_t / p_c - 1, and z = 1.96.
    se = math.sqrt(0.26 * 0.74 / 4000 / 0.2**2 + 0.26**2 * 0.2 * 0.8 / 4000 / 0.2**4)
    assert math.isclose(result.interval[0], 0.3 - 1.959964 * se, rel_tol=1e-5)
    assert (
        result.sequential[0] < result.interval[0] < 0.3 < result.interval[1] < result.sequential[1]
    )
    assert result.verdict == "better"
    assert compare((4000, 1040), (4000, 800)).verdict == "worse"
    assert compare((100, 20), (100, 26)).verdict == "inconclusive"
    assert compare((1, 0), (5, 3)).verdict == "too few users"
    # The anytime-valid boundary is wider than a fixed-horizon one at every sample size,
    # narrowest (relative to it) near the tuning size.
    widths = [sequential_multiplier(n, 0.05) for n in (100, 1000, TUNING, 100_000)]
    assert all(w > 1.96 for w in widths) and min(widths) == widths[2]


def test_peeking_every_day_at_an_aa_test_rarely_cries_wolf() -> None:
    """Both arms convert at 30 %: looking after every 100 users for 20,000 users, the
    sequential verdict must be wrong (better or worse) in at most ~5 % of experiments."""
    rng = random.Random(3)
    wrong = 0
    runs = 200
    for _ in range(runs):
        a = b = n = 0
        for _ in range(100):
            for _ in range(100):
                a += rng.random() < 0.3
                b += rng.random() < 0.3
            n += 100
            if compare((n, a), (n, b)).verdict in ("better", "worse"):
                wrong += 1
                break
    assert wrong / runs <= 0.06


def test_readout_compares_every_arm_with_the_control() -> None:
    counts = {
        "control": {"exposed": [100, 100], "activation": [90, 30], "retention": [50, 20]},
        "personalized": {"exposed": [110, 110], "activation": [95, 45], "retention": [0, 0]},
    }
    result = readout(counts, "control")
    assert list(result["arms"]) == ["control", "personalized"]
    arm = result["arms"]["personalized"]
    assert arm["users"] == 110 and arm["activation"]["rate"] == round(45 / 95, 4)
    assert arm["activation"]["lift"] == round((45 / 95) / (30 / 90) - 1, 4)
    assert arm["retention"]["verdict"] == "too few users"
    assert "lift" not in result["arms"]["control"]["activation"]


def _exposures(experiment: Experiment, users: int) -> dict[str, dict[str, list[int]]]:
    tally = Tally()
    for i in range(users):
        arm = experiment.assign(f"user-{i}", {})
        if arm is not None:
            tally.add(Outcome(experiment.key, arm, "exposed", True))
    return tally.counts


@pytest.mark.parametrize(
    ("weights", "coverage", "holdout"), [(None, 1.0, 0.0), ([0.2, 0.8], 0.5, 0.1)]
)
def test_a_fair_assignment_passes_the_sample_ratio_check_and_a_skewed_one_is_flagged(
    weights: list[float] | None, coverage: float, holdout: float
) -> None:
    experiment = Experiment(
        key="srm",
        variations=[{"name": "a"}, {"name": "b"}],
        weights=weights,
        coverage=coverage,
        holdout=holdout,
    )
    counts = _exposures(experiment, 20_000)
    fair = readout(counts, "a", experiment.expected_shares())["sample_ratio"]
    assert not fair["flagged"] and fair["p_value"] > 0.001
    assert sum(fair["observed"].values()) == sum(c["exposed"][0] for c in counts.values())
    counts["b"]["exposed"][0] = int(counts["b"]["exposed"][0] * 0.9)  # 10 % of b's lost
    skewed = readout(counts, "a", experiment.expected_shares())["sample_ratio"]
    assert skewed["flagged"] and skewed["p_value"] < 0.001


def test_too_few_users_are_not_tested_for_a_sample_ratio_mismatch() -> None:
    check = readout({"a": {"exposed": [1, 1]}, "b": {"exposed": [8, 8]}}, "a", {"a": 0.5, "b": 0.5})
    assert check["sample_ratio"]["p_value"] is None and not check["sample_ratio"]["flagged"]


def test_the_simulator_reacts_to_the_path_it_is_shown() -> None:
    def completions(advisor: object) -> int:
        sim = Simulation(users=200, days=6, seed=5, advisor=advisor)  # type: ignore[arg-type]
        return sum(b"Onboarding Completed" in line for line in sim.lines())

    plain = list(Simulation(users=200, days=6, seed=5).lines())
    # A path that fits nobody changes nothing; asking does not change the stream.
    shown = Simulation(users=200, days=6, seed=5, advisor=lambda user: "standard_tour")
    assert list(shown.lines()) == plain

    def fitting(user: str) -> str:
        index = int(user.removeprefix("user-"))
        return sorted(FITTING[Simulation(users=200, days=6, seed=5).persona_of(index)])[0]

    assert completions(fitting) > 1.1 * completions(lambda user: None)
