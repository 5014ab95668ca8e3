"""GrowthBook's condition language (MongoDB-style), evaluated over plain attribute dicts.

Semantics follow GrowthBook's SDK spec so a condition means the same here as in a product
using a GrowthBook SDK: comparisons coerce like JavaScript (a missing value compares as
null, numeric strings as numbers), equality is strict, dotted keys walk nested objects.
Regexes run on RE2 (linear time: no catastrophic backtracking), are compiled once, and an
invalid or oversized pattern simply does not match. Nothing is ever ``eval``-ed.

>>> evaluate_condition({"plan": {"$in": ["pro", "team"]}, "age_days": {"$lt": 7}},
...                    {"plan": "pro", "age_days": 3})
True
>>> evaluate_condition({"device": {"$regexi": "^MOB"}}, {"device": "mobile"})
True
>>> evaluate_condition({"$not": {"segment": "stalled"}}, {"segment": "stalled"})
False
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import re2

#: Longest regex accepted in a condition; longer ones never match.
MAX_PATTERN_LENGTH = 1000

SavedGroups = Mapping[str, list[Any]]


def evaluate_condition(
    condition: Mapping[str, Any],
    attributes: Mapping[str, Any],
    saved_groups: SavedGroups | None = None,
) -> bool:
    """Whether ``attributes`` satisfy ``condition``."""
    groups = saved_groups or {}
    for key, value in condition.items():
        if key == "$or":
            if not _any_condition(value, attributes, groups):
                return False
        elif key == "$nor":
            if _any_condition(value, attributes, groups):
                return False
        elif key == "$and":
            if not all(evaluate_condition(c, attributes, groups) for c in value):
                return False
        elif key == "$not":
            if evaluate_condition(value, attributes, groups):
                return False
        elif not _eval_value(value, get_path(attributes, key), groups):
            return False
    return True


Predicate = Callable[[Mapping[str, Any]], bool]


def compile_condition(
    condition: Mapping[str, Any], saved_groups: SavedGroups | None = None
) -> Predicate:
    """``evaluate_condition`` for one condition, prepared once: paths split, regexes
    compiled, common comparisons specialised. The same verdicts (the conformance cases
    run through both), several times faster for conditions evaluated per event.

    >>> test = compile_condition({"plan": {"$in": ["pro"]}, "age": {"$lt": 7}})
    >>> test({"plan": "pro", "age": 3}), test({"plan": "pro", "age": "9"})
    (True, False)
    """
    groups = saved_groups or {}
    tests = [_clause_test(str(key), value, groups) for key, value in condition.items()]
    if len(tests) == 1:
        return tests[0]
    return lambda a: all(test(a) for test in tests)


def _clause_test(key: str, value: Any, groups: SavedGroups) -> Predicate:
    if key in ("$or", "$nor", "$and", "$not"):
        if key == "$not" and isinstance(value, Mapping):
            inner = compile_condition(value, groups)
            return lambda a: not inner(a)
        if not isinstance(value, list):  # malformed: as the interpreter judges it
            return lambda a: evaluate_condition({key: value}, a, groups)
        parts = [compile_condition(c, groups) for c in value]
        if key == "$and":
            return lambda a: all(f(a) for f in parts)
        if not parts:
            return lambda a: key == "$or"
        if key == "$or":
            return lambda a: any(f(a) for f in parts)
        return lambda a: not any(f(a) for f in parts)
    return _field_test(key, _value_test(value, groups))


def _field_test(path: str, test: Callable[[Any], bool]) -> Predicate:
    parts = path.split(".")
    if len(parts) == 1:
        return lambda a: test(a.get(path) if isinstance(a, Mapping) else None)
    return lambda a: test(get_path(a, path))


def _value_test(condition: Any, groups: SavedGroups) -> Callable[[Any], bool]:
    """A test of an attribute's value against a field's condition (operators or a value)."""
    if not _is_operator_object(condition):
        if isinstance(condition, str):
            return lambda v: type(v) is str and v == condition
        if isinstance(condition, int | float) and not isinstance(condition, bool):
            number = condition
            return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v == number
        return lambda v: _strict_equal(condition, v)
    tests = [_operator_test(op, arg, groups) for op, arg in condition.items()]
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(test(v) for test in tests)


def _operator_test(op: str, arg: Any, groups: SavedGroups) -> Callable[[Any], bool]:
    relation = _RELATIONS.get(op)
    if relation is not None and isinstance(arg, int | float) and not isinstance(arg, bool):
        bound = float(arg)
        return lambda v: (
            relation(v, bound) if type(v) is float or type(v) is int else _compare(v, arg, relation)
        )
    if op in ("$eq", "$ne") and isinstance(arg, str):
        equal = op == "$eq"
        return lambda v: (v == arg) == equal if type(v) is str else (_loose_equal(v, arg) == equal)
    if op in ("$in", "$nin") and isinstance(arg, list) and all(type(x) is str for x in arg):
        options = frozenset(arg)
        inside = op == "$in"
        return lambda v: (v in options) == inside if type(v) is str else (_is_in(v, arg) == inside)
    if op in _REGEX_OPS:
        compiled = _regex(arg, op.endswith("i")) if isinstance(arg, str) else None
        if compiled is None:
            return lambda v: False
        positive = op.startswith("$regex")
        return lambda v: type(v) is str and (compiled.search(v) is not None) == positive
    return lambda v: _eval_operator(op, v, arg, groups)


def _any_condition(
    conditions: list[Any], attributes: Mapping[str, Any], groups: SavedGroups
) -> bool:
    if not conditions:
        return True
    return any(evaluate_condition(c, attributes, groups) for c in conditions)


def get_path(attributes: Any, path: str) -> Any:
    """The value at a dotted ``path`` (None when any part is missing)."""
    current = attributes
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def condition_fields(condition: Any) -> set[str]:
    """The attribute paths a condition reads.

    >>> sorted(condition_fields({"a": 1, "$or": [{"b.c": {"$gt": 2}}, {"$not": {"d": 3}}]}))
    ['a', 'b.c', 'd']
    """
    names: set[str] = set()
    if not isinstance(condition, Mapping):
        return names
    for key, value in condition.items():
        if key in ("$or", "$nor", "$and") and isinstance(value, list):
            for item in value:
                names |= condition_fields(item)
        elif key == "$not":
            names |= condition_fields(value)
        elif not str(key).startswith("$"):
            names.add(str(key))
    return names


def _is_operator_object(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and k.startswith("$") for k in value)
    )


def _eval_value(condition: Any, attribute: Any, groups: SavedGroups) -> bool:
    if _is_operator_object(condition):
        return all(_eval_operator(op, attribute, arg, groups) for op, arg in condition.items())
    return _strict_equal(condition, attribute)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "unknown"


def _strict_equal(a: Any, b: Any) -> bool:
    """JSON equality: types must agree (``True`` is not ``1``), arrays in order."""
    kind = _json_type(a)
    if kind != _json_type(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind == "object":
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _to_number(value: Any) -> float:
    """JavaScript's ToNumber for the values JSON can hold."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        try:
            return float(text)
        except ValueError:
            return math.nan
    return math.nan


def _compare(attribute: Any, condition: Any, test: Callable[[Any, Any], bool]) -> bool:
    """A JavaScript relational comparison: strings as strings, anything else as numbers."""
    if isinstance(attribute, str) and isinstance(condition, str):
        return test(attribute, condition)
    a, b = _to_number(attribute), _to_number(condition)
    if math.isnan(a) or math.isnan(b):
        return False
    return test(a, b)


def _loose_equal(attribute: Any, condition: Any) -> bool:
    """``$eq``/``$ne``: strict for the same type; a number and a numeric string compare."""
    if {_json_type(attribute), _json_type(condition)} == {"number", "string"}:
        return _compare(attribute, condition, lambda a, b: a == b)
    return _strict_equal(attribute, condition)


def _contains(items: list[Any], value: Any, fold: bool) -> bool:
    if fold:
        value = value.lower() if isinstance(value, str) else value
        return any(
            _strict_equal(item.lower() if isinstance(item, str) else item, value) for item in items
        )
    return any(_strict_equal(item, value) for item in items)


def _is_in(attribute: Any, options: Any, fold: bool = False) -> bool:
    if not isinstance(options, list):
        return False
    if isinstance(attribute, list):
        return any(_contains(options, item, fold) for item in attribute)
    return _contains(options, attribute, fold)


def _has_all(attribute: Any, conditions: Any, groups: SavedGroups, fold: bool) -> bool:
    if not isinstance(attribute, list) or not isinstance(conditions, list):
        return False
    for wanted in conditions:
        if fold:
            if not _contains(attribute, wanted, fold=True):
                return False
        elif not any(_eval_value(wanted, item, groups) for item in attribute):
            return False
    return True


def _elem_match(attribute: Any, condition: Any, groups: SavedGroups) -> bool:
    if not isinstance(attribute, list):
        return False
    if _is_operator_object(condition):
        return any(_eval_value(condition, item, groups) for item in attribute)
    return any(
        isinstance(item, Mapping) and evaluate_condition(condition, item, groups)
        for item in attribute
    )


@lru_cache(maxsize=1024)
def _regex(pattern: str, ignore_case: bool) -> Any:
    if len(pattern) > MAX_PATTERN_LENGTH:
        return None
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None


def _matches(attribute: Any, pattern: Any, ignore_case: bool) -> bool | None:
    """Whether the regex matches; ``None`` when the pattern or value cannot be tested."""
    if not isinstance(pattern, str) or not isinstance(attribute, str):
        return None
    compiled = _regex(pattern, ignore_case)
    if compiled is None:
        return None
    return compiled.search(attribute) is not None


_VERSION_STRIP = re.compile(r"(^v|\+.*$)")
_VERSION_SPLIT = re.compile(r"[-.]")


def padded_version(version: Any) -> str:
    """A version string that sorts as text the way versions sort (GrowthBook's scheme).

    >>> padded_version("v1.9.0") < padded_version("1.10.0") == padded_version("1.10.0+b7")
    True
    >>> padded_version("1.0.0-rc.1") < padded_version("1.0.0")
    True
    """
    parts = _VERSION_SPLIT.split(_VERSION_STRIP.sub("", str(version)))
    if len(parts) == 3:
        parts.append("~")  # a release sorts after its pre-releases
    return "-".join(p.rjust(5) if p.isdigit() else p for p in parts)


def _version_op(test: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def compare(attribute: Any, condition: Any) -> bool:
        if attribute is None or condition is None:
            return False
        return test(padded_version(attribute), padded_version(condition))

    return compare


_VERSION_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$veq": _version_op(lambda a, b: a == b),
    "$vne": _version_op(lambda a, b: a != b),
    "$vgt": _version_op(lambda a, b: a > b),
    "$vgte": _version_op(lambda a, b: a >= b),
    "$vlt": _version_op(lambda a, b: a < b),
    "$vlte": _version_op(lambda a, b: a <= b),
}

_RELATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _eval_operator(op: str, attribute: Any, arg: Any, groups: SavedGroups) -> bool:
    if op in _RELATIONS:
        return _compare(attribute, arg, _RELATIONS[op])
    if op in _VERSION_OPS:
        return _VERSION_OPS[op](attribute, arg)
    if op in ("$regex", "$regexi", "$notRegex", "$notRegexi"):
        matched = _matches(attribute, arg, ignore_case=op.endswith("i"))
        if matched is None:
            return False
        return matched if op.startswith("$regex") else not matched
    match op:
        case "$eq":
            return _loose_equal(attribute, arg)
        case "$ne":
            return not _loose_equal(attribute, arg)
        case "$in":
            return _is_in(attribute, arg)
        case "$nin":
            return isinstance(arg, list) and not _is_in(attribute, arg)
        case "$ini":
            return _is_in(attribute, arg, fold=True)
        case "$nini":
            return isinstance(arg, list) and not _is_in(attribute, arg, fold=True)
        case "$inGroup":
            return isinstance(arg, str) and _contains(list(groups.get(arg, [])), attribute, False)
        case "$notInGroup":
            return not (
                isinstance(arg, str) and _contains(list(groups.get(arg, [])), attribute, False)
            )
        case "$all":
            return _has_all(attribute, arg, groups, fold=False)
        case "$alli":
            return _has_all(attribute, arg, groups, fold=True)
        case "$elemMatch":
            return _elem_match(attribute, arg, groups)
        case "$size":
            return isinstance(attribute, list) and _eval_value(arg, len(attribute), groups)
        case "$exists":
            return (attribute is not None) if arg else (attribute is None)
        case "$type":
            return _json_type(attribute) == arg
        case "$not":
            return not _eval_value(arg, attribute, groups)
    return False  # an unknown operator never matches


_REGEX_OPS = ("$regex", "$regexi", "$notRegex", "$notRegexi")
_OTHER_OPS = [
    "$eq",
    "$ne",
    "$in",
    "$nin",
    "$ini",
    "$nini",
    "$inGroup",
    "$notInGroup",
    "$all",
    "$alli",
    "$elemMatch",
    "$size",
    "$exists",
    "$type",
    "$not",
]


def condition_problems(condition: Any, where: str = "") -> list[str]:
    """What is wrong with a condition written by hand: unknown operators, regexes that do
    not compile (or are too long), logical operators without the right shape. Empty if
    it is sound. (``evaluate_condition`` would quietly treat these as never matching.)

    >>> condition_problems({"plan": {"$inn": ["pro"]}, "name": {"$regex": "("}})
    ['plan: unknown operator $inn', 'name: $regex pattern does not compile: (']
    """
    if not isinstance(condition, Mapping):
        return [f"{where or 'condition'}: must be a table of fields and operators"]
    known = {*_RELATIONS, *_VERSION_OPS, *_REGEX_OPS, *_OTHER_OPS}
    problems: list[str] = []
    for key, value in condition.items():
        at = f"{where}.{key}" if where else str(key)
        if key in ("$or", "$nor", "$and"):
            if not isinstance(value, list):
                problems.append(f"{at}: must be a list of conditions")
            else:
                for i, item in enumerate(value):
                    problems += condition_problems(item, f"{at}[{i}]")
        elif key == "$not":
            problems += condition_problems(value, at)
        elif isinstance(key, str) and key.startswith("$"):
            problems.append(f"{at}: unknown operator at the top of a condition")
        elif _is_operator_object(value):
            for op, arg in value.items():
                if op not in known:
                    problems.append(f"{at}: unknown operator {op}")
                elif op in _REGEX_OPS and (
                    not isinstance(arg, str) or _regex(arg, op.endswith("i")) is None
                ):
                    problems.append(f"{at}: {op} pattern does not compile: {arg}")
                elif op in ("$not", "$elemMatch") and isinstance(arg, Mapping):
                    problems += (
                        condition_problems(arg, at)
                        if op == "$elemMatch" and not _is_operator_object(arg)
                        else condition_problems({"_": arg}, at)
                        if op == "$not"
                        else []
                    )
    return problems
