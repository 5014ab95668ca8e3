"""Trigger rules: the shipped file, each validation error by name, winners, cooldowns,
caps, holdouts, payload templates, and absence patterns firing from timer shards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstmile.operators.errors import MappingError
from firstmile.operators.rules import Rule, RuleBook, parse_duration
from firstmile.operators.timers import MATCHED_PER_RULE, TimerSettings, TimerShard

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def rule(body: str, rule_id: str = "r1") -> str:
    return f'[[rules]]\nid = "{rule_id}"\n{body}\n'


THEN = 'then = { action = "a" }'


def test_the_shipped_rules_load() -> None:
    book = RuleBook.load()
    assert {r.id for r in book.rules} >= {"engaged-newcomer", "stalled-step", "retention-offer"}
    assert {a.rule_id for a in book.absences()} == {
        "first-feature-nudge",
        "viewed-not-used",
        "stalled-step",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]]\nid = 'x'\n", "rules[1] (x).then: Field required"),
        (rule(f'when = "signup"\n{THEN}\nshout = 1'), "rules[1] (r1).shout: unknown field"),
        (
            rule('when = "signup"\nthen = { action = "a", extra = 1 }'),
            "then.extra: unknown field",
        ),
        (
            rule(f'when = "signup"\n{THEN}\npriority = "high"'),
            "priority: Input should be a valid integer",
        ),
        (rule(f'when = "signup"\n{THEN}\nholdout = 1.5'), "holdout: Input should be less than 1"),
        (
            rule(f'when = "signup"\n{THEN}\nmax_fires = 0'),
            "max_fires: Input should be greater than or equal to 1",
        ),
        (rule(f'when = "sign-up"\n{THEN}'), "rule r1: when: unknown trigger 'sign-up'"),
        (
            rule(f'when = "timer:inactive_5h"\n{THEN}'),
            "timer:inactive_5h: no such inactivity timer",
        ),
        (rule(THEN), "rule r1: when: list at least one trigger"),
        (
            rule(f'when = "signup"\nif = {{ plan = {{ "$inn" = ["pro"] }} }}\n{THEN}'),
            "rule r1: if.plan: unknown operator $inn",
        ),
        (
            rule(f'when = "signup"\nif = {{ "trait.role" = {{ "$regex" = "(" }} }}\n{THEN}'),
            "rule r1: if.trait.role: $regex pattern does not compile: (",
        ),
        (
            rule(f'when = "signup"\nif = {{ enagement = 1 }}\n{THEN}'),
            "rule r1: if: unknown attribute enagement",
        ),
        (
            rule('when = "signup"\nthen = { action = "a", payload = { x = "{segmnt}" } }'),
            "rule r1: then.payload: unknown attribute {segmnt}",
        ),
        (rule(f'when = "signup"\n{THEN}\ncooldown = "soon"'), "rule r1: cooldown: not a duration"),
        (
            rule(
                f'absence = {{ after = "signup", unless = "feature_use", within = "1d" }}\n{THEN}'
            ),
            "rule r1: absence.unless: unknown event kind(s): feature_use",
        ),
        (
            rule(
                'absence = { after = "signup", unless = "feature_used", '
                f'within = "1 day" }}\n{THEN}'
            ),
            "rule r1: absence.within: not a duration",
        ),
        (
            rule(
                'when = "signup"\nabsence = { after = "signup", unless = "purchase", '
                f'within = "1d" }}\n{THEN}'
            ),
            "rule r1: give either when or absence, not both",
        ),
        (
            rule(
                'absence = { after = "feature_viewed", unless = "feature_used", '
                f'within = "1d", match = "the feature" }}\n{THEN}'
            ),
            "rules[1] (r1).absence.match: String should match pattern",
        ),
        (rule(f'when = "signup"\n{THEN}') * 2, "rule r1: the id is used twice"),
        (
            rule(f'when = "signup"\n{THEN}', "a")
            + rule(f'when = "signup"\nif = {{ "trait.plan" = "pro" }}\n{THEN}', "b"),
            "rule b: never fires, rule a (priority 0) wins on the same triggers",
        ),
        (
            rule(
                'when = ["signup", "purchase"]\nif = { "trait.plan" = "pro" }\n'
                f"priority = 5\n{THEN}",
                "a",
            )
            + rule(
                f'when = "purchase"\nif = {{ "trait.plan" = "pro", is_mobile = 1 }}\n{THEN}', "b"
            ),
            "rule b: never fires, rule a (priority 5)",
        ),
        (
            rule(f'when = "signup"\nif = {{ is_mobile = 1 }}\n{THEN}', "a")
            + rule('when = "signup"\nif = { churn_band = "high" }\nthen = { action = "b" }', "b"),
            "rule b: conflicts with rule a on signup (same priority 0, different actions",
        ),
        (
            rule(f'when = "signup"\nif = {{ engagement = {{ "$gte" = 0.5 }} }}\n{THEN}', "a")
            + rule(
                'when = "signup"\nif = { engagement = { "$gt" = 0.2 } }\nthen = { action = "b" }',
                "b",
            ),
            "rule b: conflicts with rule a",
        ),
        (
            rule(
                'when = "signup"\nthen = { action = "a", payload = { text = "'
                + "x" * 20_000
                + '" } }'
            ),
            "rule r1: then.payload: 20011 bytes, at most 16384",
        ),
        ("rules = 3", "rules: Input should be a valid list"),
        ("[[rules]\n", "not valid TOML"),
    ],
)
def test_each_problem_is_named(text: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        RuleBook.parse(text)
    assert message in str(caught.value)


def test_exclusive_or_limited_rules_are_neither_shadowed_nor_conflicting() -> None:
    text = (
        rule(f'when = "signup"\nif = {{ churn_band = "high" }}\n{THEN}', "a")
        + rule('when = "signup"\nif = { churn_band = "low" }\nthen = { action = "b" }', "b")
        + rule(
            'when = "signup"\nif = { engagement = { "$lt" = 0.2 } }\n'
            'then = { action = "c" }\npriority = 1',
            "c",
        )
        + rule(
            'when = "signup"\nif = { engagement = { "$gte" = 0.2 } }\n'
            'then = { action = "d" }\npriority = 1',
            "d",
        )
        + rule('when = "purchase"\nthen = { action = "e" }\nmax_fires = 1\npriority = 9', "e")
        + rule('when = "purchase"\nthen = { action = "f" }', "f")
    )
    assert [r.id for r in RuleBook.parse(text).rules] == list("abcdef")


def test_a_file_that_is_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"nothing\.toml: cannot read"):
        RuleBook.load(tmp_path / "nothing.toml")


def test_the_highest_priority_match_wins_and_the_rest_are_explained() -> None:
    book = RuleBook.parse(
        rule(
            'when = "signup"\nif = { churn_band = "high" }\n'
            'then = { action = "offer" }\npriority = 9',
            "offer",
        )
        + rule(
            'when = "signup"\nif = { is_mobile = 1 }\nthen = { action = "mobile" }\npriority = 5',
            "mobile",
        )
        + rule('when = ["signup", "segment_changed"]\nthen = { action = "any" }', "any")
    )
    attributes = {"churn_band": "low", "is_mobile": 1.0}
    fired: dict[str, tuple[int, float]] = {}
    verdicts = book.evaluate(
        ["signup", "segment_changed"], lambda: attributes, fired, at=0.0, user_id="u"
    )
    assert [(v.rule.id, v.trigger) for v in verdicts] == [
        ("mobile", "signup"),
        ("any", "segment_changed"),
    ]
    explanation = verdicts[0].explanation(attributes)
    assert (
        explanation
        == "rule mobile (priority 5) on signup: is_mobile=1; passed over offer (condition false)"
    )
    assert fired == {"mobile": (1, 0.0), "any": (1, 0.0)}


def test_cooldown_cap_and_attributes_built_only_when_someone_listens() -> None:
    book = RuleBook.parse(
        rule('when = "purchase"\nthen = { action = "thanks" }\ncooldown = "1h"\nmax_fires = 2')
    )
    calls = []

    def attributes() -> dict[str, float]:
        calls.append(1)
        return {}

    fired: dict[str, tuple[int, float]] = {}
    fires = [
        bool(book.evaluate(["purchase"], attributes, fired, at=at, user_id="u"))
        for at in (0.0, 1800.0, 3600.0, 9000.0)
    ]
    assert fires == [True, False, True, False]  # cooling down, then the cap of 2
    assert book.evaluate(["page_view"], attributes, fired, at=0.0, user_id="u") == []
    assert len(calls) == 4


def test_holdout_is_a_stable_share_of_users() -> None:
    book = RuleBook.parse(rule('when = "signup"\nthen = { action = "a" }\nholdout = 0.2'))
    held = [
        book.evaluate(["signup"], dict, {}, at=0.0, user_id=f"user-{i}")[0].held_out
        for i in range(2000)
    ]
    assert 0.17 < sum(held) / len(held) < 0.23
    again = [
        book.evaluate(["signup"], dict, {}, at=0.0, user_id=f"user-{i}")[0].held_out
        for i in range(2000)
    ]
    assert held == again


def test_last_sent_triggers_leave_out_held_out_users() -> None:
    book = RuleBook.parse(
        rule('when = "signup"\nthen = { action = "a" }\nholdout = 0.5', "half")
        + rule('when = "purchase"\nthen = { action = "b" }', "all")
    )
    fired = {"half": (1, 10.0), "all": (3, 5.0)}
    users = [f"user-{i}" for i in range(400)]
    held = [u for u in users if book.evaluate(["signup"], dict, {}, at=0.0, user_id=u)[0].held_out]
    assert 150 < len(held) < 250
    assert [(r.id, at) for r, at in book.last_sent(fired, held[0])] == [("all", 5.0)]
    kept = next(u for u in users if u not in held)
    assert [(r.id, at) for r, at in book.last_sent(fired, kept)] == [("all", 5.0), ("half", 10.0)]


def test_payload_templates_fill_attributes_without_running_code() -> None:
    book = RuleBook.parse(
        rule(
            'when = "signup"\nthen = { action = "a", payload = { risk = "{churn_risk}", '
            'text = "Hi {trait.role}, {trait.missing}!", nested = ["{segment}"], n = 3 } }'
        )
    )
    attributes = {"churn_risk": 0.25, "trait": {"role": "admin"}, "segment": "s1"}
    assert book.rules[0].render(attributes) == {
        "risk": 0.25,
        "text": "Hi admin, !",
        "nested": ["s1"],
        "n": 3,
    }


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("2w") == 14 * 86400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 fortnights")


def shard_with(book: RuleBook) -> TimerShard:
    return TimerShard(TimerSettings(allowed_lateness=timedelta(0), absences=book.absences()))


ABSENCE = rule(
    'absence = { after = "onboarding_step_viewed", unless = ["onboarding_step_completed"], '
    'within = "24h" }\nthen = { action = "walkthrough" }',
    "stalled",
)


def deadlines(ticks: list) -> list[tuple[str, str, datetime]]:
    return [(t.user_id, t.name, t.due) for t in ticks if t.kind == "deadline"]


def test_an_absence_fires_when_the_awaited_kind_never_comes() -> None:
    shard = shard_with(RuleBook.parse(ABSENCE))
    assert shard.observe("u1", T0, kind="onboarding_step_viewed") == []
    shard.observe("u1", T0 + timedelta(hours=2), kind="onboarding_step_viewed")  # not re-armed
    shard.observe("u2", T0 + timedelta(hours=1), kind="onboarding_step_viewed")
    shard.observe("u2", T0 + timedelta(hours=5), kind="onboarding_step_completed")  # cancels
    fired = shard.observe("u3", T0 + timedelta(hours=30), kind="page_view")
    assert deadlines(fired) == [("u1", "absence:stalled", T0 + timedelta(hours=24))]
    assert deadlines(shard.finish()) == []
    (verdict,) = RuleBook.parse(ABSENCE).evaluate(
        ["absence:stalled"], dict, {}, at=0.0, user_id="u1"
    )
    assert verdict.explanation({}) == (
        "rule stalled (priority 0): no onboarding_step_completed within 24 h of "
        "onboarding_step_viewed: no condition"
    )


def test_an_awaited_event_after_the_deadline_comes_too_late() -> None:
    shard = shard_with(RuleBook.parse(ABSENCE))
    shard.observe("u1", T0, kind="onboarding_step_viewed")
    # The user's own late completion proves their deadline passed: it fires first.
    fired = shard.observe("u1", T0 + timedelta(hours=25), kind="onboarding_step_completed")
    assert deadlines(fired) == [("u1", "absence:stalled", T0 + timedelta(hours=24))]


def test_absences_fire_on_a_fake_clock_when_live_and_survive_a_restore() -> None:
    settings = TimerSettings(
        allowed_lateness=timedelta(minutes=5),
        wall_clock=True,
        absences=RuleBook.parse(ABSENCE).absences(),
    )
    shard = TimerShard(settings)
    shard.observe("u1", T0, now=T0 + timedelta(seconds=1), kind="onboarding_step_viewed")
    shard = TimerShard.restore(settings, shard.state())  # a crash and a restart
    clock = T0
    fired: list[tuple[str, str, datetime]] = []
    while clock < T0 + timedelta(hours=26) and not fired:
        clock += timedelta(minutes=1)
        fired = deadlines(shard.advance(clock))
    assert fired == [("u1", "absence:stalled", T0 + timedelta(hours=24))]
    assert T0 + timedelta(hours=24, minutes=5) <= clock < T0 + timedelta(hours=24, minutes=7)


MATCHED = rule(
    'absence = { after = "feature_viewed", unless = "feature_used", within = "1d", '
    'match = "feature" }\n'
    'then = { action = "nudge", payload = { try = "{event.properties.feature}" } }',
    "unused",
)


def test_a_matched_absence_watches_each_value_on_its_own() -> None:
    shard = shard_with(RuleBook.parse(MATCHED))
    shard.observe("u1", T0, kind="feature_viewed", properties={"feature": "reports"})
    shard.observe(
        "u1", T0 + timedelta(hours=1), kind="feature_viewed", properties={"feature": "export"}
    )
    shard.observe("u1", T0 + timedelta(hours=2), kind="feature_viewed")  # which? nothing to watch
    # Using another feature settles nothing; using the one viewed does.
    shard.observe(
        "u1", T0 + timedelta(hours=3), kind="feature_used", properties={"feature": "search"}
    )
    shard.observe(
        "u1", T0 + timedelta(hours=4), kind="feature_used", properties={"feature": "reports"}
    )
    fired = shard.observe("u2", T0 + timedelta(days=2), kind="page_view")
    assert deadlines(fired) == [("u1", "absence:unused:export", T0 + timedelta(hours=25))]
    # At most MATCHED_PER_RULE values at once per user: state stays bounded.
    for i in range(MATCHED_PER_RULE + 3):
        shard.observe(
            "u3", T0 + timedelta(days=3), kind="feature_viewed", properties={"feature": f"f{i}"}
        )
    assert len(shard.deadlines["u3"]) == MATCHED_PER_RULE


def test_a_matched_absence_names_the_value_in_its_trigger() -> None:
    book = RuleBook.parse(MATCHED)
    (verdict,) = book.evaluate(["absence:unused"], dict, {}, at=0.0, user_id="u1")
    cause = {"event": {"kind": "absence", "name": "unused", "properties": {"feature": "export"}}}
    assert verdict.rule.render(cause) == {"try": "export"}
    assert verdict.explanation(cause) == (
        "rule unused (priority 0): no feature_used with feature=export within 24 h of "
        "feature_viewed: no condition"
    )
    assert book.absence_match("unused") == "feature" and book.absence_match("other") == ""


def test_outcome_deadlines_follow_signup_and_erasure_forgets_them() -> None:
    settings = TimerSettings(allowed_lateness=timedelta(0), outcomes=(("activation", 3 * 86400.0),))
    shard = TimerShard(settings)
    shard.observe("u1", T0, signup=True, kind="signup")
    shard.observe("u2", T0, signup=True, kind="signup")
    shard.forget("u2")
    fired = shard.observe("u3", T0 + timedelta(days=4), kind="page_view")
    assert deadlines(fired) == [("u1", "outcome:activation", T0 + timedelta(days=3))]


def test_a_trait_profiles_do_not_keep_is_named_at_load(tmp_path: Path) -> None:
    """``trait.plna`` (a typo of plan) would never hold a value: it is refused at load."""
    file = tmp_path / "rules.toml"
    file.write_text(rule('when = "signup"\nif = { "trait.plna" = "pro" }\n' + THEN))
    with pytest.raises(MappingError, match=r"rule r1: if: unknown trait 'plna' \(profiles keep"):
        RuleBook.load(file, traits=("plan", "role"))
    file.write_text(rule('when = "signup"\nif = { "trait.plan" = "pro" }\n' + THEN))
    assert len(RuleBook.load(file, traits=("plan", "role")).rules) == 1


def _all_pairs(rules: list[Rule]) -> list[str]:
    """The definition, every pair compared: the oracle for the indexed check."""
    from firstmile.operators.rules import _disjoint, _implies

    ordered = sorted(rules, key=lambda r: r.precedence)
    problems = []
    for i, rule in enumerate(ordered):
        shadow = next(
            (
                s
                for s in ordered[:i]
                if set(rule.triggers) <= set(s.triggers)
                and not s.limits()
                and _implies(rule.condition, s.condition)
            ),
            None,
        )
        if shadow is not None:
            problems.append(f"rule {rule.id}: never fires, rule {shadow.id}")
            continue
        for other in ordered[:i]:
            shared = sorted(set(rule.triggers) & set(other.triggers))
            if (
                shared
                and other.priority == rule.priority
                and other.action != rule.action
                and not _disjoint(rule.condition, other.condition)
            ):
                problems.append(
                    f"rule {rule.id}: conflicts with rule {other.id} on {', '.join(shared)}"
                )
    return problems


_values = st.sampled_from([1, 2, "pro", {"$gte": 2}, {"$in": [1, "pro"]}])
_rules = st.lists(
    st.tuples(
        st.sets(st.sampled_from(["signup", "purchase", "decision_point"]), min_size=1),
        st.dictionaries(st.sampled_from(["engagement", "trait.plan", "is_mobile"]), _values),
        st.sampled_from(["a", "b"]),
        st.sampled_from([0, 1]),
        st.booleans(),
    ),
    max_size=12,
)


@given(_rules)
@settings(max_examples=300, deadline=None)
def test_the_indexed_overlap_check_finds_what_comparing_every_pair_finds(specs: list) -> None:  # type: ignore[type-arg]
    from firstmile.operators.rules import overlap_problems

    rules = [
        Rule(f"r{i}", tuple(sorted(t)), c, a, {}, priority=p, order=i, max_fires=1 if lim else None)
        for i, (t, c, a, p, lim) in enumerate(specs)
    ]
    found = [p.split(" (")[0].replace(" wins", "") for p in overlap_problems(rules)]
    assert [p.split(" wins")[0] for p in found] == _all_pairs(rules)
