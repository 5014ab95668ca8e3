"""Onboarding paths: an ordered list of (path, condition), first match wins, else a default.

The mapping is data (config/paths.toml), validated when loaded: unknown fields, empty
names, conditions with unknown operators or broken regexes, and rules that can never
win (an unconditional rule before others) are reported with the rule's number.

>>> paths = PathMap("standard", (("offer", {"churn_band": "high"}),))
>>> paths.choose({"churn_band": "high"}), paths.choose({"churn_band": "low"})
('offer', 'standard')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firstmile.operators.conditions import (
    compile_condition,
    condition_fields,
    condition_problems,
    get_path,
)
from firstmile.operators.errors import MappingError
from firstmile.operators.resources import CONFIG_DIR, read_toml

_RULE_FIELDS = {"path", "if", "required"}


@dataclass(frozen=True)
class PathMap:
    default: str
    rules: tuple[tuple[str, Mapping[str, Any]], ...]
    #: Rules (by index) whose path a user who matches them gets even in an experiment arm
    #: whose policy is learned: a guard rail (a stuck user gets the walkthrough).
    required: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Every scoring asks; few distinct inputs occur: remember answers by the values of
        # the attributes the conditions read (they are what decides, nothing else).
        names: set[str] = set()
        for _, condition in self.rules:
            names |= condition_fields(condition)
        object.__setattr__(self, "_inputs", tuple(sorted(names)))
        tests = tuple((path, compile_condition(condition)) for path, condition in self.rules)
        object.__setattr__(self, "_tests", tests)
        object.__setattr__(self, "_memo", {})

    def required_path(self, attributes: Mapping[str, Any]) -> str | None:
        """The path of the first ``required`` rule the user matches, if any.

        >>> stuck = ("walkthrough", {"steps_stuck": {"$gte": 1}})
        >>> paths = PathMap("tour", (stuck,), frozenset({0}))
        >>> paths.required_path({"steps_stuck": 2}), paths.required_path({"steps_stuck": 0})
        ('walkthrough', None)
        """
        for index, (path, test) in enumerate(self._tests):  # type: ignore[attr-defined]
            if index in self.required and test(attributes):
                return str(path)
        return None

    def choose(self, attributes: Mapping[str, Any]) -> str:
        key = tuple(get_path(attributes, name) for name in self._inputs)  # type: ignore[attr-defined]
        memo: dict[tuple[Any, ...], str] = self._memo  # type: ignore[attr-defined]
        try:
            return memo[key]
        except TypeError:  # an unhashable input (a list or a table): just evaluate
            return self._evaluate(attributes)
        except KeyError:
            pass
        chosen = self._evaluate(attributes)
        # Shares make most inputs new (55 % of calls hit, ~6 answers a user): a small memo,
        # cleared when full. 65,536 answers kept had held 4 MB at 10,000 users, growing.
        if len(memo) >= 4096:
            memo.clear()
        memo[key] = chosen
        return chosen

    def _evaluate(self, attributes: Mapping[str, Any]) -> str:
        for path, test in self._tests:  # type: ignore[attr-defined]
            if test(attributes):
                return path
        return self.default

    def names(self) -> tuple[str, ...]:
        """Every path the mapping can choose, the default first."""
        return tuple(dict.fromkeys([self.default, *(path for path, _ in self.rules)]))

    @classmethod
    def load(cls, file: Path = CONFIG_DIR / "paths.toml", text: str | None = None) -> PathMap:
        """Read and validate ``file`` (or its ``text``); ``MappingError`` names every problem."""
        data = read_toml(file, text)
        problems: list[str] = []
        unknown = set(data) - {"default", "paths"}
        if unknown:
            problems.append(f"unknown field(s): {', '.join(sorted(unknown))}")
        default = data.get("default")
        if not isinstance(default, str) or not default.strip():
            problems.append("default: must name a path")
        rules: list[tuple[str, Mapping[str, Any]]] = []
        required: set[int] = set()
        for i, rule in enumerate(data.get("paths", []), start=1):
            where = f"paths[{i}]"
            if not isinstance(rule, dict):
                problems.append(f"{where}: must be a table")
                continue
            extra = set(rule) - _RULE_FIELDS
            if extra:
                problems.append(f"{where}: unknown field(s): {', '.join(sorted(extra))}")
            path = rule.get("path")
            if not isinstance(path, str) or not path.strip():
                problems.append(f"{where}.path: must name a path")
                continue
            condition = rule.get("if", {})
            problems += [f"{where}.if: {p}" for p in condition_problems(condition)]
            if rules and not rules[-1][1]:
                problems.append(f"{where} ({path}): never chosen, the rule before matches all")
            if not isinstance(rule.get("required", False), bool):
                problems.append(f"{where}.required: true or false")
            elif rule.get("required", False):
                required.add(len(rules))
            rules.append((path.strip(), condition if isinstance(condition, Mapping) else {}))
        if problems:
            raise MappingError(f"{file}: " + "; ".join(problems))
        assert isinstance(default, str)
        return cls(default.strip(), tuple(rules), frozenset(required))
