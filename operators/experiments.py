"""Experiments: GrowthBook-compatible assignment (the same user lands in the same arm here
as in a product that evaluates the experiment with a GrowthBook SDK) and their config
(config/experiments.toml: arms are onboarding paths or payloads; activation and
retention are the outcomes measured per arm).

>>> gb_hash("onboarding-path", "user-1", 2) == gb_hash("onboarding-path", "user-1", 2)
True
>>> ranges = get_bucket_ranges(2, 1.0, None)
>>> ranges, choose_variation(0.7, ranges)
([(0.0, 0.5), (0.5, 1.0)], 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firstmile.operators.conditions import condition_problems, evaluate_condition
from firstmile.operators.errors import MappingError
from firstmile.operators.resources import CONFIG_DIR, read_toml

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

BucketRange = tuple[float, float]


def _fnv1a32(text: str) -> int:
    value = _FNV_OFFSET
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """A number in [0, 1) for ``value`` under ``seed``; ``None`` for an unknown version."""
    if version == 2:
        return (_fnv1a32(str(_fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (_fnv1a32(value + seed) % 1000) / 1000
    return None


def get_equal_weights(n: int) -> list[float]:
    """``n`` equal weights (nothing for ``n`` < 1)."""
    return [1.0 / n] * n if n >= 1 else []


def get_bucket_ranges(
    n: int, coverage: float, weights: Sequence[float] | None
) -> list[BucketRange]:
    """Each variation's slice of [0, 1): its weight, scaled down to ``coverage``.

    Weights that do not fit (wrong count, or not summing to 1) fall back to equal weights.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n or not 0.99 <= sum(weights) <= 1.01:
        weights = get_equal_weights(n)
    ranges: list[BucketRange] = []
    start = 0.0
    for weight in weights:
        ranges.append((start, start + coverage * weight))
        start += weight
    return ranges


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """The variation whose range holds ``n``, or -1 (not in the experiment)."""
    for index, (low, high) in enumerate(ranges):
        if low <= n < high:
            return index
    return -1


def in_namespace(user_id: str, namespace: tuple[str, float, float] | Sequence[object]) -> bool:
    """Whether the user falls in the namespace's [start, end) slice (mutual exclusion)."""
    name, start, end = namespace
    n = gb_hash("__" + str(name), user_id, 1)
    return n is not None and float(start) <= n < float(end)  # type: ignore[arg-type]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Variation(_Table):
    """One arm: a name, and what it changes (an onboarding path, a payload for the app).
    Who chooses its users' path: a fixed ``path``; else ``policy`` "rules" (the path
    mapping, config/paths.toml; the default) or "learned" (a contextual bandit the
    learner trains on this experiment's activation outcomes, ``online_models.policy``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    path: str | None = Field(default=None, min_length=1)
    policy: Literal["rules", "learned"] = "rules"
    payload: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_chooser(self) -> Variation:
        if self.path is not None and self.policy == "learned":
            raise ValueError("a variation has a fixed path or a learned policy, not both")
        return self


class Experiment(_Table):
    key: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    variations: list[Variation] = Field(min_length=2)
    weights: list[float] | None = None
    coverage: float = Field(default=1.0, ge=0.0, le=1.0)
    seed: str | None = None  # the hash seed; the key when unset (as GrowthBook)
    #: What is hashed (GrowthBook's ``hashAttribute``): the user id, or the anonymous id
    #: of the signup event, so a visitor's arm before signup (``firstmile serve`` hashes
    #: the id it is asked about) is the arm they keep after it. Without an anonymous id
    #: at signup, the user id (as GrowthBook's ``fallbackAttribute``).
    hash_attribute: Literal["user_id", "anonymous_id"] = "user_id"
    hash_version: Literal[1, 2] = 2
    namespace: tuple[str, float, float] | None = None
    condition: dict[str, Any] = Field(default={}, alias="if")
    #: A share of users kept out of the experiment (they get the usual experience) and
    #: reported on their own, to see the long-run effect of personalization as a whole.
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    active: bool = True
    #: A learned policy's exploration: every path keeps at least this share over the
    #: paths' count of its choices (the rest goes to the path it rates best).
    exploration: float = Field(default=0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variations]
        if len(set(names)) != len(names) or HOLDOUT in names:
            raise ValueError(f"variation names must be distinct and not {HOLDOUT!r}")
        if self.weights is not None:
            if len(self.weights) != len(self.variations):
                raise ValueError("weights: one per variation")
            if any(w < 0 for w in self.weights) or not 0.99 <= sum(self.weights) <= 1.01:
                raise ValueError("weights: non-negative, summing to 1")
        if self.namespace is not None and not 0 <= self.namespace[1] < self.namespace[2] <= 1:
            raise ValueError("namespace: [name, start, end] with 0 <= start < end <= 1")
        problems = condition_problems(self.condition)
        if problems:
            raise ValueError("if: " + "; ".join(problems))
        return self

    def assign(
        self, user_id: str, attributes: Mapping[str, Any], anonymous_id: str | None = None
    ) -> str | None:
        """The arm's name for ``user_id`` (or ``HOLDOUT``); None when not in the experiment.

        The same steps as a GrowthBook SDK's ``run``: active, condition, namespace, hash,
        coverage and weights, so the product sees the same arm. With ``hash_attribute =
        "anonymous_id"``, ``anonymous_id`` (when given) is hashed instead of ``user_id``.
        """
        if self.hash_attribute == "anonymous_id" and anonymous_id:
            user_id = anonymous_id
        if not self.active or not evaluate_condition(self.condition, attributes):
            return None
        if self.namespace is not None and not in_namespace(user_id, self.namespace):
            return None
        if self.holdout:
            held = gb_hash(f"holdout:{self.key}", user_id, 2)
            if held is not None and held < self.holdout:
                return HOLDOUT
        n = gb_hash(self.seed or self.key, user_id, self.hash_version)
        if n is None:
            return None
        ranges = get_bucket_ranges(len(self.variations), self.coverage, self.weights)
        index = choose_variation(n, ranges)
        return self.variations[index].name if index >= 0 else None

    @property
    def learns(self) -> bool:
        """Whether an arm's path is chosen by a learned policy."""
        return any(v.policy == "learned" for v in self.variations)

    def expected_shares(self) -> dict[str, float]:
        """Each arm's share of the users assigned, by design (``HOLDOUT`` included when
        set): what a sample-ratio-mismatch check compares the exposures with.

        >>> Experiment(key="e", variations=[{"name": "a"}, {"name": "b"}],
        ...            weights=[0.2, 0.8], coverage=0.5, holdout=0.1).expected_shares()
        {'holdout': 0.1818, 'a': 0.1636, 'b': 0.6545}
        """
        n = len(self.variations)
        weights = self.weights or [1 / n] * n
        covered = (1 - self.holdout) * self.coverage
        shares = {HOLDOUT: self.holdout} if self.holdout else {}
        shares |= {v.name: covered * w for v, w in zip(self.variations, weights, strict=True)}
        total = sum(shares.values()) or 1.0
        return {arm: round(share / total, 4) for arm, share in shares.items()}

    def variation(self, name: str) -> Variation | None:
        return next((v for v in self.variations if v.name == name), None)

    @property
    def control(self) -> str:
        """The baseline arm every other is compared with: the first (as GrowthBook)."""
        return self.variations[0].name


#: What decides a user's arm: changing any of it mid-flight re-buckets users.
_ASSIGNMENT = (
    "variations",
    "weights",
    "coverage",
    "seed",
    "hash_version",
    "hash_attribute",
    "namespace",
    "condition",
    "holdout",
    "active",
)

#: The arm name of users held out of an experiment.
HOLDOUT = "holdout"

#: What is counted per arm: assignments, and each outcome once it is known.
METRICS = ("exposed", "activation", "retention")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One user's contribution to an arm's numbers (to the experiment's tally)."""

    experiment: str
    arm: str
    metric: str  # one of METRICS
    success: bool


class Tally:
    """Per arm and metric: [users counted, successes]. Plain data: pickles, JSON."""

    def __init__(self, counts: dict[str, dict[str, list[int]]] | None = None) -> None:
        self.counts = counts or {}

    def add(self, outcome: Outcome) -> None:
        arm = self.counts.setdefault(outcome.arm, {m: [0, 0] for m in METRICS})
        cell = arm.setdefault(outcome.metric, [0, 0])
        cell[0] += 1
        cell[1] += int(outcome.success)


class Experiments(_Table):
    """config/experiments.toml: the experiments and how their outcomes are measured."""

    #: Activation: onboarding completed within this many days of signup.
    activation_days: float = Field(default=3.0, gt=0, le=60)
    #: Retention: active during day N after signup (the 24 hours from N days on).
    retention_day: int = Field(default=7, ge=1, le=60)
    experiments: list[Experiment] = []

    @model_validator(mode="after")
    def _distinct(self) -> Experiments:
        keys = [e.key for e in self.experiments]
        if len(set(keys)) != len(keys):
            raise ValueError("experiment keys must be distinct")
        return self

    @classmethod
    def load(
        cls, file: Path = CONFIG_DIR / "experiments.toml", text: str | None = None
    ) -> Experiments:
        """Read and validate ``file`` (or its ``text``); ``MappingError`` names every problem."""
        data = read_toml(file, text)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = _where(data, error["loc"])
                problem = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
                problems.append(f"{where}: {problem.removeprefix('Value error, ')}")
            raise MappingError(f"{file}: " + "; ".join(problems)) from None

    def outcome_deadlines(self) -> tuple[tuple[str, float], ...]:
        """When each outcome is known, in seconds after signup (for the timer shards)."""
        if not self.experiments:
            return ()
        return (
            ("activation", self.activation_days * 86400.0),
            ("retention", (self.retention_day + 1) * 86400.0),
        )

    def rebucketing(self, new: Experiments) -> list[str]:
        """What replacing this config with ``new`` does to running experiments' assignment:
        a change to what decides a user's arm re-buckets users (arms are sticky, so users
        assigned before keep theirs and the readout mixes both splits).

        >>> arms = [{"name": "x"}, {"name": "y"}]
        >>> a = Experiments(experiments=[{"key": "e", "variations": arms}])
        >>> b = Experiments(experiments=[{"key": "e", "variations": arms, "weights": [0.2, 0.8]}])
        >>> a.rebucketing(b)  # doctest: +ELLIPSIS
        ['experiment e: weights None -> [0.2, 0.8] re-buckets users...']
        """
        found = []
        for old in self.experiments:
            changed = new.get(old.key)
            if changed is None:
                found.append(f"experiment {old.key}: removed (its users keep their arms)")
                continue
            for name in _ASSIGNMENT:
                before, after = getattr(old, name), getattr(changed, name)
                if name == "variations":
                    before, after = [v.name for v in before], [v.name for v in after]
                if before != after:
                    found.append(
                        f"experiment {old.key}: {name} {before} -> {after} re-buckets users "
                        "(those assigned keep their arms, new users split otherwise: the "
                        "readout mixes both; a new experiment key starts clean)"
                    )
        return found

    def get(self, key: str) -> Experiment | None:
        return next((e for e in self.experiments if e.key == key), None)

    def assign(
        self, user_id: str, attributes: Mapping[str, Any], anonymous_id: str | None = None
    ) -> dict[str, str]:
        """Every experiment's arm for a new user (sticky: kept in their profile)."""
        arms: dict[str, str] = {}
        for experiment in self.experiments:
            arm = experiment.assign(user_id, attributes, anonymous_id)
            if arm is not None:
                arms[experiment.key] = arm
        return arms

    def learned(self, arms: Mapping[str, str]) -> Experiment | None:
        """The experiment whose learned policy chooses the user's path, if any."""
        for experiment in self.experiments:
            arm = arms.get(experiment.key)
            variation = experiment.variation(arm) if arm else None
            if variation is not None and variation.policy == "learned":
                return experiment
        return None

    def path(self, arms: Mapping[str, str]) -> str | None:
        """The onboarding path the user's arms impose (the first experiment's that does)."""
        for experiment in self.experiments:
            arm = arms.get(experiment.key)
            variation = experiment.variation(arm) if arm else None
            if variation is not None and variation.path is not None:
                return variation.path
        return None


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """A readable place for an error: experiments[1] (key).weights."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            key = (
                node[part].get("key")
                if isinstance(node, list) and isinstance(node[part], dict)
                else None
            )
            parts[-1] += f"[{part + 1}]" + (f" ({key})" if isinstance(key, str) else "")
        else:
            parts.append(str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(file)"
