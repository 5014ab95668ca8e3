"""Trigger rules: data (config/rules.toml), validated when loaded, evaluated per user.

A rule listens to triggers (``when``: event kinds, ``segment_changed``,
``risk_band_changed``, ``path_changed``, ``decision_point``, ``timer:session_end``,
``timer:inactive_24h`` ...) or is an absence pattern ("``after`` kind A, ``unless`` kind
B ``within`` a duration": the timer shards fire it when B never came). Its ``if`` is a
GrowthBook condition over the user's attributes (``ATTRIBUTES``). Per cause and trigger
one rule wins: the highest priority (then file order) whose condition holds and whose
cooldown and cap allow it. A winner in its ``holdout`` share of users (hashed, stable)
fires silently: it counts, caps and cools down like a sent trigger, so the holdout
measures the rule's effect.

At load, besides the rule tables' own fields (pydantic), the rules are checked as a set:
unknown attributes in conditions or payload templates, rules that can never win
(shadowed by a rule of higher precedence on the same triggers whose condition always
holds when theirs does), and conflicting rules (same trigger, same priority, different
actions, conditions that can both hold). Every problem names the rule id.

>>> book = RuleBook.parse('''
... [[rules]]
... id = "welcome"
... when = ["signup"]
... then = { action = "show_welcome", payload = { plan = "{trait.plan}" } }
... ''')
>>> [(v.rule.id, v.rule.render({"trait": {"plan": "pro"}})) for v in book.evaluate(
...     ["signup"], lambda: {"trait": {"plan": "pro"}}, {}, at=0.0, user_id="u1")]
[('welcome', {'plan': 'pro'})]
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from firstmile.operators.conditions import (
    Predicate,
    compile_condition,
    condition_fields,
    condition_problems,
    get_path,
)
from firstmile.operators.errors import MappingError
from firstmile.operators.events import CANONICAL_KINDS
from firstmile.operators.experiments import gb_hash
from firstmile.operators.features import FEATURE_NAMES
from firstmile.operators.resources import CONFIG_DIR, read_toml

#: Attributes a condition or payload template may read (``trait.*``, ``event.*`` and
#: ``arms.*`` are open tables: the kept traits, the causing event, the experiment arms).
ATTRIBUTES = frozenset(
    {
        *FEATURE_NAMES,
        "user_id",
        "segment",
        "segment_label",
        "churn_band",
        "churn_risk",
        "churn_rank",
        "path",
        "country",
        "device",
        "trait",
        "event",
        "arms",
    }
)
_OPEN_TABLES = ("trait.", "event.", "arms.")

#: Triggers besides event kinds: what a scoring found, and timer signals.
DECISION_TRIGGERS = frozenset(
    {"segment_changed", "risk_band_changed", "path_changed", "decision_point"}
)
_TIMER_TRIGGER = re.compile(r"^timer:(session_end|idle|inactive_(\d+)h)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
#: A payload template's size limit (JSON bytes): a trigger message must stay far below the
#: broker's message limit (1 MB by default) once its placeholders are filled.
MAX_PAYLOAD_BYTES = 16 * 1024

#: Triggers kept per user for the profile ("last triggers").
LAST_TRIGGERS = 5


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"24h"``, ``"3d"`` or ``"2w"``.

    >>> parse_duration("1.5h"), parse_duration("3d")
    (5400.0, 259200.0)
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 3d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def known_attribute(name: str) -> bool:
    return name in ATTRIBUTES or name.startswith(_OPEN_TABLES)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Then(_Table):
    action: str = Field(min_length=1, max_length=128)
    payload: dict[str, Any] = {}


class _Absence(_Table):
    after: list[str] = Field(min_length=1)
    unless: list[str] = Field(min_length=1)
    within: str
    match: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,64}$")

    @field_validator("after", "unless", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class _Rule(_Table):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    when: list[str] = []
    if_: dict[str, Any] = Field(default={}, alias="if")
    absence: _Absence | None = None
    then: _Then
    priority: int = 0
    cooldown: str | None = None
    max_fires: int | None = Field(default=None, ge=1)
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("when", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class _File(_Table):
    rules: list[dict[str, Any]] = []


@dataclass(frozen=True, slots=True)
class Absence:
    """Fire ``within`` seconds after an ``after`` kind unless an ``unless`` kind came;
    with ``match`` (an event property), per value: "viewed feature X, never used X"."""

    rule_id: str
    after: frozenset[str]
    unless: frozenset[str]
    within_s: float
    match: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    triggers: tuple[str, ...]
    condition: Mapping[str, Any]
    action: str
    payload: Mapping[str, Any]
    priority: int = 0
    order: int = 0  # place in the file: breaks priority ties
    cooldown_s: float | None = None
    max_fires: int | None = None
    holdout: float = 0.0
    absence: Absence | None = None
    description: str = ""
    reads: tuple[str, ...] = ()  # attributes the condition reads (for explanations)
    #: The condition, prepared once (it runs per event).
    test: Predicate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", compile_condition(self.condition))

    @property
    def precedence(self) -> tuple[int, int]:
        return (-self.priority, self.order)

    def render(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """The payload with ``{attribute}`` placeholders filled (no code runs)."""
        rendered = _render(self.payload, attributes)
        assert isinstance(rendered, dict)
        return rendered

    def limits(self) -> bool:
        """Whether something besides the condition can stop it (so it shadows nothing)."""
        return bool(self.cooldown_s or self.max_fires or self.holdout)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The winning rule for one trigger of a cause, and what was passed over first."""

    rule: Rule
    trigger: str
    held_out: bool
    passed_over: tuple[tuple[str, str], ...] = ()  # (rule id, why not)

    def explanation(self, attributes: Mapping[str, Any]) -> str:
        rule, absence = self.rule, self.rule.absence
        text = f"rule {rule.id} (priority {rule.priority})"
        if absence is None:
            text += f" on {self.trigger}"
        else:
            same = ""
            if absence.match:
                value = get_path(attributes, f"event.properties.{absence.match}")
                same = f" with {absence.match}={_show(value)}"
            text += (
                f": no {'/'.join(sorted(absence.unless))}{same} within"
                f" {absence.within_s / 3600:g} h of {'/'.join(sorted(absence.after))}"
            )
        if rule.reads:
            shown = ", ".join(f"{name}={_show(get_path(attributes, name))}" for name in rule.reads)
            text += f": {shown}"
        else:
            text += ": no condition"
        if self.passed_over:
            text += "; passed over " + ", ".join(f"{i} ({why})" for i, why in self.passed_over)
        if self.held_out:
            text += f"; held out ({rule.holdout:.0%} of users)"
        return text


#: Per user and rule: (times fired, event time of the last fire in epoch seconds).
Fired = dict[str, tuple[int, float]]


@dataclass(frozen=True)
class RuleBook:
    rules: tuple[Rule, ...] = ()
    _index: dict[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    _by_id: dict[str, Rule] = field(init=False, repr=False, compare=False)
    _triggers: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for trigger in rule.triggers:
                index.setdefault(trigger, []).append(rule)
        ordered = {t: tuple(sorted(rs, key=lambda r: r.precedence)) for t, rs in index.items()}
        object.__setattr__(self, "_index", ordered)
        object.__setattr__(self, "_by_id", {rule.id: rule for rule in self.rules})
        object.__setattr__(self, "_triggers", frozenset(ordered))

    @property
    def triggers(self) -> frozenset[str]:
        """Every trigger some rule listens to."""
        return self._triggers

    def absences(self) -> tuple[Absence, ...]:
        return tuple(rule.absence for rule in self.rules if rule.absence is not None)

    def absence_match(self, rule_id: str) -> str:
        """The event property an absence rule pairs its events by ("" if none)."""
        rule = self._by_id.get(rule_id)
        return (rule.absence.match or "") if rule is not None and rule.absence else ""

    def last_sent(self, fired: Fired, user_id: str) -> list[tuple[Rule, float]]:
        """The user's newest sent triggers, oldest first: each rule's last fire (held out
        ones were not sent), at most ``LAST_TRIGGERS``."""
        sent = [
            (at, rule)
            for rule_id, (_, at) in fired.items()
            if (rule := self._by_id.get(rule_id)) is not None
            and not (rule.holdout and _held_out(rule, user_id))
        ]
        sent.sort(key=lambda item: (item[0], item[1].id))
        return [(rule, at) for at, rule in sent[-LAST_TRIGGERS:]]

    def candidates(self, trigger: str) -> tuple[Rule, ...]:
        return self._index.get(trigger, ())

    def evaluate(
        self,
        triggers: Iterable[str],
        attributes: Callable[[], Mapping[str, Any]],
        fired: Fired,
        *,
        at: float,
        user_id: str,
    ) -> list[Verdict]:
        """The winners for ``triggers`` of one cause (each rule at most once); ``fired``
        is the user's history, updated for the winners. ``attributes`` is called only if
        some rule listens (building them costs a feature vector)."""
        verdicts: list[Verdict] = []
        known: Mapping[str, Any] | None = None
        won: set[str] = set()
        for trigger in triggers:
            candidates = self._index.get(trigger)
            if not candidates:
                continue
            if known is None:
                known = attributes()
            passed: list[tuple[str, str]] = []
            for rule in candidates:
                if rule.id in won:
                    continue
                why = _blocked(rule, fired.get(rule.id), at)
                if why is None and not rule.test(known):
                    why = "condition false"
                if why is not None:
                    passed.append((rule.id, why))
                    continue
                count = fired.get(rule.id, (0, 0.0))[0]
                fired[rule.id] = (count + 1, at)
                won.add(rule.id)
                held = bool(rule.holdout) and _held_out(rule, user_id)
                verdicts.append(Verdict(rule, trigger, held, tuple(passed)))
                break
        return verdicts

    @classmethod
    def load(
        cls,
        file: Path = CONFIG_DIR / "rules.toml",
        *,
        inactivity_hours: Iterable[int] = (24, 72, 168),
        traits: Iterable[str] | None = None,
        text: str | None = None,
    ) -> RuleBook:
        """``traits``: the traits profiles keep; ``trait.<other>`` is then a problem;
        ``text``: the file's content, already read."""
        data = read_toml(file, text)
        try:
            return cls.from_data(data, inactivity_hours=inactivity_hours, traits=traits)
        except MappingError as exc:
            raise MappingError(f"{file}: {exc}") from None

    @classmethod
    def parse(cls, text: str, *, inactivity_hours: Iterable[int] = (24, 72, 168)) -> RuleBook:
        """Rules from TOML text; ``MappingError`` names every problem found, by rule id."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MappingError(f"not valid TOML: {exc}") from exc
        return cls.from_data(data, inactivity_hours=inactivity_hours)

    @classmethod
    def from_data(
        cls,
        data: dict[str, Any],
        *,
        inactivity_hours: Iterable[int] = (24, 72, 168),
        traits: Iterable[str] | None = None,
    ) -> RuleBook:
        """Rules from a parsed file; ``MappingError`` names every problem, by rule id."""
        problems: list[str] = []
        try:
            tables = _File.model_validate(data).rules
        except ValidationError as exc:
            raise MappingError(_pydantic_problems(exc, "")) from None
        hours = frozenset(inactivity_hours)
        rules: list[Rule] = []
        seen: set[str] = set()
        for order, table in enumerate(tables, start=1):
            where = f"rules[{order}]" + (
                f" ({table['id']})" if isinstance(table.get("id"), str) else ""
            )
            try:
                spec = _Rule.model_validate(table)
            except ValidationError as exc:
                problems.append(_pydantic_problems(exc, where))
                continue
            where = f"rule {spec.id}"
            if spec.id in seen:
                problems.append(f"{where}: the id is used twice")
            seen.add(spec.id)
            rule, found = _compile(spec, order, hours)
            if traits is not None:
                found += _trait_problems(spec, frozenset(traits))
            problems += [f"{where}: {p}" for p in found]
            if rule is not None:
                rules.append(rule)
        if not problems:
            problems = overlap_problems(rules)
        if problems:
            raise MappingError("; ".join(problems))
        return cls(tuple(rules))


def _trait_problems(spec: _Rule, kept: frozenset[str]) -> list[str]:
    """``trait.<name>`` for a trait profiles do not keep would never hold a value."""
    problems = []
    places = (
        ("if", condition_fields(spec.if_)),
        ("then.payload", _placeholders(spec.then.payload)),
    )
    for where, names in places:
        for name in sorted(set(names)):
            trait = name.removeprefix("trait.")
            if name.startswith("trait.") and trait not in kept:
                problems.append(
                    f"{where}: unknown trait {trait!r} (profiles keep: "
                    f"{', '.join(sorted(kept))}; add it to [profile] traits)"
                )
    return problems


def _compile(spec: _Rule, order: int, hours: frozenset[int]) -> tuple[Rule | None, list[str]]:
    problems: list[str] = []
    absence = None
    if spec.absence is not None:
        if spec.when:
            problems.append("give either when or absence, not both")
        for name in ("after", "unless"):
            unknown = [k for k in getattr(spec.absence, name) if k not in CANONICAL_KINDS]
            if unknown:
                problems.append(f"absence.{name}: unknown event kind(s): {', '.join(unknown)}")
        try:
            within = parse_duration(spec.absence.within)
        except ValueError as exc:
            problems.append(f"absence.within: {exc}")
            within = 0.0
        absence = Absence(
            spec.id,
            frozenset(spec.absence.after),
            frozenset(spec.absence.unless),
            within,
            spec.absence.match,
        )
        triggers: tuple[str, ...] = (f"absence:{spec.id}",)
    elif not spec.when:
        problems.append("when: list at least one trigger (or give an absence pattern)")
        triggers = ()
    else:
        triggers = tuple(dict.fromkeys(spec.when))
        for trigger in triggers:
            problem = _trigger_problem(trigger, hours)
            if problem:
                problems.append(f"when: {problem}")
    problems += [f"if.{p}" for p in condition_problems(spec.if_)]
    reads = tuple(sorted(condition_fields(spec.if_)))
    problems += [f"if: unknown attribute {name}" for name in reads if not known_attribute(name)]
    size = len(orjson.dumps(spec.then.payload))
    if size > MAX_PAYLOAD_BYTES:
        problems.append(f"then.payload: {size} bytes, at most {MAX_PAYLOAD_BYTES}")
    for name in sorted(set(_placeholders(spec.then.payload))):
        if not known_attribute(name):
            problems.append(f"then.payload: unknown attribute {{{name}}}")
    cooldown = None
    if spec.cooldown is not None:
        try:
            cooldown = parse_duration(spec.cooldown)
        except ValueError as exc:
            problems.append(f"cooldown: {exc}")
    if problems:
        return None, problems
    rule = Rule(
        id=spec.id,
        triggers=triggers,
        condition=spec.if_,
        action=spec.then.action,
        payload=spec.then.payload,
        priority=spec.priority,
        order=order,
        cooldown_s=cooldown,
        max_fires=spec.max_fires,
        holdout=spec.holdout,
        absence=absence,
        description=spec.description,
        reads=reads,
    )
    return rule, []


def _trigger_problem(trigger: str, hours: frozenset[int]) -> str | None:
    if trigger in CANONICAL_KINDS or trigger in DECISION_TRIGGERS:
        return None
    timer = _TIMER_TRIGGER.match(trigger)
    if timer is None:
        return (
            f"unknown trigger {trigger!r} (an event kind, segment_changed, risk_band_changed, "
            "path_changed, decision_point, timer:session_end, timer:inactive_<H>h, timer:idle)"
        )
    if timer.group(2) is not None and int(timer.group(2)) not in hours:
        configured = ", ".join(f"inactive_{h}h" for h in sorted(hours))
        return f"{trigger}: no such inactivity timer (configured: {configured})"
    return None


def overlap_problems(rules: Iterable[Rule]) -> list[str]:
    """Rules that can never win, and pairs whose winner would be down to file order.

    Indexed, not every pair: a rule is shadowed only by an earlier unlimited rule whose
    condition is a subset of its clauses (looked up per subset) on all its triggers; a
    conflict needs the same trigger and priority and conditions that can both hold, and
    rules with different equality values on a field they share cannot (bucketed).
    """
    ordered = sorted(rules, key=lambda r: r.precedence)
    problems: list[str] = []
    by_condition: dict[frozenset[tuple[str, str]], list[Rule]] = {}
    groups: dict[tuple[str, int], _Group] = {}
    for rule in ordered:
        clauses = _clauses(rule.condition)
        shadow = _shadow(rule, clauses, by_condition)
        if shadow is not None:
            problems.append(
                f"rule {rule.id}: never fires, rule {shadow.id} (priority {shadow.priority}) "
                f"wins on the same triggers whenever its condition holds"
            )
        if not rule.limits():
            by_condition.setdefault(clauses, []).append(rule)
        conflicts: dict[str, tuple[Rule, list[str]]] = {}  # other's id -> it, triggers shared
        for trigger in rule.triggers:
            group = groups.setdefault((trigger, rule.priority), _Group())
            if shadow is None:
                for other in group.overlapping(rule):
                    if other.action != rule.action and not _disjoint(
                        rule.condition, other.condition
                    ):
                        conflicts.setdefault(other.id, (other, []))[1].append(trigger)
            group.add(rule)
        for other, shared in sorted(conflicts.values(), key=lambda item: item[0].precedence):
            problems.append(
                f"rule {rule.id}: conflicts with rule {other.id} on {', '.join(sorted(shared))} "
                f"(same priority {rule.priority}, different actions, conditions can both "
                "hold): give one a higher priority or make the conditions exclusive"
            )
    return problems


def _clauses(condition: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset((key, _canonical(value)) for key, value in condition.items())


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _shadow(
    rule: Rule,
    clauses: frozenset[tuple[str, str]],
    by_condition: dict[frozenset[tuple[str, str]], list[Rule]],
) -> Rule | None:
    """The earliest unlimited rule before ``rule`` on all its triggers whose condition's
    clauses are all among ``rule``'s (so it holds whenever ``rule``'s does)."""
    items = sorted(clauses)
    if len(items) > 12:  # 4,096 subsets at most; beyond, the plain scan is cheaper
        candidates = [
            r
            for group in by_condition.values()
            for r in group
            if r.condition.items() <= rule.condition.items()
        ]
    else:
        candidates = [
            r
            for size in range(len(items) + 1)
            for subset in itertools.combinations(items, size)
            for r in by_condition.get(frozenset(subset), ())
        ]
    triggers = set(rule.triggers)
    found = [r for r in candidates if triggers <= set(r.triggers)]
    return min(found, key=lambda r: r.precedence) if found else None


class _Group:
    """The rules so far on one trigger at one priority, bucketed by their equality
    clauses: a rule with ``plan == "pro"`` needs comparing only with rules that say
    ``plan == "pro"`` or say nothing of plan by equality."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.equal: dict[str, dict[str, list[Rule]]] = {}  # key -> value -> rules
        self.lacking: dict[str, list[Rule]] = {}  # key -> rules without an equality on it
        self.eqs: dict[str, dict[str, str]] = {}  # rule id -> its equality clauses

    def overlapping(self, rule: Rule) -> list[Rule]:
        """The rules whose equality clauses do not rule out ``rule``'s."""
        equal = _equalities(rule)
        known = [key for key in equal if key in self.equal]
        if not known:
            return self.rules
        key = min(known, key=lambda k: len(self.equal[k].get(equal[k], ())) + len(self.lacking[k]))
        candidates = [*self.equal[key].get(equal[key], ()), *self.lacking[key]]
        return [
            other
            for other in candidates
            if all(self.eqs[other.id].get(k, v) == v for k, v in equal.items())
        ]

    def add(self, rule: Rule) -> None:
        equal = self.eqs[rule.id] = _equalities(rule)
        for key in equal.keys() - self.equal.keys():  # a new key: who said nothing of it
            self.equal[key] = {}
            self.lacking[key] = list(self.rules)
        for key, buckets in self.equal.items():
            if key in equal:
                buckets.setdefault(equal[key], []).append(rule)
            else:
                self.lacking[key].append(rule)
        self.rules.append(rule)


def _equalities(rule: Rule) -> dict[str, str]:
    return {k: _canonical(v) for k, v in rule.condition.items() if not isinstance(v, dict)}


def _implies(condition: Mapping[str, Any], weaker: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holding means ``weaker`` holds (judged by its clauses)."""
    return all(key in condition and condition[key] == value for key, value in weaker.items())


def _disjoint(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two conditions can never both hold (judged field by field)."""
    for key in a.keys() & b.keys():
        if key.startswith("$"):
            continue
        left, right = _allowed(a[key]), _allowed(b[key])
        if left is None or right is None:
            continue
        (values_a, low_a, high_a), (values_b, low_b, high_b) = left, right
        if values_a is not None and values_b is not None and not values_a & values_b:
            return True
        for values, low, high in ((values_a, low_b, high_b), (values_b, low_a, high_a)):
            if values is not None and all(
                isinstance(v, int | float) and not low <= v <= high for v in values
            ):
                return True
        if max(low_a, low_b) > min(high_a, high_b):
            return True
    return False


_Range = tuple[frozenset[Any] | None, float, float]


def _allowed(value: Any) -> _Range | None:
    """The values (a set) or numeric range a field's condition admits; None if unsure."""
    inf = float("inf")
    if not isinstance(value, Mapping):
        return (frozenset([value]), -inf, inf) if _hashable(value) else None
    values: frozenset[Any] | None = None
    low, high = -inf, inf
    for op, arg in value.items():
        if op == "$eq" and _hashable(arg):
            values = frozenset([arg])
        elif op == "$in" and isinstance(arg, list) and all(map(_hashable, arg)):
            values = frozenset(arg)
        elif op in ("$gt", "$gte") and isinstance(arg, int | float):
            low = max(low, float(arg) + (1e-9 if op == "$gt" else 0.0))
        elif op in ("$lt", "$lte") and isinstance(arg, int | float):
            high = min(high, float(arg) - (1e-9 if op == "$lt" else 0.0))
        elif not op.startswith("$"):
            return None
    return values, low, high


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _blocked(rule: Rule, history: tuple[int, float] | None, at: float) -> str | None:
    if history is None:
        return None
    count, last = history
    if rule.max_fires is not None and count >= rule.max_fires:
        return f"fired {count}x, the cap"
    if rule.cooldown_s is not None and at - last < rule.cooldown_s:
        return "cooling down"
    return None


def _held_out(rule: Rule, user_id: str) -> bool:
    n = gb_hash(f"holdout:{rule.id}", user_id, 2)
    return n is not None and n < rule.holdout


def _placeholders(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from _PLACEHOLDER.findall(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


def _render(value: Any, attributes: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:  # a lone placeholder keeps the attribute's type
            return get_path(attributes, whole.group(1))
        return _PLACEHOLDER.sub(lambda m: _text(get_path(attributes, m.group(1))), value)
    if isinstance(value, Mapping):
        return {key: _render(item, attributes) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, attributes) for item in value]
    return value


def _text(value: Any) -> str:
    return "" if value is None else _show(value)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pydantic_problems(exc: ValidationError, where: str) -> str:
    parts = []
    for error in exc.errors():
        field_name = ".".join(str(part) for part in error["loc"])
        problem = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}{'.' if where and field_name else ''}{field_name}: {problem}")
    return "; ".join(parts)
