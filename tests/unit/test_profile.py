"""The profile logic on hand-made events: sessions, windows, onboarding, traits, features."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstmile.online_models.population import PopulationLearner
from firstmile.operators.events import Event
from firstmile.operators.features import (
    FEATURE_NAMES,
    MIX_FEATURES,
    engagement,
    features,
    name_mix,
    profile_message,
)
from firstmile.operators.population import PopulationStats
from firstmile.operators.profile import (
    UserProfile,
    apply_event,
    compact,
    erase,
    mix_bucket,
    session_summary,
)
from firstmile.operators.sessions import MAX_RECENT, Sessions
from firstmile.operators.windows import Windows
from tests.helpers import validator

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
_ids = iter(range(10**9))


def event(minutes: float, kind: str = "page_view", **fields: Any) -> Event:
    return Event(
        f"m{next(_ids)}",
        fields.pop("type", "track"),
        kind,
        T0 + timedelta(minutes=minutes),
        fields.pop("user_id", "u1"),
        fields.pop("anonymous_id", "a1"),
        **fields,
    )


def feed(profile: UserProfile, *events: Event) -> UserProfile:
    for ev in events:
        apply_event(profile, ev, processed_at=T0)
    return profile


def test_sessions_split_on_the_inactivity_gap_and_close_with_time() -> None:
    profile = feed(UserProfile("u1"), event(0), event(10), event(41), event(200), event(215))
    assert session_summary(profile)[:3] == (3, 2, True)  # the newest is still open
    profile.as_of = T0 + timedelta(minutes=215 + 30)  # a session_end timer moved time on
    count, closed, is_open, mean = session_summary(profile)
    assert (count, closed, is_open) == (3, 3, False)
    assert mean == (10 * 60 + 0 + 15 * 60) / 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=40 * 3600), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_sessions_do_not_depend_on_arrival_order(times: list[int], rnd: random.Random) -> None:
    def sessions(order: list[int], keep: int) -> Sessions:
        kept = Sessions()
        for t in order:
            kept.add(t, 1800, keep)
        return kept

    shuffled = times[:]
    rnd.shuffle(shuffled)
    assert sessions(shuffled, 10_000).recent == sessions(sorted(times), 10_000).recent
    in_order, late = sessions(sorted(times), MAX_RECENT), sessions(shuffled, MAX_RECENT)
    if in_order.folded == late.folded == 0:  # within the kept horizon: the same sessions
        assert late.recent == in_order.recent
    assert in_order.summary(as_of=1e9, gap=1800)[1] == in_order.count()
    again = pickle.loads(pickle.dumps(late))
    assert (again.recent, again.folded, again.count()) == (late.recent, late.folded, late.count())


def test_sessions_load_from_a_snapshot_of_start_last_lists() -> None:
    """A snapshot written when the kept sessions were a list of [start, last] lists."""
    kept = Sessions.__new__(Sessions)
    kept.__setstate__(([[0.0, 600.0], [5000.0, 5000.0]], 2, 900.0))
    assert kept.count() == 4 and kept.newest_length() == 0.0
    assert kept.summary(as_of=9000.0, gap=1800) == (4, 4, False, (900.0 + 600.0) / 4)
    kept.add(5500.0, 1800)  # joins the newest
    assert list(kept.recent) == [0.0, 600.0, 5000.0, 5500.0]


@given(st.lists(st.integers(min_value=0, max_value=30 * 86_400), min_size=1, max_size=60))
def test_windows_count_what_a_brute_force_count_sees(offsets: list[int]) -> None:
    windows = Windows()
    for offset in offsets:
        windows.add(T0 + timedelta(seconds=offset))
    now = T0 + timedelta(seconds=max(offsets))
    got = windows.counts(now)

    def count(width: int, span: int) -> int:
        current = int(now.timestamp()) // width
        return sum(
            1
            for o in offsets
            if current - span < int((T0 + timedelta(seconds=o)).timestamp()) // width <= current
        )

    days = {int((T0 + timedelta(seconds=o)).timestamp()) // 86_400 for o in offsets}
    today = int(now.timestamp()) // 86_400
    assert got == (
        count(300, 12),
        count(3600, 24),
        count(86_400, 7),
        len([d for d in days if today - 7 < d <= today]),
    )
    assert pickle.loads(pickle.dumps(windows)).counts(now) == got  # a snapshot counts the same
    # a snapshot of the sparse maps of before (bucket -> count per window) loads the same
    old = Windows.__new__(Windows)
    old.__setstate__(_sparse(offsets))
    assert old.counts(now) == got


def _sparse(offsets: list[int]) -> tuple[dict[int, int], ...]:
    """The windows' state as the sparse maps of before wrote it: each window's buckets
    from its newest back, older ones pruned."""
    state = []
    for width, span in ((300, 12), (3600, 24), (86_400, 7)):
        indexes = [int((T0 + timedelta(seconds=o)).timestamp()) // width for o in offsets]
        buckets = Counter(i for i in indexes if i > max(indexes) - span)
        state.append(dict(buckets))
    return tuple(state)


def test_onboarding_progress_and_time_to_complete() -> None:
    profile = feed(
        UserProfile("u1"),
        event(0, "signup"),
        event(1, "onboarding_step_viewed", properties={"step": "welcome"}),
        event(2, "onboarding_step_completed", properties={"step": "welcome"}),
        event(3, "onboarding_step_viewed", properties={"step": "welcome"}),  # stays completed
        event(4, "onboarding_step_skipped", properties={"step": "profile"}),
        event(5, "onboarding_step_viewed", properties={"step": "connect_data"}),
    )
    onboarding = profile_message(profile, T0).value["onboarding"]  # type: ignore[index]
    assert onboarding["progress"] == 0.4  # 2 of the 5 default steps done (1 completed, 1 skipped)
    assert onboarding["steps_completed"] == ["welcome"]
    assert onboarding["steps_skipped"] == ["profile"]
    assert onboarding["steps_viewed"] == ["connect_data"]
    assert not onboarding["completed"] and onboarding["time_to_complete_h"] is None
    feed(profile, event(90, "onboarding_completed", properties={"step": "first_report"}))
    onboarding = profile_message(profile, T0).value["onboarding"]  # type: ignore[index]
    assert onboarding["completed"] and onboarding["progress"] == 1.0
    assert onboarding["time_to_complete_h"] == 1.5


def test_traits_keep_the_newest_by_event_time_and_only_configured_keys() -> None:
    profile = feed(
        UserProfile("u1"),
        event(10, "identify", type="identify", traits={"role": "Admin", "plan": "pro", "x": 1}),
        event(5, "identify", type="identify", traits={"role": "viewer"}),  # older, arrives late
    )
    assert profile.traits == {"role": "admin", "plan": "pro"}


def test_features_are_every_documented_name_as_floats() -> None:
    profile = feed(
        UserProfile("u1"),
        event(0, "signup"),
        event(1, "feature_used", properties={"feature": "reports"}, device="mobile"),
        event(2, "feature_used", properties={"feature": "reports"}),
        event(3, "purchase"),
    )
    vector = features(profile)
    assert tuple(vector) == FEATURE_NAMES
    assert all(isinstance(v, float) and math.isfinite(v) for v in vector.values())
    assert vector["features_distinct"] == 1 and vector["purchases"] == 1
    assert vector["events_1h"] == 4 and vector["is_mobile"] == 1
    assert vector["company_size_missing"] == 1 and vector["role_missing"] == 1
    # engagement: 0.35 * ln(5)/ln(101) + 0.25 * 1/7 + 0 + 0.20 * 1/5, as documented
    expected = 100 * (0.35 * math.log1p(4) / math.log(101) + 0.25 / 7 + 0.2 / 5)
    assert engagement(profile) == round(expected, 2) == vector["engagement"]


def test_missing_traits_are_imputed_from_the_population_and_flagged() -> None:
    learner = PopulationLearner()
    for size in (10.0, 30.0):
        learner.observe_traits({"company_size": size, "role": "admin"})
    population = learner.stats()
    profile = feed(UserProfile("u1"), event(0))
    vector = features(profile, population)
    assert vector["company_size_log"] == round(math.log1p(20.0), 4)
    assert vector["company_size_missing"] == 1 and vector["role_admin"] == 1
    message = profile_message(profile, T0, population=population).value
    assert message is not None and message["imputed"] == ["company_size", "role"]
    assert "role" in message["data_gaps"]


def test_durations_are_clipped_at_the_population_quantile() -> None:
    learner = PopulationLearner()
    for i in range(49):
        learner.observe_duration("session_s", float(60 + i % 10))
    assert learner.stats().clip("session_s", 10_000.0) == 10_000.0  # too few yet to tell
    for i in range(200):
        learner.observe_duration("session_s", float(60 + i % 10))
    population = learner.stats()
    assert population.clip("session_s", 10_000.0) < 100
    assert population.clip("session_s", 30.0) == 30.0


def test_profile_message_matches_its_schema() -> None:
    check = validator("profile")
    profile = feed(UserProfile("u1"), event(0, "signup"), event(1, country="SE", device="desktop"))
    check(profile_message(profile, T0).value)
    check(profile_message(UserProfile("u2", known=True, seq=1), T0).value)


def test_erase_keeps_nothing_but_the_erasure_and_continues_seq() -> None:
    profile = feed(UserProfile("u1"), event(0, "signup", traits={"role": "x"}))
    forgotten, tombstones = erase("u1", event(5, "user_erased"), seq=profile.seq)
    assert forgotten.seq == profile.seq + 1 and forgotten.erased_at is not None
    assert forgotten.events_total == 0 and not forgotten.traits and forgotten.last_seen is None
    assert [(t.kind, t.key, t.value, t.seq) for t in tombstones] == [
        ("segment", "u1", None, forgotten.seq),
        ("trigger", "u1", None, forgotten.seq),
        ("profile", "u1", None, forgotten.seq),
    ]


def test_compacting_an_idle_user_keeps_totals_and_drops_the_bulky_parts() -> None:
    profile = feed(
        UserProfile("u1"),
        event(0, "signup", traits={"role": "admin"}),
        *[event(minutes) for minutes in range(1, 600, 7)],
        event(900, "onboarding_completed"),
    )
    before = pickle.dumps(profile)
    count, closed, _, mean = session_summary(profile)
    profile.as_of = T0 + timedelta(days=31)
    compact(profile)
    assert len(pickle.dumps(profile)) < len(before) / 2
    assert session_summary(profile) == (count, count, False, (mean * closed + 0.0) / count)
    assert profile.events_total == 88 and profile.traits == {"role": "admin"}
    assert len(profile.recent_ids) == 0 and profile.windows.counts(profile.as_of) == (0, 0, 0, 0)
    seq = profile.seq
    feed(profile, event(60 * 24 * 31))  # comes back: numbers go on
    assert profile.events_total == 89 and profile.seq == seq + 1


def test_the_pickled_profile_holds_values_not_field_names_and_old_snapshots_load() -> None:
    profile = feed(
        UserProfile("u1", known=True),
        event(0, "signup", traits={"role": "admin"}),
        *[event(minutes, "feature_used", properties={"feature": "x"}) for minutes in (3, 9)],
    )
    profile.fired["r1"] = (2, 1.5)
    held = pickle.dumps(profile)
    assert b"events_total" not in held and b"features_used" not in held
    again = pickle.loads(held)
    assert again.__getstate__()[:8] == profile.__getstate__()[:8]
    assert (again.first_seen, again.as_of, again.signed_up_at) == (
        profile.first_seen,
        profile.as_of,
        profile.signed_up_at,
    )
    assert again.as_of is not None and again.as_of.tzinfo is not None
    # Times were pickled as datetimes before: such a state loads as it was.
    as_before = [getattr(profile, spec.name) for spec in dataclasses.fields(UserProfile)]
    restored = UserProfile.__new__(UserProfile)
    restored.__setstate__(tuple(as_before))
    assert restored.__getstate__() == profile.__getstate__()
    assert (again.counts, again.features_used, again.fired) == (
        profile.counts,
        profile.features_used,
        profile.fired,
    )
    assert session_summary(again) == session_summary(profile)
    # Recovery written by an older version: (None, {field: value}), fields since defaulted.
    old = UserProfile.__new__(UserProfile)
    old.__setstate__((None, {"user_id": "u2", "seq": 7, "counts": {"signup": 1}}))
    assert (old.user_id, old.seq, old.counts, old.fired, old.path) == (
        "u2",
        7,
        {"signup": 1},
        {},
        None,
    )


def test_a_busy_user_reaches_the_store_once_per_interval_and_never_misses_the_last() -> None:
    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.operators.user_step import UserStep

    clock = [T0]
    settings = replace(
        flow_settings(load_config(None), profile_updates="whole"),
        now=lambda: clock[0],
        update_every=timedelta(seconds=1),
    )
    logic = UserStep(settings, None)

    def updates(items: list[Any]) -> list[int]:
        return [o.value["events_total"] for o in items if getattr(o, "kind", "") == "profile"]

    assert updates(logic.on_batch([event(0, "signup")])[0]) == [1]
    clock[0] += timedelta(milliseconds=300)
    assert updates(logic.on_batch([event(1)])[0]) == []  # within the second: held back
    assert logic.notify_at() == T0 + timedelta(seconds=1)
    clock[0] = T0 + timedelta(seconds=1)
    assert updates(logic.on_notify()[0]) == [2]  # the newest state, when the second is over
    assert logic.notify_at() is None
    assert UserStep(settings, copy.deepcopy(logic.profile)).notify_at() is None
    logic.profile.pending_update = True  # type: ignore[union-attr]  # held back, then a crash:
    restored = UserStep(settings, copy.deepcopy(logic.profile))
    assert restored.notify_at() is not None  # still goes out


def test_the_simulators_store_gets_the_path_alone_until_the_final_profile() -> None:
    """The simulated product reads only its users' paths from the store: updates carry
    the path (and the seq the store orders by); the final profile is whole."""
    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.operators.outputs import Output
    from firstmile.operators.user_step import UserStep

    def profiles(items: list[Any]) -> list[Output]:
        return [o for o in items if isinstance(o, Output) and o.kind == "profile"]

    settings = flow_settings(load_config(None), profile_updates="path")
    logic = UserStep(replace(settings, now=lambda: T0, update_every=timedelta(0)), None)
    updates = profiles(logic.on_batch([event(0, "signup")])[0] + logic.on_batch([event(1)])[0])
    assert updates and all(set(o.value) == {"user_id", "seq", "onboarding_path"} for o in updates)
    assert updates[-1].value["onboarding_path"] == logic.profile.path  # type: ignore[union-attr]
    (final,) = profiles(logic.on_eof()[0])
    assert final.final and final.value["events_total"] == 2 and "features" in final.value


def test_every_change_the_store_can_see_comes_with_a_newer_seq() -> None:
    """The store keeps the highest seq, so a render with a seq it already holds is lost: a
    deadline that fires no rule still reads windows at a later time, and must bump seq."""
    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.operators.timers import Tick
    from firstmile.operators.user_step import UserStep
    from firstmile.state.profile_store import MemoryProfileStore

    settings = replace(flow_settings(load_config(None), profile_updates="whole"), now=lambda: T0)
    logic, store = UserStep(settings, None), MemoryProfileStore()

    def keep(items: list[Any]) -> None:
        store.put_many(
            [(o.key, o.value["seq"], o.value) for o in items if getattr(o, "kind", "") == "profile"]
        )

    keep(logic.on_batch([event(0, "signup"), event(1)])[0])
    due = T0 + timedelta(hours=5)
    keep(logic.on_batch([Tick("u1", "deadline", due, T0, name="absence:nobody-listens")])[0])
    keep(logic.on_eof()[0])
    held = store.get("u1")
    assert held is not None and held["as_of"] == "2026-03-02T14:00:00.000Z"
    assert held["windows"]["events_1h"] == 0  # read at the deadline, five hours on


def test_implausible_numeric_traits_are_not_kept() -> None:
    profile = feed(
        UserProfile("u1"),
        event(0, "identify", type="identify", traits={"company_size": 1e308, "role": "admin"}),
    )
    assert "company_size" not in profile.traits and profile.traits["role"] == "admin"
    feed(profile, event(1, "identify", type="identify", traits={"company_size": -5}))
    assert features(profile, PopulationStats())["company_size_log"] == 0.0  # no crash


def test_how_a_source_batches_a_user_changes_no_decision() -> None:
    """A replay batches differently from the first pass: the hourly change of mind is
    checked after every event, so the same events give the same messages and seqs."""
    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.operators.user_step import UserStep

    settings = replace(flow_settings(load_config(None), profile_updates="none"), now=lambda: T0)
    events = [event(0, "signup"), *(event(25 * n, "feature_used") for n in range(1, 16))]

    def sent(batches: list[list[Event]]) -> tuple[list[tuple[Any, ...]], int]:
        step = UserStep(settings, None)
        out = [o for batch in batches for o in step.on_batch(list(batch))[0]]
        messages = [
            (o.kind, o.value["seq"], o.value["id"], o.value.get("churn_risk"))
            for o in out
            if getattr(o, "kind", "") in ("segment", "trigger")
        ]
        assert step.profile is not None
        return messages, step.profile.seq

    whole = sent([events])
    assert whole[0] and whole[1] > len(events)  # the signup, and rescorings as hours pass
    assert sent([[e] for e in events]) == whole
    assert sent([events[i : i + 4] for i in range(0, len(events), 4)]) == whole


def test_a_late_event_is_scored_with_the_models_in_force_now() -> None:
    """An event two hours late is scored (with the profile as it is now) by the models in
    force at the newest time the profile has seen, not by older ones; and the next
    change of mind is not due at once."""
    from firstmile.flows.config import load_config
    from firstmile.flows.run import flow_settings
    from firstmile.operators.user_step import UserStep

    settings = replace(flow_settings(load_config(None), profile_updates="none"), now=lambda: T0)
    asked: list[datetime] = []
    models = settings.models

    class Recording:
        def scorer(self, at: datetime) -> Any:
            asked.append(at)
            return models.scorer(at)

    step = UserStep(replace(settings, models=Recording()), None)  # type: ignore[arg-type]
    step.on_batch([event(0, "signup"), event(180, "feature_used")])
    asked.clear()
    step.on_batch([event(60, "onboarding_completed")])  # late: an hour after signup
    assert asked and min(asked) == T0 + timedelta(minutes=180)
    assert step.profile is not None and step.profile.scored_at == T0 + timedelta(minutes=180)


def test_the_mix_of_event_names_is_shares_by_hashed_name_and_old_profiles_have_none() -> None:
    profile = feed(
        UserProfile("u1"),
        *[event(m, "feature_used", name="Report Created") for m in range(3)],
        event(5, name="Dashboard Viewed"),
        event(6, type="page", name="Pricing"),  # a page call counts as "page", not its name
    )
    mix = name_mix(profile)
    assert set(mix) == set(MIX_FEATURES) and sum(mix.values()) == pytest.approx(1.0)
    report = MIX_FEATURES[mix_bucket("Report Created")]
    assert mix[report] >= 0.6 and mix[MIX_FEATURES[mix_bucket("page")]] >= 0.2
    # The mix is no feature of the profile's output (its schema lists them): beside it.
    assert set(FEATURE_NAMES).isdisjoint(MIX_FEATURES)
    # A profile pickled before the mix existed has none: every share 0.
    state = UserProfile("u2").__getstate__()[:-1]
    old = UserProfile.__new__(UserProfile)
    old.__setstate__(state)
    assert old.mix == [] and set(name_mix(old).values()) == {0.0}
